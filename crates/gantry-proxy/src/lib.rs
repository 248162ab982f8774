//! Gantry's reverse proxy: what every request to a deployed service passes
//! through. HTTP/1.1 and HTTP/2 (h2c) on one listener, HTTPS (ALPN h2 and
//! http/1.1) on another with certificates by SNI name (`tls`: the user's,
//! ACME's, or the local CA's for `*.localhost`), WebSocket upgrades,
//! streaming bodies, routing by host and path prefix over a route table the
//! agent replaces atomically, passive health, draining; and static sites,
//! directories it serves itself (`site`).
//!
//! It runs as its own process (`gantry proxy`), so restarting the agent never
//! drops a connection. The agent drives it over a Unix socket with the
//! control API in `control`; the proxy owns that protocol and knows nothing
//! of the agent. A deploy's cutover is `PUT /v1/routes` with the new
//! upstreams, then `POST /v1/drain` with the old ones, then stopping them.
//!
//! Must never: buffer a whole body, block a worker thread, or let a request
//! see half of a route table.

pub mod acme;
mod body;
mod control;
mod dir;
mod error;
mod exchange;
mod forward;
mod forwarded;
mod handoff;
mod limits;
mod log;
mod metrics;
mod pages;
mod path;
mod pool;
mod preface;
mod route_file;
mod router;
mod server;
mod shortage;
mod site;
mod state;
mod stream_reset;
mod table;
mod tls;
mod upstream;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use control::{
    DRAIN_PATH, DrainReport, DrainRequest, HEALTH_PATH, Health, ROUTES_PATH, running_binary,
};
pub use dir::ProxyDir;
pub use error::ProxyError;
pub use forwarded::TrustedProxy;
pub use gantry_file::FileError;
pub use handoff::Listeners;
pub use limits::ClientLimits;
pub use log::{DEFAULT_MAX_BYTES as DEFAULT_LOG_MAX_BYTES, MIN_MAX_BYTES as MIN_LOG_MAX_BYTES};
pub use server::{HTTP, HTTPS, RunningProxy, start, start_on, start_with, take_over};
pub use table::{Balance, CertFiles, Route, RouteTable, StaticSite, TableError, Tls};
pub use tls::{CaError, CertError, CertStore, LocalCa, fingerprint_sha256, is_local_name};

/// How `gantry proxy` is started.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Where clients connect. Default `127.0.0.1:8080`.
    pub http: SocketAddr,
    /// Where clients connect over TLS; `None`: no HTTPS listener. Default
    /// `127.0.0.1:8443`. With one, the local CA lives in `state_dir/ca`.
    pub https: Option<SocketAddr>,
    /// The control API's Unix socket; created with mode 0600.
    pub control_socket: PathBuf,
    /// Where a new proxy process asks this one for its listeners (0600).
    pub handoff_socket: PathBuf,
    /// Start by taking over the listeners of the proxy running on
    /// `handoff_socket` (`http`, and `https` when it has one) instead of
    /// binding them (`gantry proxy --take-over`).
    pub take_over: bool,
    /// Holds `routes.json`, the last route table accepted.
    pub state_dir: PathBuf,
    /// One JSON line per request on stderr.
    pub access_log: bool,
    /// Worker threads; 0: one per CPU.
    pub workers: usize,
    pub timeouts: Timeouts,
    /// Deadlines and caps for client connections.
    pub clients: ClientLimits,
    /// Clients whose forwarding headers (`X-Forwarded-*`, `X-Real-IP`,
    /// `Forwarded`) are kept: proxies or load balancers in front. Everyone
    /// else's are replaced with what this proxy saw.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Where log lines go instead of stderr, and the size that file never
    /// passes (one rotated file, `<file>.1`, is kept). For the whole
    /// process, as stderr is: the last proxy started sets it.
    pub log_file: Option<(PathBuf, u64)>,
    /// Certificates over ACME for the routes whose `tls` is `acme`
    /// (`--acme-directory`); `None`: no ACME, challenge paths are routed.
    pub acme: Option<acme::AcmeConfig>,
    /// Told of every certificate the ACME manager loads or obtains, and of
    /// its failures (the TLS listener's certificate store is wired here).
    pub on_acme_event: Option<acme::OnIssued>,
}

impl ProxyConfig {
    /// The defaults, with the control socket at `state_dir/proxy.sock`.
    pub fn new(state_dir: impl Into<PathBuf>) -> ProxyConfig {
        let state_dir = state_dir.into();
        let dir = ProxyDir::new(&state_dir);
        ProxyConfig {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            https: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
            control_socket: dir.control_socket(),
            handoff_socket: dir.handoff_socket(),
            take_over: false,
            state_dir,
            access_log: true,
            workers: 0,
            timeouts: Timeouts::default(),
            clients: ClientLimits::default(),
            trusted_proxies: Vec::new(),
            log_file: None,
            acme: None,
            on_acme_event: None,
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("control_socket", &self.control_socket)
            .field("handoff_socket", &self.handoff_socket)
            .field("take_over", &self.take_over)
            .field("state_dir", &self.state_dir)
            .field("access_log", &self.access_log)
            .field("workers", &self.workers)
            .field("timeouts", &self.timeouts)
            .field("clients", &self.clients)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("log_file", &self.log_file)
            .field("acme", &self.acme)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// To open a connection to an upstream. One that fails is ejected.
    pub connect: Duration,
    /// From sending a request to receiving its response headers: 504 after.
    pub response: Duration,
    /// The longest pause in a response body before the proxy gives up on it.
    pub idle: Duration,
    /// On stop, how long open requests get to finish.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            shutdown: Duration::from_secs(10),
        }
    }
}

/// Runs the proxy until SIGTERM or SIGINT, then stops it gracefully: what
/// `gantry proxy` calls. Builds its own runtimes.
pub fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProxyError::Thread)?;
    // Every client connection is a descriptor, and each of its open
    // requests may hold another (`limits::shares`).
    let nofile = limits::raise_nofile();
    let proxy = if config.take_over {
        take_over(config)?
    } else {
        start(config)?
    };
    crate::log::event(&serde_json::json!({
        "event": "proxy.started",
        "pid": std::process::id(),
        "http": proxy.http_addr(),
        "https": proxy.https_addr(),
        "control_socket": proxy.control_socket(),
        "took_over_from": proxy.took_over_from(),
        "nofile": nofile,
    }));
    let mut handed_off = proxy.handed_off();
    signals.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = handed_off.wait_for(|h| *h) => {}
                }
            }
            _ => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = handed_off.wait_for(|h| *h) => {}
                }
            }
        }
    });
    proxy.stop();
    crate::log::event(&serde_json::json!({ "event": "proxy.stopped" }));
    Ok(())
}
