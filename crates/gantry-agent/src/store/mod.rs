//! The agent's memory: one SQLite file holding releases, the instance intent
//! log, which release each service runs, port leases and artifact
//! manifests. The agent writes here what it is about to do before doing it,
//! so a restarted agent can re-adopt its processes and finish or undo a
//! deploy it was in the middle of.
//!
//! Every state change is one statement or one transaction, so a crash leaves
//! each row as it was before or after the change, never half of it.
//!
//! It must never hold a secret value: no function here takes one, and
//! [`Release::services`](gantry_core::agent_api::Release) carries secret names
//! only.
//!
//! The API is synchronous and a `Store` is `Send` but not `Sync`: own it on a
//! dedicated thread, or behind a mutex used from `spawn_blocking`, never on an
//! async runtime thread.

mod artifacts;
mod codec;
mod cutover;
mod deployments;
mod fingerprints;
mod instances;
mod port_leases;
mod releases;
mod schema;
mod service_row;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gantry_core::clock::now_ms;
use rusqlite::{Connection, OptionalExtension};

pub use instances::InstanceRecord;
pub use port_leases::PortLease;

/// How long a writer waits for another connection's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the agent store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot bring the agent store schema up to date: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("agent store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("agent store: cannot encode the {what} as JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("project `{project}` has no release `{release}`")]
    UnknownRelease { project: String, release: String },
    #[error("release `{id}` (number {number} of project `{project}`) already exists")]
    ReleaseExists {
        project: String,
        id: String,
        number: u64,
    },
    #[error("no instance `{id}`")]
    UnknownInstance { id: String },
    #[error("instance `{id}` already exists")]
    InstanceExists { id: String },
    #[error("cannot switch {project}/{service} to release `{release}`: {reason}")]
    Switch {
        project: String,
        service: String,
        release: String,
        reason: String,
    },
    #[error(
        "artifact digest `{recorded}` does not match its file list (which hashes to `{computed}`)"
    )]
    ArtifactDigest { recorded: String, computed: String },
}

impl StoreError {
    /// What went wrong, as a short name for tests to match on; the API
    /// answers every store failure as `agent.store`.
    #[cfg(test)]
    pub(crate) fn code(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "store.open_failed",
            StoreError::Migration(_) => "store.migration_failed",
            StoreError::Sqlite(_) | StoreError::Json { .. } => "store.failed",
            StoreError::UnknownRelease { .. } => "release.not_found",
            StoreError::ReleaseExists { .. } => "release.exists",
            StoreError::UnknownInstance { .. } => "instance.not_found",
            StoreError::InstanceExists { .. } => "instance.exists",
            StoreError::Switch { .. } => "cutover.rejected",
            StoreError::ArtifactDigest { .. } => "artifact.digest_mismatch",
        }
    }
}

/// The agent's SQLite store. See the module docs for what it keeps and why.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the store at `path` in WAL mode, with
    /// foreign keys enforced, and brings its schema up to date. A new file is
    /// created readable by the agent's user only.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_error(e.into()))?;
        }
        create_private(path).map_err(|e| open_error(e.into()))?;
        let conn = Connection::open(path).map_err(|e| open_error(e.into()))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| open_error(e.into()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_error(
                format!("the journal mode stayed `{mode}` instead of `wal`").into(),
            ));
        }
        // With WAL, NORMAL loses at most the last transactions on power loss,
        // never consistency.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| open_error(e.into()))?;
        Store::prepare(conn)
    }

    /// A private store in memory, for tests.
    #[cfg(test)]
    pub(crate) fn open_in_memory() -> Result<Store, StoreError> {
        Store::prepare(Connection::open_in_memory()?)
    }

    /// The row `sql` selects with `params`, if any, read by `read`.
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.conn.query_row(sql, params, read).optional()?)
    }

    /// Every row `sql` selects with `params`, each read by `read`.
    fn rows<T, C: FromIterator<T>>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<C, StoreError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let rows = statement.query_map(params, read)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn prepare(mut conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        schema::migrations().to_latest(&mut conn)?;
        Ok(Store { conn })
    }

    /// SQLite's journal mode: `wal` for a store on disk.
    #[cfg(test)]
    pub(crate) fn journal_mode(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))?)
    }
}

/// The store as the agent's tasks share it: each call runs on the blocking
/// pool, one at a time, so no runtime thread ever waits on SQLite.
#[derive(Clone, Debug)]
pub struct SharedStore(Arc<Mutex<Store>>);

impl SharedStore {
    pub(crate) fn new(store: Store) -> SharedStore {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || f(&mut store.lock())).await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// The store itself, for code already on the blocking pool.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Creates `path` with mode 0600 if it does not exist yet, so SQLite (which
/// gives its `-wal` and `-shm` files the database's mode) never makes the
/// store world-readable. Service environments are kept here.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// A service as the CLI sends it, for tests.
#[cfg(test)]
pub(crate) fn test_service(name: &str) -> gantry_core::agent_api::ServiceSpec {
    releases::tests::service(name)
}

/// A release of project `shop` numbered `number` (id `r{number}`), with one
/// service, for tests.
#[cfg(test)]
pub(crate) fn test_release(number: u64) -> gantry_core::agent_api::Release {
    releases::tests::release("shop", &format!("r{number}"), number)
}

/// Whether an error is SQLite refusing a duplicate key.
fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_on_disk_is_in_wal_mode_with_foreign_keys_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state/agent.db")).expect("open");
        assert_eq!(store.journal_mode().expect("journal mode"), "wal");
        let fk: bool = store
            .conn
            .pragma_query_value(None, "foreign_keys", |row| row.get(0))
            .expect("pragma");
        assert!(fk);
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .expect("pragma");
        assert_eq!(sync, 1, "synchronous=NORMAL");
    }

    #[test]
    fn store_file_is_private_to_the_agent_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        Store::open(&path).expect("open");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_reopened_store_keeps_everything() {
        use gantry_core::agent_api::{Artifact, InstanceState};

        use crate::store::releases::tests::release;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        let artifact = Artifact {
            digest: crate::artifact::artifact_digest(&[]),
            files: Vec::new(),
        };
        {
            let store = Store::open(&path).expect("open");
            store
                .insert_release(&release("shop", "r-1", 1))
                .expect("release");
            store
                .insert_instance(&InstanceRecord::new(
                    "web-1",
                    "shop",
                    "web",
                    "r-1",
                    Some(20_001),
                    now_ms(),
                ))
                .expect("instance");
            store
                .switch("shop", "web", "r-1", &["web-1".to_owned()], &[])
                .expect("switch");
            assert!(store.lease_port("web-1", 20_001).expect("lease"));
            store.record_artifact(&artifact).expect("artifact");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.journal_mode().expect("mode"), "wal");
        assert_eq!(store.releases("shop").expect("releases").len(), 1);
        assert_eq!(store.next_release_number("shop").expect("next"), 2);
        let instance = store.instance("web-1").expect("query").expect("found");
        assert_eq!(instance.state, InstanceState::Live);
        assert_eq!(
            store.current("shop", "web").expect("current").as_deref(),
            Some("r-1")
        );
        assert_eq!(store.port_of("web-1").expect("port"), Some(20_001));
        assert_eq!(
            store.artifact(&artifact.digest).expect("artifact"),
            Some(artifact)
        );
    }

    #[test]
    fn a_store_at_the_first_schema_keeps_its_data_and_takes_a_second_projects_r1() {
        use gantry_core::agent_api::InstanceState;

        use crate::store::releases::tests::release;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        {
            // The store as agents of the first schema left it: one project.
            let mut conn = Connection::open(&path).expect("open");
            conn.pragma_update(None, "foreign_keys", true)
                .expect("foreign keys");
            schema::migrations()
                .to_version(&mut conn, 1)
                .expect("first schema");
            let v1 = Store { conn };
            v1.insert_release_as_format_1(&release("shop", "r1", 1))
                .expect("release");
            let mut back = release("shop", "r2", 2);
            back.rollback_of = Some("r1".to_owned());
            v1.insert_release_as_format_1(&back)
                .expect("rollback release");
            v1.insert_instance(&InstanceRecord::new(
                "web-r2-1",
                "shop",
                "web",
                "r2",
                Some(20_001),
                1,
            ))
            .expect("instance");
            v1.switch("shop", "web", "r2", &["web-r2-1".to_owned()], &[])
                .expect("switch");
            let err = v1
                .insert_release(&release("blog", "r1", 1))
                .expect_err("the first schema keys releases by id alone");
            assert_eq!(err.code(), "release.exists");
        }
        let store = Store::open(&path).expect("migrated");
        let ids: Vec<_> = store
            .releases("shop")
            .expect("releases")
            .into_iter()
            .map(|r| (r.id, r.rollback_of))
            .collect();
        assert_eq!(
            ids,
            [
                ("r2".to_owned(), Some("r1".to_owned())),
                ("r1".to_owned(), None)
            ]
        );
        let web = store.instance("web-r2-1").expect("query").expect("kept");
        assert_eq!((web.state, web.port), (InstanceState::Live, Some(20_001)));
        assert_eq!(
            store.current("shop", "web").expect("current").as_deref(),
            Some("r2")
        );
        store
            .insert_release(&release("blog", "r1", 1))
            .expect("a second project's r1");
        store
            .insert_instance(&InstanceRecord::new(
                "web-r1-1",
                "blog",
                "web",
                "r1",
                Some(20_002),
                2,
            ))
            .expect("its instance");
        store
            .switch("blog", "web", "r1", &["web-r1-1".to_owned()], &[])
            .expect("its switch");
        assert_eq!(
            store.current("shop", "web").expect("current").as_deref(),
            Some("r2"),
            "the first project's current release is its own"
        );
        let broken: i64 = store
            .conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .expect("foreign key check");
        assert_eq!(broken, 0);
    }

    #[test]
    fn a_store_at_the_second_schema_drops_its_events_and_keeps_its_releases() {
        use crate::store::releases::tests::release;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        {
            let mut conn = Connection::open(&path).expect("open");
            schema::migrations()
                .to_version(&mut conn, 2)
                .expect("second schema");
            conn.execute(
                "INSERT INTO events (project, service, at, kind, message) \
                 VALUES ('shop', 'web', 1, 'service.removed', 'no longer in the config')",
                [],
            )
            .expect("an event");
            let v2 = Store { conn };
            v2.insert_release_as_format_1(&release("shop", "r1", 1))
                .expect("release");
        }
        let store = Store::open(&path).expect("migrated");
        assert_eq!(store.releases("shop").expect("releases").len(), 1);
        let tables: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'events%'",
                [],
                |row| row.get(0),
            )
            .expect("schema");
        assert_eq!(tables, 0, "the events table and its index are gone");
    }

    /// A release's services as an agent before schema 4 wrote them: the
    /// resolved service of gantry.toml as JSON, every kind of value in it.
    const FORMAT_1_SERVICES: &str = r#"[
        {"name": "web", "driver": "process", "run": "bin/web --listen $PORT",
         "build": "cargo build --release", "artifact": "dist", "port": "http",
         "health": {"kind": "http", "path": "/healthz", "interval": "500ms",
                    "timeout": "2s", "retries": 4, "start_period": "1m"},
         "routes": [{"host": "shop.example.com", "path": "/"},
                    {"host": "example.com", "path": "/api"}],
         "tls": {"cert": "/etc/ssl/shop/fullchain.pem", "key": "/etc/ssl/shop/privkey.pem"},
         "replicas": 2, "env": {"RUST_LOG": "info"}, "secrets": ["DATABASE_URL"],
         "resources": {"memory": "256M", "cpu": 0.5, "pids": 64},
         "depends_on": ["worker"], "volumes": [], "stop_timeout": "30s",
         "restart": "on-failure"},
        {"name": "worker", "driver": "process", "run": "bin/worker", "port": 9000,
         "health": {"kind": "tcp", "interval": "1s", "timeout": "2s", "retries": 3,
                    "start_period": "0s"},
         "routes": [], "replicas": 1, "env": {}, "secrets": [], "resources": {},
         "depends_on": [], "hosts": ["web-1"], "migrate": {"pre": "bin/worker migrate"},
         "volumes": ["data:/var/lib/worker"], "backup": {"schedule": "0 3 * * *", "keep": 7},
         "stop_timeout": "10s", "restart": "never", "run_as_root": true}
    ]"#;

    /// A store file at schema 3 holding one release of `shop` whose
    /// `services` column is `services`, written as SQL (as that agent did).
    fn at_schema_3_with_release(id: &str, services: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        let mut conn = Connection::open(&path).expect("open");
        schema::migrations()
            .to_version(&mut conn, 3)
            .expect("third schema");
        conn.execute(
            "INSERT INTO releases (project, id, number, environment, config_hash, \
             artifact_digest, created_at, outcome, log_tail, phases, services) \
             VALUES ('shop', ?1, 1, 'prod', 'c0ffee', 'ab', 1, 'succeeded', '[]', '[]', ?2)",
            [id, services],
        )
        .expect("a release as the agent wrote it");
        (dir, path)
    }

    #[test]
    fn a_store_written_by_an_agent_before_schema_4_loads_its_releases_services() {
        use gantry_core::agent_api::v1::{Check, Port, Restart, Workload};

        let (_dir, path) = at_schema_3_with_release("r1", FORMAT_1_SERVICES);
        let store = Store::open(&path).expect("migrated");
        let release = store.release("shop", "r1").expect("query").expect("kept");
        let [web, worker] = release.services.as_slice() else {
            panic!("two services: {:?}", release.services);
        };
        assert_eq!(
            web.workload,
            Workload::Process {
                run: "bin/web --listen $PORT".to_owned()
            }
        );
        assert_eq!(web.port, Some(Port::Named("http".to_owned())));
        assert_eq!(web.stop_timeout.as_millis(), 30_000);
        assert_eq!(web.restart, Restart::OnFailure);
        let health = web.health.as_ref().expect("web's health check");
        assert_eq!(
            health.check,
            Check::Http {
                path: "/healthz".to_owned()
            }
        );
        assert_eq!(health.interval.as_millis(), 500);
        assert_eq!(health.start_period.as_millis(), 60_000);
        assert_eq!(web.resources.memory.map(|m| m.bytes()), Some(256 << 20));
        assert_eq!(web.secrets, ["DATABASE_URL"]);
        assert_eq!(worker.port, Some(Port::Fixed(9000)));
        assert!(worker.run_as_root);
        // What the API answers is what the agent was sent, value for value.
        let mut sent: serde_json::Value = serde_json::from_str(FORMAT_1_SERVICES).expect("json");
        // Save the kind that revision 4 names: a backup then was of volumes.
        sent[1]["backup"]["kind"] = serde_json::Value::from("volumes");
        assert_eq!(
            serde_json::to_value(&release.services).expect("services"),
            sent
        );
        // And the row is the store's own format now, read again as such.
        let row: String = store
            .conn
            .query_row("SELECT services FROM releases", [], |row| row.get(0))
            .expect("the row");
        assert!(row.contains("\"stop_timeout_ms\":30000"), "{row}");
        drop(store);
        let again = Store::open(&path).expect("reopened");
        let release = again.release("shop", "r1").expect("query").expect("kept");
        assert_eq!(
            serde_json::to_value(&release.services).expect("services"),
            sent
        );
    }

    #[test]
    fn a_store_whose_services_are_not_what_an_agent_wrote_refuses_to_open_naming_the_release() {
        let (_dir, path) = at_schema_3_with_release("r7", r#"[{"name": 3}]"#);
        let err = Store::open(&path).expect_err("a damaged row stops the migration");
        let message = err.to_string();
        assert!(message.contains("release r7 of shop"), "{message}");
        assert_eq!(err.code(), "store.migration_failed");
    }

    /// A store an agent before verify windows (schema 9) wrote loads its
    /// releases with none, and then keeps one.
    #[test]
    fn a_store_at_schema_9_keeps_its_releases_and_then_their_verify_windows() {
        use crate::store::releases::tests::release;
        use gantry_core::agent_api::Verification;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        {
            let mut conn = Connection::open(&path).expect("open");
            schema::migrations()
                .to_version(&mut conn, 9)
                .expect("ninth schema");
            let v9 = Store { conn };
            v9.insert_release(&release("shop", "r1", 1))
                .expect("a release as that agent wrote it");
        }
        let store = Store::open(&path).expect("migrated");
        let mut r1 = store.release("shop", "r1").expect("query").expect("kept");
        assert_eq!(r1.verify, None);
        assert!(store.verifying().expect("query").is_empty());
        r1.verify = Some(Verification::watching(
            std::time::Duration::from_secs(10),
            5,
        ));
        store.update_release(&r1).expect("update");
        let watched = store.verifying().expect("query");
        assert_eq!(watched.len(), 1);
        assert_eq!(watched[0].verify.as_ref().map(|v| v.until), Some(10_005));
    }

    #[test]
    fn migrations_are_valid_and_reopening_is_idempotent() {
        schema::migrations()
            .validate()
            .expect("migrations validate");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        drop(Store::open(&path).expect("first open"));
        drop(Store::open(&path).expect("second open"));
    }
}
