//! An item as stored: reading it whole (labels, checklist, links, pull
//! requests), who may reach it ([`Access`]), the activity log, and the one
//! way to change it. `fields`, `work` and `list` build on these.
//!
//! Every change to an item goes through [`lock`]: one conditional UPDATE
//! that bumps the version only if it is still the one the client saw
//! (If-Match). That UPDATE takes the row, so the rest of the transaction
//! changes an item nobody else is changing; on PostgreSQL a racing UPDATE
//! waits for it and then finds the version moved, which is how exactly one
//! of many racing claims wins.

use super::extras::Extras;
use super::{Actor, audit};
use crate::clock;
use crate::db::{DbError, Row, Sql, Value};
use crate::error::HubError;
use crate::model::{BugFields, Claim, Item, Kind, Priority, Source, Status, Visibility};

pub(super) const TITLE_MAX: usize = 200;
pub(super) const TEXT_MAX: usize = 50_000;
pub(super) const SHORT_MAX: usize = 64;
pub(super) const LABELS_MAX: usize = 20;
pub(super) const CHECKLIST_MAX: usize = 100;
pub(super) const CHECK_TEXT_MAX: usize = 500;
pub(super) const LINKS_MAX: usize = 50;
pub(super) const COMMENT_MAX: usize = 20_000;
pub(super) const URL_MAX: usize = 2_000;
pub(super) const DEFAULT_COLOR: &str = "#6b7280";
/// How long a claim lasts when the request does not say, and at most.
pub const CLAIM_DEFAULT_SECONDS: u64 = 30 * 60;
pub const CLAIM_MAX_SECONDS: u64 = 24 * 3600;
/// The most items one page lists.
pub const PAGE_MAX: usize = 100;

pub(super) const ITEM_COLUMNS: &str = "i.id, p.key, i.seq, i.kind, i.title, i.description, i.status, \
     i.priority, i.visibility, i.source, i.assignee, i.reporter, i.target_release, i.steps, \
     i.expected, i.actual, i.claimed_by, i.claim_expires_at, i.version, i.created_at, \
     i.updated_at, i.product_id, i.estimate, i.due_date, i.environment, i.affected_version, \
     i.fixed_version, i.parent_id, i.milestone_id";

/// An item as read, with what the API does not show.
pub(super) struct Stored {
    pub(super) item: Item,
    pub(super) product_id: i64,
    /// The holder of an unexpired claim.
    pub(super) holder: Option<String>,
}

pub(super) fn parse<T>(
    what: &str,
    text: String,
    parse: fn(&str) -> Option<T>,
) -> Result<T, DbError> {
    parse(&text).ok_or_else(|| DbError::Shape(format!("{what} `{text}`")))
}

/// `tracker-17-fix-the-login-page`: a pull request from a branch that
/// starts `tracker-17` links to item 17.
pub fn branch_name(id: i64, title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        format!("tracker-{id}")
    } else {
        format!("tracker-{id}-{slug}")
    }
}

pub(super) fn item_from(sql: &mut dyn Sql, row: &Row, now: i64) -> Result<Stored, HubError> {
    items_from(sql, &[row], now)?
        .pop()
        .ok_or_else(|| HubError::from(DbError::Shape("no item read".to_owned())))
}

/// Items as read with [`ITEM_COLUMNS`], their extras read together.
pub(super) fn items_from(
    sql: &mut dyn Sql,
    rows: &[&Row],
    now: i64,
) -> Result<Vec<Stored>, HubError> {
    let mut extras = Extras::load(sql, rows)?;
    rows.iter()
        .map(|row| stored(row, now, &mut extras))
        .collect()
}

fn stored(row: &Row, now: i64, extras: &mut Extras) -> Result<Stored, HubError> {
    let id = row.int(0)?;
    let product = row.text(1)?;
    let kind = parse("type", row.text(3)?, Kind::parse)?;
    let status = parse("status", row.text(6)?, Status::parse)?;
    let title = row.text(4)?;
    let claim = match (row.opt_text(16)?, row.opt_int(17)?) {
        (Some(holder), Some(expires)) if expires > now => Some(Claim {
            holder,
            expires_at: clock::format(expires),
        }),
        _ => None,
    };
    let bug = (kind == Kind::Bug).then(|| -> Result<BugFields, DbError> {
        Ok(BugFields {
            steps_to_reproduce: row.opt_text(13)?,
            expected: row.opt_text(14)?,
            actual: row.opt_text(15)?,
        })
    });
    Ok(Stored {
        holder: claim.as_ref().map(|c| c.holder.clone()),
        product_id: row.int(21)?,
        item: Item {
            id,
            reference: format!("{product}-{}", row.int(2)?),
            product,
            kind,
            branch: branch_name(id, &title),
            title,
            description: row.text(5)?,
            status,
            status_category: status.category(),
            priority: parse("priority", row.text(7)?, Priority::parse)?,
            visibility: parse("visibility", row.text(8)?, Visibility::parse)?,
            source: parse("source", row.text(9)?, Source::parse)?,
            assignee: row.opt_text(10)?,
            reporter: row.text(11)?,
            target_release: row.opt_text(12)?,
            labels: extras.labels.remove(&id).unwrap_or_default(),
            checklist: extras.checklist.remove(&id).unwrap_or_default(),
            bug: bug.transpose()?,
            links: extras.links.remove(&id).unwrap_or_default(),
            pull_requests: extras.pull_requests.remove(&id).unwrap_or_default(),
            estimate: row.opt_int(22)?,
            due_date: row.opt_text(23)?,
            environment: row.opt_text(24)?,
            affected_version: row.opt_text(25)?,
            fixed_version: row.opt_text(26)?,
            milestone: row
                .opt_int(28)?
                .and_then(|m| extras.milestones.get(&m).cloned()),
            parent: row
                .opt_int(27)?
                .and_then(|p| extras.parents.get(&p).cloned()),
            subtasks: extras.subtasks.remove(&id).unwrap_or_default(),
            custom: extras.custom.remove(&id).unwrap_or_default(),
            claim,
            version: row.int(18)?,
            created_at: clock::format(row.int(19)?),
            updated_at: clock::format(row.int(20)?),
        },
    })
}

pub(super) fn load(sql: &mut dyn Sql, id: i64) -> Result<Option<Stored>, HubError> {
    let row = sql.query_one(
        &format!("SELECT {ITEM_COLUMNS} FROM items i JOIN products p ON p.id = i.product_id WHERE i.id = ?"),
        &[Value::Int(id)],
    )?;
    row.map(|row| item_from(sql, &row, clock::now()))
        .transpose()
}

/// The id of the item a path names: its id (`17`) or reference (`SHOP-42`).
pub(super) fn resolve(sql: &mut dyn Sql, which: &str) -> Result<i64, HubError> {
    let missing = || HubError::not_found(format!("item `{}`", which.escape_debug()));
    if which.len() > 32 {
        return Err(missing());
    }
    if let Ok(id) = which.parse::<i64>() {
        return Ok(id);
    }
    let (product, seq) = which.rsplit_once('-').ok_or_else(missing)?;
    let seq: i64 = seq.parse().map_err(|_| missing())?;
    let row = sql.query_one(
        "SELECT i.id FROM items i JOIN products p ON p.id = i.product_id WHERE p.key = ? AND i.seq = ?",
        &[product.to_ascii_uppercase().into(), Value::Int(seq)],
    )?;
    Ok(row.ok_or_else(missing)?.int(0)?)
}

/// One field of an edit: its column, its name in the activity log, the
/// value before, and the value asked for (`None`: left alone).
pub(super) type FieldChange = (
    &'static str,
    &'static str,
    Option<String>,
    Option<Option<String>>,
);

/// Who asks, and what of the hub they may reach.
#[derive(Clone, Debug)]
pub struct Access {
    pub actor: Actor,
    /// For idempotency keys: a key's id, or a user's id negated.
    pub key_id: i64,
    /// The products the request may reach with the permission it needs.
    pub scope: Reach,
}

/// Which products a request reaches: every one (an unscoped key, a user
/// with a hub-wide role), or some (a scoped key; a user's roles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    Every,
    Products(Vec<i64>),
}

impl Reach {
    pub fn allows(&self, product: i64) -> bool {
        match self {
            Reach::Every => true,
            Reach::Products(ids) => ids.contains(&product),
        }
    }

    /// A SQL condition that holds for rows whose `column` is a product
    /// reached, and its parameters.
    pub fn condition(&self, column: &str) -> (String, Vec<Value>) {
        match self {
            Reach::Every => ("1 = 1".to_owned(), Vec::new()),
            // `IN ()` is not SQL: a condition that holds for none.
            Reach::Products(ids) if ids.is_empty() => ("1 = 0".to_owned(), Vec::new()),
            Reach::Products(ids) => (
                format!("{column} IN ({})", vec!["?"; ids.len()].join(", ")),
                ids.iter().map(|id| Value::Int(*id)).collect(),
            ),
        }
    }

    /// The one product reached, when there is exactly one.
    pub fn only(&self) -> Option<i64> {
        match self {
            Reach::Products(ids) if ids.len() == 1 => ids.first().copied(),
            _ => None,
        }
    }
}

impl Access {
    /// Refuses a product a scoped key does not reach.
    pub(super) fn reach_product(&self, product: i64) -> Result<(), HubError> {
        if self.scope.allows(product) {
            Ok(())
        } else {
            Err(HubError::Forbidden {
                message: format!("`{}` may not reach that product", self.actor.name),
            })
        }
    }

    pub(super) fn check(&self, stored: &Stored) -> Result<(), HubError> {
        if self.scope.allows(stored.product_id) {
            Ok(())
        } else {
            // Not the item's reference: asked by number, that would tell
            // the product's key and its count of items.
            Err(HubError::Forbidden {
                message: format!(
                    "the item is in a product `{}` may not reach",
                    self.actor.name
                ),
            })
        }
    }

    pub(super) fn audit(
        &self,
        sql: &mut dyn Sql,
        action: &str,
        target: &str,
    ) -> Result<(), HubError> {
        audit::record(
            sql,
            &self.actor.name,
            self.actor.client.as_deref(),
            action,
            Some(target),
            "ok",
        )
    }
}

pub(super) fn fetch(sql: &mut dyn Sql, access: &Access, which: &str) -> Result<Stored, HubError> {
    let id = resolve(sql, which)?;
    let stored = load(sql, id)?
        .ok_or_else(|| HubError::not_found(format!("item `{}`", which.escape_debug())))?;
    access.check(&stored)?;
    Ok(stored)
}

/// Parses an If-Match value: `"7"`, `W/"7"` or `7`.
pub fn parse_etag(text: &str) -> Option<i64> {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.trim_matches('"').parse().ok()
}

/// Takes the item for a change at the version the client saw: one
/// conditional UPDATE bumps its version. Refuses when another agent holds
/// its claim (unless `ignore_claim`) or when the version moved.
pub(super) fn lock(
    sql: &mut dyn Sql,
    access: &Access,
    which: &str,
    if_match: &str,
    ignore_claim: bool,
) -> Result<Stored, HubError> {
    let stored = fetch(sql, access, which)?;
    let expected = parse_etag(if_match).ok_or_else(|| HubError::Invalid {
        message: format!(
            "If-Match `{}` is not an ETag of this hub",
            if_match.escape_debug()
        ),
        hint: Some("send the ETag header of the item's last GET, as it was".to_owned()),
    })?;
    let refuse = |stored: &Stored| -> HubError {
        match (&stored.holder, &stored.item.claim) {
            (Some(holder), Some(claim)) if !ignore_claim && *holder != access.actor.name => {
                HubError::Claimed {
                    reference: stored.item.reference.clone(),
                    holder: holder.clone(),
                    expires_at: claim.expires_at.clone(),
                }
            }
            _ => HubError::Stale {
                given: if_match.to_owned(),
                current: stored.item.version,
            },
        }
    };
    if stored.item.version != expected
        || (!ignore_claim
            && stored
                .holder
                .as_ref()
                .is_some_and(|h| *h != access.actor.name))
    {
        return Err(refuse(&stored));
    }
    let changed = sql.execute(
        "UPDATE items SET version = version + 1, updated_at = ? WHERE id = ? AND version = ?",
        &[
            Value::Int(clock::now()),
            Value::Int(stored.item.id),
            Value::Int(expected),
        ],
    )?;
    if changed == 0 {
        // Another change won the row meanwhile: say whose, as it is now.
        let now = load(sql, stored.item.id)?.ok_or_else(|| HubError::not_found(which))?;
        return Err(refuse(&now));
    }
    Ok(stored)
}

pub(super) fn activity(
    sql: &mut dyn Sql,
    item: i64,
    actor: &str,
    field: &str,
    before: Option<&str>,
    after: Option<&str>,
    note: Option<&str>,
) -> Result<(), HubError> {
    sql.execute(
        "INSERT INTO activity (item_id, actor, at, field, before, after, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            Value::Int(item),
            actor.into(),
            Value::Int(clock::now()),
            field.into(),
            before.into(),
            after.into(),
            note.into(),
        ],
    )?;
    if field != "created" {
        let summary = super::watch::change_summary(field, before, after);
        super::watch::notify_watchers(
            sql,
            item,
            crate::model::NotificationKind::Change,
            None,
            actor,
            &summary,
            &[],
        )?;
    }
    Ok(())
}

/// Applies one field's change to the item (its column and a line of
/// activity), unless the change leaves the field alone or as it is.
pub(super) fn apply_change(
    sql: &mut dyn Sql,
    item: i64,
    actor: &str,
    (column, field, before, after): FieldChange,
    note: Option<&str>,
) -> Result<(), HubError> {
    let Some(after) = after else { return Ok(()) };
    if after == before {
        return Ok(());
    }
    sql.execute(
        &format!("UPDATE items SET {column} = ? WHERE id = ?"),
        &[after.as_deref().into(), Value::Int(item)],
    )?;
    activity(
        sql,
        item,
        actor,
        field,
        before.as_deref(),
        after.as_deref(),
        note,
    )
}

pub(super) fn reload(sql: &mut dyn Sql, id: i64) -> Result<Item, HubError> {
    Ok(load(sql, id)?
        .ok_or_else(|| HubError::Internal("a changed item vanished".to_owned()))?
        .item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_slugs_of_the_title() {
        assert_eq!(
            branch_name(17, "Fix the login page!"),
            "tracker-17-fix-the-login-page"
        );
        assert_eq!(branch_name(3, "???"), "tracker-3");
        assert!(branch_name(9, &"long title ".repeat(20)).len() <= "tracker-9-".len() + 41);
    }

    #[test]
    fn etags_parse_strong_weak_and_bare() {
        assert_eq!(parse_etag("\"7\""), Some(7));
        assert_eq!(parse_etag("W/\"7\""), Some(7));
        assert_eq!(parse_etag("7"), Some(7));
        assert_eq!(parse_etag("*"), None);
    }
}
