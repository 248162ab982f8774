//! Making items and editing their fields: titles, descriptions, labels,
//! bug fields, checklists and links, each bounded.

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use super::items::{
    Access, CHECK_TEXT_MAX, CHECKLIST_MAX, DEFAULT_COLOR, FieldChange, LABELS_MAX, LINKS_MAX,
    SHORT_MAX, Stored, TEXT_MAX, TITLE_MAX, activity, apply_change, fetch, load, lock, reload,
};
use super::links::{NewLink, add_link};
use super::products::milestone_id;
use super::{Store, audit, bounded, one_line, products};
use crate::clock;
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::model::{BugFields, Item, Kind, Priority, Source, Visibility};

/// A label as a new item names it; a label new to the product is made with
/// `color` (or grey).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLabel {
    pub name: String,
    /// `#rrggbb`.
    pub color: Option<String>,
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
    /// Story points or hours, 0 to 10000.
    pub estimate: Option<i64>,
    /// `YYYY-MM-DD`.
    pub due_date: Option<String>,
    pub environment: Option<String>,
    pub affected_version: Option<String>,
    pub fixed_version: Option<String>,
    /// Makes this a sub-task of that item (`SHOP-7`), which must be of the
    /// same product and not a sub-task itself.
    pub parent: Option<String>,
    /// One of the product's milestones, by name.
    pub milestone: Option<String>,
    /// Values of the product's custom fields, by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub custom: BTreeMap<String, Option<serde_json::Value>>,
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
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    pub estimate: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub due_date: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub environment: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub affected_version: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub fixed_version: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub milestone: Option<Option<String>>,
    /// `null` makes the item a task of its own again.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub parent: Option<Option<String>>,
    /// Custom field values to set, by name; `null` clears one.
    #[schema(value_type = Option<Object>)]
    pub custom: Option<BTreeMap<String, Option<serde_json::Value>>>,
}

/// A present `null` as `Some(None)`, so it can clear a field.
pub(super) fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
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
    check_planning(
        new.estimate,
        new.due_date.as_deref(),
        [
            ("environment", new.environment.as_deref()),
            ("affected_version", new.affected_version.as_deref()),
            ("fixed_version", new.fixed_version.as_deref()),
        ],
    )?;
    if new.links.len() > LINKS_MAX {
        return Err(HubError::invalid(format!(
            "an item has at most {LINKS_MAX} links"
        )));
    }
    super::custom::check_values(&new.custom)?;
    match (&new.bug, new.kind) {
        (Some(_), kind) if kind != Kind::Bug => Err(HubError::invalid(format!(
            "`bug` fields are for bugs; this item is a {kind}"
        ))),
        (Some(bug), _) => check_bug(bug),
        _ => Ok(()),
    }
}

/// Checks the planning fields an item is given.
fn check_planning(
    estimate: Option<i64>,
    due_date: Option<&str>,
    texts: [(&str, Option<&str>); 3],
) -> Result<(), HubError> {
    if estimate.is_some_and(|e| !(0..=10_000).contains(&e)) {
        return Err(HubError::invalid("`estimate` must be 0 to 10000"));
    }
    if let Some(date) = due_date {
        check_date(date)?;
    }
    for (field, value) in texts {
        if let Some(value) = value {
            one_line(field, value, SHORT_MAX)?;
        }
    }
    Ok(())
}

pub(super) fn check_date(text: &str) -> Result<(), HubError> {
    check_date_of("`due_date`", text)
}

/// Checks a `YYYY-MM-DD` date; `field` names it in the message.
pub(super) fn check_date_of(field: &str, text: &str) -> Result<(), HubError> {
    let mut parts = text.splitn(3, '-').map(|p| p.parse::<u16>().ok());
    let valid = match (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    ) {
        (Some(year), Some(month), Some(day)) if text.len() == 10 => {
            time::Month::try_from(month as u8)
                .ok()
                .and_then(|month| {
                    time::Date::from_calendar_date(year.into(), month, day as u8).ok()
                })
                .is_some()
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(HubError::Invalid {
            message: format!("{field} `{}` is not a date", text.escape_debug()),
            hint: Some("write it YYYY-MM-DD, like 2027-03-31".to_owned()),
        })
    }
}

/// The id of the parent `which` names for an item of `product`: of the
/// same product, and not a sub-task itself (so sub-tasks never nest).
fn parent_id(
    sql: &mut dyn Sql,
    access: &Access,
    which: &str,
    product: i64,
    child: Option<i64>,
) -> Result<i64, HubError> {
    let parent = fetch(sql, access, which)?;
    if parent.product_id != product {
        return Err(HubError::invalid(format!(
            "`parent` {} is of another product",
            parent.item.reference
        )));
    }
    if parent.item.parent.is_some() || Some(parent.item.id) == child {
        return Err(HubError::Invalid {
            message: format!(
                "{} cannot be a parent: it is a sub-task itself",
                parent.item.reference
            ),
            hint: Some("sub-tasks are one level deep".to_owned()),
        });
    }
    Ok(parent.item.id)
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

pub(super) fn check_checklist(entries: &[String], existing: usize) -> Result<(), HubError> {
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

pub(super) fn add_checklist(
    sql: &mut dyn Sql,
    item: i64,
    entries: &[String],
) -> Result<(), HubError> {
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
    /// Creates an item; a retry with the same `idempotency_key` answers as
    /// the first did (status and JSON body).
    pub fn create_item(
        &self,
        access: &Access,
        new: &NewItem,
        idempotency_key: Option<&str>,
        raw: &[u8],
    ) -> Result<(u16, String), HubError> {
        if new.source == Some(Source::UserSubmitted) {
            return Err(HubError::invalid(
                "`source` user_submitted is for the public submission form; use internal or auto_detected",
            ));
        }
        self.file_item(access, new, idempotency_key, raw, &|_, _| Ok(()))
    }

    /// Makes an item of any source (the public form's ideas come this way),
    /// running `then` in the same transaction once it is made.
    pub(super) fn file_item(
        &self,
        access: &Access,
        new: &NewItem,
        idempotency_key: Option<&str>,
        raw: &[u8],
        then: &dyn Fn(&mut dyn Sql, &Item) -> Result<(), HubError>,
    ) -> Result<(u16, String), HubError> {
        check_new(new)?;
        self.tx(|sql| {
            audit::idempotent(sql, access.key_id, idempotency_key, &[b"POST items", raw], |sql| {
                let product_id = match (&new.product, access.scope.only()) {
                    (Some(key), _) => products::id_of(sql, key)?,
                    (None, Some(only)) => only,
                    (None, None) => {
                        return Err(HubError::invalid(
                            "`product` is missing: this key or user reaches more than one product, so name one",
                        ));
                    }
                };
                if !access.scope.allows(product_id) {
                    return Err(HubError::Forbidden {
                        message: format!("`{}` may not add items to that product", access.actor.name),
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
                if let Some(name) = &new.milestone {
                    let milestone = milestone_id(sql, product_id, name)?;
                    sql.execute(
                        "UPDATE items SET milestone_id = ? WHERE id = ?",
                        &[Value::Int(milestone), Value::Int(id)],
                    )?;
                }
                let parent = match &new.parent {
                    Some(which) => Some(parent_id(sql, access, which, product_id, None)?),
                    None => None,
                };
                sql.execute(
                    "UPDATE items SET estimate = ?, due_date = ?, environment = ?, affected_version = ?, \
                     fixed_version = ?, parent_id = ? WHERE id = ?",
                    &[
                        new.estimate.into(),
                        new.due_date.as_deref().into(),
                        new.environment.as_deref().into(),
                        new.affected_version.as_deref().into(),
                        new.fixed_version.as_deref().into(),
                        parent.into(),
                        Value::Int(id),
                    ],
                )?;
                add_checklist(sql, id, &new.checklist)?;
                super::custom::set_values(sql, id, product_id, &access.actor.name, &new.custom, false)?;
                activity(sql, id, &access.actor.name, "created", None, Some(new.title.as_str()), None)?;
                let stored = load(sql, id)?.ok_or_else(|| HubError::Internal("a new item vanished".to_owned()))?;
                for link in &new.links {
                    add_link(sql, access, &stored, link)?;
                }
                let stored = load(sql, id)?.ok_or_else(|| HubError::Internal("a new item vanished".to_owned()))?;
                access.audit(sql, "item.create", &stored.item.reference)?;
                super::outbox::item_changed(sql, stored.product_id, &stored.item, true)?;
                then(sql, &stored.item)?;
                created(&stored.item)
            })
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
        check_edit(edit)?;
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            let item = &stored.item;
            if edit.bug.is_some() && item.kind != Kind::Bug {
                return Err(HubError::invalid(format!(
                    "`bug` fields are for bugs; {} is a {}",
                    item.reference, item.kind
                )));
            }
            let actor = access.actor.name.as_str();
            for change in field_changes(item, edit) {
                apply_change(sql, item.id, actor, change, None)?;
            }
            if let Some(estimate) = edit.estimate {
                edit_estimate(sql, item, actor, estimate)?;
            }
            if let Some(name) = &edit.milestone {
                edit_milestone(sql, &stored, actor, name.as_deref())?;
            }
            if let Some(parent) = &edit.parent {
                edit_parent(sql, access, &stored, parent.as_deref())?;
            }
            if let Some(labels) = &edit.labels {
                edit_labels(sql, &stored, actor, labels)?;
            }
            if let Some(custom) = &edit.custom {
                super::custom::set_values(sql, item.id, stored.product_id, actor, custom, true)?;
            }
            access.audit(sql, "item.edit", &item.reference)?;
            let item = reload(sql, item.id)?;
            super::outbox::item_changed(sql, stored.product_id, &item, false)?;
            Ok(item)
        })
    }
}

/// Checks what an edit asks for, before any transaction.
fn check_edit(edit: &ItemEdit) -> Result<(), HubError> {
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
    if let Some(custom) = &edit.custom {
        super::custom::check_values(custom)?;
    }
    fn given(value: &Option<Option<String>>) -> Option<&str> {
        value.as_ref().and_then(Option::as_deref)
    }
    check_planning(
        edit.estimate.flatten(),
        given(&edit.due_date),
        [
            ("environment", given(&edit.environment)),
            ("affected_version", given(&edit.affected_version)),
            ("fixed_version", given(&edit.fixed_version)),
        ],
    )
}

/// (column, field, before, after) for each text field an edit may name.
fn field_changes(item: &Item, edit: &ItemEdit) -> [FieldChange; 13] {
    let bug = item.bug.clone().unwrap_or_default();
    let given = edit.bug.clone().unwrap_or_default();
    [
        (
            "due_date",
            "due_date",
            item.due_date.clone(),
            edit.due_date.clone(),
        ),
        (
            "environment",
            "environment",
            item.environment.clone(),
            edit.environment.clone(),
        ),
        (
            "affected_version",
            "affected_version",
            item.affected_version.clone(),
            edit.affected_version.clone(),
        ),
        (
            "fixed_version",
            "fixed_version",
            item.fixed_version.clone(),
            edit.fixed_version.clone(),
        ),
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
    ]
}

fn edit_estimate(
    sql: &mut dyn Sql,
    item: &Item,
    actor: &str,
    estimate: Option<i64>,
) -> Result<(), HubError> {
    if estimate == item.estimate {
        return Ok(());
    }
    sql.execute(
        "UPDATE items SET estimate = ? WHERE id = ?",
        &[estimate.into(), Value::Int(item.id)],
    )?;
    let text = |e: Option<i64>| e.map(|e| e.to_string());
    activity(
        sql,
        item.id,
        actor,
        "estimate",
        text(item.estimate).as_deref(),
        text(estimate).as_deref(),
        None,
    )
}

fn edit_milestone(
    sql: &mut dyn Sql,
    stored: &Stored,
    actor: &str,
    name: Option<&str>,
) -> Result<(), HubError> {
    let item = &stored.item;
    let before = item.milestone.as_ref().map(|m| m.name.as_str());
    if name == before {
        return Ok(());
    }
    let milestone = match name {
        Some(name) => Some(milestone_id(sql, stored.product_id, name)?),
        None => None,
    };
    sql.execute(
        "UPDATE items SET milestone_id = ? WHERE id = ?",
        &[milestone.into(), Value::Int(item.id)],
    )?;
    activity(sql, item.id, actor, "milestone", before, name, None)
}

fn edit_parent(
    sql: &mut dyn Sql,
    access: &Access,
    stored: &Stored,
    parent: Option<&str>,
) -> Result<(), HubError> {
    let item = &stored.item;
    if parent == item.parent.as_deref() {
        return Ok(());
    }
    let id = match parent {
        Some(which) => {
            if item.subtasks.total > 0 {
                return Err(HubError::Invalid {
                    message: format!("{} has sub-tasks, so it cannot be one", item.reference),
                    hint: Some("sub-tasks are one level deep".to_owned()),
                });
            }
            Some(parent_id(
                sql,
                access,
                which,
                stored.product_id,
                Some(item.id),
            )?)
        }
        None => None,
    };
    sql.execute(
        "UPDATE items SET parent_id = ? WHERE id = ?",
        &[id.into(), Value::Int(item.id)],
    )?;
    activity(
        sql,
        item.id,
        &access.actor.name,
        "parent",
        item.parent.as_deref(),
        parent,
        None,
    )
}

/// Replaces the item's labels, logging the sets before and after.
pub(super) fn edit_labels(
    sql: &mut dyn Sql,
    stored: &Stored,
    actor: &str,
    labels: &[NewLabel],
) -> Result<(), HubError> {
    let item = &stored.item;
    let names = |names: Vec<&str>| names.join(", ");
    let before = names(item.labels.iter().map(|l| l.name.as_str()).collect());
    let mut after: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
    after.sort_unstable();
    after.dedup();
    let after = names(after);
    if before == after {
        return Ok(());
    }
    set_labels(sql, item.id, stored.product_id, labels)?;
    activity(
        sql,
        item.id,
        actor,
        "labels",
        Some(&before),
        Some(&after),
        None,
    )
}
