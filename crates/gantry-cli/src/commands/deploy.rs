//! `gantry deploy`.

use gantry_core::deploy::Progress;
use gantry_core::incident::{self, Incident, Reported, Tracker};
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
    let result = lifecycle::deploy(
        &ctx.project,
        ctx.env,
        hosts,
        &vars,
        &options,
        &ctx.progress(),
    );
    if let Err(error) = &result {
        report_to_hub(ctx, error);
    }
    ctx.emit(result?)
}

/// Files the failure with the project's `[hub]`, if it has one; a hub that
/// cannot be reached is a warning, never a second error.
fn report_to_hub(ctx: &Context<'_>, error: &gantry_core::Error) {
    let Ok(config) = ctx.project.load() else {
        return;
    };
    let incident = Incident::of_deploy(&config.file.project.name, ctx.env, error);
    let connect = |hub: &gantry_core::config::model::HubLink, key: String| {
        Box::new(gantry_hub::HubClient::new(&hub.url, key)) as Box<dyn Tracker>
    };
    let reported = incident::report_deploy_failure(
        config.project_dir(),
        config.file.hub.as_ref(),
        &incident,
        &vars,
        &connect,
    );
    let line = match reported {
        None => return,
        Some(Ok(Reported::Filed(item))) => format!("hub: filed {item}"),
        Some(Ok(Reported::Commented(item))) => {
            format!("hub: commented on {item}, open for the same failure")
        }
        Some(Err(why)) => format!("hub: cannot report the failure: {why}"),
    };
    ctx.progress().step(&line);
}
