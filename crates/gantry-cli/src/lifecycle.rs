//! The environment lifecycle around commands that reach remote hosts:
//! `deploy` configures an environment that is not configured yet and records
//! how the deploy ended; `ssh` picks the host.

use gantry_core::config::resolve::Reach;
use gantry_core::configure::OpenShell;
use gantry_core::deploy::{DeployReport, Progress};
use gantry_core::environment::{EnvState, Phase, StateDir};
use gantry_core::operate::Connect;
use gantry_core::{Error, Project};

use crate::args::SshArgs;

pub fn current_exe() -> Result<std::path::PathBuf, Error> {
    std::env::current_exe().map_err(Error::io("find", "the gantry binary"))
}

fn is_remote(project: &Project, environment: &str) -> Result<bool, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    Ok(env.hosts.iter().any(|h| h.reach != Reach::Local))
}

/// For an environment with remote hosts, runs the steps it lacks before a
/// deploy (`configure`). Returns whether the environment is remote.
pub fn before_deploy(
    project: &Project,
    environment: &str,
    shell: OpenShell<'_>,
    connect: Connect<'_>,
    progress: &dyn Progress,
) -> Result<bool, Error> {
    if !is_remote(project, environment)? {
        return Ok(false);
    }
    let config = project.load()?;
    let states = StateDir::of(config.project_dir());
    let state = states.load(environment)?;
    match state.as_ref().map(|s| s.state) {
        Some(Phase::Destroyed) => Err(Error::EnvState {
            environment: environment.to_owned(),
            problem: "was destroyed".to_owned(),
            hint: format!("`gantry env purge {environment}`, then configure it again"),
        }),
        Some(phase) if phase.configured() => Ok(true),
        other => {
            progress.step(&format!(
                "environment {environment} is {}: configuring it first",
                other.map_or_else(|| "new".to_owned(), |p| format!("{p:?}").to_lowercase())
            ));
            gantry_core::configure::configure(
                project,
                environment,
                &current_exe()?,
                shell,
                connect,
                progress,
            )?;
            Ok(true)
        }
    }
}

/// Records a remote deploy's end: running, or deploy_failed with the reason.
pub fn after_deploy(
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
        Ok(_) => state.set(Phase::Running),
        Err(e) => state.fail(Phase::DeployFailed, "deploy", None, &e.to_string()),
    }
    states.save(&state)
}

/// `gantry ssh [HOST] [-- CMD]`: the remote command's exit code.
pub fn ssh(
    project: &Project,
    environment: &str,
    args: &SshArgs,
    shell: OpenShell<'_>,
) -> Result<i32, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let host = match &args.host {
        Some(name) => {
            env.hosts
                .iter()
                .find(|h| &h.name == name)
                .ok_or_else(|| Error::EnvState {
                    environment: environment.to_owned(),
                    problem: format!("has no host `{name}`"),
                    hint: format!(
                        "its hosts are: {}",
                        env.hosts
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?
        }
        None => env.hosts.first().ok_or_else(|| Error::EnvState {
            environment: environment.to_owned(),
            problem: "has no hosts".to_owned(),
            hint: "register one with `gantry register`".to_owned(),
        })?,
    };
    if host.reach == Reach::Local {
        return Err(Error::EnvState {
            environment: environment.to_owned(),
            problem: format!("reaches `{}` without SSH: it is this machine", host.name),
            hint: "use a shell here".to_owned(),
        });
    }
    let command = (!args.command.is_empty()).then(|| args.command.join(" "));
    Ok(shell(host)?.interactive(command.as_deref())?)
}
