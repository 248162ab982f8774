//! Scripted hosts for the use-cases' unit tests. A [`Fleet`] is a set of fake
//! hosts, each answering the agent API ([`Host`]) and its shell ([`Shell`])
//! as its [`Script`] says, and recording every call it receives, in order,
//! in one list the tests read (`"h1 deploy"`, `"h2 rollback to r1"`).
//! Nothing here touches a network, a process or a clock beyond a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::Error;
use crate::agent_api::{
    AgentInfo, ApiError, BlobList, DeployRequest, DeployResult, ExecSpec, LockGrant, LockHolder,
    LockRelease, LockRequest, LogLine, Outcome, ProxyAction, ProxyInfo, Release, RollbackRequest,
    ServiceSelector, ServiceState, ServiceStatus, Status,
};
use crate::config::resolve::Host as HostSpec;
use crate::host::{BackupRef, BlobPart, Host, HostError, LogQuery, Ran, Shell};

/// How one fake host behaves.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// No agent answers and SSH cannot reach it: connecting fails.
    pub down: bool,
    /// The release it ran before the test (a succeeded one).
    pub runs: Option<String>,
    /// Its new release (`r2`) fails after its services switched to it.
    pub release_fails: bool,
    /// With `release_fails`: the coded error its failed release records.
    pub release_cause: Option<crate::agent_api::Cause>,
    /// It already runs what a deploy asks: it answers with `runs`, kept.
    pub already_runs: bool,
    /// What `status` answers.
    pub services: Vec<ServiceStatus>,
    /// What `releases` answers, when set (else `runs`, succeeded).
    pub history: Vec<Release>,
    /// What `logs` answers.
    pub logs: Vec<LogLine>,
    /// The machine its shell reaches.
    pub machine: Machine,
    /// Its agent watches verify windows itself (spec revision 7): its new
    /// release's verdict is what `services` show, judged by the one rule.
    pub watches_verify: bool,
    /// With `watches_verify`: its agent is out of reach once its new
    /// release is live, so asking for the verdict fails.
    pub verdict_lost: bool,
    /// Its agent refuses this many uploads first, each as the same blob
    /// being received by another request (`artifact.upload_in_progress`).
    pub upload_busy: usize,
}

/// What the fake shell's host has, as `configure`'s commands find and change it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub root: bool,
    pub systemd: bool,
    /// The sha256 of `~/.gantry/bin/gantry`.
    pub gantry: Option<String>,
    /// The sha256 of `/usr/local/bin/gantry`.
    pub system_gantry: Option<String>,
    /// The agent's systemd unit file.
    pub unit: Option<String>,
    pub unit_active: bool,
    pub ports_open: bool,
}

/// The id of the release a fake deploy makes.
pub const NEW_RELEASE: &str = "r2";

/// How long a deploy waits for the others it is expected to run beside.
const MEETING: Duration = Duration::from_secs(10);

pub struct Fleet {
    scripts: BTreeMap<String, Script>,
    record: Mutex<Record>,
    changed: Condvar,
    /// Each deploy waits (until [`MEETING`] passes) for this many to be under way.
    together: usize,
}

#[derive(Default)]
struct Record {
    calls: Vec<String>,
    deploying: usize,
    begun: usize,
    most_deploying: usize,
    lock: Option<(String, LockHolder)>,
    grants: u32,
    machines: BTreeMap<String, Machine>,
}

impl Fleet {
    pub fn new<'a>(hosts: impl IntoIterator<Item = (&'a str, Script)>) -> Arc<Fleet> {
        Fleet::meeting(hosts, 1)
    }

    /// A fleet whose deploys wait for `together` of them to be under way at
    /// once: a rollout that deploys fewer at a time lets the deadline pass.
    pub fn meeting<'a>(
        hosts: impl IntoIterator<Item = (&'a str, Script)>,
        together: usize,
    ) -> Arc<Fleet> {
        let scripts: BTreeMap<String, Script> = hosts
            .into_iter()
            .map(|(name, script)| (name.to_owned(), script))
            .collect();
        let machines = scripts
            .iter()
            .map(|(name, s)| (name.clone(), s.machine.clone()))
            .collect();
        Arc::new(Fleet {
            scripts,
            record: Mutex::new(Record {
                machines,
                ..Record::default()
            }),
            changed: Condvar::new(),
            together,
        })
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, host: &str, call: &str) {
        self.record().calls.push(format!("{host} {call}"));
    }

    fn script(&self, host: &str) -> &Script {
        self.scripts
            .get(host)
            .unwrap_or_else(|| panic!("no fake host `{host}`"))
    }

    /// Every call received, in order.
    pub fn calls(&self) -> Vec<String> {
        self.record().calls.clone()
    }

    /// The calls whose host, or call, starts with `prefix` (`"h3"`,
    /// `"lock"`: `h1 lock`, `h1 lock force`, not `h1 unlock`), in order.
    pub fn calls_to(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix) || c.contains(&format!(" {prefix}")))
            .collect()
    }

    /// The most deploys that were under way at once.
    pub fn most_deploying(&self) -> usize {
        self.record().most_deploying
    }

    /// Who holds the deploy lock now.
    pub fn lock_holder_now(&self) -> Option<LockHolder> {
        self.record().lock.as_ref().map(|(_, h)| h.clone())
    }

    /// Another command holds the deploy lock.
    pub fn hold_lock(&self, holder: LockHolder) {
        self.record().lock = Some(("theirs".to_owned(), holder));
    }

    pub fn machine(&self, host: &str) -> Machine {
        self.record().machines[host].clone()
    }

    /// Connects to `spec`'s fake agent, as `operate::Connect` does.
    pub fn connect(self: &Arc<Self>, spec: &HostSpec) -> Result<Box<dyn Host>, Error> {
        Ok(Box::new(self.reach(spec, "connect")?))
    }

    /// Opens `spec`'s fake shell, as `configure::OpenShell` does.
    pub fn open_shell(self: &Arc<Self>, spec: &HostSpec) -> Result<Box<dyn Shell>, Error> {
        Ok(Box::new(self.reach(spec, "ssh")?))
    }

    fn reach(self: &Arc<Self>, spec: &HostSpec, call: &str) -> Result<FakeHost, Error> {
        self.note(&spec.name, call);
        if self.script(&spec.name).down {
            return Err(Error::Host(unreachable(&spec.name)));
        }
        Ok(FakeHost {
            name: spec.name.clone(),
            fleet: Arc::clone(self),
        })
    }
}

fn unreachable(host: &str) -> HostError {
    HostError::Unreachable {
        host: host.to_owned(),
        message: "connection refused".to_owned(),
        hint: "is the host up?".to_owned(),
    }
}

/// A release as an agent reports it.
pub fn release(id: &str, outcome: Outcome) -> Release {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "number": id.trim_start_matches('r').parse::<u64>().unwrap_or(1),
        "project": "shop",
        "environment": "prod",
        "config_hash": "",
        "artifact_digest": "",
        "created_at": 0,
        "outcome": outcome,
        "reason": (outcome == Outcome::Failed).then_some("web failed its health check"),
        "phases": [],
        "services": [],
    }))
    .unwrap()
}

/// Release `id` of `artifact`, recording the deployments `marks` (id,
/// time): the one that made it first, then those that kept it.
pub fn marked(id: &str, artifact: &str, outcome: Outcome, marks: &[(&str, u64)]) -> Release {
    Release {
        artifact_digest: artifact.to_owned(),
        deployments: marks
            .iter()
            .map(|(id, at)| crate::agent_api::DeploymentMark {
                id: (*id).to_owned(),
                at: *at,
            })
            .collect(),
        ..release(id, outcome)
    }
}

/// A service with one instance, as an agent reports it.
pub fn service(name: &str, state: ServiceState, release: &str) -> ServiceStatus {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "state": state,
        "release": release,
        "urls": [],
        "instances": [{
            "id": format!("{name}-1"),
            "service": name,
            "release": release,
            "state": "live",
            "healthy": true,
            "restarts": 0,
        }],
        "limits": { "enforced": false, "via": "none" },
    }))
    .unwrap()
}

/// `web` on `release`, its instance exited with status 1 and waiting to be
/// started again.
pub fn crashing(release: &str) -> ServiceStatus {
    let mut web = service("web", ServiceState::Degraded, release);
    for instance in &mut web.instances {
        instance.state = crate::agent_api::InstanceState::Backoff;
        instance.restarts = 1;
        instance.last_exit = Some(crate::agent_api::Exit {
            code: Some(1),
            signal: None,
            oom: false,
            at: 0,
        });
    }
    web
}

/// A line of `web`'s output at `ts`.
pub fn log_line(ts: u64, line: &str) -> LogLine {
    serde_json::from_value(serde_json::json!({
        "ts": ts,
        "service": "web",
        "instance": "web-1",
        "stream": "stdout",
        "line": line,
    }))
    .unwrap()
}

/// One host of a [`Fleet`]: its agent and its shell.
struct FakeHost {
    name: String,
    fleet: Arc<Fleet>,
}

impl FakeHost {
    fn note(&self, call: &str) {
        self.fleet.note(&self.name, call);
    }

    fn script(&self) -> &Script {
        self.fleet.script(&self.name)
    }

    /// Counts this deploy as under way, and waits for the others expected beside it.
    fn begin_deploy(&self) {
        let mut record = self.fleet.record();
        record.calls.push(format!("{} deploy", self.name));
        record.deploying += 1;
        record.most_deploying = record.most_deploying.max(record.deploying);
        // The deploys meet in groups of `together`, in the order they begin.
        let group = record.begun / self.fleet.together + 1;
        record.begun += 1;
        self.fleet.changed.notify_all();
        let deadline = Instant::now() + MEETING;
        while record.begun < group * self.fleet.together && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            record = self
                .fleet
                .changed
                .wait_timeout(record, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The new release after its agent watched its window (30 s), the
    /// instances `status` shows judged by the CLI's rule, and went back to
    /// `runs` if they failed it.
    fn verified(&self, project: &str) -> Release {
        let status = Status {
            project: project.to_owned(),
            services: self.script().services.clone(),
            proxy_problem: None,
        };
        let window = Duration::from_secs(30);
        let watched = crate::agent_api::Verification::watching(window, 0);
        let Some(problem) = crate::agent_api::verify::problem(&status, NEW_RELEASE, &[]) else {
            return Release {
                verify: Some(crate::agent_api::Verification {
                    state: crate::agent_api::VerifyState::Passed,
                    ..watched
                }),
                ..release(NEW_RELEASE, Outcome::Succeeded)
            };
        };
        let reason = problem.reason(window);
        Release {
            reason: Some(format!(
                "{}{reason}",
                crate::agent_api::verify::FAILED_PREFIX
            )),
            verify: Some(crate::agent_api::Verification {
                state: crate::agent_api::VerifyState::Failed,
                service: Some(problem.service),
                reason: Some(reason),
                back_to: self.script().runs.clone(),
                ..watched
            }),
            ..release(NEW_RELEASE, Outcome::Failed)
        }
    }

    fn end_deploy(&self) {
        let mut record = self.fleet.record();
        record.deploying -= 1;
        record.calls.push(format!("{} deployed", self.name));
    }
}

impl Host for FakeHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> Result<AgentInfo, HostError> {
        self.note("info");
        Ok(serde_json::from_value(serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": 1,
            "state_dir": "/var/lib/gantry",
            "started_at": 0,
            "limits": "none",
            "proxy": "0.0.0.0:80",
            "spec_version": if self.script().watches_verify { 7 } else { 1 },
        }))
        .unwrap())
    }

    fn missing_blobs(&self, digests: &[String]) -> Result<BlobList, HostError> {
        self.note("missing blobs");
        Ok(BlobList {
            digests: digests.to_vec(),
            ..BlobList::default()
        })
    }

    fn image_blobs_missing(
        &self,
        _image: &crate::agent_api::ImageManifest,
    ) -> Result<BlobList, HostError> {
        self.note("missing image blobs");
        Ok(BlobList::default())
    }

    fn load_image(
        &self,
        image: &crate::agent_api::ImageManifest,
    ) -> Result<crate::agent_api::ImageLoaded, HostError> {
        self.note("load image");
        Ok(crate::agent_api::ImageLoaded {
            id: image.config.clone(),
            tags: image.tags.clone(),
            layers_loaded: 0,
        })
    }

    fn upload_blob(&self, part: BlobPart<'_>, sent: &mut u64) -> Result<(), HostError> {
        self.note("upload");
        let call = format!("{} upload", self.name);
        let tried = self.fleet.calls().iter().filter(|c| **c == call).count();
        if tried <= self.script().upload_busy {
            return Err(HostError::api(
                409,
                crate::agent_api::ApiError {
                    code: crate::Code::ArtifactUploadInProgress.to_string(),
                    message: format!("blob {} is being uploaded by another request", part.digest),
                    hint: None,
                },
            ));
        }
        *sent += std::fs::metadata(part.path).map_or(0, |m| m.len()) - part.offset;
        Ok(())
    }

    fn deploy(&self, request: &DeployRequest) -> Result<DeployResult, HostError> {
        for task in &request.tasks {
            self.note(&format!("task {} {}", task.phase, task.service));
        }
        if let Some(ms) = request.verify_ms {
            let revision = request.spec_version;
            self.note(&format!("watch {ms} ms, spec revision {revision}"));
        }
        self.begin_deploy();
        if self.script().already_runs {
            let runs = self.script().runs.clone().unwrap_or_default();
            self.end_deploy();
            // The release as its history has it, phases and all.
            let kept = self.script().history.iter().find(|r| r.id == runs).cloned();
            return Ok(DeployResult {
                release: kept.unwrap_or_else(|| release(&runs, Outcome::Succeeded)),
                services: vec![service("web", ServiceState::Running, &runs)],
                removed: Vec::new(),
                unchanged: vec!["web".to_owned()],
                kept: true,
            });
        }
        let outcome = if self.script().release_fails {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        let state = match outcome {
            Outcome::Failed => ServiceState::Failed,
            _ => ServiceState::Running,
        };
        let result = DeployResult {
            release: Release {
                cause: self
                    .script()
                    .release_cause
                    .clone()
                    .filter(|_| outcome == Outcome::Failed),
                ..release(NEW_RELEASE, outcome)
            },
            services: vec![service("web", state, NEW_RELEASE)],
            removed: Vec::new(),
            unchanged: Vec::new(),
            kept: false,
        };
        self.end_deploy();
        Ok(result)
    }

    fn rollback(
        &self,
        _project: &str,
        request: &RollbackRequest,
    ) -> Result<DeployResult, HostError> {
        let to = request.to.clone().unwrap_or_default();
        let reverts = request
            .reverts
            .as_ref()
            .map_or_else(String::new, |r| format!(", {} failed", r.release));
        self.note(&format!("rollback to {to}{reverts}"));
        Ok(DeployResult {
            release: release(&to, Outcome::Succeeded),
            services: vec![service("web", ServiceState::Running, &to)],
            removed: Vec::new(),
            unchanged: Vec::new(),
            kept: false,
        })
    }

    fn status(&self, project: &str) -> Result<Status, HostError> {
        self.note("status");
        Ok(Status {
            project: project.to_owned(),
            services: self.script().services.clone(),
            proxy_problem: None,
        })
    }

    fn releases(&self, _project: &str) -> Result<Vec<Release>, HostError> {
        self.note("releases");
        if !self.script().history.is_empty() {
            return Ok(self.script().history.clone());
        }
        Ok(self
            .script()
            .runs
            .iter()
            .map(|id| release(id, Outcome::Succeeded))
            .collect())
    }

    fn release(&self, project: &str, id: &str) -> Result<Release, HostError> {
        self.note(&format!("release {id}"));
        if self.script().verdict_lost && id == NEW_RELEASE {
            return Err(unreachable(&self.name));
        }
        if self.script().watches_verify && id == NEW_RELEASE {
            return Ok(self.verified(project));
        }
        Ok(release(id, Outcome::Succeeded))
    }

    fn compare(
        &self,
        _project: &str,
        _request: &crate::agent_api::CompareRequest,
    ) -> Result<crate::agent_api::Comparison, HostError> {
        self.note("compare");
        Ok(crate::agent_api::Comparison::default())
    }

    fn logs(
        &self,
        _project: &str,
        _query: &LogQuery,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), HostError> {
        self.note("logs");
        for line in &self.script().logs {
            if !sink(line.clone()) {
                break;
            }
        }
        Ok(())
    }

    fn stop(&self, project: &str, _selector: &ServiceSelector) -> Result<Status, HostError> {
        self.note("stop");
        self.status(project)
    }

    fn restart(&self, project: &str, _selector: &ServiceSelector) -> Result<Status, HostError> {
        self.note("restart");
        self.status(project)
    }

    fn shutdown(&self) -> Result<(), HostError> {
        self.note("shutdown");
        Ok(())
    }

    fn lock(&self, project: &str, request: &LockRequest) -> Result<LockGrant, HostError> {
        self.note(if request.force { "lock force" } else { "lock" });
        let mut record = self.fleet.record();
        let displaced = match &record.lock {
            Some((_, holder)) if !request.force => {
                return Err(HostError::api(
                    409,
                    ApiError {
                        code: "deploy.locked".to_owned(),
                        message: format!(
                            "`{}` of {project} ({}) is locked by pid {} of {}@{}",
                            holder.command,
                            request.environment,
                            holder.pid,
                            holder.user,
                            holder.machine
                        ),
                        hint: Some("wait for that deploy to end".to_owned()),
                    },
                ));
            }
            Some((_, holder)) => Some(holder.clone()),
            None => None,
        };
        record.grants += 1;
        let token = format!("token-{}", record.grants);
        record.lock = Some((token.clone(), request.holder.clone()));
        Ok(LockGrant { token, displaced })
    }

    fn lock_holder(
        &self,
        _project: &str,
        _environment: &str,
    ) -> Result<Option<LockHolder>, HostError> {
        self.note("lock holder");
        Ok(self.fleet.lock_holder_now())
    }

    fn unlock(&self, _project: &str, request: &LockRelease) -> Result<(), HostError> {
        self.note("unlock");
        let mut record = self.fleet.record();
        if record
            .lock
            .as_ref()
            .is_some_and(|(token, _)| *token == request.token)
        {
            record.lock = None;
        }
        Ok(())
    }

    fn exec_spec(&self, _project: &str, service: &str) -> Result<ExecSpec, HostError> {
        self.note(&format!("exec spec {service}"));
        Err(HostError::Protocol {
            host: self.name.clone(),
            message: "the fake host has no exec".to_owned(),
        })
    }

    fn run_task(
        &self,
        _project: &str,
        id: &str,
        task: &crate::agent_api::Task,
    ) -> Result<crate::agent_api::Phase, HostError> {
        self.note(&format!("task {} {} of {id}", task.phase, task.service));
        Ok(crate::agent_api::Phase {
            name: task.phase.clone(),
            service: Some(task.service.clone()),
            started_at: 0,
            duration_ms: 0,
            engine_ms: None,
            task: Some(crate::agent_api::TaskOutput {
                command: task.command.clone(),
                exit_code: Some(0),
                output: Vec::new(),
            }),
        })
    }

    fn proxy(&self, _action: ProxyAction) -> Result<ProxyInfo, HostError> {
        self.note("proxy");
        Err(HostError::Protocol {
            host: self.name.clone(),
            message: "the fake host has no proxy".to_owned(),
        })
    }

    fn take_backup(
        &self,
        _project: &str,
        _service: &str,
    ) -> Result<crate::agent_api::BackupInfo, HostError> {
        self.note("take_backup");
        Err(self.no_backups())
    }

    fn backups(
        &self,
        _project: &str,
        _service: &str,
    ) -> Result<crate::agent_api::BackupList, HostError> {
        self.note("backups");
        Err(self.no_backups())
    }

    fn restore_backup(
        &self,
        _backup: BackupRef<'_>,
    ) -> Result<crate::agent_api::BackupRestored, HostError> {
        self.note("restore_backup");
        Err(self.no_backups())
    }

    fn download_backup(
        &self,
        _backup: BackupRef<'_>,
        _out: &mut dyn std::io::Write,
    ) -> Result<u64, HostError> {
        self.note("download_backup");
        Err(self.no_backups())
    }
}

impl FakeHost {
    /// The fake fleet keeps no backups: the real agent's are tested.
    fn no_backups(&self) -> HostError {
        HostError::Protocol {
            host: self.name.clone(),
            message: "the fake host keeps no backups".to_owned(),
        }
    }
}

/// The shell runs `configure`'s commands against the host's [`Machine`],
/// recognising each by a word of it; any other command exits 127.
impl Shell for FakeHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, command: &str, stdin: Option<&Path>) -> Result<Ran, HostError> {
        let input = stdin.map(|p| std::fs::read(p).unwrap()).unwrap_or_default();
        let mut record = self.fleet.record();
        let machine = record.machines.get_mut(&self.name).unwrap();
        let (call, stdout) = if command.contains("sha256sum") {
            let mut out = format!(
                "os=Linux arch={} uid={}\ninit={}\n",
                std::env::consts::ARCH,
                if machine.root { 0 } else { 1000 },
                if machine.systemd { "systemd" } else { "other" }
            );
            if let Some(sha) = &machine.gantry {
                out.push_str(&format!("sha={sha}\n"));
            }
            ("check the host", out)
        } else if command.contains("gantry.part") {
            machine.gantry = Some(crate::artifact::hex(&Sha256::digest(&input)));
            (
                "install gantry",
                format!("gantry {}\n", env!("CARGO_PKG_VERSION")),
            )
        } else if command.contains("systemctl enable") {
            let mut out = String::new();
            if machine.system_gantry != machine.gantry {
                machine.system_gantry.clone_from(&machine.gantry);
                out.push_str("binary=changed\n");
            }
            let unit = String::from_utf8_lossy(&input).into_owned();
            let unit_changed = machine.unit.as_ref() != Some(&unit);
            if unit_changed {
                machine.unit = Some(unit);
                out.push_str("unit=changed\n");
            }
            if command.contains("if true ||") || unit_changed || !machine.unit_active {
                machine.unit_active = true;
                out.push_str("agent=restarted\n");
            }
            ("install the agent", out)
        } else if command.contains("XDG_STATE_HOME") {
            ("prepare directories", String::new())
        } else if command.contains("agent open-ports") {
            let changed = !machine.ports_open;
            machine.ports_open = true;
            (
                "open ports",
                serde_json::json!({ "changed": changed, "detail": "22, 80, 443/tcp open" })
                    .to_string(),
            )
        } else {
            record.calls.push(format!("{} run {command}", self.name));
            return Ok(Ran {
                code: Some(127),
                stdout: Vec::new(),
                stderr: "fake shell: not scripted".to_owned(),
            });
        };
        record.calls.push(format!("{} run {call}", self.name));
        Ok(Ran {
            code: Some(0),
            stdout: stdout.into_bytes(),
            stderr: String::new(),
        })
    }

    fn interactive(&self, _command: Option<&str>) -> Result<i32, HostError> {
        self.note("interactive");
        Ok(0)
    }

    /// Every fake host is this machine: nothing is looked up in DNS.
    fn resolved_address(&self) -> Option<String> {
        Some("127.0.0.1".to_owned())
    }
}

/// A project in a temporary directory: one service, `web`, and the
/// environment `prod` on `hosts`, each reached over SSH, `max_parallel` at a time.
pub fn project(hosts: &[&str], max_parallel: u32) -> (tempfile::TempDir, crate::Project) {
    let dir = tempfile::tempdir().unwrap();
    let quoted: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    let mut toml = format!(
        "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"bin/web\"\nport = \"http\"\n\n\
         [environments.prod]\nhosts = [{}]\nmax_parallel = {max_parallel}\n\n\
         [environments.prod.deploy]\nverify = \"0s\"\n",
        quoted.join(", ")
    );
    for host in hosts {
        toml.push_str(&format!("\n[hosts.{host}]\nssh = \"{host}\"\n"));
    }
    std::fs::write(dir.path().join("gantry.toml"), toml).unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    std::fs::write(dir.path().join("bin/web"), "#!/bin/sh\n").unwrap();
    let project = crate::Project {
        config: None,
        cwd: dir.path().to_owned(),
    };
    (dir, project)
}

/// [`project`] whose `prod` rolls out as `rollout` says (the lines of its
/// `[environments.prod.deploy]` table; `project`'s is `verify = "0s"`).
pub fn project_rolling_out(
    hosts: &[&str],
    max_parallel: u32,
    rollout: &str,
) -> (tempfile::TempDir, crate::Project) {
    let (dir, project) = project(hosts, max_parallel);
    let path = dir.path().join("gantry.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, toml.replace("verify = \"0s\"\n", rollout)).unwrap();
    (dir, project)
}

/// Progress that keeps what it is told.
#[derive(Default)]
pub struct Said(Mutex<Vec<String>>);

impl Said {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Says a plan as a line `plan of ARTIFACT: HOST CHANGE, ...`.
    pub fn plan(&self, report: &crate::plan::PlanReport) {
        let hosts: Vec<String> = report
            .hosts
            .iter()
            .map(|h| format!("{} {:?}", h.host, h.change))
            .collect();
        let line = format!("plan of {}: {}", report.artifact, hosts.join(", "));
        crate::progress::Progress::step(self, &line);
    }
}

impl crate::progress::Progress for Said {
    fn step(&self, message: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message.to_owned());
    }
}
