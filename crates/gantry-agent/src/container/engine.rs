//! `Engine`: the Docker operations the container driver needs, each one
//! request (or one stream) to the daemon, with errors that say which
//! object and what the daemon answered.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use bollard::models::{ImageInspect, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::{Stream, StreamExt};

use super::lifecycle;
use super::secrets::{self, SecretValue};
use super::spec::{self, ContainerSpec, Identity};
use super::{ContainerError, describe, is_not_found};

/// The oldest Engine API spoken: Docker 20.10's (Debian 12).
pub const MIN_API_VERSION: (usize, usize) = (1, 41);

/// How long one request may take (a stop waits its own timeout beyond this).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The most of a health command's output kept.
const EXEC_OUTPUT_MAX: usize = 16 * 1024;

/// A handle on one Docker engine.
#[derive(Clone)]
pub struct Engine {
    pub(super) docker: Docker,
    /// Where containers' secret files live (a directory of the agent's state).
    secrets_root: PathBuf,
    /// The `dev.gantry.agent` label of the containers this engine makes and lists.
    owner: String,
    api_version: String,
    /// Whom containers of an image run as, by (image id, user): an image's
    /// files never change, so its /etc/passwd is read once.
    owners: Arc<Mutex<HashMap<(String, String), secrets::Owner>>>,
    /// Held while a network is made: Docker's check for a name in use is
    /// not atomic, and two concurrent creates of one name both succeed
    /// (seen with Docker 28), leaving a name no container can join.
    making_network: Arc<tokio::sync::Mutex<()>>,
}

/// The most owners [`Engine`] keeps before it forgets them all.
const OWNERS_KEPT: usize = 256;

/// A container as the engine reports it.
#[derive(Debug, Clone)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    /// `None` for a container whose labels are not all Gantry's.
    pub identity: Option<Identity>,
    pub running: bool,
    pub exit_code: Option<i64>,
    /// The loopback port the container is published on, if any.
    pub host_port: Option<u16>,
    /// The image's id (`sha256:...`) the container runs.
    pub image_id: Option<String>,
    /// Its address on its first network (inspect only).
    pub address: Option<std::net::IpAddr>,
}

/// A health command's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// `None` when the command outlived its timeout.
    pub exit_code: Option<i64>,
    /// stdout and stderr interleaved, at most 16 KiB.
    pub output: String,
}

/// One chunk of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stderr: bool,
    pub bytes: Vec<u8>,
}

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine, ContainerError>> + Send>>;

/// The request with its path under `prefix` (`/v1.41/containers/json`),
/// unless it already names a version.
fn versioned(request: bollard::BollardRequest, prefix: &str) -> bollard::BollardRequest {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    if !path.starts_with("/v1.") {
        let mut uri = parts.uri.clone().into_parts();
        if let Ok(with_version) = format!("{prefix}{path}").parse() {
            uri.path_and_query = Some(with_version);
            if let Ok(rewritten) = http::Uri::from_parts(uri) {
                parts.uri = rewritten;
            }
        }
    }
    bollard::BollardRequest::from_parts(parts, body)
}

impl Engine {
    /// The local Docker engine, for tests that need one (root and Docker):
    /// its secrets under `scratch`, its containers labelled `gantry-test`.
    #[cfg(test)]
    pub async fn for_test(scratch: &Path) -> Engine {
        Engine::connect(
            Path::new("/var/run/docker.sock"),
            &scratch.join("secrets"),
            "gantry-test",
        )
        .await
        .expect("the local Docker engine")
    }

    /// Connects to the daemon at `socket` and settles the API version: the
    /// daemon's own when it is older than bollard's, refused below 1.41.
    /// `owner` labels every container made, and only containers with it
    /// are listed and settled.
    pub async fn connect(
        socket: &Path,
        secrets_root: &Path,
        owner: &str,
    ) -> Result<Engine, ContainerError> {
        let unreachable = |message: String| ContainerError::Unreachable {
            socket: socket.to_owned(),
            message,
        };
        let path = socket
            .to_str()
            .ok_or_else(|| unreachable("the socket's path is not UTF-8".to_owned()))?;
        let docker =
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|e| unreachable(describe(&e)))?
                .negotiate_version()
                .await
                .map_err(|e| unreachable(describe(&e)))?;
        let version = docker.client_version();
        if (version.major_version, version.minor_version) < MIN_API_VERSION {
            return Err(ContainerError::TooOld {
                found: version.to_string(),
                minimum: format!("{}.{}", MIN_API_VERSION.0, MIN_API_VERSION.1),
            });
        }
        let api_version = version.to_string();
        // bollard 0.21 sends unversioned paths over a Unix socket (its URL
        // join drops the `/vX.Y` prefix), and a daemon answers those in its
        // own newest API, whatever was agreed: put the agreed version back.
        let prefix = format!("/v{api_version}");
        let docker = docker.with_request_modifier(move |request| versioned(request, &prefix));
        Ok(Engine {
            docker,
            secrets_root: secrets_root.to_owned(),
            owner: owner.to_owned(),
            api_version,
            owners: Arc::default(),
            making_network: Arc::default(),
        })
    }

    /// The API version agreed with the daemon (`1.41` on Docker 20.10).
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The project environment's network, made if missing. Idempotent, and
    /// safe against a concurrent maker.
    pub async fn ensure_network(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<String, ContainerError> {
        let name = spec::network_name(project, environment);
        // Every create asks: most find it made, without waiting on others.
        if self.docker.inspect_network(&name, None).await.is_ok() {
            return Ok(name);
        }
        let _making = self.making_network.lock().await;
        match self.docker.inspect_network(&name, None).await {
            Ok(_) => return Ok(name),
            Err(e) if is_not_found(&e) => {}
            // Made twice by an older agent (see `making_network`).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 400,
                message,
            }) if message.contains("ambiguous") => {
                self.keep_one_network(&name).await?;
                return Ok(name);
            }
            Err(e) => return Err(ContainerError::engine("inspect network", &name, e)),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([
                (spec::LABEL_PROJECT.to_owned(), project.to_owned()),
                (spec::LABEL_ENVIRONMENT.to_owned(), environment.to_owned()),
            ])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(name),
            // Made meanwhile by another deploy: it is there, as wanted.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(name),
            Err(e) => Err(ContainerError::engine("create network", &name, e)),
        }
    }

    /// Removes all but one of the networks named `name`: those no container
    /// uses, the oldest kept when none is used.
    async fn keep_one_network(&self, name: &str) -> Result<(), ContainerError> {
        let options = bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([("name".to_owned(), vec![name.to_owned()])])),
        };
        let listed = (self.docker.list_networks(Some(options)).await)
            .map_err(|e| ContainerError::engine("list networks", name, e))?;
        let mut same: Vec<(bool, String, String)> = Vec::new();
        for network in listed {
            let (Some(id), Some(created)) = (network.id, network.created) else {
                continue;
            };
            if network.name.as_deref() != Some(name) {
                continue;
            }
            let options = bollard::query_parameters::InspectNetworkOptions {
                verbose: false,
                scope: None,
            };
            let inspected = (self.docker.inspect_network(&id, Some(options)).await)
                .map_err(|e| ContainerError::engine("inspect network", name, e))?;
            let used = inspected.containers.is_some_and(|c| !c.is_empty());
            same.push((!used, created, id));
        }
        // Used first, then the oldest: the one kept.
        same.sort();
        for (_, _, id) in same.iter().skip(1) {
            if let Err(e) = self.docker.remove_network(id).await
                && !is_not_found(&e)
            {
                return Err(ContainerError::engine("remove network", name, e));
            }
        }
        Ok(())
    }

    /// The ids of the images every container on the engine was made from,
    /// whoever made it (another agent, or the user, shares the engine).
    pub async fn images_in_use(&self) -> Result<std::collections::HashSet<String>, ContainerError> {
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let summaries = (self.docker.list_containers(Some(options)).await)
            .map_err(|e| ContainerError::engine("list containers of", "the engine", e))?;
        Ok(summaries.into_iter().filter_map(|s| s.image_id).collect())
    }

    /// Removes the image reference `reference` (a tag): the image itself
    /// goes with its last tag, its layers with the last image using them.
    /// False when there was no such reference; refused (an error) while a
    /// container of this tag's image exists and this is its only tag. (A
    /// caller that must not take a tag a container runs from, even beside
    /// other tags, checks [`Engine::images_in_use`] first.)
    pub async fn untag(&self, reference: &str) -> Result<bool, ContainerError> {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::new()
            .force(false)
            .noprune(false)
            .build();
        match self
            .docker
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(ContainerError::engine("remove image", reference, e)),
        }
    }

    /// Removes the project environment's network (once no container uses it).
    pub async fn remove_network(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<(), ContainerError> {
        let name = spec::network_name(project, environment);
        match self.docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ContainerError::engine("remove network", &name, e)),
        }
    }

    /// The named volume, made if missing (Docker's create is idempotent).
    pub async fn ensure_volume(
        &self,
        project: &str,
        environment: &str,
        volume: &str,
    ) -> Result<String, ContainerError> {
        let name = spec::volume_name(project, environment, volume);
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(HashMap::from([
                (spec::LABEL_PROJECT.to_owned(), project.to_owned()),
                (spec::LABEL_ENVIRONMENT.to_owned(), environment.to_owned()),
                (spec::LABEL_VOLUME.to_owned(), volume.to_owned()),
            ])),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map_err(|e| ContainerError::engine("create volume", &name, e))?;
        Ok(name)
    }

    /// Removes a named volume and its data (a purge, never a deploy).
    pub async fn remove_volume(
        &self,
        project: &str,
        environment: &str,
        volume: &str,
    ) -> Result<(), ContainerError> {
        let name = spec::volume_name(project, environment, volume);
        match self
            .docker
            .remove_volume(
                &name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ContainerError::engine("remove volume", &name, e)),
        }
    }

    /// Creates (does not start) the container of `spec`: its network and
    /// volumes first, then the container, then its secret files, owned by
    /// the user the container runs as. Returns the container's id.
    pub async fn create(
        &self,
        spec: &ContainerSpec,
        secret_values: &BTreeMap<String, SecretValue>,
    ) -> Result<String, ContainerError> {
        let identity = &spec.identity;
        let name = identity.container_name();
        // What the container needs beside it, asked of the engine side by side.
        let volumes = spec.volumes.iter().map(|volume| {
            self.ensure_volume(&identity.project, &identity.environment, &volume.name)
        });
        let (image, _, _) = futures_util::future::try_join3(
            self.pull_if_absent(&spec.image),
            self.ensure_network(&identity.project, &identity.environment),
            futures_util::future::try_join_all(volumes),
        )
        .await?;
        let secret_dir = secrets::directory(&self.secrets_root, &name);
        let secret_files = if spec.secrets.is_empty() {
            BTreeMap::new()
        } else {
            secrets::prepare(&secret_dir, &spec.secrets)?
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let mut body = spec.create_body(&secret_files);
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(spec::LABEL_AGENT.to_owned(), self.owner.clone());
        }
        let clock = Instant::now();
        let created = self.docker.create_container(Some(options), body).await;
        lifecycle::add(clock);
        let created = match created {
            Ok(created) => created,
            Err(e) if is_not_found(&e) => {
                secrets::remove(&secret_dir);
                return Err(ContainerError::NoImage {
                    image: spec.image.clone(),
                });
            }
            Err(e) => {
                secrets::remove(&secret_dir);
                return Err(ContainerError::engine("create container", &name, e));
            }
        };
        if !secret_files.is_empty() {
            let filled = async {
                let owner = self.container_owner(&created.id, spec, &image).await?;
                secrets::fill(&secret_files, secret_values, owner)
            }
            .await;
            if let Err(e) = filled {
                let _ = self.remove(&name).await;
                return Err(e);
            }
        }
        Ok(created.id)
    }

    /// The uid and gid the container will run as: the spec's user, else the
    /// image's, resolved in the container's own /etc/passwd and /etc/group
    /// (once per image and user).
    async fn container_owner(
        &self,
        container: &str,
        spec: &ContainerSpec,
        image: &ImageInspect,
    ) -> Result<secrets::Owner, ContainerError> {
        let user = match &spec.user {
            Some(user) => user.clone(),
            None => image
                .config
                .as_ref()
                .and_then(|c| c.user.clone())
                .unwrap_or_default(),
        };
        let key = image.id.clone().map(|id| (id, user.clone()));
        let known =
            |owners: &HashMap<_, secrets::Owner>| key.as_ref().and_then(|k| owners.get(k).copied());
        if let Some(owner) = known(&self.owners.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(owner);
        }
        let (user_ref, group_ref) = secrets::parse_user(&user);
        let needs_names = matches!(user_ref, secrets::UserRef::Name(_))
            || group_ref.is_none()
            || matches!(group_ref, Some(secrets::UserRef::Name(_)));
        let (passwd, group) = if needs_names {
            // Two archive requests to the engine, side by side.
            futures_util::future::try_join(
                self.read_file(container, "/etc/passwd"),
                self.read_file(container, "/etc/group"),
            )
            .await?
        } else {
            (String::new(), String::new())
        };
        let owner = secrets::resolve_owner(&user, &passwd, &group)?;
        if let Some(key) = key {
            let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
            if owners.len() >= OWNERS_KEPT {
                owners.clear();
            }
            owners.insert(key, owner);
        }
        Ok(owner)
    }

    /// A small text file of a container's filesystem (empty when it has
    /// none): for /etc/passwd and /etc/group, at most 1 MiB.
    async fn read_file(&self, container: &str, path: &str) -> Result<String, ContainerError> {
        const MAX: usize = 1 << 20;
        let mut stream = self.docker.download_from_container(
            container,
            Some(DownloadFromContainerOptions {
                path: path.to_owned(),
            }),
        );
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if archive.len() + bytes.len() > MAX + 64 * 1024 {
                        return Err(ContainerError::Archive(format!(
                            "{path} in {container} is larger than {MAX} bytes"
                        )));
                    }
                    archive.extend_from_slice(&bytes);
                }
                Err(e) if is_not_found(&e) => return Ok(String::new()),
                Err(e) => return Err(ContainerError::engine("read", path, e)),
            }
        }
        let mut tar = tar::Archive::new(archive.as_slice());
        let entries = tar
            .entries()
            .map_err(|e| ContainerError::Archive(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ContainerError::Archive(e.to_string()))?;
            if entry.header().entry_type().is_file() {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text)
                    .map_err(|e| ContainerError::Archive(e.to_string()))?;
                return Ok(text);
            }
        }
        Ok(String::new())
    }

    pub async fn start(&self, container: &str) -> Result<(), ContainerError> {
        let clock = Instant::now();
        let started = self.docker.start_container(container, None).await;
        lifecycle::add(clock);
        match started {
            Ok(()) => Ok(()),
            // Already running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(ContainerError::engine("start", container, e)),
        }
    }

    /// Stops gracefully: SIGTERM (or the image's stop signal), then SIGKILL
    /// after `timeout`. A stopped or missing container is already stopped.
    /// Whether it was running.
    pub async fn stop(&self, container: &str, timeout: Duration) -> Result<bool, ContainerError> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        // The request lasts as long as the stop: give it the timeout on top.
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS) + timeout);
        let clock = Instant::now();
        let stopped = docker.stop_container(container, Some(options)).await;
        lifecycle::add(clock);
        match stopped {
            Ok(()) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(false),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(ContainerError::engine("stop", container, e)),
        }
    }

    /// Removes the container named `name` (killing it if it still runs)
    /// and its secret files; its named volumes stay. A missing container is
    /// removed. Whether there was one.
    pub async fn remove(&self, name: &str) -> Result<bool, ContainerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        let clock = Instant::now();
        let removed = match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => {
                // Only a removal that removes something counts: the look
                // for a leftover before a create is the agent's own care.
                lifecycle::add(clock);
                true
            }
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(ContainerError::engine("remove", name, e)),
        };
        // Only a name that is one plain path component names a directory
        // under the secrets root (never the root itself, nor outside it).
        if matches!(
            Path::new(name).components().collect::<Vec<_>>().as_slice(),
            [std::path::Component::Normal(_)]
        ) {
            secrets::remove(&secrets::directory(&self.secrets_root, name));
        }
        Ok(removed)
    }

    /// Waits until the container is not running and returns its exit
    /// code; `None` when there is no such container. Its log stream ending
    /// is no sign it exited: the daemon may not yet have recorded its end
    /// (an inspect then says running, exit code 0), and a stream can fail.
    pub async fn wait(&self, container: &str) -> Result<Option<i64>, ContainerError> {
        let options = WaitContainerOptions::default();
        let mut waiting = self.docker.wait_container(container, Some(options));
        match waiting.next().await {
            Some(Ok(exited)) => Ok(Some(exited.status_code)),
            // bollard reports a non-zero exit as an error.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Ok(Some(code))
            }
            Some(Err(e)) if is_not_found(&e) => Ok(None),
            Some(Err(e)) => Err(ContainerError::engine("wait for", container, e)),
            None => Err(ContainerError::Engine {
                action: "wait for",
                target: container.to_owned(),
                message: "the engine ended the wait without an exit code".to_owned(),
            }),
        }
    }

    /// The container's state; `None` when there is no such container.
    pub async fn inspect(&self, container: &str) -> Result<Option<ContainerState>, ContainerError> {
        let response = match self.docker.inspect_container(container, None).await {
            Ok(response) => response,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(ContainerError::engine("inspect", container, e)),
        };
        let labels = response
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let host_port = response
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
            .and_then(|ports| {
                ports.values().flatten().flatten().find_map(|binding| {
                    (binding.host_ip.as_deref() == Some("127.0.0.1"))
                        .then(|| binding.host_port.as_deref()?.parse().ok())
                        .flatten()
                })
            });
        let state = response.state.as_ref();
        Ok(Some(ContainerState {
            id: response.id.clone().unwrap_or_default(),
            name: response
                .name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            identity: Identity::from_labels(&labels),
            running: state.and_then(|s| s.running).unwrap_or(false),
            exit_code: state.and_then(|s| s.exit_code),
            host_port,
            image_id: response.image.clone(),
            address: response
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .and_then(|networks| {
                    networks
                        .values()
                        .find_map(|n| n.ip_address.as_deref()?.parse().ok())
                }),
        }))
    }

    /// The id (`sha256:...`) of the image `reference` names on this host;
    /// `None` when the host has no such image.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, ContainerError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ContainerError::engine("inspect image", reference, e)),
        }
    }

    /// The host pid of the container's main process; `None` when it is not running.
    pub async fn main_pid(&self, container: &str) -> Result<Option<u32>, ContainerError> {
        match self.docker.inspect_container(container, None).await {
            Ok(response) => Ok(response
                .state
                .and_then(|s| s.pid)
                .and_then(|pid| u32::try_from(pid).ok())
                .filter(|pid| *pid > 0)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ContainerError::engine("inspect", container, e)),
        }
    }

    /// Every container of `project` this engine's owner made (running or
    /// not), by their labels.
    pub async fn list(&self, project: &str) -> Result<Vec<ContainerState>, ContainerError> {
        self.list_labelled(vec![format!("{}={project}", spec::LABEL_PROJECT)], project)
            .await
    }

    /// Every container of every project this engine's owner made.
    pub async fn list_all(&self) -> Result<Vec<ContainerState>, ContainerError> {
        self.list_labelled(vec![spec::LABEL_PROJECT.to_owned()], "all projects")
            .await
    }

    async fn list_labelled(
        &self,
        mut labels: Vec<String>,
        project: &str,
    ) -> Result<Vec<ContainerState>, ContainerError> {
        labels.push(format!("{}={}", spec::LABEL_AGENT, self.owner));
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| ContainerError::engine("list containers of", project, e))?;
        Ok(summaries
            .into_iter()
            .map(|summary| {
                let labels = summary.labels.clone().unwrap_or_default();
                ContainerState {
                    id: summary.id.clone().unwrap_or_default(),
                    name: summary
                        .names
                        .as_ref()
                        .and_then(|n| n.first())
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    identity: Identity::from_labels(&labels),
                    running: summary.state
                        == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
                    exit_code: None,
                    host_port: summary.ports.as_ref().and_then(|ports| {
                        ports
                            .iter()
                            .find(|p| p.ip.as_deref() == Some("127.0.0.1"))
                            .and_then(|p| p.public_port)
                    }),
                    image_id: summary.image_id.clone(),
                    address: None,
                }
            })
            .collect())
    }

    /// The container's output: the last `tail` lines (`None`: all), then
    /// (with `follow`) what it writes until it stops.
    pub fn logs(&self, container: &str, tail: Option<usize>, follow: bool) -> LogStream {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
            ..Default::default()
        };
        let target = container.to_owned();
        let stream = self
            .docker
            .logs(container, Some(options))
            .filter_map(move |item| {
                let line = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok(LogLine {
                            stderr: false,
                            bytes: message.to_vec(),
                        }))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(Ok(LogLine {
                        stderr: true,
                        bytes: message.to_vec(),
                    })),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(ContainerError::engine("logs", target.clone(), e))),
                };
                std::future::ready(line)
            });
        Box::pin(stream)
    }

    /// Memory in use, as `docker stats` counts it (the page cache that can
    /// be reclaimed left out); `None` when the container is not running.
    /// A one-shot sample can come back without memory (seen under load);
    /// then one full sample, which waits for the engine's next reading.
    pub async fn memory(&self, container: &str) -> Result<Option<u64>, ContainerError> {
        for one_shot in [true, false] {
            let options = StatsOptions {
                stream: false,
                one_shot,
            };
            let mut stream = self.docker.stats(container, Some(options));
            let stats = match stream.next().await {
                None => return Ok(None),
                Some(Err(e)) if is_not_found(&e) => return Ok(None),
                Some(Err(e)) => return Err(ContainerError::engine("stats", container, e)),
                Some(Ok(stats)) => stats,
            };
            let Some(memory) = stats.memory_stats else {
                continue;
            };
            let Some(usage) = memory.usage else {
                continue;
            };
            let detail = memory.stats.unwrap_or_default();
            // cgroup v1 reports total_inactive_file, v2 inactive_file.
            let inactive = detail
                .get("total_inactive_file")
                .or_else(|| detail.get("inactive_file"))
                .copied()
                .unwrap_or(0);
            return Ok(Some(usage.saturating_sub(inactive)));
        }
        Ok(None)
    }

    /// Runs `command` inside the running container (a health check): its
    /// exit code and the start of its output, or `None` when it outlived
    /// `timeout`, and then it is killed (checks that hang would pile up).
    pub async fn exec(
        &self,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutcome, ContainerError> {
        let (exec, started) = self.start_exec(container, command, false).await?;
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = started
        {
            let collect = async {
                while let Some(chunk) = stream.next().await {
                    let Ok(chunk) = chunk else { break };
                    let bytes = chunk.into_bytes();
                    let room = EXEC_OUTPUT_MAX.saturating_sub(output.len());
                    output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            };
            if tokio::time::timeout(timeout, collect).await.is_err() {
                if let Err(e) = self.kill_exec(container, &exec).await {
                    tracing::warn!(container, error = %e, "cannot kill a check past its timeout");
                }
                return Ok(ExecOutcome {
                    exit_code: None,
                    output: String::from_utf8_lossy(&output).into_owned(),
                });
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec)
            .await
            .map_err(|e| ContainerError::engine("inspect exec in", container, e))?;
        Ok(ExecOutcome {
            exit_code: inspected.exit_code,
            output: String::from_utf8_lossy(&output).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::versioned;

    fn request(uri: &str) -> bollard::BollardRequest {
        http::Request::builder()
            .uri(uri)
            .body(bollard::body_full(bytes::Bytes::new()))
            .expect("a request")
    }

    #[test]
    fn requests_carry_the_agreed_api_version() {
        let sent = versioned(
            request("unix://2f72756e/containers/json?all=true"),
            "/v1.41",
        );
        assert_eq!(
            sent.uri().path_and_query().map(|pq| pq.as_str()),
            Some("/v1.41/containers/json?all=true")
        );
        let already = versioned(request("unix://2f72756e/v1.44/version"), "/v1.41");
        assert_eq!(already.uri().path(), "/v1.44/version");
    }
}
