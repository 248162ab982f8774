//! Which transport reaches a host, as gantry.toml says it is reached: this
//! machine's agent over its socket, another's over ssh. What the binary
//! wires into the CLI.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gantry_core::config::resolve::{Host as HostSpec, Reach};
use gantry_core::host::{Host, HostError};

use crate::{LocalAgent, Shell, SshAgent, SshOptions};

/// Connects to `host`'s agent; on this machine on `state_dir`, starting the
/// agent first when `start` and none answers.
pub fn connect(host: &HostSpec, state_dir: &Path, start: bool) -> Result<Box<dyn Host>, HostError> {
    let name = host.name.as_str();
    match &host.reach {
        Reach::Local => {
            let agent = if start {
                LocalAgent::connect_or_start(name, state_dir, &exe(name)?)?
            } else {
                LocalAgent::connect(name, state_dir)?
            };
            Ok(Box::new(agent))
        }
        Reach::Ssh { target } => Ok(Box::new(SshAgent::connect(name, target, ssh_options())?)),
        Reach::Provider { provider } => Err(HostError::Unreachable {
            host: name.to_owned(),
            message: format!(
                "host `{name}` comes from {provider:?}, which Gantry cannot create yet"
            ),
            hint: "give it an `ssh` address in [hosts] once the server exists".to_owned(),
        }),
    }
}

/// This machine's agent on `state_dir`, checked to be served by `uid`
/// (`gantry agent exec`).
pub fn connect_served_by(state_dir: &Path, uid: u32) -> Result<Box<dyn Host>, HostError> {
    Ok(Box::new(LocalAgent::connect_served_by(
        "local",
        state_dir,
        Some(uid),
    )?))
}

/// A shell on `host` over ssh.
pub fn open_shell(host: &HostSpec) -> Result<Box<dyn gantry_core::host::Shell>, HostError> {
    match &host.reach {
        Reach::Ssh { target } => Ok(Box::new(Shell::new(&host.name, target, ssh_options())?)),
        _ => Err(HostError::Unreachable {
            host: host.name.clone(),
            message: format!("host `{}` has no ssh address", host.name),
            hint: format!("give it one: [hosts.{}] ssh = \"user@address\"", host.name),
        }),
    }
}

/// How this process runs `ssh`, decided once; when no safe directory for
/// shared connections exists, a warning says so once.
fn ssh_options() -> &'static SshOptions {
    static OPTIONS: OnceLock<SshOptions> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let options = SshOptions::from_env();
        if let Some(why) = &options.unshared {
            eprintln!(
                "warning: SSH connections are not shared (each command logs in anew): no private directory for their sockets: {why}"
            );
        }
        options
    })
}

fn exe(name: &str) -> Result<PathBuf, HostError> {
    std::env::current_exe().map_err(|e| HostError::Unreachable {
        host: name.to_owned(),
        message: format!("cannot find the gantry binary to start the agent: {e}"),
        hint: "start it yourself with `gantry agent`".to_owned(),
    })
}
