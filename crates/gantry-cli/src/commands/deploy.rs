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
    let exe = gantry_core::configure::this_binary()?;
    let hosts = lifecycle::Hosts {
        connect: &|host| ctx.connect(host),
        shell: &|host| ctx.shell(host),
        exe: &exe,
    };
    let report = lifecycle::deploy(
        &ctx.project,
        ctx.env,
        hosts,
        &vars,
        &options,
        &ctx.progress(),
    )?;
    ctx.emit(report)
}
