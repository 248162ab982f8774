//! The service spec of the `/v1` agent API: what a deploy asks a host to
//! run, and what a release record says it ran. It is the wire's own type,
//! not gantry.toml's model: the CLI converts its resolved config into it
//! (`From<&resolve::Service>`, here), so the model can change without
//! breaking a running agent, and the agent never reads gantry.toml's types.
//!
//! Revision 1 is the shape the wire had before it had its own type (the
//! resolved service as it serialized), so agents and CLIs from before and
//! after understand each other. Whoever adds to it:
//! - an agent ignores fields it does not know: a field an older agent may
//!   safely ignore (an optional display value, say) is added with a default
//!   and needs no new revision;
//! - a field whose meaning an older agent must not miss (a new driver,
//!   volumes, a stop-first strategy, a static directory) raises
//!   [`SPEC_VERSION`]; the deploy request carries its revision, and an
//!   agent refuses a revision above its own with `agent.incompatible`
//!   ([`check_revision`]) instead of deploying half of what was asked.
//!   The CLI should send the lowest revision its services need, so a deploy
//!   that uses nothing new still reaches older agents; an agent's
//!   `AgentInfo::spec_version` says which it reads (1 when absent: agents
//!   from before revisions, which ignore unknown fields and check nothing).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::resolve;
use crate::config::units;

/// The newest revision of the service spec this gantry writes and reads.
/// Revision 2: `image` services run (the container driver) and mount their
/// `volumes`, and `static` services are served by the proxy; an agent of
/// revision 1 would refuse either only when it came to start it, halfway
/// through a deploy.
/// Revision 3: `deploy_strategy`; an agent of revision 2 would replace a
/// service start-first whatever it says.
/// Revision 4: `backup` (with `kind` and `path`), which an agent of
/// revision 3 would keep without ever taking one.
/// Revision 5: a request's `deployment` (the environment-wide deployment it
/// is part of); an agent of revision 4 would record a release no deployment
/// lists, and make one even where the host already runs what was asked.
/// Revision 6: a request's `tasks` (`migrate.pre`), which an agent of
/// revision 5 would ignore, starting the release without running them.
/// Revision 7: a request's `verify_ms` (the verify window, watched by the
/// agent), which an agent of revision 6 would ignore, leaving a release that
/// fails in it live once the CLI that would have watched it is gone.
pub const SPEC_VERSION: u32 = 7;

/// The revision a request that names a deployment needs.
pub const DEPLOYMENT_REVISION: u32 = 5;

/// The revision a request that carries tasks needs.
pub const TASK_REVISION: u32 = 6;

/// The revision a request that asks the agent to watch a verify window needs.
pub const VERIFY_REVISION: u32 = 7;

/// The lowest revision that says what `services` need: a deploy of
/// processes alone stays readable by agents of revision 1.
pub fn revision_needed(services: &[ServiceSpec]) -> u32 {
    if services.iter().any(|s| s.backup.is_some()) {
        4
    } else if services.iter().any(|s| s.deploy_strategy.is_some()) {
        3
    } else if services
        .iter()
        .any(|s| !matches!(s.workload, Workload::Process { .. }))
    {
        2
    } else {
        1
    }
}

/// The revision of a request that names none: CLIs from before revisions
/// existed wrote revision 1.
pub fn first_revision() -> u32 {
    1
}

/// Why a request's spec cannot be deployed by this agent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the deploy is written in service spec revision {sent}, and this agent (gantry {agent}) reads revisions up to {SPEC_VERSION}"
)]
pub struct TooNew {
    pub sent: u32,
    pub agent: &'static str,
}

impl TooNew {
    pub const HINT: &'static str = "upgrade gantry on the host (`gantry configure` installs the CLI's version), or deploy with the gantry version the host runs";
}

/// Accepts a request written in a revision this gantry reads.
pub fn check_revision(sent: u32) -> Result<(), TooNew> {
    if sent > SPEC_VERSION {
        return Err(TooNew {
            sent,
            agent: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(())
}

/// Whether `name` is a valid project or service name on the wire: the
/// config's naming rule, checked again by the agent on everything it receives.
pub fn check_name(name: &str) -> Result<(), String> {
    crate::config::check_name(name)
}

/// Whether `name` is a valid environment variable or secret name.
pub fn check_env_name(name: &str) -> Result<(), String> {
    crate::config::check_env_name(name)
}

/// One service as a host runs it: defaults applied, secret names only.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(flatten)]
    pub workload: Workload,
    /// Run by the CLI before the upload; kept for the record.
    #[serde(default)]
    pub build: Option<String>,
    /// The directory inside the artifact the service runs from.
    #[serde(default)]
    pub artifact: Option<String>,
    #[serde(default)]
    pub port: Option<Port>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The user's own certificate for the routes (else ACME off `local`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    pub replicas: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names only: values travel in the request's `secrets`.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The hosts that run it; empty: every host of the environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub migrate: Option<Migrate>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub backup: Option<Backup>,
    pub stop_timeout: Duration,
    pub restart: Restart,
    /// Whether the service keeps the agent's root (else it runs as its project's user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_root: bool,
    /// As gantry.toml says; absent: the default ([`ServiceSpec::strategy`]).
    #[serde(default)]
    pub deploy_strategy: Option<DeployStrategy>,
}

impl ServiceSpec {
    /// How a deploy replaces the service's instances: as the spec says,
    /// else gantry.toml's default (stop-first for an image with volumes).
    pub fn strategy(&self) -> DeployStrategy {
        self.deploy_strategy.unwrap_or_else(|| {
            match crate::config::model::DeployStrategy::default_for(
                matches!(self.workload, Workload::Compose { .. }),
                !self.volumes.is_empty(),
            ) {
                crate::config::model::DeployStrategy::StartFirst => DeployStrategy::StartFirst,
                crate::config::model::DeployStrategy::StopFirst => DeployStrategy::StopFirst,
            }
        })
    }
}

/// How a deploy replaces a service's running instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStrategy {
    /// The new instances start and pass their health check, then the old ones stop.
    StartFirst,
    /// The old instances stop, then the new ones start; if they fail, the
    /// old release is started again.
    StopFirst,
}

/// How a service runs: which driver takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "driver", rename_all = "snake_case")]
pub enum Workload {
    /// A supervised process.
    Process { run: String },
    /// A container.
    Compose { image: String },
    /// A directory of the release served by the proxy; `spa` gives unknown
    /// extension-less paths its `index.html`.
    Static {
        dir: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        spa: bool,
    },
}

/// A port name (the agent assigns a free port and sets `$PORT`) or a fixed number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Port {
    Fixed(u16),
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    Http { path: String },
    Tcp,
    Command { command: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    #[serde(flatten)]
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

/// A host (lowercase, may start with `*.`) and a path prefix (`/` for none).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct Route {
    pub host: String,
    pub path: String,
}

impl Route {
    /// `host` or `host/path/prefix`, as gantry.toml writes a route.
    pub fn parse(text: &str) -> Route {
        let route = resolve::Route::parse(text);
        Route {
            host: route.host,
            path: route.path,
        }
    }

    /// The name the host's proxy gives every service with a port.
    pub fn automatic_host(service: &str, project: &str) -> String {
        resolve::Route::automatic_host(service, project)
    }

    /// The project whose automatic names (`<service>.<project>.localhost`)
    /// cover `host`, if any: the config's rule.
    pub fn reserved_to(host: &str) -> Option<&str> {
        resolve::Route::reserved_to(host)
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Size>,
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default)]
    pub pids: Option<u32>,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Migrate {
    #[serde(default)]
    pub pre: Option<String>,
    #[serde(default)]
    pub post: Option<String>,
}

/// Scheduled backups the host's agent takes of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Backup {
    /// `every DURATION` or cron's five fields, in UTC (`config::schedule`).
    pub schedule: String,
    /// How many backups the host keeps.
    pub keep: u32,
    /// Absent from specs before revision 4, when a backup was of volumes.
    #[serde(default = "BackupKind::volumes")]
    pub kind: BackupKind,
    /// The host's file (`sqlite`) or directory (`files`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What a backup holds and how it is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// The container's named volumes, as tar + zstd.
    Volumes,
    /// A host directory, as tar + zstd.
    Files,
    /// A SQLite database copied by its online backup API, then zstd.
    Sqlite,
    /// `pg_dump --format=custom` inside the container.
    Postgres,
    /// `mariadb-dump`/`mysqldump --all-databases` inside the container, then zstd.
    Mysql,
}

impl BackupKind {
    fn volumes() -> BackupKind {
        BackupKind::Volumes
    }

    /// The kind gantry.toml names.
    pub fn from_config(kind: crate::config::model::BackupKind) -> BackupKind {
        use crate::config::model::BackupKind as Config;
        match kind {
            Config::Volumes => BackupKind::Volumes,
            Config::Files => BackupKind::Files,
            Config::Sqlite => BackupKind::Sqlite,
            Config::Postgres => BackupKind::Postgres,
            Config::Mysql => BackupKind::Mysql,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Start again whenever the instance exits.
    Always,
    /// Start again only when it exits with an error or a signal.
    OnFailure,
    /// Never start again.
    Never,
}

/// A length of time, spelled on the wire as gantry.toml spells it (`"500ms"`, `"10s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    fn unit(self) -> units::Duration {
        units::Duration::from_millis(self.as_millis())
    }
}

/// A number of bytes, spelled on the wire as gantry.toml spells it (`"256M"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

impl Size {
    pub const fn from_bytes(bytes: u64) -> Size {
        Size(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Serde and schema of the units, spelled as gantry.toml spells them: one
/// parser and printer ([`units`]), so the two never disagree.
macro_rules! wire_unit {
    ($ty:ident, $unit:ty, $to:expr, $from:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let to: fn(&$ty) -> $unit = $to;
                serializer.collect_str(&to(self))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let from: fn($unit) -> $ty = $from;
                <$unit>::deserialize(deserializer).map(from)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <$unit>::json_schema(generator)
            }
        }
    };
}

wire_unit!(Duration, units::Duration, |d| d.unit(), |u| {
    Duration::from_millis(u.as_millis())
});
wire_unit!(Size, units::Size, |s| units::Size::from_bytes(s.0), |u| {
    Size(u.bytes())
});

impl From<units::Duration> for Duration {
    fn from(d: units::Duration) -> Duration {
        Duration::from_millis(d.as_millis())
    }
}

/// The CLI's side of the wire: a resolved service of gantry.toml as the
/// agent is asked to run it.
impl From<&resolve::Service> for ServiceSpec {
    fn from(s: &resolve::Service) -> ServiceSpec {
        ServiceSpec {
            name: s.name.clone(),
            workload: match &s.workload {
                resolve::Workload::Process { run } => Workload::Process { run: run.clone() },
                resolve::Workload::Compose { image } => Workload::Compose {
                    image: image.clone(),
                },
                resolve::Workload::Static { dir, spa } => Workload::Static {
                    dir: dir.clone(),
                    spa: *spa,
                },
            },
            build: s.build.as_ref().map(resolve::Build::describe),
            artifact: s.artifact.clone(),
            port: s.port.as_ref().map(|p| match p {
                crate::config::model::Port::Fixed(n) => Port::Fixed(*n),
                crate::config::model::Port::Named(name) => Port::Named(name.clone()),
            }),
            health: s.health.as_ref().map(|h| Health {
                check: match &h.check {
                    resolve::Check::Http { path } => Check::Http { path: path.clone() },
                    resolve::Check::Tcp => Check::Tcp,
                    resolve::Check::Command { command } => Check::Command {
                        command: command.clone(),
                    },
                },
                interval: h.interval.into(),
                timeout: h.timeout.into(),
                retries: h.retries,
                start_period: h.start_period.into(),
            }),
            routes: s
                .routes
                .iter()
                .map(|r| Route {
                    host: r.host.clone(),
                    path: r.path.clone(),
                })
                .collect(),
            tls: s.tls.as_ref().map(|t| TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
            }),
            replicas: s.replicas,
            env: s.env.clone(),
            secrets: s.secrets.clone(),
            resources: Resources {
                memory: s.resources.memory.map(|m| Size(m.bytes())),
                cpu: s.resources.cpu,
                pids: s.resources.pids,
            },
            depends_on: s.depends_on.clone(),
            hosts: s.hosts.clone(),
            migrate: s.migrate.as_ref().map(|m| Migrate {
                pre: m.pre.clone(),
                post: m.post.clone(),
            }),
            volumes: s.volumes.clone(),
            backup: s.backup.as_ref().map(|b| Backup {
                schedule: b.schedule.clone(),
                keep: b.keep,
                kind: BackupKind::from_config(b.kind),
                path: b.path.clone(),
            }),
            stop_timeout: s.stop_timeout.into(),
            restart: match s.restart {
                crate::config::model::Restart::Always => Restart::Always,
                crate::config::model::Restart::OnFailure => Restart::OnFailure,
                crate::config::model::Restart::Never => Restart::Never,
            },
            run_as_root: s.run_as_root,
            deploy_strategy: s.deploy_strategy.map(|d| match d {
                crate::config::model::DeployStrategy::StartFirst => DeployStrategy::StartFirst,
                crate::config::model::DeployStrategy::StopFirst => DeployStrategy::StopFirst,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project with every key a resolved service can carry.
    const FULL: &str = r#"
[project]
name = "shop"

[services.web]
build = "cargo build --release"
run = "target/release/web --listen $PORT"
artifact = "dist"
port = "http"
health = { path = "/healthz", interval = "500ms", timeout = "2s", retries = 4, start_period = "1m" }
routes = ["shop.example.com", "example.com/api"]
tls = { cert = "/etc/ssl/shop/fullchain.pem", key = "/etc/ssl/shop/privkey.pem" }
replicas = 2
env = { RUST_LOG = "info" }
secrets = ["DATABASE_URL"]
resources = { memory = "256M", cpu = 0.5, pids = 64 }
depends_on = ["worker"]
stop_timeout = "30s"
restart = "on-failure"

[services.worker]
run = "bin/worker"
port = 9000
health = { tcp = true }
"#;

    fn resolved() -> resolve::Environment {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gantry.toml");
        std::fs::write(&path, FULL).expect("write gantry.toml");
        let config = crate::config::load_named(&path, "gantry.toml").expect("a valid config");
        config.environment("local").expect("the local environment")
    }

    /// Revision 1 is the resolved service as it went on the wire before the
    /// wire had its own type: agents and CLIs from before read it.
    #[test]
    fn the_spec_serializes_as_the_resolved_service_did() {
        for service in resolved().services.values() {
            let before = serde_json::to_value(service).expect("the resolved service");
            let spec = ServiceSpec::from(service);
            let now = serde_json::to_value(&spec).expect("the spec");
            assert_eq!(now, before, "{}", service.name);
            let back: ServiceSpec = serde_json::from_value(before).expect("read back");
            assert_eq!(
                serde_json::to_value(&back).expect("again"),
                now,
                "{}",
                service.name
            );
        }
    }

    #[test]
    fn an_agent_ignores_fields_it_does_not_know() {
        let web = ServiceSpec::from(&resolved().services["web"]);
        let mut json = serde_json::to_value(&web).expect("the spec");
        json["a_later_display_hint"] = serde_json::json!("shown in a later dashboard");
        let read: ServiceSpec = serde_json::from_value(json).expect("an unknown field is ignored");
        assert_eq!(read.stop_timeout.as_millis(), 30_000);
        assert_eq!(read.resources.memory.map(Size::bytes), Some(256 << 20));
    }

    #[test]
    fn requests_and_agents_from_before_revisions_are_revision_1() {
        let info: crate::agent_api::AgentInfo = serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "pid": 1, "state_dir": "/var/lib/gantry",
            "started_at": 0, "limits": "none",
        }))
        .expect("an older agent's health answer");
        assert_eq!(info.spec_version, 1);
        let request: crate::agent_api::DeployRequest = serde_json::from_value(serde_json::json!({
            "project": "shop", "environment": "prod", "config_hash": "",
            "artifact": {"digest": "", "files": []}, "services": [], "secrets": {},
        }))
        .expect("an older CLI's deploy");
        assert_eq!(request.spec_version, 1);
    }

    #[test]
    fn a_revision_above_the_agents_own_is_refused_naming_both() {
        assert_eq!(check_revision(1), Ok(()));
        assert_eq!(check_revision(SPEC_VERSION), Ok(()));
        let err = check_revision(SPEC_VERSION + 1).expect_err("too new");
        let message = err.to_string();
        assert!(
            message.contains(&format!("revision {}", SPEC_VERSION + 1))
                && message.contains(&format!("up to {SPEC_VERSION}")),
            "{message}"
        );
    }

    #[test]
    fn a_deploy_of_processes_alone_needs_only_revision_one() {
        let service = |workload: Workload| -> ServiceSpec {
            serde_json::from_value(serde_json::json!({
                "name": "web", "driver": "process", "run": "./web",
                "replicas": 1, "stop_timeout": "10s", "restart": "always",
            }))
            .map(|mut s: ServiceSpec| {
                s.workload = workload;
                s
            })
            .unwrap_or_else(|e| panic!("a service spec: {e}"))
        };
        let process = service(Workload::Process {
            run: "./web".into(),
        });
        let image = service(Workload::Compose {
            image: "redis".into(),
        });
        assert_eq!(revision_needed(std::slice::from_ref(&process)), 1);
        assert_eq!(revision_needed(&[process.clone(), image]), 2);
        assert!(revision_needed(&[]) <= SPEC_VERSION);
        let site = service(Workload::Static {
            dir: "dist".into(),
            spa: false,
        });
        assert_eq!(revision_needed(&[process.clone(), site]), 2);
        let mut stop_first = process;
        stop_first.deploy_strategy = Some(DeployStrategy::StopFirst);
        assert_eq!(revision_needed(&[stop_first]), 3);
    }

    #[test]
    fn an_image_with_volumes_is_replaced_stop_first_unless_it_says_otherwise() {
        let mut db: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "db", "driver": "compose", "image": "postgres:16",
            "volumes": ["pgdata:/var/lib/postgresql/data"],
            "replicas": 1, "stop_timeout": "10s", "restart": "always",
        }))
        .expect("a service spec");
        assert_eq!(db.strategy(), DeployStrategy::StopFirst);
        db.deploy_strategy = Some(DeployStrategy::StartFirst);
        assert_eq!(db.strategy(), DeployStrategy::StartFirst);
        db.volumes.clear();
        db.deploy_strategy = None;
        assert_eq!(db.strategy(), DeployStrategy::StartFirst);
        let json = serde_json::to_value(ServiceSpec {
            deploy_strategy: Some(DeployStrategy::StopFirst),
            ..db
        })
        .expect("json");
        assert_eq!(json["deploy_strategy"], "stop-first");
    }
}
