//! A deploy that would change nothing on this host: it already runs the
//! request's artifact and configuration, with the same secret values, every
//! service on one release with all its instances live as they should run.
//! Asked as part of an environment-wide deployment, the agent makes no new
//! release then: it records the deployment on the release it runs.

use gantry_core::agent_api::{
    DeployRequest, DeployResult, InstanceState, Outcome, Release, ServiceSpec,
};

use crate::agent::Agent;
use crate::error::AgentError;
use crate::status;
use crate::store::InstanceRecord;

/// The release this host runs, when `request` (with a deployment) asks for
/// nothing else; `None` when anything differs or cannot be told.
pub(crate) async fn already_running(
    agent: &Agent,
    request: &DeployRequest,
) -> Result<Option<Release>, AgentError> {
    if request.deployment.is_none() {
        return Ok(None);
    }
    let p = request.project.clone();
    let current = agent.db(move |s| s.current_all(&p)).await?;
    let mut ids: Vec<&String> = current.values().collect();
    ids.dedup();
    let names: Vec<&String> = current.keys().collect();
    let mut wanted: Vec<&String> = request.services.iter().map(|s| &s.name).collect();
    wanted.sort();
    let [id] = ids.as_slice() else {
        return Ok(None);
    };
    if names != wanted {
        return Ok(None);
    }
    let (p, i) = (request.project.clone(), (*id).clone());
    let Some(release) = agent.db(move |s| s.release(&p, &i)).await? else {
        return Ok(None);
    };
    let same = release.outcome == Outcome::Succeeded
        && release.environment == request.environment
        && release.artifact_digest == request.artifact.digest
        && release.config_hash == request.config_hash
        && same_secrets(agent, request)
        && services_as_asked(agent, &release, request).await;
    Ok(same.then_some(release))
}

/// Whether every secret the request carries has the value the host keeps.
fn same_secrets(agent: &Agent, request: &DeployRequest) -> bool {
    let kept = crate::credentials::read_secrets(&agent.paths.secrets(&request.project));
    request
        .secrets
        .iter()
        .all(|(name, value)| kept.get(name) == Some(value))
}

/// Whether each service runs as the request's would: its instances of
/// `release` live, as many as its replicas, each with the fingerprint the
/// request's service would have. A static service runs nothing; the same
/// artifact serves the same files.
async fn services_as_asked(agent: &Agent, release: &Release, request: &DeployRequest) -> bool {
    for service in &request.services {
        if crate::site::is_static(service) {
            continue;
        }
        let Some(fingerprint) = crate::fingerprint::of(
            agent,
            &release.project,
            &release.environment,
            &release.artifact_digest,
            service,
        )
        .await
        else {
            return false;
        };
        let (p, n) = (release.project.clone(), service.name.clone());
        let old: Vec<_> = agent
            .db(move |s| s.instances(&p))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.service == n && i.is_active())
            .collect();
        if !unchanged(agent, service, &old, &fingerprint).await {
            return false;
        }
    }
    true
}

/// Records the request's deployment on `release`, which the host keeps
/// running, and answers as a deploy that changed nothing.
pub(crate) async fn keep(
    agent: &Agent,
    release: Release,
    request: &DeployRequest,
) -> Result<DeployResult, AgentError> {
    let (p, id) = (release.project.clone(), release.id.clone());
    let mark = request.deployment.clone();
    let release = agent
        .db(move |s| {
            if let Some(mark) = &mark {
                s.mark_deployment(&p, &id, mark)?;
            }
            s.release(&p, &id)
        })
        .await?
        .unwrap_or(release);
    let services =
        status::services(agent, &release.project, status::ContainerMemory::Skipped).await?;
    Ok(DeployResult {
        unchanged: request.services.iter().map(|s| s.name.clone()).collect(),
        release,
        services,
        removed: Vec::new(),
        kept: true,
    })
}

/// Whether `old` is the service as it should run: as many live instances
/// as it has replicas, each running what `fingerprint` says.
pub(crate) async fn unchanged(
    agent: &Agent,
    service: &ServiceSpec,
    old: &[InstanceRecord],
    fingerprint: &str,
) -> bool {
    if old.len() != service.replicas as usize || old.iter().any(|i| i.state != InstanceState::Live)
    {
        return false;
    }
    let ids: Vec<String> = old.iter().map(|i| i.id.clone()).collect();
    let recorded = agent
        .db(move |s| {
            ids.iter()
                .map(|id| s.fingerprint(id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap_or_default();
    recorded.len() == old.len() && recorded.iter().all(|f| f.as_deref() == Some(fingerprint))
}
