//! Docker Compose files for the container services of one host, running
//! them as `gantry deploy` does: ports published on loopback only, where
//! Gantry's proxy would reach them; the project environment's network
//! (`gantry-PROJECT-ENV`) where services answer to their names, with
//! `GANTRY_<DEP>_HOST`/`_PORT` for the containers they depend on; the same
//! named volumes (`gantry-PROJECT-ENV-NAME`); secrets as read-only files
//! `/run/secrets/NAME` named by `NAME_FILE`, never in the environment;
//! Docker's limits (no swap beyond memory), no new privileges, and logs
//! rotated as deploy rotates them.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::{Rendering, assign_ports, header, restart_policy};
use crate::config::Environment;
use crate::config::model::Port;
use crate::config::resolve::{Check, Service, Workload};

#[derive(Serialize)]
struct File<'a> {
    services: BTreeMap<String, ComposeService<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    volumes: BTreeMap<String, Named>,
    networks: BTreeMap<&'static str, Named>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, SecretFile>,
}

/// A volume or network under the name `gantry deploy` gives it.
#[derive(Serialize)]
struct Named {
    name: String,
}

#[derive(Serialize)]
struct SecretFile {
    file: String,
}

#[derive(Serialize)]
struct Network {
    aliases: Vec<String>,
}

#[derive(Serialize)]
struct Logging {
    driver: &'static str,
    options: BTreeMap<&'static str, &'static str>,
}

#[serde_with::skip_serializing_none]
#[derive(Serialize)]
struct ComposeService<'a> {
    image: &'a str,
    restart: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<&'a str>,
    networks: BTreeMap<&'static str, Network>,
    healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    depends_on: BTreeMap<String, DependsOn>,
    stop_grace_period: String,
    mem_limit: Option<u64>,
    memswap_limit: Option<u64>,
    cpus: Option<f64>,
    pids_limit: Option<u32>,
    security_opt: Vec<&'static str>,
    logging: Logging,
}

#[derive(Clone, Serialize)]
struct Healthcheck {
    test: Vec<String>,
    interval: String,
    timeout: String,
    retries: u32,
    start_period: String,
}

#[derive(Clone, Copy, Serialize)]
struct DependsOn {
    condition: &'static str,
}

pub(super) fn render(env: &Environment, host: &str, out: &mut Rendering) {
    let containers: Vec<&Service> = env
        .deploy_order()
        .into_iter()
        .filter(|s| matches!(s.workload, Workload::Compose { .. }))
        .collect();
    for service in env.services.values() {
        match service.workload {
            Workload::Compose { .. } => {}
            Workload::Process { .. } => out.note(
                service,
                "run",
                "processes are rendered by `--target systemd`, not in a compose file",
            ),
            Workload::Static { .. } => out.note(
                service,
                "static",
                "static directories are served by Gantry's proxy; compose has no equivalent",
            ),
        }
    }
    if containers.is_empty() {
        return;
    }
    let ports = assign_ports(containers.iter().copied());
    let mut file = File {
        services: BTreeMap::new(),
        volumes: BTreeMap::new(),
        networks: BTreeMap::from([(
            "default",
            Named {
                name: format!("gantry-{}-{}", env.project, env.name),
            },
        )]),
        secrets: BTreeMap::new(),
    };
    for service in &containers {
        let Workload::Compose { image } = &service.workload else {
            continue;
        };
        note_common(service, out);
        for volume in &service.volumes {
            let source = volume.split(':').next().unwrap_or_default();
            if !source.starts_with('/') && !source.starts_with('.') {
                let name = format!("gantry-{}-{}-{source}", env.project, env.name);
                file.volumes.insert(source.to_owned(), Named { name });
            }
        }
        for secret in &service.secrets {
            let path = format!("secrets/{secret}");
            file.secrets
                .insert(secret.clone(), SecretFile { file: path });
        }
        let healthcheck = healthcheck(service, out);
        let depends_on = depends_on(env, service, out);
        let names = instance_names(service);
        for (index, name) in names.into_iter().enumerate() {
            let instance = index as u32 + 1;
            let mut environment = addresses(env, service);
            environment.extend(service.env.clone());
            for secret in &service.secrets {
                environment.insert(format!("{secret}_FILE"), format!("/run/secrets/{secret}"));
            }
            let published = match (&service.port, ports.get(&(service.name.clone(), instance))) {
                (Some(Port::Fixed(inside)), Some(outside)) => {
                    vec![format!("127.0.0.1:{outside}:{inside}")]
                }
                (Some(Port::Named(_)), Some(port)) => {
                    environment.insert("PORT".to_owned(), port.to_string());
                    vec![format!("127.0.0.1:{port}:{port}")]
                }
                _ => Vec::new(),
            };
            file.services.insert(
                name,
                ComposeService {
                    image,
                    restart: restart_policy(service.restart),
                    environment,
                    secrets: service.secrets.iter().map(String::as_str).collect(),
                    ports: published,
                    volumes: service.volumes.iter().map(String::as_str).collect(),
                    networks: BTreeMap::from([(
                        "default",
                        Network {
                            aliases: vec![service.name.clone()],
                        },
                    )]),
                    healthcheck: healthcheck.clone(),
                    depends_on: depends_on.clone(),
                    stop_grace_period: service.stop_timeout.to_string(),
                    mem_limit: service.resources.memory.map(|m| m.bytes()),
                    memswap_limit: service.resources.memory.map(|m| m.bytes()),
                    cpus: service.resources.cpu,
                    pids_limit: service.resources.pids,
                    security_opt: vec!["no-new-privileges:true"],
                    logging: Logging {
                        driver: "json-file",
                        options: BTreeMap::from([("max-file", "3"), ("max-size", "10m")]),
                    },
                },
            );
        }
    }
    let yaml = serde_norway::to_string(&file).unwrap_or_default();
    let mut text = header("#", env, host);
    // No top-level `name`: docker-compose 1.x rejects it; the project name goes on the command line.
    let _ = writeln!(
        text,
        "# Run with: docker compose -p {} -f compose.yaml up -d",
        env.project
    );
    if containers.iter().any(|s| !s.secrets.is_empty()) {
        text.push_str("# Secrets are read from secrets/<NAME> beside this file (the value alone, mode 0600) and\n# appear in the containers as /run/secrets/<NAME>, named by $<NAME>_FILE.\n");
    }
    text.push_str(&yaml);
    out.files
        .insert(format!("{host}/compose.yaml").into(), text);
}

/// `GANTRY_<DEP>_HOST` and `_PORT` for each container `service` depends
/// on that has a fixed port: the dependency's name and port on the
/// project network, as deploy gives them.
fn addresses(env: &Environment, service: &Service) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for dep in service
        .depends_on
        .iter()
        .filter_map(|d| env.services.get(d))
    {
        if let (Workload::Compose { .. }, Some(Port::Fixed(port))) = (&dep.workload, &dep.port) {
            let key = dep.name.to_ascii_uppercase().replace('-', "_");
            vars.insert(format!("GANTRY_{key}_HOST"), dep.name.clone());
            vars.insert(format!("GANTRY_{key}_PORT"), port.to_string());
        }
    }
    vars
}

/// A compose health check from a `command` check; the others run from
/// outside the container, which compose cannot do.
fn healthcheck(service: &Service, out: &mut Rendering) -> Option<Healthcheck> {
    service.health.as_ref().and_then(|h| match &h.check {
        Check::Command { command } => Some(Healthcheck {
            test: vec!["CMD-SHELL".to_owned(), command.clone()],
            interval: h.interval.to_string(),
            timeout: h.timeout.to_string(),
            retries: h.retries,
            start_period: h.start_period.to_string(),
        }),
        Check::Http { .. } | Check::Tcp => {
            out.note(
                service,
                "health",
                "compose health checks run inside the container; only `command` checks are rendered",
            );
            None
        }
    })
}

/// The containers this one waits for: healthy when they have a `command`
/// check, else started.
fn depends_on(
    env: &Environment,
    service: &Service,
    out: &mut Rendering,
) -> BTreeMap<String, DependsOn> {
    service
        .depends_on
        .iter()
        .filter_map(|dep| {
            let dep_service = env.services.get(dep)?;
            if !matches!(dep_service.workload, Workload::Compose { .. }) {
                out.note(
                    service,
                    "depends_on",
                    format!("`{dep}` is not a container, so compose cannot wait for it"),
                );
                return None;
            }
            let condition = if dep_service
                .health
                .as_ref()
                .is_some_and(|h| matches!(h.check, Check::Command { .. }))
            {
                "service_healthy"
            } else {
                "service_started"
            };
            Some(
                instance_names(dep_service)
                    .into_iter()
                    .map(move |n| (n, DependsOn { condition })),
            )
        })
        .flatten()
        .collect::<BTreeMap<_, _>>()
}

/// One compose service per replica, so each can publish its own loopback port.
fn instance_names(service: &Service) -> Vec<String> {
    if service.replicas == 1 {
        vec![service.name.clone()]
    } else {
        (1..=service.replicas)
            .map(|i| format!("{}-{i}", service.name))
            .collect()
    }
}

fn note_common(service: &Service, out: &mut Rendering) {
    if !service.routes.is_empty() {
        out.note(service, "routes", "routes are served by Gantry's proxy; ports are published on 127.0.0.1 for a proxy of your own");
    }
    match &service.build {
        Some(build @ gantry_config::resolve::Build::Image(_)) => out.note(
            service,
            "build",
            format!(
                "compose does not build the image here; build it first, from the project directory: {}",
                build.describe()
            ),
        ),
        Some(gantry_config::resolve::Build::Command(_)) => out.note(
            service,
            "build",
            "build commands are not run by compose; build the image yourself",
        ),
        None => {}
    }
    if service.migrate.is_some() {
        out.note(
            service,
            "migrate",
            "compose has no deploy hooks to run migrations in: run `gantry migrate run -e ENV` before `docker compose up`",
        );
    }
    if service.backup.is_some() {
        out.note(
            service,
            "backup",
            "backups are taken by Gantry's agent (`gantry backup`), which these compose files leave out: nothing here backs the service up, so back it up yourself",
        );
    }
}
