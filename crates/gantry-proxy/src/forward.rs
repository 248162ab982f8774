//! Forwarding one request: route it, pick an upstream, rewrite the headers a
//! proxy owns, send it over a pooled keep-alive connection, and stream the
//! answer back. An upstream that refuses the connection is ejected and the
//! request goes to another, once: the connection is made before the request
//! is handed over, so nothing of it has been sent. A connection the proxy
//! could not open for want of its own descriptors or memory
//! (`shortage`) ejects nothing: the request gets a 503 and the upstream
//! stays in rotation (else, under descriptor pressure, every upstream would
//! be ejected at once). Upgrades (WebSocket) become a byte tunnel between
//! the two connections, closed when either side stops taking what the
//! other sends.
//!
//! Nothing here buffers a body: both directions stream frame by frame.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::body::ProxyBody;
use crate::exchange::{Entry, Exchange};
use crate::forwarded::{self, Seen, TrustedProxy};
use crate::limits::Permit;
use crate::metrics::UpstreamError;
use crate::pages::Page;
use crate::pool::{ConnectError, Connection, Pool, SWEEP_EVERY};
use crate::router::Target;
use crate::state::ProxyState;
use crate::upstream::{InFlight, Upstream};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The headers that describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];
/// ACME's HTTP-01 challenges are answered over plain HTTP: never redirected.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";
/// How many times a request whose upstream was drained is routed again on
/// the current table. Once is the rule (the current table never routes to
/// a drained upstream); more means more deploys came while it was routed.
const MAX_REROUTES: usize = 3;

/// Who sent a request, and over what: one per client connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The client's address, ready for `X-Forwarded-For`.
    pub(crate) ip: HeaderValue,
    /// Whether the client's connection was TLS: `X-Forwarded-Proto`, and no
    /// redirect to HTTPS.
    pub(crate) tls: bool,
    pub(crate) addr: SocketAddr,
    /// The port the client connected to: `X-Forwarded-Port`.
    pub(crate) local_port: u16,
    /// The client is a trusted proxy: its forwarding headers are kept.
    pub(crate) trusted: bool,
    /// The connection's place under the connection caps, held as long as
    /// anything serves the connection (a WebSocket tunnel outlives hyper's).
    pub(crate) place: Arc<Permit>,
}

impl Peer {
    pub(crate) fn new(
        addr: SocketAddr,
        local_port: u16,
        tls: bool,
        trusted: &[TrustedProxy],
        place: Arc<Permit>,
    ) -> Peer {
        let ip = HeaderValue::try_from(addr.ip().to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            ip,
            tls,
            addr,
            local_port,
            trusted: forwarded::is_trusted(trusted, addr.ip()),
            place,
        }
    }
}

/// Forwards requests for one worker thread, with that thread's pool of
/// upstream connections.
pub(crate) struct Forwarder {
    state: Arc<ProxyState>,
    pool: Arc<Pool>,
}

impl Forwarder {
    /// Must be called on the worker's runtime: it starts the pool's sweeper there.
    pub(crate) fn new(state: Arc<ProxyState>) -> Forwarder {
        let pool = Arc::new(Pool::new(state.timeouts.connect, state.idle_per_worker));
        let swept = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                match swept.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => break,
                }
            }
        });
        Forwarder { state, pool }
    }

    pub(crate) async fn serve(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<ProxyBody>, Infallible> {
        // ACME's HTTP-01 challenges are answered here, before routing.
        if !peer.tls
            && let Some(challenges) = &self.state.challenges
            && let Some(answer) = challenges.answer(request.method(), request.uri().path())
        {
            return Ok(answer);
        }
        Ok(self.forward(request, &peer).await)
    }

    async fn forward(&self, request: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let mut routed = match self.route(started, &mut parts, peer) {
            Ok(routed) => routed,
            Err(answered) => return *answered,
        };
        if routed.target.site.is_none() {
            let host = host_text(routed.host.as_ref());
            match self.connect(&mut routed.target, host, &routed.path).await {
                Ok(connected) => {
                    return self.to_upstream(parts, body, peer, routed, connected).await;
                }
                Err(Unconnected::ProxyShort) => {
                    let page = Page::ProxyShort {
                        service: &routed.target.service,
                    };
                    return page.response(&routed.request_id, routed.exchange);
                }
                Err(Unconnected::NoUpstream) => {}
            }
        }
        // `connect` may have routed the request again, onto a static site.
        let Some(site) = &routed.target.site else {
            let service = &routed.target.service;
            return Page::Unavailable { service }.response(&routed.request_id, routed.exchange);
        };
        let in_site = routed.target.upstream_path(&parts.uri);
        let ask = crate::site::Ask {
            method: &parts.method,
            headers: &parts.headers,
            path: in_site.path(),
            request_path: &routed.path,
            query: parts.uri.query(),
            service: &routed.target.service,
            request_id: &routed.request_id,
        };
        crate::site::serve(Arc::clone(site), ask, routed.exchange).await
    }

    /// Routes a request and readies its URI and Host for the upstream; or
    /// the answer that ends it here: a refusal, no route, a redirect to HTTPS.
    fn route(
        &self,
        started: Instant,
        parts: &mut Parts,
        peer: &Peer,
    ) -> Result<Routed, Box<Response<ProxyBody>>> {
        // A request the proxy will not route still gets an exchange (and an
        // access-log line) and a page saying why.
        let checked = check(parts).and_then(|host| {
            let path = crate::path::normalize(parts.uri.path())?.into_owned();
            Ok((host, path))
        });
        let (host, path, refusal) = match checked {
            Ok((host, path)) => (host, path, None),
            Err(why) => (None, parts.uri.path().to_owned(), Some(why)),
        };
        let host_text = host_text(host.as_ref());
        let target = refusal
            .is_none()
            .then(|| self.state.router.load().find(host_text, &path).cloned())
            .flatten();
        let request_id = request_id(&mut parts.headers);
        let metrics = target.as_ref().map_or(&self.state.no_route, |t| &t.metrics);
        let exchange =
            Exchange::start(started, Arc::clone(metrics), &self.state.access_log, || {
                Entry {
                    method: parts.method.clone(),
                    host: host_text.to_owned(),
                    path: path.clone(),
                    client: peer.addr.ip().to_canonical(),
                    request_id: request_id.clone(),
                    service: target.as_ref().map(|t| Arc::clone(&t.service)),
                }
            });
        if let Some(why) = refusal {
            let page = if parts.method == Method::CONNECT {
                Page::MethodNotAllowed
            } else {
                Page::BadRequest { why }
            };
            return Err(Box::new(page.response(&request_id, exchange)));
        }
        let Some(target) = target else {
            let page = Page::NoRoute { host: host_text };
            return Err(Box::new(page.response(&request_id, exchange)));
        };
        // The upstream gets the path it was routed on, and the authority.
        if let Err(why) = set_path(&mut parts.uri, &path) {
            return Err(Box::new(
                Page::BadRequest { why }.response(&request_id, exchange),
            ));
        }
        if let Some(host) = &host {
            parts.headers.insert(HOST, host.clone());
        }
        if let Some(location) = self.https_location(&target, host_text, &path, parts, peer) {
            return Err(Box::new(crate::pages::redirect(
                location,
                &request_id,
                exchange,
            )));
        }
        Ok(Routed {
            target,
            host,
            path,
            request_id,
            exchange,
        })
    }

    /// Where a plain-HTTP request to a route that redirects to HTTPS goes
    /// instead; ACME's challenges are never redirected.
    fn https_location(
        &self,
        target: &Target,
        host: &str,
        path: &str,
        parts: &Parts,
        peer: &Peer,
    ) -> Option<HeaderValue> {
        if !target.redirect_https || peer.tls || path.starts_with(ACME_CHALLENGE) {
            return None;
        }
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        self.state
            .https_url(host, path_and_query)
            .and_then(|url| HeaderValue::try_from(url).ok())
    }

    /// Sends a routed request to the upstream it is connected to and
    /// streams the answer back; an upgrade becomes a tunnel.
    async fn to_upstream(
        &self,
        mut parts: Parts,
        body: Incoming,
        peer: &Peer,
        routed: Routed,
        connected: Connected,
    ) -> Response<ProxyBody> {
        let Routed {
            target,
            host,
            request_id,
            mut exchange,
            ..
        } = routed;
        let Connected {
            upstream,
            in_flight,
            connection,
        } = connected;
        let service = &*target.service;
        exchange.set_upstream(upstream.addr);
        let client_upgrade = upstream_headers(&mut parts, host.as_ref(), peer);
        let path = target.upstream_path(&parts.uri);
        let request = upstream_request(parts.method, path, parts.headers, body);
        let (response, connection) = match self.send(connection, request, &upstream).await {
            Ok(sent) => sent,
            Err(failed) => return failed.page(service).response(&request_id, exchange),
        };
        upstream.mark_alive();

        let (mut head, body) = response.into_parts();
        exchange.set_status(head.status);
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = head.extensions.remove::<OnUpgrade>();
            let (Some(client), Some(upstream_io)) = (client_upgrade, upstream_upgrade) else {
                // Switching protocols the client did not ask for.
                self.state
                    .metrics
                    .upstream_error(upstream.addr, UpstreamError::Response);
                return Page::BadGateway { service }.response(&request_id, exchange);
            };
            let state = Arc::clone(&self.state);
            // The tunnel keeps the client connection's place under the caps.
            let place = Arc::clone(&peer.place);
            tokio::spawn(async move {
                tunnel(client, upstream_io, exchange, in_flight, state).await;
                drop(place);
            });
            head.headers.insert(X_REQUEST_ID, request_id);
            return Response::from_parts(head, ProxyBody::empty());
        }
        strip_hop_by_hop(&mut head.headers);
        head.headers.entry(X_REQUEST_ID).or_insert(request_id);
        let body = ProxyBody::upstream(
            body,
            self.state.timeouts.idle,
            exchange,
            in_flight,
            (Arc::clone(&self.pool), connection),
        );
        Response::from_parts(head, body)
    }

    /// A connection first: if the upstream refuses, the request is still
    /// whole here and can go to another, once. It counts as in flight from
    /// the moment its upstream is chosen, so a drain never misses it.
    ///
    /// `target` is the route the request found on the table it read when it
    /// arrived (for `host` and `path`). A table swap and a drain of the old
    /// upstreams can have come since; an upstream a drain took out of
    /// service is never used (the agent stops it once the drain returns):
    /// the request is routed again on the current table, and `target`
    /// becomes that route.
    async fn connect(
        &self,
        target: &mut Arc<Target>,
        host: &str,
        path: &str,
    ) -> Result<Connected, Unconnected> {
        let mut refused: Option<Arc<Upstream>> = None;
        let mut rerouted = 0;
        loop {
            let upstream = target
                .pick(refused.as_deref())
                .cloned()
                .ok_or(Unconnected::NoUpstream)?;
            let Some(in_flight) = InFlight::unless_retired(Arc::clone(&upstream)) else {
                // Each time means another swap and drain came meanwhile.
                if rerouted == MAX_REROUTES {
                    return Err(Unconnected::NoUpstream);
                }
                rerouted += 1;
                let router = self.state.router.load();
                let found = router.find(host, path).ok_or(Unconnected::NoUpstream)?;
                *target = Arc::clone(found);
                // The current table's upstreams get their own retry.
                refused = None;
                continue;
            };
            match self.pool.checkout(upstream.addr).await {
                Ok(connection) => {
                    return Ok(Connected {
                        upstream,
                        in_flight,
                        connection,
                    });
                }
                // Another upstream would fail alike: this one stays in rotation.
                Err(e) if e.proxy_is_short() => {
                    proxy_short(upstream.addr, &e);
                    return Err(Unconnected::ProxyShort);
                }
                Err(_) => {
                    drop(in_flight);
                    upstream.eject();
                    self.state
                        .metrics
                        .upstream_error(upstream.addr, UpstreamError::Connect);
                    if refused.is_some() {
                        return Err(Unconnected::NoUpstream);
                    }
                    refused = Some(upstream);
                }
            }
        }
    }

    /// Sends the request and waits for the response's head, within the
    /// response timeout. A pooled connection the upstream closed before
    /// taking the request gives it back unsent: it goes again over a new
    /// connection.
    async fn send(
        &self,
        mut connection: Connection,
        mut request: Request<Incoming>,
        upstream: &Upstream,
    ) -> Result<(Response<Incoming>, Connection), Failed> {
        loop {
            let sent = tokio::time::timeout(
                self.state.timeouts.response,
                connection.sender.try_send_request(request),
            )
            .await;
            let failed = match sent {
                Ok(Ok(response)) => return Ok((response, connection)),
                Ok(Err(mut error)) => {
                    if let Some(unsent) = error.take_message().filter(|_| connection.reused) {
                        match Box::pin(self.pool.connect(upstream.addr)).await {
                            Ok(fresh) => {
                                (connection, request) = (fresh, unsent);
                                continue;
                            }
                            Err(e) if e.proxy_is_short() => {
                                proxy_short(upstream.addr, &e);
                                return Err(Failed::ProxyShort);
                            }
                            Err(_) => {
                                upstream.eject();
                                Failed::Unavailable
                            }
                        }
                    } else {
                        Failed::BadGateway
                    }
                }
                Err(_elapsed) => Failed::GatewayTimeout,
            };
            if let Some(kind) = failed.metric() {
                self.state.metrics.upstream_error(upstream.addr, kind);
            }
            return Err(failed);
        }
    }
}

/// Logs a connection to `upstream` the proxy could not open for want of
/// its own resources (`shortage`).
fn proxy_short(upstream: SocketAddr, error: &ConnectError) {
    crate::shortage::record(("upstream", upstream.to_string()), error);
}

/// Why a request has no upstream connection.
#[derive(Debug)]
enum Unconnected {
    /// No upstream took a connection, or the route now has none (it may
    /// have become a static site).
    NoUpstream,
    /// The proxy is short of descriptors or memory
    /// (`proxy_is_short`): no upstream is to blame.
    ProxyShort,
}

/// A request's upstream: chosen, counted in flight, and connected to.
struct Connected {
    upstream: Arc<Upstream>,
    in_flight: InFlight,
    connection: Connection,
}

/// A request routed to a service's upstreams: where it goes, and the
/// exchange that records it.
struct Routed {
    target: Arc<Target>,
    /// The authority, as the upstream gets it in `Host`.
    host: Option<HeaderValue>,
    /// The normalised path it was routed on.
    path: String,
    request_id: HeaderValue,
    exchange: Exchange,
}

/// Why an upstream gave no response.
#[derive(Clone, Copy)]
enum Failed {
    /// A fresh connection, for a request a pooled one gave back, was refused.
    Unavailable,
    /// The upstream broke the connection or sent something that is not HTTP.
    BadGateway,
    /// No response within the response timeout.
    GatewayTimeout,
    /// That fresh connection could not be opened for want of the proxy's
    /// own descriptors or memory: not the upstream's failure.
    ProxyShort,
}

impl Failed {
    /// The upstream error it counts as, if it is the upstream's.
    fn metric(self) -> Option<UpstreamError> {
        match self {
            Failed::Unavailable => Some(UpstreamError::Connect),
            Failed::BadGateway => Some(UpstreamError::Response),
            Failed::GatewayTimeout => Some(UpstreamError::Timeout),
            Failed::ProxyShort => None,
        }
    }

    fn page(self, service: &str) -> Page<'_> {
        match self {
            Failed::ProxyShort => Page::ProxyShort { service },
            Failed::Unavailable => Page::Unavailable { service },
            Failed::BadGateway => Page::BadGateway { service },
            Failed::GatewayTimeout => Page::GatewayTimeout { service },
        }
    }
}

/// Puts the normalised `path` in the URI when it differs, keeping the
/// query. Never forward a path other than the one routed on: one that is
/// not a URI is refused.
fn set_path(uri: &mut Uri, path: &str) -> Result<(), &'static str> {
    if path == uri.path() {
        return Ok(());
    }
    let rewritten = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    *uri = Uri::try_from(rewritten).map_err(|_| "the path cannot be normalised")?;
    Ok(())
}

/// The headers as the upstream gets them: the hop-by-hop ones go (but an
/// upgrade the client asked for is passed on) and the forwarding ones are
/// set. Returns the client's side of that upgrade.
fn upstream_headers(
    parts: &mut Parts,
    host: Option<&HeaderValue>,
    peer: &Peer,
) -> Option<OnUpgrade> {
    let client_upgrade = wants_upgrade(parts.version, &parts.headers)
        .then(|| parts.extensions.remove::<OnUpgrade>())
        .flatten();
    let upgrade = client_upgrade
        .as_ref()
        .and_then(|_| parts.headers.get(UPGRADE).cloned());
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol);
    }
    // Room for the headers the proxy adds, in one allocation.
    parts.headers.reserve(5);
    forwarded::set(
        &mut parts.headers,
        &Seen {
            client: &peer.ip,
            tls: peer.tls,
            host,
            port: peer.local_port,
            trusted: peer.trusted,
        },
    );
    client_upgrade
}

/// The request as an upstream gets it: HTTP/1.1 whatever the client spoke,
/// in origin form.
fn upstream_request(
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    body: Incoming,
) -> Request<Incoming> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.version_mut() = Version::HTTP_11;
    *request.uri_mut() = Uri::from(path);
    *request.headers_mut() = headers;
    request
}

/// The authority a request is for: the URI's (HTTP/2's `:authority`, an
/// absolute-form target) or the Host header's, which must then agree; or
/// why the request is refused. Two names would let the proxy route on one
/// while the upstream reads the other.
fn check(parts: &Parts) -> Result<Option<HeaderValue>, &'static str> {
    if parts.method == Method::CONNECT {
        return Err("CONNECT is not served");
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header");
    }
    let Some(authority) = parts.uri.authority() else {
        return Ok(header.cloned());
    };
    if header.is_some_and(|h| {
        !h.as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    }) {
        return Err("the Host header differs from the request's authority");
    }
    Ok(HeaderValue::from_str(authority.as_str()).ok())
}

/// The authority as routes are looked up by ("" when there is none).
fn host_text(host: Option<&HeaderValue>) -> &str {
    host.and_then(|h| h.to_str().ok()).unwrap_or("")
}

/// The client's request id if it sent a sensible one, else a new one; the
/// headers carry it upstream either way.
fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID)
        && (1..=200).contains(&id.len())
        && id.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return id.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(fastrand::u128(..).to_le_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    let id = HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"));
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

fn wants_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
}

/// Removes the headers that describe one connection, not the message: the
/// fixed list and whatever `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names finds out
    // without hashing each candidate.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Relays bytes both ways between an upgraded client connection and its
/// upstream. When either side closes, its close is passed on and the tunnel
/// ends: a WebSocket has no use for a half-closed connection. When either
/// side stops taking what the other sends (`relay`), both are closed: a
/// client that does not read must not hold its upstream, and the bytes on
/// the way, for ever. A quiet tunnel, with nothing waiting either way, lives
/// as long as its ends do. The exchange and the in-flight count last as long
/// as the tunnel, so a drain waits for open WebSockets.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut exchange: Exchange,
    in_flight: InFlight,
    state: Arc<ProxyState>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(_) => {
            exchange.set_error("upgrade failed");
            return;
        }
    };
    let (mut client_reads, mut client_writes) = tokio::io::split(TokioIo::new(client));
    let (mut upstream_reads, mut upstream_writes) = tokio::io::split(TokioIo::new(upstream));
    let open = state.metrics.websockets();
    open.inc();
    // The same patience as for a response the client takes nothing of.
    let stall = state.clients.idle;
    let ended = tokio::select! {
        ended = relay(&mut client_reads, &mut upstream_writes, stall) => ended,
        ended = relay(&mut upstream_reads, &mut client_writes, stall) => ended,
    };
    match ended {
        Ok(()) => {}
        Err(Relay::Stalled) => exchange.set_error("tunnel stalled"),
        Err(Relay::Broken) => exchange.set_error("tunnel closed with an error"),
    }
    open.dec();
    // Both connections close as their halves drop here.
    drop(in_flight);
}

/// Bytes read from one side of a tunnel and relayed at a time.
const RELAY_BUFFER: usize = 8 * 1024;

/// Why one direction of a tunnel ended before its reader closed.
#[derive(Debug, PartialEq, Eq)]
enum Relay {
    /// Bytes waited for the writer and it took none of them for the stall
    /// limit.
    Stalled,
    /// A read or a write failed.
    Broken,
}

/// Copies `from` to `to` until `from` ends, then passes the end on.
/// Waiting for `from` to say something has no limit; bytes waiting for
/// `to` do: each write (or flush) that takes none of them for `stall`
/// means `to` has stopped reading. Every byte `to` takes starts the clock
/// again, so a slow but steady reader is never cut.
async fn relay<R, W>(from: &mut R, to: &mut W, stall: Duration) -> Result<(), Relay>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; RELAY_BUFFER];
    loop {
        let read = from.read(&mut buffer).await.map_err(|_| Relay::Broken)?;
        if read == 0 {
            // A close that cannot be written in time is not waited for.
            let _ = tokio::time::timeout(stall, to.shutdown()).await;
            return Ok(());
        }
        let mut pending = &buffer[..read];
        while !pending.is_empty() {
            let written = taken_within(stall, to.write(pending)).await?;
            if written == 0 {
                return Err(Relay::Broken);
            }
            pending = &pending[written..];
        }
        // What a TLS stream holds back must reach the socket, in time too.
        taken_within(stall, to.flush()).await?;
    }
}

/// One write's outcome, or `Stalled` when it takes nothing for `stall`.
async fn taken_within<T>(
    stall: Duration,
    write: impl Future<Output = std::io::Result<T>>,
) -> Result<T, Relay> {
    match tokio::time::timeout(stall, write).await {
        Ok(Ok(taken)) => Ok(taken),
        Ok(Err(_)) => Err(Relay::Broken),
        Err(_elapsed) => Err(Relay::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timeouts;
    use crate::exchange::AccessLog;
    use crate::table::{Route, RouteTable, StaticSite};
    use crate::tls::CertStore;

    const HOST: &str = "web.test";

    /// A worker's forwarder over a proxy's state, without listeners.
    fn forwarder(dir: &tempfile::TempDir, table: RouteTable) -> Forwarder {
        let state = ProxyState::new(
            table,
            dir.path().join("routes.json"),
            AccessLog::off(),
            Timeouts::default(),
            Arc::new(CertStore::new(None)),
            None,
        );
        Forwarder::new(Arc::new(state))
    }

    /// An upstream that accepts connections (into its backlog: as a
    /// stopping instance's listener can, until it is gone).
    async fn listening() -> (tokio::net::TcpListener, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        (listener, addr)
    }

    fn to(upstream: SocketAddr) -> RouteTable {
        RouteTable {
            routes: vec![Route::new("web", vec![upstream]).hosts([HOST])],
        }
    }

    /// The route a request arriving now finds.
    fn arrives(forwarder: &Forwarder) -> Arc<Target> {
        let router = forwarder.state.router.load();
        Arc::clone(router.find(HOST, "/").expect("routed"))
    }

    /// Where a request that found `target` is sent.
    async fn sent_to(forwarder: &Forwarder, mut target: Arc<Target>) -> SocketAddr {
        let connected = forwarder.connect(&mut target, HOST, "/").await;
        connected.expect("an upstream takes it").upstream.addr
    }

    #[tokio::test]
    async fn a_request_routed_before_a_swap_and_drain_goes_to_the_new_upstream() {
        let (_old_listener, old) = listening().await;
        let (_new_listener, new) = listening().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let forwarder = forwarder(&dir, to(old));
        // Routed on the old table; not yet sent when the deploy cuts over.
        let routed = arrives(&forwarder);
        forwarder.state.replace(to(new)).await.expect("swaps");
        let open = forwarder.state.drain(&[old], Duration::ZERO).await;
        assert_eq!(open, 0, "nothing was counted on the old upstream yet");
        // The agent stops the old instance now; the request must not go there.
        assert_eq!(sent_to(&forwarder, routed).await, new);
        assert_eq!(forwarder.state.upstreams.get(old).in_flight(), 0);
    }

    #[tokio::test]
    async fn a_drain_of_an_upstream_the_table_still_routes_to_leaves_it_in_service() {
        let (_listener, only) = listening().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let forwarder = forwarder(&dir, to(only));
        let routed = arrives(&forwarder);
        // As when the agent's table swap failed and it drains anyway.
        forwarder.state.drain(&[only], Duration::ZERO).await;
        assert_eq!(sent_to(&forwarder, routed).await, only);
        assert_eq!(sent_to(&forwarder, arrives(&forwarder)).await, only);
    }

    #[tokio::test]
    async fn a_table_that_routes_to_a_drained_address_again_puts_it_back_in_service() {
        let (_reused_listener, reused) = listening().await;
        let (_between_listener, between) = listening().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let forwarder = forwarder(&dir, to(reused));
        let routed = arrives(&forwarder);
        forwarder.state.replace(to(between)).await.expect("swaps");
        forwarder.state.drain(&[reused], Duration::ZERO).await;
        // A later release's instance got the port back.
        forwarder.state.replace(to(reused)).await.expect("swaps");
        assert_eq!(sent_to(&forwarder, routed).await, reused);
        assert_eq!(sent_to(&forwarder, arrives(&forwarder)).await, reused);
    }

    #[tokio::test]
    async fn a_request_whose_route_became_a_static_site_is_left_to_the_site() {
        let (_old_listener, old) = listening().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let forwarder = forwarder(&dir, to(old));
        let mut routed = arrives(&forwarder);
        let site = Route::site("web", StaticSite::new(dir.path())).hosts([HOST]);
        let table = RouteTable { routes: vec![site] };
        forwarder.state.replace(table).await.expect("swaps");
        forwarder.state.drain(&[old], Duration::ZERO).await;
        let connected = forwarder.connect(&mut routed, HOST, "/").await;
        assert!(
            matches!(connected, Err(Unconnected::NoUpstream)),
            "no upstream serves a site"
        );
        assert!(
            routed.site.is_some(),
            "the request now has the site's route"
        );
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn a_sensible_request_id_is_kept_and_a_bad_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut headers), "abc-123");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let id = request_id(&mut headers);
        assert_eq!(id.len(), 32);
        assert_eq!(headers[X_REQUEST_ID], id);
    }

    #[test]
    fn only_http11_with_connection_upgrade_is_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(wants_upgrade(Version::HTTP_11, &headers));
        assert!(!wants_upgrade(Version::HTTP_2, &headers));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_upgrade(Version::HTTP_11, &headers));
    }
}
