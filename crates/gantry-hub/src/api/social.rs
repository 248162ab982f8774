//! Talking about items: editing and deleting one's own comments,
//! reactions, watching items, notifications, and products' custom fields.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Principal};
use super::{AppState, ErrorBody, JsonBody};
use crate::error::HubError;
use crate::model::{Comment, CustomField, Emoji, Notification, Permission};
use crate::store::{NewField, PAGE_MAX};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/agent/items/{id}/comments/{comment}",
            patch(edit_comment).delete(delete_comment),
        )
        .route(
            "/api/agent/items/{id}/comments/{comment}/reactions",
            post(add_reaction),
        )
        .route(
            "/api/agent/items/{id}/comments/{comment}/reactions/{emoji}",
            axum::routing::delete(remove_reaction),
        )
        .route(
            "/api/agent/items/{id}/watchers",
            get(watchers).post(watch).delete(unwatch),
        )
        .route("/api/agent/notifications", get(notifications))
        .route("/api/agent/notifications/read", post(mark_read))
        .route(
            "/api/agent/products/{key}/fields",
            get(custom_fields).post(define_field),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentEdit {
    /// Markdown; names newly mentioned are notified.
    body: String,
}

/// Edit your own comment; the text before goes to the activity log.
#[utoipa::path(patch, path = "/api/agent/items/{id}/comments/{comment}", tag = "agent",
    request_body = CommentEdit,
    params(("id" = String, Path, example = "SHOP-1"), ("comment" = i64, Path, example = 1)),
    responses((status = 200, body = Comment), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn edit_comment(
    caller: Caller,
    Path((id, comment)): Path<(String, i64)>,
    body: JsonBody<CommentEdit>,
) -> Result<Response, HubError> {
    caller
        .json(Permission::Write, move |store, access| {
            store.edit_comment(access, &id, comment, &body.value.body)
        })
        .await
}

/// Delete your own comment; its text stays in the activity log.
#[utoipa::path(delete, path = "/api/agent/items/{id}/comments/{comment}", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1"), ("comment" = i64, Path, example = 1)),
    responses((status = 204), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn delete_comment(
    caller: Caller,
    Path((id, comment)): Path<(String, i64)>,
) -> Result<Response, HubError> {
    caller
        .run(Permission::Write, move |store, access| {
            store.delete_comment(access, &id, comment)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReaction {
    emoji: Emoji,
}

/// React to a comment; one of each emoji per key or user.
#[utoipa::path(post, path = "/api/agent/items/{id}/comments/{comment}/reactions", tag = "agent",
    request_body = NewReaction,
    params(("id" = String, Path, example = "SHOP-1"), ("comment" = i64, Path, example = 1)),
    responses((status = 200, body = Comment), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn add_reaction(
    caller: Caller,
    Path((id, comment)): Path<(String, i64)>,
    body: JsonBody<NewReaction>,
) -> Result<Response, HubError> {
    let emoji = body.value.emoji;
    caller
        .json(Permission::Write, move |store, access| {
            store.react(access, &id, comment, emoji, true)
        })
        .await
}

/// Take your reaction back.
#[utoipa::path(delete, path = "/api/agent/items/{id}/comments/{comment}/reactions/{emoji}",
    tag = "agent",
    params(("id" = String, Path, example = "SHOP-1"), ("comment" = i64, Path, example = 1), ("emoji" = Emoji, Path)),
    responses((status = 200, body = Comment), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn remove_reaction(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, comment, emoji)): Path<(String, i64, String)>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Write)?;
    let emoji = Emoji::parse(&emoji).ok_or_else(|| HubError::Invalid {
        message: format!("`{}` is not a reaction", emoji.escape_debug()),
        hint: Some(format!("one of {}", Emoji::names())),
    })?;
    state
        .json(move |store| store.react(&access, &id, comment, emoji, false))
        .await
}

/// Who watches the item.
#[utoipa::path(get, path = "/api/agent/items/{id}/watchers", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1")),
    responses((status = 200, body = Vec<String>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn watchers(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| {
            store.watchers(access, &id)
        })
        .await
}

/// Watch the item: its changes and comments notify you. Answers the watchers.
#[utoipa::path(post, path = "/api/agent/items/{id}/watchers", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1")),
    responses((status = 200, body = Vec<String>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn watch(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| {
            store.watch(access, &id, true)
        })
        .await
}

/// Stop watching the item. Answers the watchers.
#[utoipa::path(delete, path = "/api/agent/items/{id}/watchers", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1")),
    responses((status = 200, body = Vec<String>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn unwatch(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| {
            store.watch(access, &id, false)
        })
        .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only unread ones.
    unread: Option<bool>,
    /// Older than this id (the last id of the previous page).
    before: Option<i64>,
    /// 1 to 100 (default 50).
    limit: Option<usize>,
}

/// Your notifications, newest first: mentions, and comments and changes on
/// items you watch.
#[utoipa::path(get, path = "/api/agent/notifications", tag = "agent", params(NotificationQuery),
    responses((status = 200, body = Vec<Notification>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn notifications(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<NotificationQuery>, QueryRejection>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Read)?;
    let Query(query) = query.map_err(|e| HubError::invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(HubError::invalid(format!(
            "`limit` must be 1 to {PAGE_MAX}"
        )));
    }
    let unread = query.unread.unwrap_or(false);
    state
        .json(move |store| store.notifications(&access, unread, query.before, limit))
        .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// Marks every notification up to this id read.
    up_to: i64,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Marked {
    marked: u64,
}

/// Mark your notifications read, up to an id.
#[utoipa::path(post, path = "/api/agent/notifications/read", tag = "agent", request_body = MarkRead,
    responses((status = 200, body = Marked), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn mark_read(caller: Caller, body: JsonBody<MarkRead>) -> Result<Response, HubError> {
    let up_to = body.value.up_to;
    let marked = caller
        .run(Permission::Read, move |store, access| {
            store.mark_read(access, up_to)
        })
        .await?;
    Ok(axum::Json(Marked { marked }).into_response())
}

/// The product's custom fields.
#[utoipa::path(get, path = "/api/agent/products/{key}/fields", tag = "agent",
    params(("key" = String, Path, description = "the product's key, `SHOP`")),
    responses((status = 200, body = Vec<CustomField>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn custom_fields(caller: Caller, Path(key): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| {
            store.custom_fields(access, &key)
        })
        .await
}

/// Define a custom field of the product (admin keys): text, number, date,
/// or select with its options. Items then carry values for it in `custom`.
#[utoipa::path(post, path = "/api/agent/products/{key}/fields", tag = "agent", request_body = NewField,
    params(("key" = String, Path)),
    responses((status = 201, body = CustomField), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn define_field(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    body: JsonBody<NewField>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Admin)?;
    state
        .answer(StatusCode::CREATED, move |store| {
            store.define_field(&access, &key, &body.value)
        })
        .await
}
