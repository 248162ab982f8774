//! What the agent checks of a request before it writes a file or starts a
//! process. The CLI validated the config, but the API is reachable by anyone
//! who can open `agent.sock`, and its names become paths (`releases/<project>`),
//! lines of the secrets file and host names: each is checked again here with
//! the config's own rules, so a refused request leaves the host as it was.

use axum::extract::{RawPathParams, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gantry_core::agent_api::DeployRequest;
use gantry_core::agent_api::v1::{TooNew, check_env_name, check_name, check_revision};

use crate::api::ApiFailure;

/// The largest JSON body the API reads. Blobs stream and are not bound by it.
pub const MAX_JSON_BODY: usize = 16 << 20;

const NAME_HINT: &str = "names are lowercase letters, digits and hyphens, starting with a letter; \
     secret and variable names are letters, digits and underscores";

fn invalid(what: &str, why: String) -> ApiFailure {
    ApiFailure::invalid(
        "request.invalid",
        format!("invalid {what}: {why}"),
        NAME_HINT,
    )
}

/// Every name and secret value of a deploy, before anything of it is written.
pub fn check_deploy(request: &DeployRequest) -> Result<(), ApiFailure> {
    // A spec this agent cannot read whole is refused, not half deployed.
    check_revision(request.spec_version).map_err(|too_new| {
        ApiFailure::conflict("agent.incompatible", too_new.to_string(), TooNew::HINT)
    })?;
    check_name(&request.project).map_err(|why| invalid("project name", why))?;
    let mut seen = std::collections::BTreeSet::new();
    for service in &request.services {
        check_name(&service.name).map_err(|why| invalid("service name", why))?;
        if !seen.insert(service.name.as_str()) {
            return Err(invalid(
                "service list",
                format!("`{}` appears twice", service.name),
            ));
        }
        for name in service.secrets.iter().chain(service.env.keys()) {
            check_env_name(name).map_err(|why| invalid("variable name", why))?;
        }
    }
    for (name, value) in &request.secrets {
        check_env_name(name).map_err(|why| invalid("secret name", why))?;
        // One variable a line in the secrets file: a line break would start another.
        if value.contains(['\n', '\r', '\0']) {
            return Err(ApiFailure::invalid(
                "secrets.invalid",
                format!(
                    "the value of secret {name} has a line break or NUL, which a secrets file cannot hold"
                ),
                "store the value without line breaks (base64-encode it, for example)",
            ));
        }
    }
    Ok(())
}

/// Middleware: the `{project}` and `{service}` of a path, percent-decoded,
/// must be names; and a JSON body over [`MAX_JSON_BODY`] gets the API's
/// error answer rather than the framework's text.
pub async fn check_path(params: RawPathParams, request: Request, next: Next) -> Response {
    for (key, value) in &params {
        if matches!(key, "project" | "service")
            && let Err(why) = check_name(value)
        {
            return invalid(&format!("{key} name"), why).into_response();
        }
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiFailure::too_large(MAX_JSON_BODY).into_response();
    }
    response
}
