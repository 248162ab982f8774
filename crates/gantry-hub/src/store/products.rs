//! Products: every item belongs to one, and its key prefixes the item's
//! number (`SHOP-42`).

use super::{Store, one_line};
use crate::clock;
use crate::db::{DbError, Sql, Value};
use crate::error::HubError;
use crate::model::Product;

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

impl Store {
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
