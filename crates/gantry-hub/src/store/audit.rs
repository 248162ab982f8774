//! Who did what: the audit log of every mutation and authentication event,
//! and idempotency keys, which make a retried POST answer as the first did.
//! Refusals anyone can cause at will are counted rather than written one
//! row each ([`Refusals`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use gantry_core::artifact::hex;
use sha2::{Digest, Sha256};

use crate::clock;
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::model::AuditEntry;
use crate::store::Store;

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

/// What one client is, for the per-address limits and for counting its
/// refusals: an IPv4 address, or the /64 network of an IPv6 one (which one
/// machine can fill with addresses).
pub fn client_network(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// How often one kind of refusal from one client is written to the audit
/// log; the ones between are counted.
const REFUSALS_EVERY: Duration = Duration::from_secs(60);

/// A refusal anyone can cause at will, as fast as the rate limits allow: a
/// wrong API key, an unknown session, a forged webhook delivery.
pub struct Refusal<'a> {
    pub actor: &'a str,
    pub action: &'static str,
    pub target: Option<&'a str>,
    pub outcome: &'static str,
    pub client: &'a str,
}

/// What makes two refusals the same for counting: all but the target,
/// which the client chooses freely (any key id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Kind {
    actor: String,
    action: &'static str,
    outcome: &'static str,
    client: String,
}

impl Refusal<'_> {
    /// Its kind; an IPv6 client counted by its /64, as the rate limits
    /// count it, so that changing addresses within it counts as one.
    fn kind(&self) -> Kind {
        let client = match self.client.parse::<IpAddr>() {
            Ok(address) => client_network(address).to_string(),
            Err(_) => self.client.to_owned(),
        };
        Kind {
            actor: self.actor.to_owned(),
            action: self.action,
            outcome: self.outcome,
            client,
        }
    }
}

/// Refusals written at most once per [`REFUSALS_EVERY`] per kind and
/// client, so that a flood of them neither grows the audit log nor takes
/// the database's write lock a request: the first is written at once, the
/// ones after it only counted, and their count written as one row when
/// the interval is over (with the next refusal of the kind, or by
/// [`Store::audit_counted_refusals`]). The rows' counts add up to the
/// refusals; each request is in the hub's log too.
#[derive(Default)]
pub struct Refusals {
    open: Mutex<HashMap<Kind, Window>>,
}

struct Window {
    opened: Instant,
    /// Refused since, not written yet.
    counted: i64,
}

impl Refusals {
    /// Audits `refusal` in `sql`'s transaction when a row is due, else
    /// counts it.
    pub fn record(&self, sql: &mut dyn Sql, refusal: &Refusal<'_>) -> Result<(), HubError> {
        match self.admit(refusal.kind(), Instant::now()) {
            Some(count) => write_refusal(sql, refusal, count),
            None => Ok(()),
        }
    }

    /// Counts a refusal of `kind` at `now`; the count its row carries when
    /// one is due: itself and those counted before it and not written.
    fn admit(&self, kind: Kind, now: Instant) -> Option<i64> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get_mut(&kind) {
            Some(window) if now.duration_since(window.opened) < REFUSALS_EVERY => {
                window.counted += 1;
                None
            }
            _ => {
                let fresh = Window {
                    opened: now,
                    counted: 0,
                };
                Some(1 + open.insert(kind, fresh).map_or(0, |over| over.counted))
            }
        }
    }

    /// Forgets the intervals over at `now` (every one, with `all`); the
    /// counts of those that counted refusals, to be written.
    fn take_over(&self, now: Instant, all: bool) -> Vec<(Kind, i64)> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut counted = Vec::new();
        open.retain(|kind, window| {
            let over = all || now.duration_since(window.opened) >= REFUSALS_EVERY;
            if over && window.counted > 0 {
                counted.push((kind.clone(), window.counted));
            }
            !over
        });
        counted
    }
}

fn write_refusal(sql: &mut dyn Sql, refusal: &Refusal<'_>, count: i64) -> Result<(), HubError> {
    sql.execute(
        "INSERT INTO audit (at, actor, action, target, outcome, client, count) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            Value::Int(clock::now()),
            refusal.actor.into(),
            refusal.action.into(),
            refusal.target.into(),
            refusal.outcome.into(),
            refusal.client.into(),
            Value::Int(count),
        ],
    )?;
    Ok(())
}

impl Store {
    /// Audits a refusal made before any transaction, opening one only when
    /// a row is due (see [`Refusals`]).
    pub(crate) fn audit_refusal(&self, refusal: &Refusal<'_>) -> Result<(), HubError> {
        match self.refusals.admit(refusal.kind(), Instant::now()) {
            Some(count) => self.tx(|sql| write_refusal(sql, refusal, count)),
            None => Ok(()),
        }
    }

    /// Writes the counts of refusals whose interval is over (of all, when
    /// the hub stops), one row per kind and client.
    pub(crate) fn audit_counted_refusals(&self, all: bool) -> Result<(), HubError> {
        let counted = self.refusals.take_over(Instant::now(), all);
        if counted.is_empty() {
            return Ok(());
        }
        self.tx(|sql| {
            for (kind, count) in &counted {
                let refusal = Refusal {
                    actor: &kind.actor,
                    action: kind.action,
                    target: None,
                    outcome: kind.outcome,
                    client: &kind.client,
                };
                write_refusal(sql, &refusal, *count)?;
            }
            Ok(())
        })
    }

    /// The newest audit entries before `before` (an entry id), newest first.
    pub fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, HubError> {
        let limit = limit.clamp(1, crate::store::PAGE_MAX) as i64;
        self.tx(|sql| {
            sql.query(
                "SELECT id, at, actor, action, target, outcome, client, count FROM audit \
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
                    count: r.int(7)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(client: &str) -> Kind {
        Kind {
            actor: "anonymous".to_owned(),
            action: "auth.key",
            outcome: "unknown",
            client: client.to_owned(),
        }
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let refusal = |client| Refusal {
            actor: "anonymous",
            action: "auth.key",
            target: None,
            outcome: "unknown",
            client,
        };
        assert_eq!(
            refusal("2001:db8::1").kind(),
            refusal("2001:db8::ffff:2").kind()
        );
        assert_ne!(
            refusal("2001:db8::1").kind(),
            refusal("2001:db8:0:1::1").kind()
        );
        assert_ne!(refusal("192.0.2.1").kind(), refusal("192.0.2.2").kind());
    }

    #[test]
    fn refusals_are_written_once_a_minute_per_kind_and_client_and_counted_between() {
        let refusals = Refusals::default();
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        assert_eq!(refusals.admit(kind("10.0.0.1"), at(0)), Some(1));
        assert_eq!(refusals.admit(kind("10.0.0.1"), at(1)), None);
        assert_eq!(refusals.admit(kind("10.0.0.1"), at(59)), None);
        assert_eq!(refusals.admit(kind("10.0.0.2"), at(1)), Some(1));
        assert_eq!(
            refusals.admit(kind("10.0.0.1"), at(60)),
            Some(3),
            "the next minute's first carries the two counted"
        );
        assert_eq!(refusals.admit(kind("10.0.0.1"), at(61)), None);
        assert_eq!(
            refusals.take_over(at(90), false),
            [],
            "10.0.0.2's minute is over with nothing counted; 10.0.0.1's is not"
        );
        assert_eq!(refusals.take_over(at(120), false), [(kind("10.0.0.1"), 1)]);
        assert_eq!(refusals.take_over(at(120), true), [], "all forgotten");
    }
}
