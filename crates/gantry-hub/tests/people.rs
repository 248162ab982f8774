//! People over HTTP, against a real hub on SQLite and on PostgreSQL:
//! logins with a password and a TOTP second factor, recovery codes,
//! sessions that end, CSRF tokens, and roles per product.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_hub::Limits;
use gantry_hub::model::{Permission, UserRole};
use serde_json::{Value, json};
use support::{Answer, Client, Db, Hub};

on_both_databases!(
    a_totp_login_needs_a_fresh_code_and_each_recovery_code_works_once,
    a_session_ends_at_logout_and_when_revoked,
    roles_are_enforced_per_product,
    an_admin_of_one_product_shares_and_deletes_only_that_products_views,
    changes_made_with_a_session_need_its_csrf_token,
    a_wrong_password_is_refused_audited_and_slowed,
    the_cookie_is_secure_when_the_proxy_says_the_client_came_over_https,
    users_and_keys_never_share_a_name_and_the_api_document_has_both,
    a_login_sent_as_a_form_is_refused_so_another_site_cannot_log_a_visitor_in,
);

const PASSWORD: &str = "correct horse battery staple";

/// A signed-in user: the session cookie and its CSRF token.
struct Session {
    client: Client,
    cookie: String,
    csrf: String,
}

impl Session {
    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let headers = [
            ("cookie", self.cookie.as_str()),
            ("x-csrf-token", self.csrf.as_str()),
        ];
        self.client.send(method, path, &headers, body).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.client
            .send("GET", path, &[("cookie", self.cookie.as_str())], None)
            .await
    }
}

async fn add_user(hub: &Hub, name: &str, grants: &[(UserRole, Option<&str>)]) {
    let store = hub.store.clone();
    let name = name.to_owned();
    let grants: Vec<(UserRole, Option<String>)> = grants
        .iter()
        .map(|(r, p)| (*r, p.map(str::to_owned)))
        .collect();
    tokio::task::spawn_blocking(move || {
        store.add_user(&name, None, PASSWORD).unwrap();
        for (role, product) in grants {
            store.grant(&name, Some(role), product.as_deref()).unwrap();
        }
    })
    .await
    .unwrap();
}

async fn login_answer(hub: &Hub, name: &str, code: Option<&str>) -> Answer {
    let mut body = json!({"name": name, "password": PASSWORD});
    if let Some(code) = code {
        body["code"] = json!(code);
    }
    hub.anonymous().post("/api/session", &body).await
}

async fn login(hub: &Hub, name: &str, code: Option<&str>) -> Session {
    let answer = login_answer(hub, name, code).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    session_of(hub, &answer)
}

fn session_of(hub: &Hub, answer: &Answer) -> Session {
    let set = answer.header("set-cookie").unwrap();
    Session {
        client: hub.anonymous(),
        cookie: set.split(';').next().unwrap().to_owned(),
        csrf: answer.json()["csrf_token"].as_str().unwrap().to_owned(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn totp(secret: &str) -> totp_rs::Totp {
    totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap()
}

/// The audit log's (actor, action, outcome) rows, read with an admin key.
async fn audit(hub: &Hub) -> Vec<(String, String, String)> {
    let admin = hub.client(&hub.key("auditor", Permission::Admin, None).await);
    let log = admin.get("/api/admin/audit?limit=100").await;
    assert_eq!(log.status, 200, "{}", log.text);
    log.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (text("actor"), text("action"), text("outcome"))
        })
        .collect()
}

fn row(actor: &str, action: &str, outcome: &str) -> (String, String, String) {
    (actor.to_owned(), action.to_owned(), outcome.to_owned())
}

async fn a_totp_login_needs_a_fresh_code_and_each_recovery_code_works_once(db: Db) {
    let hub = Hub::start(db).await;
    add_user(&hub, "ann", &[(UserRole::Member, Some("SHOP"))]).await;
    let first = login_answer(&hub, "ann", None).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let set_cookie = first.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let session = session_of(&hub, &first);

    // Enrol: the password again, then a code from the app.
    let wrong = session
        .send(
            "POST",
            "/api/session/totp",
            Some(&json!({"password": "not the password"})),
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    assert!(!wrong.hint().contains("Bearer"), "{}", wrong.hint());
    let enrolment = session
        .send(
            "POST",
            "/api/session/totp",
            Some(&json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(enrolment.status, 200, "{}", enrolment.text);
    let secret = enrolment.json()["secret"].as_str().unwrap().to_owned();
    assert!(
        enrolment.json()["url"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let app = totp(&secret);
    let confirmed = session
        .send(
            "POST",
            "/api/session/totp/confirm",
            Some(&json!({"code": app.generate(now()).to_string()})),
        )
        .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text);
    let location = hub.location.clone();
    let stored = tokio::task::spawn_blocking(move || {
        support::raw(
            &location,
            "SELECT totp_secret FROM users WHERE name = 'ann'",
        )
    })
    .await
    .unwrap();
    let stored = stored[0][0].clone().unwrap_or_default();
    assert!(
        stored.starts_with("sealed1:") && !stored.contains(&secret),
        "the database keeps the TOTP secret sealed: {stored}"
    );
    let recovery: Vec<String> = confirmed.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(
        session.send("DELETE", "/api/session", None).await.status,
        204
    );

    // The password alone no longer opens a session.
    let missing = login_answer(&hub, "ann", None).await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (401, "hub.second_factor"),
        "{}",
        missing.text
    );
    assert!(missing.header("set-cookie").is_none());
    // A code no window accepts.
    let valid: Vec<String> = [now() - 30, now(), now() + 30, now() + 60]
        .iter()
        .map(|t| app.generate(*t).to_string())
        .collect();
    let bad = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap();
    let refused = login_answer(&hub, "ann", Some(&bad)).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (401, "hub.unauthorized")
    );
    assert!(
        refused.hint().contains("code") && !refused.hint().contains("Bearer"),
        "{}",
        refused.hint()
    );
    // The next step's code works once (the enrolment spent this step's).
    let code = app.generate(now() + 30).to_string();
    let ok = login(&hub, "ann", Some(&code)).await;
    assert_eq!(ok.get("/api/session").await.json()["totp"], true);
    let replayed = login_answer(&hub, "ann", Some(&code)).await;
    assert_eq!(
        replayed.status, 401,
        "a TOTP code is good once: {}",
        replayed.text
    );

    // A recovery code, typed loosely, works once.
    let loose = recovery[0].to_uppercase().replace('-', " ");
    login(&hub, "ann", Some(&loose)).await;
    let again = login_answer(&hub, "ann", Some(&recovery[0])).await;
    assert_eq!(again.status, 401, "{}", again.text);
    login(&hub, "ann", Some(&recovery[1])).await;

    let rows = audit(&hub).await;
    for outcome in [
        "second factor missing",
        "wrong totp code",
        "totp code reused",
        "wrong recovery code",
        "ok (recovery code)",
        "ok",
    ] {
        assert!(
            rows.contains(&row("ann", "auth.login", outcome)),
            "{outcome}: {rows:?}"
        );
    }
    assert!(rows.contains(&row("ann", "auth.logout", "ok")), "{rows:?}");
    assert!(
        rows.contains(&row("ann", "auth.totp_enrol", "wrong password")),
        "{rows:?}"
    );
    let log = hub
        .client(&hub.key("reader", Permission::Admin, None).await)
        .get("/api/admin/audit?limit=100")
        .await
        .text;
    assert!(
        !log.contains(&secret) && !log.contains(&recovery[2]),
        "no secret in the audit log"
    );
}

async fn a_session_ends_at_logout_and_when_revoked(db: Db) {
    let hub = Hub::start(db).await;
    add_user(&hub, "ann", &[(UserRole::Viewer, None)]).await;
    let session = login(&hub, "ann", None).await;
    assert_eq!(session.get("/api/agent/items").await.status, 200);
    assert_eq!(
        session.send("DELETE", "/api/session", None).await.status,
        204
    );
    let after = session.get("/api/agent/items").await;
    assert_eq!(
        (after.status, after.code().as_str()),
        (401, "hub.unauthorized"),
        "{}",
        after.text
    );
    assert!(after.message().contains("revoked"), "{}", after.message());

    let other = login(&hub, "ann", None).await;
    let third = login(&hub, "ann", None).await;
    assert_eq!(other.get("/api/agent/items").await.status, 200);
    let store = hub.store.clone();
    let ended = tokio::task::spawn_blocking(move || store.revoke_sessions("ann").unwrap())
        .await
        .unwrap();
    assert_eq!(ended, 2);
    assert_eq!(
        other.get("/api/agent/items").await.status,
        401,
        "revoked at once"
    );
    assert_eq!(third.get("/api/session").await.status, 401);
    let forged = Session {
        client: hub.anonymous(),
        cookie: format!("gantry_session={}", "ab".repeat(32)),
        csrf: String::new(),
    };
    assert_eq!(forged.get("/api/agent/items").await.status, 401);
    let rows = audit(&hub).await;
    assert!(
        rows.contains(&row("ann", "auth.session", "revoked")),
        "{rows:?}"
    );
    assert!(
        rows.contains(&row("anonymous", "auth.session", "unknown")),
        "{rows:?}"
    );
}

async fn roles_are_enforced_per_product(db: Db) {
    let hub = Hub::start(db).await;
    let store = hub.store.clone();
    tokio::task::spawn_blocking(move || store.add_product("DOCS", "The docs").unwrap())
        .await
        .unwrap();
    let lead = hub.client(&hub.key("lead", Permission::Write, None).await);
    for product in ["SHOP", "BLOG", "DOCS"] {
        lead.create(
            &json!({"product": product, "type": "task", "title": format!("{product} work")}),
        )
        .await;
    }
    add_user(
        &hub,
        "vic",
        &[
            (UserRole::Viewer, Some("SHOP")),
            (UserRole::Member, Some("BLOG")),
        ],
    )
    .await;
    add_user(&hub, "nobody", &[]).await;
    add_user(&hub, "root", &[(UserRole::Admin, None)]).await;
    let vic = login(&hub, "vic", None).await;

    let listed = vic.get("/api/agent/items").await.json();
    let mut seen: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["product"].as_str().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, ["BLOG", "SHOP"], "the products vic has a role in");
    assert_eq!(vic.get("/api/agent/items/DOCS-1").await.status, 403);
    // Asked by number, the refusal does not tell the product or the count.
    let by_number = vic.get("/api/agent/items/3").await;
    assert_eq!(by_number.status, 403, "{}", by_number.text);
    assert!(!by_number.text.contains("DOCS"), "{}", by_number.text);
    assert_eq!(vic.get("/api/agent/items/SHOP-1").await.status, 200);

    let new = |product: &str| json!({"product": product, "type": "bug", "title": "Seen by vic"});
    let viewer = vic
        .send("POST", "/api/agent/items", Some(&new("SHOP")))
        .await;
    assert_eq!(
        (viewer.status, viewer.code().as_str()),
        (403, "hub.forbidden"),
        "{}",
        viewer.text
    );
    let member = vic
        .send("POST", "/api/agent/items", Some(&new("BLOG")))
        .await;
    assert_eq!(member.status, 201, "{}", member.text);
    assert_eq!(member.json()["reporter"], "vic");
    assert_eq!(
        vic.get("/api/admin/audit").await.status,
        403,
        "a member is no admin"
    );

    let nobody = login(&hub, "nobody", None).await;
    let refused = nobody.get("/api/agent/items").await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.message().contains("no product"),
        "{}",
        refused.message()
    );

    let root = login(&hub, "root", None).await;
    assert_eq!(
        root.get("/api/admin/audit").await.status,
        200,
        "a hub-wide admin reads the audit log"
    );
    assert_eq!(root.get("/api/agent/items/DOCS-1").await.status, 200);

    // A grant changed takes effect on the next request.
    let store = hub.store.clone();
    tokio::task::spawn_blocking(move || store.grant("vic", None, Some("BLOG")).unwrap())
        .await
        .unwrap();
    let gone = vic
        .send("POST", "/api/agent/items", Some(&new("BLOG")))
        .await;
    assert_eq!(gone.status, 403, "{}", gone.text);
}

/// Admin on BLOG and viewer on SHOP: ada may share a view with BLOG and
/// delete BLOG's, but not SHOP's, which she may only read.
async fn an_admin_of_one_product_shares_and_deletes_only_that_products_views(db: Db) {
    let hub = Hub::start(db).await;
    add_user(
        &hub,
        "ada",
        &[
            (UserRole::Admin, Some("BLOG")),
            (UserRole::Viewer, Some("SHOP")),
        ],
    )
    .await;
    add_user(&hub, "root", &[(UserRole::Admin, None)]).await;
    let ada = login(&hub, "ada", None).await;
    let root = login(&hub, "root", None).await;
    let view =
        |product: &str| json!({"name": "Open", "product": product, "query": {"status": "open"}});

    let refused = ada
        .send("POST", "/api/agent/views", Some(&view("SHOP")))
        .await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (403, "hub.forbidden"),
        "{}",
        refused.text
    );
    assert!(
        refused.message().contains("admin on `SHOP`"),
        "{}",
        refused.text
    );
    let blog = ada
        .send("POST", "/api/agent/views", Some(&view("BLOG")))
        .await;
    assert_eq!(blog.status, 201, "{}", blog.text);

    let shop = root
        .send("POST", "/api/agent/views", Some(&view("SHOP")))
        .await;
    assert_eq!(shop.status, 201, "{}", shop.text);
    let path = |answer: &Answer| format!("/api/agent/views/{}", answer.json()["id"]);
    let kept = ada.send("DELETE", &path(&shop), None).await;
    assert_eq!(kept.status, 403, "{}", kept.text);
    let names = |answer: Answer| -> Vec<String> {
        (answer.json().as_array().unwrap().iter())
            .map(|v| v["product"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let mut seen = names(ada.get("/api/agent/views").await);
    seen.sort();
    assert_eq!(seen, ["BLOG", "SHOP"], "both views are still there");
    let deleted = ada.send("DELETE", &path(&blog), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(names(ada.get("/api/agent/views").await), ["SHOP"]);
}

async fn changes_made_with_a_session_need_its_csrf_token(db: Db) {
    let hub = Hub::start(db).await;
    add_user(&hub, "ann", &[(UserRole::Member, Some("SHOP"))]).await;
    let ann = login(&hub, "ann", None).await;
    let body = json!({"product": "SHOP", "type": "task", "title": "Forged"});
    let without = ann
        .client
        .send(
            "POST",
            "/api/agent/items",
            &[("cookie", ann.cookie.as_str())],
            Some(&body),
        )
        .await;
    assert_eq!(
        (without.status, without.code().as_str()),
        (403, "hub.forbidden"),
        "{}",
        without.text
    );
    assert!(without.message().contains("CSRF"), "{}", without.message());
    let other = login(&hub, "ann", None).await;
    let crossed = ann
        .client
        .send(
            "POST",
            "/api/agent/items",
            &[
                ("cookie", ann.cookie.as_str()),
                ("x-csrf-token", other.csrf.as_str()),
            ],
            Some(&body),
        )
        .await;
    assert_eq!(crossed.status, 403, "another session's token is no good");
    let logout = ann
        .client
        .send(
            "DELETE",
            "/api/session",
            &[("cookie", ann.cookie.as_str())],
            None,
        )
        .await;
    assert_eq!(logout.status, 403, "logging out is a change too");
    assert_eq!(
        ann.send("POST", "/api/agent/items", Some(&body))
            .await
            .status,
        201
    );
    let listed = ann.get("/api/agent/items").await.json();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "the refused ones made nothing"
    );
    let whoami = ann.get("/api/session").await.json();
    assert_eq!(whoami["csrf_token"], ann.csrf.as_str());
    assert!(
        audit(&hub)
            .await
            .contains(&row("ann", "auth.csrf", "missing or wrong token"))
    );
}

async fn a_wrong_password_is_refused_audited_and_slowed(db: Db) {
    let limits = Limits {
        logins_per_name_per_minute: 3,
        public_per_address_per_minute: 100,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    add_user(&hub, "ann", &[]).await;
    let wrong = |name: &str| json!({"name": name, "password": "not the password at all"});
    let client = hub.anonymous();
    let refused = client.post("/api/session", &wrong("ann")).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (401, "hub.unauthorized")
    );
    let unknown = client.post("/api/session", &wrong("zed")).await;
    assert_eq!(
        unknown.message(),
        refused.message(),
        "an unknown name looks like a wrong password"
    );
    assert_eq!(
        unknown.hint(),
        refused.hint(),
        "the hint does not tell an unknown name either"
    );
    assert!(
        refused.hint().contains("password") && !refused.hint().contains("Authorization"),
        "a login's hint is about the password, not API keys: {}",
        refused.hint()
    );
    client.post("/api/session", &wrong("ann")).await;
    login_answer(&hub, "ann", None).await;
    let slowed = login_answer(&hub, "ann", None).await;
    assert_eq!(
        slowed.status, 429,
        "the fourth login to ann in a minute: {}",
        slowed.text
    );
    assert!(slowed.header("retry-after").is_some());
    assert_eq!(
        login_answer(&hub, "zed", None).await.status,
        401,
        "other names are not slowed"
    );
    let rows = audit(&hub).await;
    assert!(
        rows.contains(&row("ann", "auth.login", "wrong password")),
        "{rows:?}"
    );
    assert!(
        rows.contains(&row("anonymous", "auth.login", "unknown user")),
        "{rows:?}"
    );
}

async fn the_cookie_is_secure_when_the_proxy_says_the_client_came_over_https(db: Db) {
    let limits = Limits {
        behind_proxy: true,
        ..Limits::default()
    };
    let hub = Hub::with_limits(db, limits).await;
    add_user(&hub, "ann", &[]).await;
    let body = json!({"name": "ann", "password": PASSWORD});
    let https = hub
        .anonymous()
        .send(
            "POST",
            "/api/session",
            &[("x-forwarded-proto", "https")],
            Some(&body),
        )
        .await;
    assert_eq!(https.status, 200, "{}", https.text);
    assert!(
        https.header("set-cookie").unwrap().contains("; Secure"),
        "{:?}",
        https.header("set-cookie")
    );
    let plain = hub
        .anonymous()
        .send(
            "POST",
            "/api/session",
            &[("x-forwarded-proto", "http")],
            Some(&body),
        )
        .await;
    assert!(!plain.header("set-cookie").unwrap().contains("Secure"));
}

async fn users_and_keys_never_share_a_name_and_the_api_document_has_both(db: Db) {
    let hub = Hub::start(db).await;
    hub.key("coder", Permission::Write, None).await;
    add_user(&hub, "ann", &[]).await;
    let store = hub.store.clone();
    let (as_user, as_key, reserved) = tokio::task::spawn_blocking(move || {
        let as_user = store.add_user("coder", None, PASSWORD).unwrap_err();
        let as_key = store
            .create_key(&gantry_hub::KeySpec {
                name: "ann".to_owned(),
                role: gantry_hub::model::Role::Agent,
                permission: Permission::Read,
                product: None,
                rate_per_minute: None,
                allow_from: Vec::new(),
            })
            .unwrap_err();
        let reserved = store.add_user("cli", None, PASSWORD).unwrap_err();
        (as_user, as_key, reserved)
    })
    .await
    .unwrap();
    assert_eq!(as_user.code().as_str(), "hub.exists", "{as_user}");
    assert_eq!(as_key.code().as_str(), "hub.exists", "{as_key}");
    assert_eq!(reserved.code().as_str(), "hub.invalid", "{reserved}");

    let doc = hub.anonymous().get("/api/openapi.json").await.json();
    for path in [
        "/api/session",
        "/api/session/totp",
        "/api/session/totp/confirm",
        "/api/public/{product}/roadmap",
        "/api/public/{product}/ideas",
        "/api/public/{product}/items/{reference}/votes",
        "/api/public/submissions/{token}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is in the document");
    }
}

async fn a_login_sent_as_a_form_is_refused_so_another_site_cannot_log_a_visitor_in(db: Db) {
    let hub = Hub::start(db).await;
    add_user(&hub, "mallory", &[]).await;
    // What a cross-site `<form enctype="text/plain">` can send: JSON-shaped
    // text under a content type the browser sends without asking.
    let body = json!({"name": "mallory", "password": PASSWORD}).to_string();
    for kind in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let answer = hub
            .anonymous()
            .send_raw(
                "POST",
                "/api/session",
                &[("content-type", kind)],
                body.clone().into_bytes(),
            )
            .await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (415, "hub.invalid"),
            "{kind}: {}",
            answer.text
        );
        assert!(answer.header("set-cookie").is_none(), "{kind}: no session");
        assert!(
            answer.hint().contains("application/json"),
            "{}",
            answer.hint()
        );
    }
    let json = hub
        .anonymous()
        .send_raw(
            "POST",
            "/api/session",
            &[("content-type", "application/json; charset=utf-8")],
            body.into_bytes(),
        )
        .await;
    assert_eq!(json.status, 200, "{}", json.text);
    let doc = hub.anonymous().get("/api/openapi.json").await.json();
    let login = &doc["paths"]["/api/session"]["post"];
    assert!(
        login["requestBody"]["content"]["application/json"].is_object(),
        "{login}"
    );
    assert!(login["responses"]["415"].is_object(), "{login}");
}
