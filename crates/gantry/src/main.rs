//! The gantry binary: wires the concrete parts (the agent, its relay, the
//! local transport) into the CLI and runs it. Nothing else happens here.

mod exec;

use std::ops::RangeInclusive;
use std::path::Path;
use std::process::ExitCode;

use gantry_cli::{Failure, Wiring};
use gantry_core::host::{Host, HostError};

fn run_agent(
    state_dir: &Path,
    ports: Option<RangeInclusive<u16>>,
    proxy_listen: Option<gantry_cli::ProxyListen>,
    proxy_https: Option<gantry_cli::ProxyListen>,
) -> Result<(), Failure> {
    let mut settings = gantry_agent::Settings::default();
    // Its own log is capped as its services' logs are.
    let log =
        gantry_agent::AgentLog::of_stderr(state_dir, settings.log_max_bytes, settings.log_keep);
    init_tracing(log);
    if let Some(ports) = ports {
        settings.ports = ports;
    }
    if let Some(listen) = proxy_listen {
        settings.proxy_listen = listen.0;
    }
    if let Some(https) = proxy_https {
        settings.proxy_https = https.0;
    }
    gantry_agent::run(state_dir.to_owned(), settings).map_err(|e| Failure {
        code: e.code().as_str(),
        exit: e.code().exit_class().code(),
        message: e.to_string(),
        hint: e.hint().map(str::to_owned),
        diagnostics: None,
        details: None,
    })
}

fn run_proxy(state_dir: &Path, options: &gantry_cli::ProxyOptions) -> Result<(), Failure> {
    let mut config = gantry_proxy::ProxyConfig::new(proxy_state_dir(state_dir));
    config.http = options.listen;
    config.https = options.https;
    config.access_log = options.access_log;
    if let Some(directory) = &options.acme_directory {
        let mut acme = gantry_proxy::acme::AcmeConfig::new(directory.clone());
        acme.email = options.acme_email.clone();
        acme.ca_root = options.acme_ca_root.clone();
        config.acme = Some(acme);
    }
    config.take_over = options.take_over;
    config.clients = gantry_proxy::ClientLimits {
        handshake: options.client_timeout,
        first_bytes: options.client_timeout,
        headers: options.client_timeout,
        idle: options.idle_timeout,
        max_connections: usize::try_from(options.max_connections).unwrap_or(usize::MAX),
        max_per_client: usize::try_from(options.max_connections_per_client).unwrap_or(usize::MAX),
        ..gantry_proxy::ClientLimits::default()
    };
    config.trusted_proxies = options
        .trusted_proxies
        .iter()
        .map(|text| text.trim().parse())
        .collect::<Result<_, String>>()
        .map_err(|message| Failure {
            code: "usage",
            exit: gantry_core::ExitClass::Usage.code(),
            message: format!("--trusted-proxy: {message}"),
            hint: Some("give an address or a network, like 10.0.0.0/8 or 2001:db8::/32".to_owned()),
            diagnostics: None,
            details: None,
        })?;
    config.log_file = options
        .log_file
        .clone()
        .map(|path| (path, options.log_max_bytes));
    gantry_proxy::run(config).map_err(|e| Failure {
        code: "proxy.failed",
        exit: gantry_core::ExitClass::Failed.code(),
        hint: e.hint(),
        message: e.to_string(),
        diagnostics: None,
        details: None,
    })
}

/// The proxy's own state directory inside the agent's.
fn proxy_state_dir(state_dir: &Path) -> std::path::PathBuf {
    gantry_core::agent_dir::Paths::new(state_dir).proxy()
}

/// `gantry trust`: the proxy's local CA, made now if it is missing.
fn local_ca(state_dir: &Path) -> Result<gantry_cli::TrustReport, Failure> {
    let ca = gantry_proxy::LocalCa::load_or_create(
        &gantry_proxy::ProxyDir::new(proxy_state_dir(state_dir)).local_ca(),
    )
    .map_err(|e| Failure {
        code: "tls.local_ca_failed",
        exit: gantry_core::ExitClass::Failed.code(),
        hint: e.hint(),
        message: e.to_string(),
        diagnostics: None,
        details: None,
    })?;
    Ok(gantry_cli::TrustReport {
        path: ca.cert_path(),
        fingerprint_sha256: ca.fingerprint_sha256(),
        not_after: ca.not_after(),
    })
}

/// The agent logs to stderr, through `log` when that is its rotated log file
/// (when started by the CLI); `RUST_LOG` tunes it.
fn init_tracing(log: Option<gantry_agent::AgentLog>) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let writer = match log {
        Some(log) => BoxMakeWriter::new(std::sync::Mutex::new(log)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init();
}

fn connect(
    host: &gantry_core::config::resolve::Host,
    state_dir: &Path,
    start: bool,
) -> Result<Box<dyn Host>, HostError> {
    use gantry_core::config::resolve::Reach;
    let name = host.name.as_str();
    match &host.reach {
        Reach::Local => {
            let agent = if start {
                gantry_remote::LocalAgent::connect_or_start(name, state_dir, &exe(name)?)?
            } else {
                gantry_remote::LocalAgent::connect(name, state_dir)?
            };
            Ok(Box::new(agent))
        }
        Reach::Ssh { target } => Ok(Box::new(gantry_remote::SshAgent::connect(
            name,
            target,
            ssh_options(),
        )?)),
        Reach::Provider { provider } => Err(HostError::Unreachable {
            host: name.to_owned(),
            message: format!(
                "host `{name}` comes from {provider:?}, which Gantry cannot create yet"
            ),
            hint: "give it an `ssh` address in [hosts] once the server exists".to_owned(),
        }),
    }
}

/// How this process runs `ssh`, decided once; when no safe directory for
/// shared connections exists, a warning says so once.
fn ssh_options() -> &'static gantry_remote::SshOptions {
    static OPTIONS: std::sync::OnceLock<gantry_remote::SshOptions> = std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        let options = gantry_remote::SshOptions::from_env();
        if let Some(why) = &options.unshared {
            eprintln!(
                "warning: SSH connections are not shared (each command logs in anew): no private directory for their sockets: {why}"
            );
        }
        options
    })
}

fn shell(
    host: &gantry_core::config::resolve::Host,
) -> Result<Box<dyn gantry_core::host::Shell>, HostError> {
    use gantry_core::config::resolve::Reach;
    match &host.reach {
        Reach::Ssh { target } => Ok(Box::new(gantry_remote::Shell::new(
            &host.name,
            target,
            ssh_options(),
        )?)),
        _ => Err(HostError::Unreachable {
            host: host.name.clone(),
            message: format!("host `{}` has no ssh address", host.name),
            hint: format!("give it one: [hosts.{}] ssh = \"user@address\"", host.name),
        }),
    }
}

fn exe(name: &str) -> Result<std::path::PathBuf, HostError> {
    std::env::current_exe().map_err(|e| HostError::Unreachable {
        host: name.to_owned(),
        message: format!("cannot find the gantry binary to start the agent: {e}"),
        hint: "start it yourself with `gantry agent`".to_owned(),
    })
}

/// How long `gantry agent connect` waits for a systemd unit's agent, which
/// may be starting or restarting (`RestartSec=1`).
const UNIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// `gantry agent connect`: starts this machine's agent if none runs (or,
/// when systemd runs it as `unit`, waits for it), then bridges stdin and
/// stdout to its socket.
fn bridge(state_dir: &Path, unit: Option<&str>) -> Result<(), Failure> {
    let paths = gantry_core::agent_dir::Paths::new(state_dir);
    let hint = match unit {
        Some(unit) => format!(
            "systemd runs it on this host: see `systemctl status {unit}` and `journalctl -u {unit}`"
        ),
        None => format!("see {} on this host", paths.agent_log().display()),
    };
    let failed = |message: String| Failure {
        code: "agent.unreachable",
        exit: gantry_core::ExitClass::Unreachable.code(),
        message,
        hint: Some(hint.clone()),
        diagnostics: None,
        details: None,
    };
    match unit {
        // Starting another agent here would run it as whoever connected,
        // beside the unit's: never.
        Some(unit) => {
            // Only root (and the unit's own user) may open its state
            // directory: waiting would not change that.
            if let Err(e) = std::fs::read_dir(state_dir)
                && e.kind() == std::io::ErrorKind::PermissionDenied
            {
                return Err(Failure {
                    hint: Some(
                        "reach this host as root (`User root` for it in your ssh config)"
                            .to_owned(),
                    ),
                    ..failed(format!(
                        "systemd runs this host's agent (unit {unit}) with its state in {}, which this user cannot open",
                        state_dir.display()
                    ))
                });
            }
            gantry_remote::LocalAgent::wait_for("local", state_dir, UNIT_PATIENCE).map_err(
                |e| {
                    let why = match &e {
                        HostError::Unreachable { message, .. } => message.clone(),
                        other => other.to_string(),
                    };
                    failed(format!(
                        "the agent of the systemd unit {unit} does not answer on {} after {}s: {why}",
                        paths.socket().display(),
                        UNIT_PATIENCE.as_secs()
                    ))
                },
            )?;
        }
        None => {
            gantry_remote::LocalAgent::connect_or_start(
                "local",
                state_dir,
                &exe("local").map_err(|e| failed(e.to_string()))?,
            )
            .map_err(|e| failed(e.to_string()))?;
        }
    }
    gantry_remote::bridge(&paths.socket()).map_err(|e| failed(e.to_string()))
}

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (the proxy today).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let wiring = Wiring {
        run_agent,
        run_proxy,
        local_ca,
        relay: gantry_agent::relay_main,
        connect,
        bridge,
        shell,
        exec: exec::exec,
        default_state_dir: gantry_agent::default_state_dir,
    };
    gantry_cli::run(std::env::args_os(), &wiring)
}
