//! Attachments of items: the rows naming a stored file (`blobs`), who
//! added it and under which name and type. Equal files share one stored
//! copy; each attachment is its own row.

use super::items::{Access, activity, fetch};
use super::{Store, one_line};
use crate::blobs::Blob;
use crate::clock;
use crate::db::{Row, Value};
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

impl Store {
    /// Refuses an upload to an item the key cannot reach, or that is full,
    /// before its body is read.
    pub fn check_attachable(&self, access: &Access, which: &str) -> Result<(), HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
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

    /// Records a stored file as an attachment of the item.
    pub fn add_attachment(
        &self,
        access: &Access,
        which: &str,
        blob: &Blob,
        name: &str,
        content_type: &str,
    ) -> Result<Attachment, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
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
