//! Backups through the real binary and the local agent: a SQLite database
//! of a process service, a container's volume, a PostgreSQL and a MariaDB
//! database, each written, backed up, destroyed, restored and read back;
//! `keep` enforced; a schedule that fires on its own, and a failed backup
//! shown by `gantry status` until one succeeds. Needs root and Docker for
//! the container ones (their images are built here).

mod agent_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{DEADLINE, deploy, json, service, shell, status, wait_for_status};
use gantry_testkit::TestProject;
use serde_json::Value;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sqlite(db: &Path, sql: &str) -> String {
    run("sqlite3", &[&db.display().to_string(), sql])
}

/// The ids `gantry backup list` shows, newest first.
fn ids(list: &Value) -> Vec<String> {
    list["backups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect()
}

fn backup_now(p: &TestProject, service: &str) -> Value {
    let taken = json(p, &["backup", "now", service]);
    taken["backups"][0].clone()
}

/// A directory any service user may write in, removed on drop.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

#[test]
fn a_sqlite_database_is_backed_up_restored_identical_and_keep_is_enforced() {
    let data = shared_dir();
    let db = data.path().join("shop.db");
    sqlite(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT, n INT);
         WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 5000)
         INSERT INTO orders(item, n) SELECT hex(randomblob(16)), i * 7 FROM k;",
    );
    let p = shell(
        "test-bk-sqlite",
        &format!(
            "[services.app]\nrun = \"sleep 600\"\nbackup = {{ schedule = \"0 3 * * *\", keep = 2, kind = \"sqlite\", path = \"{}\" }}\n",
            db.display()
        ),
    );
    deploy(&p);
    let written = sqlite(&db, ".dump");

    let first = backup_now(&p, "app");
    assert_eq!(first["kind"], "sqlite", "{first:#}");
    assert_eq!(first["trigger"], "manual");
    // Kept private, outside the releases.
    let dir = p.state_dir().join("backups/test-bk-sqlite/app");
    assert_eq!(
        std::fs::metadata(&dir).expect("backup dir").mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(&dir).expect("list").flatten() {
        let mode = entry.metadata().expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }

    // Destroyed: the file and its WAL gone.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let id = first["id"].as_str().expect("an id");
    let restored = json(&p, &["backup", "restore", "app", id, "--yes"]);
    assert_eq!(restored["backups"][0]["id"], id);
    assert_eq!(sqlite(&db, ".dump"), written, "restored identical");
    // Started again after the restore.
    wait_for_status(&p, "app running again", |s| {
        service(s, "app")["state"] == "running"
    });
    // The copies were made in the agent's staging directory, not beside
    // the database (where the service could put a FIFO in their way), and
    // are gone.
    let beside: Vec<String> = std::fs::read_dir(data.path())
        .expect("list the database's directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("shop.db"))
        .collect();
    assert!(beside.is_empty(), "left beside the database: {beside:?}");
    let staging = p.state_dir().join("staging");
    assert_eq!(
        std::fs::metadata(&staging).expect("staging").mode() & 0o777,
        0o711,
        "others may pass, not list"
    );
    let left: Vec<_> = std::fs::read_dir(&staging)
        .expect("list")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left in staging: {left:?}");

    // keep = 2: a third backup removes the first.
    let second = backup_now(&p, "app");
    let third = backup_now(&p, "app");
    let list = json(&p, &["backup", "list", "app"]);
    assert_eq!(
        ids(&list),
        [
            third["id"].as_str().unwrap_or(""),
            second["id"].as_str().unwrap_or("")
        ],
        "{list:#}"
    );
    assert_eq!(list["keep"], 2);
    // Restoring a removed one is refused with its code.
    let gone = p.gantry(&["backup", "restore", "app", id, "--yes", "--output", "json"]);
    assert!(
        gone.stdout.contains("backup.not_found") || gone.stderr.contains("backup.not_found"),
        "{}{}",
        gone.stdout,
        gone.stderr
    );

    // A redeploy leaves them.
    std::fs::write(p.path().join("VERSION"), "2\n").expect("write");
    deploy(&p);
    assert_eq!(ids(&json(&p, &["backup", "list", "app"])).len(), 2);
}

/// The agent runs services as their own users only as root.
fn needs_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the agent runs services as their own users only as root"
    );
}

/// Restoring backup `id` of `app` fails, with `backup.failed`.
fn restore_fails(p: &TestProject, id: &str) {
    let refused = p.gantry(&["backup", "restore", "app", id, "--yes", "--output", "json"]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stdout.contains("backup.failed") || refused.stderr.contains("backup.failed"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
}

/// The database's directory is the service's: a link it plants there must
/// not lead the root agent's restore to another file of the host. A link
/// where the restore stages its copy is removed, not written through; a
/// database path that links elsewhere fails the restore, making nothing.
#[test]
fn links_a_service_plants_beside_its_database_lead_the_restore_nowhere_else() {
    needs_root();
    let data = shared_dir();
    let db = data.path().join("shop.db");
    sqlite(
        &db,
        "CREATE TABLE t(x TEXT); INSERT INTO t VALUES ('kept');",
    );
    // The service's database: its user writes it.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let p = shell(
        "test-bk-links",
        &format!(
            "[services.app]\nrun = \"sleep 600\"\nbackup = {{ schedule = \"0 3 * * *\", kind = \"sqlite\", path = \"{}\" }}\n",
            db.display()
        ),
    );
    deploy(&p);
    let id = backup_now(&p, "app")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    // Root's own files, in a directory only root enters.
    let private = tempfile::tempdir().expect("a directory");
    let keys = private.path().join("authorized_keys");
    std::fs::write(&keys, "ssh-ed25519 AAAA root\n").expect("write");

    std::os::unix::fs::symlink(&keys, data.path().join("shop.gantry-restore")).expect("link");
    let restored = json(&p, &["backup", "restore", "app", &id, "--yes"]);
    assert_eq!(restored["backups"][0]["id"], id.as_str());
    assert_eq!(sqlite(&db, "SELECT x FROM t;").trim(), "kept");
    assert_eq!(
        std::fs::read_to_string(&keys).expect("read"),
        "ssh-ed25519 AAAA root\n",
        "root's file is untouched"
    );

    let preload = private.path().join("ld.so.preload");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::os::unix::fs::symlink(&preload, &db).expect("link");
    restore_fails(&p, &id);
    assert!(!preload.exists(), "nothing made through the link");
}

/// A `files` backup is taken and put back as the service's own user: what
/// comes back is the service's, and a directory of root's the restore
/// would have to write through is refused to it.
#[test]
fn a_files_backup_is_restored_as_the_services_user() {
    needs_root();
    let data = shared_dir();
    let files = data.path().join("files");
    std::fs::create_dir_all(files.join("notes")).expect("mkdir");
    std::fs::write(files.join("notes/a.txt"), "one\n").expect("write");
    for dir in [&files, &files.join("notes")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let p = shell(
        "test-bk-files",
        &format!(
            "[services.app]\nrun = \"sleep 600\"\nbackup = {{ schedule = \"0 3 * * *\", kind = \"files\", path = \"{}\" }}\n",
            files.display()
        ),
    );
    deploy(&p);
    let taken = backup_now(&p, "app");
    assert_eq!(taken["kind"], "files", "{taken:#}");
    let id = taken["id"].as_str().expect("an id").to_owned();

    std::fs::write(files.join("notes/a.txt"), "changed\n").expect("write");
    json(&p, &["backup", "restore", "app", &id, "--yes"]);
    let restored = files.join("notes/a.txt");
    assert_eq!(std::fs::read_to_string(&restored).expect("read"), "one\n");
    let owner = std::fs::metadata(&restored).expect("stat").uid();
    assert_ne!(owner, 0, "put back as the service's user, not as root");

    // A directory root made there, closed to others: the service could not
    // write in it, so neither can its restore.
    std::fs::set_permissions(files.join("notes"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    restore_fails(&p, &id);
    assert_eq!(
        std::fs::read_to_string(&restored).expect("still there"),
        "one\n",
        "a restore that cannot finish removes nothing"
    );
}

#[test]
fn a_schedule_fires_keeps_its_count_and_a_failed_backup_shows_in_status() {
    let data = shared_dir();
    let db = data.path().join("app.db");
    sqlite(&db, "CREATE TABLE t(x); INSERT INTO t VALUES (1);");
    let p = shell(
        "test-bk-sched",
        &format!(
            "[services.app]\nrun = \"sleep 600\"\nbackup = {{ schedule = \"every 1s\", keep = 3, kind = \"sqlite\", path = \"{}\" }}\n",
            db.display()
        ),
    );
    deploy(&p);
    let deadline = Instant::now() + DEADLINE;
    let list = loop {
        let list = json(&p, &["backup", "list", "app"]);
        if ids(&list).len() >= 3 && list["backups"][0]["trigger"] == "schedule" {
            break list;
        }
        assert!(Instant::now() < deadline, "no scheduled backups: {list:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(list["schedule"], "every 1s");
    // The schedule keeps firing, and keep = 3 holds: polled until a newer
    // backup is listed and the oldest beyond three are gone (a backup is
    // recorded a moment before the oldest is removed).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let later = json(&p, &["backup", "list", "app"]);
        if ids(&later).first() != ids(&list).first() && ids(&later).len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no newer scheduled backup with keep = 3: {later:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The database disappears: the next backup fails, and status says so.
    std::fs::rename(&db, data.path().join("moved.db")).expect("move");
    let failed = wait_for_status(&p, "a failed backup", |s| {
        service(s, "app")["backup_failure"].is_object()
    });
    let message = service(&failed, "app")["backup_failure"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("no database at"), "{message}");
    let text = p.gantry(&["status", "--output", "text"]);
    assert!(text.stdout.contains("backup FAILED"), "{}", text.stdout);
    // Back: the next one succeeds and the failure is gone.
    std::fs::rename(data.path().join("moved.db"), &db).expect("move back");
    wait_for_status(&p, "the failure cleared", |s| {
        service(s, "app")["backup_failure"].is_null()
    });
}

fn docker(args: &[&str]) -> String {
    run("docker", args).trim().to_owned()
}

/// Removes the project's containers, network and volume.
struct Cleanup(&'static str, &'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let listed = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=dev.gantry.project={}", self.0),
            ])
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("gantry-{}-local", self.0)])
            .output();
        let _ = Command::new("docker")
            .args([
                "volume",
                "rm",
                "-f",
                &format!("gantry-{}-local-{}", self.0, self.1),
            ])
            .output();
    }
}

/// `docker exec` with `args` until it succeeds (a database may still be
/// starting), for at most `wait`: its output, trimmed. `tool` names it in
/// the failure.
fn exec_until_up(tool: &str, args: &[&str], wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        let out = Command::new("docker")
            .arg("exec")
            .args(args)
            .output()
            .expect("docker exec");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `gantry backup pull` of backup `id` of `service` to `to`.
fn pull(p: &TestProject, service: &str, id: &str, to: &Path) -> Value {
    json(
        p,
        &[
            "backup",
            "pull",
            service,
            id,
            "--to",
            &to.display().to_string(),
        ],
    )
}

fn container(project: &str, report: &Value, name: &str) -> String {
    let id = service(report, name)["instances"][0]["id"]
        .as_str()
        .expect("an instance");
    format!("gantry-{project}-{id}")
}

/// Every file under `dir`: path, mode, owner and sha256 of its bytes.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(at) = todo.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir").flatten() {
            let path: PathBuf = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let what = if meta.is_dir() {
                todo.push(path.clone());
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).expect("link").display())
            } else {
                run("sha256sum", &[&path.display().to_string()])
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            };
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.push(format!(
                "{relative} {:o} {}:{} {what}",
                meta.mode(),
                meta.uid(),
                meta.gid()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_volume_is_backed_up_and_restored_identical() {
    let image = gantry_testkit::images::redis();
    let name = "test-bk-volume";
    let _cleanup = Cleanup(name, "data");
    let p = shell(
        name,
        &format!(
            "[services.db]\nimage = \"{image}\"\nport = 6379\nhealth = {{ tcp = true, interval = \"100ms\", timeout = \"1s\" }}\nvolumes = [\"data:/var/lib/redis\"]\nstop_timeout = \"5s\"\nbackup = {{ schedule = \"0 3 * * *\" }}\n"
        ),
    );
    deploy(&p);
    let mountpoint = PathBuf::from(docker(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        &format!("gantry-{name}-local-data"),
    ]));
    let mine = mountpoint.join("mine");
    std::fs::create_dir_all(mine.join("nested/deeper")).expect("mkdir");
    std::fs::write(
        mine.join("nested/deeper/big.bin"),
        run("head", &["-c", "3000000", "/dev/urandom"]),
    )
    .expect("write");
    std::fs::write(mine.join("small.txt"), "hello\n").expect("write");
    std::fs::set_permissions(
        mine.join("small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    std::os::unix::fs::chown(mine.join("small.txt"), Some(999), Some(999)).expect("chown");
    std::os::unix::fs::symlink("small.txt", mine.join("link")).expect("symlink");
    let written = tree(&mine);

    let taken = backup_now(&p, "db");
    assert_eq!(taken["kind"], "volumes", "{taken:#}");
    std::fs::remove_dir_all(&mine).expect("destroy");
    let id = taken["id"].as_str().expect("an id");
    json(&p, &["backup", "restore", "db", id, "--yes"]);
    assert_eq!(tree(&mine), written, "restored identical");
    let now = wait_for_status(&p, "db running", |s| service(s, "db")["state"] == "running");
    assert!(container(name, &now, "db").starts_with("gantry-"));

    // Pulled to this machine, checked against its sha256.
    let to = p.path().join("db.tar.zst");
    let pulled = pull(&p, "db", id, &to);
    let sha = run("sha256sum", &[&to.display().to_string()]);
    assert_eq!(
        Some(sha.split_whitespace().next().unwrap_or("")),
        pulled["backups"][0]["sha256"].as_str()
    );
    assert_eq!(
        std::fs::metadata(&to).expect("pulled").mode() & 0o777,
        0o600
    );
}

#[test]
fn a_postgres_database_is_dumped_and_restored_identical() {
    let image = gantry_testkit::images::postgres();
    let name = "test-bk-pg";
    let _cleanup = Cleanup(name, "pgdata");
    let p = shell(
        name,
        &format!(
            "[services.db]\nimage = \"{image}\"\nport = 5432\nhealth = {{ tcp = true, interval = \"200ms\", timeout = \"1s\", start_period = \"30s\" }}\nvolumes = [\"pgdata:/var/lib/postgresql/data\"]\nenv = {{ POSTGRES_PASSWORD = \"pw\", POSTGRES_DB = \"shop\" }}\nstop_timeout = \"10s\"\nbackup = {{ schedule = \"0 3 * * *\", keep = 3, kind = \"postgres\" }}\n"
        ),
    );
    let db = container(name, &deploy(&p), "db");
    let psql = |sql: &str| {
        exec_until_up(
            "psql",
            &[&db, "psql", "-U", "postgres", "-d", "shop", "-tAc", sql],
            DEADLINE,
        )
    };
    psql(
        "CREATE TABLE orders(id serial PRIMARY KEY, item text, n int); INSERT INTO orders(item, n) SELECT md5(i::text), i FROM generate_series(1, 20000) i;",
    );
    let digest =
        "SELECT count(*) || ':' || md5(string_agg(id || item || n, ',' ORDER BY id)) FROM orders";
    let written = psql(digest);

    let taken = backup_now(&p, "db");
    assert_eq!(taken["kind"], "postgres", "{taken:#}");
    psql("DROP TABLE orders");
    let id = taken["id"].as_str().expect("an id");
    json(&p, &["backup", "restore", "db", id, "--yes"]);
    assert_eq!(psql(digest), written, "restored identical");

    // The dump is PostgreSQL's custom format, pulled intact.
    let to = p.path().join("db.pgdump");
    pull(&p, "db", id, &to);
    let bytes = std::fs::read(&to).expect("pulled");
    assert!(bytes.starts_with(b"PGDMP"), "not a pg_dump archive");
    // Nothing of the password in the backup's record or the agent's answers.
    let list = p.gantry(&["backup", "list", "db", "--output", "json"]);
    assert!(!list.stdout.contains("pw\""), "{}", list.stdout);
    let _ = status(&p);
}

#[test]
fn a_mariadb_database_is_dumped_and_restored() {
    let image = gantry_testkit::images::mariadb();
    let name = "test-bk-maria";
    let _cleanup = Cleanup(name, "mysql");
    let p = shell(
        name,
        &format!(
            "[services.db]\nimage = \"{image}\"\nport = 3306\nhealth = {{ tcp = true, interval = \"200ms\", timeout = \"1s\", start_period = \"60s\" }}\nvolumes = [\"mysql:/var/lib/mysql\"]\nenv = {{ MARIADB_ROOT_PASSWORD = \"s3cret-pw\", MARIADB_DATABASE = \"shop\" }}\nstop_timeout = \"10s\"\nbackup = {{ schedule = \"0 3 * * *\", kind = \"mysql\" }}\n"
        ),
    );
    let db = container(name, &deploy(&p), "db");
    let sql = |query: &str| {
        exec_until_up(
            "mariadb",
            &[
                "-e",
                "MYSQL_PWD=s3cret-pw",
                &db,
                "mariadb",
                "-uroot",
                "-N",
                "-B",
                "shop",
                "-e",
                query,
            ],
            DEADLINE * 3,
        )
    };
    sql(
        "CREATE TABLE orders(id INT PRIMARY KEY, item VARCHAR(40)); INSERT INTO orders VALUES (1, 'apple'), (2, 'pear')",
    );
    let rows = "SELECT id, item FROM orders ORDER BY id";
    let written = sql(rows);
    assert_eq!(written, "1\tapple\n2\tpear");

    let taken = backup_now(&p, "db");
    assert_eq!(taken["kind"], "mysql", "{taken:#}");
    sql(
        "UPDATE orders SET item = 'changed' WHERE id = 1; DELETE FROM orders WHERE id = 2; INSERT INTO orders VALUES (3, 'new')",
    );
    assert_ne!(sql(rows), written);
    let id = taken["id"].as_str().expect("an id");
    json(&p, &["backup", "restore", "db", id, "--yes"]);
    assert_eq!(sql(rows), written, "the rows as backed up");

    // The dump is SQL, compressed, and holds no password of the container.
    let to = p.path().join("db.sql.zst");
    pull(&p, "db", id, &to);
    let dump = run("zstd", &["-dc", &to.display().to_string()]);
    assert!(dump.contains("INSERT INTO `orders`"), "not the dump");
    let list = p.gantry(&["backup", "list", "db", "--output", "json"]);
    assert!(!list.stdout.contains("s3cret-pw"), "{}", list.stdout);
    let _ = status(&p);
}
