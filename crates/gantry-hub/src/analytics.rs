//! The numbers a team asks of its tracker, computed from rows the store
//! reads: cycle time percentiles, weekly throughput, open bugs week by
//! week. Pure: facts in, a report out; the store does the reading.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::clock;
use crate::model::Kind;

const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;
/// 1970-01-01 was a Thursday; weeks here start on Mondays (ISO).
const MONDAY_OFFSET_MS: i64 = 3 * 24 * 3600 * 1000;

/// One finished item, as analytics sees it.
#[derive(Clone, Debug)]
pub struct Finished {
    pub kind: Kind,
    pub created_at: i64,
    /// When it first went in progress, if it did.
    pub started_at: Option<i64>,
    pub finished_at: i64,
    /// Who finished it.
    pub closer: Closer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    /// An agent-role key.
    Agent,
    /// A CI or webhook key, or a forge (a merged pull request).
    Automation,
    /// Anybody else: a user, the CLI.
    Person,
}

/// A bug's life: created, and finished if it is.
#[derive(Clone, Copy, Debug)]
pub struct BugLife {
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CycleTime {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub items: usize,
    /// Hours from start (or creation, if never started) to finish.
    pub p50_hours: f64,
    pub p95_hours: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct WeekCount {
    /// The week's Monday, `YYYY-MM-DD`.
    pub week: String,
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct ClosedBy {
    pub agents: i64,
    pub people: i64,
    /// CI keys, and forges whose merged pull requests finished an item.
    pub automation: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct VoteCount {
    /// `SHOP-42`.
    pub reference: String,
    pub title: String,
    pub votes: i64,
}

/// `GET /api/analytics/{product}`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Report {
    pub product: String,
    /// The weeks counted, oldest first, ending with the current one.
    pub weeks: usize,
    pub cycle_time: Vec<CycleTime>,
    pub throughput: Vec<WeekCount>,
    pub open_bugs: Vec<WeekCount>,
    pub closed_by: ClosedBy,
    pub vote_leaderboard: Vec<VoteCount>,
}

/// The value at `p` (0 to 1) of sorted values, by nearest rank.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The start of the week holding `ms`.
pub fn week_start(ms: i64) -> i64 {
    (ms + MONDAY_OFFSET_MS).div_euclid(WEEK_MS) * WEEK_MS - MONDAY_OFFSET_MS
}

fn week_name(start: i64) -> String {
    clock::format(start).chars().take(10).collect()
}

/// The starts of the last `weeks` weeks up to `now`, oldest first.
fn week_starts(now: i64, weeks: usize) -> Vec<i64> {
    let current = week_start(now);
    (0..weeks as i64)
        .rev()
        .map(|back| current - back * WEEK_MS)
        .collect()
}

pub fn cycle_times(finished: &[Finished]) -> Vec<CycleTime> {
    let mut by_kind: BTreeMap<&str, (Kind, Vec<i64>)> = BTreeMap::new();
    for item in finished {
        let start = item.started_at.unwrap_or(item.created_at);
        by_kind
            .entry(item.kind.as_str())
            .or_insert_with(|| (item.kind, Vec::new()))
            .1
            .push((item.finished_at - start).max(0));
    }
    let hours = |ms: Option<i64>| (ms.unwrap_or(0) as f64 / 36_000.0).round() / 100.0;
    by_kind
        .into_values()
        .map(|(kind, mut times)| {
            times.sort_unstable();
            CycleTime {
                kind,
                items: times.len(),
                p50_hours: hours(percentile(&times, 0.50)),
                p95_hours: hours(percentile(&times, 0.95)),
            }
        })
        .collect()
}

pub fn throughput(finished: &[Finished], now: i64, weeks: usize) -> Vec<WeekCount> {
    week_starts(now, weeks)
        .into_iter()
        .map(|start| WeekCount {
            week: week_name(start),
            count: finished
                .iter()
                .filter(|f| (start..start + WEEK_MS).contains(&f.finished_at))
                .count() as i64,
        })
        .collect()
}

/// Bugs open at the end of each week (or now, for the current one).
pub fn open_bugs(bugs: &[BugLife], now: i64, weeks: usize) -> Vec<WeekCount> {
    week_starts(now, weeks)
        .into_iter()
        .map(|start| {
            let end = (start + WEEK_MS).min(now + 1);
            WeekCount {
                week: week_name(start),
                count: bugs
                    .iter()
                    .filter(|b| b.created_at < end && b.finished_at.is_none_or(|f| f >= end))
                    .count() as i64,
            }
        })
        .collect()
}

pub fn closed_by(finished: &[Finished]) -> ClosedBy {
    let mut counts = ClosedBy::default();
    for item in finished {
        match item.closer {
            Closer::Agent => counts.agents += 1,
            Closer::Person => counts.people += 1,
            Closer::Automation => counts.automation += 1,
        }
    }
    counts
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * 1000;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<i64> = (1..=20).collect();
        assert_eq!(percentile(&values, 0.5), Some(10));
        assert_eq!(percentile(&values, 0.95), Some(19));
        assert_eq!(percentile(&[7], 0.95), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-12-06 is a Sunday; its week began on Monday 2026-11-30.
        let sunday = clock::parse("2026-12-06T12:00:00Z").unwrap_or_default();
        assert_eq!(week_name(week_start(sunday)), "2026-11-30");
        let monday = clock::parse("2026-11-30T00:00:00Z").unwrap_or_default();
        assert_eq!(week_start(monday), monday);
    }

    #[test]
    fn cycle_time_counts_from_start_and_bugs_stay_open_until_finished() {
        let now = clock::parse("2026-12-06T12:00:00Z").unwrap_or_default();
        let done = |hours: i64, started: bool, closer| Finished {
            kind: Kind::Bug,
            created_at: now - 1000 * HOUR,
            started_at: started.then_some(now - hours * HOUR),
            finished_at: now,
            closer,
        };
        let finished = [
            done(2, true, Closer::Agent),
            done(4, true, Closer::Person),
            done(10, true, Closer::Agent),
        ];
        let times = cycle_times(&finished);
        assert_eq!(times.len(), 1);
        assert_eq!((times[0].p50_hours, times[0].p95_hours), (4.0, 10.0));
        assert_eq!(
            closed_by(&finished),
            ClosedBy {
                agents: 2,
                people: 1,
                automation: 0
            }
        );
        assert_eq!(
            throughput(&finished, now, 2)
                .iter()
                .map(|w| w.count)
                .collect::<Vec<_>>(),
            [0, 3]
        );
        let bugs = [
            BugLife {
                created_at: now - 10 * 24 * HOUR,
                finished_at: Some(now - HOUR),
            },
            BugLife {
                created_at: now - HOUR,
                finished_at: None,
            },
        ];
        assert_eq!(
            open_bugs(&bugs, now, 2)
                .iter()
                .map(|w| w.count)
                .collect::<Vec<_>>(),
            [1, 1]
        );
    }
}
