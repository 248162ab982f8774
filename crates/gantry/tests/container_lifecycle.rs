//! Stateful services on the local Docker engine, through the real binary:
//! a database with a volume is replaced stop-first and keeps its data; a
//! deploy that changes nothing of it leaves its container running
//! ("unchanged"); a failed replacement starts the old release again; a
//! process reaches it through `GANTRY_DB_HOST`/`_PORT`; status shows the
//! container's memory; and an agent killed in the middle of a deploy
//! leaves every service on one release with no container the store does
//! not count; a deploy of an image no host has fails with
//! `container.no_image` as its cause, and one whose container fails its
//! health check with `instance.unhealthy`. Needs root and Docker; the
//! images are built here.

mod agent_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{
    Cleanup, containers, deploy, docker, project_with_proxy, service, start_deploy, status,
};
use gantry_testkit::TestProject;
use serde_json::Value;

/// The database (Redis keeps its append-only file on the volume), and a
/// process that tells in its log what the database answered it.
fn toml(project: &str, image: &str, setting: &str, version: &str) -> String {
    format!(
        r#"[project]
name = "{project}"

[services.db]
image = "{image}"
port = 6379
health = {{ tcp = true, interval = "100ms", timeout = "1s" }}
volumes = ["data:/var/lib/redis"]
env = {{ SETTING = "{setting}" }}
resources = {{ memory = "64M" }}
stop_timeout = "5s"

[services.worker]
run = '''bash -c 'exec 3<>/dev/tcp/$GANTRY_DB_HOST/$GANTRY_DB_PORT && printf "INCR worker-starts\r\n" >&3 && read -t 5 r <&3 && echo "db at $GANTRY_DB_HOST:$GANTRY_DB_PORT says $r"; exec sleep 600' '''
depends_on = ["db"]
env = {{ VERSION = "{version}" }}
stop_timeout = "2s"
"#
    )
}

fn project(name: &str, image: &str) -> TestProject {
    project_with_proxy().file("gantry.toml", &toml(name, image, "a", "1"))
}

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

fn environ(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', "\n"))
        .unwrap_or_default()
}

fn phase_at(report: &Value, name: &str, service: &str) -> Option<usize> {
    report["release"]["phases"]
        .as_array()?
        .iter()
        .position(|p| p["name"] == name && p["service"] == service)
}

#[test]
fn a_database_is_replaced_stop_first_keeps_its_data_and_is_left_running_when_unchanged() {
    let image = gantry_testkit::images::redis();
    let name = "test-ctr-life";
    let _cleanup = Cleanup(name.to_owned());
    let p = project(name, &image);

    let first_deploy = deploy(&p);
    let db = db_container(name, &first_deploy);
    let port = db_port(&first_deploy);
    assert_eq!(redis(port, "SET visits 7"), "+OK");
    // The process reached the container through its variables.
    let worker_pid = first(&first_deploy, "worker", "pid")
        .as_u64()
        .expect("worker's pid");
    assert!(
        environ(worker_pid).contains(&format!("GANTRY_DB_PORT={port}\n")),
        "{}",
        environ(worker_pid)
    );
    agent_support::wait_for_status(&p, "the worker's line in its log", |_| {
        let logs = p.gantry(&["logs", "worker", "--output", "json"]);
        logs.stdout
            .contains(&format!("db at 127.0.0.1:{port} says :1"))
    });

    // Status shows the container's memory, and its limits as Docker's.
    let now = status(&p);
    let memory = first(&now, "db", "memory").as_u64().unwrap_or(0);
    assert!(memory > 0, "no memory for db: {now:#}");
    assert_eq!(service(&now, "db")["limits"]["via"], "docker");

    // Only the worker changed: the database is not bounced.
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &db]).expect("inspect db");
    write(&p, &toml(name, &image, "a", "2"));
    let report = deploy(&p);
    assert_eq!(report["unchanged"], serde_json::json!(["db"]), "{report:#}");
    assert_eq!(db_container(name, &report), db, "the same container");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &db]).expect("inspect db"),
        started,
        "db was not restarted"
    );
    assert_ne!(
        first(&report, "worker", "pid"),
        first(&first_deploy, "worker", "pid")
    );
    assert_eq!(service(&report, "db")["release"], report["release"]["id"]);

    // Nothing changed at all: the host makes no release, and says so.
    let run = p.gantry(&["deploy", "--skip-build", "--output", "text"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("unchanged") && run.stdout.contains("no new release"),
        "{}",
        run.stdout
    );
    assert_eq!(containers(name).len(), 1);

    // A changed setting: replaced stop-first, on the same data and the
    // same port, so what depends on it keeps its address.
    write(&p, &toml(name, &image, "b", "2"));
    let report = deploy(&p);
    let stop = phase_at(&report, "stop-old", "db").expect("db's old instance was stopped");
    let start = phase_at(&report, "start", "db").expect("db's new instance started");
    assert!(
        stop < start,
        "stop-first: {:#}",
        report["release"]["phases"]
    );
    let replaced = db_container(name, &report);
    assert_ne!(replaced, db);
    assert_eq!(containers(name), BTreeSet::from([replaced.clone()]));
    assert_eq!(db_port(&report), port, "the same address");
    assert_eq!(redis(port, "GET visits"), "$1", "the data is kept");
    // (The worker runs from the project's files, gantry.toml among them,
    // so it was replaced too, and given the same address.)
    let worker_pid = first(&report, "worker", "pid")
        .as_u64()
        .expect("worker's pid");
    assert!(environ(worker_pid).contains(&format!("GANTRY_DB_PORT={port}\n")));

    // A replacement that cannot start: the old release runs again.
    write(&p, &toml(name, "gantry-test-absent:none", "b", "2"));
    let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("was started again"), "{}", run.stdout);
    assert!(
        run.stdout.contains("[container.no_image]"),
        "{}",
        run.stdout
    );
    let now = agent_support::wait_for_status(&p, "db running again", |s| {
        service(s, "db")["state"] == "running"
    });
    assert_eq!(
        service(&now, "db")["release"],
        service(&report, "db")["release"]
    );
    assert_eq!(redis(db_port(&now), "GET visits"), "$1");
    assert_eq!(containers(name).len(), 1, "{:?}", containers(name));

    // Two replicas would share the volume: refused before anything runs.
    write(
        &p,
        &toml(name, &image, "b", "2").replace(
            "stop_timeout = \"5s\"",
            "replicas = 2\nstop_timeout = \"5s\"",
        ),
    );
    let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stdout.contains("would share its volumes"),
        "{}",
        run.stdout
    );

    // Stopped: no container left, nor the project's network.
    write(&p, &toml(name, &image, "b", "2"));
    p.gantry(&["stop"]).expect_code(0);
    assert!(containers(name).is_empty(), "{:?}", containers(name));
    assert!(docker(&["network", "inspect", &format!("gantry-{name}-local")]).is_err());
}

#[test]
fn an_agent_killed_during_a_stop_first_deploy_leaves_one_release_and_no_stray_container() {
    let image = gantry_testkit::images::redis();
    let name = "test-ctr-crash";
    let _cleanup = Cleanup(name.to_owned());
    let p = project(name, &image);
    let report = deploy(&p);
    assert_eq!(redis(db_port(&report), "SET visits 7"), "+OK");
    let started = Instant::now();
    write(&p, &toml(name, &image, "b", "1"));
    deploy(&p);
    let window = started.elapsed().as_millis() as u64;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    println!("container crash: seed {seed}, a deploy takes {window}ms");
    for crash in 0..6u64 {
        let setting = format!("s{crash}");
        write(&p, &toml(name, &image, &setting, "1"));
        let agent = std::fs::read_to_string(p.state_dir().join("agent.lock"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .expect("the agent's pid");
        let mut child = start_deploy(&p);
        let delay = (seed.rotate_left(crash as u32 * 7) ^ crash) % window.max(1);
        // Not a wait for a condition: the moment of the kill is the point.
        std::thread::sleep(Duration::from_millis(delay));
        let _ = Command::new("kill")
            .args(["-KILL", &agent.to_string()])
            .status();
        let _ = child.wait();
        let now = status(&p);
        // The restarted agent settled: every service on one release, with
        // as many running instances as replicas, and the containers on the
        // host are exactly the instances the store counts.
        let store = gantry_agent::Store::open(&p.state_dir().join("agent.db")).expect("the store");
        let active: BTreeSet<String> = store
            .active_instances()
            .expect("query")
            .into_iter()
            .filter(|i| i.project == name && i.service == "db")
            .map(|i| format!("gantry-{name}-{}", i.id))
            .collect();
        assert_eq!(active.len(), 1, "after kill {crash} ({delay}ms): {now:#}");
        agent_support::wait_for_status(&p, "db running", |s| {
            service(s, "db")["state"] == "running"
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while containers(name) != active {
            assert!(
                Instant::now() < deadline,
                "after kill {crash} ({delay}ms): containers {:?}, store {active:?}",
                containers(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let now = status(&p);
        for s in ["db", "worker"] {
            let release = &service(&now, s)["release"];
            for instance in service(&now, s)["instances"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(&instance["release"], release, "{now:#}");
            }
        }
        assert_eq!(
            redis(db_port(&now), "GET visits"),
            "$1",
            "after kill {crash}"
        );
        println!(
            "container crash {crash}: killed {delay}ms in; db on {}",
            service(&now, "db")["release"]
        );
    }
    p.gantry(&["stop"]).expect_code(0);
    assert!(containers(name).is_empty());
}

#[test]
fn a_deploy_of_an_image_no_host_has_fails_with_the_container_error_as_its_cause() {
    let name = "test-ctr-noimage";
    let _cleanup = Cleanup(name.to_owned());
    // Not on this machine, and its registry refuses at once: nothing to
    // ship, and the host's pull fails.
    let image = "127.0.0.1:1/gantry-test/absent:1";
    let p = project_with_proxy().file(
        "gantry.toml",
        &format!(
            "[project]\nname = \"{name}\"\n\n[services.web]\nimage = \"{image}\"\nport = 8080\n"
        ),
    );

    let failed = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    failed.expect_code(6);
    let error = &failed.json()["error"];
    // Scripts that look for `deploy.failed` still find it; the cause says why.
    assert_eq!(error["code"], "deploy.failed", "{error:#}");
    let cause = &error["details"]["cause"];
    assert_eq!(cause["code"], "container.no_image", "{error:#}");
    assert!(
        cause["message"].as_str().is_some_and(|m| m.contains(image)),
        "{error:#}"
    );

    // The host's release record keeps it.
    let shown = p.gantry(&["releases", "show", "r1", "--output", "json"]);
    shown.expect_code(0);
    assert!(
        shown.stdout.contains("\"container.no_image\""),
        "{}",
        shown.stdout
    );

    // People read it on a line of its own.
    let text = p.gantry(&["deploy", "--skip-build", "--output", "text"]);
    text.expect_code(6);
    assert!(
        text.stderr
            .lines()
            .any(|l| l.trim_end().ends_with("caused by container.no_image")),
        "{}",
        text.stderr
    );
}

#[test]
fn an_image_service_failing_its_health_check_fails_the_deploy_with_instance_unhealthy_as_its_cause()
{
    let name = "test-ctr-unhealthy";
    let _cleanup = Cleanup(name.to_owned());
    let image = gantry_testkit::images::busybox_web();
    // The check runs inside the container, where the file never appears.
    let p = project_with_proxy()
        .file(
            "gantry.toml",
            &format!(
                "[project]\nname = \"{name}\"\n\n[services.web]\nimage = \"{image}\"\n\
                 port = \"http\"\nstop_timeout = \"1s\"\n\
                 health = {{ command = \"test -e /tmp/ready\", interval = \"100ms\", timeout = \"1s\" }}\n"
            ),
        )
        ;

    let error = agent_support::failed_deploy(&p);
    let cause = &error["details"]["cause"];
    assert_eq!(cause["code"], "instance.unhealthy", "{error:#}");
    // The check's last answer, from inside the container.
    assert!(
        cause["message"]
            .as_str()
            .is_some_and(|m| m.contains("`test -e /tmp/ready` exited with 1")),
        "{error:#}"
    );
    let shown = p.gantry(&["releases", "show", "r1", "--output", "json"]);
    shown.expect_code(0);
    assert_eq!(shown.json()["cause"]["code"], "instance.unhealthy");
    assert!(containers(name).is_empty(), "{:?}", containers(name));
}
