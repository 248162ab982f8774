//! `gantry plan`: what a deploy would do, per host and service, changing
//! nothing: no build runs, no file is sent, no lock is taken. The artifact
//! is the project's files as they are on disk; each host's agent says what
//! it runs (its last successful release), and the difference is the plan.
//! Pending SQL migrations come from `migrate`'s plan.

use serde::Serialize;

use crate::agent_api::{Outcome, ServiceSpec};
use crate::config::resolve::Service;
use crate::migrate::{self, Action, ServiceMigrations};
use crate::{Error, Project, artifact};

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub project: String,
    pub environment: String,
    /// The digest of the artifact a deploy would send (the files on disk, unbuilt).
    pub artifact: String,
    pub hosts: Vec<HostPlan>,
    /// Pending migrations, per service with `migrate.sql`; run once, before the rollout.
    pub migrations: Vec<ServiceMigrations>,
    /// Why the migrations could not be planned (the database unreachable, a secret unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrations_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A deploy makes a new release on the host.
    NewRelease,
    /// What the host runs is what a deploy would send.
    Unchanged,
    /// The host did not answer.
    Unknown,
}

#[derive(Debug, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub change: Change,
    /// The release the host runs now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Why a new release (empty when unchanged).
    pub reasons: Vec<String>,
    pub services: Vec<ServicePlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ServicePlan {
    pub service: String,
    /// `added`, `removed`, `changed` or `unchanged`.
    pub change: &'static str,
    /// The keys whose values differ (for `changed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

pub fn plan(
    project: &Project,
    environment: &str,
    connect: crate::host::Connect<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
) -> Result<PlanReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let dir = config.project_dir().to_owned();
    let services: Vec<Service> = env.deploy_order().into_iter().cloned().collect();
    let extra: Vec<String> = services.iter().filter_map(|s| s.artifact.clone()).collect();
    let scan = artifact::scan(&dir, &extra).map_err(Error::io("read the project in", &dir))?;
    let digest = scan.artifact.digest;
    let hosts = env
        .hosts
        .iter()
        .map(|host| {
            let here: Vec<ServiceSpec> = services
                .iter()
                .filter(|s| s.hosts.is_empty() || s.hosts.contains(&host.name))
                .map(as_the_agent_keeps_it)
                .collect();
            host_plan(&host.name, connect(host), &env.project, &digest, &here)
        })
        .collect();
    let (migrations, migrations_error) = match migrate::migrate(
        project,
        environment,
        None,
        Action::Plan,
        env_vars,
        &crate::deploy::Silent,
    ) {
        Ok(report) => (report.services, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(PlanReport {
        project: env.project.clone(),
        environment: environment.to_owned(),
        artifact: digest,
        hosts,
        migrations,
        migrations_error,
    })
}

fn host_plan(
    name: &str,
    agent: Result<Box<dyn crate::host::Host>, Error>,
    project: &str,
    digest: &str,
    wanted: &[ServiceSpec],
) -> HostPlan {
    let current = agent.and_then(|agent| {
        Ok(agent
            .releases(project)?
            .into_iter()
            .find(|r| r.outcome == Outcome::Succeeded))
    });
    let current = match current {
        Ok(current) => current,
        Err(e) => {
            return HostPlan {
                host: name.to_owned(),
                change: Change::Unknown,
                current: None,
                reasons: Vec::new(),
                services: Vec::new(),
                error: Some(e.to_string()),
            };
        }
    };
    let Some(release) = current else {
        return HostPlan {
            host: name.to_owned(),
            change: Change::NewRelease,
            current: None,
            reasons: vec!["nothing deployed yet".to_owned()],
            services: wanted
                .iter()
                .map(|s| ServicePlan {
                    service: s.name.clone(),
                    change: "added",
                    keys: Vec::new(),
                })
                .collect(),
            error: None,
        };
    };
    let services = service_changes(&release.services, wanted);
    let mut reasons = Vec::new();
    if release.artifact_digest != digest {
        reasons.push(format!(
            "the files differ (artifact {} now, {} on the host)",
            short(digest),
            short(&release.artifact_digest)
        ));
    }
    for s in services.iter().filter(|s| s.change != "unchanged") {
        reasons.push(match s.change {
            "changed" => format!("`{}` changes: {}", s.service, s.keys.join(", ")),
            other => format!("`{}` is {other}", s.service),
        });
    }
    HostPlan {
        host: name.to_owned(),
        change: if reasons.is_empty() {
            Change::Unchanged
        } else {
            Change::NewRelease
        },
        current: Some(release.id),
        reasons,
        services,
        error: None,
    }
}

/// A service as its release records it: the agent moves credential-like
/// env values (`API_TOKEN`, a URL with a password) to the secrets file, so
/// the release lists them as secrets.
fn as_the_agent_keeps_it(service: &Service) -> ServiceSpec {
    let mut spec = ServiceSpec::from(service);
    let moved: Vec<String> = spec
        .env
        .iter()
        .filter(|(name, value)| crate::redact::is_credential(name, value))
        .map(|(name, _)| name.clone())
        .collect();
    for name in moved {
        spec.env.remove(&name);
        if !spec.secrets.contains(&name) {
            spec.secrets.push(name);
        }
    }
    spec
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Each service the host runs or would run, and the keys that differ. The
/// agent shows credential-like env values as `(redacted)`: such a value
/// counts as equal, since what it hides cannot be compared.
fn service_changes(running: &[ServiceSpec], wanted: &[ServiceSpec]) -> Vec<ServicePlan> {
    let as_map = |s: &ServiceSpec| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let mut out: Vec<ServicePlan> = wanted
        .iter()
        .map(|w| {
            let Some(r) = running.iter().find(|r| r.name == w.name) else {
                return ServicePlan {
                    service: w.name.clone(),
                    change: "added",
                    keys: Vec::new(),
                };
            };
            let (new, old) = (as_map(w), as_map(r));
            let mut keys: Vec<String> = new
                .keys()
                .chain(old.keys())
                .filter(|k| !same(k, new.get(*k), old.get(*k)))
                .cloned()
                .collect();
            keys.sort();
            keys.dedup();
            ServicePlan {
                service: w.name.clone(),
                change: if keys.is_empty() {
                    "unchanged"
                } else {
                    "changed"
                },
                keys,
            }
        })
        .collect();
    out.extend(
        running
            .iter()
            .filter(|r| !wanted.iter().any(|w| w.name == r.name))
            .map(|r| ServicePlan {
                service: r.name.clone(),
                change: "removed",
                keys: Vec::new(),
            }),
    );
    out
}

fn same(key: &str, new: Option<&serde_json::Value>, old: Option<&serde_json::Value>) -> bool {
    match (key, new, old) {
        ("env", Some(serde_json::Value::Object(n)), Some(serde_json::Value::Object(o))) => {
            n.len() == o.len()
                && n.iter().all(|(k, v)| {
                    o.get(k).is_some_and(|ov| {
                        ov == v
                            || ov
                                .as_str()
                                .is_some_and(|text| text.contains(crate::redact::REDACTED))
                    })
                })
        }
        _ => new == old,
    }
}
