//! Webhook endpoints. In: `POST /api/webhooks/{forge}/{product}` (one
//! handler: `github/{product}`, `gitea/{product}`), with no key: the body's
//! HMAC under the product's secret is the credential (the older
//! `/api/webhooks/github` and `/gitea` name no product: they try every
//! product's secret, on small hubs only).
//! Out, for admin keys: a product's forge secret, its deliveries and their
//! replay, its subscriptions and their attempts.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::auth::{Caller, Principal};
use super::{AppState, ClientAddress, ErrorBody, JsonBody, header_text, no_such_endpoint};
use crate::error::HubError;
use crate::model::Permission;
use crate::store::{
    Attempt, Delivery, Incoming, NewSubscription, Received, Shipped, ShippedItems, Subscription,
};
use crate::webhooks::forge::Forge;
use crate::webhooks::target;

/// The largest payload a forge may send: pull request and check payloads
/// are tens of kilobytes.
const PAYLOAD_MAX: usize = 1024 * 1024;

/// Where a forge sends a product's deliveries.
pub(super) const PRODUCT_PATH: &str = "/api/webhooks/{forge}/{product}";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/webhooks/github", post(github))
        .route("/api/webhooks/gitea", post(gitea))
        .route(PRODUCT_PATH, post(product_delivery))
        .layer(DefaultBodyLimit::max(PAYLOAD_MAX))
        .route(
            "/api/admin/products/{product}/forge-secret",
            post(new_forge_secret),
        )
        .route("/api/admin/products/{product}/deliveries", get(deliveries))
        .route("/api/admin/deliveries/{id}/replay", post(replay))
        .route(
            "/api/admin/products/{product}/subscriptions",
            get(subscriptions).post(subscribe),
        )
        .route("/api/admin/subscriptions/{id}", delete(unsubscribe))
        .route("/api/admin/subscriptions/{id}/attempts", get(attempts))
        .route("/api/agent/shipped", post(shipped))
}

/// A deploy shipped these commits: the items whose linked pull request is
/// at one of them are fixed in `version`. For the keys of CI and gantry.
#[utoipa::path(post, path = "/api/agent/shipped", tag = "agent", request_body = Shipped,
    responses((status = 200, body = ShippedItems), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn shipped(caller: Caller, body: JsonBody<Shipped>) -> Result<Response, HubError> {
    let shipped = body.value;
    caller
        .json(Permission::Write, move |store, access| {
            store.shipped(access, &shipped)
        })
        .await
}

/// A delivery from a forge for a product: `github` for GitHub, `gitea` for
/// Gitea and Forgejo. Signed with the product's forge secret in
/// `X-Hub-Signature-256` (Gitea may send `X-Gitea-Signature` instead), and
/// checked against that secret alone (a product that does not exist or has
/// no secret is refused as a bad signature is). The event and delivery id
/// come in the forge's own headers; a delivery id seen before is dropped.
/// Another forge is no endpoint (404).
#[utoipa::path(post, path = PRODUCT_PATH, tag = "webhooks",
    request_body(content = String, description = "the event's payload, as the forge sends it", content_type = "application/json"),
    params(("forge" = inline(Forge), Path, description = "`github`, or `gitea` for Gitea and Forgejo"),
        ("product" = String, Path, example = "SHOP"),
        ("X-GitHub-Event" = Option<String>, Header, description = "the event, from GitHub"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "the delivery id, from GitHub"),
        ("X-Gitea-Event" = Option<String>, Header, description = "the event, from Gitea"),
        ("X-Gitea-Delivery" = Option<String>, Header, description = "the delivery id, from Gitea"),
        ("X-Hub-Signature-256" = Option<String>, Header, description = "sha256=<hex HMAC of the body>: GitHub always sends it, Gitea may send X-Gitea-Signature instead"),
        ("X-Gitea-Signature" = Option<String>, Header, description = "<hex HMAC of the body>, from Gitea without X-Hub-Signature-256")),
    responses((status = 200, description = "what the hub made of the delivery", body = Received),
        (status = "4XX", description = "refused: unsigned or not by the product's secret, malformed, or another forge (404)", body = ErrorBody)))]
async fn product_delivery(
    State(state): State<AppState>,
    client: axum::Extension<ClientAddress>,
    Path((forge, product)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, HubError> {
    // Another forge's path is one the hub does not serve.
    let forge = Forge::parse(&forge).ok_or_else(no_such_endpoint)?;
    receive(state, forge, Some(product), client.0, &headers, body).await
}

/// A delivery from GitHub naming no product, for hooks set up before the
/// product paths: checked against every product's secret, so refused (422,
/// with the product path in its hint) on a hub with more than 8 products
/// with forge secrets. A delivery id seen before is dropped.
#[utoipa::path(post, path = "/api/webhooks/github", tag = "webhooks",
    request_body(content = String, description = "the event's payload, as GitHub sends it", content_type = "application/json"),
    params(("X-GitHub-Event" = String, Header), ("X-GitHub-Delivery" = String, Header),
        ("X-Hub-Signature-256" = String, Header, description = "sha256=<hex HMAC of the body>")),
    responses((status = 200, body = Received), (status = "4XX", body = ErrorBody)))]
async fn github(
    State(state): State<AppState>,
    client: axum::Extension<ClientAddress>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, HubError> {
    receive(state, Forge::Github, None, client.0, &headers, body).await
}

/// A delivery from Gitea or Forgejo naming no product, signed with
/// `X-Hub-Signature-256` (or `X-Gitea-Signature`): checked against every
/// product's secret, so refused (422, with the product path in its hint) on
/// a hub with more than 8 products with forge secrets. A delivery id seen
/// before is dropped.
#[utoipa::path(post, path = "/api/webhooks/gitea", tag = "webhooks",
    request_body(content = String, description = "the event's payload, as Gitea sends it", content_type = "application/json"),
    params(("X-Gitea-Event" = String, Header), ("X-Gitea-Delivery" = String, Header),
        ("X-Hub-Signature-256" = String, Header, description = "sha256=<hex HMAC of the body>")),
    responses((status = 200, body = Received), (status = "4XX", body = ErrorBody)))]
async fn gitea(
    State(state): State<AppState>,
    client: axum::Extension<ClientAddress>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, HubError> {
    receive(state, Forge::Gitea, None, client.0, &headers, body).await
}

/// A forge in the OpenAPI document: a string, one of [`Forge::as_str`]'s
/// names.
impl utoipa::PartialSchema for Forge {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Forge::ALL.map(Forge::as_str)))
            .into()
    }
}

impl ToSchema for Forge {}

fn required<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, HubError> {
    header_text(headers, name)?
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| HubError::Invalid {
            message: format!("the delivery has no {name} header"),
            hint: Some(
                "point the forge's webhook at this URL with content type application/json"
                    .to_owned(),
            ),
        })
}

async fn receive(
    state: AppState,
    forge: Forge,
    product: Option<String>,
    client: ClientAddress,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, HubError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HubError::TooLarge { limit: PAYLOAD_MAX }
        } else {
            HubError::invalid(format!("cannot read the payload: {e}"))
        }
    })?;
    let signature = match header_text(headers, "x-hub-signature-256")? {
        Some(signature) => signature.to_owned(),
        None if forge == Forge::Gitea => required(headers, "x-gitea-signature")?.to_owned(),
        None => {
            return Err(HubError::BadSignature {
                message: "the delivery is not signed (no X-Hub-Signature-256)".to_owned(),
            });
        }
    };
    let event = required(headers, forge.event_header())?.to_owned();
    let delivery = required(headers, forge.delivery_header())?.to_owned();
    if !delivery.bytes().all(|b| b.is_ascii_graphic())
        || !event.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(HubError::invalid(
            "the event and delivery headers must be visible ASCII",
        ));
    }
    let client = client.0.to_string();
    state
        .json(move |store| {
            store.receive(&Incoming {
                forge,
                product: product.as_deref(),
                event: &event,
                delivery: &delivery,
                signature: &signature,
                body: &body,
                client: &client,
            })
        })
        .await
}

#[derive(Serialize, ToSchema)]
pub struct ForgeSecret {
    /// Paste it into the forge's webhook form; it is shown only now.
    pub secret: String,
    /// Where each forge should send, GitHub's then Gitea's (Forgejo's too):
    /// `/api/webhooks/github/{product}`, `/api/webhooks/gitea/{product}`.
    pub paths: Vec<String>,
}

/// Gives a product a new secret for its forges' webhooks (the old one stops
/// working at once).
#[utoipa::path(post, path = "/api/admin/products/{product}/forge-secret", tag = "webhooks",
    params(("product" = String, Path)),
    responses((status = 201, body = ForgeSecret), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn new_forge_secret(
    caller: Caller,
    Path(product): Path<String>,
) -> Result<Response, HubError> {
    let paths = Forge::ALL
        .map(|forge| {
            PRODUCT_PATH
                .replace("{forge}", forge.as_str())
                .replace("{product}", &product)
        })
        .to_vec();
    let secret = caller
        .run(Permission::Admin, move |store, access| {
            store.new_forge_secret(access, &product)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ForgeSecret { secret, paths }),
    )
        .into_response())
}

/// A product's last 100 forge deliveries, newest first.
#[utoipa::path(get, path = "/api/admin/products/{product}/deliveries", tag = "webhooks",
    params(("product" = String, Path)),
    responses((status = 200, body = Vec<Delivery>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn deliveries(caller: Caller, Path(product): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Admin, move |store, access| {
            store.deliveries(access, &product)
        })
        .await
}

/// Acts on a kept delivery again.
#[utoipa::path(post, path = "/api/admin/deliveries/{id}/replay", tag = "webhooks",
    params(("id" = i64, Path)),
    responses((status = 200, body = Delivery), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn replay(caller: Caller, Path(id): Path<i64>) -> Result<Response, HubError> {
    caller
        .json(Permission::Admin, move |store, access| {
            store.replay(access, id)
        })
        .await
}

/// Subscribes a URL to a product's events. The answer holds the signing
/// secret (`whsec_...`), shown only now.
#[utoipa::path(post, path = "/api/admin/products/{product}/subscriptions", tag = "webhooks",
    params(("product" = String, Path)), request_body = NewSubscription,
    responses((status = 201, body = Subscription), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn subscribe(
    State(state): State<AppState>,
    principal: Principal,
    Path(product): Path<String>,
    body: JsonBody<NewSubscription>,
) -> Result<Response, HubError> {
    let access = principal.access(Permission::Admin)?;
    let new = body.value;
    let parsed = target::parse(&new.url).map_err(|e| HubError::Invalid {
        message: e.to_string(),
        hint: Some("like https://hooks.example.com/gantry".to_owned()),
    })?;
    target::resolve(&parsed, state.background.allow_internal_targets)
        .await
        .map_err(|e| HubError::Invalid {
            message: format!("the webhook target is refused: {e}"),
            hint: Some(
                "webhooks go to public addresses; `gantry hub serve --allow-internal-webhooks` lets them reach internal ones"
                    .to_owned(),
            ),
        })?;
    state
        .answer(StatusCode::CREATED, move |store| {
            store.subscribe(&access, &product, &new)
        })
        .await
}

/// A product's subscriptions (never their secrets).
#[utoipa::path(get, path = "/api/admin/products/{product}/subscriptions", tag = "webhooks",
    params(("product" = String, Path)),
    responses((status = 200, body = Vec<Subscription>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn subscriptions(caller: Caller, Path(product): Path<String>) -> Result<Response, HubError> {
    caller
        .json(Permission::Admin, move |store, access| {
            store.subscriptions(access, &product)
        })
        .await
}

/// Ends a subscription.
#[utoipa::path(delete, path = "/api/admin/subscriptions/{id}", tag = "webhooks",
    params(("id" = i64, Path)),
    responses((status = 200, body = Subscription), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn unsubscribe(caller: Caller, Path(id): Path<i64>) -> Result<Response, HubError> {
    caller
        .json(Permission::Admin, move |store, access| {
            store.unsubscribe(access, id)
        })
        .await
}

/// A subscription's delivery attempts, newest first (at most 100).
#[utoipa::path(get, path = "/api/admin/subscriptions/{id}/attempts", tag = "webhooks",
    params(("id" = i64, Path)),
    responses((status = 200, body = Vec<Attempt>), (status = "4XX", body = ErrorBody)),
    security(("api_key" = [])))]
async fn attempts(caller: Caller, Path(id): Path<i64>) -> Result<Response, HubError> {
    caller
        .json(Permission::Admin, move |store, access| {
            store.attempts(access, id)
        })
        .await
}
