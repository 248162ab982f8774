//! Clients that stop reading an answer, an attachment's download or an
//! export, against a real hub with a short stall limit: the hub resets
//! their connections, so they hold none of its connections for long, while
//! a client that reads slowly but steadily gets its answer whole.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use gantry_hub::Limits;
use gantry_hub::model::Permission;
use http_body_util::BodyExt;
use serde_json::json;
use support::{Db, Hub, reset_by_hub};

on_both_databases!(
    downloads_their_clients_stop_reading_are_reset_and_others_are_served,
    an_export_its_client_stops_reading_is_reset_and_a_slow_reader_gets_it_whole,
);

/// The hubs' stall limit here: short, so that the tests wait little.
const STALL: Duration = Duration::from_secs(3);

async fn downloads_their_clients_stop_reading_are_reset_and_others_are_served(db: Db) {
    // As many stalled downloads as the hub takes connections: until the
    // hub gives up on them, it serves no one else.
    const STALLED: usize = 8;
    let limits = Limits {
        max_connections: STALLED,
        stall: STALL,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let key = hub.key("reader", Permission::Write, None).await;
    let agent = hub.client(&key);
    let item = agent
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Crash dump attached"}))
        .await;
    // Far more than the buffers between the hub and a client hold.
    let dump = vec![b'x'; 20 * 1024 * 1024];
    let path = format!("/api/agent/items/{}/attachments", item["id"]);
    let uploaded = agent
        .send_raw(
            "POST",
            &format!("{path}?name=core.dump"),
            &[("content-type", "application/octet-stream")],
            dump,
        )
        .await;
    assert_eq!(uploaded.status, 201, "{}", uploaded.text);
    let download = format!("{path}/{}", uploaded.json()["id"]);
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(hub.stalled_get(&download, &key).await);
    }
    hub.answers_health("the hub to answer once it gives up on the stalled downloads")
        .await;
    for stream in &stalled {
        reset_by_hub(
            stream,
            "the hub to reset a download its client stopped reading",
        )
        .await;
    }
}

async fn an_export_its_client_stops_reading_is_reset_and_a_slow_reader_gets_it_whole(db: Db) {
    const ITEMS: usize = 200;
    let limits = Limits {
        stall: STALL,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let key = hub.key("exporter", Permission::Write, None).await;
    let ann = hub.client(&key);
    // About 10 MB in all: more than the buffers between the hub and a
    // client hold, and only two of the export's pages.
    let description = "x".repeat(48_000);
    for n in 0..ITEMS {
        ann.create(&json!({"product": "SHOP", "type": "task",
            "title": format!("Item {n}"), "description": description}))
            .await;
    }
    let stalled = hub.stalled_get("/api/agent/export.json", &key).await;
    let (_, slowly) = tokio::join!(
        reset_by_hub(
            &stalled,
            "the hub to reset an export its client stopped reading"
        ),
        read_slowly(&hub, "/api/agent/export.json", &key),
    );
    let items: serde_json::Value = serde_json::from_slice(&slowly).unwrap();
    assert_eq!(items.as_array().map(Vec::len), Some(ITEMS));
    let health = hub.anonymous().get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.text);
}

/// `GET path`'s body, read a few kilobytes at a time with a short pause
/// between: a client far slower than the hub, which never stops for long.
/// Panics unless the body arrives whole.
async fn read_slowly(hub: &Hub, path: &str, key: &str) -> Vec<u8> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(hub.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", hub.addr.to_string())
        .header("authorization", format!("Bearer {key}"))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("the slow reader's export broke: {e}"));
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    read
}
