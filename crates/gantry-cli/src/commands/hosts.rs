//! `test`, `ssh`, `exec`: reaching the environment's hosts themselves.

use gantry_core::{check, exec, probe, ssh};

use super::{Context, exit_with};
use crate::Failure;
use crate::args::{ExecArgs, SshArgs};

pub(super) fn test(ctx: &Context<'_>) -> Result<(), Failure> {
    let shell = |h: &_| ctx.shell(h);
    let probe = |host: &_, proxy: &str, name: &str| probe::route(host, proxy, name, &shell);
    ctx.emit(check::test(
        &ctx.project,
        ctx.env,
        &|h| ctx.connect(h),
        &probe,
        &shell,
    )?)
}

/// Like ssh itself: the remote command's exit code is ours.
pub(super) fn ssh(ctx: &Context<'_>, args: &SshArgs) -> Result<(), Failure> {
    let host = args.host.as_deref();
    exit_with(ssh::ssh(
        &ctx.project,
        ctx.env,
        host,
        &args.command,
        &|h| ctx.shell(h),
    )?)
}

/// The command's exit code is ours.
pub(super) fn exec(ctx: &Context<'_>, args: &ExecArgs) -> Result<(), Failure> {
    let here =
        |project: &str| (ctx.wiring.exec)(&ctx.state_dir, project, &args.service, &args.command);
    exit_with(exec::exec(
        &ctx.project,
        ctx.env,
        &args.service,
        args.host.as_deref(),
        &args.command,
        &|h| ctx.shell(h),
        &here,
    )?)
}
