//! Logging in and staying logged in: sessions, the TOTP second factor
//! (RFC 6238, by totp-rs) and one-time recovery codes.
//!
//! A session is a random 256-bit token in a cookie; the hub keeps only its
//! SHA-256 (as for keys: a random secret needs no slow hash), so the
//! database alone opens no session. A session ends when its user logs out,
//! when it is revoked (a new password, `gantry hub user logout`), after
//! [`SESSION_IDLE`] without a request, and [`SESSION_LIFETIME`] after login
//! whatever happens. An ended session's row is deleted a day later, with
//! the other rows kept for a while only (`analytics::prune`). Its CSRF token is derived from the session token, so
//! only a page that was given it (or holds the cookie, which scripts
//! cannot read) can name it.
//!
//! A TOTP code is accepted once: the step it belongs to must be later than
//! the last one used. Recovery codes are 80 random bits each, stored hashed,
//! and each works once. Every login, refused or not, goes to the audit log.

use gantry_core::artifact::hex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::audit::Refusal;
use super::keys::{digest, random_hex};
use super::users::{Roles, roles, verify_password};
use super::{Store, audit};
use crate::clock;
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::seal::{Purpose, SealKey};

/// A session ends this long after login.
pub const SESSION_LIFETIME_MS: i64 = 12 * 3600 * 1000;
/// A session ends after this long without a request.
pub const SESSION_IDLE_MS: i64 = 2 * 3600 * 1000;
/// The hint of a refused login: the same whichever part was wrong, and
/// whether or not the name exists.
const LOGIN_HINT: &str = "check the user name and password (both are case-sensitive); a user with \
     a second factor also sends `code`, the app's 6-digit code or a recovery code";
/// How many recovery codes an enrolment gives.
const RECOVERY_CODES: usize = 10;
const ISSUER: &str = "Gantry hub";

/// What a login sends.
#[derive(Clone, Debug)]
pub struct LoginAttempt {
    pub name: String,
    pub password: String,
    /// A TOTP code (`123456`) or a recovery code, when the user has TOTP.
    pub code: Option<String>,
}

/// A session just made: the only time its token is known.
#[derive(Clone)]
pub struct NewSession {
    pub token: String,
    pub csrf_token: String,
    pub expires_at: i64,
    /// Whether a recovery code was spent on it.
    pub used_recovery_code: bool,
}

/// The session a request came with, checked.
#[derive(Clone, Debug)]
pub struct SessionUser {
    pub session_id: i64,
    pub user_id: i64,
    pub name: String,
    pub roles: Roles,
    pub expires_at: i64,
    pub totp: bool,
}

/// A TOTP enrolment begun: the secret to put in an authenticator app.
#[derive(Clone)]
pub struct Enrolment {
    /// Base32, as apps take it typed in.
    pub secret: String,
    /// `otpauth://totp/...`, as apps take it from a QR code.
    pub url: String,
}

/// The CSRF token of a session token.
pub fn csrf_token(session_token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"gantry-hub csrf\0");
    hasher.update(session_token.as_bytes());
    hex(&hasher.finalize())
}

fn totp(secret_base32: &str, account: &str) -> Result<totp_rs::Totp, HubError> {
    let secret = totp_rs::Secret::try_from_base32(secret_base32)
        .map_err(|e| HubError::Internal(format!("a stored TOTP secret does not parse: {e}")))?;
    totp_rs::Builder::new()
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(account.replace(':', "_"))
        .build()
        .map_err(|e| HubError::Internal(format!("totp: {e}")))
}

/// The step a TOTP code belongs to (this one, the one before or after), if
/// it is right.
fn totp_step(
    secret: &str,
    account: &str,
    code: &str,
    now_ms: i64,
) -> Result<Option<i64>, HubError> {
    let now = u64::try_from(now_ms / 1000).unwrap_or(0);
    Ok(totp(secret, account)?
        .check(code, now)
        .and_then(|step| i64::try_from(step).ok()))
}

/// A recovery code as typed, reduced to what is hashed: lower case, no
/// dashes or spaces.
fn normal_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

fn new_recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let bytes = rand::random::<[u8; 16]>();
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The stored fields of a user a login needs.
struct Candidate {
    id: i64,
    password_hash: String,
    totp_secret: Option<String>,
}

fn candidate(sql: &mut dyn Sql, seal: &SealKey, name: &str) -> Result<Option<Candidate>, HubError> {
    let Some(row) = sql.query_one(
        "SELECT id, password_hash, totp_secret FROM users WHERE name = ?",
        &[name.into()],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Candidate {
        id: row.int(0)?,
        password_hash: row.text(1)?,
        totp_secret: row
            .opt_text(2)?
            .map(|sealed| seal.open(Purpose::Totp, &sealed))
            .transpose()?,
    }))
}

/// Checks the second factor of `user`, spending a recovery code or the
/// TOTP step. `Err(outcome)` names why it was refused, for the audit log.
fn second_factor(
    sql: &mut dyn Sql,
    user: &Candidate,
    name: &str,
    code: Option<&str>,
    now: i64,
) -> Result<Result<bool, &'static str>, HubError> {
    let Some(secret) = &user.totp_secret else {
        return Ok(Ok(false));
    };
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(Err("second factor missing"));
    };
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        let Some(step) = totp_step(secret, name, code, now)? else {
            return Ok(Err("wrong totp code"));
        };
        // The step is taken in the same statement that checks it, so two
        // logins racing with one code cannot both win.
        let taken = sql.execute(
            "UPDATE users SET totp_last_step = ? WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)",
            &[Value::Int(step), Value::Int(user.id), Value::Int(step)],
        )?;
        return Ok(if taken == 1 {
            Ok(false)
        } else {
            Err("totp code reused")
        });
    }
    if code.len() > 64 {
        return Ok(Err("wrong recovery code"));
    }
    let spent = sql.execute(
        "UPDATE recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ? AND used_at IS NULL",
        &[
            Value::Int(now),
            Value::Int(user.id),
            digest(&normal_recovery(code)).into(),
        ],
    )?;
    Ok(if spent >= 1 {
        Ok(true)
    } else {
        Err("wrong recovery code")
    })
}

impl Store {
    /// Checks a login and opens a session. Refusals say only that the
    /// name, password or code is wrong (which one is in the audit log),
    /// except a missing second factor, which the client must ask for.
    pub fn login(&self, attempt: &LoginAttempt, client: &str) -> Result<NewSession, HubError> {
        let name: String = attempt.name.chars().take(64).collect();
        let user = self.tx(|sql| candidate(sql, &self.seal, &name))?;
        // argon2 outside any transaction: it takes a while, and the
        // database is not held meanwhile.
        let password_ok = verify_password(
            user.as_ref().map(|u| u.password_hash.as_str()),
            &attempt.password,
        )?;
        let refused = || HubError::LoginRefused {
            message: "the name, password or code is wrong".to_owned(),
            hint: LOGIN_HINT,
        };
        // A refusal's audit row is committed: it is returned, not thrown.
        self.tx(|sql| {
            let now = clock::now();
            let user = match (&user, password_ok) {
                (None, _) => {
                    audit::record(sql, "anonymous", Some(client), "auth.login", Some(&name), "unknown user")?;
                    return Ok(Err(refused()));
                }
                (Some(_), false) => {
                    audit::record(sql, &name, Some(client), "auth.login", Some(&name), "wrong password")?;
                    return Ok(Err(refused()));
                }
                (Some(user), true) => user,
            };
            let used_recovery_code = match second_factor(sql, user, &name, attempt.code.as_deref(), now)? {
                Ok(used) => used,
                Err(why) => {
                    audit::record(sql, &name, Some(client), "auth.login", Some(&name), why)?;
                    return Ok(Err(if why == "second factor missing" {
                        HubError::SecondFactorRequired
                    } else {
                        refused()
                    }));
                }
            };
            let token = random_hex::<32>();
            let expires_at = now + SESSION_LIFETIME_MS;
            sql.execute(
                "INSERT INTO sessions (user_id, token_hash, client, created_at, last_seen_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                &[
                    Value::Int(user.id),
                    digest(&token).into(),
                    client.into(),
                    Value::Int(now),
                    Value::Int(now),
                    Value::Int(expires_at),
                ],
            )?;
            let how = if used_recovery_code { "ok (recovery code)" } else { "ok" };
            audit::record(sql, &name, Some(client), "auth.login", Some(&name), how)?;
            Ok(Ok(NewSession {
                csrf_token: csrf_token(&token),
                token,
                expires_at,
                used_recovery_code,
            }))
        })?
    }

    /// The user of a session token, if the session is open; its last use
    /// is moved on. A refused session is counted in the audit log
    /// ([`Refusals`](super::audit::Refusals)).
    pub fn session(&self, token: &str, client: &str) -> Result<SessionUser, HubError> {
        self.session_at(token, client, clock::now())
    }

    pub(crate) fn session_at(
        &self,
        token: &str,
        client: &str,
        now: i64,
    ) -> Result<SessionUser, HubError> {
        let refused = |message: &str| HubError::Unauthorized {
            message: message.to_owned(),
        };
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refused("the session cookie is malformed; log in again"));
        }
        self.tx(|sql| {
            let Some(row) = sql.query_one(
                "SELECT s.id, s.user_id, u.name, s.expires_at, s.last_seen_at, s.revoked_at, u.totp_secret, \
                 s.token_hash FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
                &[digest(token).into()],
            )?
            else {
                self.refusals.record(
                    sql,
                    &Refusal {
                        actor: "anonymous",
                        action: "auth.session",
                        target: None,
                        outcome: "unknown",
                        client,
                    },
                )?;
                return Ok(Err(refused("the session is not known to this hub; log in again")));
            };
            let stored = row.text(7)?;
            if !bool::from(digest(token).as_bytes().ct_eq(stored.as_bytes())) {
                return Ok(Err(refused("the session is not known to this hub; log in again")));
            }
            let (session_id, name) = (row.int(0)?, row.text(2)?);
            let why = if row.opt_int(5)?.is_some() {
                Some("revoked")
            } else if row.int(3)? <= now || row.int(4)? + SESSION_IDLE_MS <= now {
                Some("expired")
            } else {
                None
            };
            if let Some(why) = why {
                let refusal = Refusal {
                    actor: &name,
                    action: "auth.session",
                    target: Some(&name),
                    outcome: why,
                    client,
                };
                self.refusals.record(sql, &refusal)?;
                return Ok(Err(refused(&format!("the session has {why}; log in again"))));
            }
            sql.execute(
                "UPDATE sessions SET last_seen_at = ? WHERE id = ?",
                &[Value::Int(now), Value::Int(session_id)],
            )?;
            let user_id = row.int(1)?;
            Ok(Ok(SessionUser {
                session_id,
                user_id,
                roles: roles(sql, user_id)?,
                name,
                expires_at: row.int(3)?,
                totp: row.opt_text(6)?.is_some(),
            }))
        })?
    }

    /// Ends one session (logging out).
    pub fn logout(&self, user: &SessionUser, client: &str) -> Result<(), HubError> {
        self.tx(|sql| {
            sql.execute(
                "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                &[Value::Int(clock::now()), Value::Int(user.session_id)],
            )?;
            audit::record(
                sql,
                &user.name,
                Some(client),
                "auth.logout",
                Some(&user.name),
                "ok",
            )
        })
    }

    /// Records a refused state-changing request without its CSRF token.
    pub fn refuse_csrf(&self, user: &SessionUser, client: &str) -> Result<(), HubError> {
        self.tx(|sql| {
            audit::record(
                sql,
                &user.name,
                Some(client),
                "auth.csrf",
                Some(&user.name),
                "missing or wrong token",
            )
        })
    }

    /// Begins a TOTP enrolment; the password is asked again, so an open
    /// session alone cannot change the second factor.
    pub fn begin_totp(
        &self,
        user: &SessionUser,
        password: &str,
        client: &str,
    ) -> Result<Enrolment, HubError> {
        self.recheck_password(user, password, client, "auth.totp_enrol")?;
        let secret = totp_rs::Secret::from(rand::random::<[u8; 20]>()).to_base32();
        let url = totp(&secret, &user.name)?
            .to_url()
            .map_err(|e| HubError::Internal(format!("totp url: {e}")))?;
        let sealed = self.seal.seal(Purpose::Totp, &secret)?;
        self.tx(|sql| {
            sql.execute(
                "UPDATE users SET totp_pending = ? WHERE id = ?",
                &[sealed.as_str().into(), Value::Int(user.user_id)],
            )?;
            Ok(())
        })?;
        Ok(Enrolment { secret, url })
    }

    /// Confirms an enrolment with a code from the app: TOTP is on from
    /// now, and the answer holds the recovery codes, shown this once.
    pub fn confirm_totp(
        &self,
        user: &SessionUser,
        code: &str,
        client: &str,
    ) -> Result<Vec<String>, HubError> {
        // A refusal's audit row is committed: it is returned, not thrown.
        self.tx(|sql| {
            let pending = sql
                .query_one("SELECT totp_pending FROM users WHERE id = ?", &[Value::Int(user.user_id)])?
                .and_then(|row| row.opt_text(0).ok().flatten());
            let Some(pending) = pending else {
                return Ok(Err(HubError::invalid(
                    "no TOTP enrolment is under way: POST /api/session/totp first",
                )));
            };
            let pending = self.seal.open(Purpose::Totp, &pending)?;
            let Some(step) = totp_step(&pending, &user.name, code.trim(), clock::now())? else {
                audit::record(sql, &user.name, Some(client), "auth.totp_confirm", Some(&user.name), "wrong totp code")?;
                return Ok(Err(HubError::LoginRefused {
                    message: "the code is wrong: check the app's clock and try the next code".to_owned(),
                    hint: "send the 6-digit code the app shows now for the secret this enrolment gave",
                }));
            };
            sql.execute(
                "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_last_step = ? WHERE id = ?",
                &[Value::Int(step), Value::Int(user.user_id)],
            )?;
            sql.execute("DELETE FROM recovery_codes WHERE user_id = ?", &[Value::Int(user.user_id)])?;
            let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
            for code in &codes {
                sql.execute(
                    "INSERT INTO recovery_codes (user_id, code_hash) VALUES (?, ?)",
                    &[Value::Int(user.user_id), digest(&normal_recovery(code)).into()],
                )?;
            }
            audit::record(sql, &user.name, Some(client), "auth.totp_confirm", Some(&user.name), "ok")?;
            Ok(Ok(codes))
        })?
    }

    fn recheck_password(
        &self,
        user: &SessionUser,
        password: &str,
        client: &str,
        action: &str,
    ) -> Result<(), HubError> {
        let stored = self.tx(|sql| {
            Ok(sql
                .query_one(
                    "SELECT password_hash FROM users WHERE id = ?",
                    &[Value::Int(user.user_id)],
                )?
                .map(|row| row.text(0))
                .transpose()?)
        })?;
        if verify_password(stored.as_deref(), password)? {
            return Ok(());
        }
        self.tx(|sql| {
            audit::record(
                sql,
                &user.name,
                Some(client),
                action,
                Some(&user.name),
                "wrong password",
            )
        })?;
        Err(HubError::LoginRefused {
            message: "the password is wrong".to_owned(),
            hint: "send the password this user logs in with",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_80_bits_in_groups_and_typed_loosely() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 19, "{code}");
        assert_eq!(code.matches('-').count(), 3);
        assert_eq!(
            normal_recovery(&code.to_uppercase().replace('-', " ")),
            code.replace('-', "")
        );
    }

    #[test]
    fn a_session_ends_when_idle_and_at_its_lifetime() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&crate::Location::Sqlite(dir.path().join("hub.db")))
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .add_user("ann", None, "correct horse battery")
            .unwrap_or_else(|e| panic!("{e}"));
        let attempt = LoginAttempt {
            name: "ann".to_owned(),
            password: "correct horse battery".to_owned(),
            code: None,
        };
        let session = store
            .login(&attempt, "test")
            .unwrap_or_else(|e| panic!("{e}"));
        let start = clock::now();
        let open = |at: i64| store.session_at(&session.token, "test", at).is_ok();
        assert!(
            open(start + SESSION_IDLE_MS - 60_000),
            "used within the idle time"
        );
        assert!(
            open(start + 2 * SESSION_IDLE_MS - 120_000),
            "each use moves the idle end on"
        );
        assert!(!open(start + 4 * SESSION_IDLE_MS), "idle too long");
        let again = store
            .login(&attempt, "test")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut at = clock::now();
        while at < start + SESSION_LIFETIME_MS - SESSION_IDLE_MS {
            at += SESSION_IDLE_MS / 2;
            assert!(store.session_at(&again.token, "test", at).is_ok());
        }
        assert!(
            store
                .session_at(&again.token, "test", again.expires_at)
                .is_err(),
            "kept busy, it still ends at its lifetime"
        );
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        assert_eq!(csrf_token("a"), csrf_token("a"));
        assert_ne!(csrf_token("a"), csrf_token("b"));
    }
}
