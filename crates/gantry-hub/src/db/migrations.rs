//! Versioned schema migrations, one list for both databases. A migration is
//! SQL both understand, with `ID_PK` for an auto-numbered primary key; the
//! few statements that differ (full-text search) sit in `only`; what SQL
//! cannot do (sealing secrets, 010 and 011) is `code`, in the same transaction. The
//! version applied is kept in `hub_schema`; each migration runs in its own
//! transaction with the version bump, so a failed one leaves the previous
//! schema whole. Migrations are never edited once released: add one.

use super::{Backend, DbError, Dialect, Sql, Value};
use crate::seal::{Purpose, SealKey, is_sealed};

/// A migration's work in Rust, given the hub's sealing key.
type Code = fn(&mut dyn Sql, &SealKey) -> Result<(), DbError>;

struct Migration {
    /// What it is for, kept in `hub_schema` beside its number.
    name: &'static str,
    both: &'static str,
    only: &'static [(Dialect, &'static str)],
    /// Work SQL cannot do, run after the SQL in the same transaction.
    code: Option<Code>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "products, items, keys, users, logs",
        both: include_str!("migrations/001_init.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "full-text search of items",
        both: "",
        only: &[
            (
                Dialect::Sqlite,
                include_str!("migrations/002_search_sqlite.sql"),
            ),
            (
                Dialect::Postgres,
                include_str!("migrations/002_search_postgres.sql"),
            ),
        ],
        code: None,
    },
    Migration {
        name: "estimates, dates, environment, versions, sub-tasks",
        both: include_str!("migrations/003_planning.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "milestones",
        both: include_str!("migrations/004_milestones.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "keys limited to networks",
        both: include_str!("migrations/005_key_networks.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "sessions, second factors, roles, public submissions and votes",
        both: include_str!("migrations/006_people.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "webhooks in and out, notices",
        both: include_str!("migrations/007_webhooks.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "reactions, watchers, notifications, custom fields, attachments, saved views",
        both: include_str!("migrations/008_items_more.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "indexes for lists by priority and by label",
        both: include_str!("migrations/009_list_indexes.sql"),
        only: &[],
        code: None,
    },
    Migration {
        name: "secrets sealed at rest",
        both: include_str!("migrations/010_sealed_secrets.sql"),
        only: &[],
        code: Some(seal_secrets),
    },
    Migration {
        name: "the public form's signing key sealed at rest",
        both: "",
        only: &[],
        code: Some(seal_form_key),
    },
    Migration {
        name: "audit rows counting repeated refusals",
        both: include_str!("migrations/012_audit_counts.sql"),
        only: &[],
        code: None,
    },
];

/// Migration 010: seals the TOTP, subscription and forge secrets that
/// earlier versions kept in plain text, with the hub's key file.
fn seal_secrets(sql: &mut dyn Sql, key: &SealKey) -> Result<(), DbError> {
    seal_columns(
        sql,
        key,
        &[
            ("users", "id", "totp_secret", Purpose::Totp),
            ("users", "id", "totp_pending", Purpose::Totp),
            ("subscriptions", "id", "secret", Purpose::Subscription),
            ("forge_secrets", "product_id", "secret", Purpose::Forge),
        ],
    )
}

/// Migration 011: seals the public form's signing key (`hub_secrets` row
/// `form`, its only row), which 010 left in plain text. Form tokens signed
/// with it before still check: the key is the same, only stored sealed.
fn seal_form_key(sql: &mut dyn Sql, key: &SealKey) -> Result<(), DbError> {
    seal_columns(sql, key, &[("hub_secrets", "name", "value", Purpose::Form)])
}

/// Seals every plain value of each `(table, key column, column, purpose)`.
fn seal_columns(
    sql: &mut dyn Sql,
    key: &SealKey,
    columns: &[(&str, &str, &str, Purpose)],
) -> Result<(), DbError> {
    for &(table, id, column, purpose) in columns {
        let rows = sql.query(
            &format!("SELECT {id}, {column} FROM {table} WHERE {column} IS NOT NULL"),
            &[],
        )?;
        for row in rows {
            let plain = row.text(1)?;
            if is_sealed(&plain) {
                continue;
            }
            let sealed = key
                .seal(purpose, &plain)
                .map_err(|e| DbError::Query(e.to_string()))?;
            let row_key = row.0.first().cloned().unwrap_or(Value::Null);
            sql.execute(
                &format!("UPDATE {table} SET {column} = ? WHERE {id} = ?"),
                &[sealed.into(), row_key],
            )?;
        }
    }
    Ok(())
}

/// The schema version this gantry writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database's schema up to [`latest`].
pub fn migrate(backend: &dyn Backend, seal: &SealKey) -> Result<(), DbError> {
    let dialect = backend.dialect();
    backend.transaction(&mut |sql| {
        sql.batch(
            "CREATE TABLE IF NOT EXISTS hub_schema (version BIGINT NOT NULL, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
    })?;
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        backend.transaction(&mut |sql| {
            if dialect == Dialect::Postgres {
                // Two hubs starting at once on one database take turns.
                sql.batch("LOCK TABLE hub_schema IN EXCLUSIVE MODE")?;
            }
            let found = current(sql)?;
            if found > latest() {
                return Err(DbError::TooNew {
                    found,
                    known: latest(),
                });
            }
            if found >= version {
                return Ok(());
            }
            if !migration.both.is_empty() {
                sql.batch(&render(migration.both, dialect))?;
            }
            for (only, text) in migration.only {
                if *only == dialect {
                    sql.batch(&render(text, dialect))?;
                }
            }
            if let Some(code) = migration.code {
                code(sql, seal)?;
            }
            sql.execute(
                "INSERT INTO hub_schema (version, name, applied_at) VALUES (?, ?, ?)",
                &[
                    Value::Int(version),
                    migration.name.into(),
                    Value::Int(crate::clock::now()),
                ],
            )?;
            Ok(())
        })?;
    }
    Ok(())
}

fn current(sql: &mut dyn Sql) -> Result<i64, DbError> {
    let row = sql.query_one("SELECT COALESCE(MAX(version), 0) FROM hub_schema", &[])?;
    row.map_or(Ok(0), |row| row.int(0))
}

fn render(text: &str, dialect: Dialect) -> String {
    let id = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY",
        Dialect::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    };
    text.replace("ID_PK", id)
}
