//! An agent's work on an item: claim, release, status, pull requests,
//! checklist, and what it reads back (activity, context).

use serde::Deserialize;
use utoipa::ToSchema;

use super::fields::{add_checklist, check_checklist};
use super::items::{
    Access, CHECKLIST_MAX, CLAIM_MAX_SECONDS, Stored, TITLE_MAX, URL_MAX, activity, fetch, lock,
    reload,
};
use super::{Store, audit, bounded, one_line};
use crate::clock;
use crate::db::{Sql, Value};
use crate::error::HubError;
use crate::model::{Activity, Item, PrStatus, Status};

/// `PATCH .../status`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: Status,
    pub reason: Option<String>,
    /// What shows the change is right: test output, a URL, a log line.
    #[serde(default)]
    pub evidence: Vec<String>,
}

/// `PATCH .../pr`: a pull request linked to the item, matched by `url`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPr {
    pub url: String,
    pub number: Option<i64>,
    pub title: Option<String>,
    pub status: PrStatus,
    pub branch: Option<String>,
    pub commit: Option<String>,
}

/// `POST .../checklist`: entries to add, and entries (by id) to tick or untick.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecklistChange {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub check: Vec<i64>,
    #[serde(default)]
    pub uncheck: Vec<i64>,
}

impl Store {
    /// Claims the item for the asking agent until `seconds` from now; the
    /// holder may renew it, anybody may take an expired one.
    pub fn claim(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        seconds: u64,
    ) -> Result<Item, HubError> {
        if !(1..=CLAIM_MAX_SECONDS).contains(&seconds) {
            return Err(HubError::invalid(format!(
                "`seconds` must be 1 to {CLAIM_MAX_SECONDS}"
            )));
        }
        self.tx(|sql| {
            let before = fetch(sql, access, which)?;
            if before.item.status.category().is_finished() {
                return Err(HubError::Finished {
                    reference: before.item.reference.clone(),
                    status: before.item.status.to_string(),
                });
            }
            let stored = lock(sql, access, which, if_match, false)?;
            let expires = clock::now() + (seconds as i64) * 1000;
            set_claim(sql, access, &stored, Some(expires))
        })
    }

    /// Gives up the asking agent's claim.
    pub fn release(&self, access: &Access, which: &str, if_match: &str) -> Result<Item, HubError> {
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            set_claim(sql, access, &stored, None)
        })
    }

    pub fn change_status(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        change: &StatusChange,
    ) -> Result<Item, HubError> {
        if let Some(reason) = &change.reason {
            bounded("reason", reason, 2_000)?;
        }
        if change.evidence.len() > 20 {
            return Err(HubError::invalid("at most 20 pieces of `evidence`"));
        }
        for evidence in &change.evidence {
            bounded("evidence[]", evidence, 2_000)?;
        }
        let mut note = change.reason.clone().unwrap_or_default();
        for evidence in &change.evidence {
            note.push_str(&format!("\n- evidence: {evidence}"));
        }
        let note = note.trim().to_owned();
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            let finished = change.status.category().is_finished();
            sql.execute(
                "UPDATE items SET status = ? WHERE id = ?",
                &[change.status.as_str().into(), Value::Int(stored.item.id)],
            )?;
            if finished {
                sql.execute(
                    "UPDATE items SET claimed_by = NULL, claim_expires_at = NULL WHERE id = ?",
                    &[Value::Int(stored.item.id)],
                )?;
            }
            if stored.item.status != change.status {
                activity(
                    sql,
                    stored.item.id,
                    &access.actor.name,
                    "status",
                    Some(stored.item.status.as_str()),
                    Some(change.status.as_str()),
                    (!note.is_empty()).then_some(note.as_str()),
                )?;
            }
            access.audit(sql, "item.status", &stored.item.reference)?;
            let item = reload(sql, stored.item.id)?;
            super::forge::status_events(sql, stored.product_id, &item, stored.item.status)?;
            Ok(item)
        })
    }

    pub fn link_pr(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        pr: &NewPr,
    ) -> Result<Item, HubError> {
        bounded("url", &pr.url, URL_MAX)?;
        if !(pr.url.starts_with("https://") || pr.url.starts_with("http://")) {
            return Err(HubError::invalid(
                "`url` must be an http:// or https:// URL",
            ));
        }
        one_line("url", &pr.url, URL_MAX)?;
        for (field, value) in [
            ("title", &pr.title),
            ("branch", &pr.branch),
            ("commit", &pr.commit),
        ] {
            if let Some(value) = value {
                one_line(field, value, TITLE_MAX)?;
            }
        }
        self.tx(|sql| {
            let stored = lock(sql, access, which, if_match, false)?;
            let id = stored.item.id;
            let before = write_pr(sql, id, pr)?;
            let after = format!("{} {}", pr.url, pr.status);
            let before = before.map(|status| format!("{} {status}", pr.url));
            activity(
                sql,
                id,
                &access.actor.name,
                "pull_request",
                before.as_deref(),
                Some(&after),
                None,
            )?;
            access.audit(sql, "item.pr", &stored.item.reference)?;
            let item = reload(sql, id)?;
            super::outbox::pr_linked(sql, stored.product_id, &item, &pr.url)?;
            Ok(item)
        })
    }

    pub fn change_checklist(
        &self,
        access: &Access,
        which: &str,
        if_match: &str,
        change: &ChecklistChange,
        idempotency_key: Option<&str>,
        raw: &[u8],
    ) -> Result<(u16, String), HubError> {
        if change.check.len() + change.uncheck.len() > CHECKLIST_MAX {
            return Err(HubError::invalid(format!(
                "at most {CHECKLIST_MAX} entries change at once"
            )));
        }
        let request = [b"POST checklist".as_slice(), which.as_bytes(), raw];
        self.tx(|sql| {
            audit::idempotent(sql, access.key_id, idempotency_key, &request, |sql| {
                let stored = lock(sql, access, which, if_match, false)?;
                let id = stored.item.id;
                check_checklist(&change.add, stored.item.checklist.len())?;
                add_checklist(sql, id, &change.add)?;
                for text in &change.add {
                    activity(
                        sql,
                        id,
                        &access.actor.name,
                        "checklist",
                        None,
                        Some(text),
                        None,
                    )?;
                }
                for (entries, done) in [(&change.check, true), (&change.uncheck, false)] {
                    for entry in entries {
                        let Some(old) = stored.item.checklist.iter().find(|e| e.id == *entry)
                        else {
                            return Err(HubError::invalid(format!(
                                "checklist entry {entry} is not {}'s",
                                stored.item.reference
                            )));
                        };
                        sql.execute(
                            "UPDATE checklist SET done = ? WHERE id = ?",
                            &[Value::Int(done.into()), Value::Int(*entry)],
                        )?;
                        if old.done != done {
                            let mark = |d: bool| if d { "[x] " } else { "[ ] " };
                            activity(
                                sql,
                                id,
                                &access.actor.name,
                                "checklist",
                                Some(&format!("{}{}", mark(old.done), old.text)),
                                Some(&format!("{}{}", mark(done), old.text)),
                                None,
                            )?;
                        }
                    }
                }
                access.audit(sql, "item.checklist", &stored.item.reference)?;
                let item = reload(sql, id)?;
                let body =
                    serde_json::to_string(&item).map_err(|e| HubError::Internal(e.to_string()))?;
                Ok((200, body))
            })
        })
    }

    pub fn activity(&self, access: &Access, which: &str) -> Result<Vec<Activity>, HubError> {
        self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            sql.query(
                "SELECT actor, at, field, before, after, note FROM activity WHERE item_id = ? ORDER BY id LIMIT 1000",
                &[Value::Int(stored.item.id)],
            )?
            .iter()
            .map(|r| {
                Ok(Activity {
                    actor: r.text(0)?,
                    at: clock::format(r.int(1)?),
                    field: r.text(2)?,
                    before: r.opt_text(3)?,
                    after: r.opt_text(4)?,
                    note: r.opt_text(5)?,
                })
            })
            .collect()
        })
    }

    /// The item as one markdown document for an LLM's prompt: title,
    /// description, acceptance criteria, pull requests and comments.
    pub fn context(&self, access: &Access, which: &str) -> Result<String, HubError> {
        let (item, comments) = self.tx(|sql| {
            let stored = fetch(sql, access, which)?;
            let comments = super::comments::read(sql, stored.item.id, 100)?;
            Ok((stored.item, comments))
        })?;
        Ok(crate::context::render(&item, &comments))
    }
}

/// Writes the item's pull request at `pr.url`: a new row, or the one it
/// has. Answers its status before, `None` when it is new.
pub(super) fn write_pr(sql: &mut dyn Sql, id: i64, pr: &NewPr) -> Result<Option<String>, HubError> {
    let before = sql
        .query_one(
            "SELECT status FROM pull_requests WHERE item_id = ? AND url = ?",
            &[Value::Int(id), pr.url.as_str().into()],
        )?
        .map(|r| r.text(0))
        .transpose()?;
    let values = [
        Value::from(pr.number),
        pr.title.as_deref().into(),
        pr.status.as_str().into(),
        pr.branch.as_deref().into(),
        pr.commit.as_deref().into(),
        Value::Int(clock::now()),
        Value::Int(id),
        pr.url.as_str().into(),
    ];
    if before.is_some() {
        sql.execute(
            "UPDATE pull_requests SET number = ?, title = ?, status = ?, branch = ?, commit_sha = ?, \
             updated_at = ? WHERE item_id = ? AND url = ?",
            &values,
        )?;
    } else {
        sql.execute(
            "INSERT INTO pull_requests (number, title, status, branch, commit_sha, updated_at, item_id, url) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            &values,
        )?;
    }
    Ok(before)
}

/// Gives the claim of the item to the asker until `expires`, or ends it
/// (`None`); a change of holder goes to the activity log.
fn set_claim(
    sql: &mut dyn Sql,
    access: &Access,
    stored: &Stored,
    expires: Option<i64>,
) -> Result<Item, HubError> {
    let holder = expires.map(|_| access.actor.name.as_str());
    sql.execute(
        "UPDATE items SET claimed_by = ?, claim_expires_at = ? WHERE id = ?",
        &[holder.into(), expires.into(), Value::Int(stored.item.id)],
    )?;
    if stored.holder.as_deref() != holder {
        activity(
            sql,
            stored.item.id,
            &access.actor.name,
            "claim",
            stored.holder.as_deref(),
            holder,
            None,
        )?;
    }
    let action = match expires {
        Some(_) => "item.claim",
        None => "item.release",
    };
    access.audit(sql, action, &stored.item.reference)?;
    reload(sql, stored.item.id)
}
