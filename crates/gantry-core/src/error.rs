//! Every error a use-case can return, with its stable code, its exit class and
//! a hint. [`Code`] is the one list of codes; README.md's table is made from
//! it (`Code::readme_table`), and a test keeps the two in step.

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

/// Defines [`Code`] and [`CODES`] from one list, so that a code, its exit
/// class and its description are written once.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        $($variant:ident = $code:literal, $class:ident, $about:literal;)*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code {
            $(
                #[doc = $about]
                $variant,
            )*
        }

        impl Code {
            /// Every code, in the order of README.md's table.
            pub const ALL: &[Code] = &[$(Code::$variant,)*];

            /// The code as scripts see it: `config.invalid`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            pub fn exit_class(self) -> ExitClass {
                match self {
                    $(Code::$variant => ExitClass::$class,)*
                }
            }

            /// What the code means, as README.md's table says it.
            pub fn about(self) -> &'static str {
                match self {
                    $(Code::$variant => $about,)*
                }
            }
        }

        /// Every error code, its exit class and what it means, from [`Code`].
        pub const CODES: &[(&str, ExitClass, &str)] = &[$(($code, ExitClass::$class, $about),)*];
    };
}

codes! {
    /// Every error code: what scripts match on (never renamed), its exit
    /// class, and the line README.md's table gives it.
    Internal = "internal", Internal, "a bug in Gantry; please report it";
    Usage = "usage", Usage, "the command line is wrong: an unknown flag, a missing argument";
    VerboseUnsupported = "verbose.unsupported", Usage, "`-v` was given to `gantry proxy`, which shows nothing more with it yet (its access log is its output)";
    ConfigNotFound = "config.not_found", Invalid, "no gantry.toml where one was looked for, or the file `--config` names does not exist";
    ConfigReadFailed = "config.read_failed", Invalid, "gantry.toml exists but cannot be read";
    ConfigInvalid = "config.invalid", Invalid, "gantry.toml has errors; each is listed under `errors`";
    ConfigUnknownEnvironment = "config.unknown_environment", Invalid, "--env names no environment of the project";
    ConfigUneditable = "config.uneditable", Invalid, "`gantry register` cannot edit gantry.toml: it does not parse, `hosts` or `environments` is not a table, or the edited file would not load; nothing was written";
    InitExists = "init.exists", Conflict, "gantry init would overwrite an existing gantry.toml";
    OutputExists = "output.exists", Conflict, "the output directory holds files Gantry did not write";
    IoFailed = "io.failed", Failed, "reading or writing a file failed";
    ProxyFailed = "proxy.failed", Failed, "the proxy could not start or stopped with an error";
    ProxyOff = "proxy.off", Conflict, "the agent runs no proxy (started with --proxy-listen off)";
    ProxyRestartFailed = "proxy.restart_failed", Failed, "the new proxy process did not take over; the running one keeps serving";
    ProxyStopFailed = "proxy.stop_failed", Failed, "the proxy did not exit in time after it was asked to stop";
    TlsLocalCaFailed = "tls.local_ca_failed", Failed, "the proxy's local CA could not be made or read (the message names the file)";
    AgentUnreachable = "agent.unreachable", Unreachable, "no agent answers on the host, and none could be started";
    HostUnreachable = "host.unreachable", Unreachable, "SSH cannot reach the host: no route, refused, timed out, or the name does not resolve";
    HostAuthRefused = "host.auth_refused", Unreachable, "the host refused every SSH key offered";
    HostKeyChanged = "host.key_changed", Unreachable, "the host's SSH key differs from the one in known_hosts";
    HostKeyUnknown = "host.key_unknown", Unreachable, "a host key on the way (often a ProxyJump host's) is not in known_hosts and SSH may not ask";
    HostGantryMissing = "host.gantry_missing", Unreachable, "SSH works but the host has no gantry binary; `gantry configure` installs it";
    AgentIncompatible = "agent.incompatible", Conflict, "the host's agent runs a gantry version this CLI cannot talk to";
    StateCorrupt = "state.corrupt", Invalid, "a file under .gantry/state is not what Gantry wrote";
    EnvLocked = "env.locked", Conflict, "another gantry command is changing the environment; the error names it";
    // Why an environment refuses a command (`EnvRefusal`), one code each.
    EnvDestroyed = "env.destroyed", Conflict, "the environment was destroyed: it takes no configure, register or deploy until `gantry env purge` forgets it";
    EnvTransition = "env.transition", Conflict, "the environment's lifecycle has no such step from the state it is in (`gantry env show` shows its state and history)";
    EnvUnknown = "env.unknown", Conflict, "the environment has no state yet: `gantry env create` or `gantry register` starts it";
    EnvExists = "env.exists", Conflict, "`gantry env create` named an environment that already exists";
    EnvNotDestroyed = "env.not_destroyed", Conflict, "`gantry env purge` without --force named an environment that is not destroyed";
    EnvNoHosts = "env.no_hosts", Conflict, "the environment has no hosts to run the command on";
    EnvHostUnknown = "env.host_unknown", Conflict, "`gantry ssh --host` names no host of the environment; the hint lists them";
    EnvHostLocal = "env.host_local", Conflict, "`gantry ssh` named a host reached without SSH (this machine): use a shell here";
    EnvServiceUnknown = "env.service_unknown", Conflict, "`gantry exec`, `logs`, `stop` or `restart` names no service of the environment; the hint lists them";
    EnvServiceNotOnHost = "env.service_not_on_host", Conflict, "`gantry exec`: the service runs neither on the host --host names nor, without --host, on any host of the environment";
    EnvNotDeployed = "env.not_deployed", Conflict, "`gantry secrets sync`: a host runs no release of the project to give the secrets to; deploy first";
    EnvDestroyFailed = "env.destroy_failed", Failed, "`gantry env destroy` could not stop the environment's services (a host did not answer); it stays as it was, and the error names the host";
    RegisterLocal = "register.local", Invalid, "`gantry register` was given the environment or host `local`, which is this machine and needs no registering";
    RegisterSshDiffers = "register.ssh_differs", Conflict, "`gantry register --ssh` names another SSH target than the host's `ssh` in gantry.toml; the error names both";
    HostArchUnsupported = "host.arch_unsupported", Invalid, "the host is not Linux on this gantry binary's CPU architecture (`uname -s`, `uname -m`); the message names both";
    HostLibcTooOld = "host.libc_too_old", Invalid, "the host's GNU C library is older than this gantry binary needs, or it has none (musl); the message names both versions";
    ConfigureFailed = "configure.failed", Failed, "a step of `gantry configure` failed on a host; the error names the host and the step";
    AgentLocked = "agent.locked", Conflict, "another agent already runs on this state directory";
    AgentProtocol = "agent.protocol", Failed, "the agent answered something that is not its API (a version mismatch?)";
    AgentError = "agent.error", Failed, "the agent failed to do what was asked; the message says why (also an agent's code this gantry does not know, which the message names)";
    AgentStore = "agent.store", Failed, "the agent's SQLite store failed";
    AgentInternal = "agent.internal", Failed, "the agent failed inside (its deploy task panicked); the agent's log has more";
    BuildFailed = "build.failed", Failed, "a service's build command failed";
    BuildInvalid = "build.invalid", Invalid, "an image build's `context` or `dockerfile` is missing, of the wrong kind, or lies outside the project (through a symlink); the message names which";
    DockerMissing = "docker.missing", Failed, "this machine has no `docker` command, or its engine does not answer; building or shipping an image needs it";
    ImageExportFailed = "image.export_failed", Failed, "the image of a service could not be read from this machine's Docker Engine (`docker save`); the message says why";
    ImageLoadFailed = "image.load_failed", Failed, "a host's agent could not load a shipped image into its Docker Engine, or pull one from its registry; the message says why";
    SecretsMissing = "secrets.missing", Invalid, "a secret a service needs is not set";
    SecretsFailed = "secrets.failed", Failed, "the agent could not store the secrets file";
    TestProbeFailed = "test.probe_failed", Unreachable, "a route did not answer an HTTP request through the host's proxy";
    InternalBug = "internal.bug", Failed, "Gantry itself failed (a thread panicked); please report it with the message";
    DeployUnsupported = "deploy.unsupported", Invalid, "the environment needs something this version cannot do yet";
    DeployPortTaken = "deploy.port_taken", Conflict, "a process service's fixed port is one the host's reverse proxy listens on, so it could not start; the message names the service and the port";
    DeployLocked = "deploy.locked", Conflict, "another deploy of the project (on the host, or of the whole environment) holds its lock; the error names it";
    DeployFailed = "deploy.failed", Failed, "a service's new instances did not become healthy; it kept its previous release";
    DeployVerifyFailed = "deploy.verify_failed", Failed, "a new release crashed or failed its health checks within its verify window (`deploy.verify`) after cutover: that host went back to its previous release and the rollout stopped; the message names the service and why";
    InstanceUnhealthy = "instance.unhealthy", Failed, "a new instance did not pass its health check in time (its start period and the deploy's wait); the message has the check's last answer; a failed deploy's cause (`error.details.cause.code`)";
    InstanceExited = "instance.exited", Failed, "a new instance (its process, or its container) exited while starting; the release's log tail has its last output; a failed deploy's cause (`error.details.cause.code`)";
    ContainerUnreachable = "container.unreachable", Unreachable, "the host's Docker engine does not answer on /var/run/docker.sock, or the Unix socket the agent's DOCKER_HOST names (not installed, not started, or the socket not the agent's to use); a failed deploy's cause (`error.details.cause.code`)";
    ContainerTooOld = "container.too_old", Conflict, "the host's Docker engine speaks an API older than 1.41 (Docker 20.10); a failed deploy's cause (`error.details.cause.code`)";
    ContainerEngine = "container.engine", Failed, "Docker refused or failed an operation; the message names the object and Docker's answer; a failed deploy's cause (`error.details.cause.code`)";
    ContainerNoImage = "container.no_image", Invalid, "the service's image is not on the host, and its registry did not give it (it lacks the tag, or does not answer; the message has the engine's words); a failed deploy's cause (`error.details.cause.code`)";
    ContainerUser = "container.user", Invalid, "the user a container runs as is not in its image's /etc/passwd or /etc/group; a failed deploy's cause (`error.details.cause.code`)";
    ContainerSecret = "container.secret", Invalid, "a container service's secret has no value or is over 64 KiB, or its file could not be written; a failed deploy's cause (`error.details.cause.code`)";
    ContainerArchive = "container.archive", Failed, "an image archive, or a file read from a container, is malformed or too large; a failed deploy's cause (`error.details.cause.code`)";
    DeployProjectMismatch = "deploy.project_mismatch", Invalid, "a deploy request was sent to another project's path";
    RequestInvalid = "request.invalid", Invalid, "the agent refused a name in the request (project, service, secret or variable): it breaks the config's naming rules";
    RequestTooLarge = "request.too_large", Invalid, "a JSON request to the agent is over its 16 MiB limit (files go as blobs, which have none)";
    SecretsInvalid = "secrets.invalid", Invalid, "a secret's name is not an environment variable name, or its value is empty, over 64 KiB, has a line break or NUL, or is written into a `run` command (where `ps` shows it); the message says which";
    SecretsKeyMissing = "secrets.key_missing", Invalid, "the project's encrypted secrets need the key in the user's config directory (`~/.config/gantry/identity.txt`), and it is not there";
    SecretsKeyMismatch = "secrets.key_mismatch", Invalid, "the encrypted secrets file was made with another key than the user's (or the key lies inside the project); the hint says where the key goes";
    SecretsKeyExposed = "secrets.key_exposed", Invalid, "the key file can be read or written by other users than its owner, or belongs to another user: it is refused until `chmod 600` makes it private";
    SecretsCorrupt = "secrets.corrupt", Invalid, "an encrypted secrets file (`.gantry/secrets/<env>.age`) or the key was changed or damaged: decryption found it altered";
    SecretsNotFound = "secrets.not_found", Invalid, "`gantry secrets rm` named a secret the environment does not have";
    RoutesRefused = "routes.refused", Invalid, "the deploy's routes would make the proxy refuse the host's route table (a host and path routed twice); nothing changed";
    RoutesTaken = "routes.taken", Conflict, "a route's host belongs to another project on the host (the first to route it, or `*.<project>.localhost`); the error names it";
    ReleaseExists = "release.exists", Conflict, "the release id the deploy would take is already recorded for the project";
    ArtifactIncomplete = "artifact.incomplete", Failed, "the host lacks files of the artifact";
    ArtifactChecksum = "artifact.checksum", Failed, "an uploaded file did not match its checksum";
    ArtifactOffsetMismatch = "artifact.offset_mismatch", Conflict, "a resumed upload named another offset than the bytes the host holds; ask for the missing blobs again";
    ArtifactUploadInProgress = "artifact.upload_in_progress", Conflict, "another request is uploading the same file to the host; wait for it to end, then resume";
    ArtifactNoRoom = "artifact.no_room", Conflict, "the upload would leave the host's disk with less free space than the agent keeps (256 MiB or 1%, whichever is larger)";
    ArtifactFailed = "artifact.failed", Failed, "the agent could not unpack the artifact";
    TestFailed = "test.failed", Failed, "`gantry test` found a failing check; error.details has every check";
    ExecFailed = "exec.failed", Failed, "`gantry exec` could not start the command on the host";
    ExecRefused = "exec.refused", Conflict, "`gantry agent exec` refused the agent's answer: its socket is served by another user than the state directory's owner, or it named files outside the project's, or a user other than the project's";
    ServiceNotDeployed = "service.not_deployed", Invalid, "the service runs no release on the host (`gantry exec`)";
    ReleaseNotFound = "release.not_found", Invalid, "no release has that id or number";
    ReleaseNoneBefore = "release.none_before", Conflict, "there is no earlier successful release to roll back to";
    ReleaseArtifactGone = "release.artifact_gone", Conflict, "the files of that release are no longer kept";
    ServiceNotFound = "service.not_found", Invalid, "the project runs no service of that name";
    BackupNotConfigured = "backup.not_configured", Invalid, "the service has no `backup` in the release its host runs (add a `backup` table with a `schedule`, and deploy)";
    BackupNotFound = "backup.not_found", Invalid, "no host of the environment keeps a backup of the service with that id (`gantry backup list` shows them)";
    BackupFailed = "backup.failed", Failed, "a backup or a restore failed on the host; the message says which step and why, and `gantry status` shows a failed backup until one succeeds";
    MigrateInvalid = "migrate.invalid", Invalid, "a service's migrations cannot be used: a file not named `NNNN_name.sql`, a gap or a number twice, over 8 MiB or not UTF-8, a missing directory, or a database URL that is neither `postgres://` nor `sqlite:///absolute/path`";
    MigrateEdited = "migrate.edited", Conflict, "a migration the database recorded as applied was edited or removed since (its sha256 differs); nothing was applied";
    MigrateFailed = "migrate.failed", Failed, "a migration's SQL failed: it was rolled back, the ones before it stay applied, none after it ran; the message has the database's words";
    MigrateCommandFailed = "migrate.command_failed", Failed, "a `migrate.pre` or `migrate.post` command exited non-zero or could not run; its output is kept in the release (`gantry releases`, the report's `tasks`)";
    MigrateDatabase = "migrate.database", Failed, "the database of a service's migrations could not be opened or reached, or failed around them";
    HubUnauthorized = "hub.unauthorized", Invalid, "the hub refused the request's credentials: no API key, a malformed, unknown or revoked one (HTTP 401)";
    HubForbidden = "hub.forbidden", Invalid, "the API key may not do that: its permission is too low or the item is in a product outside its scope (HTTP 403)";
    HubNotFound = "hub.not_found", Invalid, "no item, product, key or user has that name or number (HTTP 404)";
    HubInvalid = "hub.invalid", Invalid, "the request is malformed or a field is out of bounds; the message names the field (HTTP 400 or 422)";
    HubTooLarge = "hub.too_large", Invalid, "the request body is over the hub's limit (HTTP 413)";
    HubExists = "hub.exists", Conflict, "a product, user or active key of that name already exists (HTTP 409)";
    HubClaimed = "hub.claimed", Conflict, "another agent holds the item's claim; the error names the holder and when the claim expires (HTTP 409)";
    HubItemFinished = "hub.item_finished", Conflict, "the item is done, closed or won't be fixed, so it cannot be claimed or voted on (HTTP 409)";
    HubStale = "hub.stale", Conflict, "If-Match names an older version of the item: fetch it again and retry (HTTP 412)";
    HubPreconditionRequired = "hub.precondition_required", Invalid, "an update came without If-Match: send the item's ETag (HTTP 428)";
    HubIdempotencyMismatch = "hub.idempotency_mismatch", Conflict, "an Idempotency-Key was used before with another request body (HTTP 422)";
    HubRateLimited = "hub.rate_limited", Conflict, "too many requests from the key or the address; Retry-After says when to try again (HTTP 429)";
    HubTimeout = "hub.timeout", Failed, "the request took longer than the hub allows (its body came too slowly, or the database did not answer); nothing is known to have changed unless a retry with the same Idempotency-Key says so (HTTP 408)";
    HubStore = "hub.store", Failed, "the hub's database failed or could not be opened (HTTP 500)";
    HubUnsupported = "hub.unsupported", Invalid, "the hub cannot do that yet";
    HubSecondFactor = "hub.second_factor", Invalid, "the password was right and the user has TOTP: send the login again with `code`, a TOTP code or a recovery code (HTTP 401)";
}

impl Code {
    /// README.md's table of error codes, one row a code.
    pub fn readme_table() -> String {
        let mut table = String::from("| code | exit | meaning |\n| --- | --- | --- |\n");
        for code in Code::ALL {
            table.push_str(&format!(
                "| `{code}` | {} | {} |\n",
                code.exit_class().code(),
                code.about()
            ));
        }
        table
    }

    /// The code named `code`, if this version of Gantry knows it.
    pub fn parse(code: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Code::parse(&code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code `{code}`")))
    }
}

/// Where a rollout stopped: the host whose new release failed, and that
/// release (the host went back from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRelease {
    pub host: String,
    pub release: Option<String>,
    /// The last lines the failing service wrote there.
    pub log_tail: Vec<String>,
}

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
    /// An image could not be built, read or shipped; `code` says which.
    #[error("{message}")]
    Image {
        code: Code,
        message: String,
        hint: String,
    },
    /// A backup command could not be carried out; `code` says why.
    #[error("{message}")]
    Backup {
        code: Code,
        message: String,
        hint: String,
    },
    #[error("secret{} {} not set", if names.len() == 1 { "" } else { "s" }, names.join(", "))]
    MissingSecrets { names: Vec<String> },
    /// `gantry agent exec` cannot read a secret the service needs on the host.
    #[error("{message}")]
    SecretsUnreadable { message: String },
    #[error("{what}")]
    Unsupported { what: String, hint: String },
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("http://{name}/ through {proxy}: {message}")]
    ProbeFailed {
        name: String,
        proxy: String,
        message: String,
    },
    #[error("{what}: a bug in Gantry")]
    Internal { what: String },
    /// A rollback of the environment that cannot be done as asked
    /// (no earlier deployment, a deployment a host lacks); `code` says which.
    #[error("{message}")]
    Deployment {
        code: Code,
        message: String,
        hint: String,
    },
    /// A release failed its verify window on a host, which went back to
    /// its previous release; the rollout stopped there.
    #[error("the deploy of {project} to {environment} failed its verify window: {reason}")]
    VerifyFailed {
        project: String,
        environment: String,
        failed: Box<FailedRelease>,
        reason: String,
        report: Box<serde_json::Value>,
    },
    #[error("release {release} failed: {reason}")]
    DeployFailed {
        release: String,
        reason: String,
        log_tail: Vec<String>,
        /// The coded error that made the release fail, when the agent
        /// recorded one (also `cause` in the report).
        cause: Option<Box<crate::agent_api::Cause>>,
        report: Box<serde_json::Value>,
    },
    /// `what`: which task, where, how it ended.
    #[error("{what}")]
    TaskFailed {
        what: String,
        output: Vec<String>,
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
        /// Which refusal it is: it gives the code.
        refusal: EnvRefusal,
        environment: String,
        problem: String,
        hint: String,
    },
    #[error("`local` is this machine: it is not registered")]
    RegisterLocal,
    #[error("gantry.toml reaches host `{host}` as `{known}`, not `{given}`")]
    SshDiffers {
        host: String,
        known: String,
        given: String,
    },
    /// `gantry register` cannot add a host to gantry.toml as the file is.
    #[error("cannot add the host to {}: {problem}", path.display())]
    ConfigUneditable {
        path: PathBuf,
        problem: String,
        hint: String,
    },
    /// `gantry env destroy` could not stop the services; the state is kept.
    #[error("environment `{environment}` could not stop its services: {cause}")]
    DestroyFailed {
        environment: String,
        cause: Box<Error>,
    },
    /// The host cannot run this gantry binary; `code` says why.
    #[error("{message}")]
    HostUnsupported {
        code: Code,
        message: String,
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
    #[error("`{service}`: {error}")]
    Migrate {
        service: String,
        error: crate::migrate::MigrateError,
    },
    #[error(transparent)]
    Io(#[from] crate::file::FileError),
}

impl Error {
    /// `env.service_unknown`: environment `name` (resolved as `env`) has no
    /// service `service`; the hint lists those it has.
    pub(crate) fn no_service(env: &gantry_config::Environment, name: &str, service: &str) -> Error {
        Error::EnvState {
            refusal: EnvRefusal::ServiceUnknown,
            environment: name.to_owned(),
            problem: format!("has no service `{service}`"),
            hint: format!(
                "its services are: {}",
                env.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        crate::file::FileError::of(action, path)
    }

    pub fn code(&self) -> Code {
        match self {
            Error::Config(e) => match e {
                gantry_config::Error::NotFound { .. } | gantry_config::Error::Missing { .. } => {
                    Code::ConfigNotFound
                }
                gantry_config::Error::Read { .. } => Code::ConfigReadFailed,
                gantry_config::Error::Invalid(_) => Code::ConfigInvalid,
                gantry_config::Error::UnknownEnvironment { .. } => Code::ConfigUnknownEnvironment,
            },
            Error::Host(crate::host::HostError::Unreachable { .. }) => Code::AgentUnreachable,
            Error::Host(crate::host::HostError::Protocol { .. }) => Code::AgentProtocol,
            Error::Host(crate::host::HostError::Ssh { failure, .. }) => failure.code(),
            Error::Host(crate::host::HostError::Incompatible { .. }) => Code::AgentIncompatible,
            Error::Host(crate::host::HostError::WrongPeer { .. }) => Code::ExecRefused,
            Error::Exec { refused: true, .. } => Code::ExecRefused,
            Error::Exec { refused: false, .. } => Code::ExecFailed,
            Error::Host(crate::host::HostError::Api { code, .. }) => {
                code.unwrap_or(Code::AgentError)
            }
            Error::BuildFailed { .. } => Code::BuildFailed,
            Error::Image { code, .. }
            | Error::HostUnsupported { code, .. }
            | Error::Backup { code, .. }
            | Error::Deployment { code, .. } => *code,
            Error::VerifyFailed { .. } => Code::DeployVerifyFailed,
            Error::MissingSecrets { .. } | Error::SecretsUnreadable { .. } => Code::SecretsMissing,
            Error::Secrets(e) => e.code(),
            Error::Unsupported { .. } => Code::DeployUnsupported,
            Error::ProbeFailed { .. } => Code::TestProbeFailed,
            Error::Internal { .. } => Code::InternalBug,
            Error::DeployFailed { .. } => Code::DeployFailed,
            Error::TaskFailed { .. } => Code::MigrateCommandFailed,
            Error::InitExists { .. } => Code::InitExists,
            Error::OutputExists { .. } => Code::OutputExists,
            Error::Io(_) => Code::IoFailed,
            Error::Migrate { error, .. } => error.code(),
            Error::StateCorrupt { .. } => Code::StateCorrupt,
            Error::TestFailed { .. } => Code::TestFailed,
            Error::EnvLocked { .. } => Code::EnvLocked,
            Error::EnvState { refusal, .. } => refusal.code(),
            Error::ConfigureFailed { .. } => Code::ConfigureFailed,
            Error::ConfigUneditable { .. } => Code::ConfigUneditable,
            Error::RegisterLocal => Code::RegisterLocal,
            Error::SshDiffers { .. } => Code::RegisterSshDiffers,
            Error::DestroyFailed { .. } => Code::EnvDestroyFailed,
        }
    }

    pub fn exit_class(&self) -> ExitClass {
        if let Error::Host(crate::host::HostError::Api {
            status, code: None, ..
        }) = self
        {
            return match status {
                404 | 422 | 400 => ExitClass::Invalid,
                409 => ExitClass::Conflict,
                _ => ExitClass::Failed,
            };
        }
        self.code().exit_class()
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
            Error::Io(_) => None,
            Error::Migrate { error, .. } => Some(error.hint()),
            Error::StateCorrupt { .. } => Some(
                "it is Gantry's record of the environment: fix the JSON, or remove the file and run `gantry configure` again".to_owned(),
            ),
            Error::EnvLocked { .. } => Some(
                "wait for that command to finish; if it is gone from another machine, remove the lock file".to_owned(),
            ),
            Error::EnvState { hint, .. } | Error::ConfigUneditable { hint, .. } => {
                Some(hint.clone())
            }
            Error::DestroyFailed { environment, .. } => Some(format!(
                "once its hosts answer, `gantry env destroy {environment} --yes` again; or forget it without stopping anything: `gantry env purge {environment} --force --yes`"
            )),
            Error::RegisterLocal => Some(
                "register servers into another environment: gantry register web1 --ssh deploy@10.0.0.5 -e prod".to_owned(),
            ),
            Error::SshDiffers { host, .. } => Some(format!(
                "change [hosts.{host}] in gantry.toml, or leave out --ssh"
            )),
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
            Error::Image { hint, .. }
            | Error::HostUnsupported { hint, .. }
            | Error::Backup { hint, .. }
            | Error::Deployment { hint, .. } => Some(hint.clone()),
            Error::VerifyFailed { .. } => Some(
                "see `gantry logs` for the service's output; raise `deploy.verify` only if the release needs longer to settle".to_owned(),
            ),
            Error::MissingSecrets { .. } => Some(
                "store them with `gantry secrets set -e ENV NAME` (the value on stdin), or set them in the environment of this command, or as NAME=value lines in .gantry/secrets.env (mode 0600)".to_owned(),
            ),
            Error::SecretsUnreadable { .. } => Some(
                "deploy again from where the secrets are set: a deploy writes the project's secrets file".to_owned(),
            ),
            Error::Unsupported { hint, .. } => Some(hint.clone()),
            Error::Secrets(e) => e.hint(),
            Error::ProbeFailed { .. } => Some(
                "`gantry status` says whether the service is live; `gantry logs` shows its output".to_owned(),
            ),
            Error::Internal { .. } => {
                Some("please report it, with this message and what you ran".to_owned())
            }
            Error::TestFailed { .. } => Some(
                "each check's detail is in the report (`--output json`: error.details); `gantry status` and `gantry logs` say more".to_owned(),
            ),
            Error::TaskFailed { output, .. } => Some(if output.is_empty() {
                "it wrote nothing; the release stays live on every host: fix the command and deploy again, or run it with `gantry exec`".to_owned()
            } else {
                format!(
                    "the release stays live on every host. Its last output:\n  {}",
                    output.join("\n  ")
                )
            }),
            Error::DeployFailed {
                log_tail, cause, ..
            } => {
                let tail = if log_tail.is_empty() {
                    "see `gantry logs` for the service's output".to_owned()
                } else {
                    format!("the service's last output:\n  {}", log_tail.join("\n  "))
                };
                Some(match cause {
                    Some(cause) => format!("caused by {}\n{tail}", cause.code),
                    None => tail,
                })
            }
        }
    }

    /// More about the error, for the JSON form: the deploy report of a failed deploy.
    pub fn details(&self) -> Option<&serde_json::Value> {
        match self {
            Error::DeployFailed { report, .. }
            | Error::TestFailed { report, .. }
            | Error::VerifyFailed { report, .. }
            | Error::TaskFailed { report, .. } => Some(report),
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

/// Why an environment refuses a command ([`Error::EnvState`]): each is a
/// condition of its own, with its own code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvRefusal {
    /// It was destroyed: nothing but `gantry env purge` until forgotten.
    Destroyed,
    /// Its lifecycle has no such step from the state it is in.
    Transition,
    /// It has no state yet.
    Unknown,
    /// `gantry env create` of one that exists.
    Exists,
    /// `gantry env purge` of one that is not destroyed.
    NotDestroyed,
    /// It has no hosts.
    NoHosts,
    /// It has no host of the name given.
    HostUnknown,
    /// The host named is this machine, reached without SSH.
    HostLocal,
    /// It has no service of the name given.
    ServiceUnknown,
    /// The service runs on no host that could be used.
    ServiceNotOnHost,
    /// A host runs no release of the project yet.
    NotDeployed,
}

impl EnvRefusal {
    pub fn code(self) -> Code {
        match self {
            EnvRefusal::Destroyed => Code::EnvDestroyed,
            EnvRefusal::Transition => Code::EnvTransition,
            EnvRefusal::Unknown => Code::EnvUnknown,
            EnvRefusal::Exists => Code::EnvExists,
            EnvRefusal::NotDestroyed => Code::EnvNotDestroyed,
            EnvRefusal::NoHosts => Code::EnvNoHosts,
            EnvRefusal::HostUnknown => Code::EnvHostUnknown,
            EnvRefusal::HostLocal => Code::EnvHostLocal,
            EnvRefusal::ServiceUnknown => Code::EnvServiceUnknown,
            EnvRefusal::ServiceNotOnHost => Code::EnvServiceNotOnHost,
            EnvRefusal::NotDeployed => Code::EnvNotDeployed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_has_the_table_of_codes_made_from_the_enum() {
        let readme = include_str!("../../../README.md");
        let table = Code::readme_table();
        assert!(
            readme.contains(&table),
            "README.md's table of error codes differs from `Code`; it should read:\n{table}"
        );
    }

    #[test]
    fn a_code_reads_back_from_its_string() {
        for code in Code::ALL {
            assert_eq!(Code::parse(code.as_str()), Some(*code));
            let json = serde_json::to_string(code).expect("a code serializes");
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<Code>(&json).ok(), Some(*code));
        }
        assert_eq!(Code::parse("agent.newer_code"), None);
    }

    fn agent_error(status: u16, code: &str) -> Error {
        Error::Host(crate::host::HostError::api(
            status,
            crate::agent_api::ApiError {
                code: code.to_owned(),
                message: "the agent refused".to_owned(),
                hint: None,
            },
        ))
    }

    #[test]
    fn an_agent_error_with_a_known_code_keeps_its_code_and_exit_class() {
        let error = agent_error(409, "routes.taken");
        assert_eq!(error.code(), Code::RoutesTaken);
        assert_eq!(error.exit_class(), ExitClass::Conflict);
        assert_eq!(error.to_string(), "the agent refused");
    }

    #[test]
    fn an_agent_error_with_an_unknown_code_is_agent_error_and_names_the_code() {
        let error = agent_error(409, "ports.newer_problem");
        assert_eq!(error.code(), Code::AgentError);
        assert_eq!(
            error.exit_class(),
            ExitClass::Conflict,
            "the HTTP status gives the class"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("the agent refused")
                && message.contains("`ports.newer_problem`")
                && message.contains("`agent.error`"),
            "{message}"
        );
        assert_eq!(
            agent_error(422, "x.y").exit_class(),
            ExitClass::Invalid,
            "a refused request is invalid input"
        );
        assert_eq!(agent_error(500, "x.y").exit_class(), ExitClass::Failed);
    }

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
