//! `gantry hub`: keys, users and products managed from the command line on
//! the hub's database, and `gantry hub serve` answering with those keys.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use gantry_testkit::TestProject;

fn project() -> TestProject {
    TestProject::new(env!("CARGO_BIN_EXE_gantry"))
}

/// `GET path` with a bearer key; the status.
fn get_with_key(addr: &str, path: &str, key: &str) -> u16 {
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
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn keys_made_by_the_cli_open_the_served_api_until_revoked() {
    let p = project();
    let product = p.gantry(&[
        "hub", "product", "add", "SHOP", "--name", "The shop", "--output", "json",
    ]);
    product.expect_code(0);
    assert_eq!(product.json()[0]["key"], "SHOP");
    p.gantry(&[
        "hub",
        "milestone",
        "add",
        "SHOP",
        "1.5",
        "--target",
        "2027-03-31",
    ])
    .expect_code(0);
    let bad = p.gantry(&[
        "hub",
        "milestone",
        "add",
        "SHOP",
        "1.6",
        "--target",
        "someday",
        "--output",
        "json",
    ]);
    bad.expect_code(3);
    assert!(
        bad.json()["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("YYYY-MM-DD")
    );
    let milestones = p.gantry(&["hub", "milestone", "list", "SHOP", "--output", "json"]);
    assert_eq!(
        milestones.json(),
        serde_json::json!([{"name": "1.5", "target_date": "2027-03-31"}])
    );

    let created = p.gantry(&[
        "hub",
        "key",
        "create",
        "--name",
        "coder",
        "--role",
        "agent",
        "--permission",
        "write",
        "--product",
        "SHOP",
        "--output",
        "json",
    ]);
    created.expect_code(0);
    let secret = created.json()["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("ghk_"), "{secret}");
    assert_eq!(created.json()["key"]["product"], "SHOP");

    let listed = p.gantry(&["hub", "key", "list", "--output", "json"]);
    listed.expect_code(0);
    assert_eq!(listed.json()[0]["name"], "coder");
    assert!(
        !listed.stdout.contains(&secret[20..]),
        "a listing never shows a secret"
    );

    let mut server = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--output",
            "text",
        ])
        .env("GANTRY_STATE_DIR", p.state_dir())
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

    assert_eq!(get_with_key(&addr, "/api/agent/items", &secret), 200);
    let rotated = p.gantry(&["hub", "key", "rotate", "coder", "--output", "json"]);
    rotated.expect_code(0);
    let new_secret = rotated.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(
        get_with_key(&addr, "/api/agent/items", &secret),
        401,
        "the old secret stops at once"
    );
    assert_eq!(get_with_key(&addr, "/api/agent/items", &new_secret), 200);

    p.gantry(&["hub", "key", "revoke", "coder"]).expect_code(0);
    assert_eq!(get_with_key(&addr, "/api/agent/items", &new_secret), 401);
    let listed = p.gantry(&["hub", "key", "list", "--output", "json"]).json();
    assert_eq!(listed[0]["revoked"], true);
    assert_eq!(
        listed[0]["request_count"], 2,
        "each accepted request is counted"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        server.wait().unwrap().success(),
        "SIGTERM stops the hub cleanly"
    );
}

#[test]
fn a_user_is_added_with_a_password_from_stdin() {
    let p = project();
    let add = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args([
                "hub",
                "user",
                "add",
                "ann",
                "--email",
                "ann@example.com",
                "--password-stdin",
                "--output",
                "json",
            ])
            .env("GANTRY_STATE_DIR", p.state_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let short = add("hunter2");
    assert_eq!(short.status.code(), Some(3));
    let error: serde_json::Value = serde_json::from_slice(&short.stdout).unwrap();
    assert_eq!(error["error"]["code"], "hub.invalid");
    assert!(!String::from_utf8_lossy(&short.stdout).contains("hunter2"));

    let added = add("correct horse battery staple");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let again = add("correct horse battery staple");
    assert_eq!(again.status.code(), Some(4), "a second ann is a conflict");
}

#[test]
fn a_bad_database_url_is_refused_by_name() {
    let p = project();
    let run = p.gantry(&[
        "hub",
        "key",
        "list",
        "--database",
        "mysql://root:pw@db/hub",
        "--output",
        "json",
    ]);
    run.expect_code(3);
    assert_eq!(run.json()["error"]["code"], "hub.invalid");
    assert!(
        !run.stdout.contains("pw@"),
        "the URL's password is never shown"
    );
}

#[test]
fn a_database_password_on_the_command_line_is_refused() {
    let p = project();
    let url = "postgres://hub:s3cret@127.0.0.1:1/hub";
    let run = p.gantry(&["hub", "key", "list", "--database", url, "--output", "json"]);
    run.expect_code(3);
    assert_eq!(run.json()["error"]["code"], "hub.invalid");
    assert!(
        run.json()["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("GANTRY_HUB_DATABASE")
    );
    assert!(!run.stdout.contains("s3cret"));
}

/// One HTTP/1.1 exchange; the status and the whole answer.
fn exchange(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, answer)
}

#[test]
fn a_user_added_by_the_cli_logs_in_with_their_role_until_logged_out() {
    let p = project();
    p.gantry(&["hub", "product", "add", "SHOP", "--name", "The shop"])
        .expect_code(0);
    let password = "correct horse battery staple";
    let unknown = p.gantry_with_stdin(
        &[
            "hub",
            "user",
            "add",
            "ann",
            "--password-stdin",
            "--role",
            "member",
            "--product",
            "NOPE",
            "--output",
            "json",
        ],
        format!("{password}\n").as_bytes(),
    );
    unknown.expect_code(3);
    let no_terminal = p.gantry(&["hub", "user", "add", "ann", "--output", "json"]);
    no_terminal.expect_code(3);
    assert!(
        no_terminal.json()["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("--password-stdin")
    );
    let added = p.gantry_with_stdin(
        &[
            "hub",
            "user",
            "add",
            "ann",
            "--password-stdin",
            "--role",
            "member",
            "--product",
            "SHOP",
            "--output",
            "json",
        ],
        format!("{password}\n").as_bytes(),
    );
    added.expect_code(0);
    assert_eq!(
        added.json()[0]["roles"],
        serde_json::json!([{"product": "SHOP", "role": "member"}])
    );
    p.gantry(&["hub", "user", "grant", "ann", "--role", "viewer"])
        .expect_code(0);
    let listed = p
        .gantry(&["hub", "user", "list", "--output", "json"])
        .json();
    assert_eq!(listed[0]["roles"].as_array().unwrap().len(), 2, "{listed}");
    assert!(!listed.to_string().contains("argon2"), "no hash is listed");

    let mut server = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--output",
            "text",
        ])
        .env("GANTRY_STATE_DIR", p.state_dir())
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
    let login = format!(r#"{{"name":"ann","password":"{password}"}}"#);
    let (status, answer) = exchange(&addr, "POST", "/api/session", "", &login);
    assert_eq!(status, 200, "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let with_cookie = format!("Cookie: {cookie}\r\n");
    assert_eq!(
        exchange(&addr, "GET", "/api/agent/items", &with_cookie, "").0,
        200
    );

    let ended = p.gantry(&["hub", "user", "logout", "ann", "--output", "json"]);
    ended.expect_code(0);
    assert_eq!(ended.json()["sessions_ended"], 1);
    assert_eq!(
        exchange(&addr, "GET", "/api/agent/items", &with_cookie, "").0,
        401,
        "ended at once"
    );
    p.gantry_with_stdin(
        &["hub", "user", "password", "ann", "--password-stdin"],
        b"another long passphrase\n",
    )
    .expect_code(0);
    assert_eq!(
        exchange(&addr, "POST", "/api/session", "", &login).0,
        401,
        "the old password is gone"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(server.wait().unwrap().success());
}
