//! `gantry deploy`: build, snapshot the artifact, send the host only the
//! files it lacks, and ask its agent to roll the release out. The agent does
//! the cutover; this side prepares and reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent_api::{
    DeployRequest, DeploymentMark, LockHolder, LockRelease, LockRequest, Outcome, Release,
    RollbackRequest, ServiceSpec, ServiceStatus,
};
use crate::artifact;
use crate::config::resolve::{self, Build, Host as HostSpec, Service, Workload};
use crate::host::{BlobPart, Host, HostError};
use crate::{Code, Error, Project};

mod verify;

use crate::progress::Progress;

#[derive(Debug, Serialize)]
pub struct BuildStep {
    pub service: String,
    pub command: String,
    pub duration_ms: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Upload {
    pub files: usize,
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    /// Of `bytes_sent`, the bytes of images' layers and configs: only what
    /// the host's Docker Engine lacked.
    pub image_bytes_sent: u64,
    pub duration_ms: u64,
}

/// A deploy's report. For one host, `host`, `release`, `services` and
/// `upload` are that host's; with several, they are the first host's (or the
/// one that failed) and `hosts` has every host's outcome.
#[derive(Debug, Serialize)]
pub struct DeployReport {
    pub project: String,
    pub environment: String,
    /// The environment-wide deployment's id, recorded on every host's release.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub deployment: String,
    pub host: String,
    pub release: Release,
    pub services: Vec<ServiceStatus>,
    pub build: Vec<BuildStep>,
    pub upload: Upload,
    /// What the deploy stopped and left running on the host shown.
    #[serde(flatten)]
    pub changes: ServiceChanges,
    pub hosts: Vec<HostDeploy>,
    /// The SQL migrations run before the rollout, per service with `migrate.sql`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<crate::migrate::ServiceMigrations>,
    /// The `migrate.pre` and `migrate.post` commands run, once each, with
    /// where, how they ended and their output.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<crate::release_tasks::TaskRun>,
}

/// The services a deploy did not start anew on a host.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceChanges {
    /// Stopped, because the config no longer has them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Left running, not restarted: their image or artifact and
    /// configuration did not change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
}

/// What the deploy did on one host.
#[derive(Debug, Serialize)]
pub struct HostDeploy {
    pub host: String,
    pub outcome: HostOutcome,
    /// The release it runs after the deploy (for `unreachable`: as last known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The release it ran before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub upload: Upload,
    /// What the deploy stopped and left running on this host.
    #[serde(flatten)]
    pub changes: ServiceChanges,
    /// Its new release crashed or failed its health checks within the
    /// verify window (`error` says how); it went back to `previous`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verify_failed: bool,
    /// With `verify_failed`: the last lines of the failing service's log.
    #[serde(skip)]
    log_tail: Vec<String>,
    #[serde(skip)]
    detail: Option<(Release, Vec<ServiceStatus>)>,
    /// The error that ended it, kept whole so a one-host deploy reports its own code.
    #[serde(skip)]
    cause: Option<Box<Error>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOutcome {
    /// Runs the new release.
    Deployed,
    /// Already ran this artifact and configuration: no new release was made.
    Unchanged,
    /// The new release failed there; the host went back to `previous`.
    Reverted,
    /// The new release failed there and there was nothing to go back to.
    Failed,
    /// The connection was lost: the agent finishes or undoes the deploy on
    /// its own; `gantry status` tells which.
    Unreachable,
    /// Not attempted: the rollout stopped before this host.
    Skipped,
}

impl HostOutcome {
    /// The host runs what the deploy asked: a new release, or the same one.
    pub fn succeeded(self) -> bool {
        matches!(self, HostOutcome::Deployed | HostOutcome::Unchanged)
    }
}

#[derive(Clone, Copy, Default)]
pub struct DeployOptions<'a> {
    /// Use what is on disk; run no build command.
    pub skip_build: bool,
    /// Take the environment's deploy lock even if another deploy holds it.
    pub force_unlock: bool,
    /// Ask the hosts what the deploy changes, from what it is about to
    /// send, once its builds are done and before it takes the lock, and
    /// hand the plan to this: for people watching.
    pub show_plan: Option<&'a (dyn Fn(&crate::plan::PlanReport) + Sync)>,
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pub fn deploy(
    project: &Project,
    environment: &str,
    connect: crate::host::Connect<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<DeployReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let dir = config.project_dir().to_owned();
    refuse_unsupported(&config.file, &env)?;
    let services: Vec<_> = env.deploy_order().into_iter().cloned().collect();
    let placements = placements(&env, &services);
    let Some((first, _)) = placements.first() else {
        return Err(Error::Unsupported {
            what: format!("environment `{environment}` has no host to run any service"),
            hint: "add hosts to the environment, or check the services' `hosts`".to_owned(),
        });
    };

    let names: Vec<String> = services.iter().flat_map(|s| s.secrets.clone()).collect();
    let secrets = crate::secrets::values(&dir, environment, &names, env_vars)?;
    let build = run_builds(&dir, &services, options, progress)?;

    let images = crate::image::Shipment::export(&dir, &services, progress)?;

    progress.step("taking the artifact");
    let scan =
        artifact::of_services(&dir, &services).map_err(Error::io("read the project in", &dir))?;
    if let Some(show) = options.show_plan {
        let outgoing = crate::plan::Outgoing {
            env: &env,
            services: &services,
            scan: &scan,
            images: &images,
            secrets: &secrets,
        };
        show(&crate::plan::of_deploy(&outgoing, &dir, connect));
    }

    // One deploy at a time per environment: the lock lives on the first host's agent.
    let lock_host = connect(first)?;
    let lock = Lock::take(
        lock_host,
        &env.project,
        environment,
        options.force_unlock,
        progress,
    )?;

    // Once for the environment, before any new instance starts: a failure
    // stops the deploy here, every host still on its old release.
    let migrations = crate::migrate::before_rollout(&dir, &env, &secrets, progress)?;

    let deployment = crate::deployments::new_mark();
    let pre = crate::release_tasks::pre_tasks(&placements);
    let plan = HostPlan {
        project: &env.project,
        environment,
        scan: &scan,
        secrets: &secrets,
        images: &images,
        deployment: &deployment,
        verify: env.verify.as_std(),
        pre: &pre,
    };
    let batch = usize::try_from(env.max_parallel).unwrap_or(1).max(1);
    let mut outcomes: Vec<HostDeploy> = Vec::new();
    let mut stopped = false;
    let alone = crate::release_tasks::alone(&placements, &pre);
    for group in verify::batches(&placements, batch, env.canary, alone) {
        if stopped {
            outcomes.extend(group.iter().map(|(host, _)| HostDeploy::skipped(host)));
            continue;
        }
        let done: Vec<HostDeploy> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|(host, here)| scope.spawn(|| plan.deploy_to(host, here, connect, progress)))
                .collect();
            handles
                .into_iter()
                .zip(group)
                .map(|(handle, (host, _))| {
                    handle.join().unwrap_or_else(|_| {
                        HostDeploy::lost(
                            host,
                            Error::Internal {
                                what: "the deploy thread panicked".to_owned(),
                            },
                        )
                    })
                })
                .collect()
        });
        stopped = done.iter().any(|d| !d.outcome.succeeded());
        outcomes.extend(done);
    }
    // Once every host is live, never after a rollout that stopped.
    let post = (!stopped).then(|| {
        let releases = outcomes
            .iter()
            .filter_map(|d| Some((d.host.clone(), &d.detail.as_ref()?.0)))
            .collect();
        crate::release_tasks::run_post(&env.project, &placements, &releases, connect, progress)
    });
    lock.release(progress);

    let tasks = ran_tasks(&outcomes);
    let mut report = conclude(&env.project, environment, build, outcomes)?;
    report.migrations = migrations;
    report.deployment = deployment.id;
    with_post(report, tasks, post)
}

/// Which services run where, in the order hosts are listed; hosts that run
/// none left out.
fn placements<'e>(
    env: &'e crate::config::resolve::Environment,
    services: &[Service],
) -> Vec<(&'e HostSpec, Vec<Service>)> {
    env.hosts
        .iter()
        .map(|host| (host, resolve::services_on(services, &host.name)))
        .filter(|(_, here)| !here.is_empty())
        .collect()
}

/// The report with the tasks that ran; the error of a `migrate.post` that
/// failed, carrying it.
fn with_post(
    mut report: DeployReport,
    mut tasks: Vec<crate::release_tasks::TaskRun>,
    post: Option<Result<Vec<crate::release_tasks::TaskRun>, Box<crate::release_tasks::PostFailed>>>,
) -> Result<DeployReport, Error> {
    let failed = match post {
        None => None,
        Some(Ok(ran)) => {
            tasks.extend(ran);
            None
        }
        Some(Err(mut failed)) => {
            tasks.append(&mut failed.ran);
            Some(failed)
        }
    };
    report.tasks = tasks;
    match failed {
        None => Ok(report),
        Some(f) => Err(Error::TaskFailed {
            report: Box::new(serde_json::to_value(&report).unwrap_or_default()),
            what: format!("`{}` of `{}` on {} {}", f.phase, f.service, f.host, f.how),
            output: f.output,
        }),
    }
}

/// The tasks the hosts' new releases ran (`migrate.pre`), from their phases.
fn ran_tasks(outcomes: &[HostDeploy]) -> Vec<crate::release_tasks::TaskRun> {
    let mut ran = Vec::new();
    // A kept release's phases ran in an earlier deploy, not this one.
    for d in outcomes
        .iter()
        .filter(|d| d.outcome != HostOutcome::Unchanged)
    {
        let Some((release, _)) = &d.detail else {
            continue;
        };
        for phase in &release.phases {
            if let (Some(ended), Some(service)) = (&phase.task, &phase.service) {
                ran.push(crate::release_tasks::TaskRun {
                    phase: phase.name.clone(),
                    service: service.clone(),
                    host: d.host.clone(),
                    release: release.id.clone(),
                    ended: ended.clone(),
                });
            }
        }
    }
    ran
}

/// The report of a rollout from each host's outcome, or the error of one
/// that stopped.
pub(crate) fn conclude(
    project: &str,
    environment: &str,
    build: Vec<BuildStep>,
    outcomes: Vec<HostDeploy>,
) -> Result<DeployReport, Error> {
    let upload = outcomes.iter().fold(Upload::default(), |mut sum, d| {
        sum.files = sum.files.max(d.upload.files);
        sum.blobs_sent += d.upload.blobs_sent;
        sum.bytes_sent += d.upload.bytes_sent;
        sum.image_bytes_sent += d.upload.image_bytes_sent;
        sum.duration_ms += d.upload.duration_ms;
        sum
    });
    let mut outcomes = outcomes;
    let failed = outcomes
        .iter()
        .position(|d| !d.outcome.succeeded() && d.outcome != HostOutcome::Skipped);
    if let Some(at) = failed
        && outcomes[at].verify_failed
    {
        return Err(verify::failed(project, environment, &outcomes, at));
    }
    // One host, and it never got to a release: its own error says it best.
    if let ([only], Some(0)) = (outcomes.as_mut_slice(), failed)
        && only.detail.is_none()
        && let Some(cause) = only.cause.take()
    {
        return Err(*cause);
    }
    let shown = failed.unwrap_or(0);
    let detail = outcomes.get(shown).and_then(|d| d.detail.clone());
    let Some((release, services)) = detail else {
        // No host answered with a release: nothing but the outcomes to report.
        return Err(rollout_stopped(
            project,
            environment,
            None,
            &outcomes,
            shown,
            serde_json::json!({
                "project": project,
                "environment": environment,
                "build": build,
                "hosts": outcomes,
            }),
        ));
    };
    let report = DeployReport {
        project: project.to_owned(),
        environment: environment.to_owned(),
        deployment: String::new(),
        host: outcomes[shown].host.clone(),
        release,
        services,
        build,
        upload,
        changes: outcomes[shown].changes.clone(),
        hosts: outcomes,
        migrations: Vec::new(),
        tasks: Vec::new(),
    };
    if let Some(at) = failed
        && report.hosts.len() > 1
    {
        let details = serde_json::to_value(&report).unwrap_or_default();
        return Err(rollout_stopped(
            &report.project,
            environment,
            Some(&report.release),
            &report.hosts,
            at,
            details,
        ));
    }
    finish(report)
}

/// The error of a rollout that stopped at host `at`: which host, why, and
/// which release every host runs now.
pub(crate) fn rollout_stopped(
    project: &str,
    environment: &str,
    release: Option<&Release>,
    hosts: &[HostDeploy],
    at: usize,
    details: serde_json::Value,
) -> Error {
    let bad = &hosts[at];
    let runs: Vec<String> = hosts
        .iter()
        .map(|d| match (&d.outcome, &d.release) {
            (HostOutcome::Unreachable, _) => format!("{} unknown (unreachable)", d.host),
            (HostOutcome::Skipped, _) => format!("{} not updated", d.host),
            (_, Some(r)) => format!("{} {r}", d.host),
            (_, None) => format!("{} nothing", d.host),
        })
        .collect();
    let what = match bad.outcome {
        HostOutcome::Reverted => "failed and went back to its previous release",
        HostOutcome::Unreachable => "was lost during its deploy",
        _ => "failed",
    };
    Error::DeployFailed {
        release: release.map_or_else(
            || format!("of {project} to {environment}"),
            |r| r.id.clone(),
        ),
        reason: format!(
            "host {} {what}: {}; the rollout stopped. Now running: {}",
            bad.host,
            bad.error.as_deref().unwrap_or("no reason given"),
            runs.join(", ")
        ),
        log_tail: release.map(|r| r.log_tail.clone()).unwrap_or_default(),
        cause: release.and_then(|r| r.cause.clone()).map(Box::new),
        report: Box::new(with_cause(details, release.and_then(|r| r.cause.as_ref()))),
    }
}

/// A failed deploy's details with the release's cause on top
/// (`error.details.cause.code`), where scripts look for why.
fn with_cause(
    mut details: serde_json::Value,
    cause: Option<&crate::agent_api::Cause>,
) -> serde_json::Value {
    if let (Some(cause), Some(object)) = (cause, details.as_object_mut()) {
        object.insert(
            "cause".to_owned(),
            serde_json::to_value(cause).unwrap_or_default(),
        );
    }
    details
}

fn run_builds(
    dir: &Path,
    services: &[Service],
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<Vec<BuildStep>, Error> {
    let mut build = Vec::new();
    if options.skip_build {
        return Ok(build);
    }
    let mut done: Vec<String> = Vec::new();
    for service in services {
        let Some(what) = &service.build else {
            continue;
        };
        let mut command = what.describe();
        let image = match (what, &service.workload) {
            (Build::Image(_), Workload::Compose { image }) => {
                command = format!("{command} --tag {image}");
                Some(image)
            }
            _ => None,
        };
        if done.contains(&command) {
            continue;
        }
        done.push(command.clone());
        progress.step(&format!("building {}: {command}", service.name));
        let started = Instant::now();
        match (what, image) {
            (Build::Image(image_build), Some(image)) => {
                crate::image::build(dir, &service.name, image, image_build)?;
            }
            (Build::Command(command), _) => run_build_command(dir, &service.name, command)?,
            // Validation refuses a `build` table on a service without `image`.
            (Build::Image(_), None) => {
                return Err(Error::Internal {
                    what: format!("`{}` builds an image but has none", service.name),
                });
            }
        }
        build.push(BuildStep {
            service: service.name.clone(),
            command,
            duration_ms: ms(started),
        });
    }
    Ok(build)
}

/// Runs a build command (`build = "..."`) in the project directory.
fn run_build_command(dir: &Path, service: &str, command: &str) -> Result<(), Error> {
    // The build's output is the user's to read: it goes to stderr as it comes.
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(Error::io("run the build of", dir))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::BuildFailed {
            service: service.to_owned(),
            command: command.to_owned(),
            status: status.to_string(),
        })
    }
}

/// What every host gets: the same artifact and secrets.
struct HostPlan<'a> {
    project: &'a str,
    environment: &'a str,
    scan: &'a artifact::Scan,
    secrets: &'a BTreeMap<String, String>,
    images: &'a crate::image::Shipment,
    /// The environment-wide deployment every host records.
    deployment: &'a DeploymentMark,
    /// How long each host's new release is watched after cutover.
    verify: Duration,
    /// The `migrate.pre` tasks by the host whose deploy runs them.
    pre: &'a BTreeMap<String, Vec<crate::agent_api::Task>>,
}

impl HostPlan<'_> {
    /// Sends what the host lacks, deploys, and reverts the host if its
    /// release fails. Never an error: the outcome says what happened.
    fn deploy_to(
        &self,
        host: &HostSpec,
        services: &[Service],
        connect: crate::host::Connect<'_>,
        progress: &dyn Progress,
    ) -> HostDeploy {
        let agent = match connect(host) {
            Ok(agent) => agent,
            Err(e) => return HostDeploy::lost(host, e),
        };
        let previous = last_succeeded(agent.as_ref(), self.project);
        let mut outcome = HostDeploy::on(&host.name, HostOutcome::Unreachable, previous.clone());
        let sent = self
            .upload(agent.as_ref(), progress)
            .and_then(|mut upload| {
                self.images.send(agent.as_ref(), &mut upload, progress)?;
                Ok(upload)
            });
        match sent {
            Ok(upload) => outcome.upload = upload,
            Err(e) => {
                outcome.error = Some(e.to_string());
                outcome.cause = Some(Box::new(e));
                return outcome;
            }
        }
        progress.step(&format!("deploying {} to {}", self.project, agent.name()));
        let by_agent = verify::agent_watches(agent.as_ref(), self.verify);
        let request = self.request(&host.name, services, by_agent.then_some(self.verify));
        let result = match agent.deploy(&request) {
            Ok(result) => result,
            Err(e) => {
                // The agent answered and refused: nothing changed there.
                // Anything else lost the host mid-deploy.
                if let crate::host::HostError::Api { .. } = e {
                    outcome.outcome = HostOutcome::Failed;
                }
                outcome.error = Some(e.to_string());
                outcome.cause = Some(Box::new(e.into()));
                return outcome;
            }
        };
        outcome.release = Some(result.release.id.clone());
        if result.release.outcome != Outcome::Failed {
            let kept = result.kept;
            outcome.took(result);
            if !kept {
                let watch = verify::Watch {
                    project: self.project,
                    window: self.verify,
                    secrets: self.secrets,
                    by_agent,
                    grace: verify::verdict_grace(services),
                    out_of_reach: verify::OUT_OF_REACH_MAX,
                };
                watch.after_cutover(agent.as_ref(), &mut outcome, progress);
            }
            return outcome;
        }
        outcome.error = result.release.reason.clone();
        outcome.outcome = HostOutcome::Failed;
        // The agent keeps the failing service on its previous release; only
        // services that already switched need taking back.
        let switched = result
            .services
            .iter()
            .any(|s| s.release.as_deref() == Some(result.release.id.as_str()));
        let failed = (result.release, result.services);
        if !switched && previous.is_some() {
            outcome.outcome = HostOutcome::Reverted;
            outcome.release = previous;
        } else if let Some(back) = &previous {
            progress.step(&format!("{}: going back to {back}", agent.name()));
            let request = RollbackRequest {
                to: Some(back.clone()),
                secrets: self.secrets.clone(),
                ..RollbackRequest::default()
            };
            match agent.rollback(self.project, &request) {
                Ok(r) if r.release.outcome != Outcome::Failed => {
                    outcome.outcome = HostOutcome::Reverted;
                    outcome.release = Some(back.clone());
                }
                Ok(r) => {
                    outcome.error = Some(format!(
                        "{}; going back to {back} failed too: {}",
                        outcome.error.unwrap_or_default(),
                        r.release.reason.unwrap_or_default()
                    ));
                }
                Err(e) => {
                    outcome.error = Some(format!(
                        "{}; going back to {back} failed: {e}",
                        outcome.error.unwrap_or_default()
                    ));
                }
            }
        }
        outcome.detail = Some(failed);
        outcome
    }

    /// The deploy request every host of the rollout gets for `services`;
    /// with `verify`, the agent watches that window itself.
    fn request(&self, host: &str, services: &[Service], verify: Option<Duration>) -> DeployRequest {
        let config_hash = artifact::config_hash(services);
        let mut specs: Vec<ServiceSpec> = services.iter().map(ServiceSpec::from).collect();
        self.images.pin(&mut specs);
        let tasks = self.pre.get(host).cloned().unwrap_or_default();
        DeployRequest {
            project: self.project.to_owned(),
            environment: self.environment.to_owned(),
            config_hash,
            artifact: self.scan.artifact.clone(),
            spec_version: crate::agent_api::v1::revision_needed(&specs)
                .max(crate::agent_api::v1::DEPLOYMENT_REVISION)
                .max(if tasks.is_empty() {
                    0
                } else {
                    crate::agent_api::v1::TASK_REVISION
                })
                .max(if verify.is_some() {
                    crate::agent_api::v1::VERIFY_REVISION
                } else {
                    0
                }),
            services: specs,
            secrets: self.secrets.clone(),
            rollback_of: None,
            redeploy_of: None,
            deployment: Some(self.deployment.clone()),
            tasks,
            verify_ms: verify.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn upload(&self, agent: &dyn Host, progress: &dyn Progress) -> Result<Upload, Error> {
        let started = Instant::now();
        let mut digests: Vec<String> = self
            .scan
            .artifact
            .files
            .iter()
            .map(|f| f.digest.clone())
            .collect();
        digests.sort();
        digests.dedup();
        let missing = agent.missing_blobs(&digests)?;
        let mut upload = Upload {
            files: self.scan.artifact.files.len(),
            ..Upload::default()
        };
        if !missing.digests.is_empty() {
            progress.step(&format!(
                "sending {} of {} files to {}",
                missing.digests.len(),
                digests.len(),
                agent.name()
            ));
        }
        let sources = |digest: &str| self.scan.sources.get(digest).cloned();
        send_missing(agent, &missing, &sources, &mut upload, progress)?;
        upload.duration_ms = ms(started);
        Ok(upload)
    }
}

/// Sends each blob of `missing` (an agent's answer) from where `sources`
/// says it is, resuming what an interrupted upload left on the agent.
pub(crate) fn send_missing(
    agent: &dyn Host,
    missing: &crate::agent_api::BlobList,
    sources: &dyn Fn(&str) -> Option<std::path::PathBuf>,
    upload: &mut Upload,
    progress: &dyn Progress,
) -> Result<(), Error> {
    for digest in &missing.digests {
        let Some(source) = sources(digest) else {
            continue;
        };
        let offset = if missing.uploading.contains(digest) {
            match settled_offset(agent, digest, &source, progress)? {
                Some(offset) => offset,
                // An earlier deploy's upload completed it.
                None => continue,
            }
        } else {
            missing.partial.get(digest).copied().unwrap_or(0)
        };
        send_blob(agent, digest, &source, offset, upload, progress)?;
    }
    Ok(())
}

/// How many times one blob is sent before its upload fails: an interrupted
/// upload resumes where the agent's copy ends.
const UPLOAD_ATTEMPTS: usize = 3;

/// Sends one blob, starting at `offset` (what an earlier, interrupted upload
/// left on the agent). A broken connection, or an agent whose copy is not
/// what the client thought, resumes from what the agent says it holds; a
/// resumed copy that fails its checksum is sent again whole.
fn send_blob(
    agent: &dyn Host,
    digest: &str,
    source: &Path,
    offset: u64,
    upload: &mut Upload,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let size = std::fs::metadata(source).map_or(0, |m| m.len());
    // A partial copy longer than the file cannot be of it: start over.
    let mut offset = if offset > size { 0 } else { offset };
    let mut attempt = 1;
    loop {
        let error = match agent.upload_blob(
            BlobPart {
                digest,
                path: source,
                offset,
            },
            &mut upload.bytes_sent,
        ) {
            Ok(()) => {
                upload.blobs_sent += 1;
                return Ok(());
            }
            Err(e) => e,
        };
        let retry = match &error {
            crate::host::HostError::Api { code, .. } => {
                *code == Some(Code::ArtifactOffsetMismatch)
                    || *code == Some(Code::ArtifactUploadInProgress)
                    || (*code == Some(Code::ArtifactChecksum) && offset > 0)
            }
            crate::host::HostError::Unreachable { .. }
            | crate::host::HostError::Protocol { .. } => true,
            crate::host::HostError::Ssh { failure, .. } => {
                *failure == crate::host::SshFailure::Unreachable
            }
            crate::host::HostError::Incompatible { .. }
            | crate::host::HostError::WrongPeer { .. } => false,
        };
        if !retry || attempt >= UPLOAD_ATTEMPTS {
            return Err(error.into());
        }
        attempt += 1;
        let beside = matches!(
            &error,
            crate::host::HostError::Api {
                code: Some(Code::ArtifactUploadInProgress),
                ..
            }
        );
        match settled_offset(agent, digest, source, progress)? {
            Some(held) => {
                // Another upload of the blob, still growing: waiting on it
                // is not a failed try.
                if beside && held > offset {
                    attempt -= 1;
                }
                offset = held;
            }
            None => {
                // The interrupted upload completed on the agent after all.
                upload.blobs_sent += 1;
                return Ok(());
            }
        }
    }
}

/// How long to wait for an earlier upload of a blob to end on the agent: a
/// little more than the agent gives a connection that sends nothing.
const EARLIER_UPLOAD_WAIT: Duration =
    Duration::from_secs(crate::agent_api::UPLOAD_IDLE.as_secs() + 5);

/// Where to resume `digest` once no earlier upload of it is still being
/// received (a connection cut off mid-upload that the agent has not seen end
/// yet: its copy may still grow, and bytes sent beside it would be refused
/// after travelling). `None`: the agent has the whole blob.
fn settled_offset(
    agent: &dyn Host,
    digest: &str,
    source: &Path,
    progress: &dyn Progress,
) -> Result<Option<u64>, Error> {
    let size = std::fs::metadata(source).map_or(0, |m| m.len());
    let deadline = Instant::now() + EARLIER_UPLOAD_WAIT;
    let mut told = false;
    loop {
        let now = agent.missing_blobs(&[digest.to_owned()])?;
        if !now.digests.iter().any(|d| d == digest) {
            return Ok(None);
        }
        if !now.uploading.iter().any(|d| d == digest) || Instant::now() >= deadline {
            // A partial copy longer than the file cannot be of it: start over.
            let held = now
                .partial
                .get(digest)
                .copied()
                .filter(|held| *held <= size);
            return Ok(Some(held.unwrap_or(0)));
        }
        if !told {
            progress.step(&format!(
                "{}: waiting for an earlier upload of {} to end",
                agent.name(),
                source.file_name().map_or_else(
                    || source.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            ));
            told = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl HostDeploy {
    /// A host after a rollback (or any re-activation of a release).
    pub(crate) fn from_result(
        host: &str,
        previous: Option<String>,
        result: Result<crate::agent_api::DeployResult, crate::host::HostError>,
    ) -> HostDeploy {
        let mut outcome = HostDeploy::on(host, HostOutcome::Unreachable, previous);
        match result {
            Ok(result) => {
                if result.release.outcome == Outcome::Failed {
                    outcome.error = result.release.reason.clone();
                } else {
                    outcome.release = Some(result.release.id.clone());
                }
                outcome.took(result);
            }
            Err(e) => {
                outcome.error = Some(e.to_string());
                outcome.cause = Some(Box::new(e.into()));
            }
        }
        outcome
    }

    /// Host `host` with `outcome`, on `previous` before the deploy and
    /// after it, until the deploy says otherwise; nothing else known yet.
    fn on(host: &str, outcome: HostOutcome, previous: Option<String>) -> HostDeploy {
        HostDeploy {
            host: host.to_owned(),
            outcome,
            release: previous.clone(),
            previous,
            error: None,
            upload: Upload::default(),
            changes: ServiceChanges::default(),
            verify_failed: false,
            log_tail: Vec::new(),
            detail: None,
            cause: None,
        }
    }

    /// Takes in the agent's answer for a release it activated: failed, kept
    /// as it ran (unchanged) or deployed; with the services it removed and
    /// left running, and the release and services for the report.
    fn took(&mut self, result: crate::agent_api::DeployResult) {
        self.outcome = if result.release.outcome == Outcome::Failed {
            HostOutcome::Failed
        } else if result.kept {
            HostOutcome::Unchanged
        } else {
            HostOutcome::Deployed
        };
        self.changes = ServiceChanges {
            removed: result.removed,
            unchanged: result.unchanged,
        };
        self.detail = Some((result.release, result.services));
    }

    pub(crate) fn skipped(host: &HostSpec) -> HostDeploy {
        HostDeploy::on(&host.name, HostOutcome::Skipped, None)
    }

    pub(crate) fn lost(host: &HostSpec, error: Error) -> HostDeploy {
        HostDeploy {
            outcome: HostOutcome::Unreachable,
            error: Some(error.to_string()),
            cause: Some(Box::new(error)),
            ..HostDeploy::skipped(host)
        }
    }
}

/// The environment's deploy lock, released when dropped.
struct Lock {
    agent: Box<dyn Host>,
    project: String,
    release: LockRelease,
    released: bool,
}

impl Lock {
    fn take(
        agent: Box<dyn Host>,
        project: &str,
        environment: &str,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<Lock, Error> {
        let holder = LockHolder {
            machine: crate::machine::hostname(),
            user: std::env::var("USER").unwrap_or_default(),
            pid: std::process::id(),
            command: format!("gantry deploy -e {environment}"),
            since_ms: crate::clock::now_ms(),
            pid_space: crate::machine::pid_space(),
        };
        let request = |force| LockRequest {
            environment: environment.to_owned(),
            holder: holder.clone(),
            force,
        };
        let grant = match agent.lock(project, &request(force)) {
            Err(refused)
                if matches!(
                    &refused,
                    HostError::Api {
                        code: Some(Code::DeployLocked),
                        ..
                    }
                ) =>
            {
                let Some(dead) = dead_holder_here(agent.as_ref(), project, environment) else {
                    return Err(refused.into());
                };
                progress.step(&format!(
                    "taking back the deploy lock of pid {} (`{}`), which ran here and has ended",
                    dead.pid, dead.command
                ));
                agent.lock(project, &request(true))?
            }
            other => other?,
        };
        if let Some(old) = grant.displaced.as_ref().filter(|_| force) {
            progress.step(&format!(
                "warning: took the deploy lock from pid {} of {}@{} (`{}`); if it still runs, two deploys now overlap",
                old.pid, old.user, old.machine, old.command
            ));
        }
        Ok(Lock {
            agent,
            project: project.to_owned(),
            release: LockRelease {
                environment: environment.to_owned(),
                token: grant.token,
            },
            released: false,
        })
    }

    /// Gives the lock back, and warns when its host cannot be told: the lock
    /// then stays taken until the next deploy from this machine takes it back
    /// (this process being gone), or one from elsewhere passes `--force-unlock`.
    fn release(mut self, progress: &dyn Progress) {
        self.released = true;
        if let Err(e) = self.agent.unlock(&self.project, &self.release) {
            progress.step(&format!(
                "warning: the deploy lock on {} stays taken ({e}); the next deploy from this machine takes it back, one from elsewhere needs --force-unlock",
                self.agent.name()
            ));
        }
    }
}

/// The holder of `environment`'s lock, when it was a command of this
/// machine's pid space (same kernel boot, same pid namespace) that has ended (killed, or cut off from the lock's host before it
/// could give the lock back): no rollout goes on for it, so the lock is taken
/// back without `--force-unlock`. (An agent still finishing a deploy it was
/// given refuses another deploy of the project itself.)
fn dead_holder_here(agent: &dyn Host, project: &str, environment: &str) -> Option<LockHolder> {
    agent
        .lock_holder(project, environment)
        .ok()
        .flatten()
        .filter(|holder| {
            !holder.pid_space.is_empty()
                && holder.pid_space == crate::machine::pid_space()
                && holder.pid != std::process::id()
                && !crate::machine::alive(holder.pid)
        })
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.agent.unlock(&self.project, &self.release);
        }
    }
}

/// A report whose release failed becomes a `deploy.failed` error carrying it.
pub fn finish(report: DeployReport) -> Result<DeployReport, Error> {
    if report.release.outcome == Outcome::Failed {
        return Err(Error::DeployFailed {
            release: report.release.id.clone(),
            reason: report.release.reason.clone().unwrap_or_default(),
            log_tail: report.release.log_tail.clone(),
            cause: report.release.cause.clone().map(Box::new),
            report: Box::new(with_cause(
                serde_json::to_value(&report).unwrap_or_default(),
                report.release.cause.as_ref(),
            )),
        });
    }
    Ok(report)
}

/// Refuses, before anything is done, what gantry.toml may say but a deploy
/// cannot do yet (`validate` refuses `backup` and `migrate` commands).
pub fn refuse_unsupported(
    file: &crate::config::model::File,
    _env: &crate::config::resolve::Environment,
) -> Result<(), Error> {
    refuse_provider_hosts(file)
}

/// Refuses hosts a cloud provider would make: the schema names providers
/// for a later version, and until then such a host could only fail later
/// (it has no address to reach). `provider = "local"` is this machine.
pub fn refuse_provider_hosts(file: &crate::config::model::File) -> Result<(), Error> {
    let made = file.hosts.iter().find_map(|(name, host)| {
        host.provider
            .filter(|p| *p != crate::config::model::Provider::Local)
            .map(|p| (name, p))
    });
    match made {
        None => Ok(()),
        Some((name, provider)) => Err(Error::Unsupported {
            what: format!(
                "host `{name}` has provider = \"{}\": cloud providers are not supported yet",
                crate::serde_name(&provider)
            ),
            hint: format!(
                "create the server yourself, then give the host an `ssh` address instead: `gantry register {name} --ssh user@address -e ENV`"
            ),
        }),
    }
}

/// The newest release that succeeded on the host, if it can be told.
fn last_succeeded(agent: &dyn Host, project: &str) -> Option<String> {
    agent
        .releases(project)
        .ok()
        .and_then(|all| all.into_iter().find(|r| r.outcome == Outcome::Succeeded))
        .map(|r| r.id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fake::{Fleet, Said, Script, project};

    fn ran(script: Script) -> Script {
        Script {
            runs: Some("r1".to_owned()),
            ..script
        }
    }

    fn deploy_to(
        fleet: &Arc<Fleet>,
        project: &Project,
        options: &DeployOptions,
        said: &Said,
    ) -> Result<DeployReport, Error> {
        let connect = |spec: &HostSpec| fleet.connect(spec);
        deploy(project, "prod", &connect, &|_| None, options, said)
    }

    /// Deploys `project` to `fleet` with the default options, saying nothing.
    fn deploy_plainly(fleet: &Arc<Fleet>, project: &Project) -> Result<DeployReport, Error> {
        deploy_to(fleet, project, &DeployOptions::default(), &Said::default())
    }

    /// Rolls `shop` out to `hosts` of `fleet`, `max_parallel` at a time.
    fn roll_out(fleet: &Arc<Fleet>, hosts: &[&str], max_parallel: u32) -> DeployReport {
        let (_dir, project) = project(hosts, max_parallel);
        deploy_plainly(fleet, &project).unwrap()
    }

    /// The deploy calls (`h1 deploy` as it begins, `h1 deployed` as it ends), in order.
    fn deploys(fleet: &Fleet) -> Vec<String> {
        fleet
            .calls()
            .into_iter()
            .filter(|c| c.ends_with(" deploy") || c.ends_with(" deployed"))
            .collect()
    }

    fn position(calls: &[String], call: &str) -> usize {
        calls
            .iter()
            .position(|c| c == call)
            .unwrap_or_else(|| panic!("no `{call}` in {calls:#?}"))
    }

    #[test]
    fn an_upload_refused_as_already_under_way_is_sent_again_up_to_three_times() {
        let hosts = ["h1"];
        let busy = |refusals| {
            let fleet = Fleet::new(hosts.map(|h| {
                let script = Script {
                    upload_busy: refusals,
                    ..Script::default()
                };
                (h, ran(script))
            }));
            let (_dir, project) = project(&hosts, 1);
            let result = deploy_plainly(&fleet, &project);
            (result, fleet.calls_to("h1 upload").len())
        };
        let (once, uploads) = busy(2);
        let report = once.expect("a deploy whose upload went through on its third try");
        assert_eq!(report.hosts[0].outcome, HostOutcome::Deployed);
        assert!(uploads >= 3, "{uploads} uploads");
        let (always, uploads) = busy(usize::MAX);
        let error = always.expect_err("a deploy whose upload is always refused");
        assert_eq!(uploads, 3, "tried three times, then gave up");
        let text = format!("{error:#}");
        assert!(text.contains("being uploaded by another request"), "{text}");
    }

    #[test]
    fn a_rollout_deploys_max_parallel_hosts_at_once_in_the_order_listed() {
        let hosts = ["h1", "h2", "h3", "h4"];
        let fleet = Fleet::meeting(hosts.map(|h| (h, ran(Script::default()))), 2);
        let report = roll_out(&fleet, &hosts, 2);

        assert_eq!(fleet.most_deploying(), 2, "{:#?}", fleet.calls());
        let calls = deploys(&fleet);
        for first in ["h1", "h2"] {
            for second in ["h3", "h4"] {
                assert!(
                    position(&calls, &format!("{first} deployed"))
                        < position(&calls, &format!("{second} deploy")),
                    "{second} began before {first} ended: {calls:#?}"
                );
            }
        }
        let outcomes: Vec<_> = report
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.outcome))
            .collect();
        assert_eq!(outcomes, hosts.map(|h| (h, HostOutcome::Deployed)));
    }

    #[test]
    fn migrate_pre_goes_with_the_first_host_alone_and_post_runs_once_at_the_end() {
        let hosts = ["h1", "h2", "h3"];
        let fleet = Fleet::new(hosts.map(|h| (h, ran(Script::default()))));
        let (_dir, project) = project_with_tasks(&hosts);
        let report = deploy_plainly(&fleet, &project).unwrap();

        let calls: Vec<String> = fleet
            .calls()
            .into_iter()
            .filter(|c| c.contains(" task ") || c.ends_with(" deploy") || c.ends_with(" deployed"))
            .collect();
        // h1 alone with the task, then h2 and h3 (together); post at the end.
        assert_eq!(
            &calls[..3],
            ["h1 task migrate.pre web", "h1 deploy", "h1 deployed"]
        );
        assert_eq!(
            calls.last().map(String::as_str),
            Some("h1 task migrate.post web of r2")
        );
        assert_eq!(calls.iter().filter(|c| c.contains(" task ")).count(), 2);
        let tasks: Vec<_> = report
            .tasks
            .iter()
            .map(|t| (t.phase.as_str(), t.host.as_str()))
            .collect();
        assert_eq!(
            tasks,
            [("migrate.post", "h1")],
            "the fake keeps no pre phase"
        );
    }

    /// The fake project on `hosts` (2 at a time), its web service with
    /// `migrate = { pre = "./migrate", post = "./warm" }`.
    fn project_with_tasks(hosts: &[&str]) -> (tempfile::TempDir, Project) {
        let (dir, project) = project(hosts, 2);
        let path = dir.path().join("gantry.toml");
        let toml = std::fs::read_to_string(&path).unwrap().replacen(
            "port = \"http\"\n",
            "port = \"http\"\nmigrate = { pre = \"./migrate\", post = \"./warm\" }\n",
            1,
        );
        std::fs::write(&path, toml).unwrap();
        (dir, project)
    }

    /// Two hosts already running r1, whose `migrate.pre` passed and whose
    /// `migrate.post` ended with `post_exit_code`, deployed again with
    /// `migrate = { pre = "./migrate", post = "./warm" }`; the calls that
    /// ran tasks, and the tasks reported.
    fn redeploy_unchanged(post_exit_code: i32) -> (Vec<String>, Vec<String>) {
        let hosts = ["h1", "h2"];
        let kept = Release {
            phases: vec![
                phase_ran("migrate.pre", "./migrate", 0),
                phase_ran("migrate.post", "./warm", post_exit_code),
            ],
            ..crate::fake::release("r1", Outcome::Succeeded)
        };
        let script = Script {
            already_runs: true,
            history: vec![kept],
            ..ran(Script::default())
        };
        let fleet = Fleet::new(hosts.iter().map(|h| (*h, script.clone())));
        let (_dir, project) = project_with_tasks(&hosts);
        let report = deploy_plainly(&fleet, &project).unwrap();
        let outcomes: Vec<_> = report.hosts.iter().map(|h| h.outcome).collect();
        assert_eq!(outcomes, vec![HostOutcome::Unchanged; hosts.len()]);
        let reported = report
            .tasks
            .iter()
            .map(|t| format!("{} {} {}", t.phase, t.host, t.release))
            .collect();
        (fleet.calls_to("task migrate.post"), reported)
    }

    fn phase_ran(name: &str, command: &str, exit_code: i32) -> crate::agent_api::Phase {
        crate::agent_api::Phase {
            name: name.to_owned(),
            service: Some("web".to_owned()),
            started_at: 0,
            duration_ms: 0,
            engine_ms: None,
            task: Some(crate::agent_api::TaskOutput {
                command: command.to_owned(),
                exit_code: Some(exit_code),
                output: Vec::new(),
            }),
        }
    }

    #[test]
    fn a_deploy_that_changes_nothing_anywhere_does_not_run_migrate_post_again() {
        let (posts, reported) = redeploy_unchanged(0);
        assert!(posts.is_empty(), "{posts:?}");
        assert!(
            reported.is_empty(),
            "the kept release's tasks ran in an earlier deploy: {reported:?}"
        );
    }

    #[test]
    fn a_kept_release_whose_migrate_post_failed_runs_it_on_the_next_deploy() {
        let (posts, reported) = redeploy_unchanged(1);
        assert_eq!(posts, ["h1 task migrate.post web of r1"]);
        assert_eq!(reported, ["migrate.post h1 r1"]);
    }

    #[test]
    fn the_migrate_post_tasks_of_one_host_share_one_connection() {
        let hosts = ["h1"];
        let fleet = Fleet::new(hosts.map(|h| (h, ran(Script::default()))));
        let (dir, project) = project(&hosts, 1);
        let toml = std::fs::read_to_string(dir.path().join("gantry.toml")).unwrap();
        let toml = toml.replacen(
            "port = \"http\"\n",
            "port = \"http\"\nmigrate = { post = \"./warm\" }\n\n\
             [services.worker]\nrun = \"bin/web\"\nmigrate = { post = \"./reindex\" }\n",
            1,
        );
        std::fs::write(dir.path().join("gantry.toml"), toml).unwrap();
        let before_post = |calls: &[String]| {
            calls
                .iter()
                .position(|c| c.contains(" task migrate.post"))
                .unwrap()
        };
        deploy_plainly(&fleet, &project).unwrap();
        let calls = fleet.calls();
        let connects = calls[before_post(&calls)..]
            .iter()
            .filter(|c| *c == "h1 connect")
            .count();
        assert_eq!(fleet.calls_to("task migrate.post").len(), 2, "{calls:#?}");
        assert_eq!(connects, 0, "connected once, before the first: {calls:#?}");
    }

    /// The digest of the fake project's artifact as its files are now.
    fn artifact_now(project: &Project) -> String {
        let config = project.load().unwrap();
        let env = config.environment("prod").unwrap();
        let services: Vec<Service> = env.deploy_order().into_iter().cloned().collect();
        artifact::of_services(config.project_dir(), &services)
            .unwrap()
            .artifact
            .digest
    }

    #[test]
    fn a_deploy_shows_one_plan_of_what_it_built_before_it_takes_the_lock() {
        let fleet = Fleet::new([("h1", ran(Script::default()))]);
        let (dir, project) = project(&["h1"], 1);
        let path = dir.path().join("gantry.toml");
        let toml = std::fs::read_to_string(&path).unwrap().replacen(
            "run = \"bin/web\"\n",
            "run = \"bin/web\"\nbuild = \"echo 2 > VERSION\"\n",
            1,
        );
        std::fs::write(&path, toml).unwrap();
        std::fs::write(dir.path().join("VERSION"), "1\n").unwrap();
        let unbuilt = artifact_now(&project);
        let said = Said::default();
        let show = |report: &crate::plan::PlanReport| said.plan(report);
        let options = DeployOptions {
            show_plan: Some(&show),
            ..DeployOptions::default()
        };
        deploy_to(&fleet, &project, &options, &said).unwrap();

        let built = artifact_now(&project);
        assert_ne!(built, unbuilt, "the build changed the files");
        let lines = said.lines();
        let plans: Vec<&String> = lines.iter().filter(|l| l.starts_with("plan")).collect();
        assert_eq!(
            plans,
            [&format!("plan of {built}: h1 NewRelease")],
            "{lines:#?}"
        );
        let building = position(&lines, "building web: echo 2 > VERSION");
        assert!(building < position(&lines, plans[0]), "{lines:#?}");
        // The hosts were asked before the lock, and the rollout came after.
        let calls = fleet.calls();
        assert!(position(&calls, "h1 compare") < position(&calls, "h1 lock"));
        assert!(position(&calls, "h1 lock") < position(&calls, "h1 deploy"));

        // Unasked, no plan: no host is asked to compare.
        let fleet = Fleet::new([("h1", ran(Script::default()))]);
        let said = Said::default();
        deploy_to(&fleet, &project, &DeployOptions::default(), &said).unwrap();
        assert!(!said.lines().iter().any(|l| l.starts_with("plan")));
        assert!(fleet.calls_to("compare").is_empty(), "{:#?}", fleet.calls());
    }

    #[test]
    fn a_rollout_of_max_parallel_one_deploys_one_host_after_the_other() {
        let hosts = ["h1", "h2", "h3"];
        let fleet = Fleet::new(hosts.map(|h| (h, ran(Script::default()))));
        roll_out(&fleet, &hosts, 1);
        assert_eq!(
            deploys(&fleet),
            [
                "h1 deploy",
                "h1 deployed",
                "h2 deploy",
                "h2 deployed",
                "h3 deploy",
                "h3 deployed"
            ]
        );
    }

    /// A single host's report of `release`, as `finish` takes it.
    fn report_of(release: Release) -> DeployReport {
        DeployReport {
            project: "shop".to_owned(),
            environment: "prod".to_owned(),
            deployment: String::new(),
            host: "local".to_owned(),
            release,
            services: Vec::new(),
            build: Vec::new(),
            upload: Upload::default(),
            changes: ServiceChanges::default(),
            hosts: Vec::new(),
            migrations: Vec::new(),
            tasks: Vec::new(),
        }
    }

    #[test]
    fn a_release_failed_by_a_container_error_names_its_code_in_the_error() {
        let mut release = crate::fake::release("r2", Outcome::Failed);
        release.cause = Some(crate::agent_api::Cause::new(
            crate::Code::ContainerNoImage,
            "no image shop/web:1 on this host",
        ));
        let error = finish(report_of(release)).expect_err("a failed release");
        let details = assert_caused_by(&error, "container.no_image");
        assert_eq!(
            details["cause"]["message"], "no image shop/web:1 on this host",
            "{details:#}"
        );
    }

    /// `error` is still `deploy.failed`, which scripts test for, and names
    /// the coded error behind it (`cause`) in its details and its hint's
    /// first line; its details.
    fn assert_caused_by<'e>(error: &'e Error, cause: &str) -> &'e serde_json::Value {
        assert_eq!(error.code(), "deploy.failed");
        let details = error.details().expect("details");
        assert_eq!(details["cause"]["code"], cause, "{details:#}");
        let hint = error.hint().expect("hint");
        assert_eq!(
            hint.lines().next(),
            Some(format!("caused by {cause}").as_str()),
            "{hint}"
        );
        details
    }

    #[test]
    fn a_release_failed_without_a_coded_cause_has_no_cause_in_the_error() {
        let release = crate::fake::release("r2", Outcome::Failed);
        let error = finish(report_of(release)).expect_err("a failed release");
        let details = error.details().expect("details");
        assert!(details.get("cause").is_none(), "{details:#}");
        assert!(!error.hint().unwrap_or_default().contains("caused by"));
    }

    /// Deploys `project` to its hosts h1, h2 and h3, each running r1, where
    /// `odd` follows `script` and the others go well.
    fn deploy_three(
        project: &Project,
        odd: &str,
        script: Script,
    ) -> (Arc<Fleet>, Result<DeployReport, Error>) {
        let fleet = Fleet::new(["h1", "h2", "h3"].map(|h| {
            let script = if h == odd {
                script.clone()
            } else {
                Script::default()
            };
            (h, ran(script))
        }));
        let result = deploy_plainly(&fleet, project);
        (fleet, result)
    }

    /// Three hosts deployed one at a time, `h2`'s new release failing
    /// (with `cause`, when given).
    fn fail_on_h2(
        cause: Option<crate::agent_api::Cause>,
    ) -> (Arc<Fleet>, Result<DeployReport, Error>) {
        let (_dir, project) = project(&["h1", "h2", "h3"], 1);
        let failing = Script {
            release_fails: true,
            release_cause: cause,
            ..Script::default()
        };
        deploy_three(&project, "h2", failing)
    }

    #[test]
    fn a_rollout_stopped_by_a_container_error_names_its_code_in_the_error() {
        let (_, result) = fail_on_h2(Some(crate::agent_api::Cause::new(
            crate::Code::ContainerUnreachable,
            "cannot reach the Docker engine at /var/run/docker.sock",
        )));

        let Err(error) = result else {
            panic!("the rollout went on: {result:?}");
        };
        assert_caused_by(&error, "container.unreachable");
    }

    #[test]
    fn a_failing_host_is_reverted_and_the_rollout_stops_there() {
        let (fleet, result) = fail_on_h2(None);

        let Err(Error::DeployFailed { reason, report, .. }) = result else {
            panic!("the rollout went on: {result:?}");
        };
        assert!(
            fleet.calls().contains(&"h2 rollback to r1".to_owned()),
            "{:#?}",
            fleet.calls()
        );
        assert!(
            fleet.calls_to("h3").is_empty(),
            "h3 was touched: {:#?}",
            fleet.calls()
        );
        assert!(
            reason.contains("host h2 failed and went back to its previous release"),
            "{reason}"
        );
        assert!(
            reason.contains("Now running: h1 r2, h2 r1, h3 not updated"),
            "{reason}"
        );
        let outcomes: Vec<_> = report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["host"].as_str().unwrap(),
                    h["outcome"].as_str().unwrap(),
                    h["release"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                ("h1", "deployed", Some("r2")),
                ("h2", "reverted", Some("r1")),
                ("h3", "skipped", None)
            ]
        );
    }

    #[test]
    fn a_host_already_running_the_deploy_is_reported_unchanged_and_the_rollout_goes_on() {
        let hosts = ["h1", "h2"];
        let fleet = Fleet::new([
            (
                "h1",
                ran(Script {
                    already_runs: true,
                    ..Script::default()
                }),
            ),
            ("h2", ran(Script::default())),
        ]);
        let report = roll_out(&fleet, &hosts, 1);
        let outcomes: Vec<_> = report
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.outcome, h.release.as_deref()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("h1", HostOutcome::Unchanged, Some("r1")),
                ("h2", HostOutcome::Deployed, Some("r2"))
            ]
        );
        assert!(report.deployment.starts_with('d'), "{report:#?}");
    }

    /// Three hosts that would all deploy at once, `h1` crashing on its new
    /// release; `rollout` is the environment's `deploy` table.
    fn crash_on_h1(rollout: &str) -> (Arc<Fleet>, Result<DeployReport, Error>) {
        let hosts = ["h1", "h2", "h3"];
        let (_dir, project) = crate::fake::project_rolling_out(&hosts, 3, rollout);
        let crashing = Script {
            services: vec![crate::fake::crashing("r2")],
            logs: vec![crate::fake::log_line(1, "panic: no database")],
            ..Script::default()
        };
        deploy_three(&project, "h1", crashing)
    }

    #[test]
    fn a_canary_that_crashes_in_its_verify_window_goes_back_and_no_other_host_is_touched() {
        let (fleet, result) = crash_on_h1("verify = \"30s\"\ncanary = true\n");
        let Err(error @ Error::VerifyFailed { .. }) = result else {
            panic!("the rollout went on: {result:?}");
        };
        assert_eq!(error.code(), "deploy.verify_failed");
        assert_canary_went_back(&error);
        // Marked failed as it went back.
        assert_eq!(fleet.calls_to("rollback"), ["h1 rollback to r1, r2 failed"]);
        assert!(fleet.calls_to("h2").is_empty(), "{:#?}", fleet.calls());
        assert!(fleet.calls_to("h3").is_empty(), "{:#?}", fleet.calls());
    }

    /// `error` says the canary h1's r2 crashed in its 30 s window and that
    /// h1 went back to r1, the other hosts untouched; so do its details.
    fn assert_canary_went_back(error: &Error) {
        let message = error.to_string();
        assert!(
            message.contains("service `web`: instance web-1 exited with status 1")
                && message.contains("30 s verify window")
                && message.contains("Now running: h1 r1, h2 not updated, h3 not updated"),
            "{message}"
        );
        let details = error.details().unwrap();
        assert_eq!(details["hosts"][0]["outcome"], "reverted", "{details:#}");
        assert_eq!(details["hosts"][0]["verify_failed"], true, "{details:#}");
    }

    #[test]
    fn a_release_reverted_in_its_verify_window_is_filed_naming_its_host_and_release() {
        let (_fleet, result) = crash_on_h1("verify = \"30s\"\ncanary = true\n");
        let Err(error) = result else {
            panic!("the rollout succeeded");
        };
        let incident = crate::incident::Incident::of_deploy("shop", "production", &error);
        assert_eq!(incident.code, "deploy.verify_failed");
        assert_eq!(incident.host.as_deref(), Some("h1"));
        assert_eq!(
            incident.release.as_deref(),
            Some("r2"),
            "the release that failed"
        );
        let bug = incident.bug(Some("SHOP"));
        assert!(
            bug.description.contains("- Host: h1") && bug.description.contains("- Release: r2"),
            "{}",
            bug.description
        );
        assert_eq!(bug.affected_version.as_deref(), Some("r2"));
        assert_eq!(incident.log_tail, ["web-1: panic: no database"]);
        assert!(
            bug.description.contains("panic: no database"),
            "{}",
            bug.description
        );
    }

    #[test]
    fn without_a_canary_the_hosts_of_a_batch_deploy_together_and_the_crashing_one_goes_back() {
        let (fleet, result) = crash_on_h1("verify = \"30s\"\n");
        let Err(error) = result else {
            panic!("the rollout succeeded");
        };
        assert_eq!(error.code(), "deploy.verify_failed");
        assert_eq!(fleet.calls_to("rollback"), ["h1 rollback to r1, r2 failed"]);
        for host in ["h2", "h3"] {
            assert!(
                fleet.calls().contains(&format!("{host} deployed")),
                "{:#?}",
                fleet.calls()
            );
        }
    }

    #[test]
    fn an_agent_that_watches_its_own_window_is_sent_it_and_its_verdict_reported_as_the_clis() {
        let hosts = ["h1", "h2", "h3"];
        let (_dir, project) =
            crate::fake::project_rolling_out(&hosts, 3, "verify = \"30s\"\ncanary = true\n");
        let crashing = Script {
            services: vec![crate::fake::crashing("r2")],
            logs: vec![crate::fake::log_line(1, "panic: no database")],
            watches_verify: true,
            ..Script::default()
        };
        let (fleet, result) = deploy_three(&project, "h1", crashing);
        let Err(error @ Error::VerifyFailed { .. }) = result else {
            panic!("the rollout went on: {result:?}");
        };
        assert_canary_went_back(&error);
        let incident = crate::incident::Incident::of_deploy("shop", "production", &error);
        assert_eq!(incident.release.as_deref(), Some("r2"));
        assert_eq!(incident.log_tail, ["web-1: panic: no database"]);
        // The window went with the deploy; the agent judged and went back.
        assert_eq!(
            fleet.calls_to("watch"),
            ["h1 watch 30000 ms, spec revision 7"]
        );
        assert!(
            fleet.calls_to("rollback").is_empty(),
            "{:#?}",
            fleet.calls()
        );
        assert!(!fleet.calls().contains(&"h1 status".to_owned()));
        assert!(fleet.calls_to("h2").is_empty(), "{:#?}", fleet.calls());
    }

    #[test]
    fn a_canary_whose_agent_passes_its_window_lets_the_other_hosts_deploy() {
        let hosts = ["h1", "h2", "h3"];
        let (_dir, project) =
            crate::fake::project_rolling_out(&hosts, 2, "verify = \"30s\"\ncanary = true\n");
        let watching = Script {
            watches_verify: true,
            ..Script::default()
        };
        let fleet = Fleet::new(hosts.map(|h| (h, ran(watching.clone()))));
        let report = deploy_plainly(&fleet, &project).unwrap();
        assert!(
            report
                .hosts
                .iter()
                .all(|h| h.outcome == HostOutcome::Deployed),
            "{report:#?}"
        );
        let calls = fleet.calls();
        assert!(position(&calls, "h1 release r2") < position(&calls, "h2 deploy"));
        assert!(!calls.iter().any(|c| c.ends_with(" status")), "{calls:#?}");
    }

    #[test]
    fn an_older_agent_is_sent_no_window_and_the_cli_watches_it() {
        let hosts = ["h1"];
        let (_dir, project) = crate::fake::project_rolling_out(&hosts, 1, "verify = \"1s\"\n");
        let fleet = Fleet::new([("h1", ran(Script::default()))]);
        deploy_plainly(&fleet, &project).unwrap();
        assert!(fleet.calls_to("watch").is_empty(), "{:#?}", fleet.calls());
        assert!(fleet.calls().contains(&"h1 status".to_owned()));
    }

    #[test]
    fn a_canary_passes_its_window_before_any_other_host_begins() {
        let hosts = ["h1", "h2", "h3"];
        let (_dir, project) =
            crate::fake::project_rolling_out(&hosts, 2, "verify = \"1s\"\ncanary = true\n");
        let fleet = Fleet::meeting(hosts.map(|h| (h, ran(Script::default()))), 1);
        deploy_plainly(&fleet, &project).unwrap();
        let calls = fleet.calls();
        let watched = calls
            .iter()
            .rposition(|c| c == "h1 status")
            .unwrap_or_else(|| panic!("h1 was not watched: {calls:#?}"));
        assert!(watched < position(&calls, "h2 deploy"), "{calls:#?}");
        assert!(watched < position(&calls, "h3 deploy"), "{calls:#?}");
        assert!(fleet.calls_to("rollback").is_empty(), "{calls:#?}");
    }

    #[test]
    fn the_deploy_lock_is_taken_on_the_first_host_before_any_deploy_and_given_back_after() {
        let hosts = ["h1", "h2"];
        let fleet = Fleet::new(hosts.map(|h| (h, ran(Script::default()))));
        roll_out(&fleet, &hosts, 1);

        let calls = fleet.calls();
        assert_eq!(fleet.calls_to("lock"), ["h1 lock"]);
        assert_eq!(fleet.calls_to("unlock"), ["h1 unlock"]);
        assert!(position(&calls, "h1 lock") < position(&calls, "h1 deploy"));
        assert!(position(&calls, "h2 deployed") < position(&calls, "h1 unlock"));
        assert_eq!(fleet.lock_holder_now(), None);
    }

    /// A deploy of another machine that still runs.
    fn elsewhere() -> LockHolder {
        LockHolder {
            machine: "laptop".to_owned(),
            user: "ana".to_owned(),
            pid: 4242,
            command: "gantry deploy -e prod".to_owned(),
            since_ms: 0,
            pid_space: "another-boot/pid:[1]".to_owned(),
        }
    }

    #[test]
    fn a_held_lock_refuses_a_second_deploy_naming_its_holder() {
        let (_dir, project) = project(&["h1"], 1);
        let fleet = Fleet::new([("h1", ran(Script::default()))]);
        fleet.hold_lock(elsewhere());
        let result = deploy_plainly(&fleet, &project);

        let error = result.err().unwrap();
        assert_eq!(error.code(), "deploy.locked");
        assert!(
            error.to_string().contains("pid 4242 of ana@laptop"),
            "{error}"
        );
        assert!(deploys(&fleet).is_empty(), "{:#?}", fleet.calls());
        // Asked who holds it (one of this machine's that ended is taken back), and left it.
        assert_eq!(fleet.calls_to("lock"), ["h1 lock", "h1 lock holder"]);
        assert_eq!(fleet.lock_holder_now(), Some(elsewhere()));
    }

    #[test]
    fn a_lock_whose_holder_ran_here_and_has_ended_is_taken_back() {
        let (_dir, project) = project(&["h1"], 1);
        let fleet = Fleet::new([("h1", ran(Script::default()))]);
        let ended = LockHolder {
            machine: crate::machine::hostname(),
            // Above any pid_max: no process has it.
            pid: u32::MAX - 1,
            pid_space: crate::machine::pid_space(),
            ..elsewhere()
        };
        fleet.hold_lock(ended);
        let said = Said::default();
        deploy_to(&fleet, &project, &DeployOptions::default(), &said).unwrap();

        assert_eq!(
            fleet.calls_to("lock"),
            ["h1 lock", "h1 lock holder", "h1 lock force"]
        );
        assert!(
            said.lines()
                .iter()
                .any(|l| l.starts_with("taking back the deploy lock of pid 4294967294")),
            "{:#?}",
            said.lines()
        );
        assert_eq!(deploys(&fleet), ["h1 deploy", "h1 deployed"]);
    }

    #[test]
    fn force_unlock_takes_a_held_lock_and_warns_whom_it_displaced() {
        let (_dir, project) = project(&["h1"], 1);
        let fleet = Fleet::new([("h1", ran(Script::default()))]);
        fleet.hold_lock(elsewhere());
        let said = Said::default();
        let options = DeployOptions {
            force_unlock: true,
            ..DeployOptions::default()
        };
        deploy_to(&fleet, &project, &options, &said).unwrap();

        assert_eq!(fleet.calls_to("lock"), ["h1 lock force"]);
        assert!(
            said.lines().iter().any(|l| l.starts_with("warning: took the deploy lock from pid 4242 of ana@laptop")),
            "{:#?}",
            said.lines()
        );
        assert_eq!(deploys(&fleet), ["h1 deploy", "h1 deployed"]);
        assert_eq!(fleet.lock_holder_now(), None);
    }
}
