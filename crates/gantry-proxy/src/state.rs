//! What every worker and the control API share: the live route table (an
//! `ArcSwap` of the compiled `Router`), upstream counters, metrics, the
//! access log and the timeouts.
//!
//! A table is replaced in this order: validated, saved to `routes.json`,
//! then swapped in one pointer store. Requests already routed finish on the
//! old table; every request routed after the swap uses the new one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::Timeouts;
use crate::acme::{Challenges, acme_names};
use crate::error::ProxyError;
use crate::exchange::AccessLog;
use crate::forwarded::TrustedProxy;
use crate::limits::ClientLimits;
use crate::metrics::{Metrics, NO_ROUTE, ServiceMetrics};
use crate::route_file;
use crate::router::Router;
use crate::table::RouteTable;
use crate::tls::CertStore;
use crate::upstream::Upstreams;
use gantry_file::FileError;

pub(crate) struct ProxyState {
    pub(crate) router: ArcSwap<Router>,
    pub(crate) upstreams: Upstreams,
    pub(crate) metrics: Metrics,
    pub(crate) no_route: Arc<ServiceMetrics>,
    pub(crate) access_log: AccessLog,
    pub(crate) timeouts: Timeouts,
    /// Deadlines and caps for client connections.
    pub(crate) clients: ClientLimits,
    /// The proxies in front whose forwarding headers are kept.
    pub(crate) trusted: Vec<TrustedProxy>,
    /// Idle upstream connections one worker's pool keeps: the workers'
    /// share of the descriptor budget (`limits::shares`) divided among
    /// them, at least 1 where the budget allows. Set at start; until then
    /// the pools' per-upstream cap alone.
    pub(crate) idle_per_worker: usize,
    pub(crate) started: Instant,
    /// Certificates by SNI name, for the HTTPS listener and redirects.
    pub(crate) certs: Arc<CertStore>,
    /// The HTTPS listener's port, when one listens: where redirects go.
    pub(crate) https_port: Option<u16>,
    /// The open ACME challenges, when the proxy runs ACME.
    pub(crate) challenges: Option<Challenges>,
    /// Where each new table's ACME names go, when the proxy runs ACME.
    pub(crate) acme_names: Option<tokio::sync::watch::Sender<std::collections::BTreeSet<String>>>,
    routes_file: PathBuf,
    /// One replacement at a time, so the saved file and the live table
    /// always hold the same table.
    replacing: tokio::sync::Mutex<()>,
}

impl ProxyState {
    pub(crate) fn new(
        table: RouteTable,
        routes_file: PathBuf,
        access_log: AccessLog,
        timeouts: Timeouts,
        certs: Arc<CertStore>,
        https_port: Option<u16>,
    ) -> ProxyState {
        let upstreams = Upstreams::default();
        let metrics = Metrics::new();
        let router = Router::build(Arc::new(table), &upstreams, &metrics);
        ProxyState {
            router: ArcSwap::from_pointee(router),
            no_route: metrics.service(NO_ROUTE),
            upstreams,
            metrics,
            access_log,
            timeouts,
            clients: ClientLimits::default(),
            trusted: Vec::new(),
            idle_per_worker: usize::MAX,
            started: Instant::now(),
            certs,
            https_port,
            challenges: None,
            acme_names: None,
            routes_file,
            replacing: tokio::sync::Mutex::new(()),
        }
    }

    /// The table being served.
    pub(crate) fn table(&self) -> Arc<RouteTable> {
        Arc::clone(&self.router.load().table)
    }

    /// Where a plain-HTTP request to `host` is sent over HTTPS, when an
    /// HTTPS listener runs and has a certificate for the host.
    pub(crate) fn https_url(&self, host: &str, path_and_query: &str) -> Option<String> {
        let port = self.https_port?;
        let name = crate::router::route_host(host);
        if name.is_empty() || !self.certs.has_certificate(&name) {
            return None;
        }
        Some(if port == 443 {
            format!("https://{name}{path_and_query}")
        } else {
            format!("https://{name}:{port}{path_and_query}")
        })
    }

    /// Validates, loads its certificate files, saves and swaps in `table`.
    /// Nothing changes if any step fails.
    pub(crate) async fn replace(&self, table: RouteTable) -> Result<(), ProxyError> {
        table.validate()?;
        let _one_at_a_time = self.replacing.lock().await;
        let table = Arc::new(table);
        let (certs, files) = (Arc::clone(&self.certs), Arc::clone(&table));
        let sites = Arc::clone(&table);
        tokio::task::spawn_blocking(move || check_static_roots(&sites))
            .await
            .map_err(|e| ProxyError::Thread(std::io::Error::other(e.to_string())))??;
        let user_certs = tokio::task::spawn_blocking(move || certs.load_user_certs(&files))
            .await
            .map_err(|e| ProxyError::Thread(std::io::Error::other(e.to_string())))??;
        let (file, saved) = (self.routes_file.clone(), Arc::clone(&table));
        tokio::task::spawn_blocking(move || route_file::save(&file, &saved))
            .await
            .map_err(|e| {
                FileError::at("write", &self.routes_file)(std::io::Error::other(e.to_string()))
            })??;
        self.certs.apply(&table, user_certs);
        let router = Router::build(table, &self.upstreams, &self.metrics);
        self.router.store(Arc::new(router));
        self.upstreams.prune();
        self.want_certificates();
        Ok(())
    }

    /// Takes `addrs` out of service, then waits until nothing is open to
    /// them or `timeout` passes; returns how many requests and WebSockets
    /// were still open. Once it returns, no request goes to them until a
    /// table routes to them again. An address the table being served still
    /// routes to stays in service: the drain then only waits (an agent whose
    /// table swap failed still drains, and its requests must find the
    /// instances the table names).
    pub(crate) async fn drain(&self, addrs: &[SocketAddr], timeout: Duration) -> usize {
        {
            // Under the swap's lock, so that "retired" always means "not in
            // the table being served": a request routed again on the
            // current table never meets a retired upstream, and a table
            // that routes to an address again (`Router::build`) puts it
            // back in service after, never before, a drain retired it.
            let _no_swap = self.replacing.lock().await;
            let router = self.router.load();
            self.upstreams
                .retire(addrs.iter().copied().filter(|a| !router.routes_to(*a)));
        }
        self.upstreams.drain(addrs, timeout).await
    }

    /// Tells the ACME manager, if one runs, which names the table wants
    /// certificates for, and logs the names that cannot have one.
    pub(crate) fn want_certificates(&self) {
        let Some(wanted) = &self.acme_names else {
            return;
        };
        let (names, refused) = acme_names(&self.table());
        for error in refused {
            crate::log::event(&serde_json::json!({
                "event": "acme.name_refused",
                "code": error.code(),
                "message": error.to_string(),
                "hint": error.hint(),
            }));
        }
        wanted.send_if_modified(|current| {
            let changed = *current != names;
            *current = names;
            changed
        });
    }
}

/// Every static route's root is a directory the proxy can open, so a table
/// that would only answer 503 is refused while the old one still serves.
/// (A root that goes away later is answered with the 503 page.)
fn check_static_roots(table: &RouteTable) -> Result<(), ProxyError> {
    for (index, route) in table.routes.iter().enumerate() {
        let Some(site) = &route.static_site else {
            continue;
        };
        let opened = std::fs::read_dir(&site.root).map(drop);
        if let Err(source) = opened {
            return Err(ProxyError::StaticRoot {
                index,
                service: route.service.clone(),
                root: site.root.clone(),
                source,
            });
        }
    }
    Ok(())
}
