//! The environment lifecycle around a deploy: an environment with remote
//! hosts that is not configured yet is configured first, and how its deploy
//! ended is recorded in its state. An environment of this machine alone has
//! no lifecycle state: its deploy is [`crate::deploy::deploy`] as it is.

use std::path::Path;

use crate::config::resolve::Reach;
use crate::configure::OpenShell;
use crate::deploy::{DeployOptions, DeployReport};
use crate::environment::{EnvState, Phase, StateDir};
use crate::operate::Connect;
use crate::progress::Progress;
use crate::{EnvRefusal, Error, Project};

/// How a deploy reaches the environment's hosts: their agents, and their
/// shells to configure them with the gantry binary `exe`.
#[derive(Clone, Copy)]
pub struct Hosts<'a> {
    pub connect: Connect<'a>,
    pub shell: OpenShell<'a>,
    pub exe: &'a Path,
}

/// `gantry deploy`: configures a remote environment that needs it, deploys,
/// and records the outcome.
pub fn deploy(
    project: &Project,
    environment: &str,
    hosts: Hosts<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<DeployReport, Error> {
    let remote = before_deploy(project, environment, hosts, progress)?;
    let result = crate::deploy::deploy(
        project,
        environment,
        hosts.connect,
        env_vars,
        options,
        progress,
    );
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
    hosts: Hosts<'_>,
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
            refusal: EnvRefusal::Destroyed,
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
            let Hosts {
                connect,
                shell,
                exe,
            } = hosts;
            crate::configure::configure(project, environment, exe, shell, connect, progress)?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use std::sync::Arc;

    use super::*;
    use crate::config::resolve::Host as HostSpec;
    use crate::fake::{Fleet, Said, Script, project};

    fn deploy_on(
        fleet: &Arc<Fleet>,
        project: &Project,
        said: &Said,
    ) -> Result<DeployReport, Error> {
        let exe = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(exe.path(), b"this very gantry").unwrap();
        let hosts = Hosts {
            connect: &|spec: &HostSpec| fleet.connect(spec),
            shell: &|spec: &HostSpec| fleet.open_shell(spec),
            exe: exe.path(),
        };
        deploy(
            project,
            "prod",
            hosts,
            &|_| None,
            &DeployOptions::default(),
            said,
        )
    }

    fn phase(dir: &std::path::Path) -> Phase {
        StateDir::of(dir).load("prod").unwrap().unwrap().state()
    }

    #[test]
    fn a_new_remote_environment_is_configured_before_its_deploy_and_recorded_running() {
        let (dir, project) = project(&["h1"], 1);
        let fleet = Fleet::new([("h1", Script::default())]);
        let said = Said::default();
        deploy_on(&fleet, &project, &said).unwrap();

        let calls = fleet.calls();
        let at = |call: &str| calls.iter().position(|c| c == call);
        assert!(
            matches!((at("h1 run install gantry"), at("h1 deploy")), (Some(i), Some(d)) if i < d),
            "configured, then deployed: {calls:#?}"
        );
        assert!(
            said.lines()
                .contains(&"environment prod is new: configuring it first".to_owned()),
            "{:?}",
            said.lines()
        );
        assert_eq!(phase(dir.path()), Phase::Running);

        // Configured now: the next deploy goes straight to the hosts.
        let before = fleet.calls().len();
        deploy_on(&fleet, &project, &Said::default()).unwrap();
        let again = &fleet.calls()[before..];
        assert!(
            !again.iter().any(|c| c.starts_with("h1 run")),
            "configured again: {again:#?}"
        );
    }

    #[test]
    fn a_failed_deploy_is_recorded_as_deploy_failed_with_its_reason() {
        let (dir, project) = project(&["h1"], 1);
        let failing = Script {
            runs: Some("r1".to_owned()),
            release_fails: true,
            ..Script::default()
        };
        let fleet = Fleet::new([("h1", failing)]);
        let error = deploy_on(&fleet, &project, &Said::default()).unwrap_err();

        let state = StateDir::of(dir.path()).load("prod").unwrap().unwrap();
        assert_eq!(state.state(), Phase::DeployFailed);
        let failure = serde_json::to_value(&state).unwrap()["failure"].clone();
        assert_eq!(failure["error"], error.to_string(), "{failure}");
    }

    #[test]
    fn a_destroyed_environment_is_refused_before_anything_reaches_its_hosts() {
        let (dir, project) = project(&["h1"], 1);
        let states = StateDir::of(dir.path());
        let mut state = EnvState::new("prod");
        state.set(Phase::Destroyed).unwrap();
        states.save(&state).unwrap();
        let fleet = Fleet::new([("h1", Script::default())]);

        let error = deploy_on(&fleet, &project, &Said::default()).unwrap_err();
        assert!(
            matches!(&error, Error::EnvState { refusal: EnvRefusal::Destroyed, hint, .. } if hint.contains("gantry env purge prod")),
            "{error:?}"
        );
        assert_eq!(fleet.calls(), Vec::<String>::new());
    }
}
