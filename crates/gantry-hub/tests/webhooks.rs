//! Webhooks over HTTP against a real hub on SQLite and on PostgreSQL:
//! forges' deliveries in (signed as GitHub and Gitea sign them), and
//! subscriptions out to a real receiver on loopback.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use gantry_hub::model::{Permission, Role};
use gantry_hub::{Background, KeySpec, Limits, forge_signature, standard_signature_matches};
use serde_json::{Value, json};
use support::{Answer, Client, Db, Hub, eventually};

on_both_databases!(
    github_pull_requests_link_start_and_finish_their_item,
    gitea_deliveries_link_comment_and_report_failed_statuses,
    an_outbound_receiver_that_fails_twice_gets_the_event_once_signed,
    a_slack_subscription_gets_the_event_as_a_line_of_text,
    a_subscription_that_keeps_failing_is_disabled_with_a_notice,
    analytics_count_cycles_closers_and_fire_sla_breaches,
    a_deploys_shipped_commits_fix_the_items_of_their_pull_requests,
    forged_deliveries_are_refused_before_the_database_is_written,
    a_delivery_to_a_products_path_is_checked_against_that_products_secret_alone,
    generic_paths_serve_a_few_products_and_refuse_more_naming_the_product_path,
    one_product_path_serves_each_forge_and_another_forge_is_no_endpoint,
);

/// Milliseconds instead of hours: the whole retry ladder in a test.
fn fast(allow_internal: bool) -> Background {
    Background {
        retry_delays: [Duration::from_millis(30); 4],
        attempt_timeout: Duration::from_secs(5),
        allow_internal_targets: allow_internal,
        poll: Duration::from_millis(20),
        ..Background::default()
    }
}

/// A product's forge secret, made through the admin API.
async fn forge_secret(admin: &Client, product: &str) -> String {
    let answer = admin
        .post(
            &format!("/api/admin/products/{product}/forge-secret"),
            &json!({}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    answer.json()["secret"].as_str().unwrap().to_owned()
}

/// A product's forge secret and the paths it answers with (GitHub's,
/// Gitea's), made through the admin API.
async fn forge_secret_and_paths(admin: &Client, product: &str) -> (String, Vec<String>) {
    let answer = admin
        .post(
            &format!("/api/admin/products/{product}/forge-secret"),
            &json!({}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let answer = answer.json();
    let paths = answer["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    (answer["secret"].as_str().unwrap().to_owned(), paths)
}

/// Sends a payload as a forge does: its event, its delivery id, signed,
/// to the generic path, which names no product.
async fn deliver(
    hub: &Hub,
    forge: &str,
    event: &str,
    delivery: &str,
    secret: &str,
    body: &Value,
) -> Answer {
    let path = format!("/api/webhooks/{forge}");
    deliver_at(hub, &path, forge, event, delivery, secret, body).await
}

/// Sends a payload as a forge does to `path`.
async fn deliver_at(
    hub: &Hub,
    path: &str,
    forge: &str,
    event: &str,
    delivery: &str,
    secret: &str,
    body: &Value,
) -> Answer {
    let body = serde_json::to_vec_pretty(body).unwrap();
    let signature = forge_signature(secret, &body);
    let (event_header, delivery_header) = match forge {
        "github" => ("x-github-event", "x-github-delivery"),
        _ => ("x-gitea-event", "x-gitea-delivery"),
    };
    let bare = signature.trim_start_matches("sha256=").to_owned();
    let mut headers = vec![
        (event_header, event),
        (delivery_header, delivery),
        ("x-hub-signature-256", signature.as_str()),
    ];
    if forge == "gitea" {
        headers.push(("x-gitea-signature", bare.as_str()));
    }
    hub.anonymous().send_raw("POST", path, &headers, body).await
}

/// A `pull_request` payload shaped as GitHub's documentation shows it.
fn github_pull_request(action: &str, branch: &str, merged: bool) -> Value {
    json!({
        "action": action,
        "number": 42,
        "pull_request": {
            "url": "https://api.github.com/repos/acme/shop/pulls/42",
            "id": 1_296_269,
            "html_url": "https://github.com/acme/shop/pull/42",
            "number": 42,
            "state": if action == "closed" { "closed" } else { "open" },
            "locked": false,
            "title": "Fix the totals",
            "user": {"login": "octocat", "id": 1, "type": "User"},
            "body": "Rounds once, at the end.",
            "created_at": "2026-12-01T19:01:12Z",
            "updated_at": "2026-12-01T20:01:12Z",
            "closed_at": null,
            "merged_at": if merged { json!("2026-12-02T09:00:00Z") } else { Value::Null },
            "merge_commit_sha": "e5bd3914e2e596debea16f433f57875b5b90bcd6",
            "draft": false,
            "head": {
                "label": "acme:".to_owned() + branch,
                "ref": branch,
                "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "user": {"login": "acme"},
                "repo": {"id": 1, "name": "shop", "full_name": "acme/shop"}
            },
            "base": {"label": "acme:main", "ref": "main", "sha": "7638417db6d59f3c431d3e1f261cc637155684cd"},
            "merged": merged,
            "mergeable": null,
            "comments": 0,
            "commits": 3,
            "additions": 100,
            "deletions": 3,
            "changed_files": 5
        },
        "repository": {"id": 1, "name": "shop", "full_name": "acme/shop", "private": false,
                       "html_url": "https://github.com/acme/shop"},
        "sender": {"login": "octocat", "id": 1, "type": "User"}
    })
}

async fn item(client: &Client, id: &Value) -> Value {
    client.get(&format!("/api/agent/items/{id}")).await.json()
}

async fn comments(client: &Client, id: &Value) -> Vec<String> {
    client
        .get(&format!("/api/agent/items/{id}/comments"))
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}: {}",
                c["author"].as_str().unwrap(),
                c["body"].as_str().unwrap()
            )
        })
        .collect()
}

async fn github_pull_requests_link_start_and_finish_their_item(db: Db) {
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let created = admin
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Totals are off by one"}))
        .await;
    let id = created["id"].clone();
    let branch = created["branch"].as_str().unwrap().to_owned();
    assert!(branch.starts_with(&format!("tracker-{id}")), "{branch}");
    let secret = forge_secret(&admin, "SHOP").await;

    let opened = deliver(
        &hub,
        "github",
        "pull_request",
        "d-1",
        &secret,
        &github_pull_request("opened", &branch, false),
    )
    .await;
    assert_eq!(opened.status, 200, "{}", opened.text);
    let now = item(&admin, &id).await;
    assert_eq!(now["status"], "in_progress");
    assert_eq!(
        now["pull_requests"][0]["url"],
        "https://github.com/acme/shop/pull/42"
    );
    assert_eq!(now["pull_requests"][0]["status"], "open");
    assert_eq!(now["pull_requests"][0]["branch"], branch.as_str());
    assert_eq!(
        now["pull_requests"][0]["commit"],
        "6dcb09b5b57875f334f61aebed695e2e4193db5e"
    );

    // GitHub redelivers with the same id: dropped, nothing changes twice.
    let again = deliver(
        &hub,
        "github",
        "pull_request",
        "d-1",
        &secret,
        &github_pull_request("opened", &branch, false),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["duplicate"], true);
    let activity = admin
        .get(&format!("/api/agent/items/{id}/activity"))
        .await
        .json();
    let status_changes = activity
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["field"] == "status")
        .count();
    assert_eq!(status_changes, 1);

    // A body signed with another secret, or altered after signing, is refused.
    let body = serde_json::to_vec(&github_pull_request("closed", &branch, true)).unwrap();
    let forged = hub
        .anonymous()
        .send_raw(
            "POST",
            "/api/webhooks/github",
            &[
                ("x-github-event", "pull_request"),
                ("x-github-delivery", "d-forged"),
                (
                    "x-hub-signature-256",
                    &forge_signature("not the secret", &body),
                ),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(forged.status, 401, "{}", forged.text);
    assert_eq!(forged.code(), "hub.unauthorized");
    assert!(
        forged.hint().contains("X-Hub-Signature-256") && !forged.hint().contains("Bearer"),
        "a forge is told how to sign, not to send a key: {}",
        forged.text
    );
    let unsigned = hub
        .anonymous()
        .send_raw(
            "POST",
            "/api/webhooks/github",
            &[
                ("x-github-event", "pull_request"),
                ("x-github-delivery", "d-x"),
            ],
            body,
        )
        .await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.text);
    assert_eq!(
        item(&admin, &id).await["status"],
        "in_progress",
        "refused deliveries change nothing"
    );

    // A failed check run comments its summary.
    let check = json!({
        "action": "completed",
        "check_run": {
            "id": 4, "head_sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "name": "unit tests", "status": "completed", "conclusion": "failure",
            "html_url": "https://github.com/acme/shop/runs/4",
            "output": {"title": "2 tests failed", "summary": "totals::rounding and totals::tax failed"},
            "check_suite": {"id": 5, "head_branch": branch, "head_sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"},
            "pull_requests": []
        },
        "repository": {"id": 1, "full_name": "acme/shop"},
        "sender": {"login": "github-actions[bot]"}
    });
    let failed = deliver(&hub, "github", "check_run", "d-2", &secret, &check).await;
    assert_eq!(failed.status, 200, "{}", failed.text);
    let said = comments(&admin, &id).await;
    assert!(
        said.iter()
            .any(|c| c.starts_with("github: Check **unit tests** failed")
                && c.contains("totals::rounding and totals::tax failed")),
        "{said:?}"
    );

    let merged = deliver(
        &hub,
        "github",
        "pull_request",
        "d-3",
        &secret,
        &github_pull_request("closed", &branch, true),
    )
    .await;
    assert_eq!(merged.status, 200, "{}", merged.text);
    let now = item(&admin, &id).await;
    assert_eq!(now["status"], "done");
    assert_eq!(now["pull_requests"][0]["status"], "merged");
    let said = comments(&admin, &id).await;
    assert!(
        said.iter().any(|c| c.starts_with(
            "github: Merged [Fix the totals](https://github.com/acme/shop/pull/42) by octocat"
        )),
        "{said:?}"
    );

    // The deliveries are kept, newest first, and one can be replayed.
    let kept = admin.get("/api/admin/products/SHOP/deliveries").await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    let kept = kept.json();
    let names: Vec<&str> = kept
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d-3", "d-2", "d-1"]);
    let first = kept[2]["id"].clone();
    let replayed = admin
        .post(&format!("/api/admin/deliveries/{first}/replay"), &json!({}))
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.text);
    assert!(
        replayed.json()["outcome"]
            .as_str()
            .unwrap()
            .starts_with("replayed by lead: linked"),
        "{}",
        replayed.text
    );
    let reader = hub.client(&hub.key("reader", Permission::Write, None).await);
    assert_eq!(
        reader
            .get("/api/admin/products/SHOP/deliveries")
            .await
            .status,
        403
    );

    // A branch naming another product's item does nothing to it.
    let blog = admin
        .create(&json!({"product": "BLOG", "type": "task", "title": "Write"}))
        .await;
    let other = deliver(
        &hub,
        "github",
        "pull_request",
        "d-4",
        &secret,
        &github_pull_request("opened", &format!("tracker-{}", blog["id"]), false),
    )
    .await;
    assert!(
        other.json()["outcome"]
            .as_str()
            .unwrap()
            .starts_with("ignored"),
        "{}",
        other.text
    );
    assert_eq!(item(&admin, &blog["id"]).await["status"], "open");
}

async fn gitea_deliveries_link_comment_and_report_failed_statuses(db: Db) {
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let created = admin
        .create(&json!({"product": "SHOP", "type": "feature", "title": "Gift cards"}))
        .await;
    let id = created["id"].clone();
    let secret = forge_secret(&admin, "SHOP").await;
    let branch = format!("feature/tracker-{id}");
    // As Gitea's (and Forgejo's) PullRequestPayload is shaped.
    let pull_request = |action: &str| {
        json!({
            "action": action,
            "number": 7,
            "pull_request": {
                "id": 31, "url": "https://gitea.example.com/acme/shop/pulls/7", "number": 7,
                "user": {"id": 1, "login": "ann", "username": "ann"},
                "title": "Gift cards", "body": "", "state": if action == "closed" { "closed" } else { "open" },
                "html_url": "https://gitea.example.com/acme/shop/pulls/7",
                "mergeable": true, "merged": false, "merged_at": null, "merge_commit_sha": null,
                "base": {"label": "main", "ref": "main", "sha": "1111111111111111111111111111111111111111", "repo_id": 2},
                "head": {"label": branch, "ref": branch, "sha": "2222222222222222222222222222222222222222", "repo_id": 2},
                "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z", "closed_at": null
            },
            "repository": {"id": 2, "name": "shop", "full_name": "acme/shop"},
            "sender": {"id": 1, "login": "ann", "username": "ann"}
        })
    };
    let opened = deliver(
        &hub,
        "gitea",
        "pull_request",
        "g-1",
        &secret,
        &pull_request("opened"),
    )
    .await;
    assert_eq!(opened.status, 200, "{}", opened.text);
    let now = item(&admin, &id).await;
    assert_eq!(now["status"], "in_progress");
    assert_eq!(
        now["pull_requests"][0]["url"],
        "https://gitea.example.com/acme/shop/pulls/7"
    );

    // Gitea's commit status has no branch: the linked pull request's commit
    // names the item.
    let status = json!({
        "id": 9, "sha": "2222222222222222222222222222222222222222", "context": "ci/woodpecker/pr/test",
        "description": "Pipeline failed: 3 tests", "state": "failure",
        "target_url": "https://ci.example.com/acme/shop/12",
        "commit": {"id": "2222222222222222222222222222222222222222", "message": "gift cards"},
        "repository": {"id": 2, "full_name": "acme/shop"}, "sender": {"login": "woodpecker"},
        "created_at": "2026-12-01T10:05:00Z", "updated_at": "2026-12-01T10:05:00Z"
    });
    let failed = deliver(&hub, "gitea", "status", "g-2", &secret, &status).await;
    assert_eq!(failed.status, 200, "{}", failed.text);
    let closed = deliver(
        &hub,
        "gitea",
        "pull_request",
        "g-3",
        &secret,
        &pull_request("closed"),
    )
    .await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    let said = comments(&admin, &id).await;
    assert!(
        said.iter().any(
            |c| c.starts_with("gitea: Check **ci/woodpecker/pr/test** failed")
                && c.contains("Pipeline failed: 3 tests")
        ),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|c| c.starts_with("gitea: Closed without merging")),
        "{said:?}"
    );
    let now = item(&admin, &id).await;
    assert_eq!(
        now["status"], "in_progress",
        "closing unmerged finishes nothing"
    );
    assert_eq!(now["pull_requests"][0]["status"], "closed");

    let duplicate = deliver(&hub, "gitea", "status", "g-2", &secret, &status).await;
    assert_eq!(duplicate.json()["duplicate"], true);
    assert_eq!(
        comments(&admin, &id).await.len(),
        said.len(),
        "a duplicate delivery comments nothing"
    );
}

/// What a receiver got: each request's headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A webhook receiver on loopback that answers 500 to its first
/// `failures` requests and 204 after.
async fn receiver(failures: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let mut got = state.lock().unwrap();
                got.push((headers, body));
                if got.len() <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

async fn subscribe(admin: &Client, url: &str, events: &[&str]) -> Answer {
    admin
        .post(
            "/api/admin/products/SHOP/subscriptions",
            &json!({"url": url, "events": events}),
        )
        .await
}

async fn an_outbound_receiver_that_fails_twice_gets_the_event_once_signed(db: Db) {
    let hub = Hub::with_background(db, Limits::default(), fast(true)).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let (url, got) = receiver(2).await;
    let made = subscribe(&admin, &url, &["item.created"]).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let secret = made.json()["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let subscription = made.json()["id"].clone();
    let listed = admin.get("/api/admin/products/SHOP/subscriptions").await;
    assert!(!listed.text.contains(&secret), "the secret is shown once");

    let created = admin
        .create(&json!({"product": "SHOP", "type": "task", "title": "Ship it"}))
        .await;
    let attempts = eventually("the third attempt to succeed", || async {
        let attempts = admin
            .get(&format!("/api/admin/subscriptions/{subscription}/attempts"))
            .await
            .json();
        (attempts.as_array().unwrap().len() >= 3).then_some(attempts)
    })
    .await;
    let statuses: Vec<i64> = attempts
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 204]);

    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "delivered once it succeeded, never again");
    let ids: Vec<&str> = got
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "every attempt is the same message: {ids:?}"
    );
    let (headers, body) = &got[2];
    let timestamp: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(standard_signature_matches(
        &secret,
        ids[0],
        timestamp,
        body.as_bytes(),
        headers["webhook-signature"].to_str().unwrap()
    ));
    assert!(!standard_signature_matches(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ids[0],
        timestamp,
        body.as_bytes(),
        headers["webhook-signature"].to_str().unwrap()
    ));
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["type"], "item.created");
    assert_eq!(event["data"]["item"]["reference"], created["reference"]);
}

async fn a_slack_subscription_gets_the_event_as_a_line_of_text(db: Db) {
    let hub = Hub::with_background(db, Limits::default(), fast(true)).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let (url, got) = receiver(0).await;
    let made = admin
        .post(
            "/api/admin/products/SHOP/subscriptions",
            &json!({"url": url, "events": ["item.created"], "format": "slack"}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);

    let created = admin
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Checkout is slow"}))
        .await;
    let got = eventually("the message to arrive", || async {
        let got = got.lock().unwrap().clone();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    // What a Slack or Mattermost incoming webhook takes: one text field.
    let message: Value = serde_json::from_str(&got[0].1).unwrap();
    let fields: Vec<&String> = message.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["text"], "{message}");
    let text = message["text"].as_str().unwrap();
    let reference = created["reference"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("{reference} Checkout is slow")),
        "{text}"
    );
}

async fn a_subscription_that_keeps_failing_is_disabled_with_a_notice(db: Db) {
    let hub = Hub::with_background(db, Limits::default(), fast(true)).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let (url, got) = receiver(usize::MAX).await;
    let made = subscribe(&admin, &url, &["comment.added", "item.status_changed"]).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let subscription = made.json()["id"].clone();
    let created = admin
        .create(&json!({"product": "SHOP", "type": "task", "title": "Ship it"}))
        .await;
    let comment = admin
        .post(
            &format!("/api/agent/items/{}/comments", created["id"]),
            &json!({"body": "on it"}),
        )
        .await;
    assert_eq!(comment.status, 201);
    let listed = eventually("the subscription to be disabled", || async {
        let listed = admin
            .get("/api/admin/products/SHOP/subscriptions")
            .await
            .json();
        (!listed[0]["disabled_at"].is_null()).then_some(listed)
    })
    .await;
    assert!(
        listed[0]["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("failed 5 attempts"),
        "{listed}"
    );
    let attempts = admin
        .get(&format!("/api/admin/subscriptions/{subscription}/attempts"))
        .await
        .json();
    assert_eq!(
        attempts.as_array().unwrap().len(),
        5,
        "five attempts, every one logged"
    );
    assert_eq!(got.lock().unwrap().len(), 5);
    let audit = admin.get("/api/admin/audit").await.json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "subscription.disable"),
        "{audit}"
    );
    let activity = admin
        .get(&format!("/api/agent/items/{}/activity", created["id"]))
        .await
        .json();
    assert!(
        activity
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["field"] == "webhook" && a["after"] == "disabled"),
        "{activity}"
    );
}

/// Internal targets are refused unless the hub allows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_targets_inside_are_refused_unless_allowed() {
    let hub = Hub::start(Db::Sqlite).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.8/hook",
        "http://[::1]/hook",
        "ftp://example.com/hook",
    ] {
        let refused = subscribe(&admin, url, &["item.created"]).await;
        assert_eq!(refused.status, 422, "{url}: {}", refused.text);
        assert_eq!(refused.code(), "hub.invalid");
    }
    let refused = subscribe(&admin, "http://127.0.0.1:9/hook", &["item.created"]).await;
    assert!(
        refused.message().contains("internal address"),
        "{}",
        refused.text
    );
    assert!(
        refused.hint().contains("--allow-internal-webhooks"),
        "{}",
        refused.text
    );

    let allowing = Hub::with_background(Db::Sqlite, Limits::default(), fast(true)).await;
    let admin = allowing.client(&allowing.key("lead", Permission::Admin, None).await);
    assert_eq!(
        subscribe(&admin, "http://127.0.0.1:9/hook", &["item.created"])
            .await
            .status,
        201
    );
}

async fn analytics_count_cycles_closers_and_fire_sla_breaches(db: Db) {
    let background = Background {
        critical_bug_sla: Duration::from_millis(1),
        watch_every: Duration::from_millis(50),
        ..fast(true)
    };
    let hub = Hub::with_background(db, Limits::default(), background).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let agent = hub.client(&hub.key("agent-7", Permission::Write, None).await);
    let (url, got) = receiver(0).await;
    let made = subscribe(&admin, &url, &["item.sla_breached", "item.closed"]).await;
    assert_eq!(made.status, 201, "{}", made.text);

    let finish = |client: Client, title: &'static str, kind: &'static str| async move {
        let item = client
            .create(&json!({"product": "SHOP", "type": kind, "title": title}))
            .await;
        let path = format!("/api/agent/items/{}/status", item["id"]);
        for status in ["in_progress", "done"] {
            let etag = client
                .get(&format!("/api/agent/items/{}", item["id"]))
                .await
                .etag();
            let moved = client
                .send_if_match("PATCH", &path, &etag, Some(&json!({"status": status})))
                .await;
            assert_eq!(moved.status, 200, "{}", moved.text);
        }
    };
    finish(agent.clone(), "One", "task").await;
    finish(agent.clone(), "Two", "task").await;
    let ci = hub
        .key_with(KeySpec {
            name: "ci".to_owned(),
            role: Role::Ci,
            permission: Permission::Write,
            product: None,
            rate_per_minute: None,
            allow_from: Vec::new(),
        })
        .await;
    finish(hub.client(&ci), "Three", "bug").await;
    let critical = admin
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Checkout is down", "priority": "critical"}))
        .await;

    let report = admin.get("/api/analytics/SHOP?weeks=4").await;
    assert_eq!(report.status, 200, "{}", report.text);
    let report = report.json();
    assert_eq!(
        report["closed_by"],
        json!({"agents": 2, "people": 0, "automation": 1})
    );
    let kinds: Vec<(&str, i64)> = report["cycle_time"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["items"].as_i64().unwrap()))
        .collect();
    assert_eq!(kinds, [("bug", 1), ("task", 2)]);
    let throughput: Vec<i64> = report["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["count"].as_i64().unwrap())
        .collect();
    assert_eq!(throughput, [0, 0, 0, 3]);
    assert_eq!(
        report["open_bugs"][3]["count"], 1,
        "the critical bug is open"
    );
    assert_eq!(admin.get("/api/analytics/SHOP?weeks=0").await.status, 422);
    assert_eq!(admin.get("/api/analytics/NOPE").await.status, 404);

    let breach = eventually("the SLA breach to be announced", || async {
        got.lock()
            .unwrap()
            .iter()
            .map(|(_, body)| serde_json::from_str::<Value>(body).unwrap())
            .find(|e| e["type"] == "item.sla_breached")
    })
    .await;
    assert_eq!(breach["data"]["item"]["reference"], critical["reference"]);
    eventually("every finished item to announce its closing", || async {
        let closed = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b.contains("\"item.closed\""))
            .count();
        (closed == 3).then_some(())
    })
    .await;
    // Announced once: looking again finds nothing new.
    let store = hub.store.clone();
    let again = tokio::task::spawn_blocking(move || {
        store.watch_deadlines(
            Duration::from_millis(1),
            Duration::from_secs(30 * 24 * 3600),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again, 0);
}

async fn a_deploys_shipped_commits_fix_the_items_of_their_pull_requests(db: Db) {
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let shipped = admin
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Totals"}))
        .await;
    let waiting = admin
        .create(&json!({"product": "SHOP", "type": "task", "title": "Later"}))
        .await;
    let secret = forge_secret(&admin, "SHOP").await;
    let opened = deliver(
        &hub,
        "github",
        "pull_request",
        "s-1",
        &secret,
        &github_pull_request("opened", shipped["branch"].as_str().unwrap(), false),
    )
    .await;
    assert_eq!(opened.status, 200, "{}", opened.text);

    let ci = hub.client(&hub.key("deploys", Permission::Write, Some("SHOP")).await);
    let answer = ci
        .post(
            "/api/agent/shipped",
            &json!({"version": "r42", "commits": [
                "1111111111111111111111111111111111111111",
                "6DCB09B5B57875F334F61AEBED695E2E4193DB5E"
            ]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["items"], json!([shipped["reference"]]));
    assert_eq!(item(&admin, &shipped["id"]).await["fixed_version"], "r42");
    assert!(item(&admin, &waiting["id"]).await["fixed_version"].is_null());
    let again = ci
        .post(
            "/api/agent/shipped",
            &json!({"version": "r42", "commits": ["6dcb09b5b57875f334f61aebed695e2e4193db5e"]}),
        )
        .await;
    assert_eq!(again.json()["items"], json!([]), "already fixed in r42");

    let blog = hub.client(&hub.key("blog-ci", Permission::Write, Some("BLOG")).await);
    let other = blog
        .post(
            "/api/agent/shipped",
            &json!({"version": "r43", "commits": ["6dcb09b5b57875f334f61aebed695e2e4193db5e"]}),
        )
        .await;
    assert_eq!(
        other.json()["items"],
        json!([]),
        "a key reaches its own product's items only"
    );
    let bad = ci
        .post(
            "/api/agent/shipped",
            &json!({"version": "r44", "commits": ["not-a-commit"]}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.message().contains("not-a-commit"), "{}", bad.text);
}

async fn forged_deliveries_are_refused_before_the_database_is_written(db: Db) {
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("admin", Permission::Admin, None).await);
    let secret = forge_secret(&admin, "SHOP").await;
    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 1});
    for n in 0..5 {
        let forged = deliver(&hub, "github", "ping", &format!("f-{n}"), "guessed", &ping).await;
        assert_eq!(forged.status, 401, "{}", forged.text);
    }
    let audit = admin.get("/api/admin/audit?limit=100").await.json();
    let refusals = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "webhook.receive" && e["outcome"] == "bad signature")
        .count();
    assert_eq!(
        refusals, 1,
        "a flood of forged deliveries writes one audit row a minute, not one each: {audit}"
    );
    let signed = deliver(&hub, "github", "ping", "ok-1", &secret, &ping).await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    // A new secret is taken at once; the old one is refused at once.
    let new = forge_secret(&admin, "SHOP").await;
    let old = deliver(&hub, "github", "ping", "ok-2", &secret, &ping).await;
    assert_eq!(old.status, 401, "{}", old.text);
    let renewed = deliver(&hub, "github", "ping", "ok-3", &new, &ping).await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    let location = hub.location.clone();
    let stored = tokio::task::spawn_blocking(move || {
        support::raw(&location, "SELECT secret FROM forge_secrets")
    })
    .await
    .unwrap();
    let stored = stored[0][0].clone().unwrap_or_default();
    assert!(
        stored.starts_with("sealed1:") && !stored.contains(&new),
        "the database keeps the forge secret sealed: {stored}"
    );
}

/// How many deliveries were refused with `outcome`, from the audit log
/// (one row a minute, carrying the count of the refusals since): read
/// after the hub stops, when it writes the counts it still holds.
async fn refusals_audited(location: &gantry_hub::Location, outcome: &str) -> i64 {
    let location = location.clone();
    let query = format!(
        "SELECT CAST(count AS TEXT) FROM audit \
         WHERE action = 'webhook.receive' AND outcome = '{outcome}'"
    );
    let rows = tokio::task::spawn_blocking(move || support::raw(&location, &query))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r[0].as_deref().unwrap().parse::<i64>().unwrap())
        .sum()
}

async fn a_delivery_to_a_products_path_is_checked_against_that_products_secret_alone(db: Db) {
    let mut hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let created = admin
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Totals are off by one"}))
        .await;
    let id = created["id"].clone();
    let branch = created["branch"].as_str().unwrap().to_owned();
    let (shop, paths) = forge_secret_and_paths(&admin, "SHOP").await;
    assert_eq!(
        paths,
        ["/api/webhooks/github/SHOP", "/api/webhooks/gitea/SHOP"],
        "the secret's answer gives the product's own paths"
    );
    let (blog, _) = forge_secret_and_paths(&admin, "BLOG").await;
    let opened = github_pull_request("opened", &branch, false);

    // Signed with BLOG's secret, sent to SHOP's path: refused, though the
    // signature is good for another product.
    let crossed = deliver_at(
        &hub,
        &paths[0],
        "github",
        "pull_request",
        "p-1",
        &blog,
        &opened,
    )
    .await;
    assert_eq!(crossed.status, 401, "{}", crossed.text);
    assert_eq!(crossed.code(), "hub.unauthorized");
    assert_eq!(item(&admin, &id).await["status"], "open", "nothing changed");

    // A product that does not exist is refused as a wrong signature is:
    // the answer does not tell which product keys exist.
    let path = "/api/webhooks/github/NOPE";
    let unknown = deliver_at(&hub, path, "github", "pull_request", "p-2", &shop, &opened).await;
    assert_eq!(
        (
            unknown.status,
            unknown.code(),
            unknown.message(),
            unknown.hint()
        ),
        (
            crossed.status,
            crossed.code(),
            crossed.message(),
            crossed.hint()
        ),
        "{}",
        unknown.text
    );

    // Signed with SHOP's secret, to SHOP's path: acted on as before.
    let signed = deliver_at(
        &hub,
        &paths[0],
        "github",
        "pull_request",
        "p-3",
        &shop,
        &opened,
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    let now = item(&admin, &id).await;
    assert_eq!(now["status"], "in_progress");
    assert_eq!(
        now["pull_requests"][0]["url"],
        "https://github.com/acme/shop/pull/42"
    );
    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 1});
    let gitea = deliver_at(&hub, &paths[1], "gitea", "ping", "p-4", &shop, &ping).await;
    assert_eq!(gitea.status, 200, "{}", gitea.text);
    let deliveries = admin
        .get("/api/admin/products/SHOP/deliveries")
        .await
        .json();
    let kept: Vec<&str> = deliveries
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        ["p-4", "p-3"],
        "only the accepted deliveries are kept"
    );

    let doc = hub.anonymous().get("/api/openapi.json").await.json();
    for path in [
        "/api/webhooks/github/{product}",
        "/api/webhooks/gitea/{product}",
    ] {
        assert!(
            doc["paths"][path]["post"].is_object(),
            "{path} is documented"
        );
    }

    // Both refusals are audited alike, as bad signatures.
    hub.stop().await;
    let audited = refusals_audited(&hub.location, "bad signature").await;
    assert_eq!(audited, 2, "both refusals are in the audit log");
}

async fn generic_paths_serve_a_few_products_and_refuse_more_naming_the_product_path(db: Db) {
    // How many products with forge secrets the generic paths serve.
    const GENERIC_MAX: usize = 8;
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let created = admin
        .create(&json!({"product": "BLOG", "type": "bug", "title": "Feed is empty"}))
        .await;
    let id = created["id"].clone();
    let branch = created["branch"].as_str().unwrap().to_owned();
    let (shop, _) = forge_secret_and_paths(&admin, "SHOP").await;
    let (blog, _) = forge_secret_and_paths(&admin, "BLOG").await;
    let opened = github_pull_request("opened", &branch, false);

    // A hook set up before the product paths: its product is found by its
    // secret, and the delivery acted on.
    let generic = deliver(&hub, "github", "pull_request", "g-1", &blog, &opened).await;
    assert_eq!(generic.status, 200, "{}", generic.text);
    assert_eq!(item(&admin, &id).await["status"], "in_progress");

    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 1});
    let mut with_secrets = 2;
    let mut more = (0..).map(|n| format!("P{n}"));
    while with_secrets < GENERIC_MAX {
        let key = more.next().unwrap();
        let store = hub.store.clone();
        let added = key.clone();
        tokio::task::spawn_blocking(move || store.add_product(&added, "Another product"))
            .await
            .unwrap()
            .unwrap();
        forge_secret_and_paths(&admin, &key).await;
        with_secrets += 1;
    }
    let delivery = format!("g-{with_secrets}");
    let at_most = deliver(&hub, "github", "ping", &delivery, &shop, &ping).await;
    assert_eq!(
        at_most.status, 200,
        "{GENERIC_MAX} products still use the generic path: {}",
        at_most.text
    );

    // One more product with a secret: the generic paths are refused before
    // any signature is checked, with the product path in the hint.
    let store = hub.store.clone();
    tokio::task::spawn_blocking(move || store.add_product("LAST", "One too many"))
        .await
        .unwrap()
        .unwrap();
    forge_secret_and_paths(&admin, "LAST").await;
    for forge in ["github", "gitea"] {
        let refused = deliver(&hub, forge, "ping", &format!("{forge}-many"), &shop, &ping).await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (422, "hub.invalid"),
            "{}",
            refused.text
        );
        assert!(
            refused
                .hint()
                .contains(&format!("/api/webhooks/{forge}/{{product}}")),
            "the hint gives the product path: {}",
            refused.text
        );
        assert!(!refused.text.contains(&shop), "{}", refused.text);
    }
    let audit = admin.get("/api/admin/audit?limit=100").await.json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "webhook.receive" && e["outcome"] == "generic path refused"),
        "the refusal is audited: {audit}"
    );

    // The product paths go on working.
    let scoped = "/api/webhooks/github/SHOP";
    let answer = deliver_at(&hub, scoped, "github", "ping", "s-1", &shop, &ping).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
}

async fn one_product_path_serves_each_forge_and_another_forge_is_no_endpoint(db: Db) {
    let hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("lead", Permission::Admin, None).await);
    let (shop, _) = forge_secret_and_paths(&admin, "SHOP").await;
    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 1});

    // A forge the hub does not know is answered as a path it does not
    // serve, however well signed the delivery.
    let path = "/api/webhooks/bitbucket/SHOP";
    let unknown = deliver_at(&hub, path, "github", "ping", "u-1", &shop, &ping).await;
    let path = "/api/webhooks/github/SHOP/more";
    let nowhere = deliver_at(&hub, path, "github", "ping", "u-2", &shop, &ping).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(
        (unknown.status, unknown.code(), unknown.message()),
        (nowhere.status, nowhere.code(), nowhere.message()),
        "an unknown forge is no endpoint"
    );
    let path = "/api/webhooks/GitHub/SHOP";
    let cased = deliver_at(&hub, path, "github", "ping", "u-3", &shop, &ping).await;
    assert_eq!(cased.status, 404, "forges are named in lower case");

    // The document gives the one operation, its forge one of the two
    // names, and the headers of both forges, none required of both.
    let doc = hub.anonymous().get("/api/openapi.json").await.json();
    let operation = &doc["paths"]["/api/webhooks/{forge}/{product}"]["post"];
    let parameters = operation["parameters"].as_array().unwrap();
    let named = |name: &str| parameters.iter().find(|p| p["name"] == name).cloned();
    let forge = named("forge").expect("the forge is a parameter");
    assert_eq!(
        (&forge["in"], &forge["required"]),
        (&json!("path"), &json!(true))
    );
    assert_eq!(
        forge["schema"]["enum"],
        json!(["github", "gitea"]),
        "{forge}"
    );
    for header in [
        "X-GitHub-Event",
        "X-GitHub-Delivery",
        "X-Gitea-Event",
        "X-Gitea-Delivery",
        "X-Hub-Signature-256",
        "X-Gitea-Signature",
    ] {
        let header = named(header).unwrap_or_else(|| panic!("{header} is documented"));
        assert_eq!(header["in"], "header", "{header}");
        assert_ne!(header["required"], true, "{header}");
    }
    assert!(operation["requestBody"]["content"]["application/json"].is_object());
    assert!(operation["responses"]["200"].is_object() && operation["responses"]["4XX"].is_object());

    // Each forge's own path is that operation with its forge filled in,
    // under an operation id of its own: the document's ids stay unique.
    for forge in ["github", "gitea"] {
        let path = format!("/api/webhooks/{forge}/{{product}}");
        let filled = &doc["paths"][&path]["post"];
        let names: Vec<&str> = filled["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"product") && !names.contains(&"forge"),
            "{path}: {names:?}"
        );
        assert_eq!(filled["operationId"], format!("product_delivery_{forge}"));
    }
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|operation| operation["operationId"].as_str())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "operation ids are unique");
}
