//! The container driver's engine layer: the Docker Engine API over its Unix
//! socket (bollard), with the API version negotiated with the daemon (Docker
//! 20.10 speaks at most 1.41, Docker 29 refuses anything below 1.44) and
//! written into every request's path (`/v1.41/...`): bollard 0.21 leaves it
//! out over a Unix socket, and a daemon would answer in its newest API.
//! Podman's Docker-compatible socket is untested.
//!
//! One container per instance, labelled `dev.gantry.*` with project,
//! environment, service, release and instance (`Identity`); published on a
//! loopback port; one network per project and environment, where a
//! service's containers answer to the service's name; named volumes that
//! outlive containers; secrets as read-only files, never in the container's
//! environment (`secrets`). Images travel without a registry as layer blobs
//! (`image`).
//!
//! This module knows Docker and nothing of the agent's store or deploys:
//! the caller decides what runs; it never starts a container it was not
//! asked to, and removes only containers it is named.

mod engine;
pub mod image;
pub mod secrets;
mod settle;
#[cfg(test)]
mod ship_tests;
mod spec;

use std::path::PathBuf;

pub use engine::{ContainerState, Engine, ExecOutcome, LogLine, LogStream, MIN_API_VERSION};
pub use secrets::{Owner, SecretValue};
pub use settle::Settle;
pub use spec::{
    ContainerSpec, Identity, LABEL_AGENT, LABEL_ENVIRONMENT, LABEL_INSTANCE, LABEL_PREFIX,
    LABEL_PROJECT, LABEL_RELEASE, LABEL_SERVICE, LABEL_VOLUME, Publish, Resources, SECRETS_DIR,
    VolumeMount, container_name, network_name, volume_name,
};

/// What can go wrong talking to Docker, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot reach the Docker engine at {socket}: {message}")]
    Unreachable { socket: PathBuf, message: String },
    #[error(
        "the Docker engine speaks API {found}, older than {minimum}: upgrade Docker (Debian 12's docker.io is new enough)"
    )]
    TooOld { found: String, minimum: String },
    #[error("docker {action} {target}: {message}")]
    Engine {
        action: &'static str,
        target: String,
        message: String,
    },
    #[error(
        "no image {image} on this host: ship it with the deploy, or pull it where a registry answers"
    )]
    NoImage { image: String },
    #[error("container user `{user}`: {why}")]
    UnknownUser { user: String, why: String },
    #[error("secret {name} has no value: set it with `gantry secrets set {name}`")]
    MissingSecret { name: String },
    #[error("secret {name} is longer than {} bytes", secrets::MAX_SECRET_BYTES)]
    SecretTooLarge { name: String },
    #[error("secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image archive: {0}")]
    Archive(String),
}

impl ContainerError {
    fn engine(
        action: &'static str,
        target: impl Into<String>,
        error: bollard::errors::Error,
    ) -> Self {
        ContainerError::Engine {
            action,
            target: target.into(),
            message: describe(&error),
        }
    }
}

/// The daemon's own message where it sent one (a status code alone says little).
fn describe(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

/// Whether an error is the daemon saying the object does not exist.
fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
