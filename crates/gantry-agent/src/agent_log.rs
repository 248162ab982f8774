//! The agent's own log, `agent.log` in its state directory, where the CLI
//! points the agent's stdout and stderr when it starts one. When stderr is
//! that file, tracing writes through [`AgentLog`], which rotates it by size
//! as instance logs are (`agent.log.1` the newest, up to `.<keep>`) and then
//! points stdout and stderr at the fresh file, so a panic lands there too.
//! Under systemd stderr is the journal, which keeps its own limits: nothing
//! is rotated then.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct AgentLog {
    /// `agent.log` in the state directory.
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    size: u64,
}

impl AgentLog {
    /// The agent's log, if stderr is `<state_dir>/agent.log` (the same file,
    /// not merely the same name).
    pub fn of_stderr(state_dir: &Path, max_bytes: u64, keep: u32) -> Option<AgentLog> {
        let stderr = std::fs::File::from(io::stderr().as_fd().try_clone_to_owned().ok()?);
        let ours = stderr.metadata().ok()?;
        let path = gantry_core::agent_dir::Paths::new(state_dir).agent_log();
        let named = std::fs::metadata(&path).ok()?;
        let same = ours.is_file() && ours.dev() == named.dev() && ours.ino() == named.ino();
        same.then_some(AgentLog {
            path,
            max_bytes,
            keep,
            size: ours.len(),
        })
    }

    /// Moves the full log aside and sends stdout and stderr to a new one. If
    /// that fails the agent keeps writing where it did: a log is never worth
    /// stopping the agent for.
    fn rotate(&mut self) {
        // `rotate_log` takes the directory and the name without `.log`.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self.path.file_stem().unwrap_or_default().to_string_lossy();
        crate::process::rotate_log(dir, &name, self.keep);
        let fresh = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path);
        if let Ok(file) = fresh {
            let _ = nix::unistd::dup2_stdout(&file);
            let _ = nix::unistd::dup2_stderr(&file);
        }
        self.size = 0;
    }
}

impl Write for AgentLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = io::stderr().write(buf)?;
        self.size += n as u64;
        // At a line's end only: a line is never split between two files.
        let line_end = buf[..n].ends_with(b"\n");
        if line_end && self.max_bytes > 0 && self.size >= self.max_bytes {
            self.rotate();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
