//! The instance intent log.
//!
//! A row is written before its process is spawned and updated after each
//! thing that happens to it, so after a crash the agent knows every process
//! it may have started (pid plus start time, to tell a reused pid apart) and
//! what each was for.

use gantry_core::agent_api::{Exit, Instance, InstanceState};
use rusqlite::{Row, params};

use super::codec::{Json, Named, json};
use super::releases::require_release;
use super::{Store, StoreError, is_unique_violation, now_ms};

/// One instance as the agent remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub project: String,
    pub service: String,
    /// The id of the release it runs.
    pub release: String,
    pub state: InstanceState,
    pub pid: Option<u32>,
    /// When the process started (as the process driver measures it), so a
    /// restarted agent never adopts an unrelated process that reused the pid.
    pub start_time: Option<u64>,
    pub relay_pid: Option<u32>,
    pub port: Option<u16>,
    pub restarts: u32,
    pub healthy: bool,
    pub last_exit: Option<Exit>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    /// Unix time in milliseconds; the store sets it on every change.
    pub updated_at: u64,
}

impl InstanceRecord {
    /// The intent to start an instance: `Starting`, no process yet, created `now`
    /// (Unix milliseconds).
    pub(crate) fn new(
        id: &str,
        project: &str,
        service: &str,
        release: &str,
        port: Option<u16>,
        now: u64,
    ) -> Self {
        InstanceRecord {
            id: id.to_owned(),
            project: project.to_owned(),
            service: service.to_owned(),
            release: release.to_owned(),
            state: InstanceState::Starting,
            pid: None,
            start_time: None,
            relay_pid: None,
            port,
            restarts: 0,
            healthy: false,
            last_exit: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Neither stopped on purpose nor given up on: the agent owes it a process.
    pub(crate) fn is_active(&self) -> bool {
        !matches!(self.state, InstanceState::Stopped | InstanceState::Failed)
    }
}

impl From<&InstanceRecord> for Instance {
    /// The wire form; `memory` is live data the store does not keep.
    fn from(record: &InstanceRecord) -> Instance {
        Instance {
            host: None,
            id: record.id.clone(),
            service: record.service.clone(),
            release: record.release.clone(),
            state: record.state,
            pid: record.pid,
            port: record.port,
            healthy: record.healthy,
            restarts: record.restarts,
            memory: None,
            last_exit: record.last_exit.clone(),
        }
    }
}

const COLUMNS: &str = "id, project, service, release, state, pid, start_time, relay_pid, port, \
     restarts, healthy, last_exit, created_at, updated_at";

pub(super) const ACTIVE: &str = "state NOT IN ('stopped', 'failed')";

impl Store {
    /// Writes the intent to run an instance, before its process is spawned.
    /// The release must exist and the id must be new.
    pub(crate) fn insert_instance(&self, instance: &InstanceRecord) -> Result<(), StoreError> {
        require_release(&self.conn, &instance.project, &instance.release)?;
        let last_exit = instance
            .last_exit
            .as_ref()
            .map(|exit| json("last exit", exit))
            .transpose()?;
        let inserted = self.conn.execute(
            &format!(
                "INSERT INTO instances ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ),
            params![
                instance.id,
                instance.project,
                instance.service,
                instance.release,
                Named(instance.state),
                instance.pid,
                instance.start_time,
                instance.relay_pid,
                instance.port,
                instance.restarts,
                instance.healthy,
                last_exit,
                instance.created_at,
                instance.updated_at,
            ],
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::InstanceExists {
                id: instance.id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the process that now runs an instance (and the relay that
    /// holds its output, if any).
    pub(crate) fn set_instance_process(
        &self,
        id: &str,
        pid: u32,
        start_time: u64,
        relay_pid: impl Into<Option<u32>>,
    ) -> Result<(), StoreError> {
        self.update_instance(
            id,
            "pid = ?2, start_time = ?3, relay_pid = ?4",
            params![id, pid, start_time, relay_pid.into(), now_ms()],
        )
    }

    /// Sets an instance's restart count, say to zero once it has stayed up.
    pub(crate) fn set_restarts(&self, id: &str, restarts: u32) -> Result<(), StoreError> {
        self.update_instance(id, "restarts = ?2", params![id, restarts, now_ms()])
    }

    pub(crate) fn set_instance_state(
        &self,
        id: &str,
        state: InstanceState,
    ) -> Result<(), StoreError> {
        self.update_instance(id, "state = ?2", params![id, Named(state), now_ms()])
    }

    pub(crate) fn set_instance_health(&self, id: &str, healthy: bool) -> Result<(), StoreError> {
        self.update_instance(id, "healthy = ?2", params![id, healthy, now_ms()])
    }

    /// Records that an instance's process ended: its exit and restart count,
    /// and, in the same statement, clears its pid and start time (the process
    /// is gone; a later process with that pid is not ours) and its health.
    /// The state is the caller's to set (`Backoff`, `Failed`, `Stopped`).
    pub(crate) fn record_exit(
        &self,
        id: &str,
        exit: &Exit,
        restarts: u32,
    ) -> Result<(), StoreError> {
        self.update_instance(
            id,
            "last_exit = ?2, restarts = ?3, pid = NULL, start_time = NULL, healthy = 0",
            params![id, json("last exit", exit)?, restarts, now_ms()],
        )
    }

    /// One statement: `?1` is the id and the last parameter the update time.
    fn update_instance(
        &self,
        id: &str,
        assignments: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<(), StoreError> {
        let stamp = params.len();
        let sql =
            format!("UPDATE instances SET {assignments}, updated_at = ?{stamp} WHERE id = ?1");
        if self.conn.prepare_cached(&sql)?.execute(params)? == 0 {
            return Err(StoreError::UnknownInstance { id: id.to_owned() });
        }
        Ok(())
    }

    pub(crate) fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.row(
            &format!("SELECT {COLUMNS} FROM instances WHERE id = ?1"),
            [id],
            read_instance,
        )
    }

    /// Every instance of a project the store remembers, stopped ones included,
    /// by service then age.
    pub(crate) fn instances(&self, project: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        self.rows(
            &format!(
                "SELECT {COLUMNS} FROM instances WHERE project = ?1 \
                 ORDER BY service, created_at, id"
            ),
            params![project],
            read_instance,
        )
    }

    /// The instances of every project the agent owes a process (not stopped
    /// nor failed): what a restarted agent re-adopts or restarts.
    pub fn active_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.rows(
            &format!(
                "SELECT {COLUMNS} FROM instances WHERE {ACTIVE} \
                 ORDER BY project, service, created_at, id"
            ),
            params![],
            read_instance,
        )
    }

    /// The instances started for one release of a project.
    #[cfg(test)]
    pub(crate) fn instances_of_release(
        &self,
        project: &str,
        release: &str,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        self.rows(
            &format!(
                "SELECT {COLUMNS} FROM instances WHERE project = ?1 AND release = ?2 \
                 ORDER BY service, created_at, id"
            ),
            params![project, release],
            read_instance,
        )
    }
}

fn read_instance(row: &Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: row.get("id")?,
        project: row.get("project")?,
        service: row.get("service")?,
        release: row.get("release")?,
        state: row.get::<_, Named<_>>("state")?.0,
        pid: row.get("pid")?,
        start_time: row.get("start_time")?,
        relay_pid: row.get("relay_pid")?,
        port: row.get("port")?,
        restarts: row.get("restarts")?,
        healthy: row.get("healthy")?,
        last_exit: row.get::<_, Option<Json<_>>>("last_exit")?.map(|j| j.0),
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::releases::tests::insert;

    pub(in crate::store) fn store_with_releases() -> Store {
        let store = Store::open_in_memory().expect("store");
        insert(
            &store,
            &[("shop", "r-1", 1), ("shop", "r-2", 2), ("blog", "b-1", 1)],
        );
        store
    }

    /// Records an instance's state.
    pub(in crate::store) fn set_state(store: &Store, id: &str, state: InstanceState) {
        store.set_instance_state(id, state).expect("state");
    }

    pub(in crate::store) fn add(
        store: &Store,
        id: &str,
        project: &str,
        service: &str,
        release: &str,
    ) {
        store
            .insert_instance(&InstanceRecord::new(
                id,
                project,
                service,
                release,
                Some(20_000),
                1_000,
            ))
            .expect("insert instance");
    }

    pub(in crate::store) fn state(store: &Store, id: &str) -> InstanceState {
        store.instance(id).expect("query").expect("found").state
    }

    #[test]
    fn instance_round_trips_through_its_lifecycle() {
        let store = store_with_releases();
        let intent = InstanceRecord::new("web-1", "shop", "web", "r-1", Some(20_001), 1_000);
        store.insert_instance(&intent).expect("insert");
        assert_eq!(
            store.instance("web-1").expect("query"),
            Some(intent.clone())
        );

        store
            .set_instance_process("web-1", 4242, 987_654, Some(4241))
            .expect("process");
        store.set_instance_health("web-1", true).expect("health");
        set_state(&store, "web-1", InstanceState::Live);
        let running = store.instance("web-1").expect("query").expect("found");
        assert_eq!(
            (running.pid, running.start_time, running.relay_pid),
            (Some(4242), Some(987_654), Some(4241))
        );
        assert!(running.healthy);
        assert_eq!(running.state, InstanceState::Live);
        assert!(running.updated_at >= intent.updated_at);

        let exit = Exit {
            code: None,
            signal: Some(9),
            oom: true,
            at: 1_700_000_000_123,
        };
        store.record_exit("web-1", &exit, 3).expect("exit");
        set_state(&store, "web-1", InstanceState::Backoff);
        let exited = store.instance("web-1").expect("query").expect("found");
        assert_eq!(exited.last_exit, Some(exit));
        assert_eq!(exited.restarts, 3);
        assert_eq!((exited.pid, exited.start_time), (None, None));
        assert_eq!(exited.relay_pid, Some(4241));
        assert!(!exited.healthy);
        assert_eq!(exited.port, Some(20_001));
        store.set_restarts("web-1", 0).expect("restarts");
        assert_eq!(
            store
                .instance("web-1")
                .expect("query")
                .expect("found")
                .restarts,
            0
        );
        let wire = Instance::from(&exited);
        assert_eq!(wire.state, InstanceState::Backoff);
        assert_eq!(wire.restarts, 3);
    }

    #[test]
    fn an_instance_needs_a_release_of_its_project_and_a_new_id() {
        let store = store_with_releases();
        let err = store
            .insert_instance(&InstanceRecord::new("x", "shop", "web", "b-1", None, 1_000))
            .expect_err("release of another project");
        assert_eq!(err.code(), "release.not_found");
        add(&store, "web-1", "shop", "web", "r-1");
        let err = store
            .insert_instance(&InstanceRecord::new(
                "web-1", "shop", "web", "r-2", None, 1_000,
            ))
            .expect_err("duplicate");
        assert_eq!(err.code(), "instance.exists");
    }

    #[test]
    fn changing_an_unknown_instance_is_an_error() {
        let store = store_with_releases();
        let err = store
            .set_instance_state("ghost", InstanceState::Live)
            .expect_err("unknown");
        assert!(matches!(err, StoreError::UnknownInstance { ref id } if id == "ghost"));
        assert!(store.set_instance_health("ghost", true).is_err());
        assert!(store.set_instance_process("ghost", 1, 1, None).is_err());
    }

    #[test]
    fn active_instances_are_those_the_agent_owes_a_process_across_projects() {
        let store = store_with_releases();
        add(&store, "web-1", "shop", "web", "r-1");
        add(&store, "web-2", "shop", "web", "r-1");
        add(&store, "web-3", "shop", "web", "r-2");
        add(&store, "blog-1", "blog", "app", "b-1");
        set_state(&store, "web-1", InstanceState::Stopped);
        set_state(&store, "web-2", InstanceState::Failed);
        set_state(&store, "web-3", InstanceState::Backoff);
        let ids = |records: Vec<InstanceRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.id).collect()
        };
        assert_eq!(
            ids(store.active_instances().expect("active")),
            ["blog-1", "web-3"]
        );
        assert_eq!(
            ids(store.instances("shop").expect("all")),
            ["web-1", "web-2", "web-3"]
        );
        assert_eq!(
            ids(store
                .instances_of_release("shop", "r-1")
                .expect("of release")),
            ["web-1", "web-2"]
        );
    }
}
