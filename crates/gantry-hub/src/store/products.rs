//! Products: every item belongs to one, and its key prefixes the item's
//! number (`SHOP-42`).

use super::{Store, one_line};
use crate::clock;
use crate::db::{DbError, Row, Sql, Value};
use crate::error::HubError;
use crate::model::{Milestone, Product};

/// A product key: 2 to 10 capital letters or digits, starting with a letter.
pub fn check_key(key: &str) -> Result<(), HubError> {
    let ok = (2..=10).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_uppercase())
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(HubError::Invalid {
            message: format!(
                "product key `{}` is not 2 to 10 capital letters or digits",
                key.escape_debug()
            ),
            hint: Some("for example SHOP or WEB2".to_owned()),
        })
    }
}

/// The id of the product with `key`.
pub fn id_of(sql: &mut dyn Sql, key: &str) -> Result<i64, HubError> {
    sql.query_one("SELECT id FROM products WHERE key = ?", &[key.into()])?
        .ok_or_else(|| HubError::not_found(format!("product `{}`", key.escape_debug())))?
        .int(0)
        .map_err(Into::into)
}

/// A milestone from its `name, target_date` columns.
pub(super) fn milestone_from(row: &Row) -> Result<Milestone, DbError> {
    Ok(Milestone {
        name: row.text(0)?,
        target_date: row.opt_text(1)?,
    })
}

/// The id of the product's milestone named `name`.
pub(super) fn milestone_id(sql: &mut dyn Sql, product: i64, name: &str) -> Result<i64, HubError> {
    one_line("milestone", name, 64)?;
    let row = sql.query_one(
        "SELECT id FROM milestones WHERE product_id = ? AND name = ?",
        &[Value::Int(product), name.into()],
    )?;
    match row {
        Some(row) => Ok(row.int(0)?),
        None => Err(HubError::Invalid {
            message: format!("the product has no milestone `{}`", name.escape_debug()),
            hint: Some("`gantry hub milestone add PRODUCT NAME` makes one".to_owned()),
        }),
    }
}

impl Store {
    /// Adds a milestone to a product, with an optional target date.
    pub fn add_milestone(
        &self,
        product: &str,
        name: &str,
        target_date: Option<&str>,
    ) -> Result<Milestone, HubError> {
        one_line("name", name, 64)?;
        if let Some(date) = target_date {
            super::fields::check_date(date)?;
        }
        self.tx(|sql| {
            let product_id = id_of(sql, product)?;
            let added = sql.execute(
                "INSERT INTO milestones (product_id, name, target_date, created_at) VALUES (?, ?, ?, ?)",
                &[Value::Int(product_id), name.into(), target_date.into(), Value::Int(clock::now())],
            );
            match added {
                Err(DbError::Unique(_)) => {
                    return Err(HubError::Exists {
                        what: format!("milestone `{name}` of {product}"),
                    });
                }
                other => other?,
            };
            super::audit::record(sql, "cli", None, "milestone.add", Some(&format!("{product} {name}")), "ok")?;
            Ok(Milestone {
                name: name.to_owned(),
                target_date: target_date.map(str::to_owned),
            })
        })
    }

    /// A product's milestones, by target date (undated last), then name.
    pub fn milestones(&self, product: &str) -> Result<Vec<Milestone>, HubError> {
        self.tx(|sql| {
            let product_id = id_of(sql, product)?;
            sql.query(
                "SELECT name, target_date FROM milestones WHERE product_id = ? \
                 ORDER BY CASE WHEN target_date IS NULL THEN 1 ELSE 0 END, target_date, name",
                &[Value::Int(product_id)],
            )?
            .iter()
            .map(|row| Ok(milestone_from(row)?))
            .collect()
        })
    }

    pub fn add_product(&self, key: &str, name: &str) -> Result<Product, HubError> {
        check_key(key)?;
        one_line("name", name, 100)?;
        self.tx(|sql| {
            let added = sql.execute(
                "INSERT INTO products (key, name, created_at) VALUES (?, ?, ?)",
                &[key.into(), name.into(), Value::Int(clock::now())],
            );
            match added {
                Err(DbError::Unique(_)) => {
                    return Err(HubError::Exists {
                        what: format!("product `{key}`"),
                    });
                }
                other => other?,
            };
            super::audit::record(sql, "cli", None, "product.add", Some(key), "ok")?;
            Ok(Product {
                key: key.to_owned(),
                name: name.to_owned(),
            })
        })
    }

    pub fn products(&self) -> Result<Vec<Product>, HubError> {
        self.tx(|sql| {
            sql.query("SELECT key, name FROM products ORDER BY key", &[])?
                .iter()
                .map(|row| {
                    Ok(Product {
                        key: row.text(0)?,
                        name: row.text(1)?,
                    })
                })
                .collect()
        })
    }
}
