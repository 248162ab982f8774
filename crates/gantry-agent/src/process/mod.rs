//! The process driver: starts a service instance under a relay, finds it
//! again by pid and start time, stops its process group, limits it with
//! cgroups, and reads the logs its relay writes.
//!
//! Services outlive the agent. The agent never holds a service's pipes: each
//! instance runs under a relay (`gantry agent relay --spec FILE`, see
//! [`relay_main`]) in its own session, which copies the service's output to
//! rotated log files and records its pid and its exit in `run_dir`. A
//! restarted agent re-adopts instances from those files.
//!
//! This module must never: signal a pid without checking its start time (pids
//! are reused), signal the agent's own process group, or write a secret value
//! anywhere (not in a log, pid, exit or error file, nor in an error message).

mod cgroup;
mod confine;
mod launch;
mod logs;
mod procfs;
pub(crate) mod relay;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use gantry_core::agent_api::Exit;
use gantry_core::clock::now_ms;
use gantry_core::file::write_atomic;
use serde::{Deserialize, Serialize};

pub use cgroup::{Cgroup, CgroupError, CgroupMode, Cgroups, ResourceLimits};
pub use confine::{Confinement, ServiceUser, bind_capability_only, can_switch_users, confine};
pub use launch::launch;
pub(crate) use logs::rotate as rotate_log;
pub use logs::{LogCursor, read_log};
pub(crate) use logs::{LogWriter, MAX_LINE};
pub use procfs::{StopOutcome, is_running, rss_bytes, start_time, stop};
pub use relay::{relay_main, secret_values};

/// Everything a relay needs to start one instance. Written by the agent to a
/// 0600 file the relay reads and deletes; secret values are not in it, only
/// the file they are read from and the names to pick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The instance id; names the pid, exit and log files, so no `/`.
    pub instance: String,
    /// Run as `/bin/sh -c <command>`.
    pub command: String,
    pub cwd: PathBuf,
    /// The service's whole environment: nothing else is inherited.
    pub env: BTreeMap<String, String>,
    /// `NAME=value` lines; only `secret_names` are taken from it.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_names: Vec<String>,
    pub log_dir: PathBuf,
    /// Rotate `<instance>.log` when it reaches this size; 0 never rotates.
    pub log_max_bytes: u64,
    /// How many rotated files (`.1` the newest) to keep besides the live one.
    pub log_keep: u32,
    /// Where `<instance>.pid` and `<instance>.exit` are written.
    pub run_dir: PathBuf,
    /// The cgroup the service joins before it execs, if limits are enforced.
    #[serde(default)]
    pub cgroup: Option<Cgroup>,
    /// Who the service runs as and what it may still do.
    #[serde(default)]
    pub confinement: Confinement,
}

/// A started instance: the contents of `<run_dir>/<instance>.pid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    /// The service's process, leader of its own process group.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`, so a reused pid is never mistaken for it.
    pub start_time: u64,
    pub relay_pid: u32,
}

/// The pid file holds exactly what [`launch`] returns.
pub type PidFile = Launched;

/// The pid file the relay of `instance` wrote, if any.
pub fn read_pid_file(run_dir: &Path, instance: &str) -> Option<PidFile> {
    let text = std::fs::read(run_file(run_dir, instance, RunFile::Pid)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// How `instance` ended, once its relay has recorded it.
pub fn read_exit(run_dir: &Path, instance: &str) -> Option<Exit> {
    let text = std::fs::read(run_file(run_dir, instance, RunFile::Exit)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Every pid file in `run_dir`, by instance: the relays a restarted agent
/// can find again.
pub fn pid_files(run_dir: &Path) -> Vec<(String, PidFile)> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PidFile)> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let instance = name
                .strip_suffix(".pid")
                .filter(|i| check_instance(i).is_ok())?;
            Some((instance.to_owned(), read_pid_file(run_dir, instance)?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Removes the pid, exit and error files of an instance that is gone.
pub fn clear_run_files(run_dir: &Path, instance: &str) {
    for kind in [RunFile::Pid, RunFile::Exit, RunFile::Error, RunFile::Spec] {
        let _ = std::fs::remove_file(run_file(run_dir, instance, kind));
    }
}

#[derive(Clone, Copy, Debug)]
enum RunFile {
    Spec,
    Pid,
    Exit,
    /// Why the relay could not start the service (no secret values in it).
    Error,
}

fn run_file(run_dir: &Path, instance: &str, kind: RunFile) -> PathBuf {
    let ext = match kind {
        RunFile::Spec => "spec.json",
        RunFile::Pid => "pid",
        RunFile::Exit => "exit",
        RunFile::Error => "error",
    };
    run_dir.join(format!("{instance}.{ext}"))
}

/// Instance ids become file names, so they must stay inside their directory.
fn check_instance(instance: &str) -> io::Result<()> {
    let bad = instance.is_empty()
        || instance.starts_with('.')
        || instance.contains(['/', '\0'])
        || instance.len() > 200;
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid instance id `{}`", instance.escape_debug()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_that_would_escape_the_run_dir_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\0b"] {
            assert!(check_instance(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_instance("web-r3-1-00af").is_ok());
    }

    #[test]
    fn pid_and_exit_files_read_back_and_garbage_reads_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let launched = Launched {
            pid: 42,
            start_time: 7,
            relay_pid: 41,
        };
        let json = serde_json::to_vec(&launched).expect("json");
        write_atomic(&run_file(dir.path(), "a", RunFile::Pid), &json, 0o644).expect("write");
        assert_eq!(read_pid_file(dir.path(), "a"), Some(launched));
        std::fs::write(run_file(dir.path(), "a", RunFile::Exit), b"{not json").expect("write");
        assert_eq!(read_exit(dir.path(), "a"), None);
        assert_eq!(read_pid_file(dir.path(), "missing"), None);
        std::fs::write(dir.path().join(".b.pid.123.tmp"), &json).expect("write");
        assert_eq!(pid_files(dir.path()), [("a".to_owned(), launched)]);
        clear_run_files(dir.path(), "a");
        assert_eq!(read_pid_file(dir.path(), "a"), None);
    }
}
