//! The gantry binary: wires the concrete parts (the agent, its relay, the
//! proxy, the transports) into the CLI and runs it. Nothing else happens
//! here: what it plugs in lives in gantry-agent, gantry-proxy and
//! gantry-remote.

use std::path::Path;
use std::process::ExitCode;

use gantry_cli::{AgentOptions, Failure, Wiring};
use gantry_core::Code;

fn run_agent(state_dir: &Path, options: &AgentOptions) -> Result<(), Failure> {
    let mut settings = gantry_agent::Settings::default();
    // Its own log is capped as its services' logs are.
    let log =
        gantry_agent::AgentLog::of_stderr(state_dir, settings.log_max_bytes, settings.log_keep);
    init_tracing(log, options.verbose);
    if let Some(ports) = &options.ports {
        settings.ports = ports.clone();
    }
    if let Some(listen) = options.proxy_listen {
        settings.proxy_listen = listen.0;
    }
    if let Some(https) = options.proxy_https {
        settings.proxy_https = https.0;
    }
    gantry_agent::run(state_dir.to_owned(), settings).map_err(|e| Failure {
        hint: e.hint().map(str::to_owned),
        ..Failure::new(e.code(), e.to_string())
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
    config.trusted_proxies = options.trusted_proxies.clone();
    config.log_file = options
        .log_file
        .clone()
        .map(|path| (path, options.log_max_bytes));
    gantry_proxy::run(config).map_err(|e| Failure {
        hint: e.hint(),
        ..Failure::new(Code::ProxyFailed, e.to_string())
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
        hint: e.hint(),
        ..Failure::new(Code::TlsLocalCaFailed, e.to_string())
    })?;
    Ok(gantry_cli::TrustReport {
        path: ca.cert_path(),
        fingerprint_sha256: ca.fingerprint_sha256(),
        not_after: ca.not_after(),
    })
}

/// The agent logs to stderr, through `log` when that is its rotated log file
/// (when started by the CLI); `RUST_LOG` tunes it, and `-v` (`-vv`) adds
/// Gantry's own debug (trace) events, never another crate's.
fn init_tracing(log: Option<gantry_agent::AgentLog>, verbose: u8) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let level = match verbose {
        0 => None,
        1 => Some("debug"),
        _ => Some("trace"),
    };
    for krate in ["gantry_agent", "gantry_core", "gantry_proxy"] {
        if let Some(directive) = level.and_then(|l| format!("{krate}={l}").parse().ok()) {
            filter = filter.add_directive(directive);
        }
    }
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

/// `gantry agent exec`, its connections checked as served by `uid`.
fn exec(
    state_dir: &Path,
    project: &str,
    service: &str,
    command: &[String],
) -> Result<i32, gantry_core::Error> {
    let connect = gantry_remote::connect_served_by;
    gantry_agent::run_exec::exec(state_dir, project, service, command, &connect)
}

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (the proxy today).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let wiring = Wiring {
        run_agent,
        run_proxy,
        local_ca,
        relay: gantry_agent::relay_main,
        connect: gantry_remote::connect,
        bridge: gantry_remote::agent_connect,
        shell: gantry_remote::open_shell,
        exec,
        default_state_dir: gantry_agent::default_state_dir,
    };
    gantry_cli::run(std::env::args_os(), &wiring)
}
