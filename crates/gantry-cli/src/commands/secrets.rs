//! `gantry secrets`: set, list, rm, import and sync, and the text of their
//! reports. A value is read from stdin, or a hidden prompt on a terminal;
//! never from argv, where `ps` would show it.

use std::io::{IsTerminal as _, Read as _};

use gantry_core::secrets::{self, ChangeReport, ListReport, MAX_VALUE_BYTES};
use gantry_core::{Project, operate};

use super::{Context, vars};
use crate::args::{SecretsAction, SecretsArgs};
use crate::output::{Failure, Report};

pub(super) fn secrets(ctx: &Context<'_>, args: &SecretsArgs) -> Result<(), Failure> {
    let (project, env) = (&ctx.project, ctx.env);
    let now = gantry_core::clock::now_ms();
    match &args.action {
        SecretsAction::Set { name } => {
            secrets::check_name(name)?;
            let pairs = [(name.clone(), read_value(name)?)];
            ctx.emit(Change(secrets::set(project, env, &pairs, now, &vars)?))
        }
        SecretsAction::List { all } => ctx.emit(List(secrets::list(project, env, *all, &vars)?)),
        SecretsAction::Rm { name } => ctx.emit(Change(secrets::remove(project, env, name, &vars)?)),
        SecretsAction::Import { file } => {
            let file = ctx.absolute(file);
            ctx.emit(Change(secrets::import(project, env, &file, now, &vars)?))
        }
        SecretsAction::Sync => ctx.emit(operate::sync_secrets(
            project,
            env,
            &|h| ctx.connect(h),
            &vars,
        )?),
    }
}

/// The names the environment's encrypted store holds, for `gantry show`;
/// none when it cannot be read (no key): a deploy could not read them either.
pub(super) fn stored_names(project: &Project, env: &str) -> Vec<String> {
    secrets::list(project, env, false, &vars)
        .map(|r| r.secrets.into_iter().map(|s| s.name).collect())
        .unwrap_or_default()
}

/// The value from a hidden prompt on a terminal, else stdin (one trailing
/// line break taken off), bounded.
fn read_value(name: &str) -> Result<String, Failure> {
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("value of {name}: "))
            .map_err(|e| Failure::io("read the value from the terminal", e))?
    } else {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_VALUE_BYTES as u64 + 3)
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::io("read the value from stdin", e))?;
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
                gantry_core::clock::utc(s.changed_at)
            ));
        }
        out
    }
}
