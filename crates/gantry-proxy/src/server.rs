//! The proxy's threads: one worker per core, each a single-threaded tokio
//! runtime that serves its connections and forwards with its own pool of
//! upstream connections (a request never hops threads, as in nginx's
//! workers); an acceptor that hands each new connection to the worker with
//! the fewest; and one thread for the control API.
//!
//! The listeners are bound before anything starts, so `start_with` can take
//! them from a previous proxy: `take_over` receives them over the running
//! proxy's handoff socket (see `handoff`). TLS goes in `serve_connections`: a rustls acceptor wraps the
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

use crate::exchange::AccessLog;
use crate::forward::{Forwarder, Peer};
use crate::handoff::{self, HandedOff, Listeners};
use crate::state::ProxyState;
use crate::{ProxyConfig, ProxyError, control, route_file};

/// The name of the plain HTTP listener, as handoff passes it.
pub const HTTP: &str = "http";

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
    handoff_socket: PathBuf,
    handed_off: HandedOff,
    /// The process this one took the listeners from, if it did.
    took_over_from: Option<u32>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Where the proxy accepts HTTP (the port is known here when 0 was asked).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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
    let listener = bind_http(config.http)?;
    start_on(listener, config)
}

/// Starts serving on a listener that is already bound (`config.http` is not
/// used): one a test bound to port 0. Loads `routes.json` from the state
/// directory and opens the control and handoff sockets.
pub fn start_on(
    listener: std::net::TcpListener,
    config: ProxyConfig,
) -> Result<RunningProxy, ProxyError> {
    let mut listeners = Listeners::default();
    listeners.insert(HTTP, listener);
    start_with(listeners, config)
}

/// Starts serving on these listeners, by name (`http`).
pub fn start_with(listeners: Listeners, config: ProxyConfig) -> Result<RunningProxy, ProxyError> {
    let bind_at = (config.control_socket.clone(), config.handoff_socket.clone());
    launch(listeners, config, bind_at, None)
}

/// Takes over the listening sockets of the proxy that serves
/// `config.handoff_socket`, then its control socket; that proxy stops
/// accepting, finishes its open requests and exits. A listener the config
/// names that the old proxy did not hold is bound here.
pub fn take_over(config: ProxyConfig) -> Result<RunningProxy, ProxyError> {
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
    let mut listeners = listeners;
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
    std::fs::create_dir_all(&config.state_dir).map_err(|source| ProxyError::State {
        action: "create",
        path: config.state_dir.clone(),
        source,
    })?;
    let routes_file = route_file::path(&config.state_dir);
    let table = route_file::load(&routes_file)?;
    let control = bind_control(&bind_at.0)?;
    let handoff_listener = bind_handoff(&bind_at.1)?;
    // What a later handoff passes on: every listener this proxy serves.
    let mut held = Listeners::default();
    held.insert(
        HTTP,
        listener.try_clone().map_err(|source| ProxyError::Listen {
            addr: http_addr,
            source,
        })?,
    );
    let held = held.duplicate().map_err(|source| ProxyError::Listen {
        addr: http_addr,
        source,
    })?;
    let access_log = if config.access_log {
        AccessLog::stderr()
    } else {
        AccessLog::off()
    };
    let state = Arc::new(ProxyState::new(
        table,
        routes_file,
        access_log,
        config.timeouts,
    ));
    let handed_off = HandedOff::new();
    let (stop, stopped) = watch::channel(false);
    let mut proxy = RunningProxy {
        http_addr,
        control_socket: bind_at.0.clone(),
        handoff_socket: bind_at.1.clone(),
        handed_off: handed_off.clone(),
        took_over_from,
        stop,
        threads: Vec::new(),
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
        let (state, stopped, handed_off) =
            (Arc::clone(&state), stopped.clone(), handed_off.clone());
        proxy
            .threads
            .push(spawn(format!("gantry-proxy-{index}"), move || {
                worker(received, open, state, stopped, handed_off);
            })?);
    }
    let accepting = stopped.clone();
    proxy
        .threads
        .push(spawn("gantry-proxy-accept".to_owned(), move || {
            acceptor(listener, slots, accepting);
        })?);
    let handing = stopped.clone();
    proxy.threads.push(spawn(
        "gantry-proxy-handoff".to_owned(),
        move || match runtime() {
            Ok(runtime) => {
                runtime.block_on(handoff::serve(handoff_listener, held, handed_off, handing));
            }
            Err(e) => eprintln!("gantry-proxy: cannot start the handoff runtime: {e}"),
        },
    )?);
    proxy
        .threads
        .push(spawn("gantry-proxy-control".to_owned(), move || {
            serve_control(control, state, stopped);
        })?);
    Ok(proxy)
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
    handed_off: HandedOff,
) {
    match runtime() {
        Ok(runtime) => runtime.block_on(serve_connections(
            connections,
            open,
            state,
            stopped,
            handed_off,
        )),
        Err(e) => eprintln!("gantry-proxy: cannot start a worker's runtime: {e}"),
    }
}

async fn serve_connections(
    mut connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    state: Arc<ProxyState>,
    mut stopped: watch::Receiver<bool>,
    handed_off: HandedOff,
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
    let mut stopping = false;
    loop {
        // Once stopped, the connections the acceptor already handed over are
        // still served: the channel ends when the acceptor has stopped.
        let (stream, addr) = tokio::select! {
            biased;
            _ = stopped.changed(), if !stopping => {
                stopping = true;
                continue;
            }
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
        let handed = handed_off.clone();
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let http1 = request.version() < hyper::Version::HTTP_2;
            let answer = Arc::clone(&forwarder).serve(request, peer.clone());
            let handed = handed.clone();
            async move {
                let mut response = answer.await?;
                if http1 && handed.is_set() {
                    close_after(&mut response);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
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
    let deadline = tokio::time::Instant::now() + state.timeouts.shutdown;
    if handed_off.is_set() {
        // Open keep-alive connections get their next answer with
        // `Connection: close` rather than a close that could cross a request
        // already on its way; WebSockets keep going until they end.
        while (open.load(Ordering::Relaxed) > 0 || state.metrics.websockets().get() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = tokio::time::timeout_at(deadline, graceful.shutdown()).await;
}

/// Makes an HTTP/1 response the connection's last (not a protocol switch,
/// which needs its `Connection: upgrade`).
fn close_after<B>(response: &mut hyper::Response<B>) {
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
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
