//! Service logs for the API: every instance's lines merged by time, filtered
//! by service and age, the last N, and with `follow` the new ones as they come.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use gantry_core::agent_api::LogLine;

use crate::agent::Agent;
use crate::api::{LogQuery, ndjson};
use crate::process::{self, LogCursor};

const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub fn stream(
    agent: Arc<Agent>,
    project: String,
    query: LogQuery,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let dir = agent.paths.logs(&project);
        let instances = instances(&agent, &project, query.service.as_deref()).await;
        let mut lines: Vec<LogLine> = Vec::new();
        for (service, id) in &instances {
            for (ts, stream, line) in process::read_log(&dir, id, query.since_ms, None) {
                lines.push(LogLine {
                    ts,
                    service: service.clone(),
                    instance: id.clone(),
                    stream,
                    line,
                });
            }
        }
        lines.sort_by_key(|l| l.ts);
        let skip = query.tail.map_or(0, |n| lines.len().saturating_sub(n));
        for line in &lines[skip..] {
            if tx.send(ndjson(line)).await.is_err() {
                return;
            }
        }
        if !query.follow {
            return;
        }
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut cursors: Vec<(String, String, LogCursor)> = Vec::new();
        loop {
            // New instances appear with each deploy and restart.
            for (service, id) in instances_now(&agent, &project, query.service.as_deref()).await {
                if known.insert(id.clone()) {
                    let cursor = if instances.iter().any(|(_, i)| *i == id) {
                        LogCursor::at_end(&dir, &id)
                    } else {
                        LogCursor::at_start(&dir, &id)
                    };
                    cursors.push((service, id, cursor));
                }
            }
            for (service, id, cursor) in &mut cursors {
                for (ts, stream, line) in cursor.poll() {
                    let line = LogLine {
                        ts,
                        service: service.clone(),
                        instance: id.clone(),
                        stream,
                        line,
                    };
                    if tx.send(ndjson(&line)).await.is_err() {
                        return;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok(bytes), rx))
    })
}

/// (service, instance) for every instance of the project that may have logs, oldest first.
async fn instances(agent: &Agent, project: &str, service: Option<&str>) -> Vec<(String, String)> {
    let p = project.to_owned();
    let mut records = agent.db(move |s| s.instances(&p)).await.unwrap_or_default();
    records.sort_by_key(|r| r.created_at);
    records
        .into_iter()
        .filter(|r| service.is_none_or(|s| r.service == s))
        .map(|r| (r.service, r.id))
        .collect()
}

async fn instances_now(
    agent: &Agent,
    project: &str,
    service: Option<&str>,
) -> Vec<(String, String)> {
    instances(agent, project, service).await
}
