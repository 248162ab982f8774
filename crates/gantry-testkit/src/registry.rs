//! A container registry of a test's own: Debian's `docker-registry`
//! (Distribution 2.8) with a config of its own, listening on a free port of
//! 127.0.0.1 (Docker talks plain HTTP to registries on 127.0.0.0/8 without
//! being told to), storing in a temporary directory. It dies with the test:
//! killed on drop (a failed assertion unwinds through it), and, should the
//! test process be killed instead, by the kernel (`setpriv --pdeathsig`).
//!
//! Needs `docker-registry` (Debian's package of that name).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    dir: tempfile::TempDir,
    process: Child,
    port: u16,
}

impl Registry {
    /// Whether `docker-registry` is installed.
    pub fn installed() -> bool {
        crate::installed("docker-registry")
    }

    /// Starts a registry and waits until it answers `GET /v2/`.
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("gantry-registry-")
            .tempdir()
            .expect("create the registry's directory");
        let port = crate::free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(&dir.path().join("data"), port))
            .expect("write the registry's config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("create its log");
        let process = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("its log, twice"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry { dir, process, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(crate::http_get(port, "/v2/"), Ok((200, _))) {
            if let Ok(Some(exit)) = registry.process.try_wait() {
                panic!("docker-registry exited ({exit}): {}", registry.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry does not answer on port {port}: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `127.0.0.1:PORT`, the start of the names of images pushed to it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry now: where it was, nothing answers.
    pub fn stop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// What the registry logged, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Plain HTTP on loopback, no authentication, blobs under `data`.
fn config_yaml(data: &Path, port: u16) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        data.display()
    )
}
