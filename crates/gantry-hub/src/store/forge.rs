//! Webhooks in: a product's shared secret with its forge, the deliveries
//! received (the last 100 a product, for replay), and what a delivery does
//! to the item its branch names: a pull request opened links it and
//! starts the item, merged finishes it with a comment, closed unmerged
//! comments; a failed check comments its summary.

use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::items::{Access, activity, load};
use super::outbox::{Event, comment_added, emit, pr_linked, product_for};
use super::work::{NewPr, write_pr};
use super::{Store, audit};
use crate::clock;
use crate::db::{Row, Sql, Value};
use crate::error::HubError;
use crate::model::{Comment, PrStatus, Status};
use crate::seal::Purpose;
use crate::webhooks::forge::{self, Forge, ForgeEvent, PrAction, PullRequest};
use crate::webhooks::signature;

/// Deliveries kept per product.
const KEEP: i64 = 100;

/// How long the forge secrets read from the database are used before they
/// are read again: a new secret made by another hub on the same PostgreSQL
/// database is taken (and the one it replaced refused) within this.
const KEYS_FRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// How many products with a forge secret the generic paths
/// (`/api/webhooks/github`, `/gitea`, which name no product) serve. A
/// delivery there is checked against every product's secret, so an
/// unauthenticated request costs one HMAC of its body (up to 1 MiB) per
/// product: up to 8 that is at most 8 MiB of SHA-256 a request, a few
/// milliseconds, within the per-address rate limit, and hooks configured
/// before the product paths existed keep working on small hubs. With more,
/// a generic delivery is refused before any HMAC (its hint names the
/// product path), so its cost no longer grows with the products. All it
/// tells is that the hub has more than 8 products with forge secrets,
/// never which.
pub const GENERIC_PRODUCTS_MAX: usize = 8;

/// A fixed stand-in secret: a delivery for a product with no secret (or
/// none of that key) is checked against it, costing what a wrong signature
/// for a real product costs, and then refused whatever it says.
const DECOY: &str = "a stand-in for the secret of a product that has none";

/// A product's forge secret, with the product's id and key.
struct ForgeKey {
    product_id: i64,
    product: String,
    secret: String,
}

/// The products' forge secrets.
type Secrets = std::sync::Arc<Vec<ForgeKey>>;

/// The products' forge secrets, held in memory between reads so that a
/// delivery's signature is checked without touching the database.
#[derive(Default)]
pub struct ForgeKeys {
    read: std::sync::Mutex<Option<(std::time::Instant, Secrets)>>,
}

impl ForgeKeys {
    /// The secrets, read by `read` when none were read in the last
    /// [`KEYS_FRESH`].
    fn current(
        &self,
        read: impl FnOnce() -> Result<Vec<ForgeKey>, HubError>,
    ) -> Result<Secrets, HubError> {
        let mut held = self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, keys)) = held.as_ref()
            && at.elapsed() < KEYS_FRESH
        {
            return Ok(keys.clone());
        }
        let keys = std::sync::Arc::new(read()?);
        *held = Some((std::time::Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// Drops the secrets held, after this hub changed one.
    fn forget(&self) {
        *self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// A delivery as received, and what it did.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub product: String,
    pub forge: String,
    /// The forge's delivery id (`X-GitHub-Delivery`, `X-Gitea-Delivery`).
    pub delivery: String,
    pub event: String,
    pub received_at: String,
    /// `linked SHOP-3 ...`, `duplicate`, `ignored: ...`.
    pub outcome: String,
}

/// What the hub made of a delivery.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Received {
    pub outcome: String,
    pub duplicate: bool,
}

/// A delivery as it arrived.
pub struct Incoming<'a> {
    pub forge: Forge,
    /// The product key its path names (`/api/webhooks/github/{product}`),
    /// or `None` on the generic paths.
    pub product: Option<&'a str>,
    pub event: &'a str,
    pub delivery: &'a str,
    pub signature: &'a str,
    pub body: &'a [u8],
    pub client: &'a str,
}

fn delivery_from(row: &Row) -> Result<Delivery, HubError> {
    Ok(Delivery {
        id: row.int(0)?,
        product: row.text(1)?,
        forge: row.text(2)?,
        delivery: row.text(3)?,
        event: row.text(4)?,
        received_at: clock::format(row.int(5)?),
        outcome: row.text(6)?,
    })
}

const DELIVERY_COLUMNS: &str =
    "d.id, p.key, d.forge, d.delivery, d.event, d.received_at, d.outcome";

impl Store {
    /// Gives a product a new secret for its forge's webhooks; the answer is
    /// the only time it is shown. The old one stops working at once.
    pub fn new_forge_secret(&self, access: &Access, product: &str) -> Result<String, HubError> {
        let secret = gantry_core::artifact::hex(&rand::random::<[u8; 32]>());
        let sealed = self.seal.seal(Purpose::Forge, &secret)?;
        self.tx(|sql| {
            let product_id = product_for(sql, access, product)?;
            sql.execute(
                "DELETE FROM forge_secrets WHERE product_id = ?",
                &[Value::Int(product_id)],
            )?;
            sql.execute(
                "INSERT INTO forge_secrets (product_id, secret, created_at) VALUES (?, ?, ?)",
                &[
                    Value::Int(product_id),
                    sealed.as_str().into(),
                    Value::Int(clock::now()),
                ],
            )?;
            access.audit(sql, "forge.secret", product)?;
            Ok(secret.clone())
        })
        .inspect(|_| self.forge_keys.forget())
    }

    /// Takes a delivery: finds the product whose secret signed it (each
    /// checked in constant time) before any transaction, then drops a
    /// delivery id seen before, keeps the delivery and acts on it, all in
    /// one transaction. The secrets come from memory ([`ForgeKeys`]), so a
    /// flood of unsigned or forged deliveries costs HMACs, not database
    /// locks; refusals are counted, a row a minute per client at most
    /// ([`Refusals`](super::audit::Refusals)).
    pub fn receive(&self, incoming: &Incoming<'_>) -> Result<Received, HubError> {
        let forge = incoming.forge.as_str();
        let body = std::str::from_utf8(incoming.body)
            .map_err(|_| HubError::invalid("the payload is not UTF-8"))?;
        let Some(product_id) = self.signer(incoming)? else {
            self.audit_refusal(&audit::Refusal {
                actor: forge,
                action: "webhook.receive",
                target: None,
                outcome: "bad signature",
                client: incoming.client,
            })?;
            let message = match incoming.product {
                Some(_) => format!(
                    "the {forge} delivery's signature does not match its product's forge secret"
                ),
                None => format!("the {forge} delivery's signature matches no product's secret"),
            };
            return Err(HubError::BadSignature { message });
        };
        self.tx(|sql| {
            let inserted = sql.execute(
                "INSERT INTO forge_deliveries (product_id, forge, delivery, event, body, received_at, outcome) \
                 VALUES (?, ?, ?, ?, ?, ?, 'received') ON CONFLICT DO NOTHING",
                &[
                    Value::Int(product_id),
                    forge.into(),
                    incoming.delivery.into(),
                    incoming.event.into(),
                    body.into(),
                    Value::Int(clock::now()),
                ],
            )?;
            if inserted == 0 {
                audit::record(sql, forge, Some(incoming.client), "webhook.receive", Some(incoming.delivery), "duplicate")?;
                return Ok(Received {
                    outcome: "duplicate: this delivery was received before".to_owned(),
                    duplicate: true,
                });
            }
            let outcome = act(sql, product_id, incoming.forge, incoming.event, incoming.body)?;
            sql.execute(
                "UPDATE forge_deliveries SET outcome = ? WHERE product_id = ? AND forge = ? AND delivery = ?",
                &[outcome.as_str().into(), Value::Int(product_id), forge.into(), incoming.delivery.into()],
            )?;
            sql.execute(
                "DELETE FROM forge_deliveries WHERE product_id = ? AND id NOT IN \
                 (SELECT id FROM forge_deliveries WHERE product_id = ? ORDER BY id DESC LIMIT ?)",
                &[Value::Int(product_id), Value::Int(product_id), Value::Int(KEEP)],
            )?;
            audit::record(sql, forge, Some(incoming.client), "webhook.receive", Some(incoming.delivery), &outcome)?;
            Ok(Received { outcome, duplicate: false })
        })
    }

    /// The product whose secret signed the delivery, or `None`. On a
    /// product's path, that product's secret alone is tried: one HMAC
    /// whether the product exists and has a secret or not, so neither the
    /// answer nor its cost tells which product keys exist. On a generic
    /// path, every product's, while there are at most
    /// [`GENERIC_PRODUCTS_MAX`] of them; past that it is refused unhashed.
    fn signer(&self, incoming: &Incoming<'_>) -> Result<Option<i64>, HubError> {
        let keys = self.forge_keys.current(|| {
            self.tx(|sql| {
                sql.query(
                    "SELECT f.product_id, p.key, f.secret FROM forge_secrets f \
                     JOIN products p ON p.id = f.product_id",
                    &[],
                )?
                .iter()
                .map(|row| {
                    Ok(ForgeKey {
                        product_id: row.int(0)?,
                        product: row.text(1)?,
                        secret: self.seal.open(Purpose::Forge, &row.text(2)?)?,
                    })
                })
                .collect()
            })
        })?;
        let signed = |secret: &str| {
            signature::forge_signature_matches(secret, incoming.body, incoming.signature)
        };
        if let Some(product) = incoming.product {
            let key = keys.iter().find(|k| k.product == product);
            let matches = signed(key.map_or(DECOY, |k| k.secret.as_str()));
            return Ok(key.filter(|_| matches).map(|k| k.product_id));
        }
        let forge = incoming.forge.as_str();
        if keys.len() > GENERIC_PRODUCTS_MAX {
            self.audit_refusal(&audit::Refusal {
                actor: forge,
                action: "webhook.receive",
                target: None,
                outcome: "generic path refused",
                client: incoming.client,
            })?;
            return Err(HubError::Invalid {
                message: format!(
                    "this hub has more than {GENERIC_PRODUCTS_MAX} products with forge secrets: \
                     a {forge} delivery must name its product in its path"
                ),
                hint: Some(format!(
                    "point the forge's webhook at /api/webhooks/{forge}/{{product}}, the key of \
                     the product it is for (`POST /api/admin/products/{{product}}/forge-secret` \
                     answers both paths)"
                )),
            });
        }
        let mut found = None;
        for key in keys.iter() {
            // Every secret is tried, so the time taken does not say which
            // product's matched.
            if signed(&key.secret) && found.is_none() {
                found = Some(key.product_id);
            }
        }
        Ok(found)
    }

    /// A product's last deliveries, newest first.
    pub fn deliveries(&self, access: &Access, product: &str) -> Result<Vec<Delivery>, HubError> {
        self.tx(|sql| {
            let product_id = product_for(sql, access, product)?;
            sql.query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM forge_deliveries d JOIN products p ON p.id = d.product_id \
                     WHERE d.product_id = ? ORDER BY d.id DESC LIMIT ?"
                ),
                &[Value::Int(product_id), Value::Int(KEEP)],
            )?
            .iter()
            .map(delivery_from)
            .collect()
        })
    }

    /// Acts on a kept delivery again, as if it had just arrived (its
    /// signature was checked when it did).
    pub fn replay(&self, access: &Access, id: i64) -> Result<Delivery, HubError> {
        self.tx(|sql| {
            let row = sql
                .query_one(
                    "SELECT product_id, forge, event, body FROM forge_deliveries WHERE id = ?",
                    &[Value::Int(id)],
                )?
                .ok_or_else(|| HubError::not_found(format!("delivery {id}")))?;
            let product_id = row.int(0)?;
            if !access.scope.allows(product_id) {
                return Err(HubError::not_found(format!("delivery {id}")));
            }
            let forge = Forge::parse(&row.text(1)?)
                .ok_or_else(|| HubError::Internal("a stored delivery names no forge".to_owned()))?;
            let outcome = act(sql, product_id, forge, &row.text(2)?, row.text(3)?.as_bytes())?;
            let outcome = format!("replayed by {}: {outcome}", access.actor.name);
            sql.execute(
                "UPDATE forge_deliveries SET outcome = ? WHERE id = ?",
                &[outcome.as_str().into(), Value::Int(id)],
            )?;
            access.audit(sql, "webhook.replay", &format!("delivery {id}"))?;
            let row = sql
                .query_one(
                    &format!(
                        "SELECT {DELIVERY_COLUMNS} FROM forge_deliveries d JOIN products p ON p.id = d.product_id \
                         WHERE d.id = ?"
                    ),
                    &[Value::Int(id)],
                )?
                .ok_or_else(|| HubError::not_found(format!("delivery {id}")))?;
            delivery_from(&row)
        })
    }
}

/// Does what a delivery asks; its outcome, for the delivery's record.
fn act(
    sql: &mut dyn Sql,
    product_id: i64,
    forge: Forge,
    event: &str,
    body: &[u8],
) -> Result<String, HubError> {
    let actor = forge.as_str();
    match forge::parse(event, body) {
        Err(unreadable) => Ok(format!("ignored: {unreadable}")),
        Ok(ForgeEvent::Ignored(why)) => Ok(format!("ignored: {why}")),
        Ok(ForgeEvent::PullRequest { action, pr, sender }) => {
            let Some(item) = item_of(sql, product_id, Some(&pr.branch), None)? else {
                return Ok(format!(
                    "ignored: branch `{}` names no item of this product",
                    pr.branch
                ));
            };
            pull_request(sql, product_id, item, actor, action, &pr, sender.as_deref())
        }
        Ok(ForgeEvent::CheckFailed {
            branch,
            commit,
            name,
            summary,
            url,
        }) => {
            let Some(item) = item_of(sql, product_id, branch.as_deref(), commit.as_deref())? else {
                return Ok(
                    "ignored: the check's branch and commit name no item of this product"
                        .to_owned(),
                );
            };
            let mut body = format!("Check **{name}** failed");
            if let Some(branch) = &branch {
                body.push_str(&format!(" on `{branch}`"));
            }
            if let Some(commit) = &commit {
                body.push_str(&format!(
                    " at {}",
                    commit.chars().take(12).collect::<String>()
                ));
            }
            body.push_str(&format!(":\n\n{summary}"));
            if let Some(url) = &url {
                body.push_str(&format!("\n\n{url}"));
            }
            let reference = comment(sql, product_id, item, actor, &body)?;
            Ok(format!("commented on {reference}: check {name} failed"))
        }
    }
}

/// The item of this product a branch names (`tracker-17...`), or else the
/// one a pull request at `commit` is linked to.
fn item_of(
    sql: &mut dyn Sql,
    product_id: i64,
    branch: Option<&str>,
    commit: Option<&str>,
) -> Result<Option<i64>, HubError> {
    if let Some(id) = branch.and_then(forge::item_in_branch) {
        let found = sql.query_one(
            "SELECT id FROM items WHERE id = ? AND product_id = ?",
            &[Value::Int(id), Value::Int(product_id)],
        )?;
        if found.is_some() {
            return Ok(Some(id));
        }
    }
    let Some(commit) = commit else {
        return Ok(None);
    };
    Ok(sql
        .query_one(
            "SELECT r.item_id FROM pull_requests r JOIN items i ON i.id = r.item_id \
             WHERE r.commit_sha = ? AND i.product_id = ? ORDER BY r.updated_at DESC",
            &[commit.into(), Value::Int(product_id)],
        )?
        .map(|r| r.int(0))
        .transpose()?)
}

/// Bumps the item's version (a forge's change moves the ETag like any).
fn touch(sql: &mut dyn Sql, item: i64) -> Result<(), HubError> {
    sql.execute(
        "UPDATE items SET version = version + 1, updated_at = ? WHERE id = ?",
        &[Value::Int(clock::now()), Value::Int(item)],
    )?;
    Ok(())
}

fn pull_request(
    sql: &mut dyn Sql,
    product_id: i64,
    id: i64,
    actor: &str,
    action: PrAction,
    pr: &PullRequest,
    sender: Option<&str>,
) -> Result<String, HubError> {
    let status = match action {
        PrAction::Opened | PrAction::Updated if pr.draft => PrStatus::Draft,
        PrAction::Opened | PrAction::Updated => PrStatus::Open,
        PrAction::Merged => PrStatus::Merged,
        PrAction::ClosedUnmerged => PrStatus::Closed,
    };
    let before = write_pr(
        sql,
        id,
        &NewPr {
            url: pr.url.clone(),
            number: pr.number,
            title: pr.title.as_deref().map(|t| t.chars().take(200).collect()),
            status,
            branch: Some(pr.branch.chars().take(200).collect()),
            commit: pr.commit.clone(),
        },
    )?;
    touch(sql, id)?;
    let after = format!("{} {status}", pr.url);
    let before_text = before.as_ref().map(|s| format!("{} {s}", pr.url));
    if before_text.as_deref() != Some(after.as_str()) {
        activity(
            sql,
            id,
            actor,
            "pull_request",
            before_text.as_deref(),
            Some(&after),
            None,
        )?;
    }
    let stored = load(sql, id)?.ok_or_else(|| HubError::not_found(format!("item {id}")))?;
    let reference = stored.item.reference.clone();
    pr_linked(sql, product_id, &stored.item, &pr.url)?;
    let by = sender.map(|s| format!(" by {s}")).unwrap_or_default();
    let title = pr.title.as_deref().unwrap_or("pull request");
    match action {
        PrAction::Opened if stored.item.status == Status::Open => {
            set_status(
                sql,
                product_id,
                id,
                actor,
                Status::InProgress,
                &format!("pull request {} opened{by}", pr.url),
            )?;
            Ok(format!("linked {} to {reference}, now in_progress", pr.url))
        }
        PrAction::Opened | PrAction::Updated => Ok(format!("linked {} to {reference}", pr.url)),
        PrAction::Merged => {
            comment(
                sql,
                product_id,
                id,
                actor,
                &format!("Merged [{title}]({}){by}.", pr.url),
            )?;
            if !stored.item.status.category().is_finished() {
                set_status(
                    sql,
                    product_id,
                    id,
                    actor,
                    Status::Done,
                    &format!("pull request {} merged{by}", pr.url),
                )?;
            }
            Ok(format!("{reference} done: {} merged", pr.url))
        }
        PrAction::ClosedUnmerged => {
            comment(
                sql,
                product_id,
                id,
                actor,
                &format!("Closed without merging: [{title}]({}){by}.", pr.url),
            )?;
            Ok(format!(
                "commented on {reference}: {} closed unmerged",
                pr.url
            ))
        }
    }
}

/// Moves an item to `status` as the forge, with the activity and the
/// events a status change makes.
fn set_status(
    sql: &mut dyn Sql,
    product_id: i64,
    id: i64,
    actor: &str,
    status: Status,
    note: &str,
) -> Result<(), HubError> {
    let before = load(sql, id)?.ok_or_else(|| HubError::not_found(format!("item {id}")))?;
    sql.execute(
        "UPDATE items SET status = ? WHERE id = ?",
        &[status.as_str().into(), Value::Int(id)],
    )?;
    if status.category().is_finished() {
        sql.execute(
            "UPDATE items SET claimed_by = NULL, claim_expires_at = NULL WHERE id = ?",
            &[Value::Int(id)],
        )?;
    }
    touch(sql, id)?;
    let from = before.item.status;
    activity(
        sql,
        id,
        actor,
        "status",
        Some(from.as_str()),
        Some(status.as_str()),
        Some(note),
    )?;
    let after = load(sql, id)?.ok_or_else(|| HubError::not_found(format!("item {id}")))?;
    status_events(sql, product_id, &after.item, from)
}

/// The events of a status change from `from` to the item's status now.
pub(super) fn status_events(
    sql: &mut dyn Sql,
    product_id: i64,
    item: &crate::model::Item,
    from: Status,
) -> Result<(), HubError> {
    if item.status == from {
        return Ok(());
    }
    let summary = format!("{from} → {}", item.status);
    emit(
        sql,
        product_id,
        Event::ItemStatusChanged,
        item,
        json!({"from": from, "to": item.status}),
        &summary,
    )?;
    if item.status.category().is_finished() && !from.category().is_finished() {
        emit(
            sql,
            product_id,
            Event::ItemClosed,
            item,
            json!({"from": from, "to": item.status}),
            &format!("closed as {}", item.status),
        )?;
    }
    Ok(())
}

/// Adds a comment as the forge; the item's reference.
fn comment(
    sql: &mut dyn Sql,
    product_id: i64,
    id: i64,
    author: &str,
    body: &str,
) -> Result<String, HubError> {
    let now = clock::now();
    let comment_id = sql
        .query_one(
            "INSERT INTO comments (item_id, author, body, created_at) VALUES (?, ?, ?, ?) RETURNING id",
            &[Value::Int(id), author.into(), body.into(), Value::Int(now)],
        )?
        .ok_or_else(|| HubError::Internal("INSERT returned no id".to_owned()))?
        .int(0)?;
    sql.execute(
        "UPDATE items SET updated_at = ? WHERE id = ?",
        &[Value::Int(now), Value::Int(id)],
    )?;
    let comment = Comment {
        id: comment_id,
        author: author.to_owned(),
        body: body.to_owned(),
        created_at: clock::format(now),
        edited_at: None,
        reactions: Vec::new(),
    };
    comment_added(sql, product_id, id, &comment)?;
    let stored = load(sql, id)?.ok_or_else(|| HubError::not_found(format!("item {id}")))?;
    Ok(stored.item.reference)
}
