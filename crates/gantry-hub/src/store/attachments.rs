//! Attachments of items: the rows naming a stored file (`blobs`), who
//! added it and under which name and type. Equal files share one stored
//! copy; each attachment is its own row, and counts whole against its
//! product's quota. Its uploader or an admin of the product deletes it;
//! the file goes with the last row naming it.

use super::items::{Access, activity, fetch};
use super::{Store, one_line};
use crate::blobs::Blob;
use crate::clock;
use crate::db::{Row, Sql, Value};
use crate::error::HubError;
use crate::model::Attachment;

/// The largest attachment, in bytes (25 MB).
pub const ATTACHMENT_MAX: u64 = 25 * 1024 * 1024;
/// The most attachments one item has.
const ATTACHMENTS_MAX: i64 = 100;

/// Checks a file name: one line, no path.
pub fn check_file_name(name: &str) -> Result<(), HubError> {
    one_line("name", name, 200)?;
    if name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(HubError::invalid(format!(
            "file name `{}` holds a path; give the name alone",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// A content type's essence, lowercased (`image/png`), or why it is not one.
pub fn content_type(text: &str) -> Result<String, HubError> {
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match essence.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => Ok(essence),
        _ => Err(HubError::Invalid {
            message: format!("`{}` is not a content type", text.escape_debug()),
            hint: Some("send Content-Type: type/subtype, like image/png".to_owned()),
        }),
    }
}

const COLUMNS: &str = "a.id, p.key, i.seq, a.name, a.content_type, a.size, a.sha256, \
     a.uploader, a.created_at";

fn attachment_from(row: &Row) -> Result<Attachment, HubError> {
    Ok(Attachment {
        id: row.int(0)?,
        item: format!("{}-{}", row.text(1)?, row.int(2)?),
        name: row.text(3)?,
        content_type: row.text(4)?,
        size: row.int(5)?,
        sha256: row.text(6)?,
        uploader: row.text(7)?,
        created_at: clock::format(row.int(8)?),
    })
}

/// The bytes a product's attachments take.
fn used(sql: &mut dyn Sql, product_id: i64) -> Result<u64, HubError> {
    let used = sql
        .query_one(
            "SELECT CAST(COALESCE(SUM(a.size), 0) AS BIGINT) FROM attachments a JOIN items i ON i.id = a.item_id \
             WHERE i.product_id = ?",
            &[Value::Int(product_id)],
        )?
        .map_or(Ok(0), |r| r.int(0))?;
    Ok(u64::try_from(used).unwrap_or(0))
}

/// Refuses `adding` more bytes to a product already at `used`.
fn within_quota(product: &str, used: u64, adding: u64, quota: u64) -> Result<(), HubError> {
    let needed = used.saturating_add(adding);
    if needed > quota {
        return Err(HubError::QuotaExceeded {
            product: product.to_owned(),
            needed,
            quota,
        });
    }
    Ok(())
}

impl Store {
    /// Refuses an upload to an item the key cannot reach, that is full, or
    /// whose product's attachments would pass `quota` bytes with the
    /// `declared` length, before its body is read.
    pub fn check_attachable(
        &self,
        access: &Access,
        which: &str,
        declared: Option<u64>,
        quota: u64,
    ) -> Result<(), HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            let used = used(sql, stored.product_id)?;
            within_quota(&stored.item.product, used, declared.unwrap_or(1), quota)?;
            let count = sql
                .query_one(
                    "SELECT COUNT(*) FROM attachments WHERE item_id = ?",
                    &[Value::Int(stored.item.id)],
                )?
                .map_or(Ok(0), |r| r.int(0))?;
            if count >= ATTACHMENTS_MAX {
                return Err(HubError::invalid(format!(
                    "{} has {ATTACHMENTS_MAX} attachments, the most an item has",
                    stored.item.reference
                )));
            }
            Ok(())
        })
    }

    /// Records a stored file as an attachment of the item, within its
    /// product's `quota` of bytes.
    pub fn add_attachment(
        &self,
        access: &Access,
        which: &str,
        blob: &Blob,
        name: &str,
        content_type: &str,
        quota: u64,
    ) -> Result<Attachment, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            let used = used(sql, stored.product_id)?;
            within_quota(&stored.item.product, used, blob.size, quota)?;
            let now = clock::now();
            let id = sql
                .query_one(
                    "INSERT INTO attachments (item_id, sha256, name, content_type, size, uploader, \
                     created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    &[
                        Value::Int(stored.item.id),
                        blob.sha256.as_str().into(),
                        name.into(),
                        content_type.into(),
                        Value::Int(i64::try_from(blob.size).unwrap_or(i64::MAX)),
                        access.actor.name.as_str().into(),
                        Value::Int(now),
                    ],
                )?
                .ok_or_else(|| HubError::Internal("INSERT returned no id".to_owned()))?
                .int(0)?;
            sql.execute(
                "UPDATE items SET updated_at = ? WHERE id = ?",
                &[Value::Int(now), Value::Int(stored.item.id)],
            )?;
            let after = format!("{name} ({} bytes)", blob.size);
            activity(
                sql,
                stored.item.id,
                &access.actor.name,
                "attachment",
                None,
                Some(&after),
                None,
            )?;
            access.audit(sql, "attachment.add", &stored.item.reference)?;
            Ok(Attachment {
                id,
                item: stored.item.reference.clone(),
                name: name.to_owned(),
                content_type: content_type.to_owned(),
                size: i64::try_from(blob.size).unwrap_or(i64::MAX),
                sha256: blob.sha256.clone(),
                uploader: access.actor.name.clone(),
                created_at: clock::format(now),
            })
        })
    }

    /// Deletes an attachment, for its uploader or, with `admin`, an admin
    /// of its product. Answers the file's digest when no attachment names
    /// that file any more (the caller removes it).
    pub fn delete_attachment(
        &self,
        access: &Access,
        admin: Option<&Access>,
        which: &str,
        id: i64,
    ) -> Result<Option<String>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            let row = sql
                .query_one(
                    "SELECT uploader, sha256, name FROM attachments WHERE item_id = ? AND id = ?",
                    &[Value::Int(stored.item.id), Value::Int(id)],
                )?
                .ok_or_else(|| {
                    HubError::not_found(format!("attachment {id} of {}", stored.item.reference))
                })?;
            let (uploader, sha256, name) = (row.text(0)?, row.text(1)?, row.text(2)?);
            let product_admin = admin.is_some_and(|a| a.scope.allows(stored.product_id));
            if uploader != access.actor.name && !product_admin {
                return Err(HubError::Forbidden {
                    message: format!(
                        "attachment {id} of {} was added by `{uploader}`: only they or an admin \
                         of {} may delete it",
                        stored.item.reference, stored.item.product
                    ),
                });
            }
            sql.execute("DELETE FROM attachments WHERE id = ?", &[Value::Int(id)])?;
            let now = clock::now();
            sql.execute(
                "UPDATE items SET updated_at = ? WHERE id = ?",
                &[Value::Int(now), Value::Int(stored.item.id)],
            )?;
            activity(
                sql,
                stored.item.id,
                &access.actor.name,
                "attachment",
                Some(&name),
                None,
                None,
            )?;
            access.audit(sql, "attachment.delete", &stored.item.reference)?;
            Ok((!referenced(sql, &sha256)?).then_some(sha256))
        })
    }

    /// Of `digests`, those no attachment names.
    pub fn unnamed_blobs(&self, digests: Vec<String>) -> Result<Vec<String>, HubError> {
        if digests.is_empty() {
            return Ok(digests);
        }
        let named = self.tx(|sql| {
            sql.query("SELECT DISTINCT sha256 FROM attachments", &[])?
                .iter()
                .map(|row| row.text(0))
                .collect::<Result<std::collections::HashSet<String>, _>>()
                .map_err(HubError::from)
        })?;
        Ok(digests.into_iter().filter(|d| !named.contains(d)).collect())
    }

    /// Whether an attachment names the file of `sha256`.
    pub fn blob_referenced(&self, sha256: &str) -> Result<bool, HubError> {
        self.tx(|sql| referenced(sql, sha256))
    }

    pub fn attachments(&self, access: &Access, which: &str) -> Result<Vec<Attachment>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            sql.query(
                &format!(
                    "SELECT {COLUMNS} FROM attachments a JOIN items i ON i.id = a.item_id \
                     JOIN products p ON p.id = i.product_id WHERE a.item_id = ? ORDER BY a.id"
                ),
                &[Value::Int(stored.item.id)],
            )?
            .iter()
            .map(attachment_from)
            .collect()
        })
    }

    pub fn attachment(
        &self,
        access: &Access,
        which: &str,
        id: i64,
    ) -> Result<Attachment, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            let row = sql
                .query_one(
                    &format!(
                        "SELECT {COLUMNS} FROM attachments a JOIN items i ON i.id = a.item_id \
                         JOIN products p ON p.id = i.product_id WHERE a.item_id = ? AND a.id = ?"
                    ),
                    &[Value::Int(stored.item.id), Value::Int(id)],
                )?
                .ok_or_else(|| {
                    HubError::not_found(format!("attachment {id} of {}", stored.item.reference))
                })?;
            attachment_from(&row)
        })
    }
}

fn referenced(sql: &mut dyn Sql, sha256: &str) -> Result<bool, HubError> {
    Ok(sql
        .query_one(
            "SELECT COUNT(*) FROM attachments WHERE sha256 = ?",
            &[sha256.into()],
        )?
        .map_or(Ok(0), |r| r.int(0))?
        > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_kept_by_their_essence() {
        assert_eq!(
            content_type("Text/Plain; charset=utf-8").unwrap(),
            "text/plain"
        );
        assert!(content_type("text").is_err());
        assert!(content_type("text/plain\r\nX-Evil: 1").is_err());
        assert!(check_file_name("../etc/passwd").is_err());
        assert!(check_file_name("log.txt").is_ok());
    }
}
