//! Confinement: who a service's command runs as and what it may still do.
//! [`confine`] is the one place that switches user and drops privileges;
//! whatever runs a service's command (the relay, a health check command,
//! `gantry agent exec`) calls it on its `Command`. All of it happens in the
//! child between fork and exec, so the caller keeps its own identity.
//!
//! This module must never allocate or take a lock in the child (only raw
//! system calls run there), nor let a failed drop go unnoticed when a user
//! switch was asked for: the child then fails to start instead.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

pub use gantry_core::agent_api::{Confinement, ServiceUser};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use rustix::thread::{
    CapabilitySet, capabilities, clear_ambient_capability_set, configure_capability_in_ambient_set,
    remove_capability_from_bounding_set, set_capabilities, set_no_new_privs, set_thread_groups,
    set_thread_res_gid, set_thread_res_uid,
};

/// Makes `command`'s child run confined: umask 022, no ambient or
/// inheritable capabilities, an empty bounding set and no capabilities at
/// all (unless `keep_capabilities`), the service user if one is given, and
/// no_new_privs, so neither setuid binaries nor file capabilities give back
/// what was dropped. Call it after any `pre_exec` that needs the caller's
/// privileges (joining a cgroup): the closures run in order.
#[allow(unsafe_code)]
pub fn confine(command: &mut Command, confinement: &Confinement) {
    let user = confinement.user.as_ref().map(|u| {
        let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        (Uid::from_raw(u.uid), Gid::from_raw(u.gid), groups)
    });
    let keep = confinement.keep_capabilities;
    let apply = move || -> io::Result<()> {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        match clear_ambient_capability_set() {
            // A kernel before 4.3 has no ambient set: nothing to drop.
            Ok(()) | Err(Errno::INVAL) => {}
            Err(e) => return Err(e.into()),
        }
        if !keep {
            clear_bounding_set(user.is_some())?;
        }
        if let Some((uid, gid, groups)) = &user {
            // One thread in the child: the per-thread calls are per-process.
            set_thread_groups(groups)?;
            set_thread_res_gid(*gid, *gid, *gid)?;
            set_thread_res_uid(*uid, *uid, *uid)?;
        }
        let mut sets = capabilities(None)?;
        sets.inheritable = CapabilitySet::empty();
        if !keep {
            sets.effective = CapabilitySet::empty();
            sets.permitted = CapabilitySet::empty();
        }
        set_capabilities(None, sets)?;
        set_no_new_privs(true)?;
        Ok(())
    };
    // SAFETY: `apply` runs in the child between fork and exec. It allocates
    // nothing and takes no lock: the ids were converted before the fork, and
    // it only makes system calls (umask, prctl, capget, capset, setgroups,
    // setresgid, setresuid); errors are plain errno values.
    unsafe {
        command.pre_exec(apply);
    }
}

/// For the agent's proxy, which is no service but binds ports 80 and 443:
/// of the capabilities the systemd unit gives the agent (to switch users and
/// hand files to them), it keeps CAP_NET_BIND_SERVICE only. An agent without
/// capabilities passes none; a root agent's proxy is root's, as before.
#[allow(unsafe_code)]
pub fn bind_capability_only(command: &mut Command) {
    let apply = || -> io::Result<()> {
        if rustix::process::geteuid().is_root() {
            return Ok(());
        }
        let mut sets = capabilities(None)?;
        let bind = sets.permitted & CapabilitySet::NET_BIND_SERVICE;
        match clear_ambient_capability_set() {
            Ok(()) => {}
            // No ambient set (before 4.3): nothing passes to the proxy anyway.
            Err(Errno::INVAL) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        sets.inheritable = bind;
        set_capabilities(None, sets)?;
        if !bind.is_empty() {
            configure_capability_in_ambient_set(CapabilitySet::NET_BIND_SERVICE, true)?;
        }
        Ok(())
    };
    // SAFETY: as in `confine`: system calls only, between fork and exec.
    unsafe {
        command.pre_exec(apply);
    }
}

/// Drops every capability from the bounding set. That takes CAP_SETPCAP: a
/// caller without it cannot switch users either, so unless a switch was
/// asked for, EPERM means there is nothing to drop from.
fn clear_bounding_set(required: bool) -> io::Result<()> {
    for bit in 0..64 {
        match remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << bit)) {
            Ok(()) => {}
            // Past the kernel's last capability.
            Err(Errno::INVAL) => return Ok(()),
            Err(Errno::PERM) if !required => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether this process may run services as other users: it holds what
/// [`confine`] and the agent's file ownership changes need.
pub fn can_switch_users() -> bool {
    let needed = CapabilitySet::SETUID
        | CapabilitySet::SETGID
        | CapabilitySet::SETPCAP
        | CapabilitySet::CHOWN;
    capabilities(None).is_ok_and(|sets| sets.effective.contains(needed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/self/status` fields of a confined `/bin/sh`.
    fn status_of(confinement: &Confinement) -> String {
        let mut command = Command::new("/bin/sh");
        command.args([
            "-c",
            "grep -E '^(Uid|Gid|Groups|NoNewPrivs|CapBnd|CapEff|CapPrm):' /proc/self/status; umask",
        ]);
        confine(&mut command, confinement);
        let out = command.output().expect("run /bin/sh");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
    }

    #[test]
    fn a_confined_child_has_no_capabilities_and_no_new_privileges() {
        let status = status_of(&Confinement::default());
        assert_eq!(field(&status, "NoNewPrivs"), "1");
        assert_eq!(field(&status, "CapEff"), "0000000000000000");
        assert_eq!(field(&status, "CapPrm"), "0000000000000000");
        if can_switch_users() {
            assert_eq!(field(&status, "CapBnd"), "0000000000000000");
        }
        assert!(status.trim_end().ends_with("0022"), "{status}");
    }

    #[test]
    fn a_confined_child_runs_as_the_service_user_when_the_caller_may_switch() {
        if !can_switch_users() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let user = ServiceUser {
            uid: 1_900_123_456,
            gid: 1_900_123_457,
            groups: vec![1_900_000_000],
        };
        let status = status_of(&Confinement {
            user: Some(user),
            keep_capabilities: false,
        });
        assert!(field(&status, "Uid").starts_with("1900123456\t1900123456\t1900123456"));
        assert!(field(&status, "Gid").starts_with("1900123457\t1900123457\t1900123457"));
        assert_eq!(field(&status, "Groups"), "1900000000");
        assert_eq!(field(&status, "CapBnd"), "0000000000000000");
    }

    #[test]
    fn run_as_root_keeps_capabilities_but_not_new_privileges() {
        if !can_switch_users() {
            eprintln!("skipped: needs root");
            return;
        }
        let status = status_of(&Confinement {
            user: None,
            keep_capabilities: true,
        });
        assert_ne!(field(&status, "CapEff"), "0000000000000000");
        assert_eq!(field(&status, "NoNewPrivs"), "1");
    }
}
