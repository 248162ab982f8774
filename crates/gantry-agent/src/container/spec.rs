//! What one container of an instance is, as data: names, labels and the
//! Docker create request made from them. Pure: nothing here talks to
//! Docker, so the request a spec becomes is tested without an engine.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountType,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};

/// Every label Gantry sets starts with this.
pub const LABEL_PREFIX: &str = "dev.gantry.";
pub const LABEL_PROJECT: &str = "dev.gantry.project";
pub const LABEL_ENVIRONMENT: &str = "dev.gantry.environment";
pub const LABEL_SERVICE: &str = "dev.gantry.service";
pub const LABEL_RELEASE: &str = "dev.gantry.release";
pub const LABEL_INSTANCE: &str = "dev.gantry.instance";
pub const LABEL_VOLUME: &str = "dev.gantry.volume";
/// Which agent made the container (a digest of its state directory): two
/// agents on one host never settle each other's containers.
pub const LABEL_AGENT: &str = "dev.gantry.agent";

/// Where secrets appear inside a container: one read-only file per secret.
pub const SECRETS_DIR: &str = "/run/secrets";

/// The bound on a container's json-file log (per file, and files kept).
const LOG_MAX_SIZE: &str = "10m";
const LOG_MAX_FILES: &str = "3";

/// Which project, environment, service, release and instance a container
/// is; its labels, and so what a listing of containers reads back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub project: String,
    pub environment: String,
    pub service: String,
    pub release: String,
    pub instance: String,
}

impl Identity {
    /// The container's name: `gantry-PROJECT-INSTANCE` (an instance id
    /// names its service and release and is unique), so a replacement never
    /// collides with the container it replaces, and the name follows from
    /// the instance alone.
    pub fn container_name(&self) -> String {
        container_name(&self.project, &self.instance)
    }

    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_PROJECT.to_owned(), self.project.clone()),
            (LABEL_ENVIRONMENT.to_owned(), self.environment.clone()),
            (LABEL_SERVICE.to_owned(), self.service.clone()),
            (LABEL_RELEASE.to_owned(), self.release.clone()),
            (LABEL_INSTANCE.to_owned(), self.instance.clone()),
        ])
    }

    /// The identity a container's labels name; `None` when one is missing
    /// (not a container Gantry made).
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Identity> {
        let get = |key: &str| labels.get(key).cloned();
        Some(Identity {
            project: get(LABEL_PROJECT)?,
            environment: get(LABEL_ENVIRONMENT)?,
            service: get(LABEL_SERVICE)?,
            release: get(LABEL_RELEASE)?,
            instance: get(LABEL_INSTANCE)?,
        })
    }
}

/// The container of `instance` of `project`.
pub fn container_name(project: &str, instance: &str) -> String {
    format!("gantry-{project}-{instance}")
}

/// The network of a project's environment: its services reach each other
/// on it by service name.
pub fn network_name(project: &str, environment: &str) -> String {
    format!("gantry-{project}-{environment}")
}

/// The Docker volume behind a service's named volume: one per project and
/// environment, so releases (and rollbacks) of the environment share it.
pub fn volume_name(project: &str, environment: &str, volume: &str) -> String {
    format!("gantry-{project}-{environment}-{volume}")
}

/// A named volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name in gantry.toml (`pgdata`).
    pub name: String,
    /// The absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

impl VolumeMount {
    /// Reads gantry.toml's `NAME:/path[:ro]`. Host paths (`./data:/x`,
    /// `/srv:/x`) are refused: a deploy mounts only volumes it manages.
    pub fn parse(text: &str) -> Result<VolumeMount, String> {
        let (name, rest) = text.split_once(':').ok_or_else(|| {
            format!("volume `{text}`: write NAME:/path/in/container, like pgdata:/var/lib/postgresql/data")
        })?;
        let (target, read_only) = match rest.rsplit_once(':') {
            Some((target, "ro")) => (target, true),
            Some((target, "rw")) => (target, false),
            Some((_, option)) => {
                return Err(format!(
                    "volume `{text}`: `{option}` is not a mount option (ro or rw)"
                ));
            }
            None => (rest, false),
        };
        if name.starts_with(['/', '.', '~']) {
            return Err(format!(
                "volume `{text}`: host paths are not supported yet; use a named volume (NAME:/path)"
            ));
        }
        let valid_name = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(format!(
                "volume `{text}`: the name `{name}` must start with a lowercase letter and hold lowercase letters, digits, - and _ (at most 63)"
            ));
        }
        if !target.starts_with('/')
            || target.split('/').any(|part| part == "..")
            || target.len() > 4096
            || target.contains('\0')
        {
            return Err(format!(
                "volume `{text}`: the path in the container must be absolute, without `..`"
            ));
        }
        Ok(VolumeMount {
            name: name.to_owned(),
            target: target.to_owned(),
            read_only,
        })
    }
}

/// The port the service listens on inside the container, published on
/// 127.0.0.1:`host` for the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub container: u16,
    pub host: u16,
}

/// Limits Docker enforces (cgroups).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    /// In CPUs: 0.5 is half of one.
    pub cpus: Option<f64>,
    pub pids: Option<u32>,
}

/// One container of an instance.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub identity: Identity,
    pub image: String,
    /// Replaces the image's CMD when set.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Names of secrets; each becomes the file `/run/secrets/NAME` and the
    /// variable `NAME_FILE` naming it. Their values never enter the spec.
    pub secrets: Vec<String>,
    pub publish: Option<Publish>,
    pub resources: Resources,
    pub volumes: Vec<VolumeMount>,
    /// Replaces the image's USER when set.
    pub user: Option<String>,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl ContainerSpec {
    /// The create request: labels, env (secret file paths, never values),
    /// the loopback port, limits, volumes, the secret files bound read-only
    /// from `secret_files` (NAME → file on the host), and the project
    /// network with the service's name as alias.
    pub fn create_body(&self, secret_files: &BTreeMap<String, PathBuf>) -> ContainerCreateBody {
        let identity = &self.identity;
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for name in &self.secrets {
            env.push(format!("{name}_FILE={SECRETS_DIR}/{name}"));
        }
        let mut mounts: Vec<Mount> = self
            .volumes
            .iter()
            .map(|volume| Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume_name(
                    &identity.project,
                    &identity.environment,
                    &volume.name,
                )),
                target: Some(volume.target.clone()),
                read_only: Some(volume.read_only),
                ..Default::default()
            })
            .collect();
        for (name, file) in secret_files {
            mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(file.display().to_string()),
                target: Some(format!("{SECRETS_DIR}/{name}")),
                read_only: Some(true),
                ..Default::default()
            });
        }
        let network = network_name(&identity.project, &identity.environment);
        let port_key = self.publish.map(|p| format!("{}/tcp", p.container));
        let host_config = HostConfig {
            port_bindings: self.publish.zip(port_key.clone()).map(|(publish, key)| {
                HashMap::from([(
                    key,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: Some(publish.host.to_string()),
                    }]),
                )])
            }),
            memory: self
                .resources
                .memory_bytes
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            // No swap beyond the memory limit: the limit is the limit.
            memory_swap: self
                .resources
                .memory_bytes
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            nano_cpus: self
                .resources
                .cpus
                .map(|cpus| (cpus * 1_000_000_000.0).round() as i64),
            pids_limit: self.resources.pids.map(i64::from),
            mounts: Some(mounts),
            network_mode: Some(network.clone()),
            // Gantry's supervisor restarts with its own backoff; Docker's
            // policy would race it.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                    ("max-file".to_owned(), LOG_MAX_FILES.to_owned()),
                ])),
            }),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: self.command.clone(),
            env: Some(env),
            user: self.user.clone(),
            labels: Some(identity.labels()),
            exposed_ports: port_key.map(|key| vec![key]),
            stop_timeout: Some(i64::try_from(self.stop_timeout.as_secs()).unwrap_or(i64::MAX)),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network,
                    EndpointSettings {
                        aliases: Some(vec![identity.service.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            project: "shop".into(),
            environment: "prod".into(),
            service: "db".into(),
            release: "r7".into(),
            instance: "i3".into(),
        }
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            identity: identity(),
            image: "postgres:16".into(),
            command: None,
            env: BTreeMap::from([("POSTGRES_DB".into(), "shop".into())]),
            secrets: vec!["POSTGRES_PASSWORD".into()],
            publish: Some(Publish {
                container: 5432,
                host: 41001,
            }),
            resources: Resources {
                memory_bytes: Some(256 << 20),
                cpus: Some(0.5),
                pids: Some(256),
            },
            volumes: vec![VolumeMount::parse("pgdata:/var/lib/postgresql/data").expect("a volume")],
            user: None,
            stop_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn labels_name_the_instance_and_read_back() {
        let labels = identity().labels();
        assert_eq!(labels[LABEL_PROJECT], "shop");
        assert_eq!(labels[LABEL_RELEASE], "r7");
        assert!(labels.keys().all(|k| k.starts_with(LABEL_PREFIX)));
        assert_eq!(Identity::from_labels(&labels), Some(identity()));
        let mut partial = labels;
        partial.remove(LABEL_INSTANCE);
        assert_eq!(Identity::from_labels(&partial), None);
    }

    #[test]
    fn names_are_scoped_by_project_and_environment() {
        assert_eq!(identity().container_name(), "gantry-shop-i3");
        assert_eq!(network_name("shop", "prod"), "gantry-shop-prod");
        assert_eq!(
            volume_name("shop", "prod", "pgdata"),
            "gantry-shop-prod-pgdata"
        );
    }

    #[test]
    fn create_body_publishes_on_loopback_only_and_limits_resources() {
        let body = spec().create_body(&BTreeMap::new());
        let host = body.host_config.expect("host config");
        let bindings = host.port_bindings.expect("port bindings");
        let binding = &bindings["5432/tcp"].as_ref().expect("a binding")[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("41001"));
        assert_eq!(body.exposed_ports, Some(vec!["5432/tcp".to_owned()]));
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_swap, Some(256 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(256));
        assert_eq!(
            host.restart_policy.and_then(|p| p.name),
            Some(RestartPolicyNameEnum::NO)
        );
    }

    #[test]
    fn a_service_without_a_port_publishes_nothing() {
        let mut spec = spec();
        spec.publish = None;
        let body = spec.create_body(&BTreeMap::new());
        assert_eq!(body.exposed_ports, None);
        assert_eq!(body.host_config.and_then(|h| h.port_bindings), None);
    }

    #[test]
    fn create_body_joins_the_project_network_under_the_service_name() {
        let body = spec().create_body(&BTreeMap::new());
        assert_eq!(
            body.host_config.and_then(|h| h.network_mode).as_deref(),
            Some("gantry-shop-prod")
        );
        let endpoints = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(
            endpoints["gantry-shop-prod"].aliases,
            Some(vec!["db".to_owned()])
        );
    }

    #[test]
    fn secrets_are_files_named_by_variables_never_values() {
        let files = BTreeMap::from([(
            "POSTGRES_PASSWORD".to_owned(),
            PathBuf::from("/var/lib/gantry/secrets/run/i3/POSTGRES_PASSWORD"),
        )]);
        let body = spec().create_body(&files);
        let env = body.env.expect("env");
        assert!(env.contains(&"POSTGRES_PASSWORD_FILE=/run/secrets/POSTGRES_PASSWORD".to_owned()));
        assert!(!env.iter().any(|e| e.starts_with("POSTGRES_PASSWORD=")));
        let mounts = body.host_config.and_then(|h| h.mounts).expect("mounts");
        let secret = mounts
            .iter()
            .find(|m| m.typ == Some(MountType::BIND))
            .expect("the secret's mount");
        assert_eq!(
            secret.target.as_deref(),
            Some("/run/secrets/POSTGRES_PASSWORD")
        );
        assert_eq!(secret.read_only, Some(true));
        let volume = mounts
            .iter()
            .find(|m| m.typ == Some(MountType::VOLUME))
            .expect("the volume's mount");
        assert_eq!(volume.source.as_deref(), Some("gantry-shop-prod-pgdata"));
    }

    #[test]
    fn volumes_are_named_with_an_absolute_target() {
        assert_eq!(
            VolumeMount::parse("pgdata:/var/lib/postgresql/data:ro"),
            Ok(VolumeMount {
                name: "pgdata".into(),
                target: "/var/lib/postgresql/data".into(),
                read_only: true,
            })
        );
        for (bad, says) in [
            ("pgdata", "NAME:/path"),
            ("./data:/srv", "host paths"),
            ("/srv/data:/srv", "host paths"),
            ("PgData:/x", "lowercase"),
            ("data:relative", "absolute"),
            ("data:/a/../etc", "absolute"),
            ("data:/x:z", "mount option"),
        ] {
            let error = VolumeMount::parse(bad).expect_err(bad);
            assert!(
                error.contains(says) && error.contains(bad),
                "{bad}: {error}"
            );
        }
    }
}
