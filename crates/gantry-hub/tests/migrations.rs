//! Schema migrations on both databases: applied once, kept on reopening,
//! and a database newer than this gantry refused.
#![allow(clippy::unwrap_used)]

use gantry_hub::{Location, Store};
use gantry_testkit::postgres::PgCluster;

/// Runs one statement on the database behind the store's back.
fn raw(location: &Location, statement: &str) {
    match location {
        Location::Sqlite(path) => {
            rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(statement)
                .unwrap();
        }
        Location::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client.batch_execute(statement).unwrap();
        }
    }
}

fn versions(location: &Location) -> Vec<i64> {
    match location {
        Location::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            let mut s = c
                .prepare("SELECT version FROM hub_schema ORDER BY version")
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
        Location::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client
                .query("SELECT version FROM hub_schema ORDER BY version", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }
    }
}

fn migrations_apply_once_and_refuse_a_newer_schema(location: &Location) {
    let store = Store::open(location).unwrap();
    store.add_product("SHOP", "The shop").unwrap();
    drop(store);
    let applied = versions(location);
    assert!(applied.len() >= 6, "{applied:?}");
    assert_eq!(
        applied,
        (1..=applied.len() as i64).collect::<Vec<_>>(),
        "every migration once, in order"
    );

    let reopened = Store::open(location).unwrap();
    assert_eq!(
        versions(location),
        applied,
        "reopening applies nothing again"
    );
    assert_eq!(
        reopened.products().unwrap()[0].key,
        "SHOP",
        "and keeps the data"
    );
    drop(reopened);

    raw(
        location,
        "INSERT INTO hub_schema (version, name, applied_at) VALUES (99, 'from the future', 0)",
    );
    let refused = Store::open(location)
        .err()
        .expect("a newer schema is refused");
    assert_eq!(refused.code().as_str(), "hub.store");
    assert!(refused.to_string().contains("version 99"), "{refused}");
}

#[test]
fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    migrations_apply_once_and_refuse_a_newer_schema(&Location::Sqlite(dir.path().join("hub.db")));
}

#[test]
fn on_postgres() {
    let cluster = PgCluster::start();
    let location = Location::parse(&cluster.database("hub")).unwrap();
    migrations_apply_once_and_refuse_a_newer_schema(&location);
}
