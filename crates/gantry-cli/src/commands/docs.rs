//! `completions` and `man`: made from the clap definitions.

use clap::CommandFactory;

use super::Context;
use crate::args::{Cli, CompletionsArgs, OutputMode};
use crate::{Failure, text};

pub(super) fn completions(ctx: &Context<'_>, args: &CompletionsArgs) -> Result<(), Failure> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "gantry", &mut script);
    emit_script(ctx, &args.shell.to_string(), script)
}

pub(super) fn man(ctx: &Context<'_>) -> Result<(), Failure> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| Failure::io("render the man page", e))?;
    emit_script(ctx, "man", page)
}

/// Completions and the man page are written to files by shells and `man`:
/// they print as they are unless JSON is asked for by name.
fn emit_script(ctx: &Context<'_>, kind: &str, script: Vec<u8>) -> Result<(), Failure> {
    let script = String::from_utf8_lossy(&script).into_owned();
    if ctx.cli.global.output == OutputMode::Json {
        return ctx.emit(text::Script {
            kind: kind.to_owned(),
            script,
        });
    }
    ctx.printer
        .verbatim(&script)
        .map_err(|e| Failure::io("write the script", e))
}
