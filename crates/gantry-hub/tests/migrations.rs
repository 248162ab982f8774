//! Schema migrations on both databases: applied once, kept on reopening,
//! and a database newer than this gantry refused.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use gantry_hub::{Location, Store};
use gantry_testkit::postgres::PgCluster;
use serde_json::json;

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

fn migrations_apply_once_and_refuse_a_newer_schema(location: &Location, dir: &std::path::Path) {
    let store = Store::open_in(location, dir).unwrap();
    store.add_product("SHOP", "The shop").unwrap();
    drop(store);
    let applied = versions(location);
    assert!(applied.len() >= 6, "{applied:?}");
    assert_eq!(
        applied,
        (1..=applied.len() as i64).collect::<Vec<_>>(),
        "every migration once, in order"
    );

    let reopened = Store::open_in(location, dir).unwrap();
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
    let refused = Store::open_in(location, dir)
        .err()
        .expect("a newer schema is refused");
    assert_eq!(refused.code().as_str(), "hub.store");
    assert!(refused.to_string().contains("version 99"), "{refused}");
}

#[test]
fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    migrations_apply_once_and_refuse_a_newer_schema(
        &Location::Sqlite(dir.path().join("hub.db")),
        dir.path(),
    );
}

#[test]
fn on_postgres() {
    let cluster = PgCluster::start();
    let location = Location::parse(&cluster.database("hub")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    migrations_apply_once_and_refuse_a_newer_schema(&location, dir.path());
}

#[test]
fn a_hub_on_postgres_is_not_opened_without_a_state_directory() {
    let location = Location::parse("postgres://hub@localhost/hub").unwrap();
    let refused = Store::open(&location).err().expect("refused");
    assert!(refused.to_string().contains("state directory"), "{refused}");
}

const TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

/// Migration 010 on a database an older hub left: its plain-text secrets
/// are sealed with the new key file, and still work.
async fn plain_text_secrets_are_sealed_and_still_work(location: Location, dir: std::path::PathBuf) {
    let store = {
        let (location, dir) = (location.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            let store = Store::open_in(&location, &dir).unwrap();
            store.add_product("SHOP", "The shop").unwrap();
            store.add_user("ann", None, "correct horse battery staple").unwrap();
            drop(store);
            // As an older hub left them.
            raw(
                &location,
                &format!(
                    "UPDATE users SET totp_secret = '{TOTP_SECRET}' WHERE name = 'ann';
                     INSERT INTO forge_secrets (product_id, secret, created_at)
                       SELECT id, 'plain-forge-secret', 0 FROM products WHERE key = 'SHOP';
                     INSERT INTO subscriptions (product_id, url, format, events, secret, created_at)
                       SELECT id, 'https://example.com/hook', 'standard', 'item.created', 'whsec_plain', 0
                       FROM products WHERE key = 'SHOP';
                     DROP INDEX sessions_expires;
                     ALTER TABLE audit DROP COLUMN count;
                     DELETE FROM hub_schema WHERE version >= 10;"
                ),
            );
            Store::open_in(&location, &dir).unwrap()
        })
        .await
        .unwrap()
    };
    let stored = {
        let location = location.clone();
        tokio::task::spawn_blocking(move || {
            support::raw(
                &location,
                "SELECT totp_secret FROM users UNION ALL SELECT secret FROM forge_secrets \
                 UNION ALL SELECT secret FROM subscriptions",
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(stored.len(), 3, "{stored:?}");
    for row in &stored {
        let value = row[0].as_deref().unwrap_or_default();
        assert!(value.starts_with("sealed1:"), "{value}");
        for plain in [TOTP_SECRET, "plain-forge-secret", "whsec_plain"] {
            assert!(!value.contains(plain), "{value}");
        }
    }
    let key = std::fs::metadata(dir.join(gantry_hub::KEY_FILE)).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    let hub = support::Hub::serve(Arc::new(store), location, dir.join("attachments")).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(TOTP_SECRET).unwrap())
        .build()
        .unwrap()
        .generate(now);
    let login = hub
        .anonymous()
        .post(
            "/api/session",
            &json!({"name": "ann", "password": "correct horse battery staple", "code": code.to_string()}),
        )
        .await;
    assert_eq!(
        login.status, 200,
        "the sealed TOTP secret opens: {}",
        login.text
    );
    let ping = br#"{"zen": "Design for failure.", "hook_id": 1}"#.to_vec();
    let signature = gantry_hub::forge_signature("plain-forge-secret", &ping);
    let delivered = hub
        .anonymous()
        .send_raw(
            "POST",
            "/api/webhooks/github",
            &[
                ("x-github-event", "ping"),
                ("x-github-delivery", "d-1"),
                ("x-hub-signature-256", &signature),
            ],
            ping,
        )
        .await;
    assert_eq!(
        delivered.status, 200,
        "the sealed forge secret opens: {}",
        delivered.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_text_secrets_are_sealed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    plain_text_secrets_are_sealed_and_still_work(
        Location::Sqlite(dir.path().join("hub.db")),
        dir.path().to_owned(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_text_secrets_are_sealed_on_postgres() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let location = Location::parse(&cluster.database("hub")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    plain_text_secrets_are_sealed_and_still_work(location, dir.path().to_owned()).await;
}

/// The public form's signing key as an older hub kept it.
const PLAIN_FORM_KEY: &str = "6f6c642d687562732d706c61696e2d666f726d2d6b65792d6e6f742d7365616c";

/// A form token for SHOP signed with `key`, issued `ago_ms` before now, as
/// the hub signs them: HMAC-SHA256 of `form\0PRODUCT\0ISSUED`.
fn token_signed_with(key: &str, ago_ms: i64) -> String {
    use hmac::{KeyInit, Mac};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let issued = i64::try_from(now).unwrap() - ago_ms;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("form\0SHOP\0{issued}").as_bytes());
    let mac = mac.finalize().into_bytes();
    format!("{issued}.{}", gantry_core::artifact::hex(&mac))
}

fn stored_form_key(location: &Location) -> String {
    let rows = support::raw(
        location,
        "SELECT value FROM hub_secrets WHERE name = 'form'",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0][0].clone().unwrap_or_default()
}

/// The form key is kept sealed from the start; migration 011 seals one an
/// older hub left in plain text, and a form that older hub handed out
/// before the upgrade can still be sent.
async fn the_form_key_is_sealed_and_an_older_hubs_tokens_still_check(
    location: Location,
    dir: std::path::PathBuf,
) {
    let store = {
        let (location, dir) = (location.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            let store = Store::open_in(&location, &dir).unwrap();
            store.add_product("SHOP", "The shop").unwrap();
            store.form_token("SHOP").unwrap();
            let made = stored_form_key(&location);
            assert!(made.starts_with("sealed1:"), "a new key is sealed: {made}");
            drop(store);
            // As an older hub left it.
            raw(
                &location,
                &format!(
                    "UPDATE hub_secrets SET value = '{PLAIN_FORM_KEY}' WHERE name = 'form';
                     ALTER TABLE audit DROP COLUMN count;
                     DELETE FROM hub_schema WHERE version >= 11;"
                ),
            );
            Store::open_in(&location, &dir).unwrap()
        })
        .await
        .unwrap()
    };
    let sealed = {
        let location = location.clone();
        tokio::task::spawn_blocking(move || stored_form_key(&location))
            .await
            .unwrap()
    };
    assert!(sealed.starts_with("sealed1:"), "{sealed}");
    assert!(!sealed.contains(PLAIN_FORM_KEY), "{sealed}");

    let hub = support::Hub::serve(Arc::new(store), location.clone(), dir.join("attachments")).await;
    let idea = |token: String| {
        json!({
            "name": "Zoe",
            "email": "zoe@example.com",
            "type": "feature",
            "description": "Let me pay by bank transfer, please.",
            "form_token": token,
        })
    };
    // Issued by the older hub a minute before: past the form's minimum age.
    let sent = hub
        .anonymous()
        .post(
            "/api/public/SHOP/ideas",
            &idea(token_signed_with(PLAIN_FORM_KEY, 60_000)),
        )
        .await;
    assert_eq!(
        sent.status, 201,
        "the sealed key checks a token the plain one signed: {}",
        sent.text
    );
    let forged = hub
        .anonymous()
        .post(
            "/api/public/SHOP/ideas",
            &idea(token_signed_with(&sealed, 60_000)),
        )
        .await;
    assert_eq!(forged.status, 422, "{}", forged.text);
    let form = hub.anonymous().get("/api/public/SHOP/form").await;
    assert_eq!(form.status, 200, "{}", form.text);
    let kept = tokio::task::spawn_blocking(move || stored_form_key(&location))
        .await
        .unwrap();
    assert_eq!(kept, sealed, "the key is the same, not made again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_form_key_is_sealed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    the_form_key_is_sealed_and_an_older_hubs_tokens_still_check(
        Location::Sqlite(dir.path().join("hub.db")),
        dir.path().to_owned(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_form_key_is_sealed_on_postgres() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let location = Location::parse(&cluster.database("hub")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    the_form_key_is_sealed_and_an_older_hubs_tokens_still_check(location, dir.path().to_owned())
        .await;
}
