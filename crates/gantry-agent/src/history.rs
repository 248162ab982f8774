//! The project's releases as the API shows them: newest first, with the
//! project's secret values, credentials and URL passwords hidden; and what
//! `gantry plan` compares with them (an artifact's files, secrets by digest).

use gantry_core::Code;
use gantry_core::agent_api::{
    CompareRequest, Comparison, MAX_COMPARED_SECRETS, Release, is_hex_sha256, secret_digest,
};

use crate::agent::Agent;
use crate::credentials::redact_releases;
use crate::error::AgentError;
use crate::store::{Store, StoreError};

/// `GET /v1/projects/{project}/releases`.
pub(crate) async fn releases(agent: &Agent, project: String) -> Result<Vec<Release>, AgentError> {
    let p = project.clone();
    let mut releases = agent
        .db(move |s| {
            let mut releases = s.releases(&p)?;
            mark_files_gone(s, &mut releases)?;
            Ok(releases)
        })
        .await?;
    redact_releases(&agent.paths, &project, &mut releases);
    Ok(releases)
}

/// Marks the releases whose files retention removed.
fn mark_files_gone(store: &Store, releases: &mut [Release]) -> Result<(), StoreError> {
    // Releases share artifacts (a rollback's is an earlier one's): each is
    // asked once.
    let mut kept = std::collections::HashMap::new();
    for release in releases {
        let digest = release.artifact_digest.clone();
        let has = match kept.get(&digest) {
            Some(has) => *has,
            None => {
                let has = store.has_artifact(&digest)?;
                kept.insert(digest, has);
                has
            }
        };
        release.files_gone = !has;
    }
    Ok(())
}

/// `GET /v1/projects/{project}/releases/{id}`: by id or number.
pub(crate) async fn release(
    agent: &Agent,
    project: String,
    id: String,
) -> Result<Release, AgentError> {
    let (p, i) = (project.clone(), id.clone());
    let found = agent
        .db(move |s| {
            let mut found = s.release(&p, &i)?;
            mark_files_gone(s, found.as_mut_slice())?;
            Ok(found)
        })
        .await?;
    let mut release = found.ok_or_else(|| {
        AgentError::not_found(
            Code::ReleaseNotFound,
            format!("`{project}` has no release `{id}`"),
            "list them with `gantry releases`",
        )
    })?;
    redact_releases(&agent.paths, &project, std::slice::from_mut(&mut release));
    Ok(release)
}

/// `POST /v1/projects/{project}/compare`: the file list of an artifact this
/// host keeps, and which of the asked secrets it holds with another value,
/// each compared by its digest under the request's salt. Changes nothing.
pub(crate) async fn compare(
    agent: &Agent,
    project: String,
    request: CompareRequest,
) -> Result<Comparison, AgentError> {
    check_compare(&request)?;
    let files = match request.artifact {
        Some(digest) => agent
            .db(move |s| s.artifact(&digest))
            .await?
            .map(|artifact| artifact.files),
        None => None,
    };
    let kept = crate::credentials::read_secrets(&agent.paths.secrets(&project));
    let mut comparison = Comparison {
        files,
        ..Comparison::default()
    };
    for (name, digest) in &request.secrets {
        match kept.get(name) {
            None => comparison.secrets_absent.push(name.clone()),
            Some(value) if secret_digest(&request.salt, value) != *digest => {
                comparison.secrets_differ.push(name.clone());
            }
            Some(_) => {}
        }
    }
    Ok(comparison)
}

fn check_compare(request: &CompareRequest) -> Result<(), AgentError> {
    let refuse = |what: String| {
        Err(AgentError::invalid(
            Code::RequestInvalid,
            what,
            "a comparison names an artifact and secrets by sha256 digests, as `gantry plan` sends them",
        ))
    };
    if !is_hex_sha256(&request.salt) {
        return refuse("the salt is not 64 hex digits".to_owned());
    }
    if request
        .artifact
        .as_deref()
        .is_some_and(|a| !is_hex_sha256(a))
    {
        return refuse("the artifact is not a sha256 digest".to_owned());
    }
    if request.secrets.len() > MAX_COMPARED_SECRETS {
        return refuse(format!(
            "{} secrets asked about, over the {MAX_COMPARED_SECRETS} one request may name",
            request.secrets.len()
        ));
    }
    for (name, digest) in &request.secrets {
        if let Err(why) = gantry_core::agent_api::v1::check_env_name(name) {
            return refuse(format!("a secret's name: {why}"));
        }
        if !is_hex_sha256(digest) {
            return refuse(format!("the digest of `{name}` is not a sha256"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comparison_must_name_everything_by_sha256_and_valid_names() {
        let hex = "a".repeat(64);
        let good = CompareRequest {
            artifact: Some(hex.clone()),
            salt: hex.clone(),
            secrets: [("TOKEN".to_owned(), hex.clone())].into(),
        };
        assert!(check_compare(&good).is_ok());
        let bad = [
            CompareRequest {
                salt: "short".to_owned(),
                ..good.clone()
            },
            CompareRequest {
                artifact: Some("../etc".to_owned()),
                ..good.clone()
            },
            CompareRequest {
                secrets: [("BAD NAME".to_owned(), hex.clone())].into(),
                ..good.clone()
            },
            CompareRequest {
                secrets: [("TOKEN".to_owned(), "the value itself".to_owned())].into(),
                ..good.clone()
            },
            CompareRequest {
                secrets: (0..=MAX_COMPARED_SECRETS)
                    .map(|i| (format!("S{i}"), hex.clone()))
                    .collect(),
                ..good.clone()
            },
        ];
        for request in bad {
            let refused = check_compare(&request).expect_err("refused");
            assert_eq!(refused.code(), Code::RequestInvalid);
        }
    }
}
