//! `examples/stack` on three SSH hosts, each with a Docker Engine of its
//! own: the hosts are network namespaces with sshd (gantry_testkit::hosts),
//! and each runs a dockerd inside its namespace with its own data root
//! (gantry_testkit::dockerd), which its agent reaches through the
//! `DOCKER_HOST` its SSH sessions set (sshd's `SetEnv`). The engines start
//! empty: every image the stack runs (web built here, PostgreSQL, Redis)
//! reaches them only through Gantry's registry-less shipping from this
//! machine's engine, the user's. Needs root and Docker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use gantry_testkit::dockerd::{self, Dockerd};
use gantry_testkit::hosts::{TestHost, TestHosts};
use gantry_testkit::stack::Stack;
use serde_json::Value;

const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// The port the agents' proxies listen on, on each host's loopback.
const PROXY: u16 = 8080;

/// Three hosts with gantry installed and an engine each (dropped first).
fn hosts_with_engines() -> (TestHosts, Vec<Dockerd>) {
    let mut hosts = TestHosts::start(HOSTS.len());
    let engines = dockerd::engines_for(&mut hosts, GANTRY.as_ref());
    (hosts, engines)
}

/// The example with a `prod` environment of the three hosts.
fn stack_on(hosts: &TestHosts) -> Stack {
    let mut stack = Stack::new(GANTRY.as_ref(), "stk-ssh", 0);
    stack.skip_verify_window();
    stack.on_hosts(hosts);
    stack
}

/// A deploy to the three hosts, which must succeed on each: the image
/// bytes sent to each host.
fn deploy(stack: &Stack, engines: &[Dockerd]) -> Vec<u64> {
    let run = stack
        .project
        .gantry(&["deploy", "-e", "prod", "--output", "json"]);
    if run.code != 0 {
        for engine in engines {
            eprintln!("{}", engine.docker(&["ps", "-a"]));
            for id in engine.docker(&["ps", "-aq"]).lines() {
                let logs = engine.command(&["logs", id]).output().expect("docker logs");
                eprintln!("{id}: {}", String::from_utf8_lossy(&logs.stderr));
            }
        }
    }
    run.expect_code(0);
    let report: Value = run.json();
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let hosts = report["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), HOSTS.len(), "{report:#}");
    hosts
        .iter()
        .map(|h| {
            assert_eq!(h["outcome"], "deployed", "{report:#}");
            h["upload"]["image_bytes_sent"]
                .as_u64()
                .unwrap_or_else(|| panic!("no image bytes for {}: {report:#}", h["host"]))
        })
        .collect()
}

/// `POST /visits` through the host's proxy until it is answered 200: the count.
fn visit(stack: &Stack, host: &TestHost) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = host.http_request(PROXY, &stack.web_host(), "POST", "/visits");
        if let Ok((200, body)) = &answer {
            return body
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("POST /visits on {} answered {body:?}", host.name));
        }
        assert!(
            Instant::now() < deadline,
            "POST /visits on {} keeps failing: {answer:?}",
            host.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn version(stack: &Stack, host: &TestHost) -> String {
    match host.http_get(PROXY, &stack.web_host(), "/version") {
        Ok((200, body)) => body.trim().to_owned(),
        other => panic!("GET /version on {}: {other:?}", host.name),
    }
}

/// The services whose containers run on `engine`, sorted.
fn services_on(engine: &Dockerd, stack: &Stack) -> Vec<String> {
    let out = engine.docker(&[
        "ps",
        "--filter",
        &format!("label=dev.gantry.project={}", stack.name),
        "--format",
        "{{.Label \"dev.gantry.service\"}}",
    ]);
    let mut services: Vec<String> = out.lines().map(str::to_owned).collect();
    services.sort();
    services
}

#[test]
fn the_stack_deploys_on_three_hosts_each_with_its_own_engine() {
    let (hosts, engines) = hosts_with_engines();
    let stack = stack_on(&hosts);
    for engine in &engines {
        assert_eq!(engine.docker(&["images", "-q"]), "", "engines start empty");
    }

    let first = deploy(&stack, &engines);
    for (i, engine) in engines.iter().enumerate() {
        let host = &hosts.hosts[i];
        assert_eq!(services_on(engine, &stack), ["cache", "db", "web"]);
        // Every image travelled: web's, PostgreSQL's and Redis's layers,
        // the Debian base among them (tens of megabytes).
        assert!(first[i] > 20_000_000, "{}: {} bytes", host.name, first[i]);
        assert_eq!(version(&stack, host), "1");
        // Each host counts in its own database.
        assert_eq!(visit(&stack, host), 1, "{}", host.name);
        assert_eq!(visit(&stack, host), 2, "{}", host.name);
    }
    // Nothing of the project runs on this machine's engine.
    let here = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=dev.gantry.project={}", stack.name),
        ])
        .output()
        .expect("docker ps");
    assert_eq!(String::from_utf8_lossy(&here.stdout).trim(), "");

    // One layer of web changes (its VERSION file): only that layer and the
    // image's config travel to each host.
    stack.set_version("2");
    let second = deploy(&stack, &engines);
    for (i, host) in hosts.hosts.iter().enumerate() {
        assert!(
            second[i] > 0 && second[i] < 100_000,
            "a one-layer change sent {} bytes of image to {}",
            second[i],
            host.name
        );
        assert_eq!(version(&stack, host), "2");
        // The database was not bounced: the count goes on.
        assert_eq!(visit(&stack, host), 3, "{}", host.name);
    }
}
