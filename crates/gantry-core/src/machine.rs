//! This machine and its processes as a lock's holder names them: its host
//! name, its pid space, and whether a pid in it still runs. The environment
//! lock (a file) and the deploy lock (an agent's) both use them.

use std::path::Path;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// This process's pid space: the kernel's boot id and the pid namespace.
/// Two processes with the same one see the same pids; empty when unknown.
pub fn pid_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let namespace = std::fs::read_link("/proc/self/ns/pid");
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) => format!("{}/{}", boot.trim(), namespace.display()),
        _ => String::new(),
    }
}

pub(crate) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
