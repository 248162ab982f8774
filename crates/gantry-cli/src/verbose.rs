//! `-v`, `-vv`, `-vvv`: what Gantry does, on stderr, as it does it. The
//! transports (gantry-remote) emit `tracing` events and know nothing of the
//! terminal; this is where they are shown, at the level the flags ask for.
//! stdout stays the report alone.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::args::{AgentArgs, Cli, Command, ProxyArgs};

/// The events each count of `-v` shows: the agent requests with their
/// status and duration and the `ssh` commands with theirs (1), the agents'
/// answers (2), the requests' bodies (3). Secret values are hidden in all.
fn level(verbose: u8) -> LevelFilter {
    match verbose {
        0 => LevelFilter::OFF,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Shows the events `-v` asks for on stderr, one line each. Not for the
/// commands that run the agent or the proxy in this process: the agent logs
/// through its own subscriber, at the level `-v` sets (`AgentOptions`), and
/// the proxy refuses `-v`.
pub fn show_on_stderr(cli: &Cli) {
    let level = level(cli.global.verbose);
    let daemon = matches!(
        cli.command,
        Command::Agent(AgentArgs { action: None, .. })
            | Command::Proxy(ProxyArgs { action: None, .. })
    );
    if level == LevelFilter::OFF || daemon {
        return;
    }
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(lines)
        .with(Targets::new().with_target("gantry_remote", level))
        .try_init();
}
