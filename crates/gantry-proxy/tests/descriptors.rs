//! When the proxy itself is out of file descriptors, a request it cannot
//! open an upstream connection for is answered 503 with Retry-After, the
//! proxy logs the failure as its own, and the upstreams stay in rotation:
//! no upstream error is counted and once descriptors are free again both
//! take requests. One test in its own binary: it exhausts the process's
//! descriptors (the proxy runs in the test's process), and the log file is
//! process-wide.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use gantry_proxy::{Route, RouteTable};
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use support::{Body, TestProxy, echo_upstream, empty};

/// No new descriptor for anyone in the process until dropped: the soft
/// limit is 0 (those open stay usable), then what it was. Filling the table
/// instead would race with descriptors other tasks close meanwhile.
struct OutOfDescriptors {
    limit: Rlimit,
}

impl OutOfDescriptors {
    fn now() -> OutOfDescriptors {
        let limit = getrlimit(Resource::Nofile);
        let none = Rlimit {
            current: Some(0),
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, none).unwrap();
        OutOfDescriptors { limit }
    }
}

impl Drop for OutOfDescriptors {
    fn drop(&mut self) {
        let _ = setrlimit(Resource::Nofile, self.limit);
    }
}

/// A GET for `host` on a connection already open: status, Retry-After
/// and body text.
async fn ask(sender: &mut SendRequest<Body>, host: &str) -> (StatusCode, Option<String>, String) {
    let request = Request::get("/")
        .header("host", host)
        .body(empty())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_proxy_answers_503_and_ejects_no_upstream() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("proxy.log");
    let (a, b) = (echo_upstream("a").await, echo_upstream("b").await);
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.log_file = Some((log.clone(), 1 << 20));
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![a.addr, b.addr]).hosts(["web.test"])],
        })
        .await;
    // The client's connection is open before the descriptors run out; a
    // host with no route proves it is served, and opens nothing upstream.
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(
        ask(&mut sender, "nowhere.test").await.0,
        StatusCode::NOT_FOUND
    );

    let out = OutOfDescriptors::now();
    let (status, retry_after, page) = ask(&mut sender, "web.test").await;
    drop(out);

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(retry_after.is_some(), "a 503 says when to try again");
    assert!(
        page.contains("The proxy is short of resources"),
        "the page blames the proxy, not the service: {page}"
    );
    assert_eq!(a.connections() + b.connections(), 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("\"proxy.out_of_resources\"") && l.contains("os error 24")),
        "the proxy logs the failure as its own:\n{logged}"
    );
    let (_, metrics) = proxy.control("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        !metrics.contains("kind=\"connect\""),
        "no upstream failed to connect:\n{metrics}"
    );
    // Both upstreams are still in rotation.
    let mut answered = BTreeSet::new();
    for _ in 0..4 {
        let (status, _, text) = ask(&mut sender, "web.test").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let echo: serde_json::Value = serde_json::from_str(&text).unwrap();
        answered.insert(echo["upstream"].as_str().unwrap().to_owned());
    }
    assert_eq!(answered, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
}
