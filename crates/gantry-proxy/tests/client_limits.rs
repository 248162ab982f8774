//! What a client may hold of the proxy: a connection that says nothing,
//! stops inside the HTTP/2 preface, stalls its TLS handshake, says nothing
//! after it, sits idle on HTTP/2, or stops taking a response (HTTP/1: never
//! reads; HTTP/2: gives every open stream no window) is closed by the proxy
//! once its deadline passes, and the upstream's response is let go; an
//! HTTP/2 stream given no window beside another that goes on is reset
//! alone, and the connection serves on; one address cannot hold more
//! connections than its cap, nor one HTTP/2 connection more requests open
//! than its cap of streams.
//! The deadlines are short here so the tests do not wait; each test only
//! asks whether the proxy closed the socket before its patience ran out.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::{ClientLimits, ProxyConfig, Route, RouteTable, StaticSite, Tls};
use http_body_util::BodyExt as _;
use hyper::body::{Frame, SizeHint};
use hyper::client::conn::http2;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use support::{
    PATIENCE, TestProxy, client, closed_by_proxy, echo_upstream, empty, eventually, tls_connect,
    upstream,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const SHORT: Duration = Duration::from_millis(300);

fn short_deadlines(config: &mut ProxyConfig) {
    config.clients = ClientLimits {
        handshake: SHORT,
        first_bytes: SHORT,
        headers: SHORT,
        idle: SHORT,
        ..ClientLimits::default()
    };
}

async fn proxy_with(configure: impl FnOnce(&mut ProxyConfig)) -> (TestProxy, support::Upstream) {
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), configure);
    let web = echo_upstream("web").await;
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("web", vec![web.addr])
                    .hosts(["web.shop.localhost"])
                    .tls(Tls::Local),
            ],
        })
        .await;
    (proxy, web)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let (proxy, _web) = proxy_with(short_deadlines).await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed_by_proxy(&mut silent).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_inside_the_http2_preface_is_closed() {
    let (proxy, _web) = proxy_with(short_deadlines).await;
    let mut partial = TcpStream::connect(proxy.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_by_proxy(&mut partial).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_whose_headers_never_end_is_closed() {
    let (proxy, _web) = proxy_with(short_deadlines).await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web.shop.localhost\r\n")
        .await
        .unwrap();
    assert!(closed_by_proxy(&mut slow).await);
}

fn https_with_short_deadlines(config: &mut ProxyConfig) {
    short_deadlines(config);
    config.https = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_is_closed() {
    let (proxy, _web) = proxy_with(https_with_short_deadlines).await;
    let mut stalled = TcpStream::connect(proxy.https.unwrap()).await.unwrap();
    assert!(closed_by_proxy(&mut stalled).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_that_sends_nothing_after_its_handshake_is_closed() {
    let (proxy, _web) = proxy_with(https_with_short_deadlines).await;
    let ca = CertificateDer::from_pem_file(proxy.dir.path().join("state/ca/ca.pem")).unwrap();
    let mut silent = tls_connect(
        proxy.https.unwrap(),
        &[ca],
        "web.shop.localhost",
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    assert!(closed_by_proxy(&mut silent).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_is_closed_after_its_requests() {
    let (proxy, web) = proxy_with(short_deadlines).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::get("http://web.shop.localhost/")
        .version(Version::HTTP_2)
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    assert_eq!(web.hits(), 1);
    // The client answers pings and keeps the connection; the proxy ends it
    // (GOAWAY, then close) once no request has been open for the idle time.
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the proxy kept the idle h2c connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_that_does_not_answer_pings_is_closed() {
    // Idle connections are kept for the default minute here: only the
    // unanswered ping can end this one.
    let (proxy, _web) = proxy_with(|config| config.clients.ping = SHORT).await;
    let mut mute = TcpStream::connect(proxy.addr).await.unwrap();
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame, and then nothing: no ACK, no PING answer.
    mute.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    assert!(closed_by_proxy(&mut mute).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_cap_of_connections() {
    let (proxy, _web) = proxy_with(|config| {
        config.clients.max_per_client = 4;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let mut fifth = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(
        closed_by_proxy(&mut fifth).await,
        "a connection over the cap is closed at once"
    );
    // Once one of the four goes, its place is free again.
    held.pop();
    let client = client();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let request = Request::get(proxy.url("/"))
            .header("host", "web.shop.localhost")
            .body(empty())
            .unwrap();
        if let Ok(response) = client.request(request).await {
            assert_eq!(response.status(), StatusCode::OK);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place was freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The idle limit of the tests of stalled responses: closing happens within
/// a few of these, well inside `PATIENCE` (ten of them).
const IDLE: Duration = Duration::from_secs(1);

/// A response of `left` bytes made a chunk at a time as the proxy reads it.
/// `released` is set when the upstream lets it go: it was sent, or the
/// proxy closed their connection.
struct Large {
    left: u64,
    released: Arc<AtomicBool>,
}

/// Far more than the sockets' buffers and the proxy's hold.
const LARGE: u64 = 64 << 20;
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl hyper::body::Body for Large {
    type Data = Bytes;
    type Error = support::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let size = self.left.min(CHUNK.len() as u64);
        self.left -= size;
        let chunk = Bytes::from_static(&CHUNK[..usize::try_from(size).unwrap()]);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

impl Drop for Large {
    fn drop(&mut self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

/// A proxy with a one-second idle limit in front of an upstream that
/// answers `large.test` with `size` bytes; and the flag of that answer.
async fn proxy_to_a_response_of(size: u64) -> (TestProxy, Arc<AtomicBool>) {
    let released = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&released);
    let web = large_upstream(size, move || Arc::clone(&flag)).await;
    (proxy_to_large(&web).await, released)
}

/// An upstream that answers every request with `size` bytes; each answer
/// with the flag `flag_for` gives it.
async fn large_upstream<F>(size: u64, flag_for: F) -> support::Upstream
where
    F: Fn() -> Arc<AtomicBool> + Send + Sync + Clone + 'static,
{
    upstream("large", move |_request| {
        let released = flag_for();
        async move {
            let body = Large {
                left: size,
                released,
            };
            Ok(Response::new(body.boxed()))
        }
    })
    .await
}

/// A proxy with a one-second idle limit routing `large.test` to `web`.
async fn proxy_to_large(web: &support::Upstream) -> TestProxy {
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.clients.idle = IDLE;
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("large", vec![web.addr]).hosts(["large.test"])],
        })
        .await;
    proxy
}

/// An h2c connection to `proxy` whose client gives each stream `window`
/// bytes, opened again only as its body is read, and the connection room
/// for many such streams; and the connection's task.
async fn h2c_connection(
    proxy: &TestProxy,
    window: u32,
) -> (
    http2::SendRequest<support::Body>,
    JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(8 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

/// A GET of `path` on `large.test`, over HTTP/2.
fn h2_get(path: &str) -> Request<support::Body> {
    Request::get(format!("http://large.test{path}"))
        .version(Version::HTTP_2)
        .body(empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_a_response_is_closed_and_the_upstream_let_go() {
    let (proxy, released) = proxy_to_a_response_of(LARGE).await;
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled
        .write_all(b"GET /video HTTP/1.1\r\nHost: large.test\r\n\r\n")
        .await
        .unwrap();
    // Nothing is read: the buffers on the way fill and the response stops.
    eventually("the proxy to let the upstream's response go", || {
        released.load(Ordering::SeqCst)
    })
    .await;
    assert!(closed_by_proxy(&mut stalled).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_stream_given_no_window_is_closed_and_the_upstream_let_go() {
    let (proxy, released) = proxy_to_a_response_of(LARGE).await;
    // SETTINGS_INITIAL_WINDOW_SIZE 0, and the body is never read, so no
    // WINDOW_UPDATE ever opens it.
    let (mut sender, connection) = h2c_connection(&proxy, 0).await;
    let response = sender.send_request(h2_get("/video")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    eventually("the proxy to let the upstream's response go", || {
        released.load(Ordering::SeqCst)
    })
    .await;
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the proxy kept the stalled h2c connection");
    // Held, unread, until here.
    drop(response);
}

/// The size of the answer to `/later`, which its upstream holds back until
/// the test lets it go.
const LATER: u64 = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_stream_given_no_window_is_reset_alone_and_its_connection_serves_on() {
    // `/video` is large (its flag set once the upstream lets it go);
    // `/later` answers `LATER` bytes each time the test says so.
    let released = Arc::new(AtomicBool::new(false));
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let (flag, gate) = (Arc::clone(&released), Arc::clone(&go));
    let web = upstream("large", move |request| {
        let (flag, gate) = (Arc::clone(&flag), Arc::clone(&gate));
        async move {
            let (left, released) = if request.uri().path() == "/later" {
                gate.acquire().await.unwrap().forget();
                (LATER, Arc::default())
            } else {
                (LARGE, flag)
            };
            Ok(Response::new(Large { left, released }.boxed()))
        }
    })
    .await;
    let proxy = proxy_to_large(&web).await;
    // The connection's window has room for the others while one stream's
    // is shut.
    let (mut sender, connection) = h2c_connection(&proxy, 64 * 1024).await;
    // A request waiting on its upstream, open before the other stalls.
    let waiting = tokio::spawn(sender.send_request(h2_get("/later")));
    eventually("the first request to reach the upstream", || {
        web.hits() == 1
    })
    .await;
    // A download the client pauses: its body is not read.
    let paused = sender.send_request(h2_get("/video")).await.unwrap();
    assert_eq!(paused.status(), StatusCode::OK);
    eventually("the proxy to let the paused response's upstream go", || {
        released.load(Ordering::SeqCst)
    })
    .await;
    let cut = paused.into_body().collect().await;
    assert!(cut.is_err(), "the paused stream is reset, not ended");

    // The connection and its other stream live on.
    go.add_permits(1);
    let answered = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting request is answered")
        .unwrap()
        .expect("the waiting stream is not cut with the paused one");
    assert_eq!(answered.status(), StatusCode::OK);
    let body = answered.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len() as u64, LATER);
    go.add_permits(1);
    let next = tokio::time::timeout(PATIENCE, sender.send_request(h2_get("/later")))
        .await
        .expect("a new stream is answered")
        .expect("the connection takes new streams");
    let body = next.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len() as u64, LATER);
    assert!(!connection.is_finished(), "the connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_whose_every_stream_stalls_is_closed_and_the_upstreams_let_go() {
    const STREAMS: usize = 3;
    // One flag for each answer.
    let flags = Arc::new(std::sync::Mutex::new(Vec::new()));
    let made = Arc::clone(&flags);
    let web = large_upstream(LARGE, move || {
        let released = Arc::new(AtomicBool::new(false));
        made.lock().unwrap().push(Arc::clone(&released));
        released
    })
    .await;
    let proxy = proxy_to_large(&web).await;
    // No window for any stream, and no body read: nothing on the
    // connection moves, as with a client that opens streams to hold them.
    let (mut sender, connection) = h2c_connection(&proxy, 0).await;
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        let response = sender.send_request(h2_get("/video")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    eventually("the proxy to let every upstream's response go", || {
        let flags = flags.lock().unwrap();
        flags.len() == STREAMS && flags.iter().all(|f| f.load(Ordering::SeqCst))
    })
    .await;
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the proxy kept the stalled h2c connection");
    // Held, unread, until here.
    drop(held);
}

/// Whether this process, which the proxy runs in, has `path` open.
fn held_open(path: &Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_a_file_is_closed_and_the_file_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let video = root.join("video.bin");
    std::fs::File::create(&video)
        .unwrap()
        .set_len(LARGE)
        .unwrap();
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.clients.idle = IDLE;
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::site("site", StaticSite::new(&root)).hosts(["site.test"])],
        })
        .await;
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled
        .write_all(b"GET /video.bin HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    eventually("the proxy to open the file", || held_open(&video)).await;
    eventually("the proxy to close the file", || !held_open(&video)).await;
    assert!(closed_by_proxy(&mut stalled).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_that_reads_slowly_but_steadily_gets_the_whole_response() {
    const SIZE: u64 = 1 << 20;
    // 256 KiB per idle limit: the response takes four. A 64 KiB frame is
    // taken in a quarter of one; an upstream's frame as hyper reads it (up
    // to about 400 KiB) would take more than one if handed on whole.
    const BYTES_PER_SECOND: f64 = (256 * 1024) as f64;
    let (proxy, _released) = proxy_to_a_response_of(SIZE).await;
    // A small window, opened again only as the body is read.
    let (mut sender, _connection) = h2c_connection(&proxy, 16 * 1024).await;
    let mut body = sender
        .send_request(h2_get("/video"))
        .await
        .unwrap()
        .into_body();
    let started = tokio::time::Instant::now();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the response is not cut short");
        read += frame.data_ref().map_or(0, Bytes::len);
        // Reading at a set pace, not waiting for anything.
        let due = Duration::from_secs_f64(read as f64 / BYTES_PER_SECOND);
        tokio::time::sleep_until(started + due).await;
    }
    assert_eq!(read as u64, SIZE);
}

/// One HTTP/2 frame, as the tests of raw h2c read and write them.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

async fn write_frame(stream: &mut TcpStream, frame: H2Frame) {
    let length = u32::try_from(frame.payload.len()).unwrap().to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], frame.kind, frame.flags];
    bytes.extend_from_slice(&frame.stream.to_be_bytes());
    bytes.extend_from_slice(&frame.payload);
    stream.write_all(&bytes).await.unwrap();
}

/// The next frame the proxy sends on `stream` that `wanted` accepts.
async fn frame_where(stream: &mut TcpStream, wanted: impl Fn(&H2Frame) -> bool) -> H2Frame {
    let next = async {
        loop {
            let mut head = [0u8; 9];
            stream.read_exact(&mut head).await.expect("a frame's head");
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]);
            let mut payload = vec![0u8; usize::try_from(length).unwrap()];
            stream.read_exact(&mut payload).await.expect("a frame");
            let frame = H2Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            if wanted(&frame) {
                return frame;
            }
        }
    };
    tokio::time::timeout(PATIENCE, next)
        .await
        .expect("the proxy sends the frame")
}

/// A GET of `/` on `host`, in a HEADERS frame that ends its stream: the
/// pseudo-headers from HPACK's static table, the authority a literal.
fn get_frame(stream: u32, host: &str) -> H2Frame {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, u8::try_from(host.len()).unwrap()];
    block.extend_from_slice(host.as_bytes());
    H2Frame {
        kind: HEADERS,
        flags: END_STREAM | END_HEADERS,
        stream,
        payload: block,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_cannot_have_more_than_its_cap_of_streams_open() {
    const STREAMS: u32 = 4;
    // Every request sent to it stays open, holding its upstream connection.
    let held = upstream("held", |_request| std::future::pending()).await;
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.clients.max_streams = STREAMS;
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("held", vec![held.addr]).hosts(["held.test"])],
        })
        .await;
    let mut h2 = TcpStream::connect(proxy.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let settings = |flags| H2Frame {
        kind: SETTINGS,
        flags,
        stream: 0,
        payload: Vec::new(),
    };
    write_frame(&mut h2, settings(0)).await;
    let advertised = frame_where(&mut h2, |f| f.kind == SETTINGS && f.flags & ACK == 0).await;
    write_frame(&mut h2, settings(ACK)).await;
    let max_streams = advertised.payload.chunks_exact(6).find_map(|setting| {
        (u16::from_be_bytes([setting[0], setting[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    });
    assert_eq!(max_streams, Some(STREAMS));

    for i in 0..STREAMS {
        write_frame(&mut h2, get_frame(2 * i + 1, "held.test")).await;
    }
    eventually("every stream's request to reach the upstream", || {
        held.hits() == usize::try_from(STREAMS).unwrap()
    })
    .await;
    // One more, while all are open: refused, and never sent on.
    let extra = 2 * STREAMS + 1;
    write_frame(&mut h2, get_frame(extra, "held.test")).await;
    let reset = frame_where(&mut h2, |f| f.kind == RST_STREAM && f.stream == extra).await;
    assert_eq!(reset.payload, REFUSED_STREAM.to_be_bytes());
    assert_eq!(held.hits(), usize::try_from(STREAMS).unwrap());
}
