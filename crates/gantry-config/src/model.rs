//! The gantry.toml file as written. These types are the schema: `gantry schema`
//! is generated from them, and the loader validates against that schema before
//! deserializing, so a file that passes validation always deserializes.
//!
//! Every field is optional here; defaults are applied when an environment is
//! resolved (see `resolve.rs`), so an environment overlay can use the same types.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{Duration, Size};

/// A gantry.toml file.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "gantry.toml", rename = "GantryToml")]
pub struct File {
    /// The project: its name is used in URLs, unit names and state files.
    pub project: Project,
    /// The services of the project, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Service>,
    /// Environments, by name. `local` (this machine) exists even when not declared.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, Environment>,
    /// Hosts, by name. `local` (this machine) exists even when not declared.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, Host>,
    /// The tracker hub the project reports to: a failed deploy files a bug there.
    pub hub: Option<HubLink>,
    /// How deploys roll out, for every environment (an environment's own
    /// `deploy` table overrides it key by key).
    pub deploy: Option<Rollout>,
}

/// How a deploy rolls out across an environment's hosts.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// How long a host's new release is watched after its cutover (default
    /// "5s", at most "10m", "0s" for not at all): if one of its new instances
    /// exits, is restarted or fails its health check meanwhile, that host goes
    /// back to its previous release and the deploy fails (`deploy.verify_failed`).
    pub verify: Option<Duration>,
    /// Deploy to the environment's first host alone, and to the others only
    /// after its verify window passed (default false).
    pub canary: Option<bool>,
}

/// Where failures are reported: a Gantry hub (`gantry hub serve`) and a `ci` key of it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubLink {
    /// The hub's address, like `https://hub.example.com`.
    #[schemars(extend("format" = "http-url"))]
    pub url: String,
    /// The secret holding the hub's API key (a `ci` key: `gantry hub key create --role ci`), like `HUB_KEY`.
    pub key: SecretName,
    /// The hub's product the bugs go to, like `SHOP`; needed unless the key is scoped to one product.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = "^[A-Z][A-Z0-9]{1,9}$"))]
    pub product: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Lowercase letters, digits and hyphens, like `shop`.
    #[schemars(extend("format" = "name"))]
    pub name: String,
}

/// One service. Exactly one of `run`, `image` or `static` says how it runs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// A command run as a supervised process (the process driver), like `target/release/web`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// A container image run on the host's Docker Engine (the container driver), like `postgres:16`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A directory of the release, relative to the artifact (like `dist`, or `.` for all of it), whose
    /// files the proxy serves itself on the service's routes (the static driver).
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "release-path"))]
    pub static_dir: Option<String>,
    /// For a `static` service: a path that names no file and whose last segment has no extension
    /// (`/orders/42`) gets the directory's `index.html`, for a single-page app's own routes (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spa: Option<bool>,
    /// A command run in the project directory before the artifact is taken, like `cargo build
    /// --release`; or, for an `image` service, the image to build with `docker build` on this machine,
    /// like `{ context = ".", dockerfile = "Dockerfile" }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The path, relative to the project, that is shipped as the artifact (default: the project).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "project-path"))]
    pub artifact: Option<String>,
    /// A port name (the agent assigns a free port and sets `$PORT`) or a fixed port number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// How to tell that an instance is ready and still well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Host names, each with an optional path prefix, like `shop.example.com` or `example.com/api`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    /// Your own certificate for the routes, instead of one from ACME: PEM files on the hosts, by absolute path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// How many instances run on each host (default 1, at most 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: Option<NonZeroU32>,
    /// Environment variables given to every instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Names of secrets injected as environment variables; values never appear in output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SecretName>>,
    /// Limits enforced with cgroups (process driver) or by Docker (container driver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Services that must be deployed and healthy before this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
    /// The hosts of the environment that run this service (default: every host), like `["db1"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Database migrations: SQL files applied before a deploy's new instances start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate: Option<Migrate>,
    /// Named volumes or host paths mounted into a container, like `pgdata:/var/lib/postgresql/data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// Scheduled backups taken by the host's agent: volumes, a directory, SQLite, PostgreSQL or MySQL/MariaDB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
    /// How long a stopping instance gets after SIGTERM before SIGKILL (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Duration>,
    /// When an exited instance is started again (default `always`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// Run the service as root, with root's capabilities, when the agent runs as root (default false: the
    /// service runs as its project's own unprivileged user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_root: Option<bool>,
    /// How a deploy replaces the running instances: `start-first` (the new ones start and pass their health
    /// check, then the old ones stop: no downtime) or `stop-first` (the old ones stop, then the new ones start:
    /// for a volume two instances must not share, like a database's). Default: `stop-first` for an `image`
    /// service with `volumes`, `start-first` otherwise. If a stop-first replacement fails, the old release is
    /// started again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_strategy: Option<DeployStrategy>,
}

/// How a deploy replaces a service's running instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStrategy {
    /// The new instances start and pass their health check before the old ones stop.
    StartFirst,
    /// The old instances stop before the new ones start.
    StopFirst,
}

impl DeployStrategy {
    /// The strategy of a service that names none: two containers must not
    /// share a volume (a database's data directory), so an image service
    /// with volumes is replaced stop-first; anything else start-first.
    pub fn default_for(is_image: bool, has_volumes: bool) -> DeployStrategy {
        if is_image && has_volumes {
            DeployStrategy::StopFirst
        } else {
            DeployStrategy::StartFirst
        }
    }
}

/// A port: a name such as `"http"` (assigned by the agent) or a fixed number.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Port {
    Fixed(u16),
    Named(String),
}

impl JsonSchema for Port {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Port".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // One schema node with two types, not an anyOf, so a wrong type gets one clear error.
        schemars::json_schema!({
            "type": ["string", "integer"],
            "format": "port",
            "minimum": 1,
            "maximum": 65535,
            "description": "A port name such as \"http\" (the agent assigns a free port and sets $PORT), or a fixed port number from 1 to 65535.",
        })
    }
}

/// `build`: a command run before the artifact is taken, or an image built from a Dockerfile.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Build {
    /// A command run with `sh -c` in the project directory.
    Command(String),
    /// An image built with `docker build` and tagged as the service's `image`.
    Image(ImageBuild),
}

impl JsonSchema for Build {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Build".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // One node with two types, as for `Port`: a string passes the object's
        // keywords untouched, and a wrong key or type gets one clear error.
        let mut schema = ImageBuild::json_schema(generator);
        schema.insert("type".to_owned(), serde_json::json!(["string", "object"]));
        schema.insert(
            "description".to_owned(),
            serde_json::json!(
                "A command run in the project directory before the artifact is taken, like \"cargo build --release\"; or, for an `image` service, an image built with `docker build` on this machine and tagged as the service's `image`, like { context = \".\", dockerfile = \"Dockerfile\" }. A context that is a folder of the project (\"web\") travels as the image and is left out of the artifact the processes run from, so a change inside it replaces no process."
            ),
        );
        schema
    }
}

/// An image built on the user's machine with `docker build`, then shipped to
/// each host without a registry (only the layers a host lacks).
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    /// The build context: a directory of the project, relative to it (default `.`). A folder of the
    /// project (not `.`) travels as the image alone: it is left out of the artifact that processes
    /// run from (unless a `static` service serves files inside it), so changing its files replaces
    /// no process. Files a process needs too belong outside it, or the build uses `context = "."`
    /// with `dockerfile = "web/Dockerfile"` (whose `COPY` then names `web/...`).
    #[schemars(extend("format" = "project-path"))]
    pub context: Option<String>,
    /// The Dockerfile, relative to the context as in Docker Compose (default `Dockerfile`).
    #[schemars(extend("format" = "project-path"))]
    pub dockerfile: Option<String>,
    /// The stage of a multi-stage Dockerfile to build (`docker build --target`).
    #[schemars(extend("format" = "build-stage"))]
    pub target: Option<String>,
    /// Build arguments (`docker build --build-arg NAME=VALUE`); not for secrets: they stay in the image's history.
    #[schemars(extend("maxProperties" = 64))]
    pub args: Option<BTreeMap<String, String>>,
}

/// A health check: exactly one of `path` (HTTP), `tcp` or `command`.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP GET on this path answers 2xx or 3xx.
    #[schemars(extend("format" = "http-path"))]
    pub path: Option<String>,
    /// A TCP connection to the port succeeds.
    pub tcp: Option<bool>,
    /// A command run in the instance's environment exits 0.
    pub command: Option<String>,
    /// Time between checks (default 1s). Until a new instance's first check
    /// passes, an HTTP or TCP check is tried every 20 ms (a command check at
    /// most every 250 ms), so a deploy does not wait out an interval.
    pub interval: Option<Duration>,
    /// Time one check may take (default 2s).
    pub timeout: Option<Duration>,
    /// Failures in a row before the instance counts as unhealthy (default 3).
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub retries: Option<NonZeroU32>,
    /// Time after start during which failures do not count (default 0s).
    pub start_period: Option<Duration>,
}

/// A certificate chain and its key, PEM files on each host that runs the service.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first, like `/etc/ssl/shop/fullchain.pem`.
    pub cert: String,
    /// Its private key, like `/etc/ssl/shop/privkey.pem`; readable by the agent's user.
    pub key: String,
}

/// `host` or `host/path/prefix`; the host may start with `*.` to match subdomains.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Route(#[schemars(extend("format" = "route"))] pub String);

/// A secret's name, as `gantry secrets set` takes it: capitals, digits and `_`, not starting with a digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct SecretName(#[schemars(extend("format" = "secret-name"))] pub String);

/// `source:target` or `source:target:ro`; the source is a volume name or an absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Volume(#[schemars(extend("format" = "volume"))] pub String);

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit, like "256M".
    pub memory: Option<Size>,
    /// CPU limit in cores, like 0.5.
    #[schemars(range(min = 0.01, max = 1024.0))]
    pub cpu: Option<f64>,
    /// Limit on the number of processes and threads.
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub pids: Option<NonZeroU32>,
}

/// Migrations: numbered SQL files the built-in engine applies (`sql` and `database`, see
/// `gantry migrate`), and commands a deploy runs around its rollout (`pre`, `post`).
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Migrate {
    /// A command (run by `sh -c`) run once per environment, before any new instance starts: on
    /// the first host that runs the service, in the new release's environment (its files, env
    /// and secrets; for an image service, a container of the new image). If it fails, the deploy
    /// stops with every host still on its old release. Its output is kept in the release.
    pub pre: Option<String>,
    /// A command run once after every host runs the new release, on the first host that runs
    /// the service, as `pre` runs. If it fails, the deploy fails (`migrate.command_failed`) but
    /// the release stays live. Its output is kept in the release.
    pub post: Option<String>,
    /// A directory of the project holding SQL migrations named `NNNN_name.sql` (like
    /// `0001_create_users.sql`), applied in order, each in a transaction, by `gantry migrate run` and
    /// by a deploy before any new instance starts. Needs `database`.
    #[schemars(extend("format" = "release-path"))]
    pub sql: Option<String>,
    /// The name of the service's `env` variable or secret that holds the database's URL:
    /// `postgres://user:pass@host:5432/db` (PostgreSQL) or `sqlite:///absolute/path.db` (SQLite).
    #[schemars(extend("format" = "env-name"))]
    pub database: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// When the host's agent backs up: `every DURATION` (like "every 6h") or cron's five fields in UTC (like "0 3 * * *").
    #[schemars(extend("format" = "schedule"))]
    pub schedule: String,
    /// How many backups the host keeps; the oldest beyond it are deleted (default 7).
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub keep: Option<NonZeroU32>,
    /// What is backed up and how. Default: `postgres` for an image named postgres, `mysql` for
    /// mysql or mariadb, `volumes` for another image with volumes; a process service must say
    /// `sqlite` or `files`, with `path`.
    pub kind: Option<BackupKind>,
    /// For `sqlite`, the database file; for `files`, a directory: an absolute path on the host.
    pub path: Option<String>,
}

/// How a service's data is backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    /// Every named volume of the container, archived with tar and zstd.
    Volumes,
    /// A directory on the host (`path`), archived with tar and zstd.
    Files,
    /// A SQLite database (`path`), copied with SQLite's online backup API, then zstd.
    Sqlite,
    /// `pg_dump` inside the container (as `POSTGRES_USER`, of `POSTGRES_DB`), restored with `pg_restore`.
    Postgres,
    /// `mariadb-dump` (or `mysqldump`) of every database inside the container, as root.
    Mysql,
}

impl BackupKind {
    /// The kind as gantry.toml spells it.
    pub fn name(self) -> &'static str {
        match self {
            BackupKind::Volumes => "volumes",
            BackupKind::Files => "files",
            BackupKind::Sqlite => "sqlite",
            BackupKind::Postgres => "postgres",
            BackupKind::Mysql => "mysql",
        }
    }

    /// The kind an `image` implies when `kind` is not given: by the
    /// image's name, without registry, path or tag.
    pub fn of_image(image: &str, has_volumes: bool) -> Option<BackupKind> {
        let name = image.rsplit('/').next().unwrap_or(image);
        let name = name.split(['@', ':']).next().unwrap_or(name);
        match name {
            "postgres" | "postgresql" | "postgis" => Some(BackupKind::Postgres),
            "mysql" | "mariadb" => Some(BackupKind::Mysql),
            _ if has_volumes => Some(BackupKind::Volumes),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Start again whenever the instance exits.
    Always,
    /// Start again only when it exits with an error or a signal.
    OnFailure,
    /// Never start again.
    Never,
}

/// An environment: a set of hosts plus per-service overrides.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// The hosts of this environment, by name (see `[hosts]`; `local` is this machine).
    #[schemars(length(min = 1))]
    pub hosts: Vec<String>,
    /// How many hosts a deploy updates at once (default 1: one host at a time).
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub max_parallel: Option<NonZeroU32>,
    /// Overrides merged over `[services]` for this environment only, like `services.web.replicas = 3`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Service>,
    /// How deploys of this environment roll out, over the top-level `[deploy]`.
    pub deploy: Option<Rollout>,
}

/// A host: reached over SSH, or this machine (`provider = "local"`).
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// `user@address` or `user@address:port`, or a name from ~/.ssh/config.
    #[schemars(extend("format" = "ssh-target"))]
    pub ssh: Option<String>,
    /// Where the host comes from when it is not reached over SSH. Only
    /// `local` works yet: a cloud provider is refused by validate and deploy.
    pub provider: Option<Provider>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// This machine.
    Local,
    /// A Hetzner Cloud server (not supported yet).
    Hetzner,
    /// A DigitalOcean droplet (not supported yet).
    Digitalocean,
}
