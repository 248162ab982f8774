//! Gantry's command line: parses arguments, calls a use-case in
//! `gantry-core`, and prints the report it returns. No command does its work
//! here, and nothing here prints to stdout except through `Printer::report`.

mod args;
mod lifecycle;
pub use args::ProxyListen;
mod output;
mod secrets;
mod text;
mod verbose;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use gantry_core::host::{Host, HostError};
use gantry_core::{Project, deploy, environment, init, operate, render, show, validate};

use args::{AgentAction, EnvAction, OutputMode, ProxyAction, ReleasesAction, RenderTarget};
pub use args::{Cli, Command};
pub use output::{Failure, Mode, Printer, Report};
pub use text::TrustReport;

/// Runs the agent on a state directory: its ports, and where its proxy listens
/// for HTTP and for HTTPS (`None`: the agent's default).
pub type RunAgent = fn(
    &std::path::Path,
    Option<std::ops::RangeInclusive<u16>>,
    Option<ProxyListen>,
    Option<ProxyListen>,
) -> Result<(), Failure>;

/// Runs the reverse proxy on a state directory until it is stopped.
pub type RunProxy = fn(&std::path::Path, &ProxyOptions) -> Result<(), Failure>;

/// Connects to a host's agent: this machine's on a state directory
/// (starting it if asked), or another host's over SSH.
pub type Connect = fn(
    &gantry_core::config::resolve::Host,
    &std::path::Path,
    bool,
) -> Result<Box<dyn Host>, HostError>;

/// Opens a shell on a host over SSH.
pub type OpenShell =
    fn(&gantry_core::config::resolve::Host) -> Result<Box<dyn gantry_core::host::Shell>, HostError>;

/// The concrete parts the binary plugs in: the agent itself, the relay, and
/// how to reach an agent. The CLI knows them only by these signatures.
pub struct Wiring {
    /// Runs this machine's agent on a state directory until it is stopped.
    /// Its ports, and where its proxy listens (`None`: the default).
    pub run_agent: RunAgent,
    /// Runs the reverse proxy on a state directory until it is stopped.
    pub run_proxy: RunProxy,
    /// The local CA of the agent state directory's proxy, made if missing.
    pub local_ca: fn(&std::path::Path) -> Result<TrustReport, Failure>,
    /// Runs one instance's relay from its spec file.
    pub relay: fn(&std::path::Path) -> ExitCode,
    pub connect: Connect,
    /// `gantry agent connect`: bridges stdin and stdout to this machine's
    /// agent; with a systemd unit's name, to the agent that unit runs (never
    /// starting one).
    pub bridge: fn(&std::path::Path, Option<&str>) -> Result<(), Failure>,
    /// Opens a shell on a host over SSH (configure, register, ssh).
    pub shell: OpenShell,
    /// Runs a command as a service of this machine runs: state directory,
    /// project, service, argv; the command's exit code.
    pub exec: fn(&std::path::Path, &str, &str, &[String]) -> Result<i32, Failure>,
    /// The default state directory.
    pub default_state_dir: fn() -> PathBuf,
}

/// How `gantry proxy` was asked to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    pub listen: std::net::SocketAddr,
    /// Where HTTPS is served; `None`: plain HTTP only.
    pub https: Option<std::net::SocketAddr>,
    pub access_log: bool,
    /// Take over the listening sockets (HTTP and HTTPS) of the proxy running
    /// on the state directory instead of binding `listen` and `https`.
    pub take_over: bool,
    /// The ACME directory URL; `None`: no ACME.
    pub acme_directory: Option<String>,
    pub acme_email: Option<String>,
    pub acme_ca_root: Option<PathBuf>,
    /// TLS handshake, first bytes and HTTP/1 headers, each.
    pub client_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub max_connections: u64,
    pub max_connections_per_client: u64,
    /// Addresses or networks, as given (the proxy parses them).
    pub trusted_proxies: Vec<String>,
    pub log_file: Option<PathBuf>,
    pub log_max_bytes: u64,
}

/// Runs the CLI with these arguments and returns the process exit code.
pub fn run(argv: impl IntoIterator<Item = OsString>, wiring: &Wiring) -> ExitCode {
    let argv: Vec<OsString> = argv.into_iter().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(error) => return usage_error(&argv, error),
    };
    // -v is shown by the transports' tracing (`verbose`), not the printer.
    let printer = Printer::new(Mode::resolve(cli.global.output), cli.global.quiet);
    verbose::show_on_stderr(&cli);
    if let Command::Agent(args::AgentArgs {
        action: Some(AgentAction::Relay { spec }),
        ..
    }) = &cli.command
    {
        return (wiring.relay)(spec);
    }
    match execute(&cli, &printer, wiring) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Command::Agent(args::AgentArgs {
                action: Some(AgentAction::Connect { .. }),
                ..
            }) = &cli.command
            {
                // stdout carries the agent API: the CLI across SSH reads the
                // failure from stderr.
                printer.failure_line(&failure);
            } else {
                printer.failure(&failure);
            }
            ExitCode::from(failure.exit)
        }
    }
}

/// Like ssh: a command's exit code becomes ours.
fn exit_with(code: i32) -> Result<(), Failure> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn local_host() -> gantry_core::config::resolve::Host {
    gantry_core::config::resolve::Host {
        name: "local".to_owned(),
        reach: gantry_core::config::resolve::Reach::Local,
    }
}

fn execute(cli: &Cli, printer: &Printer, wiring: &Wiring) -> Result<(), Failure> {
    let cwd = std::env::current_dir().map_err(|e| Failure {
        code: "io.failed",
        exit: gantry_core::ExitClass::Failed.code(),
        message: format!("cannot read the current directory: {e}"),
        hint: None,
        diagnostics: None,
        details: None,
    })?;
    let project = Project {
        config: cli.global.config.clone(),
        cwd: cwd.clone(),
    };
    let env = cli.global.environment.as_str();
    let state_dir = cli
        .global
        .state_dir
        .as_ref()
        .map(|d| absolute(&cwd, d))
        .unwrap_or_else(wiring.default_state_dir);
    let connect_with = |start: bool| {
        let state_dir = state_dir.clone();
        move |host: &gantry_core::config::resolve::Host| -> Result<Box<dyn Host>, gantry_core::Error> {
            Ok((wiring.connect)(host, &state_dir, start)?)
        }
    };
    let connect = connect_with(true);
    let shell = |host: &gantry_core::config::resolve::Host| -> Result<Box<dyn gantry_core::host::Shell>, gantry_core::Error> {
        Ok((wiring.shell)(host)?)
    };
    let vars = |name: &str| std::env::var(name).ok();
    let progress = output::StderrProgress(printer);
    match &cli.command {
        Command::Deploy(args) => {
            let options = deploy::DeployOptions {
                skip_build: args.skip_build,
                force_unlock: args.force_unlock,
            };
            let remote = lifecycle::before_deploy(&project, env, &shell, &connect, &progress)?;
            let result = deploy::deploy(&project, env, &connect, &vars, &options, &progress);
            if remote {
                lifecycle::after_deploy(&project, env, &result)?;
            }
            emit(printer, result?)
        }
        Command::Register(args) => emit(
            printer,
            gantry_core::register::register(
                &project,
                env,
                &args.host,
                args.ssh.as_deref(),
                &shell,
                &progress,
            )?,
        ),
        Command::Configure => emit(
            printer,
            gantry_core::configure::configure(
                &project,
                env,
                &lifecycle::current_exe()?,
                &shell,
                &connect,
                &progress,
            )?,
        ),
        Command::Env(args) => match &args.action {
            EnvAction::Create { name } => emit(printer, environment::create(&project, name)?),
            EnvAction::List => emit(printer, environment::list(&project)?),
            EnvAction::Show { name } => emit(printer, environment::show(&project, name)?),
            EnvAction::Destroy { name } => {
                if !cli.global.yes {
                    return Err(Failure {
                        code: "usage",
                        exit: gantry_core::ExitClass::Usage.code(),
                        message: format!(
                            "destroying `{name}` stops every service of the project on its hosts"
                        ),
                        hint: Some(format!("run `gantry env destroy {name} --yes` to confirm")),
                        diagnostics: None,
                        details: None,
                    });
                }
                emit(printer, environment::destroy(&project, name, &connect)?)
            }
            EnvAction::Purge { name, force } => {
                emit(printer, environment::purge(&project, name, *force)?)
            }
        },
        Command::Test => {
            let probe = |host: &gantry_core::config::resolve::Host,
                         proxy: &str,
                         name: &str|
             -> Result<u16, gantry_core::Error> {
                if host.reach == gantry_core::config::resolve::Reach::Local {
                    return lifecycle::probe_http(proxy, name);
                }
                let ran = shell(host)?.run(
                    &gantry_core::host::remote_gantry(&format!(
                        "agent probe --proxy {} --name {}",
                        lifecycle::quote(proxy),
                        lifecycle::quote(name)
                    )),
                    None,
                )?;
                ran.stdout_text()
                    .trim()
                    .parse()
                    .map_err(|_| gantry_core::Error::ProbeFailed {
                        name: name.to_owned(),
                        proxy: proxy.to_owned(),
                        message: ran
                            .stderr
                            .trim()
                            .lines()
                            .last()
                            .unwrap_or("no answer")
                            .to_owned(),
                    })
            };
            emit(
                printer,
                gantry_core::check::test(&project, env, &connect, &probe, &shell)?,
            )
        }
        Command::Exec(args) => {
            let target =
                lifecycle::exec_target(&project, env, &args.service, args.host.as_deref())?;
            let code = match target {
                lifecycle::ExecTarget::Here { project: name } => {
                    (wiring.exec)(&state_dir, &name, &args.service, &args.command)?
                }
                lifecycle::ExecTarget::Remote {
                    host,
                    project: name,
                } => {
                    let remote = gantry_core::host::remote_gantry(&format!(
                        "agent exec --project {} --service {} -- {}",
                        lifecycle::quote(&name),
                        lifecycle::quote(&args.service),
                        args.command
                            .iter()
                            .map(|a| lifecycle::quote(a))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                    shell(&host)?
                        .interactive(Some(&remote))
                        .map_err(gantry_core::Error::from)?
                }
            };
            exit_with(code)
        }
        Command::Ssh(args) => {
            // Like ssh itself: the remote command's exit code is ours.
            exit_with(lifecycle::ssh(&project, env, args, &shell)?)
        }
        Command::Status => emit(printer, operate::status(&project, env, &connect)?),
        Command::Logs(args) => logs(printer, &project, env, args, &connect),
        Command::Releases(args) => match &args.action {
            None => emit(printer, operate::releases(&project, env, &connect)?),
            Some(ReleasesAction::Show { id }) => emit(
                printer,
                text::ReleaseDetail(operate::release(&project, env, id, &connect)?),
            ),
        },
        Command::Secrets(args) => secrets::run(args, printer, &project, env, &connect),
        Command::Rollback(args) => emit(
            printer,
            operate::rollback(&project, env, args.to.as_deref(), &connect, &vars)?,
        ),
        Command::Stop(args) => emit(
            printer,
            operate::act(
                &project,
                env,
                operate::Action::Stop,
                args.service.as_deref(),
                &connect,
            )?,
        ),
        Command::Restart(args) => emit(
            printer,
            operate::act(
                &project,
                env,
                operate::Action::Restart,
                args.service.as_deref(),
                &connect,
            )?,
        ),
        Command::Proxy(args) => match args.action {
            None => {
                let listening = if args.take_over {
                    "taking over the running proxy's listeners".to_owned()
                } else {
                    format!(
                        "listening on {}{}",
                        args.listen,
                        args.https
                            .0
                            .map(|https| format!(" and {https} (HTTPS)"))
                            .unwrap_or_default()
                    )
                };
                printer.status(&format!(
                    "proxy: {listening}, control socket in {}",
                    state_dir.display()
                ));
                let options = ProxyOptions {
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
                };
                (wiring.run_proxy)(&state_dir, &options)
            }
            Some(action) => {
                let action = match action {
                    ProxyAction::Restart => gantry_core::agent_api::ProxyAction::Restart,
                    ProxyAction::Stop => gantry_core::agent_api::ProxyAction::Stop,
                };
                let agent = (wiring.connect)(&local_host(), &state_dir, false)
                    .map_err(gantry_core::Error::from)?;
                let info = agent.proxy(action).map_err(gantry_core::Error::from)?;
                emit(printer, text::ProxyReport { action, info })
            }
        },
        Command::Trust => emit(printer, (wiring.local_ca)(&state_dir)?),
        Command::Agent(args) => match &args.action {
            None => {
                printer.status(&format!("agent: state in {}", state_dir.display()));
                (wiring.run_agent)(
                    &state_dir,
                    args.ports.clone(),
                    args.proxy_listen,
                    args.proxy_https,
                )
            }
            Some(AgentAction::Stop) => {
                use gantry_core::host::{AGENT_UNIT, AGENT_UNIT_FILE, SYSTEM_STATE_DIR};
                // On a host configured as root, systemd runs the agent of
                // the system state directory: stopping it by hand would only
                // have systemd start it again, so that one is left to systemctl.
                let unit = std::path::Path::new(AGENT_UNIT_FILE).exists();
                let systemds = unit && state_dir == std::path::Path::new(SYSTEM_STATE_DIR);
                let stopped = !systemds
                    && match (wiring.connect)(&local_host(), &state_dir, false) {
                        Ok(agent) => {
                            agent.shutdown().map_err(gantry_core::Error::from)?;
                            true
                        }
                        Err(HostError::Unreachable { .. }) => false,
                        Err(other) => return Err(gantry_core::Error::from(other).into()),
                    };
                let note = (unit && !stopped).then(|| {
                    format!(
                        "systemd runs this host's agent (unit {AGENT_UNIT}): `systemctl stop {AGENT_UNIT}` stops it, `systemctl start {AGENT_UNIT}` starts it again"
                    )
                });
                emit(
                    printer,
                    text::AgentStopped {
                        state_dir: state_dir.clone(),
                        stopped,
                        note,
                    },
                )
            }
            Some(AgentAction::Connect { unit }) => (wiring.bridge)(&state_dir, unit.as_deref()),
            Some(AgentAction::Probe { proxy, name }) => {
                let code = lifecycle::probe_http(proxy, name)?;
                println!("{code}");
                Ok(())
            }
            Some(AgentAction::Exec {
                project: name,
                service,
                command,
            }) => exit_with((wiring.exec)(&state_dir, name, service, command)?),
            Some(AgentAction::OpenPorts) => emit(
                printer,
                gantry_core::firewall::open_ports(&gantry_core::firewall::PORTS)?,
            ),
            Some(AgentAction::Relay { spec }) => {
                let _ = (wiring.relay)(spec);
                Ok(())
            }
        },
        Command::Validate => emit(printer, validate::validate(&project)?),
        Command::Show => {
            let stored = secrets::stored_names(&project, env);
            emit(
                printer,
                show::show(&project, env, &|name| {
                    stored.iter().any(|s| s == name) || std::env::var_os(name).is_some()
                })?,
            )
        }
        Command::Schema => emit(printer, text::Schema(gantry_core::schema())),
        Command::Render(args) => {
            let target = match args.target {
                RenderTarget::Compose => render::Target::Compose,
                RenderTarget::Systemd => render::Target::Systemd,
            };
            let out = absolute(&cwd, &args.out);
            emit(printer, render::render_to(&project, env, target, &out)?)
        }
        Command::Init(args) => {
            let dir = absolute(&cwd, &args.dir);
            emit(printer, init::init(&dir, args.name.as_deref(), args.force)?)
        }
        Command::Completions(args) => {
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "gantry", &mut script);
            emit_script(cli, printer, &args.shell.to_string(), script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| io_failure("render the man page", e))?;
            emit_script(cli, printer, "man", page)
        }
    }
}

/// `gantry logs`: lines as they come, text or one JSON object a line.
fn logs(
    printer: &Printer,
    project: &Project,
    env: &str,
    args: &args::LogsArgs,
    connect: operate::Connect<'_>,
) -> Result<(), Failure> {
    let since_ms = match &args.since {
        None => None,
        Some(text) => {
            let ago: gantry_core::config::units::Duration = text.parse().map_err(|e| Failure {
                code: "usage",
                exit: gantry_core::ExitClass::Usage.code(),
                message: format!("--since {text}: {e}"),
                hint: Some("give a duration like 10m, 2h or 30s".to_owned()),
                diagnostics: None,
                details: None,
            })?;
            Some(gantry_core::clock::now_ms().saturating_sub(ago.as_millis()))
        }
    };
    let query = gantry_core::host::LogQuery {
        service: args.service.clone(),
        since_ms,
        tail: args.tail,
        follow: args.follow,
    };
    // A reader that went away (`| head`) ends the stream, not the command.
    operate::logs(project, env, &query, connect, &mut |line| {
        printer.log_line(&line).is_ok()
    })?;
    Ok(())
}

fn absolute(cwd: &std::path::Path, path: &std::path::Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    }
}

/// Completions and the man page are written to files by shells and `man`:
/// they print as they are unless JSON is asked for by name.
fn emit_script(cli: &Cli, printer: &Printer, kind: &str, script: Vec<u8>) -> Result<(), Failure> {
    let script = String::from_utf8_lossy(&script).into_owned();
    if cli.global.output == OutputMode::Json {
        emit(
            printer,
            text::Script {
                kind: kind.to_owned(),
                script,
            },
        )
    } else {
        use std::io::Write;
        std::io::stdout()
            .write_all(script.as_bytes())
            .map_err(|e| io_failure("write the script", e))
    }
}

fn emit(printer: &Printer, report: impl Report) -> Result<(), Failure> {
    printer
        .report(&report)
        .map_err(|e| io_failure("write the report", e))
}

fn io_failure(what: &str, error: std::io::Error) -> Failure {
    Failure {
        code: "io.failed",
        exit: gantry_core::ExitClass::Failed.code(),
        message: format!("cannot {what}: {error}"),
        hint: None,
        diagnostics: None,
        details: None,
    }
}

/// clap's errors: help and version print as usual; real usage errors follow
/// the output contract, so a script asking for JSON gets JSON.
fn usage_error(argv: &[OsString], error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let requested = requested_output(argv);
    let printer = Printer::new(Mode::resolve(requested), false);
    let exit = gantry_core::ExitClass::Usage.code();
    if printer.mode == Mode::Text {
        let _ = error.print();
        return ExitCode::from(exit);
    }
    let rendered = error.render().to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_owned();
    printer.failure(&Failure {
        code: "usage",
        exit,
        message,
        hint: Some("run `gantry --help`, or `gantry <command> --help`".to_owned()),
        diagnostics: None,
        details: None,
    });
    ExitCode::from(exit)
}

/// `--output` as given, read without clap, for when clap itself failed.
fn requested_output(argv: &[OsString]) -> OutputMode {
    let mut requested = OutputMode::Auto;
    let mut args = argv.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--output") {
            Some("") => args.next().map(|v| v.into_owned()),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        };
        requested = match value.as_deref() {
            Some("json") => OutputMode::Json,
            Some("text") => OutputMode::Text,
            _ => requested,
        };
    }
    requested
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn output_flag_is_found_without_clap() {
        let argv = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            requested_output(&argv(&["gantry", "--output", "json", "bogus"])),
            OutputMode::Json
        );
        assert_eq!(
            requested_output(&argv(&["gantry", "bogus", "--output=text"])),
            OutputMode::Text
        );
        assert_eq!(
            requested_output(&argv(&["gantry", "bogus"])),
            OutputMode::Auto
        );
    }
}
