//! A second real user on this machine, for the tests of what another local
//! user could do (plant a socket, own a directory). Needs root; the user and
//! its processes are removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

pub struct LocalUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl LocalUser {
    /// A new user without a home or a login shell, named `prefix` and a
    /// suffix unique to this process.
    pub fn create(prefix: &str) -> LocalUser {
        let seq = SEQUENCE.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}{:x}-{seq}", std::process::id());
        let _ = Command::new("userdel").args(["-f", &name]).output();
        crate::hosts::run(
            "useradd",
            &[
                "-M",
                "-U",
                "-s",
                "/usr/sbin/nologin",
                "-d",
                "/nonexistent",
                &name,
            ],
        );
        let id = |flag: &str| -> u32 {
            let output = Command::new("id")
                .args([flag, &name])
                .output()
                .expect("run id");
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("no {flag} for {name}"))
        };
        LocalUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }

    /// Adds this user to the group `group` (a supplementary group).
    pub fn join_group(&self, group: &str) {
        crate::hosts::run("usermod", &["-a", "-G", group, &self.name]);
    }

    /// Makes `path` this user's.
    pub fn own(&self, path: &std::path::Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).expect("chown");
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .output();
        let _ = Command::new("userdel").args(["-f", &self.name]).output();
    }
}
