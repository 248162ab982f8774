//! The proxy is the edge: what a client says about itself, its host or its
//! path is checked or replaced before anything is routed. Two names for
//! the host are refused, the upstream gets the authority the request was
//! routed on, forwarding headers say what the proxy saw (unless the client
//! is a trusted proxy), paths are normalised before routing, and CONNECT
//! is answered with 405.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_proxy::{Route, RouteTable};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::{TestProxy, echo_upstream, empty};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A proxy routing `a.test` to upstream `a`, `b.test` to `b`, and on
/// `api.test` the prefix `/api` to `api` and the rest to `admin`.
async fn two_sites() -> (TestProxy, Vec<support::Upstream>) {
    let proxy = TestProxy::start();
    let ups = vec![
        echo_upstream("a").await,
        echo_upstream("b").await,
        echo_upstream("api").await,
        echo_upstream("admin").await,
    ];
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("a", vec![ups[0].addr]).hosts(["a.test"]),
                Route::new("b", vec![ups[1].addr]).hosts(["b.test"]),
                Route::new("api", vec![ups[2].addr])
                    .hosts(["api.test"])
                    .path_prefix("/api", false),
                Route::new("admin", vec![ups[3].addr]).hosts(["api.test"]),
            ],
        })
        .await;
    (proxy, ups)
}

/// One raw HTTP/1.1 exchange (the request must ask to close): status line
/// code, and the echo upstream's JSON when there is one.
async fn raw(proxy: &TestProxy, request: &str) -> (u16, Option<Value>) {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(support::PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answers")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok());
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_refused() {
    let (proxy, ups) = two_sites().await;
    let (status, _) = raw(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(ups[0].hits() + ups[1].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_with_another_host_is_refused() {
    let (proxy, ups) = two_sites().await;
    let (status, _) = raw(
        &proxy,
        "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(ups[0].hits() + ups[1].hits(), 0);
    // When both agree, the upstream gets the name it was routed on.
    let (status, seen) = raw(
        &proxy,
        "GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = seen.unwrap();
    assert_eq!(seen["upstream"], "a");
    assert_eq!(seen["headers"]["host"], "a.test");
    assert_eq!(seen["path"], "/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_authority_that_differs_from_its_host_header_is_refused() {
    let (proxy, ups) = two_sites().await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("http://a.test/")
        .version(Version::HTTP_2)
        .header("host", "b.test")
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(ups[0].hits() + ups[1].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_a_client_sends_are_replaced_with_what_the_proxy_saw() {
    let (proxy, _ups) = two_sites().await;
    let (status, seen) = raw(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\n\
         X-Real-IP: 203.0.113.9\r\nForwarded: for=203.0.113.9;host=evil.test\r\n\
         X-Forwarded-Port: 1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let headers = &seen.unwrap()["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-real-ip"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "a.test");
    assert_eq!(headers["x-forwarded-port"], proxy.addr.port().to_string());
    assert_eq!(
        headers["forwarded"], "for=127.0.0.1;proto=http;host=\"a.test\"",
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_in_front_keeps_its_forwarding_headers() {
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    });
    let a = echo_upstream("a").await;
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("a", vec![a.addr]).hosts(["a.test"])],
        })
        .await;
    let (status, seen) = raw(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\n\
         X-Real-IP: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let headers = &seen.unwrap()["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-real-ip"], "203.0.113.9");
    assert_eq!(headers["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_routing_and_forwarded_resolved() {
    let (proxy, ups) = two_sites().await;
    for path in ["/api/../admin", "/api/%2e%2E/admin", "/api/./../admin"] {
        let (status, seen) = raw(
            &proxy,
            &format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{path}");
        let seen = seen.unwrap();
        assert_eq!(seen["upstream"], "admin", "{path}");
        assert_eq!(seen["path"], "/admin", "{path}");
    }
    assert_eq!(ups[2].hits(), 0, "nothing reached /api's service");
    let (status, _) = raw(
        &proxy,
        "GET /api%2F..%2Fadmin HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "an encoded slash is refused");
    let (status, seen) = raw(
        &proxy,
        "GET /api/x/../y?q=1 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen.unwrap()["path"], "/api/y?q=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_answered_with_405() {
    let (proxy, ups) = two_sites().await;
    let (status, _) = raw(
        &proxy,
        "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(ups[0].hits(), 0);
}
