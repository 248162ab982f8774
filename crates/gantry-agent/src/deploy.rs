//! A deploy on this host: materialize the artifact, record the release, then
//! per service in dependency order start new instances, wait until healthy,
//! switch, and stop the old ones. Every step is written to the store before
//! it happens, so `reconcile` can finish or undo it after a crash. A service
//! whose new instances fail keeps its previous release; the deploy stops there.

use std::time::Instant;

use std::sync::Arc;

use gantry_core::Code;
use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::v1::DeployStrategy;
use gantry_core::agent_api::{
    DeployRequest, DeployResult, InstanceState, Outcome, Phase, Release, Task, Verification,
};

use crate::agent::{Agent, now_ms};
use crate::artifact;
use crate::error::AgentError;
use crate::instance::{self, StartFailure, refreshed};
use crate::proxy::Cutover;
use crate::routes::Refusal;
use crate::status;
use crate::store::{InstanceRecord, StoreError};

struct Timer<'a> {
    phases: &'a mut Vec<Phase>,
}

impl Timer<'_> {
    async fn time<T>(
        &mut self,
        name: &str,
        service: Option<&str>,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let started_at = now_ms();
        let clock = Instant::now();
        let (out, engine) = crate::container::lifecycle::measured(work).await;
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.phases.push(Phase {
            name: name.to_owned(),
            service: service.map(str::to_owned),
            started_at,
            duration_ms: millis(clock.elapsed()),
            engine_ms: (!engine.is_zero()).then(|| millis(engine)),
            task: None,
        });
        out
    }
}

/// Runs a deploy in its own task: a client that goes away (a cut link) does
/// not cancel it halfway; it finishes, and `status` tells how it ended. The
/// result's release has the project's secret values hidden.
pub(crate) async fn run(
    agent: Arc<Agent>,
    request: DeployRequest,
) -> Result<DeployResult, AgentError> {
    let project = request.project.clone();
    let shared = Arc::clone(&agent);
    let mut result = tokio::spawn(async move { deploy(&shared, request, &shared.proxy).await })
        .await
        .map_err(|e| AgentError::failed(Code::AgentInternal, e.to_string()))??;
    crate::credentials::redact_releases(
        &agent.paths,
        &project,
        std::slice::from_mut(&mut result.release),
    );
    Ok(result)
}

/// `POST /v1/projects/{project}/deploys`: the request must name the path's project.
pub(crate) async fn deploy_project(
    agent: Arc<Agent>,
    project: &str,
    request: DeployRequest,
) -> Result<DeployResult, AgentError> {
    if request.project != project {
        return Err(AgentError::invalid(
            Code::DeployProjectMismatch,
            format!(
                "the path names `{project}` but the request deploys `{}`",
                request.project
            ),
            "send the request to /v1/projects/<its project>/deploys",
        ));
    }
    run(agent, request).await
}

async fn deploy(
    agent: &Agent,
    mut request: DeployRequest,
    cutover: &dyn Cutover,
) -> Result<DeployResult, AgentError> {
    crate::admission::check_deploy(&request, &agent.proxy.ports())?;
    // Credentials go to the secrets file, not the store nor `ps`.
    crate::credentials::separate(&mut request)?;
    let lock = agent.deploy_lock(&request.project);
    let Ok(_guard) = lock.try_lock() else {
        return Err(AgentError::conflict(
            Code::DeployLocked,
            format!(
                "a deploy of `{}` is already running on this host",
                request.project
            ),
            "wait for it to finish, then try again",
        ));
    };
    let project = request.project.clone();
    let mut phases = Vec::new();
    let mut timer = Timer {
        phases: &mut phases,
    };

    // Refused here, a deploy leaves nothing behind.
    admit(agent, &request).await?;
    if let Some(running) = crate::kept::already_running(agent, &request).await? {
        return crate::kept::keep(agent, running, &request).await;
    }
    let number = next_number(agent, &project).await?;
    unpack(agent, &mut timer, &request).await?;

    let artifact = request.artifact.clone();
    agent.db(move |s| s.record_artifact(&artifact)).await?;
    let mut release = Release {
        id: format!("r{number}"),
        number,
        project: project.clone(),
        environment: request.environment.clone(),
        config_hash: request.config_hash.clone(),
        artifact_digest: request.artifact.digest.clone(),
        rollback_of: request.rollback_of.clone(),
        redeploy_of: request.redeploy_of.clone(),
        created_at: now_ms(),
        outcome: Outcome::Deploying,
        reason: None,
        log_tail: Vec::new(),
        cause: None,
        phases: Vec::new(),
        services: request.services.clone(),
        deployments: request.deployment.iter().cloned().collect(),
        files_gone: false,
        verify: None,
    };
    {
        let (r, mark) = (release.clone(), request.deployment.clone());
        agent
            .db(move |s| {
                s.insert_release(&r)?;
                match &mark {
                    Some(mark) => s.mark_deployment(&r.project, &r.id, mark),
                    None => Ok(()),
                }
            })
            .await?;
    }

    // Before any of the release's instances starts: a task that fails
    // leaves every service on its previous release.
    if let Some(failure) = run_tasks(agent, &mut timer, &release, &request.tasks).await {
        release.outcome = Outcome::Failed;
        release.reason = Some(failure.reason);
        release.log_tail = failure.log_tail;
        release.cause = failure.cause;
    }
    let mut unchanged = Vec::new();
    for service in request
        .services
        .iter()
        .filter(|_| release.outcome == Outcome::Deploying)
    {
        match roll_service(agent, &mut timer, &release, service, cutover).await {
            Ok(Rolled::Replaced) => {}
            Ok(Rolled::Unchanged) => unchanged.push(service.name.clone()),
            Err(failure) => {
                release.outcome = Outcome::Failed;
                release.reason = Some(format!("service `{}`: {}", service.name, failure.reason));
                release.log_tail = failure.log_tail;
                release.cause = failure.cause;
                break;
            }
        }
    }
    let mut removed = Vec::new();
    if release.outcome == Outcome::Deploying {
        release.outcome = Outcome::Succeeded;
        removed = crate::retire::removed_services(agent, &project, &request.services).await;
    }
    release.phases = phases;
    release.verify = verify_window(&release, &request);
    {
        let r = release.clone();
        agent.db(move |s| s.update_release(&r)).await?;
    }
    if release.verify.is_some() {
        agent.verify_wake.notify_one();
    }
    if release.outcome == Outcome::Succeeded {
        retain(agent, &mut release).await?;
    }
    let services = status::services(agent, &project, status::ContainerMemory::Skipped).await?;
    Ok(DeployResult {
        release,
        services,
        removed,
        unchanged,
        kept: false,
    })
}

/// The verify window `request` asks the release to be watched for, from
/// its cutover (now); none for a release that failed, which runs nowhere.
fn verify_window(release: &Release, request: &DeployRequest) -> Option<Verification> {
    let window = request.verify_ms.filter(|ms| *ms > 0)?;
    (release.outcome == Outcome::Succeeded)
        .then(|| Verification::watching(std::time::Duration::from_millis(window), now_ms()))
}

/// The retention pass after `release` succeeded, timed as its last phase.
/// Run once the release is recorded as succeeded, so that it counts among
/// those kept.
async fn retain(agent: &Agent, release: &mut Release) -> Result<(), AgentError> {
    let mut timer = Timer {
        phases: &mut release.phases,
    };
    let pass = crate::retention::after_deploy(agent, &release.project);
    timer.time("retention", None, pass).await;
    let r = release.clone();
    agent.db(move |s| s.update_release(&r)).await?;
    Ok(())
}

/// Runs the release's tasks in order; the first that fails (or cannot
/// run) ends them with why and the end of its output.
async fn run_tasks(
    agent: &Agent,
    timer: &mut Timer<'_>,
    release: &Release,
    tasks: &[Task],
) -> Option<StartFailure> {
    for task in tasks {
        let phase = match crate::task::phase(agent, release, task).await {
            Ok(phase) => phase,
            Err(e) => {
                return Some(StartFailure {
                    reason: format!("{}; no new instance started", e.error),
                    log_tail: Vec::new(),
                    cause: Some(e.cause),
                });
            }
        };
        let ended = phase.task.clone();
        timer.phases.push(phase);
        if let Some(out) = ended.filter(|t| !t.succeeded()) {
            let how = out.exit_code.map_or_else(
                || "was killed".to_owned(),
                |code| format!("exited with code {code}"),
            );
            let skip = out.output.len().saturating_sub(20);
            let what = format!("`{}` of `{}` {how}", task.phase, task.service);
            return Some(StartFailure {
                reason: format!("{what}; no new instance started"),
                log_tail: out.output.into_iter().skip(skip).collect(),
                cause: Some(gantry_core::agent_api::Cause::new(
                    Code::MigrateCommandFailed,
                    what,
                )),
            });
        }
    }
    None
}

/// What must hold before anything of a deploy is written: every blob of
/// the artifact is here, and the routes fit the host's route table.
async fn admit(agent: &Agent, request: &DeployRequest) -> Result<(), AgentError> {
    let digests: Vec<String> = request
        .artifact
        .files
        .iter()
        .map(|f| f.digest.clone())
        .collect();
    let missing = agent.blobs.missing(&digests);
    if !missing.is_empty() {
        return Err(AgentError::invalid(
            Code::ArtifactIncomplete,
            format!(
                "{} blob(s) of the artifact were not uploaded",
                missing.len()
            ),
            "upload them with PUT /v1/blobs/{digest} first",
        ));
    }
    let (p, environment, services) = (
        request.project.clone(),
        request.environment.clone(),
        request.services.clone(),
    );
    agent
        .db(move |s| Ok(crate::routes::admit(s, &p, &environment, &services)))
        .await?
        .map_err(|refusal| match refusal {
            Refusal::Store(e) => AgentError::store(e),
            refusal => AgentError::conflict(refusal.code(), refusal.to_string(), refusal.hint()),
        })
}

/// The number of the project's next release, whose id (`r<number>`) must be free.
async fn next_number(agent: &Agent, project: &str) -> Result<u64, AgentError> {
    let p = project.to_owned();
    agent
        .db(move |s| {
            let number = s.next_release_number(&p)?;
            match s.release(&p, &format!("r{number}"))? {
                Some(taken) => Err(StoreError::ReleaseExists {
                    project: p,
                    id: taken.id,
                    number: taken.number,
                }),
                None => Ok(number),
            }
        })
        .await
        .map_err(|e| match e {
            e @ StoreError::ReleaseExists { .. } => AgentError::conflict(
                Code::ReleaseExists,
                e.to_string(),
                "deploy again; if this repeats, the agent's store needs repair",
            ),
            e => AgentError::store(e),
        })
}

/// The release's files in place, and the project's secrets file written.
async fn unpack(
    agent: &Agent,
    timer: &mut Timer<'_>,
    request: &DeployRequest,
) -> Result<(), AgentError> {
    let project = &request.project;
    let artifact = request.artifact.clone();
    let blobs = agent.blobs.clone();
    let dest = instance::release_dir(agent, project, &request.artifact.digest);
    timer
        .time("materialize", None, async move {
            tokio::task::spawn_blocking(move || artifact::materialize(&artifact, &blobs, &dest))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        })
        .await
        .map_err(|e| {
            AgentError::failed(
                Code::ArtifactFailed,
                format!("cannot unpack the artifact: {e}"),
            )
        })?;
    crate::credentials::write_secrets(&agent.paths, project, request).map_err(|e| {
        AgentError::failed(
            Code::SecretsFailed,
            format!("cannot store the secrets file: {e}"),
        )
    })
}

/// What a deploy did to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rolled {
    /// New instances replaced the old (or the static directory switched).
    Replaced,
    /// It runs the same as before: its instances were left running.
    Unchanged,
}

/// One service's deploy: left alone if unchanged, else replaced start-first
/// (start, wait healthy, switch, stop old) or stop-first.
async fn roll_service(
    agent: &Agent,
    timer: &mut Timer<'_>,
    release: &Release,
    service: &ServiceSpec,
    cutover: &dyn Cutover,
) -> Result<Rolled, StartFailure> {
    if crate::site::is_static(service) {
        return roll_static(agent, timer, release, service, cutover)
            .await
            .map(|()| Rolled::Replaced);
    }
    let cwd = instance::working_dir(agent, &release.project, &release.artifact_digest, service);
    let stop_first = service.strategy() == DeployStrategy::StopFirst;
    if stop_first && service.replicas > 1 && crate::container_instance::has_volumes(service) {
        return Err(failed(format!(
            "it has volumes, so it runs one replica, not {} (two containers must not share its data; if they may, set deploy_strategy = \"start-first\")",
            service.replicas
        )));
    }
    let fingerprint = crate::fingerprint::of(
        agent,
        &release.project,
        &release.environment,
        &release.artifact_digest,
        service,
    )
    .await;
    let old = running_before(agent, release, &service.name).await?;
    if let Some(fingerprint) = &fingerprint
        && crate::kept::unchanged(agent, service, &old, fingerprint).await
    {
        let (p, n, r) = (
            release.project.clone(),
            service.name.clone(),
            release.id.clone(),
        );
        let ids: Vec<String> = old.iter().map(|i| i.id.clone()).collect();
        let carried = timer
            .time("unchanged", Some(&service.name), async {
                agent.db(move |s| s.carry_over(&p, &n, &r, &ids)).await
            })
            .await;
        return carried
            .map(|()| Rolled::Unchanged)
            .map_err(|e| failed(e.to_string()));
    }
    if stop_first && !old.is_empty() {
        let new = Replacement {
            release,
            service,
            cwd: &cwd,
            fingerprint: fingerprint.as_deref(),
        };
        return stop_first_replace(agent, timer, &new, cutover, &old)
            .await
            .map(|()| Rolled::Replaced);
    }
    let started = start_healthy(
        agent,
        timer,
        (&release.project, &release.id),
        service,
        &cwd,
        (fingerprint.as_deref(), &[]),
    )
    .await?;
    match cut_over(agent, timer, release, service, cutover, &started).await {
        Ok(old) => {
            stop_old(agent, timer, &old, service).await;
            Ok(Rolled::Replaced)
        }
        Err(failure) => {
            stop_all(agent, &started, service).await;
            Err(failure)
        }
    }
}

fn failed(reason: String) -> StartFailure {
    StartFailure {
        reason,
        log_tail: Vec::new(),
        cause: None,
    }
}

/// The service's active instances of other releases: what runs now. A
/// store that cannot say fails the step: read as "nothing", the old
/// instances would stay running beside the new ones.
async fn running_before(
    agent: &Agent,
    release: &Release,
    service: &str,
) -> Result<Vec<InstanceRecord>, StartFailure> {
    let (p, n, r) = (
        release.project.clone(),
        service.to_owned(),
        release.id.clone(),
    );
    let instances = agent.db(move |s| s.instances(&p)).await;
    let instances = instances.map_err(|e| StartFailure {
        reason: format!("the agent's store failed: {e}"),
        log_tail: Vec::new(),
        cause: None,
    })?;
    Ok((instances.into_iter())
        .filter(|i| i.service == n && i.release != r && i.is_active())
        .collect())
}

/// Starts `service`'s replicas for `release` (each recorded before it
/// starts, with what it runs), and waits until all are healthy; on a
/// failure, stops those it started.
async fn start_healthy(
    agent: &Agent,
    timer: &mut Timer<'_>,
    (project, release): (&str, &str),
    service: &ServiceSpec,
    cwd: &std::path::Path,
    (fingerprint, ports): (Option<&str>, &[u16]),
) -> Result<Vec<InstanceRecord>, StartFailure> {
    let name = service.name.clone();
    let mut started: Vec<InstanceRecord> = Vec::new();
    let start = timer
        .time("start", Some(&name), async {
            for replica in 1..=service.replicas {
                let id = instance::instance_id(&name, release, replica);
                let preferred = ports.get(replica as usize - 1).copied();
                let port = instance::port_for(agent, service, &id, preferred)
                    .await
                    .map_err(failed)?;
                let record = InstanceRecord::new(&id, project, &name, release, port, now_ms());
                // The intent: recorded before the process exists.
                let (r, fingerprint) = (record.clone(), fingerprint.map(str::to_owned));
                agent
                    .db(move |s| {
                        s.insert_instance(&r)?;
                        match fingerprint {
                            Some(f) => s.set_fingerprint(&r.id, &f),
                            None => Ok(()),
                        }
                    })
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                started.push(record);
            }
            // The intents are recorded; the processes start side by side.
            let launches = started
                .iter()
                .map(|record| instance::launch(agent, record, service, cwd));
            futures_util::future::join_all(launches)
                .await
                .into_iter()
                .collect::<Result<Vec<()>, StartFailure>>()
                .map(drop)
        })
        .await;
    let healthy = match start {
        Ok(()) => {
            let deadline = agent.settings.health_deadline;
            timer
                .time("health", Some(&name), async {
                    let waits = started.iter().map(|record| async {
                        instance::wait_healthy(agent, record, service, cwd, deadline).await?;
                        let id = record.id.clone();
                        let _ = agent.db(move |s| s.set_instance_health(&id, true)).await;
                        Ok::<(), StartFailure>(())
                    });
                    futures_util::future::join_all(waits)
                        .await
                        .into_iter()
                        .collect::<Result<Vec<()>, StartFailure>>()
                        .map(drop)
                })
                .await
        }
        Err(e) => Err(e),
    };
    match healthy {
        Ok(()) => Ok(started),
        Err(failure) => {
            stop_all(agent, &started, service).await;
            Err(failure)
        }
    }
}

/// What a stop-first replacement starts.
struct Replacement<'a> {
    release: &'a Release,
    service: &'a ServiceSpec,
    cwd: &'a std::path::Path,
    fingerprint: Option<&'a str>,
}

/// Stop-first: the old instances are taken out of the proxy's routes,
/// drained and stopped (marked `draining` until the new ones are live, so
/// an agent restarted meanwhile starts the old release again), then the
/// new ones start as for start-first. If they fail, the old release is
/// started again: a database stops once, and is back on its data.
async fn stop_first_replace(
    agent: &Agent,
    timer: &mut Timer<'_>,
    new: &Replacement<'_>,
    cutover: &dyn Cutover,
    old: &[InstanceRecord],
) -> Result<(), StartFailure> {
    let (release, service) = (new.release, new.service);
    timer
        .time(
            "stop-old",
            Some(&service.name),
            stop_for_replacement(agent, old, service),
        )
        .await;
    // On the old ports: what depends on the service keeps its address.
    let ports: Vec<u16> = old.iter().filter_map(|r| r.port).collect();
    let started = start_healthy(
        agent,
        timer,
        (&release.project, &release.id),
        service,
        new.cwd,
        (new.fingerprint, &ports),
    )
    .await;
    let failure = match started {
        Ok(started) => match cut_over(agent, timer, release, service, cutover, &started).await {
            Ok(_) => {
                // Stopped already: only recorded so.
                stop_all(agent, old, service).await;
                return Ok(());
            }
            Err(failure) => {
                stop_all(agent, &started, service).await;
                failure
            }
        },
        Err(failure) => failure,
    };
    let restored = timer
        .time(
            "restore",
            Some(&service.name),
            start_again(agent, old, cutover),
        )
        .await;
    let reason = match restored {
        Ok(previous) => format!("{}; release {previous} was started again", failure.reason),
        Err(e) => format!(
            "{}; starting the previous release again failed too: {e}",
            failure.reason
        ),
    };
    Err(StartFailure {
        reason,
        log_tail: failure.log_tail,
        cause: failure.cause,
    })
}

/// Takes `old` out of the proxy's routes and stops them, leaving them
/// `draining`: the record that a stop-first replacement is under way.
async fn stop_for_replacement(agent: &Agent, old: &[InstanceRecord], service: &ServiceSpec) {
    let timeout = service.stop_timeout.as_std();
    agent.proxy.drain_out(old, timeout).await;
    let stops = old.iter().map(|record| async {
        let fresh = refreshed(agent, record).await;
        instance::stop(agent, &fresh, timeout, InstanceState::Draining).await
    });
    futures_util::future::join_all(stops).await;
}

/// Starts the release `old` ran again, in new instances, after a stop-first
/// replacement failed or was interrupted: `old` stopped (if still running),
/// new instances of their release started, waited healthy and switched to,
/// and `old` recorded stopped. Returns the release's id.
pub(crate) async fn start_again(
    agent: &Agent,
    old: &[InstanceRecord],
    cutover: &dyn Cutover,
) -> Result<String, String> {
    let Some(first) = old.first() else {
        return Err("there were no instances to start again".to_owned());
    };
    let (p, r, id) = (
        first.project.clone(),
        first.release.clone(),
        first.id.clone(),
    );
    let (previous, fingerprint) = agent
        .db(move |s| Ok((s.release(&p, &r)?, s.fingerprint(&id)?)))
        .await
        .map_err(|e| e.to_string())?;
    let previous =
        previous.ok_or_else(|| format!("release {} is not in the store", first.release))?;
    let service = previous
        .services
        .iter()
        .find(|s| s.name == first.service)
        .ok_or_else(|| format!("release {} has no service {}", previous.id, first.service))?
        .clone();
    stop_for_replacement(agent, old, &service).await;
    let ports: Vec<u16> = old.iter().filter_map(|r| r.port).collect();
    let cwd = instance::working_dir(
        agent,
        &previous.project,
        &previous.artifact_digest,
        &service,
    );
    let mut phases = Vec::new();
    let mut timer = Timer {
        phases: &mut phases,
    };
    let started = start_healthy(
        agent,
        &mut timer,
        (&previous.project, &previous.id),
        &service,
        &cwd,
        (fingerprint.as_deref(), &ports),
    )
    .await
    .map_err(|f| f.reason)?;
    if let Err(failure) = cut_over(agent, &mut timer, &previous, &service, cutover, &started).await
    {
        stop_all(agent, &started, &service).await;
        return Err(failure.reason);
    }
    stop_all(agent, old, &service).await;
    Ok(previous.id)
}

/// A static service's deploy: its directory checked in the release, then
/// the same switch as for instances, with none to start. Instances an
/// earlier release ran (the service was a process) stop after it.
async fn roll_static(
    agent: &Agent,
    timer: &mut Timer<'_>,
    release: &Release,
    service: &ServiceSpec,
    cutover: &dyn Cutover,
) -> Result<(), StartFailure> {
    let failed = |reason: String| StartFailure {
        reason,
        log_tail: Vec::new(),
        cause: None,
    };
    if agent.proxy.listen().is_none() {
        return Err(failed(format!(
            "`{}` is a static service, served by the proxy, and this agent runs no proxy",
            service.name
        )));
    }
    let files = instance::release_dir(agent, &release.project, &release.artifact_digest);
    let root = crate::site::root(&files, service)
        .ok_or_else(|| failed(format!("`{}` is not a static service", service.name)))?;
    crate::site::check_root(&files, &root, service).map_err(failed)?;
    let old = cut_over(agent, timer, release, service, cutover, &[]).await?;
    stop_old(agent, timer, &old, service).await;
    Ok(())
}

/// Makes `started` the service's live instances (none for a static
/// service) in the store and in the proxy; the instances of other releases
/// it replaces, for the caller to stop. If the proxy refuses the new table,
/// the store goes back to the previous release.
async fn cut_over(
    agent: &Agent,
    timer: &mut Timer<'_>,
    release: &Release,
    service: &ServiceSpec,
    cutover: &dyn Cutover,
    started: &[InstanceRecord],
) -> Result<Vec<InstanceRecord>, StartFailure> {
    let project = release.project.clone();
    let name = service.name.clone();
    let old = running_before(agent, release, &name).await?;
    let switched = timer
        .time("switch", Some(&name), async {
            let new_ids: Vec<String> = started.iter().map(|r| r.id.clone()).collect();
            let old_ids: Vec<String> = old.iter().map(|r| r.id.clone()).collect();
            let (p, n, rel) = (project.clone(), name.clone(), release.id.clone());
            let previous = agent
                .db(move |s| {
                    let previous = s.current(&p, &n)?;
                    s.switch(&p, &n, &rel, &new_ids, &old_ids)?;
                    Ok(previous)
                })
                .await
                .map_err(|e| StartFailure {
                    reason: e.to_string(),
                    log_tail: Vec::new(),
                    cause: None,
                })?;
            let old_ports: Vec<u16> = old.iter().filter_map(|r| r.port).collect();
            if let Err(refused) = cutover.switch(service, &old_ports).await {
                switch_back(agent, &project, &name, previous, &old, started).await;
                return Err(StartFailure {
                    reason: format!(
                        "the proxy refused the new route table ({refused}); the previous release keeps serving"
                    ),
                    log_tail: Vec::new(),
                    cause: None,
                });
            }
            Ok::<(), StartFailure>(())
        })
        .await;
    switched.map(|()| old)
}

/// Stops the instances a cutover replaced, timed as `stop-old`.
async fn stop_old(
    agent: &Agent,
    timer: &mut Timer<'_>,
    old: &[InstanceRecord],
    service: &ServiceSpec,
) {
    timer
        .time(
            "stop-old",
            Some(&service.name),
            stop_all(agent, old, service),
        )
        .await;
}

/// Stops a service's instances side by side.
async fn stop_all(agent: &Agent, records: &[InstanceRecord], service: &ServiceSpec) {
    let stops = records.iter().map(|record| async {
        let fresh = refreshed(agent, record).await;
        instance::stop(
            agent,
            &fresh,
            service.stop_timeout.as_std(),
            InstanceState::Stopped,
        )
        .await
    });
    futures_util::future::join_all(stops).await;
}

/// Undoes a cutover the proxy refused: the service runs its previous release
/// on its old instances again, and the proxy gets the table it had.
async fn switch_back(
    agent: &Agent,
    project: &str,
    service: &str,
    previous: Option<String>,
    old: &[InstanceRecord],
    new: &[InstanceRecord],
) {
    let Some(previous) = previous else {
        return;
    };
    let old_ids: Vec<String> = old.iter().map(|r| r.id.clone()).collect();
    let new_ids: Vec<String> = new.iter().map(|r| r.id.clone()).collect();
    let (p, n) = (project.to_owned(), service.to_owned());
    let back = agent
        .db(move |s| s.switch(&p, &n, &previous, &old_ids, &new_ids))
        .await;
    if let Err(e) = back {
        tracing::warn!(project, service, error = %e, "cannot switch back to the old instances");
    }
    agent.proxy.refresh().await;
}
