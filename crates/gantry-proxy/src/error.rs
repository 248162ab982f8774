use std::net::SocketAddr;
use std::path::PathBuf;

use crate::acme::AcmeError;
use crate::table::TableError;
use crate::tls::{CaError, CertError};
use gantry_file::FileError;

/// Why the proxy could not start, or could not apply a route table.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve the control socket {}", path.display())]
    ControlSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another proxy already answers on {}", path.display())]
    AlreadyRunning { path: PathBuf },
    #[error(transparent)]
    State(#[from] FileError),
    #[error("the saved routes in {} are not a valid route table: {message}", path.display())]
    SavedRoutes { path: PathBuf, message: String },
    #[error("cannot take over the listeners of the proxy on {}: {message}", path.display())]
    Handoff { path: PathBuf, message: String },
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("invalid route table: {0}")]
    Table(#[from] TableError),
    #[error("route table refused: {0}")]
    Certificate(#[from] CertError),
    #[error("route {index} ({service}): the static root {} is not a directory the proxy can open", root.display())]
    StaticRoot {
        index: usize,
        service: String,
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local CA: {0}")]
    LocalCa(#[from] CaError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Acme(#[from] AcmeError),
}

impl ProxyError {
    /// A stable code, in the style of `gantry_core::CODES`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Listen { .. } => "proxy.listen_failed",
            ProxyError::ControlSocket { .. } => "proxy.control_socket_failed",
            ProxyError::AlreadyRunning { .. } => "proxy.already_running",
            ProxyError::State(_) => "proxy.state_io_failed",
            ProxyError::SavedRoutes { .. } => "proxy.saved_routes_invalid",
            ProxyError::Handoff { .. } => "proxy.handoff_failed",
            ProxyError::Thread(_) => "proxy.thread_failed",
            ProxyError::Table(_) => "routes.invalid",
            ProxyError::Certificate(_) => "routes.certificate_invalid",
            ProxyError::StaticRoot { .. } => "routes.static_root_invalid",
            ProxyError::LocalCa(_) => "proxy.local_ca_failed",
            ProxyError::Tls(_) => "proxy.tls_failed",
            ProxyError::Acme(e) => e.code(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            ProxyError::Listen { addr, .. } => Some(format!(
                "is another server already on {addr}? stop it or give the proxy another address"
            )),
            ProxyError::AlreadyRunning { .. } => Some(
                "stop the running proxy first, or give this one another control socket".to_owned(),
            ),
            ProxyError::Handoff { .. } => Some(
                "is a proxy running with this state directory? without --take-over the proxy binds its address itself".to_owned(),
            ),
            ProxyError::SavedRoutes { path, .. } => Some(format!(
                "remove {} and send the routes again with PUT /v1/routes",
                path.display()
            )),
            ProxyError::Certificate(_) => Some(
                "give each route's tls an absolute path to a readable PEM certificate chain (leaf first) and the PEM private key that belongs to it".to_owned(),
            ),
            ProxyError::StaticRoot { .. } => Some(
                "put the directory in place (readable by the proxy's user) before sending the route".to_owned(),
            ),
            ProxyError::LocalCa(e) => e.hint(),
            ProxyError::Acme(e) => e.hint(),
            _ => None,
        }
    }
}
