//! A service as a release row keeps it: the store's own record, not the
//! wire's. The API's spec may gain a revision and gantry.toml's model may
//! change; the rows an agent wrote stay readable, because only a migration
//! of this store ([`super::schema`]) changes their shape.
//!
//! Format 2 (schema 4 on): times in milliseconds and sizes in bytes as
//! numbers, the driver and the health check as tagged objects of their own.
//! Format 1 (schemas 1 to 3) was the wire's revision 1 as JSON; the
//! migration to schema 4 rewrites those rows ([`migrate_format_1`]).

use std::collections::BTreeMap;

use gantry_core::agent_api::v1::{
    Backup, BackupKind, Check, DeployStrategy, Duration, Health, Migrate, Port, Resources, Restart,
    Route, ServiceSpec, Size, TlsFiles, Workload,
};
use serde::{Deserialize, Serialize};

#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize)]
pub(super) struct ServiceRow {
    name: String,
    driver: Driver,
    #[serde(default)]
    build: Option<String>,
    #[serde(default)]
    artifact: Option<String>,
    #[serde(default)]
    port: Option<PortRow>,
    #[serde(default)]
    health: Option<HealthRow>,
    routes: Vec<RouteRow>,
    #[serde(default)]
    tls: Option<TlsRow>,
    replicas: u32,
    env: BTreeMap<String, String>,
    secrets: Vec<String>,
    #[serde(default)]
    memory_bytes: Option<u64>,
    #[serde(default)]
    cpu: Option<f64>,
    #[serde(default)]
    pids: Option<u32>,
    depends_on: Vec<String>,
    hosts: Vec<String>,
    #[serde(default)]
    migrate_pre: Option<String>,
    #[serde(default)]
    migrate_post: Option<String>,
    /// Whether `migrate` was given at all (it may name no command).
    #[serde(default)]
    migrate: bool,
    volumes: Vec<String>,
    #[serde(default)]
    backup: Option<BackupRow>,
    stop_timeout_ms: u64,
    restart: RestartRow,
    run_as_root: bool,
    /// Absent in rows written before strategies: the default.
    #[serde(default)]
    strategy: Option<StrategyRow>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StrategyRow {
    StartFirst,
    StopFirst,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Driver {
    Process {
        command: String,
    },
    Container {
        image: String,
    },
    Directory {
        path: String,
        /// Absent in rows written before single-page apps: false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        spa: bool,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum PortRow {
    Fixed { number: u16 },
    Assigned { name: String },
}

#[derive(Serialize, Deserialize)]
struct HealthRow {
    check: CheckRow,
    interval_ms: u64,
    timeout_ms: u64,
    retries: u32,
    start_period_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum CheckRow {
    Http { path: String },
    Tcp,
    Command { command: String },
}

#[derive(Serialize, Deserialize)]
struct RouteRow {
    host: String,
    path: String,
}

#[derive(Serialize, Deserialize)]
struct TlsRow {
    cert: String,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct BackupRow {
    schedule: String,
    keep: u32,
    /// Rows from before kinds: volumes, all there was to back up.
    #[serde(default = "volumes")]
    kind: BackupKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

fn volumes() -> BackupKind {
    BackupKind::Volumes
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RestartRow {
    Always,
    OnFailure,
    Never,
}

impl From<&ServiceSpec> for ServiceRow {
    fn from(s: &ServiceSpec) -> ServiceRow {
        ServiceRow {
            name: s.name.clone(),
            driver: match &s.workload {
                Workload::Process { run } => Driver::Process {
                    command: run.clone(),
                },
                Workload::Compose { image } => Driver::Container {
                    image: image.clone(),
                },
                Workload::Static { dir, spa } => Driver::Directory {
                    path: dir.clone(),
                    spa: *spa,
                },
            },
            build: s.build.clone(),
            artifact: s.artifact.clone(),
            port: s.port.as_ref().map(|p| match p {
                Port::Fixed(number) => PortRow::Fixed { number: *number },
                Port::Named(name) => PortRow::Assigned { name: name.clone() },
            }),
            health: s.health.as_ref().map(|h| HealthRow {
                check: match &h.check {
                    Check::Http { path } => CheckRow::Http { path: path.clone() },
                    Check::Tcp => CheckRow::Tcp,
                    Check::Command { command } => CheckRow::Command {
                        command: command.clone(),
                    },
                },
                interval_ms: h.interval.as_millis(),
                timeout_ms: h.timeout.as_millis(),
                retries: h.retries,
                start_period_ms: h.start_period.as_millis(),
            }),
            routes: s
                .routes
                .iter()
                .map(|r| RouteRow {
                    host: r.host.clone(),
                    path: r.path.clone(),
                })
                .collect(),
            tls: s.tls.as_ref().map(|t| TlsRow {
                cert: t.cert.clone(),
                key: t.key.clone(),
            }),
            replicas: s.replicas,
            env: s.env.clone(),
            secrets: s.secrets.clone(),
            memory_bytes: s.resources.memory.map(Size::bytes),
            cpu: s.resources.cpu,
            pids: s.resources.pids,
            depends_on: s.depends_on.clone(),
            hosts: s.hosts.clone(),
            migrate: s.migrate.is_some(),
            migrate_pre: s.migrate.as_ref().and_then(|m| m.pre.clone()),
            migrate_post: s.migrate.as_ref().and_then(|m| m.post.clone()),
            volumes: s.volumes.clone(),
            backup: s.backup.as_ref().map(|b| BackupRow {
                schedule: b.schedule.clone(),
                keep: b.keep,
                kind: b.kind,
                path: b.path.clone(),
            }),
            stop_timeout_ms: s.stop_timeout.as_millis(),
            restart: match s.restart {
                Restart::Always => RestartRow::Always,
                Restart::OnFailure => RestartRow::OnFailure,
                Restart::Never => RestartRow::Never,
            },
            run_as_root: s.run_as_root,
            strategy: s.deploy_strategy.map(|d| match d {
                DeployStrategy::StartFirst => StrategyRow::StartFirst,
                DeployStrategy::StopFirst => StrategyRow::StopFirst,
            }),
        }
    }
}

impl From<ServiceRow> for ServiceSpec {
    fn from(r: ServiceRow) -> ServiceSpec {
        ServiceSpec {
            name: r.name,
            workload: match r.driver {
                Driver::Process { command } => Workload::Process { run: command },
                Driver::Container { image } => Workload::Compose { image },
                Driver::Directory { path, spa } => Workload::Static { dir: path, spa },
            },
            build: r.build,
            artifact: r.artifact,
            port: r.port.map(|p| match p {
                PortRow::Fixed { number } => Port::Fixed(number),
                PortRow::Assigned { name } => Port::Named(name),
            }),
            health: r.health.map(|h| Health {
                check: match h.check {
                    CheckRow::Http { path } => Check::Http { path },
                    CheckRow::Tcp => Check::Tcp,
                    CheckRow::Command { command } => Check::Command { command },
                },
                interval: Duration::from_millis(h.interval_ms),
                timeout: Duration::from_millis(h.timeout_ms),
                retries: h.retries,
                start_period: Duration::from_millis(h.start_period_ms),
            }),
            routes: r
                .routes
                .into_iter()
                .map(|r| Route {
                    host: r.host,
                    path: r.path,
                })
                .collect(),
            tls: r.tls.map(|t| TlsFiles {
                cert: t.cert,
                key: t.key,
            }),
            replicas: r.replicas,
            env: r.env,
            secrets: r.secrets,
            resources: Resources {
                memory: r.memory_bytes.map(Size::from_bytes),
                cpu: r.cpu,
                pids: r.pids,
            },
            depends_on: r.depends_on,
            hosts: r.hosts,
            migrate: r.migrate.then_some(Migrate {
                pre: r.migrate_pre,
                post: r.migrate_post,
            }),
            volumes: r.volumes,
            backup: r.backup.map(|b| Backup {
                schedule: b.schedule,
                keep: b.keep,
                kind: b.kind,
                path: b.path,
            }),
            stop_timeout: Duration::from_millis(r.stop_timeout_ms),
            restart: match r.restart {
                RestartRow::Always => Restart::Always,
                RestartRow::OnFailure => Restart::OnFailure,
                RestartRow::Never => Restart::Never,
            },
            run_as_root: r.run_as_root,
            deploy_strategy: r.strategy.map(|d| match d {
                StrategyRow::StartFirst => DeployStrategy::StartFirst,
                StrategyRow::StopFirst => DeployStrategy::StopFirst,
            }),
        }
    }
}

/// The `services` column of a release, in format 2.
pub(super) fn to_rows(services: &[ServiceSpec]) -> Vec<ServiceRow> {
    services.iter().map(ServiceRow::from).collect()
}

pub(super) fn from_rows(rows: Vec<ServiceRow>) -> Vec<ServiceSpec> {
    rows.into_iter().map(ServiceSpec::from).collect()
}

/// The migration to schema 4: every release's `services`, written in
/// format 1 (the wire's revision 1), rewritten in format 2. A row that is
/// not format 1 stops the migration, naming it: the agent then refuses to
/// start rather than lose a release's record.
pub(super) fn migrate_format_1(tx: &rusqlite::Transaction) -> rusqlite_migration::HookResult {
    let rows: Vec<(String, String, String)> = {
        let mut statement = tx.prepare("SELECT project, id, services FROM releases")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (project, id, text) in rows {
        let unreadable = |e: serde_json::Error| {
            rusqlite_migration::HookError::Hook(format!(
                "release {id} of {project}: its services are not in the format agents before schema 4 wrote: {e}"
            ))
        };
        let services: Vec<ServiceSpec> = serde_json::from_str(&text).map_err(unreadable)?;
        let rewritten = serde_json::to_string(&to_rows(&services)).map_err(unreadable)?;
        tx.execute(
            "UPDATE releases SET services = ?3 WHERE project = ?1 AND id = ?2",
            rusqlite::params![project, id, rewritten],
        )?;
    }
    Ok(())
}
