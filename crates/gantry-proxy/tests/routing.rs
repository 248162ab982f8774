//! Which upstream a request reaches: by host, wildcard and path prefix, in
//! turn across upstreams, around a dead one; and the pages when none can.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use gantry_proxy::{Route, RouteTable};
use hyper::StatusCode;
use support::{TestProxy, client, dead_addr, echo_upstream, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_by_exact_host_then_wildcard_then_longest_prefix() {
    let (shop, wild, api, any) = (
        echo_upstream("shop").await,
        echo_upstream("wild").await,
        echo_upstream("api").await,
        echo_upstream("any").await,
    );
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("shop", vec![shop.addr]).hosts(["shop.example.com"]),
                Route::new("wild", vec![wild.addr]).hosts(["*.example.com"]),
                Route::new("api", vec![api.addr])
                    .hosts(["shop.example.com", "*.example.com"])
                    .path_prefix("/api", false),
                Route::new("any", vec![any.addr]),
            ],
        })
        .await;
    let client = client();
    for (host, path, expected) in [
        ("shop.example.com", "/", "shop"),
        ("SHOP.example.com:8080", "/cart", "shop"),
        ("shop.example.com", "/api/orders", "api"),
        ("shop.example.com", "/apiary", "shop"),
        ("blog.example.com", "/", "wild"),
        ("deep.blog.example.com", "/api", "api"),
        ("example.com", "/", "any"),
        ("other.test", "/api", "any"),
    ] {
        let answer = get(&client, &proxy, host, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{host}{path}");
        assert_eq!(answer.upstream(), expected, "{host}{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripped_prefix_is_removed_and_the_query_kept() {
    let api = echo_upstream("api").await;
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("api", vec![api.addr])
                    .hosts(["example.com"])
                    .path_prefix("/api", true),
                Route::new("kept", vec![api.addr])
                    .hosts(["example.com"])
                    .path_prefix("/v1", false),
            ],
        })
        .await;
    let client = client();
    let answer = get(&client, &proxy, "example.com", "/api/users/7?fields=name").await;
    assert_eq!(answer.json()["path"], "/users/7?fields=name");
    let answer = get(&client, &proxy, "example.com", "/api").await;
    assert_eq!(answer.json()["path"], "/");
    let answer = get(&client, &proxy, "example.com", "/v1/users").await;
    assert_eq!(answer.json()["path"], "/v1/users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let upstreams = [
        echo_upstream("a").await,
        echo_upstream("b").await,
        echo_upstream("c").await,
    ];
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new(
                "web",
                upstreams.iter().map(|u| u.addr).collect(),
            )],
        })
        .await;
    let client = client();
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..90 {
        let answer = get(&client, &proxy, "web.test", "/").await;
        *served.entry(answer.upstream()).or_default() += 1;
    }
    // Two workers take turns from one counter: each sees every upstream.
    for upstream in &upstreams {
        let count = served.get(upstream.name).copied().unwrap_or(0);
        assert!((25..=35).contains(&count), "{served:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_a_404_page_naming_it() {
    let web = echo_upstream("web").await;
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![web.addr]).hosts(["shop.example.com"])],
        })
        .await;
    let answer = get(&client(), &proxy, "nope.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        answer.text.contains("<code>nope.example.com</code>"),
        "{}",
        answer.text
    );
    assert!(answer.headers.contains_key("x-request-id"));
    assert_eq!(web.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_upstreams_are_all_down_gets_a_503_page_naming_it() {
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("checkout", vec![dead_addr(), dead_addr()]).hosts(["shop.test"]),
                Route::new("empty", vec![]).hosts(["empty.test"]),
            ],
        })
        .await;
    let client = client();
    for _ in 0..3 {
        let answer = get(&client, &proxy, "shop.test", "/pay").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            answer.text.contains("<code>checkout</code>"),
            "{}",
            answer.text
        );
        assert_eq!(answer.headers["retry-after"], "5");
    }
    let answer = get(&client, &proxy, "empty.test", "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer.text.contains("<code>empty</code>"),
        "{}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_upstream_is_ejected_and_no_request_fails_while_another_is_up() {
    let live = echo_upstream("live").await;
    let dead = dead_addr();
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![dead, live.addr])],
        })
        .await;
    let client = client();
    for i in 0..40 {
        // Bodies too: a refused connection never read the body, so it can go to the other upstream.
        let request = hyper::Request::post(proxy.url("/submit"))
            .header("host", "web.test")
            .body(support::full(format!("form {i}")))
            .unwrap();
        let answer = support::send(&client, request).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.text
        );
        assert_eq!(answer.upstream(), "live");
    }
    assert_eq!(live.hits(), 40);
    let (_, metrics) = proxy.control("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    let refused =
        format!(r#"gantry_proxy_upstream_errors_total{{upstream="{dead}",kind="connect"}} 1"#);
    assert!(
        metrics.contains(&refused),
        "the dead upstream is tried once, then passed over while ejected:\n{metrics}"
    );
}
