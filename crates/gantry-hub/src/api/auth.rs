//! Who a request is: an API key in `Authorization: Bearer ghk_...`, or a
//! user's session cookie, checked against the database, then held to a
//! rate limit and to the permission the endpoint needs. A key wins when
//! both come. A request that changes something on a session's strength
//! must carry the session's CSRF token in `X-CSRF-Token`: a cross-site
//! form can send the cookie, never that header.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::{AppState, ClientAddress};
use crate::error::HubError;
use crate::model::{Permission, Role};
use crate::store::{Access, Actor, Authenticated, Reach, SessionUser, Store, csrf_token};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gantry_session";
/// The header a session's changes carry their CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The checked key or session of a request.
pub struct Principal {
    who: Who,
    client: String,
}

enum Who {
    Key(Authenticated),
    User(SessionUser),
}

impl Principal {
    /// What the request may reach, if its permission allows `needed`.
    pub fn access(&self, needed: Permission) -> Result<Access, HubError> {
        match &self.who {
            Who::Key(key) => key_access(key, needed, &self.client),
            Who::User(user) => {
                let scope = match user.roles.reaching(needed) {
                    None => Reach::Every,
                    Some(ids) if ids.is_empty() => {
                        return Err(HubError::Forbidden {
                            message: format!(
                                "user `{}` has no product where they may {needed}",
                                user.name
                            ),
                        });
                    }
                    Some(ids) => Reach::Products(ids),
                };
                Ok(Access {
                    actor: Actor {
                        name: user.name.clone(),
                        client: Some(self.client.clone()),
                    },
                    key_id: -user.user_id,
                    scope,
                })
            }
        }
    }
}

fn key_access(key: &Authenticated, needed: Permission, client: &str) -> Result<Access, HubError> {
    if key.role == Role::Webhook {
        return Err(HubError::Forbidden {
            message: format!(
                "key `{}` is a webhook key; the agent API takes agent and ci keys",
                key.name
            ),
        });
    }
    if !key.permission.allows(needed) {
        return Err(HubError::Forbidden {
            message: format!(
                "key `{}` has {} permission; this needs {needed}",
                key.name, key.permission
            ),
        });
    }
    Ok(Access {
        actor: Actor {
            name: key.name.clone(),
            client: Some(client.to_owned()),
        },
        key_id: key.key_id,
        scope: key
            .product_id
            .map_or(Reach::Every, |p| Reach::Products(vec![p])),
    })
}

/// The client's address as the audit log writes it.
pub fn client_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ClientAddress>()
        .map_or_else(|| "unknown".to_owned(), |a| a.0.to_string())
}

/// The session token in the request's cookies, if any.
pub fn session_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().chars().take(200).collect())
}

/// The user of the request's session cookie; for a method that may change
/// something, only with the session's CSRF token.
pub async fn session_user(
    parts: &Parts,
    state: &AppState,
    token: String,
) -> Result<SessionUser, HubError> {
    let client = client_of(parts);
    let user = {
        let (token, client) = (token.clone(), client.clone());
        state
            .run(move |store| store.session(&token, &client))
            .await?
    };
    if !parts.method.is_safe() {
        let expected = csrf_token(&token);
        let given = parts
            .headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes().to_owned())
            .unwrap_or_default();
        if !bool::from(given.ct_eq(expected.as_bytes())) {
            let refused = user.clone();
            state
                .run(move |store| store.refuse_csrf(&refused, &client))
                .await?;
            return Err(HubError::Forbidden {
                message: format!(
                    "a change made with a session needs its CSRF token in the {CSRF_HEADER} header"
                ),
            });
        }
    }
    state.rates.check_key(-user.user_id, None)?;
    Ok(user)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HubError> {
        let client = client_of(parts);
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            let Some(token) = session_token(parts) else {
                return Err(HubError::Unauthorized {
                    message: "the request has no API key and no session".to_owned(),
                });
            };
            let user = session_user(parts, state, token).await?;
            return Ok(Principal {
                who: Who::User(user),
                client,
            });
        };
        // The key itself is never echoed back: messages describe its shape.
        let presented = header
            .to_str()
            .ok()
            .filter(|v| v.len() <= 200)
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| HubError::Unauthorized {
                message: "the Authorization header is not `Bearer <key>`".to_owned(),
            })?
            .trim()
            .to_owned();
        let key = {
            let client = client.clone();
            state
                .run(move |store| store.authenticate(&presented, &client))
                .await?
        };
        state.rates.check_key(key.key_id, key.rate_per_minute)?;
        Ok(Principal {
            who: Who::Key(key),
            client,
        })
    }
}

/// The hub and the checked key or session behind a request: what a handler
/// that runs one store operation for its caller takes, in the place of
/// `State` and [`Principal`]. The permission is checked when the operation
/// runs, after every extractor of the handler, so a malformed path or body
/// is a 400 before a missing permission is a 403.
pub struct Caller {
    pub state: AppState,
    pub principal: Principal,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HubError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        Ok(Caller {
            state: state.clone(),
            principal,
        })
    }
}

impl Caller {
    /// Runs `work` (as [`AppState::run`]) with what the caller may reach,
    /// if its permission allows `needed`.
    pub async fn run<R: Send + 'static>(
        &self,
        needed: Permission,
        work: impl FnOnce(&Store, &Access) -> Result<R, HubError> + Send + 'static,
    ) -> Result<R, HubError> {
        let access = self.principal.access(needed)?;
        self.state.run(move |store| work(store, &access)).await
    }

    /// Runs `work` (as [`Caller::run`]) and answers what it returns as
    /// JSON, `200 OK`.
    pub async fn json<R: Serialize + Send + 'static>(
        &self,
        needed: Permission,
        work: impl FnOnce(&Store, &Access) -> Result<R, HubError> + Send + 'static,
    ) -> Result<Response, HubError> {
        let answer = self.run(needed, work).await?;
        Ok((StatusCode::OK, axum::Json(answer)).into_response())
    }
}
