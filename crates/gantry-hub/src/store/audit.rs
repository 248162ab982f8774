//! Who did what: the audit log of every mutation and authentication event,
//! and idempotency keys, which make a retried POST answer as the first did.

use gantry_core::artifact::hex;
use sha2::{Digest, Sha256};

use crate::clock;
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::model::AuditEntry;

/// Who makes a change: an API key (by its name), a user, or the CLI on the
/// hub's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The client's address, for the audit log.
    pub client: Option<String>,
}

impl Actor {
    pub fn cli() -> Actor {
        Actor {
            name: "cli".to_owned(),
            client: None,
        }
    }
}

/// Appends one row to the audit log.
pub fn record(
    sql: &mut dyn Sql,
    actor: &str,
    client: Option<&str>,
    action: &str,
    target: Option<&str>,
    outcome: &str,
) -> Result<(), HubError> {
    sql.execute(
        "INSERT INTO audit (at, actor, action, target, outcome, client) VALUES (?, ?, ?, ?, ?, ?)",
        &[
            Value::Int(clock::now()),
            actor.into(),
            action.into(),
            target.into(),
            outcome.into(),
            client.into(),
        ],
    )?;
    Ok(())
}

impl crate::store::Store {
    /// The newest audit entries before `before` (an entry id), newest first.
    pub fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, HubError> {
        let limit = limit.clamp(1, crate::store::PAGE_MAX) as i64;
        self.tx(|sql| {
            sql.query(
                "SELECT id, at, actor, action, target, outcome, client FROM audit \
                 WHERE id < ? ORDER BY id DESC LIMIT ?",
                &[Value::Int(before.unwrap_or(i64::MAX)), Value::Int(limit)],
            )?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.int(0)?,
                    at: clock::format(r.int(1)?),
                    actor: r.text(2)?,
                    action: r.text(3)?,
                    target: r.opt_text(4)?,
                    outcome: r.text(5)?,
                    client: r.opt_text(6)?,
                })
            })
            .collect()
        })
    }
}

/// How long an idempotency key is remembered.
const KEEP_MS: i64 = 24 * 3600 * 1000;

/// Runs `work` once per (`key_id`, `idempotency_key`): a retry with the same
/// key and the same request gets the first answer (status and body) again
/// without running `work`; the same key with another request is refused.
/// The key is reserved in the same transaction as the work, so two racing
/// retries cannot both run it, and a failed attempt reserves nothing.
pub fn idempotent(
    sql: &mut dyn Sql,
    key_id: i64,
    idempotency_key: Option<&str>,
    request: &[&[u8]],
    work: impl FnOnce(&mut dyn Sql) -> Result<(u16, String), HubError>,
) -> Result<(u16, String), HubError> {
    let Some(idem) = idempotency_key else {
        return work(sql);
    };
    if idem.is_empty() || idem.len() > 128 || !idem.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HubError::Invalid {
            message: "Idempotency-Key must be 1 to 128 visible ASCII characters".to_owned(),
            hint: Some("a UUID is a good key".to_owned()),
        });
    }
    let mut hasher = Sha256::new();
    for part in request {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let fingerprint = hex(&hasher.finalize());
    let now = clock::now();
    sql.execute(
        "DELETE FROM idempotency WHERE key_id = ? AND created_at < ?",
        &[Value::Int(key_id), Value::Int(now - KEEP_MS)],
    )?;
    let reserved = sql.execute(
        "INSERT INTO idempotency (key_id, idem_key, request_hash, status, body, created_at) \
         VALUES (?, ?, ?, 0, '', ?) ON CONFLICT DO NOTHING",
        &[
            Value::Int(key_id),
            idem.into(),
            fingerprint.as_str().into(),
            Value::Int(now),
        ],
    )?;
    if reserved == 0 {
        let row = sql
            .query_one(
                "SELECT request_hash, status, body FROM idempotency WHERE key_id = ? AND idem_key = ?",
                &[Value::Int(key_id), idem.into()],
            )?
            .ok_or_else(|| HubError::Internal("an idempotency key vanished".to_owned()))?;
        if row.text(0)? != fingerprint {
            return Err(HubError::IdempotencyMismatch);
        }
        let status = u16::try_from(row.int(1)?).unwrap_or(500);
        return Ok((status, row.text(2)?));
    }
    let (status, body) = work(sql)?;
    sql.execute(
        "UPDATE idempotency SET status = ?, body = ? WHERE key_id = ? AND idem_key = ?",
        &[
            Value::Int(status.into()),
            body.as_str().into(),
            Value::Int(key_id),
            idem.into(),
        ],
    )?;
    Ok((status, body))
}
