//! The agent's user as `gantry agent exec` finds it when root runs it: the
//! owner of the state directory, with the group and supplementary groups of
//! its passwd entry. Root becomes that user before it trusts anything the
//! agent says (keeping only what it takes to confine the command as the
//! service), and runs the command in a session of its own.
//!
//! This module must never take an identity from anything but the owner's
//! passwd entry (a directory's group says nothing about its owner), nor let
//! a command that root started for another user keep root's controlling
//! terminal: that user could ptrace the command and push keystrokes into
//! root's shell (TIOCSTI), or read the terminal after the command ends.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};

use gantry_core::Error;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::{Gid, Pid, Uid, User, geteuid, initgroups, setgid, setuid};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// The signals a terminal or a supervisor sends to stop a command: passed
/// on to a command in its own session, which no longer receives them.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The user the agent of a state directory runs as.
#[derive(Debug)]
pub struct AgentUser {
    pub uid: u32,
    gid: u32,
    name: CString,
}

impl AgentUser {
    /// The owner of `state_dir`, as its passwd entry describes it; none is
    /// refused (there is no group to take but a guess).
    pub fn owner_of(state_dir: &Path) -> Result<AgentUser, Error> {
        let uid = std::fs::metadata(state_dir)
            .map_err(|e| {
                failed(format!(
                    "cannot read the owner of {}: {e}",
                    state_dir.display()
                ))
            })?
            .uid();
        let entry = User::from_uid(Uid::from_raw(uid))
            .map_err(|e| failed(format!("cannot read the passwd entry of uid {uid}: {e}")))?
            .ok_or_else(|| Error::Exec {
                refused: true,
                message: format!(
                    "{} is owned by uid {uid}, which has no passwd entry",
                    state_dir.display()
                ),
                hint: Some(
                    "the state directory belongs to the user the agent runs as: give it to that user (chown -R)".to_owned(),
                ),
            })?;
        let name = CString::new(entry.name)
            .map_err(|_| failed(format!("the name of uid {uid} contains a NUL byte")))?;
        Ok(AgentUser {
            uid,
            gid: entry.gid.as_raw(),
            name,
        })
    }

    /// Root becomes this user (supplementary groups, group, then user);
    /// anyone else, or for root itself, nothing changes. Whether it did.
    ///
    /// Root keeps, as this user, only what confining the command as the
    /// service takes ([`CONFINING`], the systemd unit's agent holds them
    /// too): no capability to read or write what the user cannot. Call
    /// [`drop_capabilities`] if the command is not to be confined.
    pub fn become_from_root(&self) -> Result<bool, Error> {
        if !geteuid().is_root() || self.uid == 0 {
            return Ok(false);
        }
        let gid = Gid::from_raw(self.gid);
        let drop = || -> io::Result<()> {
            initgroups(&self.name, gid)?;
            setgid(gid)?;
            // One thread here: the flag and the sets are per thread.
            rustix::thread::set_keep_capabilities(true)?;
            setuid(Uid::from_raw(self.uid))?;
            rustix::thread::set_keep_capabilities(false)?;
            keep_only(CONFINING)
        };
        match drop() {
            Ok(()) if geteuid().as_raw() == self.uid => Ok(true),
            Ok(()) => Err(failed(format!("still not uid {} after setuid", self.uid))),
            Err(e) => Err(failed(format!(
                "cannot become uid {}, the state directory's owner: {e}",
                self.uid
            ))),
        }
    }
}

/// What [`crate::process::confine`] takes to make a command a service's
/// user: CAP_SETUID, CAP_SETGID and CAP_SETPCAP (the bounding set).
pub const CONFINING: CapabilitySet = CapabilitySet::SETUID
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETPCAP);

/// Whether this process may confine a command as another user.
pub fn may_confine() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|sets| sets.effective.contains(CONFINING))
}

/// Gives up every capability this process (one thread) holds.
pub fn drop_capabilities() -> Result<(), Error> {
    keep_only(CapabilitySet::empty())
        .map_err(|e| failed(format!("cannot give up capabilities: {e}")))
}

fn keep_only(kept: CapabilitySet) -> io::Result<()> {
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: kept,
            permitted: kept,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

fn failed(message: String) -> Error {
    Error::Exec {
        refused: false,
        message,
        hint: None,
    }
}

/// Runs `command` to its end: its exit code, or 128 + the signal that
/// ended it, as a shell reports it.
///
/// `own_session`: the command starts a new session (setsid), so it has no
/// controlling terminal; its stdio stay as they are. The signals a terminal
/// would have sent it reach this process instead and are passed on. Call it
/// with this process single-threaded: another thread would take the signals.
pub fn run(mut command: Command, own_session: bool) -> io::Result<i32> {
    let status = if own_session {
        in_own_session(&mut command)?
    } else {
        command.status()?
    };
    Ok(exit_code(status))
}

pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

#[allow(unsafe_code)]
fn in_own_session(command: &mut Command) -> io::Result<ExitStatus> {
    let mut forwarded = SigSet::empty();
    for signal in FORWARDED {
        forwarded.add(signal);
    }
    // Blocked here, and so in the forwarding thread started below, they
    // wait for its `sigwait` instead of ending this process. The child
    // inherits the mask: it gets this thread's former one back.
    let before = forwarded.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    // SAFETY: runs in the child between fork and exec; setsid(2) and
    // rt_sigprocmask(2) are async-signal-safe system calls; no allocation,
    // no lock (`before` is a plain copy).
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&before), None)?;
            Ok(())
        });
    }
    let result = command.spawn().and_then(|mut child| {
        let pid = rustix::process::Pid::from_child(&child);
        // A pidfd names this child even once it is reaped (its pid may be
        // reused by then); kernels before 5.3 have none: the pid it is.
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
        std::thread::Builder::new()
            .name("exec-signals".to_owned())
            .spawn(move || {
                while let Ok(signal) = forwarded.wait() {
                    let _ = match (
                        &pidfd,
                        rustix::process::Signal::from_named_raw(signal as i32),
                    ) {
                        (Some(fd), Some(signal)) => {
                            rustix::process::pidfd_send_signal(fd, signal).map_err(io::Error::from)
                        }
                        _ => kill(Pid::from_raw(pid.as_raw_nonzero().get()), signal)
                            .map_err(io::Error::from),
                    };
                }
            })?;
        child.wait()
    });
    before.thread_set_mask()?;
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_command_ended_by_a_signal_exits_with_128_plus_its_number() {
        let mut command = Command::new("sh");
        command.args(["-c", "kill -TERM $$"]);
        assert_eq!(run(command, true).unwrap(), 128 + 15);
        let mut command = Command::new("sh");
        command.args(["-c", "exit 3"]);
        assert_eq!(run(command, false).unwrap(), 3);
    }

    #[test]
    fn a_command_in_its_own_session_has_no_controlling_terminal() {
        let mut command = Command::new("sh");
        // The session's id is the command's own pid: it leads a new one.
        command.args(["-c", "test \"$(ps -o sid= -p $$)\" -eq $$"]);
        assert_eq!(run(command, true).unwrap(), 0);
    }
}
