//! Who a request is: the API key in `Authorization: Bearer ghk_...`,
//! checked against the database, then held to its own rate limit and to
//! the permission the endpoint needs.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{AppState, ClientAddress};
use crate::error::HubError;
use crate::model::{Permission, Role};
use crate::store::{Access, Actor, Authenticated};

/// The checked key of a request.
pub struct Principal {
    key: Authenticated,
    client: String,
}

impl Principal {
    /// What the key may reach, if its permission allows `needed`.
    pub fn access(&self, needed: Permission) -> Result<Access, HubError> {
        if self.key.role == Role::Webhook {
            return Err(HubError::Forbidden {
                message: format!(
                    "key `{}` is a webhook key; the agent API takes agent and ci keys",
                    self.key.name
                ),
            });
        }
        if !self.key.permission.allows(needed) {
            return Err(HubError::Forbidden {
                message: format!(
                    "key `{}` has {} permission; this needs {needed}",
                    self.key.name, self.key.permission
                ),
            });
        }
        Ok(Access {
            actor: Actor {
                name: self.key.name.clone(),
                client: Some(self.client.clone()),
            },
            key_id: self.key.key_id,
            scope: self.key.product_id,
        })
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HubError> {
        let client = parts
            .extensions
            .get::<ClientAddress>()
            .map_or_else(|| "unknown".to_owned(), |a| a.0.to_string());
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| HubError::Unauthorized {
                message: "the request has no API key".to_owned(),
            })?;
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
        Ok(Principal { key, client })
    }
}
