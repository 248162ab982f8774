//! A throwaway PostgreSQL server from Debian's packages (`postgresql`):
//! initdb in a temporary directory, started with pg_ctl on a free loopback
//! port, stopped and removed on drop. PostgreSQL refuses to run as root, so
//! as root it runs as the `postgres` user the package creates.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: `apt-get install postgresql` (see .ci/run)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let version = versions
        .last()
        .expect("no PostgreSQL version under /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a PostgreSQL tool, as `postgres` when we are root.
fn run(bin: &Path, tool: &str, args: &[&str]) {
    if let Err(e) = try_run(bin, tool, args) {
        panic!("{e}");
    }
}

fn try_run(bin: &Path, tool: &str, args: &[&str]) -> Result<(), String> {
    let tool = bin.join(tool);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&tool);
        c
    } else {
        Command::new(&tool)
    };
    let output = command
        .args(args)
        .current_dir("/")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {args:?} failed: {}{}",
            tool.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl PgCluster {
    /// A new, empty cluster, running; its superuser is `postgres`, trusted
    /// on loopback without a password.
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("gantry-pg-")
            .tempdir()
            .expect("create a temporary directory");
        if is_root() {
            let uid = nix::unistd::User::from_name("postgres")
                .expect("read the user database")
                .expect("no `postgres` user: `apt-get install postgresql` creates it");
            std::os::unix::fs::chown(dir.path(), Some(uid.uid.as_raw()), Some(uid.gid.as_raw()))
                .expect("give the cluster's directory to postgres");
        }
        let data = dir.path().join("data");
        let data = data.to_str().expect("a UTF-8 temporary path");
        run(
            &bin,
            "initdb",
            &[
                "-D", data, "-U", "postgres", "-A", "trust", "-N", "-E", "UTF8",
            ],
        );
        // A port can be taken between finding it free and binding it: retry.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let options = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {data} -c fsync=off -c max_connections=200"
            );
            let log = format!("{data}/server.log");
            let started = try_run(
                &bin,
                "pg_ctl",
                &[
                    "-D", data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
                ],
            );
            match started {
                Ok(()) => return PgCluster { dir, bin, port },
                Err(e) => {
                    last = format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
                }
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// Creates a database and returns its URL.
    pub fn database(&self, name: &str) -> String {
        let port = self.port.to_string();
        run(
            &self.bin,
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name],
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        if let Some(data) = data.to_str() {
            let _ = try_run(
                &self.bin,
                "pg_ctl",
                &["-D", data, "-m", "immediate", "-w", "stop"],
            );
        }
    }
}
