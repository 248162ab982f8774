//! `GET /api/analytics/{product}`: cycle time, throughput, open bugs,
//! the vote leaderboard and who closes items, for read keys.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Principal;
use super::{AppState, ErrorBody};
use crate::analytics::Report;
use crate::error::HubError;
use crate::model::Permission;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/analytics/{product}", get(report))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// Weeks to count back, 1 to 52 (default 12), the current one included.
    weeks: Option<usize>,
}

/// A product's analytics over its last weeks.
#[utoipa::path(get, path = "/api/analytics/{product}", tag = "analytics",
    params(("product" = String, Path), ReportQuery),
    responses((status = 200, body = Report), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn report(
    State(state): State<AppState>,
    principal: Principal,
    Path(product): Path<String>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Read)?;
    let Query(query) = query.map_err(|e| HubError::invalid(e.body_text()))?;
    let weeks = query.weeks.unwrap_or(12);
    state
        .json(move |store| store.analytics(&access, &product, weeks))
        .await
}
