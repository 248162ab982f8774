//! `gantry exec` runs a command as the service runs: in its release, with
//! the environment its instances have (their port included), as the user
//! the agent runs as.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_support::{GANTRY, deploy, hello, ports, service, status};
use gantry_testkit::http_get;
use gantry_testkit::users::LocalUser;
use serde_json::{Value, json};

#[test]
fn exec_sees_the_port_and_the_environment_of_the_running_service() {
    let p = hello("execenv", "1");
    deploy(&p);
    let web = status(&p);
    let live = ports(service(&web, "web"));

    let run = p.gantry(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo \"$PORT\"; echo \"$GANTRY_SERVICE $GANTRY_RELEASE $GANTRY_INSTANCE\"",
    ]);
    run.expect_code(0);
    let mut lines = run.stdout.lines();
    let port: u16 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no PORT: {run:?}"));
    assert!(live.contains(&port), "{port} is not one of {live:?}");
    // The command reaches the service where the service listens.
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    assert_eq!(lines.next(), Some("web r1 exec"), "{run:?}");
}

/// A fake agent: a socket `agent.sock` in `dir`, bound and served by a
/// thread running as `uid`, answering every exec request with `spec`.
fn fake_agent(dir: &Path, uid: u32, spec: Value) -> PathBuf {
    let socket = dir.join("agent.sock");
    let path = socket.clone();
    let (ready, bound) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // This thread only: the kernel keeps credentials per thread.
        let uid = rustix::process::Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        // Anyone may connect, as an impostor would want.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        ready.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let body = if String::from_utf8_lossy(&request).contains("/exec ") {
                spec.to_string()
            } else {
                json!({"version": env!("CARGO_PKG_VERSION"), "pid": 1, "state_dir": "",
                       "started_at": 0, "limits": "none"})
                .to_string()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    bound.recv().unwrap();
    socket
}

/// A state directory of `owner`'s (0700) in a fresh directory anyone may enter.
struct Scene {
    base: tempfile::TempDir,
    owner: LocalUser,
    state: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        assert!(
            rustix::process::geteuid().is_root(),
            "run as root (CI does)"
        );
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let owner = LocalUser::create("gtown");
        let state = base.path().join("state");
        for dir in ["", "secrets", "releases/shop/abc"] {
            let dir = state.join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            owner.own(&dir);
        }
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        owner.own(&state.join("releases/shop"));
        owner.own(&state.join("releases"));
        let secrets = state.join("secrets/shop.env");
        std::fs::write(&secrets, "TOKEN=the-projects-own\n").unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        owner.own(&secrets);
        Scene { base, owner, state }
    }

    fn spec(&self, secrets_file: &Path) -> Value {
        json!({
            "release": "r1",
            "cwd": self.state.join("releases/shop/abc"),
            "env": {"PATH": "/usr/bin:/bin"},
            "secrets_file": secrets_file,
            "secret_names": ["TOKEN"],
        })
    }

    /// `gantry agent exec` as root: its output.
    fn exec(&self) -> std::process::Output {
        Command::new(GANTRY)
            .args(["agent", "exec", "--state-dir"])
            .arg(&self.state)
            .args([
                "--project",
                "shop",
                "--service",
                "web",
                "--output",
                "json",
                "--",
            ])
            .args(["sh", "-c", "id -u; echo \"$TOKEN\"; touch ran"])
            .output()
            .unwrap()
    }

    /// `exec`, which must be refused: its output.
    fn exec_refused(&self) -> String {
        let out = self.exec();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(4), "{stdout}");
        let error: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(error["error"]["code"], "exec.refused", "{error:#}");
        stdout
    }
}

#[test]
fn root_exec_becomes_the_agents_user_and_reads_only_the_projects_secrets() {
    let scene = Scene::new();
    // Only root may read this.
    let private = scene.base.path().join("root-only.env");
    std::fs::write(&private, "TOKEN=roots-own-secret\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The agent (its user, or a service running as it) names root's file.
    fake_agent(&scene.state, scene.owner.uid, scene.spec(&private));
    let stdout = scene.exec_refused();
    assert!(!stdout.contains("roots-own-secret"), "{stdout}");

    // An honest answer: the command runs as the owner, with the project's secret.
    std::fs::remove_file(scene.state.join("agent.sock")).unwrap();
    let own = scene.state.join("secrets/shop.env");
    fake_agent(&scene.state, scene.owner.uid, scene.spec(&own));
    let out = scene.exec();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [scene.owner.uid.to_string().as_str(), "the-projects-own"]
    );
}

#[test]
fn root_exec_refuses_an_agent_socket_served_by_another_user() {
    let scene = Scene::new();
    let attacker = LocalUser::create("gtatk");
    let theirs = scene.base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    attacker.own(&theirs);
    let own = scene.state.join("secrets/shop.env");
    let socket = fake_agent(&theirs, attacker.uid, scene.spec(&own));
    std::fs::rename(&socket, scene.state.join("agent.sock")).unwrap();

    let stdout = scene.exec_refused();
    assert!(!stdout.contains("the-projects-own"), "{stdout}");
    let cwd = scene.state.join("releases/shop/abc");
    assert!(!cwd.join("ran").exists(), "the command ran");
}

#[test]
fn root_exec_on_an_agent_run_by_another_user_runs_as_that_user_with_its_secrets() {
    assert!(
        rustix::process::geteuid().is_root(),
        "run as root (CI does)"
    );
    let owner = LocalUser::create("gtown");
    let p = agent_support::shell(
        "owned",
        "[services.api]\nrun = \"exec sleep 600\"\nsecrets = [\"API_TOKEN\"]\nhealth = { command = \"true\" }\n",
    )
    .env("API_TOKEN", "token-of-owned");
    // The daemon without systemd, as its own user, in a state directory of its own.
    owner.own(p.state_dir());
    use std::os::unix::process::CommandExt;
    let mut agent = Command::new(GANTRY)
        .args(["agent", "--state-dir"])
        .arg(p.state_dir())
        .env("GANTRY_PROXY_LISTEN", "off")
        .env("GANTRY_PROXY_HTTPS", "off")
        .uid(owner.uid)
        .gid(owner.gid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = p.state_dir().join("agent.sock");
    gantry_testkit::wait_for("the agent's socket", agent_support::DEADLINE, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    deploy(&p);
    let run = p.gantry(&[
        "exec",
        "api",
        "--",
        "sh",
        "-c",
        "id -u; echo \"$API_TOKEN\"",
    ]);
    run.expect_code(0);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [owner.uid.to_string().as_str(), "token-of-owned"]
    );
    drop(p);
    let _ = agent.kill();
    let _ = agent.wait();
}
