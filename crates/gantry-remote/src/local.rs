//! The agent of this machine: its Unix socket under the state directory, and
//! starting it in the background when none answers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_core::agent_api::{
    AgentInfo, ApiErrorBody, BlobList, DeployRequest, DeployResult, LogLine, ProxyAction,
    ProxyInfo, Release, RollbackRequest, ServiceSelector, Status,
};
use gantry_core::host::{Host, HostError, LogQuery};
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, ClientError};

const START_DEADLINE: Duration = Duration::from_secs(15);

/// What an agent started here takes from this command's environment. The
/// agent outlives the command, so nothing else does: a secret given to
/// `deploy` as a variable must not live on in the agent's environment.
const AGENT_ENV: [&str; 12] = [
    "GANTRY_AGENT_PORTS",
    "GANTRY_PROXY_LISTEN",
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

pub struct LocalAgent {
    name: String,
    state_dir: PathBuf,
    client: Client,
}

fn socket(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.sock")
}

impl LocalAgent {
    fn unreachable(&self, message: String) -> HostError {
        HostError::Unreachable {
            host: self.name.clone(),
            message,
            hint: format!(
                "start it with `gantry agent --state-dir {}`, and see {} for why it stopped",
                self.state_dir.display(),
                self.state_dir.join("agent.log").display()
            ),
        }
    }

    /// Connects to the agent of `state_dir`, without starting one.
    pub fn connect(name: &str, state_dir: &Path) -> Result<LocalAgent, HostError> {
        let client = Client::new(&socket(state_dir)).map_err(|e| HostError::Unreachable {
            host: name.to_owned(),
            message: e.to_string(),
            hint: String::new(),
        })?;
        let agent = LocalAgent {
            name: name.to_owned(),
            state_dir: state_dir.to_owned(),
            client,
        };
        agent.info()?;
        Ok(agent)
    }

    /// Connects, starting `exe agent --state-dir DIR` in the background first
    /// if nothing answers. Its output goes to `agent.log` in the state directory.
    pub fn connect_or_start(
        name: &str,
        state_dir: &Path,
        exe: &Path,
    ) -> Result<LocalAgent, HostError> {
        if let Ok(agent) = Self::connect(name, state_dir) {
            return Ok(agent);
        }
        let fail = |message: String| HostError::Unreachable {
            host: name.to_owned(),
            message,
            hint: format!("see {}", state_dir.join("agent.log").display()),
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
            .open(state_dir.join("agent.log"))
            .map_err(|e| fail(format!("cannot open the agent's log: {e}")))?;
        let err = log.try_clone().map_err(|e| fail(e.to_string()))?;
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
                // The agent outlives this process; reap it if it ever exits first.
                std::thread::spawn(move || child.wait());
                return Ok(agent);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(state_dir.join("agent.log")).unwrap_or_default();
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

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<T, HostError> {
        let (status, bytes) = self
            .client
            .call(method, path, body, content_type)
            .map_err(|e| self.transport(e))?;
        self.decode(status, &bytes)
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, HostError> {
        let body = serde_json::to_vec(body).map_err(|e| HostError::Protocol {
            host: self.name.clone(),
            message: e.to_string(),
        })?;
        self.call(method, path, Some(body), "application/json")
    }

    fn transport(&self, error: ClientError) -> HostError {
        match error {
            ClientError::Connect(e) => self.unreachable(e.to_string()),
            ClientError::Http(e) => self.unreachable(format!("the connection broke: {e}")),
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        status: StatusCode,
        bytes: &[u8],
    ) -> Result<T, HostError> {
        if status.is_success() {
            let bytes = if bytes.is_empty() {
                b"null".as_slice()
            } else {
                bytes
            };
            return serde_json::from_slice(bytes).map_err(|e| HostError::Protocol {
                host: self.name.clone(),
                message: e.to_string(),
            });
        }
        match serde_json::from_slice::<ApiErrorBody>(bytes) {
            Ok(body) => Err(HostError::Api {
                status: status.as_u16(),
                error: body.error,
            }),
            Err(_) => Err(HostError::Protocol {
                host: self.name.clone(),
                message: format!("{status}: {}", String::from_utf8_lossy(bytes)),
            }),
        }
    }
}

/// Percent-encodes a path segment or query value (names are simple, but be safe).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Host for LocalAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> Result<AgentInfo, HostError> {
        self.call(Method::GET, "/v1/health", None, "application/json")
    }

    fn missing_blobs(&self, digests: &[String]) -> Result<Vec<String>, HostError> {
        let list: BlobList = self.json(
            Method::POST,
            "/v1/blobs/missing",
            &BlobList {
                digests: digests.to_vec(),
            },
        )?;
        Ok(list.digests)
    }

    fn upload_blob(&self, digest: &str, path: &Path) -> Result<(), HostError> {
        let bytes = std::fs::read(path).map_err(|e| HostError::Protocol {
            host: self.name.clone(),
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        let _: serde_json::Value = self.call(
            Method::PUT,
            &format!("/v1/blobs/{}", encode(digest)),
            Some(bytes),
            "application/octet-stream",
        )?;
        Ok(())
    }

    fn deploy(&self, request: &DeployRequest) -> Result<DeployResult, HostError> {
        self.json(
            Method::POST,
            &format!("/v1/projects/{}/deploys", encode(&request.project)),
            request,
        )
    }

    fn rollback(
        &self,
        project: &str,
        request: &RollbackRequest,
    ) -> Result<DeployResult, HostError> {
        self.json(
            Method::POST,
            &format!("/v1/projects/{}/rollback", encode(project)),
            request,
        )
    }

    fn status(&self, project: &str) -> Result<Status, HostError> {
        self.call(
            Method::GET,
            &format!("/v1/projects/{}/status", encode(project)),
            None,
            "application/json",
        )
    }

    fn releases(&self, project: &str) -> Result<Vec<Release>, HostError> {
        self.call(
            Method::GET,
            &format!("/v1/projects/{}/releases", encode(project)),
            None,
            "application/json",
        )
    }

    fn release(&self, project: &str, id: &str) -> Result<Release, HostError> {
        self.call(
            Method::GET,
            &format!("/v1/projects/{}/releases/{}", encode(project), encode(id)),
            None,
            "application/json",
        )
    }

    fn logs(
        &self,
        project: &str,
        query: &LogQuery,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), HostError> {
        let mut params = vec![format!("follow={}", query.follow)];
        if let Some(service) = &query.service {
            params.push(format!("service={}", encode(service)));
        }
        if let Some(since) = query.since_ms {
            params.push(format!("since_ms={since}"));
        }
        if let Some(tail) = query.tail {
            params.push(format!("tail={tail}"));
        }
        let path = format!("/v1/projects/{}/logs?{}", encode(project), params.join("&"));
        let mut bad: Option<String> = None;
        let mut error_body = Vec::new();
        let status = self
            .client
            .stream_lines(
                &path,
                &mut |line| match serde_json::from_slice::<LogLine>(line) {
                    Ok(parsed) => sink(parsed),
                    Err(e) => {
                        error_body.extend_from_slice(line);
                        bad = Some(e.to_string());
                        false
                    }
                },
            )
            .map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return self
                .decode::<serde_json::Value>(status, &error_body)
                .map(drop);
        }
        match bad {
            Some(message) => Err(HostError::Protocol {
                host: self.name.clone(),
                message,
            }),
            None => Ok(()),
        }
    }

    fn stop(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError> {
        self.json(
            Method::POST,
            &format!("/v1/projects/{}/stop", encode(project)),
            selector,
        )
    }

    fn restart(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError> {
        self.json(
            Method::POST,
            &format!("/v1/projects/{}/restart", encode(project)),
            selector,
        )
    }

    fn proxy(&self, action: ProxyAction) -> Result<ProxyInfo, HostError> {
        let path = match action {
            ProxyAction::Restart => "/v1/proxy/restart",
            ProxyAction::Stop => "/v1/proxy/stop",
        };
        self.call(Method::POST, path, None, "application/json")
    }

    fn shutdown(&self) -> Result<(), HostError> {
        let (status, bytes) = self
            .client
            .call(Method::POST, "/v1/shutdown", None, "application/json")
            .map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return self.decode::<serde_json::Value>(status, &bytes).map(drop);
        }
        // Wait until it is gone, so `gantry agent stop` means stopped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while socket(&self.state_dir).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }
}
