//! Crash safety of a deploy: the agent is SIGKILLed at a random moment of a
//! deploy, twenty times, and restarted each time. After each restart every
//! service must run exactly one release, the old one or the new one, with as
//! many instances as it has replicas, each alive and answering; the store
//! must say the same; and no process of this project may run that the agent
//! does not count as an instance.
//!
//! The moments come from a seeded generator whose seed is printed: run with
//! `GANTRY_CRASH_SEED=<seed>` to replay a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_agent::Store;
use gantry_testkit::{TestProject, example_bins, http_get, wait_for};

const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");
const PROJECT: &str = "crashy";
const CRASHES: u32 = 20;
/// Each service and its replicas, as the config below says.
const SERVICES: [(&str, usize); 2] = [("web", 2), ("worker", 1)];

const CONFIG: &str = r#"
[project]
name = "crashy"

[services.web]
run = "bin/hello-web"
port = "http"
health = { path = "/healthz", interval = "100ms", timeout = "1s" }
replicas = 2
stop_timeout = "5s"

[services.worker]
run = "bin/hello-worker"
env = { QUEUE = "emails" }
depends_on = ["web"]
restart = "always"

# The kills are meant to land in the agent's work; the CLI's verify window
# would only stretch the deploy it has to land in.
[deploy]
verify = "0s"
"#;

#[test]
fn a_deploy_killed_at_any_moment_leaves_every_service_on_one_release_and_no_orphan() {
    let seed = std::env::var("GANTRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("agent_crash: seed {seed} (replay with GANTRY_CRASH_SEED={seed})");
    let mut rng = SplitMix64(seed);

    let bins = example_bins();
    let project = TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("gantry.toml", CONFIG)
        .file("VERSION", "1\n");
    let outputs = tempfile::tempdir().expect("a directory for the deploys' output");
    let mut world = World {
        project: &project,
        versions: BTreeMap::new(),
        current: BTreeMap::new(),
    };

    // The first deploy starts the agent; the second, timed, is what a kill
    // has to land inside.
    world.deploy_normally("1");
    let started = Instant::now();
    world.deploy_normally("2");
    let window = started.elapsed();
    println!("agent_crash: a deploy takes {}ms", window.as_millis());

    for crash in 0..CRASHES {
        let version = (crash + 3).to_string();
        std::fs::write(project.path().join("VERSION"), format!("{version}\n"))
            .expect("write VERSION");
        let agent = agent_pid(project.state_dir()).expect("an agent is running");
        let delay = Duration::from_millis(rng.below(window.as_millis() as u64));
        let out = outputs.path().join(format!("deploy-{crash}"));
        let started = Instant::now();
        let mut deploy = spawn_gantry(&project, &["deploy", "--skip-build"], &out);
        // Not a wait for a condition: the moment of the crash is the point.
        std::thread::sleep(delay.saturating_sub(started.elapsed()));
        sigkill(agent);
        wait_for(
            "the killed agent to be gone",
            Duration::from_secs(10),
            || !is_alive(agent),
        );
        let code = wait_exit(&mut deploy, Duration::from_secs(60));
        println!(
            "agent_crash {crash:>2}: killed {:>4}ms into the deploy of VERSION {version}, which exited {code}",
            delay.as_millis()
        );
        let settled = world.settle(&version);
        if code == 0 {
            let newest = world.versions.iter().find(|(_, v)| **v == version);
            let newest = newest
                .map(|(id, _)| id)
                .expect("a deploy that succeeded made a release");
            assert!(
                world.current.values().all(|r| r == newest),
                "the deploy succeeded, yet {settled}"
            );
        }
        println!("agent_crash {crash:>2}: after the restart {settled}");
    }

    // An agent that lived through all that still deploys.
    world.deploy_normally("final");
}

#[test]
fn an_agent_killed_while_the_cli_waits_on_the_verify_window_is_started_again_and_judges_it() {
    let bins = example_bins();
    let config = CONFIG.replace("verify = \"0s\"", "verify = \"10s\"");
    let project = TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("gantry.toml", &config)
        .file("VERSION", "1\n");
    project.gantry(&["deploy", "--skip-build"]).expect_code(0);
    std::fs::write(project.path().join("VERSION"), "2\n").expect("write VERSION");
    let agent = agent_pid(project.state_dir()).expect("an agent is running");
    let outputs = tempfile::tempdir().expect("a directory for the deploy's output");
    let out = outputs.path().join("deploy");
    let mut deploy = spawn_gantry(
        &project,
        &["-v", "deploy", "--skip-build", "--output", "json"],
        &out,
    );
    let stderr = || std::fs::read_to_string(out.with_extension("stderr")).unwrap_or_default();
    wait_for(
        "the deploy to watch its window",
        Duration::from_secs(60),
        || stderr().contains("watching"),
    );
    sigkill(agent);

    let code = wait_exit(&mut deploy, Duration::from_secs(60));
    let report = std::fs::read_to_string(out.with_extension("stdout")).expect("the report");
    assert_eq!(code, 0, "{report}\n{}", stderr());
    assert!(
        stderr().contains("stopped answering; starting it again"),
        "{}",
        stderr()
    );
    let report: serde_json::Value = serde_json::from_str(&report).expect("a JSON report");
    assert_eq!(report["hosts"][0]["outcome"], "deployed", "{report:#}");
    let revived = agent_pid(project.state_dir()).expect("an agent runs again");
    assert_ne!(revived, agent);
}

/// What the test knows: the version each release was deployed with, and the
/// release each service ran after the last settle.
struct World<'a> {
    project: &'a TestProject,
    versions: BTreeMap<String, String>,
    current: BTreeMap<String, String>,
}

impl World<'_> {
    fn deploy_normally(&mut self, version: &str) {
        std::fs::write(self.project.path().join("VERSION"), format!("{version}\n"))
            .expect("write VERSION");
        let deploy = ["deploy", "--skip-build", "--output", "json"];
        let mut run = self.project.gantry(&deploy);
        // Agents of other tests hand out ports from the same range; a port
        // taken between its check and the service's bind is their race, not
        // a crash's, so it gets one more try.
        if run.code != 0 && run.stdout.contains("Address already in use") {
            println!("agent_crash: a port was taken by someone else; deploying again");
            if let Some(failed) = run.json()["error"]["details"]["release"]["id"].as_str() {
                self.versions.insert(failed.to_owned(), version.to_owned());
            }
            run = self.project.gantry(&deploy);
        }
        run.expect_code(0);
        let release = run.json()["release"]["id"]
            .as_str()
            .expect("the report names its release")
            .to_owned();
        self.settle(version);
        for (service, _) in SERVICES {
            assert_eq!(
                self.current.get(service),
                Some(&release),
                "after a deploy that succeeded, {service} runs its release"
            );
        }
    }

    /// Restarts the agent (through `status`) and checks everything; returns
    /// a line saying where each service ended.
    fn settle(&mut self, version: &str) -> String {
        let status = self.project.gantry(&["status", "--output", "json"]);
        status.expect_code(0);
        let status = status.json();
        let releases = self.project.gantry(&["releases", "--output", "json"]);
        releases.expect_code(0);
        let releases = releases.json()["releases"]
            .as_array()
            .cloned()
            .expect("a list of releases");

        for release in &releases {
            assert_ne!(
                release["outcome"], "deploying",
                "a release was left deploying after the restart: {release}"
            );
        }
        let new: Vec<String> = releases
            .iter()
            .filter_map(|r| r["id"].as_str())
            .filter(|id| !self.versions.contains_key(*id))
            .map(str::to_owned)
            .collect();
        assert!(new.len() <= 1, "one deploy made releases {new:?}");
        for id in &new {
            self.versions.insert(id.clone(), version.to_owned());
        }

        let mut instances = BTreeSet::new();
        let mut now = BTreeMap::new();
        for (name, replicas) in SERVICES {
            let service = status["services"]
                .as_array()
                .and_then(|all| all.iter().find(|s| s["name"] == name))
                .unwrap_or_else(|| panic!("status has no service {name}: {status}"));
            let release = service["release"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} runs no release: {service}"))
                .to_owned();
            if let Some(before) = self.current.get(name) {
                assert!(
                    &release == before || new.contains(&release),
                    "{name} went from {before} to {release}, neither its old release nor the new one ({new:?})"
                );
            }
            let listed = service["instances"].as_array().cloned().unwrap_or_default();
            assert_eq!(
                listed.len(),
                replicas,
                "{name} should run {replicas} instance(s) of {release}: {service}"
            );
            for instance in &listed {
                let id = instance["id"].as_str().expect("an instance id").to_owned();
                assert_eq!(
                    instance["release"], release,
                    "{name} runs instances of two releases: {service}"
                );
                let pid = instance["pid"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("instance {id} has no live process: {instance}"))
                    as u32;
                self.check_instance(name, &id, &release, pid, instance["port"].as_u64());
                instances.insert(id);
            }
            now.insert(name.to_owned(), release);
        }
        self.current = now;
        // A release is what it says: every service runs one that succeeded,
        // and one that some service does not run did not succeed.
        for id in &new {
            let outcome = &releases
                .iter()
                .find(|r| r["id"] == id.as_str())
                .expect("listed")["outcome"];
            let everywhere = self.current.values().all(|r| r == id);
            assert_eq!(
                outcome == "succeeded",
                everywhere,
                "release {id} is {outcome}, but {}every service runs it: {:?}",
                if everywhere { "" } else { "not " },
                self.current
            );
        }
        self.check_store(&instances);
        check_no_orphans(self.project.state_dir(), &instances);
        self.current
            .iter()
            .map(|(service, release)| format!("{service} on {release}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The process is alive, runs the release's files, and (with a port) answers with its version.
    fn check_instance(&self, service: &str, id: &str, release: &str, pid: u32, port: Option<u64>) {
        let version = self.versions.get(release).unwrap_or_else(|| {
            panic!("{service} runs {release}, which no deploy of this test made")
        });
        assert!(is_alive(pid), "instance {id} (pid {pid}) is not running");
        let env = environ(pid);
        assert_eq!(env.get("GANTRY_INSTANCE").map(String::as_str), Some(id));
        assert_eq!(env.get("GANTRY_RELEASE").map(String::as_str), Some(release));
        let files = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("the instance's cwd");
        let on_disk = std::fs::read_to_string(files.join("VERSION")).unwrap_or_default();
        assert_eq!(
            on_disk.trim(),
            version,
            "instance {id} runs the files of another release"
        );
        if let Some(port) = port {
            let port = u16::try_from(port).expect("a port");
            let (code, body) = http_get(port, "/version")
                .unwrap_or_else(|e| panic!("instance {id} does not answer on port {port}: {e}"));
            assert_eq!(code, 200, "instance {id} answered {code}: {body}");
            assert_eq!(
                body.trim(),
                version,
                "instance {id} answers as another version"
            );
        }
    }

    /// The store says what `status` said: the current release of each
    /// service, its active instances exactly the listed ones, no deploy in
    /// flight, and no port leased to an instance that is not active.
    fn check_store(&self, listed: &BTreeSet<String>) {
        let store =
            Store::open(&self.project.state_dir().join("agent.db")).expect("open the agent store");
        assert!(
            store.deploying().expect("query").is_empty(),
            "the store has a deploy in flight"
        );
        let current = store.current_all(PROJECT).expect("query");
        assert_eq!(current, self.current, "the store's current releases");
        let active: BTreeMap<String, (String, String)> = store
            .active_instances()
            .expect("query")
            .into_iter()
            .filter(|i| i.project == PROJECT)
            .map(|i| (i.id, (i.service, i.release)))
            .collect();
        assert_eq!(
            active.keys().collect::<Vec<_>>(),
            listed.iter().collect::<Vec<_>>(),
            "the store's active instances are not the ones status lists: {active:?}"
        );
        for (id, (service, release)) in &active {
            assert_eq!(
                Some(release),
                self.current.get(service),
                "active instance {id} runs {release}, not {service}'s current release"
            );
        }
        for lease in store.port_allocations().expect("query") {
            assert!(
                active.contains_key(&lease.instance_id),
                "port {} is leased to {}, which is not an active instance",
                lease.port,
                lease.instance_id
            );
        }
    }
}

/// Every process of this state directory (a service run from its release
/// files, or a relay reading its spec from its run directory) belongs to a
/// listed instance. A process that is on its way out gets a few seconds.
fn check_no_orphans(state_dir: &Path, listed: &BTreeSet<String>) {
    let state_dir = state_dir.canonicalize().expect("the state directory");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let strays: Vec<(u32, String)> = processes_of(&state_dir)
            .into_iter()
            .filter(|(_, id)| !listed.contains(id))
            .collect();
        if strays.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes run for instances the agent does not count (pid, instance): {strays:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The live processes started for instances of `state_dir`, with the
/// instance each is for.
fn processes_of(state_dir: &Path) -> Vec<(u32, String)> {
    let releases = state_dir.join("releases");
    let spec_prefix = format!("{}/", state_dir.join("run").display());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if !is_alive(pid) {
            continue;
        }
        let in_release = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .is_ok_and(|cwd| cwd.starts_with(&releases));
        if in_release && let Some(id) = environ(pid).remove("GANTRY_INSTANCE") {
            found.push((pid, id));
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "relay")
            && let Some(spec) = args.iter().find_map(|a| a.strip_prefix(&spec_prefix))
            && let Some(id) = spec.strip_suffix(".spec.json")
        {
            found.push((pid, id.to_owned()));
        }
    }
    found
}

/// Runs `gantry ARGS` in the project in the background, as `TestProject::gantry`
/// would, with its output in `out.stdout` and `out.stderr`.
fn spawn_gantry(project: &TestProject, args: &[&str], out: &Path) -> Child {
    let file =
        |ext: &str| std::fs::File::create(out.with_extension(ext)).expect("create an output file");
    let mut command = Command::new(GANTRY);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GANTRY_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .current_dir(project.path())
        .env("NO_COLOR", "1")
        .env("GANTRY_STATE_DIR", project.state_dir())
        // An agent the deploy starts serves no proxy: agents running at
        // once would race for the default ports.
        .env("GANTRY_PROXY_LISTEN", "off")
        .env("GANTRY_PROXY_HTTPS", "off")
        .stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"));
    command.spawn().expect("start gantry")
}

fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for gantry") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the deploy did not end within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent of `state_dir`, from its lock file, if it is alive.
fn agent_pid(state_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state_dir.join("agent.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_agent = args.contains(&b"agent".as_slice()) && !args.contains(&b"relay".as_slice());
    (is_agent && is_alive(pid)).then_some(pid)
}

fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    assert!(
        status.success() || !is_alive(pid),
        "kill -KILL {pid} failed"
    );
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().next());
        !matches!(state, None | Some("Z" | "X" | "x"))
    })
}

fn environ(pid: u32) -> BTreeMap<String, String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|b| *b == 0)
        .filter_map(|pair| {
            let pair = String::from_utf8_lossy(pair);
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// A small seeded generator (splitmix64): the same seed, the same delays.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
