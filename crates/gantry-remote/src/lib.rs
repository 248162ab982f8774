//! Reaching agents: the agent of this machine over its Unix socket (started
//! on demand), and agents of other hosts over the user's own OpenSSH client,
//! `ssh HOST gantry agent connect` carrying the same HTTP API. Both implement
//! `gantry_core::host::Host` through `Agent<T>`.

mod agent;
mod bridge;
mod client;
mod control_dir;
mod local;
mod reach;
mod ssh;
mod trace;

pub use agent::{Agent, Transport};
pub use bridge::agent_connect;
pub use local::{Local, LocalAgent};
pub use reach::{connect, connect_served_by, open_shell};
pub use ssh::{Shell, Ssh, SshAgent, SshOptions, classify};
