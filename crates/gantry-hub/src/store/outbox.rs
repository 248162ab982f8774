//! Webhooks out: a product's subscriptions, and the outbox of messages
//! owed to them. A change writes its messages in its own transaction
//! (`emit`), so an event is sent if and only if the change was committed;
//! the delivery worker (`webhooks::delivery`) takes due messages, sends
//! them, and records every attempt here. A message that fails every
//! attempt disables its subscription, with a notice in the audit log and
//! on the item.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::items::{Access, URL_MAX, activity};
use super::{Store, audit, one_line, products};
use crate::clock;
use crate::db::{Row, Sql, Value};
use crate::error::HubError;
use crate::model::Item;
use crate::seal::Purpose;
use crate::webhooks::signature;

/// What a subscription can be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Event {
    #[serde(rename = "item.created")]
    ItemCreated,
    #[serde(rename = "item.updated")]
    ItemUpdated,
    #[serde(rename = "item.status_changed")]
    ItemStatusChanged,
    #[serde(rename = "item.closed")]
    ItemClosed,
    #[serde(rename = "comment.added")]
    CommentAdded,
    #[serde(rename = "pr.linked")]
    PrLinked,
    /// A critical bug open longer than the hub's SLA.
    #[serde(rename = "item.sla_breached")]
    SlaBreached,
    /// An open item nobody has touched for the hub's stale time.
    #[serde(rename = "item.stale")]
    ItemStale,
}

impl Event {
    pub const ALL: &[Event] = &[
        Event::ItemCreated,
        Event::ItemUpdated,
        Event::ItemStatusChanged,
        Event::ItemClosed,
        Event::CommentAdded,
        Event::PrLinked,
        Event::SlaBreached,
        Event::ItemStale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::ItemCreated => "item.created",
            Event::ItemUpdated => "item.updated",
            Event::ItemStatusChanged => "item.status_changed",
            Event::ItemClosed => "item.closed",
            Event::CommentAdded => "comment.added",
            Event::PrLinked => "pr.linked",
            Event::SlaBreached => "item.sla_breached",
            Event::ItemStale => "item.stale",
        }
    }

    pub fn parse(text: &str) -> Option<Event> {
        Event::ALL.iter().copied().find(|e| e.as_str() == text)
    }
}

/// How a subscription's messages are shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"type", "timestamp", "data"}`, signed as Standard Webhooks says.
    Standard,
    /// `{"text": ...}`, as a Slack (or Mattermost) incoming webhook takes.
    Slack,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Standard => "standard",
            Format::Slack => "slack",
        }
    }

    fn parse(text: &str) -> Option<Format> {
        [Format::Standard, Format::Slack]
            .into_iter()
            .find(|f| f.as_str() == text)
    }
}

/// `POST /api/admin/products/{product}/subscriptions`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// `https://...` (or `http://`); it must not resolve to a loopback,
    /// private or link-local address unless the hub allows them.
    pub url: String,
    /// The events to send; at least one.
    pub events: Vec<Event>,
    /// `standard` (the default) or `slack`.
    pub format: Option<Format>,
}

/// A subscription as listed; its secret only when it is made.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Subscription {
    pub id: i64,
    pub product: String,
    pub url: String,
    pub events: Vec<Event>,
    pub format: Format,
    pub created_at: String,
    /// Set when the hub gave up on it.
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    /// `whsec_...`, to check signatures with: shown once, when made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One attempt to deliver a message.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Attempt {
    pub message_id: String,
    pub event: String,
    pub attempt: i64,
    pub at: String,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<i64>,
    pub error: Option<String>,
}

/// A message due for delivery, taken by one worker.
#[derive(Clone)]
pub struct Due {
    pub outbox_id: i64,
    pub subscription_id: i64,
    pub url: String,
    pub secret: String,
    pub message_id: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

impl std::fmt::Debug for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Due")
            .field("outbox_id", &self.outbox_id)
            .field("message_id", &self.message_id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// How one attempt went.
#[derive(Clone, Debug)]
pub enum Outcome {
    Delivered(u16),
    Failed { status: Option<u16>, error: String },
}

/// A product's subscriptions at most.
const SUBSCRIPTIONS_MAX: i64 = 50;

fn subscription_from(row: &Row) -> Result<Subscription, HubError> {
    let events = row.text(4)?.split(',').filter_map(Event::parse).collect();
    let format = row.text(3)?;
    Ok(Subscription {
        id: row.int(0)?,
        product: row.text(1)?,
        url: row.text(2)?,
        format: Format::parse(&format)
            .ok_or_else(|| HubError::Internal(format!("subscription format {format}")))?,
        events,
        created_at: clock::format(row.int(5)?),
        disabled_at: row.opt_int(6)?.map(clock::format),
        disabled_reason: row.opt_text(7)?,
        secret: None,
    })
}

const SUBSCRIPTION_COLUMNS: &str = "s.id, p.key, s.url, s.format, s.events, s.created_at, \
     s.disabled_at, s.disabled_reason";

/// The product id a request reaches: the product it names, if the key
/// may reach it.
pub(super) fn product_for(
    sql: &mut dyn Sql,
    access: &Access,
    product: &str,
) -> Result<i64, HubError> {
    let id = products::id_of(sql, product)?;
    if !access.scope.allows(id) {
        return Err(HubError::Forbidden {
            message: format!("the key is scoped to another product than {product}"),
        });
    }
    Ok(id)
}

/// Writes the messages `event` owes to the product's live subscriptions.
pub(super) fn emit(
    sql: &mut dyn Sql,
    product_id: i64,
    event: Event,
    item: &Item,
    extra: serde_json::Value,
    summary: &str,
) -> Result<(), HubError> {
    let subscribers = sql.query(
        "SELECT id, format, events FROM subscriptions WHERE product_id = ? AND disabled_at IS NULL",
        &[Value::Int(product_id)],
    )?;
    let now = clock::now();
    for row in subscribers {
        let wanted = row.text(2)?;
        if !wanted.split(',').any(|e| e == event.as_str()) {
            continue;
        }
        let payload = match Format::parse(&row.text(1)?) {
            Some(Format::Slack) => json!({
                "text": format!("{} {}: {summary}", item.reference, item.title),
            }),
            _ => {
                let mut data = json!({ "item": item });
                if let (Some(data), serde_json::Value::Object(extra)) =
                    (data.as_object_mut(), extra.clone())
                {
                    data.extend(extra);
                }
                json!({
                    "type": event.as_str(),
                    "timestamp": clock::format(now),
                    "data": data,
                })
            }
        };
        let message_id = format!(
            "msg_{}",
            gantry_core::artifact::hex(&rand::random::<[u8; 12]>())
        );
        sql.execute(
            "INSERT INTO outbox (subscription_id, message_id, event, item_id, payload, created_at, next_at, state) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
            &[
                Value::Int(row.int(0)?),
                message_id.into(),
                event.as_str().into(),
                Value::Int(item.id),
                payload.to_string().into(),
                Value::Int(now),
                Value::Int(now),
            ],
        )?;
    }
    Ok(())
}

impl Store {
    /// Subscribes `url` to a product's events; the answer holds the
    /// signing secret, which is never shown again. The caller has checked
    /// where `url` leads.
    pub fn subscribe(
        &self,
        access: &Access,
        product: &str,
        new: &NewSubscription,
    ) -> Result<Subscription, HubError> {
        one_line("url", &new.url, URL_MAX)?;
        if new.events.is_empty() || new.events.len() > Event::ALL.len() {
            return Err(HubError::Invalid {
                message: "`events` must name at least one event".to_owned(),
                hint: Some(format!(
                    "any of {}",
                    Event::ALL
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
        }
        let mut events: Vec<&str> = new.events.iter().map(|e| e.as_str()).collect();
        events.sort_unstable();
        events.dedup();
        let secret = signature::new_secret();
        let sealed = self.seal.seal(Purpose::Subscription, &secret)?;
        self.tx(|sql| {
            let product_id = product_for(sql, access, product)?;
            let count = sql
                .query_one(
                    "SELECT COUNT(*) FROM subscriptions WHERE product_id = ? AND disabled_at IS NULL",
                    &[Value::Int(product_id)],
                )?
                .map_or(Ok(0), |r| r.int(0))?;
            if count >= SUBSCRIPTIONS_MAX {
                return Err(HubError::invalid(format!(
                    "{product} has {SUBSCRIPTIONS_MAX} live subscriptions, the most a product takes"
                )));
            }
            let id = sql
                .query_one(
                    "INSERT INTO subscriptions (product_id, url, format, events, secret, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    &[
                        Value::Int(product_id),
                        new.url.as_str().into(),
                        new.format.unwrap_or(Format::Standard).as_str().into(),
                        events.join(",").into(),
                        sealed.as_str().into(),
                        Value::Int(clock::now()),
                    ],
                )?
                .ok_or_else(|| HubError::Internal("INSERT returned no id".to_owned()))?
                .int(0)?;
            access.audit(sql, "subscription.create", &format!("{product} #{id}"))?;
            let mut made = self.subscription_in(sql, access, id)?;
            made.secret = Some(secret.clone());
            Ok(made)
        })
    }

    fn subscription_in(
        &self,
        sql: &mut dyn Sql,
        access: &Access,
        id: i64,
    ) -> Result<Subscription, HubError> {
        let row = sql
            .query_one(
                &format!(
                    "SELECT {SUBSCRIPTION_COLUMNS}, s.product_id FROM subscriptions s \
                     JOIN products p ON p.id = s.product_id WHERE s.id = ?"
                ),
                &[Value::Int(id)],
            )?
            .ok_or_else(|| HubError::not_found(format!("subscription {id}")))?;
        let product = row.opt_int(8).ok().flatten();
        let reached = match product {
            Some(product) => access.scope.allows(product),
            None => access.scope == super::Reach::Every,
        };
        if !reached {
            return Err(HubError::not_found(format!("subscription {id}")));
        }
        subscription_from(&row)
    }

    pub fn subscriptions(
        &self,
        access: &Access,
        product: &str,
    ) -> Result<Vec<Subscription>, HubError> {
        self.tx(|sql| {
            let product_id = product_for(sql, access, product)?;
            sql.query(
                &format!(
                    "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN products p ON p.id = s.product_id \
                     WHERE s.product_id = ? ORDER BY s.id"
                ),
                &[Value::Int(product_id)],
            )?
            .iter()
            .map(subscription_from)
            .collect()
        })
    }

    /// Ends a subscription: it is disabled (its attempts stay readable).
    pub fn unsubscribe(&self, access: &Access, id: i64) -> Result<Subscription, HubError> {
        self.tx(|sql| {
            self.subscription_in(sql, access, id)?;
            sql.execute(
                "UPDATE subscriptions SET disabled_at = ?, disabled_reason = ? WHERE id = ? AND disabled_at IS NULL",
                &[
                    Value::Int(clock::now()),
                    format!("removed by {}", access.actor.name).into(),
                    Value::Int(id),
                ],
            )?;
            access.audit(sql, "subscription.remove", &format!("#{id}"))?;
            self.subscription_in(sql, access, id)
        })
    }

    /// A subscription's delivery attempts, newest first (at most 100).
    pub fn attempts(&self, access: &Access, id: i64) -> Result<Vec<Attempt>, HubError> {
        self.tx(|sql| {
            self.subscription_in(sql, access, id)?;
            sql.query(
                "SELECT o.message_id, o.event, a.attempt, a.at, a.status, a.error FROM outbox_attempts a \
                 JOIN outbox o ON o.id = a.outbox_id WHERE o.subscription_id = ? ORDER BY a.id DESC LIMIT 100",
                &[Value::Int(id)],
            )?
            .iter()
            .map(|r| {
                Ok(Attempt {
                    message_id: r.text(0)?,
                    event: r.text(1)?,
                    attempt: r.int(2)?,
                    at: clock::format(r.int(3)?),
                    status: r.opt_int(4)?,
                    error: r.opt_text(5)?,
                })
            })
            .collect()
        })
    }

    /// Takes up to `limit` messages due now for this worker: each is leased
    /// for `lease_ms` (another hub on the same database skips it), and
    /// comes back if the worker dies before recording its attempt.
    pub fn take_due(&self, limit: i64, lease_ms: i64) -> Result<Vec<Due>, HubError> {
        self.tx(|sql| {
            let now = clock::now();
            let rows = sql.query(
                "SELECT o.id, o.subscription_id, s.url, s.secret, o.message_id, o.payload, o.attempts, o.next_at \
                 FROM outbox o JOIN subscriptions s ON s.id = o.subscription_id \
                 WHERE o.state = 'pending' AND o.next_at <= ? AND s.disabled_at IS NULL \
                 ORDER BY o.next_at, o.id LIMIT ?",
                &[Value::Int(now), Value::Int(limit)],
            )?;
            let mut due = Vec::new();
            for r in rows {
                let taken = sql.execute(
                    "UPDATE outbox SET next_at = ? WHERE id = ? AND next_at = ? AND state = 'pending'",
                    &[Value::Int(now + lease_ms), Value::Int(r.int(0)?), Value::Int(r.int(7)?)],
                )?;
                if taken == 1 {
                    due.push(Due {
                        outbox_id: r.int(0)?,
                        subscription_id: r.int(1)?,
                        url: r.text(2)?,
                        secret: self.seal.open(Purpose::Subscription, &r.text(3)?)?,
                        message_id: r.text(4)?,
                        payload: r.text(5)?,
                        attempts: r.int(6)?,
                    });
                }
            }
            Ok(due)
        })
    }

    /// Records one attempt. `retry_in` is when to try again after a
    /// failure (`None`: that was the last attempt, and the subscription is
    /// disabled with a notice).
    pub fn record_attempt(
        &self,
        due: &Due,
        outcome: &Outcome,
        retry_in: Option<std::time::Duration>,
    ) -> Result<(), HubError> {
        self.tx(|sql| {
            let now = clock::now();
            let attempt = due.attempts + 1;
            let (status, error) = match outcome {
                Outcome::Delivered(status) => (Some(i64::from(*status)), None),
                Outcome::Failed { status, error } => (status.map(i64::from), Some(error.as_str())),
            };
            sql.execute(
                "INSERT INTO outbox_attempts (outbox_id, attempt, at, status, error) VALUES (?, ?, ?, ?, ?)",
                &[Value::Int(due.outbox_id), Value::Int(attempt), Value::Int(now), status.into(), error.into()],
            )?;
            let (state, next_at) = match (outcome, retry_in) {
                (Outcome::Delivered(_), _) => ("delivered", None),
                (Outcome::Failed { .. }, Some(wait)) => {
                    ("pending", Some(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2)))
                }
                (Outcome::Failed { .. }, None) => ("failed", None),
            };
            sql.execute(
                "UPDATE outbox SET attempts = ?, state = ?, next_at = ? WHERE id = ?",
                &[Value::Int(attempt), state.into(), next_at.into(), Value::Int(due.outbox_id)],
            )?;
            if state == "failed" {
                disable(sql, due, attempt, error.unwrap_or("failed"))?;
            }
            Ok(())
        })
    }
}

/// Gives up on a subscription whose message failed every attempt: it is
/// disabled, the audit log says so, and so does the item's activity.
fn disable(sql: &mut dyn Sql, due: &Due, attempts: i64, error: &str) -> Result<(), HubError> {
    let reason = format!(
        "message {} failed {attempts} attempts; the last: {error}",
        due.message_id
    );
    sql.execute(
        "UPDATE subscriptions SET disabled_at = ?, disabled_reason = ? WHERE id = ? AND disabled_at IS NULL",
        &[Value::Int(clock::now()), reason.as_str().into(), Value::Int(due.subscription_id)],
    )?;
    audit::record(
        sql,
        "hub",
        None,
        "subscription.disable",
        Some(&format!("#{}", due.subscription_id)),
        &reason,
    )?;
    let item = sql
        .query_one(
            "SELECT item_id FROM outbox WHERE id = ?",
            &[Value::Int(due.outbox_id)],
        )?
        .and_then(|r| r.opt_int(0).ok().flatten());
    if let Some(item) = item {
        activity(
            sql,
            item,
            "hub",
            "webhook",
            Some(&format!("subscription #{}", due.subscription_id)),
            Some("disabled"),
            Some(&reason),
        )?;
    }
    Ok(())
}

/// `item.created` for a new item (`created`), else `item.updated`.
pub(super) fn item_changed(
    sql: &mut dyn Sql,
    product_id: i64,
    item: &Item,
    created: bool,
) -> Result<(), HubError> {
    let (event, summary) = if created {
        (Event::ItemCreated, format!("new {}", item.kind))
    } else {
        (Event::ItemUpdated, "updated".to_owned())
    };
    emit(sql, product_id, event, item, json!({}), &summary)
}

/// `pr.linked`, for a pull request linked through the agent API.
pub(super) fn pr_linked(
    sql: &mut dyn Sql,
    product_id: i64,
    item: &Item,
    url: &str,
) -> Result<(), HubError> {
    let pr = item.pull_requests.iter().find(|p| p.url == url);
    let summary = format!("pull request {url} linked");
    emit(
        sql,
        product_id,
        Event::PrLinked,
        item,
        json!({ "pull_request": pr }),
        &summary,
    )
}

/// `comment.added`.
pub(super) fn comment_added(
    sql: &mut dyn Sql,
    product_id: i64,
    item: i64,
    comment: &crate::model::Comment,
) -> Result<(), HubError> {
    let item = super::items::reload(sql, item)?;
    let summary = format!("{} commented", comment.author);
    emit(
        sql,
        product_id,
        Event::CommentAdded,
        &item,
        json!({ "comment": comment }),
        &summary,
    )
}
