//! Comments (edit, delete, reactions, mentions), watchers and
//! notifications, custom fields, attachments, saved views, bulk changes
//! and export, over HTTP against a real hub on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_hub::model::Permission;
use serde_json::{Value, json};
use support::{Db, Hub, eventually};

on_both_databases!(
    authors_edit_and_delete_their_own_comments_and_others_cannot,
    reactions_are_one_of_each_kind_per_actor,
    a_mention_notifies_the_named_key_once,
    watchers_are_notified_of_changes_and_comments_by_others,
    custom_fields_are_defined_per_product_checked_and_filterable,
    attachments_are_stored_once_and_downloaded_as_files,
    attachment_files_are_private_to_the_hub,
    attachments_are_deleted_by_their_uploader_or_an_admin_within_a_quota,
    an_upload_cut_off_mid_body_leaves_no_temporary_file,
    an_upload_out_of_time_leaves_no_temporary_file,
    abandoned_uploads_are_swept_when_a_hub_starts,
    stored_files_no_attachment_names_are_swept_once_an_hour_old,
    saved_views_keep_a_filter_and_sort_per_owner_or_product,
    a_bulk_change_moves_every_item_or_none,
    exports_stream_the_filtered_list_as_csv_and_json,
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
            {"emoji": "heart", "count": 1, "actors": ["bob"]},
            {"emoji": "rocket", "count": 2, "actors": ["ann", "bob"]},
        ])
    );
    let unknown = bob.post(&reactions, &json!({"emoji": "poop"})).await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);

    let removed = ann
        .send("DELETE", &format!("{reactions}/rocket"), &[], None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    assert_eq!(
        removed.json()["reactions"][1],
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
        .send_if_match(
            "PATCH",
            &format!("/api/agent/items/{}/status", item["id"]),
            &etag(&item),
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
        .send_if_match(
            "PATCH",
            &path,
            &etag(&item),
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

    // Refused on its announced length, before any of it is read.
    let big = agent
        .send_head(
            "POST",
            &format!("{path}?name=big.bin"),
            "application/octet-stream",
            25 * 1024 * 1024 + 1,
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

async fn attachment_files_are_private_to_the_hub(db: Db) {
    use std::os::unix::fs::PermissionsExt as _;
    let hub = Hub::start(db).await;
    // A directory an older hub (or a person) left open to everyone.
    std::fs::create_dir_all(&hub.files).unwrap();
    std::fs::set_permissions(&hub.files, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let item = agent
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Secret log"}))
        .await;
    let path = format!("/api/agent/items/{}/attachments?name=log.txt", item["id"]);
    let upload = agent
        .send_raw(
            "POST",
            &path,
            &[("content-type", "text/plain")],
            b"token=1".to_vec(),
        )
        .await;
    assert_eq!(upload.status, 201, "{}", upload.text);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = stored_files(&hub.files);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600, "{}", files[0].display());
    let mut dirs = vec![hub.files.clone(), hub.files.join("tmp")];
    dirs.extend(files[0].parent().map(std::path::Path::to_owned));
    for dir in dirs {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
}

async fn attachments_are_deleted_by_their_uploader_or_an_admin_within_a_quota(db: Db) {
    let limits = gantry_hub::Limits {
        attachment_quota_bytes: 100,
        ..gantry_hub::Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let other = hub.client(&hub.key("other", Permission::Write, None).await);
    let admin = hub.client(&hub.key("lead", Permission::Admin, Some("SHOP")).await);
    let item = agent
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Logs"}))
        .await;
    let path = format!("/api/agent/items/{}/attachments", item["id"]);
    let upload = |body: &[u8]| {
        let (agent, url, body) = (agent.clone(), format!("{path}?name=log.txt"), body.to_vec());
        async move {
            agent
                .send_raw("POST", &url, &[("content-type", "text/plain")], body)
                .await
        }
    };
    let first = upload(&[b'a'; 60]).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let over = upload(&[b'b'; 60]).await;
    assert_eq!(
        (over.status, over.code().as_str()),
        (413, "hub.too_large"),
        "{}",
        over.text
    );
    assert!(
        over.message().contains("quota of 100 bytes"),
        "{}",
        over.message()
    );
    assert!(over.hint().contains("DELETE"), "{}", over.hint());
    assert_eq!(
        stored_files(&hub.files).len(),
        1,
        "the refused file is not kept"
    );

    let first = format!("{path}/{}", first.json()["id"]);
    let refused = other.send("DELETE", &first, &[], None).await;
    assert_eq!(refused.status, 403, "not the uploader: {}", refused.text);
    let deleted = agent.send("DELETE", &first, &[], None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(agent.get(&first).await.status, 404);
    assert!(stored_files(&hub.files).is_empty(), "the file went with it");
    assert_eq!(agent.send("DELETE", &first, &[], None).await.status, 404);

    // The room is back; two equal files share one stored copy until both go.
    let one = upload(&[b'c'; 40]).await.json()["id"].clone();
    let two = upload(&[b'c'; 40]).await.json()["id"].clone();
    assert_eq!(stored_files(&hub.files).len(), 1);
    let by_admin = admin
        .send("DELETE", &format!("{path}/{one}"), &[], None)
        .await;
    assert_eq!(by_admin.status, 204, "an admin of SHOP: {}", by_admin.text);
    assert_eq!(
        stored_files(&hub.files).len(),
        1,
        "still named by the other"
    );
    let download = agent.get(&format!("{path}/{two}")).await;
    assert_eq!(download.text, "c".repeat(40));
    assert_eq!(
        agent
            .send("DELETE", &format!("{path}/{two}"), &[], None)
            .await
            .status,
        204
    );
    assert!(stored_files(&hub.files).is_empty());
    let doc = agent.get("/api/openapi.json").await.json();
    assert!(
        doc["paths"]["/api/agent/items/{id}/attachments/{attachment}"]["delete"].is_object(),
        "the document has the delete"
    );
}

/// The upload scratch space's files.
fn uploads_in(files: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(files.join("tmp"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Starts uploading 1 MiB to a new item, sends the head and 64 KiB, and
/// waits until the hub is writing it to a temporary file; the rest never
/// comes. The connection stays open while the stream lives.
async fn start_upload(hub: &Hub) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let key = hub.key("agent", Permission::Write, None).await;
    let item = hub
        .client(&key)
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Big log"}))
        .await;
    let mut stream = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let head = format!(
        "POST /api/agent/items/{}/attachments?name=big.log HTTP/1.1\r\nHost: hub\r\n\
         Authorization: Bearer {key}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        item["id"],
        1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[7u8; 64 * 1024]).await.unwrap();
    eventually("the upload's temporary file", || async {
        (!uploads_in(&hub.files).is_empty()).then_some(())
    })
    .await;
    stream
}

async fn an_upload_cut_off_mid_body_leaves_no_temporary_file(db: Db) {
    let hub = Hub::start(db).await;
    drop(start_upload(&hub).await);
    eventually("the cut-off upload's file to go", || async {
        uploads_in(&hub.files).is_empty().then_some(())
    })
    .await;
    assert!(stored_files(&hub.files).is_empty(), "nothing was stored");
}

async fn an_upload_out_of_time_leaves_no_temporary_file(db: Db) {
    let limits = gantry_hub::Limits {
        request_timeout: std::time::Duration::from_secs(1),
        ..gantry_hub::Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let _stalled = start_upload(&hub).await;
    eventually("the stalled upload's file to go", || async {
        uploads_in(&hub.files).is_empty().then_some(())
    })
    .await;
}

async fn abandoned_uploads_are_swept_when_a_hub_starts(db: Db) {
    let hub = Hub::start(db).await;
    let tmp = hub.files.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // Left by a hub killed mid-upload two hours ago.
    let abandoned = tmp.join("upload-abandoned");
    std::fs::write(&abandoned, b"half a file").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&abandoned)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600))
        .unwrap();
    // In flight on another hub sharing the directory.
    let in_flight = tmp.join("upload-in-flight");
    std::fs::write(&in_flight, b"the first part").unwrap();

    let _restarted = Hub::serve(hub.store.clone(), hub.location.clone(), hub.files.clone()).await;
    eventually("the abandoned upload to be swept", || async {
        (!abandoned.exists()).then_some(())
    })
    .await;
    assert!(in_flight.exists(), "an upload in flight is left alone");
}

/// Makes the file at `path` look last written two hours ago: older than
/// any upload in flight.
fn backdate(path: &std::path::Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600))
        .unwrap();
}

/// Where the store keeps the file of `content`, which this writes there
/// as an upload renames it into place.
fn stored_without_a_row(files: &std::path::Path, content: &[u8]) -> std::path::PathBuf {
    use sha2::Digest;
    let digest = gantry_core::artifact::hex(&sha2::Sha256::digest(content));
    let path = files.join(&digest[..2]).join(&digest);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    path
}

async fn stored_files_no_attachment_names_are_swept_once_an_hour_old(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let item = agent
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Crash on upload"}))
        .await;
    let path = format!("/api/agent/items/{}/attachments", item["id"]);
    let body = b"named by its row".to_vec();
    let uploaded = agent
        .send_raw("POST", &format!("{path}?name=kept.log"), &[], body.clone())
        .await;
    assert_eq!(uploaded.status, 201, "{}", uploaded.text);
    let uploaded = uploaded.json();
    let digest = uploaded["sha256"].as_str().unwrap();
    let named = hub.files.join(&digest[..2]).join(digest);
    backdate(&named);
    // Left two hours ago by an upload stopped between its file's rename
    // and its row's commit.
    let unnamed = stored_without_a_row(&hub.files, b"an upload stopped before its row");
    backdate(&unnamed);
    // Renamed into place just now by an upload still writing its row.
    let in_flight = stored_without_a_row(&hub.files, b"an upload writing its row");

    let _restarted = Hub::serve(hub.store.clone(), hub.location.clone(), hub.files.clone()).await;
    eventually("the unnamed file to be swept", || async {
        (!unnamed.exists()).then_some(())
    })
    .await;
    assert!(in_flight.exists(), "an upload in flight keeps its file");
    assert!(named.exists(), "a file an attachment names stays");
    let download = agent.get(&format!("{path}/{}", uploaded["id"])).await;
    assert_eq!(download.status, 200, "{}", download.text);
    assert_eq!(download.text.as_bytes(), body);
}

async fn saved_views_keep_a_filter_and_sort_per_owner_or_product(db: Db) {
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("admin", Permission::Admin, None).await);
    let ann = hub.client(&hub.key("ann", Permission::Write, None).await);
    let bob = hub.client(&hub.key("bob", Permission::Write, Some("SHOP")).await);
    for (title, priority) in [
        ("Low one", "low"),
        ("Critical one", "critical"),
        ("High one", "high"),
    ] {
        ann.create(
            &json!({"product": "SHOP", "type": "bug", "title": title, "priority": priority}),
        )
        .await;
    }
    ann.create(&json!({"product": "SHOP", "type": "task", "title": "A task"}))
        .await;
    let mine = ann
        .post(
            "/api/agent/views",
            &json!({"name": "Bugs by priority", "query": {"q": "one", "sort": "priority"}}),
        )
        .await;
    assert_eq!(mine.status, 201, "{}", mine.text);
    let mine = mine.json();
    assert_eq!(mine["owner"], "ann");
    let listed = ann
        .get(&format!("/api/agent/items?view={}", mine["id"]))
        .await
        .json();
    let titles: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Critical one", "High one", "Low one"]);
    let reversed = ann
        .get(&format!(
            "/api/agent/items?view={}&sort=-priority&limit=1",
            mine["id"]
        ))
        .await
        .json();
    assert_eq!(
        reversed["items"][0]["title"], "Low one",
        "the request's own sort wins"
    );

    let hidden = bob
        .get(&format!("/api/agent/items?view={}", mine["id"]))
        .await;
    assert_eq!(hidden.status, 404, "a view is its owner's own");
    let shared = ann
        .post(
            "/api/agent/views",
            &json!({"name": "Open", "product": "SHOP", "query": {"status": "open"}}),
        )
        .await;
    assert_eq!(shared.status, 403, "sharing needs an admin key");
    let shared = admin
        .post(
            "/api/agent/views",
            &json!({"name": "Open", "product": "SHOP", "query": {"status": "open"}}),
        )
        .await
        .json();
    let seen: Vec<String> = bob
        .get("/api/agent/views")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["Open"]);
    let bad = ann
        .post(
            "/api/agent/views",
            &json!({"name": "Bad", "query": {"status": "nope"}}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    let refused = ann
        .send(
            "DELETE",
            &format!("/api/agent/views/{}", shared["id"]),
            &[],
            None,
        )
        .await;
    assert_eq!(refused.status, 403);
    let deleted = ann
        .send(
            "DELETE",
            &format!("/api/agent/views/{}", mine["id"]),
            &[],
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
}

async fn a_bulk_change_moves_every_item_or_none(db: Db) {
    let hub = Hub::start(db).await;
    let ann = hub.client(&hub.key("ann", Permission::Write, None).await);
    let mut items = Vec::new();
    for n in 0..3 {
        items.push(
            ann.create(
                &json!({"product": "SHOP", "type": "task", "title": format!("Task {n}"),
                "labels": [{"name": "old"}]}),
            )
            .await,
        );
    }
    let targets = |items: &[Value]| -> Value {
        items
            .iter()
            .map(|i| json!({"id": i["reference"], "version": i["version"]}))
            .collect()
    };
    // One stale version: nothing changes.
    let mut stale = targets(&items);
    stale[2]["version"] = json!(99);
    let refused = ann
        .post(
            "/api/agent/bulk",
            &json!({"items": stale, "set": {"status": "done"}}),
        )
        .await;
    assert_eq!(refused.status, 412, "{}", refused.text);
    let first = ann
        .get(&format!("/api/agent/items/{}", items[0]["id"]))
        .await
        .json();
    assert_eq!(first["status"], "open", "the whole change was rolled back");

    let changed = ann
        .post(
            "/api/agent/bulk",
            &json!({"items": targets(&items), "reason": "sprint cleanup",
                "set": {"status": "done", "priority": "low", "assignee": "bo",
                    "add_labels": ["triaged"], "remove_labels": ["old"]}}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    for item in changed.json().as_array().unwrap() {
        assert_eq!(item["status"], "done");
        assert_eq!(item["priority"], "low");
        assert_eq!(item["assignee"], "bo");
        assert_eq!(
            item["labels"],
            json!([{"name": "triaged", "color": "#6b7280"}])
        );
    }
    let log = ann
        .get(&format!("/api/agent/items/{}/activity", items[1]["id"]))
        .await
        .json();
    let fields: Vec<(&str, &Value)> = log
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|a| (a["field"].as_str().unwrap(), &a["note"]))
        .collect();
    assert_eq!(
        fields,
        [
            ("status", &json!("sprint cleanup")),
            ("priority", &Value::Null),
            ("assignee", &Value::Null),
            ("labels", &Value::Null),
        ]
    );
    let too_many: Vec<Value> = (0..101)
        .map(|n| json!({"id": n.to_string(), "version": 1}))
        .collect();
    let refused = ann
        .post("/api/agent/bulk", &json!({"items": too_many, "set": {}}))
        .await;
    assert_eq!(refused.status, 422);
}

async fn exports_stream_the_filtered_list_as_csv_and_json(db: Db) {
    let hub = Hub::start(db).await;
    let ann = hub.client(&hub.key("ann", Permission::Write, None).await);
    ann.create(
        &json!({"product": "SHOP", "type": "bug", "title": "=HYPERLINK(\"http://x\")",
        "labels": [{"name": "a"}, {"name": "b"}]}),
    )
    .await;
    for n in 0..120 {
        ann.create(&json!({"product": "BLOG", "type": "task", "title": format!("Post {n}")}))
            .await;
    }
    let csv = ann.get("/api/agent/export.csv?product=SHOP").await;
    assert_eq!(csv.status, 200, "{}", csv.text);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let lines: Vec<&str> = csv.text.split("\r\n").collect();
    assert!(lines[0].starts_with("reference,type,status,priority,title,"));
    assert!(
        lines[1]
            .starts_with("SHOP-1,bug,open,medium,\"'=HYPERLINK(\"\"http://x\"\")\",,ann,\"a, b\","),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines.len(),
        3,
        "a header, one item, and the last line's end"
    );

    let json = ann
        .get("/api/agent/export.json?product=BLOG&sort=-created")
        .await;
    assert_eq!(json.status, 200);
    let all = json.json();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 120, "every page of the list");
    assert_eq!(all[0]["title"], "Post 119");
    assert_eq!(all[119]["title"], "Post 0");
    let paged = ann.get("/api/agent/export.json?limit=5").await;
    assert_eq!(paged.status, 422);
}
