//! A host as the use-cases see it: an agent that answers the `/v1` API.
//! `gantry-remote` implements it for this machine (a Unix socket) and for
//! hosts over SSH; the use-cases never know which.

use std::io::Write;
use std::path::Path;

use crate::error::Code;

use crate::agent_api::{
    AgentInfo, ApiError, BackupInfo, BackupList, BackupRestored, BlobList, DeployRequest,
    DeployResult, ExecSpec, ImageLoaded, ImageManifest, LockGrant, LockHolder, LockRelease,
    LockRequest, LogLine, ProxyAction, ProxyInfo, Release, RollbackRequest, ServiceSelector,
    Status,
};

/// Which log lines to read.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub service: Option<String>,
    /// Only lines at or after this Unix time in milliseconds.
    pub since_ms: Option<u64>,
    pub tail: Option<usize>,
    pub follow: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No agent answers.
    #[error("cannot reach the agent on {host}: {message}")]
    Unreachable {
        host: String,
        message: String,
        hint: String,
    },
    /// The agent answered with an error. `code` is its code when this
    /// version of Gantry knows it; a newer agent's code is `None`, reported as
    /// `agent.error` with the agent's code in the message. Made by
    /// [`HostError::api`].
    #[error("{}{}", .error.message, unknown_code_note(*.code, &.error.code))]
    Api {
        status: u16,
        code: Option<Code>,
        error: ApiError,
    },
    /// The agent answered something that is not the API.
    #[error("the agent on {host} answered something unexpected: {message}")]
    Protocol { host: String, message: String },
    /// SSH could not get to the host's agent.
    #[error("{host}: {}: {message}", .failure.describe())]
    Ssh {
        host: String,
        failure: SshFailure,
        message: String,
        hint: String,
    },
    /// Something other than the agent's user answers on its socket (checked
    /// only where the CLI says whom to expect: `gantry agent exec`).
    #[error("{} is served by uid {uid}, not by uid {expected} that owns the state directory: not its agent", .socket.display())]
    WrongPeer {
        socket: std::path::PathBuf,
        uid: u32,
        expected: u32,
    },
    /// The agent's version cannot serve this CLI.
    #[error("the agent on {host} runs gantry {agent}, this is gantry {cli}")]
    Incompatible {
        host: String,
        agent: String,
        cli: String,
    },
}

impl HostError {
    /// The agent's error answer `error`, with HTTP status `status`: its code
    /// read as a [`Code`] if this version of Gantry knows it.
    pub fn api(status: u16, error: ApiError) -> HostError {
        HostError::Api {
            status,
            code: Code::parse(&error.code),
            error,
        }
    }
}

/// What an agent error's message adds when its code is unknown here.
fn unknown_code_note(code: Option<Code>, sent: &str) -> String {
    match code {
        Some(_) => String::new(),
        None => format!(
            " (the agent's error code `{sent}` is unknown to this gantry, so it shows as `{}`)",
            Code::AgentError
        ),
    }
}

/// Why SSH failed, each with its own error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SshFailure {
    /// No route, refused, timed out, name unknown.
    Unreachable,
    /// The server refused every key offered.
    AuthRefused,
    /// The server's key is not the one recorded in known_hosts.
    HostKeyChanged,
    /// A key not in known_hosts that SSH may not ask about (a jump host's:
    /// OpenSSH gives a ProxyJump hop the config file, not our options).
    HostKeyUnknown,
    /// SSH worked, but there is no gantry on the host.
    GantryMissing,
}

impl SshFailure {
    pub fn code(self) -> Code {
        match self {
            SshFailure::Unreachable => Code::HostUnreachable,
            SshFailure::AuthRefused => Code::HostAuthRefused,
            SshFailure::HostKeyChanged => Code::HostKeyChanged,
            SshFailure::HostKeyUnknown => Code::HostKeyUnknown,
            SshFailure::GantryMissing => Code::HostGantryMissing,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SshFailure::Unreachable => "cannot reach the host over SSH",
            SshFailure::AuthRefused => "the host refused the SSH key",
            SshFailure::HostKeyChanged => "the host's SSH key has changed",
            SshFailure::HostKeyUnknown => "an SSH host key on the way is not known",
            SshFailure::GantryMissing => "gantry is not installed on the host",
        }
    }
}

/// Whether an agent of `version` serves this CLI: the same major and minor
/// version (the API is `/v1` throughout; fields are added in minor versions).
pub fn compatible(host: &str, version: &str) -> Result<(), HostError> {
    let cli = env!("CARGO_PKG_VERSION");
    let minor = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (minor(cli), minor(version)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => Err(HostError::Incompatible {
            host: host.to_owned(),
            agent: version.to_owned(),
            cli: cli.to_owned(),
        }),
    }
}

/// Connects to a host's agent. Shared by the threads that work on several hosts at once.
pub type Connect<'a> =
    &'a (dyn Fn(&crate::config::resolve::Host) -> Result<Box<dyn Host>, crate::Error> + Sync);

/// What an upload sends: the file at `path` from byte `offset` on, as the
/// blob `digest` (the agent holds the bytes before `offset`).
#[derive(Clone, Copy, Debug)]
pub struct BlobPart<'a> {
    pub digest: &'a str,
    pub path: &'a Path,
    pub offset: u64,
}

/// One backup a host keeps: backup `id` of `service` of `project`.
#[derive(Clone, Copy, Debug)]
pub struct BackupRef<'a> {
    pub project: &'a str,
    pub service: &'a str,
    pub id: &'a str,
}

pub trait Host {
    /// The host's name, as errors and reports show it.
    fn name(&self) -> &str;
    fn info(&self) -> Result<AgentInfo, HostError>;
    /// Which of `digests` the agent lacks, and how much of each it already
    /// holds from an interrupted upload (`BlobList::partial`).
    fn missing_blobs(&self, digests: &[String]) -> Result<BlobList, HostError>;
    /// Streams `part` to the agent. Adds the bytes that left to `sent`, also
    /// when the upload fails halfway.
    fn upload_blob(&self, part: BlobPart<'_>, sent: &mut u64) -> Result<(), HostError>;
    /// The blobs of `image` the host needs before `load_image`: none when
    /// its engine has the image; else the config and the layers its engine
    /// lacks, less what its blob store holds (with any partial copies).
    fn image_blobs_missing(&self, image: &ImageManifest) -> Result<BlobList, HostError>;
    /// Loads `image` into the host's engine from its uploaded blobs (or
    /// only tags it, when the engine has it) before a deploy runs it.
    fn load_image(&self, image: &ImageManifest) -> Result<ImageLoaded, HostError>;
    fn deploy(&self, request: &DeployRequest) -> Result<DeployResult, HostError>;
    fn rollback(&self, project: &str, request: &RollbackRequest)
    -> Result<DeployResult, HostError>;
    fn status(&self, project: &str) -> Result<Status, HostError>;
    fn releases(&self, project: &str) -> Result<Vec<Release>, HostError>;
    fn release(&self, project: &str, id: &str) -> Result<Release, HostError>;
    /// The files of an artifact the host keeps, and which of the project's
    /// secrets it holds with another value (`gantry plan`; changes nothing).
    fn compare(
        &self,
        project: &str,
        request: &crate::agent_api::CompareRequest,
    ) -> Result<crate::agent_api::Comparison, HostError>;
    /// Calls `sink` with each line until it returns false or the lines end.
    fn logs(
        &self,
        project: &str,
        query: &LogQuery,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), HostError>;
    fn stop(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError>;
    fn restart(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError>;
    /// Stops the agent; its services keep running.
    fn shutdown(&self) -> Result<(), HostError>;
    /// Takes the environment's deploy lock (held on one agent for the whole
    /// environment); `deploy.locked` names the holder when it is taken.
    fn lock(&self, project: &str, request: &LockRequest) -> Result<LockGrant, HostError>;
    /// Who holds `environment`'s deploy lock, if anyone.
    fn lock_holder(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<Option<LockHolder>, HostError>;
    fn unlock(&self, project: &str, request: &LockRelease) -> Result<(), HostError>;
    /// How to run a command as `service` runs, on this host.
    fn exec_spec(&self, project: &str, service: &str) -> Result<ExecSpec, HostError>;
    /// Runs a one-off task of release `id` (`migrate.post`) and keeps its
    /// phase, output included, in the release.
    fn run_task(
        &self,
        project: &str,
        id: &str,
        task: &crate::agent_api::Task,
    ) -> Result<crate::agent_api::Phase, HostError>;
    /// Restarts the host's reverse proxy by listener handoff, or stops it.
    fn proxy(&self, action: ProxyAction) -> Result<ProxyInfo, HostError>;
    /// Backs `service` up now, as its `backup` says.
    fn take_backup(&self, project: &str, service: &str) -> Result<BackupInfo, HostError>;
    /// The backups of `service` the host keeps, newest first.
    fn backups(&self, project: &str, service: &str) -> Result<BackupList, HostError>;
    /// Puts backup `id` of `service` back (stopping and starting it where
    /// its files are restored).
    fn restore_backup(&self, backup: BackupRef<'_>) -> Result<BackupRestored, HostError>;
    /// Writes the backup's bytes to `out`; how many.
    fn download_backup(&self, backup: BackupRef<'_>, out: &mut dyn Write)
    -> Result<u64, HostError>;
}

/// A shell on a host, over SSH: what `configure` and `exec` need beside the
/// agent API. SSH's own failures are errors; the command's exit is returned.
pub trait Shell: Send + Sync {
    fn name(&self) -> &str;
    /// Runs `command` (a POSIX shell command line) with `stdin` as its input.
    fn run(&self, command: &str, stdin: Option<&Path>) -> Result<Ran, HostError>;
    /// Runs `command` (or a login shell) attached to this terminal; its exit code.
    fn interactive(&self, command: Option<&str>) -> Result<i32, HostError>;
    /// The address SSH connects to, after its config (`ssh -G`).
    fn resolved_address(&self) -> Option<String> {
        None
    }
}

/// What a remote command did.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// The systemd unit that runs the agent on a host configured as root, and
/// that agent's state directory.
pub const AGENT_UNIT: &str = "gantry-agent";
pub const SYSTEM_STATE_DIR: &str = "/var/lib/gantry";
/// The unit's file: where it is, systemd runs the host's agent.
pub const AGENT_UNIT_FILE: &str = "/etc/systemd/system/gantry-agent.service";

/// The remote shell command that runs `gantry ARGS` on a host: the copy
/// `gantry configure` installs (`~/.gantry/bin`) comes first on the PATH.
/// Where the agent is a systemd unit (configured as root), that agent is the
/// one talked to, and `gantry agent connect` waits for it rather than start
/// another (`GANTRY_AGENT_UNIT`), even while the unit restarts.
pub fn remote_gantry(args: &str) -> String {
    format!(
        "if [ -z \"$GANTRY_STATE_DIR\" ] && [ -f {AGENT_UNIT_FILE} ]; then export GANTRY_STATE_DIR={SYSTEM_STATE_DIR} GANTRY_AGENT_UNIT={AGENT_UNIT}; fi; PATH=\"$HOME/.gantry/bin:/usr/local/bin:$PATH\" exec gantry {args}"
    )
}

/// Quotes a word for a POSIX shell: plain words stay as they are, anything
/// else goes in single quotes.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_of_the_same_minor_version_are_compatible() {
        let cli = env!("CARGO_PKG_VERSION");
        let (major, rest) = cli.split_once('.').unwrap_or((cli, "0.0"));
        let minor = rest.split('.').next().unwrap_or("0");
        assert!(compatible("web1", cli).is_ok());
        assert!(compatible("web1", &format!("{major}.{minor}.999")).is_ok());
        for other in [
            format!("{major}.{}.0", minor.parse::<u64>().unwrap_or(0) + 1),
            format!("{}.{minor}.0", major.parse::<u64>().unwrap_or(0) + 1),
            "not a version".to_owned(),
        ] {
            match compatible("web1", &other) {
                Err(HostError::Incompatible {
                    host,
                    agent,
                    cli: ours,
                }) => {
                    assert_eq!(
                        (host.as_str(), agent.as_str(), ours.as_str()),
                        ("web1", other.as_str(), cli)
                    );
                }
                result => panic!("{other}: {result:?}"),
            }
        }
    }
}
