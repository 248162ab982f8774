//! What runs now: per service its state, release, instances (pid, port,
//! health, restarts, memory) and whether its limits are enforced.

use std::collections::BTreeMap;

use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::v1::Restart;
use gantry_core::agent_api::{
    Instance, InstanceState, Limits, Release, ServiceState, ServiceStatus,
};

use crate::agent::Agent;
use crate::process;
use crate::store::{InstanceRecord, StoreError};

/// The URLs a service answers on, on this host: its instances' ports, and
/// through the host's proxy (when one runs; `proxy` is where it listens,
/// `https` where it accepts HTTPS) its routes and its automatic name.
pub fn urls(
    project: &str,
    service: &ServiceSpec,
    ports: &[u16],
    proxy: Option<std::net::SocketAddr>,
    https: Option<std::net::SocketAddr>,
) -> Vec<String> {
    let mut urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/"))
        .collect();
    let routed = !ports.is_empty() || crate::site::is_static(service);
    let Some(proxy) = proxy.filter(|_| routed) else {
        return urls;
    };
    for route in &service.routes {
        urls.push(url("http", &route.host, proxy.port(), &route.path));
    }
    let automatic = format!("{}.{project}.localhost", service.name);
    urls.push(url("http", &automatic, proxy.port(), "/"));
    if let Some(https) = https {
        urls.push(url("https", &automatic, https.port(), "/"));
    }
    urls
}

/// `scheme://host[:port]/path/`, the port left out where it is the scheme's own.
fn url(scheme: &str, host: &str, port: u16, path: &str) -> String {
    let own = if scheme == "https" { 443 } else { 80 };
    let port = if port == own {
        String::new()
    } else {
        format!(":{port}")
    };
    format!("{scheme}://{host}{port}{}/", path.trim_end_matches('/'))
}

/// Whether a report reads each container's memory from the engine. A
/// sample can take a second or more (a one-shot sample often comes back
/// without memory, and a full one waits for the engine's next reading):
/// `status` pays for it; a deploy's answer, whose containers have just
/// started, does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerMemory {
    Sampled,
    Skipped,
}

/// A service's current release and its instances, while a report is made.
struct Row<'a> {
    name: String,
    spec: ServiceSpec,
    release: Option<String>,
    live: Vec<&'a InstanceRecord>,
    instances: Vec<Instance>,
}

/// Each service of the project with the spec its current release deployed
/// and that release's instances (all but the stopped ones).
fn rows<'a>(
    agent: &Agent,
    records: &'a [InstanceRecord],
    current: &BTreeMap<String, String>,
    releases: &[Release],
) -> Vec<Row<'a>> {
    // The spec of each service as its current release deployed it.
    let mut specs: BTreeMap<String, (ServiceSpec, Option<String>)> = BTreeMap::new();
    for (service, release_id) in current {
        if let Some(release) = releases.iter().find(|r| &r.id == release_id)
            && let Some(spec) = release.services.iter().find(|s| &s.name == service)
        {
            specs.insert(service.clone(), (spec.clone(), Some(release_id.clone())));
        }
    }
    specs
        .into_iter()
        .map(|(name, (spec, release))| {
            let live: Vec<&InstanceRecord> = records
                .iter()
                .filter(|r| r.service == name && Some(&r.release) == release.as_ref())
                .collect();
            let instances = live
                .iter()
                .filter(|r| r.state != InstanceState::Stopped)
                .map(|r| instance(agent, r))
                .collect();
            Row {
                name,
                spec,
                release,
                live,
                instances,
            }
        })
        .collect()
}

/// The memory of each container: the main process's resident set is not a
/// container's, so it is the engine's sample, taken for every container at
/// once (a sample can take a second), or none.
async fn sample_memory(
    agent: &Agent,
    project: &str,
    rows: &mut [Row<'_>],
    memory: ContainerMemory,
) {
    let containers = rows
        .iter_mut()
        .filter(|row| crate::container_instance::is_container(&row.spec))
        .map(|row| async {
            match memory {
                ContainerMemory::Sampled => {
                    container_memory(agent, project, &mut row.instances).await
                }
                ContainerMemory::Skipped => row.instances.iter_mut().for_each(|i| i.memory = None),
            }
        });
    futures_util::future::join_all(containers).await;
}

pub async fn services(
    agent: &Agent,
    project: &str,
    memory: ContainerMemory,
) -> Result<Vec<ServiceStatus>, StoreError> {
    let p = project.to_owned();
    let (records, current, releases) = agent
        .db(move |s| Ok((s.instances(&p)?, s.current_all(&p)?, s.releases(&p)?)))
        .await?;
    let failed_reason: BTreeMap<String, String> = releases
        .first()
        .filter(|r| r.outcome == gantry_core::agent_api::Outcome::Failed)
        .and_then(|r| r.reason.clone().map(|reason| (r, reason)))
        .and_then(|(r, reason)| {
            let name = reason.split('`').nth(1)?.to_owned();
            Some(BTreeMap::from([(
                name,
                format!("{reason} (release {})", r.id),
            )]))
        })
        .unwrap_or_default();

    let mut rows = rows(agent, &records, &current, &releases);
    sample_memory(agent, project, &mut rows, memory).await;

    let mut out = Vec::new();
    for Row {
        name,
        spec,
        release,
        live,
        instances,
    } in rows
    {
        // A static service has no instances: the proxy serves its release.
        let state = if crate::site::is_static(&spec) {
            ServiceState::Running
        } else if instances.is_empty() {
            if live.iter().any(|r| r.state == InstanceState::Failed) {
                ServiceState::Failed
            } else {
                ServiceState::Stopped
            }
        } else if instances
            .iter()
            .all(|i| i.state == InstanceState::Live && i.healthy)
        {
            ServiceState::Running
        } else if instances.iter().any(|i| i.state == InstanceState::Failed) {
            ServiceState::Failed
        } else if instances.iter().any(|i| i.state == InstanceState::Starting) {
            ServiceState::Starting
        } else {
            ServiceState::Degraded
        };
        let failed_instance = live.iter().find(|r| r.state == InstanceState::Failed);
        let (reason, log_tail) = match failed_instance {
            Some(r) => (
                Some(failure(&spec, r)),
                crate::instance::stderr_tail(agent, project, &r.id, 20),
            ),
            None => (failed_reason.get(&name).cloned(), Vec::new()),
        };
        let ports: Vec<u16> = instances.iter().filter_map(|i| i.port).collect();
        let backup_failure = crate::backup_files::failure(&agent.paths, project, &name);
        out.push(ServiceStatus {
            urls: urls(
                project,
                &spec,
                &ports,
                agent.proxy.listen(),
                agent.proxy.https(),
            ),
            limits: limits(agent, &spec),
            name,
            state,
            release,
            instances,
            reason,
            log_tail,
            backup_failure,
        });
    }
    Ok(out)
}

/// Why an instance is failed: it was given up on, or is never restarted.
fn failure(spec: &ServiceSpec, r: &InstanceRecord) -> String {
    let exit = r
        .last_exit
        .as_ref()
        .map_or_else(|| "exited".to_owned(), ToString::to_string);
    match spec.restart {
        Restart::Never => format!("{exit}; not restarted (restart = \"never\")"),
        Restart::Always | Restart::OnFailure => {
            format!("gave up after {} restarts: {exit}", r.restarts)
        }
    }
}

fn instance(agent: &Agent, r: &InstanceRecord) -> Instance {
    let running = match (r.pid, r.start_time) {
        (Some(pid), Some(start)) => process::is_running(pid, start),
        _ => false,
    };
    Instance {
        host: None,
        id: r.id.clone(),
        service: r.service.clone(),
        release: r.release.clone(),
        state: r.state,
        pid: r.pid.filter(|_| running),
        port: r.port,
        healthy: running && r.healthy,
        restarts: r.restarts,
        memory: r.pid.filter(|_| running).and_then(process::rss_bytes),
        last_exit: r.last_exit.clone().or_else(|| {
            (!running && r.pid.is_some())
                .then(|| crate::instance::exit_of(agent, &r.id))
                .flatten()
        }),
    }
}

/// A container's memory is its cgroup's, as `docker stats` counts it (every
/// process in it, the page cache it can give back left out), not its main
/// process's resident set.
async fn container_memory(agent: &Agent, project: &str, instances: &mut [Instance]) {
    let reads = instances.iter().map(|i| async {
        match i.pid {
            Some(_) => crate::container_instance::memory(agent, project, &i.id).await,
            None => None,
        }
    });
    let memory = futures_util::future::join_all(reads).await;
    for (instance, memory) in instances.iter_mut().zip(memory) {
        instance.memory = memory;
    }
}

/// What a service's instances are held to: every service has memory and
/// pids limits (its own or the defaults), enforced where cgroups are; a
/// static service, which runs nothing, none.
fn limits(agent: &Agent, spec: &ServiceSpec) -> Limits {
    if crate::site::is_static(spec) {
        return Limits {
            enforced: false,
            via: "none".to_owned(),
            memory: None,
            cpu: None,
            pids: None,
        };
    }
    let limits = crate::instance::limits(spec);
    // Docker holds a container to its limits, cgroups or not here.
    let (enforced, via) = if crate::container_instance::is_container(spec) {
        (true, "docker".to_owned())
    } else {
        (agent.cgroups.enforces(), agent.cgroups.mode().to_string())
    };
    Limits {
        enforced,
        via,
        memory: limits.memory,
        cpu: limits.cpu,
        pids: limits.pids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service of ported process instances with these routes.
    fn web(routes: &[(&str, &str)]) -> ServiceSpec {
        let routes: Vec<_> = (routes.iter())
            .map(|(host, path)| serde_json::json!({"host": host, "path": path}))
            .collect();
        let spec = serde_json::json!({
            "name": "web", "driver": "process", "run": "bin/web", "port": "http",
            "replicas": 1, "stop_timeout": "10s", "restart": "always", "routes": routes,
        });
        serde_json::from_value(spec).expect("a service")
    }

    /// A route answers through the proxy, so its URL has the proxy's port
    /// (left out where it is the scheme's own) and is listed only when a
    /// proxy runs.
    #[test]
    fn a_routes_url_is_where_the_proxy_listens() {
        let spec = web(&[("app.shop.localhost", "/"), ("shop.example", "/api")]);
        let local = "127.0.0.1:8080".parse().ok();
        assert_eq!(
            urls("shop", &spec, &[3000], local, None),
            [
                "http://127.0.0.1:3000/",
                "http://app.shop.localhost:8080/",
                "http://shop.example:8080/api/",
                "http://web.shop.localhost:8080/",
            ]
        );
        let public = ("0.0.0.0:80".parse().ok(), "0.0.0.0:443".parse().ok());
        assert_eq!(
            urls("shop", &spec, &[3000], public.0, public.1)[1..],
            [
                "http://app.shop.localhost/",
                "http://shop.example/api/",
                "http://web.shop.localhost/",
                "https://web.shop.localhost/",
            ]
        );
        assert_eq!(
            urls("shop", &spec, &[3000], None, None),
            ["http://127.0.0.1:3000/"]
        );
    }
}
