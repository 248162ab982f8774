//! The agent's HTTP/JSON API under `/v1`, served on a Unix socket (mode 0600).
//! Handlers parse, call the operation, and answer; errors are
//! `{"error": {"code", "message", "hint"}}` with a status that says who is at fault.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use gantry_core::agent_api::{
    AgentInfo, ApiError, ApiErrorBody, BlobList, BlobReceipt, DeployRequest, DeployResult,
    ExecSpec, InstanceState, LockGrant, LockRelease, LockRequest, LockState, LogLine, Outcome,
    ProxyInfo, Release, RollbackRequest, ServiceSelector, Status,
};
use gantry_core::endpoint::{Endpoint, Method};
use serde::Deserialize;

use crate::agent::Agent;
use crate::artifact::ArtifactError;
use crate::deploy;
use crate::isolation::Isolation;
use crate::proxy::{self, ProxyCutover};
use crate::store::StoreError;
use crate::{admission, instance, logs, openapi, status, upload};

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub error: ApiError,
}

impl ApiFailure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>, hint: Option<&str>) -> Self {
        ApiFailure {
            status,
            error: ApiError {
                code: code.to_owned(),
                message: message.into(),
                hint: hint.map(str::to_owned),
            },
        }
    }
    pub fn conflict(code: &str, message: impl Into<String>, hint: &str) -> Self {
        Self::new(StatusCode::CONFLICT, code, message, Some(hint))
    }
    pub fn invalid(code: &str, message: impl Into<String>, hint: &str) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message, Some(hint))
    }
    pub fn not_found(code: &str, message: impl Into<String>, hint: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message, Some(hint))
    }
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message, None)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.too_large",
            format!("the request body is over {} MiB", limit >> 20),
            Some(
                "send files as blobs (PUT /v1/blobs/{digest}); a JSON body must stay under the limit",
            ),
        )
    }
    pub fn store(error: StoreError) -> Self {
        Self::failed("agent.store", format!("the agent's store failed: {error}"))
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(ApiErrorBody { error: self.error })).into_response()
    }
}

type Shared = State<Arc<Agent>>;
type Answer<T> = Result<Json<T>, ApiFailure>;

pub fn router(agent: Arc<Agent>) -> Router {
    Endpoint::ALL
        .into_iter()
        .fold(Router::new(), |router, endpoint| {
            router.route(endpoint.path(), handler(endpoint))
        })
        .route_layer(axum::middleware::from_fn(admission::check_path))
        .layer(DefaultBodyLimit::max(admission::MAX_JSON_BODY))
        .with_state(agent)
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
        Endpoint::Deploy => on(method, deploy_project),
        Endpoint::Rollback => on(method, rollback),
        Endpoint::Status => on(method, project_status),
        Endpoint::Releases => on(method, releases),
        Endpoint::Release => on(method, release),
        Endpoint::Logs => on(method, project_logs),
        Endpoint::Stop => on(method, stop),
        Endpoint::Restart => on(method, restart),
        Endpoint::ExecSpec => on(method, exec_spec),
        Endpoint::LockState => on(method, lock_state),
        Endpoint::TakeLock => on(method, take_lock),
        Endpoint::ReleaseLock => on(method, release_lock),
    }
}

async fn health(State(agent): Shared) -> Json<AgentInfo> {
    Json(AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        state_dir: agent.paths.root.display().to_string(),
        started_at: agent.started_at,
        limits: agent.cgroups.mode().to_string(),
        proxy: agent.settings.proxy_listen.map(|a| a.to_string()),
    })
}

async fn openapi_doc() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn shutdown(State(agent): Shared) -> StatusCode {
    let _ = agent.shutdown.send(true);
    StatusCode::ACCEPTED
}

async fn proxy_restart(State(agent): Shared) -> Answer<ProxyInfo> {
    proxy::restart(&agent).await.map(Json)
}

async fn proxy_stop(State(agent): Shared) -> Answer<ProxyInfo> {
    proxy::stop(&agent).await.map(Json)
}

async fn blobs_missing(State(agent): Shared, Json(list): Json<BlobList>) -> Json<BlobList> {
    let digests = agent.blobs.missing(&list.digests);
    let partial = digests
        .iter()
        .filter_map(|d| agent.blobs.partial(d).map(|held| (d.clone(), held)))
        .collect();
    let uploading = digests
        .iter()
        .filter(|d| agent.blobs.uploading(d))
        .cloned()
        .collect();
    Json(BlobList {
        digests,
        partial,
        uploading,
    })
}

#[derive(Debug, Deserialize)]
struct BlobOffset {
    /// Where this body starts in the blob: the bytes the agent holds already.
    #[serde(default)]
    offset: u64,
}

async fn put_blob(
    State(agent): Shared,
    Path(digest): Path<String>,
    Query(at): Query<BlobOffset>,
    body: Body,
) -> Result<(StatusCode, Json<BlobReceipt>), ApiFailure> {
    let received = upload::receive(agent.blobs.clone(), digest.clone(), at.offset, body)
        .await
        .inspect_err(|e| tracing::warn!(%digest, offset = at.offset, "upload not stored: {e}"))
        .map_err(|e| match e {
            ArtifactError::OffsetMismatch { .. } => ApiFailure::conflict(
                "artifact.offset_mismatch",
                e.to_string(),
                &e.hint().unwrap_or_default(),
            ),
            ArtifactError::Interrupted { .. } => ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "artifact.incomplete",
                e.to_string(),
                e.hint().as_deref(),
            ),
            ArtifactError::Io { .. } => {
                ApiFailure::failed("artifact.failed", format!("blob {digest}: {e}"))
            }
            _ => ApiFailure::invalid(
                "artifact.checksum",
                format!("blob {digest} was not stored: {e}"),
                "upload the file again; its bytes did not match their digest",
            ),
        })?;
    let status = if received.already_stored {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(BlobReceipt {
            digest,
            size: received.size,
            received: received.received,
        }),
    ))
}

async fn deploy_project(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<DeployRequest>,
) -> Answer<DeployResult> {
    if request.project != project {
        return Err(ApiFailure::invalid(
            "deploy.project_mismatch",
            format!(
                "the path names `{project}` but the request deploys `{}`",
                request.project
            ),
            "send the request to /v1/projects/<its project>/deploys",
        ));
    }
    deploy_in_task(agent, request).await
}

/// Runs a deploy in its own task: a client that goes away (a cut link) does
/// not cancel it halfway; it finishes, and `status` tells how it ended.
async fn deploy_in_task(agent: Arc<Agent>, request: DeployRequest) -> Answer<DeployResult> {
    let project = request.project.clone();
    let shared = Arc::clone(&agent);
    let mut result =
        tokio::spawn(async move { deploy::deploy(&shared, request, &ProxyCutover).await })
            .await
            .map_err(|e| ApiFailure::failed("agent.internal", e.to_string()))??;
    crate::credentials::redact_releases(
        &agent,
        &project,
        std::slice::from_mut(&mut result.release),
    );
    Ok(Json(result))
}

async fn exec_spec(
    State(agent): Shared,
    Path((project, service)): Path<(String, String)>,
) -> Answer<ExecSpec> {
    let (p, s) = (project.clone(), service.clone());
    let (release, instances) = agent
        .db(move |store| {
            let Some(id) = store.current(&p, &s)? else {
                return Ok(None);
            };
            let Some(release) = store.release(&p, &id)? else {
                return Ok(None);
            };
            Ok(Some((release, store.instances(&p)?)))
        })
        .await
        .map_err(ApiFailure::store)?
        .ok_or_else(|| {
            ApiFailure::not_found(
                "service.not_deployed",
                format!("`{service}` of {project} runs no release on this host"),
                "deploy it first, or name a service `gantry status` lists",
            )
        })?;
    let spec = release
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| {
            ApiFailure::not_found(
                "service.not_deployed",
                format!("release {} has no service `{service}`", release.id),
                "name a service `gantry status` lists",
            )
        })?;
    let cwd = instance::working_dir(&agent, &project, &release.artifact_digest, spec);
    // The command must do no more than the service: where the agent runs
    // services as their project's user, it runs as that user too.
    let confinement = match agent.isolation {
        Isolation::AgentUser => None,
        Isolation::ProjectUsers => Some(
            agent
                .isolation
                .confinement(&agent.paths, &project, &service, spec.run_as_root)
                .map_err(|reason| {
                    ApiFailure::invalid(
                        "exec.failed",
                        reason,
                        "its instances cannot start either: fix the service's config and deploy again",
                    )
                })?,
        ),
    };
    Ok(Json(ExecSpec {
        confinement,
        env: instance::exec_environment(spec, &release.id, &instances),
        cwd: cwd.display().to_string(),
        secrets_file: agent.paths.secrets(&project).display().to_string(),
        secret_names: spec.secrets.clone(),
        release: release.id,
    }))
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
    let locks = agent.env_locks.lock().unwrap_or_else(|e| e.into_inner());
    Json(LockState {
        holder: locks
            .get(&(project, query.environment))
            .map(|(_, holder)| holder.clone()),
    })
}

async fn take_lock(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<LockRequest>,
) -> Answer<LockGrant> {
    let mut locks = agent.env_locks.lock().unwrap_or_else(|e| e.into_inner());
    let key = (project.clone(), request.environment.clone());
    let displaced = match locks.get(&key) {
        Some((_, holder)) if !request.force => {
            let ago = crate::agent::now_ms().saturating_sub(holder.since_ms) / 1000;
            return Err(ApiFailure::conflict(
                "deploy.locked",
                format!(
                    "`{}` of {project} ({}) is locked by pid {} of {}@{}, for {ago}s",
                    holder.command, request.environment, holder.pid, holder.user, holder.machine
                ),
                "wait for that deploy to end; if it is gone, pass --force-unlock",
            ));
        }
        Some((_, holder)) => Some(holder.clone()),
        None => None,
    };
    let token = format!("{:032x}", rand::random::<u128>());
    locks.insert(key, (token.clone(), request.holder));
    Ok(Json(LockGrant { token, displaced }))
}

async fn release_lock(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<LockRelease>,
) -> Answer<serde_json::Value> {
    let mut locks = agent.env_locks.lock().unwrap_or_else(|e| e.into_inner());
    let key = (project, request.environment);
    // Only its holder releases it: a forced take left the old holder's token stale.
    if locks
        .get(&key)
        .is_some_and(|(token, _)| *token == request.token)
    {
        locks.remove(&key);
    }
    Ok(Json(serde_json::Value::Null))
}

async fn rollback(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(request): Json<RollbackRequest>,
) -> Answer<DeployResult> {
    let p = project.clone();
    let releases = agent
        .db(move |s| s.releases(&p))
        .await
        .map_err(ApiFailure::store)?;
    let succeeded: Vec<&Release> = releases
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .collect();
    let target = match &request.to {
        Some(to) => releases
            .iter()
            .find(|r| &r.id == to || r.number.to_string() == *to)
            .ok_or_else(|| {
                ApiFailure::not_found(
                    "release.not_found",
                    format!("`{project}` has no release `{to}`"),
                    "list them with `gantry releases`",
                )
            })?,
        // The release before the newest one any service runs now: after an
        // interrupted deploy services may run different releases.
        None => {
            let p = project.clone();
            let current = agent
                .db(move |s| s.current_all(&p))
                .await
                .map_err(ApiFailure::store)?;
            let newest = releases
                .iter()
                .filter(|r| current.values().any(|id| *id == r.id))
                .map(|r| r.number)
                .max()
                .unwrap_or(u64::MAX);
            succeeded
                .iter()
                .find(|r| r.number < newest)
                .copied()
                .ok_or_else(|| {
                    ApiFailure::conflict(
                        "release.none_before",
                        format!("`{project}` has no earlier successful release to go back to"),
                        "name one with --to, or deploy first",
                    )
                })?
        }
    };
    let digest = target.artifact_digest.clone();
    let artifact = agent
        .db(move |s| s.artifact(&digest))
        .await
        .map_err(ApiFailure::store)?
        .ok_or_else(|| {
            ApiFailure::conflict(
                "release.artifact_gone",
                format!("the files of release {} are no longer kept", target.id),
                "deploy that version again",
            )
        })?;
    let deploy = DeployRequest {
        project: project.clone(),
        environment: target.environment.clone(),
        config_hash: target.config_hash.clone(),
        artifact,
        spec_version: gantry_core::agent_api::v1::SPEC_VERSION,
        services: target.services.clone(),
        secrets: request.secrets,
        rollback_of: Some(target.id.clone()),
    };
    deploy_in_task(agent, deploy).await
}

async fn project_status(State(agent): Shared, Path(project): Path<String>) -> Answer<Status> {
    let services = status::services(&agent, &project)
        .await
        .map_err(ApiFailure::store)?;
    Ok(Json(Status { project, services }))
}

async fn releases(State(agent): Shared, Path(project): Path<String>) -> Answer<Vec<Release>> {
    let p = project.clone();
    let mut releases = agent
        .db(move |s| s.releases(&p))
        .await
        .map_err(ApiFailure::store)?;
    crate::credentials::redact_releases(&agent, &project, &mut releases);
    Ok(Json(releases))
}

async fn release(
    State(agent): Shared,
    Path((project, id)): Path<(String, String)>,
) -> Answer<Release> {
    let (p, i) = (project.clone(), id.clone());
    let mut release = agent
        .db(move |s| s.release(&p, &i))
        .await
        .map_err(ApiFailure::store)?
        .ok_or_else(|| {
            ApiFailure::not_found(
                "release.not_found",
                format!("`{project}` has no release `{id}`"),
                "list them with `gantry releases`",
            )
        })?;
    crate::credentials::redact_releases(&agent, &project, std::slice::from_mut(&mut release));
    Ok(Json(release))
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub service: Option<String>,
    pub since_ms: Option<u64>,
    pub tail: Option<usize>,
    #[serde(default)]
    pub follow: bool,
}

async fn project_logs(
    State(agent): Shared,
    Path(project): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let stream = logs::stream(agent, project, query);
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn selected(
    agent: &Agent,
    project: &str,
    selector: &ServiceSelector,
) -> Result<Vec<crate::store::InstanceRecord>, ApiFailure> {
    let p = project.to_owned();
    let records = agent
        .db(move |s| s.instances(&p))
        .await
        .map_err(ApiFailure::store)?;
    let p = project.to_owned();
    let current = agent
        .db(move |s| s.current_all(&p))
        .await
        .map_err(ApiFailure::store)?;
    if let Some(service) = &selector.service
        && !current.contains_key(service)
    {
        return Err(ApiFailure::not_found(
            "service.not_found",
            format!("`{project}` runs no service `{service}`"),
            "see `gantry status` for the services",
        ));
    }
    Ok(records
        .into_iter()
        .filter(|r| selector.service.as_ref().is_none_or(|s| &r.service == s))
        .filter(|r| current.get(&r.service) == Some(&r.release))
        .collect())
}

async fn stop(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(selector): Json<ServiceSelector>,
) -> Answer<Status> {
    let records: Vec<_> = selected(&agent, &project, &selector)
        .await?
        .into_iter()
        .filter(|r| deploy::is_active(r.state) || r.state == InstanceState::Failed)
        .collect();
    // Out of the proxy's routes first, and drained, so no request is cut.
    let mut timeout = std::time::Duration::ZERO;
    for record in &records {
        timeout = timeout.max(stop_timeout(&agent, record).await);
    }
    proxy::drain_out(&agent, &records, timeout).await;
    for record in &records {
        let timeout = stop_timeout(&agent, record).await;
        let fresh = deploy::refreshed(&agent, record).await;
        instance::stop(&agent, &fresh, timeout, InstanceState::Stopped).await;
    }
    proxy::refresh(&agent).await;
    project_status(State(agent), Path(project)).await
}

async fn restart(
    State(agent): Shared,
    Path(project): Path<String>,
    Json(selector): Json<ServiceSelector>,
) -> Answer<Status> {
    let records = selected(&agent, &project, &selector).await?;
    // One instance at a time: out of the proxy's routes and drained, stopped,
    // started again by the supervisor, and healthy before the next one goes.
    for record in &records {
        let timeout = stop_timeout(&agent, record).await;
        let live = record.state == InstanceState::Live;
        if live {
            proxy::drain_out(&agent, std::slice::from_ref(record), timeout).await;
        }
        let fresh = deploy::refreshed(&agent, record).await;
        instance::stop(&agent, &fresh, timeout, InstanceState::Backoff).await;
        // A restart by hand starts the count afresh, crash history included;
        // the supervisor starts instances in backoff again at once.
        // Unhealthy until its check passes again: the proxy sends it nothing before.
        let id = record.id.clone();
        let _ = agent
            .db(move |s| {
                s.set_restarts(&id, 0)?;
                s.set_instance_health(&id, false)
            })
            .await;
        // The last one too, so the service serves on all when this returns;
        // one that was failing its checks is not waited for.
        if live && record.healthy {
            back_in_service(&agent, record).await;
        }
    }
    proxy::refresh(&agent).await;
    project_status(State(agent), Path(project)).await
}

/// Waits until the supervisor has the instance live and healthy again (at
/// most the health deadline).
async fn back_in_service(agent: &Agent, record: &crate::store::InstanceRecord) {
    let deadline = tokio::time::Instant::now() + agent.settings.health_deadline;
    while tokio::time::Instant::now() < deadline {
        let now = deploy::refreshed(agent, record).await;
        if now.state == InstanceState::Live && now.healthy {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn stop_timeout(agent: &Agent, record: &crate::store::InstanceRecord) -> std::time::Duration {
    let (p, r, name) = (
        record.project.clone(),
        record.release.clone(),
        record.service.clone(),
    );
    agent
        .db(move |s| s.release(&p, &r))
        .await
        .ok()
        .flatten()
        .and_then(|release| release.services.into_iter().find(|s| s.name == name))
        .map_or(std::time::Duration::from_secs(10), |s| {
            s.stop_timeout.as_std()
        })
}

/// A log line as one NDJSON line.
pub fn ndjson(line: &LogLine) -> Bytes {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}
