//! Watchers and notifications. A key or user watches an item; every change
//! in its activity log and every comment then notifies each watcher but
//! the one who made it. Mentions notify too (`comments`). Notifications
//! are listed per recipient, by name, and marked read.

use super::items::{Access, fetch};
use super::{PAGE_MAX, Store};
use crate::clock;
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::model::{Notification, NotificationKind};

/// The most watchers one item has.
const WATCHERS_MAX: i64 = 100;

/// Notifies one recipient.
pub(super) fn notify(
    sql: &mut dyn Sql,
    recipient: &str,
    kind: NotificationKind,
    item: i64,
    comment: Option<i64>,
    actor: &str,
    summary: &str,
) -> Result<(), HubError> {
    sql.execute(
        "INSERT INTO notifications (recipient, kind, item_id, comment_id, actor, summary, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            recipient.into(),
            kind.as_str().into(),
            Value::Int(item),
            comment.into(),
            actor.into(),
            summary.into(),
            Value::Int(clock::now()),
        ],
    )?;
    Ok(())
}

/// Notifies every watcher of `item` but `actor` and those in `skip`.
pub(super) fn notify_watchers(
    sql: &mut dyn Sql,
    item: i64,
    kind: NotificationKind,
    comment: Option<i64>,
    actor: &str,
    summary: &str,
    skip: &[String],
) -> Result<(), HubError> {
    let watchers = sql.query(
        "SELECT watcher FROM watchers WHERE item_id = ? AND watcher <> ?",
        &[Value::Int(item), actor.into()],
    )?;
    for row in watchers {
        let watcher = row.text(0)?;
        if !skip.contains(&watcher) {
            notify(sql, &watcher, kind, item, comment, actor, summary)?;
        }
    }
    Ok(())
}

/// A field change as one line: `status: open → done`, shortened.
pub(super) fn change_summary(field: &str, before: Option<&str>, after: Option<&str>) -> String {
    let short = |v: Option<&str>| -> String {
        let v = v.unwrap_or("—");
        let line = v.lines().next().unwrap_or("");
        let mut s: String = line.chars().take(60).collect();
        if s.len() < v.len() {
            s.push('…');
        }
        s
    };
    format!("{field}: {} → {}", short(before), short(after))
}

fn watchers(sql: &mut dyn Sql, item: i64) -> Result<Vec<String>, HubError> {
    sql.query(
        "SELECT watcher FROM watchers WHERE item_id = ? ORDER BY watcher",
        &[Value::Int(item)],
    )?
    .iter()
    .map(|r| Ok(r.text(0)?))
    .collect()
}

impl Store {
    /// Starts (`on`) or stops the asker watching the item; the watchers.
    pub fn watch(&self, access: &Access, which: &str, on: bool) -> Result<Vec<String>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            let id = stored.item.id;
            let me = access.actor.name.as_str();
            if on {
                let count = sql
                    .query_one(
                        "SELECT COUNT(*) FROM watchers WHERE item_id = ?",
                        &[Value::Int(id)],
                    )?
                    .map_or(Ok(0), |r| r.int(0))?;
                if count >= WATCHERS_MAX {
                    return Err(HubError::invalid(format!(
                        "{} has {WATCHERS_MAX} watchers, the most an item has",
                        stored.item.reference
                    )));
                }
                sql.execute(
                    "INSERT INTO watchers (item_id, watcher, created_at) VALUES (?, ?, ?) \
                     ON CONFLICT DO NOTHING",
                    &[Value::Int(id), me.into(), Value::Int(clock::now())],
                )?;
            } else {
                sql.execute(
                    "DELETE FROM watchers WHERE item_id = ? AND watcher = ?",
                    &[Value::Int(id), me.into()],
                )?;
            }
            let action = if on { "item.watch" } else { "item.unwatch" };
            access.audit(sql, action, &stored.item.reference)?;
            watchers(sql, id)
        })
    }

    pub fn watchers(&self, access: &Access, which: &str) -> Result<Vec<String>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            watchers(sql, stored.item.id)
        })
    }

    /// The asker's notifications, newest first: before the id `before`,
    /// only unread ones if `unread`; a scoped key sees its product's.
    pub fn notifications(
        &self,
        access: &Access,
        unread: bool,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Notification>, HubError> {
        let limit = limit.clamp(1, PAGE_MAX) as i64;
        self.tx(|sql| {
            let (reached, scoped) = access.scope.condition("i.product_id");
            let mut params = vec![
                access.actor.name.as_str().into(),
                Value::Int(before.unwrap_or(i64::MAX)),
                Value::Int(unread.into()),
            ];
            params.extend(scoped);
            params.push(Value::Int(limit));
            let rows = sql.query(
                &format!(
                    "SELECT n.id, n.kind, p.key, i.seq, n.comment_id, n.actor, n.summary, \
                     n.created_at, n.read_at FROM notifications n JOIN items i ON i.id = n.item_id \
                     JOIN products p ON p.id = i.product_id \
                     WHERE n.recipient = ? AND n.id < ? AND (? = 0 OR n.read_at IS NULL) \
                     AND {reached} ORDER BY n.id DESC LIMIT ?"
                ),
                &params,
            )?;
            rows.iter()
                .map(|r| {
                    Ok(Notification {
                        id: r.int(0)?,
                        kind: super::items::parse(
                            "notification",
                            r.text(1)?,
                            NotificationKind::parse,
                        )?,
                        item: format!("{}-{}", r.text(2)?, r.int(3)?),
                        comment: r.opt_int(4)?,
                        actor: r.text(5)?,
                        summary: r.text(6)?,
                        created_at: clock::format(r.int(7)?),
                        read: r.opt_int(8)?.is_some(),
                    })
                })
                .collect()
        })
    }

    /// Marks the asker's notifications up to id `up_to` read; how many.
    pub fn mark_read(&self, access: &Access, up_to: i64) -> Result<u64, HubError> {
        self.tx(|sql| {
            let (reached, scoped) = access.scope.condition("product_id");
            let mut params = vec![
                Value::Int(clock::now()),
                access.actor.name.as_str().into(),
                Value::Int(up_to),
            ];
            params.extend(scoped);
            Ok(sql.execute(
                &format!(
                    "UPDATE notifications SET read_at = ? WHERE recipient = ? AND id <= ? \
                     AND read_at IS NULL AND item_id IN (SELECT id FROM items WHERE {reached})"
                ),
                &params,
            )?)
        })
    }
}
