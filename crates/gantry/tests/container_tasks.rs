//! `migrate.pre` and `migrate.post` of an image service on the local Docker
//! engine, through the real binary: each runs once as a one-off container
//! of the new release's image, with the service's volumes, `pre` before the
//! new container starts and `post` once it is live, their output kept in
//! the release's phases and no task container left; a `pre` that fails
//! stops the deploy with the old container still serving, untouched. A
//! task container outlives neither its request nor its agent: abandoned, it
//! is removed; left by an agent killed, the restarted agent removes it.
//! A secret a task prints is kept as `(redacted)`, as a process task's is.
//! Needs root and Docker; the image is built here.

mod agent_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{
    Cleanup, containers, deploy, docker, project_with_proxy, service, start_deploy, status,
};
use gantry_testkit::TestProject;
use serde_json::Value;

/// Redis with its data on a volume; `migrate` a TOML inline table.
fn toml(project: &str, image: &str, setting: &str, migrate: &str) -> String {
    format!(
        r#"[project]
name = "{project}"

[services.db]
image = "{image}"
port = 6379
health = {{ tcp = true, interval = "100ms", timeout = "1s" }}
volumes = ["data:/var/lib/redis"]
env = {{ SETTING = "{setting}" }}
stop_timeout = "5s"
migrate = {migrate}
"#
    )
}

/// `pre` appends to a log on the volume and says so; `post` says it ran.
const MIGRATE: &str = r#"{ pre = "echo \"pre $SETTING\" >> /var/lib/redis/migrations.log && echo \"migrated to $SETTING\"", post = "echo \"warmed $SETTING\"" }"#;

fn write(p: &TestProject, text: &str) {
    std::fs::write(p.path().join("gantry.toml"), text).expect("write gantry.toml");
}

fn first<'a>(report: &'a Value, name: &str, key: &str) -> &'a Value {
    &service(report, name)["instances"][0][key]
}

fn db_port(report: &Value) -> u16 {
    first(report, "db", "port")
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("db has no port: {report:#}"))
}

fn db_container(project: &str, report: &Value) -> String {
    let id = first(report, "db", "id").as_str().expect("db's instance");
    format!("gantry-{project}-{id}")
}

/// A Redis command, retried while Redis loads its data after a start.
fn redis(port: u16, command: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = gantry_testkit::images::redis_command(port, command)
            .unwrap_or_else(|e| format!("error: {e}"));
        if !(reply.starts_with("-LOADING") || reply.starts_with("error:"))
            || Instant::now() >= deadline
        {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The release's phases, as (name, service).
fn phase_names(release: &Value) -> Vec<(String, String)> {
    release["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["service"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn position(release: &Value, name: &str) -> Option<usize> {
    phase_names(release)
        .iter()
        .position(|(n, s)| n == name && s == "db")
}

/// Every kept task phase of every release: (release, phase, task).
fn task_phases(p: &TestProject) -> Vec<(String, String, Value)> {
    let releases = p.gantry(&["releases", "--output", "json"]);
    releases.expect_code(0);
    let releases = releases.json();
    let mut found = Vec::new();
    // One host: its releases, newest first; taken oldest first.
    for release in releases["releases"].as_array().into_iter().flatten().rev() {
        for phase in release["phases"].as_array().into_iter().flatten() {
            if !phase["task"].is_null() {
                found.push((
                    release["id"].as_str().unwrap_or_default().to_owned(),
                    phase["name"].as_str().unwrap_or_default().to_owned(),
                    phase["task"].clone(),
                ));
            }
        }
    }
    found
}

/// The migrations log the `pre` commands wrote on the volume.
fn migrations_log(container: &str) -> String {
    docker(&["exec", container, "cat", "/var/lib/redis/migrations.log"]).unwrap_or_default()
}

#[test]
fn an_image_service_runs_its_migrations_in_one_off_containers_and_a_failing_pre_leaves_the_old_one_serving()
 {
    let image = gantry_testkit::images::redis();
    let name = "test-ctr-tasks";
    let _cleanup = Cleanup(name.to_owned());
    let p = project_with_proxy().file("gantry.toml", &toml(name, &image, "a", MIGRATE));

    let report = deploy(&p);
    let release = &report["release"];
    let pre = position(release, "migrate.pre").unwrap_or_else(|| panic!("no pre: {report:#}"));
    let start = position(release, "start").unwrap_or_else(|| panic!("no start: {report:#}"));
    let post = position(release, "migrate.post");
    assert!(
        pre < start,
        "pre before the start: {:?}",
        phase_names(release)
    );
    let db = db_container(name, &report);
    // The pre command wrote on the volume the new container then mounted.
    assert_eq!(migrations_log(&db), "pre a", "{report:#}");
    assert_eq!(redis(db_port(&report), "SET visits 7"), "+OK");
    // No task container is left: only the instance.
    assert_eq!(containers(name), BTreeSet::from([db.clone()]));

    // Both tasks' output is kept in the release, once each.
    let kept = task_phases(&p);
    let summary: Vec<(&str, Option<i64>, Vec<&str>)> = kept
        .iter()
        .map(|(_, phase, task)| {
            (
                phase.as_str(),
                task["exit_code"].as_i64(),
                task["output"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("migrate.pre", Some(0), vec!["migrated to a"]),
            ("migrate.post", Some(0), vec!["warmed a"]),
        ],
        "{kept:#?} (post in the deploy's phases at {post:?})"
    );
    assert!(
        kept.iter()
            .all(|(r, _, _)| Some(r.as_str()) == release["id"].as_str()),
        "{kept:#?}"
    );

    // A changed setting: pre runs once more, before the replacement starts,
    // on the same volume.
    write(&p, &toml(name, &image, "b", MIGRATE));
    let report = deploy(&p);
    let release = &report["release"];
    let pre = position(release, "migrate.pre").unwrap_or_else(|| panic!("no pre: {report:#}"));
    let start = position(release, "start").unwrap_or_else(|| panic!("no start: {report:#}"));
    assert!(
        pre < start,
        "pre before the start: {:?}",
        phase_names(release)
    );
    let db = db_container(name, &report);
    assert_eq!(migrations_log(&db), "pre a\npre b");
    assert_eq!(redis(db_port(&report), "GET visits"), "$1");
    assert_eq!(containers(name), BTreeSet::from([db.clone()]));
    let kept = task_phases(&p);
    assert_eq!(kept.len(), 4, "{kept:#?}");
    assert_eq!(
        kept.iter()
            .filter(|(r, phase, _)| phase == "migrate.post"
                && Some(r.as_str()) == release["id"].as_str())
            .count(),
        1,
        "post ran once for the release: {kept:#?}"
    );

    // A pre that fails: the deploy stops, the old container serves on.
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &db]).expect("inspect db");
    write(
        &p,
        &toml(
            name,
            &image,
            "c",
            r#"{ pre = "echo starting; echo 'relation users does not exist' >&2; echo rolled back; exit 3", post = "echo never >> /var/lib/redis/migrations.log" }"#,
        ),
    );
    let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    run.expect_code(6);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "deploy.failed", "{error:#}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`migrate.pre` of `db` exited with code 3; no new instance started"),
        "{error:#}"
    );
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|h| h.contains("relation users does not exist")),
        "the hint has the command's output: {error:#}"
    );
    let cause = &error["details"]["cause"];
    assert_eq!(cause["code"], "migrate.command_failed", "{error:#}");
    assert_eq!(
        cause["message"], "`migrate.pre` of `db` exited with code 3",
        "{error:#}"
    );
    assert_eq!(containers(name), BTreeSet::from([db.clone()]));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &db]).expect("inspect db"),
        started,
        "the old container was not restarted"
    );
    let now = status(&p);
    assert_eq!(service(&now, "db")["state"], "running", "{now:#}");
    assert_eq!(
        service(&now, "db")["release"],
        report["release"]["id"],
        "{now:#}"
    );
    assert_eq!(redis(db_port(&now), "GET visits"), "$1");
    assert_eq!(migrations_log(&db), "pre a\npre b", "post did not run");

    // A pre that cannot run, its image on no host and its registry not
    // answering: the container error is the cause, and nothing changed.
    let absent = "127.0.0.1:1/gantry-test/absent:1";
    write(&p, &toml(name, absent, "d", MIGRATE));
    let error = agent_support::failed_deploy(&p);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot run `migrate.pre` of `db`")),
        "{error:#}"
    );
    let cause = &error["details"]["cause"];
    assert_eq!(cause["code"], "container.no_image", "{error:#}");
    assert!(
        cause["message"]
            .as_str()
            .is_some_and(|m| m.contains(absent)),
        "{error:#}"
    );
    assert_eq!(containers(name), BTreeSet::from([db.clone()]));
    assert_eq!(migrations_log(&db), "pre a\npre b");
    let kept = task_phases(&p);
    // Its output as written, stdout and stderr in one stream.
    let failed = kept
        .iter()
        .find(|(_, phase, task)| phase == "migrate.pre" && task["exit_code"] == 3)
        .unwrap_or_else(|| panic!("the failed pre phase: {kept:#?}"));
    assert_eq!(
        failed.2["output"],
        serde_json::json!(["starting", "relation users does not exist", "rolled back"]),
        "{kept:#?}"
    );

    p.gantry(&["stop"]).expect_code(0);
    assert!(containers(name).is_empty(), "{:?}", containers(name));
}

#[test]
fn a_task_container_left_by_an_agent_killed_mid_task_is_removed_when_it_restarts() {
    let image = gantry_testkit::images::redis();
    let name = "test-ctr-task-crash";
    let _cleanup = Cleanup(name.to_owned());
    let p = project_with_proxy().file(
        "gantry.toml",
        &toml(name, &image, "a", r#"{ pre = "true" }"#),
    );
    let report = deploy(&p);
    let db = db_container(name, &report);
    assert_eq!(redis(db_port(&report), "SET visits 7"), "+OK");

    // A pre that never ends; the agent is killed while it runs.
    write(
        &p,
        &toml(
            name,
            &image,
            "b",
            r#"{ pre = "echo started; exec sleep 600" }"#,
        ),
    );
    let agent = std::fs::read_to_string(p.state_dir().join("agent.lock"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .expect("the agent's pid");
    let mut child = start_deploy(&p);
    let deadline = Instant::now() + Duration::from_secs(60);
    let task = loop {
        let others: Vec<String> = containers(name).into_iter().filter(|c| *c != db).collect();
        if let [task] = others.as_slice() {
            break task.clone();
        }
        assert!(Instant::now() < deadline, "no task container: {others:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(task.contains("migrate-pre"), "{task}");
    let _ = Command::new("kill")
        .args(["-KILL", &agent.to_string()])
        .status();
    let _ = child.wait();

    // The restarted agent removes it; the old container serves on.
    let now = status(&p);
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers(name) != BTreeSet::from([db.clone()]) {
        assert!(
            Instant::now() < deadline,
            "containers {:?}: {now:#}",
            containers(name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = agent_support::wait_for_status(&p, "db running", |s| {
        service(s, "db")["state"] == "running"
    });
    assert_eq!(db_container(name, &now), db);
    assert_eq!(redis(db_port(&now), "GET visits"), "$1");
    p.gantry(&["stop"]).expect_code(0);
    assert!(containers(name).is_empty(), "{:?}", containers(name));
}

#[test]
fn a_task_container_whose_request_is_abandoned_is_removed() {
    let image = gantry_testkit::images::redis();
    let name = "test-ctr-task-gone";
    let _cleanup = Cleanup(name.to_owned());
    // A post that never ends: the deploy waits on its request.
    let p = project_with_proxy().file(
        "gantry.toml",
        &toml(
            name,
            &image,
            "a",
            r#"{ post = "echo started; exec sleep 600" }"#,
        ),
    );
    let mut child = start_deploy(&p);
    let deadline = Instant::now() + Duration::from_secs(120);
    let task = loop {
        if let Some(task) = containers(name)
            .into_iter()
            .find(|c| c.contains("migrate-post"))
        {
            break task;
        }
        assert!(
            Instant::now() < deadline,
            "no task container: {:?}",
            containers(name)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The client goes away; the agent stays.
    let _ = child.kill();
    let _ = child.wait();
    // A deadline for a loaded machine (a forced remove there once took
    // longer than 30 s), not a measure of speed.
    let deadline = Instant::now() + Duration::from_secs(90);
    while containers(name).contains(&task) {
        assert!(
            Instant::now() < deadline,
            "{task} still there: {:?}",
            containers(name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = agent_support::wait_for_status(&p, "db running", |s| {
        service(s, "db")["state"] == "running"
    });
    assert_eq!(containers(name), BTreeSet::from([db_container(name, &now)]));
    p.gantry(&["stop"]).expect_code(0);
}

const SECRET: &str = "ctr-task-Zq81vLp-do-not-print";

/// A secret a task's container prints, from the file it is given, is kept
/// as `(redacted)` in the release's phases and in a failed deploy's error,
/// and lies in no report, no output and no file of the state directory but
/// the secrets file and the running container's own secret file.
#[test]
fn a_secret_a_task_container_prints_is_hidden_in_its_kept_output() {
    let image = gantry_testkit::images::redis();
    let name = "test-ctr-task-secret";
    let _cleanup = Cleanup(name.to_owned());
    let with_secret = |migrate: &str| {
        toml(name, &image, "a", migrate).replacen(
            "stop_timeout",
            "secrets = [\"API_TOKEN\"]\nstop_timeout",
            1,
        )
    };
    let p = project_with_proxy()
        .file(
            "gantry.toml",
            &with_secret(
                r#"{ pre = "echo \"pre read $(cat $API_TOKEN_FILE)\"", post = "echo \"post read $(cat $API_TOKEN_FILE)\"" }"#,
            ),
        )
        .env("API_TOKEN", SECRET)
        // The agent's own logs, at their most talkative, must not hold it either.
        .env("RUST_LOG", "debug");
    let mut runs = Vec::new();
    let deployed = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    deployed.expect_code(0);
    let db = db_container(name, &deployed.json());
    runs.push(deployed);

    // The task read the secret (its file held it) and its output hides it.
    let outputs: Vec<(String, Value)> = task_phases(&p)
        .into_iter()
        .map(|(_, phase, task)| (phase, task["output"].clone()))
        .collect();
    assert_eq!(
        outputs,
        [
            (
                "migrate.pre".to_owned(),
                serde_json::json!(["pre read (redacted)"])
            ),
            (
                "migrate.post".to_owned(),
                serde_json::json!(["post read (redacted)"])
            ),
        ]
    );

    // A pre that fails after printing it: the error's hint has its output, hidden.
    write(
        &p,
        &with_secret(r#"{ pre = "echo \"token $(cat $API_TOKEN_FILE)\"; exit 3" }"#),
    );
    let failed = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    failed.expect_code(6);
    let error = &failed.json()["error"];
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|h| h.contains("token (redacted)")),
        "{error:#}"
    );
    runs.push(failed);
    for args in [
        &["releases", "--output", "json"][..],
        &["releases", "--output", "text"][..],
        &["status", "--output", "json"][..],
    ] {
        let run = p.gantry(args);
        run.expect_code(0);
        runs.push(run);
    }
    for run in &runs {
        assert!(
            !agent_support::output(run).contains(SECRET),
            "`gantry {}` printed the secret:\n{}",
            run.args.join(" "),
            agent_support::output(run)
        );
    }
    let kept = [
        p.state_dir().join(format!("secrets/{name}.env")),
        p.state_dir().join("container-secrets").join(&db),
    ];
    let files = agent_support::files_under(p.state_dir());
    assert!(
        files.iter().any(|f| f.ends_with("agent.db")),
        "the store is searched: {files:?}"
    );
    for file in files
        .iter()
        .filter(|f| !kept.iter().any(|k| f.starts_with(k)))
    {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            // Gone since the listing: a temporary file renamed, a task's secret removed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", file.display()),
        };
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            file.display()
        );
    }
    p.gantry(&["stop"]).expect_code(0);
}
