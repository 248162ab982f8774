//! Resource limits with cgroups: v2 where `/sys/fs/cgroup` is cgroup2, v1
//! where the controllers have their own hierarchies, none where neither is
//! writable. Instance cgroups live under the agent's own, in `gantry/<name>`.
//! This file only writes cgroup files; processes join a cgroup from the relay
//! (before they exec), and nothing here runs when limits are not enforced.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

mod v1;
mod v2;

/// How limits are enforced on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    V2,
    V1,
    None,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupMode::V2 => "cgroup v2",
            CgroupMode::V1 => "cgroup v1",
            CgroupMode::None => "none",
        })
    }
}

/// A service's limits. CPU is in cores (`0.5` is half of one).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceLimits {
    pub memory: Option<u64>,
    pub cpu: Option<f64>,
    pub pids: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {controller} cgroup controller is not available, so that limit cannot be enforced"
    )]
    Unsupported { controller: &'static str },
    #[error("invalid cgroup name `{0}`")]
    InvalidName(String),
}

impl CgroupError {
    /// What went wrong, as a short name for tests to match on.
    #[cfg(test)]
    pub fn code(&self) -> &'static str {
        match self {
            CgroupError::Io { .. } => "cgroup.io",
            CgroupError::Unsupported { .. } => "cgroup.unsupported",
            CgroupError::InvalidName(_) => "cgroup.invalid_name",
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError + use<> {
    let path = path.to_owned();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// CFS period for CPU limits, in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// Where this host's instance cgroups go: the agent's own cgroup, per hierarchy.
#[derive(Clone, Debug, PartialEq)]
enum Layout {
    V2 {
        own: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    None,
}

#[derive(Clone, Debug)]
pub struct Cgroups {
    layout: Layout,
}

impl Cgroups {
    /// Looks at `/sys/fs/cgroup` and `/proc/self/cgroup`; `None` mode unless
    /// the agent can create `gantry/` under its own cgroup.
    pub fn detect() -> Cgroups {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let cgroups = Cgroups {
            layout: layout(Path::new("/sys/fs/cgroup"), &own),
        };
        let base = match &cgroups.layout {
            Layout::V2 { own } => own.join("gantry"),
            Layout::V1 { memory, .. } => memory.join("gantry"),
            Layout::None => return cgroups,
        };
        match std::fs::create_dir_all(&base) {
            Ok(()) => cgroups,
            Err(_) => Cgroups {
                layout: Layout::None,
            },
        }
    }

    /// Cgroups under `root` as if it were the mount point and the agent sat
    /// in its top cgroup: for v1, `root/memory`, `root/cpu`, `root/pids`.
    #[cfg(test)]
    pub fn with_root(mode: CgroupMode, root: PathBuf) -> Cgroups {
        let layout = match mode {
            CgroupMode::V2 => Layout::V2 { own: root },
            CgroupMode::V1 => Layout::V1 {
                memory: root.join("memory"),
                cpu: Some(root.join("cpu")).filter(|p| p.is_dir()),
                pids: Some(root.join("pids")).filter(|p| p.is_dir()),
            },
            CgroupMode::None => Layout::None,
        };
        Cgroups { layout }
    }

    pub fn mode(&self) -> CgroupMode {
        match self.layout {
            Layout::V2 { .. } => CgroupMode::V2,
            Layout::V1 { .. } => CgroupMode::V1,
            Layout::None => CgroupMode::None,
        }
    }

    /// Whether limits are enforced here at all.
    pub fn enforces(&self) -> bool {
        self.mode() != CgroupMode::None
    }

    /// Creates (or reuses) the cgroup `gantry/<name>` with `limits`; `None`
    /// when limits are not enforced on this host.
    pub fn create(
        &self,
        name: &str,
        limits: &ResourceLimits,
    ) -> Result<Option<Cgroup>, CgroupError> {
        check_name(name)?;
        match &self.layout {
            Layout::None => Ok(None),
            Layout::V2 { own } => v2::create(own, name, limits).map(Some),
            Layout::V1 { memory, cpu, pids } => {
                v1::create(memory, cpu.as_deref(), pids.as_deref(), name, limits).map(Some)
            }
        }
    }

    /// The cgroup `gantry/<name>` if it exists, e.g. for an adopted instance.
    pub fn open(&self, name: &str) -> Option<Cgroup> {
        check_name(name).ok()?;
        let (mode, dirs) = match &self.layout {
            Layout::None => return None,
            Layout::V2 { own } => (CgroupMode::V2, vec![own.join("gantry").join(name)]),
            Layout::V1 { memory, cpu, pids } => (
                CgroupMode::V1,
                [Some(memory), cpu.as_ref(), pids.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|h| h.join("gantry").join(name))
                    .collect(),
            ),
        };
        let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        let memory_dir = dirs
            .first()
            .filter(|d| d.join(memory_file(mode, "current")).exists())
            .cloned();
        (!dirs.is_empty()).then_some(Cgroup {
            mode,
            dirs,
            memory_dir,
        })
    }

    /// Kills what is left in `gantry/<name>` and removes it. Best effort:
    /// a failure is logged, and the directory left for the next attempt.
    pub fn remove(&self, name: &str) {
        if let Some(cgroup) = self.open(name)
            && let Err(e) = cgroup.remove()
        {
            tracing::warn!(cgroup = name, error = %e, "cannot remove cgroup");
        }
    }
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        return Err(CgroupError::InvalidName(name.escape_debug().to_string()));
    }
    Ok(())
}

/// Reads the layout from the mount point and `/proc/self/cgroup`.
fn layout(root: &Path, proc_self_cgroup: &str) -> Layout {
    let own_path = |controller: Option<&str>| -> Option<String> {
        proc_self_cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match controller {
                None => controllers.is_empty(),
                Some(c) => controllers.split(',').any(|x| x == c),
            };
            matches.then(|| path.trim_start_matches('/').to_owned())
        })
    };
    // Inside a container the hierarchy may be mounted at the agent's own
    // cgroup, so a path that does not exist under the mount means the mount.
    let own_dir = |mount: PathBuf, rel: Option<String>| -> PathBuf {
        match rel.map(|r| mount.join(r)) {
            Some(dir) if dir.is_dir() => dir,
            _ => mount,
        }
    };
    if root.join("cgroup.controllers").is_file() {
        return Layout::V2 {
            own: own_dir(root.to_owned(), own_path(None)),
        };
    }
    let v1_mount = |controller: &str| -> Option<PathBuf> {
        let direct = root.join(controller);
        if direct.join("cgroup.procs").is_file() {
            return Some(direct);
        }
        // Co-mounted controllers, e.g. `cpu,cpuacct`.
        std::fs::read_dir(root)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.split(',').any(|c| c == controller))
                    && p.join("cgroup.procs").is_file()
            })
    };
    let dir =
        |controller: &str| v1_mount(controller).map(|m| own_dir(m, own_path(Some(controller))));
    match dir("memory") {
        Some(memory) => Layout::V1 {
            memory,
            cpu: dir("cpu"),
            pids: dir("pids"),
        },
        None => Layout::None,
    }
}

/// One instance's cgroup: a directory in v2, one per controller in v1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cgroup {
    pub mode: CgroupMode,
    /// Every directory the instance's processes join.
    pub dirs: Vec<PathBuf>,
    /// The one holding the memory controller's files, if that controller is on.
    pub memory_dir: Option<PathBuf>,
}

/// The memory controller's file for a v2 name (`current`, `events`, ...).
fn memory_file(mode: CgroupMode, v2: &str) -> String {
    match (mode, v2) {
        (CgroupMode::V1, "current") => "memory.usage_in_bytes".to_owned(),
        (CgroupMode::V1, "events") => "memory.oom_control".to_owned(),
        (_, name) => format!("memory.{name}"),
    }
}

/// The number after `key ` in a file of `key value` lines.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

impl Cgroup {
    /// How many times the kernel OOM-killed a process in this cgroup, for
    /// tests (the relay reads the counter itself).
    #[cfg(test)]
    pub fn oom_kills(&self) -> u64 {
        self.oom_kill_counter().unwrap_or(0)
    }

    /// The OOM-kill counter, `None` on kernels without one (v1 before 4.13).
    pub(crate) fn oom_kill_counter(&self) -> Option<u64> {
        let file = self
            .memory_dir
            .as_ref()?
            .join(memory_file(self.mode, "events"));
        keyed_value(&std::fs::read_to_string(file).ok()?, "oom_kill")
    }

    /// v1's count of allocations that hit the limit.
    pub(crate) fn memory_failcnt(&self) -> u64 {
        let Some(dir) = &self.memory_dir else {
            return 0;
        };
        let text = std::fs::read_to_string(dir.join("memory.failcnt")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    }

    /// Memory charged to the cgroup, in bytes: what tests see of a limit.
    #[cfg(test)]
    pub fn memory_current(&self) -> Option<u64> {
        let file = self
            .memory_dir
            .as_ref()?
            .join(memory_file(self.mode, "current"));
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The processes in the cgroup, sorted.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The files a process writes `0` to, to join this cgroup.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// SIGKILLs whatever is left in the cgroup, then removes its directories.
    pub fn remove(self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("processes {pids:?} outlived SIGKILL"),
                ));
            }
            for pid in pids.into_iter().filter_map(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // cgroupfs directories go with rmdir alone; their files are the kernel's.
        for dir in self.dirs.iter().rev() {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes one control file.
pub(super) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io_err("write", &path))
}

pub(super) fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))
}

/// CPU cores as a CFS quota per [`CPU_PERIOD`]; at least 1ms.
pub(super) fn cpu_quota(cores: f64) -> (u64, u64) {
    let quota = (cores * CPU_PERIOD as f64).round();
    let quota = if quota.is_finite() && quota >= 1000.0 {
        quota as u64
    } else {
        1000
    };
    (quota, CPU_PERIOD)
}

#[cfg(test)]
mod tests;
