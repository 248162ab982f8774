//! The agent API over HTTP, against a real hub on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_hub::KeySpec;
use gantry_hub::model::{Permission, Role};
use serde_json::{Value, json};
use support::{Answer, Client, Db, Hub};

on_both_databases!(
    of_fifty_racing_agents_exactly_one_claims_the_item,
    updates_need_the_current_etag,
    an_idempotent_retry_creates_one_item,
    keys_reach_only_their_scope_and_permission,
    an_agent_works_an_item_from_claim_to_done,
    lists_filter_poll_and_page,
    a_claim_expires_and_another_agent_takes_it,
    requests_out_of_bounds_are_refused_with_the_field_named,
    an_edit_changes_the_named_fields_and_logs_each,
    full_text_search_finds_words_in_titles_and_descriptions,
    the_audit_log_records_changes_and_refused_keys,
    refused_keys_in_a_row_are_audited_once_with_their_count,
    sub_tasks_roll_up_and_planning_fields_are_checked,
    links_show_from_both_sides_and_can_be_removed,
    items_aim_at_a_products_milestones,
    a_key_limited_to_networks_is_refused_elsewhere,
);

async fn of_fifty_racing_agents_exactly_one_claims_the_item(db: Db) {
    let hub = Hub::start(db).await;
    let lead = hub.client(&hub.key("lead", Permission::Write, None).await);
    let item = lead
        .create(&json!({"product": "SHOP", "type": "task", "title": "Migrate the cart"}))
        .await;
    let path = format!("/api/agent/items/{}/claim", item["id"]);
    let mut agents = Vec::new();
    for n in 0..50 {
        agents.push((
            format!("agent-{n}"),
            hub.client(
                &hub.key(&format!("agent-{n}"), Permission::Write, None)
                    .await,
            ),
        ));
    }
    // Every agent read the item at the same version; all claim at once.
    let etag = format!("\"{}\"", item["version"]);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(agents.len()));
    let mut racers = Vec::new();
    for (name, client) in agents {
        let (path, etag, start) = (path.clone(), etag.clone(), start.clone());
        racers.push(tokio::spawn(async move {
            start.wait().await;
            let answer = client.send_if_match("PATCH", &path, &etag, None).await;
            (name, answer)
        }));
    }
    let mut winners = Vec::new();
    let mut refused = Vec::new();
    for racer in racers {
        let (name, answer) = racer.await.unwrap();
        match answer.status {
            200 => winners.push((name, answer)),
            409 => refused.push(answer),
            other => panic!("{name} got {other}: {}", answer.text),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one agent wins the claim");
    assert_eq!(refused.len(), 49);
    let (winner, answer) = &winners[0];
    assert_eq!(answer.json()["claim"]["holder"], winner.as_str());
    for loser in &refused {
        assert_eq!(loser.code(), "hub.claimed");
        assert_eq!(
            loser.json()["error"]["holder"],
            winner.as_str(),
            "the 409 names the holder"
        );
        assert!(loser.message().contains(winner.as_str()));
    }
    let now = lead
        .get(&format!("/api/agent/items/{}", item["id"]))
        .await
        .json();
    assert_eq!(now["claim"]["holder"], winner.as_str());
    assert_eq!(
        now["version"],
        item["version"].as_i64().unwrap() + 1,
        "one change, not fifty"
    );
}

async fn updates_need_the_current_etag(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let item = agent
        .create(&json!({"product": "SHOP", "type": "bug", "title": "Totals are off by one"}))
        .await;
    let status = format!("/api/agent/items/{}/status", item["id"]);
    let body = json!({"status": "in_progress", "reason": "looking into it"});

    let missing = agent.send("PATCH", &status, &[], Some(&body)).await;
    assert_eq!(missing.status, 428, "{}", missing.text);
    assert_eq!(missing.code(), "hub.precondition_required");

    let first = agent.get(&format!("/api/agent/items/{}", item["id"])).await;
    let etag = first.etag();
    let changed = agent
        .send_if_match("PATCH", &status, &etag, Some(&body))
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json()["status"], "in_progress");
    assert_eq!(changed.json()["status_category"], "started");
    assert_ne!(changed.etag(), etag, "a change moves the ETag");

    let stale = agent
        .send_if_match("PATCH", &status, &etag, Some(&json!({"status": "done"})))
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    assert_eq!(stale.code(), "hub.stale");
    let now = agent
        .get(&format!("/api/agent/items/{}", item["id"]))
        .await
        .json();
    assert_eq!(
        now["status"], "in_progress",
        "a stale update changes nothing"
    );

    let log = agent
        .get(&format!("/api/agent/items/{}/activity", item["id"]))
        .await
        .json();
    let change = log
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["field"] == "status")
        .expect("the status change is in the activity log");
    assert_eq!(change["actor"], "agent");
    assert_eq!(change["before"], "open");
    assert_eq!(change["after"], "in_progress");
    assert_eq!(change["note"], "looking into it");
}

async fn an_idempotent_retry_creates_one_item(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let body = json!({"product": "SHOP", "type": "feature", "title": "Gift cards"});
    let key = [("idempotency-key", "8f14e45f-ceea-467f-a0e6-1e9e5d1c1a2b")];
    let first = agent
        .send("POST", "/api/agent/items", &key, Some(&body))
        .await;
    let retry = agent
        .send("POST", "/api/agent/items", &key, Some(&body))
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert_eq!(
        first.json(),
        retry.json(),
        "the retry answers as the first request did"
    );
    assert_eq!(retry.etag(), first.etag());

    let other = json!({"product": "SHOP", "type": "feature", "title": "Something else"});
    let reused = agent
        .send("POST", "/api/agent/items", &key, Some(&other))
        .await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    assert_eq!(reused.code(), "hub.idempotency_mismatch");

    let page = agent.get("/api/agent/items?product=SHOP").await.json();
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        1,
        "one item, not two"
    );
    assert_eq!(page["items"][0]["reference"], "SHOP-1");

    let comments = format!("/api/agent/items/{}/comments", first.json()["id"]);
    let note = json!({"body": "Started on it."});
    let key = [("idempotency-key", "comment-1")];
    let once = agent.send("POST", &comments, &key, Some(&note)).await;
    let twice = agent.send("POST", &comments, &key, Some(&note)).await;
    assert_eq!((once.status, twice.status), (201, 201));
    assert_eq!(once.json()["id"], twice.json()["id"]);
    assert_eq!(
        agent.get(&comments).await.json().as_array().unwrap().len(),
        1
    );
}

async fn keys_reach_only_their_scope_and_permission(db: Db) {
    let hub = Hub::start(db).await;
    let writer = hub.client(&hub.key("writer", Permission::Write, None).await);
    let blog_item = writer
        .create(&json!({"product": "BLOG", "type": "task", "title": "New theme"}))
        .await;
    let shop_item = writer
        .create(&json!({"product": "SHOP", "type": "task", "title": "New cart"}))
        .await;

    let reader = hub.client(&hub.key("reader", Permission::Read, None).await);
    let refused = reader
        .post(
            "/api/agent/items",
            &json!({"product": "SHOP", "type": "task", "title": "x"}),
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.code(), "hub.forbidden");
    assert_eq!(
        reader
            .get(&format!("/api/agent/items/{}", shop_item["id"]))
            .await
            .status,
        200
    );

    let shop_only = hub.client(&hub.key("shop-agent", Permission::Write, Some("SHOP")).await);
    let outside = shop_only
        .get(&format!("/api/agent/items/{}", blog_item["id"]))
        .await;
    assert_eq!(outside.status, 403, "{}", outside.text);
    assert_eq!(outside.code(), "hub.forbidden");
    let listed = shop_only.get("/api/agent/items").await.json();
    let refs: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        refs,
        ["SHOP-1"],
        "a scoped key lists its product's items only"
    );
    let made = shop_only
        .create(&json!({"type": "task", "title": "Scoped"}))
        .await;
    assert_eq!(
        made["product"], "SHOP",
        "a scoped key's items go to its product"
    );
    let elsewhere = shop_only
        .post(
            "/api/agent/items",
            &json!({"product": "BLOG", "type": "task", "title": "x"}),
        )
        .await;
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.text);

    let webhook = hub
        .key_with(KeySpec {
            name: "github".to_owned(),
            role: Role::Webhook,
            permission: Permission::Write,
            product: None,
            rate_per_minute: None,
            allow_from: Vec::new(),
        })
        .await;
    assert_eq!(
        hub.client(&webhook).get("/api/agent/items").await.status,
        403
    );

    assert_eq!(
        hub.anonymous().get("/api/agent/items").await.code(),
        "hub.unauthorized"
    );
    let forged = format!("ghk_{}_{}", "0".repeat(16), "0".repeat(64));
    let unknown = hub.client(&forged).get("/api/agent/items").await;
    assert_eq!(unknown.status, 401);
    assert!(!unknown.text.contains(&forged), "the key is never echoed");

    let secret = hub.key("short-lived", Permission::Write, None).await;
    let client = hub.client(&secret);
    assert_eq!(client.get("/api/agent/items").await.status, 200);
    let store = hub.store.clone();
    tokio::task::spawn_blocking(move || store.revoke_key("short-lived").unwrap())
        .await
        .unwrap();
    let revoked = client.get("/api/agent/items").await;
    assert_eq!(revoked.status, 401, "a revoked key is refused at once");
    assert_eq!(
        revoked.json()["error"]["message"],
        "the API key was revoked"
    );
}

async fn an_agent_works_an_item_from_claim_to_done(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("coder", Permission::Write, None).await);
    let first = agent
        .create(&json!({"product": "SHOP", "type": "task", "title": "Warm-up"}))
        .await;
    assert_eq!(first["reference"], "SHOP-1");
    let item = agent
        .create(&json!({
            "product": "SHOP",
            "type": "bug",
            "title": "Checkout fails with an empty cart",
            "description": "The **checkout** button is live with nothing in the cart.",
            "priority": "high",
            "labels": [{"name": "checkout", "color": "#d73a4a"}, {"name": "ui"}],
            "checklist": ["Button disabled when the cart is empty", "A test covers it"],
            "bug": {"steps_to_reproduce": "Open /cart, click Checkout", "expected": "nothing happens", "actual": "a 500"},
            "links": [{"kind": "relates_to", "target": "SHOP-1"}]
        }))
        .await;
    assert_eq!(item["reference"], "SHOP-2", "numbers count per product");
    assert_eq!(
        item["labels"][0],
        json!({"name": "checkout", "color": "#d73a4a"})
    );
    assert_eq!(item["labels"][1]["color"], "#6b7280");
    assert_eq!(item["bug"]["actual"], "a 500");
    assert_eq!(
        item["links"][0],
        json!({"kind": "relates_to", "target": "SHOP-1"})
    );
    let id = item["id"].as_i64().unwrap();
    assert_eq!(
        item["branch"],
        format!("tracker-{id}-checkout-fails-with-an-empty-cart")
    );
    let blog = agent
        .create(&json!({"product": "BLOG", "type": "task", "title": "x"}))
        .await;
    assert_eq!(blog["reference"], "BLOG-1");

    let base = "/api/agent/items/SHOP-2";
    let etag = |v: &Value| format!("\"{}\"", v["version"]);
    let claimed = agent
        .send_if_match(
            "PATCH",
            &format!("{base}/claim"),
            &etag(&item),
            Some(&json!({"seconds": 600})),
        )
        .await;
    assert_eq!(claimed.status, 200, "{}", claimed.text);
    let item = claimed.json();

    let pr = json!({"url": "https://git.example.com/shop/pull/7", "number": 7, "title": "Disable checkout on empty cart",
        "status": "open", "branch": item["branch"], "commit": "4b825dc"});
    let linked = agent
        .send_if_match("PATCH", &format!("{base}/pr"), &etag(&item), Some(&pr))
        .await;
    assert_eq!(linked.status, 200, "{}", linked.text);
    let item = linked.json();
    assert_eq!(item["pull_requests"][0]["status"], "open");

    let entry = item["checklist"][0]["id"].as_i64().unwrap();
    let ticked = agent
        .send_if_match(
            "POST",
            &format!("{base}/checklist"),
            &etag(&item),
            Some(&json!({"check": [entry], "add": ["Changelog entry"]})),
        )
        .await;
    assert_eq!(ticked.status, 200, "{}", ticked.text);
    let item = ticked.json();
    assert_eq!(item["checklist"][0]["done"], true);
    assert_eq!(item["checklist"][2]["text"], "Changelog entry");

    let other = hub.client(&hub.key("other", Permission::Write, None).await);
    let meddling = other
        .send_if_match(
            "PATCH",
            &format!("{base}/status"),
            &etag(&item),
            Some(&json!({"status": "wont_fix"})),
        )
        .await;
    assert_eq!(
        meddling.status, 409,
        "another agent's claim guards the item: {}",
        meddling.text
    );
    assert_eq!(meddling.code(), "hub.claimed");

    let comment = agent
        .post(
            &format!("{base}/comments"),
            &json!({"body": "Fixed in #7; the test fails without it."}),
        )
        .await;
    assert_eq!(comment.status, 201, "{}", comment.text);

    let context = agent.get(&format!("{base}/context")).await;
    assert_eq!(context.status, 200);
    assert!(
        context
            .header("content-type")
            .unwrap()
            .starts_with("text/markdown")
    );
    let text = &context.text;
    for expected in [
        "# SHOP-2: Checkout fails with an empty cart",
        "The **checkout** button is live with nothing in the cart.",
        "## Steps to reproduce\n\nOpen /cart, click Checkout",
        "- [x] Button disabled when the cart is empty",
        "- [ ] A test covers it",
        "https://git.example.com/shop/pull/7",
        "relates to SHOP-1",
        "Fixed in #7; the test fails without it.",
    ] {
        assert!(
            text.contains(expected),
            "context lacks {expected:?}:\n{text}"
        );
    }

    let item = agent.get(base).await.json();
    let done = agent
        .send_if_match(
            "PATCH",
            &format!("{base}/status"),
            &etag(&item),
            Some(&json!({"status": "done", "reason": "merged", "evidence": ["CI run 88 green"]})),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
    let item = done.json();
    assert_eq!(item["status_category"], "completed");
    assert_eq!(
        item["claim"],
        Value::Null,
        "finishing an item ends its claim"
    );
    let again = agent
        .send_if_match("PATCH", &format!("{base}/claim"), &etag(&item), None)
        .await;
    assert_eq!(again.code(), "hub.item_finished");

    let log = agent.get(&format!("{base}/activity")).await.json();
    let fields: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "created",
            "claim",
            "pull_request",
            "checklist",
            "checklist",
            "status"
        ]
    );
    assert_eq!(log[5]["note"], "merged\n- evidence: CI run 88 green");
}

async fn lists_filter_poll_and_page(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    for n in 0..7 {
        let labels = if n % 2 == 0 {
            json!([{"name": "even"}])
        } else {
            json!([])
        };
        let assignee = (n == 3).then_some("ann");
        let title = format!("Task {n}");
        agent
            .create(&json!({"product": "SHOP", "type": "task", "title": title, "labels": labels, "assignee": assignee}))
            .await;
    }
    let even = agent.get("/api/agent/items?label=even").await.json();
    assert_eq!(even["items"].as_array().unwrap().len(), 4);
    let ann = agent.get("/api/agent/items?assignee=ann").await.json();
    assert_eq!(ann["items"][0]["title"], "Task 3");

    // Pages of 3 walk all seven items once, in order.
    let mut seen = Vec::new();
    let mut path = "/api/agent/items?limit=3".to_owned();
    loop {
        let page = agent.get(&path).await.json();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["title"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/agent/items?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|n| format!("Task {n}")).collect();
    assert_eq!(seen, expected);

    // Polling: what changed since the last item seen.
    let page = agent.get("/api/agent/items").await.json();
    let last = page["items"][6]["updated_at"].as_str().unwrap().to_owned();
    let item = &page["items"][1];
    let moved = agent
        .send_if_match(
            "PATCH",
            &format!("/api/agent/items/{}/status", item["id"]),
            &format!("\"{}\"", item["version"]),
            Some(&json!({"status": "in_progress"})),
        )
        .await;
    assert_eq!(moved.status, 200);
    let since = agent
        .get(&format!("/api/agent/items?since={last}&status=in_progress"))
        .await
        .json();
    let titles: Vec<&str> = since["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Task 1"]);

    let bad = agent.get("/api/agent/items?status=sleeping").await;
    assert_eq!(bad.status, 422);
    assert!(bad.hint().contains("in_progress"));
    assert_eq!(
        agent.get("/api/agent/items?limit=1000").await.code(),
        "hub.invalid"
    );
}

async fn a_claim_expires_and_another_agent_takes_it(db: Db) {
    let hub = Hub::start(db).await;
    let first = hub.client(&hub.key("first", Permission::Write, None).await);
    let second = hub.client(&hub.key("second", Permission::Write, None).await);
    let item = first
        .create(&json!({"product": "SHOP", "type": "task", "title": "Short"}))
        .await;
    let path = format!("/api/agent/items/{}", item["id"]);
    let claimed = first
        .send_if_match(
            "PATCH",
            &format!("{path}/claim"),
            &format!("\"{}\"", item["version"]),
            Some(&json!({"seconds": 1})),
        )
        .await;
    assert_eq!(claimed.status, 200, "{}", claimed.text);
    let held = second
        .send_if_match("PATCH", &format!("{path}/claim"), &claimed.etag(), None)
        .await;
    assert_eq!(held.code(), "hub.claimed");
    // Poll until the claim has run out; it must within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = second.get(&path).await;
        if now.json()["claim"].is_null() {
            let taken = second
                .send_if_match("PATCH", &format!("{path}/claim"), &now.etag(), None)
                .await;
            assert_eq!(taken.status, 200, "{}", taken.text);
            assert_eq!(taken.json()["claim"]["holder"], "second");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the claim never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn requests_out_of_bounds_are_refused_with_the_field_named(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("agent", Permission::Write, None).await);
    let long = agent
        .post(
            "/api/agent/items",
            &json!({"product": "SHOP", "type": "task", "title": "x".repeat(201)}),
        )
        .await;
    assert_eq!(long.status, 422);
    assert!(long.message().contains("`title`"), "{}", long.text);
    let typo = agent
        .post(
            "/api/agent/items",
            &json!({"product": "SHOP", "type": "task", "title": "x", "priorty": "high"}),
        )
        .await;
    assert_eq!(typo.code(), "hub.invalid");
    assert!(typo.text.contains("priorty"), "{}", typo.text);
    let huge = agent
        .send_raw("POST", "/api/agent/items", &[], vec![b' '; 300 * 1024])
        .await;
    assert_eq!(huge.status, 413);
    assert_eq!(huge.code(), "hub.too_large");
    let color = agent
        .post("/api/agent/items", &json!({"product": "SHOP", "type": "task", "title": "x", "labels": [{"name": "a", "color": "red"}]}))
        .await;
    assert!(color.message().contains("#rrggbb"));
    let nowhere = agent.get("/api/agent/items/SHOP-999").await;
    assert_eq!(
        (nowhere.status, nowhere.code().as_str()),
        (404, "hub.not_found")
    );
    assert_eq!(agent.get("/api/nothing").await.code(), "hub.not_found");
}

async fn an_edit_changes_the_named_fields_and_logs_each(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("editor", Permission::Write, None).await);
    let item = agent
        .create(
            &json!({"product": "SHOP", "type": "bug", "title": "Slow search", "assignee": "ann",
            "labels": [{"name": "perf", "color": "#00ff00"}]}),
        )
        .await;
    let path = format!("/api/agent/items/{}", item["id"]);
    let edit = json!({"title": "Search takes 3 s", "priority": "critical", "assignee": null,
        "labels": [{"name": "perf"}, {"name": "search"}], "bug": {"actual": "3 s per query"}});
    let missing = agent.send("PATCH", &path, &[], Some(&edit)).await;
    assert_eq!(missing.status, 428);
    let edited = agent
        .send_if_match(
            "PATCH",
            &path,
            &format!("\"{}\"", item["version"]),
            Some(&edit),
        )
        .await;
    assert_eq!(edited.status, 200, "{}", edited.text);
    let now = edited.json();
    assert_eq!(now["title"], "Search takes 3 s");
    assert_eq!(now["priority"], "critical");
    assert_eq!(now["assignee"], Value::Null, "null clears the assignee");
    assert_eq!(now["description"], "", "fields left out stay as they were");
    assert_eq!(
        now["labels"],
        json!([{"name": "perf", "color": "#00ff00"}, {"name": "search", "color": "#6b7280"}])
    );
    assert_eq!(now["bug"]["actual"], "3 s per query");

    let log = agent.get(&format!("{path}/activity")).await.json();
    let changes: Vec<(String, Value, Value)> = log
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|a| {
            (
                a["field"].as_str().unwrap().to_owned(),
                a["before"].clone(),
                a["after"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "title".to_owned(),
                json!("Slow search"),
                json!("Search takes 3 s")
            ),
            ("priority".to_owned(), json!("medium"), json!("critical")),
            ("assignee".to_owned(), json!("ann"), Value::Null),
            ("bug.actual".to_owned(), Value::Null, json!("3 s per query")),
            ("labels".to_owned(), json!("perf"), json!("perf, search")),
        ]
    );
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|a| a["actor"] == "editor")
    );
}

async fn full_text_search_finds_words_in_titles_and_descriptions(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("searcher", Permission::Write, None).await);
    for (title, description) in [
        ("Migrate the cart to PostgreSQL", "Move the carts table."),
        (
            "Cart totals are wrong",
            "Rounding of totals differs from the invoice.",
        ),
        (
            "New logo",
            "The designer sent migrations of the brand colours.",
        ),
    ] {
        agent
            .create(&json!({"product": "SHOP", "type": "task", "title": title, "description": description}))
            .await;
    }
    let titles = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let found = agent.get("/api/agent/items?q=migrating").await.json();
    assert_eq!(
        titles(found),
        ["Migrate the cart to PostgreSQL", "New logo"],
        "stemmed, in title and description"
    );
    let found = agent.get("/api/agent/items?q=cart%20totals").await.json();
    assert_eq!(
        titles(found),
        ["Cart totals are wrong"],
        "every word must match"
    );
    let found = agent
        .get("/api/agent/items?q=invoice&status=open")
        .await
        .json();
    assert_eq!(titles(found), ["Cart totals are wrong"]);

    // A title changed later is found by its new words only.
    let item = agent.get("/api/agent/items/SHOP-3").await;
    let renamed = agent
        .send_if_match(
            "PATCH",
            "/api/agent/items/SHOP-3",
            &item.etag(),
            Some(&json!({"title": "New wordmark"})),
        )
        .await;
    assert_eq!(renamed.status, 200);
    assert_eq!(
        titles(agent.get("/api/agent/items?q=wordmark").await.json()),
        ["New wordmark"]
    );
    assert!(titles(agent.get("/api/agent/items?q=logo").await.json()).is_empty());

    let odd = agent.get("/api/agent/items?q=cart%22%20OR%20(1").await;
    assert_eq!(
        odd.status, 200,
        "search syntax in the words is only words: {}",
        odd.text
    );
    assert_eq!(
        agent.get("/api/agent/items?q=%22%22").await.code(),
        "hub.invalid"
    );
}

async fn the_audit_log_records_changes_and_refused_keys(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("coder", Permission::Write, None).await);
    let item = agent
        .create(&json!({"product": "SHOP", "type": "task", "title": "Audit me"}))
        .await;
    agent
        .send_if_match(
            "PATCH",
            "/api/agent/items/SHOP-1/claim",
            &format!("\"{}\"", item["version"]),
            None,
        )
        .await;
    let forged = format!("ghk_{}_{}", "ab".repeat(8), "cd".repeat(32));
    assert_eq!(
        hub.client(&forged).get("/api/agent/items").await.status,
        401
    );

    assert_eq!(
        agent.get("/api/admin/audit").await.code(),
        "hub.forbidden",
        "a write key cannot read it"
    );
    let scoped = hub.client(&hub.key("shop-admin", Permission::Admin, Some("SHOP")).await);
    assert_eq!(scoped.get("/api/admin/audit").await.status, 403);
    let admin = hub.client(&hub.key("admin", Permission::Admin, None).await);
    let log = admin.get("/api/admin/audit").await;
    assert_eq!(log.status, 200, "{}", log.text);
    let rows: Vec<(String, String, String, String)> = log
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (
                text("actor"),
                text("action"),
                text("target"),
                text("outcome"),
            )
        })
        .collect();
    let row = |actor: &str, action: &str, target: &str, outcome: &str| {
        (
            actor.to_owned(),
            action.to_owned(),
            target.to_owned(),
            outcome.to_owned(),
        )
    };
    assert!(
        rows.contains(&row("coder", "item.create", "SHOP-1", "ok")),
        "{rows:?}"
    );
    assert!(
        rows.contains(&row("coder", "item.claim", "SHOP-1", "ok")),
        "{rows:?}"
    );
    assert!(
        rows.contains(&row(
            "anonymous",
            "auth.key",
            "ghk_abababababababab",
            "unknown"
        )),
        "{rows:?}"
    );
    assert!(
        rows.contains(&row("cli", "key.create", "coder", "ok")),
        "{rows:?}"
    );
    assert!(
        !log.text.contains(&"cd".repeat(32)),
        "no secret in the audit log"
    );
    let entries = log.json();
    let created = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "item.create")
        .unwrap();
    assert_eq!(
        created["client"], "127.0.0.1",
        "the client's address is kept"
    );
}

async fn refused_keys_in_a_row_are_audited_once_with_their_count(db: Db) {
    let mut hub = Hub::start(db).await;
    let admin = hub.client(&hub.key("admin", Permission::Admin, None).await);
    for n in 0..30 {
        let forged = format!("ghk_{n:016x}_{}", "cd".repeat(32));
        let refused = hub.client(&forged).get("/api/agent/items").await;
        assert_eq!(refused.status, 401, "{}", refused.text);
    }
    // (target, client, count) of the refusals, newest first.
    let refusals = |log: &[Value]| -> Vec<(Value, Value, Value)> {
        log.iter()
            .filter(|e| e["action"] == "auth.key" && e["outcome"] == "unknown")
            .map(|e| (e["target"].clone(), e["client"].clone(), e["count"].clone()))
            .collect()
    };
    let log = admin.get("/api/admin/audit?limit=100").await.json();
    assert_eq!(
        refusals(log.as_array().unwrap()),
        [(json!("ghk_0000000000000000"), json!("127.0.0.1"), json!(1))],
        "the first is written at once, the others only counted: {log}"
    );

    hub.stop().await;
    let store = hub.store.clone();
    let log = tokio::task::spawn_blocking(move || store.audit_log(None, 100).unwrap())
        .await
        .unwrap();
    let log = serde_json::to_value(log).unwrap();
    assert_eq!(
        refusals(log.as_array().unwrap()),
        [
            (Value::Null, json!("127.0.0.1"), json!(29)),
            (json!("ghk_0000000000000000"), json!("127.0.0.1"), json!(1)),
        ],
        "the count is written when the hub stops, if not in the minute after: {log}"
    );
}

async fn sub_tasks_roll_up_and_planning_fields_are_checked(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("planner", Permission::Write, None).await);
    let epic = agent
        .create(&json!({"product": "SHOP", "type": "feature", "title": "Gift cards", "estimate": 8,
            "due_date": "2027-03-31", "environment": "prod", "affected_version": "1.4", "fixed_version": "1.5"}))
        .await;
    assert_eq!(
        (epic["estimate"].as_i64(), epic["due_date"].as_str()),
        (Some(8), Some("2027-03-31"))
    );
    assert_eq!(epic["fixed_version"], "1.5");
    let mut children = Vec::new();
    for title in ["Card model", "Redeem at checkout", "Balance page"] {
        let child = agent
            .create(&json!({"product": "SHOP", "type": "task", "title": title, "parent": "SHOP-1"}))
            .await;
        assert_eq!(child["parent"], "SHOP-1");
        children.push(child);
    }
    let done = agent
        .send_if_match(
            "PATCH",
            &format!("/api/agent/items/{}/status", children[0]["id"]),
            &format!("\"{}\"", children[0]["version"]),
            Some(&json!({"status": "done"})),
        )
        .await;
    assert_eq!(done.status, 200);
    let epic = agent.get("/api/agent/items/SHOP-1").await.json();
    assert_eq!(epic["subtasks"], json!({"total": 3, "finished": 1}));
    let context = agent.get("/api/agent/items/SHOP-1/context").await.text;
    assert!(
        context.contains("- Sub-tasks: 1 of 3 finished"),
        "{context}"
    );
    assert!(context.contains("- Due: 2027-03-31"), "{context}");

    let nested = agent
        .post(
            "/api/agent/items",
            &json!({"product": "SHOP", "type": "task", "title": "x", "parent": "SHOP-2"}),
        )
        .await;
    assert_eq!(nested.status, 422, "sub-tasks do not nest: {}", nested.text);
    let other = agent
        .post(
            "/api/agent/items",
            &json!({"product": "BLOG", "type": "task", "title": "x", "parent": "SHOP-1"}),
        )
        .await;
    assert!(other.message().contains("another product"));
    let bad_date = agent
        .post(
            "/api/agent/items",
            &json!({"product": "SHOP", "type": "task", "title": "x", "due_date": "2027-02-30"}),
        )
        .await;
    assert_eq!(bad_date.code(), "hub.invalid");
    assert!(bad_date.hint().contains("YYYY-MM-DD"));

    let child = agent.get("/api/agent/items/SHOP-3").await;
    let freed = agent
        .send_if_match(
            "PATCH",
            "/api/agent/items/SHOP-3",
            &child.etag(),
            Some(&json!({"parent": null, "estimate": 2})),
        )
        .await;
    assert_eq!(freed.status, 200, "{}", freed.text);
    assert_eq!(freed.json()["parent"], Value::Null);
    assert_eq!(
        agent.get("/api/agent/items/SHOP-1").await.json()["subtasks"]["total"],
        2
    );
    let log = agent.get("/api/agent/items/SHOP-3/activity").await.json();
    let fields: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["created", "estimate", "parent"]);
}

/// Changes the links of item `reference` (`SHOP-1`) at its current version.
async fn change_links(agent: &Client, reference: &str, change: &Value) -> Answer {
    let path = format!("/api/agent/items/{reference}");
    let etag = agent.get(&path).await.etag();
    agent
        .send_if_match("POST", &format!("{path}/links"), &etag, Some(change))
        .await
}

async fn links_show_from_both_sides_and_can_be_removed(db: Db) {
    let hub = Hub::start(db).await;
    let agent = hub.client(&hub.key("linker", Permission::Write, None).await);
    for title in ["Schema", "API", "Old API ticket"] {
        agent
            .create(&json!({"product": "SHOP", "type": "task", "title": title}))
            .await;
    }
    let change = json!({"add": [{"kind": "blocked_by", "target": "SHOP-1"}]});
    let missing = agent
        .send("POST", "/api/agent/items/SHOP-2/links", &[], Some(&change))
        .await;
    assert_eq!(missing.status, 428);
    let linked = change_links(&agent, "SHOP-2", &change).await;
    assert_eq!(linked.status, 200, "{}", linked.text);
    assert_eq!(
        linked.json()["links"],
        json!([{"kind": "blocked_by", "target": "SHOP-1"}])
    );
    let schema = agent.get("/api/agent/items/SHOP-1").await.json();
    assert_eq!(
        schema["links"],
        json!([{"kind": "blocks", "target": "SHOP-2"}]),
        "seen from the other side"
    );

    let dup = json!({"add": [{"kind": "duplicate_of", "target": "SHOP-2"}]});
    let marked = change_links(&agent, "SHOP-3", &dup).await;
    assert_eq!(marked.status, 200, "{}", marked.text);
    let api = agent.get("/api/agent/items/SHOP-2").await;
    assert_eq!(
        api.json()["links"],
        json!([{"kind": "blocked_by", "target": "SHOP-1"}, {"kind": "duplicated_by", "target": "SHOP-3"}])
    );

    // Removed from the side that did not make it.
    let unlink = json!({"remove": [{"kind": "blocks", "target": "SHOP-2"}]});
    let removed = change_links(&agent, "SHOP-1", &unlink).await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    assert_eq!(removed.json()["links"], json!([]));
    let api = agent.get("/api/agent/items/SHOP-2").await.json();
    assert_eq!(
        api["links"],
        json!([{"kind": "duplicated_by", "target": "SHOP-3"}])
    );

    let itself = json!({"add": [{"kind": "relates_to", "target": "SHOP-1"}]});
    let selfish = change_links(&agent, "SHOP-1", &itself).await;
    assert_eq!(selfish.code(), "hub.invalid");
    let log = agent.get("/api/agent/items/SHOP-1/activity").await.json();
    assert_eq!(log[1]["field"], "link");
    assert_eq!(log[1]["before"], "blocks SHOP-2");
}

async fn items_aim_at_a_products_milestones(db: Db) {
    let hub = Hub::start(db).await;
    let store = hub.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .add_milestone("SHOP", "1.5", Some("2027-03-31"))
            .unwrap();
        store.add_milestone("SHOP", "2.0", None).unwrap();
    })
    .await
    .unwrap();
    let agent = hub.client(&hub.key("planner", Permission::Write, None).await);
    let item = agent
        .create(
            &json!({"product": "SHOP", "type": "feature", "title": "Wishlist", "milestone": "1.5"}),
        )
        .await;
    assert_eq!(
        item["milestone"],
        json!({"name": "1.5", "target_date": "2027-03-31"})
    );
    let unknown = agent
        .post(
            "/api/agent/items",
            &json!({"product": "BLOG", "type": "task", "title": "x", "milestone": "1.5"}),
        )
        .await;
    assert_eq!(
        unknown.status, 422,
        "milestones are per product: {}",
        unknown.text
    );
    assert!(unknown.hint().contains("gantry hub milestone add"));

    let moved = agent
        .send_if_match(
            "PATCH",
            "/api/agent/items/SHOP-1",
            &format!("\"{}\"", item["version"]),
            Some(&json!({"milestone": "2.0"})),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(moved.json()["milestone"]["name"], "2.0");
    let log = agent.get("/api/agent/items/SHOP-1/activity").await.json();
    assert_eq!(
        (log[1]["before"].as_str(), log[1]["after"].as_str()),
        (Some("1.5"), Some("2.0"))
    );
    let context = agent.get("/api/agent/items/SHOP-1/context").await.text;
    assert!(context.contains("- Milestone: 2.0"), "{context}");
}

async fn a_key_limited_to_networks_is_refused_elsewhere(db: Db) {
    let hub = Hub::start(db).await;
    let spec = |name: &str, allow: &[&str]| KeySpec {
        name: name.to_owned(),
        role: Role::Ci,
        permission: Permission::Read,
        product: None,
        rate_per_minute: None,
        allow_from: allow.iter().map(|a| a.to_string()).collect(),
    };
    let office = hub
        .key_with(spec("office", &["10.0.0.0/8", "2001:db8::/32"]))
        .await;
    let refused = hub.client(&office).get("/api/agent/items").await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.message().contains("127.0.0.1"), "{}", refused.text);
    let local = hub.key_with(spec("local", &["127.0.0.1"])).await;
    assert_eq!(hub.client(&local).get("/api/agent/items").await.status, 200);

    let store = hub.store.clone();
    let listed = tokio::task::spawn_blocking(move || store.keys().unwrap())
        .await
        .unwrap();
    assert_eq!(listed[0].allow_from, ["10.0.0.0/8", "2001:db8::/32"]);
    assert_eq!(listed[1].allow_from, ["127.0.0.1/32"]);
    assert_eq!(
        listed[0].request_count, 0,
        "a refused request is not counted as a use"
    );

    let store = hub.store.clone();
    let bad =
        tokio::task::spawn_blocking(move || store.create_key(&spec("bad", &["10.0.0.0/33"])).err())
            .await
            .unwrap()
            .expect("an impossible network is refused");
    assert_eq!(bad.code().as_str(), "hub.invalid");
}
