//! API keys.
//!
//! A key is `ghk_<public id>_<secret>`: 8 random bytes of public id, by
//! which it is found, and 32 random bytes of secret, in hex. The hub stores
//! only the SHA-256 of the whole key. A fast hash suffices, and argon2 would
//! be wrong here: argon2 slows the guessing of low-entropy passwords, but a
//! 256-bit random secret cannot be guessed at any speed, while every API
//! request verifies its key, so a deliberately slow hash would only hand
//! attackers a cheap way to burn the hub's CPU. The stored hash is compared
//! in constant time. Users' passwords, chosen by people, are argon2 hashes
//! (`users`).

use gantry_core::artifact::hex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::audit::Refusal;
use super::{Store, audit, one_line, products};
use crate::clock;
use crate::db::{DbError, Row, Sql, Value};
use crate::error::HubError;
use crate::model::{KeyInfo, Permission, Role};

const PREFIX: &str = "ghk_";

/// What `gantry hub key create` asks for.
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub name: String,
    pub role: Role,
    pub permission: Permission,
    /// The product key it is scoped to; `None`: every product.
    pub product: Option<String>,
    /// Its own rate limit; `None`: the hub's default.
    pub rate_per_minute: Option<u32>,
    /// Addresses or networks (`10.0.0.0/8`, `2001:db8::/32`) the key may be
    /// used from; empty: anywhere.
    pub allow_from: Vec<String>,
}

/// The networks `allow_from` names, checked; at most 32.
fn networks(allow_from: &[String]) -> Result<Vec<ipnet::IpNet>, HubError> {
    if allow_from.len() > 32 {
        return Err(HubError::invalid("a key takes at most 32 networks"));
    }
    allow_from
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| HubError::Invalid {
                    message: format!("`{}` is not an address or a network", text.escape_debug()),
                    hint: Some("like 203.0.113.7, 10.0.0.0/8 or 2001:db8::/32".to_owned()),
                })
        })
        .collect()
}

/// Whether `client` is inside one of the key's stored networks.
fn allowed(stored: Option<&str>, client: &str) -> bool {
    let Some(stored) = stored.filter(|s| !s.is_empty()) else {
        return true;
    };
    let Ok(client) = client.parse::<std::net::IpAddr>() else {
        return false;
    };
    stored
        .split(',')
        .filter_map(|net| net.parse::<ipnet::IpNet>().ok())
        .any(|net| net.contains(&client.to_canonical()))
}

/// A key just made: the only time its secret is known.
#[derive(Clone)]
pub struct CreatedKey {
    pub info: KeyInfo,
    pub secret: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("info", &self.info)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The key a request came with, checked.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub key_id: i64,
    pub name: String,
    pub role: Role,
    pub permission: Permission,
    pub product_id: Option<i64>,
    pub rate_per_minute: Option<u32>,
}

pub(super) fn random_hex<const N: usize>() -> String {
    hex(&rand::random::<[u8; N]>())
}

pub(super) fn digest(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// The public id of a presented key, if it has the shape of one.
fn public_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some(id)
}

const KEY_COLUMNS: &str = "k.public_id, k.name, k.role, k.permission, p.key, k.created_at, \
     k.last_used_at, k.request_count, k.revoked_at, k.allow_from";

fn key_info(row: &Row) -> Result<KeyInfo, HubError> {
    let role = row.text(2)?;
    let permission = row.text(3)?;
    Ok(KeyInfo {
        id: format!("{PREFIX}{}", row.text(0)?),
        name: row.text(1)?,
        role: Role::parse(&role).ok_or_else(|| DbError::Shape(format!("role {role}")))?,
        permission: Permission::parse(&permission)
            .ok_or_else(|| DbError::Shape(format!("permission {permission}")))?,
        product: row.opt_text(4)?,
        created_at: clock::format(row.int(5)?),
        last_used_at: row.opt_int(6)?.map(clock::format),
        request_count: row.int(7)?,
        revoked: row.opt_int(8)?.is_some(),
        allow_from: row
            .opt_text(9)?
            .filter(|s| !s.is_empty())
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// Finds a key by its public id (`ghk_...`, as listed) or its name.
fn find(sql: &mut dyn Sql, which: &str) -> Result<(i64, KeyInfo), HubError> {
    let id = which.strip_prefix(PREFIX).unwrap_or(which);
    let rows = sql.query(
        &format!(
            "SELECT k.id, {KEY_COLUMNS} FROM api_keys k LEFT JOIN products p ON p.id = k.product_id \
             WHERE k.public_id = ? OR (k.name = ? AND k.revoked_at IS NULL)"
        ),
        &[id.into(), which.into()],
    )?;
    let row = rows
        .first()
        .ok_or_else(|| HubError::not_found(format!("key `{}`", which.escape_debug())))?;
    let info = key_info(&Row(row.0[1..].to_vec()))?;
    Ok((row.int(0)?, info))
}

impl Store {
    pub fn create_key(&self, spec: &KeySpec) -> Result<CreatedKey, HubError> {
        one_line("name", &spec.name, 64)?;
        let allow_from = networks(&spec.allow_from)?
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if spec.rate_per_minute == Some(0) {
            return Err(HubError::invalid(
                "a key's rate limit must be at least 1 a minute",
            ));
        }
        self.tx(|sql| {
            let product_id = match &spec.product {
                Some(key) => Some(products::id_of(sql, key)?),
                None => None,
            };
            let taken = sql.query_one(
                "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL",
                &[spec.name.as_str().into()],
            )?;
            if taken.is_some() {
                return Err(HubError::Exists {
                    what: format!("an active key named `{}`", spec.name),
                });
            }
            let user = sql.query_one(
                "SELECT 1 FROM users WHERE name = ?",
                &[spec.name.as_str().into()],
            )?;
            if user.is_some() {
                return Err(HubError::Exists {
                    what: format!(
                        "a user named `{}` (keys and users act under their names)",
                        spec.name
                    ),
                });
            }
            let public = random_hex::<8>();
            let secret = format!("{PREFIX}{public}_{}", random_hex::<32>());
            sql.execute(
                "INSERT INTO api_keys (public_id, name, role, permission, product_id, secret_hash, \
                 rate_per_minute, created_at, allow_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                &[
                    public.as_str().into(),
                    spec.name.as_str().into(),
                    spec.role.as_str().into(),
                    spec.permission.as_str().into(),
                    product_id.into(),
                    digest(&secret).into(),
                    spec.rate_per_minute.map(i64::from).into(),
                    Value::Int(clock::now()),
                    (!allow_from.is_empty())
                        .then_some(allow_from.as_str())
                        .into(),
                ],
            )?;
            audit::record(sql, "cli", None, "key.create", Some(&spec.name), "ok")?;
            let (_, info) = find(sql, &public)?;
            Ok(CreatedKey {
                info,
                secret: secret.clone(),
            })
        })
    }

    pub fn keys(&self) -> Result<Vec<KeyInfo>, HubError> {
        self.tx(|sql| {
            sql.query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN products p ON p.id = k.product_id \
                     ORDER BY k.id"
                ),
                &[],
            )?
            .iter()
            .map(key_info)
            .collect()
        })
    }

    /// Gives the key a new secret; the old one stops working at once.
    pub fn rotate_key(&self, which: &str) -> Result<CreatedKey, HubError> {
        self.tx(|sql| {
            let (id, info) = find(sql, which)?;
            if info.revoked {
                return Err(HubError::invalid(format!("key `{}` is revoked", info.name)));
            }
            let public = info.id.trim_start_matches(PREFIX).to_owned();
            let secret = format!("{PREFIX}{public}_{}", random_hex::<32>());
            sql.execute(
                "UPDATE api_keys SET secret_hash = ? WHERE id = ?",
                &[digest(&secret).into(), Value::Int(id)],
            )?;
            audit::record(sql, "cli", None, "key.rotate", Some(&info.name), "ok")?;
            Ok(CreatedKey { info, secret })
        })
    }

    pub fn revoke_key(&self, which: &str) -> Result<KeyInfo, HubError> {
        self.tx(|sql| {
            let (id, mut info) = find(sql, which)?;
            sql.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                &[Value::Int(clock::now()), Value::Int(id)],
            )?;
            audit::record(sql, "cli", None, "key.revoke", Some(&info.name), "ok")?;
            info.revoked = true;
            Ok(info)
        })
    }

    /// Checks a presented key and counts the request. Every outcome goes to
    /// the audit log, under the key's public id (never its secret); refusals
    /// counted, at most a row a minute per kind and client
    /// ([`Refusals`](super::audit::Refusals)).
    pub fn authenticate(&self, presented: &str, client: &str) -> Result<Authenticated, HubError> {
        let refused = |message: &str| HubError::Unauthorized {
            message: message.to_owned(),
        };
        let Some(public) = public_id(presented) else {
            self.audit_refusal(&Refusal {
                actor: "anonymous",
                action: "auth.key",
                target: None,
                outcome: "malformed",
                client,
            })?;
            return Err(refused(
                "the API key is malformed: expected ghk_<16 hex>_<64 hex>",
            ));
        };
        // Refusals are committed too: they are the audit log's.
        self.tx(|sql| {
            let row = sql.query_one(
                "SELECT id, name, role, permission, product_id, secret_hash, rate_per_minute, revoked_at, \
                 allow_from FROM api_keys WHERE public_id = ?",
                &[public.into()],
            )?;
            let target = format!("{PREFIX}{public}");
            let refusal = |actor, outcome| Refusal {
                actor,
                action: "auth.key",
                target: Some(&target),
                outcome,
                client,
            };
            let Some(row) = row else {
                self.refusals.record(sql, &refusal("anonymous", "unknown"))?;
                return Ok(Err(refused("the API key is not known to this hub")));
            };
            let stored = row.text(5)?;
            let matches: bool = digest(presented).as_bytes().ct_eq(stored.as_bytes()).into();
            if !matches {
                self.refusals.record(sql, &refusal("anonymous", "wrong secret"))?;
                return Ok(Err(refused("the API key is not known to this hub")));
            }
            let name = row.text(1)?;
            if row.opt_int(7)?.is_some() {
                self.refusals.record(sql, &refusal(&name, "revoked"))?;
                return Ok(Err(refused("the API key was revoked")));
            }
            if !allowed(row.opt_text(8)?.as_deref(), client) {
                self.refusals.record(sql, &refusal(&name, "address not allowed"))?;
                return Ok(Err(HubError::Forbidden {
                    message: format!("key `{name}` may not be used from {client}"),
                }));
            }
            let key_id = row.int(0)?;
            sql.execute(
                "UPDATE api_keys SET last_used_at = ?, request_count = request_count + 1 WHERE id = ?",
                &[Value::Int(clock::now()), Value::Int(key_id)],
            )?;
            let role = row.text(2)?;
            let permission = row.text(3)?;
            Ok(Ok(Authenticated {
                key_id,
                name,
                role: Role::parse(&role).ok_or_else(|| DbError::Shape(format!("role {role}")))?,
                permission: Permission::parse(&permission)
                    .ok_or_else(|| DbError::Shape(format!("permission {permission}")))?,
                product_id: row.opt_int(4)?,
                rate_per_minute: row
                    .opt_int(6)?
                    .and_then(|r| u32::try_from(r).ok()),
            }))
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_have_a_public_id() {
        let key = format!("ghk_{}_{}", "a".repeat(16), "b".repeat(64));
        assert_eq!(public_id(&key), Some("aaaaaaaaaaaaaaaa"));
        assert_eq!(public_id(&key[..key.len() - 1]), None);
        assert_eq!(public_id("Bearer ghk_x_y"), None);
    }
}
