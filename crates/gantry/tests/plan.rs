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
    // Before any deploy no agent runs here: the plan says so, starting none.
    let before = json(&p, &["plan"]);
    assert_eq!(host(&before)["change"], "unknown", "{before:#}");
    assert!(
        (host(&before)["error"].as_str()).is_some_and(|e| e.contains("no agent runs here")),
        "{before:#}"
    );
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
    // Planning read the database without making its file.
    assert!(!db.exists(), "plan made {}", db.display());
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

const TOKEN_BEFORE: &str = "plan-token-Qv3-before";
const TOKEN_AFTER: &str = "plan-token-Qv3-after";

/// The example's project with a route, a secret from `.gantry/secrets.env`,
/// an env value, limits and a stop-first worker, as `change` rewrites it.
fn detailed_toml(change: bool) -> String {
    let (route, memory, env_value, path, secrets) = if change {
        ("b.plan.test", "128M", "2", "/", r#"["TOKEN", "EXTRA"]"#)
    } else {
        ("a.plan.test", "64M", "1", "/healthz", r#"["TOKEN"]"#)
    };
    format!(
        r#"[project]
name = "plandetail"

[services.web]
run = "bin/hello-web"
port = "http"
routes = ["{route}"]
health = {{ path = "{path}", interval = "100ms", timeout = "1s" }}
resources = {{ memory = "{memory}" }}
env = {{ FOO = "{env_value}" }}
secrets = {secrets}

[services.worker]
run = "bin/hello-worker"
env = {{ QUEUE = "emails" }}
depends_on = ["web"]
deploy_strategy = "stop-first"
"#
    )
}

fn plan_service<'a>(host: &'a Value, name: &str) -> &'a Value {
    host["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["service"] == name))
        .unwrap_or_else(|| panic!("no service `{name}` in {host:#}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn plan_names_the_files_keys_routes_and_secrets_that_differ_and_changes_nothing() {
    let bins = gantry_testkit::example_bins();
    let p = gantry_testkit::TestProject::new(agent_support::GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", "1\n")
        .file("OLD", "going\n")
        .file("gantry.toml", &detailed_toml(false))
        .file(".gantry/secrets.env", &format!("TOKEN={TOKEN_BEFORE}\n"));
    let first = deploy(&p);
    let r1 = first["release"]["id"]
        .as_str()
        .expect("a release")
        .to_owned();
    let pids_before =
        agent_support::pids(agent_support::service(&agent_support::status(&p), "web"));

    let same = json(&p, &["plan"]);
    assert_eq!(host(&same)["change"], "unchanged", "{same:#}");
    assert!(
        host(&same)["services"]
            .as_array()
            .is_some_and(|all| all.iter().all(|s| s["replaced"] == false)),
        "{same:#}"
    );

    // Every kind of change at once: files added, changed and removed, keys,
    // a route, a secret added and one whose value changed.
    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    std::fs::remove_file(p.path().join("OLD")).expect("remove OLD");
    std::fs::write(p.path().join("NEW"), "came\n").expect("write NEW");
    std::fs::write(p.path().join("gantry.toml"), detailed_toml(true)).expect("write gantry.toml");
    std::fs::write(
        p.path().join(".gantry/secrets.env"),
        format!("TOKEN={TOKEN_AFTER}\nEXTRA=plan-extra-value\n"),
    )
    .expect("write secrets.env");

    let run = p.gantry(&["plan", "--output", "json"]);
    run.expect_code(0);
    assert!(
        !run.stdout.contains(TOKEN_AFTER) && !run.stdout.contains(TOKEN_BEFORE),
        "the plan shows a secret's value: {}",
        run.stdout
    );
    let plan = run.json();
    let h = host(&plan);
    assert_eq!(h["change"], "new_release", "{plan:#}");
    assert_eq!(strings(&h["files"]["added"]["paths"]), ["NEW"], "{plan:#}");
    assert_eq!(
        strings(&h["files"]["changed"]["paths"]),
        ["VERSION", "gantry.toml"],
        "{plan:#}"
    );
    assert_eq!(
        strings(&h["files"]["removed"]["paths"]),
        ["OLD"],
        "{plan:#}"
    );
    assert_eq!(h["files"]["changed"]["count"], 2);

    let web = plan_service(h, "web");
    assert_eq!(web["change"], "changed", "{web:#}");
    assert_eq!(web["replaced"], true);
    assert_eq!(web["strategy"], "start-first");
    let keys = strings(&web["keys"]);
    for key in ["env.FOO", "resources.memory", "health.path"] {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
    assert_eq!(strings(&web["routes"]["added"]), ["b.plan.test"]);
    assert_eq!(strings(&web["routes"]["removed"]), ["a.plan.test"]);
    assert_eq!(strings(&web["secrets"]["added"]), ["EXTRA"]);
    assert_eq!(strings(&web["secrets"]["changed"]), ["TOKEN"]);
    assert!(strings(&web["secrets"]["removed"]).is_empty());

    // The worker's config is as it runs, its files are not: replaced, stop-first.
    let worker = plan_service(h, "worker");
    assert_eq!(worker["change"], "unchanged", "{worker:#}");
    assert_eq!(worker["replaced"], true);
    assert_eq!(worker["files"], true);
    assert_eq!(worker["strategy"], "stop-first");

    // A secret's value changed alone is a new release, named.
    std::fs::write(p.path().join("VERSION"), "1\n").expect("write VERSION");
    std::fs::write(p.path().join("OLD"), "going\n").expect("write OLD");
    std::fs::remove_file(p.path().join("NEW")).expect("remove NEW");
    std::fs::write(p.path().join("gantry.toml"), detailed_toml(false)).expect("write gantry.toml");
    let rotated = json(&p, &["plan"]);
    let h = host(&rotated);
    assert_eq!(h["change"], "new_release", "{rotated:#}");
    assert_eq!(strings(&h["reasons"]), ["`web` changes: secrets"]);
    assert_eq!(
        strings(&plan_service(h, "web")["secrets"]["changed"]),
        ["TOKEN"]
    );
    // The worker reads web's port (GANTRY_WEB_PORT), and web's new
    // instances get a new one: the worker is replaced too, and says why.
    let worker = plan_service(h, "worker");
    assert_eq!(worker["replaced"], true, "{rotated:#}");
    assert_eq!(worker["follows"], "web", "{rotated:#}");

    let text = p.gantry(&["plan", "--output", "text"]);
    text.expect_code(0);
    assert!(!text.stdout.contains(TOKEN_AFTER), "{}", text.stdout);
    assert!(
        text.stdout
            .contains("service web: replaced start-first (secrets changed: TOKEN)"),
        "{}",
        text.stdout
    );

    // Asking changed nothing: one release, the same instances, the old value.
    let releases = json(&p, &["releases"]);
    assert_eq!(
        releases["releases"].as_array().map(Vec::len),
        Some(1),
        "{releases:#}"
    );
    assert_eq!(releases["releases"][0]["id"], r1.as_str());
    let pids_after = agent_support::pids(agent_support::service(&agent_support::status(&p), "web"));
    assert_eq!(pids_before, pids_after);
    let kept = std::fs::read_to_string(p.state_dir().join("secrets/plandetail.env"))
        .expect("the host's secrets file");
    assert!(kept.contains(TOKEN_BEFORE), "the host's secret changed");

    // The deploy does as the plan said: the worker restarts with web.
    let worker_pids = |p: &gantry_testkit::TestProject| {
        agent_support::pids(agent_support::service(&agent_support::status(p), "worker"))
    };
    let before = worker_pids(&p);
    deploy(&p);
    assert_ne!(worker_pids(&p), before, "the worker was replaced");
}
