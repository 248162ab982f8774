//! The background work of a hub: delivering the outbox's messages (each
//! signed per Standard Webhooks, retried on a schedule, every attempt
//! recorded) and watching for SLA breaches and stale items. Runs beside
//! the HTTP server until it stops. The schedule is [`Background`], so
//! tests run the whole retry ladder in milliseconds.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use super::signature;
use super::target;
use crate::store::{Due, Outcome, Store};

/// What the hub's background work does, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Background {
    /// How long after each failed attempt the next is made: five attempts
    /// in all, over about a day by default.
    pub retry_delays: [Duration; 4],
    /// How long one attempt may take, connecting included.
    pub attempt_timeout: Duration,
    /// Let webhooks reach loopback, private and link-local addresses (a
    /// receiver on the hub's own network).
    pub allow_internal_targets: bool,
    /// How often the outbox is looked at.
    pub poll: Duration,
    /// A critical bug open longer than this is an SLA breach.
    pub critical_bug_sla: Duration,
    /// An unfinished item not updated for this long is stale.
    pub stale_after: Duration,
    /// How often SLA breaches and stale items are looked for.
    pub watch_every: Duration,
}

impl Default for Background {
    fn default() -> Background {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Background {
            // 1 min, 15 min, 3 h, then 20 h: the fifth attempt comes about
            // 23 h after the first.
            retry_delays: [minutes(1), minutes(15), minutes(180), minutes(1200)],
            attempt_timeout: Duration::from_secs(15),
            allow_internal_targets: false,
            poll: Duration::from_secs(2),
            critical_bug_sla: Duration::from_secs(24 * 3600),
            stale_after: Duration::from_secs(30 * 24 * 3600),
            watch_every: minutes(5),
        }
    }
}

/// Messages taken at once, and how long one worker holds them.
const BATCH: i64 = 20;
const LEASE_MS: i64 = 10 * 60 * 1000;

/// Runs the background work until the task is dropped or aborted.
pub async fn run(store: Arc<Store>, options: Background) {
    let mut outbox = tokio::time::interval(options.poll);
    outbox.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(options.watch_every);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = outbox.tick() => deliver_due(&store, &options).await,
            _ = watch.tick() => {
                let store = store.clone();
                let found = tokio::task::spawn_blocking(move || {
                    store.watch_deadlines(options.critical_bug_sla, options.stale_after)
                })
                .await;
                match found {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(notices = n, "SLA breaches and stale items noticed"),
                    Ok(Err(e)) => tracing::warn!("cannot look for SLA breaches: {e}"),
                    Err(e) => tracing::warn!("the watch task failed: {e}"),
                }
            }
        }
    }
}

async fn deliver_due(store: &Arc<Store>, options: &Background) {
    let taken = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.take_due(BATCH, LEASE_MS)).await
    };
    let due = match taken {
        Ok(Ok(due)) => due,
        Ok(Err(e)) => return tracing::warn!("cannot read the outbox: {e}"),
        Err(e) => return tracing::warn!("the outbox task failed: {e}"),
    };
    let sends = due.into_iter().map(|due| {
        let store = store.clone();
        let options = *options;
        async move {
            let outcome = send(&due, &options).await;
            let attempt = usize::try_from(due.attempts).unwrap_or(usize::MAX);
            let retry_in = match outcome {
                Outcome::Delivered(_) => None,
                Outcome::Failed { .. } => options.retry_delays.get(attempt).copied(),
            };
            tracing::info!(message = %due.message_id, attempt = attempt + 1, ?outcome, "webhook attempt");
            let recorded = tokio::task::spawn_blocking(move || {
                store.record_attempt(&due, &outcome, retry_in)
            })
            .await;
            if let Ok(Err(e)) = recorded {
                tracing::warn!("cannot record a webhook attempt: {e}");
            }
        }
    });
    join_all(sends).await;
}

/// Runs the futures together (a handful: [`BATCH`] at most).
async fn join_all(futures: impl Iterator<Item = impl Future<Output = ()> + Send + 'static>) {
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    while set.join_next().await.is_some() {}
}

/// One attempt to deliver a message.
pub async fn send(due: &Due, options: &Background) -> Outcome {
    match tokio::time::timeout(options.attempt_timeout, post(due, options)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Outcome::Delivered(status),
        Ok(Ok(status)) => Outcome::Failed {
            status: Some(status),
            error: format!("the receiver answered {status}"),
        },
        Ok(Err(error)) => Outcome::Failed {
            status: None,
            error,
        },
        Err(_) => Outcome::Failed {
            status: None,
            error: format!(
                "no answer within {} s",
                options.attempt_timeout.as_secs_f32()
            ),
        },
    }
}

async fn post(due: &Due, options: &Background) -> Result<u16, String> {
    let target = target::parse(&due.url).map_err(|e| e.to_string())?;
    // Checked now, not only when subscribed: the name may point elsewhere.
    let stream = target::connect(&target, options.allow_internal_targets).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let key = signature::secret_key(&due.secret)
        .ok_or_else(|| "the subscription's secret is not a whsec_ secret".to_owned())?;
    let timestamp = crate::clock::now() / 1000;
    let body = due.payload.as_bytes();
    let host = match (target.https, target.port) {
        (true, 443) | (false, 80) => target.host.clone(),
        (_, port) => format!("{}:{port}", target.host),
    };
    let request = hyper::Request::post(target.path.as_str())
        .header("host", host)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("gantry-hub/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", due.message_id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature::standard_signature(&key, &due.message_id, timestamp, body),
        )
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed: {e}"))?;
    let status = response.status().as_u16();
    // Read (and drop) a bounded body so the receiver sees a clean end.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    driver.abort();
    Ok(status)
}
