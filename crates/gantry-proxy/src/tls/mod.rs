//! TLS termination: the rustls server configuration (ALPN h2 and http/1.1),
//! the handshake each HTTPS connection goes through before HTTP, and the
//! `CertStore` that picks a certificate by SNI name.
//!
//! A handshake that fails, times out, or names a host without a certificate
//! ends that connection alone; it never touches another. Failures are
//! logged at most once an interval, with a count of the others.

mod local_ca;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::log::Tally;

pub use local_ca::{CaError, LocalCa, fingerprint_sha256, is_local_name};
pub use store::{CertError, CertStore};

/// Failed handshakes: anyone can cause them at any rate, so one is logged
/// whole per interval and the rest counted (see `log::Tally`).
pub(crate) static HANDSHAKE_FAILURES: Tally =
    Tally::new("tls.handshake_failed", Duration::from_secs(60));

/// The process's crypto provider (aws-lc-rs), installed by `main`; a test or
/// an embedding that installed none gets aws-lc-rs all the same.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The server side of every HTTPS connection: certificates from `store`,
/// HTTP/2 preferred over HTTP/1.1.
pub(crate) fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(store.provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs the server handshake on a new connection, within `deadline`;
/// `None` when it fails (counted in `HANDSHAKE_FAILURES`).
pub(crate) async fn handshake(
    stream: TcpStream,
    client: SocketAddr,
    config: Arc<ServerConfig>,
    deadline: Duration,
) -> Option<TlsStream<TcpStream>> {
    let accepted = tokio::time::timeout(deadline, async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
            .await
            .map_err(|e| (None, e.to_string()))?;
        let server_name = start.client_hello().server_name().map(str::to_owned);
        start
            .into_stream(config)
            .await
            .map_err(|e| (server_name, e.to_string()))
    })
    .await;
    let (server_name, error) = match accepted {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(failed)) => failed,
        Err(_) => (None, "timed out".to_owned()),
    };
    HANDSHAKE_FAILURES.record(|| {
        serde_json::json!({
            "event": "tls.handshake_failed",
            "client": client.to_string(),
            "server_name": server_name,
            "error": error,
        })
    });
    None
}
