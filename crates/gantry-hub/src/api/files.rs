//! Attachments over HTTP: upload streams the raw body into the blob store
//! (25 MB at most, whatever the hub's JSON body limit, and within the
//! product's quota), download streams the file back as an attachment the
//! browser will not render or sniff (a client that stops reading it is
//! reset by the connection's stall limit, which drops the open file),
//! delete removes one (and its file, once no attachment names it). A file
//! an upload or a delete was stopped from recording goes with the hourly
//! sweep of unnamed files ([`sweep_unnamed`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::{Caller, Principal};
use super::{AppState, ErrorBody};
use crate::error::HubError;
use crate::model::{Attachment, Permission};
use crate::store::{ATTACHMENT_MAX, Store, check_file_name, content_type};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/agent/items/{id}/attachments",
            get(list_attachments).post(upload),
        )
        .route(
            "/api/agent/items/{id}/attachments/{attachment}",
            get(download).delete(delete),
        )
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name, without a path.
    name: String,
}

/// Attach a file (the raw request body, up to 25 MB) to the item; its
/// Content-Type is kept and sent back on download. Equal files are stored
/// once. A product's attachments share a quota (1 GiB by default, each
/// attachment counted whole): past it the answer is 413.
#[utoipa::path(post, path = "/api/agent/items/{id}/attachments", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Attachment), (status = 413, body = ErrorBody),
        (status = "4XX", body = ErrorBody), (status = 501, body = ErrorBody)),
    security(("api_key" = [])))]
async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Write)?;
    let Query(query) = query.map_err(|e| HubError::invalid(e.body_text()))?;
    check_file_name(&query.name)?;
    let kind = match request.headers().get(header::CONTENT_TYPE) {
        None => "application/octet-stream".to_owned(),
        Some(value) => content_type(value.to_str().unwrap_or(""))?,
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > ATTACHMENT_MAX) {
        return Err(too_large());
    }
    let quota = state.limits.attachment_quota_bytes;
    let blobs = state.store.blobs()?.clone();
    {
        let (access, id) = (access.clone(), id.clone());
        state
            .run(move |store| store.check_attachable(&access, &id, declared, quota))
            .await?;
    }
    let gate = blobs.gate();
    let shared = gate.read().await;
    let blob = blobs
        .put(request.into_body(), ATTACHMENT_MAX)
        .await
        .map_err(|e| match e {
            HubError::TooLarge { .. } => too_large(),
            other => other,
        })?;
    let sha256 = blob.sha256.clone();
    let added = state
        .answer(StatusCode::CREATED, move |store| {
            store.add_attachment(&access, &id, &blob, &query.name, &kind, quota)
        })
        .await;
    drop(shared);
    if added.is_err() {
        // Refused (over the quota, say): its file goes unless another
        // attachment names it, checked with no upload between.
        let _alone = gate.write().await;
        let check = sha256.clone();
        if !state
            .run(move |store| store.blob_referenced(&check))
            .await
            .unwrap_or(true)
        {
            let _ = blobs.remove(&sha256).await;
        }
    }
    added
}

/// Delete an attachment: its uploader or an admin of its product may. Its
/// file is removed once no other attachment names the same content.
#[utoipa::path(delete, path = "/api/agent/items/{id}/attachments/{attachment}", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1"), ("attachment" = i64, Path, example = 1)),
    responses((status = 204), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, attachment)): Path<(String, i64)>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Write)?;
    let admin = principal.access(Permission::Admin).ok();
    let blobs = state.store.blobs()?.clone();
    let gate = blobs.gate();
    let _alone = gate.write().await;
    let unnamed = state
        .run(move |store| store.delete_attachment(&access, admin.as_ref(), &id, attachment))
        .await?;
    if let Some(sha256) = unnamed {
        blobs.remove(&sha256).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes the stored files that no attachment names and that are
/// untouched for an hour; how many it removed.
///
/// An upload writes its file before its row, and no order makes the two
/// one step: the file's name is its digest, known only once the whole body
/// is read, and a row committed before its file is in place would name a
/// file that a download cannot find. So a hub killed, or a request
/// dropped, between the file's rename and the row's commit leaves a file
/// no row names, as does a delete stopped between its row's commit and its
/// file's removal; this sweep takes them, which is simpler than a row
/// marked pending and finished later. It never takes a file in use:
/// - a file touched within the hour is left (`BlobDir::idle_files`): an
///   upload renames its file into place (over an equal one too), as new as
///   its last byte, and writes its row within the request timeout, so an
///   upload in flight, on this hub or another sharing the directory, keeps
///   its file;
/// - each file found unnamed is checked again, still unnamed and still
///   old, under the gate held alone, which this hub's uploads hold shared
///   from their first byte until their row is written.
///
/// Hubs sharing a directory share no gate: an upload of the same bytes as
/// an old unnamed file, renamed into place on one hub between another
/// hub's last check of that file and its removal, loses its file.
pub(super) async fn sweep_unnamed(store: &Arc<Store>) -> Result<usize, HubError> {
    let blobs = store.blobs()?.clone();
    let idle = blobs.idle_files().await?;
    let unnamed = blocking(store, move |store| store.unnamed_blobs(idle)).await?;
    if unnamed.is_empty() {
        return Ok(0);
    }
    let gate = blobs.gate();
    let _alone = gate.write().await;
    let mut removed = 0;
    for sha256 in unnamed {
        let check = sha256.clone();
        let named = blocking(store, move |store| store.blob_referenced(&check)).await?;
        if !named && blobs.remove_idle(&sha256).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Runs a store operation on the blocking pool.
async fn blocking<R: Send + 'static>(
    store: &Arc<Store>,
    work: impl FnOnce(&Store) -> Result<R, HubError> + Send + 'static,
) -> Result<R, HubError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| HubError::Internal(format!("a sweep's task failed: {e}")))?
}

fn too_large() -> HubError {
    HubError::TooLarge {
        limit: usize::try_from(ATTACHMENT_MAX).unwrap_or(usize::MAX),
    }
}

/// The item's attachments.
#[utoipa::path(get, path = "/api/agent/items/{id}/attachments", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1")),
    responses((status = 200, body = Vec<Attachment>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn list_attachments(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| {
            store.attachments(access, &id)
        })
        .await
}

/// Download an attachment, with the type it was uploaded with, as a file
/// to save (`Content-Disposition: attachment`), never sniffed.
#[utoipa::path(get, path = "/api/agent/items/{id}/attachments/{attachment}", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1"), ("attachment" = i64, Path, example = 1)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn download(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, attachment)): Path<(String, i64)>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Read)?;
    let found = state
        .run(move |store| store.attachment(&access, &id, attachment))
        .await?;
    let file = state.store.blobs()?.open(&found.sha256).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    let text = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""));
    headers.insert(header::CONTENT_TYPE, text(&found.content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(found.size));
    headers.insert(header::CONTENT_DISPOSITION, text(&disposition(&found.name)));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", found.sha256)) {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

/// `attachment; filename="..."; filename*=UTF-8''...`: an ASCII name for
/// old clients, the exact one (RFC 5987) for the rest.
fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{exact}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dispositions_never_carry_quotes_or_line_breaks() {
        assert_eq!(
            super::disposition("ré\"port\r\n.txt"),
            "attachment; filename=\"r__port__.txt\"; filename*=UTF-8''r%C3%A9%22port%0D%0A%2Etxt"
        );
    }
}
