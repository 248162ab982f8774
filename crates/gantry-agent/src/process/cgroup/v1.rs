//! cgroup v1: each controller has its own hierarchy, so an instance gets a
//! directory in each one it is limited by. The memory one is always made: it
//! counts OOM kills and lists the instance's processes.

use std::path::{Path, PathBuf};

use super::{Cgroup, CgroupError, CgroupMode, ResourceLimits, cpu_quota, mkdir, write};

pub(super) fn create(
    memory: &Path,
    cpu: Option<&Path>,
    pids: Option<&Path>,
    name: &str,
    limits: &ResourceLimits,
) -> Result<Cgroup, CgroupError> {
    if limits.cpu.is_some() && cpu.is_none() {
        return Err(CgroupError::Unsupported { controller: "cpu" });
    }
    if limits.pids.is_some() && pids.is_none() {
        return Err(CgroupError::Unsupported { controller: "pids" });
    }
    let mut dirs = Vec::new();
    if let Err(e) = create_dirs(memory, cpu, pids, name, limits, &mut dirs) {
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(e);
    }
    let memory_dir = dirs.first().cloned();
    Ok(Cgroup {
        mode: CgroupMode::V1,
        dirs,
        memory_dir,
    })
}

/// Makes the directories, pushing each onto `made` so a failure can undo them.
fn create_dirs(
    memory: &Path,
    cpu: Option<&Path>,
    pids: Option<&Path>,
    name: &str,
    limits: &ResourceLimits,
    made: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    let mut make = |hierarchy: &Path| -> Result<PathBuf, CgroupError> {
        let dir = hierarchy.join("gantry").join(name);
        mkdir(&dir)?;
        made.push(dir.clone());
        Ok(dir)
    };
    let dir = make(memory)?;
    if let Some(bytes) = limits.memory {
        write(&dir, "memory.limit_in_bytes", &bytes.to_string())?;
        // Memory plus swap, where swap accounting is on; else no swapping at
        // all, so a service over its limit is stopped rather than swapped.
        if dir.join("memory.memsw.limit_in_bytes").exists() {
            write(&dir, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
        } else if dir.join("memory.swappiness").exists() {
            write(&dir, "memory.swappiness", "0")?;
        }
    }
    if let (Some(cores), Some(hierarchy)) = (limits.cpu, cpu) {
        let dir = make(hierarchy)?;
        let (quota, period) = cpu_quota(cores);
        write(&dir, "cpu.cfs_period_us", &period.to_string())?;
        write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
    }
    if let (Some(max), Some(hierarchy)) = (limits.pids, pids) {
        let dir = make(hierarchy)?;
        write(&dir, "pids.max", &max.to_string())?;
    }
    Ok(())
}
