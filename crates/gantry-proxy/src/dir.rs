//! The layout of the proxy's state directory, spelled once for the proxy
//! and for whoever starts it (the agent gives it `proxy/` in its own).

use std::path::PathBuf;

/// What the proxy keeps in its state directory, by name.
#[derive(Clone, Debug)]
pub struct ProxyDir {
    pub root: PathBuf,
}

impl ProxyDir {
    pub fn new(root: impl Into<PathBuf>) -> ProxyDir {
        ProxyDir { root: root.into() }
    }

    /// The control API's Unix socket.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("proxy.sock")
    }
    /// Where a new proxy process asks the running one for its listeners.
    pub fn handoff_socket(&self) -> PathBuf {
        self.root.join("handoff.sock")
    }
    /// The last route table accepted.
    pub fn routes_file(&self) -> PathBuf {
        self.root.join("routes.json")
    }
    /// The local CA that signs certificates for `*.localhost`.
    pub fn local_ca(&self) -> PathBuf {
        self.root.join("ca")
    }
    /// The ACME account and the certificates it obtained.
    pub fn acme(&self) -> PathBuf {
        self.root.join("acme")
    }
}
