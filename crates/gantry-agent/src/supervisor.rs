//! Keeps live instances running: notices exits, applies the restart policy
//! with exponential backoff and jitter, gives up after too many failures in a
//! window, and keeps each instance's health current.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::v1::Restart;
use gantry_core::agent_api::{Exit, InstanceState};
use rand::RngExt;

use crate::agent::{Agent, now_ms};
use crate::instance;
use crate::process;
use crate::store::InstanceRecord;

const TICK: Duration = Duration::from_millis(200);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the relay of an instance whose process is gone gets to record how
/// it ended: it first waits up to 2s for the service's output to drain.
const EXIT_GRACE: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Memory {
    /// Health checks failed in a row, by instance; shared with the probe tasks.
    probe_failures: Arc<std::sync::Mutex<HashMap<String, u32>>>,
    failures: HashMap<String, VecDeque<Instant>>,
    next_attempt: HashMap<String, Instant>,
    next_probe: HashMap<String, Instant>,
    /// When each instance was first seen without its process.
    gone_since: HashMap<String, Instant>,
    specs: HashMap<(String, String), (ServiceSpec, PathBuf)>,
}

pub async fn run(agent: Arc<Agent>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        let Ok(records) = agent.db(|s| s.active_instances()).await else {
            continue;
        };
        for record in &records {
            agent
                .tails
                .follow(&agent.paths.logs(&record.project), &record.id);
        }
        let reader = Arc::clone(&agent);
        let _ = tokio::task::spawn_blocking(move || reader.tails.poll()).await;
        for record in records {
            if matches!(record.state, InstanceState::Live | InstanceState::Backoff) {
                tend(&agent, &mut memory, record).await;
            }
        }
    }
}

/// The service as the instance's release deployed it, and where it runs;
/// read from the store once per release and service.
async fn spec(
    agent: &Agent,
    memory: &mut Memory,
    record: &InstanceRecord,
) -> Option<(ServiceSpec, PathBuf)> {
    let key = (
        record.release.clone(),
        format!("{}/{}", record.project, record.service),
    );
    if let Some(found) = memory.specs.get(&key) {
        return Some(found.clone());
    }
    let (p, r) = (record.project.clone(), record.release.clone());
    let release = agent.db(move |s| s.release(&p, &r)).await.ok().flatten()?;
    let spec = release
        .services
        .into_iter()
        .find(|s| s.name == record.service)?;
    let cwd = instance::working_dir(agent, &record.project, &release.artifact_digest, &spec);
    memory.specs.insert(key, (spec.clone(), cwd.clone()));
    Some((spec, cwd))
}

async fn tend(agent: &Arc<Agent>, memory: &mut Memory, record: InstanceRecord) {
    let Some((service, cwd)) = spec(agent, memory, &record).await else {
        return;
    };
    let running = match (record.pid, record.start_time) {
        (Some(pid), Some(start)) => process::is_running(pid, start),
        _ => false,
    };
    match record.state {
        InstanceState::Live if running => probe(agent, memory, &record, &service, cwd),
        InstanceState::Live if exit_pending(agent, memory, &record) => {}
        InstanceState::Live => {
            exited(agent, memory, &record, &service).await;
            reroute(agent);
        }
        InstanceState::Backoff => {
            let due = memory
                .next_attempt
                .get(&record.id)
                .is_none_or(|at| Instant::now() >= *at);
            if due {
                restart(agent, memory, &record, &service, &cwd).await;
                reroute(agent);
            }
        }
        _ => {}
    }
}

/// Replaces the proxy's route table in the background: an instance left the
/// set that can serve (it exited, was given up on, failed its checks) or
/// came back to it, so the proxy never routes to a dead instance for long.
fn reroute(agent: &Arc<Agent>) {
    let agent = Arc::clone(agent);
    tokio::spawn(async move { agent.proxy.refresh().await });
}

/// Whether the relay of an instance whose process is gone has yet to write
/// how it ended. Handled before that, the exit would be recorded as unknown.
fn exit_pending(agent: &Agent, memory: &mut Memory, record: &InstanceRecord) -> bool {
    if instance::exit_of(agent, &record.id).is_some() {
        memory.gone_since.remove(&record.id);
        return false;
    }
    let relay_running = record
        .relay_pid
        .and_then(|pid| Some((pid, process::start_time(pid)?)))
        .is_some_and(|(pid, start)| process::is_running(pid, start));
    let since = *memory
        .gone_since
        .entry(record.id.clone())
        .or_insert_with(Instant::now);
    let pending = relay_running && since.elapsed() < EXIT_GRACE;
    if !pending {
        memory.gone_since.remove(&record.id);
    }
    pending
}

async fn exited(
    agent: &Agent,
    memory: &mut Memory,
    record: &InstanceRecord,
    service: &ServiceSpec,
) {
    let exit = instance::exit_of(agent, &record.id).unwrap_or(Exit {
        code: None,
        signal: None,
        oom: false,
        at: now_ms(),
    });
    let clean = exit.code == Some(0) && !exit.oom;
    let wants_restart = match service.restart {
        Restart::Always => true,
        Restart::OnFailure => !clean,
        Restart::Never => false,
    };
    let window = agent.settings.failure_window;
    if record.restarts == 0 {
        // Never restarted since it was started by a deploy or by hand.
        memory.failures.remove(&record.id);
    }
    let failures = memory.failures.entry(record.id.clone()).or_default();
    let now = Instant::now();
    failures.push_back(now);
    while failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        failures.pop_front();
    }
    let count = u32::try_from(failures.len()).unwrap_or(u32::MAX);
    let state = if !wants_restart {
        if clean {
            InstanceState::Stopped
        } else {
            InstanceState::Failed
        }
    } else if count >= agent.settings.max_failures {
        InstanceState::Failed
    } else {
        InstanceState::Backoff
    };
    tracing::warn!(instance = %record.id, service = %record.service, %exit, ?state, "instance exited");
    if state == InstanceState::Backoff {
        memory
            .next_attempt
            .insert(record.id.clone(), now + backoff(count));
    }
    let (id, restarts) = (record.id.clone(), record.restarts);
    let _ = agent
        .db(move |s| {
            s.record_exit(&id, &exit, restarts)?;
            s.set_instance_health(&id, false)?;
            s.set_instance_state(&id, state)
        })
        .await;
}

/// Exponential backoff with full jitter: a random delay up to base × 2^(n-1), capped.
fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let ms = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

async fn restart(
    agent: &Agent,
    memory: &mut Memory,
    record: &InstanceRecord,
    service: &ServiceSpec,
    cwd: &Path,
) {
    memory.next_attempt.remove(&record.id);
    let (id, restarts) = (record.id.clone(), record.restarts + 1);
    let _ = agent
        .db(move |s| {
            s.set_restarts(&id, restarts)?;
            s.set_instance_state(&id, InstanceState::Live)
        })
        .await;
    if let Err(failure) = instance::launch(agent, record, service, cwd).await {
        tracing::warn!(instance = %record.id, reason = %failure.reason, "restart failed");
        let id = record.id.clone();
        let _ = agent
            .db(move |s| s.set_instance_state(&id, InstanceState::Backoff))
            .await;
        memory
            .next_attempt
            .insert(record.id.clone(), Instant::now() + BACKOFF_MAX);
    }
}

/// Probes a live instance when its interval has passed, in the background.
fn probe(
    agent: &Arc<Agent>,
    memory: &mut Memory,
    record: &InstanceRecord,
    service: &ServiceSpec,
    cwd: PathBuf,
) {
    let now = Instant::now();
    if memory
        .next_probe
        .get(&record.id)
        .is_some_and(|at| now < *at)
    {
        return;
    }
    let Some(health) = service.health.clone() else {
        if !record.healthy {
            let (agent, id) = (Arc::clone(agent), record.id.clone());
            tokio::spawn(async move {
                let _ = agent.db(move |s| s.set_instance_health(&id, true)).await;
            });
        }
        memory
            .next_probe
            .insert(record.id.clone(), now + Duration::from_secs(1));
        return;
    };
    memory
        .next_probe
        .insert(record.id.clone(), now + health.interval.as_std());
    let agent = Arc::clone(agent);
    let record = record.clone();
    let env = instance::environment(service, &record.id, &record.release, record.port);
    let failures = Arc::clone(&memory.probe_failures);
    let confinement = instance::check_confinement(&agent, &record.project, service);
    let service = service.clone();
    tokio::spawn(async move {
        let passed = match confinement {
            Ok(confinement) => instance::probe(&agent, &record, &service, &cwd, &env, &confinement)
                .await
                .is_ok(),
            Err(_) => false,
        };
        // Unhealthy only after `retries` failures in a row; one pass is enough to recover.
        let in_a_row = {
            let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
            let count = failures.entry(record.id.clone()).or_default();
            *count = if passed { 0 } else { count.saturating_add(1) };
            *count
        };
        let healthy = passed || (record.healthy && in_a_row < health.retries);
        if healthy != record.healthy {
            let id = record.id.clone();
            let _ = agent.db(move |s| s.set_instance_health(&id, healthy)).await;
            agent.proxy.refresh().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 1..20 {
            let d = backoff(n);
            assert!(d <= BACKOFF_MAX, "{n}: {d:?}");
            assert!(d >= BACKOFF_BASE / 2, "{n}: {d:?}");
        }
        assert!(backoff(1) <= BACKOFF_BASE);
        assert!(backoff(6) >= BACKOFF_BASE * 8, "grows exponentially");
    }
}
