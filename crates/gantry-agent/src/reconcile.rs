//! After a restart, before serving anything: make the store and the
//! processes agree. A deploy that was under way is settled service by service
//! (a service that had switched keeps its new release; one that had not keeps
//! its old one), draining instances are stopped, and any process the store
//! does not count as running is stopped, so no orphan survives.

use std::time::Duration;

use gantry_core::agent_api::{InstanceState, Outcome};

use crate::agent::Agent;
use crate::instance;
use crate::process;
use crate::store::{InstanceRecord, StoreError};

pub async fn reconcile(agent: &Agent) -> Result<(), StoreError> {
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
        let mut settled = release.clone();
        settled.outcome = Outcome::Failed;
        settled.reason = Some(
            "interrupted: the agent stopped during this deploy; services that had switched run it, the others kept their previous release".to_owned(),
        );
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
    Ok(())
}

fn stop_timeout(release: &gantry_core::agent_api::Release, service: &str) -> Duration {
    release
        .services
        .iter()
        .find(|s| s.name == service)
        .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std())
}
