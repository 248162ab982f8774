//! `gantry stop` and `gantry restart` on this host: a project's services, or
//! one of them, stopped or restarted without cutting a request. Each answers
//! with the project's status afterwards.

use std::time::Duration;

use gantry_core::Code;
use gantry_core::agent_api::{InstanceState, ServiceSelector, Status};

use crate::agent::Agent;
use crate::error::AgentError;
use crate::instance::{self, refreshed};
use crate::status;
use crate::store::InstanceRecord;

/// Stops the selected services' instances: out of the proxy's routes and
/// drained first, so no request is cut.
pub(crate) async fn stop(
    agent: &Agent,
    project: String,
    selector: ServiceSelector,
) -> Result<Status, AgentError> {
    let records: Vec<_> = selected(agent, &project, &selector)
        .await?
        .into_iter()
        .filter(|r| r.is_active() || r.state == InstanceState::Failed)
        .collect();
    let mut timeout = Duration::ZERO;
    for record in &records {
        timeout = timeout.max(stop_timeout(agent, record).await);
    }
    agent.proxy.drain_out(&records, timeout).await;
    for record in &records {
        let timeout = stop_timeout(agent, record).await;
        let fresh = refreshed(agent, record).await;
        instance::stop(agent, &fresh, timeout, InstanceState::Stopped).await;
    }
    agent.proxy.refresh().await;
    crate::container_instance::remove_idle_networks(agent, &project).await;
    status(agent, project).await
}

/// Restarts the selected services' instances one at a time: out of the
/// proxy's routes and drained, stopped, started again by the supervisor,
/// and healthy before the next one goes.
pub(crate) async fn restart(
    agent: &Agent,
    project: String,
    selector: ServiceSelector,
) -> Result<Status, AgentError> {
    let records = selected(agent, &project, &selector).await?;
    for record in &records {
        let timeout = stop_timeout(agent, record).await;
        let live = record.state == InstanceState::Live;
        if live {
            agent
                .proxy
                .drain_out(std::slice::from_ref(record), timeout)
                .await;
        }
        // A stopped instance is started again as a live one would be, and
        // waited for as one.
        let stopped = record.state == InstanceState::Stopped;
        let fresh = refreshed(agent, record).await;
        instance::stop(agent, &fresh, timeout, InstanceState::Backoff).await;
        // A restart by hand starts the count afresh, crash history included;
        // the supervisor starts instances in backoff again at once.
        // Unhealthy until its check passes again: the proxy sends it nothing before.
        let id = record.id.clone();
        let _ = agent
            .db(move |s| {
                s.set_restarts(&id, 0)?;
                s.set_instance_health(&id, false)
            })
            .await;
        // The last one too, so the service serves on all when this returns;
        // one that was failing its checks is not waited for.
        if (live && record.healthy) || stopped {
            back_in_service(agent, record).await;
        }
    }
    agent.proxy.refresh().await;
    status(agent, project).await
}

/// `GET /v1/projects/{project}/status`.
pub(crate) async fn status(agent: &Agent, project: String) -> Result<Status, AgentError> {
    let services = status::services(agent, &project, status::ContainerMemory::Sampled).await?;
    Ok(Status {
        project,
        services,
        proxy_problem: agent.proxy.problem(),
    })
}

/// The instances of the selected services' current releases.
async fn selected(
    agent: &Agent,
    project: &str,
    selector: &ServiceSelector,
) -> Result<Vec<InstanceRecord>, AgentError> {
    let p = project.to_owned();
    let (records, current) = agent
        .db(move |s| Ok((s.instances(&p)?, s.current_all(&p)?)))
        .await?;
    if let Some(service) = &selector.service
        && !current.contains_key(service)
    {
        return Err(AgentError::not_found(
            Code::ServiceNotFound,
            format!("`{project}` runs no service `{service}`"),
            "see `gantry status` for the services",
        ));
    }
    Ok(records
        .into_iter()
        .filter(|r| selector.service.as_ref().is_none_or(|s| &r.service == s))
        .filter(|r| current.get(&r.service) == Some(&r.release))
        .collect())
}

/// Waits until the supervisor has the instance live and healthy again (at
/// most the health deadline).
async fn back_in_service(agent: &Agent, record: &InstanceRecord) {
    let deadline = tokio::time::Instant::now() + agent.settings.health_deadline;
    while tokio::time::Instant::now() < deadline {
        let now = refreshed(agent, record).await;
        if now.state == InstanceState::Live && now.healthy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long the instance's service gives it to stop, as its release says.
async fn stop_timeout(agent: &Agent, record: &InstanceRecord) -> Duration {
    let (p, r, name) = (
        record.project.clone(),
        record.release.clone(),
        record.service.clone(),
    );
    agent
        .db(move |s| s.release(&p, &r))
        .await
        .ok()
        .flatten()
        .and_then(|release| release.services.into_iter().find(|s| s.name == name))
        .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std())
}
