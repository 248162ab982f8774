//! What the agent tests share: projects made of the example's binaries or of
//! small `/bin/sh` services, the real binary run in the background (an agent,
//! a `logs -f`), and the checks a user would make: status fields, HTTP
//! answers, whether a pid is still alive. Nothing here sleeps to wait; every
//! wait polls a condition against a deadline.
#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gantry_testkit::{Run, TestProject, example_bins, http_get, wait_for};
use serde_json::Value;

pub const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");

/// How long anything the agent does in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A project named `name` with the example's web service (two replicas, an
/// HTTP health check, memory and pids limits) and its worker, at `version`.
pub fn hello(name: &str, version: &str) -> TestProject {
    let bins = example_bins();
    TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", &format!("{version}\n"))
        .file("gantry.toml", &hello_toml(name, "bin/hello-web"))
}

/// The example's gantry.toml, without its build, with web running `web_run`.
pub fn hello_toml(name: &str, web_run: &str) -> String {
    format!(
        r#"[project]
name = "{name}"

[services.web]
run = "{web_run}"
port = "http"
health = {{ path = "/healthz", interval = "100ms", timeout = "1s" }}
replicas = 2
stop_timeout = "5s"
resources = {{ memory = "64M", pids = 64 }}

[services.worker]
run = "bin/hello-worker"
env = {{ QUEUE = "emails" }}
depends_on = ["web"]
restart = "always"

# The verify window is agent_deploy's subject; elsewhere it would only add
# its 5 s to every deploy.
[deploy]
verify = "0s"
"#
    )
}

/// A project of `/bin/sh` services given as the `[services.*]` tables.
pub fn shell(name: &str, services: &str) -> TestProject {
    TestProject::new(GANTRY).file(
        "gantry.toml",
        &format!("[project]\nname = \"{name}\"\n\n{services}"),
    )
}

/// `gantry ARGS --output json`, which must exit 0, as JSON.
pub fn json(p: &TestProject, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let run = p.gantry(&args);
    run.expect_code(0);
    run.json()
}

/// `gantry deploy --skip-build`, which must succeed.
pub fn deploy(p: &TestProject) -> Value {
    json(p, &["deploy", "--skip-build"])
}

/// `gantry deploy --skip-build`, which must fail with `deploy.failed`:
/// its error, whose `details.cause` says why.
pub fn failed_deploy(p: &TestProject) -> Value {
    let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    run.expect_code(6);
    let error = run.json()["error"].clone();
    assert_eq!(error["code"], "deploy.failed", "{error:#}");
    error
}

/// A project of one image service, `web`, answering HTTP on a named port
/// with `VERSION` set to `version`.
pub fn image_web_toml(project: &str, image: &str, version: &str) -> String {
    format!(
        r#"[project]
name = "{project}"

[services.web]
image = "{image}"
port = "http"
env = {{ VERSION = "{version}" }}
health = {{ path = "/", interval = "100ms", timeout = "1s" }}
stop_timeout = "2s"
"#
    )
}

/// The body of the answer to `GET /` on the first instance of `web` in a
/// deploy or status report.
pub fn web_answer(report: &Value) -> String {
    let port = service(report, "web")["instances"][0]["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("web has no port: {report:#}"));
    answer(port)
}

pub fn status(p: &TestProject) -> Value {
    json(p, &["status"])
}

/// One service of a status (or deploy) report.
pub fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service `{name}` in {report:#}"))
}

/// One step of one host of a `gantry configure` report.
pub fn configure_step<'a>(host: &'a Value, step: &str) -> &'a Value {
    host["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == step))
        .unwrap_or_else(|| panic!("no step `{step}`: {host:#}"))
}

pub fn instances(service: &Value) -> &[Value] {
    service["instances"].as_array().map_or(&[], Vec::as_slice)
}

/// The pids of a service's instances, as status reports them.
pub fn pids(service: &Value) -> Vec<u32> {
    instances(service)
        .iter()
        .map(|i| {
            let pid = i["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {i}"));
            u32::try_from(pid).expect("a pid fits in u32")
        })
        .collect()
}

/// The ports of a service's instances.
pub fn ports(service: &Value) -> Vec<u16> {
    instances(service)
        .iter()
        .map(|i| {
            let port = i["port"].as_u64().unwrap_or_else(|| panic!("no port: {i}"));
            u16::try_from(port).expect("a port fits in u16")
        })
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X" | "x") | None)
    })
}

/// The body of a 200 answer to `GET /` on `port`.
pub fn answer(port: u16) -> String {
    match http_get(port, "/") {
        Ok((200, body)) => body,
        other => panic!("GET / on port {port}: {other:?}"),
    }
}

/// Asserts every instance of `web` answers with `version`, and that the answer
/// comes from that very instance: a port shared with another agent's service
/// would show up here as someone else's answer.
pub fn assert_web_answers(web: &Value, version: &str) {
    for instance in instances(web) {
        let port = u16::try_from(instance["port"].as_u64().expect("port")).expect("port");
        let id = instance["id"].as_str().expect("id");
        assert_eq!(
            answer(port),
            format!("hello from version {version} ({id})\n"),
            "instance {id} on port {port}"
        );
    }
}

/// Polls `gantry status` until `condition` holds for it; returns that status.
pub fn wait_for_status(
    p: &TestProject,
    what: &str,
    mut condition: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let last = status(p);
        if condition(&last) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status:\n{last:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The binary run in the project with the project's state directory, as
/// `TestProject::gantry` does, but left running.
pub fn command(p: &TestProject, args: &[&str]) -> Command {
    let mut command = p.command(args);
    command.stdin(Stdio::null());
    command
}

/// `command` for a project directory and state directory given by path, for
/// a thread that cannot borrow the `TestProject`.
pub fn command_in(dir: &Path, state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(GANTRY);
    command
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("GANTRY_STATE_DIR", state)
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GANTRY_") && key != "GANTRY_STATE_DIR" {
            command.env_remove(key);
        }
    }
    // No proxy listener unless a test asks for one (`.env` after this):
    // agents running at once would race for the default ports.
    command
        .env("GANTRY_PROXY_LISTEN", "off")
        .env("GANTRY_PROXY_HTTPS", "off");
    command
}

/// An agent started by the test in the foreground of its own child process.
/// Dropping it stops the project's services and the agent, then reaps it.
pub struct AgentProcess {
    child: Child,
    dir: PathBuf,
    state: PathBuf,
}

impl AgentProcess {
    /// Starts `gantry agent` and waits until it answers.
    pub fn start(p: &TestProject) -> AgentProcess {
        let child = command(p, &["agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start `gantry agent`");
        let agent = AgentProcess {
            child,
            dir: p.path().to_owned(),
            state: p.state_dir().to_owned(),
        };
        let socket = p.state_dir().join("agent.sock");
        wait_for("the agent's socket", DEADLINE, || socket.exists());
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the agent to exit on its own; its exit status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.state.join("agent.sock").exists() {
            for args in [&["stop"][..], &["agent", "stop"]] {
                let _ = Command::new(GANTRY)
                    .args(args)
                    .current_dir(&self.dir)
                    .env("GANTRY_STATE_DIR", &self.state)
                    .output();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command left running whose stdout is read line by line, killed on drop.
pub struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    pub fn spawn(mut command: Command) -> Lines {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gantry");
        let stdout = child.stdout.take().expect("piped stdout");
        Lines::reading(child, stdout)
    }

    /// The command's stderr, line by line: its progress (`{"progress": ...}`
    /// with `--output json`).
    pub fn spawn_stderr(mut command: Command) -> Lines {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gantry");
        let stderr = child.stderr.take().expect("piped stderr");
        Lines::reading(child, stderr)
    }

    fn reading(child: Child, stream: impl Read + Send + 'static) -> Lines {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { child, lines }
    }

    /// Kills the command with SIGKILL, as a crash or `kill -9` would, and
    /// reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the command");
        let _ = self.child.wait();
    }

    /// Reads lines until one satisfies `wanted`; returns it.
    pub fn until(&self, what: &str, mut wanted: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() => found.push(path),
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// Both streams of a run, for searching.
pub fn output(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// The lines of `run`'s stderr that start with `prefix`: what `-v` traced.
pub fn traced<'a>(run: &'a Run, prefix: &str) -> Vec<&'a str> {
    run.stderr
        .lines()
        .filter(|line| line.starts_with(prefix))
        .collect()
}

/// Whether a traced line ends with how long something took, like
/// `in 12.3ms` or `after 1.2s`.
pub fn ends_with_a_duration(line: &str) -> bool {
    let Some((_, took)) = line
        .rsplit_once(" in ")
        .or_else(|| line.rsplit_once(" after "))
    else {
        return false;
    };
    let unit_at = took
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(took.len());
    let (number, unit) = took.split_at(unit_at);
    number.parse::<f64>().is_ok() && ["ns", "µs", "ms", "s"].contains(&unit)
}

/// Whether the test must not skip what this host cannot do.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The status and JSON body of the agent's answer on `stream`.
pub fn api_answer(mut stream: UnixStream) -> (u16, Value) {
    let mut raw = Vec::new();
    // An agent that answers before reading the whole body closes on unread
    // bytes: the reader gets its answer, then a reset instead of the end.
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {}
        Err(e) => panic!("read the agent's answer: {e}"),
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {text}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, body)
}

/// Sends a request of `length` announced bytes whose body is `body`, over
/// the agent's socket (as JSON, which a blob upload ignores). With `cut`, the connection's sending side closes
/// after `body`, as when a link drops mid-upload.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    length: usize,
    body: &[u8],
    cut: bool,
) -> (u16, Value) {
    let mut stream = UnixStream::connect(socket).expect("connect to the agent");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    // An agent may answer before reading the body (a wrong offset, a blob
    // it has) and close: its answer is what counts, not this write.
    let _ = stream.write_all(body);
    if cut {
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("close the sending side");
    }
    api_answer(stream)
}

/// `POST path` with `body` as JSON on the project's agent socket.
pub fn post_json(p: &TestProject, path: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    request(
        &p.state_dir().join("agent.sock"),
        "POST",
        path,
        bytes.len(),
        &bytes,
        false,
    )
}

/// What the service prints instead of its secret: the value in rot13, which
/// proves it got the right one without printing it.
pub fn rot13(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
            _ => c,
        })
        .collect()
}

/// A project whose `prod` environment is the test hosts `names`.
pub fn remote_project(
    hosts: &gantry_testkit::hosts::TestHosts,
    names: &[&str],
    version: &str,
) -> TestProject {
    let bins = gantry_testkit::example_bins();
    let mut toml = hello_toml("shop", "bin/hello-web");
    toml.push_str(&format!(
        "\n[environments.prod]\nhosts = [{}]\n",
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for name in names {
        toml.push_str(&format!("\n[hosts.{name}]\nssh = \"{name}\"\n"));
    }
    gantry_testkit::TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", &format!("{version}\n"))
        .file("gantry.toml", &toml)
        .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string())
}

/// `docker ARGS`: its output, trimmed, or its error output.
pub fn docker(args: &[&str]) -> Result<String, String> {
    gantry_testkit::docker_at(None, args)
}

/// The project's containers (running or not), by name.
pub fn containers(project: &str) -> std::collections::BTreeSet<String> {
    docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=dev.gantry.project={project}"),
    ])
    .expect("docker ps")
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Removes what a failed test may leave: containers, network, volume.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in containers(&self.0) {
            let _ = docker(&["rm", "-f", &name]);
        }
        let _ = docker(&["network", "rm", &format!("gantry-{}-local", self.0)]);
        let _ = docker(&[
            "volume",
            "rm",
            "-f",
            &format!("gantry-{}-local-data", self.0),
        ]);
    }
}

/// A project whose proxy listens on a port of its own (tests run side by side).
pub fn project_with_proxy() -> TestProject {
    let listen = format!("127.0.0.1:{}", gantry_testkit::free_port());
    TestProject::new(GANTRY).env("GANTRY_PROXY_LISTEN", &listen)
}

/// A deploy left running in the background, its output dropped.
pub fn start_deploy(p: &TestProject) -> std::process::Child {
    command(p, &["deploy", "--skip-build", "--output", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the deploy")
}
