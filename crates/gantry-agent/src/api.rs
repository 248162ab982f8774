//! The agent's HTTP/JSON API under `/v1`, served on a Unix socket (mode
//! 0600). The only module that knows HTTP: each handler parses its request,
//! calls one operation, and serializes the answer; an operation's
//! [`AgentError`] becomes `{"error": {"code", "message", "hint"}}` with a
//! status that says who is at fault.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, RawPathParams, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use futures_util::StreamExt;
use gantry_core::Code;
use gantry_core::agent_api::{
    AgentInfo, ApiError, ApiErrorBody, BackupInfo, BackupList, BackupRestored, BackupTrigger,
    BlobList, BlobReceipt, CompareRequest, Comparison, DeployRequest, DeployResult, ExecSpec,
    ImageLoaded, ImageManifest, LockGrant, LockRelease, LockRequest, LockState, LogLine, ProxyInfo,
    Release, RollbackRequest, ServiceSelector, Status,
};
use gantry_core::endpoint::{Endpoint, Method};
use serde::Deserialize;

use crate::agent::Agent;
use crate::error::AgentError;
use crate::logs::LogQuery;
use crate::{
    admission, backup, control, deploy, exec, history, images, logs, openapi, rollback, task,
    upload,
};

/// The largest JSON body the API reads. Blobs stream and are not bound by it.
const MAX_JSON_BODY: usize = 16 << 20;

impl AgentError {
    fn status(&self) -> StatusCode {
        match self {
            AgentError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AgentError::Conflict { .. } => StatusCode::CONFLICT,
            AgentError::NotFound { .. } => StatusCode::NOT_FOUND,
            AgentError::Incomplete { .. } => StatusCode::BAD_REQUEST,
            AgentError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let error = ApiError {
            code: self.code().to_string(),
            message: self.to_string(),
            hint: self.hint().map(str::to_owned),
        };
        (self.status(), Json(ApiErrorBody { error })).into_response()
    }
}

/// A JSON body over [`MAX_JSON_BODY`].
fn too_large() -> Response {
    let error = ApiError {
        code: Code::RequestTooLarge.to_string(),
        message: format!("the request body is over {} MiB", MAX_JSON_BODY >> 20),
        hint: Some(
            "send files as blobs (PUT /v1/blobs/{digest}); a JSON body must stay under the limit"
                .to_owned(),
        ),
    };
    (StatusCode::PAYLOAD_TOO_LARGE, Json(ApiErrorBody { error })).into_response()
}

type Shared = State<Arc<Agent>>;
type Answer<T> = Result<Json<T>, AgentError>;

pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Endpoint::ALL
        .into_iter()
        .fold(Router::new(), |router, endpoint| {
            router.route(endpoint.path(), handler(endpoint))
        })
        .route_layer(axum::middleware::from_fn(check_path))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(agent)
}

/// Middleware: the `{project}` and `{service}` of a path must be names; and
/// a JSON body over [`MAX_JSON_BODY`] gets the API's error answer rather
/// than the framework's text.
async fn check_path(params: RawPathParams, request: Request, next: Next) -> Response {
    for (key, value) in &params {
        if let Err(refused) = admission::check_path_param(key, value) {
            return refused.into_response();
        }
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    response
}

/// What answers each endpoint: a match, so that none is left without one.
fn handler(endpoint: Endpoint) -> MethodRouter<Arc<Agent>> {
    let method = match endpoint.method() {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    };
    match endpoint {
        Endpoint::Health => on(method, health),
        Endpoint::OpenApi => on(method, openapi_doc),
        Endpoint::Shutdown => on(method, shutdown),
        Endpoint::ProxyRestart => on(method, proxy_restart),
        Endpoint::ProxyStop => on(method, proxy_stop),
        Endpoint::MissingBlobs => on(method, blobs_missing),
        Endpoint::PutBlob => on(method, put_blob),
        Endpoint::MissingImageBlobs => on(method, image_blobs_missing),
        Endpoint::LoadImage => on(method, load_image),
        Endpoint::Deploy => on(method, deploy_project),
        Endpoint::Rollback => on(method, rollback),
        Endpoint::Status => on(method, project_status),
        Endpoint::Releases => on(method, releases),
        Endpoint::Release => on(method, release),
        Endpoint::Logs => on(method, project_logs),
        Endpoint::Stop => on(method, stop),
        Endpoint::Restart => on(method, restart),
        Endpoint::ExecSpec => on(method, exec_spec),
        Endpoint::RunTask => on(method, run_task),
        Endpoint::LockState => on(method, lock_state),
        Endpoint::TakeLock => on(method, take_lock),
        Endpoint::ReleaseLock => on(method, release_lock),
        Endpoint::TakeBackup => on(method, take_backup),
        Endpoint::Backups => on(method, backups),
        Endpoint::DownloadBackup => on(method, download_backup),
        Endpoint::RestoreBackup => on(method, restore_backup),
        Endpoint::Compare => on(method, compare),
    }
}

async fn health(State(agent): Shared) -> Json<AgentInfo> {
    Json(agent.info())
}

async fn openapi_doc() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn shutdown(State(agent): Shared) -> StatusCode {
    let _ = agent.shutdown.send(true);
    StatusCode::ACCEPTED
}

async fn proxy_restart(State(agent): Shared) -> Answer<ProxyInfo> {
    agent.proxy.restart().await.map(Json)
}

async fn proxy_stop(State(agent): Shared) -> Answer<ProxyInfo> {
    agent.proxy.stop().await.map(Json)
}

async fn blobs_missing(State(agent): Shared, Json(list): Json<BlobList>) -> Json<BlobList> {
    Json(upload::missing(&agent.blobs, &list.digests))
}

async fn image_blobs_missing(
    State(agent): Shared,
    Json(image): Json<ImageManifest>,
) -> Answer<BlobList> {
    Ok(Json(images::missing(&agent, &image).await?))
}

async fn load_image(State(agent): Shared, Json(image): Json<ImageManifest>) -> Answer<ImageLoaded> {
    Ok(Json(images::load(&agent, &image).await?))
}

#[derive(Debug, Deserialize)]
struct BlobOffset {
    /// Where this body starts in the blob: the bytes the agent holds already.
    #[serde(default)]
    offset: u64,
}

/// 201 when the blob is stored now, 200 when it was already.
async fn put_blob(
    State(agent): Shared,
    Path(digest): Path<String>,
    Query(at): Query<BlobOffset>,
    body: Body,
) -> Result<(StatusCode, Json<BlobReceipt>), AgentError> {
    let stream = body.into_data_stream();
    let received = upload::put(agent.blobs.clone(), digest.clone(), at.offset, stream).await?;
    let status = match received.already_stored {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    let receipt = BlobReceipt {
        digest,
        size: received.size,
        received: received.received,
    };
    Ok((status, Json(receipt)))
}

async fn deploy_project(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<DeployRequest>,
) -> Answer<DeployResult> {
    deploy::deploy_project(agent, &project, request)
        .await
        .map(Json)
}

async fn rollback(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<RollbackRequest>,
) -> Answer<DeployResult> {
    rollback::rollback(agent, project, request).await.map(Json)
}

async fn exec_spec(
    State(agent): Shared,
    Path((project, service)): Path<(String, String)>,
) -> Answer<ExecSpec> {
    exec::exec_spec(&agent, project, service).await.map(Json)
}

async fn run_task(
    State(agent): Shared,
    Path((project, id)): Path<(String, String)>,
    Json(request): Json<gantry_core::agent_api::Task>,
) -> Answer<gantry_core::agent_api::Phase> {
    task::run(&agent, project, id, request).await.map(Json)
}

#[derive(Deserialize)]
struct EnvironmentQuery {
    environment: String,
}

async fn lock_state(
    State(agent): Shared,
    Path(project): Path<String>,
    Query(query): Query<EnvironmentQuery>,
) -> Json<LockState> {
    Json(agent.env_locks.state(project, query.environment))
}

async fn take_lock(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<LockRequest>,
) -> Answer<LockGrant> {
    agent.env_locks.take(&project, request).map(Json)
}

async fn release_lock(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<LockRelease>,
) -> Json<serde_json::Value> {
    agent.env_locks.release(project, request);
    Json(serde_json::Value::Null)
}

async fn project_status(State(agent): Shared, Path(project): Path<String>) -> Answer<Status> {
    control::status(&agent, project).await.map(Json)
}

async fn releases(State(agent): Shared, Path(project): Path<String>) -> Answer<Vec<Release>> {
    history::releases(&agent, project).await.map(Json)
}

async fn release(
    State(agent): Shared,
    Path((project, id)): Path<(String, String)>,
) -> Answer<Release> {
    history::release(&agent, project, id).await.map(Json)
}

async fn compare(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<CompareRequest>,
) -> Answer<Comparison> {
    history::compare(&agent, project, request).await.map(Json)
}

/// The lines as NDJSON, streamed.
async fn project_logs(
    State(agent): Shared,
    Path(project): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, AgentError> {
    let lines = (logs::stream(agent, project, query).await?)
        .map(|line| Ok::<_, std::io::Error>(ndjson(&line)));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn stop(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(selector): Json<ServiceSelector>,
) -> Answer<Status> {
    control::stop(&agent, project, selector).await.map(Json)
}

async fn restart(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(selector): Json<ServiceSelector>,
) -> Answer<Status> {
    control::restart(&agent, project, selector).await.map(Json)
}

async fn take_backup(
    State(agent): Shared,
    Path((project, service)): Path<(String, String)>,
) -> Answer<BackupInfo> {
    backup::take(&agent, &project, &service, BackupTrigger::Manual)
        .await
        .map(Json)
}

async fn backups(
    State(agent): Shared,
    Path((project, service)): Path<(String, String)>,
) -> Answer<BackupList> {
    backup::list(&agent, &project, &service).await.map(Json)
}

async fn restore_backup(
    State(agent): Shared,
    Path((project, service, id)): Path<(String, String, String)>,
) -> Answer<BackupRestored> {
    backup::restore(&agent, &project, &service, &id)
        .await
        .map(Json)
}

/// The backup's bytes, streamed; its sha256 in `x-gantry-sha256`.
async fn download_backup(
    State(agent): Shared,
    Path((project, service, id)): Path<(String, String, String)>,
) -> Result<Response, AgentError> {
    let (info, path) = backup::download(&agent, &project, &service, &id)?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        AgentError::failed(Code::BackupFailed, format!("cannot read the backup: {e}"))
    })?;
    let chunks = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, info.size.to_string()),
            (
                header::HeaderName::from_static("x-gantry-sha256"),
                info.sha256,
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// A log line as one NDJSON line.
fn ndjson(line: &LogLine) -> Bytes {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}
