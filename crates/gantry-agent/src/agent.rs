//! The agent's shared state: where its files are, its store, and the parts
//! every task uses. Store calls block, so they run on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

use crate::artifact::BlobStore;
use crate::ports::PortAllocator;
use crate::process::Cgroups;
use crate::store::{Store, StoreError};

pub use gantry_core::agent_dir::Paths;

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

pub struct Agent {
    pub paths: Paths,
    pub settings: Settings,
    pub store: Arc<Mutex<Store>>,
    pub blobs: BlobStore,
    pub ports: Arc<Mutex<PortAllocator>>,
    pub cgroups: Cgroups,
    /// Which user services run as.
    pub isolation: crate::isolation::Isolation,
    /// The gantry binary, to start relays with.
    pub exe: PathBuf,
    pub started_at: u64,
    /// The last lines of each instance, in memory.
    pub tails: crate::tails::Tails,
    /// One deploy at a time per project.
    pub deploy_locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Environment deploy locks that CLIs hold across hosts, by
    /// (project, environment): the token and the holder. In memory: an agent
    /// restart releases them.
    pub env_locks: Mutex<HashMap<(String, String), (String, gantry_core::agent_api::LockHolder)>>,
    /// Set when the agent is asked to shut down.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// The reverse proxy the agent started or found, if one runs.
    pub proxy: crate::proxy::Proxy,
    /// The Docker engine, connected when a container service first needs it.
    pub containers: tokio::sync::OnceCell<crate::container::Engine>,
    /// The container instances whose output is being copied to their logs.
    pub container_logs: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Agent {
    /// Runs `f` with the store on the blocking pool.
    pub async fn db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || {
            let mut guard = store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    pub fn deploy_lock(&self, project: &str) -> Arc<AsyncMutex<()>> {
        let mut locks = self
            .deploy_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(locks.entry(project.to_owned()).or_default())
    }

    pub fn state_dir(&self) -> &Path {
        &self.paths.root
    }
}

pub use gantry_core::clock::now_ms;
