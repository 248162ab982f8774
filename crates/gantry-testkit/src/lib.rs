//! Test helpers: a throwaway project directory and the real `gantry` binary
//! run inside it. Integration tests pass the binary's path in (from
//! `env!("CARGO_BIN_EXE_gantry")`), so this crate never builds it itself.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failure here is a failed test

pub mod dockerd;
pub mod hosts;
pub mod images;
pub mod podman;
pub mod postgres;
pub mod registry;
mod rootfs;
pub mod stack;
pub mod systemd_host;
pub mod users;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary project directory, removed when dropped. Its agent state
/// lives in a directory of its own (`GANTRY_STATE_DIR`), and dropping the
/// project stops its services and its agent, so no test leaves processes behind.
pub struct TestProject {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl Drop for TestProject {
    fn drop(&mut self) {
        if self.state.path().join("agent.sock").exists() {
            let _ = self.gantry(&["stop"]);
            let _ = self.gantry(&["agent", "stop"]);
        }
        // The proxy outlives its agent by design; a test's must not.
        if let Ok(pid) = std::fs::read_to_string(self.state.path().join("proxy.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

impl TestProject {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        TestProject {
            dir: tempfile::tempdir().expect("create a temporary directory"),
            state: tempfile::tempdir().expect("create a temporary directory"),
            bin: bin.into(),
            env: Vec::new(),
        }
    }

    /// Writes a file relative to the project, creating directories.
    pub fn file(self, relative: &str, contents: &str) -> Self {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::fs::write(&path, contents).expect("write the file");
        self
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.set_env(key, value);
        self
    }

    /// Sets an environment variable for every later run.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's state directory for this project's runs.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Copies a file into the project, keeping its permissions.
    pub fn copy(self, from: &Path, relative: &str) -> Self {
        let to = self.dir.path().join(relative);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        self
    }

    /// Runs `gantry ARGS` in the project directory, with colors off and no
    /// GANTRY_* variables from the caller's environment.
    pub fn gantry(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("run gantry");
        Run::of(args, &output)
    }

    /// As [`TestProject::gantry`], with `stdin` on its standard input.
    pub fn gantry_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        use std::io::Write as _;
        let mut child = self
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run gantry");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).expect("write gantry's stdin");
        }
        let output = child.wait_with_output().expect("wait for gantry");
        Run::of(args, &output)
    }

    /// The binary run in the project with its state directory and the
    /// environment the test gave it, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GANTRY_") {
                command.env_remove(key);
            }
        }
        command.env("GANTRY_STATE_DIR", self.state.path());
        // No proxy unless a test asks for one: parallel agents would race for its port.
        command.env("GANTRY_PROXY_LISTEN", "off");
        command.env("GANTRY_PROXY_HTTPS", "off");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(args: &[&str], output: &std::process::Output) -> Run {
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// stdout as the one JSON document the output contract promises.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`gantry {}` did not print one JSON document on stdout ({e}):\n{}\nstderr:\n{}",
                self.args.join(" "),
                self.stdout,
                self.stderr
            )
        })
    }

    /// Asserts the exit code, showing the output when it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "`gantry {}` exited {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The workspace root, for tests that read `examples/`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/gantry-testkit is two levels down")
        .to_owned()
}

/// The example's binaries (`hello-web`, `hello-worker`), built once per test
/// run into a target directory of their own beside the workspace's.
pub fn example_bins() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            build(
                "example-hello",
                &["--release", "-p", "gantry-example-hello"],
            )
        })
        .join("release")
}

/// The testkit's own service binaries (`gantry-ws-echo`), built once per
/// test run into a target directory of their own; returns that directory.
pub fn testkit_bins() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build("testkit-bins", &["-p", "gantry-testkit", "--bins"]))
        .join("debug")
}

/// `cargo build --quiet ARGS` into `<target dir>/<name>`, beside the
/// workspace's own (so a test's build never waits on the outer cargo's lock);
/// returns that target directory.
fn build(name: &str, args: &[&str]) -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join(name);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root)
        .status()
        .expect("run cargo");
    assert!(status.success(), "`cargo build {}` failed", args.join(" "));
    target
}

/// `GET path` on 127.0.0.1:port: the status code and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_host(port, "localhost", path)
}

/// `GET path` on 127.0.0.1:port with this Host header, on a new connection.
pub fn http_get_host(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_at(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        host,
        path,
    )
}

/// `GET path` on `addr` with this Host header, on a new connection.
pub fn http_get_at(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    http_request_at(addr, host, "GET", path)
}

/// `METHOD path` with an empty body on 127.0.0.1:port with this Host
/// header, on a new connection: the status code and the body.
pub fn http_request_host(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    http_request_at(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        host,
        method,
        path,
    )
}

pub fn http_request_at(
    addr: std::net::SocketAddr,
    host: &str,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}Connection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// `docker ARGS` against the engine `docker_host` names (`DOCKER_HOST`),
/// or the machine's: its output, trimmed, or its error output.
pub fn docker_at(docker_host: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("docker");
    command.args(args);
    if let Some(host) = docker_host {
        command.env("DOCKER_HOST", host);
    }
    let output = command.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Whether `program --version` runs: the program is installed.
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port of 127.0.0.1 free now, for a listener started next.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `condition` until it holds or `timeout` passes; never a bare sleep.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// An HTTP/1.1 client that keeps its connection open between requests, as a
/// browser does, and opens a new one only when the server closed the last
/// (`Connection: close`) or a request failed. No retries: every error is
/// returned.
pub struct KeepAlive {
    port: u16,
    host: String,
    stream: Option<std::io::BufReader<std::net::TcpStream>>,
    /// How many connections it opened so far.
    pub connections: usize,
}

impl KeepAlive {
    pub fn new(port: u16, host: &str) -> KeepAlive {
        KeepAlive {
            port,
            host: host.to_owned(),
            stream: None,
            connections: 0,
        }
    }

    /// `GET path`: the status code and the body.
    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        let answer = self.exchange(path);
        if answer.is_err() {
            self.stream = None;
        }
        answer
    }

    fn exchange(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{BufRead, Read, Write};
        if self.stream.is_none() {
            let stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            stream.set_nodelay(true)?;
            self.connections += 1;
            self.stream = Some(std::io::BufReader::new(stream));
        }
        let Some(reader) = self.stream.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        // One write: a request in pieces would wait on Nagle and delayed ACKs.
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        reader.get_mut().write_all(request.as_bytes())?;
        let broken =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before an answer",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| broken("no status line"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(broken("the connection closed in the headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| broken("a bad chunk size"))?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        } else {
            reader.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.stream = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
