//! The proxy's threads: one worker per core, each a single-threaded tokio
//! runtime that serves its connections and forwards with its own pool of
//! upstream connections (a request never hops threads, as in nginx's
//! workers; see `worker`); an acceptor that admits each new connection
//! under the connection caps (`limits`) and hands it to the worker with the
//! fewest; and one thread for the control API.
//!
//! The listeners are bound before anything starts, so `start_with` can take
//! them from a previous proxy: `take_over` receives them, by name (`http`,
//! `https`), over the running proxy's handoff socket (see `handoff`). The
//! HTTPS listener has its own acceptor thread and feeds the same workers,
//! which put a TLS connection through the rustls handshake first.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::acme::{AcmeConfig, AcmeEvent, AcmeManager, Challenges, Issued, OnIssued, acme_names};
use crate::exchange::AccessLog;
use crate::handoff::{self, HandedOff, Listeners};
use crate::limits::{ConnectionCaps, shares};
use crate::state::ProxyState;
use crate::tls::{self, CertStore, LocalCa};
use crate::worker::{Accepted, Scheme, worker};
use crate::{ProxyConfig, ProxyError, control, route_file, shortage};
use gantry_file::FileError;

/// The name of the plain HTTP listener, as handoff passes it.
pub const HTTP: &str = "http";
/// The name of the HTTPS listener, as handoff passes it.
pub const HTTPS: &str = "https";

/// Pending connections the kernel keeps for the listener.
const BACKLOG: i32 = 4096;
/// How long the control API's open requests get once the proxy stops.
const CONTROL_GRACE: Duration = Duration::from_secs(1);

/// A proxy serving on its own threads. Dropping it stops it, like `stop`.
pub struct RunningProxy {
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    control_socket: PathBuf,
    handoff_socket: PathBuf,
    handed_off: HandedOff,
    /// The process this one took the listeners from, if it did.
    took_over_from: Option<u32>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    acme: Option<AcmeManager>,
}

impl RunningProxy {
    /// Where the proxy accepts HTTP (the port is known here when 0 was asked).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the proxy accepts HTTPS, when it does.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// The process this proxy took its listeners from (`take_over`).
    pub fn took_over_from(&self) -> Option<u32> {
        self.took_over_from
    }

    /// Changes to true once a new process has taken the listeners over; the
    /// proxy should then `stop`, which lets open requests finish.
    pub fn handed_off(&self) -> watch::Receiver<bool> {
        self.handed_off.subscribe()
    }

    /// Stops accepting, lets open requests finish for up to the shutdown
    /// timeout, and returns once every thread has ended.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.stop.send(true);
        if let Some(acme) = self.acme.take() {
            acme.stop();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // After a handoff the socket paths are the new process's.
        if !self.handed_off.is_set() {
            let _ = std::fs::remove_file(&self.control_socket);
            let _ = std::fs::remove_file(&self.handoff_socket);
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shut_down();
        }
    }
}

/// Binds `config.http` and starts serving; see `start_on`.
pub fn start(config: ProxyConfig) -> Result<RunningProxy, ProxyError> {
    check_settings(&config)?;
    let listener = bind_http(config.http)?;
    start_on(listener, config)
}

/// Starts serving on a listener that is already bound (`config.http` is not
/// used): one a test bound to port 0. Binds `config.https` when set. Loads
/// `routes.json` from the state directory (and the local CA in its `ca/`
/// when HTTPS is on) and opens the control and handoff sockets.
pub fn start_on(
    listener: std::net::TcpListener,
    config: ProxyConfig,
) -> Result<RunningProxy, ProxyError> {
    let mut listeners = Listeners::default();
    listeners.insert(HTTP, listener);
    start_with(listeners, config)
}

/// Starts serving on these listeners, by name (`http`, and `https`: when
/// `config.https` is set and no `https` listener is given, it is bound).
pub fn start_with(listeners: Listeners, config: ProxyConfig) -> Result<RunningProxy, ProxyError> {
    let bind_at = (config.control_socket.clone(), config.handoff_socket.clone());
    launch(listeners, config, bind_at, None)
}

/// Takes over the listening sockets of the proxy that serves
/// `config.handoff_socket`, then its control socket; that proxy stops
/// accepting, finishes its open requests and exits. A listener the config
/// names that the old proxy did not hold is bound here; an inherited
/// `https` listener is served when `config.https` is set (at the address it
/// was bound to) and closed when it is not.
pub fn take_over(config: ProxyConfig) -> Result<RunningProxy, ProxyError> {
    check_settings(&config)?;
    let mut taken = handoff::receive(&config.handoff_socket)?;
    if !taken.listeners.contains(HTTP) {
        taken.listeners.insert(HTTP, bind_http(config.http)?);
    }
    let listeners = std::mem::take(&mut taken.listeners);
    // Bound beside the old proxy's sockets, renamed over them once it let go.
    let bind_at = (
        handoff::staging(&config.control_socket),
        handoff::staging(&config.handoff_socket),
    );
    let (control, handoff_socket) = (config.control_socket.clone(), config.handoff_socket.clone());
    let mut proxy = launch(listeners, config, bind_at.clone(), Some(taken.from_pid))?;
    // Until the old process let go, its sockets stay where they are; if it
    // does not, dropping this proxy removes only the staged ones.
    taken.finish()?;
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|source| ProxyError::ControlSocket {
            path: to.to_owned(),
            source,
        })
    };
    rename(&bind_at.0, &control)?;
    proxy.control_socket = control;
    rename(&bind_at.1, &handoff_socket)?;
    proxy.handoff_socket = handoff_socket;
    Ok(proxy)
}

/// Starts the threads; the control and handoff sockets are bound at `bind_at`.
fn launch(
    listeners: Listeners,
    config: ProxyConfig,
    bind_at: (PathBuf, PathBuf),
    took_over_from: Option<u32>,
) -> Result<RunningProxy, ProxyError> {
    check_settings(&config)?;
    let mut listeners = listeners;
    let (listener, http_addr) = http_listener(&mut listeners, &config)?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(FileError::at("create", &config.state_dir))?;
    let routes_file = route_file::path(&config.state_dir);
    let table = route_file::load(&routes_file)?;
    let https = https_listener(&mut listeners, &config)?;
    let control = bind_control(&bind_at.0)?;
    let unbind = || {
        let _ = std::fs::remove_file(&bind_at.0);
    };
    let handoff_listener = bind_handoff(&bind_at.1).inspect_err(|_| unbind())?;
    let unbind = || {
        let _ = std::fs::remove_file(&bind_at.0);
        let _ = std::fs::remove_file(&bind_at.1);
    };
    let (certs, tls_config) =
        certificates(&config, https.is_some(), &table).inspect_err(|_| unbind())?;
    // What a later handoff passes on: every listener this proxy serves.
    let held = held_listeners(&listener, https.as_ref()).inspect_err(|_| unbind())?;
    let access_log = if config.access_log {
        AccessLog::stderr()
    } else {
        AccessLog::off()
    };
    let mut state = ProxyState::new(
        table,
        routes_file,
        access_log,
        config.timeouts,
        certs,
        https.as_ref().map(|(_, addr)| addr.port()),
    );
    state.clients = config.clients;
    state.trusted = config.trusted_proxies.clone();
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        workers => workers,
    };
    let shares = shares(&config.clients, workers);
    state.idle_per_worker = shares.idle_per_worker;
    if (shares.connections, shares.per_client)
        != (
            config.clients.max_connections,
            config.clients.max_per_client,
        )
    {
        // What was asked is not what holds: say so once, with why.
        crate::log::event(&serde_json::json!({
            "event": "proxy.limits_lowered",
            "max_connections": shares.connections,
            "max_per_client": shares.per_client,
            "asked": [config.clients.max_connections, config.clients.max_per_client],
            "open_files": shares.open_files,
            "why": "the open-file limit admits no more connections, and one client holds at most half of them; raise LimitNOFILE (ulimit -n)",
        }));
    }
    let acme = match config.acme.clone() {
        Some(acme) => Some(start_acme(acme, &config, &mut state).inspect_err(|_| unbind())?),
        None => None,
    };
    let state = Arc::new(state);
    let handed_off = HandedOff::new();
    let (stop, stopped) = watch::channel(false);
    let mut proxy = RunningProxy {
        http_addr,
        https_addr: https.as_ref().map(|(_, addr)| *addr),
        control_socket: bind_at.0.clone(),
        handoff_socket: bind_at.1.clone(),
        handed_off: handed_off.clone(),
        took_over_from,
        stop,
        threads: Vec::new(),
        acme,
    };
    let caps = ConnectionCaps::new(shares.connections, shares.per_client);
    let slots = proxy.start_workers(workers, &state, tls_config.as_ref(), &stopped)?;
    if let Some((listener, _)) = https {
        let (slots, accepting, caps) = (slots.clone(), stopped.clone(), Arc::clone(&caps));
        proxy
            .threads
            .push(spawn("gantry-proxy-accept-https".to_owned(), move || {
                acceptor(listener, slots, Scheme::Https, caps, accepting);
            })?);
    }
    let accepting = stopped.clone();
    proxy
        .threads
        .push(spawn("gantry-proxy-accept".to_owned(), move || {
            acceptor(listener, slots, Scheme::Http, caps, accepting);
        })?);
    let handing = stopped.clone();
    proxy.threads.push(spawn(
        "gantry-proxy-handoff".to_owned(),
        move || match runtime() {
            Ok(runtime) => {
                runtime.block_on(handoff::serve(handoff_listener, held, handed_off, handing));
            }
            Err(e) => crate::log::text(&format!("cannot start the handoff runtime: {e}")),
        },
    )?);
    proxy
        .threads
        .push(spawn("gantry-proxy-control".to_owned(), move || {
            serve_control(control, state, stopped);
        })?);
    Ok(proxy)
}

impl RunningProxy {
    /// Starts `count` worker threads; each is stopped and joined with the
    /// proxy's other threads, even if a later one cannot start.
    fn start_workers(
        &mut self,
        count: usize,
        state: &Arc<ProxyState>,
        tls_config: Option<&Arc<rustls::ServerConfig>>,
        stopped: &watch::Receiver<bool>,
    ) -> Result<Vec<WorkerSlot>, ProxyError> {
        let mut slots = Vec::with_capacity(count);
        for index in 0..count {
            let (connections, received) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            slots.push(WorkerSlot {
                connections,
                open: Arc::clone(&open),
            });
            let (state, stopped, handed_off) =
                (Arc::clone(state), stopped.clone(), self.handed_off.clone());
            let tls_config = tls_config.cloned();
            self.threads
                .push(spawn(format!("gantry-proxy-{index}"), move || {
                    worker(received, open, state, tls_config, stopped, handed_off);
                })?);
        }
        Ok(slots)
    }
}

/// The `http` listener given, non-blocking, and the address it has.
fn http_listener(
    listeners: &mut Listeners,
    config: &ProxyConfig,
) -> Result<(std::net::TcpListener, SocketAddr), ProxyError> {
    let Some(listener) = listeners.take(HTTP) else {
        return Err(ProxyError::Listen {
            addr: config.http,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no `http` listener was given",
            ),
        });
    };
    let http_addr = listener.local_addr().map_err(|source| ProxyError::Listen {
        addr: config.http,
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ProxyError::Listen {
            addr: http_addr,
            source,
        })?;
    Ok((listener, http_addr))
}

/// Refuses settings that are wrong before anything is bound or made (a
/// bad ACME directory must not leave a listener or a local CA behind).
fn check_settings(config: &ProxyConfig) -> Result<(), ProxyError> {
    if let Some(acme) = &config.acme {
        acme.validate()?;
    }
    if let Some((path, max_bytes)) = &config.log_file {
        crate::log::to_file(path, *max_bytes).map_err(FileError::at("open", path))?;
    }
    Ok(())
}

/// Starts the ACME manager on the table just loaded, and links it to the
/// state: the workers answer its challenges, new tables reach it, and every
/// certificate it loads or obtains goes into the `CertStore` (served on the
/// next handshake; a renewal replaces the one before) before
/// `config.on_acme_event` hears of it.
fn start_acme(
    acme: AcmeConfig,
    config: &ProxyConfig,
    state: &mut ProxyState,
) -> Result<AcmeManager, ProxyError> {
    let challenges = Challenges::new();
    let (names, _refused) = acme_names(&state.table());
    let certs = Arc::clone(&state.certs);
    let external = config.on_acme_event.clone();
    let on_event: OnIssued = Arc::new(move |event: &AcmeEvent<'_>| {
        if let AcmeEvent::Loaded { name, issued } | AcmeEvent::Issued { name, issued, .. } = event {
            serve_acme_certificate(&certs, name, issued);
        }
        if let Some(external) = &external {
            external(event);
        }
    });
    let manager = AcmeManager::start(acme, &config.state_dir, challenges.clone(), names, on_event)?;
    state.challenges = Some(challenges);
    state.acme_names = Some(manager.wanted());
    state.want_certificates();
    Ok(manager)
}

/// Puts an ACME certificate in the store for `name`. One the store cannot
/// use is logged (names and reason, never the key) and the one held stays.
fn serve_acme_certificate(certs: &CertStore, name: &str, issued: &Issued) {
    let names = [name.to_owned()];
    if let Err(e) = certs.insert_pem(
        &names,
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    ) {
        crate::log::event(&serde_json::json!({
            "event": "tls.certificate_unusable",
            "name": name,
            "error": e.to_string(),
        }));
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ProxyError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(ProxyError::Thread)
}

/// The HTTPS listener and the address it has: the `https` one given (by a
/// handoff) when `config.https` is set, else `config.https` bound here; none
/// when `config.https` is not set (a given one is then closed).
fn https_listener(
    listeners: &mut Listeners,
    config: &ProxyConfig,
) -> Result<Option<(std::net::TcpListener, SocketAddr)>, ProxyError> {
    let given = listeners.take(HTTPS);
    let Some(addr) = config.https else {
        return Ok(None);
    };
    let listener = match given {
        Some(listener) => listener,
        None => bind_http(addr)?,
    };
    let bound = listener
        .local_addr()
        .and_then(|bound| listener.set_nonblocking(true).map(|()| bound))
        .map_err(|source| ProxyError::Listen { addr, source })?;
    Ok(Some((listener, bound)))
}

/// Copies of the listening sockets for a later handoff to pass on, by name.
fn held_listeners(
    http: &std::net::TcpListener,
    https: Option<&(std::net::TcpListener, SocketAddr)>,
) -> Result<Vec<(String, std::net::TcpListener)>, ProxyError> {
    let copy = |listener: &std::net::TcpListener| {
        listener.try_clone().map_err(|source| ProxyError::Listen {
            addr: listener
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        })
    };
    let mut held = Listeners::default();
    held.insert(HTTP, copy(http)?);
    if let Some((https, _)) = https {
        held.insert(HTTPS, copy(https)?);
    }
    held.duplicate().map_err(|source| ProxyError::Listen {
        addr: http
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        source,
    })
}

/// The certificate store for `table` and, when HTTPS is on, the TLS server
/// configuration reading it (the local CA is loaded, or made, only then).
fn certificates(
    config: &ProxyConfig,
    https: bool,
    table: &crate::RouteTable,
) -> Result<(Arc<CertStore>, Option<Arc<rustls::ServerConfig>>), ProxyError> {
    let local_ca = if https {
        Some(LocalCa::load_or_create(
            &crate::ProxyDir::new(&config.state_dir).local_ca(),
        )?)
    } else {
        None
    };
    let certs = Arc::new(CertStore::new(local_ca));
    certs.apply(table, certs.load_user_certs_or_log(table));
    let tls_config = if https {
        Some(tls::server_config(Arc::clone(&certs))?)
    } else {
        None
    };
    Ok((certs, tls_config))
}

fn bind_http(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    use socket2::{Domain, Socket, Type};
    let listen = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(socket.into())
    };
    listen().map_err(|source| ProxyError::Listen { addr, source })
}

/// Binds the control socket, mode 0600. A socket file left by a proxy that
/// died is replaced; one that still answers is another proxy's.
fn bind_control(path: &Path) -> Result<std::os::unix::net::UnixListener, ProxyError> {
    let failed = |source| ProxyError::ControlSocket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ProxyError::AlreadyRunning {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(failed)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    Ok(listener)
}

/// Binds the handoff socket, mode 0600; a file left there is replaced (the
/// control socket, bound first, already proved no other proxy runs here).
fn bind_handoff(path: &Path) -> Result<std::os::unix::net::UnixListener, ProxyError> {
    let failed = |source| ProxyError::ControlSocket {
        path: path.to_owned(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path).map_err(failed)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    Ok(listener)
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A worker as the acceptor sees it: where to send a connection, and how
/// many it has open.
#[derive(Clone)]
struct WorkerSlot {
    connections: mpsc::UnboundedSender<Accepted>,
    open: Arc<AtomicUsize>,
}

/// Accepts connections and hands each to the worker with the fewest open.
/// Workers accepting from the socket themselves would let the first one
/// awake take every connection of a burst, leaving the others idle.
fn acceptor(
    listener: std::net::TcpListener,
    workers: Vec<WorkerSlot>,
    scheme: Scheme,
    caps: Arc<ConnectionCaps>,
    stopped: watch::Receiver<bool>,
) {
    match runtime() {
        Ok(runtime) => runtime.block_on(accept(listener, workers, scheme, caps, stopped)),
        Err(e) => crate::log::text(&format!("cannot start the acceptor's runtime: {e}")),
    }
}

async fn accept(
    listener: std::net::TcpListener,
    workers: Vec<WorkerSlot>,
    scheme: Scheme,
    caps: Arc<ConnectionCaps>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            crate::log::text(&format!("cannot use the listener: {e}"));
            return;
        }
    };
    let mut next = 0;
    loop {
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    // Over a cap, the connection is closed at once: that
                    // frees its descriptor and tells the client.
                    let Some(permit) = caps.admit(addr.ip()) else { continue };
                    let Ok(stream) = stream.into_std() else { continue };
                    // Least open connections; ties go round the workers.
                    next = (next + 1) % workers.len();
                    let chosen = (0..workers.len())
                        .map(|i| &workers[(next + i) % workers.len()])
                        .min_by_key(|w| w.open.load(Ordering::Relaxed));
                    if let Some(worker) = chosen {
                        worker.open.fetch_add(1, Ordering::Relaxed);
                        let _ = worker.connections.send((stream, addr, scheme, permit));
                    }
                }
                // Out of file descriptors or a connection reset while
                // queued: back off a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

fn serve_control(
    listener: std::os::unix::net::UnixListener,
    state: Arc<ProxyState>,
    stopped: watch::Receiver<bool>,
) {
    let serve = async move {
        // The counted events not yet told get their summary line.
        tokio::spawn(async {
            let tallies = [&tls::HANDSHAKE_FAILURES, &shortage::PROXY_SHORT];
            let interval = tallies[0].interval().min(tallies[1].interval());
            let mut every = tokio::time::interval(interval);
            loop {
                every.tick().await;
                for tally in tallies {
                    tally.flush();
                }
            }
        });
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                crate::log::text(&format!("cannot use the control socket: {e}"));
                return;
            }
        };
        let mut signal = stopped.clone();
        let mut grace = stopped;
        let server =
            axum::serve(listener, control::router(state)).with_graceful_shutdown(async move {
                let _ = signal.wait_for(|stop| *stop).await;
            });
        tokio::select! {
            _ = server => {}
            () = async move {
                let _ = grace.wait_for(|stop| *stop).await;
                tokio::time::sleep(CONTROL_GRACE).await;
            } => {}
        }
    };
    match runtime() {
        Ok(runtime) => runtime.block_on(serve),
        Err(e) => crate::log::text(&format!("cannot start the control runtime: {e}")),
    }
}
