//! Custom fields: a product defines fields (text, number, date, or select
//! with its options), and its items carry values for them, each checked
//! against its field's type. Values are stored as text: numbers in their
//! shortest JSON form, so a filter compares them as written.

use std::collections::{BTreeMap, HashMap};

use super::fields::check_date_of;
use super::items::{Access, activity};
use super::{Store, audit, bounded, one_line, products};
use crate::clock;
use crate::db::{DbError, Sql, Value};
use crate::error::HubError;
use crate::model::{CustomField, FieldType};

const FIELDS_MAX: i64 = 50;
const OPTIONS_MAX: usize = 50;
const VALUE_MAX: usize = 500;

/// What `POST /api/agent/products/{key}/fields` takes.
#[derive(Clone, Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewField {
    /// Letters, digits, spaces, `_` and `-`; 1 to 40 characters.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// The choices of a `select` field (1 to 50); not for other types.
    #[serde(default)]
    pub options: Vec<String>,
}

fn check_name(name: &str) -> Result<(), HubError> {
    one_line("name", name, 40)?;
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-'))
    {
        return Err(HubError::Invalid {
            message: format!(
                "field name `{}` holds other characters",
                name.escape_debug()
            ),
            hint: Some("use letters, digits, spaces, `_` and `-`".to_owned()),
        });
    }
    Ok(())
}

fn check_field(new: &NewField) -> Result<(), HubError> {
    check_name(&new.name)?;
    match (new.kind, new.options.len()) {
        (FieldType::Select, 0) => Err(HubError::invalid("a select field needs `options`")),
        (FieldType::Select, n) if n > OPTIONS_MAX => Err(HubError::invalid(format!(
            "a select field has at most {OPTIONS_MAX} options"
        ))),
        (FieldType::Select, _) => {
            for (i, option) in new.options.iter().enumerate() {
                one_line("options[]", option, 64)?;
                if new.options[..i].contains(option) {
                    return Err(HubError::invalid(format!(
                        "option `{}` is given twice",
                        option.escape_debug()
                    )));
                }
            }
            Ok(())
        }
        (kind, 0) => {
            let _ = kind;
            Ok(())
        }
        (kind, _) => Err(HubError::invalid(format!(
            "`options` are for select fields; this one is {kind}"
        ))),
    }
}

/// The stored text of `value` for `field`, or why it does not fit.
fn stored_text(field: &CustomField, value: &serde_json::Value) -> Result<String, HubError> {
    let what = || format!("custom field `{}`", field.name);
    let wrong = |expected: &str| HubError::Invalid {
        message: format!("{} takes {expected}, not {value}", what()),
        hint: None,
    };
    match (field.kind, value) {
        (FieldType::Number, serde_json::Value::Number(n)) => Ok(n.to_string()),
        (FieldType::Number, _) => Err(wrong("a number")),
        (_, serde_json::Value::String(text)) => {
            let name = what();
            match field.kind {
                FieldType::Text => bounded(&name, text, VALUE_MAX)?,
                FieldType::Date => check_date_of(&name, text)?,
                FieldType::Select if !field.options.contains(text) => {
                    return Err(HubError::Invalid {
                        message: format!("{name} has no option `{}`", text.escape_debug()),
                        hint: Some(format!("one of: {}", field.options.join(", "))),
                    });
                }
                _ => {}
            }
            Ok(text.clone())
        }
        (FieldType::Text, _) => Err(wrong("text")),
        (FieldType::Date, _) => Err(wrong("a date (YYYY-MM-DD)")),
        (FieldType::Select, _) => Err(wrong("one of its options, as a string")),
    }
}

/// The JSON value of stored text.
fn shown(kind: FieldType, text: String) -> serde_json::Value {
    match kind {
        FieldType::Number => serde_json::from_str::<serde_json::Number>(&text)
            .map_or(serde_json::Value::String(text), serde_json::Value::Number),
        _ => serde_json::Value::String(text),
    }
}

fn field_from(row: &crate::db::Row, at: usize) -> Result<CustomField, DbError> {
    Ok(CustomField {
        name: row.text(at)?,
        kind: super::items::parse("field type", row.text(at + 1)?, FieldType::parse)?,
        options: row
            .opt_text(at + 2)?
            .filter(|o| !o.is_empty())
            .map(|o| o.split('\n').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// The product's field named `name`, with its id.
fn field_named(
    sql: &mut dyn Sql,
    product: i64,
    name: &str,
) -> Result<(i64, CustomField), HubError> {
    let row = sql
        .query_one(
            "SELECT id, name, kind, options FROM custom_fields WHERE product_id = ? AND name = ?",
            &[Value::Int(product), name.into()],
        )?
        .ok_or_else(|| HubError::Invalid {
            message: format!("the product has no custom field `{}`", name.escape_debug()),
            hint: Some("GET /api/agent/products/{key}/fields lists them".to_owned()),
        })?;
    Ok((row.int(0)?, field_from(&row, 1)?))
}

/// The item's custom values, by field name.
pub(super) fn values_of(
    sql: &mut dyn Sql,
    item: i64,
) -> Result<BTreeMap<String, serde_json::Value>, DbError> {
    Ok(values_of_many(sql, &[item])?
        .remove(&item)
        .unwrap_or_default())
}

/// The custom values of several items at once, by item id.
pub(super) fn values_of_many(
    sql: &mut dyn Sql,
    items: &[i64],
) -> Result<HashMap<i64, BTreeMap<String, serde_json::Value>>, DbError> {
    if items.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sql.query(
        &format!(
            "SELECT v.item_id, f.name, f.kind, v.value FROM custom_values v \
             JOIN custom_fields f ON f.id = v.field_id WHERE v.item_id IN ({})",
            super::extras::marks(items.len())
        ),
        &super::extras::ids(items),
    )?;
    let mut values: HashMap<i64, BTreeMap<_, _>> = HashMap::new();
    for r in &rows {
        let kind = super::items::parse("field type", r.text(2)?, FieldType::parse)?;
        values
            .entry(r.int(0)?)
            .or_default()
            .insert(r.text(1)?, shown(kind, r.text(3)?));
    }
    Ok(values)
}

/// Checks the shape of custom values before a transaction.
pub(super) fn check_values(
    values: &BTreeMap<String, Option<serde_json::Value>>,
) -> Result<(), HubError> {
    if values.len() as i64 > FIELDS_MAX {
        return Err(HubError::invalid(format!(
            "an item has at most {FIELDS_MAX} custom fields"
        )));
    }
    values.keys().try_for_each(|name| check_name(name))
}

/// Sets (or, for `None`, clears) the item's values of the named fields,
/// each change in the activity log.
pub(super) fn set_values(
    sql: &mut dyn Sql,
    item: i64,
    product: i64,
    actor: &str,
    values: &BTreeMap<String, Option<serde_json::Value>>,
    log: bool,
) -> Result<(), HubError> {
    let before = values_of(sql, item)?;
    for (name, value) in values {
        let (field_id, field) = field_named(sql, product, name)?;
        let after = match value {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(stored_text(&field, value)?),
        };
        let old = before.get(name).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        if old == after {
            continue;
        }
        sql.execute(
            "DELETE FROM custom_values WHERE item_id = ? AND field_id = ?",
            &[Value::Int(item), Value::Int(field_id)],
        )?;
        if let Some(text) = &after {
            sql.execute(
                "INSERT INTO custom_values (item_id, field_id, value) VALUES (?, ?, ?)",
                &[Value::Int(item), Value::Int(field_id), text.into()],
            )?;
        }
        if log {
            let field = format!("custom.{name}");
            activity(
                sql,
                item,
                actor,
                &field,
                old.as_deref(),
                after.as_deref(),
                None,
            )?;
        }
    }
    Ok(())
}

/// A filter's `NAME:VALUE`, as the SQL clause's parameters (field name,
/// stored text). Numbers are normalised as values are.
pub fn filter_value(text: &str) -> Result<(String, String), HubError> {
    let (name, value) = text.split_once(':').ok_or_else(|| HubError::Invalid {
        message: format!("`custom` `{}` is not NAME:VALUE", text.escape_debug()),
        hint: Some("for example custom=Team:payments".to_owned()),
    })?;
    check_name(name)?;
    let value = match serde_json::from_str::<serde_json::Number>(value) {
        Ok(n) => n.to_string(),
        Err(_) => value.to_owned(),
    };
    Ok((name.to_owned(), value))
}

impl Store {
    /// Defines a custom field of a product (an admin key's work).
    pub fn define_field(
        &self,
        access: &Access,
        product: &str,
        new: &NewField,
    ) -> Result<CustomField, HubError> {
        check_field(new)?;
        self.tx(|sql| {
            let product_id = products::id_of(sql, product)?;
            access.reach_product(product_id)?;
            let count = sql
                .query_one(
                    "SELECT COUNT(*) FROM custom_fields WHERE product_id = ?",
                    &[Value::Int(product_id)],
                )?
                .map_or(Ok(0), |r| r.int(0))?;
            if count >= FIELDS_MAX {
                return Err(HubError::invalid(format!(
                    "a product has at most {FIELDS_MAX} custom fields"
                )));
            }
            let added = sql.execute(
                "INSERT INTO custom_fields (product_id, name, kind, options, created_at) \
                 VALUES (?, ?, ?, ?, ?)",
                &[
                    Value::Int(product_id),
                    new.name.as_str().into(),
                    new.kind.as_str().into(),
                    new.options.join("\n").into(),
                    Value::Int(clock::now()),
                ],
            );
            if let Err(DbError::Unique(_)) = added {
                return Err(HubError::Exists {
                    what: format!("custom field `{}` of {product}", new.name),
                });
            }
            added?;
            audit::record(
                sql,
                &access.actor.name,
                access.actor.client.as_deref(),
                "field.define",
                Some(&format!("{product} {}", new.name)),
                "ok",
            )?;
            Ok(CustomField {
                name: new.name.clone(),
                kind: new.kind,
                options: new.options.clone(),
            })
        })
    }

    /// A product's custom fields, by name.
    pub fn custom_fields(
        &self,
        access: &Access,
        product: &str,
    ) -> Result<Vec<CustomField>, HubError> {
        self.tx(|sql| {
            let product_id = products::id_of(sql, product)?;
            access.reach_product(product_id)?;
            sql.query(
                "SELECT name, kind, options FROM custom_fields WHERE product_id = ? ORDER BY name",
                &[Value::Int(product_id)],
            )?
            .iter()
            .map(|r| Ok(field_from(r, 0)?))
            .collect()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field(kind: FieldType, options: &[&str]) -> CustomField {
        CustomField {
            name: "F".to_owned(),
            kind,
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    #[test]
    fn values_are_checked_against_their_type() {
        use serde_json::json;
        let number = field(FieldType::Number, &[]);
        assert_eq!(stored_text(&number, &json!(2.50)).unwrap(), "2.5");
        assert!(stored_text(&number, &json!("2")).is_err());
        let date = field(FieldType::Date, &[]);
        assert!(stored_text(&date, &json!("2027-02-30")).is_err());
        assert_eq!(
            stored_text(&date, &json!("2027-02-28")).unwrap(),
            "2027-02-28"
        );
        let select = field(FieldType::Select, &["S", "M"]);
        assert!(stored_text(&select, &json!("L")).is_err());
        assert_eq!(stored_text(&select, &json!("M")).unwrap(), "M");
        assert_eq!(filter_value("Points:3.0").unwrap().1, "3.0");
        assert!(filter_value("no colon").is_err());
    }
}
