//! After a restart, before serving anything: make the store and the
//! processes agree. A deploy that was under way is settled service by service
//! (a service that had switched keeps its new release; one that had not keeps
//! its old one) and recorded as succeeded if every service had switched,
//! failed otherwise; draining instances are stopped, and any process the
//! store does not count as running is stopped, so no orphan survives. Ports
//! leased to no running instance are given back.
//!
//! The previous agent may have died while a relay it started was still
//! starting its service: the relay lives on and writes its pid file a moment
//! later. So reconciling begins by waiting for those relays; a pid file that
//! appeared after the orphans were looked for would be an orphan for good.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_core::agent_api::{InstanceState, Outcome, Release};

use crate::agent::Agent;
use crate::instance;
use crate::process;
use crate::store::{InstanceRecord, StoreError};

/// How long a relay may take to start its service; `instance::launch` gives it as long.
const RELAY_START: Duration = Duration::from_secs(10);

pub async fn reconcile(agent: &Agent) -> Result<(), StoreError> {
    let run_dir = agent.paths.run();
    let _ = tokio::task::spawn_blocking(move || wait_for_starting_relays(&run_dir)).await;
    let interrupted = agent.db(|s| s.deploying()).await?;
    let mut instances: Vec<InstanceRecord> = agent.db(|s| s.active_instances()).await?;
    for release in &interrupted {
        for record in instances
            .iter()
            .filter(|i| i.release == release.id && i.project == release.project)
        {
            if record.state == InstanceState::Starting {
                tracing::info!(instance = %record.id, "stopping an instance of an interrupted deploy");
                let timeout = stop_timeout(release, &record.service);
                instance::stop(agent, record, timeout, InstanceState::Stopped).await;
            }
        }
        start_replaced_again(agent, release).await;
        let project = release.project.clone();
        let current = agent.db(move |s| s.current_all(&project)).await?;
        let mut settled = release.clone();
        (settled.outcome, settled.reason) = settle(release, &current);
        tracing::info!(release = %release.id, outcome = ?settled.outcome, reason = settled.reason.as_deref().unwrap_or(""), "settled an interrupted deploy");
        agent.db(move |s| s.update_release(&settled)).await?;
    }

    instances = agent.db(|s| s.active_instances()).await?;
    for record in &instances {
        match record.state {
            // A cutover had happened: the old instance was on its way out.
            InstanceState::Draining => {
                instance::stop(
                    agent,
                    record,
                    Duration::from_secs(10),
                    InstanceState::Stopped,
                )
                .await;
            }
            // Not in a deploy any more, so not about to become live.
            InstanceState::Starting => {
                instance::stop(
                    agent,
                    record,
                    Duration::from_secs(10),
                    InstanceState::Stopped,
                )
                .await;
            }
            _ => {}
        }
    }

    // Any relay or service whose instance the store does not count as running.
    let active: Vec<String> = agent
        .db(|s| s.active_instances())
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    for (instance, pid) in process::pid_files(&agent.paths.run()) {
        if !active.contains(&instance) && process::is_running(pid.pid, pid.start_time) {
            tracing::warn!(%instance, pid = pid.pid, "stopping an orphan");
            let (p, s) = (pid.pid, pid.start_time);
            let _ =
                tokio::task::spawn_blocking(move || process::stop(p, s, Duration::from_secs(5)))
                    .await;
        }
    }

    // Any container of this agent's the store does not count as running.
    let active = agent.db(|s| s.active_instances()).await?;
    crate::container_instance::settle(agent, &active).await;

    for lease in agent.db(|s| s.release_unused_leases()).await? {
        tracing::info!(instance = %lease.instance_id, port = lease.port, "giving back the port of an instance that is not running");
    }
    Ok(())
}

/// The services `release` was replacing stop-first when the agent died:
/// not switched to it, their instances stopped for it (`draining`, of the
/// release they still run). Their release is started again, so a database
/// stopped for a replacement that never finished is back.
async fn start_replaced_again(agent: &Agent, release: &Release) {
    let p = release.project.clone();
    let Ok((current, instances)) = agent
        .db(move |s| Ok((s.current_all(&p)?, s.instances(&p)?)))
        .await
    else {
        return;
    };
    for service in &release.services {
        let Some(previous) = current.get(&service.name).filter(|c| **c != release.id) else {
            continue;
        };
        let stopped: Vec<InstanceRecord> = instances
            .iter()
            .filter(|i| {
                i.service == service.name
                    && &i.release == previous
                    && i.state == InstanceState::Draining
            })
            .cloned()
            .collect();
        if stopped.is_empty() {
            continue;
        }
        match crate::deploy::start_again(agent, &stopped, &agent.proxy).await {
            Ok(id) => {
                tracing::info!(service = %service.name, release = %id, "started again the release an interrupted stop-first deploy had stopped");
            }
            Err(e) => {
                tracing::warn!(service = %service.name, error = %e, "cannot start again the release an interrupted stop-first deploy had stopped");
            }
        }
    }
}

/// Waits until every relay started for `run_dir` has either written its pid
/// file or ended, for at most [`RELAY_START`].
fn wait_for_starting_relays(run_dir: &Path) {
    let deadline = Instant::now() + RELAY_START;
    loop {
        let starting: Vec<(u32, String)> = relays(run_dir)
            .into_iter()
            .filter(|(relay, instance)| {
                process::read_pid_file(run_dir, instance).is_none_or(|p| p.relay_pid != *relay)
            })
            .collect();
        if starting.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(?starting, "relays did not start their services in time");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The live relays whose spec file is in `run_dir` (`gantry agent relay
/// --spec <run_dir>/<instance>.spec.json`), with their instance, found in
/// `/proc`: a relay that has not written its pid file is known nowhere else.
fn relays(run_dir: &Path) -> Vec<(u32, String)> {
    let Ok(run_dir) = run_dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let spec = args.windows(3).find_map(|w| match w {
                [b"relay", b"--spec", spec] => Some(*spec),
                _ => None,
            })?;
            let spec = PathBuf::from(std::str::from_utf8(spec).ok()?);
            let instance = spec.file_name()?.to_str()?.strip_suffix(".spec.json")?;
            let dir = spec.parent()?.canonicalize().ok()?;
            let alive = process::start_time(pid).is_some_and(|t| process::is_running(pid, t));
            (dir == run_dir && alive).then(|| (pid, instance.to_owned()))
        })
        .collect()
}

/// The outcome of a deploy the agent died in, from which services had
/// switched to it (`current`: the release each service runs). Once every
/// service has switched, all that was left was stopping old instances,
/// which reconciling does: the deploy succeeded. Otherwise it failed, and
/// the reason says which services run it.
fn settle(release: &Release, current: &BTreeMap<String, String>) -> (Outcome, Option<String>) {
    let (switched, kept): (Vec<&str>, Vec<&str>) = release
        .services
        .iter()
        .map(|s| s.name.as_str())
        .partition(|name| current.get(*name) == Some(&release.id));
    // No backticks: `status` reads the first backticked name of a failed
    // release's reason as the service that failed.
    let list = |names: &[&str]| names.join(", ");
    let reason = match (switched.as_slice(), kept.as_slice()) {
        (_, []) => return (Outcome::Succeeded, None),
        ([], _) => "interrupted: the agent stopped during this deploy, before any service switched to it; every service kept what it ran".to_owned(),
        _ => format!(
            "interrupted: the agent stopped during this deploy; {} switched to it, {} kept what {} ran",
            list(&switched),
            list(&kept),
            if kept.len() == 1 { "it" } else { "they" }
        ),
    };
    (Outcome::Failed, Some(reason))
}

fn stop_timeout(release: &Release, service: &str) -> Duration {
    release
        .services
        .iter()
        .find(|s| s.name == service)
        .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std())
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    fn release(services: &[&str]) -> Release {
        let services: Vec<serde_json::Value> = services
            .iter()
            .map(|name| {
                serde_json::json!({
                    "name": name, "driver": "process", "run": "true", "routes": [],
                    "replicas": 1, "env": {}, "secrets": [], "resources": {},
                    "depends_on": [], "volumes": [], "stop_timeout": "10s", "restart": "always",
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": "r2", "number": 2, "project": "shop", "environment": "production",
            "config_hash": "c0ffee", "artifact_digest": "ab", "created_at": 1,
            "outcome": "deploying", "log_tail": [], "phases": [], "services": services,
        }))
        .expect("a release")
    }

    #[test]
    fn an_interrupted_deploy_succeeded_once_every_service_had_switched() {
        let r2 = release(&["web", "worker"]);
        let current = |web: &str, worker: &str| {
            BTreeMap::from([
                ("web".to_owned(), web.to_owned()),
                ("worker".to_owned(), worker.to_owned()),
            ])
        };
        assert_eq!(
            settle(&r2, &current("r2", "r2")),
            (Outcome::Succeeded, None)
        );

        let (outcome, reason) = settle(&r2, &current("r2", "r1"));
        assert_eq!(outcome, Outcome::Failed);
        let reason = reason.expect("a reason");
        assert!(
            reason.contains("web switched to it, worker kept what it ran"),
            "{reason}"
        );

        let (outcome, reason) = settle(&r2, &current("r1", "r1"));
        assert_eq!(outcome, Outcome::Failed);
        assert!(
            reason
                .expect("a reason")
                .contains("before any service switched")
        );
        let (outcome, _) = settle(&r2, &BTreeMap::new());
        assert_eq!(
            outcome,
            Outcome::Failed,
            "a first deploy that never switched"
        );
    }

    /// A process that looks like a relay of `instance` in `run_dir` and has
    /// not started anything yet.
    fn fake_relay(run_dir: &Path, instance: &str) -> Child {
        let spec = run_dir.join(format!("{instance}.spec.json"));
        Command::new("/bin/sh")
            .args(["-c", "sleep 30; :", "agent", "relay", "--spec"])
            .arg(spec)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh")
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn relays_are_found_by_the_run_dir_of_their_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ours, theirs) = (dir.path().join("a/run"), dir.path().join("b/run"));
        for run in [&ours, &theirs] {
            std::fs::create_dir_all(run).expect("mkdir");
        }
        let mut relay = fake_relay(&ours, "web-r1-1-00af");
        let pid = relay.id();
        wait_until("the fake relay to show in /proc", || {
            relays(&ours).contains(&(pid, "web-r1-1-00af".to_owned()))
        });
        assert!(relays(&theirs).iter().all(|(p, _)| *p != pid));
        let _ = relay.kill();
        let _ = relay.wait();
        assert!(relays(&ours).iter().all(|(p, _)| *p != pid));
    }

    #[test]
    fn reconciling_waits_for_a_starting_relay_until_it_writes_its_pid_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).expect("mkdir");
        let mut relay = fake_relay(&run, "web-r1-1-00af");
        let relay_pid = relay.id();
        wait_until("the fake relay to show in /proc", || {
            relays(&run).iter().any(|(p, _)| *p == relay_pid)
        });
        let pid_file = run.join("web-r1-1-00af.pid");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let launched = process::Launched {
                pid: relay_pid,
                start_time: 1,
                relay_pid,
            };
            let json = serde_json::to_vec(&launched).expect("json");
            std::fs::write(pid_file, json).expect("write the pid file");
        });
        let started = Instant::now();
        wait_for_starting_relays(&run);
        let waited = started.elapsed();
        writer.join().expect("writer");
        assert!(
            waited >= Duration::from_millis(250) && waited < RELAY_START,
            "waited {waited:?}"
        );
        let _ = relay.kill();
        let _ = relay.wait();
    }
}
