//! The concrete parts the binary plugs in: the agent, the proxy, the relay,
//! and how to reach an agent or a shell. The CLI knows them only by these
//! signatures, and what they are asked to do by these options.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gantry_core::config::resolve::Host as HostSpec;
use gantry_core::host::{Host, HostError, Shell};

use crate::{Failure, ProxyListen, TrustReport};

/// Runs the agent on a state directory until it is stopped.
pub type RunAgent = fn(&Path, &AgentOptions) -> Result<(), Failure>;

/// Runs the reverse proxy on a state directory until it is stopped.
pub type RunProxy = fn(&Path, &ProxyOptions) -> Result<(), Failure>;

/// Connects to a host's agent: this machine's on a state directory
/// (starting it if asked), or another host's over SSH.
pub type Connect = fn(&HostSpec, &Path, bool) -> Result<Box<dyn Host>, HostError>;

/// Opens a shell on a host over SSH.
pub type OpenShell = fn(&HostSpec) -> Result<Box<dyn Shell>, HostError>;

pub struct Wiring {
    /// Runs this machine's agent on a state directory until it is stopped.
    pub run_agent: RunAgent,
    /// Runs the reverse proxy on a state directory until it is stopped.
    pub run_proxy: RunProxy,
    /// The local CA of the agent state directory's proxy, made if missing.
    pub local_ca: fn(&Path) -> Result<TrustReport, Failure>,
    /// Runs one instance's relay from its spec file.
    pub relay: fn(&Path) -> ExitCode,
    pub connect: Connect,
    /// `gantry agent connect`: bridges stdin and stdout to this machine's
    /// agent; with a systemd unit's name, to the agent that unit runs (never
    /// starting one). Its errors are read across SSH.
    pub bridge: fn(&Path, Option<&str>) -> Result<(), HostError>,
    /// Opens a shell on a host over SSH (configure, register, ssh).
    pub shell: OpenShell,
    /// Runs a command as a service of this machine runs: state directory,
    /// project, service, argv; the command's exit code.
    pub exec: fn(&Path, &str, &str, &[String]) -> Result<i32, gantry_core::Error>,
    /// The default state directory.
    pub default_state_dir: fn() -> PathBuf,
}

/// How `gantry agent` was asked to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// The ports it gives services; `None`: its default.
    pub ports: Option<RangeInclusive<u16>>,
    /// Where its proxy listens for HTTP and for HTTPS (`None`: its default).
    pub proxy_listen: Option<ProxyListen>,
    pub proxy_https: Option<ProxyListen>,
    /// How many `-v`: 1 logs Gantry's own debug events, 2 and more its
    /// trace events too.
    pub verbose: u8,
}

/// How `gantry proxy` was asked to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    pub listen: std::net::SocketAddr,
    /// Where HTTPS is served; `None`: plain HTTP only.
    pub https: Option<std::net::SocketAddr>,
    pub access_log: bool,
    /// Take over the listening sockets (HTTP and HTTPS) of the proxy running
    /// on the state directory instead of binding `listen` and `https`.
    pub take_over: bool,
    /// The ACME directory URL; `None`: no ACME.
    pub acme_directory: Option<String>,
    pub acme_email: Option<String>,
    pub acme_ca_root: Option<PathBuf>,
    /// TLS handshake, first bytes and HTTP/1 headers, each.
    pub client_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub max_connections: u64,
    pub max_connections_per_client: u64,
    pub trusted_proxies: Vec<gantry_proxy::TrustedProxy>,
    pub log_file: Option<PathBuf>,
    pub log_max_bytes: u64,
}
