//! Bulk changes: one request sets the status, priority, assignee or labels
//! of up to [`BULK_MAX`] items, all or nothing, in one transaction. Each
//! item names the version its client saw, as If-Match would for one item:
//! one stale, claimed or unreachable item refuses the whole request and
//! changes nothing. Every change goes to each item's activity log.

use serde::Deserialize;
use utoipa::ToSchema;

use super::fields::{NewLabel, edit_labels};
use super::items::{Access, FieldChange, SHORT_MAX, apply_change, lock, reload};
use super::{Store, one_line};
use crate::db::Value;
use crate::error::HubError;
use crate::model::{Item, Priority, Status};

/// The most items one bulk change touches.
pub const BULK_MAX: usize = 100;

/// One item of a bulk change and the version its client saw.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkTarget {
    /// `17` or `SHOP-42`.
    pub id: String,
    /// The item's version (its ETag without quotes).
    pub version: i64,
}

/// What a bulk change sets on every item; fields left out stay.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSet {
    pub status: Option<Status>,
    pub priority: Option<Priority>,
    /// `null` clears the assignee.
    #[serde(default, deserialize_with = "super::fields::nullable")]
    #[schema(value_type = Option<String>)]
    pub assignee: Option<Option<String>>,
    /// Labels to add (made with grey if new to the product).
    #[serde(default)]
    pub add_labels: Vec<String>,
    #[serde(default)]
    pub remove_labels: Vec<String>,
}

/// `POST /api/agent/items/bulk`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkChange {
    pub items: Vec<BulkTarget>,
    pub set: BulkSet,
    /// Why, kept with each status change.
    pub reason: Option<String>,
}

fn check(change: &BulkChange) -> Result<(), HubError> {
    if change.items.is_empty() || change.items.len() > BULK_MAX {
        return Err(HubError::invalid(format!(
            "a bulk change names 1 to {BULK_MAX} items, not {}",
            change.items.len()
        )));
    }
    let set = &change.set;
    if let Some(Some(assignee)) = &set.assignee {
        one_line("set.assignee", assignee, SHORT_MAX)?;
    }
    if set.add_labels.len() + set.remove_labels.len() > 20 {
        return Err(HubError::invalid("at most 20 labels change at once"));
    }
    for label in set.add_labels.iter().chain(&set.remove_labels) {
        one_line("set labels[]", label, 40)?;
    }
    if let Some(reason) = &change.reason {
        super::bounded("reason", reason, 2_000)?;
    }
    Ok(())
}

impl Store {
    /// Applies `change` to every item it names, or to none.
    pub fn bulk_change(&self, access: &Access, change: &BulkChange) -> Result<Vec<Item>, HubError> {
        check(change)?;
        let set = &change.set;
        let actor = access.actor.name.as_str();
        self.tx(|sql| {
            let mut changed = Vec::with_capacity(change.items.len());
            for target in &change.items {
                let stored = lock(sql, access, &target.id, &target.version.to_string(), false)?;
                let item = &stored.item;
                let fields: [FieldChange; 3] = [
                    (
                        "status",
                        "status",
                        Some(item.status.to_string()),
                        set.status.map(|s| Some(s.to_string())),
                    ),
                    (
                        "priority",
                        "priority",
                        Some(item.priority.to_string()),
                        set.priority.map(|p| Some(p.to_string())),
                    ),
                    (
                        "assignee",
                        "assignee",
                        item.assignee.clone(),
                        set.assignee.clone(),
                    ),
                ];
                for field in fields {
                    let note = (field.0 == "status")
                        .then_some(change.reason.as_deref())
                        .flatten();
                    apply_change(sql, item.id, actor, field, note)?;
                }
                if set.status.is_some_and(|s| s.category().is_finished()) {
                    sql.execute(
                        "UPDATE items SET claimed_by = NULL, claim_expires_at = NULL WHERE id = ?",
                        &[Value::Int(item.id)],
                    )?;
                }
                if !set.add_labels.is_empty() || !set.remove_labels.is_empty() {
                    let mut labels: Vec<NewLabel> = item
                        .labels
                        .iter()
                        .filter(|l| !set.remove_labels.contains(&l.name))
                        .map(|l| NewLabel {
                            name: l.name.clone(),
                            color: None,
                        })
                        .collect();
                    for name in &set.add_labels {
                        if !labels.iter().any(|l| l.name == *name) {
                            labels.push(NewLabel {
                                name: name.clone(),
                                color: None,
                            });
                        }
                    }
                    if labels.len() > super::items::LABELS_MAX {
                        return Err(HubError::invalid(format!(
                            "{} would have more than {} labels",
                            item.reference,
                            super::items::LABELS_MAX
                        )));
                    }
                    edit_labels(sql, &stored, actor, &labels)?;
                }
                access.audit(sql, "item.bulk", &item.reference)?;
                changed.push(item.id);
            }
            changed.iter().map(|id| reload(sql, *id)).collect()
        })
    }
}
