//! What the proxy's tests share: a proxy started in-process on 127.0.0.1:0
//! with a temporary state directory, small upstream servers spawned in the
//! test, a client (and one for HTTPS that trusts only the roots it is
//! given), and the control API over the proxy's Unix socket.
#![allow(dead_code, clippy::unwrap_used)]

pub mod descriptors;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry_proxy::{ProxyConfig, RouteTable, RunningProxy, Timeouts};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Polls `condition` until it holds or `PATIENCE` runs out.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub struct TestProxy {
    proxy: Option<RunningProxy>,
    pub dir: TempDir,
    pub addr: SocketAddr,
    /// The HTTPS listener's address, when the test asked for one.
    pub https: Option<SocketAddr>,
    config: ProxyConfig,
}

impl TestProxy {
    pub fn start() -> TestProxy {
        TestProxy::start_with(tempfile::tempdir().unwrap(), |_| {})
    }

    pub fn start_with(dir: TempDir, configure: impl FnOnce(&mut ProxyConfig)) -> TestProxy {
        let mut config = ProxyConfig::new(dir.path().join("state"));
        config.http = SocketAddr::from(([127, 0, 0, 1], 0));
        config.https = None;
        config.access_log = false;
        config.workers = 2;
        config.timeouts = Timeouts {
            shutdown: Duration::from_secs(2),
            ..Timeouts::default()
        };
        configure(&mut config);
        let proxy = gantry_proxy::start(config.clone()).unwrap();
        TestProxy::running(proxy, dir, config)
    }

    /// A proxy on a listener the test bound itself (to know its port first).
    pub fn start_on(
        listener: std::net::TcpListener,
        dir: TempDir,
        configure: impl FnOnce(&mut ProxyConfig),
    ) -> TestProxy {
        let mut config = ProxyConfig::new(dir.path().join("state"));
        config.https = None;
        config.access_log = false;
        config.workers = 2;
        configure(&mut config);
        let proxy = gantry_proxy::start_on(listener, config.clone()).unwrap();
        TestProxy::running(proxy, dir, config)
    }

    fn running(proxy: RunningProxy, dir: TempDir, config: ProxyConfig) -> TestProxy {
        TestProxy {
            addr: proxy.http_addr(),
            https: proxy.https_addr(),
            proxy: Some(proxy),
            dir,
            config,
        }
    }

    /// A new proxy (in this process) that takes over this one's listeners,
    /// routes and sockets by handoff; and the old one, handed off, which the
    /// caller stops.
    pub fn take_over(mut self) -> (TestProxy, RunningProxy) {
        let old = self.proxy.take().unwrap();
        let config = self.config.clone();
        let new = tokio::task::block_in_place(|| gantry_proxy::take_over(config.clone())).unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let proxy = TestProxy {
            addr: new.http_addr(),
            https: new.https_addr(),
            proxy: Some(new),
            dir,
            config,
        };
        (proxy, old)
    }

    /// Stops this proxy and starts another on the same state directory.
    pub fn restart(self) -> TestProxy {
        self.restart_with(|_| {})
    }

    /// `restart`, with the new proxy's configuration adjusted.
    pub fn restart_with(mut self, configure: impl FnOnce(&mut ProxyConfig)) -> TestProxy {
        if let Some(proxy) = self.proxy.take() {
            tokio::task::block_in_place(|| proxy.stop());
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        TestProxy::start_with(dir, configure)
    }

    /// Stops the proxy and hands back its directory.
    pub fn stop(mut self) -> TempDir {
        if let Some(proxy) = self.proxy.take() {
            tokio::task::block_in_place(|| proxy.stop());
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn control_socket(&self) -> std::path::PathBuf {
        self.dir.path().join("state/proxy.sock")
    }

    /// Sends one request to the control API: its status and JSON (or text) answer.
    pub async fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let stream = tokio::net::UnixStream::connect(self.control_socket())
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let body = body.map_or_else(empty, |b| full(b.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "proxy")
            .body(body)
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub async fn put_routes(&self, table: &RouteTable) {
        let (status, answer) = self
            .control(
                "PUT",
                "/v1/routes",
                Some(serde_json::to_value(table).unwrap()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::task::block_in_place(|| proxy.stop());
            } else {
                proxy.stop();
            }
        }
    }
}

/// A small HTTP/1.1 server the test controls; `hits` counts its requests
/// and `connections` the connections it accepted.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An upstream that answers every request with JSON saying who it is and
/// what it received: `{"upstream","method","path","version","headers"}`.
pub async fn echo_upstream(name: &'static str) -> Upstream {
    upstream(name, move |request| async move { Ok(echo(name, &request)) }).await
}

pub fn echo(name: &str, request: &Request<Incoming>) -> Response<Body> {
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.to_str().unwrap_or("").to_owned()),
            )
        })
        .collect();
    let answer = serde_json::json!({
        "upstream": name,
        "method": request.method().as_str(),
        "path": request.uri().to_string(),
        "version": format!("{:?}", request.version()),
        "headers": headers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("connection", "keep-alive")
        .body(full(answer.to_string()))
        .unwrap()
}

/// An upstream whose answers `handle` makes; upgrades are allowed.
pub async fn upstream<F, Fut>(name: &'static str, handle: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (counted, accepted) = (Arc::clone(&hits), Arc::clone(&connections));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (handle, counted) = (handle.clone(), Arc::clone(&counted));
            let service = hyper::service::service_fn(move |request| {
                counted.fetch_add(1, Ordering::SeqCst);
                handle(request)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        name,
        addr,
        hits,
        connections,
    }
}

/// A loopback address where nothing listens: connections are refused.
/// An address that refuses connections for the rest of the test process:
/// its port stays bound (never listening), so nothing else, the proxy under
/// test included, can take it over and answer in its place.
pub fn dead_addr() -> SocketAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    addr
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A GET to the proxy with the given Host: status, headers and body text.
pub async fn get(
    client: &Client<HttpConnector, Body>,
    proxy: &TestProxy,
    host: &str,
    path: &str,
) -> Answer {
    let request = Request::get(proxy.url(path))
        .header("host", host)
        .body(empty())
        .unwrap();
    send(client, request).await
}

pub async fn send(client: &Client<HttpConnector, Body>, request: Request<Body>) -> Answer {
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub text: String,
}

impl Answer {
    /// The echo upstream's JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// Which echo upstream answered.
    pub fn upstream(&self) -> String {
        self.json()["upstream"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// What one HTTPS request came back with.
pub struct Https {
    pub alpn: Option<Vec<u8>>,
    pub version: Version,
    /// The leaf certificate the proxy presented.
    pub leaf: CertificateDer<'static>,
    pub answer: Answer,
}

/// A TLS connection to `addr` for `host` (SNI), trusting only `roots`,
/// offering `alpn`; nothing sent on it yet.
pub async fn tls_connect(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    host: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// Whether the proxy closes this connection (end of stream or a reset)
/// before `PATIENCE` runs out; whatever it sends first is read past.
pub async fn closed_by_proxy(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_elapsed) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One GET over TLS to `addr` for `host` (SNI and Host), trusting only
/// `roots`, offering `alpn`. A failed handshake is the error.
pub async fn https_get(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    host: &str,
    alpn: &[&[u8]],
    path: &str,
) -> std::io::Result<Https> {
    let stream = tls_connect(addr, roots, host, alpn).await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
    let io = TokioIo::new(stream);
    let request = Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap();
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        let uri = format!("https://{host}{path}");
        let (mut parts, body) = request.into_parts();
        parts.uri = uri.parse().unwrap();
        parts.headers.remove("host");
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let version = response.version();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Https {
        alpn,
        version,
        leaf,
        answer: Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        },
    })
}
