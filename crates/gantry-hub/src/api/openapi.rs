//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the request and response types, served at `/api/openapi.json`.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::RefOr;
use utoipa::openapi::security::{
    ApiKey as KeyIn, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

use crate::webhooks::forge::Forge;

#[derive(OpenApi)]
#[openapi(
    info(title = "Gantry hub", description = "The tracker hub's agent API, sessions and public endpoints"),
    paths(
        super::agent::list_items,
        super::agent::create_item,
        super::agent::get_item,
        super::agent::edit_item,
        super::agent::claim,
        super::agent::release,
        super::agent::change_status,
        super::agent::add_comment,
        super::agent::list_comments,
        super::agent::link_pr,
        super::agent::change_links,
        super::agent::change_checklist,
        super::agent::context,
        super::agent::activity,
        super::admin::audit,
        super::session::login,
        super::session::whoami,
        super::session::logout,
        super::session::begin_totp,
        super::session::confirm_totp,
        super::public::roadmap,
        super::public::changelog,
        super::public::form,
        super::public::submit,
        super::public::vote,
        super::public::submission,
        super::webhooks::product_delivery,
        super::webhooks::github,
        super::webhooks::gitea,
        super::webhooks::new_forge_secret,
        super::webhooks::deliveries,
        super::webhooks::replay,
        super::webhooks::subscribe,
        super::webhooks::subscriptions,
        super::webhooks::unsubscribe,
        super::webhooks::attempts,
        super::webhooks::shipped,
        super::analytics::report,
        super::social::edit_comment,
        super::social::delete_comment,
        super::social::add_reaction,
        super::social::remove_reaction,
        super::social::watchers,
        super::social::watch,
        super::social::unwatch,
        super::social::notifications,
        super::social::mark_read,
        super::social::custom_fields,
        super::social::define_field,
        super::files::upload,
        super::files::list_attachments,
        super::files::download,
        super::files::delete,
        super::lists::list_views,
        super::lists::save_view,
        super::lists::delete_view,
        super::lists::bulk,
        super::lists::export_csv,
        super::lists::export_json,
    ),
    modifiers(&ApiKey, &ForgePaths),
    tags(
        (name = "agent", description = "Claim and work items"),
        (name = "admin", description = "For admin keys"),
        (name = "session", description = "People logging in, with a second factor"),
        (name = "public", description = "The public roadmap, ideas and votes, without a login"),
        (name = "webhooks", description = "Forges' webhooks in; subscriptions out"),
        (name = "analytics", description = "Cycle time, throughput, open bugs, votes")
    )
)]
pub struct Document;

struct ApiKey;

/// The bearer key, and the session cookie a person logs in for: every
/// operation a key may call takes a session too (changes with it also need
/// the CSRF header), so each gets both as alternatives.
impl Modify for ApiKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let by_key = serde_json::to_value(&operation.security)
                    .is_ok_and(|v| v.to_string().contains("\"api_key\""));
                if let (true, Some(security)) = (by_key, operation.security.as_mut()) {
                    security.push(SecurityRequirement::new("session", Vec::<String>::new()));
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(KeyIn::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "the session `POST /api/session` sets (HttpOnly, SameSite=Lax)",
            ))),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ghk_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Each forge's product path (`/api/webhooks/github/{product}`, ...), the
/// URL its webhook form takes, listed as the one operation that serves them
/// all (`/api/webhooks/{forge}/{product}`) with its forge filled in and an
/// operation id of its own: who looks for the URL they configure finds it.
struct ForgePaths;

impl Modify for ForgePaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let paths = &mut openapi.paths.paths;
        let Some(every) = paths.get(super::webhooks::PRODUCT_PATH).cloned() else {
            return;
        };
        for forge in Forge::ALL {
            let mut item = every.clone();
            if let Some(operation) = item.post.as_mut() {
                operation.operation_id = operation
                    .operation_id
                    .as_ref()
                    .map(|id| format!("{id}_{}", forge.as_str()));
                if let Some(parameters) = operation.parameters.as_mut() {
                    parameters.retain(|p| !matches!(p, RefOr::T(p) if p.name == "forge"));
                }
            }
            let path = super::webhooks::PRODUCT_PATH.replace("{forge}", forge.as_str());
            paths.insert(path, item);
        }
    }
}

pub async fn document() -> Response {
    axum::Json(Document::openapi()).into_response()
}
