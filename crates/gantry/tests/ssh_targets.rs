//! An `ssh` address is data, never an option of the user's `ssh`: one that
//! starts with `-` (`-oProxyCommand=...`) is refused by `validate` and by
//! `register --ssh` before any `ssh` runs. The real OpenSSH client is used,
//! so an address that slipped through would run its ProxyCommand.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use agent_support::{GANTRY, hello_toml};
use gantry_testkit::TestProject;

/// What ssh would run as the ProxyCommand of `-oProxyCommand=./evil@x`: a
/// script in the project that leaves a mark.
fn with_trap(project: TestProject) -> TestProject {
    let project = project.file("evil@x", "#!/bin/sh\ntouch ran-as-proxy-command\n");
    use std::os::unix::fs::PermissionsExt;
    let trap = project.path().join("evil@x");
    std::fs::set_permissions(&trap, std::fs::Permissions::from_mode(0o755)).unwrap();
    project
}

fn trap_sprung(project: &TestProject) -> bool {
    project.path().join("ran-as-proxy-command").exists()
}

#[test]
fn an_ssh_address_that_ssh_would_read_as_an_option_is_refused_before_ssh_runs() {
    let mut toml = hello_toml("shop", "bin/hello-web");
    toml.push_str(
        "\n[environments.prod]\nhosts = [\"h1\"]\n\n[hosts.h1]\nssh = \"-oProxyCommand=./evil@x\"\n",
    );
    let project = with_trap(TestProject::new(GANTRY).file("gantry.toml", &toml));

    let validated = project.gantry(&["validate", "--output", "json"]);
    validated.expect_code(3);
    let error = &validated.json()["error"];
    assert_eq!(error["code"], "config.invalid", "{error:#}");
    assert_eq!(error["errors"][0]["path"], "hosts.h1.ssh", "{error:#}");
    assert!(
        error["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("starts with `-`"),
        "{error:#}"
    );

    for args in [
        &["status", "-e", "prod"][..],
        &["ssh", "h1", "-e", "prod", "--", "true"],
    ] {
        let run = project.gantry(args);
        run.expect_code(3);
        assert!(!trap_sprung(&project), "{run:?}");
    }
}

#[test]
fn register_refuses_an_ssh_address_that_ssh_would_read_as_an_option() {
    let project = with_trap(
        TestProject::new(GANTRY).file("gantry.toml", &hello_toml("shop", "bin/hello-web")),
    );
    let run = project.gantry(&[
        "register",
        "h1",
        "--ssh=-oProxyCommand=./evil@x",
        "-e",
        "prod",
        "--output",
        "json",
    ]);
    run.expect_code(2);
    assert_eq!(run.json()["error"]["code"], "usage", "{run:?}");
    assert!(run.stdout.contains("starts with `-`"), "{run:?}");
    assert!(!trap_sprung(&project), "{run:?}");
    let toml = std::fs::read_to_string(project.path().join("gantry.toml")).unwrap();
    assert!(!toml.contains("ProxyCommand"), "{toml}");
}

#[test]
fn an_ssh_user_with_a_plus_sign_is_accepted() {
    let mut toml = hello_toml("shop", "bin/hello-web");
    toml.push_str(
        "\n[environments.prod]\nhosts = [\"h1\"]\n\n[hosts.h1]\nssh = \"ci+deploy@web1.example:2222\"\n",
    );
    let project = TestProject::new(GANTRY).file("gantry.toml", &toml);
    project
        .gantry(&["validate", "--output", "json"])
        .expect_code(0);
}
