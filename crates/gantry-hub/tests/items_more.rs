//! Comments (edit, delete, reactions, mentions), watchers and
//! notifications, custom fields, attachments, saved views, bulk changes
//! and export, over HTTP against a real hub on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_hub::model::Permission;
use serde_json::{Value, json};
use support::{Db, Hub};

on_both_databases!(
    authors_edit_and_delete_their_own_comments_and_others_cannot,
    reactions_are_one_of_each_kind_per_actor,
    a_mention_notifies_the_named_key_once,
    watchers_are_notified_of_changes_and_comments_by_others,
    custom_fields_are_defined_per_product_checked_and_filterable,
    attachments_are_stored_once_and_downloaded_as_files,
);

fn etag(item: &Value) -> String {
    format!("\"{}\"", item["version"])
}

async fn authors_edit_and_delete_their_own_comments_and_others_cannot(db: Db) {
    let hub = Hub::start(db).await;
    let ann = hub.client(&hub.key("ann", Permission::Write, None).await);
    let bob = hub.client(&hub.key("bob", Permission::Write, None).await);
    let item = ann
        .create(&json!({"product": "SHOP", "type": "task", "title": "Tidy the cart"}))
        .await;
    let comments = format!(
        "/api/agent/items/{}/comments",
        item["reference"].as_str().unwrap()
    );
    let first = ann.post(&comments, &json!({"body": "first draft"})).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let path = format!("{comments}/{}", first.json()["id"]);

    let refused = bob
        .send("PATCH", &path, &[], Some(&json!({"body": "mine now"})))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.code(), "hub.forbidden");
    assert!(refused.message().contains("`ann`"), "{}", refused.text);
    let refused = bob.send("DELETE", &path, &[], None).await;
    assert_eq!(refused.status, 403);

    let edited = ann
        .send("PATCH", &path, &[], Some(&json!({"body": "second draft"})))
        .await;
    assert_eq!(edited.status, 200, "{}", edited.text);
    assert_eq!(edited.json()["body"], "second draft");
    assert!(edited.json()["edited_at"].is_string());
    let listed = ann.get(&comments).await.json();
    assert_eq!(listed[0]["body"], "second draft");

    let deleted = ann.send("DELETE", &path, &[], None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(ann.get(&comments).await.json(), json!([]));
    let again = ann.send("DELETE", &path, &[], None).await;
    assert_eq!(again.status, 404);

    let log = ann
        .get(&format!("/api/agent/items/{}/activity", item["id"]))
        .await
        .json();
    let comment_log: Vec<(Value, Value)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["field"] == "comment")
        .map(|a| (a["before"].clone(), a["after"].clone()))
        .collect();
    assert_eq!(
        comment_log,
        [
            (json!("first draft"), json!("second draft")),
            (json!("second draft"), Value::Null),
        ]
    );
}

async fn reactions_are_one_of_each_kind_per_actor(db: Db) {
    let hub = Hub::start(db).await;
    let ann = hub.client(&hub.key("ann", Permission::Write, None).await);
    let bob = hub.client(&hub.key("bob", Permission::Write, None).await);
    let item = ann
        .create(&json!({"product": "SHOP", "type": "task", "title": "Ship it"}))
        .await;
    let comment = ann
        .post(
            &format!("/api/agent/items/{}/comments", item["id"]),
            &json!({"body": "shipped"}),
        )
        .await
        .json();
    let reactions = format!(
        "/api/agent/items/{}/comments/{}/reactions",
        item["id"], comment["id"]
    );
    for client in [&ann, &ann, &bob] {
        let answer = client.post(&reactions, &json!({"emoji": "rocket"})).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let answer = bob.post(&reactions, &json!({"emoji": "heart"})).await;
    assert_eq!(
        answer.json()["reactions"],
        json!([
            {"emoji": "rocket", "count": 2, "actors": ["ann", "bob"]},
            {"emoji": "heart", "count": 1, "actors": ["bob"]},
        ])
    );
    let unknown = bob.post(&reactions, &json!({"emoji": "poop"})).await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);

    let removed = ann
        .send("DELETE", &format!("{reactions}/rocket"), &[], None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    assert_eq!(
        removed.json()["reactions"][0],
        json!({"emoji": "rocket", "count": 1, "actors": ["bob"]})
    );
}

async fn a_mention_notifies_the_named_key_once(db: Db) {
    let hub = Hub::start(db).await;
    let ann = hub.client(&hub.key("ann", Permission::Write, None).await);
    let bob = hub.client(&hub.key("bob", Permission::Read, None).await);
    let item = ann
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Checkout 500s"}))
        .await;
    let comments = format!("/api/agent/items/{}/comments", item["id"]);
    let comment = ann
        .post(
            &comments,
            &json!({"body": "@bob can you look? (and @nobody, and me @ann)"}),
        )
        .await
        .json();
    let mine = bob.get("/api/agent/notifications").await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    let mine = mine.json();
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["kind"], "mention");
    assert_eq!(mine[0]["item"], "SHOP-1");
    assert_eq!(mine[0]["comment"], comment["id"]);
    assert_eq!(mine[0]["actor"], "ann");
    assert_eq!(mine[0]["read"], false);
    assert_eq!(
        ann.get("/api/agent/notifications").await.json(),
        json!([]),
        "nobody is notified of their own mention"
    );

    // Editing the comment does not notify bob again; a new name is.
    let carl = hub.client(&hub.key("carl", Permission::Read, None).await);
    let edited = ann
        .send(
            "PATCH",
            &format!("{comments}/{}", comment["id"]),
            &[],
            Some(&json!({"body": "@bob and @carl, can you look?"})),
        )
        .await;
    assert_eq!(edited.status, 200, "{}", edited.text);
    assert_eq!(
        bob.get("/api/agent/notifications")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        carl.get("/api/agent/notifications").await.json()[0]["kind"],
        "mention"
    );

    let marked = bob
        .post(
            "/api/agent/notifications/read",
            &json!({"up_to": mine[0]["id"]}),
        )
        .await;
    assert_eq!(marked.json()["marked"], 1, "{}", marked.text);
    assert_eq!(
        bob.get("/api/agent/notifications?unread=true").await.json(),
        json!([])
    );
}

async fn watchers_are_notified_of_changes_and_comments_by_others(db: Db) {
    let hub = Hub::start(db).await;
    let ann = hub.client(&hub.key("ann", Permission::Write, None).await);
    let bob = hub.client(&hub.key("bob", Permission::Read, None).await);
    let item = ann
        .create(&json!({"product": "SHOP", "type": "task", "title": "Faster images"}))
        .await;
    let watchers = format!("/api/agent/items/{}/watchers", item["id"]);
    for client in [&ann, &bob, &bob] {
        let answer = client.post(&watchers, &json!({})).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(ann.get(&watchers).await.json(), json!(["ann", "bob"]));

    let changed = ann
        .send(
            "PATCH",
            &format!("/api/agent/items/{}/status", item["id"]),
            &[("if-match", &etag(&item))],
            Some(&json!({"status": "in_progress"})),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    ann.post(
        &format!("/api/agent/items/{}/comments", item["id"]),
        &json!({"body": "on it"}),
    )
    .await;
    let seen = bob.get("/api/agent/notifications").await.json();
    let seen: Vec<(&str, &str)> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["kind"].as_str().unwrap(), n["summary"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("comment", "ann commented on SHOP-1"),
            ("change", "status: open → in_progress"),
        ]
    );
    assert_eq!(
        ann.get("/api/agent/notifications").await.json(),
        json!([]),
        "a watcher is not told of their own changes"
    );

    let left = bob.send("DELETE", &watchers, &[], None).await;
    assert_eq!(left.json(), json!(["ann"]));
}

async fn custom_fields_are_defined_per_product_checked_and_filterable(db: Db) {
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("admin", Permission::Admin, None).await);
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let fields = "/api/agent/products/SHOP/fields";
    for field in [
        json!({"name": "Team", "type": "select", "options": ["payments", "search"]}),
        json!({"name": "Points", "type": "number"}),
        json!({"name": "Launch", "type": "date"}),
        json!({"name": "Notes", "type": "text"}),
    ] {
        let answer = admin.post(fields, &field).await;
        assert_eq!(answer.status, 201, "{}", answer.text);
    }
    let refused = agent
        .post(fields, &json!({"name": "Mine", "type": "text"}))
        .await;
    assert_eq!(refused.status, 403, "defining fields needs an admin key");
    let twice = admin
        .post(fields, &json!({"name": "Team", "type": "text"}))
        .await;
    assert_eq!(twice.status, 409, "{}", twice.text);
    let no_options = admin
        .post(fields, &json!({"name": "Size", "type": "select"}))
        .await;
    assert_eq!(no_options.status, 422);
    assert_eq!(agent.get(fields).await.json().as_array().unwrap().len(), 4);

    let item = agent
        .create(
            &json!({"product": "SHOP", "type": "task", "title": "Split payments",
            "custom": {"Team": "payments", "Points": 3}}),
        )
        .await;
    assert_eq!(item["custom"], json!({"Points": 3, "Team": "payments"}));
    agent
        .create(
            &json!({"product": "SHOP", "type": "task", "title": "Stem words",
            "custom": {"Team": "search"}}),
        )
        .await;
    for (custom, wrong) in [
        (json!({"Team": "growth"}), "no option `growth`"),
        (json!({"Points": "three"}), "takes a number"),
        (json!({"Launch": "2027-02-30"}), "is not a date"),
        (json!({"Colour": "red"}), "no custom field `Colour`"),
    ] {
        let answer = agent
            .post(
                "/api/agent/items",
                &json!({"product": "SHOP", "type": "task", "title": "x", "custom": custom}),
            )
            .await;
        assert_eq!(answer.status, 422, "{}", answer.text);
        assert!(answer.message().contains(wrong), "{}", answer.text);
    }
    let blog = agent
        .post(
            "/api/agent/items",
            &json!({"product": "BLOG", "type": "task", "title": "x", "custom": {"Team": "search"}}),
        )
        .await;
    assert_eq!(blog.status, 422, "fields are per product: {}", blog.text);

    let path = format!("/api/agent/items/{}", item["id"]);
    let edited = agent
        .send(
            "PATCH",
            &path,
            &[("if-match", &etag(&item))],
            Some(&json!({"custom": {"Points": 5, "Team": null, "Launch": "2027-03-01"}})),
        )
        .await;
    assert_eq!(edited.status, 200, "{}", edited.text);
    assert_eq!(
        edited.json()["custom"],
        json!({"Launch": "2027-03-01", "Points": 5})
    );
    let log = agent.get(&format!("{path}/activity")).await.json();
    let custom: Vec<(&str, &Value, &Value)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["field"].as_str().unwrap().starts_with("custom."))
        .map(|a| (a["field"].as_str().unwrap(), &a["before"], &a["after"]))
        .collect();
    assert_eq!(
        custom,
        [
            ("custom.Launch", &Value::Null, &json!("2027-03-01")),
            ("custom.Points", &json!("3"), &json!("5")),
            ("custom.Team", &json!("payments"), &Value::Null),
        ]
    );

    let found = agent
        .get("/api/agent/items?custom=Team:search")
        .await
        .json();
    let titles: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Stem words"]);
    let by_points = agent.get("/api/agent/items?custom=Points:5").await.json();
    assert_eq!(by_points["items"][0]["title"], "Split payments");
}

/// Every file under `dir`, recursively, but the upload scratch space.
fn stored_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(stored_files(&path));
        } else if !path.starts_with(dir.join("tmp"))
            && path.parent().is_some_and(|p| !p.ends_with("tmp"))
        {
            out.push(path);
        }
    }
    out
}

async fn attachments_are_stored_once_and_downloaded_as_files(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let item = agent
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Crash on upload"}))
        .await;
    let path = format!("/api/agent/items/{}/attachments", item["id"]);
    let html = b"<script>alert(1)</script>".to_vec();
    let upload = |name: &str, body: Vec<u8>, kind: &str| {
        let (agent, url, kind) = (
            agent.clone(),
            format!("{path}?name={name}"),
            kind.to_owned(),
        );
        async move {
            agent
                .send_raw("POST", &url, &[("content-type", &kind)], body)
                .await
        }
    };
    let first = upload("page.html", html.clone(), "text/html").await;
    assert_eq!(first.status, 201, "{}", first.text);
    let first = first.json();
    assert_eq!(first["size"], html.len());
    assert_eq!(first["content_type"], "text/html");
    let second = upload("copy.html", html.clone(), "text/html; charset=utf-8")
        .await
        .json();
    assert_eq!(second["sha256"], first["sha256"], "equal files, one digest");
    assert_eq!(stored_files(&hub.files).len(), 1, "and one stored copy");
    assert_eq!(agent.get(&path).await.json().as_array().unwrap().len(), 2);

    let download = agent.get(&format!("{path}/{}", first["id"])).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.text.as_bytes(), html);
    assert_eq!(download.header("content-type"), Some("text/html"));
    assert_eq!(download.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"page.html\"; filename*=UTF-8''page%2Ehtml")
    );

    let big = upload(
        "big.bin",
        vec![7u8; 25 * 1024 * 1024 + 1],
        "application/octet-stream",
    )
    .await;
    assert_eq!(big.status, 413, "{}", big.text);
    assert_eq!(big.code(), "hub.too_large");
    let full = upload(
        "full.bin",
        vec![7u8; 25 * 1024 * 1024],
        "application/octet-stream",
    )
    .await;
    assert_eq!(full.status, 201, "exactly 25 MiB is allowed: {}", full.text);
    assert_eq!(stored_files(&hub.files).len(), 2);

    let pathy = upload("..%2Fescape", b"x".to_vec(), "text/plain").await;
    assert_eq!(pathy.status, 422, "{}", pathy.text);
    let typo = upload("a.txt", b"x".to_vec(), "not a type").await;
    assert_eq!(typo.status, 422, "{}", typo.text);
    let reader = hub.client(&hub.key("reader", Permission::Read, None).await);
    let refused = reader
        .send_raw("POST", &format!("{path}?name=r.txt"), &[], b"x".to_vec())
        .await;
    assert_eq!(refused.status, 403);
}
