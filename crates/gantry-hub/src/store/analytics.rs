//! What analytics reads (finished items, bugs' lives, votes), and the
//! watch for SLA breaches and stale items, which fires their webhooks
//! once per item (again for a stale item only after it was touched).

use serde_json::json;

use super::items::{Access, load};
use super::outbox::{Event, emit, product_for};
use super::sessions::SESSION_IDLE_MS;
use super::{Store, audit};
use crate::analytics::{self, BugLife, Closer, Finished, Report, VoteCount};
use crate::clock;
use crate::db::{Dialect, Sql, Value};
use crate::error::HubError;
use crate::model::Kind;

/// The most finished items one report reads (the newest).
const FINISHED_MAX: i64 = 20_000;
/// The most notices one watch fires.
const NOTICES_MAX: i64 = 200;

fn finished(sql: &mut dyn Sql, product_id: i64, since: i64) -> Result<Vec<Finished>, HubError> {
    let rows = sql.query(
        "SELECT i.kind, i.created_at, \
         (SELECT MIN(a.at) FROM activity a WHERE a.item_id = i.id AND a.field = 'status' AND a.after = 'in_progress'), \
         f.at, f.actor, (SELECT k.role FROM api_keys k WHERE k.name = f.actor ORDER BY k.id DESC LIMIT 1) \
         FROM items i JOIN activity f ON f.id = (SELECT MAX(a.id) FROM activity a WHERE a.item_id = i.id \
           AND a.field = 'status' AND a.after IN ('done', 'closed')) \
         WHERE i.product_id = ? AND i.status IN ('done', 'closed') AND f.at >= ? \
         ORDER BY f.at DESC LIMIT ?",
        &[Value::Int(product_id), Value::Int(since), Value::Int(FINISHED_MAX)],
    )?;
    rows.iter()
        .map(|r| {
            let kind = r.text(0)?;
            let actor = r.text(4)?;
            let closer = match (r.opt_text(5)?.as_deref(), actor.as_str()) {
                (_, "github" | "gitea") | (Some("ci" | "webhook"), _) => Closer::Automation,
                (Some("agent"), _) => Closer::Agent,
                _ => Closer::Person,
            };
            Ok(Finished {
                kind: Kind::parse(&kind)
                    .ok_or_else(|| HubError::Internal(format!("item type {kind}")))?,
                created_at: r.int(1)?,
                started_at: r.opt_int(2)?,
                finished_at: r.int(3)?,
                closer,
            })
        })
        .collect()
}

fn bug_lives(sql: &mut dyn Sql, product_id: i64, since: i64) -> Result<Vec<BugLife>, HubError> {
    sql.query(
        "SELECT i.created_at, CASE WHEN i.status IN ('done', 'closed', 'wont_fix') THEN \
         (SELECT MAX(a.at) FROM activity a WHERE a.item_id = i.id AND a.field = 'status') END \
         FROM items i WHERE i.product_id = ? AND i.kind = 'bug' \
         AND (i.status NOT IN ('done', 'closed', 'wont_fix') OR i.updated_at >= ?)",
        &[Value::Int(product_id), Value::Int(since)],
    )?
    .iter()
    .map(|r| {
        Ok(BugLife {
            created_at: r.int(0)?,
            finished_at: r.opt_int(1)?,
        })
    })
    .collect()
}

/// The most-voted unfinished items. Votes are the public roadmap's; a hub
/// without its table has none.
fn leaderboard(
    sql: &mut dyn Sql,
    dialect: Dialect,
    product_id: i64,
) -> Result<Vec<VoteCount>, HubError> {
    let exists = match dialect {
        Dialect::Sqlite => sql.query_one(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'votes'",
            &[],
        )?,
        Dialect::Postgres => sql.query_one(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'votes' AND table_schema = current_schema()",
            &[],
        )?,
    };
    if exists.is_none() {
        return Ok(Vec::new());
    }
    sql.query(
        "SELECT p.key, i.seq, i.title, COUNT(*) FROM votes v JOIN items i ON i.id = v.item_id \
         JOIN products p ON p.id = i.product_id WHERE i.product_id = ? \
         GROUP BY p.key, i.seq, i.title, i.id ORDER BY COUNT(*) DESC, i.id LIMIT 20",
        &[Value::Int(product_id)],
    )?
    .iter()
    .map(|r| {
        Ok(VoteCount {
            reference: format!("{}-{}", r.text(0)?, r.int(1)?),
            title: r.text(2)?,
            votes: r.int(3)?,
        })
    })
    .collect()
}

/// How long finished messages (and those of ended subscriptions) and
/// their attempts are kept.
const OUTBOX_KEEP_MS: i64 = 30 * 24 * 3600 * 1000;

/// How long a read notification is kept; unread ones stay until read.
const NOTIFICATION_KEEP_MS: i64 = 90 * 24 * 3600 * 1000;

/// How long the audit log keeps an entry: a year, so a yearly review
/// still finds every mutation and sign-in.
pub const AUDIT_KEEP_MS: i64 = 366 * 24 * 3600 * 1000;

/// How long an Idempotency-Key is remembered: a retry within a day answers
/// as the first request did; after it, the same key is a new request.
pub const IDEMPOTENCY_KEEP_MS: i64 = 24 * 3600 * 1000;

/// How long an ended session (expired, idle too long, logged out or
/// revoked) is kept: a day, so a browser coming back with its cookie is
/// told the session ended rather than that it is unknown; then it goes.
pub const ENDED_SESSION_KEEP_MS: i64 = 24 * 3600 * 1000;

/// Deletes what the hub keeps for a while only; run by the periodic task
/// that watches deadlines (every five minutes by default).
fn prune(sql: &mut dyn Sql, now: i64) -> Result<(), HubError> {
    let ended = now - ENDED_SESSION_KEEP_MS;
    sql.execute(
        "DELETE FROM sessions WHERE expires_at < ? OR last_seen_at < ? OR revoked_at < ?",
        &[
            Value::Int(ended),
            Value::Int(ended - SESSION_IDLE_MS),
            Value::Int(ended),
        ],
    )?;
    sql.execute(
        "DELETE FROM notifications WHERE read_at IS NOT NULL AND read_at < ?",
        &[Value::Int(now - NOTIFICATION_KEEP_MS)],
    )?;
    sql.execute(
        "DELETE FROM audit WHERE at < ?",
        &[Value::Int(now - AUDIT_KEEP_MS)],
    )?;
    sql.execute(
        "DELETE FROM idempotency WHERE created_at < ?",
        &[Value::Int(now - IDEMPOTENCY_KEEP_MS)],
    )?;
    let old = "SELECT o.id FROM outbox o JOIN subscriptions s ON s.id = o.subscription_id \
               WHERE o.created_at < ? AND (o.state <> 'pending' OR s.disabled_at IS NOT NULL)";
    sql.execute(
        &format!("DELETE FROM outbox_attempts WHERE outbox_id IN ({old})"),
        &[Value::Int(now - OUTBOX_KEEP_MS)],
    )?;
    sql.execute(
        &format!("DELETE FROM outbox WHERE id IN ({old})"),
        &[Value::Int(now - OUTBOX_KEEP_MS)],
    )?;
    Ok(())
}

impl Store {
    /// A product's analytics over the last `weeks` weeks (1 to 52).
    pub fn analytics(
        &self,
        access: &Access,
        product: &str,
        weeks: usize,
    ) -> Result<Report, HubError> {
        if !(1..=52).contains(&weeks) {
            return Err(HubError::invalid("`weeks` must be 1 to 52"));
        }
        let dialect = self.dialect();
        self.tx(|sql| {
            let product_id = product_for(sql, access, product)?;
            let now = clock::now();
            let since = analytics::week_start(now) - (weeks as i64 - 1) * 7 * 24 * 3600 * 1000;
            let finished = finished(sql, product_id, since)?;
            let bugs = bug_lives(sql, product_id, since)?;
            Ok(Report {
                product: product.to_owned(),
                weeks,
                cycle_time: analytics::cycle_times(&finished),
                throughput: analytics::throughput(&finished, now, weeks),
                open_bugs: analytics::open_bugs(&bugs, now, weeks),
                closed_by: analytics::closed_by(&finished),
                vote_leaderboard: leaderboard(sql, dialect, product_id)?,
            })
        })
    }

    /// Fires `item.sla_breached` for critical bugs open longer than `sla`
    /// and `item.stale` for unfinished items untouched for `stale`, each
    /// once; how many fired.
    pub fn watch_deadlines(
        &self,
        sla: std::time::Duration,
        stale: std::time::Duration,
    ) -> Result<usize, HubError> {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
        self.tx(|sql| {
            let now = clock::now();
            let breached = sql.query(
                "SELECT i.id FROM items i WHERE i.kind = 'bug' AND i.priority = 'critical' \
                 AND i.status IN ('open', 'in_progress') AND i.created_at < ? \
                 AND NOT EXISTS (SELECT 1 FROM item_notices n WHERE n.item_id = i.id AND n.kind = 'sla') \
                 ORDER BY i.id LIMIT ?",
                &[Value::Int(now - ms(sla)), Value::Int(NOTICES_MAX)],
            )?;
            let stale_rows = sql.query(
                "SELECT i.id FROM items i WHERE i.status IN ('open', 'in_progress') AND i.updated_at < ? \
                 AND NOT EXISTS (SELECT 1 FROM item_notices n WHERE n.item_id = i.id AND n.kind = 'stale' \
                   AND n.at >= i.updated_at) ORDER BY i.id LIMIT ?",
                &[Value::Int(now - ms(stale)), Value::Int(NOTICES_MAX)],
            )?;
            let mut fired = 0;
            for (rows, kind, event) in [(breached, "sla", Event::SlaBreached), (stale_rows, "stale", Event::ItemStale)] {
                for row in rows {
                    let id = row.int(0)?;
                    let Some(stored) = load(sql, id)? else { continue };
                    sql.execute("DELETE FROM item_notices WHERE item_id = ? AND kind = ?", &[Value::Int(id), kind.into()])?;
                    sql.execute(
                        "INSERT INTO item_notices (item_id, kind, at) VALUES (?, ?, ?)",
                        &[Value::Int(id), kind.into(), Value::Int(now)],
                    )?;
                    let summary = match event {
                        Event::SlaBreached => format!("critical bug open since {}", stored.item.created_at),
                        _ => format!("no change since {}", stored.item.updated_at),
                    };
                    emit(sql, stored.product_id, event, &stored.item, json!({ "notice": summary }), &summary)?;
                    audit::record(sql, "hub", None, event.as_str(), Some(&stored.item.reference), "ok")?;
                    fired += 1;
                }
            }
            prune(sql, now)?;
            Ok(fired)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::db::Location;

    fn count(store: &Store, table: &str) -> i64 {
        store
            .tx(|sql| {
                Ok(sql
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                    .map_or(Ok(0), |r| r.int(0))?)
            })
            .unwrap()
    }

    #[test]
    fn old_audit_entries_idempotency_keys_and_sessions_are_pruned_and_recent_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().join("hub.db"))).unwrap();
        let now = clock::now();
        store
            .tx(|sql| {
                for at in [now - AUDIT_KEEP_MS - 1, now - 1000] {
                    sql.execute(
                        "INSERT INTO audit (at, actor, action, outcome) VALUES (?, 'a', 'item.create', 'ok')",
                        &[Value::Int(at)],
                    )?;
                }
                for (key, at) in [("old", now - IDEMPOTENCY_KEEP_MS - 1), ("new", now - 1000)] {
                    sql.execute(
                        "INSERT INTO idempotency (key_id, idem_key, request_hash, status, body, created_at) \
                         VALUES (1, ?, 'h', 201, '{}', ?)",
                        &[key.into(), Value::Int(at)],
                    )?;
                }
                let user = sql
                    .query_one(
                        "INSERT INTO users (name, password_hash, created_at) VALUES ('ann', 'x', 0) RETURNING id",
                        &[],
                    )?
                    .map_or(Ok(0), |r| r.int(0))?;
                let day = 24 * 3600 * 1000;
                // (token, last seen, expires, revoked): three ended days ago
                // (lifetime, idle, logout), one ended an hour ago, one open.
                let sessions = [
                    ("lifetime", now - 3 * day, now - 2 * day, None),
                    ("idle", now - 3 * day, now + day, None),
                    ("logout", now - 1000, now + day, Some(now - 2 * day)),
                    ("lately", now - 1000, now - 3600 * 1000, None),
                    ("open", now - 1000, now + day, None),
                ];
                for (token, seen, expires, revoked) in sessions {
                    sql.execute(
                        "INSERT INTO sessions (user_id, token_hash, created_at, last_seen_at, expires_at, revoked_at) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                        &[
                            Value::Int(user),
                            token.into(),
                            Value::Int(now - 4 * day),
                            Value::Int(seen),
                            Value::Int(expires),
                            revoked.map_or(Value::Null, Value::Int),
                        ],
                    )?;
                }
                prune(sql, now)
            })
            .unwrap();
        assert_eq!(count(&store, "audit"), 1, "the year-old entry went");
        assert_eq!(count(&store, "idempotency"), 1, "the day-old key went");
        assert_eq!(
            count(&store, "sessions"),
            2,
            "sessions ended days ago went; the one ended lately and the open one stay"
        );
    }
}
