//! The agent of this machine: its Unix socket under the state directory, and
//! starting it in the background when none answers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gantry_core::agent_dir::Paths;
use gantry_core::host::{AGENT_UNIT_FILE, Host, HostError, SYSTEM_STATE_DIR};

use crate::agent::{Agent, Transport};
use crate::client::{Client, ClientError};

const START_DEADLINE: Duration = Duration::from_secs(15);

/// What an agent started here takes from this command's environment. The
/// agent outlives the command, so nothing else does: a secret given to
/// `deploy` as a variable must not live on in the agent's environment.
const AGENT_ENV: [&str; 14] = [
    "GANTRY_AGENT_PORTS",
    // The Docker engine the agent runs image services on (unix:// only).
    "DOCKER_HOST",
    "GANTRY_PROXY_LISTEN",
    "GANTRY_PROXY_HTTPS",
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "NO_COLOR",
];

/// The agent of this machine, on its Unix socket.
pub type LocalAgent = Agent<Local>;

/// The transport to this machine's agent: its socket in `state_dir`.
pub struct Local {
    state_dir: PathBuf,
    /// The binary that starts the agent, to start it again should it stop
    /// answering mid-command (killed, crashed); None when something else
    /// runs it (the systemd unit `gantry configure` writes restarts it
    /// itself, in its sandbox).
    starts_with: Option<PathBuf>,
    /// How many times it was started again.
    revived: AtomicU32,
}

/// How many times one command starts an agent that stopped answering.
const REVIVALS: u32 = 3;

fn socket(state_dir: &Path) -> PathBuf {
    Paths::new(state_dir).socket()
}

impl Local {
    fn unreachable(&self, host: &str, message: String) -> HostError {
        HostError::Unreachable {
            host: host.to_owned(),
            message,
            hint: format!(
                "start it with `gantry agent --state-dir {}`, and see {} for why it stopped",
                self.state_dir.display(),
                Paths::new(&self.state_dir).agent_log().display()
            ),
        }
    }
}

impl Transport for Local {
    fn error(&self, host: &str, error: ClientError) -> HostError {
        match error {
            ClientError::Connect(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let socket = socket(&self.state_dir);
                HostError::Unreachable {
                    host: host.to_owned(),
                    message: format!("no agent runs here ({} does not exist)", socket.display()),
                    hint: "`gantry deploy` starts it, as does `gantry agent`".to_owned(),
                }
            }
            ClientError::Connect(e) => self.unreachable(host, e.to_string()),
            other => self.unreachable(host, format!("the connection broke: {other}")),
        }
    }

    fn revive(&self, host: &str) -> bool {
        let Some(exe) = &self.starts_with else {
            return false;
        };
        if self.revived.fetch_add(1, Ordering::SeqCst) >= REVIVALS {
            return false;
        }
        // Another thread or command may have started it meanwhile.
        if LocalAgent::connect(host, &self.state_dir).is_ok() {
            return true;
        }
        tracing::warn!("agent {host}: stopped answering; starting it again");
        match LocalAgent::start(host, &self.state_dir, exe) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("agent {host}: {e}");
                false
            }
        }
    }

    fn stopped(&self) {
        // Wait until it is gone, so `gantry agent stop` means stopped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while socket(&self.state_dir).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Agent<Local> {
    /// Connects to the agent of `state_dir`, without starting one.
    pub fn connect(name: &str, state_dir: &Path) -> Result<LocalAgent, HostError> {
        Self::connect_served_by(name, state_dir, None)
    }

    /// `connect`, talking only to an agent that runs as `uid` (when given):
    /// what a command that trusts the agent's answers (`agent exec`) needs.
    pub fn connect_served_by(
        name: &str,
        state_dir: &Path,
        uid: Option<u32>,
    ) -> Result<LocalAgent, HostError> {
        let client =
            Client::unix(name, &socket(state_dir), uid).map_err(|e| HostError::Unreachable {
                host: name.to_owned(),
                message: e.to_string(),
                hint: String::new(),
            })?;
        let agent = LocalAgent {
            name: name.to_owned(),
            client,
            transport: Local {
                state_dir: state_dir.to_owned(),
                starts_with: None,
                revived: AtomicU32::new(0),
            },
        };
        agent.info()?;
        Ok(agent)
    }

    /// Connects to the agent of `state_dir` that something else runs (a
    /// systemd unit), waiting up to `patience` for it to answer: it may be
    /// starting. Never starts one.
    pub fn wait_for(
        name: &str,
        state_dir: &Path,
        patience: Duration,
    ) -> Result<LocalAgent, HostError> {
        let deadline = Instant::now() + patience;
        loop {
            match Self::connect(name, state_dir) {
                Ok(agent) => return Ok(agent),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Connects, starting `exe agent --state-dir DIR` in the background first
    /// if nothing answers. Its output goes to `agent.log` in the state
    /// directory. An agent that stops answering later, while this command
    /// talks to it, is started again the same way (up to 3 times).
    pub fn connect_or_start(
        name: &str,
        state_dir: &Path,
        exe: &Path,
    ) -> Result<LocalAgent, HostError> {
        let mut agent = match Self::connect(name, state_dir) {
            Ok(agent) => agent,
            Err(_) => Self::start(name, state_dir, exe)?,
        };
        let systemds =
            Path::new(AGENT_UNIT_FILE).exists() && state_dir == Path::new(SYSTEM_STATE_DIR);
        if !systemds {
            agent.transport.starts_with = Some(exe.to_owned());
        }
        Ok(agent)
    }

    /// Starts `exe agent --state-dir DIR` in the background and connects
    /// once it answers.
    fn start(name: &str, state_dir: &Path, exe: &Path) -> Result<LocalAgent, HostError> {
        let log_path = Paths::new(state_dir).agent_log();
        let fail = |message: String| HostError::Unreachable {
            host: name.to_owned(),
            message,
            hint: format!("see {}", log_path.display()),
        };
        // Private, as the agent would make it: it holds logs and secrets.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", state_dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(format!("cannot open the agent's log: {e}")))?;
        let err = log.try_clone().map_err(|e| fail(e.to_string()))?;
        tracing::info!(
            "agent {name}: none answers; starting `{} agent --state-dir {}`",
            exe.display(),
            state_dir.display()
        );
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(exe)
            .arg("agent")
            .arg("--state-dir")
            .arg(state_dir)
            .env_clear()
            .envs(
                AGENT_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            // glibc's per-thread malloc arenas grow a long-lived agent by tens
            // of kilobytes a deploy; two arenas keep it flat (bench/deploy).
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a Ctrl+C at this terminal is not meant for it.
            .process_group(0)
            .spawn()
            .map_err(|e| fail(format!("cannot start `{} agent`: {e}", exe.display())))?;
        let started = Instant::now();
        loop {
            if let Ok(agent) = Self::connect(name, state_dir) {
                tracing::info!(
                    "agent {name}: started (pid {}) in {:.1?}",
                    child.id(),
                    started.elapsed()
                );
                // The agent outlives this process; reap it if it ever exits first.
                std::thread::spawn(move || child.wait());
                return Ok(agent);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = tail.lines().last().unwrap_or_default().to_owned();
                return Err(fail(format!(
                    "the agent exited ({status}) as it started: {last}"
                )));
            }
            if started.elapsed() > START_DEADLINE {
                return Err(fail(format!(
                    "the agent did not answer within {}s",
                    START_DEADLINE.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
