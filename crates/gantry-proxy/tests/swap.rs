//! Replacing the route table under load: no request fails, and every
//! request sent after `PUT /v1/routes` returned reaches the new upstream.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gantry_proxy::{Route, RouteTable};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use support::{TestProxy, client, echo_upstream, empty, eventually};

const KEEP_ALIVE_CLIENTS: usize = 4;
const NEW_CONNECTION_CLIENTS: usize = 2;
const REQUESTS_EACH_SIDE: usize = 1000;

/// What one request saw: when it was sent and answered, and who answered
/// (or the error).
struct Outcome {
    sent: Instant,
    done: Instant,
    answer: Result<String, String>,
}

#[derive(Default)]
struct Log(Mutex<Vec<Outcome>>);

impl Log {
    fn push(&self, sent: Instant, answer: Result<String, String>) {
        let done = Instant::now();
        self.0.lock().unwrap().push(Outcome { sent, done, answer });
    }

    fn count(&self, since: Option<Instant>) -> usize {
        let outcomes = self.0.lock().unwrap();
        outcomes
            .iter()
            .filter(|o| since.is_none_or(|t| o.sent > t))
            .count()
    }
}

fn from(outcome: &Outcome, upstream: &str) -> bool {
    outcome.answer.as_deref() == Ok(upstream)
}

fn routes(addr: std::net::SocketAddr) -> RouteTable {
    RouteTable {
        routes: vec![Route::new("web", vec![addr]).hosts(["web.test"])],
    }
}

async fn answer_of(
    response: Result<hyper::Response<hyper::body::Incoming>, String>,
) -> Result<String, String> {
    let response = response?;
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status != StatusCode::OK {
        return Err(format!("{status}: {text}"));
    }
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(json["upstream"].as_str().unwrap_or_default().to_owned())
}

/// One request on a connection of its own, closed after it.
async fn on_new_connection(
    addr: std::net::SocketAddr,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", "web.test")
        .header("connection", "close")
        .body(empty())
        .unwrap();
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_swap_under_load_fails_nothing_and_takes_effect_at_once() {
    let blue = echo_upstream("blue").await;
    let green = echo_upstream("green").await;
    let proxy = TestProxy::start();
    proxy.put_routes(&routes(blue.addr)).await;

    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let pooled = client();
    for _ in 0..KEEP_ALIVE_CLIENTS {
        let (log, stop, pooled, url) = (
            Arc::clone(&log),
            Arc::clone(&stop),
            pooled.clone(),
            proxy.url("/"),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(&url)
                    .header("host", "web.test")
                    .body(empty())
                    .unwrap();
                let sent = Instant::now();
                let response = pooled.request(request).await.map_err(|e| e.to_string());
                log.push(sent, answer_of(response).await);
            }
        }));
    }
    for _ in 0..NEW_CONNECTION_CLIENTS {
        let (log, stop, addr) = (Arc::clone(&log), Arc::clone(&stop), proxy.addr);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let response = on_new_connection(addr).await;
                log.push(sent, answer_of(response).await);
            }
        }));
    }

    eventually("requests before the swap", || {
        log.count(None) >= REQUESTS_EACH_SIDE
    })
    .await;
    let swapping = Instant::now();
    proxy.put_routes(&routes(green.addr)).await;
    let swapped = Instant::now();
    eventually("requests after the swap", || {
        log.count(Some(swapped)) >= REQUESTS_EACH_SIDE
    })
    .await;
    // More swaps back and forth while the load goes on.
    let more_swaps = Instant::now();
    for round in 0..6 {
        let next = if round % 2 == 0 {
            blue.addr
        } else {
            green.addr
        };
        let before = log.count(None);
        proxy.put_routes(&routes(next)).await;
        eventually("requests after another swap", || {
            log.count(None) >= before + 50
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let outcomes = log.0.lock().unwrap();
    let failed: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    // Answered before the PUT was sent: blue only.
    let before: Vec<&Outcome> = outcomes.iter().filter(|o| o.done < swapping).collect();
    assert!(
        before.iter().all(|o| from(o, "blue")),
        "before the swap, only blue answers"
    );
    // Sent after the swap and answered before the next one began: green only.
    let after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent > swapped && o.done < more_swaps)
        .collect();
    let stale = after.iter().filter(|o| !from(o, "green")).count();
    assert!(
        after.len() >= REQUESTS_EACH_SIDE / 2,
        "only {} requests after the swap",
        after.len()
    );
    assert_eq!(
        stale,
        0,
        "{stale} of {} requests sent after the swap reached blue",
        after.len()
    );
    eprintln!("{} requests through 7 swaps, none failed", outcomes.len());
}
