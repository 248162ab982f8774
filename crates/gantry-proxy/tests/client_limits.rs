//! What a client may hold of the proxy: a connection that says nothing,
//! stops inside the HTTP/2 preface, stalls its TLS handshake, says nothing
//! after it, or sits idle on HTTP/2 is closed by the proxy once its
//! deadline passes; one address cannot hold more connections than its cap.
//! The deadlines are short here so the tests do not wait; each test only
//! asks whether the proxy closed the socket before its patience ran out.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use gantry_proxy::{ClientLimits, ProxyConfig, Route, RouteTable, Tls};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use support::{PATIENCE, TestProxy, client, closed_by_proxy, echo_upstream, empty, tls_connect};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

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
