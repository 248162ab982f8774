//! One-off tasks of a release (`migrate.pre`, `migrate.post`): a command
//! run once as the release's service runs, but not as one of its
//! instances. A process service's task runs in the release's files with its
//! environment, secrets and confinement; an image service's in a container
//! of its image, removed after. Its output is kept in the release's phase,
//! secret values hidden: only its last [`OUTPUT_MAX`] bytes are ever held.
//! A task past [`TIME_LIMIT`] is killed with all it started (its process
//! group, or its container), and so is a task abandoned (its request gone).

use std::time::{Duration, Instant};

use gantry_core::Code;
use gantry_core::agent_api::v1::Workload;
use gantry_core::agent_api::{Cause, Phase, Release, ServiceSpec, Task, TaskOutput};
use gantry_core::redact::Redactor;

use crate::agent::{Agent, now_ms};
use crate::container::ContainerError;
use crate::error::AgentError;
use crate::instance;
use crate::output_tail::{OutputTail, cut_line};

/// How long a task may run before it is killed.
pub const TIME_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The most of a task's output held, its end.
const OUTPUT_MAX: usize = 256 * 1024;

/// How a task's command ended.
struct Ended {
    /// Its exit code; none when killed.
    exit_code: Option<i32>,
    output: OutputTail,
    /// Killed at its time limit.
    timed_out: bool,
    /// Why the rest of its output was lost, when it was.
    lost: Option<String>,
}

/// Why a task could not run at all: the agent's error, and the cause a
/// failed release records: the container error's code when one was why
/// (the image missing, Docker unreachable), else the error's own.
#[derive(Debug)]
pub(crate) struct NotRun {
    pub error: AgentError,
    pub cause: Cause,
}

impl From<AgentError> for NotRun {
    fn from(error: AgentError) -> NotRun {
        NotRun {
            cause: Cause::new(error.code(), error.to_string()),
            error,
        }
    }
}

impl From<NotRun> for AgentError {
    fn from(not_run: NotRun) -> AgentError {
        not_run.error
    }
}

/// Why a task's command did not run, as its runner says it.
struct Unrun {
    why: String,
    /// The container error behind it.
    cause: Option<Cause>,
}

impl From<String> for Unrun {
    fn from(why: String) -> Unrun {
        Unrun { why, cause: None }
    }
}

impl From<ContainerError> for Unrun {
    fn from(error: ContainerError) -> Unrun {
        Unrun {
            why: error.coded(),
            cause: Some(Cause::new(error.code(), error.to_string())),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The line that ends the output of a task killed at its time limit.
fn killed_line(limit: Duration) -> String {
    let secs = limit.as_secs();
    let limit = match secs % 60 {
        0 => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    };
    format!("[killed: the task ran past its time limit of {limit}]")
}

/// The line that stands for the output a task's log stream lost: why, on
/// one line, its first 200 characters.
fn lost_line(why: &str) -> String {
    let why: String = why.replace(['\n', '\r'], " ").chars().take(200).collect();
    format!("[the rest of the output was lost: {why}]")
}

/// Runs `task` of `release` and returns its phase; a command that exits
/// non-zero is a phase that says so, not an error. The error says why it
/// could not run at all.
pub(crate) async fn phase(agent: &Agent, release: &Release, task: &Task) -> Result<Phase, NotRun> {
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
    let mut engine = None;
    let ran = match &spec.workload {
        Workload::Process { .. } => in_process(agent, release, spec, &task.command)
            .await
            .map_err(Unrun::from),
        Workload::Compose { .. } => {
            let (ran, spent) =
                crate::container::lifecycle::measured(in_container(agent, release, spec, task))
                    .await;
            engine = Some(spent);
            ran
        }
        Workload::Static { .. } => Err(Unrun::from(format!(
            "service `{}` is a static directory: it has nothing to run a command in",
            spec.name
        ))),
    };
    let ended = ran.map_err(|unrun| {
        let error = AgentError::failed(
            Code::MigrateCommandFailed,
            format!(
                "cannot run `{}` of `{}`: {}",
                task.phase, task.service, unrun.why
            ),
        );
        match unrun.cause {
            Some(cause) => NotRun { error, cause },
            None => NotRun::from(error),
        }
    })?;
    if ended.timed_out {
        tracing::warn!(project = %release.project, release = %release.id, service = %task.service, phase = %task.phase, "task killed at its time limit");
    }
    let redactor = Redactor::new(
        crate::credentials::read_secrets(&agent.paths.secrets(&release.project)).into_values(),
    );
    let last = match ended.timed_out {
        true => Some(killed_line(TIME_LIMIT)),
        false => ended.lost,
    };
    let output = output_lines(ended.output, last, &redactor);
    let exit_code = ended.exit_code;
    Ok(Phase {
        name: task.phase.clone(),
        service: Some(task.service.clone()),
        started_at,
        duration_ms: millis(clock.elapsed()),
        engine_ms: engine.map(millis),
        task: Some(TaskOutput {
            command: task.command.clone(),
            exit_code,
            output,
        }),
    })
}

/// The lines kept of a task's output, at most [`TaskOutput::MAX_LINES`]:
/// a first line saying how much was cut when any was, then its last lines,
/// secrets hidden, then `last` (why it was killed, or why the rest of its
/// output was lost).
fn output_lines(output: OutputTail, last: Option<String>, redactor: &Redactor) -> Vec<String> {
    let (mut cut, text) = output.into_parts();
    let room = TaskOutput::MAX_LINES - 1 - usize::from(last.is_some());
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(room);
    cut += lines[..skip]
        .iter()
        .map(|l| l.len() as u64 + 1)
        .sum::<u64>();
    let mut kept = Vec::with_capacity(room + 2);
    if cut > 0 {
        kept.push(cut_line(cut));
    }
    kept.extend(lines[skip..].iter().map(|line| redactor.text(line)));
    kept.extend(last);
    kept
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
    let done = phase(agent, &release, &task).await.map_err(|e| e.error)?;
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
) -> Result<Ended, String> {
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
    run_bounded(run, TIME_LIMIT)
        .await
        .map_err(|e| format!("cannot start /bin/sh in {}: {e}", cwd.display()))
}

/// A task's process group, killed when dropped too: a task abandoned
/// (its request gone, the agent stopping) leaves nothing running.
struct Group(Option<rustix::process::Pid>);

impl Group {
    fn kill(&self) {
        if let Some(group) = self.0 {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` in a process group of its own, holding only the end of
/// its stdout; at `limit`, or once the command exits, whatever is left of
/// the group is killed.
async fn run_bounded(
    mut command: std::process::Command,
    limit: Duration,
) -> std::io::Result<Ended> {
    use std::os::unix::process::CommandExt;
    use tokio::io::AsyncReadExt;
    command.process_group(0);
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let mut child = command.spawn()?;
    let group = Group(
        child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?)),
    );
    let kill_group = || group.kill();
    let mut stdout = child.stdout.take();
    let mut output = OutputTail::new(OUTPUT_MAX);
    let ran = tokio::time::timeout(limit, async {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut status = None;
        loop {
            tokio::select! {
                read = async { stdout.as_mut()?.read(&mut buffer).await.ok() }, if stdout.is_some() => match read {
                    Some(n) if n > 0 => output.push(&buffer[..n]),
                    // The output's end: what remains is waiting for it to exit.
                    _ => stdout = None,
                },
                exited = child.wait(), if status.is_none() => {
                    // What it left running would hold the output open.
                    kill_group();
                    status = Some(exited?);
                }
            }
            if let (None, Some(status)) = (&stdout, status) {
                return Ok::<_, std::io::Error>(status);
            }
        }
    })
    .await;
    match ran {
        Ok(status) => Ok(Ended {
            exit_code: status?.code(),
            output,
            timed_out: false,
            lost: None,
        }),
        Err(_) => {
            kill_group();
            let _ = child.wait().await;
            Ok(Ended {
                exit_code: None,
                output,
                timed_out: true,
                lost: None,
            })
        }
    }
}

/// The command in a container of the release's image, with the service's
/// environment, secrets, network and volumes; removed after.
async fn in_container(
    agent: &Agent,
    release: &Release,
    spec: &ServiceSpec,
    task: &Task,
) -> Result<Ended, Unrun> {
    let engine = crate::container_instance::connect(agent).await?;
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
    // One stream, in the order it was written: Docker copies a
    // container's stdout and stderr apart, and their order is lost.
    container.command = Some(vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("exec 2>&1\n{}", task.command),
    ]);
    container.publish = None;
    for (key, value) in crate::addresses::of(agent, &release.project, spec).await {
        container.env.entry(key).or_insert(value);
    }
    let secrets = crate::container_instance::secret_values(agent, &release.project, &spec.secrets);
    let label = format!(
        "{} {} {} {}",
        release.project, release.id, task.service, task.phase
    );
    run_then_remove(engine.clone(), container, secrets, label).await
}

/// `container` created, run and removed in a task of its own, which a
/// dropped request cannot cut short between Docker's create and the
/// removal: a request abandoned while Docker was still creating the
/// container would otherwise leave it behind. Abandoning (this future
/// dropped) only ends the run early; the removal always follows.
async fn run_then_remove(
    engine: crate::container::Engine,
    container: crate::container::ContainerSpec,
    secrets: std::collections::BTreeMap<String, crate::container::SecretValue>,
    label: String,
) -> Result<Ended, Unrun> {
    let name = container.identity.container_name();
    let (keep_running, abandoned) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        engine.remove(&name).await?;
        let id = engine.create(&container, &secrets).await?;
        let mut output = OutputTail::new(OUTPUT_MAX);
        let mut lost = None;
        let running = run_created(&engine, &id, &name, &label, &mut output, &mut lost);
        // None: past its time limit, killed by the forced removal below.
        let exit = tokio::select! {
            ran = tokio::time::timeout(TIME_LIMIT, running) => ran.ok(),
            _ = abandoned => Some(Err(Unrun::from(format!("its request was abandoned; {name} was removed")))),
        };
        if let Err(e) = engine.remove(&name).await {
            tracing::warn!(container = %name, error = %e, "cannot remove a task's container");
        }
        let timed_out = exit.is_none();
        Ok(Ended {
            exit_code: exit.transpose()?,
            output,
            timed_out,
            lost,
        })
    });
    let ended = run.await;
    drop(keep_running);
    ended.map_err(|e| Unrun::from(format!("its run ended without an outcome: {e}")))?
}

/// A created task container started, its output followed into `output`
/// (why the rest was lost into `lost`), and its exit code waited for.
async fn run_created(
    engine: &crate::container::Engine,
    id: &str,
    name: &str,
    label: &str,
    output: &mut OutputTail,
    lost: &mut Option<String>,
) -> Result<i32, Unrun> {
    use futures_util::StreamExt;
    engine.start(id).await?;
    let mut stream = engine.logs(id, None, true);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => output.push(&chunk.bytes),
            // The rest of its output is lost, not its outcome: that is the
            // container's exit, waited for below.
            Err(e) => {
                tracing::warn!(task = %label, error = %e, "lost a task's output");
                *lost = Some(lost_line(&e.to_string()));
                break;
            }
        }
    }
    // The stream's end is not the container's: wait for its exit.
    let exit = engine.wait(id).await?;
    let exit = exit.ok_or_else(|| format!("its container {name} was removed before it exited"))?;
    Ok(i32::try_from(exit).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    /// A task's command as `in_process` runs it: one stream, on stdout.
    fn sh(script: &str) -> std::process::Command {
        let mut command = std::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("exec 2>&1\n{script}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command
    }

    fn lines(ended: Ended, limit: Duration) -> Vec<String> {
        let last = ended.timed_out.then(|| killed_line(limit));
        output_lines(ended.output, last, &Redactor::new(Vec::<String>::new()))
    }

    /// Gone, or a zombie nobody reaps: either way it runs no more.
    fn runs(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(") ")?.1.starts_with('Z')))
            .is_some_and(|zombie| !zombie)
    }

    #[tokio::test]
    async fn a_task_that_writes_megabytes_keeps_its_last_lines_and_says_how_much_was_cut() {
        let ended = run_bounded(
            sh("yes 0123456789abcdef | head -c 3000000; echo; echo done"),
            TIME_LIMIT,
        )
        .await
        .expect("ran");
        assert_eq!(ended.exit_code, Some(0));
        let lines = lines(ended, TIME_LIMIT);
        assert_eq!(lines.len(), TaskOutput::MAX_LINES);
        let cut: u64 = lines[0]
            .strip_prefix("[... ")
            .and_then(|l| l.strip_suffix(" bytes cut]"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no cut line first: {}", lines[0]));
        let kept: u64 = lines[1..].iter().map(|l| l.len() as u64 + 1).sum();
        assert_eq!(cut + kept, 3_000_000 + 1 + 5, "every byte kept or counted");
        assert_eq!(lines[1], "0123456789abcdef");
        assert_eq!(lines.last().map(String::as_str), Some("done"));
    }

    #[tokio::test]
    async fn a_task_past_its_time_limit_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().expect("a directory");
        let pid_file = dir.path().join("pid");
        let limit = Duration::from_secs(2);
        let ended = run_bounded(
            sh(&format!(
                "sleep 600 & echo $! > {}; echo started; wait",
                pid_file.display()
            )),
            limit,
        )
        .await
        .expect("ran");
        assert!(ended.timed_out);
        assert_eq!(ended.exit_code, None);
        assert_eq!(
            lines(ended, limit),
            [
                "started",
                "[killed: the task ran past its time limit of 2s]"
            ]
        );
        let pid = std::fs::read_to_string(&pid_file).expect("the pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs(pid.trim()) {
            assert!(Instant::now() < deadline, "the task's sleep still runs");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_task_abandoned_leaves_nothing_running() {
        let dir = tempfile::tempdir().expect("a directory");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
        let started = async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(pid) = std::fs::read_to_string(&pid_file)
                    && pid.ends_with('\n')
                {
                    return pid;
                }
                assert!(Instant::now() < deadline, "the task never started");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Its request gone: the future is dropped once the sleep runs.
        let pid = tokio::select! {
            _ = run_bounded(sh(&script), TIME_LIMIT) => panic!("the task ended"),
            pid = started => pid,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs(pid.trim()) {
            assert!(Instant::now() < deadline, "the task's sleep still runs");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A task container whose request goes away at any point, even while
    /// Docker is still creating it, is removed: none is left behind. Needs
    /// root and Docker.
    #[tokio::test]
    async fn a_task_container_abandoned_at_any_point_is_removed() {
        use crate::container::{ContainerSpec, Engine, Identity, Resources};
        let image = gantry_testkit::images::base();
        let scratch = tempfile::tempdir().expect("scratch");
        let engine = Engine::for_test(scratch.path()).await;
        let project = format!("task-gone-{}", std::process::id());
        // From at once to well after the start, in steps finer than a
        // create (about 20 ms here).
        let points = (0..30).map(|i| i * 2).chain((6..30).map(|i| i * 10));
        for (step, after_ms) in points.enumerate() {
            let container = ContainerSpec {
                identity: Identity {
                    project: project.clone(),
                    environment: "test".into(),
                    service: "db".into(),
                    release: "r1".into(),
                    instance: format!("db-r1-migrate-post-{step}"),
                },
                image: image.to_owned(),
                command: Some(vec!["sleep".into(), "600".into()]),
                env: Default::default(),
                secrets: Vec::new(),
                publish: None,
                resources: Resources::default(),
                volumes: Vec::new(),
                user: None,
                stop_timeout: Duration::from_secs(1),
            };
            let name = container.identity.container_name();
            let run = run_then_remove(engine.clone(), container, Default::default(), name.clone());
            let abandoned = tokio::time::timeout(Duration::from_millis(after_ms), run).await;
            if let Ok(ended) = abandoned {
                let why = ended.map_or_else(|e| e.why, |e| format!("exit {:?}", e.exit_code));
                panic!("{name} ended by itself: {why}");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while engine.inspect(&name).await.expect("inspect").is_some() {
                assert!(
                    Instant::now() < deadline,
                    "{name}, abandoned after {after_ms} ms, is still there"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // A container Docker was still creating when its request went away
        // appears only after its create ends: none may be there then.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = engine.list(&project).await.expect("list");
            if left.is_empty() {
                break;
            }
            let names: Vec<_> = left.iter().map(|c| &c.name).collect();
            assert!(Instant::now() < deadline, "left behind: {names:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        engine
            .remove_network(&project, "test")
            .await
            .expect("remove the network");
    }

    #[tokio::test]
    async fn a_task_that_exits_is_done_even_if_it_left_something_running() {
        let ended = run_bounded(sh("sleep 600 & echo done"), TIME_LIMIT)
            .await
            .expect("ran");
        assert_eq!(ended.exit_code, Some(0));
        assert_eq!(lines(ended, TIME_LIMIT), ["done"]);
    }
}
