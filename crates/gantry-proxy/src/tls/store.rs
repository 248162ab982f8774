//! `CertStore`: which certificate a TLS handshake gets, by SNI name. Read on
//! every handshake without a lock (each part is an `ArcSwap` replaced whole).
//!
//! Per name, in this order: the user's certificate (a route's cert and key
//! files, loaded when the table is applied), a certificate inserted by the
//! ACME client (`insert_pem`), a leaf from the local CA (only on a route
//! marked `local`, only for `*.localhost`, issued on first use and kept in
//! memory). A name no route has TLS for gets none: the handshake fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::local_ca::{LocalCa, is_local_name};
use crate::table::{CertFiles, RouteTable, Tls};

/// A local leaf is issued again this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);
/// The local leaves kept; past it the oldest is dropped (and issued again
/// if it is asked for again).
const MAX_LEAVES: usize = 1024;

/// Why a certificate or key could not be used. Names the file; never holds
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (-----BEGIN PRIVATE KEY-----)", path.display())]
    NoKey { path: PathBuf },
    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("the private key in {} cannot be used: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the private key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate for {names} is not usable: {reason}")]
    Inserted { names: String, reason: String },
}

/// What a host's handshake is served with, from the route table.
#[derive(Clone)]
enum HostTls {
    Local,
    Acme,
    User(Arc<CertifiedKey>),
}

/// The route table's TLS settings by host, looked up like routes: exact
/// name, then the longest wildcard, then a route without hosts.
#[derive(Default)]
struct Hosts {
    exact: HashMap<Box<str>, HostTls>,
    /// Suffixes with their leading dot (`.example.com`), longest first.
    wildcard: Vec<(Box<str>, HostTls)>,
    any: Option<HostTls>,
}

impl Hosts {
    fn find(&self, name: &str) -> Option<&HostTls> {
        self.exact.get(name).or_else(|| {
            self.wildcard
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(&**suffix))
                .map(|(_, tls)| tls)
        })
    }
}

/// The certificates of one route table's user files, loaded and checked.
pub(crate) struct UserCerts(HashMap<CertFiles, Arc<CertifiedKey>>);

struct Leaf {
    key: Arc<CertifiedKey>,
    renew_after: SystemTime,
}

pub struct CertStore {
    provider: Arc<CryptoProvider>,
    local_ca: Option<LocalCa>,
    hosts: ArcSwap<Hosts>,
    /// By name; a wildcard certificate under `*.example.com`.
    issued: ArcSwap<HashMap<Box<str>, Arc<CertifiedKey>>>,
    leaves: ArcSwap<HashMap<Box<str>, Arc<Leaf>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("local_ca", &self.local_ca)
            .field("issued", &self.issued.load().len())
            .field("leaves", &self.leaves.load().len())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// An empty store; `local_ca` signs leaves for routes marked `local`.
    pub fn new(local_ca: Option<LocalCa>) -> CertStore {
        CertStore {
            provider: super::provider(),
            local_ca,
            hosts: ArcSwap::from_pointee(Hosts::default()),
            issued: ArcSwap::from_pointee(HashMap::new()),
            leaves: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        Arc::clone(&self.provider)
    }

    pub fn local_ca(&self) -> Option<&LocalCa> {
        self.local_ca.as_ref()
    }

    /// Adds or replaces the certificate for `names` (an ACME order's names;
    /// `*.example.com` for a wildcard): a PEM chain, leaf first, and its key.
    pub fn insert_pem(
        &self,
        names: &[String],
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), CertError> {
        let inserted = |reason: String| CertError::Inserted {
            names: names.join(", "),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| inserted(e.to_string()))?;
        if chain.is_empty() {
            return Err(inserted("no PEM certificate in the chain".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| inserted("no usable PEM private key".to_owned()))?;
        let certified = CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(|e| inserted(e.to_string()))?;
        self.insert(names, Arc::new(certified));
        Ok(())
    }

    /// Adds or replaces an already loaded certificate for `names`.
    pub fn insert(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.issued.rcu(|issued| {
            let mut issued = HashMap::clone(issued);
            for name in names {
                issued.insert(normalize(name).into(), Arc::clone(&key));
            }
            issued
        });
    }

    pub fn remove(&self, names: &[String]) {
        self.issued.rcu(|issued| {
            let mut issued = HashMap::clone(issued);
            for name in names {
                issued.remove(normalize(name).as_str());
            }
            issued
        });
    }

    /// The hosts of the table in force whose routes ask for `acme`.
    pub fn acme_names(&self) -> Vec<String> {
        let hosts = self.hosts.load();
        let mut names: Vec<String> = hosts
            .exact
            .iter()
            .filter(|(_, tls)| matches!(tls, HostTls::Acme))
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names
    }

    /// Whether a handshake for `name` would get a certificate now (a local
    /// leaf counts: it is issued on demand).
    pub fn has_certificate(&self, name: &str) -> bool {
        let name = normalize(name);
        let hosts = self.hosts.load();
        match hosts.find(&name).or(hosts.any.as_ref()) {
            None => false,
            Some(HostTls::User(_)) => true,
            Some(tls) => {
                self.issued_for(&name).is_some()
                    || (matches!(tls, HostTls::Local)
                        && self.local_ca.is_some()
                        && is_local_name(&name))
            }
        }
    }

    /// Reads the cert and key files a table names; the first bad one is an
    /// error naming it. Blocking file reads: call off the runtime's threads.
    pub(crate) fn load_user_certs(&self, table: &RouteTable) -> Result<UserCerts, CertError> {
        self.load(table, true)
    }

    /// Like `load_user_certs`, for the saved table at start: a file that
    /// went bad since is logged and its hosts get no certificate, rather
    /// than keeping the proxy from starting.
    pub(crate) fn load_user_certs_or_log(&self, table: &RouteTable) -> UserCerts {
        self.load(table, false)
            .unwrap_or_else(|_| UserCerts(HashMap::new()))
    }

    fn load(&self, table: &RouteTable, strict: bool) -> Result<UserCerts, CertError> {
        let mut loaded = HashMap::new();
        for route in &table.routes {
            if let Tls::Files(files) = &route.tls
                && !loaded.contains_key(files)
            {
                match load_files(files, &self.provider) {
                    Ok(key) => {
                        loaded.insert(files.clone(), key);
                    }
                    Err(e) if strict => return Err(e),
                    Err(e) => crate::log::event(&serde_json::json!({
                        "event": "tls.certificate_unusable",
                        "service": route.service,
                        "error": e.to_string(),
                    })),
                }
            }
        }
        Ok(UserCerts(loaded))
    }

    /// Serves the TLS settings of `table` from now on (a table that passed
    /// `validate`, its user certificates loaded).
    pub(crate) fn apply(&self, table: &RouteTable, user: UserCerts) {
        let mut hosts = Hosts::default();
        let mut wildcard = HashMap::new();
        for route in &table.routes {
            let tls = match &route.tls {
                Tls::Off => continue,
                Tls::Local => HostTls::Local,
                Tls::Acme => HostTls::Acme,
                Tls::Files(files) => match user.0.get(files) {
                    Some(key) => HostTls::User(Arc::clone(key)),
                    None => continue,
                },
            };
            if route.hosts.is_empty() {
                hosts.any = Some(tls.clone());
            }
            for host in &route.hosts {
                let host = normalize(host);
                match host.strip_prefix('*') {
                    Some(suffix) => {
                        wildcard.insert(Box::<str>::from(suffix), tls.clone());
                    }
                    None => {
                        hosts.exact.insert(host.into(), tls.clone());
                    }
                }
            }
        }
        hosts.wildcard = wildcard.into_iter().collect();
        hosts
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        self.hosts.store(Arc::new(hosts));
    }

    fn issued_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let issued = self.issued.load();
        issued.get(name).cloned().or_else(|| {
            let (_, parent) = name.split_once('.')?;
            issued.get(format!("*.{parent}").as_str()).cloned()
        })
    }

    fn certificate_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let hosts = self.hosts.load();
        let Some(name) = server_name.map(normalize) else {
            // No SNI (a client that connects by address): only a route
            // serving any host with the user's certificate can answer.
            return match &hosts.any {
                Some(HostTls::User(key)) => Some(Arc::clone(key)),
                _ => None,
            };
        };
        let tls = hosts.find(&name).or(hosts.any.as_ref())?;
        if let HostTls::User(key) = tls {
            return Some(Arc::clone(key));
        }
        if let Some(key) = self.issued_for(&name) {
            return Some(key);
        }
        match tls {
            HostTls::Local if is_local_name(&name) => self.local_leaf(&name),
            _ => None,
        }
    }

    /// The cached leaf for `name`, or a new one when there is none or it is
    /// about to expire.
    fn local_leaf(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let ca = self.local_ca.as_ref()?;
        let now = SystemTime::now();
        if let Some(leaf) = self.leaves.load().get(name)
            && now < leaf.renew_after
        {
            return Some(Arc::clone(&leaf.key));
        }
        let (key, expires) = match ca.issue(name, &self.provider) {
            Ok(issued) => issued,
            Err(e) => {
                crate::log::event(&serde_json::json!({
                    "event": "tls.local_certificate_failed",
                    "server_name": name,
                    "error": e.to_string(),
                }));
                return None;
            }
        };
        let leaf = Arc::new(Leaf {
            key: Arc::clone(&key),
            renew_after: expires.checked_sub(RENEW_BEFORE).unwrap_or(expires),
        });
        self.leaves.rcu(|leaves| {
            let mut leaves = HashMap::clone(leaves);
            // A wildcard `.localhost` route takes any name a client makes
            // up: the cache keeps the most recent `MAX_LEAVES`.
            while leaves.len() >= MAX_LEAVES {
                let oldest = leaves
                    .iter()
                    .min_by_key(|(_, leaf)| leaf.renew_after)
                    .map(|(name, _)| name.clone());
                match oldest {
                    Some(oldest) => leaves.remove(&oldest),
                    None => break,
                };
            }
            leaves.insert(name.into(), Arc::clone(&leaf));
            leaves
        });
        Some(key)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificate_for(client_hello.server_name())
    }
}

/// Names as certificates are looked up: lowercase, no trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn load_files(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key_pem = read(&files.key)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(CertError::NoKey {
                path: files.key.clone(),
            });
        }
        Err(e) => {
            return Err(CertError::Pem {
                path: files.key.clone(),
                reason: e.to_string(),
            });
        }
    };
    match CertifiedKey::from_der(chain, key, provider) {
        Ok(key) => Ok(Arc::new(key)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(CertError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        Err(e) => Err(CertError::BadKey {
            path: files.key.clone(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Route;

    #[test]
    fn a_wildcard_localhost_route_keeps_a_bounded_number_of_leaves() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = LocalCa::load_or_create(&dir.path().join("ca")).expect("ca");
        let store = CertStore::new(Some(ca));
        let table = RouteTable {
            routes: vec![
                Route::new("web", vec![std::net::SocketAddr::from(([127, 0, 0, 1], 1))])
                    .hosts(["*.app.localhost"])
                    .tls(Tls::Local),
            ],
        };
        store.apply(&table, UserCerts(HashMap::new()));
        for n in 0..MAX_LEAVES + 20 {
            let name = format!("n{n}.app.localhost");
            assert!(store.certificate_for(Some(&name)).is_some(), "{name}");
        }
        assert_eq!(store.leaves.load().len(), MAX_LEAVES);
        assert!(
            store.certificate_for(Some("n0.app.localhost")).is_some(),
            "a name dropped from the cache gets a new leaf"
        );
    }
}
