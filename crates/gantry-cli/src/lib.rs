//! Gantry's command line: parses arguments, calls a use-case in
//! `gantry-core` (one per command, in `commands`), and prints the report it
//! returns. No command does its work here, and nothing here prints to stdout
//! except through `Printer`.

mod args;
mod commands;
mod output;
mod text;
mod verbose;
mod wiring;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use args::{AgentAction, OutputMode};
pub use args::{Cli, Command, ProxyListen};
pub use output::{Failure, Mode, Printer, Report};
pub use text::TrustReport;
pub use wiring::{AgentOptions, Connect, OpenShell, ProxyOptions, RunAgent, RunProxy, Wiring};

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
    match commands::execute(&cli, &printer, wiring) {
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
    let (message, tips) = usage_message(&error.render().to_string());
    let hint = if tips.is_empty() {
        "run `gantry --help`, or `gantry <command> --help`".to_owned()
    } else {
        tips.join("; ")
    };
    printer.failure(&Failure::new(gantry_core::Code::Usage, message).with_hint(hint));
    ExitCode::from(exit)
}

/// clap's rendered error as one line, and its tips: the first paragraph
/// whole (a missing argument is named on the lines after the first), then
/// each `tip:` before the usage line.
fn usage_message(rendered: &str) -> (String, Vec<String>) {
    let before_usage = rendered.split("\nUsage:").next().unwrap_or_default();
    let mut paragraphs = before_usage.split("\n\n");
    let message = (paragraphs.next().unwrap_or_default().lines())
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.trim_start_matches("error: ");
    let tips = (paragraphs.flat_map(str::lines))
        .filter_map(|line| line.trim().strip_prefix("tip: "))
        .map(str::to_owned)
        .collect();
    let message = if message.is_empty() {
        "invalid command line"
    } else {
        message
    };
    (message.to_owned(), tips)
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
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A JSON usage error names what is missing, and passes clap's tips on
    /// as its hint.
    #[test]
    fn a_usage_error_keeps_what_is_missing_and_clap_s_tips() {
        let message = |args: &[&str]| {
            let error = Cli::try_parse_from(args).expect_err("a usage error");
            usage_message(&error.render().to_string())
        };
        let (missing, tips) = message(&["gantry", "proxy", "--acme-email", "a@example.com"]);
        assert_eq!(
            missing,
            "the following required arguments were not provided: --acme-directory <URL>"
        );
        assert!(tips.is_empty(), "{tips:?}");
        let (unknown, tips) = message(&["gantry", "proxy", "--listn", "127.0.0.1:1"]);
        assert_eq!(unknown, "unexpected argument '--listn' found");
        assert!(tips.iter().any(|t| t.contains("'--listen'")), "{tips:?}");
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
