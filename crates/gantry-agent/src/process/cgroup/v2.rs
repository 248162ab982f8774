//! cgroup v2: one directory per instance. A controller works in a cgroup only
//! when every ancestor lists it in `cgroup.subtree_control`, and a cgroup that
//! hands controllers down may hold no processes itself.

use std::path::Path;

use super::{Cgroup, CgroupError, CgroupMode, ResourceLimits, cpu_quota, io_err, mkdir, write};

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

pub(super) fn create(
    own: &Path,
    name: &str,
    limits: &ResourceLimits,
) -> Result<Cgroup, CgroupError> {
    let available: Vec<&'static str> = match std::fs::read_to_string(own.join("cgroup.controllers"))
    {
        Ok(text) => CONTROLLERS
            .into_iter()
            .filter(|c| text.split_whitespace().any(|x| x == *c))
            .collect(),
        Err(_) => CONTROLLERS.to_vec(),
    };
    let requested = [
        (limits.memory.is_some(), "memory"),
        (limits.cpu.is_some(), "cpu"),
        (limits.pids.is_some(), "pids"),
    ];
    if let Some((_, controller)) = requested
        .iter()
        .find(|(on, c)| *on && !available.contains(c))
    {
        return Err(CgroupError::Unsupported { controller });
    }
    let parent = own.join("gantry");
    mkdir(&parent)?;
    enable(own, &available, true)?;
    enable(&parent, &available, false)?;
    let dir = parent.join(name);
    mkdir(&dir)?;
    if let Err(e) = write_limits(&dir, limits) {
        let _ = std::fs::remove_dir(&dir);
        return Err(e);
    }
    let memory_dir = available.contains(&"memory").then(|| dir.clone());
    Ok(Cgroup {
        mode: CgroupMode::V2,
        dirs: vec![dir],
        memory_dir,
    })
}

fn write_limits(dir: &Path, limits: &ResourceLimits) -> Result<(), CgroupError> {
    if let Some(bytes) = limits.memory {
        write(dir, "memory.max", &bytes.to_string())?;
        // Without this a service over its limit swaps instead of being stopped.
        if dir.join("memory.swap.max").exists() {
            write(dir, "memory.swap.max", "0")?;
        }
    }
    if let Some(cores) = limits.cpu {
        let (quota, period) = cpu_quota(cores);
        write(dir, "cpu.max", &format!("{quota} {period}"))?;
    }
    if let Some(max) = limits.pids {
        write(dir, "pids.max", &max.to_string())?;
    }
    Ok(())
}

/// Turns `controllers` on for the children of `dir`, those not on already.
fn enable(dir: &Path, controllers: &[&str], evacuate: bool) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|x| x == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let value = missing.join(" ");
    match std::fs::write(&file, &value) {
        Ok(()) => Ok(()),
        Err(e) if evacuate && e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
            move_processes_to_leaf(dir)?;
            write(dir, "cgroup.subtree_control", &value)
        }
        Err(source) => Err(CgroupError::Io {
            action: "write",
            path: file,
            source,
        }),
    }
}

/// The "no internal processes" rule: the agent's own cgroup can hand
/// controllers to `gantry/` only once its processes (the agent and its
/// relays) sit in a leaf of their own, `agent/`.
fn move_processes_to_leaf(dir: &Path) -> Result<(), CgroupError> {
    let leaf = dir.join("agent");
    mkdir(&leaf)?;
    let procs = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(io_err("read", &procs))?;
    for pid in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // A process may exit meanwhile; the retried write reports what matters.
        let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
    }
    Ok(())
}
