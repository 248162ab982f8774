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
use hyper::StatusCode;
use support::descriptors::{Starving, ask};
use support::echo_upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_proxy_answers_503_and_ejects_no_upstream() {
    let (a, b) = (echo_upstream("a").await, echo_upstream("b").await);
    let mut starving = Starving::start(&RouteTable {
        routes: vec![Route::new("web", vec![a.addr, b.addr]).hosts(["web.test"])],
    })
    .await;
    let (status, retry_after, page) = starving.ask_out_of_descriptors("web.test").await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(retry_after.is_some(), "a 503 says when to try again");
    assert!(
        page.contains("The proxy is short of resources"),
        "the page blames the proxy, not the service: {page}"
    );
    assert_eq!(a.connections() + b.connections(), 0);
    let logged = starving.logged();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("\"proxy.out_of_resources\"") && l.contains("os error 24")),
        "the proxy logs the failure as its own:\n{logged}"
    );
    let (_, metrics) = starving.proxy.control("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        !metrics.contains("kind=\"connect\""),
        "no upstream failed to connect:\n{metrics}"
    );
    // Both upstreams are still in rotation.
    let mut answered = BTreeSet::new();
    for _ in 0..4 {
        let (status, _, text) = ask(&mut starving.sender, "web.test").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let echo: serde_json::Value = serde_json::from_str(&text).unwrap();
        answered.insert(echo["upstream"].as_str().unwrap().to_owned());
    }
    assert_eq!(answered, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
}
