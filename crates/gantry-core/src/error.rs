//! Every error a use-case can return, with its stable code, its exit class and
//! a hint. The table in `CODES` is the list the docs print; a test keeps the
//! docs and this table in step.

use std::path::PathBuf;

use gantry_config::Diagnostics;

/// Exit codes, by class of failure. Documented in README.md; never renumbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitClass {
    /// A bug or an unexpected condition inside Gantry.
    Internal = 1,
    /// The command line was wrong.
    Usage = 2,
    /// The configuration or other input was invalid.
    Invalid = 3,
    /// The state on disk or on a host conflicts with the request.
    Conflict = 4,
    /// A host could not be reached.
    Unreachable = 5,
    /// The operation was attempted and failed.
    Failed = 6,
}

impl ExitClass {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Every error code, its exit class and what it means.
pub const CODES: &[(&str, ExitClass, &str)] = &[
    (
        "internal",
        ExitClass::Internal,
        "a bug in Gantry; please report it",
    ),
    (
        "usage",
        ExitClass::Usage,
        "the command line is wrong: an unknown flag, a missing argument",
    ),
    (
        "config.not_found",
        ExitClass::Invalid,
        "no gantry.toml where one was looked for",
    ),
    (
        "config.read_failed",
        ExitClass::Invalid,
        "gantry.toml exists but cannot be read",
    ),
    (
        "config.invalid",
        ExitClass::Invalid,
        "gantry.toml has errors; each is listed under `errors`",
    ),
    (
        "config.unknown_environment",
        ExitClass::Invalid,
        "--env names no environment of the project",
    ),
    (
        "init.exists",
        ExitClass::Conflict,
        "gantry init would overwrite an existing gantry.toml",
    ),
    (
        "output.exists",
        ExitClass::Conflict,
        "the output directory holds files Gantry did not write",
    ),
    (
        "io.failed",
        ExitClass::Failed,
        "reading or writing a file failed",
    ),
    (
        "proxy.failed",
        ExitClass::Failed,
        "the proxy could not start or stopped with an error",
    ),
    (
        "proxy.off",
        ExitClass::Conflict,
        "the agent runs no proxy (started with --proxy-listen off)",
    ),
    (
        "proxy.restart_failed",
        ExitClass::Failed,
        "the new proxy process did not take over; the running one keeps serving",
    ),
    (
        "proxy.stop_failed",
        ExitClass::Failed,
        "the proxy did not exit in time after it was asked to stop",
    ),
    (
        "tls.local_ca_failed",
        ExitClass::Failed,
        "the proxy's local CA could not be made or read (the message names the file)",
    ),
    (
        "agent.unreachable",
        ExitClass::Unreachable,
        "no agent answers on the host, and none could be started",
    ),
    (
        "host.unreachable",
        ExitClass::Unreachable,
        "SSH cannot reach the host: no route, refused, timed out, or the name does not resolve",
    ),
    (
        "host.auth_refused",
        ExitClass::Unreachable,
        "the host refused every SSH key offered",
    ),
    (
        "host.key_changed",
        ExitClass::Unreachable,
        "the host's SSH key differs from the one in known_hosts",
    ),
    (
        "host.key_unknown",
        ExitClass::Unreachable,
        "a host key on the way (often a ProxyJump host's) is not in known_hosts and SSH may not ask",
    ),
    (
        "host.gantry_missing",
        ExitClass::Unreachable,
        "SSH works but the host has no gantry binary; `gantry configure` installs it",
    ),
    (
        "agent.incompatible",
        ExitClass::Conflict,
        "the host's agent runs a gantry version this CLI cannot talk to",
    ),
    (
        "state.corrupt",
        ExitClass::Invalid,
        "a file under .gantry/state is not what Gantry wrote",
    ),
    (
        "env.locked",
        ExitClass::Conflict,
        "another gantry command is changing the environment; the error names it",
    ),
    (
        "env.state",
        ExitClass::Conflict,
        "the environment is not in a state that allows the command (destroyed, not destroyed yet, unknown)",
    ),
    (
        "configure.failed",
        ExitClass::Failed,
        "a step of `gantry configure` failed on a host; the error names the host and the step",
    ),
    (
        "deploy.locked",
        ExitClass::Conflict,
        "another deploy of the project (on the host, or of the whole environment) holds its lock; the error names it",
    ),
    (
        "agent.locked",
        ExitClass::Conflict,
        "another agent already runs on this state directory",
    ),
    (
        "agent.protocol",
        ExitClass::Failed,
        "the agent answered something that is not its API (a version mismatch?)",
    ),
    (
        "agent.error",
        ExitClass::Failed,
        "the agent failed to do what was asked; the message says why",
    ),
    (
        "agent.store",
        ExitClass::Failed,
        "the agent's SQLite store failed",
    ),
    (
        "build.failed",
        ExitClass::Failed,
        "a service's build command failed",
    ),
    (
        "secrets.missing",
        ExitClass::Invalid,
        "a secret a service needs is not set",
    ),
    (
        "secrets.failed",
        ExitClass::Failed,
        "the agent could not store the secrets file",
    ),
    (
        "test.probe_failed",
        ExitClass::Unreachable,
        "a route did not answer an HTTP request through the host's proxy",
    ),
    (
        "internal.bug",
        ExitClass::Failed,
        "Gantry itself failed (a thread panicked); please report it with the message",
    ),
    (
        "deploy.unsupported",
        ExitClass::Invalid,
        "the environment needs something this version cannot do yet",
    ),
    (
        "deploy.failed",
        ExitClass::Failed,
        "a service's new instances did not become healthy; it kept its previous release",
    ),
    (
        "deploy.project_mismatch",
        ExitClass::Invalid,
        "a deploy request was sent to another project's path",
    ),
    (
        "request.invalid",
        ExitClass::Invalid,
        "the agent refused a name in the request (project, service, secret or variable): it breaks the config's naming rules",
    ),
    (
        "request.too_large",
        ExitClass::Invalid,
        "a JSON request to the agent is over its 16 MiB limit (files go as blobs, which have none)",
    ),
    (
        "secrets.invalid",
        ExitClass::Invalid,
        "a secret's value has a line break or NUL, or is written into a `run` command (where `ps` shows it); the message says which",
    ),
    (
        "routes.refused",
        ExitClass::Invalid,
        "the deploy's routes would make the proxy refuse the host's route table (a host and path routed twice); nothing changed",
    ),
    (
        "routes.taken",
        ExitClass::Conflict,
        "a route's host belongs to another project on the host (the first to route it, or `*.<project>.localhost`); the error names it",
    ),
    (
        "release.exists",
        ExitClass::Conflict,
        "the release id the deploy would take is already recorded for the project",
    ),
    (
        "artifact.incomplete",
        ExitClass::Failed,
        "the host lacks files of the artifact",
    ),
    (
        "artifact.checksum",
        ExitClass::Failed,
        "an uploaded file did not match its checksum",
    ),
    (
        "artifact.offset_mismatch",
        ExitClass::Conflict,
        "a resumed upload named another offset than the bytes the host holds; ask for the missing blobs again",
    ),
    (
        "artifact.failed",
        ExitClass::Failed,
        "the agent could not unpack the artifact",
    ),
    (
        "test.failed",
        ExitClass::Failed,
        "`gantry test` found a failing check; error.details has every check",
    ),
    (
        "exec.failed",
        ExitClass::Failed,
        "`gantry exec` could not start the command on the host",
    ),
    (
        "exec.refused",
        ExitClass::Conflict,
        "`gantry agent exec` refused the agent's answer: its socket is served by another user than the state directory's owner, or it named files outside the project's",
    ),
    (
        "service.not_deployed",
        ExitClass::Invalid,
        "the service runs no release on the host (`gantry exec`)",
    ),
    (
        "release.not_found",
        ExitClass::Invalid,
        "no release has that id or number",
    ),
    (
        "release.none_before",
        ExitClass::Conflict,
        "there is no earlier successful release to roll back to",
    ),
    (
        "release.artifact_gone",
        ExitClass::Conflict,
        "the files of that release are no longer kept",
    ),
    (
        "service.not_found",
        ExitClass::Invalid,
        "the project runs no service of that name",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] gantry_config::Error),
    #[error("{path} already exists")]
    InitExists { path: PathBuf },
    #[error("{dir} is not empty and was not written by `gantry render`")]
    OutputExists { dir: PathBuf },
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error("the build of `{service}` failed: `{command}` {status}")]
    BuildFailed {
        service: String,
        command: String,
        status: String,
    },
    #[error("secret{} {} not set", if names.len() == 1 { "" } else { "s" }, names.join(", "))]
    MissingSecrets { names: Vec<String> },
    #[error("{what}")]
    Unsupported { what: String, hint: String },
    #[error("http://{name}/ through {proxy}: {message}")]
    ProbeFailed {
        name: String,
        proxy: String,
        message: String,
    },
    #[error("{what}: a bug in Gantry")]
    Internal { what: String },
    #[error("release {release} failed: {reason}")]
    DeployFailed {
        release: String,
        reason: String,
        log_tail: Vec<String>,
        report: Box<serde_json::Value>,
    },
    #[error("{} check{} failed: {}", failed.len(), if failed.len() == 1 { "" } else { "s" }, failed.join("; "))]
    TestFailed {
        failed: Vec<String>,
        report: Box<serde_json::Value>,
    },
    #[error("{} is damaged: {message}", path.display())]
    StateCorrupt { path: PathBuf, message: String },
    #[error("environment `{environment}` is busy: {holder} holds {}", path.display())]
    EnvLocked {
        environment: String,
        holder: String,
        path: PathBuf,
    },
    #[error("environment `{environment}` {problem}")]
    EnvState {
        environment: String,
        problem: String,
        hint: String,
    },
    #[error("configuring {host} failed at `{step}`: {message}")]
    ConfigureFailed {
        host: String,
        step: String,
        message: String,
    },
    /// `gantry agent exec` did not run the command: `refused` when what it
    /// found is not to be trusted (`exec.refused`), else `exec.failed`.
    #[error("{message}")]
    Exec {
        refused: bool,
        message: String,
        hint: Option<String>,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(e) => match e {
                gantry_config::Error::NotFound { .. } => "config.not_found",
                gantry_config::Error::Read { .. } => "config.read_failed",
                gantry_config::Error::Invalid(_) => "config.invalid",
                gantry_config::Error::UnknownEnvironment { .. } => "config.unknown_environment",
            },
            Error::Host(crate::host::HostError::Unreachable { .. }) => "agent.unreachable",
            Error::Host(crate::host::HostError::Protocol { .. }) => "agent.protocol",
            Error::Host(crate::host::HostError::Ssh { failure, .. }) => failure.code(),
            Error::Host(crate::host::HostError::Incompatible { .. }) => "agent.incompatible",
            Error::Host(crate::host::HostError::WrongPeer { .. }) => "exec.refused",
            Error::Exec { refused: true, .. } => "exec.refused",
            Error::Exec { refused: false, .. } => "exec.failed",
            Error::Host(crate::host::HostError::Api { error, .. }) => CODES
                .iter()
                .map(|(code, _, _)| *code)
                .find(|code| *code == error.code)
                .unwrap_or("agent.error"),
            Error::BuildFailed { .. } => "build.failed",
            Error::MissingSecrets { .. } => "secrets.missing",
            Error::Unsupported { .. } => "deploy.unsupported",
            Error::ProbeFailed { .. } => "test.probe_failed",
            Error::Internal { .. } => "internal.bug",
            Error::DeployFailed { .. } => "deploy.failed",
            Error::InitExists { .. } => "init.exists",
            Error::OutputExists { .. } => "output.exists",
            Error::Io { .. } => "io.failed",
            Error::StateCorrupt { .. } => "state.corrupt",
            Error::TestFailed { .. } => "test.failed",
            Error::EnvLocked { .. } => "env.locked",
            Error::EnvState { .. } => "env.state",
            Error::ConfigureFailed { .. } => "configure.failed",
        }
    }

    pub fn exit_class(&self) -> ExitClass {
        if let Error::Host(crate::host::HostError::Api { status, error }) = self
            && !CODES.iter().any(|(c, _, _)| *c == error.code)
        {
            return match status {
                404 | 422 | 400 => ExitClass::Invalid,
                409 => ExitClass::Conflict,
                _ => ExitClass::Failed,
            };
        }
        let code = self.code();
        CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or(ExitClass::Internal, |(_, class, _)| *class)
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Config(e) => e.hint(),
            Error::InitExists { .. } => {
                Some("edit the existing file, or pass --force to replace it".to_owned())
            }
            Error::OutputExists { .. } => {
                Some("choose an empty or new directory for --out, or remove this one".to_owned())
            }
            Error::Io { .. } => None,
            Error::StateCorrupt { .. } => Some(
                "it is Gantry's record of the environment: fix the JSON, or remove the file and run `gantry configure` again".to_owned(),
            ),
            Error::EnvLocked { .. } => Some(
                "wait for that command to finish; if it is gone from another machine, remove the lock file".to_owned(),
            ),
            Error::EnvState { hint, .. } => Some(hint.clone()),
            Error::ConfigureFailed { .. } => Some(
                "fix what the message says, then run `gantry configure` again: it is safe to re-run".to_owned(),
            ),
            Error::Host(crate::host::HostError::Unreachable { hint, .. }) => Some(hint.clone()),
            Error::Host(crate::host::HostError::Api { error, .. }) => error.hint.clone(),
            Error::Host(crate::host::HostError::Ssh { hint, .. }) => {
                Some(hint.clone()).filter(|h| !h.is_empty())
            }
            Error::Host(crate::host::HostError::Incompatible { cli, .. }) => Some(format!(
                "install gantry {cli} on the host with `gantry configure`, or use the gantry version the host runs"
            )),
            Error::Host(crate::host::HostError::WrongPeer { .. }) => Some(
                "something other than this host's agent answers on its socket: check who runs it and who owns the state directory".to_owned(),
            ),
            Error::Exec { hint, .. } => hint.clone(),
            Error::Host(crate::host::HostError::Protocol { .. }) => Some(
                "check that the gantry binary and the agent are the same version".to_owned(),
            ),
            Error::BuildFailed { .. } => Some("its output is above; fix the build and deploy again".to_owned()),
            Error::MissingSecrets { .. } => Some(
                "set them in the environment of this command, or as NAME=value lines in .gantry/secrets.env (mode 0600)".to_owned(),
            ),
            Error::Unsupported { hint, .. } => Some(hint.clone()),
            Error::ProbeFailed { .. } => Some(
                "`gantry status` says whether the service is live; `gantry logs` shows its output".to_owned(),
            ),
            Error::Internal { .. } => {
                Some("please report it, with this message and what you ran".to_owned())
            }
            Error::TestFailed { .. } => Some(
                "each check's detail is in the report (`--output json`: error.details); `gantry status` and `gantry logs` say more".to_owned(),
            ),
            Error::DeployFailed { log_tail, .. } => Some(if log_tail.is_empty() {
                "see `gantry logs` for the service's output".to_owned()
            } else {
                format!("the service's last output:\n  {}", log_tail.join("\n  "))
            }),
        }
    }

    /// More about the error, for the JSON form: the deploy report of a failed deploy.
    pub fn details(&self) -> Option<&serde_json::Value> {
        match self {
            Error::DeployFailed { report, .. } | Error::TestFailed { report, .. } => Some(report),
            _ => None,
        }
    }

    /// The per-location errors of an invalid gantry.toml.
    pub fn diagnostics(&self) -> Option<&Diagnostics> {
        match self {
            Error::Config(gantry_config::Error::Invalid(d)) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_dotted_lowercase() {
        let mut seen = std::collections::HashSet::new();
        for (code, _, about) in CODES {
            assert!(seen.insert(code), "{code} listed twice");
            assert!(
                code.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{code}"
            );
            assert!(!about.is_empty());
        }
    }
}
