//! Links between items: blocks, blocked by, relates to, duplicate of. A
//! link is stored once, from the item it was made on; each item shows it
//! from its own side (`LinkKind::inverse`).

use serde::Deserialize;
use utoipa::ToSchema;

use super::Store;
use super::items::{Access, LINKS_MAX, Stored, activity, fetch, lock, reload};
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::model::{Item, LinkKind};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    pub kind: LinkKind,
    /// The other item: `SHOP-42` or its id.
    pub target: String,
}

/// `POST .../links`: links to make and links to remove.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkChange {
    #[serde(default)]
    pub add: Vec<NewLink>,
    #[serde(default)]
    pub remove: Vec<NewLink>,
}

/// Links `item` to the item `link` names.
pub(super) fn add_link(
    sql: &mut dyn Sql,
    access: &Access,
    item: &Stored,
    link: &NewLink,
) -> Result<String, HubError> {
    let target = fetch(sql, access, &link.target)?;
    if target.item.id == item.item.id {
        return Err(HubError::invalid(format!(
            "{} cannot be linked to itself",
            item.item.reference
        )));
    }
    sql.execute(
        "INSERT INTO links (item_id, kind, target_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        &[
            Value::Int(item.item.id),
            link.kind.as_str().into(),
            Value::Int(target.item.id),
        ],
    )?;
    Ok(format!("{} {}", link.kind, target.item.reference))
}

impl Store {
    pub fn change_links(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        change: &LinkChange,
    ) -> Result<Item, HubError> {
        if change.add.len() + change.remove.len() > LINKS_MAX {
            return Err(HubError::invalid(format!(
                "at most {LINKS_MAX} links change at once"
            )));
        }
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            let id = stored.item.id;
            for link in &change.remove {
                let target = fetch(sql, access, &link.target)?;
                // Either side may have made it.
                sql.execute(
                    "DELETE FROM links WHERE (item_id = ? AND kind = ? AND target_id = ?) \
                     OR (item_id = ? AND kind = ? AND target_id = ?)",
                    &[
                        Value::Int(id),
                        link.kind.as_str().into(),
                        Value::Int(target.item.id),
                        Value::Int(target.item.id),
                        link.kind.inverse().as_str().into(),
                        Value::Int(id),
                    ],
                )?;
                let text = format!("{} {}", link.kind, target.item.reference);
                activity(sql, id, &access.actor.name, "link", Some(&text), None, None)?;
            }
            for link in &change.add {
                let text = add_link(sql, access, &stored, link)?;
                activity(sql, id, &access.actor.name, "link", None, Some(&text), None)?;
            }
            let total = sql
                .query_one(
                    "SELECT COUNT(*) FROM links WHERE item_id = ?",
                    &[Value::Int(id)],
                )?
                .map_or(Ok(0), |r| r.int(0))?;
            if total > LINKS_MAX as i64 {
                return Err(HubError::invalid(format!(
                    "an item makes at most {LINKS_MAX} links"
                )));
            }
            access.audit(sql, "item.links", &stored.item.reference)?;
            reload(sql, id)
        })
    }
}
