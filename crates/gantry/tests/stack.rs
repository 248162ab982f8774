//! `examples/stack` as a user runs it, through the real binary on the real
//! Docker engine: web (built from its Dockerfile), PostgreSQL with a named
//! volume, Redis, and a worker process. It deploys and counts visits; web
//! is replaced twenty times under load without a failed request; the visit
//! count survives web's redeploys, a change of db, a rollback and agent
//! kills in the middle of deploys. Needs root and Docker; the images come
//! from gantry-testkit (no registry answers here).
//!
//! The kills' moments come from a seeded generator whose seed is printed:
//! `GANTRY_CRASH_SEED=<seed>` replays a run.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gantry_testkit::stack::{Container, Stack};
use gantry_testkit::{KeepAlive, http_get_host};
use serde_json::Value;

const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// `gantry ARGS --output json`, which must exit 0, as JSON.
fn json(stack: &Stack, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let run = stack.project.gantry(&args);
    run.expect_code(0);
    run.json()
}

/// A deploy as a user runs it (web's image built first), which must succeed.
fn deploy(stack: &Stack) -> Value {
    let report = json(stack, &["deploy"]);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    report
}

/// One service of a status or deploy report.
fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service `{name}` in {report:#}"))
}

/// `POST /visits` until it is answered 200 (a deploy may be settling):
/// the count it answers.
fn visit(stack: &Stack) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = stack.visit();
        if let Ok((200, body)) = &answer {
            return body
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("POST /visits answered {body:?}"));
        }
        assert!(
            Instant::now() < deadline,
            "POST /visits keeps failing: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A visit, which must count exactly one more than `before`.
fn visit_after(stack: &Stack, before: u64, what: &str) -> u64 {
    let now = visit(stack);
    assert_eq!(now, before + 1, "the visit count after {what}");
    now
}

fn version(stack: &Stack) -> String {
    match http_get_host(stack.proxy_port, &stack.web_host(), "/version") {
        Ok((200, body)) => body,
        other => panic!("GET /version: {other:?}"),
    }
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

/// The project's one running container of `service`.
fn container_of(stack: &Stack, service: &str) -> Container {
    let all = stack.containers();
    let mine: Vec<&Container> = all.iter().filter(|c| c.service == service).collect();
    assert_eq!(mine.len(), 1, "one container runs {service}: {all:?}");
    mine[0].clone()
}

#[test]
fn the_stack_example_deploys_on_local_and_counts_visits() {
    let stack = Stack::new(GANTRY.as_ref(), "stk-local", free_port());
    let report = deploy(&stack);
    for name in ["web", "db", "cache", "worker"] {
        assert_eq!(service(&report, name)["state"], "running", "{report:#}");
    }
    assert_eq!(version(&stack), "1\n");
    assert_eq!(visit(&stack), 1);
    assert_eq!(visit(&stack), 2);
    assert_eq!(visit(&stack), 3);

    // web, db and cache are containers; the worker is a process.
    let services: Vec<String> = stack.containers().into_iter().map(|c| c.service).collect();
    assert_eq!(services, ["cache", "db", "web"]);
    let status = json(&stack, &["status"]);
    assert_eq!(service(&status, "worker")["state"], "running", "{status:#}");
    // db keeps its rows in the project's named volume.
    let db = container_of(&stack, "db");
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Name}}:{{.Destination}}\n{{end}}",
        &db.id,
    ]);
    let volume = format!(
        "gantry-{}-local-pgdata:/var/lib/postgresql/data",
        stack.name
    );
    assert!(mounts.lines().any(|m| m == volume), "{mounts}");

    // The worker, a process on the host, reaches the cache container.
    let cache = container_of(&stack, "cache");
    let rounds = || {
        docker(&["exec", &cache.id, "redis-cli", "GET", "worker:rounds"])
            .parse::<u64>()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while rounds() < 2 {
        let logs = stack.project.gantry(&["logs", "worker", "--tail", "5"]);
        assert!(
            Instant::now() < deadline,
            "the worker counts no rounds in the cache; its logs:\n{}",
            logs.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Requests without pause while web is replaced: half on keep-alive
/// connections, half on a new connection each, each answer checked against
/// the newest version deployed before the request was sent.
struct Load {
    done: Arc<AtomicBool>,
    /// The newest version whose deploy has returned.
    deployed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<LoadCounts>>,
}

#[derive(Default)]
struct LoadCounts {
    requests: u64,
    failures: Vec<String>,
}

impl Load {
    fn start(stack: &Stack, first_version: u64) -> Load {
        let done = Arc::new(AtomicBool::new(false));
        let deployed = Arc::new(AtomicU64::new(first_version));
        let threads = (0..4)
            .map(|n| {
                let (done, deployed) = (Arc::clone(&done), Arc::clone(&deployed));
                let (port, host) = (stack.proxy_port, stack.web_host());
                std::thread::spawn(move || {
                    let mut keep_alive = (n % 2 == 0).then(|| KeepAlive::new(port, &host));
                    let mut counts = LoadCounts::default();
                    while !done.load(Ordering::SeqCst) {
                        let oldest = deployed.load(Ordering::SeqCst);
                        let answer = match keep_alive.as_mut() {
                            Some(client) => client.get("/version"),
                            None => http_get_host(port, &host, "/version"),
                        };
                        counts.requests += 1;
                        let failure = match answer {
                            Ok((200, body)) => match body.trim().parse::<u64>() {
                                Ok(v) if v >= oldest => None,
                                _ => Some(format!(
                                    "answer {body:?} after version {oldest} was deployed"
                                )),
                            },
                            other => Some(format!("{other:?}")),
                        };
                        if let Some(failure) = failure
                            && counts.failures.len() < 20
                        {
                            counts.failures.push(failure);
                        }
                    }
                    counts
                })
            })
            .collect();
        Load {
            done,
            deployed,
            threads,
        }
    }

    fn stop(self) -> LoadCounts {
        self.done.store(true, Ordering::SeqCst);
        let mut total = LoadCounts::default();
        for thread in self.threads {
            let counts = thread.join().expect("a load thread");
            total.requests += counts.requests;
            total.failures.extend(counts.failures);
        }
        total
    }
}

#[test]
fn web_is_redeployed_twenty_times_under_load_without_a_failed_request() {
    let stack = Stack::new(GANTRY.as_ref(), "stk-load", free_port());
    stack.skip_verify_window();
    deploy(&stack);
    let before = visit(&stack);
    let (db, cache) = (container_of(&stack, "db"), container_of(&stack, "cache"));
    let load = Load::start(&stack, 1);
    for v in 2..=21u64 {
        stack.set_version(&v.to_string());
        let report = deploy(&stack);
        let unchanged = report["unchanged"].as_array().cloned().unwrap_or_default();
        assert!(
            unchanged.contains(&Value::from("db")) && unchanged.contains(&Value::from("cache")),
            "db and cache are left running: {report:#}"
        );
        load.deployed.store(v, Ordering::SeqCst);
    }
    let counts = load.stop();
    assert!(counts.requests > 100, "the load ran: {}", counts.requests);
    assert!(
        counts.failures.is_empty(),
        "{} requests, failures: {:#?}",
        counts.requests,
        counts.failures
    );
    assert_eq!(version(&stack), "21\n");
    // Neither the database nor the cache was restarted for web's deploys.
    assert_eq!(container_of(&stack, "db").id, db.id);
    assert_eq!(container_of(&stack, "cache").id, cache.id);
    visit_after(&stack, before, "twenty deploys of web");
}

/// The worker's one instance in `gantry status`: its id and pid.
fn worker_instance(stack: &Stack) -> (String, u64) {
    let status = json(stack, &["status"]);
    let worker = service(&status, "worker");
    let instances = worker["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        instances.len(),
        1,
        "the worker runs one instance: {worker:#}"
    );
    let id = instances[0]["id"].as_str().expect("an id").to_owned();
    let pid = instances[0]["pid"].as_u64().expect("a pid");
    (id, pid)
}

#[test]
fn a_change_inside_webs_build_context_leaves_the_worker_running() {
    let stack = Stack::new(GANTRY.as_ref(), "stk-ctx", free_port());
    stack.skip_verify_window();
    deploy(&stack);
    let worker = worker_instance(&stack);
    // web/ is web's build context: its files travel as web's image, not as
    // the worker's artifact.
    stack.set_version("2");
    docker_build_web(&stack);
    let plan = json(&stack, &["plan"]);
    let host = &plan["hosts"][0];
    // No file of the artifact differs: web's image is the one change.
    assert!(host["files"].is_null(), "{plan:#}");
    assert_eq!(host["reasons"], serde_json::json!(["`web` changes: image"]));
    let planned = |name: &str| {
        host["services"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["service"] == name))
            .unwrap_or_else(|| panic!("no service `{name}` in {plan:#}"))["replaced"]
            .clone()
    };
    assert_eq!(planned("web"), true, "{plan:#}");
    assert_eq!(planned("worker"), false, "{plan:#}");

    let report = json(&stack, &["deploy", "--skip-build"]);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let unchanged = report["unchanged"].as_array().cloned().unwrap_or_default();
    assert!(
        unchanged.contains(&Value::from("worker")),
        "the worker is left running: {report:#}"
    );
    assert_eq!(version(&stack), "2\n");
    assert_eq!(
        worker_instance(&stack),
        worker,
        "the same worker instance runs"
    );

    // A file of the project outside web/ is the worker's: it is replaced.
    std::fs::write(stack.project.path().join("NOTES"), "n").expect("write NOTES");
    let report = json(&stack, &["deploy", "--skip-build"]);
    let unchanged = report["unchanged"].as_array().cloned().unwrap_or_default();
    assert!(
        !unchanged.contains(&Value::from("worker")),
        "the worker runs the new files: {report:#}"
    );
    assert_ne!(worker_instance(&stack).0, worker.0);
}

/// Where `needle` first appears in a deploy's stderr, which must show it.
fn shown_at(stderr: &str, needle: &str) -> usize {
    stderr
        .find(needle)
        .unwrap_or_else(|| panic!("the deploy does not show {needle:?}:\n{stderr}"))
}

#[test]
fn a_text_deploy_plans_against_the_image_it_has_just_built() {
    let stack = Stack::new(GANTRY.as_ref(), "stk-plan", free_port());
    stack.skip_verify_window();
    deploy(&stack);
    let web = container_of(&stack, "web");
    // Only this deploy's own build of web/ makes the image that differs:
    // the engine still holds the one web runs.
    stack.set_version("2");
    let run = stack.project.gantry(&["deploy", "--output", "text"]);
    run.expect_code(0);
    let stderr = &run.stderr;
    let built = shown_at(stderr, "· building web");
    let planned = shown_at(stderr, "host local: new release");
    let rolled_out = shown_at(stderr, "· deploying ");
    assert!(
        built < planned && planned < rolled_out,
        "builds, then the plan, then the rollout:\n{stderr}"
    );
    shown_at(stderr, "`web` changes: image");
    shown_at(stderr, "service web: replaced");
    assert!(!stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(version(&stack), "2\n");
    assert_ne!(container_of(&stack, "web").id, web.id, "web was replaced");
}

#[test]
fn the_visit_count_survives_redeploys_a_db_change_a_rollback_and_agent_kills() {
    let seed = std::env::var("GANTRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("stack: seed {seed} (replay with GANTRY_CRASH_SEED={seed})");
    let mut rng = SplitMix64(seed);
    let stack = Stack::new(GANTRY.as_ref(), "stk-survive", free_port());
    stack.skip_verify_window();
    deploy(&stack);
    let mut count = visit(&stack);
    // The tag Gantry pins for the image each version runs.
    let pin = || {
        let id = docker(&["inspect", "--format", "{{.Id}}", &stack.web_image()]);
        let hex = id.trim_start_matches("sha256:");
        format!("gantry-{}", &hex[..12])
    };
    let mut pinned = vec![pin()];

    for v in 2..=11 {
        stack.set_version(&v.to_string());
        deploy(&stack);
        pinned.push(pin());
        assert_eq!(version(&stack), format!("{v}\n"));
        count = visit_after(&stack, count, &format!("web's deploy of version {v}"));
    }
    // The host keeps the images of the newest five releases (r7 to r11):
    // the tags Gantry pinned for older ones are gone.
    let tags = docker(&["images", &stack.web_image(), "--format", "{{.Tag}}"]);
    for (v, tag) in pinned.iter().enumerate() {
        let v = v + 1;
        assert_eq!(
            tags.lines().any(|t| t == tag),
            v >= 7,
            "version {v}'s tag {tag} among {tags}"
        );
    }

    // A changed setting of db: it is replaced (stop-first, on the same volume).
    let db = container_of(&stack, "db");
    stack.edit_config(|toml| {
        toml.replace(
            "[services.db]\n",
            "[services.db]\nresources = { memory = \"256M\" }\n",
        )
    });
    deploy(&stack);
    let new_db = container_of(&stack, "db");
    assert_ne!(new_db.id, db.id, "db was replaced");
    assert_eq!(
        docker(&["inspect", "--format", "{{.HostConfig.Memory}}", &new_db.id]),
        (256u64 << 20).to_string()
    );
    count = visit_after(&stack, count, "db's change");

    // A rollback to the release before: db as it was, the rows kept.
    json(&stack, &["rollback"]);
    let rolled_back = container_of(&stack, "db");
    assert_ne!(
        docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.Memory}}",
            &rolled_back.id
        ]),
        (256u64 << 20).to_string(),
        "the rollback runs db as before its change"
    );
    count = visit_after(&stack, count, "a rollback");

    // Agent kills at random moments of web's deploys.
    stack.set_version("12");
    docker_build_web(&stack);
    let started = Instant::now();
    json(&stack, &["deploy", "--skip-build"]);
    let window = started.elapsed();
    println!("stack: a deploy of web takes {}ms", window.as_millis());
    for kill in 0..10 {
        let v = 13 + kill;
        stack.set_version(&v.to_string());
        docker_build_web(&stack);
        let agent = agent_pid(&stack).expect("an agent runs");
        let delay = Duration::from_millis(rng.below(window.as_millis() as u64));
        let started = Instant::now();
        let mut deploy = background_deploy(&stack);
        // Not a wait for a condition: the moment of the kill is the point.
        std::thread::sleep(delay.saturating_sub(started.elapsed()));
        kill_agent(agent);
        let code = wait_exit(&mut deploy);
        println!(
            "stack {kill}: killed {}ms into the deploy of version {v}, which exited {code}",
            delay.as_millis()
        );
        let settled = check_one_release_and_no_stray_container(&stack);
        println!("stack {kill}: after the restart {settled}");
        count = visit_after(&stack, count, &format!("agent kill {kill}"));
    }
}

/// Builds web's image as the example's `build` does, so a deploy with
/// `--skip-build` runs the current VERSION.
fn docker_build_web(stack: &Stack) {
    let dir = stack.project.path().join("web");
    docker(&[
        "build",
        "--quiet",
        "--tag",
        &stack.web_image(),
        &dir.to_string_lossy(),
    ]);
}

/// Restarts the agent (through `status`), then checks that every service
/// runs exactly one release, with one instance, and that the running
/// containers are exactly the ones the agent counts; a line saying where
/// each service ended.
fn check_one_release_and_no_stray_container(stack: &Stack) -> String {
    let status = json(stack, &["status"]);
    let mut counted = BTreeSet::new();
    let mut ended = Vec::new();
    for name in ["cache", "db", "web", "worker"] {
        let service = service(&status, name);
        let release = service["release"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} runs no release: {service:#}"));
        let instances = service["instances"].as_array().cloned().unwrap_or_default();
        assert_eq!(instances.len(), 1, "{name} runs one instance: {service:#}");
        for instance in &instances {
            assert_eq!(
                instance["release"], release,
                "{name} runs two releases: {service:#}"
            );
            if name != "worker" {
                counted.insert(instance["id"].as_str().expect("an id").to_owned());
            }
        }
        ended.push(format!("{name} on {release}"));
    }
    // A container on its way out gets a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: BTreeSet<String> =
            stack.containers().into_iter().map(|c| c.instance).collect();
        if running == counted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running containers {running:?} are not the ones the agent counts {counted:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ended.join(", ")
}

fn background_deploy(stack: &Stack) -> Child {
    let mut command = Command::new(stack.gantry());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GANTRY_") {
            command.env_remove(key);
        }
    }
    command
        .args(["deploy", "--skip-build", "--output", "json"])
        .current_dir(stack.project.path())
        .env("GANTRY_STATE_DIR", stack.project.state_dir())
        .env(
            "GANTRY_PROXY_LISTEN",
            format!("127.0.0.1:{}", stack.proxy_port),
        )
        .env("GANTRY_PROXY_HTTPS", "off")
        .env("POSTGRES_PASSWORD", gantry_testkit::stack::PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gantry deploy")
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait for gantry") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the deploy did not end in two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The project's agent, from its lock file.
fn agent_pid(stack: &Stack) -> Option<u32> {
    std::fs::read_to_string(stack.project.state_dir().join("agent.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn kill_agent(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, s)| s.starts_with(" Z"))
    }) {
        assert!(Instant::now() < deadline, "the killed agent is still there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small seeded generator (splitmix64): the same seed, the same moments.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
