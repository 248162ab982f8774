//! The lifecycle of a deployed environment, kept in
//! `.gantry/state/<env>.json` beside gantry.toml:
//!
//! ```text
//! created → provisioned → configured → running
//!     ↘ provision_failed  ↘ configure_failed  ↘ deploy_failed
//! (any) → destroyed → (purge removes the file)
//! ```
//!
//! A failed state records the step, the host, the error and the time; the
//! next run of the step starts over from it. Only [`EnvState::set`] and
//! [`EnvState::fail`] change the state, and they refuse a transition the
//! diagram does not have ([`Phase::may_become`]), so none is ever written. Writes are atomic, and a lock
//! file (`<env>.lock`, naming the holder's pid and machine) keeps two
//! commands from changing the same environment at once; a lock whose holder
//! is gone (same machine, dead pid) is taken over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::config::resolve::{Host as HostSpec, Reach};
use crate::machine::alive;
pub use crate::machine::{hostname, pid_space};
use crate::{EnvRefusal, Error, write_atomic};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Created,
    Provisioned,
    ProvisionFailed,
    Configured,
    ConfigureFailed,
    Running,
    DeployFailed,
    Destroyed,
}

/// The name JSON uses (`provision_failed`), so text and JSON say the same.
impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::serde_name(self))
    }
}

impl Phase {
    /// Whether `configure` has completed (and nothing since undid it).
    pub fn configured(self) -> bool {
        matches!(
            self,
            Phase::Configured | Phase::Running | Phase::DeployFailed
        )
    }

    /// Whether an environment in this state may go to `next`: nothing leaves
    /// `destroyed` (purge removes the file), nothing goes back to `created`,
    /// only a configured environment deploys, a configured one no longer
    /// fails to provision, and `configure` completes what is not configured
    /// or failed to deploy. Registering a host (→ provisioned), failing to
    /// configure and destroying are open to every other state.
    pub fn may_become(self, next: Phase) -> bool {
        if self == Phase::Destroyed {
            return false;
        }
        match next {
            Phase::Created => false,
            Phase::ProvisionFailed => !self.configured(),
            Phase::Configured => !self.configured() || self == Phase::DeployFailed,
            Phase::Running | Phase::DeployFailed => self.configured(),
            Phase::Provisioned | Phase::ConfigureFailed | Phase::Destroyed => true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub error: String,
    /// Unix time in milliseconds.
    pub at: u64,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostRecord {
    /// How it is reached (`ssh` in gantry.toml).
    #[serde(default)]
    pub ssh: Option<String>,
    /// The gantry version installed by the last `configure`.
    #[serde(default)]
    pub gantry: Option<String>,
    /// `systemd` or `daemon`: how its agent is kept running.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub configured_at: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Transition {
    pub state: Phase,
    pub at: u64,
}

/// `.gantry/state/<env>.json`. Its state, failure and history change only
/// by a transition ([`EnvState::set`], [`EnvState::fail`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvState {
    pub environment: String,
    state: Phase,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<Failure>,
    #[serde(default)]
    history: Vec<Transition>,
}

impl EnvState {
    /// Whether `configure` ever completed: only then can an agent run the
    /// project's services on its hosts (a deploy needs a configured host).
    pub fn ever_configured(&self) -> bool {
        self.state.configured() || self.history.iter().any(|t| t.state.configured())
    }

    pub fn new(environment: &str) -> EnvState {
        let mut state = EnvState {
            environment: environment.to_owned(),
            state: Phase::Created,
            hosts: BTreeMap::new(),
            failure: None,
            history: Vec::new(),
        };
        state.history.push(Transition {
            state: Phase::Created,
            at: now_ms(),
        });
        state
    }

    pub fn state(&self) -> Phase {
        self.state
    }

    /// What the last failed step recorded, while the state is that failure.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    pub fn history(&self) -> &[Transition] {
        &self.history
    }

    /// Goes to `state`, or refuses, changing nothing, if the lifecycle has
    /// no such transition.
    pub fn set(&mut self, state: Phase) -> Result<(), Error> {
        if !self.state.may_become(state) {
            return Err(Error::EnvState {
                refusal: if self.state == Phase::Destroyed {
                    EnvRefusal::Destroyed
                } else {
                    EnvRefusal::Transition
                },
                environment: self.environment.clone(),
                problem: format!("is {}, and cannot become {state}", self.state),
                hint: match self.state {
                    Phase::Destroyed => format!(
                        "`gantry env purge {}` forgets it; then start it again",
                        self.environment
                    ),
                    _ if !self.state.configured() => {
                        format!("`gantry configure -e {}` first", self.environment)
                    }
                    _ => format!(
                        "`gantry env show {}` shows its state and history",
                        self.environment
                    ),
                },
            });
        }
        self.state = state;
        if !matches!(
            state,
            Phase::ProvisionFailed | Phase::ConfigureFailed | Phase::DeployFailed
        ) {
            self.failure = None;
        }
        self.history.push(Transition {
            state,
            at: now_ms(),
        });
        Ok(())
    }

    /// Goes to the failed `state`, recording the step, host and error; or
    /// refuses as [`EnvState::set`] does.
    pub fn fail(
        &mut self,
        state: Phase,
        step: &str,
        host: Option<&str>,
        error: &str,
    ) -> Result<(), Error> {
        self.set(state)?;
        self.failure = Some(Failure {
            step: step.to_owned(),
            host: host.map(str::to_owned),
            error: error.to_owned(),
            at: now_ms(),
        });
        Ok(())
    }
}

/// Where a project keeps its environments' state.
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `.gantry/state` beside `gantry.toml` in `project_dir`.
    pub fn of(project_dir: &Path) -> StateDir {
        StateDir {
            dir: project_dir.join(".gantry").join("state"),
        }
    }

    /// `<env>.json`, for a name gantry.toml could give an environment: any
    /// other (`../x`, a `/`) is refused, never joined to the directory.
    fn file(&self, env: &str) -> Result<PathBuf, Error> {
        gantry_config::check_name(env).map_err(|why| Error::EnvState {
            refusal: EnvRefusal::Unknown,
            environment: env.to_owned(),
            problem: format!("cannot be an environment's name: {why}"),
            hint: "environments are named as gantry.toml names them: lowercase letters, digits and hyphens, starting with a letter".to_owned(),
        })?;
        Ok(self.dir.join(format!("{env}.json")))
    }

    pub fn load(&self, env: &str) -> Result<Option<EnvState>, Error> {
        let path = self.file(env)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::StateCorrupt {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path)(e)),
        }
    }

    pub fn save(&self, state: &EnvState) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(state).unwrap_or_default();
        write_atomic(&self.file(&state.environment)?, &text)
    }

    /// Every environment with a state file.
    pub fn list(&self) -> Result<Vec<EnvState>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.dir)(e)),
        };
        let mut states = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(env) = name.strip_suffix(".json")
                && !env.starts_with('.')
                && let Some(state) = self.load(env)?
            {
                states.push(state);
            }
        }
        states.sort_by(|a, b| a.environment.cmp(&b.environment));
        Ok(states)
    }

    pub fn remove(&self, env: &str) -> Result<(), Error> {
        let path = self.file(env)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path)(e)),
        }
    }

    /// Takes `<env>.lock`, or says who holds it.
    pub fn lock(&self, env: &str, command: &str) -> Result<EnvLock, Error> {
        let path = self.file(env)?.with_extension("lock");
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        let me = Holder::me(command);
        // The lock file appears whole or not at all: written beside it, then
        // hard-linked into place (which fails if it exists), so a reader
        // never sees a half-written holder.
        let mut written = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(Error::io("create a file in", &self.dir))?;
        {
            use std::io::Write;
            let text = serde_json::to_vec(&me).unwrap_or_default();
            written
                .write_all(&text)
                .map_err(Error::io("write", written.path()))?;
        }
        for _ in 0..2 {
            match std::fs::hard_link(written.path(), &path) {
                Ok(()) => return Ok(EnvLock { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder: Option<Holder> = std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    match holder {
                        // Gone: it ran in this pid space and has ended.
                        Some(h)
                            if !h.pid_space.is_empty()
                                && h.pid_space == me.pid_space
                                && !alive(h.pid) =>
                        {
                            let _ = std::fs::remove_file(&path);
                        }
                        None => {
                            // Not a holder Gantry wrote (its files appear whole).
                            let _ = std::fs::remove_file(&path);
                        }
                        Some(h) => {
                            return Err(Error::EnvLocked {
                                environment: env.to_owned(),
                                holder: format!("pid {} on {} (`{}`)", h.pid, h.machine, h.command),
                                path,
                            });
                        }
                    }
                }
                Err(e) => return Err(Error::io("create", path)(e)),
            }
        }
        Err(Error::EnvLocked {
            environment: env.to_owned(),
            holder: "a process that keeps taking it".to_owned(),
            path,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    machine: String,
    command: String,
    since: u64,
    /// See `pid_space`.
    #[serde(default)]
    pid_space: String,
}

impl Holder {
    fn me(command: &str) -> Holder {
        Holder {
            pid: std::process::id(),
            machine: hostname(),
            command: command.to_owned(),
            since: now_ms(),
            pid_space: pid_space(),
        }
    }
}

/// Held until dropped.
pub struct EnvLock {
    path: PathBuf,
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_exclusive_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::of(dir.path());
        let held = states.lock("prod", "gantry configure").unwrap();
        let Err(Error::EnvLocked { holder, .. }) = states.lock("prod", "gantry deploy") else {
            panic!("a second lock was granted");
        };
        assert!(holder.contains(&std::process::id().to_string()), "{holder}");
        drop(held);
        // A lock left by a process of another machine (or container) whose
        // pid means nothing here: still refused, though the hostname matches.
        let path = dir.path().join(".gantry/state/prod.lock");
        let elsewhere = Holder {
            pid: u32::MAX - 1,
            machine: hostname(),
            command: "gantry deploy".to_owned(),
            since: 0,
            pid_space: "another-boot/pid:[1]".to_owned(),
        };
        std::fs::write(&path, serde_json::to_vec(&elsewhere).unwrap()).unwrap();
        assert!(states.lock("prod", "gantry deploy").is_err());
        // A lock left by a process of this pid space that is gone.
        let dead = Holder {
            pid_space: pid_space(),
            ..elsewhere
        };
        std::fs::write(&path, serde_json::to_vec(&dead).unwrap()).unwrap();
        let _taken = states.lock("prod", "gantry deploy").unwrap();
    }

    const EVERY: [Phase; 8] = [
        Phase::Created,
        Phase::Provisioned,
        Phase::ProvisionFailed,
        Phase::Configured,
        Phase::ConfigureFailed,
        Phase::Running,
        Phase::DeployFailed,
        Phase::Destroyed,
    ];

    #[test]
    fn the_lifecycle_has_exactly_the_transitions_of_its_diagram() {
        use Phase::*;
        let not_configured = [
            Provisioned,
            ProvisionFailed,
            Configured,
            ConfigureFailed,
            Destroyed,
        ];
        let allowed = |from: Phase| -> Vec<Phase> {
            match from {
                Created | Provisioned | ProvisionFailed | ConfigureFailed => {
                    not_configured.to_vec()
                }
                Configured | Running => {
                    vec![
                        Provisioned,
                        ConfigureFailed,
                        Running,
                        DeployFailed,
                        Destroyed,
                    ]
                }
                DeployFailed => vec![
                    Provisioned,
                    Configured,
                    ConfigureFailed,
                    Running,
                    DeployFailed,
                    Destroyed,
                ],
                Destroyed => Vec::new(),
            }
        };
        for from in EVERY {
            let may: Vec<Phase> = EVERY
                .into_iter()
                .filter(|to| from.may_become(*to))
                .collect();
            assert_eq!(may, allowed(from), "from {from}");
        }
    }

    #[test]
    fn an_illegal_transition_is_refused_and_changes_nothing() {
        let mut state = EnvState::new("prod");
        let before = serde_json::to_string(&state).unwrap();
        let refused = state.set(Phase::Running).unwrap_err();
        assert_eq!(refused.code(), "env.transition");
        assert!(
            refused
                .to_string()
                .contains("is created, and cannot become running"),
            "{refused}"
        );
        assert_eq!(
            refused.hint().as_deref(),
            Some("`gantry configure -e prod` first")
        );
        let refused = state.fail(Phase::DeployFailed, "deploy", None, "boom");
        assert!(refused.is_err());
        assert_eq!(serde_json::to_string(&state).unwrap(), before);
    }

    #[test]
    fn a_destroyed_environment_is_never_written_as_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::of(dir.path());
        let mut state = EnvState::new("prod");
        state.set(Phase::Destroyed).unwrap();
        states.save(&state).unwrap();
        let file = dir.path().join(".gantry/state/prod.json");
        let written = std::fs::read(&file).unwrap();

        let mut loaded = states.load("prod").unwrap().unwrap();
        for next in EVERY {
            assert_eq!(
                loaded.set(next).err().map(|e| e.code()),
                Some(crate::Code::EnvDestroyed),
                "destroyed became {next}"
            );
            assert!(loaded.fail(next, "deploy", None, "boom").is_err());
        }
        // Even saved by a caller that ignored the refusals, the file says destroyed.
        states.save(&loaded).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), written);
        assert_eq!(
            states.load("prod").unwrap().unwrap().state(),
            Phase::Destroyed
        );
    }

    #[test]
    fn a_destroy_that_cannot_stop_the_services_is_destroy_failed_and_keeps_the_state() {
        use crate::fake::{Fleet, Script, project};
        let (dir, project) = project(&["h1"], 1);
        let states = StateDir::of(dir.path());
        let mut state = EnvState::new("prod");
        state.set(Phase::Configured).unwrap();
        states.save(&state).unwrap();
        let fleet = Fleet::new([(
            "h1",
            Script {
                down: true,
                ..Script::default()
            },
        )]);

        let error = destroy(&project, "prod", &|spec: &HostSpec| fleet.connect(spec)).unwrap_err();

        assert_eq!(error.code(), crate::Code::EnvDestroyFailed);
        assert!(error.to_string().contains("h1"), "{error}");
        assert!(
            error
                .hint()
                .is_some_and(|h| h.contains("gantry env purge prod --force")),
            "{error:?}"
        );
        assert_eq!(
            states.load("prod").unwrap().map(|s| s.state()),
            Some(Phase::Configured)
        );
    }

    #[test]
    fn state_survives_a_round_trip_and_failures_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::of(dir.path());
        let mut state = EnvState::new("prod");
        state
            .fail(
                Phase::ConfigureFailed,
                "install the agent",
                Some("h2"),
                "boom",
            )
            .unwrap();
        states.save(&state).unwrap();
        let back = states.load("prod").unwrap().unwrap();
        assert_eq!(back.state, Phase::ConfigureFailed);
        let failure = back.failure.unwrap();
        assert_eq!(
            (failure.step.as_str(), failure.host.as_deref()),
            ("install the agent", Some("h2"))
        );
        assert_eq!(states.list().unwrap().len(), 1);
        std::fs::write(dir.path().join(".gantry/state/prod.json"), b"{").unwrap();
        assert!(matches!(
            states.load("prod"),
            Err(Error::StateCorrupt { .. })
        ));
    }
}

/// `gantry env list`: each environment, declared in gantry.toml or with state.
#[derive(Debug, Serialize)]
pub struct EnvList {
    pub environments: Vec<EnvSummary>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct EnvSummary {
    pub environment: String,
    /// Its lifecycle state; none when it was never created, registered or configured.
    pub state: Option<Phase>,
    pub declared: bool,
    pub hosts: Vec<String>,
    pub failure: Option<Failure>,
}

/// `gantry env create|show|destroy|purge`: the environment's state after it.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct EnvReport(pub EnvState);

fn project_states(project: &crate::Project) -> Result<(crate::config::Config, StateDir), Error> {
    let config = project.load()?;
    let states = StateDir::of(config.project_dir());
    Ok((config, states))
}

fn unknown(environment: &str) -> Error {
    // This machine is never registered, and its deploys keep no state:
    // pointing at `register` would send the user into a second refusal.
    let hint = if environment == crate::config::resolve::LOCAL {
        "`local` is this machine and needs no state: `gantry status` shows what runs \
         here, `gantry stop` stops it; `gantry env create local` starts a state anyway"
            .to_owned()
    } else {
        format!("`gantry env create {environment}`, or `gantry register HOST -e {environment}`")
    };
    Error::EnvState {
        refusal: EnvRefusal::Unknown,
        environment: environment.to_owned(),
        problem: "has no state yet".to_owned(),
        hint,
    }
}

pub fn create(project: &crate::Project, environment: &str) -> Result<EnvReport, Error> {
    let (_, states) = project_states(project)?;
    let _lock = states.lock(environment, &format!("gantry env create {environment}"))?;
    if let Some(existing) = states.load(environment)? {
        return Err(Error::EnvState {
            refusal: EnvRefusal::Exists,
            environment: environment.to_owned(),
            problem: format!("already exists ({})", existing.state),
            hint: format!("`gantry env show {environment}` shows it"),
        });
    }
    let state = EnvState::new(environment);
    states.save(&state)?;
    Ok(EnvReport(state))
}

pub fn list(project: &crate::Project) -> Result<EnvList, Error> {
    let (config, states) = project_states(project)?;
    let mut environments: Vec<EnvSummary> = Vec::new();
    for name in config.environment_names() {
        let hosts = config
            .file
            .environments
            .get(&name)
            .map(|e| e.hosts.clone())
            .unwrap_or_else(|| vec!["local".to_owned()]);
        environments.push(EnvSummary {
            declared: true,
            environment: name,
            state: None,
            hosts,
            failure: None,
        });
    }
    for state in states.list()? {
        match environments
            .iter_mut()
            .find(|e| e.environment == state.environment)
        {
            Some(e) => {
                e.state = Some(state.state);
                e.failure = state.failure;
            }
            None => environments.push(EnvSummary {
                environment: state.environment.clone(),
                state: Some(state.state),
                declared: false,
                hosts: state.hosts.keys().cloned().collect(),
                failure: state.failure,
            }),
        }
    }
    environments.sort_by(|a, b| a.environment.cmp(&b.environment));
    Ok(EnvList { environments })
}

pub fn show(project: &crate::Project, environment: &str) -> Result<EnvReport, Error> {
    let (_, states) = project_states(project)?;
    states
        .load(environment)?
        .map(EnvReport)
        .ok_or_else(|| unknown(environment))
}

/// Stops the project's services on every host of the environment and
/// marks it destroyed. The servers are the user's: nothing is uninstalled.
///
/// Every state has this way out. Services can only run where `configure`
/// once completed, so an environment that never got there has nothing to
/// stop; one gone from gantry.toml is stopped on the hosts its state
/// recorded. When a host cannot be reached, the error names `purge --force`.
pub fn destroy(
    project: &crate::Project,
    environment: &str,
    connect: crate::operate::Connect<'_>,
) -> Result<EnvReport, Error> {
    let (config, states) = project_states(project)?;
    let _lock = states.lock(environment, &format!("gantry env destroy {environment}"))?;
    let mut state = states
        .load(environment)?
        .ok_or_else(|| unknown(environment))?;
    if state.state != Phase::Destroyed {
        let hosts = hosts_to_stop(&config, &state);
        if !hosts.is_empty() {
            let name = config.file.project.name.clone();
            crate::operate::act_on(
                environment,
                name,
                &hosts,
                crate::operate::Action::Stop,
                None,
                connect,
            )
            .map_err(|e| Error::DestroyFailed {
                environment: environment.to_owned(),
                cause: Box::new(e),
            })?;
        }
        state.set(Phase::Destroyed)?;
        states.save(&state)?;
    }
    Ok(EnvReport(state))
}

/// Where the project's services may run: the environment's hosts in
/// gantry.toml, else those its state recorded; none if it was never
/// configured (this machine's agent excepted, which needs no configure).
fn hosts_to_stop(config: &crate::config::Config, state: &EnvState) -> Vec<HostSpec> {
    let hosts: Vec<HostSpec> = match config.environment(&state.environment) {
        Ok(env) => env.hosts,
        Err(_) => state
            .hosts
            .iter()
            .filter_map(|(name, record)| {
                Some(HostSpec {
                    name: name.clone(),
                    reach: Reach::Ssh {
                        target: record.ssh.clone()?,
                    },
                })
            })
            .collect(),
    };
    let configured = state.ever_configured();
    hosts
        .into_iter()
        .filter(|h| configured || h.reach == Reach::Local)
        .collect()
}

/// Forgets a destroyed environment's state; with `force`, in any state, and
/// without stopping anything (for hosts that are gone).
/// `gantry env purge`: what was forgotten.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    pub environment: String,
    /// Always true: the state file is gone.
    pub purged: bool,
    /// The state it was in: `destroyed`, or any other with `--force`
    /// (whose services were not stopped).
    pub was: Phase,
}

/// Forgets a destroyed environment's state (any state with `force`,
/// leaving its services running).
pub fn purge(
    project: &crate::Project,
    environment: &str,
    force: bool,
) -> Result<PurgeReport, Error> {
    let (_, states) = project_states(project)?;
    let _lock = states.lock(environment, &format!("gantry env purge {environment}"))?;
    let state = states
        .load(environment)?
        .ok_or_else(|| unknown(environment))?;
    if state.state != Phase::Destroyed && !force {
        return Err(Error::EnvState {
            refusal: EnvRefusal::NotDestroyed,
            environment: environment.to_owned(),
            problem: format!("is {}, not destroyed", state.state),
            hint: format!("`gantry env destroy {environment} --yes` first"),
        });
    }
    states.remove(environment)?;
    Ok(PurgeReport {
        environment: state.environment.clone(),
        purged: true,
        was: state.state(),
    })
}
