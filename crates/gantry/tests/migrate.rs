//! `gantry migrate` and a deploy's migrations, against real databases: a
//! throwaway PostgreSQL server (`PgCluster`) and SQLite files. What a user
//! would check: which migrations are applied (in `gantry_migrations` and in
//! the tables they make), what status and plan say, that an edited applied
//! file is refused, that a failing migration leaves nothing of itself and
//! none after it, that two runners at once apply each migration once, and
//! that a deploy whose migration fails leaves the old release serving.

mod agent_support;

use std::process::Stdio;

use agent_support::{GANTRY, assert_web_answers, command, deploy, hello_toml, service, status};
use gantry_testkit::postgres::PgCluster;
use gantry_testkit::{TestProject, example_bins};
use serde_json::Value;

/// Where a test's database is, and how to read it back.
enum Db {
    Pg(String),
    Sqlite(std::path::PathBuf),
}

impl Db {
    fn url(&self) -> String {
        match self {
            Db::Pg(url) => url.clone(),
            Db::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// The first column of `sql`'s rows, as text.
    fn column(&self, sql: &str) -> Vec<String> {
        match self {
            Db::Pg(url) => {
                let mut client =
                    postgres::Client::connect(url, postgres::NoTls).expect("connect to PostgreSQL");
                client
                    .query(sql, &[])
                    .expect("query")
                    .iter()
                    .map(|row| row.get::<_, String>(0))
                    .collect()
            }
            Db::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open SQLite");
                let mut statement = conn.prepare(sql).expect("prepare");
                statement
                    .query_map([], |row| row.get::<_, String>(0))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows")
            }
        }
    }

    /// The versions `gantry_migrations` records, in order.
    fn recorded(&self) -> Vec<String> {
        self.column("SELECT CAST(version AS TEXT) FROM gantry_migrations ORDER BY version")
    }

    fn tables(&self) -> Vec<String> {
        match self {
            Db::Pg(_) => self.column(
                "SELECT CAST(tablename AS TEXT) FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            ),
            Db::Sqlite(_) => self.column(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            ),
        }
    }
}

/// A project whose `web` takes its database URL from the secret
/// DATABASE_URL (given in the CLI's environment, as a deploy reads it).
fn project(db: &Db) -> TestProject {
    TestProject::new(GANTRY)
        .file(
            "gantry.toml",
            "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\nsecrets = [\"DATABASE_URL\"]\nmigrate = { sql = \"migrations\", database = \"DATABASE_URL\" }\n",
        )
        .env("DATABASE_URL", &db.url())
}

fn migration(p: &TestProject, file: &str, sql: &str) {
    let dir = p.path().join("migrations");
    std::fs::create_dir_all(&dir).expect("mkdir migrations");
    std::fs::write(dir.join(file), sql).expect("write a migration");
}

fn migrate(p: &TestProject, action: &str) -> Value {
    let run = p.gantry(&["migrate", action, "--output", "json"]);
    run.expect_code(0);
    run.json()
}

fn error_of(p: &TestProject, action: &str, exit: i32) -> Value {
    let run = p.gantry(&["migrate", action, "--output", "json"]);
    run.expect_code(exit);
    run.json()["error"].clone()
}

/// `(version, state)` of each migration of the report's only service.
fn states(report: &Value) -> Vec<(u64, String)> {
    report["services"][0]["migrations"]
        .as_array()
        .expect("migrations")
        .iter()
        .map(|m| {
            (
                m["version"].as_u64().expect("version"),
                m["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

fn applied(report: &Value) -> Vec<u64> {
    report["services"][0]["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .map(|a| a["version"].as_u64().expect("version"))
        .collect()
}

fn s(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs.iter().map(|(v, st)| (*v, (*st).to_owned())).collect()
}

/// Status, plan and run, then an edited applied file refused.
fn applies_reports_and_refuses_an_edited_file(db: &Db) {
    let p = project(db);
    migration(
        &p,
        "0001_create_users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
    );
    migration(
        &p,
        "0002_add_orders.sql",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL);",
    );

    let before = migrate(&p, "status");
    assert_eq!(states(&before), s(&[(1, "pending"), (2, "pending")]));
    assert_eq!(before["services"][0]["pending"], 2);
    let plan = migrate(&p, "plan");
    assert_eq!(states(&plan), s(&[(1, "pending"), (2, "pending")]));
    if let Db::Sqlite(path) = db {
        assert!(!path.exists(), "status and plan made {}", path.display());
    }
    assert!(
        !db.tables().contains(&"gantry_migrations".to_owned()),
        "status and plan changed the database: {:?}",
        db.tables()
    );

    let run = migrate(&p, "run");
    assert_eq!(applied(&run), [1, 2]);
    assert_eq!(db.recorded(), ["1", "2"]);
    for table in ["users", "orders"] {
        assert!(db.tables().contains(&table.to_owned()), "{:?}", db.tables());
    }
    assert_eq!(
        applied(&migrate(&p, "run")),
        Vec::<u64>::new(),
        "a second run applies nothing"
    );
    let after = migrate(&p, "status");
    assert_eq!(states(&after), s(&[(1, "applied"), (2, "applied")]));
    assert!(
        after["services"][0]["migrations"][0]["applied_at_ms"]
            .as_u64()
            .is_some()
    );

    // An applied migration edited, and a new one beside it: nothing is applied.
    migration(
        &p,
        "0001_create_users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);",
    );
    migration(
        &p,
        "0003_add_items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY);",
    );
    for action in ["run", "plan"] {
        let error = error_of(&p, action, 4);
        assert_eq!(error["code"], "migrate.edited", "{error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("0001_create_users"), "{message}");
    }
    assert_eq!(db.recorded(), ["1", "2"]);
    assert!(!db.tables().contains(&"items".to_owned()));
    let shown = migrate(&p, "status");
    assert_eq!(
        states(&shown),
        s(&[(1, "edited"), (2, "applied"), (3, "pending")])
    );
    // The URL, which may hold a password, is in no output.
    assert!(!shown.to_string().contains(&db.url()));
}

/// A failing migration is rolled back whole and the ones after it do not run.
fn a_failing_migration_rolls_back_and_stops_the_run(db: &Db) {
    let p = project(db);
    migration(
        &p,
        "0001_create_users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY);",
    );
    migration(
        &p,
        "0002_half_done.sql",
        "CREATE TABLE half (id INTEGER);\nINSERT INTO half VALUES (1);\nINSERT INTO no_such_table VALUES (1);",
    );
    migration(&p, "0003_after.sql", "CREATE TABLE after_it (id INTEGER);");

    let error = error_of(&p, "run", 6);
    assert_eq!(error["code"], "migrate.failed", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("0002_half_done") && message.contains("no_such_table"),
        "{message}"
    );
    assert_eq!(db.recorded(), ["1"]);
    let tables = db.tables();
    assert!(tables.contains(&"users".to_owned()), "{tables:?}");
    assert!(
        !tables.contains(&"half".to_owned()),
        "0002 left its table: {tables:?}"
    );
    assert!(
        !tables.contains(&"after_it".to_owned()),
        "0003 ran: {tables:?}"
    );
    assert_eq!(
        states(&migrate(&p, "status")),
        s(&[(1, "applied"), (2, "pending"), (3, "pending")])
    );

    // Fixed, the run goes on from it.
    migration(&p, "0002_half_done.sql", "CREATE TABLE half (id INTEGER);");
    assert_eq!(applied(&migrate(&p, "run")), [2, 3]);
}

/// Two `gantry migrate run` at once: each migration applied once, by one of them.
fn concurrent_runners_apply_each_migration_once(db: &Db, slow: &str) {
    let p = project(db);
    migration(
        &p,
        "0001_counter.sql",
        "CREATE TABLE counter (n INTEGER NOT NULL);",
    );
    for v in 2..=6 {
        migration(
            &p,
            &format!("{v:04}_count_{v}.sql"),
            &format!("{slow}\nINSERT INTO counter VALUES ({v});"),
        );
    }
    let runners: Vec<_> = (0..2)
        .map(|_| {
            command(&p, &["migrate", "run", "--output", "json"])
                .env("DATABASE_URL", db.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start gantry migrate run")
        })
        .collect();
    let mut by_runner = Vec::new();
    for runner in runners {
        let out = runner.wait_with_output().expect("wait for a runner");
        assert!(
            out.status.success(),
            "a runner failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
        by_runner.push(applied(&report));
    }
    let mut all: Vec<u64> = by_runner.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        [1, 2, 3, 4, 5, 6],
        "applied by the runners: {by_runner:?}"
    );
    assert_eq!(db.recorded(), ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(
        db.column("SELECT CAST(n AS TEXT) FROM counter ORDER BY n"),
        ["2", "3", "4", "5", "6"]
    );
}

fn sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("shop.db");
    (dir, Db::Sqlite(path))
}

#[test]
fn postgres_migrations_apply_report_and_refuse_an_edited_file() {
    let cluster = PgCluster::start();
    applies_reports_and_refuses_an_edited_file(&Db::Pg(cluster.database("apply")));
}

#[test]
fn sqlite_migrations_apply_report_and_refuse_an_edited_file() {
    let (_dir, db) = sqlite();
    applies_reports_and_refuses_an_edited_file(&db);
}

#[test]
fn postgres_failing_migration_rolls_back_and_stops_the_run() {
    let cluster = PgCluster::start();
    a_failing_migration_rolls_back_and_stops_the_run(&Db::Pg(cluster.database("failing")));
}

#[test]
fn sqlite_failing_migration_rolls_back_and_stops_the_run() {
    let (_dir, db) = sqlite();
    a_failing_migration_rolls_back_and_stops_the_run(&db);
}

#[test]
fn postgres_concurrent_runners_apply_each_migration_once() {
    let cluster = PgCluster::start();
    concurrent_runners_apply_each_migration_once(
        &Db::Pg(cluster.database("concurrent")),
        "SELECT pg_sleep(0.1);",
    );
}

#[test]
fn sqlite_concurrent_runners_apply_each_migration_once() {
    let (_dir, db) = sqlite();
    // Work that takes a while, so the runners overlap.
    concurrent_runners_apply_each_migration_once(
        &db,
        "CREATE TEMP TABLE IF NOT EXISTS busy AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) SELECT x FROM c; DROP TABLE busy;",
    );
}

#[test]
fn a_sqlite_file_of_an_environment_on_other_hosts_is_refused_as_not_supported_yet() {
    let (_dir, db) = sqlite();
    let p = TestProject::new(GANTRY)
        .file(
            "gantry.toml",
            "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\nsecrets = [\"DATABASE_URL\"]\nmigrate = { sql = \"migrations\", database = \"DATABASE_URL\" }\n\n[hosts.web-1]\nssh = \"deploy@203.0.113.10\"\n\n[environments.prod]\nhosts = [\"web-1\"]\n",
        )
        .env("DATABASE_URL", &db.url());
    migration(&p, "0001_a.sql", "CREATE TABLE a (id INTEGER);");
    let run = p.gantry(&["migrate", "run", "-e", "prod", "--output", "json"]);
    run.expect_code(3);
    assert_eq!(run.json()["error"]["code"], "deploy.unsupported");
    let Db::Sqlite(path) = &db else {
        unreachable!()
    };
    assert!(!path.exists(), "the file was made");
}

/// A deploy runs the pending migrations before its rollout; one that fails
/// stops it there, and the release that served goes on serving.
#[test]
fn a_deploy_whose_migration_fails_leaves_the_old_release_serving() {
    let (_dir, db) = sqlite();
    let bins = example_bins();
    let toml = format!(
        "{}\n[services.web.env]\nDATABASE_URL = \"{}\"\n\n[services.web.migrate]\nsql = \"migrations\"\ndatabase = \"DATABASE_URL\"\n",
        hello_toml("mig", "bin/hello-web"),
        db.url()
    );
    let p = TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", "1\n")
        .file("gantry.toml", &toml);
    migration(
        &p,
        "0001_create_users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY);",
    );

    let first = deploy(&p);
    assert_eq!(first["release"]["outcome"], "succeeded", "{first:#}");
    assert_eq!(
        first["migrations"][0]["applied"][0]["name"], "create_users",
        "{first:#}"
    );
    let r1 = first["release"]["id"]
        .as_str()
        .expect("a release id")
        .to_owned();
    assert_web_answers(service(&status(&p), "web"), "1");

    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    migration(
        &p,
        "0002_broken.sql",
        "CREATE TABLE half (id INTEGER);\nSELECT * FROM no_such_table;",
    );
    // Every request during the attempt is answered by the old release.
    let ports = agent_support::ports(service(&status(&p), "web"));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for port in &ports {
                    answers.push(gantry_testkit::http_get(*port, "/").map_err(|e| e.to_string()));
                }
            }
            answers
        })
    };
    let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = load.join().expect("the load thread");
    assert!(!answers.is_empty());
    for answer in &answers {
        match answer {
            Ok((200, body)) if body.starts_with("hello from version 1 ") => {}
            other => panic!("during the failed deploy: {other:?}"),
        }
    }
    run.expect_code(6);
    let error = run.json()["error"].clone();
    assert_eq!(error["code"], "migrate.failed", "{error}");

    let now = status(&p);
    let web = service(&now, "web");
    assert_eq!(web["release"], r1.as_str(), "{now:#}");
    assert_web_answers(web, "1");
    let releases = p.gantry(&["releases", "--output", "json"]);
    releases.expect_code(0);
    let listed = releases.json();
    assert_eq!(
        listed["releases"].as_array().map(Vec::len),
        Some(1),
        "the failed deploy made a release: {listed:#}"
    );
    assert_eq!(db.recorded(), ["1"]);
    assert!(!db.tables().contains(&"half".to_owned()));
}
