//! A deploy on this host: materialize the artifact, record the release, then
//! per service in dependency order start new instances, wait until healthy,
//! switch, and stop the old ones. Every step is written to the store before
//! it happens, so `reconcile` can finish or undo it after a crash. A service
//! whose new instances fail keeps its previous release; the deploy stops there.

use std::time::Instant;

use gantry_config::resolve::Service;
use gantry_core::agent_api::{DeployRequest, DeployResult, InstanceState, Outcome, Phase, Release};

use crate::agent::{Agent, now_ms};
use crate::api::ApiFailure;
use crate::artifact;
use crate::instance::{self, StartFailure};
use crate::status;
use crate::store::InstanceRecord;

/// Something that must happen when a service's live instances change, after
/// the store's switch and before the old instances (on `old_ports`) stop: the
/// proxy's route swap and drain ([`crate::proxy::ProxyCutover`]).
pub trait Cutover: Send + Sync {
    fn switch<'a>(
        &'a self,
        agent: &'a Agent,
        service: &'a Service,
        old_ports: &'a [u16],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// The cutover of a host with no proxy: recording the live set is enough.
pub struct RecordOnly;

impl Cutover for RecordOnly {
    fn switch<'a>(
        &'a self,
        _: &'a Agent,
        _: &'a Service,
        _: &'a [u16],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(std::future::ready(()))
    }
}

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
        let out = work.await;
        self.phases.push(Phase {
            name: name.to_owned(),
            service: service.map(str::to_owned),
            started_at,
            duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        out
    }
}

pub async fn deploy(
    agent: &Agent,
    request: DeployRequest,
    cutover: &dyn Cutover,
) -> Result<DeployResult, ApiFailure> {
    crate::admission::check_deploy(&request)?;
    let lock = agent.deploy_lock(&request.project);
    let Ok(_guard) = lock.try_lock() else {
        return Err(ApiFailure::conflict(
            "deploy.locked",
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

    // The files first: nothing is recorded until the release can run.
    let digests: Vec<String> = request
        .artifact
        .files
        .iter()
        .map(|f| f.digest.clone())
        .collect();
    let missing = agent.blobs.missing(&digests);
    if !missing.is_empty() {
        return Err(ApiFailure::invalid(
            "artifact.incomplete",
            format!(
                "{} blob(s) of the artifact were not uploaded",
                missing.len()
            ),
            "upload them with PUT /v1/blobs/{digest} first",
        ));
    }
    // The release's number and id before any file: a deploy refused here
    // leaves nothing behind.
    let number = {
        let p = project.clone();
        agent
            .db(move |s| {
                let number = s.next_release_number(&p)?;
                match s.release(&p, &format!("r{number}"))? {
                    Some(taken) => Err(crate::store::StoreError::ReleaseExists {
                        project: p,
                        id: taken.id,
                        number: taken.number,
                    }),
                    None => Ok(number),
                }
            })
            .await
            .map_err(|e| match e {
                e @ crate::store::StoreError::ReleaseExists { .. } => ApiFailure::conflict(
                    e.code(),
                    e.to_string(),
                    "deploy again; if this repeats, the agent's store needs repair",
                ),
                e => ApiFailure::store(e),
            })?
    };
    let dir = instance::release_dir(agent, &project, &request.artifact.digest);
    {
        let artifact = request.artifact.clone();
        let blobs = agent.blobs.clone();
        let dest = dir.clone();
        timer
            .time("materialize", None, async move {
                tokio::task::spawn_blocking(move || artifact::materialize(&artifact, &blobs, &dest))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            })
            .await
            .map_err(|e| {
                ApiFailure::failed(
                    "artifact.failed",
                    format!("cannot unpack the artifact: {e}"),
                )
            })?;
    }
    write_secrets(agent, &project, &request).map_err(|e| {
        ApiFailure::failed(
            "secrets.failed",
            format!("cannot store the secrets file: {e}"),
        )
    })?;

    let artifact = request.artifact.clone();
    agent
        .db(move |s| s.record_artifact(&artifact))
        .await
        .map_err(ApiFailure::store)?;
    let mut release = Release {
        id: format!("r{number}"),
        number,
        project: project.clone(),
        environment: request.environment.clone(),
        config_hash: request.config_hash.clone(),
        artifact_digest: request.artifact.digest.clone(),
        rollback_of: request.rollback_of.clone(),
        created_at: now_ms(),
        outcome: Outcome::Deploying,
        reason: None,
        log_tail: Vec::new(),
        phases: Vec::new(),
        services: request.services.clone(),
    };
    {
        let r = release.clone();
        agent
            .db(move |s| s.insert_release(&r))
            .await
            .map_err(ApiFailure::store)?;
    }

    for service in &request.services {
        match roll_service(agent, &mut timer, &release, service, cutover).await {
            Ok(()) => {}
            Err(failure) => {
                release.outcome = Outcome::Failed;
                release.reason = Some(format!("service `{}`: {}", service.name, failure.reason));
                release.log_tail = failure.log_tail;
                break;
            }
        }
    }
    if release.outcome == Outcome::Deploying {
        release.outcome = Outcome::Succeeded;
    }
    release.phases = phases;
    {
        let r = release.clone();
        agent
            .db(move |s| s.update_release(&r))
            .await
            .map_err(ApiFailure::store)?;
    }
    let services = status::services(agent, &project)
        .await
        .map_err(ApiFailure::store)?;
    Ok(DeployResult { release, services })
}

/// Start, wait healthy, switch, stop old: one service's cutover.
async fn roll_service(
    agent: &Agent,
    timer: &mut Timer<'_>,
    release: &Release,
    service: &Service,
    cutover: &dyn Cutover,
) -> Result<(), StartFailure> {
    let project = release.project.clone();
    let name = service.name.clone();
    let cwd = instance::working_dir(agent, &project, &release.artifact_digest, service);

    let mut started: Vec<InstanceRecord> = Vec::new();
    let start = timer
        .time("start", Some(&name), async {
            for replica in 1..=service.replicas {
                let id = instance::instance_id(&name, &release.id, replica);
                let port = instance::port_for(agent, service, &id)
                    .await
                    .map_err(|reason| StartFailure {
                        reason,
                        log_tail: Vec::new(),
                    })?;
                let record = InstanceRecord::new(&id, &project, &name, &release.id, port, now_ms());
                // The intent: recorded before the process exists.
                let r = record.clone();
                agent
                    .db(move |s| s.insert_instance(&r))
                    .await
                    .map_err(|e| StartFailure {
                        reason: e.to_string(),
                        log_tail: Vec::new(),
                    })?;
                started.push(record);
            }
            // The intents are recorded; the processes start side by side.
            let launches = started
                .iter()
                .map(|record| instance::launch(agent, record, service, &cwd));
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
                        instance::wait_healthy(agent, record, service, &cwd, deadline).await?;
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
    if let Err(failure) = healthy {
        for record in &started {
            let fresh = refreshed(agent, record).await;
            instance::stop(
                agent,
                &fresh,
                service.stop_timeout.as_std(),
                InstanceState::Stopped,
            )
            .await;
        }
        return Err(failure);
    }

    let old: Vec<InstanceRecord> = {
        let (p, n) = (project.clone(), name.clone());
        agent
            .db(move |s| s.instances(&p))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.service == n && i.release != release.id && is_active(i.state))
            .collect()
    };
    timer
        .time("switch", Some(&name), async {
            let new_ids: Vec<String> = started.iter().map(|r| r.id.clone()).collect();
            let old_ids: Vec<String> = old.iter().map(|r| r.id.clone()).collect();
            let (p, n, rel) = (project.clone(), name.clone(), release.id.clone());
            agent
                .db(move |s| s.switch(&p, &n, &rel, &new_ids, &old_ids))
                .await
                .map_err(|e| StartFailure {
                    reason: e.to_string(),
                    log_tail: Vec::new(),
                })?;
            let old_ports: Vec<u16> = old.iter().filter_map(|r| r.port).collect();
            cutover.switch(agent, service, &old_ports).await;
            Ok::<(), StartFailure>(())
        })
        .await?;
    timer
        .time("stop-old", Some(&name), async {
            let stops = old.iter().map(|record| async {
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
        })
        .await;
    Ok(())
}

pub fn is_active(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Starting
            | InstanceState::Live
            | InstanceState::Draining
            | InstanceState::Backoff
    )
}

/// The instance as the store has it now (with its pid, once launched).
pub async fn refreshed(agent: &Agent, record: &InstanceRecord) -> InstanceRecord {
    let id = record.id.clone();
    agent
        .db(move |s| s.instance(&id))
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| record.clone())
}

/// Secret values go to a 0600 file the relays read; nowhere else.
fn write_secrets(agent: &Agent, project: &str, request: &DeployRequest) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if request.secrets.is_empty() {
        return Ok(());
    }
    let path = agent.paths.secrets(project);
    let dir = path.parent().unwrap_or(agent.state_dir());
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{project}.env.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // Names and values were checked on admission: one variable a line.
    for (name, value) in &request.secrets {
        writeln!(file, "{name}={value}")?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
