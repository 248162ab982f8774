//! Operating what runs: status, logs, releases, rollback, stop, restart.
//! Each asks the environment's host and returns the agent's answer as the report.

use serde::Serialize;

use crate::agent_api::{
    LogLine, Outcome, Release, RollbackRequest, ServiceSelector, ServiceState, ServiceStatus,
    Status,
};
use crate::config::resolve::Host as HostSpec;
use crate::deploy::{DeployReport, HostDeploy, conclude};
use crate::deployments::Target;
use crate::host::{Host, LogQuery};
use crate::progress::Progress;
use crate::{EnvRefusal, Error, Project};

pub use crate::host::Connect;

/// The project's name and the environment's hosts.
fn hosts_of(project: &Project, environment: &str) -> Result<(String, Vec<HostSpec>), Error> {
    let config = project.load()?;
    hosts_in(config.environment(environment)?, environment)
}

/// [`hosts_of`] for an environment already resolved.
fn hosts_in(
    env: crate::config::Environment,
    environment: &str,
) -> Result<(String, Vec<HostSpec>), Error> {
    if env.hosts.is_empty() {
        return Err(Error::EnvState {
            refusal: EnvRefusal::NoHosts,
            environment: environment.to_owned(),
            problem: "has no hosts".to_owned(),
            hint: "add hosts to it in gantry.toml".to_owned(),
        });
    }
    Ok((env.project, env.hosts))
}

/// [`hosts_in`], less the hosts that do not run `service` when one is
/// named; a service the environment does not have is refused
/// (`env.service_unknown`).
fn hosts_running(
    env: crate::config::Environment,
    environment: &str,
    service: Option<&str>,
) -> Result<(String, Vec<HostSpec>), Error> {
    let runs = match service {
        Some(name) => match env.services.get(name) {
            Some(service) => Some(service.clone()),
            None => return Err(Error::no_service(&env, environment, name)),
        },
        None => None,
    };
    let (name, mut hosts) = hosts_in(env, environment)?;
    if let Some(service) = runs {
        hosts.retain(|h| service.runs_on(&h.name));
    }
    Ok((name, hosts))
}

/// Runs `f` on every host at once, each with its own connection; results in
/// the hosts' order.
fn on_each<T: Send>(
    hosts: &[HostSpec],
    connect: Connect<'_>,
    f: &(dyn Fn(&dyn Host) -> Result<T, Error> + Sync),
) -> Vec<Result<T, Error>> {
    if let [only] = hosts {
        return vec![connect(only).and_then(|h| f(h.as_ref()))];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|spec| scope.spawn(move || connect(spec).and_then(|h| f(h.as_ref()))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Internal {
                        what: "a host's thread panicked".to_owned(),
                    })
                })
            })
            .collect()
    })
}

/// Each host's answer, in the hosts' order.
type Answers<T> = Vec<Result<T, Error>>;

/// Asks every host of the environment the same question, given the project's
/// name: the project's name, the hosts and their answers in the hosts' order.
fn ask_every_host<T: Send>(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
    ask: &(dyn Fn(&dyn Host, &str) -> Result<T, Error> + Sync),
) -> Result<(String, Vec<HostSpec>, Answers<T>), Error> {
    let (name, hosts) = hosts_of(project, environment)?;
    let answers = on_each(&hosts, connect, &|h| ask(h, &name));
    Ok((name, hosts, answers))
}

/// The project's name and its first host, connected: for what one host answers.
fn target(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
) -> Result<(String, Box<dyn Host>), Error> {
    let (name, hosts) = hosts_of(project, environment)?;
    Ok((name, connect(&hosts[0])?))
}

/// Status of an environment: every host's services merged by name, each
/// instance labelled with its host (when there are several), and each
/// host's reachability. One host unreachable is a line in `hosts`, not a failure.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub environment: String,
    pub host: String,
    #[serde(flatten)]
    pub status: Status,
    pub hosts: Vec<HostState>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct HostState {
    pub host: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub code: Option<&'static str>,
    /// Why the host's proxy does not run, when it should.
    pub proxy_problem: Option<String>,
}

fn merge(
    environment: &str,
    project: String,
    hosts: &[HostSpec],
    answers: Vec<Result<Status, Error>>,
) -> Result<StatusReport, Error> {
    let several = hosts.len() > 1;
    let mut states = Vec::new();
    let mut services: Vec<ServiceStatus> = Vec::new();
    let mut first_error = None;
    let mut any = false;
    for (spec, answer) in hosts.iter().zip(answers) {
        match answer {
            Ok(status) => {
                any = true;
                states.push(HostState {
                    host: spec.name.clone(),
                    reachable: true,
                    error: None,
                    code: None,
                    proxy_problem: status.proxy_problem,
                });
                for mut service in status.services {
                    if several {
                        for instance in &mut service.instances {
                            instance.host = Some(spec.name.clone());
                        }
                    }
                    match services.iter_mut().find(|s| s.name == service.name) {
                        Some(seen) => {
                            seen.state = worse(seen.state, service.state);
                            if seen.release != service.release {
                                seen.release = None;
                            }
                            seen.urls.extend(service.urls);
                            seen.instances.extend(service.instances);
                            if seen.reason.is_none() {
                                seen.reason = service.reason;
                                seen.log_tail = service.log_tail;
                            }
                            if seen.backup_failure.is_none() {
                                seen.backup_failure = service.backup_failure;
                            }
                        }
                        None => services.push(service),
                    }
                }
            }
            Err(e) => {
                states.push(HostState {
                    host: spec.name.clone(),
                    reachable: false,
                    error: Some(e.to_string()),
                    code: Some(e.code().as_str()),
                    proxy_problem: None,
                });
                first_error.get_or_insert(e);
            }
        }
    }
    if !any && let Some(e) = first_error {
        return Err(e);
    }
    Ok(StatusReport {
        environment: environment.to_owned(),
        host: hosts.first().map_or_else(String::new, |h| h.name.clone()),
        status: Status {
            project,
            services,
            proxy_problem: None,
        },
        hosts: states,
    })
}

/// The state that says more is wrong.
fn worse(a: ServiceState, b: ServiceState) -> ServiceState {
    let rank = |s: ServiceState| match s {
        ServiceState::Running => 0,
        ServiceState::Stopped => 1,
        ServiceState::Starting => 2,
        ServiceState::Degraded => 3,
        ServiceState::Failed => 4,
    };
    let worst = if rank(a) >= rank(b) { a } else { b };
    // Running on one host and failed on another is degraded, not failed.
    match (a, b) {
        (ServiceState::Running, ServiceState::Failed)
        | (ServiceState::Failed, ServiceState::Running) => ServiceState::Degraded,
        _ => worst,
    }
}

pub fn status(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
) -> Result<StatusReport, Error> {
    let (name, hosts, answers) =
        ask_every_host(
            project,
            environment,
            connect,
            &|h, name| Ok(h.status(name)?),
        )?;
    merge(environment, name, &hosts, answers)
}

#[derive(Debug, Serialize)]
pub struct ReleasesReport {
    pub project: String,
    /// The environment's deployments, newest first: which host runs which.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<crate::deployments::Deployment>,
    /// The first host's releases.
    pub releases: Vec<Release>,
    /// Each host's releases, when the environment has several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostReleases>,
}

#[derive(Debug, Serialize)]
pub struct HostReleases {
    pub host: String,
    pub releases: Vec<Release>,
}

pub fn releases(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
) -> Result<ReleasesReport, Error> {
    let (name, hosts, answers) = ask_every_host(project, environment, connect, &|h, name| {
        Ok(h.releases(name)?)
    })?;
    let mut per_host = Vec::new();
    for (spec, answer) in hosts.iter().zip(answers) {
        per_host.push(HostReleases {
            host: spec.name.clone(),
            releases: answer?,
        });
    }
    let releases = per_host
        .first()
        .map(|h| h.releases.clone())
        .unwrap_or_default();
    let listed: Vec<(String, Vec<Release>)> = per_host
        .iter()
        .map(|h| (h.host.clone(), h.releases.clone()))
        .collect();
    if per_host.len() == 1 {
        per_host.clear();
    }
    Ok(ReleasesReport {
        project: name,
        deployments: crate::deployments::list(&listed),
        releases,
        hosts: per_host,
    })
}

pub fn release(
    project: &Project,
    environment: &str,
    id: &str,
    connect: Connect<'_>,
) -> Result<Release, Error> {
    let (name, host) = target(project, environment, connect)?;
    Ok(host.release(&name, id)?)
}

/// Rolls every host back, one at a time, to the deployment `to` names, or
/// to the newest complete deployment before the one they run (each host to
/// its release of it: the same artifact and configuration everywhere);
/// stops at the first host that fails. The rollback is a deployment of its
/// own. Where no host records deployments (older agents), or `to` names no
/// deployment, each host goes to its release `to` or its previous one.
pub fn rollback(
    project: &Project,
    environment: &str,
    to: Option<&str>,
    connect: Connect<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
) -> Result<DeployReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    // Secrets the agent already holds are reused; those set here override them.
    let secrets = services_secrets(&config, &env, environment, env_vars).unwrap_or_default();
    let target = rollback_target(&env, connect, to)?;
    let mark = Some(crate::deployments::new_mark());
    let request = RollbackRequest {
        secrets,
        deployment: mark.clone(),
        ..RollbackRequest::default()
    };
    let mut report = match target {
        Target::PerHost { to } => {
            redeploy(&env, environment, request, connect, &|_| Ok(to.clone()))
        }
        Target::Deployment { releases, .. } => {
            redeploy(&env, environment, request, connect, &|host| {
                Ok(releases
                    .iter()
                    .find(|(name, _)| name == host.name())
                    .map(|(_, release)| release.clone()))
            })
        }
    }?;
    report.deployment = mark.map(|m| m.id).unwrap_or_default();
    Ok(report)
}

/// Where a rollback takes the environment, from every host's releases. A
/// host that does not answer leaves only `to` as each host's own release.
fn rollback_target(
    env: &crate::config::resolve::Environment,
    connect: Connect<'_>,
    to: Option<&str>,
) -> Result<Target, Error> {
    let answers = on_each(&env.hosts, connect, &|h| Ok(h.releases(&env.project)?));
    let mut listed = Vec::new();
    for (spec, answer) in env.hosts.iter().zip(answers) {
        match (answer, to) {
            (Ok(releases), _) => listed.push((spec.name.clone(), releases)),
            (Err(_), Some(to)) => {
                return Ok(Target::PerHost {
                    to: Some(to.to_owned()),
                });
            }
            (Err(e), None) => return Err(e),
        }
    }
    crate::deployments::rollback_target(&crate::deployments::list(&listed), to)
}

/// `gantry secrets sync`: every host deploys its current release again,
/// from its stored artifact, with the secrets as they are now (the store
/// first, as a deploy reads them). Every service restarts through the
/// deploy's zero-downtime path; a host that fails keeps what it ran, and
/// the hosts after it are not touched.
pub fn sync_secrets(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
) -> Result<DeployReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let secrets = services_secrets(&config, &env, environment, env_vars)?;
    // Recorded as a redeploy of the release each host runs, not a rollback to it.
    let request = RollbackRequest {
        secrets,
        redeploy: true,
        ..RollbackRequest::default()
    };
    redeploy(&env, environment, request, connect, &|host| {
        let running: Vec<String> = host
            .status(&env.project)?
            .services
            .into_iter()
            .filter_map(|s| s.release)
            .collect();
        // Newest first: the newest release a service runs is the current one.
        let current = host
            .releases(&env.project)?
            .into_iter()
            .find(|r| running.contains(&r.id))
            .map(|r| r.id);
        current.map(Some).ok_or_else(|| Error::EnvState {
            refusal: EnvRefusal::NotDeployed,
            environment: environment.to_owned(),
            problem: format!(
                "runs nothing on host `{}` to give the secrets to",
                host.name()
            ),
            hint: "deploy it first: a deploy gives the services their secrets".to_owned(),
        })
    })
}

/// The values of the secrets `env`'s services name, as a deploy reads them.
fn services_secrets(
    config: &crate::config::Config,
    env: &crate::config::resolve::Environment,
    environment: &str,
    env_vars: &dyn Fn(&str) -> Option<String>,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let names: Vec<String> = env
        .services
        .values()
        .flat_map(|s| s.secrets.clone())
        .collect();
    crate::secrets::values(config.project_dir(), environment, &names, env_vars)
}

/// The release a host deploys again (`None`: its previous one).
type ToRelease<'a> = dyn Fn(&dyn Host) -> Result<Option<String>, Error> + 'a;

/// Has each host, one at a time, deploy again the release `target` names
/// (`None`: its previous one) as `request` asks; stops at the first host
/// that fails.
fn redeploy(
    env: &crate::config::resolve::Environment,
    environment: &str,
    request: RollbackRequest,
    connect: Connect<'_>,
    target: &ToRelease<'_>,
) -> Result<DeployReport, Error> {
    let mut outcomes = Vec::new();
    let mut stopped = false;
    for spec in &env.hosts {
        if stopped {
            outcomes.push(HostDeploy::skipped(spec));
            continue;
        }
        let outcome = match connect(spec).and_then(|host| Ok((target(host.as_ref())?, host))) {
            Ok((to, host)) => {
                let previous = host
                    .releases(&env.project)
                    .ok()
                    .and_then(|all| all.into_iter().find(|r| r.outcome == Outcome::Succeeded))
                    .map(|r| r.id);
                let request = RollbackRequest {
                    to,
                    ..request.clone()
                };
                HostDeploy::from_result(&spec.name, previous, host.rollback(&env.project, &request))
            }
            Err(e) => HostDeploy::lost(spec, e),
        };
        stopped = !outcome.outcome.succeeded();
        outcomes.push(outcome);
    }
    conclude(&env.project, environment, Vec::new(), outcomes)
}

/// Stop or restart: the two act alike on a selection of services.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Stop,
    Restart,
}

/// Stops or restarts `service` (or every service) on the hosts that run
/// it. A service the environment does not have is refused
/// (`env.service_unknown`) before any host is asked.
pub fn act(
    project: &Project,
    environment: &str,
    action: Action,
    service: Option<&str>,
    connect: Connect<'_>,
) -> Result<StatusReport, Error> {
    let config = project.load()?;
    let (name, hosts) = hosts_running(config.environment(environment)?, environment, service)?;
    act_on(environment, name, &hosts, action, service, connect)
}

/// As [`act`], on the hosts given rather than those gantry.toml lists (an
/// environment being destroyed may be gone from gantry.toml).
pub fn act_on(
    environment: &str,
    name: String,
    hosts: &[HostSpec],
    action: Action,
    service: Option<&str>,
    connect: Connect<'_>,
) -> Result<StatusReport, Error> {
    let selector = ServiceSelector {
        service: service.map(str::to_owned),
    };
    let answers = on_each(hosts, connect, &|h| {
        Ok(match action {
            Action::Stop => h.stop(&name, &selector)?,
            Action::Restart => h.restart(&name, &selector)?,
        })
    });
    // Acting is not looking: a host that could not be reached fails the command.
    if let Some(at) = answers.iter().position(Result::is_err) {
        if let Some(Err(e)) = answers.into_iter().nth(at) {
            return Err(e);
        }
        unreachable!("position found an error");
    }
    merge(environment, name, hosts, answers)
}

/// Streams log lines to `sink` until it returns false or the lines end.
/// With several hosts, their lines are merged (by time when not following;
/// as they come when following), each labelled with its host. With a
/// service, only the hosts that run it are read. A host that cannot be read
/// does not hold back the others' lines: it is named on `progress` at once,
/// and its error is the command's once their lines are through. A service
/// the environment does not have is refused (`env.service_unknown`).
pub fn logs(
    project: &Project,
    environment: &str,
    query: &LogQuery,
    connect: Connect<'_>,
    progress: &dyn Progress,
    sink: &mut dyn FnMut(LogLine) -> bool,
) -> Result<(), Error> {
    let config = project.load()?;
    let service = query.service.as_deref();
    let (name, hosts) = hosts_running(config.environment(environment)?, environment, service)?;
    if let [only] = hosts.as_slice() {
        return Ok(connect(only)?.logs(&name, query, sink)?);
    }
    let (send, receive) = std::sync::mpsc::sync_channel::<Result<LogLine, Error>>(1024);
    let mut failed = None;
    let mut unread = |e: Error| {
        progress.step(&format!("{e}; its lines are left out"));
        failed.get_or_insert(e);
    };
    std::thread::scope(|scope| {
        for spec in &hosts {
            let send = send.clone();
            let name = &name;
            scope.spawn(move || {
                let host = match connect(spec) {
                    Ok(host) => host,
                    Err(e) => {
                        let _ = send.send(Err(e));
                        return;
                    }
                };
                let result = host.logs(name, query, &mut |mut line| {
                    line.host = Some(spec.name.clone());
                    send.send(Ok(line)).is_ok()
                });
                if let Err(e) = result {
                    let _ = send.send(Err(e.into()));
                }
            });
        }
        drop(send);
        if query.follow {
            for item in receive.iter() {
                match item {
                    Ok(line) => {
                        if !sink(line) {
                            break;
                        }
                    }
                    Err(e) => unread(e),
                }
            }
            // The hosts' streams end at their next line, when sending fails.
            drop(receive);
            return;
        }
        let mut lines = Vec::new();
        for item in receive.iter() {
            match item {
                Ok(line) => lines.push(line),
                Err(e) => unread(e),
            }
        }
        lines.sort_by_key(|l| l.ts);
        for line in lines {
            if !sink(line) {
                break;
            }
        }
    });
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fake::{Fleet, Said, Script, log_line, project, service};

    fn running(services: Vec<ServiceStatus>, logs: Vec<LogLine>) -> Script {
        Script {
            services,
            logs,
            ..Script::default()
        }
    }

    /// A host whose one service, `web`, is in `state` on `release`.
    fn serving(state: ServiceState, release: &str) -> Script {
        running(vec![service("web", state, release)], Vec::new())
    }

    /// Makes `web` run on h1 alone.
    fn place_web_on_h1(dir: &tempfile::TempDir) {
        let path = dir.path().join("gantry.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        let placed = toml.replace("port = \"http\"\n", "port = \"http\"\nhosts = [\"h1\"]\n");
        assert_ne!(toml, placed);
        std::fs::write(&path, placed).unwrap();
    }

    fn down() -> Script {
        Script {
            down: true,
            ..Script::default()
        }
    }

    fn status_of(fleet: &Arc<Fleet>, project: &Project) -> Result<StatusReport, Error> {
        status(project, "prod", &|spec: &HostSpec| fleet.connect(spec))
    }

    /// The (time, host) of each line `logs` gives, what it said on the way,
    /// and how it ended.
    type Read = (Vec<(u64, String)>, Vec<String>, Result<(), Error>);

    fn logs_of(fleet: &Arc<Fleet>, project: &Project, query: &LogQuery) -> Read {
        let mut seen = Vec::new();
        let said = Said::default();
        let connect = |spec: &HostSpec| fleet.connect(spec);
        let result = logs(project, "prod", query, &connect, &said, &mut |line| {
            seen.push((line.ts, line.host.unwrap_or_default()));
            true
        });
        (seen, said.lines(), result)
    }

    #[test]
    fn status_merges_each_service_across_hosts_labelling_instances_with_their_host() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([
            ("h1", serving(ServiceState::Running, "r2")),
            ("h2", serving(ServiceState::Failed, "r1")),
        ]);
        let report = status_of(&fleet, &project).unwrap();

        let [web] = report.status.services.as_slice() else {
            panic!("{report:#?}");
        };
        // Running on one host and failed on the other; on two releases.
        assert_eq!(
            (web.state, web.release.as_deref()),
            (ServiceState::Degraded, None)
        );
        let hosts: Vec<_> = web.instances.iter().map(|i| i.host.as_deref()).collect();
        assert_eq!(hosts, [Some("h1"), Some("h2")]);
        assert!(report.hosts.iter().all(|h| h.reachable), "{report:#?}");
    }

    #[test]
    fn status_with_one_host_down_reports_it_unreachable_beside_the_others_services() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([("h1", serving(ServiceState::Running, "r2")), ("h2", down())]);
        let report = status_of(&fleet, &project).unwrap();

        let reach: Vec<_> = report
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.reachable, h.code))
            .collect();
        assert_eq!(
            reach,
            [("h1", true, None), ("h2", false, Some("agent.unreachable"))]
        );
        assert!(
            report.hosts[1]
                .error
                .as_deref()
                .unwrap_or_default()
                .contains("h2")
        );
        let [web] = report.status.services.as_slice() else {
            panic!("{report:#?}");
        };
        assert_eq!(web.state, ServiceState::Running);
        assert_eq!(web.instances[0].host.as_deref(), Some("h1"));
    }

    #[test]
    fn status_with_every_host_down_is_the_first_hosts_error() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([("h1", down()), ("h2", down())]);
        let error = status_of(&fleet, &project).unwrap_err();
        assert_eq!(error.code(), "agent.unreachable");
        assert!(error.to_string().contains("h1"), "{error}");
    }

    #[test]
    fn logs_of_several_hosts_are_merged_by_time_each_line_labelled_with_its_host() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([
            (
                "h1",
                running(Vec::new(), vec![log_line(1, "a"), log_line(3, "c")]),
            ),
            ("h2", running(Vec::new(), vec![log_line(2, "b")])),
        ]);
        let (seen, _, result) = logs_of(&fleet, &project, &LogQuery::default());
        result.unwrap();
        assert_eq!(
            seen,
            [
                (1, "h1".to_owned()),
                (2, "h2".to_owned()),
                (3, "h1".to_owned())
            ]
        );
    }

    /// Logs of a service the environment does not have are refused, naming
    /// those it has, before any host is asked (one is down here).
    #[test]
    fn logs_of_an_unknown_service_are_refused_with_the_services_it_has() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([("h1", down()), ("h2", down())]);
        let query = LogQuery {
            service: Some("wbe".to_owned()),
            ..LogQuery::default()
        };
        let connect = |spec: &HostSpec| fleet.connect(spec);
        let error = logs(
            &project,
            "prod",
            &query,
            &connect,
            &Said::default(),
            &mut |_| true,
        )
        .unwrap_err();
        assert_eq!(error.code(), "env.service_unknown", "{error}");
        assert_eq!(error.hint().as_deref(), Some("its services are: web"));
    }

    /// A host that is down does not hold back the others' lines: it is
    /// named at once, and its error is the command's once they are through.
    #[test]
    fn logs_with_one_host_down_give_the_others_lines_then_that_hosts_error() {
        let (_dir, project) = project(&["h1", "h2", "h3"], 1);
        let fleet = Fleet::new([
            ("h1", running(Vec::new(), vec![log_line(1, "a")])),
            ("h2", down()),
            ("h3", running(Vec::new(), vec![log_line(2, "b")])),
        ]);
        for follow in [false, true] {
            let query = LogQuery {
                follow,
                ..LogQuery::default()
            };
            let (mut seen, said, result) = logs_of(&fleet, &project, &query);
            seen.sort();
            assert_eq!(seen, [(1, "h1".to_owned()), (2, "h3".to_owned())]);
            let error = result.unwrap_err();
            assert_eq!(error.code(), "agent.unreachable");
            assert!(error.to_string().contains("h2"), "{error}");
            assert_eq!(said.len(), 1, "{said:?}");
            assert!(
                said[0].contains("h2") && said[0].contains("left out"),
                "{said:?}"
            );
        }
    }

    /// `gantry logs web` reads only the hosts `web` runs on: a host down
    /// that does not run it is not asked, and fails nothing.
    #[test]
    fn logs_of_a_service_ask_only_the_hosts_it_runs_on() {
        let (dir, project) = project(&["h1", "h2"], 1);
        place_web_on_h1(&dir);
        let fleet = Fleet::new([
            ("h1", running(Vec::new(), vec![log_line(1, "a")])),
            ("h2", down()),
        ]);
        let query = LogQuery {
            service: Some("web".to_owned()),
            ..LogQuery::default()
        };
        let (seen, said, result) = logs_of(&fleet, &project, &query);
        result.unwrap();
        assert_eq!(seen, [(1, String::new())], "one host: lines unlabelled");
        assert!(said.is_empty(), "{said:?}");
        assert_eq!(fleet.calls_to("h2"), Vec::<String>::new());
    }

    #[test]
    fn rollback_goes_back_host_by_host_and_stops_at_one_it_cannot_reach() {
        let (_dir, project) = project(&["h1", "h2", "h3"], 1);
        let fleet = Fleet::new([
            ("h1", serving(ServiceState::Running, "r2")),
            ("h2", down()),
            ("h3", serving(ServiceState::Running, "r2")),
        ]);
        let connect = |spec: &HostSpec| fleet.connect(spec);
        let result = rollback(&project, "prod", Some("r1"), &connect, &|_| None);

        let Err(Error::DeployFailed { reason, .. }) = result else {
            panic!("the rollback went on: {result:?}");
        };
        assert!(
            reason.contains("Now running: h1 r1, h2 unknown (unreachable), h3 not updated"),
            "{reason}"
        );
        assert_eq!(fleet.calls_to("rollback"), ["h1 rollback to r1"]);
        // Asked for its releases (where to go back to), never told to go back.
        assert!(
            !fleet.calls_to("h3").iter().any(|c| c.contains("rollback")),
            "{:#?}",
            fleet.calls()
        );
    }

    /// A successful release of `artifact` that deployments `marks` (id, time) made or kept.
    fn marked(id: &str, artifact: &str, marks: &[(&str, u64)]) -> Release {
        crate::fake::marked(id, artifact, Outcome::Succeeded, marks)
    }

    #[test]
    fn rollback_after_a_retried_rollout_puts_every_host_on_the_deployment_before() {
        // d1: v1 everywhere. d2: v2 reached h1, then h2 was cut off. d3, the
        // retry: h1 already ran v2 (kept), h2 and h3 made their v2 release.
        // h1's newest release before its current one is... its own v2 r2:
        // per host, h1 would have stayed on v2.
        let v1 = |id| marked(id, "v1", &[("d1", 10)]);
        let fleet = Fleet::new([
            (
                "h1",
                Script {
                    history: vec![marked("r2", "v2", &[("d2", 20), ("d3", 30)]), v1("r1")],
                    ..Script::default()
                },
            ),
            (
                "h2",
                Script {
                    history: vec![marked("r2", "v2", &[("d3", 30)]), v1("r1")],
                    ..Script::default()
                },
            ),
            (
                "h3",
                Script {
                    history: vec![marked("r2", "v2", &[("d3", 30)]), v1("r1")],
                    ..Script::default()
                },
            ),
        ]);
        let (_dir, project) = project(&["h1", "h2", "h3"], 1);
        let connect = |spec: &HostSpec| fleet.connect(spec);
        let report = rollback(&project, "prod", None, &connect, &|_| None).unwrap();
        assert_eq!(
            fleet.calls_to("rollback"),
            [
                "h1 rollback to r1",
                "h2 rollback to r1",
                "h3 rollback to r1"
            ]
        );
        assert!(report.deployment.starts_with('d'), "{report:#?}");

        // Named: d3, where h1's release is the one it kept.
        let fleet_calls = fleet.calls().len();
        rollback(&project, "prod", Some("d3"), &connect, &|_| None).unwrap();
        assert_eq!(
            fleet.calls()[fleet_calls..]
                .iter()
                .filter(|c| c.contains("rollback"))
                .collect::<Vec<_>>(),
            [
                "h1 rollback to r2",
                "h2 rollback to r2",
                "h3 rollback to r2"
            ]
        );
        // d2 never reached h2: refused before any host is touched.
        let before = fleet.calls_to("rollback").len();
        let error = rollback(&project, "prod", Some("d2"), &connect, &|_| None).unwrap_err();
        assert_eq!(error.code(), "release.not_found");
        assert_eq!(fleet.calls_to("rollback").len(), before);
    }

    #[test]
    fn stopping_with_one_host_down_fails_with_that_hosts_error() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([("h1", serving(ServiceState::Running, "r2")), ("h2", down())]);
        let connect = |spec: &HostSpec| fleet.connect(spec);
        let error = act(&project, "prod", Action::Stop, None, &connect).unwrap_err();
        assert_eq!(error.code(), "agent.unreachable");
        assert!(error.to_string().contains("h2"), "{error}");
        // The host that answered was still told to stop.
        assert_eq!(fleet.calls_to("stop"), ["h1 stop"]);
    }

    /// Stopping one service asks only the hosts it runs on; a service the
    /// environment lacks is refused, as `logs` and `exec` refuse it.
    #[test]
    fn stopping_a_service_asks_only_its_hosts_and_an_unknown_one_is_refused() {
        let (dir, project) = project(&["h1", "h2"], 1);
        place_web_on_h1(&dir);
        let fleet = Fleet::new([("h1", serving(ServiceState::Running, "r2")), ("h2", down())]);
        let connect = |spec: &HostSpec| fleet.connect(spec);
        act(&project, "prod", Action::Stop, Some("web"), &connect).unwrap();
        assert_eq!(fleet.calls_to("stop"), ["h1 stop"]);
        let error = act(&project, "prod", Action::Restart, Some("wbe"), &connect).unwrap_err();
        assert_eq!(error.code(), "env.service_unknown", "{error}");
        assert_eq!(error.hint().as_deref(), Some("its services are: web"));
        assert!(fleet.calls_to("restart").is_empty());
    }
}
