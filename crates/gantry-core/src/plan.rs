//! `gantry plan`: what a deploy would do, per host and service, changing
//! nothing: no build runs, no file or image is sent, no lock is taken. The
//! artifact is the project's files as they are on disk, an image service's
//! image the one this machine's engine holds; each host's agent says what
//! it runs (its last successful release), the files of that release, and
//! which secrets it holds with other values (compared by salted digests:
//! no value travels), and the difference is the plan. Pending SQL
//! migrations come from `migrate`'s plan. A text deploy asks the same of
//! what it is about to send, after its builds ([`of_deploy`]).

mod diff;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub use diff::{
    FileChanges, ImageChange, MAX_PATHS, PathList, RouteChanges, SecretChanges, ServicePlan,
};

use crate::agent_api::{
    ArtifactFile, CompareRequest, Comparison, Outcome, Release, ServiceSpec, new_salt,
    secret_digest,
};
use crate::config::resolve::{self, Environment, Service};
use crate::image::Shipment;
use crate::migrate::{self, Action, ServiceMigrations};
use crate::{Error, Project, artifact};

#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub project: String,
    pub environment: String,
    /// The digest of the artifact a deploy would send (for `gantry plan`,
    /// the files on disk, unbuilt).
    pub artifact: String,
    pub hosts: Vec<HostPlan>,
    /// Pending migrations, per service with `migrate.sql`; run once, before the rollout.
    pub migrations: Vec<ServiceMigrations>,
    /// Why the migrations could not be planned (the database unreachable, a secret unset).
    pub migrations_error: Option<String>,
    /// Why secret values could not be read here (a secret unset, no key):
    /// their changes cannot be told, names added or removed still can.
    pub secrets_error: Option<String>,
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

#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub change: Change,
    /// The release the host runs now.
    pub current: Option<String>,
    /// Why a new release, one line each (empty when unchanged).
    pub reasons: Vec<String>,
    /// The files that differ from those of the release the host runs;
    /// absent when they are the same, or the host keeps no list of its own.
    pub files: Option<FileChanges>,
    pub services: Vec<ServicePlan>,
    /// Why the host could not compare its files and secrets (an agent older
    /// than the comparison): the plan says less, not something else.
    pub compare_error: Option<String>,
    pub error: Option<String>,
}

impl HostPlan {
    /// A host not heard from yet.
    fn unknown(name: &str) -> HostPlan {
        HostPlan {
            host: name.to_owned(),
            change: Change::Unknown,
            current: None,
            reasons: Vec::new(),
            files: None,
            services: Vec::new(),
            compare_error: None,
            error: None,
        }
    }
}

/// What a deploy sends every host, prepared once: by [`plan`] from the
/// disk and this machine's engine as they are, by `deploy::deploy` after
/// its builds, from the very scan, images and secret values it then sends.
pub struct Outgoing<'a> {
    pub env: &'a Environment,
    /// The environment's services, in deploy order.
    pub services: &'a [Service],
    pub scan: &'a artifact::Scan,
    /// The images as a deploy pins them.
    pub images: &'a Shipment,
    /// The secret values the services get (those that could be read).
    pub secrets: &'a BTreeMap<String, String>,
}

/// `gantry plan` (and `deploy --dry-run`): prepares what a deploy would
/// send, with no build, then asks the hosts.
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
    let scan =
        artifact::of_services(&dir, &services).map_err(Error::io("read the project in", &dir))?;
    // The images this machine holds, as a deploy pins them; none exported.
    let images = Shipment::export(&dir, &services, &crate::progress::Silent)
        .unwrap_or_else(|_| Shipment::none());
    let names: Vec<String> = services.iter().flat_map(|s| s.secrets.clone()).collect();
    let (values, secrets_error) = match crate::secrets::values(&dir, environment, &names, env_vars)
    {
        Ok(values) => (values, None),
        Err(e) => (BTreeMap::new(), Some(e.to_string())),
    };
    let outgoing = Outgoing {
        env: &env,
        services: &services,
        scan: &scan,
        images: &images,
        secrets: &values,
    };
    let mut report = ask(&outgoing, connect);
    report.secrets_error = secrets_error;
    // Only the secrets that name databases: a secret unset elsewhere does
    // not hide the migrations.
    (report.migrations, report.migrations_error) = match migrate::migrate(
        project,
        environment,
        None,
        Action::Plan,
        env_vars,
        &crate::progress::Silent,
    ) {
        Ok(report) => (report.services, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(report)
}

/// The plan of sending `outgoing`: what each host runs against it, every
/// host asked at once (a plan takes as long as the slowest host's answers).
/// A host that cannot be asked is a host whose plan says why. The caller
/// adds the migrations and why secret values could not be read.
fn ask(outgoing: &Outgoing<'_>, connect: crate::host::Connect<'_>) -> PlanReport {
    let env = outgoing.env;
    let mut values = outgoing.secrets.clone();
    let asks: Vec<(Vec<Service>, Vec<ServiceSpec>)> = env
        .hosts
        .iter()
        .map(|host| {
            let here = resolve::services_on(outgoing.services, &host.name);
            let mut wanted: Vec<ServiceSpec> = here
                .iter()
                .map(|s| as_the_agent_keeps_it(s, &mut values))
                .collect();
            outgoing.images.pin(&mut wanted);
            (here, wanted)
        })
        .collect();
    let salt = new_salt();
    let hosts = std::thread::scope(|scope| {
        let handles: Vec<_> = env
            .hosts
            .iter()
            .zip(&asks)
            .map(|(host, (here, wanted))| {
                let ask = Ask {
                    project: &env.project,
                    artifact: &outgoing.scan.artifact,
                    config_hash: crate::artifact::config_hash(here),
                    wanted,
                    secrets: secret_digests(&salt, wanted, &values),
                    salt: &salt,
                };
                (
                    &host.name,
                    scope.spawn(move || ask.host(&host.name, connect(host))),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, handle)| {
                handle.join().unwrap_or_else(|_| HostPlan {
                    error: Some("planning this host panicked".to_owned()),
                    ..HostPlan::unknown(name)
                })
            })
            .collect::<Vec<_>>()
    });
    PlanReport {
        project: env.project.clone(),
        environment: env.name.clone(),
        artifact: outgoing.scan.artifact.digest.clone(),
        hosts,
        migrations: Vec::new(),
        migrations_error: None,
        secrets_error: None,
    }
}

/// The plan a deploy shows of what it is about to send. The deploy read
/// every secret value (it stops when one is unset), so the migrations are
/// planned with those values.
pub fn of_deploy(
    outgoing: &Outgoing<'_>,
    project_dir: &Path,
    connect: crate::host::Connect<'_>,
) -> PlanReport {
    let mut report = ask(outgoing, connect);
    (report.migrations, report.migrations_error) =
        match migrate::pending(project_dir, outgoing.env, outgoing.secrets) {
            Ok(pending) => (pending, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
    report
}

/// What one host is asked, and compared with.
struct Ask<'a> {
    project: &'a str,
    artifact: &'a crate::agent_api::Artifact,
    config_hash: String,
    wanted: &'a [ServiceSpec],
    salt: &'a str,
    /// The digests of the secret values this host's services would get.
    secrets: BTreeMap<String, String>,
}

impl Ask<'_> {
    fn host(&self, name: &str, agent: Result<Box<dyn crate::host::Host>, Error>) -> HostPlan {
        let mut plan = HostPlan::unknown(name);
        let asked = agent.and_then(|agent| {
            let current = agent
                .releases(self.project)?
                .into_iter()
                .find(|r| r.outcome == Outcome::Succeeded);
            let compared = current.as_ref().map(|release| {
                let request = CompareRequest {
                    artifact: (release.artifact_digest != self.artifact.digest)
                        .then(|| release.artifact_digest.clone()),
                    salt: self.salt.to_owned(),
                    secrets: self.secrets.clone(),
                };
                agent
                    .compare(self.project, &request)
                    .map_err(|e| e.to_string())
            });
            Ok((current, compared))
        });
        match asked {
            Err(e) => plan.error = Some(e.to_string()),
            Ok((None, _)) => {
                plan.change = Change::NewRelease;
                plan.reasons.push("nothing deployed yet".to_owned());
                plan.services = self.wanted.iter().map(ServicePlan::added).collect();
            }
            Ok((Some(release), compared)) => {
                let (compared, compare_error) = match compared {
                    Some(Ok(c)) => (Some(c), None),
                    Some(Err(e)) => (None, Some(e)),
                    None => (None, None),
                };
                plan = against(
                    plan,
                    &release,
                    self.artifact,
                    &self.config_hash,
                    self.wanted,
                    compared.as_ref(),
                );
                plan.compare_error = compare_error;
            }
        }
        plan
    }
}

/// The plan of a host that runs `release`, given what a deploy would send
/// (`artifact`, `config_hash`, `wanted`) and what the host answered about
/// its files and secrets.
fn against(
    mut plan: HostPlan,
    release: &Release,
    artifact: &crate::agent_api::Artifact,
    config_hash: &str,
    wanted: &[ServiceSpec],
    compared: Option<&Comparison>,
) -> HostPlan {
    let files_differ = release.artifact_digest != artifact.digest;
    let mut reasons = Vec::new();
    if files_differ {
        reasons.push(format!(
            "the files differ (artifact {} now, {} on the host)",
            short(&artifact.digest),
            short(&release.artifact_digest)
        ));
        plan.files = compared
            .and_then(|c| c.files.as_deref())
            .map(|there: &[ArtifactFile]| diff::files(&artifact.files, there));
    }
    let mut services: Vec<ServicePlan> = wanted
        .iter()
        .map(
            |w| match release.services.iter().find(|r| r.name == w.name) {
                Some(r) => diff::service(w, r, files_differ, compared),
                None => ServicePlan::added(w),
            },
        )
        .collect();
    diff::follow_dependencies(&mut services, wanted);
    services.extend(
        release
            .services
            .iter()
            .filter(|r| !wanted.iter().any(|w| w.name == r.name))
            .map(ServicePlan::removed),
    );
    for s in services.iter().filter(|s| s.change != "unchanged") {
        reasons.push(match s.change {
            "changed" => format!("`{}` changes: {}", s.service, s.what_differs().join(", ")),
            other => format!("`{}` is {other}", s.service),
        });
    }
    if reasons.is_empty() && release.config_hash != config_hash {
        reasons
            .push("the configuration differs from the one the host's release records".to_owned());
    }
    plan.change = if reasons.is_empty() {
        Change::Unchanged
    } else {
        Change::NewRelease
    };
    plan.current = Some(release.id.clone());
    plan.reasons = reasons;
    plan.services = services;
    plan
}

/// A service as its release records it: the agent moves credential-like
/// env values (`API_TOKEN`, a URL with a password) to the secrets file, so
/// the release lists them as secrets; their values join `values`.
fn as_the_agent_keeps_it(service: &Service, values: &mut BTreeMap<String, String>) -> ServiceSpec {
    let mut spec = ServiceSpec::from(service);
    let moved: Vec<String> = spec
        .env
        .iter()
        .filter(|(name, value)| crate::redact::is_credential(name, value))
        .map(|(name, _)| name.clone())
        .collect();
    for name in moved {
        if let Some(value) = spec.env.remove(&name) {
            values.entry(name.clone()).or_insert(value);
        }
        if !spec.secrets.contains(&name) {
            spec.secrets.push(name);
        }
    }
    spec
}

/// By name, the salted digest of each secret value `wanted` would get.
fn secret_digests(
    salt: &str,
    wanted: &[ServiceSpec],
    values: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    wanted
        .iter()
        .flat_map(|s| &s.secrets)
        .filter_map(|name| Some((name.clone(), secret_digest(salt, values.get(name)?))))
        .take(crate::agent_api::MAX_COMPARED_SECRETS)
        .collect()
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_api::Artifact;

    fn spec(name: &str, env: &[(&str, &str)]) -> ServiceSpec {
        let mut spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": name, "driver": "process", "run": "bin/web", "replicas": 1,
            "stop_timeout": "10s", "restart": "always", "secrets": ["TOKEN"],
        }))
        .expect("a spec");
        spec.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        spec
    }

    fn release(services: Vec<ServiceSpec>, artifact: &str) -> Release {
        serde_json::from_value(serde_json::json!({
            "id": "r1", "number": 1, "project": "shop", "environment": "prod",
            "config_hash": "c", "artifact_digest": artifact, "created_at": 0,
            "outcome": "succeeded", "phases": [], "services": services,
        }))
        .expect("a release")
    }

    fn empty_plan() -> HostPlan {
        HostPlan::unknown("h1")
    }

    fn artifact(digest: &str) -> Artifact {
        Artifact {
            digest: digest.to_owned(),
            files: Vec::new(),
        }
    }

    #[test]
    fn the_same_release_is_unchanged_and_a_rotated_secret_is_a_new_one() {
        let running = vec![spec("web", &[("A", "1")]), spec("worker", &[])];
        let release = release(running.clone(), "d1");
        let plan = against(empty_plan(), &release, &artifact("d1"), "c", &running, None);
        assert_eq!(plan.change, Change::Unchanged);
        assert!(plan.reasons.is_empty());
        assert!(plan.services.iter().all(|s| !s.replaced));

        let rotated = Comparison {
            secrets_differ: vec!["TOKEN".to_owned()],
            ..Comparison::default()
        };
        let plan = against(
            empty_plan(),
            &release,
            &artifact("d1"),
            "c",
            &running,
            Some(&rotated),
        );
        assert_eq!(plan.change, Change::NewRelease);
        assert_eq!(
            plan.reasons,
            ["`web` changes: secrets", "`worker` changes: secrets"]
        );
    }

    #[test]
    fn services_added_and_removed_and_a_config_only_the_hash_tells() {
        let release = release(vec![spec("web", &[]), spec("old", &[])], "d1");
        let wanted = vec![spec("web", &[]), spec("new", &[])];
        let plan = against(empty_plan(), &release, &artifact("d1"), "c", &wanted, None);
        assert_eq!(plan.reasons, ["`new` is added", "`old` is removed"]);
        let changes: Vec<_> = plan
            .services
            .iter()
            .map(|s| (s.service.as_str(), s.change, s.replaced))
            .collect();
        assert_eq!(
            changes,
            [
                ("web", "unchanged", false),
                ("new", "added", true),
                ("old", "removed", false)
            ]
        );

        let same = vec![spec("web", &[])];
        let release = super::tests::release(same.clone(), "d1");
        let plan = against(
            empty_plan(),
            &release,
            &artifact("d1"),
            "other",
            &same,
            None,
        );
        assert_eq!(plan.change, Change::NewRelease);
        assert_eq!(
            plan.reasons,
            ["the configuration differs from the one the host's release records"]
        );
    }

    #[test]
    fn only_the_secrets_a_host_would_get_are_asked_about_by_digest() {
        let values: BTreeMap<String, String> = [("TOKEN", "t0ken"), ("OTHER", "x")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let digests = secret_digests("salt", &[spec("web", &[])], &values);
        assert_eq!(digests.len(), 1);
        assert_eq!(digests["TOKEN"], secret_digest("salt", "t0ken"));
        assert!(!digests["TOKEN"].contains("t0ken"));
    }
}
