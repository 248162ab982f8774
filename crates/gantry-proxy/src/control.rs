//! The control API, HTTP/1.1 with JSON on a Unix socket (mode 0600) that
//! only the agent talks to. It never sits on a request's path: it swaps the
//! table that requests read.
//!
//! - `GET  /v1/health`  → `{"status":"ok","routes":N,"uptime_ms":N,"version":"…","pid":N,"binary":"dev:ino"}`
//! - `GET  /v1/routes`  → the `RouteTable` being served
//! - `PUT  /v1/routes`  ← a `RouteTable`: validated, saved, swapped in whole
//! - `POST /v1/drain`   ← `{"upstreams":["127.0.0.1:20001"],"timeout_ms":N}`
//!   → `{"open":N,"drained":bool,"waited_ms":N}` once nothing is open to them
//!   or the timeout passed; those the table no longer routes to take no new
//!   request from the call on, until a table routes to them again
//! - `GET  /metrics`    → Prometheus text
//!
//! Errors are `{"error":{"code":"…","message":"…"}}` with a 4xx or 5xx status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::error::ProxyError;
use crate::state::ProxyState;
use crate::table::RouteTable;

/// The control API's paths, for the proxy's router and its one client.
pub const HEALTH_PATH: &str = "/v1/health";
pub const ROUTES_PATH: &str = "/v1/routes";
pub const DRAIN_PATH: &str = "/v1/drain";

/// The longest a drain may be asked to wait.
const MAX_DRAIN: Duration = Duration::from_secs(3600);

pub(crate) fn router(state: Arc<ProxyState>) -> axum::Router {
    axum::Router::new()
        .route(HEALTH_PATH, get(health))
        .route(ROUTES_PATH, get(get_routes).put(put_routes))
        .route(DRAIN_PATH, post(drain))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// What `POST /v1/drain` takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub upstreams: Vec<SocketAddr>,
    pub timeout_ms: u64,
}

/// What `POST /v1/drain` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Requests and WebSockets still open to those upstreams.
    pub open: usize,
    /// Whether nothing was left open.
    pub drained: bool,
    pub waited_ms: u64,
}

/// What `GET /v1/health` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub routes: usize,
    pub uptime_ms: u64,
    pub version: String,
    /// The proxy's process.
    #[serde(default)]
    pub pid: u32,
    /// Which binary the process runs: `device:inode` of `/proc/self/exe`
    /// (empty where unknown), to tell when the installed one changed.
    #[serde(default)]
    pub binary: String,
}

/// `device:inode` of the binary this process runs, or "" where unknown.
pub fn running_binary() -> String {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/exe")
        .map_or_else(|_| String::new(), |m| format!("{}:{}", m.dev(), m.ino()))
}

async fn health(State(state): State<Arc<ProxyState>>) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        routes: state.table().routes.len(),
        uptime_ms: millis(state.started.elapsed()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        binary: running_binary(),
    })
}

async fn get_routes(State(state): State<Arc<ProxyState>>) -> Json<RouteTable> {
    Json(RouteTable::clone(&state.table()))
}

async fn put_routes(State(state): State<Arc<ProxyState>>, body: Bytes) -> Response {
    let table: RouteTable = match serde_json::from_slice(&body) {
        Ok(table) => table,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "routes.invalid_json",
                &e.to_string(),
            );
        }
    };
    match state.replace(table).await {
        Ok(()) => Json(RouteTable::clone(&state.table())).into_response(),
        Err(e @ (ProxyError::Table(_) | ProxyError::Certificate(_))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), &e.to_string())
        }
        Err(e @ ProxyError::StaticRoot { .. }) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), &error_chain(&e))
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.code(),
            &error_chain(&e),
        ),
    }
}

async fn drain(State(state): State<Arc<ProxyState>>, body: Bytes) -> Response {
    let request: DrainRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "drain.invalid_json",
                &e.to_string(),
            );
        }
    };
    let started = Instant::now();
    let timeout = Duration::from_millis(request.timeout_ms).min(MAX_DRAIN);
    let open = state.drain(&request.upstreams, timeout).await;
    Json(DrainReport {
        open,
        drained: open == 0,
        waited_ms: millis(started.elapsed()),
    })
    .into_response()
}

async fn metrics(State(state): State<Arc<ProxyState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "control.not_found",
        "no such endpoint",
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
