//! `gantry deploy`.

use gantry_core::config::model::HubLink;
use gantry_core::deploy::DeployReport;
use gantry_core::incident::{HubAccess, Incident, Tracker};
use gantry_core::operate::StatusReport;
use gantry_core::progress::Progress;
use gantry_core::{deploy, lifecycle, plan};

use super::{Context, vars};
use crate::Failure;
use crate::args::DeployArgs;

pub(super) fn deploy(ctx: &Context<'_>, args: &DeployArgs) -> Result<(), Failure> {
    if args.dry_run {
        return plan(ctx);
    }
    let progress = ctx.progress();
    let show_plan = |report: &gantry_core::plan::PlanReport| progress.plan(report);
    // A text deploy says what it is about to do; a script reads the report.
    let watched = ctx.printer.mode == crate::output::Mode::Text && !ctx.printer.quiet;
    let options = deploy::DeployOptions {
        skip_build: args.skip_build,
        force_unlock: args.force_unlock,
        show_plan: watched.then_some(&show_plan),
    };
    let exe = gantry_core::configure::this_binary()?;
    let hosts = lifecycle::Hosts {
        connect: &|host| ctx.connect(host),
        shell: &|host| ctx.shell(host),
        exe: &exe,
    };
    let result = lifecycle::deploy(&ctx.project, ctx.env, hosts, &vars, &options, &progress);
    tell_hub(ctx, &result);
    ctx.emit(result?)
}

fn connect(hub: &HubLink, key: String) -> Box<dyn Tracker> {
    Box::new(gantry_hub::HubClient::new(&hub.url, key))
}

/// `f` with the project's `[hub]`, if it has one, and the project's name.
fn with_hub(ctx: &Context<'_>, f: impl FnOnce(&HubAccess<'_>, &str)) {
    let Ok(config) = ctx.project.load() else {
        return;
    };
    let Some(hub) = config.file.hub.as_ref() else {
        return;
    };
    let access = HubAccess {
        project_dir: config.project_dir(),
        environment: ctx.env,
        hub,
        env_vars: &vars,
        connect: &connect,
    };
    f(&access, &config.file.project.name);
}

/// Tells the project's `[hub]`, if it has one, what the deploy did: a
/// failure is filed, what a success shipped is fixed. A hub that cannot be
/// reached is a warning, never a second error.
fn tell_hub(ctx: &Context<'_>, result: &Result<DeployReport, gantry_core::Error>) {
    with_hub(ctx, |access, name| tell_deploy(ctx, access, name, result));
}

fn tell_deploy(
    ctx: &Context<'_>,
    access: &HubAccess<'_>,
    name: &str,
    result: &Result<DeployReport, gantry_core::Error>,
) {
    let line = match result {
        Err(error) => match access.failed(&Incident::of_deploy(name, ctx.env, error)) {
            Ok(reported) => format!("hub: {reported}"),
            Err(why) => format!("hub: cannot report the failure: {why}"),
        },
        Ok(report) => match access.shipped(&report.release.id) {
            Ok(Some(items)) if !items.is_empty() => {
                format!("hub: {} fixed in {}", items.join(", "), report.release.id)
            }
            Ok(_) => return,
            Err(why) => format!("hub: cannot mark what the deploy shipped: {why}"),
        },
    };
    ctx.progress().step(&line);
}

/// `gantry status` of a project with `[hub]`: files what keeps failing.
pub(super) fn tell_hub_status(ctx: &Context<'_>, report: &StatusReport) {
    with_hub(ctx, |access, name| {
        access.failing_services(name, report, &ctx.state_dir, &ctx.progress());
    });
}

/// `gantry plan` (and `deploy --dry-run`): asks the hosts' agents what they
/// run, starting none.
pub(super) fn plan(ctx: &Context<'_>) -> Result<(), Failure> {
    let connect = |host: &gantry_core::config::resolve::Host| {
        Ok((ctx.wiring.connect)(host, &ctx.state_dir, false)?)
    };
    ctx.emit(plan::plan(&ctx.project, ctx.env, &connect, &vars)?)
}
