//! `gantry test`: checks each host of an environment as a user would after a
//! deploy: its agent answers (and which version), every service placed there
//! runs and is healthy, each route answers through the host's own proxy
//! (probed from the host itself), and each route's DNS name resolves to a
//! host of the environment (a warning: DNS may lag, or a load balancer may
//! front the hosts).

use std::net::{IpAddr, ToSocketAddrs};

use serde::Serialize;

use crate::agent_api::{InstanceState, ServiceState, ServiceStatus};
use crate::config::resolve::{Host as HostSpec, Reach};
use crate::configure::OpenShell;
use crate::operate::Connect;
use crate::{Error, Project};

#[derive(Debug, Serialize)]
pub struct TestReport {
    pub environment: String,
    /// No check failed (warnings allowed).
    pub ok: bool,
    pub hosts: Vec<HostChecks>,
}

#[derive(Debug, Serialize)]
pub struct HostChecks {
    pub host: String,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Warning,
    Failed,
}

/// Probes `http://PROXY/` with `Host: NAME` from the host: the status code.
pub type Probe<'a> = &'a (dyn Fn(&HostSpec, &str, &str) -> Result<u16, Error> + Sync);

pub fn test(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
    probe: Probe<'_>,
    shell: OpenShell<'_>,
) -> Result<TestReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let addresses: Vec<(String, Vec<IpAddr>)> = env
        .hosts
        .iter()
        .map(|h| (h.name.clone(), host_addresses(h, shell)))
        .collect();
    let mut hosts = Vec::new();
    for host in &env.hosts {
        let mut checks = Vec::new();
        let mut check = |name: String, outcome, detail: String| {
            checks.push(Check {
                check: name,
                outcome,
                detail,
            });
        };
        let agent = match connect(host) {
            Ok(agent) => agent,
            Err(e) => {
                check("agent answers".to_owned(), Outcome::Failed, e.to_string());
                hosts.push(HostChecks {
                    host: host.name.clone(),
                    checks,
                });
                continue;
            }
        };
        let info = agent.info()?;
        check(
            "agent answers".to_owned(),
            Outcome::Passed,
            format!("gantry {}, limits by {}", info.version, info.limits),
        );
        let placed: Vec<_> = env
            .services
            .values()
            .filter(|s| s.runs_on(&host.name))
            .collect();
        let status = agent.status(&env.project)?;
        for service in &placed {
            let found = status.services.iter().find(|s| s.name == service.name);
            let wanted = usize::try_from(service.replicas).unwrap_or(usize::MAX);
            let (outcome, detail) = service_health(found, wanted);
            check(format!("{} healthy", service.name), outcome, detail);
        }
        match &info.proxy {
            None => {
                let (outcome, detail) = without_proxy(&info);
                check("routes answer".to_owned(), outcome, detail);
            }
            Some(proxy) => {
                for service in placed.iter().filter(|s| s.port.is_some()) {
                    let mut names = vec![format!("{}.{}.localhost", service.name, env.project)];
                    names.extend(service.routes.iter().map(|r| r.host.clone()));
                    for name in names {
                        let (outcome, detail) = match probe(host, proxy, &name) {
                            Ok(code) if (200..400).contains(&code) => {
                                (Outcome::Passed, format!("{code} from http://{name}/"))
                            }
                            Ok(code) => (Outcome::Failed, format!("{code} from http://{name}/")),
                            Err(e) => (Outcome::Failed, e.to_string()),
                        };
                        check(format!("route {name} answers"), outcome, detail);
                    }
                }
            }
        }
        for service in &placed {
            for route in &service.routes {
                let name = route.host.trim_start_matches("*.");
                if name.ends_with("localhost") {
                    continue;
                }
                let resolved: Vec<IpAddr> = (name, 80)
                    .to_socket_addrs()
                    .map(|a| a.map(|a| a.ip()).collect())
                    .unwrap_or_default();
                let ours: Vec<&String> = addresses
                    .iter()
                    .filter(|(_, ips)| ips.iter().any(|ip| resolved.contains(ip)))
                    .map(|(h, _)| h)
                    .collect();
                let (outcome, detail) = dns_outcome(name, &resolved, &ours, environment);
                check(format!("dns {name}"), outcome, detail);
            }
        }
        hosts.push(HostChecks {
            host: host.name.clone(),
            checks,
        });
    }
    let ok = hosts
        .iter()
        .flat_map(|h| &h.checks)
        .all(|c| c.outcome != Outcome::Failed);
    let report = TestReport {
        environment: environment.to_owned(),
        ok,
        hosts,
    };
    if !ok {
        return Err(failed(&report));
    }
    Ok(report)
}

/// `test.failed`, naming each failed check and carrying the whole report.
fn failed(report: &TestReport) -> Error {
    Error::TestFailed {
        failed: report
            .hosts
            .iter()
            .flat_map(|h| {
                h.checks
                    .iter()
                    .filter(|c| c.outcome == Outcome::Failed)
                    .map(move |c| format!("{}: {}", h.host, c.check))
            })
            .collect(),
        report: Box::new(serde_json::to_value(report).unwrap_or_default()),
    }
}

/// Whether a placed service runs with at least `wanted` live, healthy
/// instances on the host.
fn service_health(found: Option<&ServiceStatus>, wanted: usize) -> (Outcome, String) {
    match found {
        None => (Outcome::Failed, "not deployed here".to_owned()),
        Some(s) => {
            let live = s
                .instances
                .iter()
                .filter(|i| i.state == InstanceState::Live && i.healthy)
                .count();
            if s.state == ServiceState::Running && live >= wanted {
                (
                    Outcome::Passed,
                    format!(
                        "{live} healthy instance{} of {}",
                        if live == 1 { "" } else { "s" },
                        s.release.as_deref().unwrap_or("?")
                    ),
                )
            } else {
                (
                    Outcome::Failed,
                    format!(
                        "{:?} with {live} of {wanted} instances healthy{}",
                        s.state,
                        s.reason
                            .as_ref()
                            .map_or_else(String::new, |r| format!(": {r}"))
                    ),
                )
            }
        }
    }
}

/// The routes check of a host whose agent runs no proxy: failed when one
/// should run (and why it does not), a warning when none was asked for.
fn without_proxy(info: &crate::agent_api::AgentInfo) -> (Outcome, String) {
    match &info.proxy_problem {
        Some(problem) => (
            Outcome::Failed,
            format!("the proxy does not run: {problem}"),
        ),
        None => (Outcome::Warning, "the agent runs no proxy here".to_owned()),
    }
}

/// Whether a route's name resolves to a host of the environment (`ours`):
/// only a warning when not, as DNS may lag or a load balancer may front them.
fn dns_outcome(
    name: &str,
    resolved: &[IpAddr],
    ours: &[&String],
    environment: &str,
) -> (Outcome, String) {
    if resolved.is_empty() {
        (Outcome::Warning, format!("{name} does not resolve"))
    } else if ours.is_empty() {
        (
            Outcome::Warning,
            format!(
                "{name} resolves to {}, no host of {environment}",
                resolved
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        (
            Outcome::Passed,
            format!(
                "{name} resolves to {}",
                ours.iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}

/// The addresses a host is reached at: its SSH address as ssh resolves it
/// (`ssh -G` applies ~/.ssh/config), or this machine's for `local`.
fn host_addresses(host: &HostSpec, shell: OpenShell<'_>) -> Vec<IpAddr> {
    let name = match &host.reach {
        Reach::Local => return vec![IpAddr::from([127, 0, 0, 1])],
        Reach::Ssh { target } => shell(host)
            .ok()
            .and_then(|s| s.resolved_address())
            .or_else(|| Some(crate::config::SshTarget::parse(target).ok()?.address))
            .unwrap_or_default(),
        Reach::Provider { .. } => return Vec::new(),
    };
    (name.as_str(), 22)
        .to_socket_addrs()
        .map(|a| a.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fake::{Fleet, Script, project, service};

    fn healthy() -> Script {
        Script {
            services: vec![service("web", ServiceState::Running, "r2")],
            ..Script::default()
        }
    }

    fn test_of(fleet: &Arc<Fleet>, project: &Project) -> Result<TestReport, Error> {
        test(
            project,
            "prod",
            &|spec: &HostSpec| fleet.connect(spec),
            &|_: &HostSpec, _: &str, _: &str| Ok(200),
            &|spec: &HostSpec| fleet.open_shell(spec),
        )
    }

    fn outcomes(report: &serde_json::Value, host: usize) -> Vec<(String, String)> {
        report["hosts"][host]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["check"].as_str().unwrap().to_owned(),
                    c["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn every_host_passes_when_its_agent_answers_and_its_services_are_healthy_and_routed() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([("h1", healthy()), ("h2", healthy())]);
        let report = test_of(&fleet, &project).unwrap();
        assert!(report.ok);
        let json = serde_json::to_value(&report).unwrap();
        for host in 0..2 {
            assert_eq!(
                outcomes(&json, host),
                [
                    ("agent answers".to_owned(), "passed".to_owned()),
                    ("web healthy".to_owned(), "passed".to_owned()),
                    (
                        "route web.shop.localhost answers".to_owned(),
                        "passed".to_owned()
                    ),
                ]
            );
        }
    }

    #[test]
    fn a_host_down_fails_its_check_and_the_others_are_still_checked() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let down = Script {
            down: true,
            ..Script::default()
        };
        let fleet = Fleet::new([("h1", down), ("h2", healthy())]);
        let Err(Error::TestFailed { failed, report }) = test_of(&fleet, &project) else {
            panic!("a host down passed");
        };
        assert_eq!(failed, ["h1: agent answers"]);
        assert_eq!(
            outcomes(&report, 0),
            [("agent answers".to_owned(), "failed".to_owned())]
        );
        assert!(
            outcomes(&report, 1).iter().all(|(_, o)| o == "passed"),
            "{report:#}"
        );
    }
}
