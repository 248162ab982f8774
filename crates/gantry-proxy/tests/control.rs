//! The control API the agent drives: replacing the table, draining,
//! persistence across restarts, health and metrics.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_proxy::{Balance, Route, RouteTable};
use hyper::StatusCode;
use serde_json::json;
use support::{TestProxy, client, echo_upstream, eventually, get, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_on_a_socket_only_its_owner_can_use() {
    let proxy = TestProxy::start();
    let (status, health) = proxy.control("GET", "/v1/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["routes"], 0);
    let mode = std::fs::metadata(proxy.control_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (status, error) = proxy.control("GET", "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["code"], "control.not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_table_is_refused_whole_and_the_old_one_kept() {
    let web = echo_upstream("web").await;
    let proxy = TestProxy::start();
    let good = RouteTable {
        routes: vec![Route::new("web", vec![web.addr]).hosts(["web.test"])],
    };
    proxy.put_routes(&good).await;

    let duplicate = json!({ "routes": [
        { "service": "a", "hosts": ["x.test"], "upstreams": [web.addr] },
        { "service": "b", "hosts": ["X.test"], "upstreams": [web.addr] },
    ]});
    let (status, error) = proxy.control("PUT", "/v1/routes", Some(duplicate)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["code"], "routes.invalid");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("route 1 (b)"),
        "{error}"
    );

    let unknown_field = json!({ "routes": [{ "service": "a", "upstream": "127.0.0.1:1" }] });
    let (status, error) = proxy
        .control("PUT", "/v1/routes", Some(unknown_field))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["code"], "routes.invalid_json");

    let (_, table) = proxy.control("GET", "/v1/routes", None).await;
    assert_eq!(table, serde_json::to_value(&good).unwrap());
    assert_eq!(
        get(&client(), &proxy, "web.test", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_request_in_flight_to_the_old_upstream() {
    // A request that takes the upstream 2 s; when it answered is noted.
    let answered: Arc<Mutex<Option<Instant>>> = Arc::default();
    let noted = Arc::clone(&answered);
    let old = upstream("old", move |request| {
        let noted = Arc::clone(&noted);
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            *noted.lock().unwrap() = Some(Instant::now());
            Ok(support::echo("old", &request))
        }
    })
    .await;
    let new = echo_upstream("new").await;
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![old.addr])],
        })
        .await;
    let client = client();
    let slow = {
        let (client, request) = (client.clone(), hyper::Request::get(proxy.url("/report")));
        let request = request
            .header("host", "web.test")
            .body(support::empty())
            .unwrap();
        tokio::spawn(async move { support::send(&client, request).await })
    };
    eventually("the old upstream to have the request", || old.hits() == 1).await;

    // The cutover: new routes first, then drain the old upstream.
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![new.addr])],
        })
        .await;
    assert_eq!(
        get(&client, &proxy, "web.test", "/").await.upstream(),
        "new"
    );
    let (status, report) = proxy
        .control(
            "POST",
            "/v1/drain",
            Some(json!({ "upstreams": [old.addr, new.addr.to_string()], "timeout_ms": 10_000 })),
        )
        .await;
    let drained = Instant::now();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["open"], 0, "{report}");
    assert_eq!(report["drained"], true);
    let answered = answered.lock().unwrap().expect("the upstream answered");
    assert!(
        answered <= drained,
        "the drain returned before the request ended"
    );
    assert!(report["waited_ms"].as_u64().unwrap() < 9_000, "{report}");

    let answer = slow.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream(), "old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_at_its_timeout_and_counts_what_is_open() {
    let old = upstream("old", |request| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(support::echo("old", &request))
    })
    .await;
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![old.addr])],
        })
        .await;
    let client = client();
    for _ in 0..2 {
        let request = hyper::Request::get(proxy.url("/"))
            .header("host", "w")
            .body(support::empty())
            .unwrap();
        let client = client.clone();
        tokio::spawn(async move { client.request(request).await });
    }
    eventually("both requests to reach the upstream", || old.hits() == 2).await;
    let (_, report) = proxy
        .control(
            "POST",
            "/v1/drain",
            Some(json!({ "upstreams": [old.addr], "timeout_ms": 100 })),
        )
        .await;
    assert_eq!(report["open"], 2, "{report}");
    assert_eq!(report["drained"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_survive_a_restart() {
    let web = echo_upstream("web").await;
    let api = echo_upstream("api").await;
    let proxy = TestProxy::start();
    let table = RouteTable {
        routes: vec![
            Route::new("web", vec![web.addr]).hosts(["shop.test"]),
            Route::new("api", vec![api.addr, web.addr])
                .hosts(["*.shop.test"])
                .path_prefix("/api", true)
                .balance(Balance::LeastConnections),
        ],
    };
    proxy.put_routes(&table).await;
    let saved = proxy.dir.path().join("state/routes.json");
    let on_disk: RouteTable = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(on_disk, table);

    let proxy = proxy.restart();
    let (_, served) = proxy.control("GET", "/v1/routes", None).await;
    assert_eq!(served, serde_json::to_value(&table).unwrap());
    let answer = get(&client(), &proxy, "shop.test", "/").await;
    assert_eq!(answer.upstream(), "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_service_and_status_class() {
    let web = echo_upstream("web").await;
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![web.addr]).hosts(["web.test"])],
        })
        .await;
    let client = client();
    for _ in 0..3 {
        get(&client, &proxy, "web.test", "/").await;
    }
    get(&client, &proxy, "nowhere.test", "/").await;
    // A request is counted when its response has been sent in full.
    let mut text = String::new();
    let deadline = Instant::now() + support::PATIENCE;
    while !text.contains(r#"gantry_proxy_requests_total{service="web",class="2xx"} 3"#) {
        assert!(Instant::now() < deadline, "{text}");
        text = proxy
            .control("GET", "/metrics", None)
            .await
            .1
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert!(
        text.contains(r#"gantry_proxy_requests_total{service="-",class="4xx"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gantry_proxy_request_duration_seconds_count{service="web"} 3"#),
        "{text}"
    );
}
