//! The OpenAPI 3.1 document the agent serves at `/v1/openapi.json`. The
//! routes are `gantry_core::endpoint::Endpoint`'s, which the router and the
//! client use too; their bodies' schemas come from the wire types themselves
//! (schemars), so the document cannot drift from the code.

use gantry_core::agent_api::{
    AgentInfo, ApiErrorBody, BackupInfo, BackupList, BackupRestored, BlobList, BlobReceipt,
    CompareRequest, Comparison, DeployRequest, DeployResult, ExecSpec, ImageLoaded, ImageManifest,
    LockGrant, LockRelease, LockRequest, LockState, LogLine, Phase, ProxyInfo, Release,
    RollbackRequest, ServiceSelector, Status, Task,
};
use gantry_core::endpoint::Endpoint;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// (summary, request body type, response body type) of each endpoint;
/// their methods and paths are `Endpoint`'s.
fn describe(endpoint: Endpoint) -> (&'static str, Option<&'static str>, &'static str) {
    match endpoint {
        Endpoint::Health => ("Who the agent is and that it answers", None, "AgentInfo"),
        Endpoint::OpenApi => ("This document", None, "object"),
        Endpoint::Shutdown => ("Stop the agent; services keep running", None, "none"),
        Endpoint::ProxyRestart => (
            "Restart the proxy by listener handoff (no connection refused), or start it",
            None,
            "ProxyInfo",
        ),
        Endpoint::ProxyStop => (
            "Stop the proxy; its routes stay in routes.json",
            None,
            "ProxyInfo",
        ),
        Endpoint::MissingBlobs => (
            "Which of these artifact blobs the agent lacks, and how many bytes of each an interrupted upload left (partial)",
            Some("BlobList"),
            "BlobList",
        ),
        Endpoint::PutBlob => (
            "Upload one blob, streamed; query: offset (resume after the bytes the agent holds). Stored only when its sha256 equals the digest (422 artifact.checksum); 409 artifact.offset_mismatch when offset is not what the agent holds, artifact.upload_in_progress while another request uploads the same blob, artifact.no_room when the bytes would leave the disk less free than the agent keeps (256 MiB or 1%)",
            Some("bytes"),
            "BlobReceipt",
        ),
        Endpoint::MissingImageBlobs => (
            "Which blobs of this image the agent needs before loading it: none when its Docker Engine has the image; else the config and the layers the engine lacks (by chain id), less what the blob store holds (partial and uploading as for artifact blobs)",
            Some("ImageManifest"),
            "BlobList",
        ),
        Endpoint::LoadImage => (
            "Load an image whose blobs were uploaded into the Docker Engine (only the layers it lacks) and tag it; an image the engine has is only tagged. 409 artifact.incomplete names blobs still missing",
            Some("ImageManifest"),
            "ImageLoaded",
        ),
        Endpoint::Deploy => (
            "Deploy a release: start, wait healthy, switch, stop old",
            Some("DeployRequest"),
            "DeployResult",
        ),
        Endpoint::Rollback => (
            "Re-activate an earlier release from its stored artifact",
            Some("RollbackRequest"),
            "DeployResult",
        ),
        Endpoint::Status => ("Services, instances, health and limits", None, "Status"),
        Endpoint::Releases => ("Releases, newest first", None, "Release[]"),
        Endpoint::Release => ("One release", None, "Release"),
        Endpoint::Logs => (
            "Log lines as NDJSON; query: service, since_ms, tail, follow",
            None,
            "LogLine",
        ),
        Endpoint::Stop => ("Stop one service or all", Some("ServiceSelector"), "Status"),
        Endpoint::Restart => (
            "Restart one service or all",
            Some("ServiceSelector"),
            "Status",
        ),
        Endpoint::ExecSpec => (
            "How to run a command as the service runs: release directory and environment (no secret values)",
            None,
            "ExecSpec",
        ),
        Endpoint::RunTask => (
            "Run a one-off task of a release (`migrate.post`) as its service runs; its phase, output included (secret values hidden), is kept in the release. A command that exits non-zero is a phase that says so",
            Some("Task"),
            "Phase",
        ),
        Endpoint::LockState => (
            "Who holds an environment's deploy lock (?environment=ENV)",
            None,
            "LockState",
        ),
        Endpoint::TakeLock => (
            "Take an environment's deploy lock (409 deploy.locked names the holder)",
            Some("LockRequest"),
            "LockGrant",
        ),
        Endpoint::ReleaseLock => ("Release it with its token", Some("LockRelease"), "none"),
        Endpoint::TakeBackup => (
            "Back the service up now, as its `backup` says (422 backup.not_configured without one); the failure is kept for status until a backup succeeds",
            None,
            "BackupInfo",
        ),
        Endpoint::Backups => (
            "The service's backups on this host, newest first, with its schedule, the next due time and the last failure",
            None,
            "BackupList",
        ),
        Endpoint::DownloadBackup => (
            "The backup's bytes (application/octet-stream), its sha256 in x-gantry-sha256",
            None,
            "bytes",
        ),
        Endpoint::RestoreBackup => (
            "Put a backup back: volumes, a directory or SQLite with the service stopped and started again; a PostgreSQL or MySQL dump into the running database, in one transaction",
            None,
            "BackupRestored",
        ),
        Endpoint::Compare => (
            "What `gantry plan` compares, changing nothing: the files of an artifact the host keeps (absent when it keeps none), and which of the secrets asked about (each a salted sha256 of the value the CLI would send) it holds with another value or not at all",
            Some("CompareRequest"),
            "Comparison",
        ),
    }
}

fn reference(name: &str) -> Value {
    match name {
        "object" => json!({"type": "object"}),
        "bytes" => json!({"type": "string", "format": "binary"}),
        list if list.ends_with("[]") => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{}", &list[..list.len() - 2])}})
        }
        one => json!({"$ref": format!("#/components/schemas/{one}")}),
    }
}

pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut schemas = Map::new();
    macro_rules! add {
        ($($ty:ty),*) => {$(
            let schema = generator.subschema_for::<$ty>();
            if schema.get("$ref").is_none() {
                schemas.insert(stringify!($ty).to_owned(), schema.to_value());
            }
        )*};
    }
    add!(
        AgentInfo,
        BackupInfo,
        BackupList,
        BackupRestored,
        ProxyInfo,
        ApiErrorBody,
        BlobList,
        BlobReceipt,
        CompareRequest,
        Comparison,
        DeployRequest,
        DeployResult,
        ExecSpec,
        ImageLoaded,
        ImageManifest,
        LockGrant,
        LockRelease,
        LockRequest,
        LockState,
        LogLine,
        Release,
        RollbackRequest,
        ServiceSelector,
        Status,
        Task,
        Phase
    );
    for (name, schema) in generator.take_definitions(true) {
        schemas.insert(name, schema);
    }

    let mut paths = Map::new();
    for endpoint in Endpoint::ALL {
        let (summary, request, response) = describe(endpoint);
        let path = endpoint.path();
        let mut op = json!({
            "summary": summary,
            "responses": {
                "default": {
                    "description": "An error",
                    "content": {"application/json": {"schema": reference("ApiErrorBody")}}
                }
            }
        });
        let ok = if response == "none" {
            json!({"description": "Done"})
        } else {
            let media = if response == "LogLine" {
                "application/x-ndjson"
            } else if response == "bytes" {
                "application/octet-stream"
            } else {
                "application/json"
            };
            json!({"description": "OK", "content": {media: {"schema": reference(response)}}})
        };
        op["responses"]["200"] = ok;
        if let Some(body) = request {
            let media = if body == "bytes" {
                "application/octet-stream"
            } else {
                "application/json"
            };
            op["requestBody"] =
                json!({"required": true, "content": {media: {"schema": reference(body)}}});
        }
        let params: Vec<Value> = endpoint
            .params()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[endpoint.method().as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Gantry agent API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "#/components/schemas/{name} is referenced but not defined"
            );
        }
        let paths: std::collections::BTreeSet<&str> =
            Endpoint::ALL.iter().map(|e| e.path()).collect();
        assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(paths.len()));
        assert!(doc["components"]["schemas"].get("DeployRequest").is_some());
    }
}
