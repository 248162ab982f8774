//! Images built on the user's machine travel to an SSH host without a
//! registry, for real: the host is a network namespace with sshd
//! (gantry_testkit::hosts) whose agent runs containers on this machine's
//! Docker Engine. That engine is the host's; the user's machine gets an
//! engine of its own (`UserEngine`: a second dockerd with its own data
//! root and socket, `DOCKER_HOST` for the CLI), so "the layers the host
//! lacks" are really absent from the host's engine and every byte counted
//! in the report really travelled. Both engines hold the Debian base image
//! (gantry_testkit::images), as a user's machine and a server both would.
//! Needs root and Docker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::GANTRY;
use gantry_testkit::TestProject;
use gantry_testkit::hosts::TestHosts;

/// A Docker Engine standing for the user's machine: its own dockerd, data
/// root and socket, stopped and removed on drop.
struct UserEngine {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl UserEngine {
    fn start() -> UserEngine {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        // Its own (empty) config: the system's names the system's data root.
        std::fs::write(dir.path().join("daemon.json"), "{}").expect("daemon.json");
        let daemon = Command::new("dockerd")
            .args(["--config-file", &path("daemon.json")])
            .args(["--data-root", &path("data"), "--exec-root", &path("exec")])
            .args(["--pidfile", &path("dockerd.pid")])
            .args(["--host", &format!("unix://{}", path("docker.sock"))])
            // No networks: builds here need none, and it leaves the
            // machine's bridges and iptables alone.
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dockerd.log")).expect("log"))
            .spawn()
            .expect("start a second dockerd");
        let engine = UserEngine { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine
            .command(&["info"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "the user's dockerd did not start: {}",
                std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The base image, as the user's machine would have pulled it.
        let base = gantry_testkit::images::base();
        let mut save = Command::new("docker")
            .args(["save", base])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let loaded = engine
            .command(&["load", "-q"])
            .stdin(save.stdout.take().expect("piped"))
            .output()
            .expect("docker load");
        assert!(loaded.status.success(), "{loaded:?}");
        assert!(save.wait().expect("docker save").success());
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command.args(args).env("DOCKER_HOST", self.host());
        command
    }
}

impl Drop for UserEngine {
    fn drop(&mut self) {
        // SIGTERM, so dockerd unmounts its layers before the directory goes.
        let _ = Command::new("kill")
            .arg(self.daemon.id().to_string())
            .status();
        let _ = self.daemon.wait();
    }
}

/// Runs `docker` on the host's engine (this machine's).
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes the project's containers and its image from the host's engine.
struct Cleanup {
    project: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.gantry.project={}", self.project);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        if let Ok(out) = Command::new("docker")
            .args(["images", "-q", &self.image])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("docker").args(["rmi", "-f", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("gantry-{}-prod", self.project)])
            .output();
    }
}

const LAYER: usize = 3_000_000;

/// An image service built from `app/Dockerfile`: a big layer of random
/// bytes, then the VERSION file on top (the layer a change touches).
fn project(hosts: &TestHosts, name: &str, image: &str, user: &UserEngine) -> TestProject {
    let toml = format!(
        r#"[project]
name = "{name}"

[services.app]
image = "{image}"
build = {{ context = "app" }}
health = {{ command = "test -f /version", interval = "100ms", timeout = "2s" }}
stop_timeout = "1s"

[environments.prod]
hosts = ["h1"]

[hosts.h1]
ssh = "h1"
"#
    );
    let dockerfile = format!(
        "FROM {base}\nRUN head -c {LAYER} /dev/urandom > /noise\nCOPY VERSION /version\nCMD [\"sleep\", \"infinity\"]\n",
        base = gantry_testkit::images::base()
    );
    TestProject::new(GANTRY)
        .file("gantry.toml", &toml)
        .file("app/Dockerfile", &dockerfile)
        .file("app/VERSION", "1\n")
        .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string())
        .env("GANTRY_PROXY_LISTEN", "off")
        .env("DOCKER_HOST", &user.host())
        .env("DOCKER_BUILDKIT", "0")
}

/// The `/version` the project's running container holds, on the host's engine.
fn running_version(name: &str) -> String {
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=dev.gantry.project={name}"),
    ]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 1, "one container runs: {ids:?}");
    docker(&["exec", ids[0], "cat", "/version"])
}

fn host_with_docker(hosts: &TestHosts) {
    let h1 = hosts.host("h1");
    h1.install_gantry(GANTRY.as_ref());
    // The host's user reaches the engine, as `gantry configure` arranges.
    let added = Command::new("usermod")
        .args(["-aG", "docker", &h1.user])
        .status()
        .expect("usermod");
    assert!(added.success());
}

#[test]
fn a_built_image_ships_only_the_layers_the_host_lacks() {
    let hosts = TestHosts::start(1);
    host_with_docker(&hosts);
    let user = UserEngine::start();
    let name = "ship-img";
    let image = format!("gantry-test-ship-{}", std::process::id());
    let _cleanup = Cleanup {
        project: name.to_owned(),
        image: image.clone(),
    };
    let p = project(&hosts, name, &image, &user);
    let args = ["deploy", "-e", "prod", "--output", "json"];

    let first = p.gantry(&args);
    first.expect_code(0);
    let report = first.json();
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let sent = report["hosts"][0]["upload"]["image_bytes_sent"]
        .as_u64()
        .unwrap();
    // The noise layer and the small ones above it travelled; the Debian
    // base, which the host's engine has, did not (it alone is ~100 MB).
    assert!(
        sent >= LAYER as u64 && sent < LAYER as u64 + 200_000,
        "{sent} bytes of image sent: {report:#}"
    );
    assert_eq!(running_version(name), "1");

    // One layer changes: only it (and the image's config) travels.
    std::fs::write(p.path().join("app/VERSION"), "2\n").unwrap();
    let second = p.gantry(&args);
    second.expect_code(0);
    let report = second.json();
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let sent = report["hosts"][0]["upload"]["image_bytes_sent"]
        .as_u64()
        .unwrap();
    assert!(
        sent > 0 && sent < 100_000,
        "a one-layer change sent {sent} bytes of image: {report:#}"
    );
    assert_eq!(running_version(name), "2");

    // Nothing changed: nothing of the image travels again.
    let third = p.gantry(&args);
    third.expect_code(0);
    assert_eq!(third.json()["hosts"][0]["upload"]["image_bytes_sent"], 0);
}
