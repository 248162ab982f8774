//! A rollback: an earlier release deployed again from its stored artifact,
//! with the services it ran. It is a deploy like any other, recorded as the
//! rollback of the release it goes back to, or, when it only gives the
//! release new secrets (`gantry secrets sync`), as a redeploy of it.

use std::sync::Arc;

use gantry_core::Code;
use gantry_core::agent_api::{
    DeployRequest, DeployResult, Outcome, Release, Reverted, RollbackRequest,
};

use crate::agent::Agent;
use crate::deploy;
use crate::error::AgentError;

/// `POST /v1/projects/{project}/rollback`.
pub(crate) async fn rollback(
    agent: Arc<Agent>,
    project: String,
    request: RollbackRequest,
) -> Result<DeployResult, AgentError> {
    if let Some(reverted) = &request.reverts {
        mark_failed(&agent, &project, reverted).await?;
    }
    let p = project.clone();
    let releases = agent.db(move |s| s.releases(&p)).await?;
    let target = match &request.to {
        Some(to) => releases
            .iter()
            .find(|r| &r.id == to || r.number.to_string() == *to)
            .ok_or_else(|| {
                AgentError::not_found(
                    Code::ReleaseNotFound,
                    format!("`{project}` has no release `{to}`"),
                    "list them with `gantry releases`",
                )
            })?,
        None => before_current(&agent, &project, &releases).await?,
    };
    let digest = target.artifact_digest.clone();
    let artifact = agent
        .db(move |s| s.artifact(&digest))
        .await?
        .ok_or_else(|| {
            AgentError::conflict(
                Code::ReleaseArtifactGone,
                format!("the files of release {} are no longer kept", target.id),
                "deploy that version again",
            )
        })?;
    let deploy = DeployRequest {
        project: project.clone(),
        environment: target.environment.clone(),
        config_hash: target.config_hash.clone(),
        artifact,
        spec_version: gantry_core::agent_api::v1::SPEC_VERSION,
        services: target.services.clone(),
        secrets: request.secrets,
        // A redeploy gives the release new secrets; it does not go back.
        rollback_of: (!request.redeploy).then(|| target.id.clone()),
        redeploy_of: request.redeploy.then(|| target.id.clone()),
        deployment: request.deployment,
        // A rollback runs no migration: the release's tasks ran when it was new.
        tasks: Vec::new(),
        // Nor is it watched: it ran before, and a revert must not loop.
        verify_ms: None,
    };
    deploy::run(agent, deploy).await
}

/// Records a release that succeeded as failed after all, with why (it
/// failed its verify window), before the rollback that undoes it.
async fn mark_failed(agent: &Agent, project: &str, reverted: &Reverted) -> Result<(), AgentError> {
    let (p, id, reason) = (
        project.to_owned(),
        reverted.release.clone(),
        reverted.reason.clone(),
    );
    agent
        .db(move |s| {
            let Some(mut release) = s.release(&p, &id)? else {
                return Ok(());
            };
            release.outcome = Outcome::Failed;
            release.reason = Some(reason);
            s.update_release(&release)
        })
        .await?;
    Ok(())
}

/// The newest successful release before the newest one any service runs
/// now: after an interrupted deploy, services may run different releases.
/// A redeploy (`gantry secrets sync`) stands for the release it deployed
/// again: going back from it goes back from that one.
async fn before_current<'r>(
    agent: &Agent,
    project: &str,
    releases: &'r [Release],
) -> Result<&'r Release, AgentError> {
    let p = project.to_owned();
    let current = agent.db(move |s| s.current_all(&p)).await?;
    let newest = releases
        .iter()
        .filter(|r| current.values().any(|id| *id == r.id))
        .map(|r| first_of(releases, r).number)
        .max()
        .unwrap_or(u64::MAX);
    releases
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .find(|r| r.number < newest)
        .ok_or_else(|| {
            AgentError::conflict(
                Code::ReleaseNoneBefore,
                format!("`{project}` has no earlier successful release to go back to"),
                "name one with --to, or deploy first",
            )
        })
}

/// The release `release` deploys again, following redeploys of redeploys;
/// `release` itself when it is no redeploy.
fn first_of<'r>(releases: &'r [Release], mut release: &'r Release) -> &'r Release {
    while let Some(again) = release.redeploy_of.as_ref().and_then(|of| {
        releases
            .iter()
            .find(|r| &r.id == of && r.number < release.number)
    }) {
        release = again;
    }
    release
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(number: u64, redeploy_of: Option<u64>) -> Release {
        let mut release = crate::store::test_release(number);
        release.redeploy_of = redeploy_of.map(|n| format!("r{n}"));
        release
    }

    #[test]
    fn a_redeploy_stands_for_the_release_it_deployed_again() {
        // r2 was synced twice: r3 redeploys r2, r4 redeploys r3.
        let releases = [
            release(4, Some(3)),
            release(3, Some(2)),
            release(2, None),
            release(1, None),
        ];
        assert_eq!(first_of(&releases, &releases[0]).id, "r2");
        assert_eq!(first_of(&releases, &releases[2]).id, "r2");
        // A record naming a later release (never written) cannot loop.
        let odd = [release(1, Some(2)), release(2, Some(1))];
        assert_eq!(first_of(&odd, &odd[1]).id, "r1");
        assert_eq!(first_of(&odd, &odd[0]).id, "r1");
    }
}
