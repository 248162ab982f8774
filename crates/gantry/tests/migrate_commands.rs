//! `migrate.pre` and `migrate.post` across three hosts over SSH (network
//! namespaces with their own sshd, as in remote_ssh): each runs once for
//! the environment, in the new release's files, its output kept in the
//! release; a failing `pre` stops the deploy before any host takes the new
//! release, every request still answered by the old one. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_support::{GANTRY, remote_project};
use gantry_testkit::TestProject;
use gantry_testkit::hosts::TestHosts;
use serde_json::Value;

const ALL: [&str; 3] = ["h1", "h2", "h3"];
const TOKEN: &str = "tok-5f3c9a1e77";

/// The hello project on the three hosts, its web service with `migrate`
/// (a TOML inline table) and a secret the commands can read.
fn project(hosts: &TestHosts, migrate: &str, version: &str) -> TestProject {
    let project = remote_project(hosts, &ALL, version).env("API_TOKEN", TOKEN);
    let path = project.path().join("gantry.toml");
    let toml = std::fs::read_to_string(&path).unwrap().replacen(
        "replicas = 2\n",
        &format!("replicas = 2\nsecrets = [\"API_TOKEN\"]\nmigrate = {migrate}\n"),
        1,
    );
    std::fs::write(path, toml).unwrap();
    project
}

fn set_migrate(project: &TestProject, migrate: &str) {
    let path = project.path().join("gantry.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let start = toml.find("migrate = ").unwrap();
    let end = start + toml[start..].find('\n').unwrap();
    let toml = format!("{}migrate = {migrate}{}", &toml[..start], &toml[end..]);
    std::fs::write(path, toml).unwrap();
}

fn started_hosts() -> TestHosts {
    let hosts = TestHosts::start(3);
    for name in ALL {
        hosts.host(name).install_gantry(GANTRY.as_ref());
    }
    hosts
}

/// The lines each host's `~/migrations.log` holds (the commands append to it).
fn logged(hosts: &TestHosts) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for name in ALL {
        let text = std::fs::read_to_string(hosts.host(name).home.join("migrations.log"))
            .unwrap_or_default();
        lines.extend(text.lines().map(|l| (name.to_owned(), l.to_owned())));
    }
    lines
}

fn version(hosts: &TestHosts, name: &str) -> Result<String, String> {
    match hosts
        .host(name)
        .http_get(8080, "web.shop.localhost", "/version")
    {
        Ok((200, body)) => Ok(body.trim().to_owned()),
        Ok((code, body)) => Err(format!("{name}: {code} {body}")),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// The task phases of every release of every host: (host, release, phase, output).
fn task_phases(project: &TestProject) -> Vec<(String, String, String, Value)> {
    let releases = project.gantry(&["releases", "-e", "prod", "--output", "json"]);
    releases.expect_code(0);
    let releases = releases.json();
    let mut found = Vec::new();
    for host in releases["hosts"].as_array().unwrap() {
        for release in host["releases"].as_array().unwrap() {
            for phase in release["phases"].as_array().unwrap() {
                if !phase["task"].is_null() {
                    found.push((
                        host["host"].as_str().unwrap().to_owned(),
                        release["id"].as_str().unwrap().to_owned(),
                        phase["name"].as_str().unwrap().to_owned(),
                        phase["task"].clone(),
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn pre_and_post_run_once_for_three_hosts_with_their_output_kept() {
    let hosts = started_hosts();
    let migrate = r#"{ pre = "echo \"pre $(cat VERSION) $GANTRY_SERVICE\" >> \"$HOME/migrations.log\"; echo \"migrated to $(cat VERSION) with $API_TOKEN\"", post = "echo \"post $(cat VERSION)\" >> \"$HOME/migrations.log\"; echo warmed" }"#;
    let project = project(&hosts, migrate, "1");
    let deployed = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    deployed.expect_code(0);
    let report = deployed.json();
    // Once each, on the first host, in the new release's files.
    assert_eq!(
        logged(&hosts),
        [
            ("h1".to_owned(), "pre 1 web".to_owned()),
            ("h1".to_owned(), "post 1".to_owned())
        ],
        "{report:#}"
    );
    let tasks = report["tasks"].as_array().expect("the report's tasks");
    let summary: Vec<(&str, &str, i64)> = tasks
        .iter()
        .map(|t| {
            (
                t["phase"].as_str().unwrap(),
                t["host"].as_str().unwrap(),
                t["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("migrate.pre", "h1", 0), ("migrate.post", "h1", 0)],
        "{report:#}"
    );
    // Output kept, the secret's value hidden wherever it appears.
    let pre_output = tasks[0]["output"].as_array().unwrap();
    assert_eq!(pre_output.len(), 1, "{report:#}");
    let line = pre_output[0].as_str().unwrap();
    assert!(line.starts_with("migrated to 1 with "), "{line}");
    assert!(!deployed.stdout.contains(TOKEN), "{}", deployed.stdout);
    assert!(!deployed.stderr.contains(TOKEN), "{}", deployed.stderr);
    for name in ALL {
        assert_eq!(version(&hosts, name).unwrap(), "1");
    }

    // A redeploy runs them once more, in version 2's files, before any
    // host takes it; `gantry releases` keeps each one's output.
    std::fs::write(project.path().join("VERSION"), "2\n").unwrap();
    let text = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "text"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("migrate.pre of web on h1") && text.stdout.contains("succeeded"),
        "{}",
        text.stdout
    );
    // A text deploy says what it will do before it acts.
    assert!(
        text.stderr
            .contains("plan for shop on prod\nhost h1: new release (runs r1)"),
        "{}",
        text.stderr
    );
    let logs: Vec<String> = logged(&hosts)
        .into_iter()
        .map(|(h, l)| format!("{h} {l}"))
        .collect();
    assert_eq!(
        logs,
        ["h1 pre 1 web", "h1 post 1", "h1 pre 2 web", "h1 post 2"]
    );
    let phases = task_phases(&project);
    let kept: Vec<(&str, &str, &str)> = phases
        .iter()
        .map(|(host, _, phase, task)| {
            (
                host.as_str(),
                phase.as_str(),
                task["output"][0].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kept.len(), 4, "{phases:#?}");
    assert!(kept.iter().all(|(host, _, _)| *host == "h1"), "{phases:#?}");
    assert!(
        kept.contains(&("h1", "migrate.post", "warmed")),
        "{phases:#?}"
    );
    assert!(
        kept.iter().any(
            |(_, phase, out)| *phase == "migrate.pre" && out.starts_with("migrated to 2 with ")
        ),
        "{phases:#?}"
    );
    assert!(
        !format!("{phases:?}").contains(TOKEN),
        "no output shows the secret: {phases:#?}"
    );

    // The same deploy again makes no release anywhere: no task runs again.
    let same = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    same.expect_code(0);
    let report = same.json();
    let outcomes: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["unchanged"; 3], "{report:#}");
    assert_eq!(logged(&hosts).len(), 4, "{:?}", logged(&hosts));
    assert!(
        report["tasks"].as_array().is_none_or(Vec::is_empty),
        "{report:#}"
    );
}

#[test]
fn a_failing_pre_migration_leaves_the_old_release_serving_every_request() {
    let hosts = Arc::new(started_hosts());
    let project = project(&hosts, r#"{ pre = "true" }"#, "1");
    project
        .gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"])
        .expect_code(0);

    // Version 2's migration fails after a while: requests keep coming to
    // every host during the attempt and after it.
    std::fs::write(project.path().join("VERSION"), "2\n").unwrap();
    set_migrate(
        &project,
        r#"{ pre = "echo starting; sleep 2; echo 'relation users does not exist' >&2; exit 3", post = "echo never >> \"$HOME/migrations.log\"" }"#,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (hosts, stop) = (Arc::clone(&hosts), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut answered, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for name in ALL {
                    match version(&hosts, name) {
                        Ok(v) if v == "1" => answered += 1,
                        Ok(v) => failures.push(format!("{name} answered version {v}")),
                        Err(e) => failures.push(e),
                    }
                }
            }
            (answered, failures)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let run = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (answered, failures) = load.join().unwrap();

    run.expect_code(6);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "deploy.failed", "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("`migrate.pre` of `web` exited with code 3; no new instance started"),
        "{error:#}"
    );
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|h| h.contains("relation users does not exist")),
        "the hint has the command's output: {error:#}"
    );
    let per_host = &error["details"]["hosts"];
    assert_eq!(per_host[0]["outcome"], "reverted", "{per_host:#}");
    assert_eq!(per_host[1]["outcome"], "skipped", "{per_host:#}");
    assert_eq!(per_host[2]["outcome"], "skipped", "{per_host:#}");
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:?}",
        failures.len()
    );
    assert!(answered >= 3, "the load loop ran: {answered} requests");
    assert_eq!(logged(&hosts), [], "post did not run");

    // The failed release keeps the command's output.
    let phases = task_phases(&project);
    let failed = phases
        .iter()
        .find(|(_, _, phase, task)| phase == "migrate.pre" && task["exit_code"] == 3)
        .unwrap_or_else(|| panic!("the failed pre phase: {phases:#?}"));
    assert_eq!(failed.0, "h1");
    assert_eq!(
        failed.3["output"],
        serde_json::json!(["starting", "relation users does not exist"]),
        "{phases:#?}"
    );
    for name in ALL {
        assert_eq!(version(&hosts, name).unwrap(), "1");
    }
}
