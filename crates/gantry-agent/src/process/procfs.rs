//! What `/proc` says about a process, and stopping a process group. A pid is
//! only trusted together with its start time: pids are reused, and signalling
//! a stranger is the one mistake this file exists to prevent.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp};

/// The fields of `/proc/<pid>/stat` the driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    /// Field 3: `R`, `S`, `Z`, ...
    state: char,
    /// Field 5.
    pgrp: i32,
    /// Field 22: clock ticks after boot.
    start_time: u64,
}

impl Stat {
    fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses a stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// When `pid` started, in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Whether `pid` is the process that started at `start_time` and has not exited.
pub fn is_running(pid: u32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && s.alive())
}

/// The live (not zombie) members of process group `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let Ok(pgid) = i32::try_from(pgid) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.pgrp == pgid && s.alive()))
        .collect()
}

/// Resident memory of `pid` (`VmRSS`), summed over its process group when it
/// leads one, as a service started by the relay does.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let leader = stat(pid).filter(Stat::alive)?;
    if u32::try_from(leader.pgrp).ok() == Some(pid) {
        let sizes: Vec<u64> = group_members(pid).into_iter().filter_map(vm_rss).collect();
        if !sizes.is_empty() {
            return Some(sizes.iter().sum());
        }
    }
    vm_rss(pid)
}

fn vm_rss(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How a [`stop`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing with that pid and start time was running.
    NotRunning,
    /// The process group exited after SIGTERM within the timeout.
    Exited,
    /// The group outlived the timeout and was sent SIGKILL.
    Killed,
}

/// How long SIGKILLed processes get to disappear before `stop` gives up waiting.
const KILL_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// What a stop signals: the whole group the service leads, or (if it leads
/// none, or leads ours) the process alone.
#[derive(Clone, Copy, Debug)]
enum Target {
    Group(u32),
    Process(u32, u64),
}

impl Target {
    fn gone(self) -> bool {
        match self {
            Target::Group(pgid) => group_members(pgid).is_empty(),
            Target::Process(pid, start_time) => !is_running(pid, start_time),
        }
    }

    fn signal(self, signal: Signal) {
        match self {
            // A group id stays reserved while the group has members, so this
            // cannot reach a stranger's group: only members are checked for.
            Target::Group(pgid) => {
                if let Ok(pgid) = i32::try_from(pgid)
                    && !self.gone()
                {
                    let _ = killpg(Pid::from_raw(pgid), signal);
                }
            }
            Target::Process(pid, start_time) => {
                if let Ok(raw) = i32::try_from(pid)
                    && is_running(pid, start_time)
                {
                    let _ = kill(Pid::from_raw(raw), signal);
                }
            }
        }
    }

    fn wait_gone(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.gone() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }
}

/// Stops `pid` and its process group: SIGTERM, then SIGKILL to the group if
/// anything in it is still alive after `timeout`. Blocks until done.
pub fn stop(pid: u32, start_time: u64, timeout: Duration) -> StopOutcome {
    let Some(leader) = stat(pid).filter(|s| s.start_time == start_time && s.alive()) else {
        return StopOutcome::NotRunning;
    };
    let leads_group = u32::try_from(leader.pgrp).ok() == Some(pid);
    let target = if leads_group && leader.pgrp != getpgrp().as_raw() {
        Target::Group(pid)
    } else {
        Target::Process(pid, start_time)
    };
    target.signal(Signal::SIGTERM);
    // A stopped process would never act on SIGTERM.
    target.signal(Signal::SIGCONT);
    if target.wait_gone(timeout) {
        return StopOutcome::Exited;
    }
    target.signal(Signal::SIGKILL);
    target.wait_gone(KILL_GRACE);
    StopOutcome::Killed
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// Starts `script` leading its own process group, reaped by a thread (as
    /// the relay would), and waits until the group has `members` processes.
    fn start_group(script: &str, members: usize) -> (u32, u64) {
        let child: Child = Command::new("/bin/sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let mut child = child;
        thread::spawn(move || child.wait());
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_members(pid).len() < members {
            assert!(
                Instant::now() < deadline,
                "group of {pid} never reached {members} members"
            );
            thread::sleep(POLL);
        }
        (pid, start_time(pid).expect("start time"))
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "123 (a b) c) S 1 456 456 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                pgrp: 456,
                start_time: 98765
            }
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn start_time_of_this_process_matches_proc_stat_field_22() {
        let pid = std::process::id();
        let text = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let after = &text[text.rfind(')').expect("paren") + 2..];
        let field22: u64 = after
            .split(' ')
            .nth(19)
            .expect("field")
            .parse()
            .expect("number");
        assert_eq!(start_time(pid), Some(field22));
        assert!(is_running(pid, field22));
    }

    #[test]
    fn is_running_is_false_for_a_dead_pid_and_for_a_wrong_start_time() {
        let mut child = Command::new("/bin/true").spawn().expect("spawn");
        let pid = child.id();
        let started = start_time(pid).expect("start time");
        child.wait().expect("wait");
        assert!(!is_running(pid, started));
        let me = std::process::id();
        let mine = start_time(me).expect("own start time");
        assert!(!is_running(me, mine + 1));
    }

    #[test]
    fn stop_of_a_process_that_is_not_running_reports_not_running() {
        let me = std::process::id();
        let wrong = start_time(me).expect("own start time") + 1;
        assert_eq!(
            stop(me, wrong, Duration::from_secs(1)),
            StopOutcome::NotRunning
        );
    }

    #[test]
    fn stop_terminates_a_group_that_honors_sigterm_grandchildren_included() {
        let (pid, started) = start_group("sleep 60 & sleep 60 & wait", 3);
        let members = group_members(pid);
        assert_eq!(
            stop(pid, started, Duration::from_secs(10)),
            StopOutcome::Exited
        );
        assert!(!is_running(pid, started));
        assert!(group_members(pid).is_empty(), "left behind: {members:?}");
    }

    #[test]
    fn stop_kills_a_group_that_ignores_sigterm_after_the_timeout() {
        let (pid, started) = start_group("trap '' TERM; sleep 60 & sleep 60 & wait", 3);
        let begun = Instant::now();
        assert_eq!(
            stop(pid, started, Duration::from_millis(300)),
            StopOutcome::Killed
        );
        assert!(begun.elapsed() >= Duration::from_millis(300));
        assert!(group_members(pid).is_empty());
    }

    #[test]
    fn rss_of_a_live_group_is_reported_and_of_a_dead_one_is_not() {
        let (pid, started) = start_group("sleep 60 & wait", 2);
        let rss = rss_bytes(pid).expect("rss");
        assert!(rss > 0 && rss >= vm_rss(pid).unwrap_or(0));
        stop(pid, started, Duration::from_secs(10));
        assert_eq!(rss_bytes(pid), None);
    }
}
