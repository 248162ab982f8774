//! A project with `[hub]` reports to a real hub (`gantry hub serve`): the
//! first failed deploy files an auto-detected bug, the next failure of the
//! same cause comments on it; `gantry status` does the same for a service
//! that keeps failing; a deploy marks the items its commits ship as fixed
//! in its release.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use gantry_testkit::TestProject;
use serde_json::Value;

/// `GET path` with a bearer key; the JSON answer.
fn get(addr: &str, path: &str, key: &str) -> Value {
    send(addr, "GET", path, key, &[], None).1
}

/// A request with a bearer key (and a JSON body, and If-Match); the ETag
/// and the JSON answer.
fn send(
    addr: &str,
    method: &str,
    path: &str,
    key: &str,
    body: &[u8],
    if_match: Option<&str>,
) -> (Option<String>, Value) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let if_match = if_match.map_or_else(String::new, |tag| format!("If-Match: {tag}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n{if_match}\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let etag = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with("etag:")
            .then(|| l[5..].trim().to_owned())
    });
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (etag, json)
}

/// A hub with the product SHOP and a ci key for it: the hub's project
/// (its state directory), the key.
fn hub_with_key() -> (TestProject, String) {
    let hub = TestProject::new(env!("CARGO_BIN_EXE_gantry"));
    hub.gantry(&["hub", "product", "add", "SHOP", "--name", "The shop"])
        .expect_code(0);
    let created = hub.gantry(&[
        "hub",
        "key",
        "create",
        "--name",
        "deploys",
        "--role",
        "ci",
        "--permission",
        "write",
        "--product",
        "SHOP",
        "--output",
        "json",
    ]);
    created.expect_code(0);
    let key = created.json()["secret"].as_str().unwrap().to_owned();
    (hub, key)
}

/// The project `shop`, its service `web` given by `web`, reporting to the
/// hub at `addr` with `key`.
fn shop(addr: &str, key: &str, web: &str) -> TestProject {
    TestProject::new(env!("CARGO_BIN_EXE_gantry"))
        .file(
            "gantry.toml",
            &format!(
                "[project]\nname = \"shop\"\n\n[services.web]\n{web}\n{}",
                hub_section(addr)
            ),
        )
        .env("HUB_KEY", key)
}

fn hub_section(addr: &str) -> String {
    format!("\n[hub]\nurl = \"http://{addr}\"\nkey = \"HUB_KEY\"\nproduct = \"SHOP\"\n")
}

/// `gantry hub serve` on a free port; its address.
fn serve(hub: &TestProject) -> (Child, String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--output",
            "text",
        ])
        .env("GANTRY_STATE_DIR", hub.state_dir())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    // Keep reading so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in stderr.lines() {});
    (server, addr)
}

#[test]
fn a_failing_deploy_files_one_bug_and_a_second_failure_comments_on_it() {
    let (hub, key) = hub_with_key();
    let (mut server, addr) = serve(&hub);

    let project = shop(
        &addr,
        &key,
        "build = \"echo compiling; exit 3\"\nrun = \"true\"",
    );
    let first = project.gantry(&["deploy", "--output", "json"]);
    assert_ne!(first.code, 0, "the build fails");
    assert!(
        first.stderr.contains("hub: filed SHOP-1"),
        "{}",
        first.stderr
    );
    assert!(
        !first.stderr.contains(&key) && !first.stdout.contains(&key),
        "the key is never shown"
    );

    let items = get(&addr, "/api/agent/items?product=SHOP", &key);
    let items = items["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let bug = &items[0];
    assert_eq!(bug["type"], "bug");
    assert_eq!(bug["source"], "auto_detected");
    assert_eq!(bug["environment"], "local");
    let code = first.json()["error"]["code"].as_str().unwrap().to_owned();
    assert!(bug["title"].as_str().unwrap().contains(&code), "{bug}");
    assert!(
        bug["description"]
            .as_str()
            .unwrap()
            .contains(&format!("`{code}`")),
        "{bug}"
    );

    let second = project.gantry(&["deploy", "--output", "json"]);
    assert_eq!(second.code, first.code);
    assert!(
        second.stderr.contains("hub: commented on SHOP-1"),
        "{}",
        second.stderr
    );
    let items = get(&addr, "/api/agent/items?product=SHOP", &key);
    assert_eq!(
        items["items"].as_array().unwrap().len(),
        1,
        "one bug, not two"
    );
    let comments = get(&addr, "/api/agent/items/SHOP-1/comments", &key);
    let comments = comments.as_array().unwrap();
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0]["author"], "deploys");
    assert!(
        comments[0]["body"]
            .as_str()
            .unwrap()
            .starts_with("The same failure happened again")
    );

    server.kill().unwrap();
    server.wait().unwrap();
}

/// The crash loop of the supervisor's tests: up long enough to pass its
/// deploy (once per round, each with a marker of its own), then it exits 3
/// on every start.
fn flaky_toml(dir: &std::path::Path, round: u32, addr: &str) -> String {
    format!(
        r#"[project]
name = "flaky"

# The failure after a deploy is the point: no verify window to catch it.
[deploy]
verify = "0s"

[services.flaky]
run = "[ -e \"$MARKER\" ] || {{ touch \"$MARKER\"; sleep 1; }}; echo 'flaky: cannot reach the database' >&2; exit 3"
env = {{ MARKER = "{}/started-{round}" }}
health = {{ command = "true" }}
restart = "always"
{}"#,
        dir.display(),
        hub_section(addr)
    )
}

/// `gantry status` until the service is given up on; every run's stderr.
fn status_until_failed(project: &TestProject) -> String {
    let mut said = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let run = project.gantry(&["status", "--output", "json"]);
        run.expect_code(0);
        said.push_str(&run.stderr);
        let failed = run.json()["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "flaky" && s["state"] == "failed");
        if failed {
            return said;
        }
        assert!(std::time::Instant::now() < deadline, "never failed: {said}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_service_that_keeps_failing_files_one_bug_and_its_next_release_comments_on_it() {
    let (hub, key) = hub_with_key();
    let (mut server, addr) = serve(&hub);
    let project = TestProject::new(env!("CARGO_BIN_EXE_gantry")).env("HUB_KEY", &key);
    let marker = project.path().to_owned();
    let toml = project.path().join("gantry.toml");
    std::fs::write(&toml, flaky_toml(&marker, 1, &addr)).unwrap();
    project
        .gantry(&["deploy", "--output", "json"])
        .expect_code(0);

    let said = status_until_failed(&project);
    assert!(said.contains("hub: filed SHOP-1"), "{said}");
    assert!(!said.contains(&key), "the key is never shown");
    let items = get(&addr, "/api/agent/items?product=SHOP", &key);
    let items = items["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one bug for one cause: {items:?}");
    let bug = &items[0];
    assert_eq!(bug["source"], "auto_detected");
    assert_eq!(
        bug["title"],
        "Service flaky of flaky in local keeps failing: service.failing"
    );
    let description = bug["description"].as_str().unwrap();
    for part in [
        "- Service: flaky",
        "- Host: local",
        "- Release: ",
        "`service.failing`",
    ] {
        assert!(description.contains(part), "{part} in {description}");
    }
    let comments = |addr: &str| {
        get(addr, "/api/agent/items/SHOP-1/comments", &key)
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["body"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let everything = format!("{description}{}", comments(&addr).join(""));
    assert!(
        everything.contains("flaky: cannot reach the database")
            && everything.contains("gave up after"),
        "the log tail and the reason reach the hub: {everything}"
    );

    let before = comments(&addr).len();
    let again = project.gantry(&["status", "--output", "json"]);
    again.expect_code(0);
    assert!(
        !again.stderr.contains("hub:"),
        "nothing new: {}",
        again.stderr
    );
    assert_eq!(
        comments(&addr).len(),
        before,
        "the same failure is not told twice"
    );

    std::fs::write(&toml, flaky_toml(&marker, 2, &addr)).unwrap();
    project
        .gantry(&["deploy", "--output", "json"])
        .expect_code(0);
    let said = status_until_failed(&project);
    assert!(said.contains("hub: commented on SHOP-1"), "{said}");
    let items = get(&addr, "/api/agent/items?product=SHOP", &key);
    assert_eq!(
        items["items"].as_array().unwrap().len(),
        1,
        "one bug, not two"
    );
    let last = comments(&addr).pop().unwrap();
    assert!(
        last.starts_with("The same failure happened again"),
        "{last}"
    );
    assert!(last.contains("gave up after"), "{last}");

    server.kill().unwrap();
    server.wait().unwrap();
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_deploy_marks_the_items_its_commits_ship_as_fixed_in_its_release() {
    let (hub, key) = hub_with_key();
    let (mut server, addr) = serve(&hub);
    let project = shop(
        &addr,
        &key,
        "run = \"exec sleep 600\"\nhealth = { command = \"true\" }",
    );
    git(project.path(), &["init", "-q"]);
    git(project.path(), &["add", "-A"]);
    git(project.path(), &["commit", "-qm", "fix the totals"]);
    let head = git(project.path(), &["rev-parse", "HEAD"]);

    let create = |title: &str| {
        let body = format!(r#"{{"type": "bug", "title": "{title}"}}"#);
        send(
            &addr,
            "POST",
            "/api/agent/items",
            &key,
            body.as_bytes(),
            None,
        )
        .1
    };
    let fixed = create("Totals are wrong");
    let waiting = create("Later");
    let path = format!("/api/agent/items/{}", fixed["id"]);
    let (etag, _) = send(&addr, "GET", &path, &key, &[], None);
    let pr = format!(
        r#"{{"url": "https://example.com/shop/pull/7", "number": 7, "status": "merged", "commit": "{head}"}}"#
    );
    let (_, linked) = send(
        &addr,
        "PATCH",
        &format!("{path}/pr"),
        &key,
        pr.as_bytes(),
        etag.as_deref(),
    );
    assert_eq!(
        linked["pull_requests"][0]["commit"],
        head.as_str(),
        "{linked}"
    );

    let deployed = project.gantry(&["deploy", "--output", "json"]);
    deployed.expect_code(0);
    let release = deployed.json()["release"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        deployed.stderr.contains(&format!(
            "hub: {} fixed in {release}",
            fixed["reference"].as_str().unwrap()
        )),
        "{}",
        deployed.stderr
    );
    let fixed_now = get(&addr, &path, &key);
    assert_eq!(fixed_now["fixed_version"], release.as_str(), "{fixed_now}");
    let waiting_now = get(&addr, &format!("/api/agent/items/{}", waiting["id"]), &key);
    assert!(waiting_now["fixed_version"].is_null(), "{waiting_now}");

    server.kill().unwrap();
    server.wait().unwrap();
}
