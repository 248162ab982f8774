//! The proxy's threads: one worker per core, each a single-threaded tokio
//! runtime that serves its connections and forwards with its own pool of
//! upstream connections (a request never hops threads, as in nginx's
//! workers); an acceptor that hands each new connection to the worker with
//! the fewest; and one thread for the control API.
//!
//! The listener is bound before anything starts, so `start_on` can take one
//! inherited from a previous proxy (the seam for listener handoff on
//! restart). TLS goes in `serve_connections`: a rustls acceptor wraps the
//! stream (`Peer::tls` set) and ALPN picks HTTP/2 or HTTP/1.1 before
//! `serve_connection_with_upgrades`.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{mpsc, watch};

use crate::acme::{AcmeConfig, AcmeEvent, AcmeManager, Challenges, OnIssued, acme_names};
use crate::exchange::AccessLog;
use crate::forward::{Forwarder, Peer};
use crate::state::ProxyState;
use crate::{ProxyConfig, ProxyError, control, route_file};

/// How long a client may take to send a request's headers.
const HEADER_READ: Duration = Duration::from_secs(30);
/// Pending connections the kernel keeps for the listener.
const BACKLOG: i32 = 4096;
/// How long the control API's open requests get once the proxy stops.
const CONTROL_GRACE: Duration = Duration::from_secs(1);

/// A proxy serving on its own threads. Dropping it stops it, like `stop`.
pub struct RunningProxy {
    http_addr: SocketAddr,
    control_socket: PathBuf,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    acme: Option<AcmeManager>,
}

impl RunningProxy {
    /// Where the proxy accepts HTTP (the port is known here when 0 was asked).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn control_socket(&self) -> &Path {
        &self.control_socket
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
        let _ = std::fs::remove_file(&self.control_socket);
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
    let listener = bind_http(config.http)?;
    start_on(listener, config)
}

/// Starts serving on a listener that is already bound (`config.http` is not
/// used): one a restarting proxy hands over, or one a test bound to port 0.
/// Loads `routes.json` from the state directory and opens the control socket.
pub fn start_on(
    listener: std::net::TcpListener,
    config: ProxyConfig,
) -> Result<RunningProxy, ProxyError> {
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
    std::fs::create_dir_all(&config.state_dir).map_err(|source| ProxyError::State {
        action: "create",
        path: config.state_dir.clone(),
        source,
    })?;
    let routes_file = route_file::path(&config.state_dir);
    let table = route_file::load(&routes_file)?;
    let control = bind_control(&config.control_socket)?;
    let access_log = if config.access_log {
        AccessLog::stderr()
    } else {
        AccessLog::off()
    };
    let mut state = ProxyState::new(table, routes_file, access_log, config.timeouts);
    let acme = match config.acme.clone() {
        Some(acme) => Some(start_acme(acme, &config, &mut state)?),
        None => None,
    };
    let state = Arc::new(state);
    let (stop, stopped) = watch::channel(false);
    let mut proxy = RunningProxy {
        http_addr,
        control_socket: config.control_socket.clone(),
        stop,
        threads: Vec::new(),
        acme,
    };
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        config.workers
    };
    let mut slots = Vec::with_capacity(workers);
    for index in 0..workers {
        let (connections, received) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        slots.push(WorkerSlot {
            connections,
            open: Arc::clone(&open),
        });
        let (state, stopped) = (Arc::clone(&state), stopped.clone());
        proxy
            .threads
            .push(spawn(format!("gantry-proxy-{index}"), move || {
                worker(received, open, state, stopped);
            })?);
    }
    let accepting = stopped.clone();
    proxy
        .threads
        .push(spawn("gantry-proxy-accept".to_owned(), move || {
            acceptor(listener, slots, accepting);
        })?);
    proxy
        .threads
        .push(spawn("gantry-proxy-control".to_owned(), move || {
            serve_control(control, state, stopped);
        })?);
    Ok(proxy)
}

/// Starts the ACME manager on the table just loaded, and links it to the
/// state: the workers answer its challenges, new tables reach it.
fn start_acme(
    acme: AcmeConfig,
    config: &ProxyConfig,
    state: &mut ProxyState,
) -> Result<AcmeManager, ProxyError> {
    let challenges = Challenges::new();
    let (names, _refused) = acme_names(&state.table());
    let external = config.on_acme_event.clone();
    let on_event: OnIssued = Arc::new(move |event: &AcmeEvent<'_>| {
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

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ProxyError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(ProxyError::Thread)
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

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A worker as the acceptor sees it: where to send a connection, and how
/// many it has open.
struct WorkerSlot {
    connections: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
}

/// Accepts connections and hands each to the worker with the fewest open.
/// Workers accepting from the socket themselves would let the first one
/// awake take every connection of a burst, leaving the others idle.
fn acceptor(
    listener: std::net::TcpListener,
    workers: Vec<WorkerSlot>,
    stopped: watch::Receiver<bool>,
) {
    match runtime() {
        Ok(runtime) => runtime.block_on(accept(listener, workers, stopped)),
        Err(e) => eprintln!("gantry-proxy: cannot start the acceptor's runtime: {e}"),
    }
}

async fn accept(
    listener: std::net::TcpListener,
    workers: Vec<WorkerSlot>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("gantry-proxy: cannot use the listener: {e}");
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
                    let Ok(stream) = stream.into_std() else { continue };
                    // Least open connections; ties go round the workers.
                    next = (next + 1) % workers.len();
                    let chosen = (0..workers.len())
                        .map(|i| &workers[(next + i) % workers.len()])
                        .min_by_key(|w| w.open.load(Ordering::Relaxed));
                    if let Some(worker) = chosen {
                        worker.open.fetch_add(1, Ordering::Relaxed);
                        let _ = worker.connections.send((stream, addr));
                    }
                }
                // Out of file descriptors or a connection reset while
                // queued: back off a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

fn worker(
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    state: Arc<ProxyState>,
    stopped: watch::Receiver<bool>,
) {
    match runtime() {
        Ok(runtime) => runtime.block_on(serve_connections(connections, open, state, stopped)),
        Err(e) => eprintln!("gantry-proxy: cannot start a worker's runtime: {e}"),
    }
}

async fn serve_connections(
    mut connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    state: Arc<ProxyState>,
    mut stopped: watch::Receiver<bool>,
) {
    let forwarder = Arc::new(Forwarder::new(Arc::clone(&state)));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, addr) = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            connection = connections.recv() => match connection {
                Some(connection) => connection,
                None => break,
            },
        };
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
            open.fetch_sub(1, Ordering::Relaxed);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer::new(addr, false);
        let forwarder = Arc::clone(&forwarder);
        let service =
            service_fn(move |request| Arc::clone(&forwarder).serve(request, peer.clone()));
        let connection = http
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            let _ = connection.await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let _ = tokio::time::timeout(state.timeouts.shutdown, graceful.shutdown()).await;
}

fn serve_control(
    listener: std::os::unix::net::UnixListener,
    state: Arc<ProxyState>,
    stopped: watch::Receiver<bool>,
) {
    let serve = async move {
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("gantry-proxy: cannot use the control socket: {e}");
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
        Err(e) => eprintln!("gantry-proxy: cannot start the control runtime: {e}"),
    }
}
