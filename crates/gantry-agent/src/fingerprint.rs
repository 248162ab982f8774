//! What an instance of a service runs, as one digest: the service's spec
//! (less what does not reach an instance: `build`, `hosts`, `depends_on`),
//! the environment, its code (the release's artifact for a process, the
//! image's id on this host for a container, so a tag that now names
//! another image is a change), the addresses of its dependencies, and a
//! digest of each of its secrets' values, keyed with the agent's own
//! random key (`Paths::fingerprint_key`) so that the stored fingerprint
//! cannot be used to check a guessed secret. Equal fingerprints: a deploy
//! leaves the running instances alone ("unchanged").

use std::collections::BTreeMap;

use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::v1::Workload;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::agent::Agent;

#[derive(Serialize)]
struct Runs<'a> {
    environment: &'a str,
    spec: ServiceSpec,
    code: String,
    addresses: BTreeMap<String, String>,
    secrets: BTreeMap<&'a str, String>,
}

/// The fingerprint of `service` deployed in `environment` from an artifact
/// of `artifact_digest`; `None` when it cannot be told (a static service,
/// which runs nothing; an image the host lacks), which counts as changed.
pub async fn of(
    agent: &Agent,
    project: &str,
    environment: &str,
    artifact_digest: &str,
    service: &ServiceSpec,
) -> Option<String> {
    let code = match &service.workload {
        Workload::Process { .. } => artifact_digest.to_owned(),
        Workload::Compose { image } => {
            let engine = crate::container_instance::engine(agent).await.ok()?;
            engine.image_id(image).await.ok()??
        }
        Workload::Static { .. } => return None,
    };
    let values = crate::credentials::read_secrets(&agent.paths.secrets(project));
    let key = key(&agent.paths.fingerprint_key())?;
    let secrets = service
        .secrets
        .iter()
        .map(|name| {
            let digest = values.get(name).map_or_else(
                || "absent".to_owned(),
                |v| hex(&Sha256::new().chain_update(key).chain_update(v).finalize()),
            );
            (name.as_str(), digest)
        })
        .collect();
    let runs = Runs {
        environment,
        spec: ServiceSpec {
            build: None,
            hosts: Vec::new(),
            depends_on: Vec::new(),
            ..service.clone()
        },
        code,
        addresses: crate::addresses::of(agent, project, service).await,
        secrets,
    };
    let json = serde_json::to_vec(&runs).ok()?;
    Some(hex(&Sha256::digest(json)))
}

/// The agent's fingerprint key, made (32 random bytes, 0600) on first use;
/// `None` when it cannot be read or made: the service then counts as
/// changed, never as unchanged on a guess.
fn key(path: &std::path::Path) -> Option<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path) {
        return bytes.try_into().ok();
    }
    let fresh: [u8; 32] = rand::random();
    gantry_core::file::write_atomic(path, &fresh, 0o600).ok()?;
    // Another task may have made one meanwhile: whichever is on disk wins.
    std::fs::read(path).ok()?.try_into().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
