//! Images built on the user's machine travel to an SSH host without a
//! registry, for real: the host is a network namespace with sshd
//! (gantry_testkit::hosts) whose agent runs containers on this machine's
//! Docker Engine. That engine is the host's; the user's machine gets an
//! engine of its own (`Dockerd::isolated`: a second dockerd with its own data
//! root and socket, `DOCKER_HOST` for the CLI), so "the layers the host
//! lacks" are really absent from the host's engine and every byte counted
//! in the report really travelled. Both engines hold the Debian base image
//! (gantry_testkit::images), as a user's machine and a server both would.
//! Needs root and Docker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use std::process::Command;

use agent_support::GANTRY;
use gantry_testkit::TestProject;
use gantry_testkit::dockerd::Dockerd;
use gantry_testkit::hosts::TestHosts;

/// A Docker Engine standing for the user's machine (its own dockerd, data
/// root and socket), holding the base image as the user's machine would
/// have pulled it.
fn user_engine() -> Dockerd {
    let engine = Dockerd::isolated();
    engine.load_from_machine(gantry_testkit::images::base());
    engine
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
fn project(
    hosts: &TestHosts,
    name: &str,
    image: &str,
    user: &Dockerd,
    layer: usize,
) -> TestProject {
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
        "FROM {base}\nRUN head -c {layer} /dev/urandom > /noise\nCOPY VERSION /version\nCMD [\"sleep\", \"infinity\"]\n",
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

/// The `/version` the project's running container holds, on the host's
/// engine, once the one the deploy replaced has drained and gone (the deploy
/// answers as soon as the new one serves).
fn running_version(name: &str) -> String {
    let running = || {
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=dev.gantry.project={name}"),
        ])
    };
    gantry_testkit::wait_for(
        "one container of the project to run",
        std::time::Duration::from_secs(60),
        || running().lines().count() == 1,
    );
    let ids = running();
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 1, "one container runs: {ids:?}");
    docker(&["exec", ids[0], "cat", "/version"])
}

fn host_with_docker(hosts: &TestHosts) {
    let h1 = hosts.host("h1");
    h1.install_gantry(GANTRY.as_ref());
    h1.join_docker_group();
}

#[test]
fn a_built_image_ships_only_the_layers_the_host_lacks() {
    let hosts = TestHosts::start(1);
    host_with_docker(&hosts);
    let user = user_engine();
    let name = "ship-img";
    let image = format!("gantry-test-ship-{}", std::process::id());
    let _cleanup = Cleanup {
        project: name.to_owned(),
        image: image.clone(),
    };
    let p = project(&hosts, name, &image, &user, LAYER);
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

#[test]
fn an_image_upload_cut_off_with_the_link_resumes_where_it_stopped() {
    let hosts = TestHosts::start(1);
    host_with_docker(&hosts);
    let h1 = hosts.host("h1");
    let user = user_engine();
    let name = "ship-resume";
    let image = format!("gantry-test-resume-{}", std::process::id());
    let _cleanup = Cleanup {
        project: name.to_owned(),
        image: image.clone(),
    };
    let big: u64 = 16 << 20;
    let p = project(&hosts, name, &image, &user, big as usize);
    let args = ["deploy", "-e", "prod", "--output", "json"];

    // 16 MiB of noise at 16 Mbit/s: about eight seconds, cut after the
    // first few MiB of the layer have reached h1.
    h1.limit_rate(16_000);
    let (first, held) = std::thread::scope(|scope| {
        let first = scope.spawn(|| p.gantry(&args));
        gantry_testkit::wait_for(
            "some of the image's noise layer to reach h1",
            std::time::Duration::from_secs(180),
            || h1.partial_uploads().iter().any(|(_, n)| *n >= 3 << 20),
        );
        h1.cut();
        let first = first.join().expect("the first deploy's thread");
        let held: u64 = h1.partial_uploads().iter().map(|(_, n)| n).sum();
        (first, held)
    });
    first.expect_code(5);
    assert_eq!(first.json()["error"]["code"], "host.unreachable");
    assert!(
        (3 << 20..big).contains(&held),
        "the agent keeps what arrived, not all of it: {held} bytes"
    );

    // Back: the next deploy sends the rest of the layer, not all of it.
    h1.restore();
    h1.unlimit_rate();
    let again = p.gantry(&args);
    again.expect_code(0);
    let report = again.json();
    let sent = report["hosts"][0]["upload"]["image_bytes_sent"]
        .as_u64()
        .unwrap();
    // The rest of the noise, the small layers above it and the config.
    assert!(
        sent <= big - held + 200_000,
        "at most the rest of the layer ({held} of its bytes were on h1): {sent} bytes sent: {report:#}"
    );
    // (What was in flight when the link went down may have reached the
    // agent's file after `held` was read: the rest is at least half.)
    assert!(sent >= (big - held) / 2, "{sent} bytes sent: {report:#}");
    // And what runs is the whole image, checked by digest on the host.
    assert_eq!(running_version(name), "1");
    assert!(
        h1.partial_uploads().is_empty(),
        "{:?}",
        h1.partial_uploads()
    );
}
