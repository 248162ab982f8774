//! The hub's storage seam: a [`Backend`] runs a closure in one transaction
//! over [`Sql`], which both SQLite and PostgreSQL implement. Every query of
//! the hub is written once, against `Sql`, with `?` placeholders and the
//! types both databases share (BIGINT and TEXT); the backends translate.
//! Nothing here knows what an item is.

mod migrations;
mod postgres;
mod sqlite;

use std::path::PathBuf;

pub use migrations::migrate;

/// A value bound to a query or read from a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// One row of a result, read by position.
#[derive(Clone, Debug)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.0.get(i) {
            Some(Value::Int(v)) => Ok(*v),
            other => Err(DbError::Shape(format!(
                "column {i}: expected an integer, got {other:?}"
            ))),
        }
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, DbError> {
        match self.0.get(i) {
            Some(Value::Text(v)) => Ok(v.clone()),
            other => Err(DbError::Shape(format!(
                "column {i}: expected text, got {other:?}"
            ))),
        }
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// A connection inside one transaction.
pub trait Sql {
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    /// Runs a query (or a statement with RETURNING); every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
}

impl dyn Sql + '_ {
    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// Which database a backend speaks, for the few statements that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A database the hub can use.
pub trait Backend: Send + Sync {
    fn dialect(&self) -> Dialect;
    /// Runs `work` in one transaction: committed when it returns `Ok`,
    /// rolled back otherwise. Blocking: call it off the async runtime.
    fn transaction(
        &self,
        work: &mut dyn FnMut(&mut dyn Sql) -> Result<(), DbError>,
    ) -> Result<(), DbError>;
}

/// Where the hub keeps its data.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` URL; it may hold a password, so it is never printed.
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Location {
    /// `--database` as given: a `postgres://` or `postgresql://` URL, a
    /// `sqlite://PATH` URL, or a file path.
    pub fn parse(text: &str) -> Result<Location, DbError> {
        if text.is_empty() || text.len() > 4096 {
            return Err(DbError::Location(
                "the database must be a postgres:// URL or a SQLite file path (at most 4096 bytes)"
                    .to_owned(),
            ));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Location::Postgres(text.to_owned()));
        }
        if let Some(path) = text.strip_prefix("sqlite://") {
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if text.contains("://") {
            return Err(DbError::Location(
                "only postgres:// and sqlite:// URLs are supported".to_owned(),
            ));
        }
        Ok(Location::Sqlite(PathBuf::from(text)))
    }

    /// Whether the location holds a password (`postgres://user:pass@...`
    /// or `password=` in its query).
    pub fn has_password(&self) -> bool {
        match self {
            Location::Sqlite(_) => false,
            Location::Postgres(url) => {
                let rest = url.split_once("://").map_or("", |(_, rest)| rest);
                let user_info = rest.split('/').next().unwrap_or("").rsplit_once('@');
                user_info.is_some_and(|(user, _)| user.contains(':'))
                    || url.split_once('?').is_some_and(|(_, query)| {
                        query.split('&').any(|pair| pair.starts_with("password="))
                    })
            }
        }
    }

    /// The location without any password, for messages.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => format!("sqlite {}", path.display()),
            Location::Postgres(url) => {
                let rest = url.split_once("://").map_or("", |(_, rest)| rest);
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                let host = host.split('?').next().unwrap_or("");
                format!("postgres {host}")
            }
        }
    }

    /// Opens the database and brings its schema up to date.
    /// Opens the database and migrates its schema; `seal` seals the
    /// secrets an older schema kept in plain text.
    pub(crate) fn open(&self, seal: &crate::seal::SealKey) -> Result<Box<dyn Backend>, DbError> {
        let backend: Box<dyn Backend> = match self {
            Location::Sqlite(path) => Box::new(sqlite::Sqlite::open(path)?),
            Location::Postgres(url) => Box::new(postgres::Postgres::connect(url)?),
        };
        migrate(backend.as_ref(), seal)?;
        Ok(backend)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Location(String),
    #[error("cannot open the database: {0}")]
    Open(String),
    #[error("database error: {0}")]
    Query(String),
    /// A unique or primary key would be broken: the caller decides.
    #[error("already exists: {0}")]
    Unique(String),
    #[error("the database answered an unexpected shape: {0}")]
    Shape(String),
    /// The work inside a transaction refused to go on; it was rolled back.
    #[error("the transaction was rolled back")]
    Rollback,
    #[error("the database schema is version {found}, newer than this gantry knows ({known})")]
    TooNew { found: i64, known: i64 },
}

/// Rewrites `?` placeholders as `$1, $2, ...` (PostgreSQL). Our queries hold
/// no `?` inside string literals.
pub(crate) fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ? AND c IN (?, ?)"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"
        );
    }

    #[test]
    fn a_postgres_location_never_shows_its_password() {
        let location = Location::parse("postgres://hub:s3cret@db.internal:5432/hub").unwrap();
        assert_eq!(location.describe(), "postgres db.internal:5432/hub");
        assert!(!format!("{location:?}").contains("s3cret"));
    }

    #[test]
    fn passwords_in_a_location_are_noticed() {
        let has = |text: &str| Location::parse(text).unwrap().has_password();
        assert!(has("postgres://hub:s3cret@db/hub"));
        assert!(has("postgresql://db/hub?user=hub&password=s3cret"));
        assert!(!has("postgres://hub@db/hub"));
        assert!(!has("postgres://db:5432/hub"));
        assert!(!has("hub.db"));
    }

    #[test]
    fn unknown_schemes_are_refused() {
        assert!(Location::parse("mysql://x").is_err());
        assert_eq!(
            Location::parse("hub.db").unwrap(),
            Location::Sqlite(PathBuf::from("hub.db"))
        );
    }
}
