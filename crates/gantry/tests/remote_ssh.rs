//! Hosts over SSH, for real: three hosts, each a network namespace with its
//! own address, sshd, user, home and /tmp (gantry_testkit::hosts), reached
//! through OpenSSH with a config file, the way users reach their servers.
//! Needs root (CI runs as root and installs openssh-server).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use agent_support::{GANTRY, hello_toml};
use gantry_testkit::hosts::TestHosts;
use gantry_testkit::{TestProject, example_bins};

/// A project whose `prod` environment is the test hosts `names`.
fn remote_project(hosts: &TestHosts, names: &[&str], version: &str) -> TestProject {
    let bins = example_bins();
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
    TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", &format!("{version}\n"))
        .file("gantry.toml", &toml)
        .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string())
}

#[test]
fn each_ssh_failure_has_its_own_error() {
    let mut hosts = TestHosts::start(2);
    hosts.host("h1").install_gantry(GANTRY.as_ref());
    let project = remote_project(&hosts, &["h1"], "1");

    // A key the host does not accept (first: once a connection is open,
    // OpenSSH multiplexes over it whatever key a later command offers).
    let stranger = hosts.stranger_key();
    let other = hosts.ssh_config_with_key(&stranger);
    let refused =
        remote_project(&hosts, &["h1"], "1").env("GANTRY_SSH_CONFIG", &other.display().to_string());
    let run = refused.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.auth_refused",
        "{}",
        run.stdout
    );

    // Reachable, and the agent answers over `ssh h1 gantry agent connect`.
    let status = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    status.expect_code(0);

    // gantry missing on h2.
    let missing = remote_project(&hosts, &["h2"], "1");
    let run = missing.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.gantry_missing",
        "{}",
        run.stdout
    );
    assert!(
        run.json()["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("gantry configure")
    );

    // The host was reinstalled: a new host key.
    hosts.host_mut("h1").change_host_key();
    let run = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.key_changed",
        "{}",
        run.stdout
    );
    assert!(
        run.json()["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("ssh-keygen -R")
    );

    // Down: the link is cut.
    hosts.host("h2").cut();
    let run = missing.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.unreachable",
        "{}",
        run.stdout
    );
}
