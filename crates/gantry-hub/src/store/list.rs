//! Reading items: one by id or reference, and pages of them with filters,
//! full-text search and keyset cursors.

use serde::Serialize;
use utoipa::ToSchema;

use super::items::{Access, ITEM_COLUMNS, PAGE_MAX, Reach, fetch, items_from};
use super::{Store, bounded};
use crate::clock;
use crate::db::{Dialect, Value};
use crate::error::HubError;
use crate::model::{Item, SortKey, Status};

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
    /// Custom field values (`NAME`, stored text) an item must have.
    pub custom: Vec<(String, String)>,
    pub sort: Sort,
    /// Where the previous page ended.
    pub cursor: Option<String>,
    pub limit: usize,
}

/// The order of a list: by a key, then by id, either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

impl Default for Sort {
    /// Oldest change first, which polling with `since` relies on.
    fn default() -> Sort {
        Sort {
            key: SortKey::Updated,
            descending: false,
        }
    }
}

impl Sort {
    /// `updated`, `created`, `priority`; a leading `-` reverses.
    pub fn parse(text: &str) -> Option<Sort> {
        let (descending, key) = match text.strip_prefix('-') {
            Some(key) => (true, key),
            None => (false, text),
        };
        Some(Sort {
            key: SortKey::parse(key)?,
            descending,
        })
    }

    pub fn as_text(self) -> String {
        let sign = if self.descending { "-" } else { "" };
        format!("{sign}{}", self.key)
    }

    /// The SQL expression sorted on.
    fn expression(self) -> &'static str {
        match self.key {
            SortKey::Updated => "i.updated_at",
            SortKey::Created => "i.created_at",
            SortKey::Priority => {
                "(CASE i.priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 \
                 WHEN 'medium' THEN 2 ELSE 3 END)"
            }
        }
    }

    /// The sort value of an item as read (for its cursor).
    fn value(self, row: &crate::db::Row) -> Result<i64, HubError> {
        Ok(match self.key {
            SortKey::Updated => row.int(20)?,
            SortKey::Created => row.int(19)?,
            SortKey::Priority => {
                let text = row.text(7)?;
                let rank = crate::model::Priority::ALL
                    .iter()
                    .position(|p| p.as_str() == text)
                    .unwrap_or(3);
                rank as i64
            }
        })
    }
}

/// One page of items, in the order asked for (oldest change first).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
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

impl Store {
    pub fn item(&self, access: &Access, which: &str) -> Result<Item, HubError> {
        self.tx(|sql| Ok(fetch(sql, access, which)?.item))
    }

    /// The WHERE clause (or nothing) of a filter, and its parameters.
    fn where_clause(
        &self,
        access: &Access,
        filter: &ItemFilter,
    ) -> Result<(String, Vec<Value>), HubError> {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        if access.scope != Reach::Every {
            let (reached, values) = access.scope.condition("i.product_id");
            clauses.push(reached);
            params.extend(values);
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
        for (name, value) in &filter.custom {
            clauses.push(
                "EXISTS (SELECT 1 FROM custom_values cv JOIN custom_fields cf ON cf.id = cv.field_id \
                 WHERE cv.item_id = i.id AND cf.name = ? AND cv.value = ?)"
                    .to_owned(),
            );
            params.push(name.as_str().into());
            params.push(value.as_str().into());
        }
        if let Some(since) = filter.since {
            clauses.push("i.updated_at >= ?".to_owned());
            params.push(Value::Int(since));
        }
        if let Some(cursor) = &filter.cursor {
            let (at, id) = parse_cursor(cursor)?;
            let (e, op) = (
                filter.sort.expression(),
                if filter.sort.descending { "<" } else { ">" },
            );
            clauses.push(format!("({e} {op} ? OR ({e} = ? AND i.id {op} ?))"));
            params.extend([Value::Int(at), Value::Int(at), Value::Int(id)]);
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        Ok((filter_sql, params))
    }

    /// How many items a filter selects (its cursor and limit aside).
    pub fn count_items(&self, access: &Access, filter: &ItemFilter) -> Result<i64, HubError> {
        let filter = ItemFilter {
            cursor: None,
            ..filter.clone()
        };
        let (filter_sql, params) = self.where_clause(access, &filter)?;
        self.tx(|sql| {
            let row = sql.query_one(
                &format!(
                    "SELECT COUNT(*) FROM items i JOIN products p ON p.id = i.product_id {filter_sql}"
                ),
                &params,
            )?;
            Ok(row.map_or(Ok(0), |r| r.int(0))?)
        })
    }

    pub fn list_items(&self, access: &Access, filter: &ItemFilter) -> Result<ItemPage, HubError> {
        let (filter_sql, mut params) = self.where_clause(access, filter)?;
        let limit = filter.limit.clamp(1, PAGE_MAX);
        params.push(Value::Int(limit as i64 + 1));
        let order = format!(
            "{e} {dir}, i.id {dir}",
            e = filter.sort.expression(),
            dir = if filter.sort.descending {
                "DESC"
            } else {
                "ASC"
            }
        );
        self.tx(|sql| {
            let rows = sql.query(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM items i JOIN products p ON p.id = i.product_id \
                     {filter_sql} ORDER BY {order} LIMIT ?"
                ),
                &params,
            )?;
            let now = clock::now();
            let mut items = Vec::new();
            let mut last = None;
            let page: Vec<&crate::db::Row> = rows.iter().take(limit).collect();
            for row in &page {
                last = Some((filter.sort.value(row)?, row.int(0)?));
            }
            for stored in items_from(sql, &page, now)? {
                items.push(stored.item);
            }
            let next_cursor = (rows.len() > limit)
                .then_some(last)
                .flatten()
                .map(|(at, id)| format!("{at}.{id}"));
            Ok(ItemPage { items, next_cursor })
        })
    }
}
