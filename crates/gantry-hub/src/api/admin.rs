//! Endpoints for admin keys: the audit log.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Principal;
use super::{AppState, ErrorBody};
use crate::error::HubError;
use crate::model::{AuditEntry, Permission};
use crate::store::{PAGE_MAX, Reach};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/admin/audit", get(audit))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries older than this id (the last id of the previous page).
    before: Option<i64>,
    /// Entries a page, 1 to 100 (default 50).
    limit: Option<usize>,
}

/// The audit log, newest first: every change and every refused key. Needs
/// an admin key that reaches every product.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn audit(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Admin)?;
    if access.scope != Reach::Every {
        return Err(HubError::Forbidden {
            message:
                "the audit log spans every product; a key or user reaching only some cannot read it"
                    .to_owned(),
        });
    }
    let Query(query) = query.map_err(|e| HubError::invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(HubError::invalid(format!(
            "`limit` must be 1 to {PAGE_MAX}"
        )));
    }
    state
        .json(move |store| store.audit_log(query.before, limit))
        .await
}
