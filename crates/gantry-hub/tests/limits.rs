//! Rate limits, the served OpenAPI document and the health check, against
//! a real hub.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_hub::model::{Permission, Role};
use gantry_hub::{KeySpec, Limits};
use support::{Db, Hub};

/// Blocking threads in [`stalled_exports_leave_the_hub_answering`]'s
/// runtime: a busy hub's pool, full, made small.
const BLOCKING_THREADS: usize = 2;

/// A test on each database, on a runtime of [`BLOCKING_THREADS`].
macro_rules! on_a_small_blocking_pool {
    ($name:ident) => {
        mod $name {
            fn run(db: super::Db) {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .max_blocking_threads(super::BLOCKING_THREADS)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(super::$name(db));
            }

            #[test]
            fn on_sqlite() {
                run(super::Db::Sqlite);
            }

            #[test]
            fn on_postgres() {
                run(super::Db::Postgres);
            }
        }
    };
}

on_both_databases!(
    a_flooding_address_gets_429_with_retry_after,
    a_key_over_its_own_rate_gets_429,
    the_hub_serves_its_openapi_document,
    healthz_answers_without_a_key,
    a_client_slow_to_send_its_headers_is_cut_off,
    connections_over_the_cap_are_closed_as_they_come,
    one_address_cannot_hold_every_connection,
    a_body_that_never_arrives_gets_408,
);

async fn a_flooding_address_gets_429_with_retry_after(db: Db) {
    let limits = Limits {
        per_address_per_minute: 5,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let client = hub.anonymous();
    for _ in 0..5 {
        assert_eq!(client.get("/api/agent/items").await.status, 401);
    }
    let flooded = client.get("/api/agent/items").await;
    assert_eq!(flooded.status, 429, "{}", flooded.text);
    assert_eq!(flooded.code(), "hub.rate_limited");
    let retry: u64 = flooded.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

async fn a_key_over_its_own_rate_gets_429(db: Db) {
    let hub = Hub::start(db).await;
    let slow = hub
        .key_with(KeySpec {
            name: "slow".to_owned(),
            role: Role::Ci,
            permission: Permission::Read,
            product: None,
            rate_per_minute: Some(3),
            allow_from: Vec::new(),
        })
        .await;
    let fast = hub.client(&hub.key("fast", Permission::Read, None).await);
    let slow = hub.client(&slow);
    for _ in 0..3 {
        assert_eq!(slow.get("/api/agent/items").await.status, 200);
    }
    let limited = slow.get("/api/agent/items").await;
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(
        fast.get("/api/agent/items").await.status,
        200,
        "other keys are not slowed"
    );
}

async fn the_hub_serves_its_openapi_document(db: Db) {
    let hub = Hub::start(db).await;
    let answer = hub.anonymous().get("/api/openapi.json").await;
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/agent/items",
        "/api/agent/items/{id}/claim",
        "/api/agent/items/{id}/status",
        "/api/agent/items/{id}/comments",
        "/api/agent/items/{id}/pr",
        "/api/agent/items/{id}/checklist",
        "/api/agent/items/{id}/context",
    ] {
        assert!(doc["paths"][path].is_object(), "the document lacks {path}");
    }
    let item = &doc["components"]["schemas"]["Item"];
    assert!(item["properties"]["claim"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let session = &doc["components"]["securitySchemes"]["session"];
    assert_eq!(session["type"], "apiKey", "{session}");
    assert_eq!(session["in"], "cookie", "{session}");
    assert_eq!(session["name"], "gantry_session", "{session}");
    let list = &doc["paths"]["/api/agent/items"]["get"]["security"];
    assert!(
        list.to_string().contains("\"api_key\"") && list.to_string().contains("\"session\""),
        "a key or a session: {list}"
    );
    assert!(
        doc["paths"]["/api/session"]["get"]["security"]
            .to_string()
            .contains("\"session\""),
        "whoami takes a session"
    );
}

async fn healthz_answers_without_a_key(db: Db) {
    let hub = Hub::start(db).await;
    let answer = hub.anonymous().get("/healthz").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["status"], "ok");
}

/// Reads until the hub closes the connection; what it sent, if it did
/// within `deadline`.
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    deadline: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    match tokio::time::timeout(deadline, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

async fn a_client_slow_to_send_its_headers_is_cut_off(db: Db) {
    use tokio::io::AsyncWriteExt;
    let limits = Limits {
        header_timeout: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let mut slow = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n")
        .await
        .unwrap();
    // Never the blank line that ends the headers: the hub must hang up.
    let answer = closed_within(&mut slow, std::time::Duration::from_secs(20)).await;
    assert!(answer.is_some(), "the hub kept a half-sent request open");
    assert_eq!(
        hub.anonymous().get("/healthz").await.status,
        200,
        "others are served"
    );
}

async fn connections_over_the_cap_are_closed_as_they_come(db: Db) {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let _first = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let answer = closed_within(&mut third, std::time::Duration::from_secs(20)).await;
    assert_eq!(
        answer.as_deref(),
        Some(""),
        "the third connection is closed unanswered"
    );
    drop((_first, _second));
    // Once the two are gone, their slots free up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        use tokio::io::AsyncWriteExt;
        let mut probe = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        let _ = probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
            .await;
        let answer = closed_within(&mut probe, std::time::Duration::from_secs(5)).await;
        if answer.is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slots never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn one_address_cannot_hold_every_connection(db: Db) {
    let limits = Limits {
        max_connections_per_address: 3,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(hub.addr).await.unwrap());
    }
    // Sooner than the header timeout (10 s) would close it.
    let mut extra = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let answer = closed_within(&mut extra, std::time::Duration::from_secs(3)).await;
    assert_eq!(
        answer.as_deref(),
        Some(""),
        "the fourth connection from one address is closed unanswered"
    );
    for stream in &mut held {
        let closed = closed_within(stream, std::time::Duration::from_millis(100)).await;
        assert_eq!(closed, None, "the first three stay open");
    }
    held.pop();
    hub.answers_health("a freed slot to serve a request").await;
}

async fn a_body_that_never_arrives_gets_408(db: Db) {
    use tokio::io::AsyncWriteExt;
    let limits = Limits {
        request_timeout: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let key = hub.key("slow-writer", Permission::Write, None).await;
    let mut slow = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let head = format!(
        "POST /api/agent/items HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"product\""
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_within(&mut slow, std::time::Duration::from_secs(20))
        .await
        .expect("the hub answers a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"hub.timeout\""), "{answer}");
    assert!(!answer.contains(&key), "the key is never echoed");
}

on_a_small_blocking_pool!(stalled_exports_leave_the_hub_answering);

async fn stalled_exports_leave_the_hub_answering(db: Db) {
    let limits = Limits {
        per_key_per_minute: 10_000,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let key = hub.key("exporter", Permission::Write, None).await;
    let ann = hub.client(&key);
    // Pages far larger than the buffers between the hub and a client, so
    // that one who does not read stops the export.
    let description = "x".repeat(20_000);
    for n in 0..600 {
        ann.create(&serde_json::json!({"product": "SHOP", "type": "task",
            "title": format!("Item {n}"), "description": description}))
            .await;
    }
    let mut stalled = Vec::new();
    for _ in 0..BLOCKING_THREADS {
        // The answer has begun; from here on it is never read.
        stalled.push(hub.stalled_get("/api/agent/export.json", &key).await);
    }
    let health = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        hub.anonymous().get("/healthz"),
    )
    .await
    .expect("the hub answers while exports wait on their clients");
    assert_eq!(health.status, 200, "{}", health.text);
    let whole = ann.get("/api/agent/export.json").await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.json().as_array().map(Vec::len), Some(600));
}
