//! `gantry proxy` (run it, or restart or stop the agent's) and `gantry trust`.

use gantry_core::{Code, agent_api, local_agent};

use super::Context;
use crate::args::{ProxyAction, ProxyArgs};
use crate::{Failure, ProxyOptions};

pub(super) fn proxy(ctx: &Context<'_>, args: &ProxyArgs) -> Result<(), Failure> {
    let action = match args.action {
        None => return run(ctx, args),
        Some(ProxyAction::Restart) => agent_api::ProxyAction::Restart,
        Some(ProxyAction::Stop) => agent_api::ProxyAction::Stop,
    };
    ctx.emit(local_agent::proxy(action, &|| ctx.local_agent())?)
}

pub(super) fn trust(ctx: &Context<'_>) -> Result<(), Failure> {
    ctx.emit((ctx.wiring.local_ca)(&ctx.state_dir)?)
}

fn run(ctx: &Context<'_>, args: &ProxyArgs) -> Result<(), Failure> {
    if ctx.cli.global.verbose > 0 {
        return Err(Failure::new(
            Code::VerboseUnsupported,
            "`gantry proxy` does not support -v yet: it logs each request and error as it is",
        )
        .with_hint("leave out -v; its access log is on stderr, or in --log-file"));
    }
    let listening = if args.take_over {
        "taking over the running proxy's listeners".to_owned()
    } else {
        let https = args.https.0.map(|https| format!(" and {https} (HTTPS)"));
        format!("listening on {}{}", args.listen, https.unwrap_or_default())
    };
    ctx.printer.status(&format!(
        "proxy: {listening}, control socket in {}",
        ctx.state_dir.display()
    ));
    (ctx.wiring.run_proxy)(&ctx.state_dir, &options(args))
}

fn options(args: &ProxyArgs) -> ProxyOptions {
    ProxyOptions {
        listen: args.listen,
        https: args.https.0,
        access_log: !args.no_access_log,
        take_over: args.take_over,
        acme_directory: args.acme_directory.clone(),
        acme_email: args.acme_email.clone(),
        acme_ca_root: args.acme_ca_root.clone(),
        client_timeout: std::time::Duration::from_secs(args.client_timeout),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout),
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
        trusted_proxies: args.trusted_proxies.clone(),
        log_file: args.log_file.clone(),
        log_max_bytes: args.log_max_bytes,
    }
}
