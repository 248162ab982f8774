//! `gantry agent` and what runs on a host for the CLI: run or stop this
//! machine's agent, bridge to it over ssh, probe a route, run a command as a
//! service, open the firewall.

use gantry_core::host::HostError;
use gantry_core::{Code, firewall, local_agent, probe};

use super::{Context, exit_with};
use crate::args::{AgentAction, AgentArgs};
use crate::{AgentOptions, Failure, text};

pub(super) fn agent(ctx: &Context<'_>, args: &AgentArgs) -> Result<(), Failure> {
    match &args.action {
        None => run(ctx, args),
        Some(AgentAction::Stop) => {
            let report = local_agent::stop(&ctx.state_dir, &|| ctx.local_agent())?;
            ctx.emit(report)
        }
        Some(AgentAction::Connect { unit }) => connect(ctx, unit.as_deref()),
        Some(AgentAction::Probe { proxy, name }) => {
            ctx.emit(text::ProbeStatus(probe::http(proxy, name)?))
        }
        Some(AgentAction::Exec {
            project,
            service,
            command,
        }) => exit_with((ctx.wiring.exec)(
            &ctx.state_dir,
            project,
            service,
            command,
        )?),
        Some(AgentAction::OpenPorts) => ctx.emit(firewall::open_ports(&firewall::PORTS)?),
        // Run before anything else, by `crate::run`.
        Some(AgentAction::Relay { spec }) => {
            let _ = (ctx.wiring.relay)(spec);
            Ok(())
        }
    }
}

fn run(ctx: &Context<'_>, args: &AgentArgs) -> Result<(), Failure> {
    ctx.printer
        .status(&format!("agent: state in {}", ctx.state_dir.display()));
    let options = AgentOptions {
        ports: args.ports.clone(),
        proxy_listen: args.proxy_listen,
        proxy_https: args.proxy_https,
        verbose: ctx.cli.global.verbose,
    };
    (ctx.wiring.run_agent)(&ctx.state_dir, &options)
}

/// The CLI on the other end of SSH reads the failure and names the host
/// itself: the message is the bridge's own.
fn connect(ctx: &Context<'_>, unit: Option<&str>) -> Result<(), Failure> {
    (ctx.wiring.bridge)(&ctx.state_dir, unit).map_err(|e| match e {
        HostError::Unreachable { message, hint, .. } => {
            Failure::new(Code::AgentUnreachable, message).with_hint(hint)
        }
        other => gantry_core::Error::from(other).into(),
    })
}
