//! This machine's agent, as `gantry agent stop` and `gantry proxy
//! restart|stop` reach it: on its state directory, never started for the
//! asking.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Error;
use crate::agent_api::{ProxyAction, ProxyInfo};
use crate::host::{AGENT_UNIT, AGENT_UNIT_FILE, Host, HostError, SYSTEM_STATE_DIR};

/// Connects to this machine's agent if one runs; never starts one.
pub type Connect<'a> = &'a dyn Fn() -> Result<Box<dyn Host>, HostError>;

#[derive(Debug, Serialize)]
pub struct AgentStopped {
    pub state_dir: PathBuf,
    /// Whether an agent ran there and was stopped.
    pub stopped: bool,
    /// Where systemd runs the host's agent: what to do instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `gantry agent stop`: stops the agent of `state_dir`; its services keep
/// running. On a host configured as root, systemd runs the agent of the
/// system state directory: stopping it by hand would only have systemd
/// start it again, so that one is left to systemctl, and the report says so.
pub fn stop(state_dir: &Path, connect: Connect<'_>) -> Result<AgentStopped, Error> {
    let unit = Path::new(AGENT_UNIT_FILE).exists();
    let systemds = unit && state_dir == Path::new(SYSTEM_STATE_DIR);
    let stopped = !systemds
        && match connect() {
            Ok(agent) => {
                agent.shutdown()?;
                true
            }
            Err(HostError::Unreachable { .. }) => false,
            Err(other) => return Err(other.into()),
        };
    let note = (unit && !stopped).then(|| {
        format!(
            "systemd runs this host's agent (unit {AGENT_UNIT}): `systemctl stop {AGENT_UNIT}` stops it, `systemctl start {AGENT_UNIT}` starts it again"
        )
    });
    Ok(AgentStopped {
        state_dir: state_dir.to_owned(),
        stopped,
        note,
    })
}

/// What `gantry proxy restart` and `gantry proxy stop` did.
#[derive(Debug, Serialize)]
pub struct ProxyReport {
    #[serde(skip)]
    pub action: ProxyAction,
    #[serde(flatten)]
    pub info: ProxyInfo,
}

/// `gantry proxy restart|stop`: asks the agent to replace or stop its proxy.
pub fn proxy(action: ProxyAction, connect: Connect<'_>) -> Result<ProxyReport, Error> {
    let info = connect()?.proxy(action)?;
    Ok(ProxyReport { action, info })
}
