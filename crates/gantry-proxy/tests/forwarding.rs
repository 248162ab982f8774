//! What a forwarded request carries and how each protocol passes: the
//! X-Forwarded-* and X-Request-Id headers, HTTP/2 from the client, a
//! WebSocket echo (which the client idle limit leaves alone while it is
//! quiet, and closes once a client stops reading it), and the timeout for
//! an upstream that does not answer.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use futures_util::{SinkExt as _, StreamExt as _};
use gantry_proxy::{Route, RouteTable, Timeouts};
use hyper::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    TestProxy, client, closed_by_proxy, echo_upstream, empty, eventually, get, send, upstream,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

async fn proxy_to(route: Route) -> TestProxy {
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![route],
        })
        .await;
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_forwarded_headers_and_a_request_id() {
    let web = echo_upstream("web").await;
    // The test client stands for a load balancer in front: its
    // X-Forwarded-For is kept and the proxy appends its address.
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![web.addr])],
        })
        .await;
    let client = client();

    let answer = get(&client, &proxy, "shop.example.com:8080", "/cart?x=1").await;
    let seen = &answer.json()["headers"];
    assert_eq!(
        seen["host"], "shop.example.com:8080",
        "the Host header is passed as it came"
    );
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com:8080");
    let generated = seen["x-request-id"].as_str().unwrap();
    assert_eq!(generated.len(), 32);
    assert_eq!(
        answer.headers["x-request-id"], generated,
        "the client gets the same id back"
    );

    let request = Request::get(proxy.url("/"))
        .header("host", "shop.example.com")
        .header("x-request-id", "trace-42")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "not forwarded")
        .body(empty())
        .unwrap();
    let answer = send(&client, request).await;
    let seen = &answer.json()["headers"];
    assert_eq!(seen["x-request-id"], "trace-42");
    assert_eq!(answer.headers["x-request-id"], "trace-42");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert!(
        seen.get("x-hop").is_none(),
        "headers named by Connection stay on the hop: {seen}"
    );
    assert!(
        answer.headers.get("connection").is_none(),
        "{:?}",
        answer.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served_and_forwarded_as_http11() {
    let web = echo_upstream("web").await;
    let proxy = proxy_to(Route::new("web", vec![web.addr]).hosts(["h2.test"])).await;
    // The client connects to the proxy but asks for h2.test: the URI's
    // authority is the host an HTTP/2 request is for.
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for i in 0..10 {
        let request = Request::get(format!("http://h2.test/stream/{i}"))
            .version(Version::HTTP_2)
            .body(empty())
            .unwrap();
        let mut sender = sender.clone();
        // Concurrent streams on the one connection.
        streams.push(tokio::spawn(
            async move { sender.send_request(request).await },
        ));
    }
    for (i, stream) in streams.into_iter().enumerate() {
        let response = stream.await.unwrap().unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["version"], "HTTP/1.1");
        assert_eq!(seen["path"], format!("/stream/{i}"));
        assert_eq!(
            seen["headers"]["host"], "h2.test",
            "upstreams get a Host header"
        );
        assert_eq!(seen["headers"]["x-forwarded-host"], "h2.test");
    }
    assert_eq!(web.hits(), 10);
}

/// An upstream that completes WebSocket handshakes and echoes every message.
async fn websocket_echo_upstream() -> support::Upstream {
    websocket_upstream("ws", |mut socket| async move {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
            if socket.send(message).await.is_err() {
                break;
            }
        }
    })
    .await
}

type ServerSocket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An upstream that completes WebSocket handshakes and hands each socket
/// to `talk`.
async fn websocket_upstream<F, Fut>(name: &'static str, talk: F) -> support::Upstream
where
    F: Fn(ServerSocket) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    upstream(name, move |mut request: Request<hyper::body::Incoming>| {
        let talk = talk.clone();
        async move {
            let key = request.headers().get(SEC_WEBSOCKET_KEY).cloned();
            let Some(key) = key else {
                return Ok(Response::builder().status(400).body(empty()).unwrap());
            };
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                talk(socket).await;
            });
            Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(UPGRADE, "websocket")
                .header(CONNECTION, "upgrade")
                .header(SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
                .body(empty())
                .unwrap())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_outlives_the_client_idle_limit() {
    const IDLE: Duration = Duration::from_millis(300);
    let ws = websocket_echo_upstream().await;
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.clients.idle = IDLE;
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("chat", vec![ws.addr]).hosts(["chat.test"])],
        })
        .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://chat.test/live", stream)
        .await
        .unwrap();
    // Nothing either way for several idle limits: the quiet is the test.
    tokio::time::sleep(4 * IDLE).await;
    socket.send(Message::text("still here")).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("still here"));
}

static MESSAGE: [u8; 64 * 1024] = [b'x'; 64 * 1024];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_closed_and_the_upstream_let_go() {
    // The upstream sends as fast as it is let; `let_go` is set once a send
    // fails: the proxy closed their connection.
    let let_go = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&let_go);
    let flood = websocket_upstream("flood", move |mut socket| {
        let let_go = Arc::clone(&flag);
        async move {
            let message = || Message::binary(Bytes::from_static(&MESSAGE));
            while socket.send(message()).await.is_ok() {}
            let_go.store(true, Ordering::SeqCst);
        }
    })
    .await;
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.clients.idle = Duration::from_secs(1);
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("feed", vec![flood.addr]).hosts(["feed.test"])],
        })
        .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async("ws://feed.test/live", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    // Nothing is read: the buffers on the way fill and the tunnel stops.
    eventually("the proxy to close the upstream's connection", || {
        let_go.load(Ordering::SeqCst)
    })
    .await;
    assert!(closed_by_proxy(socket.get_mut()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_relayed_both_ways_and_counted_until_it_closes() {
    let ws = websocket_echo_upstream().await;
    let proxy = proxy_to(Route::new("chat", vec![ws.addr]).hosts(["chat.test"])).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async("ws://chat.test/live", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "the proxy"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    let big = vec![7u8; 1 << 20];
    socket.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(big));

    // An open WebSocket holds a drain of its upstream.
    let drain = serde_json::json!({ "upstreams": [ws.addr], "timeout_ms": 100 });
    let (_, report) = proxy
        .control("POST", "/v1/drain", Some(drain.clone()))
        .await;
    assert_eq!(report["open"], 1, "{report}");

    socket.close(None).await.unwrap();
    let drain = serde_json::json!({ "upstreams": [ws.addr], "timeout_ms": 10_000 });
    let (_, report) = proxy.control("POST", "/v1/drain", Some(drain)).await;
    assert_eq!(report["open"], 0, "{report}");
    assert_eq!(report["drained"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_answer_in_time_gets_a_504_page() {
    let slow = upstream("slow", |request| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(support::echo("slow", &request))
    })
    .await;
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.timeouts = Timeouts {
            response: Duration::from_millis(200),
            shutdown: Duration::from_millis(100),
            ..Timeouts::default()
        };
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("reports", vec![slow.addr])],
        })
        .await;
    let answer = get(&client(), &proxy, "x.test", "/").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        answer.text.contains("<code>reports</code>"),
        "{}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let web = echo_upstream("web").await;
    let proxy = proxy_to(Route::new("web", vec![web.addr])).await;
    let client = client();
    for _ in 0..50 {
        assert_eq!(
            get(&client, &proxy, "x.test", "/").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(web.hits(), 50);
    // One keep-alive connection per proxy worker at most, for sequential requests.
    assert!(
        web.connections() <= 2,
        "{} connections for 50 requests",
        web.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_after_each_response_costs_no_request() {
    let closing = upstream("closing", |request| async move {
        let mut response = support::echo("closing", &request);
        response
            .headers_mut()
            .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
        Ok(response)
    })
    .await;
    let proxy = proxy_to(Route::new("web", vec![closing.addr])).await;
    let client = client();
    for i in 0..20 {
        let answer = get(&client, &proxy, "x.test", "/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.text
        );
        assert!(
            answer.headers.get(CONNECTION).is_none(),
            "hop-by-hop headers stay on their hop"
        );
    }
    assert_eq!(closing.connections(), 20);
}
