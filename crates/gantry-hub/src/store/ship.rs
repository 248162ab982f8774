//! A deploy's shipped commits: the items whose linked pull request is at
//! one of them get the release as their fixed-in version.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::items::{Access, activity, load};
use super::{Store, one_line};
use crate::clock;
use crate::db::Value;
use crate::error::HubError;

/// `POST /api/agent/shipped`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Shipped {
    /// The release that shipped them, as its fixed-in version.
    pub version: String,
    /// The commits the release holds (full hex ids), at most 1000.
    pub commits: Vec<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ShippedItems {
    /// The items now fixed in `version`, as `SHOP-42`.
    pub items: Vec<String>,
}

const COMMITS_MAX: usize = 1_000;

impl Store {
    pub fn shipped(&self, access: &Access, shipped: &Shipped) -> Result<ShippedItems, HubError> {
        one_line("version", &shipped.version, 64)?;
        if shipped.commits.len() > COMMITS_MAX {
            return Err(HubError::invalid(format!(
                "at most {COMMITS_MAX} `commits`"
            )));
        }
        for commit in &shipped.commits {
            if !(7..=64).contains(&commit.len()) || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(HubError::invalid(format!(
                    "commit `{}` is not a hex commit id",
                    commit.escape_debug()
                )));
            }
        }
        self.tx(|sql| {
            let mut items = Vec::new();
            for chunk in shipped.commits.chunks(100) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let mut params: Vec<Value> = chunk.iter().map(|c| c.to_ascii_lowercase().into()).collect();
                params.push(shipped.version.as_str().into());
                let rows = sql.query(
                    &format!(
                        "SELECT DISTINCT r.item_id FROM pull_requests r JOIN items i ON i.id = r.item_id \
                         WHERE LOWER(r.commit_sha) IN ({marks}) \
                         AND (i.fixed_version IS NULL OR i.fixed_version <> ?) ORDER BY r.item_id"
                    ),
                    &params,
                )?;
                for row in rows {
                    let id = row.int(0)?;
                    let Some(stored) = load(sql, id)? else { continue };
                    if access.check(&stored).is_err() {
                        continue;
                    }
                    sql.execute(
                        "UPDATE items SET fixed_version = ?, version = version + 1, updated_at = ? WHERE id = ?",
                        &[shipped.version.as_str().into(), Value::Int(clock::now()), Value::Int(id)],
                    )?;
                    activity(
                        sql,
                        id,
                        &access.actor.name,
                        "fixed_version",
                        stored.item.fixed_version.as_deref(),
                        Some(&shipped.version),
                        Some("shipped by a deploy"),
                    )?;
                    access.audit(sql, "item.shipped", &stored.item.reference)?;
                    let item = super::items::reload(sql, id)?;
                    super::outbox::item_changed(sql, stored.product_id, &item, false)?;
                    items.push(stored.item.reference);
                }
            }
            Ok(ShippedItems { items })
        })
    }
}
