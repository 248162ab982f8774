//! The command line, defined once: these doc comments are `--help`, the
//! completions and the man page.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  gantry init                       Write a starter gantry.toml here
  gantry validate                   Check gantry.toml, every environment
  gantry show -e prod               Print the prod environment as it will run
  gantry render --target compose --out build/compose
  gantry validate --output json     One JSON document on stdout, for scripts

Exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid configuration or input,
4 state conflict, 5 host unreachable, 6 operation failed.";

/// Deploy web applications to servers you own.
///
/// Gantry reads gantry.toml, checks it, and runs your services on this
/// machine or on your servers over SSH. Every command prints a report: text
/// on a terminal, one JSON document otherwise (see --output).
#[derive(Debug, Parser)]
#[command(name = "gantry", version, after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The gantry.toml to use (a file, or a directory holding one) [default: the nearest
    /// gantry.toml in this directory or above]
    #[arg(short, long, global = true, env = "GANTRY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The environment to work on
    #[arg(
        short,
        long = "env",
        global = true,
        env = "GANTRY_ENV",
        default_value = "local",
        value_name = "NAME"
    )]
    pub environment: String,

    /// How to print the report: text for people, JSON for scripts; auto picks
    /// text on a terminal and JSON otherwise
    #[arg(long, global = true, value_enum, default_value_t = OutputMode::Auto, value_name = "MODE")]
    pub output: OutputMode,

    /// Say more on stderr (-v, -vv, -vvv)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Say nothing on stderr but errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Answer yes to every confirmation
    #[arg(long, global = true)]
    pub yes: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check gantry.toml: syntax, types, references, every environment
    ///
    /// Reports every problem at once, each with its file, line, column, key
    /// path and a hint. Nothing is run and nothing is written.
    ///
    /// Example: gantry validate --config examples/shop/gantry.toml
    Validate,

    /// Print one environment as it will run
    ///
    /// Shows the services after the environment's overrides, `${VAR}`
    /// interpolation and defaults. Secret values are never printed: only
    /// whether each secret is available.
    ///
    /// Example: gantry show --env prod --output json
    Show,

    /// Print the JSON Schema of gantry.toml
    ///
    /// Point your editor at it to complete and check gantry.toml as you type.
    ///
    /// Example: gantry schema > gantry.schema.json
    Schema,

    /// Write an environment as files for another tool, one directory per host
    ///
    /// `compose` writes a compose.yaml for the container services, `systemd`
    /// writes units for the process services. Output is deterministic; the
    /// report lists what the target cannot express. Only --out is written to.
    ///
    /// Example: gantry render --target systemd --env prod --out build/systemd
    Render(RenderArgs),

    /// Create a commented starter gantry.toml
    ///
    /// The file validates as written. The project is named after the
    /// directory unless --name is given.
    ///
    /// Example: gantry init my-app
    Init(InitArgs),

    /// Print a shell completion script
    ///
    /// The script is printed as it is, even when stdout is not a terminal;
    /// `--output json` wraps it in a JSON document.
    ///
    /// Example: gantry completions bash > /etc/bash_completion.d/gantry
    Completions(CompletionsArgs),

    /// Print the man page (roff)
    ///
    /// Example: gantry man | man -l -
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// What to render for
    #[arg(long, value_enum)]
    pub target: RenderTarget,

    /// The directory to write to; created if missing, and refused if it holds
    /// files `gantry render` did not write
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RenderTarget {
    /// docker-compose files for container services
    Compose,
    /// systemd units for process services
    Systemd,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to create gantry.toml (created if missing)
    #[arg(default_value = ".")]
    pub dir: PathBuf,

    /// The project name [default: from the directory name]
    #[arg(long)]
    pub name: Option<String>,

    /// Replace an existing gantry.toml
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
