//! The environment lifecycle around a deploy: an environment with remote
//! hosts that is not configured yet is configured first, and how its deploy
//! ended is recorded in its state. An environment of this machine alone has
//! no lifecycle state: its deploy is [`crate::deploy::deploy`] as it is.

use crate::config::resolve::Reach;
use crate::configure::OpenShell;
use crate::deploy::{DeployOptions, DeployReport, Progress};
use crate::environment::{EnvState, Phase, StateDir};
use crate::operate::Connect;
use crate::{Error, Project};

/// `gantry deploy`: configures a remote environment that needs it (with
/// this gantry binary), deploys, and records the outcome.
pub fn deploy(
    project: &Project,
    environment: &str,
    shell: OpenShell<'_>,
    connect: Connect<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<DeployReport, Error> {
    let remote = before_deploy(project, environment, shell, connect, progress)?;
    let result = crate::deploy::deploy(project, environment, connect, env_vars, options, progress);
    if remote {
        after_deploy(project, environment, &result)?;
    }
    result
}

/// For an environment with remote hosts, runs the steps it lacks before a
/// deploy (`configure`). Returns whether the environment is remote.
fn before_deploy(
    project: &Project,
    environment: &str,
    shell: OpenShell<'_>,
    connect: Connect<'_>,
    progress: &dyn Progress,
) -> Result<bool, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    // Refused before configure installs anything on the hosts.
    crate::deploy::refuse_unsupported(&config.file, &env)?;
    if env.hosts.iter().all(|h| h.reach == Reach::Local) {
        return Ok(false);
    }
    let states = StateDir::of(config.project_dir());
    let state = states.load(environment)?;
    match state.as_ref().map(EnvState::state) {
        Some(Phase::Destroyed) => Err(Error::EnvState {
            environment: environment.to_owned(),
            problem: "was destroyed".to_owned(),
            hint: format!("`gantry env purge {environment}`, then configure it again"),
        }),
        Some(phase) if phase.configured() => Ok(true),
        other => {
            progress.step(&format!(
                "environment {environment} is {}: configuring it first",
                other.map_or_else(|| "new".to_owned(), |p| p.to_string())
            ));
            let exe = crate::configure::this_binary()?;
            crate::configure::configure(project, environment, &exe, shell, connect, progress)?;
            Ok(true)
        }
    }
}

/// Records a remote deploy's end: running, or deploy_failed with the reason.
fn after_deploy(
    project: &Project,
    environment: &str,
    result: &Result<DeployReport, Error>,
) -> Result<(), Error> {
    let config = project.load()?;
    let states = StateDir::of(config.project_dir());
    let _lock = states.lock(environment, &format!("gantry deploy -e {environment}"))?;
    let mut state = states
        .load(environment)?
        .unwrap_or_else(|| EnvState::new(environment));
    match result {
        Ok(_) => state.set(Phase::Running)?,
        Err(e) => state.fail(Phase::DeployFailed, "deploy", None, &e.to_string())?,
    }
    states.save(&state)
}
