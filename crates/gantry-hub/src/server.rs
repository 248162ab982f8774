//! `gantry hub serve`: opens the database, binds the address, and serves
//! until SIGINT or SIGTERM, finishing the requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::{Limits, serve_with};
use crate::db::Location;
use crate::error::HubError;
use crate::store::Store;
use crate::webhooks::delivery::Background;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub database: Location,
    pub listen: SocketAddr,
    pub limits: Limits,
    /// Webhook deliveries and the SLA and stale watch.
    pub background: Background,
    /// The hub's state directory: its key file (`secrets.key`, which seals
    /// the secrets kept in the database) and attachments' contents.
    /// `None`: beside a SQLite database; PostgreSQL needs one.
    pub state_dir: Option<std::path::PathBuf>,
}

/// Runs the hub in the foreground; `ready` is told the bound address once
/// requests are accepted.
pub fn run(options: &ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<(), HubError> {
    let store = match &options.state_dir {
        Some(dir) => Store::open_in(&options.database, dir)?,
        None => Store::open(&options.database)?,
    };
    let store = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| HubError::Io {
            what: "start the hub's runtime".to_owned(),
            source,
        })?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| HubError::Io {
                what: format!("listen on {}", options.listen),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| HubError::Io {
            what: "read the bound address".to_owned(),
            source,
        })?;
        ready(bound);
        serve_with(
            listener,
            store,
            options.limits,
            options.background,
            stop_signal(),
        )
        .await
        .map_err(|source| HubError::Io {
            what: "serve".to_owned(),
            source,
        })
    })
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // Without signal handlers the hub runs until it is killed.
        _ => std::future::pending().await,
    }
}
