//! A worker thread: serves the client connections the acceptors hand it,
//! each from its first byte to its close. A connection gets the TLS
//! handshake first when it came to the HTTPS listener, then its first bytes
//! are read under a deadline to learn its protocol (`preface`), then hyper
//! serves it until it ends, the proxy stops or hands off, it has had no
//! request open for the idle timeout, or every response open on it has
//! waited that long for the client to take anything. An HTTP/2 response
//! that waited so while others of its connection go on is reset alone.
//!
//! Must never: keep a connection that sends nothing or takes nothing, or
//! wait on one connection while serving another.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use crate::forward::{Forwarder, Peer};
use crate::handoff::HandedOff;
use crate::limits::{Activity, Check, Permit};
use crate::preface::{self, Protocol};
use crate::server::runtime;
use crate::state::ProxyState;
use crate::stream_reset::{ResettableStreams, StreamReset};
use crate::tls;

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// A connection on its way from an acceptor to a worker, with its place
/// under the connection caps.
pub(crate) type Accepted = (std::net::TcpStream, std::net::SocketAddr, Scheme, Permit);

pub(crate) fn worker(
    connections: mpsc::UnboundedReceiver<Accepted>,
    open: Arc<AtomicUsize>,
    state: Arc<ProxyState>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    stopped: watch::Receiver<bool>,
    handed_off: HandedOff,
) {
    match runtime() {
        Ok(runtime) => runtime.block_on(serve_connections(
            connections,
            open,
            state,
            tls_config,
            stopped,
            handed_off,
        )),
        Err(e) => crate::log::text(&format!("cannot start a worker's runtime: {e}")),
    }
}

/// What every connection task of one worker shares.
#[derive(Clone)]
struct Shared {
    http: auto::Builder<ResettableStreams>,
    forwarder: Arc<Forwarder>,
    state: Arc<ProxyState>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    handed_off: HandedOff,
    stopped: watch::Receiver<bool>,
    /// Set once the worker closes its plain-HTTP connections.
    closing: watch::Receiver<bool>,
}

async fn serve_connections(
    mut connections: mpsc::UnboundedReceiver<Accepted>,
    open: Arc<AtomicUsize>,
    state: Arc<ProxyState>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    mut stopped: watch::Receiver<bool>,
    handed_off: HandedOff,
) {
    let limits = state.clients;
    let mut http = auto::Builder::new(ResettableStreams);
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.headers);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.streams())
        .keep_alive_interval(limits.ping)
        .keep_alive_timeout(limits.ping);
    let (close, closing) = watch::channel(false);
    let shared = Shared {
        http,
        forwarder: Arc::new(Forwarder::new(Arc::clone(&state))),
        state: Arc::clone(&state),
        tls_config,
        handed_off: handed_off.clone(),
        stopped: stopped.clone(),
        closing,
    };
    let mut stopping = false;
    loop {
        // Once stopped, the connections the acceptor already handed over are
        // still served: the channel ends when the acceptor has stopped.
        let (stream, addr, scheme, permit) = tokio::select! {
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
        let (shared, open) = (shared.clone(), Arc::clone(&open));
        tokio::spawn(async move {
            serve_client(stream, addr, scheme, Arc::new(permit), &shared).await;
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
    let _ = close.send(true);
    while open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One client connection, from accept to close.
async fn serve_client(
    stream: std::net::TcpStream,
    addr: std::net::SocketAddr,
    scheme: Scheme,
    place: Arc<Permit>,
    shared: &Shared,
) {
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let local_port = stream.local_addr().map_or(0, |a| a.port());
    let limits = shared.state.clients;
    if scheme == Scheme::Http {
        let peer = Peer::new(addr, local_port, false, &shared.state.trusted, place);
        // Plain connections close when the worker does, after the wait for
        // open requests that follows a handoff.
        let closing = shared.closing.clone();
        serve_http(stream, peer, shared, closing).await;
        return;
    }
    let Some(config) = shared.tls_config.clone() else {
        return;
    };
    if let Some(stream) = tls::handshake(stream, addr, config, limits.handshake).await {
        let peer = Peer::new(addr, local_port, true, &shared.state.trusted, place);
        serve_http(stream, peer, shared, shared.stopped.clone()).await;
    }
}

/// Reads the first bytes under their deadline, then serves HTTP on the
/// connection until it ends, `close` is set, an HTTP/2 connection's proxy
/// hands off (GOAWAY: its next requests go to the new process), or it has
/// been idle too long. Closing is graceful: open requests finish, unless
/// the client stops taking them (`Check::Stalled`), or takes nothing more
/// for the idle time once they are done.
///
/// A stalled connection is dropped, not closed gracefully: its responses'
/// bodies go with it (HTTP/2 streams are reset), and with them their
/// upstream connections and files. One stalled HTTP/2 stream among others
/// that go on is reset alone (`Activity::check`, `stream_reset`), and the
/// connection serves on. A WebSocket is not held here: its tunnel takes
/// the connection from hyper after the 101.
async fn serve_http<S>(stream: S, peer: Peer, shared: &Shared, mut close: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.state.clients;
    let Some((protocol, stream)) = preface::read(stream, limits.first_bytes).await else {
        return;
    };
    let activity = Activity::new();
    let service = answering(
        Arc::clone(&shared.forwarder),
        peer,
        shared.handed_off.clone(),
        Arc::clone(&activity),
    );
    let connection = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut handed_off = shared.handed_off.subscribe();
    let h2 = protocol == Protocol::Http2;
    let idle = tokio::time::sleep(limits.idle);
    tokio::pin!(idle);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = close.wait_for(|c| *c), if !closing => {}
            _ = handed_off.wait_for(|h| *h), if h2 && !closing => {}
            () = idle.as_mut() => {
                let now = tokio::time::Instant::now();
                match activity.check(limits.idle, now) {
                    Check::Until(at) => {
                        idle.as_mut().reset(at);
                        continue;
                    }
                    // The close gets an idle time of its own to finish.
                    Check::Idle if !closing => idle.as_mut().reset(now + limits.idle),
                    Check::Idle | Check::Stalled => return,
                }
            }
        }
        closing = true;
        connection.as_mut().graceful_shutdown();
    }
}

/// The service of one client connection: the forwarder, and once this
/// proxy has handed its listeners off, `Connection: close` on each HTTP/1
/// answer so the client's next request goes to a connection the new
/// process accepted. Each request counts as open on the connection until
/// its response is done; an HTTP/2 one with the reset of its stream, whose
/// task runs the future answered here.
fn answering(
    forwarder: Arc<Forwarder>,
    peer: Peer,
    handed: HandedOff,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::body::ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl Future<
        Output = Result<hyper::Response<crate::body::ProxyBody>, std::convert::Infallible>,
    > + Send,
> + Clone {
    service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let open = activity.request();
        let http1 = request.version() < hyper::Version::HTTP_2;
        let answer = Arc::clone(&forwarder).serve(request, peer.clone());
        let handed = handed.clone();
        async move {
            if let Some(reset) = StreamReset::of_this_task() {
                open.resettable(reset);
            }
            let mut response = answer.await?;
            if http1 && handed.is_set() {
                close_after(&mut response);
            }
            Ok::<_, std::convert::Infallible>(response.map(|body| body.holding(open)))
        }
    })
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
