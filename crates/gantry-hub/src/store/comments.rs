//! Comments on items: adding, editing and deleting one's own, reactions
//! (one of each emoji per actor), and `@name` mentions, which notify the
//! key or user named. Comments do not change an item's version (no
//! If-Match), but move its `updated_at`, so pollers see them.

use super::items::{Access, COMMENT_MAX, Stored, activity, fetch};
use super::watch::{notify, notify_watchers};
use super::{Store, audit, bounded};
use crate::clock;
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::model::{Comment, Emoji, NotificationKind, Reaction};

/// The most names one comment notifies.
const MENTIONS_MAX: usize = 20;

/// The newest `limit` comments of an item, oldest first, with reactions.
pub(super) fn read(sql: &mut dyn Sql, item: i64, limit: i64) -> Result<Vec<Comment>, HubError> {
    let rows = sql.query(
        "SELECT id, author, body, created_at, edited_at FROM comments \
         WHERE item_id = ? AND deleted_at IS NULL ORDER BY id DESC LIMIT ?",
        &[Value::Int(item), Value::Int(limit)],
    )?;
    let mut comments = Vec::with_capacity(rows.len());
    for r in rows.iter().rev() {
        let id = r.int(0)?;
        comments.push(Comment {
            id,
            author: r.text(1)?,
            body: r.text(2)?,
            created_at: clock::format(r.int(3)?),
            edited_at: r.opt_int(4)?.map(clock::format),
            reactions: reactions(sql, id)?,
        });
    }
    Ok(comments)
}

fn reactions(sql: &mut dyn Sql, comment: i64) -> Result<Vec<Reaction>, HubError> {
    let rows = sql.query(
        "SELECT emoji, actor FROM reactions WHERE comment_id = ? ORDER BY created_at, actor",
        &[Value::Int(comment)],
    )?;
    let mut out: Vec<Reaction> = Vec::new();
    for r in &rows {
        let emoji = super::items::parse("emoji", r.text(0)?, Emoji::parse)?;
        let actor = r.text(1)?;
        match out.iter_mut().find(|x| x.emoji == emoji) {
            Some(reaction) => {
                reaction.count += 1;
                reaction.actors.push(actor);
            }
            None => out.push(Reaction {
                emoji,
                count: 1,
                actors: vec![actor],
            }),
        }
    }
    // In the set's own order, as GitHub shows them: the order they were
    // given in is not known within a millisecond.
    out.sort_by_key(|r| Emoji::ALL.iter().position(|e| *e == r.emoji));
    Ok(out)
}

/// The names a comment mentions: `@name` at the start or after a
/// character that is not part of a name; names are letters, digits, `_`,
/// `-` and `.` (a trailing `.` ends the sentence, not the name).
pub fn mentions(body: &str) -> Vec<String> {
    let is_name = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut found: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in body.char_indices() {
        if c == '@' && !previous.is_some_and(|p| is_name(p) || p == '@') {
            let rest = &body[at + 1..];
            let end = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
            let name = rest[..end].trim_end_matches('.');
            if !name.is_empty() && name.len() <= 64 && !found.iter().any(|f| f == name) {
                found.push(name.to_owned());
            }
        }
        previous = Some(c);
    }
    found
}

/// Notifies the keys and users `body` mentions (and `before` did not),
/// except the author; the names notified.
fn notify_mentions(
    sql: &mut dyn Sql,
    access: &Access,
    stored: &Stored,
    comment: i64,
    body: &str,
    before: Option<&str>,
) -> Result<Vec<String>, HubError> {
    let old = before.map(mentions).unwrap_or_default();
    let mut notified = Vec::new();
    for name in mentions(body).into_iter().take(MENTIONS_MAX) {
        if name == access.actor.name || old.contains(&name) {
            continue;
        }
        let known = sql.query_one(
            "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL \
             UNION ALL SELECT 1 FROM users WHERE name = ?",
            &[name.as_str().into(), name.as_str().into()],
        )?;
        if known.is_none() {
            continue;
        }
        let summary = format!(
            "{} mentioned you on {}",
            access.actor.name, stored.item.reference
        );
        notify(
            sql,
            &name,
            NotificationKind::Mention,
            stored.item.id,
            Some(comment),
            &access.actor.name,
            &summary,
        )?;
        notified.push(name);
    }
    Ok(notified)
}

fn check_body(body: &str) -> Result<(), HubError> {
    bounded("body", body, COMMENT_MAX)?;
    if body.trim().is_empty() {
        return Err(HubError::invalid("`body` is empty"));
    }
    Ok(())
}

/// Replaces the text of the asker's own comment with `body`, or deletes
/// it (`None`); logs the text before, which it answers with the item.
fn rewrite(
    sql: &mut dyn Sql,
    access: &Access,
    which: &str,
    comment: i64,
    body: Option<&str>,
) -> Result<(Stored, String), HubError> {
    let stored = fetch(sql, access, which)?;
    let (before, _) = own_comment(sql, access, &stored, comment)?;
    let now = clock::now();
    let note = match body {
        Some(body) => {
            sql.execute(
                "UPDATE comments SET body = ?, edited_at = ? WHERE id = ?",
                &[body.into(), Value::Int(now), Value::Int(comment)],
            )?;
            format!("comment {comment} edited")
        }
        None => {
            sql.execute(
                "UPDATE comments SET deleted_at = ? WHERE id = ?",
                &[Value::Int(now), Value::Int(comment)],
            )?;
            format!("comment {comment} deleted")
        }
    };
    touch(sql, stored.item.id, now)?;
    activity(
        sql,
        stored.item.id,
        &access.actor.name,
        "comment",
        Some(&before),
        body,
        Some(&note),
    )?;
    Ok((stored, before))
}

/// A comment of the item, refused unless `access` wrote it.
fn own_comment(
    sql: &mut dyn Sql,
    access: &Access,
    stored: &Stored,
    comment: i64,
) -> Result<(String, i64), HubError> {
    let row = sql
        .query_one(
            "SELECT author, body, created_at FROM comments \
             WHERE id = ? AND item_id = ? AND deleted_at IS NULL",
            &[Value::Int(comment), Value::Int(stored.item.id)],
        )?
        .ok_or_else(|| {
            HubError::not_found(format!("comment {comment} of {}", stored.item.reference))
        })?;
    let author = row.text(0)?;
    if author != access.actor.name {
        return Err(HubError::Forbidden {
            message: format!("comment {comment} is `{author}`'s; only its author may change it"),
        });
    }
    Ok((row.text(1)?, row.int(2)?))
}

fn touch(sql: &mut dyn Sql, item: i64, now: i64) -> Result<(), HubError> {
    sql.execute(
        "UPDATE items SET updated_at = ? WHERE id = ?",
        &[Value::Int(now), Value::Int(item)],
    )?;
    Ok(())
}

fn json(status: u16, value: &impl serde::Serialize) -> Result<(u16, String), HubError> {
    let body = serde_json::to_string(value).map_err(|e| HubError::Internal(e.to_string()))?;
    Ok((status, body))
}

impl Store {
    /// Adds a comment; notifies whom it mentions and the item's watchers.
    pub fn add_comment(
        &self,
        access: &Access,
        which: &str,
        body: &str,
        idempotency_key: Option<&str>,
        raw: &[u8],
    ) -> Result<(u16, String), HubError> {
        check_body(body)?;
        let request = [b"POST comments".as_slice(), which.as_bytes(), raw];
        self.tx(|sql| {
            audit::idempotent(sql, access.key_id, idempotency_key, &request, |sql| {
                let stored = fetch(sql, access, which)?;
                let now = clock::now();
                let id = sql
                    .query_one(
                        "INSERT INTO comments (item_id, author, body, created_at) \
                         VALUES (?, ?, ?, ?) RETURNING id",
                        &[
                            Value::Int(stored.item.id),
                            access.actor.name.as_str().into(),
                            body.into(),
                            Value::Int(now),
                        ],
                    )?
                    .ok_or_else(|| HubError::Internal("INSERT returned no id".to_owned()))?
                    .int(0)?;
                touch(sql, stored.item.id, now)?;
                let mut skip = notify_mentions(sql, access, &stored, id, body, None)?;
                skip.push(access.actor.name.clone());
                let summary = format!(
                    "{} commented on {}",
                    access.actor.name, stored.item.reference
                );
                notify_watchers(
                    sql,
                    stored.item.id,
                    NotificationKind::Comment,
                    Some(id),
                    &access.actor.name,
                    &summary,
                    &skip,
                )?;
                access.audit(sql, "comment.add", &stored.item.reference)?;
                let comment = Comment {
                    id,
                    author: access.actor.name.clone(),
                    body: body.to_owned(),
                    created_at: clock::format(now),
                    edited_at: None,
                    reactions: Vec::new(),
                };
                super::outbox::comment_added(sql, stored.product_id, stored.item.id, &comment)?;
                json(201, &comment)
            })
        })
    }

    pub fn comments(&self, access: &Access, which: &str) -> Result<Vec<Comment>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            read(sql, stored.item.id, 1_000)
        })
    }

    /// Replaces the text of the asker's own comment; names it newly
    /// mentions are notified. The old and new text go to the activity log.
    pub fn edit_comment(
        &self,
        access: &Access,
        which: &str,
        comment: i64,
        body: &str,
    ) -> Result<Comment, HubError> {
        check_body(body)?;
        self.tx(|sql| {
            let (stored, before) = rewrite(sql, access, which, comment, Some(body))?;
            notify_mentions(sql, access, &stored, comment, body, Some(&before))?;
            access.audit(sql, "comment.edit", &stored.item.reference)?;
            one(sql, stored.item.id, comment)
        })
    }

    /// Deletes the asker's own comment; its text stays in the activity log.
    pub fn delete_comment(
        &self,
        access: &Access,
        which: &str,
        comment: i64,
    ) -> Result<(), HubError> {
        self.tx(|sql| {
            let (stored, _) = rewrite(sql, access, which, comment, None)?;
            access.audit(sql, "comment.delete", &stored.item.reference)
        })
    }

    /// Gives (`add`) or takes back a reaction; giving one twice is one.
    pub fn react(
        &self,
        access: &Access,
        which: &str,
        comment: i64,
        emoji: Emoji,
        add: bool,
    ) -> Result<Comment, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            one(sql, stored.item.id, comment)?;
            let params = [
                Value::Int(comment),
                access.actor.name.as_str().into(),
                emoji.as_str().into(),
            ];
            if add {
                sql.execute(
                    "INSERT INTO reactions (comment_id, actor, emoji, created_at) \
                     VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    &[
                        params[0].clone(),
                        params[1].clone(),
                        params[2].clone(),
                        Value::Int(clock::now()),
                    ],
                )?;
            } else {
                sql.execute(
                    "DELETE FROM reactions WHERE comment_id = ? AND actor = ? AND emoji = ?",
                    &params,
                )?;
            }
            let action = if add {
                "reaction.add"
            } else {
                "reaction.remove"
            };
            access.audit(sql, action, &stored.item.reference)?;
            one(sql, stored.item.id, comment)
        })
    }
}

/// One live comment of an item.
fn one(sql: &mut dyn Sql, item: i64, comment: i64) -> Result<Comment, HubError> {
    let row = sql
        .query_one(
            "SELECT id, author, body, created_at, edited_at FROM comments \
             WHERE id = ? AND item_id = ? AND deleted_at IS NULL",
            &[Value::Int(comment), Value::Int(item)],
        )?
        .ok_or_else(|| HubError::not_found(format!("comment {comment}")))?;
    Ok(Comment {
        id: row.int(0)?,
        author: row.text(1)?,
        body: row.text(2)?,
        created_at: clock::format(row.int(3)?),
        edited_at: row.opt_int(4)?.map(clock::format),
        reactions: reactions(sql, comment)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::mentions;

    #[test]
    fn mentions_are_names_after_an_at_sign() {
        assert_eq!(
            mentions("@ana, can you and @bo-2 look? cc @ana. mail x@example.com"),
            ["ana", "bo-2"]
        );
        assert_eq!(mentions("@@twice @ alone"), Vec::<String>::new());
        assert_eq!(mentions("(@carl.j)"), ["carl.j"]);
    }
}
