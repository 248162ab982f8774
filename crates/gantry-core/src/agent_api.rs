//! The agent's HTTP/JSON API under `/v1`: the requests the CLI sends and the
//! records the agent answers with. Both sides use these types, so the wire
//! format is defined once. Secret values travel only in `DeployRequest` and
//! are never part of any record the agent returns or stores.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod backups;
mod compare;
pub mod v1;
pub mod verify;

pub use backups::{
    BackupFailure, BackupInfo, BackupKind, BackupList, BackupRestored, BackupTrigger,
};
pub use compare::{
    CompareRequest, Comparison, MAX_COMPARED_SECRETS, is_hex_sha256, new_salt, secret_digest,
};
pub use v1::ServiceSpec;
pub use verify::{Verification, VerifyState};

/// The API version; the path prefix of every route.
pub const API_VERSION: &str = "v1";

/// `GET /v1/health`: the agent is up and this is who it is.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub state_dir: String,
    /// Unix time in milliseconds.
    pub started_at: u64,
    /// How resource limits are enforced here: `cgroup v2`, `cgroup v1` or `none`.
    pub limits: String,
    /// Where its reverse proxy takes plain HTTP, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Why the proxy it was told to run does not run (its port taken, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_problem: Option<String>,
    /// The newest service spec revision it reads ([`v1::SPEC_VERSION`]);
    /// absent from agents before revisions, which read revision 1. A CLI
    /// can tell from it, before any upload, that a deploy needs a newer agent.
    #[serde(default = "v1::first_revision")]
    pub spec_version: u32,
}

/// One file of an artifact: its path inside the artifact and the sha256 of its bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactFile {
    pub path: String,
    pub digest: String,
    pub size: u64,
    /// Unix permission bits (the executable bit matters).
    pub mode: u32,
}

/// A snapshot of the files a release runs from, content-addressed: `digest`
/// is the sha256 of the sorted file list, so equal trees have equal digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Artifact {
    pub digest: String,
    pub files: Vec<ArtifactFile>,
}

/// How long an agent waits for more of an upload's body before it counts
/// the upload as interrupted (keeping what arrived).
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// `POST /v1/blobs/missing`: asked with the blobs an artifact needs, answered
/// with those the agent lacks, in the order asked.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct BlobList {
    pub digests: Vec<String>,
    /// In an answer: of the missing blobs, how many bytes an interrupted
    /// upload already left on the agent, by digest. Resume with
    /// `PUT /v1/blobs/{digest}?offset=<those bytes>` and send only the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partial: BTreeMap<String, u64>,
    /// In an answer: of the missing blobs, those an upload is receiving right
    /// now (perhaps over a connection that broke and that the agent has not
    /// seen end yet). Resume once it has ended: its partial copy may still grow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploading: Vec<String>,
}

/// An image shipped without a registry (`POST /v1/images/missing`, `POST /v1/images`).
pub use crate::image::archive::{ImageManifest, Layer as ImageLayer};

/// `POST /v1/images`: the image is in the host's engine under its tags.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ImageLoaded {
    /// The image id (hex sha256 of its config).
    pub id: String,
    pub tags: Vec<String>,
    /// How many layers the load added to the engine (0: it had the image).
    pub layers_loaded: usize,
}

/// `PUT /v1/blobs/{digest}[?offset=N]`: the blob is stored (201), or was
/// already (200, its body unread).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct BlobReceipt {
    pub digest: String,
    /// The whole blob's size.
    pub size: u64,
    /// The bytes this request's body carried: `size - offset` for a resumed
    /// upload, 0 when the blob was already there.
    pub received: u64,
}

/// `POST /v1/projects/{project}/deploys`.
#[serde_with::skip_serializing_none]
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeployRequest {
    pub project: String,
    pub environment: String,
    /// sha256 of the resolved environment, to tell what changed.
    pub config_hash: String,
    pub artifact: Artifact,
    /// The revision of the service spec the services are written in
    /// ([`v1::SPEC_VERSION`]); an agent refuses one above its own.
    #[serde(default = "v1::first_revision")]
    pub spec_version: u32,
    /// The services in deploy order (dependencies first).
    pub services: Vec<ServiceSpec>,
    /// Secret values by name. Kept by the agent in a 0600 file, never in its store.
    pub secrets: BTreeMap<String, String>,
    /// The previous release to re-activate instead of a new one (rollback).
    #[serde(default)]
    pub rollback_of: Option<String>,
    /// The release deployed again as it is, with the secrets of now
    /// (`gantry secrets sync`): recorded as a redeploy of it, not a
    /// rollback. Absent from CLIs before it, whose syncs read as rollbacks.
    #[serde(default)]
    pub redeploy_of: Option<String>,
    /// The environment-wide deployment (one `gantry deploy` or `gantry
    /// rollback` of every host) this request is part of, recorded with the
    /// release. With one, a host that already runs this artifact and
    /// configuration (same secrets, every service live) makes no new
    /// release: it records the deployment on the release it runs and
    /// answers with it ([`DeployResult::kept`]). Spec revision 5.
    #[serde(default)]
    pub deployment: Option<DeploymentMark>,
    /// Tasks run once the release's files are in place and before any of
    /// its instances starts (`migrate.pre`); one that fails fails the
    /// release with every service left on its previous one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Task>,
    /// The verify window (`deploy.verify`) in milliseconds: once the
    /// release is live, the agent watches its new instances for that long
    /// and, should one exit, restart or fail its health check, goes back
    /// to the previous release itself ([`Release::verify`] tells how it
    /// ended). Absent: the agent watches nothing. Spec revision 7.
    #[serde(default)]
    pub verify_ms: Option<u64>,
}

/// One environment-wide deployment as a host records it: its id (made by
/// the CLI, the same on every host) and when it began (Unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeploymentMark {
    pub id: String,
    pub at: u64,
}

impl std::fmt::Debug for DeployRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployRequest")
            .field("project", &self.project)
            .field("environment", &self.environment)
            .field("config_hash", &self.config_hash)
            .field("spec_version", &self.spec_version)
            .field("artifact", &self.artifact.digest)
            .field("services", &self.services.len())
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("deployment", &self.deployment)
            .field("verify_ms", &self.verify_ms)
            .finish()
    }
}

/// What became of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Under way.
    Deploying,
    /// Every service runs it.
    Succeeded,
    /// A service failed; it kept its previous release.
    Failed,
}

/// One timed step of a deploy.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Phase {
    pub name: String,
    #[serde(default)]
    pub service: Option<String>,
    /// Unix time in milliseconds.
    pub started_at: u64,
    pub duration_ms: u64,
    /// Of `duration_ms`, the time the container engine took to create,
    /// start, stop and remove containers (an image service's phases):
    /// what the agent waited on Docker for, beside its own work. Summed
    /// over calls, so replicas started side by side can add up to more
    /// than the phase.
    #[serde(default)]
    pub engine_ms: Option<u64>,
    /// For a task's phase (`migrate.pre`, `migrate.post`): how it ended and its output.
    #[serde(default)]
    pub task: Option<TaskOutput>,
}

/// A one-off command of a release (`migrate.pre`, `migrate.post`), run once
/// in the release's environment as its service runs: the release's files,
/// env and secrets (a process), or its image (a container).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// The phase it is recorded as: `migrate.pre` or `migrate.post`.
    pub phase: String,
    pub service: String,
    /// Run by `sh -c`.
    pub command: String,
}

/// How a task ended, kept in its release's phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOutput {
    pub command: String,
    /// Its exit code; none when it was killed (by a signal, or at its time limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The end of its stdout and stderr, interleaved (at most
    /// [`TaskOutput::MAX_LINES`] lines), the project's secret values hidden.
    pub output: Vec<String>,
}

impl TaskOutput {
    pub const MAX_LINES: usize = 200;

    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// An immutable record of one deploy or rollback.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Release {
    pub id: String,
    /// 1, 2, 3, ... per project.
    pub number: u64,
    pub project: String,
    pub environment: String,
    pub config_hash: String,
    pub artifact_digest: String,
    #[serde(default)]
    pub rollback_of: Option<String>,
    /// The release this one deploys again unchanged but for its secrets
    /// (`gantry secrets sync`). Absent otherwise, and from agents before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeploy_of: Option<String>,
    pub created_at: u64,
    pub outcome: Outcome,
    #[serde(default)]
    pub reason: Option<String>,
    /// The end of the failing service's stderr, when a deploy failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// What made it fail, when that has a code of its own (a container
    /// error's): absent from agents before it, and when the reason is all
    /// there is (a failed health check, say).
    #[serde(default)]
    pub cause: Option<Cause>,
    pub phases: Vec<Phase>,
    /// The services of this release, as deployed (no secret values).
    pub services: Vec<ServiceSpec>,
    /// The environment-wide deployments this release stands for on this
    /// host, oldest first: the one that made it, then any later one that
    /// found the host already running it. Empty from agents before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<DeploymentMark>,
    /// The host no longer keeps this release's files (it keeps those of
    /// the newest five that succeeded, and of what runs): a rollback to it
    /// is refused. Absent while they are kept, and from agents before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_gone: bool,
    /// The verify window its agent watched it for, and how that ended:
    /// absent when its deploy asked for none, and from agents before it.
    #[serde(default)]
    pub verify: Option<Verification>,
}

/// The coded error that made a release fail: `container.no_image` and its
/// message, so a script reads why without parsing the reason's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cause {
    /// One of [`crate::Code`]'s codes. A string, not the enum: an agent
    /// newer than the CLI may send a code this CLI does not know, and the
    /// release must still be readable.
    pub code: String,
    pub message: String,
}

impl Cause {
    pub fn new(code: crate::Code, message: impl Into<String>) -> Cause {
        Cause {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// How an instance ended.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Exit {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// Killed by the kernel for going over its memory limit.
    #[serde(default)]
    pub oom: bool,
    /// Unix time in milliseconds.
    pub at: u64,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.oom, self.code, self.signal) {
            (true, _, _) => f.write_str("killed: out of memory"),
            (_, Some(code), _) => write!(f, "exited with status {code}"),
            (_, _, Some(signal)) => write!(f, "killed by signal {signal}"),
            _ => f.write_str("exited"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Started, not yet healthy.
    Starting,
    /// Healthy and receiving traffic.
    Live,
    /// Being stopped after a cutover.
    Draining,
    /// Exited; waiting for its restart delay.
    Backoff,
    /// Gave up after too many failures.
    Failed,
    /// Stopped on purpose.
    Stopped,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Instance {
    pub id: String,
    /// The host it runs on: set by the CLI when it merges several hosts' status.
    #[serde(default)]
    pub host: Option<String>,
    pub service: String,
    pub release: String,
    pub state: InstanceState,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub port: Option<u16>,
    pub healthy: bool,
    pub restarts: u32,
    /// Resident memory in bytes, when known.
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub last_exit: Option<Exit>,
}

/// Whether a service's resource limits are enforced, and how.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Limits {
    pub enforced: bool,
    /// `cgroup v2`, `cgroup v1` or `none`; `docker` for a container.
    pub via: String,
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default)]
    pub pids: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Running,
    Starting,
    Degraded,
    Failed,
    Stopped,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    #[serde(default)]
    pub release: Option<String>,
    pub urls: Vec<String>,
    pub instances: Vec<Instance>,
    pub limits: Limits,
    /// Why the service failed, with the end of its stderr.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// The service's last backup failed (kept until one succeeds).
    #[serde(default)]
    pub backup_failure: Option<BackupFailure>,
}

/// `GET /v1/projects/{project}/status`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    pub project: String,
    pub services: Vec<ServiceStatus>,
    /// Why the proxy this host's agent was told to run does not run: its
    /// routes answer nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_problem: Option<String>,
}

/// The answer to a deploy or rollback.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct DeployResult {
    pub release: Release,
    pub services: Vec<ServiceStatus>,
    /// Services that ran on the host but are no longer in the config: the
    /// deploy drained and stopped them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Services whose image or artifact and configuration did not change:
    /// their running instances were left alone and now count as the
    /// release's. Absent from agents before it: every service was replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
    /// No new release was made: the host already ran the request's artifact
    /// and configuration, and `release` is the one it runs, now also
    /// recording the request's deployment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line a service printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// Unix time in milliseconds.
    pub ts: u64,
    /// The host it came from: set by the CLI when it merges several hosts' logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub service: String,
    pub instance: String,
    pub stream: Stream,
    pub line: String,
}

/// `POST /v1/projects/{project}/rollback`.
#[serde_with::skip_serializing_none]
#[derive(Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RollbackRequest {
    /// The release to go back to; the one before the current one if absent.
    #[serde(default)]
    pub to: Option<String>,
    /// Secret values, as for a deploy.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The environment-wide deployment this rollback is part of, as for a deploy.
    #[serde(default)]
    pub deployment: Option<DeploymentMark>,
    /// The release this rollback undoes, and why: it is recorded failed
    /// with that reason (a release that failed its verify window).
    #[serde(default)]
    pub reverts: Option<Reverted>,
    /// Deploy `to` again to give its services new secrets, not to go back
    /// to it: the release is recorded as a redeploy (`redeploy_of`). An
    /// agent before it ignores this and records a rollback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redeploy: bool,
}

/// A release that succeeded and is undone after all, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reverted {
    pub release: String,
    pub reason: String,
}

impl std::fmt::Debug for RollbackRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollbackRequest")
            .field("to", &self.to)
            .field("deployment", &self.deployment)
            .field("reverts", &self.reverts)
            .field("redeploy", &self.redeploy)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `POST /v1/proxy/restart` and `POST /v1/proxy/stop`: the host's reverse
/// proxy afterwards.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ProxyInfo {
    /// Whether a proxy runs now.
    pub running: bool,
    /// Its process, when it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The process it replaced (a restart by listener handoff) or stopped.
    #[serde(default)]
    pub previous_pid: Option<u32>,
    /// Where clients reach it, like 127.0.0.1:8080.
    #[serde(default)]
    pub listen: Option<String>,
    /// The route table it keeps (and a proxy started later loads).
    pub routes_file: String,
}

/// What to do with the host's proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyAction {
    /// Start a new proxy process that takes over the listening sockets of
    /// the running one (none is refused), or start one if none runs.
    Restart,
    /// Stop it; its routes stay in routes.json.
    Stop,
}

/// `POST /v1/projects/{project}/stop` and `/restart`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ServiceSelector {
    /// One service, or every service of the project if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The body of every error answer: `{"error": {...}}` with a stable code.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApiErrorBody {
    pub error: ApiError,
}

/// Who holds a deploy lock: enough to find them, or to tell they are gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockHolder {
    /// The machine the holding command runs on (its hostname).
    pub machine: String,
    pub user: String,
    pub pid: u32,
    /// What it runs, like `gantry deploy -e prod`.
    pub command: String,
    /// Unix time in milliseconds when it took the lock.
    pub since_ms: u64,
    /// The kernel boot and pid namespace its pid belongs to: where it is
    /// unambiguous whether that pid still runs (hostnames repeat).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pid_space: String,
}

/// `POST /v1/projects/{project}/lock`: one deploy at a time per environment.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LockRequest {
    pub environment: String,
    pub holder: LockHolder,
    /// Take the lock even if someone holds it (`--force-unlock`).
    #[serde(default)]
    pub force: bool,
}

/// The lock was taken: `token` releases it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LockGrant {
    pub token: String,
    /// Whom a forced take displaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displaced: Option<LockHolder>,
}

/// `GET /v1/projects/{project}/lock?environment=ENV`: who holds an
/// environment's deploy lock, if anyone.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LockState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<LockHolder>,
}

/// `DELETE /v1/projects/{project}/lock`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LockRelease {
    pub environment: String,
    pub token: String,
}

/// `GET /v1/projects/{project}/services/{service}/exec`: how to run a command
/// as the service runs (`gantry exec`): its current release's directory and
/// environment. Secret values are not in it: the command's runner reads
/// `secrets_file` (0600) on the host, so they never travel.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ExecSpec {
    pub release: String,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub secrets_file: String,
    pub secret_names: Vec<String>,
    /// How the service's instances are confined, when the agent runs them
    /// as a user other than its own (`None`: as itself). The command runs
    /// confined the same way, so it can do no more than the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<Confinement>,
}

/// A user a service runs as: numbers only, it need not exist in /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, replacing the caller's.
    pub groups: Vec<u32>,
}

/// How a service's command is confined (see `gantry_agent::confine`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Confinement {
    /// Switch to this user before exec; `None` keeps the caller's.
    #[serde(default)]
    pub user: Option<ServiceUser>,
    /// Keep the caller's capabilities and bounding set: a service that asked
    /// for `run_as_root` gets root as root has it.
    #[serde(default)]
    pub keep_capabilities: bool,
}
