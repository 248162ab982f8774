//! One instance of a service: start it (intent recorded first), wait until it
//! is healthy, stop it. Deploys, restarts and rollbacks are built from these.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_core::Code;
use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::v1::Port;
use gantry_core::agent_api::v1::{Check, Workload};
use gantry_core::agent_api::{Cause, Exit, InstanceState, Stream};

use crate::agent::Agent;
use crate::health;
use crate::process::{
    self, Cgroup, CgroupError, Confinement, LaunchSpec, ResourceLimits, StopOutcome,
};
use crate::store::InstanceRecord;

/// Why an instance did not come up.
#[derive(Debug)]
pub struct StartFailure {
    pub reason: String,
    pub log_tail: Vec<String>,
    /// The coded error behind `reason`, when there is one (a container
    /// error's): the failed release records it.
    pub cause: Option<gantry_core::agent_api::Cause>,
}

/// Variables every service gets from the agent's own environment, so commands
/// are found and programs behave; nothing else leaks in.
const INHERITED: [&str; 5] = ["PATH", "HOME", "USER", "LANG", "TZ"];

pub fn environment(
    service: &ServiceSpec,
    id: &str,
    release: &str,
    port: Option<u16>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = INHERITED
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.extend(service.env.clone());
    if let Some(port) = port {
        env.insert("PORT".to_owned(), port.to_string());
    }
    env.insert("GANTRY_SERVICE".to_owned(), service.name.clone());
    env.insert("GANTRY_RELEASE".to_owned(), release.to_owned());
    env.insert("GANTRY_INSTANCE".to_owned(), id.to_owned());
    env
}

/// The environment `gantry exec` runs a command with: the service's, with
/// the port of one of its running instances of `release` (a live one
/// first), so the command reaches the service as its instances do. Its
/// `GANTRY_INSTANCE` is `exec`: it is not one of them.
pub fn exec_environment(
    service: &ServiceSpec,
    release: &str,
    instances: &[InstanceRecord],
) -> BTreeMap<String, String> {
    let ours = || {
        instances
            .iter()
            .filter(|i| i.service == service.name && i.release == release && i.is_active())
    };
    let port = ours()
        .find(|i| i.state == InstanceState::Live)
        .or_else(|| ours().next())
        .and_then(|i| i.port)
        .or(match service.port {
            Some(Port::Fixed(port)) => Some(port),
            _ => None,
        });
    environment(service, "exec", release, port)
}

/// The port an instance listens on: fixed as configured, or a free one,
/// `preferred` when it is free (the port of the instance a stop-first
/// replacement stopped).
pub async fn port_for(
    agent: &Agent,
    service: &ServiceSpec,
    id: &str,
    preferred: Option<u16>,
) -> Result<Option<u16>, String> {
    match &service.port {
        None => Ok(None),
        // A container listens on its fixed port inside; outside it gets a free one.
        Some(Port::Fixed(port)) if !crate::container_instance::is_container(service) => {
            Ok(Some(*port))
        }
        Some(_) => {
            let id = id.to_owned();
            let store = agent.store.clone();
            let mut ports = agent
                .ports
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            let port = tokio::task::spawn_blocking(move || {
                let store = store.lock();
                match preferred {
                    Some(port) => ports.allocate_preferring(&store, &id, port),
                    None => ports.allocate(&store, &id),
                }
                .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            Ok(Some(port))
        }
    }
}

/// Where a service's instances run: the release's files, or the directory
/// inside them the service declares as its artifact.
pub fn working_dir(
    agent: &Agent,
    project: &str,
    artifact_digest: &str,
    service: &ServiceSpec,
) -> PathBuf {
    crate::site::artifact_dir(&release_dir(agent, project, artifact_digest), service)
}

/// Where a release's files are on this host.
pub fn release_dir(agent: &Agent, project: &str, artifact_digest: &str) -> PathBuf {
    agent.paths.releases(project).join(artifact_digest)
}

/// Launches the process for an instance whose row exists, and records its pid.
pub async fn launch(
    agent: &Agent,
    record: &InstanceRecord,
    service: &ServiceSpec,
    cwd: &Path,
) -> Result<(), StartFailure> {
    let run = match &service.workload {
        Workload::Process { run } => run,
        Workload::Compose { .. } => {
            return crate::container_instance::launch(agent, record, service, &limits(service))
                .await
                .map_err(|failed| StartFailure {
                    reason: failed.reason,
                    log_tail: Vec::new(),
                    cause: failed.cause,
                });
        }
        Workload::Static { .. } => {
            return Err(StartFailure {
                reason: format!(
                    "service `{}` is a static directory; this agent runs processes and containers",
                    service.name
                ),
                log_tail: Vec::new(),
                cause: None,
            });
        }
    };
    let cgroup = create_cgroup(agent, record, service);
    let mut env = environment(service, &record.id, &record.release, record.port);
    for (key, value) in crate::addresses::of(agent, &record.project, service).await {
        env.entry(key).or_insert(value);
    }
    let mut spec = LaunchSpec {
        instance: record.id.clone(),
        command: run.clone(),
        cwd: cwd.to_owned(),
        env,
        secrets_file: Some(agent.paths.secrets(&record.project)),
        secret_names: service.secrets.clone(),
        log_dir: agent.paths.logs(&record.project),
        log_max_bytes: agent.settings.log_max_bytes,
        log_keep: agent.settings.log_keep,
        run_dir: agent.paths.run(),
        cgroup,
        confinement: Default::default(),
    };
    let exe = agent.exe.clone();
    let (isolation, paths) = (agent.isolation, agent.paths.clone());
    let (project, name, run_as_root) = (
        record.project.clone(),
        service.name.clone(),
        service.run_as_root,
    );
    let launched = tokio::task::spawn_blocking(move || {
        spec.confinement = isolation
            .confinement(&paths, &project, &name, run_as_root)
            .map_err(std::io::Error::other)?;
        process::launch(&exe, &spec, Duration::from_secs(10))
    })
    .await
    .map_err(|e| StartFailure {
        reason: e.to_string(),
        log_tail: Vec::new(),
        cause: None,
    })?
    .map_err(|e| StartFailure {
        reason: format!("cannot start `{}`: {e}", service.name),
        log_tail: Vec::new(),
        cause: None,
    })?;
    let id = record.id.clone();
    agent
        .db(move |s| {
            s.set_instance_process(&id, launched.pid, launched.start_time, launched.relay_pid)
        })
        .await
        .map_err(|e| StartFailure {
            reason: e.to_string(),
            log_tail: Vec::new(),
            cause: None,
        })
}

/// Limits every service gets unless its `resources` say otherwise: room for
/// a web application, a stop for a leak or a fork loop.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
pub const DEFAULT_PIDS: u32 = 512;

/// The limits an instance of `service` runs under: its `resources`, the
/// defaults filling what they leave out.
pub fn limits(service: &ServiceSpec) -> ResourceLimits {
    ResourceLimits {
        memory: Some(
            service
                .resources
                .memory
                .map_or(DEFAULT_MEMORY, |m| m.bytes()),
        ),
        cpu: service.resources.cpu,
        pids: Some(service.resources.pids.unwrap_or(DEFAULT_PIDS)),
    }
}

/// The instance's cgroup with the service's limits; `None` where limits
/// are not enforced.
fn create_cgroup(agent: &Agent, record: &InstanceRecord, service: &ServiceSpec) -> Option<Cgroup> {
    let name = cgroup_name(agent, record);
    let limits = limits(service);
    match agent.cgroups.create(&name, &limits) {
        Ok(cgroup) => cgroup,
        // A host without the pids controller keeps the memory default.
        Err(CgroupError::Unsupported { controller: "pids" })
            if service.resources.pids.is_none() =>
        {
            let limits = ResourceLimits {
                pids: None,
                ..limits
            };
            agent.cgroups.create(&name, &limits).ok().flatten()
        }
        Err(_) => None,
    }
}

/// How the health command of `service` is confined: as its instances are.
/// Checks that run no command need nothing.
pub fn check_confinement(
    agent: &Agent,
    project: &str,
    service: &ServiceSpec,
) -> Result<Confinement, String> {
    match service.health.as_ref().map(|h| &h.check) {
        Some(Check::Command { .. }) => {
            agent
                .isolation
                .confinement(&agent.paths, project, &service.name, service.run_as_root)
        }
        _ => Ok(Confinement::default()),
    }
}

/// Waits until the instance passes its health check (or, without one, has
/// stayed up for its start period or a second), failing at once if it exits.
pub async fn wait_healthy(
    agent: &Agent,
    record: &InstanceRecord,
    service: &ServiceSpec,
    cwd: &Path,
    deadline: Duration,
) -> Result<(), StartFailure> {
    let started = Instant::now();
    let env = environment(service, &record.id, &record.release, record.port);
    let id = record.id.clone();
    let current = agent
        .db(move |s| s.instance(&id))
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| record.clone());
    let (Some(pid), Some(start_time)) = (current.pid, current.start_time) else {
        return Err(StartFailure {
            reason: "the instance has no process".to_owned(),
            log_tail: Vec::new(),
            cause: None,
        });
    };
    let confinement =
        check_confinement(agent, &record.project, service).map_err(|reason| StartFailure {
            reason,
            log_tail: Vec::new(),
            cause: None,
        })?;
    let start_period = service
        .health
        .as_ref()
        .map_or(Duration::ZERO, |h| h.start_period.as_std());
    let mut last_error = String::from("not checked yet");
    loop {
        if !process::is_running(pid, start_time) {
            // The relay writes how the process ended just after it ends.
            let mut exit = process::read_exit(&agent.paths.run(), &record.id);
            let waited = Instant::now();
            while exit.is_none() && waited.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                exit = process::read_exit(&agent.paths.run(), &record.id);
            }
            let what = exit.map_or_else(|| "exited".to_owned(), |e| e.to_string());
            let reason = format!("instance {} {what} while starting", record.id);
            return Err(StartFailure {
                cause: Some(Cause::new(Code::InstanceExited, &reason)),
                reason,
                log_tail: stderr_tail(agent, &record.project, &record.id, 20),
            });
        }
        let elapsed = started.elapsed();
        match &service.health {
            None => {
                if elapsed >= start_period.max(Duration::from_secs(1)) {
                    return Ok(());
                }
            }
            Some(_) => match probe(agent, record, service, cwd, &env, &confinement).await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            },
        }
        if elapsed > deadline + start_period {
            let reason = format!(
                "instance {} did not become healthy within {}s: {last_error}",
                record.id,
                (deadline + start_period).as_secs()
            );
            return Err(StartFailure {
                cause: Some(Cause::new(Code::InstanceUnhealthy, &reason)),
                reason,
                log_tail: stderr_tail(agent, &record.project, &record.id, 20),
            });
        }
        tokio::time::sleep(starting_pause(service)).await;
    }
}

/// How long a starting instance waits between checks, until its first
/// passes: its interval, at most 250 ms; an HTTP or TCP check (a request on
/// loopback, cheap) every 20 ms at most, so a deploy waits for the instance
/// to answer, not for the next tick of its interval. A command check (a
/// process, or an exec in the container) keeps its interval.
fn starting_pause(service: &ServiceSpec) -> Duration {
    match &service.health {
        None => Duration::from_millis(100),
        Some(health) => {
            let most = match health.check {
                Check::Command { .. } => Duration::from_millis(250),
                Check::Http { .. } | Check::Tcp => Duration::from_millis(20),
            };
            health.interval.as_std().min(most)
        }
    }
}

/// Runs the service's health check once against the instance: a command
/// runs inside a container's instance, or beside a process's.
pub async fn probe(
    agent: &Agent,
    record: &InstanceRecord,
    service: &ServiceSpec,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    confinement: &Confinement,
) -> Result<(), String> {
    let Some(health) = &service.health else {
        return Ok(());
    };
    let timeout = health.timeout.as_std();
    match &health.check {
        Check::Command { command } if crate::container_instance::is_container(service) => {
            crate::container_instance::probe_command(agent, record, command, timeout).await
        }
        Check::Tcp if crate::container_instance::is_container(service) => {
            crate::container_instance::probe_tcp(agent, record, service, timeout).await
        }
        check => health::probe(check, record.port, timeout, cwd, env, confinement).await,
    }
}

/// Stops an instance gracefully, records it in `state`, and frees its cgroup
/// and, unless it is to be started again (`Backoff`), its port.
pub async fn stop(
    agent: &Agent,
    record: &InstanceRecord,
    timeout: Duration,
    state: InstanceState,
) -> StopOutcome {
    let outcome = if crate::container_instance::runs_in_container(agent, record).await {
        crate::container_instance::stop(agent, record, timeout).await
    } else {
        stop_process(agent, record, timeout).await
    };
    let id = record.id.clone();
    let ports = agent
        .ports
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let _ = agent
        .db(move |s| {
            s.set_instance_state(&id, state)?;
            // An instance stopped to be started again keeps its port, which
            // it will listen on again: given back, it could be leased to another.
            if state == InstanceState::Backoff {
                return Ok(None);
            }
            Ok(ports.release(s, &id).ok().flatten())
        })
        .await;
    agent.cgroups.remove(&cgroup_name(agent, record));
    if state != InstanceState::Backoff {
        agent.tails.forget(&record.id);
        // Its process is gone and recorded so: its pid and exit files say nothing more.
        if outcome != StopOutcome::NotRunning || record.pid.is_some() {
            process::clear_run_files(&agent.paths.run(), &record.id);
        }
    }
    outcome
}

/// Stops an instance's process (and its group) gracefully.
async fn stop_process(agent: &Agent, record: &InstanceRecord, timeout: Duration) -> StopOutcome {
    match (record.pid, record.start_time) {
        (Some(pid), Some(start_time)) => {
            tokio::task::spawn_blocking(move || process::stop(pid, start_time, timeout))
                .await
                .unwrap_or(StopOutcome::NotRunning)
        }
        _ => {
            // Started but never recorded: the relay may still have written its pid file.
            match process::read_pid_file(&agent.paths.run(), &record.id) {
                Some(pidfile) => tokio::task::spawn_blocking(move || {
                    process::stop(pidfile.pid, pidfile.start_time, timeout)
                })
                .await
                .unwrap_or(StopOutcome::NotRunning),
                None => StopOutcome::NotRunning,
            }
        }
    }
}

/// The name of an instance's cgroup. Every agent on a host makes its cgroups
/// under the same parent, and an instance id is unique only within one state
/// directory, so the name also carries the project and a digest of the state
/// directory: two agents must never share a cgroup, as removing one kills
/// whatever is left in it.
pub fn cgroup_name(agent: &Agent, record: &InstanceRecord) -> String {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    let digest = sha2::Sha256::digest(agent.state_dir().as_os_str().as_bytes());
    let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.{}.{short}", record.project, record.id)
}

/// The last `n` lines the instance wrote to stderr.
pub fn stderr_tail(agent: &Agent, project: &str, instance: &str, n: usize) -> Vec<String> {
    if let Some(lines) = agent.tails.stderr(instance, n) {
        return lines;
    }
    let lines = process::read_log(&agent.paths.logs(project), instance, None, None);
    let stderr: Vec<String> = lines
        .into_iter()
        .filter(|(_, stream, _)| *stream == Stream::Stderr)
        .map(|(_, _, line)| line)
        .collect();
    stderr[stderr.len().saturating_sub(n)..].to_vec()
}

/// The instance as the store has it now (with its pid, once launched).
pub(crate) async fn refreshed(agent: &Agent, record: &InstanceRecord) -> InstanceRecord {
    let id = record.id.clone();
    agent
        .db(move |s| s.instance(&id))
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| record.clone())
}

/// An instance id: service, release and replica, readable in `ps` and logs.
/// Ids are one key across the agent's projects, whose services and release
/// ids (`web`, `r1`) repeat: 32 random bits keep them apart.
pub fn instance_id(service: &str, release: &str, replica: u32) -> String {
    format!(
        "{service}-{release}-{replica}-{:08x}",
        rand::random::<u32>()
    )
}

/// The exit an instance left, if it has exited.
pub fn exit_of(agent: &Agent, instance: &str) -> Option<Exit> {
    process::read_exit(&agent.paths.run(), instance)
}
