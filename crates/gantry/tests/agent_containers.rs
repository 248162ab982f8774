//! `image` services on the local Docker engine, through the real binary:
//! a deploy runs each instance as a labelled container on the project's
//! network behind the proxy; a redeploy under load replaces them start
//! first with no failed request; after the agent is killed, a container
//! the store does not count is removed and the counted ones are adopted.
//! Services with volumes: `container_lifecycle.rs`.
//! Needs root and Docker; the images are built here (no registry).

mod agent_support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_support::{GANTRY, deploy, service};
use gantry_testkit::{KeepAlive, TestProject, http_get_host};

const SECRET: &str = "tok-Zq81-never-in-docker-inspect";

fn toml(project: &str, web: &str, redis: &str, version: &str) -> String {
    format!(
        r#"[project]
name = "{project}"

[services.web]
image = "{web}"
port = "http"
env = {{ VERSION = "{version}" }}
secrets = ["API_TOKEN"]
health = {{ path = "/", interval = "100ms", timeout = "1s" }}
stop_timeout = "5s"

[services.cache]
image = "{redis}"
port = 6379
health = {{ tcp = true, interval = "100ms", timeout = "1s" }}
resources = {{ memory = "64M" }}
"#
    )
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The ids of the project's running containers, sorted.
fn containers(project: &str) -> Vec<String> {
    let mut ids: Vec<String> = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=dev.gantry.project={project}"),
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    ids.sort();
    ids
}

/// Removes what a failed test may leave: the project's containers and network.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.gantry.project={}", self.0);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("gantry-{}-local", self.0)])
            .output();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

#[test]
fn image_services_deploy_as_containers_replace_without_downtime_and_settle_after_a_kill() {
    let (web, redis) = (
        gantry_testkit::images::busybox_web(),
        gantry_testkit::images::redis(),
    );
    let name = "test-ctr";
    let _cleanup = Cleanup(name.to_owned());
    let port = free_port();
    let host = format!("web.{name}.localhost");
    let p = TestProject::new(GANTRY)
        .file("gantry.toml", &toml(name, &web, &redis, "1"))
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"))
        .env("API_TOKEN", SECRET);
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    assert_eq!(
        http_get_host(port, &host, "/").expect("the proxy answers"),
        (200, "version 1\n".to_owned())
    );
    let first = containers(name);
    assert_eq!(first.len(), 2, "one container per instance: {first:?}");
    let cache_instance = report_instance(&report, "cache");
    // The instances are containers on the project network: web reaches
    // the cache by its service name.
    let web_id = &report_instance(&report, "web");
    let web_container = format!("gantry-{name}-{web_id}");
    assert_eq!(
        docker(&[
            "exec",
            &web_container,
            "sh",
            "-c",
            "printf 'PING\\r\\n' | busybox nc -w 2 cache 6379"
        ]),
        "+PONG"
    );
    // The secret is a file in the container, never in `docker inspect`.
    assert_eq!(
        docker(&[
            "exec",
            &web_container,
            "sh",
            "-c",
            "cat \"$API_TOKEN_FILE\""
        ]),
        SECRET
    );
    assert!(!docker(&["inspect", &web_container]).contains(SECRET));
    assert_eq!(
        docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.Memory}}",
            &format!("gantry-{name}-{}", report_instance(&report, "cache"))
        ]),
        (64u64 << 20).to_string()
    );

    // The containers' output is in `gantry logs`.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = p.gantry(&["logs", "cache", "--output", "json"]);
        run.expect_code(0);
        if run.stdout.contains("Ready to accept connections") {
            assert!(
                run.stdout.contains("\"service\":\"cache\""),
                "{}",
                run.stdout
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Redis output in logs: {}",
            run.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A redeploy of a changed web under load: no request fails.
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (done, host) = (Arc::clone(&done), host.clone());
        std::thread::spawn(move || {
            let mut client = KeepAlive::new(port, &host);
            let mut failures = Vec::new();
            let mut count = 0;
            while !done.load(Ordering::SeqCst) {
                count += 1;
                match client.get("/") {
                    Ok((200, _)) => {}
                    other => failures.push(format!("{other:?}")),
                }
                if let Err(e) = http_get_host(port, &host, "/") {
                    failures.push(format!("new connection: {e}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (count, failures)
        })
    };
    std::fs::write(p.path().join("gantry.toml"), toml(name, &web, &redis, "2"))
        .expect("write gantry.toml");
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    done.store(true, Ordering::SeqCst);
    let (count, failures) = load.join().expect("the load thread");
    assert!(count > 10, "the load ran: {count}");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        http_get_host(port, &host, "/").expect("the proxy answers"),
        (200, "version 2\n".to_owned())
    );
    let second = containers(name);
    assert_eq!(second.len(), 2, "the old container is gone: {second:?}");
    // Web was replaced; the cache, whose image and configuration did not
    // change, was left running.
    assert_eq!(
        report["unchanged"],
        serde_json::json!(["cache"]),
        "{report:#}"
    );
    assert_eq!(report_instance(&report, "cache"), cache_instance);
    assert_eq!(
        second.iter().filter(|id| first.contains(id)).count(),
        1,
        "{first:?} {second:?}"
    );
    // Web's start (create and start) and stop-old (stop and remove) say
    // how much of their time Docker's calls took; the switch makes none.
    for (name, engine) in [("start", true), ("switch", false), ("stop-old", true)] {
        let phase = report["release"]["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name && p["service"] == "web")
            .unwrap_or_else(|| panic!("no phase {name} of web: {report:#}"));
        match (engine, phase["engine_ms"].as_u64()) {
            (true, Some(ms)) => assert!(
                ms > 0 && ms <= phase["duration_ms"].as_u64().unwrap_or(0),
                "{phase:#}"
            ),
            (false, None) => {}
            _ => panic!("phase {name}: {phase:#}"),
        }
    }

    // The agent dies; meanwhile a container appears that the store does not
    // count (a copy of web's labels under another instance).
    let pid = agent_pid(&p);
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    {
        assert!(Instant::now() < deadline, "the killed agent is gone");
        std::thread::sleep(Duration::from_millis(50));
    }
    let web_container = format!("gantry-{name}-{}", report_instance(&report, "web"));
    let labels = docker(&[
        "inspect",
        "--format",
        "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}\n{{end}}",
        &web_container,
    ]);
    let mut args = vec!["run", "-d", "--name"];
    let stray_name = format!("gantry-{name}-web-stray");
    args.push(&stray_name);
    let mut label_args = Vec::new();
    for label in labels.lines() {
        let label = if label.starts_with("dev.gantry.instance=") {
            "dev.gantry.instance=web-stray".to_owned()
        } else {
            label.to_owned()
        };
        label_args.push(label);
    }
    for label in &label_args {
        args.push("--label");
        args.push(label);
    }
    args.extend([web.as_str(), "sleep", "infinity"]);
    let stray = docker(&args);
    assert_eq!(containers(name).len(), 3);

    // Any command starts the agent again; it settles before it serves.
    let status = agent_support::status(&p);
    assert_eq!(service(&status, "web")["state"], "running", "{status:#}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers(name).contains(&stray) {
        assert!(
            Instant::now() < deadline,
            "the stray container is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        containers(name),
        second,
        "the counted containers were adopted"
    );
    assert_eq!(
        http_get_host(port, &host, "/").expect("the proxy answers"),
        (200, "version 2\n".to_owned())
    );

    // Stopping the project removes its containers.
    p.gantry(&["stop"]).expect_code(0);
    assert!(containers(name).is_empty());
}

/// The id of the first instance of `name` in a deploy report.
fn report_instance(report: &serde_json::Value, name: &str) -> String {
    service(report, name)["instances"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance of {name}: {report:#}"))
        .to_owned()
}

/// The agent's pid, from its lock file.
fn agent_pid(p: &TestProject) -> u32 {
    std::fs::read_to_string(p.state_dir().join("agent.lock"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("the agent's lock file names its pid")
}
