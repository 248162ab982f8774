//! `gantry secrets`: its arguments, its handler and the text of its
//! reports. A value is read from stdin, or a hidden prompt on a terminal;
//! never from argv, where `ps` would show it.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use gantry_core::secrets::{self, ChangeReport, ListReport, MAX_VALUE_BYTES};
use gantry_core::{Project, operate};

use crate::output::{Failure, Printer, Report};

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub action: SecretsAction,
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Set a secret of the environment; the value comes from stdin, or a hidden prompt
    ///
    /// The value is never an argument, where `ps` would show it.
    ///
    /// Example: printf %s "$TOKEN" | gantry secrets set -e prod API_TOKEN
    Set {
        /// The secret's name, as the service's environment variable
        name: String,
    },
    /// List the secrets' names, environments and when each changed; never values
    ///
    /// Example: gantry secrets list --all
    List {
        /// Every environment with secrets, not only -e's
        #[arg(long)]
        all: bool,
    },
    /// Remove a secret from the environment
    ///
    /// Example: gantry secrets rm -e prod API_TOKEN
    Rm {
        /// The secret's name
        name: String,
    },
    /// Set every NAME=value of a dotenv file
    ///
    /// Example: gantry secrets import -e prod .env.production
    Import {
        /// The dotenv file
        file: PathBuf,
    },
    /// Give the hosts' services the environment's secrets as they are now
    ///
    /// Each host deploys its current release again from its stored
    /// artifact with the current secrets: every service restarts through
    /// the zero-downtime path of a deploy.
    ///
    /// Example: gantry secrets sync -e prod
    Sync,
}

pub fn run(
    args: &SecretsArgs,
    printer: &Printer,
    project: &Project,
    env: &str,
    connect: operate::Connect<'_>,
) -> Result<(), Failure> {
    let vars = |name: &str| std::env::var(name).ok();
    let now = gantry_core::clock::now_ms();
    let report = match &args.action {
        SecretsAction::Set { name } => {
            secrets::check_name(name)?;
            let value = read_value(name)?;
            let pairs = [(name.clone(), value)];
            printer.report(&Change(secrets::set(project, env, &pairs, now, &vars)?))
        }
        SecretsAction::List { all } => {
            printer.report(&List(secrets::list(project, env, *all, &vars)?))
        }
        SecretsAction::Rm { name } => {
            printer.report(&Change(secrets::remove(project, env, name, &vars)?))
        }
        SecretsAction::Import { file } => {
            printer.report(&Change(secrets::import(project, env, file, now, &vars)?))
        }
        SecretsAction::Sync => {
            printer.report(&operate::sync_secrets(project, env, connect, &vars)?)
        }
    };
    report.map_err(|e| crate::io_failure("write the report", e))
}

/// The names the environment's encrypted store holds, for `gantry show`;
/// none when it cannot be read (no key): a deploy could not read them either.
pub fn stored_names(project: &Project, env: &str) -> Vec<String> {
    let vars = |name: &str| std::env::var(name).ok();
    secrets::list(project, env, false, &vars)
        .map(|r| r.secrets.into_iter().map(|s| s.name).collect())
        .unwrap_or_default()
}

/// The value from a hidden prompt on a terminal, else stdin (one trailing
/// line break taken off), bounded.
fn read_value(name: &str) -> Result<String, Failure> {
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("value of {name}: "))
            .map_err(|e| crate::io_failure("read the value from the terminal", e))?
    } else {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_VALUE_BYTES as u64 + 3)
            .read_to_end(&mut bytes)
            .map_err(|e| crate::io_failure("read the value from stdin", e))?;
        let mut value = String::from_utf8(bytes).map_err(|_| {
            Failure::from(gantry_core::Error::from(
                secrets::SecretsError::ValueInvalid {
                    name: name.to_owned(),
                    problem: "is not UTF-8".to_owned(),
                },
            ))
        })?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        value
    };
    secrets::check_value(name, &value).map_err(gantry_core::Error::from)?;
    Ok(value)
}

impl From<secrets::SecretsError> for Failure {
    fn from(error: secrets::SecretsError) -> Self {
        Failure::from(gantry_core::Error::from(error))
    }
}

#[derive(serde::Serialize)]
#[serde(transparent)]
struct Change(ChangeReport);

impl Report for Change {
    fn text(&self) -> String {
        let r = &self.0;
        let mut out = String::new();
        for (what, names) in [
            ("set", &r.changed),
            ("unchanged", &r.unchanged),
            ("removed", &r.removed),
        ] {
            if !names.is_empty() {
                out.push_str(&format!(
                    "{what} in {}: {}\n",
                    r.environment,
                    names.join(", ")
                ));
            }
        }
        out.push_str(&format!(
            "stored encrypted in {} (key {})\n`gantry secrets sync -e {}` gives the running services the new values\n",
            r.file.display(),
            r.key.display(),
            r.environment
        ));
        out
    }
}

#[derive(serde::Serialize)]
#[serde(transparent)]
struct List(ListReport);

impl Report for List {
    fn text(&self) -> String {
        if self.0.secrets.is_empty() {
            return "no secrets stored\n".to_owned();
        }
        let mut out = String::from("NAME\tENVIRONMENT\tCHANGED\n");
        for s in &self.0.secrets {
            out.push_str(&format!(
                "{}\t{}\t{}\n",
                s.name,
                s.environment,
                utc(s.changed_at)
            ));
        }
        out
    }
}

/// Milliseconds since the epoch as RFC 3339 in UTC.
fn utc(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
