//! The agent's API checks what it is sent, whoever sends it: anyone who can
//! open `agent.sock` may skip the CLI. Names that would become paths or lines
//! of the secrets file are refused with the config's rules before any file is
//! written, and a JSON body has a size limit (blobs stream and have none).

mod agent_support;

use std::path::Path;

use agent_support::{AgentProcess, request, shell};
use gantry_core::artifact::tree_digest;
use serde_json::{Value, json};

/// A deploy of no files and no services: enough for the agent to write a
/// release directory, and a secrets file when there are secrets.
fn empty_deploy(project: &str, secrets: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "project": project,
        "environment": "local",
        "config_hash": "c0ffee",
        "artifact": { "digest": tree_digest(&[]), "files": [] },
        "services": [],
        "secrets": secrets,
    }))
    .expect("json")
}

fn post(socket: &Path, path: &str, body: &[u8]) -> (u16, Value) {
    request(socket, "POST", path, body.len(), body, false)
}

#[test]
fn an_escaped_or_absolute_project_name_is_refused_and_nothing_is_written_outside_the_state_dir() {
    let p = shell("apinames", "");
    let _agent = AgentProcess::start(&p);
    let socket = p.state_dir().join("agent.sock");
    let outside = p
        .state_dir()
        .parent()
        .expect("the state dir has a parent")
        .join(format!("escaped-{}", std::process::id()));
    let name = format!(
        "../../{}",
        outside.file_name().expect("name").to_string_lossy()
    );
    let escaped = name.replace('/', "%2F");

    let (status, body) = post(
        &socket,
        &format!("/v1/projects/{escaped}/deploys"),
        &empty_deploy(&name, json!({})),
    );
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "request.invalid", "{body:#}");
    assert!(!outside.exists(), "{} was written", outside.display());

    let (status, body) = post(
        &socket,
        "/v1/projects/%2Ftmp%2Fabsolute/deploys",
        &empty_deploy("/tmp/absolute", json!({})),
    );
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "request.invalid", "{body:#}");

    let (status, body) = request(
        &socket,
        "GET",
        "/v1/projects/apinames/services/..%2Fweb/exec",
        0,
        b"",
        false,
    );
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "request.invalid", "{body:#}");
}

#[test]
fn a_secret_name_with_a_line_break_never_reaches_the_secrets_file() {
    let p = shell("apisecrets", "");
    let _agent = AgentProcess::start(&p);
    let socket = p.state_dir().join("agent.sock");
    let (status, body) = post(
        &socket,
        "/v1/projects/apisecrets/deploys",
        &empty_deploy("apisecrets", json!({ "OK\nPATH": "/attacker/bin" })),
    );
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "request.invalid", "{body:#}");
    let file = p.state_dir().join("secrets/apisecrets.env");
    assert!(!file.exists(), "the secrets file was written");
    assert!(
        !p.state_dir().join("releases/apisecrets").exists(),
        "a refused deploy wrote its release directory"
    );

    // A valid name is deployed, so the refusal above was the name's.
    let (status, body) = post(
        &socket,
        "/v1/projects/apisecrets/deploys",
        &empty_deploy("apisecrets", json!({ "API_TOKEN": "s3cret" })),
    );
    assert_eq!(status, 200, "{body:#}");
    assert!(file.exists());
}

#[test]
fn a_json_body_over_the_limit_is_refused_with_the_apis_error() {
    let p = shell("apibody", "");
    let _agent = AgentProcess::start(&p);
    let socket = p.state_dir().join("agent.sock");
    // 17 MiB of whitespace around valid JSON: only its size is wrong.
    let mut body = vec![b' '; 17 << 20];
    body.extend_from_slice(br#"{"digests": []}"#);
    let (status, answer) = post(&socket, "/v1/blobs/missing", &body);
    assert_eq!(status, 413, "{answer:#}");
    assert_eq!(answer["error"]["code"], "request.too_large", "{answer:#}");

    let (status, answer) = post(&socket, "/v1/blobs/missing", br#"{"digests": []}"#);
    assert_eq!(status, 200, "a small body is read: {answer:#}");
}

#[test]
fn a_deploy_in_a_newer_spec_revision_is_refused_as_incompatible_and_writes_nothing() {
    let p = shell("apirevision", "");
    let _agent = AgentProcess::start(&p);
    let socket = p.state_dir().join("agent.sock");
    let newer = gantry_core::agent_api::v1::SPEC_VERSION + 1;
    let mut body: Value = serde_json::from_slice(&empty_deploy(
        "apirevision",
        json!({ "API_TOKEN": "s3cret" }),
    ))
    .expect("json");
    body["spec_version"] = json!(newer);
    let (status, answer) = post(
        &socket,
        "/v1/projects/apirevision/deploys",
        &serde_json::to_vec(&body).expect("json"),
    );
    assert_eq!(status, 409, "{answer:#}");
    assert_eq!(answer["error"]["code"], "agent.incompatible", "{answer:#}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("revision {newer}")),
        "the refusal names the revision sent: {message}"
    );
    assert!(!p.state_dir().join("secrets/apirevision.env").exists());
    assert!(!p.state_dir().join("releases/apirevision").exists());

    // A request with no revision, as CLIs before revisions sent, is revision 1.
    let (status, answer) = post(
        &socket,
        "/v1/projects/apirevision/deploys",
        &empty_deploy("apirevision", json!({})),
    );
    assert_eq!(status, 200, "{answer:#}");
}
