//! What backups need of the engine: where a named volume's files are, and a
//! command run inside a container with a file as its stdin and its stdout
//! written to a file (a database's dump and restore tools), killed when it
//! outlives its time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::engine::Engine;
use super::{ContainerError, is_not_found};
use crate::output_tail::OutputTail;

/// The most of a piped command's stderr kept, for its error.
const STDERR_MAX: usize = 8 * 1024;

/// How a piped command ended.
#[derive(Debug)]
pub struct Piped {
    /// None when it was killed at its time limit, or the engine knows none.
    pub exit_code: Option<i64>,
    /// Killed at its time limit.
    pub timed_out: bool,
    /// The end of its stderr.
    pub stderr: String,
}

impl Engine {
    /// Creates and starts `command` in `container`, attached to its output
    /// (and its input when `stdin`): the exec's id and its streams.
    pub(super) async fn start_exec(
        &self,
        container: &str,
        command: &[String],
        stdin: bool,
    ) -> Result<(String, StartExecResults), ContainerError> {
        let config = ExecConfig {
            cmd: Some(command.to_vec()),
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(container, config)
            .await
            .map_err(|e| ContainerError::engine("exec in", container, e))?;
        let started = self
            .docker
            .start_exec(&exec.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| ContainerError::engine("exec in", container, e))?;
        Ok((exec.id, started))
    }

    /// The directory on this host that holds a named volume's files, or
    /// `None` when there is no such volume.
    pub async fn volume_mountpoint(&self, name: &str) -> Result<Option<PathBuf>, ContainerError> {
        match self.docker.inspect_volume(name).await {
            Ok(volume) => Ok(Some(PathBuf::from(volume.mountpoint))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ContainerError::engine("inspect volume", name, e)),
        }
    }

    /// Runs `command` in the running `container`, its stdin read from
    /// `stdin` (else none) and its stdout written to `stdout` (else
    /// dropped), and kills it if it runs longer than `limit`.
    pub async fn exec_piped(
        &self,
        container: &str,
        command: &[String],
        stdin: Option<&Path>,
        stdout: Option<&Path>,
        limit: Duration,
    ) -> Result<Piped, ContainerError> {
        let io = |e: std::io::Error| ContainerError::Engine {
            action: "exec in",
            target: container.to_owned(),
            message: e.to_string(),
        };
        let (exec, started) = self.start_exec(container, command, stdin.is_some()).await?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(ContainerError::Engine {
                action: "exec in",
                target: container.to_owned(),
                message: "the engine ran the command detached".to_owned(),
            });
        };
        let feed = async {
            if let Some(path) = stdin {
                let mut file = tokio::fs::File::open(path).await?;
                let mut buffer = vec![0u8; 256 * 1024];
                loop {
                    let n = file.read(&mut buffer).await?;
                    if n == 0 {
                        break;
                    }
                    input.write_all(&buffer[..n]).await?;
                }
                input.flush().await?;
            }
            input.shutdown().await
        };
        let mut out = match stdout {
            Some(path) => Some(tokio::fs::File::create(path).await.map_err(io)?),
            None => None,
        };
        let mut stderr = OutputTail::new(STDERR_MAX);
        let drain = async {
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(LogOutput::StdOut { message }) => {
                        if let Some(out) = out.as_mut() {
                            out.write_all(&message).await?;
                        }
                    }
                    Ok(LogOutput::StdErr { message }) => stderr.push(&message),
                    Ok(_) => {}
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
            if let Some(out) = out.as_mut() {
                out.sync_all().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let Ok((fed, drained)) =
            tokio::time::timeout(limit, async { tokio::join!(feed, drain) }).await
        else {
            self.kill_exec(container, &exec).await?;
            return Ok(Piped {
                exit_code: None,
                timed_out: true,
                stderr: stderr.into_text().trim().to_owned(),
            });
        };
        drained.map_err(io)?;
        // A command that exits before reading all of its input breaks the
        // pipe: its exit code says more than the write's error.
        let inspected = self
            .docker
            .inspect_exec(&exec)
            .await
            .map_err(|e| ContainerError::engine("inspect exec in", container, e))?;
        if inspected.exit_code == Some(0) {
            fed.map_err(io)?;
        }
        Ok(Piped {
            exit_code: inspected.exit_code,
            timed_out: false,
            stderr: stderr.into_text().trim().to_owned(),
        })
    }

    /// Kills an exec's process. From this host when the agent may signal
    /// it; else (the agent is not root, the process is the container's
    /// root) from inside the container, as the exec's user, by its pid
    /// there.
    pub(super) async fn kill_exec(
        &self,
        container: &str,
        exec: &str,
    ) -> Result<(), ContainerError> {
        let inspected = self
            .docker
            .inspect_exec(exec)
            .await
            .map_err(|e| ContainerError::engine("inspect exec in", container, e))?;
        if inspected.running != Some(true) {
            return Ok(());
        }
        let Some(pid) = inspected
            .pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Ok(());
        };
        if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
            return Ok(());
        }
        // The last of `NSpid:` is its pid in the container's namespace.
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.as_raw_nonzero()))
            .unwrap_or_default();
        let inside = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last())
            .and_then(|id| id.parse::<u32>().ok());
        let Some(inside) = inside else {
            return Err(ContainerError::Engine {
                action: "kill exec in",
                target: container.to_owned(),
                message: format!("cannot find process {} to kill it", pid.as_raw_nonzero()),
            });
        };
        let kill = [
            "sh".to_owned(),
            "-c".to_owned(),
            format!("kill -KILL {inside}"),
        ];
        let (_, started) = self.start_exec(container, &kill, false).await?;
        if let StartExecResults::Attached { mut output, .. } = started {
            while output.next().await.is_some() {}
        }
        Ok(())
    }
}
