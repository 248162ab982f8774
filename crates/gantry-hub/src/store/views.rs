//! Saved views: a named filter and sort, kept for one key or user (its
//! own) or for a product (everyone reaching it sees it). The query is the
//! list's own parameters, stored as JSON and checked the way a list
//! request is, so a view can never hold what a list would refuse.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::items::Access;
use super::{Store, audit, one_line, products};
use crate::clock;
use crate::db::{Row, Sql, Value};
use crate::error::HubError;

/// The most views one owner or product keeps.
const VIEWS_MAX: i64 = 100;

/// What a view selects: `GET /api/agent/items`'s filters and sort.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    pub status: Option<String>,
    pub label: Option<String>,
    pub assignee: Option<String>,
    pub product: Option<String>,
    pub q: Option<String>,
    pub custom: Option<String>,
    pub sort: Option<String>,
}

/// `POST /api/agent/views`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewView {
    pub name: String,
    /// Shares the view with everyone reaching this product (admin keys);
    /// left out, the view is the asker's own.
    pub product: Option<String>,
    pub query: ViewQuery,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SavedView {
    pub id: i64,
    pub name: String,
    /// The product it is shared with; `null`: it is `owner`'s own.
    pub product: Option<String>,
    pub owner: Option<String>,
    pub query: ViewQuery,
    pub created_at: String,
}

fn view_from(row: &Row) -> Result<SavedView, HubError> {
    let query = serde_json::from_str(&row.text(4)?)
        .map_err(|e| HubError::Internal(format!("a stored view is not JSON: {e}")))?;
    Ok(SavedView {
        id: row.int(0)?,
        name: row.text(1)?,
        product: row.opt_text(2)?,
        owner: row.opt_text(3)?,
        query,
        created_at: clock::format(row.int(5)?),
    })
}

const COLUMNS: &str = "v.id, v.name, p.key, v.owner, v.query, v.created_at";

/// The views `access` sees: its own, and those of the products it reaches.
fn visible(
    sql: &mut dyn Sql,
    access: &Access,
    id: Option<i64>,
) -> Result<Vec<SavedView>, HubError> {
    let (reached, mut params) = access.scope.condition("v.product_id");
    params.insert(0, access.actor.name.as_str().into());
    params.extend([Value::Int(id.is_some().into()), Value::Int(id.unwrap_or(0))]);
    sql.query(
        &format!(
            "SELECT {COLUMNS} FROM saved_views v LEFT JOIN products p ON p.id = v.product_id \
             WHERE (v.owner = ? OR (v.owner IS NULL AND {reached})) \
             AND (? = 0 OR v.id = ?) ORDER BY v.name, v.id"
        ),
        &params,
    )?
    .iter()
    .map(view_from)
    .collect()
}

impl Store {
    /// Saves a view; `admin`, the asker's admin access if any, says which
    /// products they may share it with. The caller has checked `new.query`
    /// as a list request.
    pub fn save_view(
        &self,
        access: &Access,
        new: &NewView,
        admin: Option<&Access>,
    ) -> Result<SavedView, HubError> {
        one_line("name", &new.name, 100)?;
        let query =
            serde_json::to_string(&new.query).map_err(|e| HubError::Internal(e.to_string()))?;
        self.tx(|sql| {
            let (owner, product) = match &new.product {
                Some(key) => {
                    let Some(admin) = admin else {
                        return Err(HubError::Forbidden {
                            message: "sharing a view with a product needs an admin key".to_owned(),
                        });
                    };
                    let product = products::id_of(sql, key)?;
                    access.reach_product(product)?;
                    administers(admin, product, key, "sharing a view with")?;
                    (None, Some(product))
                }
                None => (Some(access.actor.name.as_str()), None),
            };
            let count = sql
                .query_one(
                    "SELECT COUNT(*) FROM saved_views WHERE owner = ? OR product_id = ?",
                    &[owner.into(), product.into()],
                )?
                .map_or(Ok(0), |r| r.int(0))?;
            if count >= VIEWS_MAX {
                return Err(HubError::invalid(format!(
                    "at most {VIEWS_MAX} views are kept for one owner or product"
                )));
            }
            let id = sql
                .query_one(
                    "INSERT INTO saved_views (owner, product_id, name, query, created_at) \
                     VALUES (?, ?, ?, ?, ?) RETURNING id",
                    &[
                        owner.into(),
                        product.into(),
                        new.name.as_str().into(),
                        query.as_str().into(),
                        Value::Int(clock::now()),
                    ],
                )?
                .ok_or_else(|| HubError::Internal("INSERT returned no id".to_owned()))?
                .int(0)?;
            audit::record(
                sql,
                &access.actor.name,
                access.actor.client.as_deref(),
                "view.save",
                Some(&new.name),
                "ok",
            )?;
            visible(sql, access, Some(id))?
                .pop()
                .ok_or_else(|| HubError::Internal("a saved view vanished".to_owned()))
        })
    }

    pub fn views(&self, access: &Access) -> Result<Vec<SavedView>, HubError> {
        self.tx(|sql| visible(sql, access, None))
    }

    /// One view the asker sees.
    pub fn view(&self, access: &Access, id: i64) -> Result<SavedView, HubError> {
        self.tx(|sql| {
            visible(sql, access, Some(id))?
                .pop()
                .ok_or_else(|| HubError::not_found(format!("view {id}")))
        })
    }

    /// Deletes a view: one's own, or (with `admin` access to its product)
    /// a product's.
    pub fn delete_view(
        &self,
        access: &Access,
        id: i64,
        admin: Option<&Access>,
    ) -> Result<(), HubError> {
        self.tx(|sql| {
            let view = visible(sql, access, Some(id))?
                .pop()
                .ok_or_else(|| HubError::not_found(format!("view {id}")))?;
            if let Some(key) = view.product.as_deref().filter(|_| view.owner.is_none()) {
                let Some(admin) = admin else {
                    return Err(HubError::Forbidden {
                        message: "deleting a product's view needs an admin key".to_owned(),
                    });
                };
                administers(admin, products::id_of(sql, key)?, key, "deleting a view of")?;
            }
            sql.execute("DELETE FROM saved_views WHERE id = ?", &[Value::Int(id)])?;
            audit::record(
                sql,
                &access.actor.name,
                access.actor.client.as_deref(),
                "view.delete",
                Some(&view.name),
                "ok",
            )
        })
    }
}

/// Refuses unless `admin` is admin of `product` itself: being admin of
/// another product is not enough.
fn administers(admin: &Access, product: i64, key: &str, doing: &str) -> Result<(), HubError> {
    if admin.scope.allows(product) {
        return Ok(());
    }
    Err(HubError::Forbidden {
        message: format!("{doing} `{key}` needs admin on `{key}`"),
    })
}
