//! `gantry deploy`.

use gantry_core::{deploy, lifecycle, plan};

use super::{Context, vars};
use crate::Failure;
use crate::args::DeployArgs;

pub(super) fn deploy(ctx: &Context<'_>, args: &DeployArgs) -> Result<(), Failure> {
    if args.dry_run {
        return plan(ctx);
    }
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

/// `gantry plan` (and `deploy --dry-run`): asks the hosts' agents what they
/// run, starting none.
pub(super) fn plan(ctx: &Context<'_>) -> Result<(), Failure> {
    let connect = |host: &gantry_core::config::resolve::Host| {
        Ok((ctx.wiring.connect)(host, &ctx.state_dir, false)?)
    };
    ctx.emit(plan::plan(&ctx.project, ctx.env, &connect, &vars)?)
}
