//! The host's reverse proxy, run as its own process (`gantry proxy`) so an
//! agent restart never drops a connection. The agent starts it (or reuses the
//! one whose control socket answers), restarts it when its process dies, and
//! after every change of live instances replaces its whole route table from
//! the store. With no proxy running every call here does nothing.
//!
//! `restart` replaces the proxy process without refusing a connection: a new
//! `gantry proxy --take-over` receives the running one's listening sockets
//! over its handoff socket, and the old one finishes its open requests and
//! exits. The agent does that on its own when the proxy runs another gantry
//! binary than the agent (an upgrade). `stop` ends the proxy; its route
//! table stays in `routes.json` for the next one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::{InstanceState, ProxyInfo};
use gantry_proxy::{DrainReport, DrainRequest, Health};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use gantry_core::Code;
use gantry_core::agent_dir::Paths;

use crate::error::AgentError;
use crate::store::{InstanceRecord, SharedStore};

/// How long the proxy may take to answer on its control socket after starting.
const START_DEADLINE: Duration = Duration::from_secs(5);
/// How often the agent checks that the proxy it started still runs.
const CHECK_EVERY: Duration = Duration::from_secs(3);
/// The longest a cutover waits for requests to the old instances to finish.
const MAX_DRAIN: Duration = Duration::from_secs(30);
/// How long a stopped proxy gets to finish its open requests and exit (its
/// own shutdown timeout is 10 s).
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// The agent's handle on the proxy.
pub struct Proxy {
    listen: Option<SocketAddr>,
    /// Where the proxy accepts HTTPS; `None`: plain HTTP only.
    https: Option<SocketAddr>,
    socket: PathBuf,
    up: AtomicBool,
    /// Why the last start left the host without a proxy, for status and
    /// `gantry test` (the log has it too).
    problem: Mutex<Option<String>>,
    /// The process when this agent started it (so it can be reaped).
    child: Mutex<Option<std::process::Child>>,
    /// One table update at a time, so an older table never lands last.
    updating: tokio::sync::Mutex<()>,
    /// The gantry binary, to start the proxy with.
    exe: PathBuf,
    paths: Paths,
    /// Where the route table comes from.
    store: SharedStore,
}

/// What a cutover's hook answers: `Err` says why the new instances cannot
/// take the traffic (the proxy refused the route table), and the service
/// goes back to its old instances.
pub(crate) type Switched<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// Something that must happen when a service's live instances change, after
/// the store's switch and before the old instances (on `old_ports`) stop:
/// the proxy's route swap and drain ([`Proxy`]'s).
pub(crate) trait Cutover: Send + Sync {
    fn switch<'a>(&'a self, service: &'a ServiceSpec, old_ports: &'a [u16]) -> Switched<'a>;
}

impl Proxy {
    pub(crate) fn new(
        paths: &Paths,
        exe: PathBuf,
        store: SharedStore,
        listen: Option<SocketAddr>,
        https: Option<SocketAddr>,
    ) -> Proxy {
        Proxy {
            listen,
            https,
            socket: gantry_proxy::ProxyDir::new(paths.proxy()).control_socket(),
            up: AtomicBool::new(false),
            problem: Mutex::new(None),
            child: Mutex::new(None),
            updating: tokio::sync::Mutex::new(()),
            exe,
            paths: paths.clone(),
            store,
        }
    }

    /// Where clients reach the proxy, when one runs.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen.filter(|_| self.up.load(Ordering::SeqCst))
    }

    /// Where clients reach the proxy over HTTPS, when one runs with it.
    pub fn https(&self) -> Option<SocketAddr> {
        self.https.filter(|_| self.up.load(Ordering::SeqCst))
    }

    /// The ports the proxy is configured to listen on, whether or not it
    /// runs now: a service must not take them.
    pub(crate) fn ports(&self) -> Vec<u16> {
        [self.listen, self.https]
            .into_iter()
            .flatten()
            .map(|a| a.port())
            .collect()
    }

    /// Why the proxy this agent was told to run does not run, if it does not.
    pub fn problem(&self) -> Option<String> {
        (self.problem.lock())
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Leaves the host without a proxy, saying why in the log and to status.
    fn without(&self, why: String) {
        tracing::warn!(log = %self.paths.proxy_log().display(), "{why}; running without a proxy");
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{why} (see {})", self.paths.proxy_log().display()));
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<std::process::Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the proxy, or reuses the one that answers on its control socket;
    /// logs a warning and leaves the host without a proxy when it cannot run.
    pub(crate) async fn start(&self) {
        let Some(listen) = self.listen else {
            return;
        };
        if let Some(running) = health(&self.socket).await {
            self.up.store(true, Ordering::SeqCst);
            *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let ours = gantry_proxy::running_binary();
            if !running.binary.is_empty() && !ours.is_empty() && running.binary != ours {
                tracing::info!(
                    pid = running.pid,
                    "the proxy runs another gantry binary; handing its listeners to a new one"
                );
                let _one = self.updating.lock().await;
                if let Err(e) = self.hand_over(listen).await {
                    tracing::warn!(error = %e, "cannot restart the proxy; keeping the running one");
                }
            } else {
                tracing::info!(socket = %self.socket.display(), pid = running.pid, "reusing the running proxy");
            }
            self.refresh().await;
            return;
        }
        let child = match self.spawn(listen, false) {
            Ok(child) => child,
            Err(e) => {
                self.without(format!("cannot start the proxy: {e}"));
                return;
            }
        };
        let pid = child.id();
        let _ = std::fs::write(self.paths.proxy_pid(), pid.to_string());
        *self.child() = Some(child);
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            if healthy(&self.socket).await {
                break;
            }
            let exited = self
                .child()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                *self.child() = None;
                self.without(format!(
                    "the proxy did not start on {listen} ({status}; is the port taken?)"
                ));
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                self.without(format!(
                    "the proxy (pid {pid}) did not answer on {listen} in time"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tracing::info!(%listen, pid, "proxy started");
        self.up.store(true, Ordering::SeqCst);
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.refresh().await;
    }

    fn spawn(&self, listen: SocketAddr, take_over: bool) -> std::io::Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.paths.proxy_log())?;
        let mut command = std::process::Command::new(&self.exe);
        command
            .arg("proxy")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--https")
            .arg(
                self.https
                    .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            )
            .arg("--state-dir")
            .arg(&self.paths.root)
            .arg("--no-access-log")
            // The proxy caps and rotates the file itself; stderr still goes
            // there for what comes before its log opens (or a panic).
            .arg("--log-file")
            .arg(self.paths.proxy_log());
        if take_over {
            command.arg("--take-over");
        }
        crate::process::bind_capability_only(&mut command);
        command
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: it outlives the agent, like the services.
            .process_group(0)
            .spawn()
    }

    /// `POST /v1/proxy/restart`: a new proxy process takes over the listening
    /// sockets of the running one (no connection is refused), or one starts if
    /// none runs.
    pub(crate) async fn restart(&self) -> Result<ProxyInfo, AgentError> {
        let Some(listen) = self.listen else {
            return Err(Self::no_proxy());
        };
        let previous = health(&self.socket).await.map(|h| h.pid);
        if previous.is_none() {
            self.start().await;
        } else {
            let handed = {
                let _one = self.updating.lock().await;
                self.hand_over(listen).await
            };
            handed.map_err(|e| AgentError::failed(Code::ProxyRestartFailed, e))?;
            self.refresh().await;
        }
        let now = health(&self.socket).await;
        if now.is_none() {
            return Err(AgentError::failed(
                Code::ProxyRestartFailed,
                format!(
                    "the proxy did not start; see {}",
                    self.paths.proxy_log().display()
                ),
            ));
        }
        Ok(self.info(now.as_ref(), previous))
    }

    /// `POST /v1/proxy/stop`: stops the proxy and waits until its process is
    /// gone; the agent starts none until `restart` or its own next start.
    pub(crate) async fn stop(&self) -> Result<ProxyInfo, AgentError> {
        if self.listen.is_none() {
            return Err(Self::no_proxy());
        }
        let _one = self.updating.lock().await;
        self.up.store(false, Ordering::SeqCst);
        let running = health(&self.socket).await.map(|h| h.pid);
        let child = self.child().take();
        let pid = running.or_else(|| child.as_ref().map(std::process::Child::id));
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
            let mut child = child;
            loop {
                let gone = match child.as_mut() {
                    Some(c) => c.try_wait().ok().flatten().is_some(),
                    None => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                };
                if gone {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(AgentError::failed(
                        Code::ProxyStopFailed,
                        format!(
                            "the proxy (pid {pid}) did not exit within {}s",
                            STOP_DEADLINE.as_secs()
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let _ = std::fs::remove_file(self.paths.proxy_pid());
        tracing::info!(pid = ?running, "proxy stopped");
        Ok(self.info(None, running))
    }

    fn no_proxy() -> AgentError {
        AgentError::conflict(
            Code::ProxyOff,
            "this agent runs no proxy",
            "start the agent with --proxy-listen ADDR (or GANTRY_PROXY_LISTEN)",
        )
    }

    fn info(&self, running: Option<&Health>, previous_pid: Option<u32>) -> ProxyInfo {
        ProxyInfo {
            running: running.is_some(),
            pid: running.map(|h| h.pid),
            previous_pid,
            listen: self
                .listen
                .filter(|_| running.is_some())
                .map(|l| l.to_string()),
            routes_file: gantry_proxy::ProxyDir::new(self.paths.proxy())
                .routes_file()
                .display()
                .to_string(),
        }
    }

    /// Starts `gantry proxy --take-over` and waits until it answers on the
    /// control socket in place of the old one. Call with `updating` held, so no
    /// route table goes to a process on its way out.
    async fn hand_over(&self, listen: SocketAddr) -> Result<u32, String> {
        let mut child = self
            .spawn(listen, true)
            .map_err(|e| format!("cannot start the new proxy: {e}"))?;
        let pid = child.id();
        let deadline = tokio::time::Instant::now() + START_DEADLINE + START_DEADLINE;
        loop {
            if health(&self.socket).await.is_some_and(|h| h.pid == pid) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the new proxy exited ({status}) before taking over; see {}",
                    self.paths.proxy_log().display()
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the new proxy did not take over in time; see {}",
                    self.paths.proxy_log().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let old = self.child().replace(child);
        if let Some(mut old) = old {
            // It exits once its open requests are done: reap it then.
            tokio::task::spawn_blocking(move || old.wait());
        }
        let _ = std::fs::write(self.paths.proxy_pid(), pid.to_string());
        self.up.store(true, Ordering::SeqCst);
        tracing::info!(%listen, pid, "proxy restarted by listener handoff");
        Ok(pid)
    }

    /// Every few seconds: when the proxy that was running is gone, start it again.
    pub(crate) async fn watch(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !self.up.load(Ordering::SeqCst) {
                continue;
            }
            let gone = {
                let mut child = self.child();
                match child.as_mut() {
                    // Ours: gone once it exited.
                    Some(c) => c.try_wait().ok().flatten().is_some(),
                    None => false,
                }
            };
            let gone = gone || (self.child().is_none() && !healthy(&self.socket).await);
            if gone {
                tracing::warn!("the proxy stopped; starting it again");
                self.up.store(false, Ordering::SeqCst);
                *self.child() = None;
                self.start().await;
            }
        }
    }

    /// Replaces the proxy's route table with one built from the store: every
    /// service of every project with running (or restarting) instances on a port.
    /// A refused table is logged; a cutover uses [`replace_routes`] to act on it.
    pub(crate) async fn refresh(&self) {
        if let Err(refused) = self.replace_routes().await {
            tracing::warn!(%refused, "the proxy refused the route table");
        }
    }

    /// [`refresh`], saying whether the table was refused (by the proxy's check,
    /// run here first, or by the proxy). A proxy that cannot be reached is not a
    /// refusal: it gets the table from the store when it is back.
    pub(crate) async fn replace_routes(&self) -> Result<(), String> {
        if !self.up.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _one = self.updating.lock().await;
        let releases = self.paths.releases_dir();
        let table = match self
            .store
            .call(move |s| crate::routes::table(s, &releases))
            .await
        {
            Ok(table) => table,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the proxy's route table");
                return Ok(());
            }
        };
        table.validate().map_err(|e| e.to_string())?;
        let body = match serde_json::to_vec(&table) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the proxy's route table");
                return Ok(());
            }
        };
        let put = call(&self.socket, Method::PUT, gantry_proxy::ROUTES_PATH, body);
        match tokio::time::timeout(Duration::from_secs(10), put).await {
            Ok(Ok((status, _))) if status.is_success() => {
                tracing::debug!(routes = table.routes.len(), "proxy routes replaced");
            }
            Ok(Ok((status, answer))) if status.is_client_error() => {
                return Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&answer).trim()
                ));
            }
            Ok(Ok((status, answer))) => tracing::warn!(
                %status, answer = %String::from_utf8_lossy(&answer),
                "the proxy failed to replace the route table"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot reach the proxy"),
            Err(_) => tracing::warn!("the proxy did not answer in time"),
        }
        Ok(())
    }

    /// Waits until no request or WebSocket is open to `ports` (at most `timeout`).
    pub(crate) async fn drain(&self, ports: &[u16], timeout: Duration) {
        if ports.is_empty() || !self.up.load(Ordering::SeqCst) {
            return;
        }
        let request = DrainRequest {
            upstreams: ports.iter().map(|p| crate::routes::upstream(*p)).collect(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let Ok(body) = serde_json::to_vec(&request) else {
            return;
        };
        let post = call(&self.socket, Method::POST, gantry_proxy::DRAIN_PATH, body);
        match tokio::time::timeout(timeout + Duration::from_secs(5), post).await {
            Ok(Ok((status, answer))) if status.is_success() => {
                match serde_json::from_slice::<DrainReport>(&answer) {
                    Ok(report) if !report.drained => tracing::warn!(
                        open = report.open,
                        waited_ms = report.waited_ms,
                        "requests still open to the old instances"
                    ),
                    _ => {}
                }
            }
            Ok(Ok((status, _))) => tracing::warn!(%status, "the proxy refused to drain"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot reach the proxy to drain"),
            Err(_) => tracing::warn!("the proxy did not answer the drain in time"),
        }
    }

    /// Takes these instances out of the proxy's routes (state `draining`), then
    /// waits until no request or WebSocket is open to them (at most `timeout`):
    /// what `gantry stop` and `gantry restart` do before stopping an instance.
    pub(crate) async fn drain_out(&self, records: &[InstanceRecord], timeout: Duration) {
        let live: Vec<_> = records
            .iter()
            .filter(|r| matches!(r.state, InstanceState::Live | InstanceState::Backoff))
            .collect();
        if live.is_empty() {
            return;
        }
        let ids: Vec<String> = live.iter().map(|r| r.id.clone()).collect();
        let _ = self
            .store
            .call(move |s| {
                for id in &ids {
                    s.set_instance_state(id, InstanceState::Draining)?;
                }
                Ok(())
            })
            .await;
        self.refresh().await;
        let ports: Vec<u16> = live.iter().filter_map(|r| r.port).collect();
        self.drain(&ports, timeout.min(MAX_DRAIN)).await;
    }
}

/// The cutover through the proxy: swap the routes, then drain the old instances.
impl Cutover for Proxy {
    fn switch<'a>(&'a self, service: &'a ServiceSpec, old_ports: &'a [u16]) -> Switched<'a> {
        Box::pin(async move {
            self.replace_routes().await?;
            self.drain(old_ports, service.stop_timeout.as_std().min(MAX_DRAIN))
                .await;
            Ok(())
        })
    }
}

async fn healthy(socket: &Path) -> bool {
    health(socket).await.is_some()
}

/// What the proxy on `socket` says of itself, if one answers.
async fn health(socket: &Path) -> Option<Health> {
    if !socket.exists() {
        return None;
    }
    let get = call(socket, Method::GET, gantry_proxy::HEALTH_PATH, Vec::new());
    match tokio::time::timeout(Duration::from_secs(2), get).await {
        Ok(Ok((status, body))) if status.is_success() => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

/// One HTTP/1.1 request on the proxy's control socket.
async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "proxy")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, answer))
}
