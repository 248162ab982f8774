//! Podman's Docker-compatible API of a test's own: `podman system service`
//! on a Unix socket in a temporary directory, for an agent whose
//! `DOCKER_HOST` names it. Podman keeps its images and containers where it
//! always does (/var/lib/containers), apart from Docker's. The service dies
//! with the test: killed on drop, and by the kernel should the test process
//! be killed (`setpriv --pdeathsig`).
//!
//! Its own containers.conf pins the containers' open-files and processes
//! limits: Podman 4.3 gives a root container the highest it can, which a
//! root without CAP_SYS_RESOURCE (a sandbox's, as where Gantry's tests
//! run) cannot set, and runc refuses to start them (`error setting
//! rlimits`). Soft and hard are equal: the compatible API swaps them.
//!
//! Needs root and `podman` (Debian's package).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Podman {
    dir: tempfile::TempDir,
    service: Child,
}

impl Podman {
    /// Whether `podman` is installed.
    pub fn installed() -> bool {
        crate::installed("podman")
    }

    /// Starts the service and waits until its socket answers.
    pub fn start() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("gantry-podman-")
            .tempdir()
            .expect("create the service's directory");
        let config = dir.path().join("containers.conf");
        std::fs::write(
            &config,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={0}:{0}\", \"nproc=4096:4096\"]\n",
                open_files_limit()
            ),
        )
        .expect("write containers.conf");
        let log = std::fs::File::create(dir.path().join("podman.log")).expect("create its log");
        let socket = dir.path().join("podman.sock");
        let service = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "podman", "system", "service"])
            .args(["--time=0", &format!("unix://{}", socket.display())])
            .env("CONTAINERS_CONF", &config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("its log, twice"))
            .stderr(log)
            .spawn()
            .expect("start podman system service");
        let mut podman = Podman { dir, service };
        let deadline = Instant::now() + Duration::from_secs(30);
        while podman.docker(&["version"]).is_err() {
            if let Ok(Some(exit)) = podman.service.try_wait() {
                panic!("podman system service exited ({exit}): {}", podman.log());
            }
            assert!(
                Instant::now() < deadline,
                "podman's socket does not answer: {}",
                podman.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        podman
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    /// `DOCKER_HOST` for the service.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The docker CLI, talking to Podman: its output, or its error output.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        crate::docker_at(Some(&self.docker_host()), args)
    }

    /// Copies `image` from the machine's Docker Engine into Podman's store
    /// (`docker save | docker load`, the second through Podman's socket).
    pub fn load_from_docker(&self, image: &str) {
        let script = r#"docker save "$1" | DOCKER_HOST="$2" docker load"#;
        let output = Command::new("sh")
            .args(["-c", script, "sh", image, &self.docker_host()])
            .output()
            .expect("run docker save | docker load");
        assert!(
            output.status.success(),
            "loading {image} into Podman failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// What the service logged, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("podman.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// The hard limit of open files this process has, which a container may
/// have too.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .to_owned();
            line.split_whitespace().nth(4)?.parse().ok()
        })
        .unwrap_or(1024)
}
