//! The hub's HTTP server: routes, the JSON error contract, request bounds,
//! rate limits. Handlers are thin: they check the key and the request's
//! shape, then call one `Store` operation on the blocking pool.

mod admin;
mod agent;
mod analytics;
mod auth;
mod connections;
mod files;
mod limit;
mod lists;
mod openapi;
mod public;
mod session;
mod social;
mod stall;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

pub use limit::Limits;

use crate::error::HubError;
use crate::model::Item;
use crate::store::Store;
use crate::webhooks::delivery::{self, Background};

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    limits: Limits,
    rates: Arc<limit::RateLimits>,
    background: Background,
}

impl AppState {
    /// Runs a store operation on the blocking pool: the databases' clients
    /// block, and the runtime's threads must not.
    async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<R, HubError> + Send + 'static,
    ) -> Result<R, HubError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| HubError::Internal(format!("a request's task failed: {e}")))?
    }

    /// Runs a store operation (as [`AppState::run`]) and answers what it
    /// returns as JSON, `200 OK`.
    async fn json<R: Serialize + Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<R, HubError> + Send + 'static,
    ) -> Result<Response, HubError> {
        self.answer(StatusCode::OK, work).await
    }

    /// Runs a store operation (as [`AppState::run`]) and answers what it
    /// returns as JSON, with `status`.
    async fn answer<R: Serialize + Send + 'static>(
        &self,
        status: StatusCode,
        work: impl FnOnce(&Store) -> Result<R, HubError> + Send + 'static,
    ) -> Result<Response, HubError> {
        let answer = self.run(work).await?;
        Ok((status, axum::Json(answer)).into_response())
    }
}

/// Serves the hub on `listener` until `shutdown` completes, with the
/// default background work (webhooks, SLA and stale watch).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, store, limits, Background::default(), shutdown).await
}

/// Serves the hub on `listener` until `shutdown` completes; `background`
/// schedules webhook deliveries and the watch.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    limits: Limits,
    background: Background,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let worker = tokio::spawn(delivery::run(store.clone(), background));
    let rates = Arc::new(limit::RateLimits::new(&limits));
    let sweeper = tokio::spawn(housekeeping(store.clone(), rates.clone()));
    let state = AppState {
        store: store.clone(),
        limits,
        rates,
        background,
    };
    let app = router(state);
    let served = accept(listener, app, limits, shutdown).await;
    sweeper.abort();
    worker.abort();
    // The refusals counted but not yet written, before they are lost.
    let _ = tokio::task::spawn_blocking(move || audit_counted_refusals(&store, true)).await;
    served
}

/// How many minutes apart stored files no attachment names are swept
/// (from the start): a sweep reads every stored file's age and every
/// attachment's digest, and such a file is left an hour anyway.
const UNNAMED_SWEEP_MINUTES: u64 = 60;

/// Every minute from the start: forgets idle addresses' rate limits,
/// writes the refusals counted for the audit log, and removes uploads a
/// killed hub abandoned; every hour from the start, stored files no
/// attachment names ([`files::sweep_unnamed`]).
async fn housekeeping(store: Arc<Store>, rates: Arc<limit::RateLimits>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    for minute in 0u64.. {
        tick.tick().await;
        rates.forget_idle();
        let counted = store.clone();
        let _ = tokio::task::spawn_blocking(move || audit_counted_refusals(&counted, false)).await;
        let Ok(blobs) = store.blobs() else {
            continue;
        };
        if let Err(e) = blobs.sweep_abandoned().await {
            tracing::warn!("cannot sweep abandoned uploads: {e}");
        }
        if minute % UNNAMED_SWEEP_MINUTES == 0 {
            match files::sweep_unnamed(&store).await {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!("removed {removed} attachment files no attachment names");
                }
                Err(e) => tracing::warn!("cannot sweep attachment files no attachment names: {e}"),
            }
        }
    }
}

fn audit_counted_refusals(store: &Store, all: bool) {
    if let Err(e) = store.audit_counted_refusals(all) {
        tracing::warn!("cannot write the refusals counted to the audit log: {e}");
    }
}

/// How long open requests may finish after the hub is asked to stop.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Accepts connections until `shutdown`, each bounded: at most
/// `max_connections` at once and `max_connections_per_address` from one
/// client (more are closed as they come), headers within `header_timeout`,
/// and reset once the client has taken nothing of an answer for
/// `stall`. Then waits for open requests, up to [`DRAIN`].
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let connections = connections::Connections::new(&limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: pause, do not spin.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Behind the proxy, a loopback peer is the proxy, whose clients
        // are known only from the requests' headers.
        let proxied = limits.behind_proxy && peer.ip().is_loopback();
        let Some(slot) = connections.admit((!proxied).then_some(peer.ip())) else {
            drop(stream);
            continue;
        };
        let stalling = stall::Stalling::new(stream, peer.ip(), limits.stall);
        let answering = stalling.answering();
        let service =
            app.clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.extensions_mut().insert(answering.clone());
                    request
                });
        let connection = http.serve_connection(
            TokioIo::new(stalling),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}

fn router(state: AppState) -> Router {
    Router::new()
        .merge(agent::routes())
        .merge(admin::routes())
        .merge(session::routes())
        .merge(public::routes())
        .merge(webhooks::routes())
        .merge(analytics::routes())
        .merge(social::routes())
        .merge(files::routes())
        .merge(lists::routes())
        .route("/api/openapi.json", axum::routing::get(openapi::document))
        .route("/healthz", axum::routing::get(health))
        .fallback(|| async { no_such_endpoint() })
        .method_not_allowed_fallback(|| async {
            HubError::Invalid {
                message: "the endpoint does not take this method".to_owned(),
                hint: Some("see /api/openapi.json".to_owned()),
            }
        })
        .layer(middleware::from_fn_with_state(state.clone(), per_address))
        .layer(DefaultBodyLimit::max(state.limits.body_bytes))
        .with_state(state)
}

/// What a path the hub does not serve is answered with (404).
fn no_such_endpoint() -> HubError {
    HubError::not_found("endpoint")
}

/// `GET /healthz`: 200 while the database answers, for Gantry's health
/// checks and load balancers.
async fn health(State(state): State<AppState>) -> Result<Response, HubError> {
    state.run(|store| store.ping()).await?;
    Ok(axum::Json(serde_json::json!({"status": "ok"})).into_response())
}

/// The client's address: the peer's, or behind Gantry's proxy the one the
/// proxy wrote into `X-Real-IP`.
fn client_address(state: &AppState, request: &Request) -> Option<std::net::IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    if state.limits.behind_proxy && peer.is_loopback() {
        let real = request
            .headers()
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        return real.or(Some(peer));
    }
    Some(peer)
}

async fn per_address(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(address) = client_address(&state, &request) else {
        return HubError::Internal("the connection has no peer address".to_owned()).into_response();
    };
    if let Some(answering) = request.extensions().get::<stall::Answering>() {
        answering.set(address);
    }
    if let Err(refused) = state.rates.check_address(address) {
        return refused.into_response();
    }
    request.extensions_mut().insert(ClientAddress(address));
    let limit = state.limits.request_timeout;
    // One line a request: never its headers, body or query (keys and
    // search words stay out of the log).
    let method = request.method().clone();
    let path = logged_path(request.uri().path());
    let started = std::time::Instant::now();
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => HubError::Timeout {
            seconds: limit.as_secs(),
        }
        .into_response(),
    };
    tracing::info!(
        client = %address,
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// A request's path as its log line shows it: at most 200 characters, and a
/// submission's token (which shows whoever holds it the submission) hidden.
fn logged_path(path: &str) -> String {
    const SUBMISSION: &str = "/api/public/submissions/";
    if path.starts_with(SUBMISSION) {
        return format!("{SUBMISSION}<token>");
    }
    path.chars().take(200).collect()
}

/// The client's address, as the rate limit and the audit log see it.
#[derive(Clone, Copy, Debug)]
struct ClientAddress(std::net::IpAddr);

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable; scripts match on it (`hub.claimed`, `hub.stale`, ...).
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
    /// `hub.claimed`: who holds the item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %self.code(), "{self}");
        }
        let holder = match &self {
            HubError::Claimed { holder, .. } => Some(holder.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().as_str().to_owned(),
                message: self.to_string(),
                hint: self.hint(),
                holder,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let HubError::RateLimited { retry_after, .. } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
        }
        response
    }
}

/// A JSON body, with its raw bytes (idempotency keys compare them).
/// Malformed JSON, an unknown field or a missing one is a `hub.invalid`
/// naming it; a body over the limit is `hub.too_large`.
struct JsonBody<T> {
    value: T,
    raw: Bytes,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = HubError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, HubError> {
        let limit = state.limits.body_bytes;
        let raw = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HubError::TooLarge { limit }
            } else {
                HubError::invalid(format!("cannot read the request body: {e}"))
            }
        })?;
        let value = serde_json::from_slice(&raw).map_err(|e| HubError::Invalid {
            message: format!("the request body is not what this endpoint takes: {e}"),
            hint: Some("see the endpoint's schema in /api/openapi.json".to_owned()),
        })?;
        Ok(JsonBody { value, raw })
    }
}

/// A [`JsonBody`] that must also be declared `application/json` (415
/// otherwise), checked before the body is read. A cross-site HTML form can
/// send only `application/x-www-form-urlencoded`, `multipart/form-data` or
/// `text/plain` without the browser asking the hub first (CORS preflight),
/// so an endpoint that such a form could abuse without a CSRF token (the
/// login) takes this.
struct JsonOnly<T>(JsonBody<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonOnly<T> {
    type Rejection = HubError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, HubError> {
        require_json(request.headers())?;
        Ok(JsonOnly(JsonBody::from_request(request, state).await?))
    }
}

fn require_json(headers: &HeaderMap) -> Result<(), HubError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = given
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if essence.as_deref() == Some("application/json") {
        return Ok(());
    }
    Err(HubError::NotJson {
        given: given.map_or_else(
            || "no Content-Type".to_owned(),
            |v| {
                format!(
                    "`{}`",
                    v.chars().take(100).collect::<String>().escape_debug()
                )
            },
        ),
    })
}

/// A JSON answer carrying the item's version as its ETag.
fn with_etag(status: StatusCode, item: &Item) -> Response {
    let mut response = (status, axum::Json(item)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", item.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// An answer stored as JSON text (idempotent POSTs replay it as it was);
/// an item carries its ETag.
fn stored_json(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let version = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .filter(|v| v.get("reference").is_some())
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_i64));
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(Ok(etag)) = version.map(|v| HeaderValue::from_str(&format!("\"{v}\""))) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// A header's value as text, bounded.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, HubError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                HubError::invalid(format!("the {name} header is not visible ASCII"))
            })?;
            if text.len() > 256 {
                return Err(HubError::invalid(format!(
                    "the {name} header is over 256 bytes"
                )));
            }
            Ok(Some(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::logged_path;

    #[test]
    fn the_log_hides_a_submissions_token_and_bounds_a_path() {
        assert_eq!(
            logged_path("/api/public/submissions/s3cr3t-token"),
            "/api/public/submissions/<token>"
        );
        assert_eq!(logged_path("/api/agent/items/7"), "/api/agent/items/7");
        let long = format!("/{}", "a".repeat(500));
        assert_eq!(logged_path(&long).len(), 200);
    }
}
