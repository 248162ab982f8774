//! A project with `[hub]` reports its failed deploys to a real hub
//! (`gantry hub serve`): the first failure files an auto-detected bug, the
//! next failure of the same cause comments on it.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use gantry_testkit::TestProject;
use serde_json::Value;

/// `GET path` with a bearer key; the JSON answer.
fn get(addr: &str, path: &str, key: &str) -> Value {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
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
    let (mut server, addr) = serve(&hub);

    let project = TestProject::new(env!("CARGO_BIN_EXE_gantry"))
        .file(
            "gantry.toml",
            &format!(
                "[project]\nname = \"shop\"\n\n[services.web]\nbuild = \"echo compiling; exit 3\"\nrun = \"true\"\n\n\
                 [hub]\nurl = \"http://{addr}\"\nkey = \"HUB_KEY\"\nproduct = \"SHOP\"\n"
            ),
        )
        .env("HUB_KEY", &key);
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
