//! `gantry hub`: run the tracker hub, and manage its products, users and
//! API keys on its database directly (no server needed).

use std::io::{BufRead, IsTerminal, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use gantry_hub::model::{KeyInfo, Milestone, Permission, Product, Role, UserRole};
use gantry_hub::{Background, HubError, KeySpec, Limits, Location, ServeOptions, Store, UserInfo};
use serde::Serialize;

use crate::output::{Failure, Printer, Report};

#[derive(Debug, Args)]
pub struct HubArgs {
    #[command(subcommand)]
    pub action: HubAction,

    /// The hub's database: a postgres:// URL or a SQLite file [default: hub/hub.db in the state directory]
    #[arg(
        long,
        global = true,
        env = "GANTRY_HUB_DATABASE",
        value_name = "URL|PATH",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum HubAction {
    /// Serve the hub's API in the foreground until SIGINT or SIGTERM
    ///
    /// Example: gantry hub serve --listen 127.0.0.1:8780
    Serve(ServeArgs),
    /// Products: every item belongs to one, numbered by its key (SHOP-42)
    #[command(subcommand)]
    Product(ProductAction),
    /// Milestones of a product, which items aim at
    #[command(subcommand)]
    Milestone(MilestoneAction),
    /// Users of the hub's pages
    #[command(subcommand)]
    User(UserAction),
    /// API keys for agents, CI and webhooks
    #[command(subcommand)]
    Key(KeyAction),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen
    #[arg(long, default_value = "127.0.0.1:8780", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Requests a minute one client address may make
    #[arg(long, default_value_t = Limits::default().per_address_per_minute, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_per_address: u32,
    /// Requests a minute one API key may make, unless the key has its own rate
    #[arg(long, default_value_t = Limits::default().per_key_per_minute, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_per_key: u32,
    /// Connections the hub holds open at once, from every client together
    ///
    /// More are closed unanswered as they come, before a byte of them is
    /// read: a flood of connections holds no more than this many open. Each
    /// open connection takes a file descriptor: keep it under the hub's
    /// limit of open files (`ulimit -n`, LimitNOFILE= in a systemd unit),
    /// with room for the database and attachments (Linux allows a process
    /// at most 1048576 by default). Raise it for many clients at once;
    /// --max-connections-per-address keeps any one of them from taking them
    /// all. Behind Gantry's proxy (--behind-proxy) the proxy's connections
    /// count here.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_048_576))]
    pub max_connections: usize,
    /// Connections one client address may hold open at once
    ///
    /// More are closed unanswered as they come, so that one client cannot
    /// take every connection; an IPv6 /64 counts as one address. Raise it
    /// when many people share an address, as an office behind NAT does.
    /// Behind Gantry's proxy (--behind-proxy) the proxy's connections count
    /// only to the hub's total: the proxy caps its own clients.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections_per_address, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_address: usize,
    /// Seconds a client may take nothing of an answer before the hub resets
    /// its connection
    ///
    /// An answer the hub is sending (an export, an attachment, any answer)
    /// that its client stops reading would otherwise hold the connection for
    /// ever. Only time spent waiting on the client counts: a slow link that
    /// keeps reading is never cut off. Raise it for clients whose reading
    /// pauses for long; lower it to free sooner the connections of clients
    /// that stop reading.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().stall.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stall_seconds: u64,
    /// The hub runs behind Gantry's proxy: take the client's address from the
    /// X-Real-IP the proxy writes (for connections from loopback only; other
    /// users of the host can connect from loopback too)
    #[arg(long)]
    pub behind_proxy: bool,
    /// Let outbound webhooks reach loopback, private and link-local
    /// addresses (refused by default: a subscription must not reach inside)
    #[arg(long)]
    pub allow_internal_webhooks: bool,
    /// Hours a critical bug may stay open before its SLA breach is announced
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8760))]
    pub critical_bug_sla_hours: u64,
    /// Days without a change after which an unfinished item is announced stale
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub stale_days: u64,
    /// Megabytes one product's attachments may take in all (each counted
    /// whole, equal files too); an upload past it is refused with 413
    #[arg(long, value_name = "MB", default_value_t = Limits::default().attachment_quota_bytes / (1024 * 1024), value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub attachment_quota_mb: u64,
}

#[derive(Debug, Subcommand)]
pub enum ProductAction {
    /// Add a product
    ///
    /// Example: gantry hub product add SHOP --name "The shop"
    Add {
        /// 2 to 10 capital letters or digits, starting with a letter
        key: String,
        #[arg(long)]
        name: String,
    },
    /// List the products
    List,
}

#[derive(Debug, Subcommand)]
pub enum MilestoneAction {
    /// Add a milestone to a product
    ///
    /// Example: gantry hub milestone add SHOP 1.5 --target 2027-03-31
    Add {
        product: String,
        name: String,
        /// The target date, YYYY-MM-DD
        #[arg(long, value_name = "DATE")]
        target: Option<String>,
    },
    /// List a product's milestones
    List { product: String },
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a user; the password (12 characters or more) is asked for on the
    /// terminal, or read from stdin with --password-stdin, never from the
    /// command line, where `ps` would show it
    ///
    /// Example: printf '%s\n' "$PASSWORD" | gantry hub user add ann --email ann@example.com --password-stdin --role member --product SHOP
    Add(UserAddArgs),
    /// Grant a user a role in a product, replacing the one they had there
    ///
    /// Example: gantry hub user grant ann --role viewer --product BLOG
    Grant {
        name: String,
        /// `none` takes the user's role there away
        #[arg(long, value_enum)]
        role: GrantArg,
        /// The product [default: every product]
        #[arg(long)]
        product: Option<String>,
    },
    /// List the users and their roles
    List,
    /// Set a user's password (asked for as `add` does); their sessions end
    Password {
        name: String,
        /// Read the password from the first line of stdin
        #[arg(long)]
        password_stdin: bool,
    },
    /// End every session of a user at once
    Logout { name: String },
    /// Turn a user's second factor off (a lost phone): their sessions and
    /// recovery codes end, and they enrol again after logging in
    ResetTotp { name: String },
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    pub name: String,
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// A role to grant at once
    #[arg(long, value_enum)]
    pub role: Option<UserRoleArg>,
    /// The product the role is for [default: every product]
    #[arg(long, requires = "role")]
    pub product: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum UserRoleArg {
    Viewer,
    Member,
    Admin,
}

impl From<UserRoleArg> for UserRole {
    fn from(role: UserRoleArg) -> UserRole {
        match role {
            UserRoleArg::Viewer => UserRole::Viewer,
            UserRoleArg::Member => UserRole::Member,
            UserRoleArg::Admin => UserRole::Admin,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GrantArg {
    Viewer,
    Member,
    Admin,
    None,
}

impl GrantArg {
    fn role(self) -> Option<UserRole> {
        match self {
            GrantArg::Viewer => Some(UserRole::Viewer),
            GrantArg::Member => Some(UserRole::Member),
            GrantArg::Admin => Some(UserRole::Admin),
            GrantArg::None => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create a key; its secret is printed this once and never again
    ///
    /// Example: gantry hub key create --name coder-1 --role agent --permission write --product SHOP
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long, value_enum)]
        permission: PermissionArg,
        /// The one product the key reaches [default: every product]
        #[arg(long)]
        product: Option<String>,
        /// The key's own rate limit, requests a minute [default: the hub's]
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate_per_minute: Option<u32>,
        /// An address or network the key may be used from (repeat for more) [default: anywhere]
        #[arg(long, value_name = "CIDR")]
        allow_from: Vec<String>,
    },
    /// List the keys: names, scopes, last use; never their secrets
    List,
    /// Give a key a new secret; the old one stops working at once
    Rotate {
        /// The key's id (ghk_...) or name
        key: String,
    },
    /// Stop a key at once
    Revoke {
        /// The key's id (ghk_...) or name
        key: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Agent,
    Ci,
    Webhook,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PermissionArg {
    Read,
    Write,
    Admin,
}

impl From<HubError> for Failure {
    fn from(error: HubError) -> Failure {
        Failure {
            hint: error.hint(),
            ..Failure::new(error.code(), error.to_string())
        }
    }
}

/// Where `gantry hub` keeps its SQLite database by default.
fn default_database(state_dir: &Path) -> PathBuf {
    state_dir.join("hub").join("hub.db")
}

const DATABASE_ENV: &str = "GANTRY_HUB_DATABASE";

fn location(args: &HubArgs, state_dir: &Path) -> Result<Location, HubError> {
    match &args.database {
        Some(text) => {
            let location = Location::parse(text)?;
            // From GANTRY_HUB_DATABASE it is out of sight; on the command
            // line every local user's `ps` shows it.
            let from_env = std::env::var(DATABASE_ENV).is_ok_and(|v| v == *text);
            if location.has_password() && !from_env {
                return Err(HubError::Invalid {
                    message:
                        "the --database URL holds a password, which `ps` shows to every local user"
                            .to_owned(),
                    hint: Some(format!(
                        "set the URL in {DATABASE_ENV} instead, or keep the password in ~/.pgpass"
                    )),
                });
            }
            Ok(location)
        }
        None => Ok(Location::Sqlite(default_database(state_dir))),
    }
}

pub fn run(args: &HubArgs, state_dir: &Path, printer: &Printer) -> Result<(), Failure> {
    let database = location(args, state_dir)?;
    // The hub's key file and attachments: beside a SQLite database, in
    // the state directory's hub/ with PostgreSQL.
    let hub_dir = matches!(database, Location::Postgres(_)).then(|| state_dir.join("hub"));
    let store = || match &hub_dir {
        Some(dir) => Store::open_in(&database, dir),
        None => Store::open(&database),
    };
    match &args.action {
        HubAction::Serve(serve) => run_server(serve, &database, hub_dir.clone(), printer),
        HubAction::Product(action) => product(action, &store()?, printer),
        HubAction::Milestone(action) => milestone(action, &store()?, printer),
        HubAction::User(action) => user(action, &store()?, printer),
        HubAction::Key(action) => key(action, &store()?, printer),
    }
}

/// `gantry hub serve`: in the foreground until SIGINT or SIGTERM.
fn run_server(
    serve: &ServeArgs,
    database: &Location,
    hub_dir: Option<PathBuf>,
    printer: &Printer,
) -> Result<(), Failure> {
    // Request lines and failures on stderr; RUST_LOG tunes them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let options = ServeOptions {
        database: database.clone(),
        listen: serve.listen,
        limits: limits(serve),
        background: Background {
            allow_internal_targets: serve.allow_internal_webhooks,
            critical_bug_sla: std::time::Duration::from_secs(serve.critical_bug_sla_hours * 3600),
            stale_after: std::time::Duration::from_secs(serve.stale_days * 24 * 3600),
            ..Background::default()
        },
        state_dir: hub_dir,
    };
    gantry_hub::run(&options, |bound| {
        printer.status(&format!(
            "hub: listening on http://{bound}, database {}",
            database.describe()
        ));
    })?;
    Ok(())
}

/// The hub's limits, as `gantry hub serve`'s flags set them.
fn limits(serve: &ServeArgs) -> Limits {
    Limits {
        per_address_per_minute: serve.rate_per_address,
        per_key_per_minute: serve.rate_per_key,
        max_connections: serve.max_connections,
        max_connections_per_address: serve.max_connections_per_address,
        stall: std::time::Duration::from_secs(serve.stall_seconds),
        behind_proxy: serve.behind_proxy,
        attachment_quota_bytes: serve.attachment_quota_mb * 1024 * 1024,
        ..Limits::default()
    }
}

fn product(action: &ProductAction, store: &Store, printer: &Printer) -> Result<(), Failure> {
    match action {
        ProductAction::Add { key, name } => {
            emit(printer, Products(vec![store.add_product(key, name)?]))
        }
        ProductAction::List => emit(printer, Products(store.products()?)),
    }
}

fn milestone(action: &MilestoneAction, store: &Store, printer: &Printer) -> Result<(), Failure> {
    match action {
        MilestoneAction::Add {
            product,
            name,
            target,
        } => {
            let added = store.add_milestone(product, name, target.as_deref())?;
            emit(printer, Milestones(vec![added]))
        }
        MilestoneAction::List { product } => emit(printer, Milestones(store.milestones(product)?)),
    }
}

fn key(action: &KeyAction, store: &Store, printer: &Printer) -> Result<(), Failure> {
    match action {
        KeyAction::Create {
            name,
            role,
            permission,
            product,
            rate_per_minute,
            allow_from,
        } => {
            let spec = KeySpec {
                name: name.clone(),
                role: match role {
                    RoleArg::Agent => Role::Agent,
                    RoleArg::Ci => Role::Ci,
                    RoleArg::Webhook => Role::Webhook,
                },
                permission: match permission {
                    PermissionArg::Read => Permission::Read,
                    PermissionArg::Write => Permission::Write,
                    PermissionArg::Admin => Permission::Admin,
                },
                product: product.clone(),
                rate_per_minute: *rate_per_minute,
                allow_from: allow_from.clone(),
            };
            emit(printer, NewSecret::from(store.create_key(&spec)?))
        }
        KeyAction::List => emit(printer, Keys(store.keys()?)),
        KeyAction::Rotate { key } => emit(printer, NewSecret::from(store.rotate_key(key)?)),
        KeyAction::Revoke { key } => emit(printer, Keys(vec![store.revoke_key(key)?])),
    }
}

fn user(action: &UserAction, store: &Store, printer: &Printer) -> Result<(), Failure> {
    match action {
        UserAction::Add(args) => add_user(args, store, printer),
        UserAction::Grant {
            name,
            role,
            product,
        } => {
            let granted = store.grant(name, role.role(), product.as_deref())?;
            emit(printer, Users(vec![granted]))
        }
        UserAction::List => emit(printer, Users(store.users()?)),
        UserAction::Password {
            name,
            password_stdin,
        } => {
            let password = read_password(*password_stdin)?;
            let ended = store.set_password(name, &password)?;
            emit(printer, SessionsEnded::new(name, ended))
        }
        UserAction::Logout { name } => {
            let ended = store.revoke_sessions(name)?;
            emit(printer, SessionsEnded::new(name, ended))
        }
        UserAction::ResetTotp { name } => emit(printer, Users(vec![store.reset_totp(name)?])),
    }
}

/// `gantry hub user add`: the product is checked before the user is made.
fn add_user(args: &UserAddArgs, store: &Store, printer: &Printer) -> Result<(), Failure> {
    if let Some(product) = &args.product
        && !store.products()?.iter().any(|p| p.key == *product)
    {
        return Err(HubError::not_found(format!("product `{product}`")).into());
    }
    let password = read_password(args.password_stdin)?;
    store.add_user(&args.name, args.email.as_deref(), &password)?;
    if let Some(role) = args.role {
        store.grant(&args.name, Some(role.into()), args.product.as_deref())?;
    }
    emit(printer, Users(vec![store.user(&args.name)?]))
}

/// The password from the first line of stdin (`--password-stdin`), or
/// asked for twice on the terminal, never echoed.
fn read_password(from_stdin: bool) -> Result<String, Failure> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(4096)
            .read_line(&mut line)
            .map_err(|e| Failure::io("read the password from stdin", e))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(HubError::Invalid {
            message: "no terminal to ask for the password on".to_owned(),
            hint: Some("pipe it in with --password-stdin".to_owned()),
        }
        .into());
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::io("read the password from the terminal", e))
    };
    let password = ask("password: ")?;
    if ask("the same again: ")? != password {
        return Err(HubError::invalid("the two passwords differ").into());
    }
    Ok(password)
}

#[derive(Serialize)]
#[serde(transparent)]
struct Products(Vec<Product>);

impl Report for Products {
    fn text(&self) -> String {
        self.0
            .iter()
            .map(|p| format!("{}  {}\n", p.key, p.name))
            .collect()
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Milestones(Vec<Milestone>);

impl Report for Milestones {
    fn text(&self) -> String {
        self.0
            .iter()
            .map(|m| {
                format!(
                    "{}  {}\n",
                    m.name,
                    m.target_date.as_deref().unwrap_or("no target date")
                )
            })
            .collect()
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Users(Vec<UserInfo>);

impl Report for Users {
    fn text(&self) -> String {
        let mut out = String::new();
        for user in &self.0 {
            let roles: Vec<String> = user
                .roles
                .iter()
                .map(|g| {
                    format!(
                        "{} in {}",
                        g.role,
                        g.product.as_deref().unwrap_or("every product")
                    )
                })
                .collect();
            out.push_str(&format!(
                "{}  {}  {}{}\n",
                user.name,
                user.email.as_deref().unwrap_or("-"),
                if roles.is_empty() {
                    "no role".to_owned()
                } else {
                    roles.join(", ")
                },
                if user.totp { "  TOTP" } else { "" }
            ));
        }
        out
    }
}

#[derive(Serialize)]
struct SessionsEnded {
    name: String,
    sessions_ended: u64,
}

impl SessionsEnded {
    fn new(name: &str, sessions_ended: u64) -> SessionsEnded {
        SessionsEnded {
            name: name.to_owned(),
            sessions_ended,
        }
    }
}

impl Report for SessionsEnded {
    fn text(&self) -> String {
        format!("{}: {} sessions ended\n", self.name, self.sessions_ended)
    }
}

/// A key with its secret: the one time it is shown.
#[derive(Serialize)]
struct NewSecret {
    key: KeyInfo,
    secret: String,
}

impl From<gantry_hub::CreatedKey> for NewSecret {
    fn from(created: gantry_hub::CreatedKey) -> NewSecret {
        NewSecret {
            key: created.info,
            secret: created.secret,
        }
    }
}

impl Report for NewSecret {
    fn text(&self) -> String {
        format!(
            "key {} ({}, {} {}) — its secret, shown this once:\n{}\n",
            self.key.name, self.key.id, self.key.role, self.key.permission, self.secret
        )
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct Keys(Vec<KeyInfo>);

impl Report for Keys {
    fn text(&self) -> String {
        let mut out = String::new();
        for key in &self.0 {
            out.push_str(&format!(
                "{}  {}  {} {}  {}  {} requests, last {}{}\n",
                key.id,
                key.name,
                key.role,
                key.permission,
                key.product.as_deref().unwrap_or("every product"),
                key.request_count,
                key.last_used_at.as_deref().unwrap_or("never"),
                if key.revoked { "  REVOKED" } else { "" }
            ));
        }
        out
    }
}

fn emit(printer: &Printer, report: impl Report) -> Result<(), Failure> {
    printer
        .report(&report)
        .map_err(|e| Failure::io("write the report", e))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    /// `gantry hub serve FLAGS`, parsed.
    fn serve(flags: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["gantry", "hub", "serve"].iter().chain(flags);
        match Cli::try_parse_from(argv)?.command {
            Command::Hub(HubArgs {
                action: HubAction::Serve(serve),
                ..
            }) => Ok(serve),
            other => panic!("not `gantry hub serve`: {other:?}"),
        }
    }

    #[test]
    fn serve_flags_reach_the_hub_s_limits() {
        let flags = [
            "--max-connections-per-address",
            "8",
            "--stall-seconds",
            "90",
        ];
        let set = limits(&serve(&flags).expect("the flags parse"));
        assert_eq!(set.max_connections_per_address, 8);
        assert_eq!(set.stall, std::time::Duration::from_secs(90));
        assert_eq!(
            limits(&serve(&[]).expect("no flags parse")),
            Limits::default(),
            "without flags, the hub's own defaults"
        );
    }

    #[test]
    fn serve_max_connections_caps_the_hub_s_connections_in_all() {
        let set = limits(&serve(&["--max-connections", "4096"]).expect("the flag parses"));
        assert_eq!(set.max_connections, 4096);
        assert_eq!(
            set.max_connections_per_address,
            Limits::default().max_connections_per_address,
            "the cap per address keeps its default"
        );
        for (given, bounds) in [("0", "0 is not in 1..=1048576"), ("2000000", "1..=1048576")] {
            let refused = serve(&["--max-connections", given]).expect_err("a usage error");
            assert_eq!(refused.kind(), clap::error::ErrorKind::ValueValidation);
            let message = refused.to_string();
            assert!(
                message.contains("--max-connections <N>") && message.contains(bounds),
                "the error names the flag and its bounds: {message}"
            );
        }
    }

    #[test]
    fn serve_refuses_limits_that_would_serve_no_one() {
        for flags in [
            ["--max-connections-per-address", "0"],
            ["--stall-seconds", "0"],
        ] {
            let refused = serve(&flags).expect_err("a usage error");
            assert_eq!(
                refused.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flags:?}"
            );
        }
    }
}
