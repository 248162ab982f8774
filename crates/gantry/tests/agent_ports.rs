//! What the agent keeps is its user's alone: its port claims live in a
//! directory only that user can write (root's agents: `/run/gantry-ports`),
//! so another local user cannot block every agent's port allocation, and a
//! state directory found open to others is made 0700 when the agent starts.
//! A second real user plays the other local user (root only, like the
//! testkit's hosts).

mod agent_support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use agent_support::{AgentProcess, deploy, instances, ports, service, shell};

const OTHER_USER: &str = "gantry-blocker";

/// Runs `script` with `sh` as the other local user (created on first use).
fn as_other_user(script: &str) -> Output {
    let exists = Command::new("id")
        .arg(OTHER_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        // A concurrent test may have made it meanwhile: `id` decides below.
        let _ = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", OTHER_USER])
            .status();
    }
    Command::new("runuser")
        .args(["-u", OTHER_USER, "--", "sh", "-c", script])
        .output()
        .expect("run a command as the other user")
}

/// Three consecutive ports nothing listens on, below the kernel's ephemeral
/// ports (which other tests' connections take) and above the agents' own
/// default range.
fn free_range() -> (u16, u16) {
    let free = |port: u16| std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
    let mut start = 30_000;
    while start < 32_700 {
        if (start..start + 3).all(free) {
            return (start, start + 2);
        }
        start += 3;
    }
    panic!("no three free ports between 30000 and 32700");
}

#[test]
fn another_local_user_cannot_block_the_agents_port_claims() {
    let (first, last) = free_range();
    // What any local user could do to the old shared directory, and tries
    // on the new one.
    let plant = format!(
        "mkdir -p /tmp/gantry-ports; for p in $(seq {first} {last}); do \
         echo /elsewhere > /tmp/gantry-ports/$p; done; \
         echo /elsewhere > /run/gantry-ports/{first}"
    );
    let planted = as_other_user(&plant);
    assert!(
        !planted.status.success(),
        "another user wrote a claim into the agents' directory: {}",
        String::from_utf8_lossy(&planted.stderr)
    );

    let p = shell(
        "portclaims",
        "[services.app]\nrun = \"exec sleep 600\"\nport = \"http\"\nreplicas = 3\nhealth = { command = \"true\" }\n",
    )
    .env("GANTRY_AGENT_PORTS", &format!("{first}-{last}"));
    let report = deploy(&p);
    let app = service(&report, "app");
    assert_eq!(instances(app).len(), 3, "{report:#}");
    assert!(
        ports(app).iter().all(|port| (first..=last).contains(port)),
        "{report:#}"
    );
    let _ = as_other_user(&format!(
        "for p in $(seq {first} {last}); do rm -f /tmp/gantry-ports/$p; done"
    ));
}

#[test]
fn a_state_directory_open_to_others_is_made_private_at_start() {
    let p = shell("privatestate", "");
    std::fs::set_permissions(p.state_dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let _agent = AgentProcess::start(&p);
    let mode = std::fs::metadata(p.state_dir())
        .expect("stat")
        .permissions()
        .mode();
    // Others get nothing; a root agent lets its services' group pass
    // through (0710) to their releases, an unprivileged one is 0700.
    let wanted = if nix::unistd::Uid::effective().is_root() {
        0o710
    } else {
        0o700
    };
    assert_eq!(mode & 0o777, wanted, "mode {:o}", mode & 0o7777);
    let listed = as_other_user(&format!("ls {}", p.state_dir().display()));
    assert!(
        !listed.status.success(),
        "another user lists the state directory: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
}
