//! `gantry agent connect`: this process's stdin and stdout become a
//! connection to the agent's Unix socket. Run by `ssh HOST gantry agent
//! connect`, it lets a CLI anywhere speak the agent API through the user's
//! own SSH, so no agent port is ever exposed on the network.

use std::path::Path;
use std::time::Duration;

use gantry_core::agent_dir::Paths;
use gantry_core::host::HostError;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::LocalAgent;

/// How long `gantry agent connect` waits for a systemd unit's agent, which
/// may be starting or restarting (`RestartSec=1`).
const UNIT_PATIENCE: Duration = Duration::from_secs(10);

/// `gantry agent connect`: starts this machine's agent (this gantry binary)
/// if none runs or, when systemd runs it as `unit`, waits for it;
/// then bridges stdin and stdout to its socket. Every error is
/// [`HostError::Unreachable`], its message and hint meant for the CLI on the
/// other end of SSH, which names the host itself.
pub fn agent_connect(state_dir: &Path, unit: Option<&str>) -> Result<(), HostError> {
    let paths = Paths::new(state_dir);
    let hint = match unit {
        Some(unit) => format!(
            "systemd runs it on this host: see `systemctl status {unit}` and `journalctl -u {unit}`"
        ),
        None => format!("see {} on this host", paths.agent_log().display()),
    };
    let failed = |message: String| HostError::Unreachable {
        host: "local".to_owned(),
        message,
        hint: hint.clone(),
    };
    match unit {
        // Starting another agent here would run it as whoever connected,
        // beside the unit's: never.
        Some(unit) => wait_for_unit(state_dir, unit, &failed)?,
        None => {
            let exe = std::env::current_exe().map_err(|e| {
                failed(format!(
                    "cannot find the gantry binary to start the agent: {e}"
                ))
            })?;
            LocalAgent::connect_or_start("local", state_dir, &exe)
                .map_err(|e| failed(e.to_string()))?;
        }
    }
    bridge(&paths.socket()).map_err(|e| failed(e.to_string()))
}

fn wait_for_unit(
    state_dir: &Path,
    unit: &str,
    failed: &dyn Fn(String) -> HostError,
) -> Result<(), HostError> {
    // Only root (and the unit's own user) may open its state directory:
    // waiting would not change that.
    if let Err(e) = std::fs::read_dir(state_dir)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(HostError::Unreachable {
            host: "local".to_owned(),
            message: format!(
                "systemd runs this host's agent (unit {unit}) with its state in {}, which this user cannot open",
                state_dir.display()
            ),
            hint: "reach this host as root (`User root` for it in your ssh config)".to_owned(),
        });
    }
    LocalAgent::wait_for("local", state_dir, UNIT_PATIENCE).map_err(|e| {
        let why = match &e {
            HostError::Unreachable { message, .. } => message.clone(),
            other => other.to_string(),
        };
        failed(format!(
            "the agent of the systemd unit {unit} does not answer on {} after {}s: {why}",
            Paths::new(state_dir).socket().display(),
            UNIT_PATIENCE.as_secs()
        ))
    })?;
    Ok(())
}

/// Copies stdin to the socket and the socket to stdout until the agent
/// closes the connection (or stdin ends and the agent has answered).
fn bridge(socket: &Path) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot connect to the agent at {}: {e}", socket.display()),
            )
        })?;
        let (mut from_agent, mut to_agent) = stream.into_split();
        let mut stdin = tokio::io::stdin();
        let mut stdout = tokio::io::stdout();
        let upstream = async {
            let copied = tokio::io::copy(&mut stdin, &mut to_agent).await;
            // The client is done sending: let the agent see the end.
            let _ = to_agent.shutdown().await;
            copied
        };
        let downstream = async {
            let copied = tokio::io::copy(&mut from_agent, &mut stdout).await;
            let _ = stdout.flush().await;
            copied
        };
        tokio::pin!(upstream, downstream);
        // The agent closing the connection ends the bridge, whatever stdin
        // does; stdin ending first still waits for the agent's answer.
        tokio::select! {
            result = &mut downstream => result.map(drop),
            result = &mut upstream => {
                result?;
                downstream.await.map(drop)
            }
        }
    })
}
