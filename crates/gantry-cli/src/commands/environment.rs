//! `register`, `configure`, `env create|list|show|destroy|purge`: an
//! environment's hosts and its lifecycle state.

use gantry_core::{configure, environment, register};

use super::{Context, confirmed};
use crate::Failure;
use crate::args::{EnvAction, RegisterArgs};

pub(super) fn register(ctx: &Context<'_>, args: &RegisterArgs) -> Result<(), Failure> {
    let ssh = args.ssh.as_deref();
    let shell = |h: &_| ctx.shell(h);
    let report = register::register(
        &ctx.project,
        ctx.env,
        &args.host,
        ssh,
        &shell,
        &ctx.progress(),
    )?;
    ctx.emit(report)
}

pub(super) fn configure(ctx: &Context<'_>) -> Result<(), Failure> {
    let exe = configure::this_binary()?;
    ctx.emit(configure::configure(
        &ctx.project,
        ctx.env,
        &exe,
        &|h| ctx.shell(h),
        &|h| ctx.connect(h),
        &ctx.progress(),
    )?)
}

pub(super) fn env(ctx: &Context<'_>, action: &EnvAction) -> Result<(), Failure> {
    let project = &ctx.project;
    match action {
        EnvAction::Create { name } => ctx.emit(environment::create(project, name)?),
        EnvAction::List => ctx.emit(environment::list(project)?),
        EnvAction::Show { name } => ctx.emit(environment::show(project, name)?),
        EnvAction::Destroy { name } => {
            confirmed(
                ctx,
                format!("destroying `{name}` stops every service of the project on its hosts"),
                format!("gantry env destroy {name}"),
            )?;
            ctx.emit(environment::destroy(project, name, &|h| ctx.connect(h))?)
        }
        EnvAction::Purge { name, force } => {
            if *force {
                confirmed(
                    ctx,
                    format!(
                        "purging `{name}` with --force forgets its state without stopping its services"
                    ),
                    format!("gantry env purge {name} --force"),
                )?;
            }
            ctx.emit(environment::purge(project, name, *force)?)
        }
    }
}
