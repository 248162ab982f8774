//! `gantry agent`: take the state directory's lock, settle what a previous
//! agent left, serve the API on the socket, and supervise. SIGTERM, SIGINT or
//! `POST /v1/shutdown` stop the agent and leave the services running.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use gantry_core::file::FileError;
use nix::fcntl::{Flock, FlockArg};

use crate::agent::{Agent, Paths, Settings};
use crate::isolation::Isolation;
use crate::ports::{HostClaims, PortAllocator};
use crate::store::Store;
use crate::{api, backup, reconcile, supervisor, verify};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another agent (pid {pid}) holds {dir}")]
    Locked { pid: String, dir: PathBuf },
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("the agent's store failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl DaemonError {
    /// The code `gantry agent` exits with: another agent holds the state
    /// directory, or the agent failed.
    pub fn code(&self) -> gantry_core::Code {
        match self {
            DaemonError::Locked { .. } => gantry_core::Code::AgentLocked,
            DaemonError::Io(_) | DaemonError::Store(_) => gantry_core::Code::AgentError,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            DaemonError::Locked { .. } => {
                Some("stop it with `gantry agent stop`, or use another --state-dir")
            }
            DaemonError::Io(_) | DaemonError::Store(_) => None,
        }
    }
}

fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> DaemonError {
    FileError::of(action, path)
}

/// Takes the state directory's lock, or says which pid holds it. The lock is
/// held for as long as the returned file lives.
fn lock(paths: &Paths) -> Result<Flock<std::fs::File>, DaemonError> {
    let path = paths.lock();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("open", &path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            locked.set_len(0).map_err(io("write", &path))?;
            locked.rewind().map_err(io("write", &path))?;
            write!(locked, "{}", std::process::id()).map_err(io("write", &path))?;
            locked.flush().map_err(io("write", &path))?;
            Ok(locked)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(DaemonError::Locked {
                pid: pid.trim().to_owned(),
                dir: paths.root.clone(),
            })
        }
    }
}

/// The state directory holds secrets, the store and the API socket: only
/// the agent's user may enter it, even one made 0755 by hand or by an older
/// version.
fn make_private(dir: &std::path::Path) -> Result<(), DaemonError> {
    let mode = std::fs::metadata(dir)
        .map_err(io("read", dir))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("make private", dir))?;
        tracing::info!(dir = %dir.display(), was = format!("{:o}", mode & 0o7777), "state directory made private (0700)");
    }
    Ok(())
}

fn with_host_claims(ports: PortAllocator, state_dir: &std::path::Path) -> PortAllocator {
    match HostClaims::for_host(state_dir) {
        Some(claims) => ports.with_claims(claims),
        None => ports,
    }
}

/// Runs the agent until it is told to stop.
pub fn run(state_dir: PathBuf, settings: Settings) -> Result<(), DaemonError> {
    let paths = Paths::new(state_dir);
    // Whatever the agent, its proxy and its relays create is theirs alone;
    // services get 022 back (process::confine).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.root)
        .map_err(io("create", &paths.root))?;
    let _lock = lock(&paths)?;
    // Private to the agent; where services run as their own users, their
    // group may pass through to their releases (`Isolation::prepare`).
    let isolation = Isolation::detect();
    if isolation == Isolation::AgentUser {
        make_private(&paths.root)?;
    }
    isolation
        .prepare(&paths)
        .map_err(io("set the modes of", &paths.root))?;
    for dir in [paths.run(), paths.blobs()] {
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    }
    // Copies a killed agent's backups or restores left half made. What a
    // non-root agent may not remove (a service user's) stays, harmless:
    // every job takes a new directory.
    match std::fs::remove_dir_all(paths.staging()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %paths.staging().display(), "staging not cleared: {e}");
        }
        _ => {}
    }
    let store = Store::open(&paths.database())?;
    let exe = std::env::current_exe().map_err(io("find", "the gantry binary"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("start", "the runtime"))?;
    let ports = with_host_claims(PortAllocator::new(settings.ports.clone()), &paths.root);
    let agent = Arc::new(Agent::new(paths, settings, store, ports, isolation, exe));
    runtime.block_on(serve(agent))
}

async fn serve(agent: Arc<Agent>) -> Result<(), DaemonError> {
    reconcile::reconcile(&agent).await?;
    agent.proxy.start().await;

    let socket = agent.paths.socket();
    // We hold the lock, so a socket file left here is a dead agent's.
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(io("listen on", &socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set permissions of", &socket))?;
    tracing::info!(socket = %socket.display(), pid = std::process::id(), limits = %agent.cgroups.mode(), "agent ready");

    let supervisor = tokio::spawn(supervisor::run(
        Arc::clone(&agent),
        agent.shutdown.subscribe(),
    ));
    let backups = tokio::spawn(backup::run_schedules(
        Arc::clone(&agent),
        agent.shutdown.subscribe(),
    ));
    // Resumes the verify windows a previous agent was watching.
    let verifier = tokio::spawn(verify::run(Arc::clone(&agent), agent.shutdown.subscribe()));
    let watcher = Arc::clone(&agent);
    let proxy_watch =
        tokio::spawn(async move { watcher.proxy.watch(watcher.shutdown.subscribe()).await });
    let mut stop = agent.shutdown.subscribe();
    let notify = Arc::clone(&agent);
    let signals = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = stop.changed().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stop.changed() => {}
        }
        let _ = notify.shutdown.send(true);
    };
    let mut stopping = agent.shutdown.subscribe();
    // In-flight requests get a moment to finish; a `logs -f` never would.
    let grace = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    };
    let served =
        axum::serve(listener, api::router(Arc::clone(&agent))).with_graceful_shutdown(signals);
    let result = tokio::select! {
        result = served => result,
        () = grace => Ok(()),
    };
    let _ = agent.shutdown.send(true);
    let _ = supervisor.await;
    let _ = verifier.await;
    // A backup in progress is left behind as a `.partial` file, never listed.
    backups.abort();
    let _ = proxy_watch.await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("agent stopped; services keep running");
    result.map_err(io("serve on", socket))
}
