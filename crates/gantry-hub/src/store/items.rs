//! Items and what hangs off them: labels, checklist, links, pull requests,
//! comments and the activity log.
//!
//! Every change to an item goes through [`lock`]: one conditional UPDATE
//! that bumps the version only if it is still the one the client saw
//! (If-Match). That UPDATE takes the row, so the rest of the transaction
//! changes an item nobody else is changing; on PostgreSQL a racing UPDATE
//! waits for it and then finds the version moved, which is how exactly one
//! of many racing claims wins.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, Store, audit, bounded, one_line, products};
use crate::clock;
use crate::db::{DbError, Dialect, Row, Sql, Value};
use crate::error::HubError;
use crate::model::{
    Activity, BugFields, ChecklistEntry, Claim, Comment, Item, Kind, Label, Link, LinkKind,
    PrStatus, Priority, PullRequest, Source, Status, Visibility,
};

const TITLE_MAX: usize = 200;
const TEXT_MAX: usize = 50_000;
const SHORT_MAX: usize = 64;
const LABELS_MAX: usize = 20;
const CHECKLIST_MAX: usize = 100;
const CHECK_TEXT_MAX: usize = 500;
const LINKS_MAX: usize = 50;
const COMMENT_MAX: usize = 20_000;
const URL_MAX: usize = 2_000;
const DEFAULT_COLOR: &str = "#6b7280";
/// How long a claim lasts when the request does not say, and at most.
pub const CLAIM_DEFAULT_SECONDS: u64 = 30 * 60;
pub const CLAIM_MAX_SECONDS: u64 = 24 * 3600;
/// The most items one page lists.
pub const PAGE_MAX: usize = 100;

/// A label as a new item names it; a label new to the product is made with
/// `color` (or grey).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLabel {
    pub name: String,
    /// `#rrggbb`.
    pub color: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    pub kind: LinkKind,
    /// The other item: `SHOP-42` or its id.
    pub target: String,
}

/// `POST /api/agent/items`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// The product's key; a key scoped to one product may leave it out.
    pub product: Option<String>,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub priority: Option<Priority>,
    pub visibility: Option<Visibility>,
    /// `internal` (the default) or `auto_detected`; `user_submitted` is for
    /// the public submission form.
    pub source: Option<Source>,
    pub assignee: Option<String>,
    pub target_release: Option<String>,
    #[serde(default)]
    pub labels: Vec<NewLabel>,
    /// Acceptance criteria, unchecked.
    #[serde(default)]
    pub checklist: Vec<String>,
    /// Only for bugs.
    pub bug: Option<BugFields>,
    #[serde(default)]
    pub links: Vec<NewLink>,
}

/// `PATCH /api/agent/items/{id}`: the fields to change; a field left out
/// stays, `null` clears a field that may be empty.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemEdit {
    pub title: Option<String>,
    pub description: Option<String>,
    pub priority: Option<Priority>,
    pub visibility: Option<Visibility>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub assignee: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub target_release: Option<Option<String>>,
    /// The item's labels, all of them (replacing the ones it has).
    pub labels: Option<Vec<NewLabel>>,
    /// Only for bugs; each field given replaces the one stored.
    pub bug: Option<BugFields>,
}

/// A present `null` as `Some(None)`, so it can clear a field.
fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `PATCH .../status`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: Status,
    pub reason: Option<String>,
    /// What shows the change is right: test output, a URL, a log line.
    #[serde(default)]
    pub evidence: Vec<String>,
}

/// `PATCH .../pr`: a pull request linked to the item, matched by `url`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPr {
    pub url: String,
    pub number: Option<i64>,
    pub title: Option<String>,
    pub status: PrStatus,
    pub branch: Option<String>,
    pub commit: Option<String>,
}

/// `POST .../checklist`: entries to add, and entries (by id) to tick or untick.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecklistChange {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub check: Vec<i64>,
    #[serde(default)]
    pub uncheck: Vec<i64>,
}

/// What `GET /api/agent/items` selects.
#[derive(Clone, Debug, Default)]
pub struct ItemFilter {
    pub product: Option<String>,
    pub status: Vec<Status>,
    pub label: Option<String>,
    pub assignee: Option<String>,
    /// Words to find in the title or description (all of them, stemmed).
    pub text: Option<String>,
    /// Only items changed at or after this time (ms).
    pub since: Option<i64>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
    pub limit: usize,
}

/// One page of items, oldest change first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

const ITEM_COLUMNS: &str = "i.id, p.key, i.seq, i.kind, i.title, i.description, i.status, \
     i.priority, i.visibility, i.source, i.assignee, i.reporter, i.target_release, i.steps, \
     i.expected, i.actual, i.claimed_by, i.claim_expires_at, i.version, i.created_at, \
     i.updated_at, i.product_id";

/// An item as read, with what the API does not show.
struct Stored {
    item: Item,
    product_id: i64,
    /// The holder of an unexpired claim.
    holder: Option<String>,
}

fn parse<T>(what: &str, text: String, parse: fn(&str) -> Option<T>) -> Result<T, DbError> {
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

fn item_from(sql: &mut dyn Sql, row: &Row, now: i64) -> Result<Stored, HubError> {
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
    let labels = sql
        .query(
            "SELECT l.name, l.color FROM item_labels il JOIN labels l ON l.id = il.label_id \
             WHERE il.item_id = ? ORDER BY l.name",
            &[Value::Int(id)],
        )?
        .iter()
        .map(|r| {
            Ok(Label {
                name: r.text(0)?,
                color: r.text(1)?,
            })
        })
        .collect::<Result<_, DbError>>()?;
    let checklist = sql
        .query(
            "SELECT id, text, done FROM checklist WHERE item_id = ? ORDER BY position, id",
            &[Value::Int(id)],
        )?
        .iter()
        .map(|r| {
            Ok(ChecklistEntry {
                id: r.int(0)?,
                text: r.text(1)?,
                done: r.int(2)? != 0,
            })
        })
        .collect::<Result<_, DbError>>()?;
    let links = sql
        .query(
            "SELECT k.kind, p.key, t.seq FROM links k JOIN items t ON t.id = k.target_id \
             JOIN products p ON p.id = t.product_id WHERE k.item_id = ? ORDER BY k.id",
            &[Value::Int(id)],
        )?
        .iter()
        .map(|r| {
            Ok(Link {
                kind: parse("link kind", r.text(0)?, LinkKind::parse)?,
                target: format!("{}-{}", r.text(1)?, r.int(2)?),
            })
        })
        .collect::<Result<_, DbError>>()?;
    let pull_requests = sql
        .query(
            "SELECT url, number, title, status, branch, commit_sha, updated_at FROM pull_requests \
             WHERE item_id = ? ORDER BY id",
            &[Value::Int(id)],
        )?
        .iter()
        .map(|r| {
            Ok(PullRequest {
                url: r.text(0)?,
                number: r.opt_int(1)?,
                title: r.opt_text(2)?,
                status: parse("pull request status", r.text(3)?, PrStatus::parse)?,
                branch: r.opt_text(4)?,
                commit: r.opt_text(5)?,
                updated_at: clock::format(r.int(6)?),
            })
        })
        .collect::<Result<_, DbError>>()?;
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
            labels,
            checklist,
            bug: bug.transpose()?,
            links,
            pull_requests,
            claim,
            version: row.int(18)?,
            created_at: clock::format(row.int(19)?),
            updated_at: clock::format(row.int(20)?),
        },
    })
}

fn load(sql: &mut dyn Sql, id: i64) -> Result<Option<Stored>, HubError> {
    let row = sql.query_one(
        &format!("SELECT {ITEM_COLUMNS} FROM items i JOIN products p ON p.id = i.product_id WHERE i.id = ?"),
        &[Value::Int(id)],
    )?;
    row.map(|row| item_from(sql, &row, clock::now()))
        .transpose()
}

/// The id of the item a path names: its id (`17`) or reference (`SHOP-42`).
fn resolve(sql: &mut dyn Sql, which: &str) -> Result<i64, HubError> {
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
type FieldChange = (
    &'static str,
    &'static str,
    Option<String>,
    Option<Option<String>>,
);

/// Who asks, and what of the hub they may reach.
#[derive(Clone, Debug)]
pub struct Access {
    pub actor: Actor,
    /// For idempotency keys.
    pub key_id: i64,
    /// The one product a scoped key reaches.
    pub scope: Option<i64>,
}

impl Access {
    fn check(&self, stored: &Stored) -> Result<(), HubError> {
        match self.scope {
            Some(product) if product != stored.product_id => Err(HubError::Forbidden {
                message: format!(
                    "the key is scoped to another product than {}'s",
                    stored.item.reference
                ),
            }),
            _ => Ok(()),
        }
    }

    fn audit(&self, sql: &mut dyn Sql, action: &str, target: &str) -> Result<(), HubError> {
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

fn fetch(sql: &mut dyn Sql, access: &Access, which: &str) -> Result<Stored, HubError> {
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
fn lock(
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

fn activity(
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
    Ok(())
}

fn check_new(new: &NewItem) -> Result<(), HubError> {
    one_line("title", &new.title, TITLE_MAX)?;
    bounded("description", &new.description, TEXT_MAX)?;
    for (field, value) in [
        ("assignee", &new.assignee),
        ("target_release", &new.target_release),
    ] {
        if let Some(value) = value {
            one_line(field, value, SHORT_MAX)?;
        }
    }
    check_labels(&new.labels)?;
    check_checklist(&new.checklist, 0)?;
    if new.links.len() > LINKS_MAX {
        return Err(HubError::invalid(format!(
            "an item has at most {LINKS_MAX} links"
        )));
    }
    if new.source == Some(Source::UserSubmitted) {
        return Err(HubError::invalid(
            "`source` user_submitted is for the public submission form; use internal or auto_detected",
        ));
    }
    match (&new.bug, new.kind) {
        (Some(_), kind) if kind != Kind::Bug => Err(HubError::invalid(format!(
            "`bug` fields are for bugs; this item is a {kind}"
        ))),
        (Some(bug), _) => check_bug(bug),
        _ => Ok(()),
    }
}

fn check_bug(bug: &BugFields) -> Result<(), HubError> {
    for (field, value) in [
        ("bug.steps_to_reproduce", &bug.steps_to_reproduce),
        ("bug.expected", &bug.expected),
        ("bug.actual", &bug.actual),
    ] {
        bounded(field, value.as_deref().unwrap_or(""), TEXT_MAX / 5)?;
    }
    Ok(())
}

fn check_labels(labels: &[NewLabel]) -> Result<(), HubError> {
    if labels.len() > LABELS_MAX {
        return Err(HubError::invalid(format!(
            "an item has at most {LABELS_MAX} labels"
        )));
    }
    for label in labels {
        one_line("labels[].name", &label.name, 40)?;
        if let Some(color) = &label.color {
            check_color(color)?;
        }
    }
    Ok(())
}

/// Gives the item exactly these labels; a label new to the product is made
/// with its colour (or grey), an existing one keeps its own.
fn set_labels(
    sql: &mut dyn Sql,
    item: i64,
    product: i64,
    labels: &[NewLabel],
) -> Result<(), HubError> {
    sql.execute(
        "DELETE FROM item_labels WHERE item_id = ?",
        &[Value::Int(item)],
    )?;
    for label in labels {
        sql.execute(
            "INSERT INTO labels (product_id, name, color) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            &[
                Value::Int(product),
                label.name.as_str().into(),
                label.color.as_deref().unwrap_or(DEFAULT_COLOR).into(),
            ],
        )?;
        sql.execute(
            "INSERT INTO item_labels (item_id, label_id) SELECT ?, id FROM labels \
             WHERE product_id = ? AND name = ? ON CONFLICT DO NOTHING",
            &[
                Value::Int(item),
                Value::Int(product),
                label.name.as_str().into(),
            ],
        )?;
    }
    Ok(())
}

fn check_color(color: &str) -> Result<(), HubError> {
    let ok = color.len() == 7
        && color.starts_with('#')
        && color[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(HubError::Invalid {
            message: format!("label colour `{}` is not #rrggbb", color.escape_debug()),
            hint: Some("for example #d73a4a".to_owned()),
        })
    }
}

fn check_checklist(entries: &[String], existing: usize) -> Result<(), HubError> {
    if entries.len() + existing > CHECKLIST_MAX {
        return Err(HubError::invalid(format!(
            "a checklist has at most {CHECKLIST_MAX} entries"
        )));
    }
    for entry in entries {
        one_line("checklist[]", entry, CHECK_TEXT_MAX)?;
    }
    Ok(())
}

fn add_checklist(sql: &mut dyn Sql, item: i64, entries: &[String]) -> Result<(), HubError> {
    let next = sql
        .query_one(
            "SELECT COALESCE(MAX(position), 0) FROM checklist WHERE item_id = ?",
            &[Value::Int(item)],
        )?
        .map_or(Ok(0), |r| r.int(0))?;
    for (i, text) in entries.iter().enumerate() {
        sql.execute(
            "INSERT INTO checklist (item_id, position, text, done) VALUES (?, ?, ?, 0)",
            &[
                Value::Int(item),
                Value::Int(next + 1 + i as i64),
                text.into(),
            ],
        )?;
    }
    Ok(())
}

fn created(stored: &Item) -> Result<(u16, String), HubError> {
    let body = serde_json::to_string(stored).map_err(|e| HubError::Internal(e.to_string()))?;
    Ok((201, body))
}

impl Store {
    pub fn item(&self, access: &Access, which: &str) -> Result<Item, HubError> {
        self.tx(|sql| Ok(fetch(sql, access, which)?.item))
    }

    /// Creates an item; a retry with the same `idempotency_key` answers as
    /// the first did (status and JSON body).
    pub fn create_item(
        &self,
        access: &Access,
        new: &NewItem,
        idempotency_key: Option<&str>,
        raw: &[u8],
    ) -> Result<(u16, String), HubError> {
        check_new(new)?;
        self.tx(|sql| {
            audit::idempotent(sql, access.key_id, idempotency_key, &[b"POST items", raw], |sql| {
                let product_id = match (&new.product, access.scope) {
                    (Some(key), _) => products::id_of(sql, key)?,
                    (None, Some(scope)) => scope,
                    (None, None) => {
                        return Err(HubError::invalid(
                            "`product` is missing: this key reaches every product, so name one",
                        ));
                    }
                };
                if access.scope.is_some_and(|scope| scope != product_id) {
                    return Err(HubError::Forbidden {
                        message: "the key is scoped to another product".to_owned(),
                    });
                }
                let seq = sql
                    .query_one(
                        "UPDATE products SET next_seq = next_seq + 1 WHERE id = ? RETURNING next_seq",
                        &[Value::Int(product_id)],
                    )?
                    .ok_or_else(|| HubError::not_found("product"))?
                    .int(0)?;
                let now = clock::now();
                let bug = new.bug.clone().unwrap_or_default();
                let id = sql
                    .query_one(
                        "INSERT INTO items (product_id, seq, kind, title, description, status, priority, \
                         visibility, source, assignee, reporter, target_release, steps, expected, actual, \
                         version, created_at, updated_at) \
                         VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING id",
                        &[
                            Value::Int(product_id),
                            Value::Int(seq),
                            new.kind.as_str().into(),
                            new.title.as_str().into(),
                            new.description.as_str().into(),
                            new.priority.unwrap_or(Priority::Medium).as_str().into(),
                            new.visibility.unwrap_or(Visibility::Internal).as_str().into(),
                            new.source.unwrap_or(Source::Internal).as_str().into(),
                            new.assignee.as_deref().into(),
                            access.actor.name.as_str().into(),
                            new.target_release.as_deref().into(),
                            bug.steps_to_reproduce.into(),
                            bug.expected.into(),
                            bug.actual.into(),
                            Value::Int(now),
                            Value::Int(now),
                        ],
                    )?
                    .ok_or_else(|| HubError::Internal("INSERT returned no id".to_owned()))?
                    .int(0)?;
                set_labels(sql, id, product_id, &new.labels)?;
                add_checklist(sql, id, &new.checklist)?;
                for link in &new.links {
                    let target = fetch(sql, access, &link.target)?;
                    sql.execute(
                        "INSERT INTO links (item_id, kind, target_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        &[Value::Int(id), link.kind.as_str().into(), Value::Int(target.item.id)],
                    )?;
                }
                activity(sql, id, &access.actor.name, "created", None, Some(new.title.as_str()), None)?;
                let stored = load(sql, id)?.ok_or_else(|| HubError::Internal("a new item vanished".to_owned()))?;
                access.audit(sql, "item.create", &stored.item.reference)?;
                created(&stored.item)
            })
        })
    }

    pub fn list_items(&self, access: &Access, filter: &ItemFilter) -> Result<ItemPage, HubError> {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        if let Some(scope) = access.scope {
            clauses.push("i.product_id = ?".to_owned());
            params.push(Value::Int(scope));
        }
        if let Some(product) = &filter.product {
            clauses.push("p.key = ?".to_owned());
            params.push(product.as_str().into());
        }
        if !filter.status.is_empty() {
            let marks = vec!["?"; filter.status.len()].join(", ");
            clauses.push(format!("i.status IN ({marks})"));
            params.extend(filter.status.iter().map(|s| Value::from(s.as_str())));
        }
        if let Some(label) = &filter.label {
            clauses.push(
                "EXISTS (SELECT 1 FROM item_labels il JOIN labels l ON l.id = il.label_id \
                 WHERE il.item_id = i.id AND l.name = ?)"
                    .to_owned(),
            );
            params.push(label.as_str().into());
        }
        if let Some(assignee) = &filter.assignee {
            clauses.push("i.assignee = ?".to_owned());
            params.push(assignee.as_str().into());
        }
        if let Some(text) = &filter.text {
            let words = search_words(text)?;
            match self.dialect() {
                Dialect::Sqlite => {
                    // FTS5 has a query language of its own: each word is
                    // quoted, so the user's text is only ever words.
                    let query: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
                    clauses.push(
                        "i.id IN (SELECT rowid FROM items_fts WHERE items_fts MATCH ?)".to_owned(),
                    );
                    params.push(query.join(" ").into());
                }
                Dialect::Postgres => {
                    clauses.push("i.search @@ plainto_tsquery('english', ?)".to_owned());
                    params.push(words.join(" ").into());
                }
            }
        }
        if let Some(since) = filter.since {
            clauses.push("i.updated_at >= ?".to_owned());
            params.push(Value::Int(since));
        }
        if let Some(cursor) = &filter.cursor {
            let (at, id) = parse_cursor(cursor)?;
            clauses.push("(i.updated_at > ? OR (i.updated_at = ? AND i.id > ?))".to_owned());
            params.extend([Value::Int(at), Value::Int(at), Value::Int(id)]);
        }
        let limit = filter.limit.clamp(1, PAGE_MAX);
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        params.push(Value::Int(limit as i64 + 1));
        self.tx(|sql| {
            let rows = sql.query(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM items i JOIN products p ON p.id = i.product_id \
                     {filter_sql} ORDER BY i.updated_at, i.id LIMIT ?"
                ),
                &params,
            )?;
            let now = clock::now();
            let mut items = Vec::new();
            let mut last = None;
            for row in rows.iter().take(limit) {
                last = Some((row.int(20)?, row.int(0)?));
                items.push(item_from(sql, row, now)?.item);
            }
            let next_cursor = (rows.len() > limit)
                .then_some(last)
                .flatten()
                .map(|(at, id)| format!("{at}.{id}"));
            Ok(ItemPage { items, next_cursor })
        })
    }

    /// Claims the item for the asking agent until `seconds` from now; the
    /// holder may renew it, anybody may take an expired one.
    pub fn claim(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        seconds: u64,
    ) -> Result<Item, HubError> {
        if !(1..=CLAIM_MAX_SECONDS).contains(&seconds) {
            return Err(HubError::invalid(format!(
                "`seconds` must be 1 to {CLAIM_MAX_SECONDS}"
            )));
        }
        self.tx(|sql| {
            let before = fetch(sql, access, which)?;
            if before.item.status.category().is_finished() {
                return Err(HubError::Finished {
                    reference: before.item.reference.clone(),
                    status: before.item.status.to_string(),
                });
            }
            let stored = lock(sql, access, which, if_match, false)?;
            let expires = clock::now() + (seconds as i64) * 1000;
            sql.execute(
                "UPDATE items SET claimed_by = ?, claim_expires_at = ? WHERE id = ?",
                &[
                    access.actor.name.as_str().into(),
                    Value::Int(expires),
                    Value::Int(stored.item.id),
                ],
            )?;
            if stored.holder.as_deref() != Some(access.actor.name.as_str()) {
                activity(
                    sql,
                    stored.item.id,
                    &access.actor.name,
                    "claim",
                    stored.holder.as_deref(),
                    Some(&access.actor.name),
                    None,
                )?;
            }
            access.audit(sql, "item.claim", &stored.item.reference)?;
            reload(sql, stored.item.id)
        })
    }

    /// Gives up the asking agent's claim.
    pub fn release(&self, access: &Access, which: &str, if_match: &str) -> Result<Item, HubError> {
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            sql.execute(
                "UPDATE items SET claimed_by = NULL, claim_expires_at = NULL WHERE id = ?",
                &[Value::Int(stored.item.id)],
            )?;
            if stored.holder.is_some() {
                activity(
                    sql,
                    stored.item.id,
                    &access.actor.name,
                    "claim",
                    stored.holder.as_deref(),
                    None,
                    None,
                )?;
            }
            access.audit(sql, "item.release", &stored.item.reference)?;
            reload(sql, stored.item.id)
        })
    }

    pub fn change_status(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        change: &StatusChange,
    ) -> Result<Item, HubError> {
        if let Some(reason) = &change.reason {
            bounded("reason", reason, 2_000)?;
        }
        if change.evidence.len() > 20 {
            return Err(HubError::invalid("at most 20 pieces of `evidence`"));
        }
        for evidence in &change.evidence {
            bounded("evidence[]", evidence, 2_000)?;
        }
        let mut note = change.reason.clone().unwrap_or_default();
        for evidence in &change.evidence {
            note.push_str(&format!("\n- evidence: {evidence}"));
        }
        let note = note.trim().to_owned();
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            let finished = change.status.category().is_finished();
            sql.execute(
                "UPDATE items SET status = ? WHERE id = ?",
                &[change.status.as_str().into(), Value::Int(stored.item.id)],
            )?;
            if finished {
                sql.execute(
                    "UPDATE items SET claimed_by = NULL, claim_expires_at = NULL WHERE id = ?",
                    &[Value::Int(stored.item.id)],
                )?;
            }
            if stored.item.status != change.status {
                activity(
                    sql,
                    stored.item.id,
                    &access.actor.name,
                    "status",
                    Some(stored.item.status.as_str()),
                    Some(change.status.as_str()),
                    (!note.is_empty()).then_some(note.as_str()),
                )?;
            }
            access.audit(sql, "item.status", &stored.item.reference)?;
            reload(sql, stored.item.id)
        })
    }

    /// Changes the fields `edit` names, each change in the activity log.
    pub fn edit_item(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        edit: &ItemEdit,
    ) -> Result<Item, HubError> {
        if let Some(title) = &edit.title {
            one_line("title", title, TITLE_MAX)?;
        }
        if let Some(description) = &edit.description {
            bounded("description", description, TEXT_MAX)?;
        }
        for (field, value) in [
            ("assignee", &edit.assignee),
            ("target_release", &edit.target_release),
        ] {
            if let Some(Some(value)) = value {
                one_line(field, value, SHORT_MAX)?;
            }
        }
        if let Some(labels) = &edit.labels {
            check_labels(labels)?;
        }
        if let Some(bug) = &edit.bug {
            check_bug(bug)?;
        }
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            let item = &stored.item;
            if edit.bug.is_some() && item.kind != Kind::Bug {
                return Err(HubError::invalid(format!(
                    "`bug` fields are for bugs; {} is a {}",
                    item.reference, item.kind
                )));
            }
            let bug = item.bug.clone().unwrap_or_default();
            let given = edit.bug.clone().unwrap_or_default();
            // (column, field, before, after) for each field the edit names.
            let changes: [FieldChange; 9] = [
                (
                    "title",
                    "title",
                    Some(item.title.clone()),
                    edit.title.clone().map(Some),
                ),
                (
                    "description",
                    "description",
                    Some(item.description.clone()),
                    edit.description.clone().map(Some),
                ),
                (
                    "priority",
                    "priority",
                    Some(item.priority.to_string()),
                    edit.priority.map(|p| Some(p.to_string())),
                ),
                (
                    "visibility",
                    "visibility",
                    Some(item.visibility.to_string()),
                    edit.visibility.map(|v| Some(v.to_string())),
                ),
                (
                    "assignee",
                    "assignee",
                    item.assignee.clone(),
                    edit.assignee.clone(),
                ),
                (
                    "target_release",
                    "target_release",
                    item.target_release.clone(),
                    edit.target_release.clone(),
                ),
                (
                    "steps",
                    "bug.steps_to_reproduce",
                    bug.steps_to_reproduce,
                    given.steps_to_reproduce.map(Some),
                ),
                (
                    "expected",
                    "bug.expected",
                    bug.expected,
                    given.expected.map(Some),
                ),
                ("actual", "bug.actual", bug.actual, given.actual.map(Some)),
            ];
            for (column, field, before, after) in changes {
                let Some(after) = after else { continue };
                if after == before {
                    continue;
                }
                sql.execute(
                    &format!("UPDATE items SET {column} = ? WHERE id = ?"),
                    &[after.as_deref().into(), Value::Int(item.id)],
                )?;
                activity(
                    sql,
                    item.id,
                    &access.actor.name,
                    field,
                    before.as_deref(),
                    after.as_deref(),
                    None,
                )?;
            }
            if let Some(labels) = &edit.labels {
                let names = |names: Vec<&str>| names.join(", ");
                let before = names(item.labels.iter().map(|l| l.name.as_str()).collect());
                let mut after: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
                after.sort_unstable();
                after.dedup();
                let after = names(after);
                if before != after {
                    set_labels(sql, item.id, stored.product_id, labels)?;
                    activity(
                        sql,
                        item.id,
                        &access.actor.name,
                        "labels",
                        Some(&before),
                        Some(&after),
                        None,
                    )?;
                }
            }
            access.audit(sql, "item.edit", &item.reference)?;
            reload(sql, item.id)
        })
    }

    pub fn link_pr(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        pr: &NewPr,
    ) -> Result<Item, HubError> {
        bounded("url", &pr.url, URL_MAX)?;
        if !(pr.url.starts_with("https://") || pr.url.starts_with("http://")) {
            return Err(HubError::invalid(
                "`url` must be an http:// or https:// URL",
            ));
        }
        one_line("url", &pr.url, URL_MAX)?;
        for (field, value) in [
            ("title", &pr.title),
            ("branch", &pr.branch),
            ("commit", &pr.commit),
        ] {
            if let Some(value) = value {
                one_line(field, value, TITLE_MAX)?;
            }
        }
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            let id = stored.item.id;
            let before = sql
                .query_one(
                    "SELECT status FROM pull_requests WHERE item_id = ? AND url = ?",
                    &[Value::Int(id), pr.url.as_str().into()],
                )?
                .map(|r| r.text(0))
                .transpose()?;
            let values = [
                Value::from(pr.number),
                pr.title.as_deref().into(),
                pr.status.as_str().into(),
                pr.branch.as_deref().into(),
                pr.commit.as_deref().into(),
                Value::Int(clock::now()),
                Value::Int(id),
                pr.url.as_str().into(),
            ];
            if before.is_some() {
                sql.execute(
                    "UPDATE pull_requests SET number = ?, title = ?, status = ?, branch = ?, commit_sha = ?, \
                     updated_at = ? WHERE item_id = ? AND url = ?",
                    &values,
                )?;
            } else {
                sql.execute(
                    "INSERT INTO pull_requests (number, title, status, branch, commit_sha, updated_at, item_id, url) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    &values,
                )?;
            }
            let after = format!("{} {}", pr.url, pr.status);
            let before = before.map(|status| format!("{} {status}", pr.url));
            activity(sql, id, &access.actor.name, "pull_request", before.as_deref(), Some(&after), None)?;
            access.audit(sql, "item.pr", &stored.item.reference)?;
            reload(sql, id)
        })
    }

    pub fn change_checklist(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        change: &ChecklistChange,
        idempotency_key: Option<&str>,
        raw: &[u8],
    ) -> Result<(u16, String), HubError> {
        if change.check.len() + change.uncheck.len() > CHECKLIST_MAX {
            return Err(HubError::invalid(format!(
                "at most {CHECKLIST_MAX} entries change at once"
            )));
        }
        let request = [b"POST checklist".as_slice(), which.as_bytes(), raw];
        self.tx(|sql| {
            audit::idempotent(sql, access.key_id, idempotency_key, &request, |sql| {
                let stored = lock(sql, access, which, if_match, false)?;
                let id = stored.item.id;
                check_checklist(&change.add, stored.item.checklist.len())?;
                add_checklist(sql, id, &change.add)?;
                for text in &change.add {
                    activity(
                        sql,
                        id,
                        &access.actor.name,
                        "checklist",
                        None,
                        Some(text),
                        None,
                    )?;
                }
                for (entries, done) in [(&change.check, true), (&change.uncheck, false)] {
                    for entry in entries {
                        let Some(old) = stored.item.checklist.iter().find(|e| e.id == *entry)
                        else {
                            return Err(HubError::invalid(format!(
                                "checklist entry {entry} is not {}'s",
                                stored.item.reference
                            )));
                        };
                        sql.execute(
                            "UPDATE checklist SET done = ? WHERE id = ?",
                            &[Value::Int(done.into()), Value::Int(*entry)],
                        )?;
                        if old.done != done {
                            let mark = |d: bool| if d { "[x] " } else { "[ ] " };
                            activity(
                                sql,
                                id,
                                &access.actor.name,
                                "checklist",
                                Some(&format!("{}{}", mark(old.done), old.text)),
                                Some(&format!("{}{}", mark(done), old.text)),
                                None,
                            )?;
                        }
                    }
                }
                access.audit(sql, "item.checklist", &stored.item.reference)?;
                let item = reload(sql, id)?;
                let body =
                    serde_json::to_string(&item).map_err(|e| HubError::Internal(e.to_string()))?;
                Ok((200, body))
            })
        })
    }

    /// Adds a comment. Comments do not change the item's version (no
    /// If-Match), but do move its `updated_at`, so pollers see them.
    pub fn add_comment(
        &self,
        access: &Access,
        which: &str,
        body: &str,
        idempotency_key: Option<&str>,
        raw: &[u8],
    ) -> Result<(u16, String), HubError> {
        bounded("body", body, COMMENT_MAX)?;
        if body.trim().is_empty() {
            return Err(HubError::invalid("`body` is empty"));
        }
        let request = [b"POST comments".as_slice(), which.as_bytes(), raw];
        self.tx(|sql| {
            audit::idempotent(sql, access.key_id, idempotency_key, &request, |sql| {
                let stored = fetch(sql, access, which)?;
                let now = clock::now();
                let id = sql
                    .query_one(
                        "INSERT INTO comments (item_id, author, body, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                        &[Value::Int(stored.item.id), access.actor.name.as_str().into(), body.into(), Value::Int(now)],
                    )?
                    .ok_or_else(|| HubError::Internal("INSERT returned no id".to_owned()))?
                    .int(0)?;
                sql.execute(
                    "UPDATE items SET updated_at = ? WHERE id = ?",
                    &[Value::Int(now), Value::Int(stored.item.id)],
                )?;
                access.audit(sql, "comment.add", &stored.item.reference)?;
                let comment = Comment {
                    id,
                    author: access.actor.name.clone(),
                    body: body.to_owned(),
                    created_at: clock::format(now),
                };
                let body = serde_json::to_string(&comment).map_err(|e| HubError::Internal(e.to_string()))?;
                Ok((201, body))
            })
        })
    }

    pub fn comments(&self, access: &Access, which: &str) -> Result<Vec<Comment>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            comments(sql, stored.item.id, 1_000)
        })
    }

    pub fn activity(&self, access: &Access, which: &str) -> Result<Vec<Activity>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            sql.query(
                "SELECT actor, at, field, before, after, note FROM activity WHERE item_id = ? ORDER BY id LIMIT 1000",
                &[Value::Int(stored.item.id)],
            )?
            .iter()
            .map(|r| {
                Ok(Activity {
                    actor: r.text(0)?,
                    at: clock::format(r.int(1)?),
                    field: r.text(2)?,
                    before: r.opt_text(3)?,
                    after: r.opt_text(4)?,
                    note: r.opt_text(5)?,
                })
            })
            .collect()
        })
    }

    /// The item as one markdown document for an LLM's prompt: title,
    /// description, acceptance criteria, pull requests and comments.
    pub fn context(&self, access: &Access, which: &str) -> Result<String, HubError> {
        let (item, comments) = self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            let comments = comments(sql, stored.item.id, 100)?;
            Ok((stored.item, comments))
        })?;
        Ok(crate::context::render(&item, &comments))
    }
}

fn comments(sql: &mut dyn Sql, item: i64, limit: i64) -> Result<Vec<Comment>, HubError> {
    // The newest `limit`, shown oldest first.
    let mut comments = sql
        .query(
            "SELECT id, author, body, created_at FROM comments WHERE item_id = ? AND deleted_at IS NULL \
             ORDER BY id DESC LIMIT ?",
            &[Value::Int(item), Value::Int(limit)],
        )?
        .iter()
        .map(|r| {
            Ok(Comment {
                id: r.int(0)?,
                author: r.text(1)?,
                body: r.text(2)?,
                created_at: clock::format(r.int(3)?),
            })
        })
        .collect::<Result<Vec<_>, HubError>>()?;
    comments.reverse();
    Ok(comments)
}

fn reload(sql: &mut dyn Sql, id: i64) -> Result<Item, HubError> {
    Ok(load(sql, id)?
        .ok_or_else(|| HubError::Internal("a changed item vanished".to_owned()))?
        .item)
}

/// The words of a search: letters and digits, at most 10 of them.
fn search_words(text: &str) -> Result<Vec<String>, HubError> {
    bounded("q", text, 200)?;
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.is_empty() || words.len() > 10 {
        return Err(HubError::Invalid {
            message: format!("`q` has {} words; a search takes 1 to 10", words.len()),
            hint: Some("words are letters and digits; punctuation is ignored".to_owned()),
        });
    }
    Ok(words)
}

fn parse_cursor(cursor: &str) -> Result<(i64, i64), HubError> {
    let bad = || HubError::Invalid {
        message: format!(
            "`cursor` `{}` is not one this hub gave",
            cursor.escape_debug()
        ),
        hint: Some("pass next_cursor from the previous page as it was".to_owned()),
    };
    let (at, id) = cursor.split_once('.').ok_or_else(bad)?;
    Ok((
        at.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
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
