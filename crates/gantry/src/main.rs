//! The gantry binary: wires the concrete parts (the agent, its relay, the
//! local transport) into the CLI and runs it. Nothing else happens here.

use std::ops::RangeInclusive;
use std::path::Path;
use std::process::ExitCode;

use gantry_cli::{Failure, Wiring};
use gantry_core::host::{Host, HostError};

fn run_agent(
    state_dir: &Path,
    ports: Option<RangeInclusive<u16>>,
    proxy_listen: Option<gantry_cli::ProxyListen>,
) -> Result<(), Failure> {
    init_tracing();
    let mut settings = gantry_agent::agent::Settings::default();
    if let Some(ports) = ports {
        settings.ports = ports;
    }
    if let Some(listen) = proxy_listen {
        settings.proxy_listen = listen.0;
    }
    gantry_agent::daemon::run(state_dir.to_owned(), settings).map_err(|e| {
        let (code, exit, hint) = match &e {
            gantry_agent::daemon::DaemonError::Locked { .. } => (
                "agent.locked",
                gantry_core::ExitClass::Conflict,
                Some("stop it with `gantry agent stop`, or use another --state-dir".to_owned()),
            ),
            _ => ("agent.error", gantry_core::ExitClass::Failed, None),
        };
        Failure {
            code,
            exit: exit.code(),
            message: e.to_string(),
            hint,
            diagnostics: None,
            details: None,
        }
    })
}

fn run_proxy(
    state_dir: &Path,
    listen: std::net::SocketAddr,
    access_log: bool,
    take_over: bool,
) -> Result<(), Failure> {
    let mut config = gantry_proxy::ProxyConfig::new(state_dir.join("proxy"));
    config.http = listen;
    config.access_log = access_log;
    config.take_over = take_over;
    gantry_proxy::run(config).map_err(|e| Failure {
        code: "proxy.failed",
        exit: gantry_core::ExitClass::Failed.code(),
        hint: e.hint(),
        message: e.to_string(),
        diagnostics: None,
        details: None,
    })
}

/// The agent logs to stderr (its log file when started by the CLI); `RUST_LOG` tunes it.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn connect_local(name: &str, state_dir: &Path, start: bool) -> Result<Box<dyn Host>, HostError> {
    let agent = if start {
        let exe = std::env::current_exe().map_err(|e| HostError::Unreachable {
            host: name.to_owned(),
            message: format!("cannot find the gantry binary to start the agent: {e}"),
            hint: "start it yourself with `gantry agent`".to_owned(),
        })?;
        gantry_remote::LocalAgent::connect_or_start(name, state_dir, &exe)?
    } else {
        gantry_remote::LocalAgent::connect(name, state_dir)?
    };
    Ok(Box::new(agent))
}

fn main() -> ExitCode {
    let wiring = Wiring {
        run_agent,
        run_proxy,
        relay: gantry_agent::process::relay_main,
        connect_local,
        default_state_dir: gantry_agent::agent::Paths::default_root,
    };
    gantry_cli::run(std::env::args_os(), &wiring)
}
