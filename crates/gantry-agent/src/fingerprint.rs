//! What an instance of a service runs, as one digest: the service's spec
//! (less what does not reach an instance: `build`, `hosts`, `depends_on`),
//! the environment, its code (the release's artifact for a process, the
//! image's id on this host for a container, so a tag that now names
//! another image is a change), the addresses of its dependencies, and a
//! digest of each of its secrets' values. Equal fingerprints: a deploy
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
    let secrets = service
        .secrets
        .iter()
        .map(|name| {
            let digest = values
                .get(name)
                .map_or_else(|| "absent".to_owned(), |v| hex(&Sha256::digest(v)));
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
