//! The sockets of shared SSH connections (ControlPath) live only where no
//! other local user could have put anything: a second real user who owns
//! the runtime directory, the home and the temporary directory Gantry would
//! use, and has planted a fake ControlMaster in each, receives nothing; the
//! command still works, unshared, and says so. Needs root (a user, sshd).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_support::{GANTRY, hello_toml};
use gantry_testkit::TestProject;
use gantry_testkit::hosts::TestHosts;
use gantry_testkit::users::LocalUser;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory `path`, made with `mode` and owned by `owner` (root: None).
fn dir(path: &Path, mode: u32, owner: Option<&LocalUser>) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    chmod(path, mode);
    if let Some(owner) = owner {
        owner.own(path);
    }
    path.to_owned()
}

/// The `%C` name OpenSSH gives the control socket of `host` (`ssh -G`).
fn control_name(ssh_config: &Path, host: &str) -> String {
    let output = std::process::Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(ssh_config)
        .args(["-o", "ControlPath=/x/%C", "--", host])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("controlpath /x/").map(str::to_owned))
        .expect("ssh -G names the control path")
}

/// A fake ControlMaster at `path`, owned by `owner`: it counts the clients
/// that connect to it (and hangs up on them).
fn fake_master(path: &Path, owner: &LocalUser) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(path).unwrap();
    owner.own(path);
    let connected = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connected);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    connected
}

/// Every entry under `root`, as paths relative to it.
fn entries(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            found.push(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn ssh_connections_are_never_shared_through_a_directory_another_user_controls() {
    let hosts = TestHosts::start(1);
    hosts.host("h1").install_gantry(GANTRY.as_ref());
    let attacker = LocalUser::create("gtatk");
    // Short, so that socket paths under it fit in 108 bytes.
    let base = tempfile::Builder::new()
        .prefix("gt")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(base.path(), 0o755);
    let home = dir(&base.path().join("home"), 0o755, Some(&attacker));
    let runtime = dir(&base.path().join("run"), 0o700, Some(&attacker));
    let tmp = dir(&base.path().join("tmp"), 0o1777, None);
    let uid = rustix::process::geteuid().as_raw();
    let planted_tmp = dir(&tmp.join(format!("gantry-{uid}")), 0o777, Some(&attacker));
    let planted = [
        dir(&runtime.join("gantry-ssh"), 0o777, Some(&attacker)),
        dir(&planted_tmp.join("gantry-ssh"), 0o777, Some(&attacker)),
        dir(&home.join(".cache/gantry/ssh"), 0o777, Some(&attacker)),
    ];
    let name = control_name(&hosts.ssh_config, "h1");
    let masters: Vec<_> = planted
        .iter()
        .map(|d| fake_master(&d.join(&name), &attacker))
        .collect();
    let before: Vec<_> = [&home, &runtime, &planted_tmp]
        .iter()
        .map(|d| entries(d))
        .collect();

    let project = |home: &Path| {
        let mut toml = hello_toml("shop", "bin/hello-web");
        toml.push_str("\n[environments.prod]\nhosts = [\"h1\"]\n\n[hosts.h1]\nssh = \"h1\"\n");
        TestProject::new(GANTRY)
            .file("gantry.toml", &toml)
            .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string())
            .env("HOME", &home.display().to_string())
            .env("XDG_RUNTIME_DIR", &runtime.display().to_string())
            .env("TMPDIR", &tmp.display().to_string())
    };
    let run = project(&home).gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(0);
    for (master, dir) in masters.iter().zip(&planted) {
        assert_eq!(
            master.load(Ordering::SeqCst),
            0,
            "ssh connected to the socket planted in {}",
            dir.display()
        );
    }
    let after: Vec<_> = [&home, &runtime, &planted_tmp]
        .iter()
        .map(|d| entries(d))
        .collect();
    assert_eq!(before, after, "nothing is made in another user's directory");
    assert!(
        run.stderr.contains("SSH connections are not shared"),
        "{run:?}"
    );

    // A home of this user's own: connections are shared, their socket in
    // ~/.cache/gantry/ssh, which is 0700.
    let own_home = dir(&base.path().join("own"), 0o700, None);
    let run = project(&own_home).gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(0);
    assert!(!run.stderr.contains("not shared"), "{run:?}");
    let sockets = own_home.join(".cache/gantry/ssh");
    let mode = std::fs::metadata(&sockets).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    assert_eq!(entries(&sockets), [name], "the shared connection's socket");
}

#[test]
fn a_runtime_directory_others_may_enter_is_neither_used_nor_changed() {
    let hosts = TestHosts::start(1);
    hosts.host("h1").install_gantry(GANTRY.as_ref());
    let base = tempfile::Builder::new()
        .prefix("gt")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(base.path(), 0o755);
    // This user's own, but 0755: what is made in it others may reach.
    let runtime = dir(&base.path().join("run"), 0o755, None);
    let home = dir(&base.path().join("home"), 0o700, None);
    let mut toml = hello_toml("shop", "bin/hello-web");
    toml.push_str("\n[environments.prod]\nhosts = [\"h1\"]\n\n[hosts.h1]\nssh = \"h1\"\n");
    let run = TestProject::new(GANTRY)
        .file("gantry.toml", &toml)
        .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string())
        .env("HOME", &home.display().to_string())
        .env("XDG_RUNTIME_DIR", &runtime.display().to_string())
        .gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(0);
    let mode = std::fs::metadata(&runtime).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "the runtime directory's mode was changed");
    assert!(entries(&runtime).is_empty(), "{:?}", entries(&runtime));
    let name = control_name(&hosts.ssh_config, "h1");
    assert_eq!(entries(&home.join(".cache/gantry/ssh")), [name]);
}
