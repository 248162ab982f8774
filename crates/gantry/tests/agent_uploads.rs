//! Artifact uploads to a real agent, checked on its socket: an upload cut off
//! halfway leaves what arrived, the agent says how much, the next deploy
//! sends only the rest (its report counts the bytes) and the stored blob
//! hashes to its digest; bytes that do not match their digest are refused,
//! removed, and never make it into a release.

mod agent_support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use agent_support::{
    AgentProcess, api_answer, assert_web_answers, deploy, files_under, hello, request, service,
};
use gantry_core::artifact::{file_digest, scan};
use gantry_testkit::TestProject;
use serde_json::{Value, json};

/// 3 MiB of letters, the same on every run, unlike any other test file.
fn big_content(seed: u64) -> String {
    let mut state = seed;
    (0..3 * 1024 * 1024)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + u8::try_from((state >> 33) % 26).expect("below 26"))
        })
        .collect()
}

/// The example plus a large file, so an upload can be cut off in its middle.
fn project(name: &str, seed: u64) -> (TestProject, String) {
    let content = big_content(seed);
    let p = hello(name, "1").file("assets/big.bin", &content);
    (p, content)
}

fn socket(p: &TestProject) -> PathBuf {
    p.state_dir().join("agent.sock")
}

fn put(socket: &Path, digest: &str, offset: usize, body: &[u8]) -> (u16, Value) {
    let path = match offset {
        0 => format!("/v1/blobs/{digest}"),
        _ => format!("/v1/blobs/{digest}?offset={offset}"),
    };
    request(socket, "PUT", &path, body.len(), body, false)
}

/// Sends `part` as the start of a `total`-byte upload, then cuts the link.
fn cut_upload(socket: &Path, digest: &str, total: usize, part: &[u8]) {
    let (status, body) = request(
        socket,
        "PUT",
        &format!("/v1/blobs/{digest}"),
        total,
        part,
        true,
    );
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["error"]["code"], "artifact.incomplete", "{body:#}");
}

/// `POST /v1/blobs/missing` for these digests.
fn missing(socket: &Path, digests: &[&str]) -> Value {
    let body = serde_json::to_vec(&json!({ "digests": digests })).expect("json");
    let mut stream = UnixStream::connect(socket).expect("connect to the agent");
    let head = format!(
        "POST /v1/blobs/missing HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(&body).expect("send");
    let (status, answer) = api_answer(stream);
    assert_eq!(status, 200, "{answer:#}");
    answer
}

/// The project's files as a deploy sends them: (digest of big.bin, the
/// bytes of every distinct blob together).
fn artifact(p: &TestProject) -> (String, u64) {
    let scan = scan(p.path(), &Default::default()).expect("scan the project");
    let big = scan
        .artifact
        .files
        .iter()
        .find(|f| f.path == "assets/big.bin")
        .expect("big.bin in the artifact")
        .digest
        .clone();
    let mut blobs: Vec<(&str, u64)> = scan
        .artifact
        .files
        .iter()
        .map(|f| (f.digest.as_str(), f.size))
        .collect();
    blobs.sort_unstable();
    blobs.dedup();
    (big, blobs.iter().map(|(_, size)| size).sum())
}

fn stored_blob(p: &TestProject, digest: &str) -> PathBuf {
    p.state_dir()
        .join("blobs/sha256")
        .join(&digest[..2])
        .join(digest)
}

/// The release files the agent made of big.bin, and their content.
fn released_copies(p: &TestProject) -> Vec<String> {
    files_under(&p.state_dir().join("releases"))
        .into_iter()
        .filter(|f| f.ends_with("assets/big.bin"))
        .map(|f| std::fs::read_to_string(f).expect("read the released file"))
        .collect()
}

#[test]
fn an_interrupted_upload_resumes_and_only_the_rest_travels() {
    let (p, content) = project("uploads-resume", 1);
    let _agent = AgentProcess::start(&p);
    let socket = socket(&p);
    let (big, total) = artifact(&p);
    let sent_before_cut = 1_000_003;
    cut_upload(
        &socket,
        &big,
        content.len(),
        &content.as_bytes()[..sent_before_cut],
    );

    let answer = missing(&socket, &[&big]);
    assert_eq!(answer["digests"], json!([big]), "{answer:#}");
    assert_eq!(
        answer["partial"][&big], sent_before_cut,
        "the agent kept what arrived: {answer:#}"
    );
    assert!(!stored_blob(&p, &big).exists(), "not stored while partial");

    // Resuming at another offset than what the agent holds is refused and
    // leaves the partial copy alone.
    let (status, body) = put(&socket, &big, 5, &content.as_bytes()[5..]);
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(
        body["error"]["code"], "artifact.offset_mismatch",
        "{body:#}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&sent_before_cut.to_string())),
        "names what it holds: {body:#}"
    );
    assert_eq!(missing(&socket, &[&big])["partial"][&big], sent_before_cut);

    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let upload = &report["upload"];
    assert_eq!(
        upload["bytes_sent"],
        total - sent_before_cut as u64,
        "only the rest of big.bin travelled ({total} bytes in all): {upload:#}"
    );
    assert_web_answers(service(&report, "web"), "1");

    let blob = stored_blob(&p, &big);
    assert_eq!(file_digest(&blob).expect("hash the stored blob"), big);
    let answer = missing(&socket, &[&big]);
    assert_eq!(answer["digests"], json!([]), "{answer:#}");
    assert!(answer.get("partial").is_none(), "{answer:#}");
    let copies = released_copies(&p);
    assert_eq!(copies.len(), 1);
    assert!(copies[0] == content, "the release has the whole file");

    // A second deploy of the same files sends nothing.
    let again = deploy(&p);
    assert_eq!(again["upload"]["bytes_sent"], 0, "{:#}", again["upload"]);
}

#[test]
fn a_resumed_upload_says_how_many_bytes_it_carried() {
    let (p, content) = project("uploads-receipt", 2);
    let _agent = AgentProcess::start(&p);
    let socket = socket(&p);
    let (big, _) = artifact(&p);
    let half = content.len() / 2;
    cut_upload(&socket, &big, content.len(), &content.as_bytes()[..half]);

    let (status, receipt) = put(&socket, &big, half, &content.as_bytes()[half..]);
    assert_eq!(status, 201, "{receipt:#}");
    assert_eq!(
        receipt,
        json!({"digest": big, "size": content.len(), "received": content.len() - half})
    );
    assert_eq!(file_digest(&stored_blob(&p, &big)).expect("hash"), big);

    // Once stored, an upload of it is not read and changes nothing.
    let (status, receipt) = put(&socket, &big, 0, content.as_bytes());
    assert_eq!(status, 200, "{receipt:#}");
    assert_eq!(receipt["received"], 0, "{receipt:#}");
}

#[test]
fn a_corrupted_upload_is_refused_and_never_used() {
    let (p, content) = project("uploads-corrupt", 3);
    let _agent = AgentProcess::start(&p);
    let socket = socket(&p);
    let (big, total) = artifact(&p);
    let forged = big_content(99);
    assert_eq!(forged.len(), content.len());

    // Whole, but the wrong bytes.
    let (status, body) = put(&socket, &big, 0, forged.as_bytes());
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "artifact.checksum", "{body:#}");
    let answer = missing(&socket, &[&big]);
    assert_eq!(answer["digests"], json!([big]), "still missing: {answer:#}");
    assert!(answer.get("partial").is_none(), "nothing kept: {answer:#}");
    assert!(!stored_blob(&p, &big).exists());

    // A wrong start, cut off, then the right rest: the whole is checked.
    let half = content.len() / 2;
    cut_upload(&socket, &big, content.len(), &forged.as_bytes()[..half]);
    let (status, body) = put(&socket, &big, half, &content.as_bytes()[half..]);
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "artifact.checksum", "{body:#}");
    let answer = missing(&socket, &[&big]);
    assert!(answer.get("partial").is_none(), "nothing kept: {answer:#}");
    assert!(!stored_blob(&p, &big).exists());

    // A deploy that finds a wrong start resumes, is refused, and sends the
    // file again whole: the release gets the right bytes.
    cut_upload(&socket, &big, content.len(), &forged.as_bytes()[..half]);
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    assert_eq!(
        report["upload"]["bytes_sent"],
        total + (content.len() - half) as u64,
        "the rest, refused, then everything: {:#}",
        report["upload"]
    );
    assert_eq!(file_digest(&stored_blob(&p, &big)).expect("hash"), big);
    let copies = released_copies(&p);
    assert_eq!(copies.len(), 1);
    assert!(copies[0] == content, "the release has the right bytes");
}
