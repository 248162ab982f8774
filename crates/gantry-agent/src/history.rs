//! The project's releases as the API shows them: newest first, with the
//! project's secret values, credentials and URL passwords hidden.

use gantry_core::Code;
use gantry_core::agent_api::Release;

use crate::agent::Agent;
use crate::credentials::redact_releases;
use crate::error::AgentError;

/// `GET /v1/projects/{project}/releases`.
pub(crate) async fn releases(agent: &Agent, project: String) -> Result<Vec<Release>, AgentError> {
    let p = project.clone();
    let mut releases = agent.db(move |s| s.releases(&p)).await?;
    redact_releases(&agent.paths, &project, &mut releases);
    Ok(releases)
}

/// `GET /v1/projects/{project}/releases/{id}`: by id or number.
pub(crate) async fn release(
    agent: &Agent,
    project: String,
    id: String,
) -> Result<Release, AgentError> {
    let (p, i) = (project.clone(), id.clone());
    let mut release = agent.db(move |s| s.release(&p, &i)).await?.ok_or_else(|| {
        AgentError::not_found(
            Code::ReleaseNotFound,
            format!("`{project}` has no release `{id}`"),
            "list them with `gantry releases`",
        )
    })?;
    redact_releases(&agent.paths, &project, std::slice::from_mut(&mut release));
    Ok(release)
}
