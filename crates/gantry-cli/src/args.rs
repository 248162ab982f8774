//! The command line, defined once: these doc comments are `--help`, the
//! completions and the man page.

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  gantry init                       Write a starter gantry.toml here
  gantry validate                   Check gantry.toml, every environment
  gantry deploy                     Run the project on this machine, supervised
  gantry status                     What runs, on which release, how healthy
  gantry logs web -f                Follow one service's output
  gantry rollback                   Back to the deployment before, no rebuild
  gantry show -e prod               Print the prod environment as it will run
  gantry render --target compose --out build/compose
  gantry validate --output json     One JSON document on stdout, for scripts

Exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid configuration or input,
4 state conflict, 5 host unreachable, 6 operation failed.";

/// Deploy web applications to servers you own.
///
/// Gantry reads gantry.toml, checks it, and runs your services on this
/// machine or on your servers over SSH. Every command prints a report: text
/// on a terminal, one JSON document otherwise (see --output).
#[derive(Debug, Parser)]
#[command(name = "gantry", version, after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The gantry.toml to use (a file, or a directory holding one) [default: the nearest
    /// gantry.toml in this directory or above]
    #[arg(short, long, global = true, env = "GANTRY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The environment to work on
    #[arg(
        short,
        long = "env",
        global = true,
        env = "GANTRY_ENV",
        default_value = "local",
        value_name = "NAME"
    )]
    pub environment: String,

    /// How to print the report: text for people, JSON for scripts; auto picks
    /// text on a terminal and JSON otherwise
    #[arg(long, global = true, value_enum, default_value_t = OutputMode::Auto, value_name = "MODE")]
    pub output: OutputMode,

    /// Show on stderr what Gantry does: each agent request and ssh command with
    /// its duration (-v), the agents' answers (-vv), the requests' bodies (-vvv);
    /// secret values are always hidden
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Say nothing on stderr but errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Answer yes to every confirmation
    #[arg(long, global = true)]
    pub yes: bool,

    /// The local agent's state directory [default: $XDG_STATE_HOME/gantry; for root, /var/lib/gantry]
    #[arg(long, global = true, env = "GANTRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check gantry.toml: syntax, types, references, every environment
    ///
    /// Reports every problem at once, each with its file, line, column, key
    /// path and a hint. Nothing is run and nothing is written.
    ///
    /// Example: gantry validate --config examples/shop/gantry.toml
    Validate,

    /// Print one environment as it will run
    ///
    /// Shows the services after the environment's overrides, `${VAR}`
    /// interpolation and defaults. Secret values are never printed: only
    /// whether each secret is available.
    ///
    /// Example: gantry show --env prod --output json
    Show,

    /// Print the JSON Schema of gantry.toml
    ///
    /// Point your editor at it to complete and check gantry.toml as you type.
    ///
    /// Example: gantry schema > gantry.schema.json
    Schema,

    /// Write an environment as files for another tool, one directory per host
    ///
    /// `compose` writes a compose.yaml for the container services, `systemd`
    /// writes units for the process services. Output is deterministic; the
    /// report lists what the target cannot express. Only --out is written to.
    ///
    /// Example: gantry render --target systemd --env prod --out build/systemd
    Render(RenderArgs),

    /// Create a commented starter gantry.toml
    ///
    /// The file validates as written. The project is named after the
    /// directory unless --name is given.
    ///
    /// Example: gantry init my-app
    Init(InitArgs),

    /// Build and run the project's services in the environment
    ///
    /// Runs each service's build command, takes the artifact, and has the
    /// host's agent start new instances, wait until they are healthy, switch
    /// to them and stop the old ones. A service whose new instances fail keeps
    /// its previous release, and the command exits 6. On `local` the agent is
    /// started in the background if it is not running.
    ///
    /// Example: gantry deploy --env local
    Deploy(DeployArgs),

    /// Show what runs: each service's state, release and instances
    ///
    /// Per instance: pid, port, health, restarts, memory in use; per service,
    /// whether its resource limits are enforced.
    ///
    /// Example: gantry status --output json
    Status,

    /// Print the services' output
    ///
    /// In JSON mode, one JSON object a line.
    ///
    /// Example: gantry logs web --since 10m -f
    Logs(LogsArgs),

    /// List the releases, newest first, or show one
    ///
    /// Example: gantry releases show r3
    Releases(ReleasesArgs),

    /// Re-activate an earlier deployment from its stored artifacts, without rebuilding
    ///
    /// Goes back to the complete deployment before the one running (each
    /// rollback steps one further back) unless --to names one; `gantry
    /// releases` lists them.
    ///
    /// Example: gantry rollback -e prod --to d2
    Rollback(RollbackArgs),

    /// Stop one service, or all of them; they stay stopped until deployed or restarted
    ///
    /// Example: gantry stop worker
    Stop(ServiceArg),

    /// Restart one service, or all of them, on their current release
    ///
    /// Example: gantry restart web
    Restart(ServiceArg),

    /// Set, list, remove, import and sync the environment's secrets, kept encrypted in the project
    ///
    /// Stored in .gantry/secrets/<env>.age, encrypted with age to the key in
    /// ~/.config/gantry/identity.txt (made on first use; never in the project).
    /// A deploy reads them before the environment and .gantry/secrets.env.
    ///
    /// Example: printf %s "$TOKEN" | gantry secrets set -e prod API_TOKEN
    Secrets(SecretsArgs),

    /// What a deploy would do, per host and service, changing nothing
    ///
    /// Per host: a new release or unchanged, and why (the files differ, a
    /// service is added, removed or changes, with the keys that differ);
    /// and the SQL migrations a deploy would apply. No build runs (the
    /// files are taken as they are on disk), nothing is sent, no lock is taken.
    ///
    /// Example: gantry plan -e prod
    Plan,

    /// Show, plan or apply the services' SQL migrations (`migrate = { sql, database }`)
    ///
    /// Each service with `migrate.sql` has a directory of NNNN_name.sql files,
    /// applied in order, each in its own transaction, and recorded with its
    /// sha256 in the database's `gantry_migrations` table; a recorded file that
    /// changed since is refused. The SQL runs from this machine, with the
    /// database URL from the variable `migrate.database` names (the service's
    /// env, or a secret read as a deploy reads it). A deploy runs the pending
    /// ones before any new instance starts.
    ///
    /// Example: gantry migrate plan -e prod
    Migrate(MigrateArgs),

    /// Take, list, restore or download a service's backups
    ///
    /// A service's `backup = { schedule, keep, kind, path }` is carried out
    /// by the agent of each host that runs it: volumes and directories as
    /// tar + zstd, SQLite by its online backup API, PostgreSQL and
    /// MySQL/MariaDB by their dump tools inside the container. Backups stay
    /// on the host, in the agent's state directory, through redeploys and
    /// rollbacks.
    ///
    /// Example: gantry backup list -e prod db
    Backup(BackupArgs),

    /// Add an existing server, reachable over SSH, to an environment
    ///
    /// Checks that `ssh` logs in without a prompt, adds [hosts.HOST] to
    /// gantry.toml (keeping its comments) when it is not declared, lists the
    /// host in the environment, and marks the environment provisioned.
    /// Without --ssh, HOST is a name from ~/.ssh/config.
    ///
    /// Example: gantry register web1 --ssh deploy@203.0.113.7 -e prod
    Register(RegisterArgs),

    /// Make every host of the environment ready to deploy to, over SSH
    ///
    /// Installs this gantry binary on each host (only when it differs), its
    /// state directory, and its agent (a systemd unit as root on systemd
    /// hosts; otherwise a daemon the CLI restarts when needed), replaces an
    /// agent of another version, and opens 22/80/443 when ufw is active. Safe
    /// to run again. `gantry deploy` runs it first when the environment is
    /// not configured yet.
    ///
    /// Example: gantry configure -e prod
    Configure,

    /// Create, list, show, destroy or forget environments' state
    ///
    /// Each environment's lifecycle is kept in .gantry/state/<env>.json:
    /// created → provisioned → configured → running, with *_failed states
    /// that record the step, the host and the error, and destroyed.
    ///
    /// Example: gantry env list
    Env(EnvArgs),

    /// Check every host of the environment: agent, services, routes, DNS
    ///
    /// Per host: the agent answers (and its version), every service placed
    /// there runs with all its instances healthy, each route answers through
    /// the host's proxy (probed from the host), and each route's DNS name
    /// resolves to a host of the environment (a warning, not a failure).
    /// Exits 6 when a check fails.
    ///
    /// Example: gantry test -e prod
    Test,

    /// Open a shell on a host of the environment, or run a command there
    ///
    /// Uses your own ssh (its config, agent and keys). Without HOST, the
    /// environment's first host.
    ///
    /// Example: gantry ssh web1 -e prod -- df -h
    Ssh(SshArgs),

    /// Run a command as a service runs: in its current release, with its environment and secrets
    ///
    /// On the first host that runs the service (or --host), through ssh for
    /// remote hosts; secrets are read on the host and never travel. The
    /// command's exit code is gantry's.
    ///
    /// Example: gantry exec web -e prod -- ./manage migrate
    Exec(ExecArgs),

    /// Run this machine's agent, or stop it
    ///
    /// The agent supervises the services, keeps releases and serves its API on
    /// a Unix socket in the state directory. The CLI starts it when needed;
    /// stopping it leaves the services running.
    ///
    /// Example: gantry agent stop
    Agent(AgentArgs),

    /// Run the tracker hub, and manage its products, users and API keys
    ///
    /// `gantry hub serve` serves the hub's agent API (items, claims, pull
    /// requests, comments; /api/openapi.json describes it) over SQLite in the
    /// state directory, or PostgreSQL with --database postgres://...; the
    /// other subcommands work on the same database directly.
    ///
    /// Example: gantry hub key create --name coder-1 --role agent --permission write
    Hub(crate::commands::hub::HubArgs),

    /// Run the reverse proxy in the foreground
    ///
    /// Routes requests by host and path to the upstreams of its route table,
    /// which it takes over its control socket (`proxy.sock` in the state
    /// directory: PUT /v1/routes, POST /v1/drain, GET /metrics) and keeps in
    /// routes.json. HTTPS (--https) picks each certificate by SNI name: a
    /// route's own, an ACME one, or the local CA's for *.localhost (see
    /// `gantry trust`). The agent starts one itself; `gantry proxy restart`
    /// replaces it by listener handoff (HTTP and HTTPS) without refusing a
    /// connection, and `gantry proxy stop` stops it (its routes stay in
    /// routes.json).
    ///
    /// Example: gantry proxy --listen 127.0.0.1:8080
    /// Example: gantry proxy restart
    Proxy(ProxyArgs),

    /// Show the local CA that signs https://*.localhost, and how to trust it
    ///
    /// The proxy serves `<service>.<project>.localhost` over HTTPS with
    /// certificates from a CA of its own, made once in the state directory
    /// (and made now if missing). Prints where its certificate is, its
    /// SHA-256 fingerprint, and the commands that make this system and the
    /// browsers trust it. The CA can only sign names under `localhost`; its
    /// private key is never printed.
    ///
    /// Example: gantry trust --output json
    Trust,

    /// Print a shell completion script
    ///
    /// The script is printed as it is, even when stdout is not a terminal;
    /// `--output json` wraps it in a JSON document.
    ///
    /// Example: gantry completions bash > /etc/bash_completion.d/gantry
    Completions(CompletionsArgs),

    /// Print the man page (roff)
    ///
    /// Example: gantry man | man -l -
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Skip the build commands and ship what is on disk
    #[arg(long)]
    pub skip_build: bool,

    /// Take the environment's deploy lock even if another deploy holds it (warns; use only when that deploy is gone)
    #[arg(long)]
    pub force_unlock: bool,

    /// Print what the deploy would do (as `gantry plan`) and change nothing
    #[arg(long, conflicts_with_all = ["skip_build", "force_unlock"])]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this service
    pub service: Option<String>,

    /// Keep printing new lines as they come
    #[arg(short, long)]
    pub follow: bool,

    /// Only lines from this long ago, like 10m or 1h
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,

    /// Only the last N lines
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    #[command(subcommand)]
    pub action: Option<ReleasesAction>,
}

#[derive(Debug, Subcommand)]
pub enum ReleasesAction {
    /// Show one release: its phases, timings, outcome and services
    Show {
        /// The release's id (r3) or number (3)
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The deployment to go back to (its id or the start of it); where the
    /// hosts keep no deployments, a release (id like r2)
    #[arg(long, value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServiceArg {
    /// One service [default: every service]
    pub service: Option<String>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub action: Option<AgentAction>,

    /// The ports the agent gives services as $PORT, like 20000-29999
    #[arg(long, env = "GANTRY_AGENT_PORTS", value_name = "FIRST-LAST", value_parser = parse_ports)]
    pub ports: Option<std::ops::RangeInclusive<u16>>,

    /// Where the agent's reverse proxy listens, like 127.0.0.1:8080; `off` runs none
    #[arg(long, env = "GANTRY_PROXY_LISTEN", value_name = "ADDR|off", value_parser = parse_proxy_listen)]
    pub proxy_listen: Option<ProxyListen>,

    /// Where the agent's reverse proxy accepts HTTPS, like 127.0.0.1:8443 (the
    /// default); `off` serves plain HTTP only
    #[arg(long, env = "GANTRY_PROXY_HTTPS", value_name = "ADDR|off", value_parser = parse_proxy_listen)]
    pub proxy_https: Option<ProxyListen>,
}

/// One of the proxy's listen addresses, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyListen(pub Option<std::net::SocketAddr>);

fn parse_proxy_listen(text: &str) -> Result<ProxyListen, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(ProxyListen(None));
    }
    text.trim()
        .parse()
        .map(|addr| ProxyListen(Some(addr)))
        .map_err(|_| {
            format!("`{text}` is not an address: write IP:PORT, like 127.0.0.1:8080, or off")
        })
}

/// A project's or service's name, checked as gantry.toml's are.
fn parse_name(text: &str) -> Result<String, String> {
    gantry_config::check_name(text)
        .map(|()| text.to_owned())
        .map_err(|why| format!("not a project or service name: {why}"))
}

/// An address or a network, as the proxy reads it: refused here, before
/// anything starts.
fn parse_trusted_proxy(text: &str) -> Result<gantry_proxy::TrustedProxy, String> {
    text.trim().parse()
}

/// Checked as gantry.toml's `ssh` is, before it reaches `ssh` or the file.
fn parse_ssh_target(text: &str) -> Result<String, String> {
    gantry_config::SshTarget::parse(text).map(|_| text.to_owned())
}

fn parse_ports(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a range: write FIRST-LAST, like 20000-29999"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{p}` is not a port number (1-65535)"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first > last {
        return Err(format!(
            "the range {first}-{last} is empty: the first port comes first"
        ));
    }
    Ok(first..=last)
}

#[derive(Debug, Subcommand)]
pub enum AgentAction {
    /// Stop the agent; the services keep running
    Stop,
    /// Bridge stdin and stdout to the agent's API (what `ssh HOST gantry agent connect` runs; starts the agent if none runs, unless it is a systemd unit)
    Connect {
        /// The agent runs as this systemd unit: wait a few seconds for it to answer, never start one
        #[arg(long, env = "GANTRY_AGENT_UNIT", value_name = "UNIT")]
        unit: Option<String>,
    },
    /// Print the status code of `GET /` through a proxy with a Host header (what `gantry test` runs on a host)
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        proxy: String,
        #[arg(long)]
        name: String,
    },
    /// Run a command as a service of this machine runs (what `gantry exec` runs on a host)
    #[command(hide = true)]
    Exec {
        #[arg(long, value_parser = parse_name)]
        project: String,
        #[arg(long, value_parser = parse_name)]
        service: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Open 22, 80 and 443/tcp in this machine's firewall (ufw or nftables; needs
    /// root). What `gantry configure` runs on a host, and the agent's systemd
    /// unit before each start
    #[command(hide = true)]
    OpenPorts,
    /// Run one instance's relay (started by the agent, not by hand)
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        spec: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("acme_options")
        .args(["acme_email", "acme_ca_root"])
        .multiple(true)
        .requires("acme_directory")
))]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub action: Option<ProxyAction>,

    /// Where clients connect
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// Where clients connect over HTTPS; `off` serves plain HTTP only
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR|off", value_parser = parse_proxy_listen)]
    pub https: ProxyListen,

    /// Write no access log lines on stderr
    #[arg(long)]
    pub no_access_log: bool,

    /// Get certificates over ACME (HTTP-01) for routes with `tls = "acme"` from
    /// this CA directory, like https://acme-v02.api.letsencrypt.org/directory
    #[arg(long, env = "GANTRY_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,

    /// The contact address given to the ACME account (with --acme-directory)
    #[arg(long, env = "GANTRY_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// A PEM root certificate to trust for the ACME server's own HTTPS (a CA on a
    /// private PKI, such as Pebble); it replaces the system's roots for that server
    /// (with --acme-directory)
    #[arg(long, env = "GANTRY_ACME_CA_ROOT", value_name = "FILE")]
    pub acme_ca_root: Option<std::path::PathBuf>,

    /// Take over the listening sockets of the proxy running on this state
    /// directory (over its handoff.sock) instead of binding --listen and --https; that
    /// proxy then finishes its open requests and exits
    #[arg(long)]
    pub take_over: bool,

    /// Seconds a client gets for its TLS handshake, for the first bytes of its
    /// connection, and for an HTTP/1 request's headers; then it is closed
    #[arg(long, env = "GANTRY_PROXY_CLIENT_TIMEOUT", default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub client_timeout: u64,

    /// Seconds a client connection may stay open with no request (HTTP/1
    /// keep-alive and HTTP/2), and an answer or a WebSocket's bytes may wait
    /// on a side that takes none of them (a client, or a service, that
    /// stopped reading); a quiet WebSocket is never closed
    #[arg(long, env = "GANTRY_PROXY_IDLE_TIMEOUT", default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,

    /// Client connections open at once; lowered to what the open-files limit allows
    #[arg(long, env = "GANTRY_PROXY_MAX_CONNECTIONS", default_value_t = 16384, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Connections open at once from one client address; when the open-files
    /// limit lowers --max-connections, at most half of what it allows
    #[arg(long, env = "GANTRY_PROXY_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_client: u64,

    /// A proxy or load balancer in front (an address or a network like
    /// 10.0.0.0/8; repeat it, or comma-separate in the variable): its
    /// X-Forwarded-*, X-Real-IP and Forwarded headers are kept. Everyone
    /// else's are replaced with what this proxy saw
    #[arg(
        long = "trusted-proxy",
        env = "GANTRY_PROXY_TRUSTED",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = parse_trusted_proxy
    )]
    pub trusted_proxies: Vec<gantry_proxy::TrustedProxy>,

    /// Write the proxy's log to this file instead of stderr; it never grows
    /// past --log-max-bytes (the older half is kept as FILE.1)
    #[arg(long, env = "GANTRY_PROXY_LOG_FILE", value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// The size --log-file never passes
    #[arg(long, env = "GANTRY_PROXY_LOG_MAX_BYTES", default_value_t = 10 * 1024 * 1024,
          value_name = "BYTES", value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_max_bytes: u64,
}

#[derive(Clone, Copy, Debug, Subcommand)]
pub enum ProxyAction {
    /// Replace the agent's proxy with a new process that takes over its
    /// listening sockets: no connection is refused, open requests finish
    Restart,
    /// Stop the agent's proxy; its routes stay in routes.json for the next one
    Stop,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// What to render for
    #[arg(long, value_enum)]
    pub target: RenderTarget,

    /// The directory to write to; created if missing, and refused if it holds
    /// files `gantry render` did not write
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RenderTarget {
    /// docker-compose files for container services
    Compose,
    /// systemd units for process services
    Systemd,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to create gantry.toml (created if missing)
    #[arg(default_value = ".")]
    pub dir: PathBuf,

    /// The project name [default: from the directory name]
    #[arg(long)]
    pub name: Option<String>,

    /// Replace an existing gantry.toml
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The host's name in gantry.toml, like web1
    pub host: String,
    /// How to reach it: user@address, user@address:port, or a name from ~/.ssh/config
    #[arg(long, value_name = "TARGET", value_parser = parse_ssh_target)]
    pub ssh: Option<String>,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub action: EnvAction,
}

#[derive(Debug, Subcommand)]
pub enum EnvAction {
    /// Start an environment's state (created)
    Create { name: String },
    /// Every environment: declared in gantry.toml or with state, and its state
    List,
    /// An environment's state, hosts and last failure
    Show { name: String },
    /// Stop the project's services on every host and mark the environment destroyed (needs --yes)
    Destroy { name: String },
    /// Forget a destroyed environment's state
    Purge {
        name: String,
        /// Forget it in any state, stopping nothing (its hosts are gone; needs --yes)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The host [default: the environment's first host]
    pub host: Option<String>,
    /// A command to run instead of a shell
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The service whose release and environment the command gets
    pub service: String,
    /// The host to run on [default: the first host that runs the service]
    #[arg(long)]
    pub host: Option<String>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: BackupAction,
}

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Back the service up now, on every host that runs it
    ///
    /// Example: gantry backup now -e prod db
    Now {
        /// The service, which must have `backup` in gantry.toml
        service: String,
    },
    /// The service's backups on each host, newest first, its schedule and any failure
    ///
    /// Example: gantry backup list db
    List { service: String },
    /// Put a backup back (needs --yes)
    ///
    /// Volumes, a directory or a SQLite file: the service is stopped, its
    /// data replaced by the backup's, and started again. A PostgreSQL or
    /// MySQL dump is restored into the running database by its own tool,
    /// in one transaction.
    ///
    /// Example: gantry backup restore -e prod db 20261206T030000Z --yes
    Restore {
        service: String,
        /// The backup's id, as `gantry backup list` shows it
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Download a backup to this machine, checked against its sha256
    ///
    /// Example: gantry backup pull -e prod db 20261206T030000Z --to db.pgdump
    Pull {
        service: String,
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
        /// Where to write it (default: ./SERVICE-ID.EXT)
        #[arg(long, value_name = "PATH")]
        to: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub action: MigrateAction,
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Every migration and where it stands: applied (when, how long), pending, edited or missing
    ///
    /// Example: gantry migrate status -e prod
    Status(MigrateService),
    /// The migrations a run would apply, in order; changes nothing
    ///
    /// Refused (migrate.edited) when an applied migration's file changed.
    ///
    /// Example: gantry migrate plan
    Plan(MigrateService),
    /// Apply the pending migrations, each in its own transaction
    ///
    /// A failing migration is rolled back and none after it runs
    /// (migrate.failed). Two runs at once apply each migration once.
    ///
    /// Example: gantry migrate run -e prod web
    Run(MigrateService),
}

#[derive(Debug, Args)]
pub struct MigrateService {
    /// Only this service's migrations (default: every service with `migrate.sql`)
    pub service: Option<String>,
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub action: SecretsAction,
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Set a secret of the environment; the value comes from stdin, or a hidden prompt
    ///
    /// The value is never an argument, where `ps` would show it.
    ///
    /// Example: printf %s "$TOKEN" | gantry secrets set -e prod API_TOKEN
    Set {
        /// The secret's name, as the service's environment variable
        name: String,
    },
    /// List the secrets' names, environments and when each changed; never values
    ///
    /// Example: gantry secrets list --all
    List {
        /// Every environment with secrets, instead of one (so -e and GANTRY_ENV cannot go with it)
        #[arg(long, conflicts_with = "environment")]
        all: bool,
    },
    /// Remove a secret from the environment
    ///
    /// Example: gantry secrets rm -e prod API_TOKEN
    Rm {
        /// The secret's name
        name: String,
    },
    /// Set every NAME=value of a dotenv file
    ///
    /// Example: gantry secrets import -e prod .env.production
    Import {
        /// The dotenv file
        file: PathBuf,
    },
    /// Give the hosts' services the environment's secrets as they are now
    ///
    /// Each host deploys its current release again from its stored
    /// artifact with the current secrets: every service restarts through
    /// the zero-downtime path of a deploy.
    ///
    /// Example: gantry secrets sync -e prod
    Sync,
}
