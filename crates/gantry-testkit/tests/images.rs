//! The test images are real servers: each one, started as a container,
//! answers its own client. Needs root, Docker and debootstrap (CI has them);
//! the images are built once and cached.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gantry_testkit::images;

/// A container removed on drop.
struct Container(String);

impl Container {
    fn run(name: &str, args: &[&str]) -> Container {
        let name = format!("gantry-test-images-{name}-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let output = Command::new("docker")
            .args(["run", "-d", "--name", &name])
            .args(args)
            .output()
            .expect("run docker run");
        assert!(
            output.status.success(),
            "docker run {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Container(name)
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["exec", &self.0])
            .args(args)
            .output()
            .expect("run docker exec")
    }

    /// Polls `args` until it succeeds; its stdout, trimmed.
    fn exec_until_ok(&self, args: &[&str]) -> String {
        let started = Instant::now();
        loop {
            let output = self.exec(args);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).trim().to_owned();
            }
            if started.elapsed() > Duration::from_secs(60) {
                let logs = Command::new("docker")
                    .args(["logs", &self.0])
                    .output()
                    .expect("run docker logs");
                panic!(
                    "`{}` in {} kept failing: {}\nlogs: {}{}",
                    args.join(" "),
                    self.0,
                    String::from_utf8_lossy(&output.stderr),
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn redis_image_answers_ping_and_keeps_a_value() {
    let image = images::redis();
    let redis = Container::run("redis", &[&image]);
    assert_eq!(redis.exec_until_ok(&["redis-cli", "ping"]), "PONG");
    assert_eq!(
        redis.exec_until_ok(&["redis-cli", "set", "greeting", "hello"]),
        "OK"
    );
    assert_eq!(
        redis.exec_until_ok(&["redis-cli", "get", "greeting"]),
        "hello"
    );
    // Cached by content: asking again builds nothing and names the same image.
    assert_eq!(images::redis(), image);
}

#[test]
fn postgres_image_initializes_with_a_password_file_and_answers_sql() {
    let image = images::postgres();
    let dir = tempfile::tempdir().expect("create a directory");
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret-pg\n").expect("write the password");
    let postgres = Container::run(
        "postgres",
        &[
            "-e",
            "POSTGRES_PASSWORD_FILE=/run/secrets/password",
            "-e",
            "POSTGRES_DB=shop",
            "-v",
            &format!("{}:/run/secrets/password:ro", secret.display()),
            &image,
        ],
    );
    // Over TCP with the password: host auth is scram-sha-256.
    let answer = postgres.exec_until_ok(&[
        "sh",
        "-c",
        "PGPASSWORD=s3cret-pg psql -h 127.0.0.1 -U postgres -d shop -tAc 'select 40 + 2'",
    ]);
    assert_eq!(answer, "42");
    let refused = postgres.exec(&[
        "sh",
        "-c",
        "PGPASSWORD=wrong psql -h 127.0.0.1 -U postgres -d shop -tAc 'select 1'",
    ]);
    assert!(
        !refused.status.success(),
        "a wrong password was accepted: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
}

#[test]
fn mariadb_image_initializes_root_and_a_database() {
    let image = images::mariadb();
    let mariadb = Container::run(
        "mariadb",
        &[
            "-e",
            "MARIADB_ROOT_PASSWORD=it's-secret",
            "-e",
            "MARIADB_DATABASE=tracker",
            &image,
        ],
    );
    let answer = mariadb.exec_until_ok(&[
        "mariadb",
        "-h",
        "127.0.0.1",
        "-uroot",
        "-pit's-secret",
        "tracker",
        "-Nse",
        "select 40 + 2",
    ]);
    assert_eq!(answer, "42");
}
