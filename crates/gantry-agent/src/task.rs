//! One-off tasks of a release (`migrate.pre`, `migrate.post`): a command
//! run once as the release's service runs, but not as one of its
//! instances. A process service's task runs in the release's files with its
//! environment, secrets and confinement; an image service's in a container
//! of its image, removed after. Its output is kept in the release's phase,
//! secret values hidden.

use std::time::{Duration, Instant};

use gantry_core::Code;
use gantry_core::agent_api::v1::Workload;
use gantry_core::agent_api::{Phase, Release, ServiceSpec, Task, TaskOutput};
use gantry_core::redact::Redactor;

use crate::agent::{Agent, now_ms};
use crate::error::AgentError;
use crate::instance;

/// How long a task may run before it is killed.
pub const TIME_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Runs `task` of `release` and returns its phase; a command that exits
/// non-zero is a phase that says so, not an error. The error says why it
/// could not run at all.
pub(crate) async fn phase(
    agent: &Agent,
    release: &Release,
    task: &Task,
) -> Result<Phase, AgentError> {
    let spec = release
        .services
        .iter()
        .find(|s| s.name == task.service)
        .ok_or_else(|| {
            AgentError::invalid(
                Code::MigrateCommandFailed,
                format!("release {} has no service `{}`", release.id, task.service),
                "name a service the release runs",
            )
        })?;
    let started_at = now_ms();
    let clock = Instant::now();
    let ran = match &spec.workload {
        Workload::Process { .. } => in_process(agent, release, spec, &task.command).await,
        Workload::Compose { .. } => in_container(agent, release, spec, task).await,
        Workload::Static { .. } => Err(format!(
            "service `{}` is a static directory: it has nothing to run a command in",
            spec.name
        )),
    };
    let (exit_code, output) = ran.map_err(|why| {
        AgentError::failed(
            Code::MigrateCommandFailed,
            format!("cannot run `{}` of `{}`: {why}", task.phase, task.service),
        )
    })?;
    let redactor = Redactor::new(
        crate::credentials::read_secrets(&agent.paths.secrets(&release.project)).into_values(),
    );
    let lines: Vec<String> = output.lines().map(|line| redactor.text(line)).collect();
    let skip = lines.len().saturating_sub(TaskOutput::MAX_LINES);
    Ok(Phase {
        name: task.phase.clone(),
        service: Some(task.service.clone()),
        started_at,
        duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        task: Some(TaskOutput {
            command: task.command.clone(),
            exit_code,
            output: lines.into_iter().skip(skip).collect(),
        }),
    })
}

/// `POST /v1/projects/{project}/releases/{id}/tasks`: runs a task of a
/// recorded release (`migrate.post`, once it is live) and keeps its phase
/// in the release.
pub(crate) async fn run(
    agent: &Agent,
    project: String,
    id: String,
    task: Task,
) -> Result<Phase, AgentError> {
    gantry_core::config::check_name(&task.service).map_err(|why| {
        AgentError::invalid(
            Code::RequestInvalid,
            format!("not a service name: {why}"),
            "name a service of the release",
        )
    })?;
    let (p, i) = (project.clone(), id.clone());
    let release = agent.db(move |s| s.release(&p, &i)).await?.ok_or_else(|| {
        AgentError::not_found(
            Code::ReleaseNotFound,
            format!("`{project}` has no release `{id}`"),
            "list them with `gantry releases`",
        )
    })?;
    let done = phase(agent, &release, &task).await?;
    let (p, i, kept) = (project, release.id.clone(), done.clone());
    agent
        .db(move |s| {
            let Some(mut release) = s.release(&p, &i)? else {
                return Ok(());
            };
            release.phases.push(kept);
            s.update_release(&release)
        })
        .await?;
    Ok(done)
}

/// The command as the service's process would run: the release's
/// directory, the service's environment and secrets, its confinement.
async fn in_process(
    agent: &Agent,
    release: &Release,
    spec: &ServiceSpec,
    command: &str,
) -> Result<(Option<i32>, String), String> {
    let project = release.project.clone();
    let p = project.clone();
    let instances = agent
        .db(move |s| s.instances(&p))
        .await
        .map_err(|e| e.to_string())?;
    let mut env = instance::exec_environment(spec, &release.id, &instances);
    for (key, value) in crate::addresses::of(agent, &project, spec).await {
        env.entry(key).or_insert(value);
    }
    let secrets_file = agent.paths.secrets(&project);
    let secrets = crate::process::secret_values(Some(&secrets_file), &spec.secrets)
        .map_err(|e| e.to_string())?;
    let cwd = instance::working_dir(agent, &project, &release.artifact_digest, spec);
    let confinement =
        agent
            .isolation
            .confinement(&agent.paths, &project, &spec.name, spec.run_as_root)?;
    let mut run = std::process::Command::new("/bin/sh");
    // One stream, in the order it was written.
    run.arg("-c")
        .arg(format!("exec 2>&1\n{command}"))
        .current_dir(&cwd)
        .env_clear()
        .envs(&env)
        .envs(&secrets)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    crate::process::confine(&mut run, &confinement);
    let mut run = tokio::process::Command::from(run);
    run.kill_on_drop(true);
    let child = run
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh in {}: {e}", cwd.display()))?;
    match tokio::time::timeout(TIME_LIMIT, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Ok((
            None,
            format!("killed after {} minutes", TIME_LIMIT.as_secs() / 60),
        )),
    }
}

/// The command in a container of the release's image, with the service's
/// environment, secrets, network and volumes; removed after.
async fn in_container(
    agent: &Agent,
    release: &Release,
    spec: &ServiceSpec,
    task: &Task,
) -> Result<(Option<i32>, String), String> {
    use futures_util::StreamExt;
    let engine = crate::container_instance::engine(agent).await?;
    // Named as no instance is: `web-r3-migrate-pre-<random>`.
    let id = format!(
        "{}-{}-{}-{:08x}",
        spec.name,
        release.id,
        task.phase.replace('.', "-"),
        rand::random::<u32>()
    );
    let record = crate::store::InstanceRecord::new(
        &id,
        &release.project,
        &spec.name,
        &release.id,
        None,
        now_ms(),
    );
    let mut container = crate::container_instance::spec(
        &record,
        spec,
        &release.environment,
        &instance::limits(spec),
    )?;
    container.command = Some(vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        task.command.clone(),
    ]);
    container.publish = None;
    for (key, value) in crate::addresses::of(agent, &release.project, spec).await {
        container.env.entry(key).or_insert(value);
    }
    let secrets = crate::container_instance::secret_values(agent, &release.project, &spec.secrets);
    let name = container.identity.container_name();
    engine.remove(&name).await.map_err(|e| e.coded())?;
    let id = engine
        .create(&container, &secrets)
        .await
        .map_err(|e| e.coded())?;
    let ran = async {
        engine.start(&id).await.map_err(|e| e.coded())?;
        let mut output = Vec::new();
        let mut stream = engine.logs(&id, None, true);
        while let Some(Ok(chunk)) = stream.next().await {
            output.extend_from_slice(&chunk.bytes);
        }
        let state = engine.inspect(&id).await.map_err(|e| e.coded())?;
        let exit = state
            .and_then(|s| s.exit_code)
            .and_then(|c| i32::try_from(c).ok());
        Ok::<_, String>((exit, String::from_utf8_lossy(&output).into_owned()))
    };
    let ran = match tokio::time::timeout(TIME_LIMIT, ran).await {
        Ok(ran) => ran,
        Err(_) => Ok((
            None,
            format!("killed after {} minutes", TIME_LIMIT.as_secs() / 60),
        )),
    };
    let _ = engine.remove(&name).await;
    ran
}
