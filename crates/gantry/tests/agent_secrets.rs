//! A secret's value reaches the service that names it, and nothing else: not
//! a report, not a progress line, not a log file, not the agent's store.

mod agent_support;

use std::os::unix::fs::PermissionsExt;

use agent_support::{files_under, json, output, rot13, service, shell, traced, wait_for_status};
use gantry_testkit::{Run, TestProject};

const SECRET: &str = "hunter2-Kx7QpZ-do-not-print";

fn project() -> TestProject {
    shell(
        "secrets",
        r#"[services.api]
run = "echo \"token rot13: $(printf %s \"$API_TOKEN\" | tr A-Za-z N-ZA-Mn-za-m)\"; exec sleep 600"
secrets = ["API_TOKEN"]
health = { command = "true" }
"#,
    )
    .env("API_TOKEN", SECRET)
    // The agent inherits this from the command that starts it: its own
    // logs, at their most talkative, must not hold the value either.
    .env("RUST_LOG", "debug")
}

fn holds_secret(bytes: &[u8]) -> bool {
    bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())
}

fn assert_no_secret_in(runs: &[Run]) {
    for run in runs {
        assert!(
            !output(run).contains(SECRET),
            "`gantry {}` printed the secret:\n{}",
            run.args.join(" "),
            output(run)
        );
    }
}

/// Every file of the state directory but the secrets file, the SQLite
/// database and its journal among them, searched byte by byte.
fn assert_no_secret_under(p: &TestProject) {
    let secrets = p.state_dir().join("secrets/secrets.env");
    let files = files_under(p.state_dir());
    assert!(
        files.iter().any(|f| f.ends_with("agent.db")),
        "the store is searched: {files:?}"
    );
    for file in files.iter().filter(|f| **f != secrets) {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            // Gone since the listing: a temporary file renamed, a spec file read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", file.display()),
        };
        assert!(!holds_secret(&bytes), "{} holds the secret", file.display());
    }
}

#[test]
fn a_secret_value_never_appears_in_a_report_a_log_file_or_the_store() {
    let p = project();
    let mut runs = Vec::new();
    for (round, args) in [
        &["deploy", "--skip-build", "--output", "text", "-vvv"][..],
        &["deploy", "--skip-build", "--output", "json"],
    ]
    .into_iter()
    .enumerate()
    {
        // A file that changes each round, so the second deploy makes a
        // release too (an identical one would be reported unchanged).
        std::fs::write(p.path().join("ROUND"), round.to_string()).expect("write ROUND");
        let run = p.gantry(args);
        run.expect_code(0);
        runs.push(run);
    }
    let ready = wait_for_status(&p, "the api to run", |s| {
        service(s, "api")["state"] == "running"
    });
    assert_eq!(service(&ready, "api")["release"], "r2");

    let secrets = p.state_dir().join("secrets/secrets.env");
    let mode = std::fs::metadata(&secrets)
        .expect("the secrets file exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", secrets.display());
    assert!(
        std::fs::read_to_string(&secrets)
            .expect("read")
            .contains(SECRET)
    );

    // The agent outlives the deploy that started it, and its environment with it.
    let agent = std::fs::read_to_string(p.state_dir().join("agent.lock")).expect("agent.lock");
    let environ = std::fs::read(format!("/proc/{}/environ", agent.trim())).expect("environ");
    assert!(!holds_secret(&environ), "the agent's environment");

    let logs = p.gantry(&["logs", "api", "--output", "json"]);
    logs.expect_code(0);
    assert!(
        logs.stdout
            .contains(&format!("token rot13: {}", rot13(SECRET))),
        "the service got its secret:\n{}",
        logs.stdout
    );
    runs.push(logs);
    for args in [
        &["status", "--output", "json"][..],
        &["status", "--output", "text"],
        &["releases", "--output", "json"],
        &["releases", "show", "r2", "--output", "json"],
        &["releases", "show", "r2", "--output", "text"],
        &["show", "--output", "json"],
        &["logs", "--output", "text"],
        &["restart", "--output", "json"],
        &["rollback", "--output", "json"],
        &["rollback", "--to", "r2", "--output", "text"],
    ] {
        let run = p.gantry(args);
        run.expect_code(0);
        runs.push(run);
    }
    assert_no_secret_in(&runs);
    assert_no_secret_under(&p);

    // Once the agent is gone its journal is folded into the database file.
    runs.push(p.gantry(&["stop", "--output", "json"]));
    runs.push(p.gantry(&["agent", "stop", "--output", "json"]));
    assert_no_secret_in(&runs);
    assert_no_secret_under(&p);

    // The agent started again still hands the secret to the service.
    json(&p, &["restart"]);
    wait_for_status(&p, "the api to run again", |s| {
        service(s, "api")["state"] == "running"
    });
    let logs = p.gantry(&["logs", "api", "--tail", "1", "--output", "json"]);
    assert!(logs.stdout.contains(&rot13(SECRET)), "{}", logs.stdout);
    assert_no_secret_under(&p);
}

#[test]
fn vvv_shows_the_deploy_request_with_its_secret_values_hidden() {
    let p = project();
    let run = p.gantry(&["-vvv", "deploy", "--skip-build", "--output", "json"]);
    run.expect_code(0);
    assert!(run.json().is_object());
    assert_no_secret_in(std::slice::from_ref(&run));
    let request = "agent local: → POST /v1/projects/secrets/deploys ";
    let sent = traced(&run, request);
    assert_eq!(sent.len(), 1, "{}", run.stderr);
    let body: serde_json::Value = serde_json::from_str(&sent[0][request.len()..])
        .unwrap_or_else(|e| panic!("{e}: {}", sent[0]));
    assert_eq!(body["secrets"]["API_TOKEN"], "(redacted)", "{body:#}");
    assert_eq!(body["project"], "secrets", "{body:#}");
}
