//! The plan's differences, as plain functions over what the CLI would send
//! and what a host says it runs: which files, which config keys (dotted:
//! `env.FOO`, `resources.memory`), which image, routes and secret names.
//! No I/O here.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::agent_api::v1::{DeployStrategy, Port, Workload};
use crate::agent_api::{ArtifactFile, Comparison, ServiceSpec};

/// The most paths a [`PathList`] names; its `count` says how many there are.
pub const MAX_PATHS: usize = 20;

/// The artifact's files that differ from those of the release a host runs.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileChanges {
    pub added: PathList,
    pub changed: PathList,
    pub removed: PathList,
}

/// Paths, sorted, the first [`MAX_PATHS`] of `count`.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct PathList {
    pub count: usize,
    pub paths: Vec<String>,
}

impl PathList {
    fn push(&mut self, path: &str) {
        self.count += 1;
        if self.paths.len() < MAX_PATHS {
            self.paths.push(path.to_owned());
        }
    }
}

impl FileChanges {
    pub fn is_empty(&self) -> bool {
        self.added.count + self.changed.count + self.removed.count == 0
    }
}

/// The files of `here` (what a deploy sends) against `there` (what the
/// host runs): a file whose digest or mode differs is changed.
pub fn files(here: &[ArtifactFile], there: &[ArtifactFile]) -> FileChanges {
    let mut here: Vec<&ArtifactFile> = here.iter().collect();
    let mut there: Vec<&ArtifactFile> = there.iter().collect();
    here.sort_by(|a, b| a.path.cmp(&b.path));
    there.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = FileChanges::default();
    let (mut h, mut t) = (here.into_iter().peekable(), there.into_iter().peekable());
    loop {
        match (h.peek(), t.peek()) {
            (None, None) => break,
            (Some(a), None) => {
                out.added.push(&a.path);
                h.next();
            }
            (None, Some(b)) => {
                out.removed.push(&b.path);
                t.next();
            }
            (Some(a), Some(b)) => match a.path.cmp(&b.path) {
                std::cmp::Ordering::Less => {
                    out.added.push(&a.path);
                    h.next();
                }
                std::cmp::Ordering::Greater => {
                    out.removed.push(&b.path);
                    t.next();
                }
                std::cmp::Ordering::Equal => {
                    if a.digest != b.digest || a.mode != b.mode {
                        out.changed.push(&a.path);
                    }
                    h.next();
                    t.next();
                }
            },
        }
    }
    out
}

/// What a deploy would do with one service of a host.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct ServicePlan {
    pub service: String,
    /// `added`, `removed`, `changed` (its config, image, routes or secrets
    /// differ from what runs) or `unchanged`.
    pub change: &'static str,
    /// Whether a deploy would start new instances of it (an added service's
    /// first): its config, image, routes or secrets differ, or it runs from
    /// the release's files and they differ. False: left running.
    pub replaced: bool,
    /// How its instances would be replaced: `stop-first` or `start-first`
    /// (absent for a removed service).
    pub strategy: Option<DeployStrategy>,
    /// The config keys whose values differ, dotted (`env.FOO`,
    /// `resources.memory`, `health.path`); the image, routes and secrets
    /// have their own fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    pub image: Option<ImageChange>,
    pub routes: Option<RouteChanges>,
    pub secrets: Option<SecretChanges>,
    /// It runs from the release's files (a process or static service) and they differ.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub files: bool,
    /// A service it depends on whose new instances listen on another port:
    /// its `GANTRY_<NAME>_PORT` changes, so it is replaced too.
    pub follows: Option<String>,
}

/// The image a service runs now and the one it would run (a shipped
/// image's tag names its id: `web:gantry-3f2a9c1e0b7d`).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ImageChange {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Secret names, never values: those a service would newly use, no longer
/// use, and those it keeps using whose value the host holds differently.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct SecretChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl ServicePlan {
    pub fn added(wanted: &ServiceSpec) -> ServicePlan {
        ServicePlan {
            change: "added",
            replaced: true,
            ..ServicePlan::unchanged(wanted)
        }
    }

    pub fn removed(running: &ServiceSpec) -> ServicePlan {
        ServicePlan {
            change: "removed",
            strategy: None,
            ..ServicePlan::unchanged(running)
        }
    }

    fn unchanged(spec: &ServiceSpec) -> ServicePlan {
        ServicePlan {
            service: spec.name.clone(),
            change: "unchanged",
            replaced: false,
            strategy: Some(spec.strategy()),
            keys: Vec::new(),
            image: None,
            routes: None,
            secrets: None,
            files: false,
            follows: None,
        }
    }

    /// What differs, as the parts of gantry.toml it names: the keys' first
    /// parts, then `image`, `routes`, `secrets`.
    pub fn what_differs(&self) -> Vec<String> {
        let mut parts: Vec<String> = Vec::new();
        for key in &self.keys {
            let top = key.split('.').next().unwrap_or(key).to_owned();
            if !parts.contains(&top) {
                parts.push(top);
            }
        }
        for (name, differs) in [
            ("image", self.image.is_some()),
            ("routes", self.routes.is_some()),
            ("secrets", self.secrets.is_some()),
        ] {
            if differs {
                parts.push(name.to_owned());
            }
        }
        parts
    }
}

/// Keys that are in the record but reach no instance: a change of them
/// alone makes a new release and leaves the service running.
const NOT_RUN: [&str; 3] = ["build", "hosts", "depends_on"];

/// One service that the host runs and a deploy would send again.
/// `files_differ`: the release's files are not the host's. `compared`: the
/// host's answer about secret values, when it gave one.
pub fn service(
    wanted: &ServiceSpec,
    running: &ServiceSpec,
    files_differ: bool,
    compared: Option<&Comparison>,
) -> ServicePlan {
    let (new, old) = (as_map(wanted), as_map(running));
    let mut keys = Vec::new();
    for key in new.keys().chain(old.keys()).collect::<BTreeSet<_>>() {
        if matches!(key.as_str(), "image" | "routes" | "secrets") {
            continue;
        }
        dotted(key, new.get(key), old.get(key), &mut keys);
    }
    let image = match (&wanted.workload, &running.workload) {
        (Workload::Compose { image: to }, Workload::Compose { image: from })
            if to != from && !unpinned_of(to, from) =>
        {
            Some(ImageChange {
                from: from.clone(),
                to: to.clone(),
            })
        }
        _ => None,
    };
    let routes = {
        let names = |s: &ServiceSpec| -> BTreeSet<String> {
            s.routes.iter().map(ToString::to_string).collect()
        };
        let (new, old) = (names(wanted), names(running));
        let changes = RouteChanges {
            added: new.difference(&old).cloned().collect(),
            removed: old.difference(&new).cloned().collect(),
        };
        (changes != RouteChanges::default()).then_some(changes)
    };
    let secrets = {
        let names = |s: &ServiceSpec| -> BTreeSet<String> { s.secrets.iter().cloned().collect() };
        let (new, old) = (names(wanted), names(running));
        let differs = |name: &String| {
            compared
                .is_some_and(|c| c.secrets_differ.contains(name) || c.secrets_absent.contains(name))
        };
        let changes = SecretChanges {
            added: new.difference(&old).cloned().collect(),
            removed: old.difference(&new).cloned().collect(),
            changed: new
                .intersection(&old)
                .filter(|n| differs(n))
                .cloned()
                .collect(),
        };
        (changes != SecretChanges::default()).then_some(changes)
    };
    let files = files_differ && !matches!(wanted.workload, Workload::Compose { .. });
    let config = !keys.is_empty() || image.is_some() || routes.is_some() || secrets.is_some();
    let runs_differently = keys
        .iter()
        .any(|k| !NOT_RUN.contains(&k.split('.').next().unwrap_or(k)))
        || image.is_some()
        || routes.is_some()
        || secrets.is_some();
    ServicePlan {
        change: if config { "changed" } else { "unchanged" },
        replaced: runs_differently || files,
        keys,
        image,
        routes,
        secrets,
        files,
        ..ServicePlan::unchanged(wanted)
    }
}

/// Marks replaced the services left running whose dependency is replaced
/// on a port that moves: what the agent's fingerprint of them (their
/// `GANTRY_<DEP>_PORT`) would make it do. Dependents of those follow in
/// turn.
pub fn follow_dependencies(services: &mut [ServicePlan], wanted: &[ServiceSpec]) {
    loop {
        let replaced: BTreeSet<String> = (services.iter())
            .filter(|s| s.replaced)
            .map(|s| s.service.clone())
            .collect();
        let spec = |name: &str| wanted.iter().find(|w| w.name == name);
        let mut more = false;
        for plan in services.iter_mut().filter(|s| !s.replaced) {
            let Some(service) = spec(&plan.service) else {
                continue;
            };
            let moved = service.depends_on.iter().find(|dep| {
                replaced.contains(*dep) && spec(dep).is_some_and(|d| address_moves(service, d))
            });
            if let Some(dep) = moved {
                plan.replaced = true;
                plan.follows = Some(dep.clone());
                more = true;
            }
        }
        if !more {
            return;
        }
    }
}

/// Whether `service`'s address of `dep` changes when `dep` gets new
/// instances (as the agent's `addresses` gives it): a stop-first
/// replacement starts again on the ports it had; otherwise a process
/// reaches any dependency with a port on its instance's loopback port,
/// which moves unless it is a process's fixed port, and a container reaches
/// a container by name, on a port that moves only when it is named.
fn address_moves(service: &ServiceSpec, dep: &ServiceSpec) -> bool {
    if dep.strategy() == DeployStrategy::StopFirst {
        return false;
    }
    let container = |s: &ServiceSpec| matches!(s.workload, Workload::Compose { .. });
    match (container(service), container(dep), &dep.port) {
        (_, _, None) | (true, false, _) => false,
        (true, true, Some(port)) => matches!(port, Port::Named(_)),
        (false, false, Some(Port::Fixed(_))) => false,
        (false, _, Some(_)) => true,
    }
}

fn as_map(spec: &ServiceSpec) -> serde_json::Map<String, Value> {
    match serde_json::to_value(spec) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// The dotted keys under `key` whose values differ. Objects are compared
/// key by key; anything else whole. A value the host's agent shows
/// redacted (it holds a secret's value) counts as equal: what it hides
/// cannot be compared here, and the secrets are compared by digest.
fn dotted(key: &str, new: Option<&Value>, old: Option<&Value>, out: &mut Vec<String>) {
    match (new, old) {
        (Some(Value::Object(n)), Some(Value::Object(o))) => {
            for k in n.keys().chain(o.keys()).collect::<BTreeSet<_>>() {
                dotted(&format!("{key}.{k}"), n.get(k), o.get(k), out);
            }
        }
        (Some(n), Some(Value::String(o)))
            if n.is_string() && o.contains(crate::redact::REDACTED) => {}
        (n, o) if n == o => {}
        _ => out.push(key.to_owned()),
    }
}

/// Whether `to` is the image `from` was pinned from (`web` → `web:gantry-…`):
/// this machine does not hold the image, so which id it names cannot be told.
fn unpinned_of(to: &str, from: &str) -> bool {
    !to.contains(":gantry-")
        && from.rsplit_once(":gantry-").is_some_and(|(repository, _)| {
            to == repository || to.rsplit_once(':').is_some_and(|(r, _)| r == repository)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_api::v1::Route;

    fn file(path: &str, digest: &str) -> ArtifactFile {
        ArtifactFile {
            path: path.to_owned(),
            digest: digest.to_owned(),
            size: 1,
            mode: 0o644,
        }
    }

    fn spec(json: serde_json::Value) -> ServiceSpec {
        let mut base = serde_json::json!({
            "name": "web", "driver": "process", "run": "bin/web", "replicas": 1,
            "stop_timeout": "10s", "restart": "always"
        });
        if let (Some(base), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).expect("a spec")
    }

    /// web (a process on a named port) gets new files; worker, a process
    /// that depends on it, would be restarted by the agent for its new
    /// GANTRY_WEB_PORT, and so, in turn, would cron for worker's. pinned
    /// depends on a process on a fixed port, and api on a stop-first db
    /// (started again on its ports): neither moves.
    #[test]
    fn a_dependent_of_a_service_that_moves_to_a_new_port_is_replaced_too() {
        let wanted = [
            spec(serde_json::json!({"name": "web", "port": "http"})),
            spec(serde_json::json!({"name": "worker", "depends_on": ["web"], "port": "jobs"})),
            spec(serde_json::json!({"name": "cron", "depends_on": ["worker"]})),
            spec(serde_json::json!({"name": "fixed", "port": 8000})),
            spec(serde_json::json!({"name": "pinned", "depends_on": ["fixed"]})),
            spec(serde_json::json!({"name": "db", "port": "pg", "deploy_strategy": "stop-first"})),
            spec(serde_json::json!({"name": "api", "depends_on": ["db"]})),
        ];
        let mut plans: Vec<ServicePlan> = (wanted.iter())
            .map(|w| {
                service(
                    w,
                    w,
                    matches!(w.name.as_str(), "web" | "fixed" | "db"),
                    None,
                )
            })
            .collect();
        follow_dependencies(&mut plans, &wanted);
        let seen: Vec<(&str, bool, Option<&str>)> = (plans.iter())
            .map(|p| (p.service.as_str(), p.replaced, p.follows.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("web", true, None),
                ("worker", true, Some("web")),
                ("cron", true, Some("worker")),
                ("fixed", true, None),
                ("pinned", false, None),
                ("db", true, None),
                ("api", false, None),
            ]
        );
    }

    #[test]
    fn files_are_added_changed_or_removed_and_the_list_is_capped() {
        let here = [file("a", "1"), file("b", "2"), file("d", "4")];
        let there = [file("b", "X"), file("c", "3"), file("d", "4")];
        let out = files(&here, &there);
        assert_eq!(out.added.paths, ["a"]);
        assert_eq!(out.changed.paths, ["b"]);
        assert_eq!(out.removed.paths, ["c"]);
        let many: Vec<ArtifactFile> = (0..25).map(|i| file(&format!("f{i:02}"), "x")).collect();
        let out = files(&many, &[]);
        assert_eq!(out.added.count, 25);
        assert_eq!(out.added.paths.len(), MAX_PATHS);
        assert!(files(&here, &here).is_empty());
    }

    #[test]
    fn keys_are_dotted_and_image_routes_and_secrets_are_apart() {
        let running = spec(serde_json::json!({
            "env": {"FOO": "1", "KEEP": "k"},
            "resources": {"memory": "256M"},
            "routes": [{"host": "a.example.com", "path": "/"}],
            "secrets": ["OLD", "SAME", "ROTATED"],
        }));
        let mut wanted = spec(serde_json::json!({
            "env": {"FOO": "2", "KEEP": "k", "NEW": "n"},
            "resources": {"memory": "512M"},
            "routes": [{"host": "b.example.com", "path": "/"}],
            "secrets": ["SAME", "ROTATED", "ADDED"],
        }));
        let compared = Comparison {
            secrets_differ: vec!["ROTATED".to_owned()],
            ..Comparison::default()
        };
        let plan = service(&wanted, &running, false, Some(&compared));
        assert_eq!(plan.change, "changed");
        assert!(plan.replaced);
        assert_eq!(plan.keys, ["env.FOO", "env.NEW", "resources.memory"]);
        assert_eq!(
            plan.routes,
            Some(RouteChanges {
                added: vec!["b.example.com".to_owned()],
                removed: vec!["a.example.com".to_owned()],
            })
        );
        assert_eq!(
            plan.secrets,
            Some(SecretChanges {
                added: vec!["ADDED".to_owned()],
                removed: vec!["OLD".to_owned()],
                changed: vec!["ROTATED".to_owned()],
            })
        );
        assert_eq!(
            plan.what_differs(),
            ["env", "resources", "routes", "secrets"]
        );
        assert!(!plan.files);

        // The same service, its files changed: unchanged itself, yet replaced.
        wanted = running.clone();
        wanted.routes = vec![Route::parse("a.example.com")];
        let plan = service(&wanted, &running, true, None);
        assert_eq!(
            (plan.change, plan.replaced, plan.files),
            ("unchanged", true, true)
        );
    }

    #[test]
    fn an_image_service_names_its_image_and_ignores_the_files() {
        let running = spec(serde_json::json!({
            "driver": "compose", "image": "web:gantry-aaaaaaaaaaaa", "volumes": ["data:/data"],
        }));
        let mut wanted = running.clone();
        let plan = service(&wanted, &running, true, None);
        assert_eq!((plan.change, plan.replaced), ("unchanged", false));
        assert_eq!(plan.strategy, Some(DeployStrategy::StopFirst));

        wanted.workload = Workload::Compose {
            image: "web:gantry-bbbbbbbbbbbb".to_owned(),
        };
        let plan = service(&wanted, &running, false, None);
        assert_eq!(
            plan.image,
            Some(ImageChange {
                from: "web:gantry-aaaaaaaaaaaa".to_owned(),
                to: "web:gantry-bbbbbbbbbbbb".to_owned(),
            })
        );
        assert!(plan.keys.is_empty() && plan.replaced);

        // Not on this machine: which id it would be cannot be told.
        wanted.workload = Workload::Compose {
            image: "web".to_owned(),
        };
        assert!(service(&wanted, &running, false, None).image.is_none());
    }

    #[test]
    fn a_change_of_build_or_hosts_alone_leaves_the_service_running() {
        let running = spec(serde_json::json!({"build": "make"}));
        let wanted = spec(serde_json::json!({"build": "make all"}));
        let plan = service(&wanted, &running, false, None);
        assert_eq!(plan.keys, ["build"]);
        assert_eq!((plan.change, plan.replaced), ("changed", false));
        assert_eq!(plan.strategy, Some(DeployStrategy::StartFirst));
    }

    #[test]
    fn a_value_the_host_shows_redacted_counts_as_equal() {
        let running = spec(serde_json::json!({"env": {"URL": "postgres://u:(redacted)@db/x"}}));
        let wanted = spec(serde_json::json!({"env": {"URL": "postgres://u:pw@db/x"}}));
        assert!(service(&wanted, &running, false, None).keys.is_empty());
    }
}
