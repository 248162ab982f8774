//! The proxy's route table as the agent builds it from the store, and the
//! rules that keep one deploy from breaking it.
//!
//! The proxy takes a table whole or refuses it whole (a host and path routed
//! twice, say), so a bad route in one project would leave every project's
//! routes as they were while their instances change. A deploy is therefore
//! admitted only when the table it would lead to passes the proxy's own
//! check ([`RouteTable::validate`]), before anything of it starts.
//!
//! Between projects on one agent, a host belongs to one project: names under
//! `<project>.localhost` with a label before it are that project's (its
//! automatic names live there), and any other host belongs to the first
//! project that routes it, until it no longer does. Within a project, a
//! route moving between services mid-deploy goes to the service on the
//! newer release.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use gantry_core::Code;
use gantry_core::agent_api::InstanceState;
use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::v1::Route as Declared;
use gantry_proxy::{Route, RouteTable, StaticSite, TableError, Tls};

use crate::store::{Store, StoreError};

/// One service with instances to route to.
struct Serving {
    project: String,
    /// Its release's number: the higher one wins a route within a project.
    number: u64,
    environment: String,
    spec: ServiceSpec,
    upstreams: Vec<SocketAddr>,
    /// A static service's directory, served by the proxy instead of upstreams.
    site: Option<StaticSite>,
}

/// Why a deploy's routes cannot be admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("route `{host}` of `{service}` belongs to project `{owner}` on this host")]
    Taken {
        service: String,
        host: String,
        owner: String,
    },
    #[error("the proxy would refuse the host's route table: {0}")]
    Table(#[from] TableError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Refusal {
    /// The code the API answers with: a store that failed is `agent.store`,
    /// as every store failure is.
    pub fn code(&self) -> Code {
        match self {
            Refusal::Taken { .. } => Code::RoutesTaken,
            Refusal::Table(_) => Code::RoutesRefused,
            Refusal::Store(_) => Code::AgentStore,
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            Refusal::Taken { .. } => {
                "give the route another host, or stop that project's service first (a host is its first project's until that one no longer routes it)"
            }
            Refusal::Table(_) => {
                "route each host and path to one service, and none to a `<service>.<project>.localhost` name; `gantry validate` finds these"
            }
            Refusal::Store(_) => "see the agent's log",
        }
    }
}

pub fn upstream(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The whole route table: per service with live instances on a port,
/// `<service>.<project>.localhost` and each route it declares.
///
/// TLS: the `.localhost` names get leaves from the proxy's local CA and stay
/// reachable over plain HTTP too. A declared route outside the local
/// environment asks for an ACME certificate and redirects plain HTTP to
/// HTTPS (the proxy redirects only once it holds a certificate for the host).
///
/// A static service's routes name its current release's directory under
/// `releases` (the agent's `releases/`), served by the proxy itself.
pub fn table(store: &mut Store, releases: &Path) -> Result<RouteTable, StoreError> {
    Ok(build(serving(store, releases)?))
}

/// Checks the routes of a deploy of `services` against every other
/// project's on this host, and the table the deploy would lead to against the proxy's rules.
pub fn admit(
    store: &mut Store,
    project: &str,
    environment: &str,
    services: &[ServiceSpec],
) -> Result<(), Refusal> {
    // Only hosts and paths are checked: where static files are does not matter.
    let others: Vec<Serving> = serving(store, Path::new("/"))?
        .into_iter()
        .filter(|s| s.project != project)
        .collect();
    let mut owners: BTreeMap<String, &str> = BTreeMap::new();
    for other in &others {
        for route in routes_of(other) {
            for host in route.hosts {
                owners
                    .entry(host.to_ascii_lowercase())
                    .or_insert(&other.project);
            }
        }
    }
    for service in services.iter().filter(|s| is_routed(s)) {
        for route in &service.routes {
            let host = route.host.to_ascii_lowercase();
            let owner = Declared::reserved_to(&host)
                .filter(|p| *p != project)
                .or_else(|| {
                    owners
                        .iter()
                        .find(|(taken, _)| covers(taken, &host) || covers(&host, taken))
                        .map(|(_, owner)| *owner)
                });
            if let Some(owner) = owner {
                return Err(Refusal::Taken {
                    service: service.name.clone(),
                    host: route.host.clone(),
                    owner: owner.to_owned(),
                });
            }
        }
    }
    // Placeholder upstreams: the proxy's check is about hosts and paths.
    let planned = others
        .into_iter()
        .chain(services.iter().map(|spec| Serving {
            project: project.to_owned(),
            number: u64::MAX,
            environment: environment.to_owned(),
            spec: spec.clone(),
            upstreams: if crate::site::is_static(spec) {
                Vec::new()
            } else {
                vec![upstream(1)]
            },
            site: crate::site::is_static(spec).then(|| StaticSite::new("/")),
        }))
        .filter(|s| is_routed(&s.spec))
        .collect();
    build(planned).validate()?;
    Ok(())
}

/// Whether the proxy routes to the service: it listens on a port, or the
/// proxy serves its files.
fn is_routed(service: &ServiceSpec) -> bool {
    service.port.is_some() || crate::site::is_static(service)
}

/// Whether the host pattern `pattern` matches `host` (`*.example.com`
/// matches `a.example.com`; a name matches itself).
fn covers(pattern: &str, host: &str) -> bool {
    pattern == host
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| suffix.starts_with('.') && host.ends_with(suffix))
}

fn build(mut serving: Vec<Serving>) -> RouteTable {
    serving.sort_by(|a, b| {
        (a.project.as_str(), std::cmp::Reverse(a.number))
            .cmp(&(b.project.as_str(), std::cmp::Reverse(b.number)))
    });
    // (project, host, prefix) → the release number that routes it.
    let mut routed: HashMap<(String, String, String), u64> = HashMap::new();
    let mut routes = Vec::new();
    for one in &serving {
        for route in routes_of(one) {
            let keys: Vec<_> = route
                .hosts
                .iter()
                .map(|h| {
                    let prefix = route.path_prefix.trim_end_matches('/');
                    (
                        one.project.clone(),
                        h.to_ascii_lowercase(),
                        prefix.to_owned(),
                    )
                })
                .collect();
            // A newer release of the project routes it already. Routes of
            // one release are all kept: the proxy refuses a clash among them.
            if keys
                .iter()
                .any(|k| routed.get(k).is_some_and(|n| *n > one.number))
            {
                continue;
            }
            for key in keys {
                routed.entry(key).or_insert(one.number);
            }
            routes.push(route);
        }
    }
    RouteTable { routes }
}

fn routes_of(one: &Serving) -> Vec<Route> {
    let name = &one.spec.name;
    let target = || match &one.site {
        Some(site) => Route::site(name, site.clone()),
        None => Route::new(name, one.upstreams.clone()),
    };
    let mut routes = vec![
        target()
            .hosts([Declared::automatic_host(name, &one.project)])
            .tls(Tls::Local),
    ];
    for route in &one.spec.routes {
        let (tls, redirect) = match &one.spec.tls {
            // The user's own certificate, on every declared route of the service.
            Some(files) => (
                Tls::Files(gantry_proxy::CertFiles {
                    cert: files.cert.clone().into(),
                    key: files.key.clone().into(),
                }),
                one.environment != "local",
            ),
            None => declared_route_tls(&one.environment, &route.host),
        };
        // A site under a path prefix has its root there (`/docs/a.html` is
        // `a.html`); a process sees the whole path.
        routes.push(
            target()
                .hosts([route.host.clone()])
                .path_prefix(route.path.clone(), one.site.is_some())
                .tls(tls)
                .redirect_https(redirect),
        );
    }
    routes
}

/// Every service of every project with running (or restarting) instances
/// on a port, and every static service with a current release.
fn serving(store: &mut Store, releases_dir: &Path) -> Result<Vec<Serving>, StoreError> {
    let mut projects: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (project, service, release) in store.current_everywhere()? {
        projects
            .entry(project)
            .or_default()
            .push((service, release));
    }
    let mut serving = Vec::new();
    for (project, services) in projects {
        let instances = store.instances(&project)?;
        let releases = store.releases(&project)?;
        for (service, release) in services {
            let Some((number, environment, spec, digest)) =
                releases.iter().find(|r| r.id == release).and_then(|r| {
                    let spec = r.services.iter().find(|s| s.name == service)?;
                    Some((
                        r.number,
                        r.environment.clone(),
                        spec.clone(),
                        r.artifact_digest.clone(),
                    ))
                })
            else {
                continue;
            };
            let files = releases_dir.join(&project).join(&digest);
            if let Some(root) = crate::site::root(&files, &spec) {
                let site = StaticSite::new(root).spa(crate::site::spa(&spec));
                serving.push(Serving {
                    project: project.clone(),
                    number,
                    environment,
                    spec,
                    upstreams: Vec::new(),
                    site: Some(site),
                });
                continue;
            }
            let candidates: Vec<_> = instances
                .iter()
                .filter(|i| {
                    i.service == service
                        && i.release == release
                        && i.is_active()
                        && i.state != InstanceState::Draining
                        && i.port.is_some()
                })
                .collect();
            // The live, healthy instances; when none is, every one that may
            // come back (restarting, failing its checks) rather than no route.
            let healthy: Vec<_> = candidates
                .iter()
                .filter(|i| i.state == InstanceState::Live && i.healthy)
                .collect();
            let chosen = if healthy.is_empty() {
                candidates.iter().collect()
            } else {
                healthy
            };
            let upstreams: Vec<SocketAddr> = chosen
                .into_iter()
                .filter_map(|i| i.port)
                .map(upstream)
                .collect();
            if upstreams.is_empty() {
                continue;
            }
            serving.push(Serving {
                project: project.clone(),
                number,
                environment,
                spec,
                upstreams,
                site: None,
            });
        }
    }
    Ok(serving)
}

/// A declared route's TLS: local-CA leaves for `.localhost` names; on the
/// local environment nothing else (no ACME for a laptop); elsewhere ACME and
/// a redirect from plain HTTP. Hosts ACME cannot serve (wildcards, IP
/// addresses) stay plain.
fn declared_route_tls(environment: &str, host: &str) -> (Tls, bool) {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if gantry_proxy::is_local_name(name) {
        return (Tls::Local, false);
    }
    let acme_can_serve = !host.starts_with("*.")
        && !host.starts_with('[')
        && host.parse::<std::net::IpAddr>().is_err();
    if environment == "local" || !acme_can_serve {
        (Tls::Off, false)
    } else {
        (Tls::Acme, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_routes_get_acme_and_a_redirect_only_off_the_local_environment() {
        assert_eq!(
            declared_route_tls("prod", "shop.example.com"),
            (Tls::Acme, true)
        );
        assert_eq!(
            declared_route_tls("local", "shop.example.com"),
            (Tls::Off, false)
        );
        assert_eq!(
            declared_route_tls("prod", "admin.shop.localhost"),
            (Tls::Local, false)
        );
        assert_eq!(
            declared_route_tls("prod", "*.example.com"),
            (Tls::Off, false)
        );
        assert_eq!(declared_route_tls("prod", "203.0.113.7"), (Tls::Off, false));
    }

    fn serving(project: &str, number: u64, service: &str, route: &str) -> Serving {
        let mut spec = crate::store::test_service(service);
        spec.routes = vec![Declared::parse(route)];
        Serving {
            project: project.to_owned(),
            number,
            environment: "local".to_owned(),
            spec,
            upstreams: vec![upstream(20_000 + u16::try_from(number).unwrap_or(0))],
            site: None,
        }
    }

    #[test]
    fn a_route_moving_between_services_goes_to_the_newer_release_and_a_clash_in_one_is_refused() {
        let table = build(vec![
            serving("shop", 1, "web", "moving.example.com"),
            serving("shop", 2, "www", "moving.example.com/"),
        ]);
        let owners: Vec<&str> = table
            .routes
            .iter()
            .filter(|r| r.hosts == ["moving.example.com"])
            .map(|r| r.service.as_str())
            .collect();
        assert_eq!(owners, ["www"]);
        assert!(table.validate().is_ok());

        let clash = build(vec![
            serving("shop", 2, "web", "same.example.com"),
            serving("shop", 2, "www", "same.example.com"),
        ]);
        assert!(matches!(
            clash.validate(),
            Err(TableError::Duplicate { .. })
        ));
    }

    #[test]
    fn a_wildcard_covers_names_under_it_only() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("shop.example.com", "shop.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.example.org"));
        assert!(!covers("a.example.com", "*.example.com"));
    }
}
