//! The PostgreSQL backend: a pool of blocking `postgres` clients, each
//! transaction READ COMMITTED. Races (claims, sequence numbers) are settled
//! by conditional UPDATEs, which PostgreSQL re-checks on the row it waited for.

use std::error::Error as _;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{NoTls, error::SqlState};
use r2d2_postgres::PostgresConnectionManager;

use super::{Backend, DbError, Dialect, Row, Sql, Value, numbered_placeholders};

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

pub struct Postgres {
    /// Always `Some` until dropped.
    pool: Option<Pool>,
}

impl Drop for Postgres {
    /// Each blocking client owns a small tokio runtime, which may not be
    /// dropped on an async thread (the hub's last `Store` handle often is):
    /// the pool is dropped on a thread of its own.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new()
                .name("hub-pg-close".to_owned())
                .spawn(move || drop(pool));
        }
    }
}

impl Postgres {
    pub fn connect(url: &str) -> Result<Postgres, DbError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| DbError::Location(format!("the postgres:// URL does not parse: {e}")))?;
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .connection_timeout(std::time::Duration::from_secs(10))
            .build(manager)
            // r2d2's message names the server's refusal, never the URL.
            .map_err(|e| DbError::Open(e.to_string()))?;
        Ok(Postgres { pool: Some(pool) })
    }
}

impl Backend for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn transaction(
        &self,
        work: &mut dyn FnMut(&mut dyn Sql) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let pool = self
            .pool
            .as_ref()
            .ok_or_else(|| DbError::Open("the pool is closed".to_owned()))?;
        let mut client = pool.get().map_err(|e| DbError::Open(e.to_string()))?;
        let mut tx = client.transaction().map_err(error)?;
        let mut sql = Tx(&mut tx);
        work(&mut sql)?;
        tx.commit().map_err(error)
    }
}

struct Tx<'a, 'b>(&'a mut postgres::Transaction<'b>);

#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::BOOL => (*v != 0).to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(v) => v.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT8,
            Type::INT4,
            Type::BOOL,
            Type::TEXT,
            Type::VARCHAR,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

impl Sql for Tx<'_, '_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let params: Vec<Param> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.0
            .execute(numbered_placeholders(sql).as_str(), &refs)
            .map_err(error)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let params: Vec<Param> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self
            .0
            .query(numbered_placeholders(sql).as_str(), &refs)
            .map_err(error)?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| read(row, i))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.0.batch_execute(sql).map_err(error)
    }
}

fn read(row: &postgres::Row, i: usize) -> Result<Value, DbError> {
    let ty = row.columns()[i].type_().clone();
    let shape = |e: postgres::Error| DbError::Shape(format!("column {i}: {e}"));
    Ok(if ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)
            .map_err(shape)?
            .map_or(Value::Null, Value::Int)
    } else if ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)
            .map_err(shape)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)
            .map_err(shape)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if ty == Type::TEXT || ty == Type::VARCHAR {
        row.try_get::<_, Option<String>>(i)
            .map_err(shape)?
            .map_or(Value::Null, Value::Text)
    } else {
        return Err(DbError::Shape(format!("column {i} has type {ty}")));
    })
}

fn error(e: postgres::Error) -> DbError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return DbError::Unique(e.to_string());
    }
    // The server's own message (e.source()) says what went wrong.
    match e.source() {
        Some(source) => DbError::Query(format!("{e}: {source}")),
        None => DbError::Query(e.to_string()),
    }
}
