//! Service logs for the API: every instance's lines merged by time, filtered
//! by service and age, the last N, and with `follow` the new ones as they come.
//! A follow must neither lose nor repeat a line written while the lines so
//! far were being read.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use gantry_core::agent_api::{LogLine, Stream as LogStream};
use serde::Deserialize;

use crate::agent::Agent;
use crate::error::AgentError;
use crate::process::{self, LogCursor};

const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// One line as the instance log holds it: time, stream, text.
type Line = (u64, LogStream, String);

/// A line of `service`'s instance `id`, as the API sends it.
fn log_line(service: &str, id: &str, (ts, stream, line): Line) -> LogLine {
    LogLine {
        host: None,
        ts,
        service: service.to_owned(),
        instance: id.to_owned(),
        stream,
        line,
    }
}

/// Which lines: one service or all, since a time, the last N, and whether
/// to follow new ones.
#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    service: Option<String>,
    since_ms: Option<u64>,
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// The project's lines as `query` asks, oldest first; with `follow`, the
/// stream goes on until its reader goes away, with the lines of instances
/// started meanwhile (a follow begun before a service's first deploy gets
/// them). A store that cannot list the instances is an error, not an
/// empty stream.
pub(crate) async fn stream(
    agent: Arc<Agent>,
    project: String,
    query: LogQuery,
) -> Result<impl Stream<Item = LogLine>, AgentError> {
    let found = instances(&agent, &project, query.service.as_deref()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<LogLine>(256);
    tokio::spawn(async move {
        let dir = agent.paths.logs(&project);
        let follow = query.follow;
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                found
                    .into_iter()
                    .map(|(service, id)| {
                        let (lines, cursor) = backlog(&dir, &id, follow);
                        (service, id, lines, cursor)
                    })
                    .collect::<Vec<_>>()
            })
            .await
        };
        let Ok(read) = read else {
            return;
        };
        let mut lines: Vec<LogLine> = Vec::new();
        let mut cursors: Vec<(String, String, LogCursor)> = Vec::new();
        for (service, id, backlog, cursor) in read {
            lines.extend(
                backlog
                    .into_iter()
                    .filter(|(ts, _, _)| query.since_ms.is_none_or(|since| *ts >= since))
                    .map(|line| log_line(&service, &id, line)),
            );
            if let Some(cursor) = cursor {
                cursors.push((service, id, cursor));
            }
        }
        lines.sort_by_key(|l| l.ts);
        let skip = query.tail.map_or(0, |n| lines.len().saturating_sub(n));
        for line in lines.into_iter().skip(skip) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut known: BTreeSet<String> = cursors.iter().map(|(_, id, _)| id.clone()).collect();
        loop {
            // New instances appear with each deploy: all they wrote is new.
            // A store that fails for a moment is asked again at the next poll.
            let now = instances(&agent, &project, query.service.as_deref()).await;
            for (service, id) in now.unwrap_or_default() {
                if known.insert(id.clone()) {
                    let cursor = LogCursor::at_start(&dir, &id);
                    cursors.push((service, id, cursor));
                }
            }
            for (service, id, cursor) in &mut cursors {
                for line in cursor.poll() {
                    let line = log_line(service, id, line);
                    if tx.send(line).await.is_err() {
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
    Ok(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (line, rx))
    }))
}

/// An instance's lines so far, oldest first, and when following, a cursor
/// that carries on exactly after them. Blocks.
fn backlog(dir: &Path, instance: &str, follow: bool) -> (Vec<Line>, Option<LogCursor>) {
    let mut lines = process::read_log(dir, instance, None, None);
    if !follow {
        return (lines, None);
    }
    // The live file read again, through the cursor that will follow it. What
    // `lines` holds of the live file is a prefix of this, as the file only
    // grew since; join the two where they overlap.
    let mut cursor = LogCursor::at_start(dir, instance);
    let live = cursor.poll();
    let overlap = overlap(&lines, &live);
    lines.extend(live.into_iter().skip(overlap));
    (lines, Some(cursor))
}

/// The length of the longest end of `read` that is also the start of `live`.
fn overlap<T: PartialEq>(read: &[T], live: &[T]) -> usize {
    let Some(first) = live.first() else {
        return 0;
    };
    let from = read.len().saturating_sub(live.len());
    (from..read.len())
        .find(|&k| read[k] == *first && read[k..] == live[..read.len() - k])
        .map_or(0, |k| read.len() - k)
}

/// (service, instance) for every instance of the project that may have logs, oldest first.
async fn instances(
    agent: &Agent,
    project: &str,
    service: Option<&str>,
) -> Result<Vec<(String, String)>, AgentError> {
    let p = project.to_owned();
    let mut records = agent.db(move |s| s.instances(&p)).await?;
    records.sort_by_key(|r| r.created_at);
    Ok(records
        .into_iter()
        .filter(|r| service.is_none_or(|s| r.service == s))
        .map(|r| (r.service, r.id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn the_overlap_is_the_end_of_what_was_read_that_starts_the_live_file() {
        // Rotated lines 1 2, then the live file: 3 4 when read, 3 4 5 6 now.
        assert_eq!(overlap(&[1, 2, 3, 4], &[3, 4, 5, 6]), 2);
        // Nothing new since.
        assert_eq!(overlap(&[1, 2, 3, 4], &[3, 4]), 2);
        // The live file was empty when read, or rotated away since.
        assert_eq!(overlap(&[1, 2], &[7, 8]), 0);
        assert_eq!(overlap(&[1, 2], &[]), 0);
        assert_eq!(overlap::<u8>(&[], &[1]), 0);
        // Repeated lines: the longest overlap.
        assert_eq!(overlap(&[5, 5, 5], &[5, 5, 5, 6]), 3);
    }
}
