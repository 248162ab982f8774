//! The agent's shared state: where its files are, its store, and the parts
//! every task uses, with the tunables it was started with. Store calls
//! block, so they run on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

use gantry_core::agent_api::AgentInfo;
pub(crate) use gantry_core::agent_dir::Paths;
pub(crate) use gantry_core::clock::now_ms;

use crate::artifact::BlobStore;
use crate::isolation::Isolation;
use crate::locks::EnvLocks;
use crate::ports::PortAllocator;
use crate::process::Cgroups;
use crate::proxy::Proxy;
use crate::store::{SharedStore, Store, StoreError};
use crate::tails::Tails;

/// The default state directory for this process's user
/// ([`Paths::default_root`]).
pub fn default_state_dir() -> PathBuf {
    Paths::default_root(rustix::process::geteuid().is_root())
}

/// Tunables, with the defaults a user would expect.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ports: std::ops::RangeInclusive<u16>,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    /// How long new instances get to become healthy in a deploy, beyond their start period.
    pub health_deadline: std::time::Duration,
    /// Failures within `failure_window` after which an instance is given up on.
    pub max_failures: u32,
    pub failure_window: std::time::Duration,
    /// Where the agent's reverse proxy listens; `None` runs no proxy.
    pub proxy_listen: Option<std::net::SocketAddr>,
    /// Where the proxy accepts HTTPS; `None`: plain HTTP only.
    pub proxy_https: Option<std::net::SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ports: 20_000..=29_999,
            log_max_bytes: 8 << 20,
            log_keep: 3,
            health_deadline: std::time::Duration::from_secs(30),
            max_failures: 5,
            failure_window: std::time::Duration::from_secs(60),
            proxy_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080))),
            proxy_https: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8443))),
        }
    }
}

/// The agent's shared state: its files, store, blobs, ports, cgroups, the
/// user services run as, the tails of their logs, its locks and its proxy.
/// Every operation above takes it; nothing it holds knows it.
pub(crate) struct Agent {
    pub(crate) paths: Paths,
    pub(crate) settings: Settings,
    pub(crate) store: SharedStore,
    pub(crate) blobs: BlobStore,
    pub(crate) ports: Arc<Mutex<PortAllocator>>,
    pub(crate) cgroups: Cgroups,
    /// Which user services run as.
    pub(crate) isolation: Isolation,
    /// The gantry binary, to start relays with.
    pub(crate) exe: PathBuf,
    pub(crate) started_at: u64,
    /// The last lines of each instance, in memory.
    pub(crate) tails: Tails,
    /// One deploy at a time per project.
    deploy_locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Environment deploy locks that CLIs hold across hosts.
    pub(crate) env_locks: EnvLocks,
    /// Set when the agent is asked to shut down.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// The reverse proxy the agent started or found, if one runs.
    pub(crate) proxy: Proxy,
    /// The Docker engine, connected when a container service first needs it.
    pub(crate) containers: tokio::sync::OnceCell<crate::container::Engine>,
    /// The container instances whose output is being copied to their logs.
    pub(crate) container_logs: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Told when a release's verify window is recorded, to watch it.
    pub(crate) verify_wake: tokio::sync::Notify,
}

impl Agent {
    /// The agent over its state directory's parts; it makes the rest
    /// (blob store, cgroups, tails, locks, the proxy's handle) itself.
    pub(crate) fn new(
        paths: Paths,
        settings: Settings,
        store: Store,
        ports: PortAllocator,
        isolation: Isolation,
        exe: PathBuf,
    ) -> Agent {
        let store = SharedStore::new(store);
        let (shutdown, _) = tokio::sync::watch::channel(false);
        Agent {
            blobs: BlobStore::new(paths.blobs()),
            ports: Arc::new(Mutex::new(ports)),
            cgroups: Cgroups::detect(),
            isolation,
            proxy: Proxy::new(
                &paths,
                exe.clone(),
                store.clone(),
                settings.proxy_listen,
                settings.proxy_https,
            ),
            store,
            paths,
            settings,
            exe,
            started_at: now_ms(),
            tails: Tails::default(),
            deploy_locks: Mutex::new(HashMap::new()),
            env_locks: EnvLocks::default(),
            shutdown,
            containers: tokio::sync::OnceCell::new(),
            container_logs: Arc::default(),
            verify_wake: tokio::sync::Notify::new(),
        }
    }

    /// Runs `f` with the store on the blocking pool.
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.store.call(f).await
    }

    pub(crate) fn deploy_lock(&self, project: &str) -> Arc<AsyncMutex<()>> {
        let mut locks = self
            .deploy_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(locks.entry(project.to_owned()).or_default())
    }

    pub(crate) fn state_dir(&self) -> &Path {
        &self.paths.root
    }

    /// `GET /v1/health`: who this agent is.
    pub(crate) fn info(&self) -> AgentInfo {
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            state_dir: self.paths.root.display().to_string(),
            started_at: self.started_at,
            limits: self.cgroups.mode().to_string(),
            proxy: self.proxy.listen().map(|a| a.to_string()),
            proxy_problem: self.proxy.problem(),
            spec_version: gantry_core::agent_api::v1::SPEC_VERSION,
        }
    }
}
