//! `gantry exec` runs a command as the service runs: in its release, with
//! the environment its instances have (their port included), as the user
//! its instances run as and confined as they are.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use agent_support::{GANTRY, deploy, hello, hello_toml, pids, ports, service, status};
use gantry_testkit::http_get;
use gantry_testkit::users::LocalUser;
use serde_json::{Value, json};

#[test]
fn exec_sees_the_port_and_the_environment_of_the_running_service() {
    let p = hello("execenv", "1");
    deploy(&p);
    let web = status(&p);
    let live = ports(service(&web, "web"));

    let run = exec_sh(
        &p,
        "web",
        "echo \"$PORT\"; echo \"$GANTRY_SERVICE $GANTRY_RELEASE $GANTRY_INSTANCE\"",
    );
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

/// `gantry exec SERVICE -- sh -c SCRIPT` in `p`.
fn exec_sh(p: &gantry_testkit::TestProject, service: &str, script: &str) -> gantry_testkit::Run {
    p.gantry(&["exec", service, "--", "sh", "-c", script])
}

/// The value of a `/proc/<pid>/status` field (`Uid` gives real, effective,
/// saved and filesystem ids).
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_owned()
}

#[test]
fn root_exec_runs_as_the_services_user_confined_as_its_instances_are() {
    assert!(
        rustix::process::geteuid().is_root(),
        "run as root (CI does)"
    );
    let toml = hello_toml("execuser", "bin/hello-web").replace(
        "[services.web]\n",
        "[services.web]\nsecrets = [\"API_TOKEN\"]\nenv = { MODE = \"live\" }\n",
    );
    let p = hello("execuser", "1")
        .file("gantry.toml", &toml)
        .env("API_TOKEN", "token-of-web");
    deploy(&p);
    let pid = pids(service(&status(&p), "web"))[0];
    let instance = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let service_uid = status_field(&instance, "Uid");
    assert_ne!(service_uid, "0\t0\t0\t0", "the service runs as root");

    let state = p.state_dir().display().to_string();
    let run = exec_sh(
        &p,
        "web",
        &format!(
            r#"grep -E '^(Uid|NoNewPrivs|CapBnd|CapEff):' /proc/self/status
echo "$PORT $MODE $API_TOKEN"
for f in {state}/agent.db {state}/secrets/execuser.env; do
  if head -c1 "$f" >/dev/null 2>&1; then echo "read $f"; else echo refused; fi
done"#
        ),
    );
    run.expect_code(0);
    let out = &run.stdout;
    assert_eq!(status_field(out, "Uid"), service_uid, "{out}");
    assert_eq!(status_field(out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(status_field(out, "CapBnd"), "0000000000000000", "{out}");
    assert_eq!(status_field(out, "CapEff"), "0000000000000000", "{out}");
    let rest: Vec<&str> = out.lines().skip(4).collect();
    let live = ports(service(&status(&p), "web"));
    let (port, env) = rest[0].split_once(' ').unwrap_or_else(|| panic!("{out}"));
    assert!(live.contains(&port.parse().unwrap()), "{out}");
    assert_eq!(env, "live token-of-web", "the service's env and secret");
    assert_eq!(rest[1..], ["refused", "refused"], "{out}");
}

#[test]
fn root_exec_of_a_run_as_root_service_runs_as_root_without_new_privileges() {
    assert!(
        rustix::process::geteuid().is_root(),
        "run as root (CI does)"
    );
    let p = agent_support::shell(
        "execroot",
        "[services.admin]\nrun = \"exec sleep 600\"\nrun_as_root = true\nhealth = { command = \"true\" }\n",
    );
    deploy(&p);
    let run = exec_sh(&p, "admin", "id -u; grep '^NoNewPrivs:' /proc/self/status");
    run.expect_code(0);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["0", "NoNewPrivs:\t1"]
    );
}

/// A fake agent: a socket `agent.sock` in `dir`, bound and served by a
/// thread running as `uid`, answering every exec request with `spec`. It
/// records the uid of each client (SO_PEERCRED) as it accepts it.
struct FakeAgent {
    socket: PathBuf,
    clients: Arc<Mutex<Vec<u32>>>,
}

fn fake_agent(dir: &Path, uid: u32, spec: Value) -> FakeAgent {
    let socket = dir.join("agent.sock");
    let path = socket.clone();
    let clients = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&clients);
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
            let client = rustix::net::sockopt::socket_peercred(&stream).unwrap();
            seen.lock().unwrap().push(client.uid.as_raw());
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
    FakeAgent { socket, clients }
}

impl FakeAgent {
    /// The uids that connected, in order.
    fn clients(&self) -> Vec<u32> {
        self.clients.lock().unwrap().clone()
    }
}

/// A state directory of `owner`'s (0700) in a fresh directory anyone may
/// enter. Its group is root's: a directory's group is not its owner's.
/// The owner is also in a second group of its own (`extra`).
struct Scene {
    base: tempfile::TempDir,
    owner: LocalUser,
    _extra: LocalUser,
    state: PathBuf,
}

/// A command that says who runs it and with which secret, and leaves a mark.
const AS_OWNER: &str = "id -u; id -G; echo \"$TOKEN\"; touch ran";

impl Scene {
    fn new() -> Scene {
        assert!(
            rustix::process::geteuid().is_root(),
            "run as root (CI does)"
        );
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let owner = LocalUser::create("gtown");
        let extra = LocalUser::create("gtgrp");
        owner.join_group(&extra.name);
        let state = base.path().join("state");
        for dir in ["", "secrets", "releases/shop/abc"] {
            let dir = state.join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            owner.own(&dir);
        }
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&state, Some(owner.uid), Some(0)).unwrap();
        owner.own(&state.join("releases/shop"));
        owner.own(&state.join("releases"));
        let secrets = state.join("secrets/shop.env");
        std::fs::write(&secrets, "TOKEN=the-projects-own\n").unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        owner.own(&secrets);
        Scene {
            base,
            owner,
            _extra: extra,
            state,
        }
    }

    /// A scene whose agent, run by the owner, names the project's own files.
    fn with_honest_agent() -> (Scene, FakeAgent) {
        let scene = Scene::new();
        let agent = fake_agent(
            &scene.state,
            scene.owner.uid,
            scene.spec(&scene.own_secrets()),
        );
        (scene, agent)
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

    /// `spec` naming `confinement` for the command.
    fn confined_spec(&self, confinement: Value) -> Value {
        let mut spec = self.spec(&self.own_secrets());
        spec["confinement"] = confinement;
        spec
    }

    fn own_secrets(&self) -> PathBuf {
        self.state.join("secrets/shop.env")
    }

    fn ran(&self) -> bool {
        self.state.join("releases/shop/abc/ran").exists()
    }

    /// The arguments of `gantry agent exec` for `state`, running `script`.
    fn command(&self, state: &Path, script: &str) -> Command {
        let mut command = Command::new(GANTRY);
        command
            .args(["agent", "exec", "--state-dir"])
            .arg(state)
            .args([
                "--project",
                "shop",
                "--service",
                "web",
                "--output",
                "json",
                "--",
            ])
            .args(["sh", "-c", script]);
        command
    }

    /// `gantry agent exec` as root, in `state`: its output.
    fn exec_in(&self, state: &Path, script: &str) -> std::process::Output {
        self.command(state, script).output().unwrap()
    }

    fn exec(&self) -> std::process::Output {
        self.exec_in(&self.state, AS_OWNER)
    }

    /// `exec`, which must be refused without running the command: its output.
    fn exec_refused(&self) -> String {
        let out = self.exec();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(4), "{stdout}");
        let error: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(error["error"]["code"], "exec.refused", "{error:#}");
        assert!(!self.ran(), "the command ran");
        stdout
    }

    /// The owner's gid and supplementary groups, as its passwd and group
    /// entries say, sorted.
    fn owner_groups(&self) -> Vec<u32> {
        let out = Command::new("id")
            .args(["-G", &self.owner.name])
            .output()
            .unwrap();
        sorted_ids(&String::from_utf8_lossy(&out.stdout))
    }
}

fn sorted_ids(line: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = line
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn root_exec_becomes_the_agents_user_and_reads_only_the_projects_secrets() {
    let scene = Scene::new();
    // Only root may read this.
    let private = scene.base.path().join("root-only.env");
    std::fs::write(&private, "TOKEN=roots-own-secret\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The agent (its user, or a service running as it) names root's file.
    let agent = fake_agent(&scene.state, scene.owner.uid, scene.spec(&private));
    let stdout = scene.exec_refused();
    assert!(!stdout.contains("roots-own-secret"), "{stdout}");
    let clients = agent.clients();
    assert!(!clients.is_empty());
    assert!(
        clients.iter().all(|uid| *uid == scene.owner.uid),
        "{clients:?}"
    );

    // An honest answer: the command runs as the owner, in the owner's
    // groups (not the state directory's), with the project's secret; every
    // connection to the agent came from the owner, the first one included.
    std::fs::remove_file(&agent.socket).unwrap();
    let agent = fake_agent(
        &scene.state,
        scene.owner.uid,
        scene.spec(&scene.own_secrets()),
    );
    let out = scene.exec();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], scene.owner.uid.to_string());
    assert_eq!(sorted_ids(lines[1]), scene.owner_groups());
    assert_eq!(
        scene.owner_groups().len(),
        2,
        "the owner's group and `extra`"
    );
    assert_eq!(lines[2], "the-projects-own");
    let clients = agent.clients();
    assert!(!clients.is_empty());
    assert!(
        clients.iter().all(|uid| *uid == scene.owner.uid),
        "{clients:?}"
    );
}

#[test]
fn root_exec_works_through_a_symlink_to_the_state_directory() {
    let (scene, _agent) = Scene::with_honest_agent();
    let link = scene.base.path().join("link");
    std::os::unix::fs::symlink(&scene.state, &link).unwrap();
    let out = scene.exec_in(&link, AS_OWNER);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.ends_with("the-projects-own\n"), "{stdout}");
}

#[test]
fn root_exec_reports_a_command_ended_by_a_signal_as_128_plus_its_number() {
    let (scene, _agent) = Scene::with_honest_agent();
    let out = scene.exec_in(&scene.state, "kill -TERM $$");
    assert_eq!(out.status.code(), Some(128 + 15), "{out:?}");

    // A signal to `gantry agent exec` reaches the command, which is in a
    // session of its own.
    let mut running = scene
        .command(&scene.state, "touch started; exec sleep 600")
        .spawn()
        .unwrap();
    let started = scene.state.join("releases/shop/abc/started");
    gantry_testkit::wait_for("the command", agent_support::DEADLINE, || started.exists());
    let pid = rustix::process::Pid::from_child(&running);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(running.wait().unwrap().code(), Some(128 + 15));
}

#[test]
fn root_exec_gives_the_command_no_controlling_terminal_of_roots() {
    let (scene, _agent) = Scene::with_honest_agent();
    // `script` runs gantry on a new terminal, its controlling one, as root's
    // shell would. The command would open it as /dev/tty if it kept it.
    let exec = scene.command(
        &scene.state,
        "if (: </dev/tty) 2>/dev/null; then echo kept >tty; else echo none >tty; fi",
    );
    let line = std::iter::once(exec.get_program())
        .chain(exec.get_args())
        .map(|arg| format!("'{}'", arg.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let said = std::fs::read_to_string(scene.state.join("releases/shop/abc/tty")).unwrap();
    assert_eq!(said, "none\n");
}

#[test]
fn root_exec_refuses_an_agent_socket_served_by_another_user() {
    let scene = Scene::new();
    let attacker = LocalUser::create("gtatk");
    let theirs = scene.base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    attacker.own(&theirs);
    let agent = fake_agent(&theirs, attacker.uid, scene.spec(&scene.own_secrets()));
    std::fs::rename(&agent.socket, scene.state.join("agent.sock")).unwrap();

    let stdout = scene.exec_refused();
    assert!(!stdout.contains("the-projects-own"), "{stdout}");
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

/// The project user the fake agents below name: `releases/shop` is given
/// its group, as the agent's isolation does.
const PROJECT_UID: u32 = 1_900_000_123;

fn project_user(uid: u32) -> Value {
    json!({"user": {"uid": uid, "gid": uid, "groups": [gantry_agent::SERVICES_GID]}})
}

#[test]
fn root_exec_confines_the_command_as_the_agent_confines_the_service() {
    // As under the systemd unit: the agent's user owns the state directory
    // and runs services as their project's user.
    let scene = Scene::new();
    let project_dir = scene.state.join("releases/shop");
    std::os::unix::fs::chown(&project_dir, None, Some(PROJECT_UID)).unwrap();
    std::fs::set_permissions(&project_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let _agent = fake_agent(
        &scene.state,
        scene.owner.uid,
        scene.confined_spec(project_user(PROJECT_UID)),
    );
    let secrets = scene.own_secrets().display().to_string();
    let out = scene.exec_in(
        &scene.state,
        &format!(
            "id -u; id -G; grep -E '^(NoNewPrivs|CapBnd|CapEff):' /proc/self/status; echo \"$TOKEN\"
if head -c1 {secrets} >/dev/null 2>&1; then echo read; else echo refused; fi"
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(lines[0], PROJECT_UID.to_string());
    assert_eq!(
        sorted_ids(lines[1]),
        [gantry_agent::SERVICES_GID, PROJECT_UID]
    );
    assert_eq!(status_field(&stdout, "NoNewPrivs"), "1");
    assert_eq!(status_field(&stdout, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&stdout, "CapEff"), "0000000000000000");
    // Read by the owner before the command started; the command's user
    // cannot read the file itself.
    assert_eq!(lines[5..], ["the-projects-own", "refused"]);
}

#[test]
fn root_exec_refuses_a_confinement_that_is_not_the_projects_user() {
    let scene = Scene::new();
    let project_dir = scene.state.join("releases/shop");
    std::os::unix::fs::chown(&project_dir, None, Some(PROJECT_UID)).unwrap();
    let other_project = project_user(PROJECT_UID + 1);
    let root_user = json!({"user": {"uid": 0, "gid": 0, "groups": []}});
    // Root's capabilities, from an agent that is not root.
    let as_root = json!({"keep_capabilities": true});
    for confinement in [other_project, root_user, as_root] {
        let agent = fake_agent(
            &scene.state,
            scene.owner.uid,
            scene.confined_spec(confinement.clone()),
        );
        let stdout = scene.exec_refused();
        assert!(
            !stdout.contains("the-projects-own"),
            "{confinement}: {stdout}"
        );
        std::fs::remove_file(&agent.socket).unwrap();
    }
}

#[test]
fn exec_by_the_agents_user_cannot_run_a_command_as_the_projects_user() {
    let scene = Scene::new();
    let project_dir = scene.state.join("releases/shop");
    std::os::unix::fs::chown(&project_dir, None, Some(PROJECT_UID)).unwrap();
    let _agent = fake_agent(
        &scene.state,
        scene.owner.uid,
        scene.confined_spec(project_user(PROJECT_UID)),
    );
    // Not root: it cannot switch users, and must not run it as its own.
    use std::os::unix::process::CommandExt;
    let out = scene
        .command(&scene.state, AS_OWNER)
        .uid(scene.owner.uid)
        .gid(scene.owner.gid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}");
    let error: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(error["error"]["code"], "exec.failed", "{error:#}");
    assert!(!scene.ran(), "the command ran as the agent's user");
}
