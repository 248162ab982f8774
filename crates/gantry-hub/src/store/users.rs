//! Users: argon2 password hashes, roles per product, and what the CLI does
//! for them (`gantry hub user ...`). Sessions and second factors are in
//! `sessions`.
//!
//! A role is granted in one product, or with no product in every product
//! (as a key without a product reaches them all). A user's role in a
//! product is the highest of the grants that reach it.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Store, audit, one_line, products};
use crate::clock;
use crate::db::{DbError, Sql, Value};
use crate::error::HubError;
use crate::model::{Permission, UserRole};

/// Names the audit log gives the hub's own actors.
const RESERVED: &[&str] = &["cli", "public", "anonymous"];

/// A password's length bounds, in characters.
const PASSWORD_MIN: usize = 12;
const PASSWORD_MAX: usize = 1024;

/// A user as listed: never a hash or a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub email: Option<String>,
    /// Whether logging in needs a TOTP code (or a recovery code).
    pub totp: bool,
    pub roles: Vec<Grant>,
}

/// A role in a product; `product` `null`: in every product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Grant {
    pub product: Option<String>,
    pub role: UserRole,
}

/// A user's grants as ids, for checking requests.
#[derive(Clone, Debug, Default)]
pub struct Roles(pub Vec<(Option<i64>, UserRole)>);

impl Roles {
    /// The products in which the user may do what `needed` allows: `None`
    /// when a hub-wide grant allows it (every product).
    pub fn reaching(&self, needed: Permission) -> Option<Vec<i64>> {
        let mut ids = Vec::new();
        for (product, role) in &self.0 {
            if role.permission().allows(needed) {
                match product {
                    None => return None,
                    Some(id) => ids.push(*id),
                }
            }
        }
        Some(ids)
    }
}

fn check_password(password: &str) -> Result<(), HubError> {
    let length = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&length) {
        return Err(HubError::Invalid {
            message: format!(
                "the password is {length} characters long; it must be {PASSWORD_MIN} to {PASSWORD_MAX}"
            ),
            hint: Some("a passphrase of a few words is long enough".to_owned()),
        });
    }
    Ok(())
}

pub(super) fn hash_password(password: &str) -> Result<String, HubError> {
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| HubError::Internal(format!("argon2: {e}")))?
        .to_string())
}

/// Whether `password` matches `stored` (argon2, constant time inside).
/// Without a stored hash (no such user) a dummy one is checked, so an
/// unknown name takes as long as a wrong password.
pub(super) fn verify_password(stored: Option<&str>, password: &str) -> Result<bool, HubError> {
    static DUMMY: OnceLock<Result<String, String>> = OnceLock::new();
    let dummy =
        DUMMY.get_or_init(|| hash_password("no user has this password").map_err(|e| e.to_string()));
    let known = stored.is_some();
    let stored = match stored {
        Some(stored) => stored,
        None => dummy
            .as_deref()
            .map_err(|e| HubError::Internal(e.clone()))?,
    };
    let hash = PasswordHash::new(stored)
        .map_err(|e| HubError::Internal(format!("a stored password hash does not parse: {e}")))?;
    let matches = argon2::Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok();
    Ok(known && matches)
}

/// The id of the user named `name`.
pub(super) fn user_id(sql: &mut dyn Sql, name: &str) -> Result<i64, HubError> {
    sql.query_one("SELECT id FROM users WHERE name = ?", &[name.into()])?
        .ok_or_else(|| HubError::not_found(format!("user `{}`", name.escape_debug())))?
        .int(0)
        .map_err(Into::into)
}

/// A user's grants.
pub(super) fn roles(sql: &mut dyn Sql, user: i64) -> Result<Roles, HubError> {
    let rows = sql.query(
        "SELECT product_id, role FROM user_roles WHERE user_id = ? ORDER BY id",
        &[Value::Int(user)],
    )?;
    let mut roles = Vec::new();
    for row in &rows {
        let role = row.text(1)?;
        let role =
            UserRole::parse(&role).ok_or_else(|| DbError::Shape(format!("user role {role}")))?;
        roles.push((row.opt_int(0)?, role));
    }
    Ok(Roles(roles))
}

/// Ends every open session of a user; how many.
pub(super) fn end_sessions(sql: &mut dyn Sql, user: i64) -> Result<u64, HubError> {
    Ok(sql.execute(
        "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        &[Value::Int(clock::now()), Value::Int(user)],
    )?)
}

impl Store {
    /// Adds a user with an argon2 hash of `password`.
    pub fn add_user(
        &self,
        name: &str,
        email: Option<&str>,
        password: &str,
    ) -> Result<(), HubError> {
        one_line("name", name, 64)?;
        if let Some(email) = email {
            super::public::check_email(email)?;
        }
        if RESERVED.contains(&name) {
            return Err(HubError::invalid(format!(
                "`{name}` names the hub itself in the audit log; choose another name"
            )));
        }
        check_password(password)?;
        let hash = hash_password(password)?;
        self.tx(|sql| {
            // Users and keys act under their names (claims, the audit log):
            // one name is one of them.
            let key = sql.query_one(
                "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL",
                &[name.into()],
            )?;
            if key.is_some() {
                return Err(HubError::Exists {
                    what: format!("an active API key named `{name}`"),
                });
            }
            let added = sql.execute(
                "INSERT INTO users (name, email, password_hash, created_at) VALUES (?, ?, ?, ?)",
                &[
                    name.into(),
                    email.into(),
                    hash.as_str().into(),
                    Value::Int(clock::now()),
                ],
            );
            match added {
                Err(DbError::Unique(_)) => {
                    return Err(HubError::Exists {
                        what: format!("user `{name}`"),
                    });
                }
                other => other?,
            };
            audit::record(sql, "cli", None, "user.add", Some(name), "ok")
        })
    }

    /// Gives a user a new password and ends their sessions.
    pub fn set_password(&self, name: &str, password: &str) -> Result<u64, HubError> {
        check_password(password)?;
        let hash = hash_password(password)?;
        self.tx(|sql| {
            let user = user_id(sql, name)?;
            sql.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?",
                &[hash.as_str().into(), Value::Int(user)],
            )?;
            let ended = end_sessions(sql, user)?;
            audit::record(sql, "cli", None, "user.password", Some(name), "ok")?;
            Ok(ended)
        })
    }

    /// Whether `password` is the user's.
    pub fn check_password(&self, name: &str, password: &str) -> Result<bool, HubError> {
        let stored = self.tx(|sql| {
            Ok(sql
                .query_one(
                    "SELECT password_hash FROM users WHERE name = ?",
                    &[name.into()],
                )?
                .map(|row| row.text(0))
                .transpose()?)
        })?;
        verify_password(stored.as_deref(), password)
    }

    /// Grants `role` in `product` (`None`: every product), replacing the
    /// user's grant there; `role` `None` takes it away.
    pub fn grant(
        &self,
        name: &str,
        role: Option<UserRole>,
        product: Option<&str>,
    ) -> Result<UserInfo, HubError> {
        self.tx(|sql| {
            let user = user_id(sql, name)?;
            let product_id = product.map(|key| products::id_of(sql, key)).transpose()?;
            match product_id {
                Some(id) => sql.execute(
                    "DELETE FROM user_roles WHERE user_id = ? AND product_id = ?",
                    &[Value::Int(user), Value::Int(id)],
                )?,
                None => sql.execute(
                    "DELETE FROM user_roles WHERE user_id = ? AND product_id IS NULL",
                    &[Value::Int(user)],
                )?,
            };
            if let Some(role) = role {
                sql.execute(
                    "INSERT INTO user_roles (user_id, product_id, role) VALUES (?, ?, ?)",
                    &[Value::Int(user), product_id.into(), role.as_str().into()],
                )?;
            }
            let what = format!(
                "{name} {} in {}",
                role.map_or("no role", UserRole::as_str),
                product.unwrap_or("every product")
            );
            audit::record(sql, "cli", None, "user.grant", Some(&what), "ok")?;
            user_info(sql, user)
        })
    }

    pub fn user(&self, name: &str) -> Result<UserInfo, HubError> {
        self.tx(|sql| {
            let user = user_id(sql, name)?;
            user_info(sql, user)
        })
    }

    pub fn users(&self) -> Result<Vec<UserInfo>, HubError> {
        self.tx(|sql| {
            let ids = sql.query("SELECT id FROM users ORDER BY name", &[])?;
            ids.iter().map(|row| user_info(sql, row.int(0)?)).collect()
        })
    }

    /// Ends every session of the user; how many were open.
    pub fn revoke_sessions(&self, name: &str) -> Result<u64, HubError> {
        self.tx(|sql| {
            let user = user_id(sql, name)?;
            let ended = end_sessions(sql, user)?;
            audit::record(sql, "cli", None, "user.sessions_revoke", Some(name), "ok")?;
            Ok(ended)
        })
    }

    /// Turns the user's second factor off (a lost phone), ending their
    /// sessions and recovery codes; they enrol again after logging in.
    pub fn reset_totp(&self, name: &str) -> Result<UserInfo, HubError> {
        self.tx(|sql| {
            let user = user_id(sql, name)?;
            sql.execute(
                "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_last_step = NULL WHERE id = ?",
                &[Value::Int(user)],
            )?;
            sql.execute(
                "DELETE FROM recovery_codes WHERE user_id = ?",
                &[Value::Int(user)],
            )?;
            end_sessions(sql, user)?;
            audit::record(sql, "cli", None, "user.totp_reset", Some(name), "ok")?;
            user_info(sql, user)
        })
    }
}

pub(super) fn user_info(sql: &mut dyn Sql, user: i64) -> Result<UserInfo, HubError> {
    let row = sql
        .query_one(
            "SELECT name, email, totp_secret FROM users WHERE id = ?",
            &[Value::Int(user)],
        )?
        .ok_or_else(|| HubError::not_found("user"))?;
    let grants = sql.query(
        "SELECT p.key, r.role FROM user_roles r LEFT JOIN products p ON p.id = r.product_id \
         WHERE r.user_id = ? ORDER BY p.key",
        &[Value::Int(user)],
    )?;
    let mut roles = Vec::new();
    for grant in &grants {
        let role = grant.text(1)?;
        roles.push(Grant {
            product: grant.opt_text(0)?,
            role: UserRole::parse(&role)
                .ok_or_else(|| DbError::Shape(format!("user role {role}")))?,
        });
    }
    Ok(UserInfo {
        name: row.text(0)?,
        email: row.opt_text(1)?,
        totp: row.opt_text(2)?.is_some(),
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_wide_grant_reaches_every_product_and_roles_rank() {
        let roles = Roles(vec![
            (Some(1), UserRole::Admin),
            (Some(2), UserRole::Viewer),
        ]);
        assert_eq!(roles.reaching(Permission::Read), Some(vec![1, 2]));
        assert_eq!(roles.reaching(Permission::Write), Some(vec![1]));
        let everywhere = Roles(vec![(None, UserRole::Member)]);
        assert_eq!(everywhere.reaching(Permission::Write), None);
        assert_eq!(everywhere.reaching(Permission::Admin), Some(vec![]));
    }

    #[test]
    fn an_unknown_user_never_matches() {
        assert!(!verify_password(None, "no user has this password").unwrap_or(true));
    }
}
