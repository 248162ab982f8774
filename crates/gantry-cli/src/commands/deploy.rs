//! `gantry deploy`.

use gantry_core::{deploy, lifecycle};

use super::{Context, vars};
use crate::Failure;
use crate::args::DeployArgs;

pub(super) fn deploy(ctx: &Context<'_>, args: &DeployArgs) -> Result<(), Failure> {
    let options = deploy::DeployOptions {
        skip_build: args.skip_build,
        force_unlock: args.force_unlock,
    };
    let report = lifecycle::deploy(
        &ctx.project,
        ctx.env,
        &|host| ctx.shell(host),
        &|host| ctx.connect(host),
        &vars,
        &options,
        &ctx.progress(),
    )?;
    ctx.emit(report)
}
