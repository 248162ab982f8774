//! What an item shows besides its own row (labels, checklist, links, pull
//! requests, milestone, parent, sub-task progress, custom values), read for
//! a whole page of items in one query each rather than one per item.

use std::collections::{BTreeMap, HashMap};

use super::items::parse;
use super::products::milestone_from;
use crate::clock;
use crate::db::{DbError, Row, Sql, Value};
use crate::model::{
    ChecklistEntry, Label, Link, LinkKind, Milestone, PrStatus, Progress, PullRequest,
};

/// `?, ?, ?` for `n` values.
pub(super) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(super) fn ids(ids: &[i64]) -> Vec<Value> {
    ids.iter().map(|&id| Value::Int(id)).collect()
}

/// The extras of a set of items, each map by item id (milestones and
/// parents by their own id).
#[derive(Default)]
pub(super) struct Extras {
    pub(super) labels: HashMap<i64, Vec<Label>>,
    pub(super) checklist: HashMap<i64, Vec<ChecklistEntry>>,
    pub(super) links: HashMap<i64, Vec<Link>>,
    pub(super) pull_requests: HashMap<i64, Vec<PullRequest>>,
    pub(super) milestones: HashMap<i64, Milestone>,
    pub(super) parents: HashMap<i64, String>,
    pub(super) subtasks: HashMap<i64, Progress>,
    pub(super) custom: HashMap<i64, BTreeMap<String, serde_json::Value>>,
}

impl Extras {
    /// Reads the extras of the items in `rows` (read with `ITEM_COLUMNS`).
    pub(super) fn load(sql: &mut dyn Sql, rows: &[&Row]) -> Result<Extras, DbError> {
        let mut items = Vec::new();
        let mut milestones = Vec::new();
        let mut parents = Vec::new();
        for row in rows {
            items.push(row.int(0)?);
            milestones.extend(row.opt_int(28)?);
            parents.extend(row.opt_int(27)?);
        }
        if items.is_empty() {
            return Ok(Extras::default());
        }
        Ok(Extras {
            labels: grouped(
                sql,
                "SELECT il.item_id, l.name, l.color FROM item_labels il \
                 JOIN labels l ON l.id = il.label_id WHERE il.item_id IN (#) ORDER BY l.name",
                &items,
                |r| {
                    Ok(Label {
                        name: r.text(1)?,
                        color: r.text(2)?,
                    })
                },
            )?,
            checklist: grouped(
                sql,
                "SELECT item_id, id, text, done FROM checklist WHERE item_id IN (#) \
                 ORDER BY position, id",
                &items,
                |r| {
                    Ok(ChecklistEntry {
                        id: r.int(1)?,
                        text: r.text(2)?,
                        done: r.int(3)? != 0,
                    })
                },
            )?,
            links: links(sql, &items)?,
            pull_requests: grouped(
                sql,
                "SELECT item_id, url, number, title, status, branch, commit_sha, updated_at \
                 FROM pull_requests WHERE item_id IN (#) ORDER BY id",
                &items,
                pull_request,
            )?,
            milestones: single(
                sql,
                "SELECT id, name, target_date FROM milestones WHERE id IN (#)",
                &milestones,
                |r| milestone_from(&Row(r.0[1..].to_vec())),
            )?,
            parents: single(
                sql,
                "SELECT i.id, p.key, i.seq FROM items i JOIN products p ON p.id = i.product_id \
                 WHERE i.id IN (#)",
                &parents,
                |r| Ok(format!("{}-{}", r.text(1)?, r.int(2)?)),
            )?,
            subtasks: single(
                sql,
                "SELECT parent_id, COUNT(*), COALESCE(SUM(CASE WHEN status IN \
                 ('done', 'closed', 'wont_fix') THEN 1 ELSE 0 END), 0) FROM items \
                 WHERE parent_id IN (#) GROUP BY parent_id",
                &items,
                |r| {
                    Ok(Progress {
                        total: r.int(1)?,
                        finished: r.int(2)?,
                    })
                },
            )?,
            custom: super::custom::values_of_many(sql, &items)?,
        })
    }
}

fn pull_request(r: &Row) -> Result<PullRequest, DbError> {
    Ok(PullRequest {
        url: r.text(1)?,
        number: r.opt_int(2)?,
        title: r.opt_text(3)?,
        status: parse("pull request status", r.text(4)?, PrStatus::parse)?,
        branch: r.opt_text(5)?,
        commit: r.opt_text(6)?,
        updated_at: clock::format(r.int(7)?),
    })
}

/// Runs `query` (its `#` standing for the ids' placeholders), whose first
/// column is the id each row belongs to; the rows read by `read`, grouped.
fn grouped<T>(
    sql: &mut dyn Sql,
    query: &str,
    ids: &[i64],
    read: fn(&Row) -> Result<T, DbError>,
) -> Result<HashMap<i64, Vec<T>>, DbError> {
    let mut out: HashMap<i64, Vec<T>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    for r in sql.query(&query.replace('#', &marks(ids.len())), &self::ids(ids))? {
        out.entry(r.int(0)?).or_default().push(read(&r)?);
    }
    Ok(out)
}

/// As [`grouped`], one row per id.
fn single<T>(
    sql: &mut dyn Sql,
    query: &str,
    ids: &[i64],
    read: fn(&Row) -> Result<T, DbError>,
) -> Result<HashMap<i64, T>, DbError> {
    Ok(grouped(sql, query, ids, read)?
        .into_iter()
        .filter_map(|(id, mut v)| v.pop().map(|v| (id, v)))
        .collect())
}

/// Links made from these items, and those made from others seen from
/// them (SHOP-2 blocks SHOP-5: SHOP-5 is blocked by SHOP-2).
fn links(sql: &mut dyn Sql, items: &[i64]) -> Result<HashMap<i64, Vec<Link>>, DbError> {
    let marks = marks(items.len());
    let mut params = ids(items);
    params.extend(ids(items));
    let rows = sql.query(
        &format!(
            "SELECT k.item_id, k.kind, p.key, t.seq, 0 FROM links k JOIN items t ON t.id = k.target_id \
             JOIN products p ON p.id = t.product_id WHERE k.item_id IN ({marks}) \
             UNION ALL SELECT k.target_id, k.kind, p.key, s.seq, 1 FROM links k \
             JOIN items s ON s.id = k.item_id \
             JOIN products p ON p.id = s.product_id WHERE k.target_id IN ({marks})"
        ),
        &params,
    )?;
    let mut out: HashMap<i64, Vec<Link>> = HashMap::new();
    for r in &rows {
        let kind = parse("link kind", r.text(1)?, LinkKind::parse)?;
        let link = Link {
            kind: if r.int(4)? == 1 { kind.inverse() } else { kind },
            target: format!("{}-{}", r.text(2)?, r.int(3)?),
        };
        let links = out.entry(r.int(0)?).or_default();
        if !links.contains(&link) {
            links.push(link);
        }
    }
    Ok(out)
}
