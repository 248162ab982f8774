//! One handler per command, as cargo's `commands/*.rs`: each reads its
//! arguments, calls one use-case of `gantry-core` (or a part the binary
//! wired in), and hands the report to the `Printer`. A handler that grows
//! past a few lines is doing a use-case's work: that work belongs in
//! gantry-core.

mod agent;
mod backup;
mod config;
mod deploy;
mod docs;
mod environment;
mod hosts;
pub(crate) mod hub;
mod migrate;
mod operate;
mod proxy;
mod secrets;

use std::path::{Path, PathBuf};

use gantry_core::config::resolve::{Host as HostSpec, Reach};
use gantry_core::host::{Host, HostError, Shell};
use gantry_core::{Code, Project};

use crate::args::{Cli, Command};
use crate::output::StderrProgress;
use crate::{Failure, Printer, Report, Wiring};

/// Runs the command `cli` names.
pub(crate) fn execute(cli: &Cli, printer: &Printer, wiring: &Wiring) -> Result<(), Failure> {
    let ctx = Context::new(cli, printer, wiring)?;
    match &cli.command {
        Command::Validate => config::validate(&ctx),
        Command::Show => config::show(&ctx),
        Command::Schema => config::schema(&ctx),
        Command::Render(args) => config::render(&ctx, args),
        Command::Init(args) => config::init(&ctx, args),
        Command::Deploy(args) => deploy::deploy(&ctx, args),
        Command::Plan => deploy::plan(&ctx),
        Command::Status => operate::status(&ctx),
        Command::Logs(args) => operate::logs(&ctx, args),
        Command::Releases(args) => operate::releases(&ctx, args),
        Command::Rollback(args) => operate::rollback(&ctx, args),
        Command::Stop(args) => operate::stop(&ctx, args),
        Command::Restart(args) => operate::restart(&ctx, args),
        Command::Secrets(args) => secrets::secrets(&ctx, args),
        Command::Migrate(args) => migrate::migrate(&ctx, args),
        Command::Backup(args) => backup::backup(&ctx, args),
        Command::Register(args) => environment::register(&ctx, args),
        Command::Configure => environment::configure(&ctx),
        Command::Env(args) => environment::env(&ctx, &args.action),
        Command::Test => hosts::test(&ctx),
        Command::Ssh(args) => hosts::ssh(&ctx, args),
        Command::Exec(args) => hosts::exec(&ctx, args),
        Command::Agent(args) => agent::agent(&ctx, args),
        Command::Proxy(args) => proxy::proxy(&ctx, args),
        Command::Trust => proxy::trust(&ctx),
        Command::Hub(args) => hub::run(args, &ctx.state_dir, ctx.printer),
        Command::Completions(args) => docs::completions(&ctx, args),
        Command::Man => docs::man(&ctx),
    }
}

/// What every handler may use: the global flags resolved, the printer, and
/// the wired parts.
pub(crate) struct Context<'a> {
    pub cli: &'a Cli,
    pub printer: &'a Printer,
    pub wiring: &'a Wiring,
    pub cwd: PathBuf,
    pub project: Project,
    /// The environment `-e` names.
    pub env: &'a str,
    /// The local agent's state directory, absolute.
    pub state_dir: PathBuf,
}

impl<'a> Context<'a> {
    fn new(cli: &'a Cli, printer: &'a Printer, wiring: &'a Wiring) -> Result<Self, Failure> {
        let cwd =
            std::env::current_dir().map_err(|e| Failure::io("read the current directory", e))?;
        let state_dir = cli
            .global
            .state_dir
            .as_ref()
            .map(|d| absolute(&cwd, d))
            .unwrap_or_else(wiring.default_state_dir);
        Ok(Context {
            cli,
            printer,
            wiring,
            project: Project {
                config: cli.global.config.clone(),
                cwd: cwd.clone(),
            },
            cwd,
            env: cli.global.environment.as_str(),
            state_dir,
        })
    }

    /// A host's agent, this machine's started if none runs.
    fn connect(&self, host: &HostSpec) -> Result<Box<dyn Host>, gantry_core::Error> {
        Ok((self.wiring.connect)(host, &self.state_dir, true)?)
    }

    /// This machine's agent on the state directory, if one runs.
    fn local_agent(&self) -> Result<Box<dyn Host>, HostError> {
        let local = HostSpec {
            name: "local".to_owned(),
            reach: Reach::Local,
        };
        (self.wiring.connect)(&local, &self.state_dir, false)
    }

    fn shell(&self, host: &HostSpec) -> Result<Box<dyn Shell>, gantry_core::Error> {
        Ok((self.wiring.shell)(host)?)
    }

    fn progress(&self) -> StderrProgress<'a> {
        StderrProgress(self.printer)
    }

    /// `path` from the current directory.
    fn absolute(&self, path: &Path) -> PathBuf {
        absolute(&self.cwd, path)
    }

    fn emit(&self, report: impl Report) -> Result<(), Failure> {
        self.printer
            .report(&report)
            .map_err(|e| Failure::io("write the report", e))
    }
}

fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    }
}

/// The process environment's variables, as deploy and rollback read them.
fn vars(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Like ssh: a command's exit code becomes ours.
fn exit_with(code: i32) -> Result<(), Failure> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// A command that changes hosts for good runs only once confirmed: `--yes`.
fn confirmed(ctx: &Context<'_>, what: String, command: String) -> Result<(), Failure> {
    if ctx.cli.global.yes {
        return Ok(());
    }
    Err(Failure::new(Code::Usage, what).with_hint(format!("run `{command} --yes` to confirm")))
}
