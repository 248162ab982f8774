//! The SQLite backend: one connection in WAL mode behind a mutex, so every
//! transaction is serialized (a claim race needs nothing more).
//! `synchronous = NORMAL`: in WAL mode a commit then waits for no fsync;
//! a crash of the hub loses nothing, a power loss may lose the last
//! commits, and neither corrupts the database.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::{Backend, DbError, Dialect, Row, Sql, Value};

pub struct Sqlite {
    connection: Mutex<Connection>,
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Sqlite, DbError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbError::Open(format!("cannot create {}: {e}", parent.display())))?;
        }
        let connection = Connection::open(path)
            .map_err(|e| DbError::Open(format!("{}: {e}", path.display())))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(|e| DbError::Open(format!("{}: {e}", path.display())))?;
        Ok(Sqlite {
            connection: Mutex::new(connection),
        })
    }
}

impl Backend for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn transaction(
        &self,
        work: &mut dyn FnMut(&mut dyn Sql) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        // A panic inside another transaction poisons the mutex; the
        // connection itself rolled back with its transaction, so go on.
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error)?;
        let mut sql = Tx(&tx);
        work(&mut sql)?;
        tx.commit().map_err(error)
    }
}

struct Tx<'a>(&'a rusqlite::Transaction<'a>);

struct Param<'a>(&'a Value);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

impl Sql for Tx<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let params: Vec<Param> = params.iter().map(Param).collect();
        let mut statement = self.0.prepare_cached(sql).map_err(error)?;
        let changed = statement
            .execute(rusqlite::params_from_iter(params.iter()))
            .map_err(error)?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let params: Vec<Param> = params.iter().map(Param).collect();
        let mut statement = self.0.prepare_cached(sql).map_err(error)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(error)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                    other => {
                        return Err(DbError::Shape(format!(
                            "column {i} holds {:?}",
                            other.data_type()
                        )));
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.0.execute_batch(sql).map_err(error)
    }
}

fn error(e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation)
            if e.to_string().contains("UNIQUE") || e.to_string().contains("PRIMARY KEY") =>
        {
            DbError::Unique(e.to_string())
        }
        _ => DbError::Query(e.to_string()),
    }
}
