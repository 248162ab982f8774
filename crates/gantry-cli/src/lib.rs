//! Gantry's command line: parses arguments, calls a use-case in
//! `gantry-core`, and prints the report it returns. No command does its work
//! here, and nothing here prints to stdout except through `Printer::report`.

mod args;
mod output;
mod text;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use gantry_core::{Project, init, render, show, validate};

pub use args::{Cli, Command};
use args::{OutputMode, RenderTarget};
pub use output::{Failure, Mode, Printer, Report};

/// Runs the CLI with these arguments and returns the process exit code.
pub fn run(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let argv: Vec<OsString> = argv.into_iter().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(error) => return usage_error(&argv, error),
    };
    let printer = Printer::new(
        Mode::resolve(cli.global.output),
        cli.global.quiet,
        cli.global.verbose,
    );
    match execute(&cli, &printer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            printer.failure(&failure);
            ExitCode::from(failure.exit)
        }
    }
}

fn execute(cli: &Cli, printer: &Printer) -> Result<(), Failure> {
    let cwd = std::env::current_dir().map_err(|e| Failure {
        code: "io.failed",
        exit: gantry_core::ExitClass::Failed.code(),
        message: format!("cannot read the current directory: {e}"),
        hint: None,
        diagnostics: None,
    })?;
    let project = Project {
        config: cli.global.config.clone(),
        cwd: cwd.clone(),
    };
    let env = cli.global.environment.as_str();
    match &cli.command {
        Command::Validate => emit(printer, validate::validate(&project)?),
        Command::Show => emit(
            printer,
            show::show(&project, env, &|name| std::env::var_os(name).is_some())?,
        ),
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
    let printer = Printer::new(Mode::resolve(requested), false, 0);
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
