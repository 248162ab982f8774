//! The project's event log: what the agent did and saw, for `gantry events`
//! and the hub. Messages are written by the agent, never copied from a
//! service's environment, so they hold no secret values.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases with every event appended, across projects.
    pub id: u64,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Unix time in milliseconds.
    pub at: u64,
    /// A short dotted name such as `deploy.started` or `instance.exited`.
    pub kind: String,
    pub message: String,
}

impl Store {
    /// Appends an event stamped now, and returns its id.
    pub fn append_event(
        &self,
        project: &str,
        service: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<u64, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "INSERT INTO events (project, service, at, kind, message) \
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        )?;
        Ok(
            statement.query_row(params![project, service, now_ms(), kind, message], |row| {
                row.get(0)
            })?,
        )
    }

    /// The project's `limit` most recent events, newest first.
    pub fn events(&self, project: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, project, service, at, kind, message FROM events \
             WHERE project = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = statement.query_map(params![project, limit], |row| {
            Ok(Event {
                id: row.get(0)?,
                project: row.get(1)?,
                service: row.get(2)?,
                at: row.get(3)?,
                kind: row.get(4)?,
                message: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_newest_first_per_project_and_limited() {
        let store = Store::open_in_memory().expect("store");
        store
            .append_event("shop", None, "deploy.started", "release r1")
            .expect("append");
        store
            .append_event("blog", None, "deploy.started", "release r1")
            .expect("append");
        let last = store
            .append_event(
                "shop",
                Some("web"),
                "instance.exited",
                "exited with status 1",
            )
            .expect("append");
        let events = store.events("shop", 10).expect("events");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, last);
        assert_eq!(events[0].service.as_deref(), Some("web"));
        assert_eq!(events[0].kind, "instance.exited");
        assert_eq!(events[1].message, "release r1");
        assert!(events[0].at >= events[1].at);
        assert_eq!(store.events("shop", 1).expect("events").len(), 1);
    }
}
