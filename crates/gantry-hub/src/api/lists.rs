//! Working on many items at once: saved views, bulk changes, and export
//! of a filtered list as CSV or JSON, streamed page by page so memory
//! stays bounded whatever the list's length.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hyper::body::Frame;

use super::agent::{ListQuery, filter};
use super::auth::{Caller, Principal};
use super::{AppState, ErrorBody, JsonBody};
use crate::error::HubError;
use crate::model::{Item, Permission};
use crate::store::{Access, BulkChange, ItemFilter, NewView, PAGE_MAX, SavedView};

/// The most items one export holds.
pub const EXPORT_MAX: i64 = 100_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/agent/views", get(list_views).post(save_view))
        .route("/api/agent/views/{view}", delete(delete_view))
        .route("/api/agent/bulk", post(bulk))
        .route("/api/agent/export.csv", get(export_csv))
        .route("/api/agent/export.json", get(export_json))
}

/// Your saved views and your products' shared ones.
#[utoipa::path(get, path = "/api/agent/views", tag = "agent",
    responses((status = 200, body = Vec<SavedView>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn list_views(caller: Caller) -> Result<Response, HubError> {
    caller
        .json(Permission::Read, move |store, access| store.views(access))
        .await
}

/// Save a named filter and sort: your own, or (admin keys, `product`) one
/// everyone reaching the product sees. List with it: `GET /api/agent/items?view=ID`.
#[utoipa::path(post, path = "/api/agent/views", tag = "agent", request_body = NewView,
    responses((status = 201, body = SavedView), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn save_view(
    State(state): State<AppState>,
    principal: Principal,
    body: JsonBody<NewView>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Read)?;
    let admin = principal.access(Permission::Admin).ok();
    // A view holds only what a list request would take.
    filter(ListQuery::of_view(body.value.query.clone()))?;
    state
        .answer(StatusCode::CREATED, move |store| {
            store.save_view(&access, &body.value, admin.as_ref())
        })
        .await
}

/// Delete a view: your own, or (admin keys) a product's.
#[utoipa::path(delete, path = "/api/agent/views/{view}", tag = "agent",
    params(("view" = i64, Path)),
    responses((status = 204), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn delete_view(
    State(state): State<AppState>,
    principal: Principal,
    Path(view): Path<i64>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Read)?;
    let admin = principal.access(Permission::Admin).ok();
    state
        .run(move |store| store.delete_view(&access, view, admin.as_ref()))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Change the status, priority, assignee or labels of up to 100 items at
/// once, all or none. Each item names the `version` its client saw (what
/// If-Match carries for one item): one stale item is 412, one claimed by
/// another agent 409, and then nothing changes.
#[utoipa::path(post, path = "/api/agent/bulk", tag = "agent", request_body = BulkChange,
    responses((status = 200, body = Vec<Item>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn bulk(caller: Caller, body: JsonBody<BulkChange>) -> Result<Response, HubError> {
    caller
        .json(Permission::Write, move |store, access| {
            store.bulk_change(access, &body.value)
        })
        .await
}

/// The filtered list (as `GET /api/agent/items` takes it, without `cursor`
/// and `limit`) as CSV. Cells that a spreadsheet would run as a formula
/// start with `'`.
#[utoipa::path(get, path = "/api/agent/export.csv", tag = "agent", params(ListQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn export_csv(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, HubError> {
    export(state, principal, query, Format::Csv).await
}

/// The filtered list (as `GET /api/agent/items` takes it, without `cursor`
/// and `limit`) as one JSON array of items.
#[utoipa::path(get, path = "/api/agent/export.json", tag = "agent", params(ListQuery),
    responses((status = 200, body = Vec<Item>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn export_json(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, HubError> {
    export(state, principal, query, Format::Json).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Json,
}

async fn export(
    state: AppState,
    principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
    format: Format,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Read)?;
    let Query(query) = query.map_err(|e| HubError::invalid(e.body_text()))?;
    if query.pages() {
        return Err(HubError::invalid(
            "an export holds the whole list: leave out `cursor` and `limit`",
        ));
    }
    let mut filter = filter(query.with_view(&state, &access).await?)?;
    filter.limit = PAGE_MAX;
    let count = {
        let (access, filter) = (access.clone(), filter.clone());
        state
            .run(move |store| store.count_items(&access, &filter))
            .await?
    };
    if count > EXPORT_MAX {
        return Err(HubError::Invalid {
            message: format!("the list holds {count} items; an export holds at most {EXPORT_MAX}"),
            hint: Some("narrow it with status, product, label or since".to_owned()),
        });
    }
    let (feed, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(state, access, filter, format, feed));
    let mut response = Response::new(Body::new(Chunks(receiver)));
    let (kind, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "items.csv"),
        Format::Json => ("application/json", "items.json"),
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

type Chunk = Result<Bytes, std::io::Error>;

/// Writes the export page by page into `feed`, the response body's
/// channel, each page read on the blocking pool and then waited on here,
/// so that a client that does not read holds no blocking thread; the stall
/// limit, resetting its connection, drops the body and ends the wait. A
/// failure midway ends the body with an error, so the client sees a broken
/// transfer, never a short file that looks whole.
async fn produce(
    state: AppState,
    access: Access,
    mut filter: ItemFilter,
    format: Format,
    feed: tokio::sync::mpsc::Sender<Chunk>,
) {
    let head = match format {
        Format::Csv => csv_row(&CSV_COLUMNS.map(str::to_owned)),
        Format::Json => "[".to_owned(),
    };
    if feed.send(Ok(Bytes::from(head))).await.is_err() {
        return;
    }
    let mut first = true;
    loop {
        let (access, asked) = (access.clone(), filter.clone());
        let page = match state
            .run(move |store| store.list_items(&access, &asked))
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(code = %e.code(), "export failed: {e}");
                let _ = feed
                    .send(Err(std::io::Error::other("the export failed")))
                    .await;
                return;
            }
        };
        let mut out = String::new();
        for item in &page.items {
            match format {
                Format::Csv => out.push_str(&csv_row(&csv_cells(item))),
                Format::Json => {
                    if !first {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(item).unwrap_or_default());
                }
            }
            first = false;
        }
        if feed.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    if format == Format::Json {
        let _ = feed.send(Ok(Bytes::from_static(b"]"))).await;
    }
}

const CSV_COLUMNS: [&str; 16] = [
    "reference",
    "type",
    "status",
    "priority",
    "title",
    "assignee",
    "reporter",
    "labels",
    "milestone",
    "target_release",
    "estimate",
    "due_date",
    "source",
    "visibility",
    "created_at",
    "updated_at",
];

fn csv_cells(item: &Item) -> [String; 16] {
    let labels: Vec<&str> = item.labels.iter().map(|l| l.name.as_str()).collect();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        item.reference.clone(),
        item.kind.to_string(),
        item.status.to_string(),
        item.priority.to_string(),
        item.title.clone(),
        text(&item.assignee),
        item.reporter.clone(),
        labels.join(", "),
        item.milestone
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        text(&item.target_release),
        item.estimate.map(|e| e.to_string()).unwrap_or_default(),
        text(&item.due_date),
        item.source.to_string(),
        item.visibility.to_string(),
        item.created_at.clone(),
        item.updated_at.clone(),
    ]
}

/// One CSV line (RFC 4180). A cell a spreadsheet would run as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a
/// leading `'`, as OWASP advises, so it shows as text.
fn csv_row(cells: &[String]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let guarded = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{cell}")
        } else {
            cell.clone()
        };
        if guarded.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&guarded.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&guarded);
        }
    }
    line.push_str("\r\n");
    line
}

/// A response body fed from a channel.
struct Chunks(tokio::sync::mpsc::Receiver<Chunk>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::csv_row;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        let cells = [
            "=HYPERLINK(\"http://evil\")",
            "plain",
            "a, b",
            "-2+3",
            "@SUM(A1)",
            "line\nbreak",
        ]
        .map(str::to_owned);
        assert_eq!(
            csv_row(&cells),
            "\"'=HYPERLINK(\"\"http://evil\"\")\",plain,\"a, b\",'-2+3,'@SUM(A1),\"line\nbreak\"\r\n"
        );
    }
}
