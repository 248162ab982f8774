//! `gantry plan` (and `deploy --dry-run`) against a real local agent: what a
//! deploy would do, per host and service, with nothing changed by asking.

mod agent_support;

use agent_support::{deploy, hello, hello_toml, json};
use serde_json::Value;

fn host(plan: &Value) -> &Value {
    &plan["hosts"][0]
}

#[test]
fn plan_says_unchanged_or_why_a_new_release_and_changes_nothing() {
    let p = hello("plan", "1");
    let first = deploy(&p);
    let r1 = first["release"]["id"]
        .as_str()
        .expect("a release")
        .to_owned();

    let same = json(&p, &["plan"]);
    assert_eq!(host(&same)["change"], "unchanged", "{same:#}");
    assert_eq!(host(&same)["current"], r1.as_str());
    assert_eq!(host(&same)["reasons"], serde_json::json!([]));

    // New files, and a service's replicas changed.
    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    // And a migration a deploy would apply.
    let db = p.path().join("shop.db");
    let toml = format!(
        "{}\n[services.web.env]\nDATABASE_URL = \"sqlite://{}\"\n\n[services.web.migrate]\nsql = \"migrations\"\ndatabase = \"DATABASE_URL\"\n",
        hello_toml("plan", "bin/hello-web").replace("replicas = 2", "replicas = 3"),
        db.display()
    );
    std::fs::write(p.path().join("gantry.toml"), toml).expect("write gantry.toml");
    std::fs::create_dir_all(p.path().join("migrations")).expect("mkdir");
    std::fs::write(
        p.path().join("migrations/0001_create_users.sql"),
        "CREATE TABLE users (id INTEGER PRIMARY KEY);",
    )
    .expect("write a migration");
    for args in [&["plan"][..], &["deploy", "--dry-run"][..]] {
        let changed = json(&p, args);
        let h = host(&changed);
        assert_eq!(h["change"], "new_release", "{changed:#}");
        let reasons: Vec<&str> = h["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            reasons.iter().any(|r| r.starts_with("the files differ")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&"`web` changes: env, migrate, replicas"),
            "{reasons:?}"
        );
        let worker = h["services"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["service"] == "worker"))
            .expect("worker");
        assert_eq!(worker["change"], "unchanged");
        assert_eq!(changed["migrations"][0]["service"], "web", "{changed:#}");
        assert_eq!(changed["migrations"][0]["pending"], 1, "{changed:#}");
    }
    let text = p.gantry(&["plan", "--output", "text"]);
    text.expect_code(0);
    insta::assert_snapshot!(filtered(&text.stdout));

    // Asking changed nothing: the same release runs, and no other was made.
    let releases = json(&p, &["releases"]);
    assert_eq!(
        releases["releases"].as_array().map(Vec::len),
        Some(1),
        "{releases:#}"
    );
    assert_eq!(releases["releases"][0]["id"], r1.as_str());
    let tables = rusqlite::Connection::open(&db)
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .expect("read the database");
    assert_eq!(tables, 0, "plan applied a migration");
}

/// The plan's text with the artifact digests, which change with the binaries, hidden.
fn filtered(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("(artifact ") {
            Some(at) => format!("{}(artifact DIGEST now, DIGEST on the host)", &line[..at]),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
