//! An environment as it will run: the environment's overrides merged over
//! `[services]`, defaults filled in, hosts looked up. Everything downstream
//! (show, render, plan, deploy) reads this, never the raw file.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{self, File, Port, Provider, Restart};
use crate::units::{Duration, Size};

/// The name of the implicit environment and host: this machine.
pub const LOCAL: &str = "local";

/// The defaults, in one place, so `show` and the docs agree with the runtime.
pub mod defaults {
    use super::{Duration, Restart};
    pub const REPLICAS: u32 = 1;
    pub const STOP_TIMEOUT: Duration = Duration::from_millis(10_000);
    /// How long a new release is watched after its cutover.
    pub const VERIFY: Duration = Duration::from_millis(5_000);
    /// The longest verify window validate accepts.
    pub const VERIFY_MAX: Duration = Duration::from_millis(600_000);
    pub const RESTART: Restart = Restart::Always;
    pub const HEALTH_INTERVAL: Duration = Duration::from_millis(1_000);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(2_000);
    pub const HEALTH_RETRIES: u32 = 3;
    pub const HEALTH_START_PERIOD: Duration = Duration::from_millis(0);
    pub const BACKUP_KEEP: u32 = 7;
}

/// The services of one environment, with its overrides applied, still as written.
pub(crate) fn merged_services(file: &File, environment: &str) -> BTreeMap<String, model::Service> {
    let overlay = file.environments.get(environment);
    file.services
        .iter()
        .map(|(name, base)| {
            let merged = match overlay.and_then(|e| e.services.get(name)) {
                Some(over) => overlay_service(base, over),
                None => base.clone(),
            };
            (name.clone(), merged)
        })
        .collect()
}

/// As [`merged_services`], borrowing the services an environment leaves alone.
pub(crate) fn merged_services_cow<'f>(
    file: &'f File,
    environment: &str,
) -> BTreeMap<&'f str, std::borrow::Cow<'f, model::Service>> {
    let overlay = file.environments.get(environment);
    file.services
        .iter()
        .map(|(name, base)| {
            let merged = match overlay.and_then(|e| e.services.get(name)) {
                Some(over) => std::borrow::Cow::Owned(overlay_service(base, over)),
                None => std::borrow::Cow::Borrowed(base),
            };
            (name.as_str(), merged)
        })
        .collect()
}

/// Merges `over` onto `base`: tables merge key by key, anything else is replaced.
pub(crate) fn overlay_service(base: &model::Service, over: &model::Service) -> model::Service {
    let (Ok(mut merged), Ok(over)) = (serde_json::to_value(base), serde_json::to_value(over))
    else {
        return base.clone();
    };
    deep_merge(&mut merged, over);
    serde_json::from_value(merged).unwrap_or_else(|_| base.clone())
}

fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// One environment, ready to plan and deploy.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Environment {
    pub project: String,
    pub name: String,
    pub hosts: Vec<Host>,
    /// How many hosts a deploy updates at once.
    pub max_parallel: u32,
    /// How long a host's new release is watched after cutover (0: not at all).
    pub verify: Duration,
    /// The first host goes first, alone, and the rest after its verify window.
    pub canary: bool,
    pub services: BTreeMap<String, Service>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Host {
    pub name: String,
    #[serde(flatten)]
    pub reach: Reach,
}

/// How a host is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum Reach {
    /// This machine, directly.
    Local,
    /// Over SSH, with the user's own OpenSSH client and config.
    Ssh { target: String },
    /// A machine a cloud provider creates; reached over SSH once it exists.
    Provider { provider: Provider },
}

/// How a service runs: which driver takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "driver", rename_all = "snake_case")]
pub enum Workload {
    /// A supervised process.
    Process { run: String },
    /// A container run with Docker Compose.
    Compose { image: String },
    /// A directory of the release served by the proxy: `dir` relative to
    /// the artifact; `spa` sends extension-less unknown paths to `index.html`.
    Static {
        dir: String,
        #[serde(default)]
        spa: bool,
    },
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Service {
    pub name: String,
    #[serde(flatten)]
    pub workload: Workload,
    pub build: Option<Build>,
    pub artifact: Option<String>,
    pub port: Option<Port>,
    pub health: Option<Health>,
    pub routes: Vec<Route>,
    /// The user's own certificate for the routes (else ACME off `local`).
    #[serde(default)]
    pub tls: Option<model::TlsFiles>,
    pub replicas: u32,
    pub env: BTreeMap<String, String>,
    /// Names only: values are looked up at deploy time and never stored here.
    pub secrets: Vec<String>,
    pub resources: Resources,
    pub depends_on: Vec<String>,
    /// The hosts that run it; empty: every host of the environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub migrate: Option<model::Migrate>,
    pub volumes: Vec<String>,
    pub backup: Option<Backup>,
    pub stop_timeout: Duration,
    pub restart: Restart,
    /// Whether the service keeps the agent's root (else it runs as its project's user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_root: bool,
    /// As written; [`Service::strategy`] fills in the default.
    #[serde(default)]
    pub deploy_strategy: Option<model::DeployStrategy>,
}

/// What runs before a deploy takes the artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Build {
    /// A command run with `sh -c` in the project directory.
    Command(String),
    /// `docker build`, tagging the service's image.
    Image(ImageBuild),
}

/// An image build with its defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageBuild {
    /// The context directory, relative to the project.
    pub context: String,
    /// The Dockerfile, relative to the context.
    pub dockerfile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

impl ImageBuild {
    pub const DEFAULT_CONTEXT: &str = ".";
    pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

    /// The Dockerfile's path relative to the project.
    pub fn dockerfile_path(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.context).join(&self.dockerfile)
    }
}

impl Build {
    /// The build as one line for people and records: the command, or the
    /// `docker build` it stands for.
    pub fn describe(&self) -> String {
        match self {
            Build::Command(command) => command.clone(),
            Build::Image(image) => {
                let mut line = format!(
                    "docker build -f {} {}",
                    image.dockerfile_path().display(),
                    image.context
                );
                if let Some(target) = &image.target {
                    line.push_str(&format!(" --target {target}"));
                }
                for name in image.args.keys() {
                    line.push_str(&format!(" --build-arg {name}=…"));
                }
                line
            }
        }
    }

    fn resolve(build: &model::Build) -> Build {
        match build {
            model::Build::Command(command) => Build::Command(command.clone()),
            model::Build::Image(image) => Build::Image(ImageBuild {
                context: image
                    .context
                    .clone()
                    .unwrap_or_else(|| ImageBuild::DEFAULT_CONTEXT.to_owned()),
                dockerfile: image
                    .dockerfile
                    .clone()
                    .unwrap_or_else(|| ImageBuild::DEFAULT_DOCKERFILE.to_owned()),
                target: image.target.clone(),
                args: image.args.clone().unwrap_or_default(),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    Http { path: String },
    Tcp,
    Command { command: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    #[serde(flatten)]
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct Route {
    /// Lowercase host name; may start with `*.`.
    pub host: String,
    /// Path prefix starting with `/`; `/` when the route has none.
    pub path: String,
}

impl Route {
    pub fn parse(text: &str) -> Route {
        let text = text.trim();
        let (host, path) = match text.find('/') {
            Some(i) => (&text[..i], &text[i..]),
            None => (text, "/"),
        };
        let path = match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        Route {
            host: host.to_ascii_lowercase(),
            path: path.to_owned(),
        }
    }

    /// The name the host's proxy gives every service with a port.
    pub fn automatic_host(service: &str, project: &str) -> String {
        format!("{service}.{project}.localhost")
    }

    /// The project whose automatic names cover `host`, if any: every name
    /// under `<project>.localhost` with a label before it (`web.shop.localhost`,
    /// `*.shop.localhost`) is reserved to project `shop`, so no other project
    /// can take one of its services' names. `host` is lowercase.
    pub fn reserved_to(host: &str) -> Option<&str> {
        let (_, project) = host.strip_suffix(".localhost")?.rsplit_once('.')?;
        Some(project)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path.as_str() {
            "/" => f.write_str(&self.host),
            path => write!(f, "{}{path}", self.host),
        }
    }
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    pub memory: Option<Size>,
    pub cpu: Option<f64>,
    pub pids: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Backup {
    pub schedule: String,
    pub keep: u32,
    /// As given, else what the image implies ([`model::BackupKind::of_image`]).
    pub kind: model::BackupKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The backup kind a service's image implies, if any.
pub fn backup_kind_of(s: &model::Service) -> Option<model::BackupKind> {
    let image = s.image.as_deref()?;
    model::BackupKind::of_image(image, s.volumes.as_ref().is_some_and(|v| !v.is_empty()))
}

impl Service {
    /// Applies defaults to a service that passed validation.
    pub(crate) fn resolve(name: &str, s: &model::Service) -> Service {
        let workload = match (&s.run, &s.image, &s.static_dir) {
            (Some(run), _, _) => Workload::Process { run: run.clone() },
            (None, Some(image), _) => Workload::Compose {
                image: image.clone(),
            },
            (None, None, dir) => Workload::Static {
                dir: dir.clone().unwrap_or_default(),
                spa: s.spa.unwrap_or(false),
            },
        };
        let health = s.health.as_ref().map(|h| Health {
            check: match (&h.path, h.tcp, &h.command) {
                (Some(path), _, _) => Check::Http { path: path.clone() },
                (None, Some(true), _) => Check::Tcp,
                (None, _, command) => Check::Command {
                    command: command.clone().unwrap_or_default(),
                },
            },
            interval: h.interval.unwrap_or(defaults::HEALTH_INTERVAL),
            timeout: h.timeout.unwrap_or(defaults::HEALTH_TIMEOUT),
            retries: h.retries.map_or(defaults::HEALTH_RETRIES, |r| r.get()),
            start_period: h.start_period.unwrap_or(defaults::HEALTH_START_PERIOD),
        });
        let resources = s.resources.clone().unwrap_or_default();
        Service {
            name: name.to_owned(),
            workload,
            build: s.build.as_ref().map(Build::resolve),
            artifact: s.artifact.clone(),
            port: s.port.clone(),
            health,
            tls: s.tls.clone(),
            routes: s
                .routes
                .iter()
                .flatten()
                .map(|r| Route::parse(&r.0))
                .collect(),
            replicas: s.replicas.map_or(defaults::REPLICAS, |r| r.get()),
            env: s.env.clone().unwrap_or_default(),
            secrets: s.secrets.iter().flatten().map(|n| n.0.clone()).collect(),
            resources: Resources {
                memory: resources.memory,
                cpu: resources.cpu,
                pids: resources.pids.map(|p| p.get()),
            },
            depends_on: s.depends_on.clone().unwrap_or_default(),
            hosts: s.hosts.clone().unwrap_or_default(),
            migrate: s.migrate.clone(),
            volumes: s.volumes.iter().flatten().map(|v| v.0.clone()).collect(),
            backup: s.backup.as_ref().map(|b| Backup {
                schedule: b.schedule.clone(),
                keep: b.keep.map_or(defaults::BACKUP_KEEP, |k| k.get()),
                kind: b
                    .kind
                    .or_else(|| backup_kind_of(s))
                    .unwrap_or(model::BackupKind::Volumes),
                path: b.path.clone(),
            }),
            stop_timeout: s.stop_timeout.unwrap_or(defaults::STOP_TIMEOUT),
            restart: s.restart.unwrap_or(defaults::RESTART),
            run_as_root: s.run_as_root.unwrap_or(false),
            deploy_strategy: s.deploy_strategy,
        }
    }

    /// Whether the service runs on host `host`: its `hosts` name it, or name
    /// none (every host of the environment).
    pub fn runs_on(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }

    /// How a deploy replaces its instances: as written, else the default.
    pub fn strategy(&self) -> model::DeployStrategy {
        self.deploy_strategy.unwrap_or_else(|| {
            model::DeployStrategy::default_for(
                matches!(self.workload, Workload::Compose { .. }),
                !self.volumes.is_empty(),
            )
        })
    }
}

/// Those of `services` that run on host `host`, in their order.
pub fn services_on(services: &[Service], host: &str) -> Vec<Service> {
    (services.iter())
        .filter(|s| s.runs_on(host))
        .cloned()
        .collect()
}

impl Environment {
    /// Services in an order where each comes after everything it depends on;
    /// ties are broken by name so the order is stable.
    pub fn deploy_order(&self) -> Vec<&Service> {
        let mut placed: Vec<&Service> = Vec::with_capacity(self.services.len());
        let mut done = std::collections::BTreeSet::new();
        while placed.len() < self.services.len() {
            let before = placed.len();
            for service in self.services.values() {
                if !done.contains(service.name.as_str())
                    && service
                        .depends_on
                        .iter()
                        .all(|d| done.contains(d.as_str()) || !self.services.contains_key(d))
                {
                    done.insert(service.name.as_str());
                    placed.push(service);
                }
            }
            if placed.len() == before {
                // A cycle: validation rejects these, so this only guards against looping.
                break;
            }
        }
        placed
    }
}

pub(crate) fn resolve_host(file: &File, name: &str) -> Host {
    let reach = match file.hosts.get(name) {
        Some(model::Host {
            ssh: Some(target), ..
        }) => Reach::Ssh {
            target: target.clone(),
        },
        Some(model::Host {
            provider: Some(provider),
            ..
        }) if *provider != Provider::Local => Reach::Provider {
            provider: *provider,
        },
        _ => Reach::Local,
    };
    Host {
        name: name.to_owned(),
        reach,
    }
}

/// The names of every environment: the declared ones, plus `local`.
pub(crate) fn environment_names(file: &File) -> Vec<&str> {
    let mut names: Vec<&str> = file.environments.keys().map(String::as_str).collect();
    if !file.environments.contains_key(LOCAL) {
        names.push(LOCAL);
    }
    names.sort_unstable();
    names
}

pub(crate) fn resolve(file: &File, environment: &str) -> Environment {
    let hosts = match file.environments.get(environment) {
        Some(env) => env.hosts.iter().map(|h| resolve_host(file, h)).collect(),
        None => vec![resolve_host(file, LOCAL)],
    };
    Environment {
        project: file.project.name.clone(),
        name: environment.to_owned(),
        hosts,
        max_parallel: file
            .environments
            .get(environment)
            .and_then(|e| e.max_parallel)
            .map_or(1, NonZeroU32::get),
        verify: rollout(file, environment, |r| r.verify).unwrap_or(defaults::VERIFY),
        canary: rollout(file, environment, |r| r.canary).unwrap_or(false),
        services: merged_services(file, environment)
            .iter()
            .map(|(name, s)| {
                let mut service = Service::resolve(name, s);
                // The implicit `local` environment runs everything on this machine.
                if !file.environments.contains_key(environment) {
                    service.hosts.clear();
                }
                (name.clone(), service)
            })
            .collect(),
    }
}

/// A `deploy` key of `environment`: its own table's, else the top-level one's.
fn rollout<T>(
    file: &File,
    environment: &str,
    key: impl Fn(&model::Rollout) -> Option<T>,
) -> Option<T> {
    let own = file
        .environments
        .get(environment)
        .and_then(|e| e.deploy.as_ref())
        .and_then(&key);
    own.or_else(|| file.deploy.as_ref().and_then(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_normalize() {
        assert_eq!(
            Route::parse("Shop.Example.com").to_string(),
            "shop.example.com"
        );
        let api = Route::parse("example.com/api/");
        assert_eq!(
            (api.host.as_str(), api.path.as_str()),
            ("example.com", "/api")
        );
        assert_eq!(Route::parse("example.com/").path, "/");
    }
}
