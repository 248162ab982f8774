//! People logging in (`/api/session`): a login answers with a session
//! cookie (HttpOnly, SameSite=Lax, Secure when the client came over HTTPS)
//! and the session's CSRF token; the second factor (TOTP) is enrolled and
//! confirmed here too. Logins are held to the stricter per-address limit
//! and to one per user name, so a password cannot be guessed fast from
//! many addresses either.

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{SESSION_COOKIE, client_of, session_token, session_user};
use super::{AppState, ClientAddress, ErrorBody, JsonBody, JsonOnly};
use crate::clock;
use crate::error::HubError;
use crate::store::{Grant, LoginAttempt, SESSION_LIFETIME_MS, SessionUser, csrf_token};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/session", post(login).get(whoami).delete(logout))
        .route("/api/session/totp", post(begin_totp))
        .route("/api/session/totp/confirm", post(confirm_totp))
}

/// `POST /api/session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    name: String,
    password: String,
    /// With TOTP on: a 6-digit code from the app, or a recovery code.
    code: Option<String>,
}

/// The session a login opened, or the one a request came with.
#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    pub name: String,
    pub roles: Vec<Grant>,
    /// Whether the user logs in with a second factor.
    pub totp: bool,
    /// Send it as `X-CSRF-Token` with every change made with the session.
    pub csrf_token: String,
    pub expires_at: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordAgain {
    password: String,
}

/// An enrolment begun: put the secret in an authenticator app, then
/// confirm with a code from it.
#[derive(Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// Base32, to type into the app.
    pub secret: String,
    /// `otpauth://totp/...`, for a QR code.
    pub url: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    code: String,
}

/// TOTP is on; the recovery codes are shown this once.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Each logs in once in place of a TOTP code.
    pub recovery_codes: Vec<String>,
}

/// The signed-in user of a request, with the session's token.
pub struct SignedIn {
    user: SessionUser,
    token: String,
    client: String,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HubError> {
        let token = session_token(parts).ok_or_else(|| HubError::Unauthorized {
            message: "the request has no session: log in first".to_owned(),
        })?;
        let user = session_user(parts, state, token.clone()).await?;
        Ok(SignedIn {
            user,
            token,
            client: client_of(parts),
        })
    }
}

/// Whether the client's connection was HTTPS: the hub speaks plain HTTP
/// itself, so only behind Gantry's proxy, which says so in
/// `X-Forwarded-Proto` (believed from a loopback peer only).
fn over_https(state: &AppState, parts: &Parts) -> bool {
    let from_loopback = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    state.limits.behind_proxy
        && from_loopback
        && parts
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie(value: &str, max_age_seconds: i64, secure: bool) -> Result<HeaderValue, HubError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_seconds}{secure}"
    ))
    .map_err(|e| HubError::Internal(format!("a cookie header: {e}")))
}

fn info(user: &SessionUser, token: &str, roles: Vec<Grant>) -> SessionInfo {
    SessionInfo {
        name: user.name.clone(),
        roles,
        totp: user.totp,
        csrf_token: csrf_token(token),
        expires_at: clock::format(user.expires_at),
    }
}

/// Log in with a name and password (and a code, with TOTP on); answers
/// with the session cookie and its CSRF token. The body must be sent as
/// `application/json` (415 otherwise): an HTML form on another site cannot
/// send that, so it cannot log a visitor into someone else's account.
#[utoipa::path(post, path = "/api/session", tag = "session",
    request_body(content = Login, content_type = "application/json"),
    responses((status = 200, body = SessionInfo, headers(("Set-Cookie" = String))),
        (status = 415, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    parts: Parts,
    JsonOnly(body): JsonOnly<Login>,
) -> Result<Response, HubError> {
    let Login {
        name,
        password,
        code,
    } = body.value;
    if let Some(ClientAddress(address)) = parts.extensions.get::<ClientAddress>() {
        state.rates.check_public(*address)?;
    }
    state.rates.check_login(&name)?;
    if password.len() > 4096 || code.as_ref().is_some_and(|c| c.len() > 100) {
        return Err(HubError::invalid("the password or code is too long"));
    }
    let client = client_of(&parts);
    let attempt = LoginAttempt {
        name,
        password,
        code,
    };
    let (session, user) = state
        .run(move |store| {
            let session = store.login(&attempt, &client)?;
            let user = store.session(&session.token, &client)?;
            Ok((session, user))
        })
        .await?;
    let roles = state
        .run({
            let name = user.name.clone();
            move |store| store.user(&name)
        })
        .await?
        .roles;
    let mut response = axum::Json(info(&user, &session.token, roles)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(
            &session.token,
            SESSION_LIFETIME_MS / 1000,
            over_https(&state, &parts),
        )?,
    );
    Ok(response)
}

/// The session the request came with.
#[utoipa::path(get, path = "/api/session", tag = "session", security(("session" = [])),
    responses((status = 200, body = SessionInfo), (status = "4XX", body = ErrorBody)))]
async fn whoami(State(state): State<AppState>, signed_in: SignedIn) -> Result<Response, HubError> {
    let name = signed_in.user.name.clone();
    let roles = state.run(move |store| store.user(&name)).await?.roles;
    Ok(axum::Json(info(&signed_in.user, &signed_in.token, roles)).into_response())
}

/// Log out: the session ends at once, here and wherever its cookie went.
#[utoipa::path(delete, path = "/api/session", tag = "session", security(("session" = [])),
    params(("X-CSRF-Token" = String, Header)),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn logout(
    State(state): State<AppState>,
    parts: Parts,
    signed_in: SignedIn,
) -> Result<Response, HubError> {
    let SignedIn { user, client, .. } = signed_in;
    state.run(move |store| store.logout(&user, &client)).await?;
    let mut response = axum::http::StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie("", 0, over_https(&state, &parts))?,
    );
    Ok(response)
}

/// Begin turning TOTP on (the password again, as a fresh proof).
#[utoipa::path(post, path = "/api/session/totp", tag = "session", request_body = PasswordAgain,
    security(("session" = [])),
    params(("X-CSRF-Token" = String, Header)),
    responses((status = 200, body = TotpEnrolment), (status = "4XX", body = ErrorBody)))]
async fn begin_totp(
    State(state): State<AppState>,
    signed_in: SignedIn,
    body: JsonBody<PasswordAgain>,
) -> Result<Response, HubError> {
    let SignedIn { user, client, .. } = signed_in;
    let password = body.value.password;
    let enrolment = state
        .run(move |store| store.begin_totp(&user, &password, &client))
        .await?;
    Ok(axum::Json(TotpEnrolment {
        secret: enrolment.secret,
        url: enrolment.url,
    })
    .into_response())
}

/// Confirm TOTP with a code from the app: from now on logins need one; the
/// answer holds the recovery codes.
#[utoipa::path(post, path = "/api/session/totp/confirm", tag = "session", request_body = TotpCode,
    security(("session" = [])),
    params(("X-CSRF-Token" = String, Header)),
    responses((status = 200, body = RecoveryCodes), (status = "4XX", body = ErrorBody)))]
async fn confirm_totp(
    State(state): State<AppState>,
    signed_in: SignedIn,
    body: JsonBody<TotpCode>,
) -> Result<Response, HubError> {
    let SignedIn { user, client, .. } = signed_in;
    let code = body.value.code;
    if code.len() > 16 {
        return Err(HubError::invalid("`code` is a 6-digit code from the app"));
    }
    let recovery_codes = state
        .run(move |store| store.confirm_totp(&user, &code, &client))
        .await?;
    Ok(axum::Json(RecoveryCodes { recovery_codes }).into_response())
}
