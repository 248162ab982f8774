//! The databases migrations run on: SQLite (rusqlite) and PostgreSQL
//! (postgres). Each keeps the tracking table `gantry_migrations` and applies
//! one migration in one transaction together with its row, so a migration is
//! either applied and recorded or neither. Runners exclude each other: on
//! PostgreSQL with an advisory lock held for the whole run, on SQLite by
//! `BEGIN IMMEDIATE` (one writer) around each migration; either way a runner
//! reads the table again inside the transaction and skips what another applied.

use std::time::{Duration, Instant};

use super::{Applied, Migration};

/// How long to wait for the database to answer a connection, and for
/// another runner to give a SQLite database back.
const WAIT: Duration = Duration::from_secs(30);

/// How long a runner waits for another's migrations before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// The advisory lock's key on PostgreSQL: any fixed number; this one is
/// "gantry" in ASCII.
const LOCK_KEY: i64 = 0x67_61_6e_74_72_79;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS gantry_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL
)";

/// Which kind of database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgresql,
    Sqlite,
}

/// Where a database is, from its URL. The URL itself is never kept: it may
/// hold a password.
pub enum Target {
    Postgres(Box<postgres::Config>),
    Sqlite(std::path::PathBuf),
}

impl Target {
    /// `postgres://…` or `postgresql://…`, or `sqlite:///absolute/path.db`
    /// (`sqlite:/absolute/path.db`). The error never repeats the URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut config: postgres::Config = url
                .parse()
                .map_err(|e| format!("it is not a PostgreSQL URL gantry can read: {e}"))?;
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(WAIT);
            }
            return Ok(Target::Postgres(Box::new(config)));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err("a SQLite URL needs an absolute path, like sqlite:///srv/shop/shop.db: a relative one would name another file for each release".to_owned());
            }
            return Ok(Target::Sqlite(path.into()));
        }
        Err("it is neither postgres://… nor sqlite:///path".to_owned())
    }

    pub fn kind(&self) -> Kind {
        match self {
            Target::Postgres(_) => Kind::Postgresql,
            Target::Sqlite(_) => Kind::Sqlite,
        }
    }

    /// The database to read what is applied, changing nothing: a SQLite
    /// file is opened read-only, and one that does not exist yet is not
    /// made (`None`: nothing is applied there).
    pub fn open_to_read(&self) -> Result<Option<Box<dyn Database>>, String> {
        let Target::Sqlite(path) = self else {
            return self.open().map(Some);
        };
        let exists = path
            .try_exists()
            .map_err(|e| format!("cannot look for SQLite database {}: {e}", path.display()))?;
        if !exists {
            return Ok(None);
        }
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags)
            .map_err(|e| format!("cannot open SQLite database {}: {e}", path.display()))?;
        sqlite(conn).map(Some)
    }

    /// The database to run migrations on; a SQLite file is made if there
    /// is none.
    pub fn open(&self) -> Result<Box<dyn Database>, String> {
        match self {
            Target::Postgres(config) => {
                let client = config
                    .connect(postgres::NoTls)
                    .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
                Ok(Box::new(Postgres { client }))
            }
            Target::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)
                    .map_err(|e| format!("cannot open SQLite database {}: {e}", path.display()))?;
                sqlite(conn)
            }
        }
    }
}

fn sqlite(conn: rusqlite::Connection) -> Result<Box<dyn Database>, String> {
    conn.busy_timeout(WAIT)
        .map_err(|e| format!("cannot set up SQLite: {e}"))?;
    Ok(Box::new(Sqlite { conn }))
}

/// Why a migration was not applied.
#[derive(Debug)]
pub enum ApplyError {
    /// Its SQL failed; its transaction was rolled back.
    Sql(String),
    /// The database failed around it (connection, tracking table).
    Database(String),
}

pub trait Database {
    /// The tracking table's rows by version; none when it does not exist (it
    /// is made only by a run, so status and plan change nothing).
    fn applied(&mut self) -> Result<Vec<Applied>, String>;
    /// Takes the runners' lock (waiting for another runner) and makes the
    /// tracking table.
    fn begin_run(&mut self) -> Result<(), String>;
    fn end_run(&mut self);
    /// Applies `migration` and records it, in one transaction; `None` when
    /// another runner recorded it first.
    fn apply(&mut self, migration: &Migration) -> Result<Option<Applied>, ApplyError>;
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

struct Postgres {
    client: postgres::Client,
}

impl Database for Postgres {
    fn applied(&mut self) -> Result<Vec<Applied>, String> {
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass('gantry_migrations') IS NOT NULL", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| format!("cannot read gantry_migrations: {e}"))?;
        if !exists {
            return Ok(Vec::new());
        }
        let rows = self
            .client
            .query(
                "SELECT version, name, checksum, applied_at_ms, duration_ms FROM gantry_migrations ORDER BY version",
                &[],
            )
            .map_err(|e| format!("cannot read gantry_migrations: {e}"))?;
        rows.iter()
            .map(|row| -> Result<Applied, postgres::Error> {
                Ok(Applied {
                    version: u32::try_from(row.try_get::<_, i64>(0)?).unwrap_or(u32::MAX),
                    name: row.try_get(1)?,
                    checksum: row.try_get(2)?,
                    applied_at_ms: u64::try_from(row.try_get::<_, i64>(3)?).unwrap_or(0),
                    duration_ms: u64::try_from(row.try_get::<_, i64>(4)?).unwrap_or(0),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read gantry_migrations: {e}"))
    }

    fn begin_run(&mut self) -> Result<(), String> {
        // Another runner holds the lock for as long as its migrations take;
        // past `LOCK_WAIT` this one gives up and says so instead of hanging.
        self.client
            .batch_execute(&format!("SET lock_timeout = '{}s'", LOCK_WAIT.as_secs()))
            .map_err(|e| format!("cannot set a lock timeout: {e}"))?;
        self.client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
            .map_err(|e| {
                format!(
                    "cannot take the migrations' lock within {}s (another `gantry migrate run` or deploy holds it?): {e}",
                    LOCK_WAIT.as_secs()
                )
            })?;
        self.client
            .batch_execute("SET lock_timeout = 0")
            .map_err(|e| format!("cannot reset the lock timeout: {e}"))?;
        self.client
            .batch_execute(CREATE_TABLE)
            .map_err(|e| format!("cannot create gantry_migrations: {e}"))
    }

    fn end_run(&mut self) {
        // Closing the connection gives the lock back too.
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]);
    }

    fn apply(&mut self, migration: &Migration) -> Result<Option<Applied>, ApplyError> {
        let db = |e: postgres::Error| ApplyError::Database(e.to_string());
        let mut tx = self.client.transaction().map_err(db)?;
        let version = i64::from(migration.version);
        let done = tx
            .query_opt(
                "SELECT 1 FROM gantry_migrations WHERE version = $1",
                &[&version],
            )
            .map_err(db)?;
        if done.is_some() {
            return Ok(None);
        }
        let started = Instant::now();
        let applied_at_ms = crate::clock::now_ms();
        tx.batch_execute(&migration.sql)
            .map_err(|e| ApplyError::Sql(pg_message(&e)))?;
        let duration_ms = ms(started.elapsed());
        tx.execute(
            "INSERT INTO gantry_migrations (version, name, checksum, applied_at_ms, duration_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&version, &migration.name, &migration.checksum, &to_i64(applied_at_ms), &to_i64(duration_ms)],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Some(Applied::of(migration, applied_at_ms, duration_ms)))
    }
}

/// PostgreSQL's own words for a failed statement, with its position.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.position() {
            Some(postgres::error::ErrorPosition::Original(at)) => {
                format!("{} (at character {at})", db.message())
            }
            _ => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

struct Sqlite {
    conn: rusqlite::Connection,
}

impl Database for Sqlite {
    fn applied(&mut self) -> Result<Vec<Applied>, String> {
        let read = |conn: &rusqlite::Connection| -> rusqlite::Result<Vec<Applied>> {
            let exists: bool = conn.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'gantry_migrations'",
                [],
                |row| row.get(0),
            )?;
            if !exists {
                return Ok(Vec::new());
            }
            let mut statement = conn.prepare(
                "SELECT version, name, checksum, applied_at_ms, duration_ms FROM gantry_migrations ORDER BY version",
            )?;
            statement
                .query_map([], |row| {
                    Ok(Applied {
                        version: u32::try_from(row.get::<_, i64>(0)?).unwrap_or(u32::MAX),
                        name: row.get(1)?,
                        checksum: row.get(2)?,
                        applied_at_ms: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                        duration_ms: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                    })
                })?
                .collect()
        };
        read(&self.conn).map_err(|e| format!("cannot read gantry_migrations: {e}"))
    }

    fn begin_run(&mut self) -> Result<(), String> {
        self.conn
            .execute_batch(CREATE_TABLE)
            .map_err(|e| format!("cannot create gantry_migrations: {e}"))
    }

    fn end_run(&mut self) {}

    fn apply(&mut self, migration: &Migration) -> Result<Option<Applied>, ApplyError> {
        let db = |e: rusqlite::Error| ApplyError::Database(e.to_string());
        // IMMEDIATE: the write lock from the start, so a second runner waits
        // here, then sees this migration recorded.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(db)?;
        let version = i64::from(migration.version);
        let done: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM gantry_migrations WHERE version = ?1",
                [version],
                |row| row.get(0),
            )
            .map_err(db)?;
        if done {
            return Ok(None);
        }
        let started = Instant::now();
        let applied_at_ms = crate::clock::now_ms();
        tx.execute_batch(&migration.sql)
            .map_err(|e| ApplyError::Sql(e.to_string()))?;
        let duration_ms = ms(started.elapsed());
        tx.execute(
            "INSERT INTO gantry_migrations (version, name, checksum, applied_at_ms, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![version, migration.name, migration.checksum, to_i64(applied_at_ms), to_i64(duration_ms)],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Some(Applied::of(migration, applied_at_ms, duration_ms)))
    }
}
