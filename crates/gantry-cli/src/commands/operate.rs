//! `status`, `logs`, `releases`, `rollback`, `stop`, `restart`: what runs,
//! merged across the environment's hosts.

use gantry_core::Code;
use gantry_core::operate::{self, Action};

use super::{Context, vars};
use crate::Failure;
use crate::args::{LogsArgs, ReleasesAction, ReleasesArgs, RollbackArgs, ServiceArg};
use crate::text;

pub(super) fn status(ctx: &Context<'_>) -> Result<(), Failure> {
    let report = operate::status(&ctx.project, ctx.env, &|h| ctx.connect(h))?;
    super::deploy::tell_hub_status(ctx, &report);
    ctx.emit(report)
}

/// Lines as they come, text or one JSON object a line.
pub(super) fn logs(ctx: &Context<'_>, args: &LogsArgs) -> Result<(), Failure> {
    let since_ms = match &args.since {
        None => None,
        Some(text) => {
            let ago: gantry_core::config::units::Duration = text.parse().map_err(|e| {
                Failure::new(Code::Usage, format!("--since {text}: {e}"))
                    .with_hint("give a duration like 10m, 2h or 30s")
            })?;
            Some(gantry_core::clock::now_ms().saturating_sub(ago.as_millis()))
        }
    };
    let query = gantry_core::host::LogQuery {
        service: args.service.clone(),
        since_ms,
        tail: args.tail,
        follow: args.follow,
    };
    // A reader that went away (`| head`) ends the stream, not the command.
    let mut line = |line| ctx.printer.log_line(&line).is_ok();
    operate::logs(
        &ctx.project,
        ctx.env,
        &query,
        &|h| ctx.connect(h),
        &ctx.progress(),
        &mut line,
    )?;
    Ok(())
}

pub(super) fn releases(ctx: &Context<'_>, args: &ReleasesArgs) -> Result<(), Failure> {
    let connect = |h: &_| ctx.connect(h);
    match &args.action {
        None => ctx.emit(operate::releases(&ctx.project, ctx.env, &connect)?),
        Some(ReleasesAction::Show { id }) => ctx.emit(text::ReleaseDetail(operate::release(
            &ctx.project,
            ctx.env,
            id,
            &connect,
        )?)),
    }
}

pub(super) fn rollback(ctx: &Context<'_>, args: &RollbackArgs) -> Result<(), Failure> {
    let to = args.to.as_deref();
    ctx.emit(operate::rollback(
        &ctx.project,
        ctx.env,
        to,
        &|h| ctx.connect(h),
        &vars,
    )?)
}

pub(super) fn stop(ctx: &Context<'_>, args: &ServiceArg) -> Result<(), Failure> {
    act(ctx, Action::Stop, args)
}

pub(super) fn restart(ctx: &Context<'_>, args: &ServiceArg) -> Result<(), Failure> {
    act(ctx, Action::Restart, args)
}

fn act(ctx: &Context<'_>, action: Action, args: &ServiceArg) -> Result<(), Failure> {
    let service = args.service.as_deref();
    ctx.emit(operate::act(
        &ctx.project,
        ctx.env,
        action,
        service,
        &|h| ctx.connect(h),
    )?)
}
