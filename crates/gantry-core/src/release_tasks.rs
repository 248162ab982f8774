//! A release's one-off commands around a deploy (`migrate.pre`,
//! `migrate.post`), each run once for the environment, not once per host.
//! `migrate.pre` goes with the deploy of the first host that runs its
//! service, whose agent runs it in the new release's environment before any
//! new instance starts; that host deploys alone, so no other host takes
//! the release before it ran, and its failure stops the rollout with every
//! host on its old release. `migrate.post` runs on that host once every
//! host is live, unless that host's release already ran it successfully (a
//! deploy that changed nothing there kept the release it ran). The agent
//! keeps each one's output in the release.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agent_api::{Release, Task, TaskOutput};
use crate::config::resolve::{Host as HostSpec, Service};
use crate::progress::Progress;

pub const PRE: &str = "migrate.pre";
pub const POST: &str = "migrate.post";

/// A task as it ran on a host.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRun {
    pub phase: String,
    pub service: String,
    pub host: String,
    pub release: String,
    #[serde(flatten)]
    pub ended: TaskOutput,
}

impl TaskRun {
    /// How it ended, in words: "succeeded", "exited with code 3".
    pub fn how(&self) -> String {
        match self.ended.exit_code {
            Some(0) => "succeeded".to_owned(),
            Some(code) => format!("exited with code {code}"),
            None => "was killed".to_owned(),
        }
    }
}

/// The tasks of `phase` of the services, each with the first host (in
/// `placements`' order) that runs its service.
pub fn assigned<'a>(
    placements: &'a [(&'a HostSpec, Vec<Service>)],
    phase: &str,
) -> Vec<(&'a HostSpec, Task)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut tasks = Vec::new();
    for (host, services) in placements {
        for service in services {
            let migrate = service.migrate.as_ref();
            let command = match phase {
                PRE => migrate.and_then(|m| m.pre.clone()),
                _ => migrate.and_then(|m| m.post.clone()),
            };
            if let Some(command) = command
                && seen.insert(service.name.clone())
            {
                tasks.push((
                    *host,
                    Task {
                        phase: phase.to_owned(),
                        service: service.name.clone(),
                        command,
                    },
                ));
            }
        }
    }
    tasks
}

/// The `migrate.pre` tasks each host's deploy carries, by host name.
pub fn pre_tasks(placements: &[(&HostSpec, Vec<Service>)]) -> BTreeMap<String, Vec<Task>> {
    let mut by_host: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for (host, task) in assigned(placements, PRE) {
        by_host.entry(host.name.clone()).or_default().push(task);
    }
    by_host
}

/// The rollout's batches: the first `alone` items one at a time, then the
/// rest `size` at a time.
pub fn batches<T>(items: &[T], alone: usize, size: usize) -> Vec<&[T]> {
    let alone = alone.min(items.len());
    let (first, rest) = items.split_at(alone);
    first.chunks(1).chain(rest.chunks(size.max(1))).collect()
}

/// How many of `placements`, from the first, deploy alone: up to the last
/// host that runs a `migrate.pre`.
pub fn alone(placements: &[(&HostSpec, Vec<Service>)], pre: &BTreeMap<String, Vec<Task>>) -> usize {
    placements
        .iter()
        .rposition(|(host, _)| pre.contains_key(&host.name))
        .map_or(0, |at| at + 1)
}

/// A `migrate.post` that failed or could not run; the release stays live.
#[derive(Debug)]
pub struct PostFailed {
    pub ran: Vec<TaskRun>,
    pub phase: String,
    pub service: String,
    pub host: String,
    pub how: String,
    pub output: Vec<String>,
}

/// Whether `release` records `task` (its phase, service and command) as
/// having run and succeeded.
pub fn ran_in(release: &Release, task: &Task) -> bool {
    release.phases.iter().any(|phase| {
        phase.name == task.phase
            && phase.service.as_deref() == Some(task.service.as_str())
            && phase
                .task
                .as_ref()
                .is_some_and(|t| t.succeeded() && t.command == task.command)
    })
}

/// Runs the `migrate.post` tasks, each on the first host that runs its
/// service, in the release `releases` says that host runs; stops at the
/// first that fails. A task that release already ran successfully (it was
/// kept: the deploy changed nothing there) does not run again. Each host's
/// agent is connected to once, however many tasks run there.
pub fn run_post(
    project: &str,
    placements: &[(&HostSpec, Vec<Service>)],
    releases: &BTreeMap<String, &Release>,
    connect: crate::host::Connect<'_>,
    progress: &dyn Progress,
) -> Result<Vec<TaskRun>, Box<PostFailed>> {
    let mut ran = Vec::new();
    let mut agents: BTreeMap<String, Box<dyn crate::host::Host>> = BTreeMap::new();
    for (host, task) in assigned(placements, POST) {
        let runs = releases.get(&host.name);
        if let Some(runs) = runs
            && ran_in(runs, &task)
        {
            progress.step(&format!(
                "`{}` of {} already ran in {} on {}",
                task.phase, task.service, runs.id, host.name
            ));
            continue;
        }
        let release = runs.map(|r| r.id.clone()).unwrap_or_default();
        progress.step(&format!(
            "running `{}` of {} on {}",
            task.phase, task.service, host.name
        ));
        let agent = match agents.entry(host.name.clone()) {
            std::collections::btree_map::Entry::Occupied(known) => Ok(known.into_mut()),
            std::collections::btree_map::Entry::Vacant(new) => connect(host).map(|a| new.insert(a)),
        };
        let answer = agent.and_then(|agent| Ok(agent.run_task(project, &release, &task)?));
        let failed = |how: String, output: Vec<String>, ran: Vec<TaskRun>| {
            Box::new(PostFailed {
                ran,
                phase: task.phase.clone(),
                service: task.service.clone(),
                host: host.name.clone(),
                how,
                output,
            })
        };
        let ended = match answer {
            Ok(phase) => phase.task.unwrap_or(TaskOutput {
                command: task.command.clone(),
                exit_code: None,
                output: Vec::new(),
            }),
            Err(e) => return Err(failed(format!("could not run: {e}"), Vec::new(), ran)),
        };
        let run = TaskRun {
            phase: task.phase.clone(),
            service: task.service.clone(),
            host: host.name.clone(),
            release,
            ended,
        };
        if !run.ended.succeeded() {
            let (how, output) = (run.how(), tail(&run.ended.output));
            ran.push(run);
            return Err(failed(how, output, ran));
        }
        ran.push(run);
    }
    Ok(ran)
}

/// The last lines of a task's output, for an error's hint.
pub fn tail(output: &[String]) -> Vec<String> {
    output[output.len().saturating_sub(20)..].to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_up_to_the_last_with_a_task_go_alone_then_batches() {
        let items = [1, 2, 3, 4, 5, 6];
        let sizes = |alone, size| {
            super::batches(&items, alone, size)
                .iter()
                .map(|b| b.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(1, 2), [1, 2, 2, 1]);
        assert_eq!(sizes(0, 4), [4, 2]);
        assert_eq!(sizes(2, 10), [1, 1, 4]);
        assert_eq!(sizes(9, 3), [1, 1, 1, 1, 1, 1]);
    }
}
