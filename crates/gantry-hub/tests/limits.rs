//! Rate limits, the served OpenAPI document and the health check, against
//! a real hub.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_hub::model::{Permission, Role};
use gantry_hub::{KeySpec, Limits};
use support::{Db, Hub};

on_both_databases!(
    a_flooding_address_gets_429_with_retry_after,
    a_key_over_its_own_rate_gets_429,
    the_hub_serves_its_openapi_document,
    healthz_answers_without_a_key,
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
}

async fn healthz_answers_without_a_key(db: Db) {
    let hub = Hub::start(db).await;
    let answer = hub.anonymous().get("/healthz").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["status"], "ok");
}
