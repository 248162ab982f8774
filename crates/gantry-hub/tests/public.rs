//! The public endpoints over HTTP, without a login, against a real hub on
//! SQLite and on PostgreSQL: the roadmap and changelog, votes and their
//! rules, ideas through the spam guard, a submission's status by token,
//! and the stricter rate limit.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_hub::Limits;
use gantry_hub::model::Permission;
use serde_json::{Value, json};
use support::{Client, Db, Hub};

on_both_databases!(
    the_roadmap_shows_public_items_by_votes_and_the_changelog_finished_ones,
    votes_count_once_per_email_up_to_a_cap_and_freeze_when_finished,
    an_idea_is_filed_sanitised_and_its_status_shown_by_token,
    the_spam_guard_refuses_what_a_person_would_not_send,
    a_flooded_public_endpoint_answers_429_with_retry_after,
);

/// A hub whose public limit does not get in the way of a test's own steps.
async fn hub(db: Db, form_min_seconds: u64) -> Hub {
    Hub::with_limits(
        db,
        Limits {
            public_per_address_per_minute: 1000,
            form_min_seconds,
            ..Limits::default()
        },
    )
    .await
}

async fn item(lead: &Client, title: &str, visibility: &str) -> String {
    let made = lead
        .create(&json!({"product": "SHOP", "type": "feature", "title": title, "visibility": visibility}))
        .await;
    made["reference"].as_str().unwrap().to_owned()
}

async fn finish(lead: &Client, reference: &str, status: &str) {
    let path = format!("/api/agent/items/{reference}");
    let etag = lead.get(&path).await.etag();
    let changed = lead
        .send_if_match(
            "PATCH",
            &format!("{path}/status"),
            &etag,
            Some(&json!({"status": status})),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
}

async fn vote(hub: &Hub, reference: &str, email: &str) -> support::Answer {
    hub.anonymous()
        .post(
            &format!("/api/public/SHOP/items/{reference}/votes"),
            &json!({"email": email}),
        )
        .await
}

fn references(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_owned())
        .collect()
}

async fn the_roadmap_shows_public_items_by_votes_and_the_changelog_finished_ones(db: Db) {
    let hub = hub(db, 0).await;
    let lead = hub.client(&hub.key("lead", Permission::Write, None).await);
    let dark_mode = item(&lead, "Dark mode", "public").await;
    let export = item(&lead, "Export to CSV", "public").await;
    let secret = item(&lead, "Internal refactor", "internal").await;
    let shipped = item(&lead, "Faster search", "public").await;
    let dropped = item(&lead, "Fax support", "public").await;
    for email in ["a@example.com", "b@example.com"] {
        assert_eq!(vote(&hub, &export, email).await.status, 201);
    }
    assert_eq!(vote(&hub, &dark_mode, "a@example.com").await.status, 201);
    assert_eq!(vote(&hub, &shipped, "c@example.com").await.status, 201);
    finish(&lead, &shipped, "done").await;
    finish(&lead, &dropped, "wont_fix").await;

    let visitor = hub.anonymous();
    let roadmap = visitor.get("/api/public/SHOP/roadmap").await;
    assert_eq!(roadmap.status, 200, "{}", roadmap.text);
    let roadmap = roadmap.json();
    assert_eq!(
        references(&roadmap),
        [export.clone(), dark_mode.clone()],
        "most voted first"
    );
    assert_eq!(roadmap[0]["votes"], 2);
    assert_eq!(roadmap[0]["title"], "Export to CSV");
    assert!(
        !roadmap.to_string().contains(&secret) && !roadmap.to_string().contains("a@example.com")
    );

    let changelog = visitor.get("/api/public/SHOP/changelog").await.json();
    assert_eq!(references(&changelog), [shipped], "done, not won't fix");
    assert_eq!(changelog[0]["status"], "done");
    assert_eq!(changelog[0]["votes"], 1);
    assert_eq!(visitor.get("/api/public/NOPE/roadmap").await.status, 404);
}

async fn votes_count_once_per_email_up_to_a_cap_and_freeze_when_finished(db: Db) {
    let hub = hub(db, 0).await;
    let lead = hub.client(&hub.key("lead", Permission::Write, None).await);
    let mut items = Vec::new();
    for n in 0..11 {
        items.push(item(&lead, &format!("Idea {n}"), "public").await);
    }
    let first = vote(&hub, &items[0], "Ann@Example.com").await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(
        (
            first.json()["votes"].as_i64(),
            first.json()["votes_left"].as_i64()
        ),
        (Some(1), Some(9))
    );
    let twice = vote(&hub, &items[0], " ann@example.com ").await;
    assert_eq!(
        (twice.status, twice.code().as_str()),
        (409, "hub.exists"),
        "one vote per email: {}",
        twice.text
    );
    for reference in &items[1..10] {
        assert_eq!(vote(&hub, reference, "ann@example.com").await.status, 201);
    }
    let capped = vote(&hub, &items[10], "ann@example.com").await;
    assert_eq!(
        (capped.status, capped.code().as_str()),
        (403, "hub.forbidden"),
        "{}",
        capped.text
    );
    assert_eq!(
        vote(&hub, &items[10], "bob@example.com").await.status,
        201,
        "the cap is per email"
    );

    finish(&lead, &items[10], "closed").await;
    let frozen = vote(&hub, &items[10], "cat@example.com").await;
    assert_eq!(
        (frozen.status, frozen.code().as_str()),
        (409, "hub.item_finished"),
        "{}",
        frozen.text
    );
    let internal = item(&lead, "Not for the public", "internal").await;
    assert_eq!(vote(&hub, &internal, "cat@example.com").await.status, 404);
    let bad = vote(&hub, &items[1], "not an email").await;
    assert_eq!((bad.status, bad.code().as_str()), (422, "hub.invalid"));

    let roadmap = hub.anonymous().get("/api/public/SHOP/roadmap").await.json();
    let total: i64 = roadmap
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["votes"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total, 10,
        "ann's ten votes on the open items; bob's is on a closed one"
    );
}

async fn form_token(hub: &Hub) -> String {
    let form = hub.anonymous().get("/api/public/SHOP/form").await;
    assert_eq!(form.status, 200, "{}", form.text);
    form.json()["form_token"].as_str().unwrap().to_owned()
}

fn idea(token: &str) -> Value {
    json!({
        "name": "Zoe",
        "email": "zoe@example.com",
        "type": "feature",
        "description": "Let me pay with <script>alert('x')</script>bank transfer\nplease.",
        "form_token": token,
    })
}

async fn an_idea_is_filed_sanitised_and_its_status_shown_by_token(db: Db) {
    let hub = hub(db, 0).await;
    let token = form_token(&hub).await;
    let visitor = hub.anonymous();
    let sent = visitor.post("/api/public/SHOP/ideas", &idea(&token)).await;
    assert_eq!(sent.status, 201, "{}", sent.text);
    let submitted = sent.json();
    let reference = submitted["reference"].as_str().unwrap();
    let status_token = submitted["token"].as_str().unwrap();
    assert_eq!(status_token.len(), 64);

    let lead = hub.client(&hub.key("lead", Permission::Write, None).await);
    let filed = lead
        .get(&format!("/api/agent/items/{reference}"))
        .await
        .json();
    assert_eq!(filed["source"], "user_submitted");
    assert_eq!(filed["visibility"], "internal", "the team triages it first");
    assert_eq!(filed["title"], "Let me pay with alert('x')bank transfer");
    assert!(
        !filed["description"].as_str().unwrap().contains('<'),
        "{}",
        filed["description"]
    );
    assert!(
        !filed.to_string().contains("zoe@example.com"),
        "the email stays out of the item"
    );
    let roadmap = visitor.get("/api/public/SHOP/roadmap").await.json();
    assert_eq!(
        references(&roadmap),
        Vec::<String>::new(),
        "not public until the team says"
    );

    let status = visitor
        .get(&format!("/api/public/submissions/{status_token}"))
        .await;
    assert_eq!(status.status, 200, "{}", status.text);
    assert_eq!(
        (
            status.json()["reference"].as_str(),
            status.json()["status"].as_str()
        ),
        (Some(reference), Some("open"))
    );
    finish(&lead, reference, "in_progress").await;
    let moved = visitor
        .get(&format!("/api/public/submissions/{status_token}"))
        .await
        .json();
    assert_eq!(moved["status"], "in_progress");
    let guessed = visitor
        .get(&format!("/api/public/submissions/{}", "0".repeat(64)))
        .await;
    assert_eq!(guessed.status, 404);
    assert_eq!(visitor.get("/api/public/submissions/1").await.status, 404);
}

async fn the_spam_guard_refuses_what_a_person_would_not_send(db: Db) {
    let hub = hub(db, 1).await;
    let visitor = hub.anonymous();
    let send = |body: Value| {
        let visitor = visitor.clone();
        async move { visitor.post("/api/public/SHOP/ideas", &body).await }
    };
    let token = form_token(&hub).await;
    let too_fast = send(idea(&token)).await;
    assert_eq!(too_fast.status, 422, "{}", too_fast.text);
    assert!(
        too_fast.message().contains("too fast"),
        "{}",
        too_fast.message()
    );

    let mut honeypot = idea(&token);
    honeypot["website"] = json!("http://spam.example");
    let mut forged = idea(&token);
    let (issued, _) = token.split_once('.').unwrap();
    forged["form_token"] = json!(format!("{issued}.{}", "00".repeat(32)));
    let mut other_product = idea(&token);
    other_product["name"] = json!("Zoe");
    let mut links = idea(&token);
    links["description"] =
        json!("Buy http://a.example http://b.example www.c.example https://d.example");
    let mut long = idea(&token);
    long["description"] = json!("x".repeat(5001));
    let mut short = idea(&token);
    short["description"] = json!("hi");
    let mut task = idea(&token);
    task["type"] = json!("task");
    // Wait out the form's minimum age: the guard compares the hub's clock.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for (what, body) in [
        ("a filled honeypot", honeypot),
        ("a forged token", forged),
        ("too many links", links),
        ("an oversize description", long),
        ("a description too short", short),
        ("a task", task),
    ] {
        let refused = send(body).await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (422, "hub.invalid"),
            "{what}: {}",
            refused.text
        );
    }
    let blog = hub.anonymous().get("/api/public/BLOG/form").await.json();
    let elsewhere = send(idea(blog["form_token"].as_str().unwrap())).await;
    assert_eq!(
        elsewhere.status, 422,
        "a token is for its own product's form"
    );
    let person = send(idea(&token)).await;
    assert_eq!(
        person.status, 201,
        "the same form, sent as a person would: {}",
        person.text
    );
    let lead = hub.client(&hub.key("lead", Permission::Write, None).await);
    let listed = lead.get("/api/agent/items").await.json();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "only the person's idea was filed"
    );
}

async fn a_flooded_public_endpoint_answers_429_with_retry_after(db: Db) {
    let limits = Limits {
        public_per_address_per_minute: 3,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    let lead = hub.client(&hub.key("lead", Permission::Write, None).await);
    let reference = item(&lead, "Popular", "public").await;
    for n in 0..3 {
        let voted = vote(&hub, &reference, &format!("fan{n}@example.com")).await;
        assert_eq!(voted.status, 201, "{}", voted.text);
    }
    let flooded = vote(&hub, &reference, "fan9@example.com").await;
    assert_eq!(
        (flooded.status, flooded.code().as_str()),
        (429, "hub.rate_limited"),
        "{}",
        flooded.text
    );
    let retry: u64 = flooded.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let token = hub.anonymous().get("/api/public/SHOP/form").await.json()["form_token"].clone();
    let idea = hub
        .anonymous()
        .post("/api/public/SHOP/ideas", &idea(token.as_str().unwrap()))
        .await;
    assert_eq!(idea.status, 429, "ideas share the limit");
    let roadmap = hub.anonymous().get("/api/public/SHOP/roadmap").await;
    assert_eq!(
        roadmap.status, 200,
        "reading is held to the general limit only"
    );
    assert_eq!(
        roadmap.json()[0]["votes"],
        3,
        "the refused vote was not counted"
    );
}
