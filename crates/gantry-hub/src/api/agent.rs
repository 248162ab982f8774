//! The agent API (`/api/agent/...`): list, create, claim and work items.
//! Every change to an item is conditional (If-Match: 428 without, 412 when
//! stale); POSTs take an Idempotency-Key.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Principal};
use super::{AppState, ErrorBody, JsonBody, header_text, stored_json, with_etag};
use crate::clock;
use crate::error::HubError;
use crate::model::{Activity, Comment, Item, Permission, Status};
use crate::store::{
    Access, CLAIM_DEFAULT_SECONDS, ChecklistChange, ItemEdit, ItemFilter, ItemPage, LinkChange,
    NewItem, NewPr, PAGE_MAX, Sort, StatusChange, Store, ViewQuery,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/agent/items", get(list_items).post(create_item))
        .route("/api/agent/items/{id}", get(get_item).patch(edit_item))
        .route("/api/agent/items/{id}/claim", patch(claim).delete(release))
        .route("/api/agent/items/{id}/status", patch(change_status))
        .route(
            "/api/agent/items/{id}/comments",
            post(add_comment).get(list_comments),
        )
        .route("/api/agent/items/{id}/pr", patch(link_pr))
        .route("/api/agent/items/{id}/links", post(change_links))
        .route("/api/agent/items/{id}/checklist", post(change_checklist))
        .route("/api/agent/items/{id}/context", get(context))
        .route("/api/agent/items/{id}/activity", get(activity))
}

/// `GET /api/agent/items`'s filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Statuses, comma-separated: `open,in_progress`.
    status: Option<String>,
    /// A label's name.
    label: Option<String>,
    assignee: Option<String>,
    /// A product's key.
    product: Option<String>,
    /// Words to find in the title or description (all of them; stemmed, so
    /// `migrating` finds `migration`).
    q: Option<String>,
    /// Only items changed at or after this RFC 3339 time (for polling).
    since: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Items a page, 1 to 100 (default 50).
    limit: Option<usize>,
    /// A custom field's value, `NAME:VALUE` (`Team:payments`).
    custom: Option<String>,
    /// `updated` (the default), `created` or `priority`; `-` first
    /// reverses (`-created`: newest first).
    sort: Option<String>,
    /// A saved view's id: its filters and sort apply where this request
    /// gives none.
    view: Option<i64>,
}

impl ListQuery {
    /// A list request selecting what a saved view does.
    pub(super) fn of_view(view: ViewQuery) -> ListQuery {
        ListQuery {
            status: view.status,
            label: view.label,
            assignee: view.assignee,
            product: view.product,
            q: view.q,
            custom: view.custom,
            sort: view.sort,
            ..ListQuery::default()
        }
    }

    /// Fills what the request leaves out from its saved view, if it names one.
    pub(super) async fn with_view(
        mut self,
        state: &AppState,
        access: &Access,
    ) -> Result<ListQuery, HubError> {
        let Some(id) = self.view.take() else {
            return Ok(self);
        };
        let access = access.clone();
        let view = state.run(move |store| store.view(&access, id)).await?.query;
        let fill = |mine: &mut Option<String>, theirs: Option<String>| {
            if mine.is_none() {
                *mine = theirs;
            }
        };
        fill(&mut self.status, view.status);
        fill(&mut self.label, view.label);
        fill(&mut self.assignee, view.assignee);
        fill(&mut self.product, view.product);
        fill(&mut self.q, view.q);
        fill(&mut self.custom, view.custom);
        fill(&mut self.sort, view.sort);
        Ok(self)
    }

    /// Whether it asks for one page (`cursor`, `limit`).
    pub(super) fn pages(&self) -> bool {
        self.cursor.is_some() || self.limit.is_some()
    }
}

pub(super) fn filter(query: ListQuery) -> Result<ItemFilter, HubError> {
    let bounded = |field: &str, value: Option<String>| -> Result<Option<String>, HubError> {
        match value {
            Some(v) if v.len() > 200 => {
                Err(HubError::invalid(format!("`{field}` is over 200 bytes")))
            }
            other => Ok(other),
        }
    };
    let status = match query.status.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .take(10)
            .map(|s| {
                Status::parse(s.trim()).ok_or_else(|| HubError::Invalid {
                    message: format!("`status` `{}` is not a status", s.escape_debug()),
                    hint: Some(format!("one of {}", Status::names())),
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let since = match query.since.as_deref() {
        None => None,
        Some(text) => Some(clock::parse(text).ok_or_else(|| HubError::Invalid {
            message: format!("`since` `{}` is not an RFC 3339 time", text.escape_debug()),
            hint: Some("for example 2026-12-06T12:00:00Z".to_owned()),
        })?),
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(HubError::invalid(format!(
            "`limit` must be 1 to {PAGE_MAX}"
        )));
    }
    let custom = match bounded("custom", query.custom)? {
        Some(text) => vec![crate::store::custom_filter(&text)?],
        None => Vec::new(),
    };
    let sort = match query.sort.as_deref() {
        None => Sort::default(),
        Some(text) => Sort::parse(text).ok_or_else(|| HubError::Invalid {
            message: format!("`sort` `{}` is not an order", text.escape_debug()),
            hint: Some("updated, created or priority; -created for newest first".to_owned()),
        })?,
    };
    Ok(ItemFilter {
        custom,
        sort,
        product: bounded("product", query.product)?,
        status,
        label: bounded("label", query.label)?,
        assignee: bounded("assignee", query.assignee)?,
        text: query.q,
        since,
        cursor: bounded("cursor", query.cursor)?,
        limit,
    })
}

/// A conditional change of an item: a write key, If-Match, one store
/// operation, the changed item with its new ETag.
async fn change(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    work: impl FnOnce(&Store, &Access, &str) -> Result<Item, HubError> + Send + 'static,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Write)?;
    let tag = if_match(headers)?;
    let item = state.run(move |store| work(store, &access, &tag)).await?;
    Ok(with_etag(StatusCode::OK, &item))
}

fn if_match(headers: &HeaderMap) -> Result<String, HubError> {
    header_text(headers, "if-match")?
        .map(str::to_owned)
        .ok_or(HubError::PreconditionRequired)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, HubError> {
    Ok(header_text(headers, "idempotency-key")?.map(str::to_owned))
}

/// List items, oldest change first; poll with `since`.
#[utoipa::path(get, path = "/api/agent/items", tag = "agent", params(ListQuery),
    responses((status = 200, body = ItemPage), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn list_items(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Read)?;
    let Query(query) = query.map_err(|e| HubError::invalid(e.body_text()))?;
    let filter = filter(query.with_view(&state, &access).await?)?;
    state
        .json(move |store| store.list_items(&access, &filter))
        .await
}

/// Create an item. With an Idempotency-Key, a retry creates nothing new and
/// answers as the first request did.
#[utoipa::path(post, path = "/api/agent/items", tag = "agent", request_body = NewItem,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retry safe")),
    responses((status = 201, body = Item, headers(("ETag" = String))), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn create_item(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: JsonBody<NewItem>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Write)?;
    let key = idempotency_key(&headers)?;
    let (status, body) = state
        .run(move |store| store.create_item(&access, &body.value, key.as_deref(), &body.raw))
        .await?;
    Ok(stored_json(status, body))
}

/// One item, by id (`17`) or reference (`SHOP-42`); its ETag is its version.
#[utoipa::path(get, path = "/api/agent/items/{id}", tag = "agent",
    params(("id" = String, Path, description = "`17` or `SHOP-42`", example = "SHOP-1")),
    responses((status = 200, body = Item, headers(("ETag" = String))), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn get_item(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    let item = caller
        .run(Permission::Read, move |store, access| {
            store.item(access, &id)
        })
        .await?;
    Ok(with_etag(StatusCode::OK, &item))
}

/// Change an item's fields: title, description, priority, visibility,
/// assignee, target release, labels, bug fields.
#[utoipa::path(patch, path = "/api/agent/items/{id}", tag = "agent", request_body = ItemEdit,
    params(("id" = String, Path, example = "SHOP-1"), ("If-Match" = String, Header)),
    responses((status = 200, body = Item, headers(("ETag" = String))), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn edit_item(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<ItemEdit>,
) -> Result<Response, HubError> {
    change(&state, &principal, &headers, move |store, access, tag| {
        store.edit_item(access, &id, tag, &body.value)
    })
    .await
}

/// `PATCH .../claim`'s body; may be empty.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// How long the claim lasts, 1 to 86400 s (default 1800); the holder
    /// renews it by claiming again.
    seconds: Option<u64>,
}

/// Claim an item. Of agents racing for one item exactly one wins; the
/// others get 409 `hub.claimed` naming the holder.
#[utoipa::path(patch, path = "/api/agent/items/{id}/claim", tag = "agent",
    request_body(content = Option<ClaimRequest>),
    params(("id" = String, Path, example = "SHOP-1"), ("If-Match" = String, Header, description = "the item's ETag")),
    responses((status = 200, body = Item, headers(("ETag" = String))), (status = 409, body = ErrorBody),
        (status = 412, body = ErrorBody), (status = 428, body = ErrorBody), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn claim(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HubError> {
    let request: ClaimRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ClaimRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| HubError::invalid(format!("the claim's body is not what it takes: {e}")))?
    };
    let seconds = request.seconds.unwrap_or(CLAIM_DEFAULT_SECONDS);
    change(&state, &principal, &headers, move |store, access, tag| {
        store.claim(access, &id, tag, seconds)
    })
    .await
}

/// Give up the claim.
#[utoipa::path(delete, path = "/api/agent/items/{id}/claim", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1"), ("If-Match" = String, Header)),
    responses((status = 200, body = Item), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn release(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HubError> {
    change(&state, &principal, &headers, move |store, access, tag| {
        store.release(access, &id, tag)
    })
    .await
}

/// Move the item to another status, saying why.
#[utoipa::path(patch, path = "/api/agent/items/{id}/status", tag = "agent", request_body = StatusChange,
    params(("id" = String, Path, example = "SHOP-1"), ("If-Match" = String, Header)),
    responses((status = 200, body = Item), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn change_status(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<StatusChange>,
) -> Result<Response, HubError> {
    change(&state, &principal, &headers, move |store, access, tag| {
        store.change_status(access, &id, tag, &body.value)
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewComment {
    /// Markdown.
    body: String,
}

/// Comment on the item.
#[utoipa::path(post, path = "/api/agent/items/{id}/comments", tag = "agent", request_body = NewComment,
    params(("id" = String, Path, example = "SHOP-1"), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Comment), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn add_comment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<NewComment>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Write)?;
    let key = idempotency_key(&headers)?;
    let (status, answer) = state
        .run(move |store| {
            store.add_comment(&access, &id, &body.value.body, key.as_deref(), &body.raw)
        })
        .await?;
    Ok(stored_json(status, answer))
}

/// The item's comments, oldest first.
#[utoipa::path(get, path = "/api/agent/items/{id}/comments", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1")),
    responses((status = 200, body = Vec<Comment>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn list_comments(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| {
            store.comments(access, &id)
        })
        .await
}

/// Link a pull request (matched by url) or update its state.
#[utoipa::path(patch, path = "/api/agent/items/{id}/pr", tag = "agent", request_body = NewPr,
    params(("id" = String, Path, example = "SHOP-1"), ("If-Match" = String, Header)),
    responses((status = 200, body = Item), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn link_pr(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<NewPr>,
) -> Result<Response, HubError> {
    change(&state, &principal, &headers, move |store, access, tag| {
        store.link_pr(access, &id, tag, &body.value)
    })
    .await
}

/// Link the item to others (blocks, blocked_by, relates_to, duplicate_of,
/// duplicated_by), or remove links; each item shows a link from its side.
#[utoipa::path(post, path = "/api/agent/items/{id}/links", tag = "agent", request_body = LinkChange,
    params(("id" = String, Path, example = "SHOP-1"), ("If-Match" = String, Header)),
    responses((status = 200, body = Item), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn change_links(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<LinkChange>,
) -> Result<Response, HubError> {
    change(&state, &principal, &headers, move |store, access, tag| {
        store.change_links(access, &id, tag, &body.value)
    })
    .await
}

/// Add acceptance criteria, or tick and untick them by id.
#[utoipa::path(post, path = "/api/agent/items/{id}/checklist", tag = "agent", request_body = ChecklistChange,
    params(("id" = String, Path, example = "SHOP-1"), ("If-Match" = String, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Item), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn change_checklist(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<ChecklistChange>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Write)?;
    let tag = if_match(&headers)?;
    let key = idempotency_key(&headers)?;
    let (status, answer) = state
        .run(move |store| {
            store.change_checklist(&access, &id, &tag, &body.value, key.as_deref(), &body.raw)
        })
        .await?;
    Ok(stored_json(status, answer))
}

/// The item as one markdown document for an LLM's prompt.
#[utoipa::path(get, path = "/api/agent/items/{id}/context", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1")),
    responses((status = 200, content_type = "text/markdown", body = String), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn context(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    let text = caller
        .run(Permission::Read, move |store, access| {
            store.context(access, &id)
        })
        .await?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/markdown; charset=utf-8"),
    );
    Ok(response)
}

/// Every field change of the item: who, when, before and after.
#[utoipa::path(get, path = "/api/agent/items/{id}/activity", tag = "agent",
    params(("id" = String, Path, example = "SHOP-1")),
    responses((status = 200, body = Vec<Activity>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn activity(caller: Caller, Path(id): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| {
            store.activity(access, &id)
        })
        .await
}
