//! Reaching agents. Today: the agent of this machine, over its Unix socket,
//! started in the background on first use. The SSH transport will implement
//! the same `gantry_core::host::Host` trait.

mod client;
mod local;

pub use local::LocalAgent;
