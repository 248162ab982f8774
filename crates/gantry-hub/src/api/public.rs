//! The public endpoints (`/api/public/...`), for visitors without a login:
//! a product's roadmap and changelog, the idea form, votes, and a
//! submission's status by its token. Sending an idea or a vote is held to
//! the stricter per-address limit; the store checks and sanitises the rest.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, ClientAddress, ErrorBody, JsonBody};
use crate::error::HubError;
use crate::store::{Idea, PublicItem, SubmissionStatus, Submitted, Voted};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/public/{product}/roadmap", get(roadmap))
        .route("/api/public/{product}/changelog", get(changelog))
        .route("/api/public/{product}/form", get(form))
        .route("/api/public/{product}/ideas", post(submit))
        .route("/api/public/{product}/items/{reference}/votes", post(vote))
        .route("/api/public/submissions/{token}", get(submission))
}

/// A token for the idea form, signed by the hub.
#[derive(Serialize, ToSchema)]
pub struct FormToken {
    /// Send it back as the idea's `form_token`.
    pub form_token: String,
}

/// `POST .../votes`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    /// Never shown; one vote per email and item.
    email: String,
}

fn client(address: ClientAddress) -> String {
    address.0.to_string()
}

/// The product's public items still to do, most voted first (at most 100).
#[utoipa::path(get, path = "/api/public/{product}/roadmap", tag = "public",
    params(("product" = String, Path, description = "the product's key, `SHOP`")),
    responses((status = 200, body = Vec<PublicItem>), (status = "4XX", body = ErrorBody)))]
async fn roadmap(
    State(state): State<AppState>,
    Path(product): Path<String>,
) -> Result<Response, HubError> {
    state.json(move |store| store.roadmap(&product)).await
}

/// The product's public items done or closed, latest first (at most 100).
#[utoipa::path(get, path = "/api/public/{product}/changelog", tag = "public",
    params(("product" = String, Path)),
    responses((status = 200, body = Vec<PublicItem>), (status = "4XX", body = ErrorBody)))]
async fn changelog(
    State(state): State<AppState>,
    Path(product): Path<String>,
) -> Result<Response, HubError> {
    state.json(move |store| store.changelog(&product)).await
}

/// A token for the idea form: an idea needs one a few seconds old.
#[utoipa::path(get, path = "/api/public/{product}/form", tag = "public",
    params(("product" = String, Path)),
    responses((status = 200, body = FormToken), (status = "4XX", body = ErrorBody)))]
async fn form(
    State(state): State<AppState>,
    Path(product): Path<String>,
) -> Result<Response, HubError> {
    let form_token = state.run(move |store| store.form_token(&product)).await?;
    Ok(axum::Json(FormToken { form_token }).into_response())
}

/// Submit an idea; the answer's token shows its status later.
#[utoipa::path(post, path = "/api/public/{product}/ideas", tag = "public", request_body = Idea,
    params(("product" = String, Path)),
    responses((status = 201, body = Submitted), (status = "4XX", body = ErrorBody)))]
async fn submit(
    State(state): State<AppState>,
    axum::Extension(address): axum::Extension<ClientAddress>,
    Path(product): Path<String>,
    body: JsonBody<Idea>,
) -> Result<Response, HubError> {
    state.rates.check_public(address.0)?;
    let min_age_ms =
        i64::try_from(state.limits.form_min_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    state
        .answer(StatusCode::CREATED, move |store| {
            store.submit_idea(&product, &body.value, &client(address), min_age_ms)
        })
        .await
}

/// Vote for a public item: once per email, at most 10 per email in a
/// product, never on a finished item.
#[utoipa::path(post, path = "/api/public/{product}/items/{reference}/votes", tag = "public", request_body = Vote,
    params(("product" = String, Path), ("reference" = String, Path, description = "`SHOP-42`")),
    responses((status = 201, body = Voted), (status = "4XX", body = ErrorBody)))]
async fn vote(
    State(state): State<AppState>,
    axum::Extension(address): axum::Extension<ClientAddress>,
    Path((product, reference)): Path<(String, String)>,
    body: JsonBody<Vote>,
) -> Result<Response, HubError> {
    state.rates.check_public(address.0)?;
    let email = body.value.email;
    state
        .answer(StatusCode::CREATED, move |store| {
            store.vote(&product, &reference, &email, &client(address))
        })
        .await
}

/// A submission's status, by the token its submitter was given.
#[utoipa::path(get, path = "/api/public/submissions/{token}", tag = "public",
    params(("token" = String, Path)),
    responses((status = 200, body = SubmissionStatus), (status = "4XX", body = ErrorBody)))]
async fn submission(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, HubError> {
    state.json(move |store| store.submission(&token)).await
}
