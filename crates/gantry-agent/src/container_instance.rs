//! An instance of an `image` service: one container (`container::Engine`),
//! started, checked and stopped where `instance` does it for processes.
//! The container's main process is recorded as the instance's pid (with
//! its start time), so the supervisor notices its exit and the restart
//! policy applies, and a restarted agent re-adopts it, as for processes;
//! `reconcile` then removes every container the store does not count.
//!
//! Ports: the container listens on the service's port (a fixed number, or
//! for a named port the one allocated, also given as `$PORT`), published
//! on 127.0.0.1 on the instance's allocated port, which the proxy routes to.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use gantry_core::agent_api::ServiceSpec as Service;
use gantry_core::agent_api::v1::{Port, Workload};

use crate::agent::Agent;
use crate::agent::now_ms;
use crate::container::{
    ContainerError, ContainerSpec, Engine, Identity, Publish, Resources, SecretValue, VolumeMount,
    container_name,
};
use crate::process::{LogWriter, MAX_LINE, ResourceLimits, StopOutcome};
use crate::store::InstanceRecord;
use gantry_core::agent_api::{Cause, Stream};

/// Where the Docker engine listens unless `DOCKER_HOST` says otherwise.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The Docker engine's socket for an agent whose environment holds
/// `docker_host` (`DOCKER_HOST`, as the docker CLI reads it): unset or
/// empty, [`DOCKER_SOCKET`]; `unix:///path`, that path (rootless Docker,
/// Podman's socket, a second engine). Any other scheme is refused: the
/// agent speaks to its engine over a Unix socket only.
pub fn docker_socket(docker_host: Option<&str>) -> Result<std::path::PathBuf, ContainerError> {
    match docker_host.map(str::trim) {
        None | Some("") => Ok(DOCKER_SOCKET.into()),
        Some(value) => match value.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => Ok(path.into()),
            _ => Err(ContainerError::Unreachable {
                socket: value.into(),
                message: "this DOCKER_HOST is not supported: the agent reaches Docker only over a Unix socket (DOCKER_HOST=unix:///path)".to_owned(),
            }),
        },
    }
}

pub fn is_container(service: &Service) -> bool {
    matches!(service.workload, Workload::Compose { .. })
}

/// Whether the service's containers mount volumes (a database's data
/// directory), which two of them must not share unless it says they may.
pub fn has_volumes(service: &Service) -> bool {
    is_container(service) && !service.volumes.is_empty()
}

/// The agent's engine, connected on first use; the error with its code.
pub async fn engine(agent: &Agent) -> Result<&Engine, String> {
    connect(agent).await.map_err(|e| e.coded())
}

/// [`engine`], its error typed: a deploy records the error's code.
pub(crate) async fn connect(agent: &Agent) -> Result<&Engine, ContainerError> {
    agent
        .containers
        .get_or_try_init(|| async {
            let socket = docker_socket(std::env::var("DOCKER_HOST").ok().as_deref())?;
            Engine::connect(
                &socket,
                &agent.paths.root.join("container-secrets"),
                &agent_label(agent),
            )
            .await
        })
        .await
}

/// Why a container did not start: `reason` for people (a container
/// error's ends with its code), and that code as the cause, for the failed
/// release to record.
#[derive(Debug)]
pub struct LaunchFailure {
    pub reason: String,
    pub cause: Option<Cause>,
}

fn container_failure(error: &ContainerError, reason: String) -> LaunchFailure {
    LaunchFailure {
        reason,
        cause: Some(Cause::new(error.code(), error.to_string())),
    }
}

/// This agent's `dev.gantry.agent` label: a digest of its state directory.
fn agent_label(agent: &Agent) -> String {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    let digest = sha2::Sha256::digest(agent.state_dir().as_os_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The port the service listens on inside its container: the fixed one,
/// or for a named port the one allocated to the instance.
fn container_port(service: &Service, record: &InstanceRecord) -> Option<u16> {
    match (&service.port, record.port) {
        (Some(Port::Fixed(port)), _) => Some(*port),
        (Some(Port::Named(_)), Some(port)) => Some(port),
        _ => None,
    }
}

/// The container's spec for `record`, deployed in `environment`, held to
/// `limits`.
pub fn spec(
    record: &InstanceRecord,
    service: &Service,
    environment: &str,
    limits: &ResourceLimits,
) -> Result<ContainerSpec, String> {
    let Workload::Compose { image } = &service.workload else {
        return Err(format!("service `{}` is not an image", service.name));
    };
    let container_port = container_port(service, record);
    // The image's own environment (PATH, HOME) stays: only the service's
    // variables and the agent's are added.
    let mut env = service.env.clone();
    if matches!(service.port, Some(Port::Named(_)))
        && let Some(port) = container_port
    {
        env.insert("PORT".to_owned(), port.to_string());
    }
    env.insert("GANTRY_SERVICE".to_owned(), service.name.clone());
    env.insert("GANTRY_RELEASE".to_owned(), record.release.clone());
    env.insert("GANTRY_INSTANCE".to_owned(), record.id.clone());
    let volumes = service
        .volumes
        .iter()
        .map(|v| VolumeMount::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContainerSpec {
        identity: Identity {
            project: record.project.clone(),
            environment: environment.to_owned(),
            service: service.name.clone(),
            release: record.release.clone(),
            instance: record.id.clone(),
        },
        image: image.clone(),
        command: None,
        env,
        secrets: service.secrets.clone(),
        publish: container_port
            .zip(record.port)
            .map(|(container, host)| Publish { container, host }),
        resources: Resources {
            memory_bytes: limits.memory,
            cpus: limits.cpu,
            pids: limits.pids,
        },
        volumes,
        user: None,
        stop_timeout: service.stop_timeout.as_std(),
    })
}

/// Starts the container of an instance whose row exists (replacing a
/// container left by an earlier start of the same instance), and records
/// its main process; the failure says why it did not start, and carries
/// the container error's code when one caused it.
pub async fn launch(
    agent: &Agent,
    record: &InstanceRecord,
    service: &Service,
    limits: &ResourceLimits,
) -> Result<(), LaunchFailure> {
    let engine = connect(agent).await.map_err(|e| {
        container_failure(
            &e,
            format!("service `{}` needs Docker: {}", service.name, e.coded()),
        )
    })?;
    let (project, release) = (record.project.clone(), record.release.clone());
    let environment = agent
        .db(move |s| s.release(&project, &release))
        .await
        .ok()
        .flatten()
        .map(|r| r.environment)
        .ok_or_else(|| uncoded(format!("release {} is not in the store", record.release)))?;
    let mut spec = spec(record, service, &environment, limits).map_err(uncoded)?;
    for (key, value) in crate::addresses::of(agent, &record.project, service).await {
        spec.env.entry(key).or_insert(value);
    }
    let secrets = secret_values(agent, &record.project, &service.secrets);
    let name = spec.identity.container_name();
    engine
        .remove(&name)
        .await
        .map_err(|e| container_failure(&e, e.coded()))?;
    let id = engine.create(&spec, &secrets).await.map_err(|e| {
        container_failure(
            &e,
            format!(
                "cannot create `{}`'s container: {}",
                service.name,
                e.coded()
            ),
        )
    })?;
    engine.start(&id).await.map_err(|e| {
        container_failure(
            &e,
            format!("cannot start `{}`'s container: {}", service.name, e.coded()),
        )
    })?;
    let exited = || {
        let reason = format!("`{}`'s container exited at once", service.name);
        LaunchFailure {
            cause: Some(Cause::new(gantry_core::Code::InstanceExited, &reason)),
            reason,
        }
    };
    let pid = engine
        .main_pid(&id)
        .await
        .map_err(|e| container_failure(&e, e.coded()))?
        .ok_or_else(exited)?;
    let start_time = crate::process::start_time(pid).ok_or_else(exited)?;
    follow_logs(agent, engine, record, true);
    let id = record.id.clone();
    agent
        .db(move |s| s.set_instance_process(&id, pid, start_time, None))
        .await
        .map_err(|e| uncoded(e.to_string()))
}

fn uncoded(reason: String) -> LaunchFailure {
    LaunchFailure {
        reason,
        cause: None,
    }
}

/// Copies the container's output into the instance's log (where `gantry
/// logs`, the status tails and a failed start's report read it), until the
/// container stops: from its first line for a new container, from now for
/// one adopted after an agent restart (what it wrote meanwhile stays in
/// `docker logs`). One copier per instance.
fn follow_logs(agent: &Agent, engine: &Engine, record: &InstanceRecord, from_start: bool) {
    {
        let mut following = agent
            .container_logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !following.insert(record.id.clone()) {
            return;
        }
    }
    let name = container_name(&record.project, &record.id);
    let mut stream = engine.logs(&name, if from_start { None } else { Some(0) }, true);
    let (dir, id) = (agent.paths.logs(&record.project), record.id.clone());
    let (max_bytes, keep) = (agent.settings.log_max_bytes, agent.settings.log_keep);
    let following = std::sync::Arc::clone(&agent.container_logs);
    tokio::spawn(async move {
        use futures_util::StreamExt;
        if let Ok(mut writer) = LogWriter::open(&dir, &id, max_bytes, keep) {
            let mut pending = [Vec::new(), Vec::new()];
            let mut emit = |stream: Stream, bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                writer.write(now_ms(), stream, text.trim_end_matches(['\n', '\r']));
            };
            while let Some(Ok(chunk)) = stream.next().await {
                let (kind, buffer) = if chunk.stderr {
                    (Stream::Stderr, &mut pending[1])
                } else {
                    (Stream::Stdout, &mut pending[0])
                };
                buffer.extend_from_slice(&chunk.bytes);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    emit(kind, &line);
                }
                if buffer.len() > MAX_LINE {
                    let line: Vec<u8> = std::mem::take(buffer);
                    emit(kind, &line);
                }
            }
            for (kind, rest) in [Stream::Stdout, Stream::Stderr].into_iter().zip(pending) {
                if !rest.is_empty() {
                    emit(kind, &rest);
                }
            }
        }
        following
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&id);
    });
}

/// The project's secret values the service names, from the agent's
/// secrets file.
pub fn secret_values(
    agent: &Agent,
    project: &str,
    names: &[String],
) -> BTreeMap<String, SecretValue> {
    let all = crate::credentials::read_secrets(&agent.paths.secrets(project));
    names
        .iter()
        .filter_map(|name| {
            all.get(name)
                .map(|value| (name.clone(), SecretValue::new(value.clone())))
        })
        .collect()
}

/// Whether the instance is a container: its release deployed its service
/// from an image.
pub async fn runs_in_container(agent: &Agent, record: &InstanceRecord) -> bool {
    let (project, release) = (record.project.clone(), record.release.clone());
    agent
        .db(move |s| s.release(&project, &release))
        .await
        .ok()
        .flatten()
        .is_some_and(|release| {
            release
                .services
                .iter()
                .any(|s| s.name == record.service && is_container(s))
        })
}

/// Stops (SIGTERM, then SIGKILL after `timeout`) and removes the
/// instance's container; its volumes stay.
pub async fn stop(agent: &Agent, record: &InstanceRecord, timeout: Duration) -> StopOutcome {
    let engine = match engine(agent).await {
        Ok(engine) => engine,
        Err(e) => {
            tracing::warn!(instance = %record.id, error = %e, "cannot reach Docker to stop the container");
            return StopOutcome::NotRunning;
        }
    };
    let name = container_name(&record.project, &record.id);
    let stopped = engine.stop(&name, timeout).await;
    if let Err(e) = &stopped {
        tracing::warn!(instance = %record.id, error = %e, "cannot stop the container");
    }
    let removed = engine.remove(&name).await;
    if let Err(e) = &removed {
        tracing::warn!(instance = %record.id, error = %e, "cannot remove the container");
    }
    // A stop that failed, then a removal (which kills) that removed it: it ran.
    if stopped.unwrap_or_else(|_| removed.unwrap_or(false)) {
        StopOutcome::Exited
    } else {
        StopOutcome::NotRunning
    }
}

/// The memory the instance's container uses, as `docker stats` counts it;
/// `None` when it does not run or Docker cannot say.
pub async fn memory(agent: &Agent, project: &str, instance: &str) -> Option<u64> {
    let engine = engine(agent).await.ok()?;
    match engine.memory(&container_name(project, instance)).await {
        Ok(memory) => memory,
        Err(e) => {
            tracing::debug!(instance, error = %e, "cannot read the container's memory");
            None
        }
    }
}

/// Connects to the container's port on its own address: its published
/// loopback port would accept through Docker's proxy before the service
/// inside listens.
pub async fn probe_tcp(
    agent: &Agent,
    record: &InstanceRecord,
    service: &Service,
    timeout: Duration,
) -> Result<(), String> {
    let engine = engine(agent).await?;
    let name = container_name(&record.project, &record.id);
    let state = engine
        .inspect(&name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no container {name}"))?;
    let address = state
        .address
        .ok_or_else(|| format!("{name} has no address on its network"))?;
    let port = container_port(service, record).ok_or("the service has no port to check")?;
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((address, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{address}:{port}: {e}")),
        Err(_) => Err(format!(
            "{address}:{port}: no answer within {}ms",
            timeout.as_millis()
        )),
    }
}

/// Runs a health command inside the instance's container.
pub async fn probe_command(
    agent: &Agent,
    record: &InstanceRecord,
    command: &str,
    timeout: Duration,
) -> Result<(), String> {
    let engine = engine(agent).await?;
    let name = container_name(&record.project, &record.id);
    let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()];
    let outcome = engine
        .exec(&name, &argv, timeout)
        .await
        .map_err(|e| e.to_string())?;
    match outcome.exit_code {
        Some(0) => Ok(()),
        Some(code) => Err(format!(
            "`{command}` exited with {code}: {}",
            outcome.output.trim()
        )),
        None => Err(format!(
            "`{command}` did not finish within {}s",
            timeout.as_secs()
        )),
    }
}

/// Removes the project's networks (one per environment) where none of its
/// active instances is a container any more: after `gantry stop`, or a
/// deploy that dropped its last image service. Docker refuses to remove a
/// network a container still uses, so another agent's containers keep theirs.
pub async fn remove_idle_networks(agent: &Agent, project: &str) {
    let p = project.to_owned();
    let Ok((releases, active)) = agent
        .db(move |s| {
            let active: Vec<InstanceRecord> = s
                .instances(&p)?
                .into_iter()
                .filter(InstanceRecord::is_active)
                .collect();
            Ok((s.releases(&p)?, active))
        })
        .await
    else {
        return;
    };
    let mut environments: BTreeMap<String, bool> = BTreeMap::new();
    for release in &releases {
        if release.services.iter().any(is_container) {
            environments.entry(release.environment.clone()).or_default();
        }
    }
    for record in &active {
        if let Some(release) = releases.iter().find(|r| r.id == record.release)
            && release
                .services
                .iter()
                .any(|s| s.name == record.service && is_container(s))
        {
            environments.insert(release.environment.clone(), true);
        }
    }
    if environments.values().all(|busy| *busy) {
        return;
    }
    let Ok(engine) = engine(agent).await else {
        return;
    };
    for (environment, _) in environments.iter().filter(|(_, busy)| !**busy) {
        if let Err(e) = engine.remove_network(project, environment).await {
            tracing::info!(project, environment, error = %e, "the network stays");
        }
    }
}

/// After a restart: removes every container of this agent that no active
/// instance counts. Nothing to do where Docker is absent and nothing ran.
pub async fn settle(agent: &Agent, active: &[InstanceRecord]) {
    let Ok(engine) = engine(agent).await else {
        return;
    };
    let mut counted = HashSet::new();
    for record in active {
        let (project, release) = (record.project.clone(), record.release.clone());
        let Some(release) = agent
            .db(move |s| s.release(&project, &release))
            .await
            .ok()
            .flatten()
        else {
            continue;
        };
        if let Some(service) = release.services.iter().find(|s| s.name == record.service)
            && is_container(service)
        {
            follow_logs(agent, engine, record, false);
        }
        counted.insert(Identity {
            project: record.project.clone(),
            environment: release.environment,
            service: record.service.clone(),
            release: record.release.clone(),
            instance: record.id.clone(),
        });
    }
    match engine.settle(&counted).await {
        Ok(plan) => {
            for step in plan {
                if let crate::container::Settle::Remove { why, .. } = step {
                    tracing::warn!(%why, "removed a container");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot settle the containers"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_socket_comes_from_docker_host_when_it_names_a_unix_socket() {
        let socket = |value: Option<&str>| docker_socket(value).map(|p| p.display().to_string());
        assert_eq!(socket(None).unwrap(), DOCKER_SOCKET);
        assert_eq!(socket(Some("")).unwrap(), DOCKER_SOCKET);
        assert_eq!(
            socket(Some("unix:///run/user/1000/docker.sock")).unwrap(),
            "/run/user/1000/docker.sock"
        );
        for refused in ["tcp://10.0.0.1:2375", "ssh://host", "unix://relative.sock"] {
            let error = docker_socket(Some(refused)).unwrap_err();
            assert_eq!(error.code(), gantry_core::Code::ContainerUnreachable);
            assert!(
                error.to_string().contains("only over a Unix socket"),
                "{error}"
            );
        }
    }
}
