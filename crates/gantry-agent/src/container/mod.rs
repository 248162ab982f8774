//! The container driver's engine layer: the Docker Engine API over its Unix
//! socket (bollard), with the API version negotiated with the daemon (Docker
//! 20.10 speaks at most 1.41, Docker 29 refuses anything below 1.44) and
//! written into every request's path (`/v1.41/...`): bollard 0.21 leaves it
//! out over a Unix socket, and a daemon would answer in its newest API.
//! Podman's Docker-compatible socket works too (tests/container_podman.rs).
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

mod dump;
mod engine;
pub mod image;
pub mod lifecycle;
pub mod secrets;
mod settle;
#[cfg(test)]
mod ship_tests;
mod spec;

use std::path::PathBuf;

pub use dump::Piped;
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
    #[error(
        "no image {image} on this host, and its registry did not give it: {message}: ship it with the deploy (build or pull it on your machine), or make the registry reachable from the host"
    )]
    PullFailed { image: String, message: String },
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
    /// The stable code of what went wrong, which a failed deploy's reason
    /// ends with (`[container.no_image]`).
    pub fn code(&self) -> gantry_core::Code {
        use gantry_core::Code;
        match self {
            ContainerError::Unreachable { .. } => Code::ContainerUnreachable,
            ContainerError::TooOld { .. } => Code::ContainerTooOld,
            ContainerError::Engine { .. } => Code::ContainerEngine,
            ContainerError::NoImage { .. } | ContainerError::PullFailed { .. } => {
                Code::ContainerNoImage
            }
            ContainerError::UnknownUser { .. } => Code::ContainerUser,
            ContainerError::MissingSecret { .. }
            | ContainerError::SecretTooLarge { .. }
            | ContainerError::SecretFile { .. } => Code::ContainerSecret,
            ContainerError::Archive(_) => Code::ContainerArchive,
        }
    }

    /// The error with its code, as a deploy's reason says it.
    pub fn coded(&self) -> String {
        format!("{self} [{}]", self.code())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_container_error_has_its_own_code() {
        let errors = [
            ContainerError::Unreachable {
                socket: "/var/run/docker.sock".into(),
                message: "no such file".into(),
            },
            ContainerError::TooOld {
                found: "1.40".into(),
                minimum: "1.41".into(),
            },
            ContainerError::Engine {
                action: "start",
                target: "c".into(),
                message: "boom".into(),
            },
            ContainerError::NoImage {
                image: "redis:7".into(),
            },
            ContainerError::UnknownUser {
                user: "app".into(),
                why: "not in /etc/passwd".into(),
            },
            ContainerError::MissingSecret {
                name: "TOKEN".into(),
            },
            ContainerError::Archive("short".into()),
        ];
        let codes: std::collections::BTreeSet<&str> =
            errors.iter().map(|e| e.code().as_str()).collect();
        assert_eq!(codes.len(), errors.len(), "{codes:?}");
        assert!(codes.iter().all(|c| c.starts_with("container.")));
        assert!(errors[3].coded().ends_with("[container.no_image]"));
    }
}
