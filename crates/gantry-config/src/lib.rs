//! gantry.toml: the model, its JSON Schema, and a loader that reports every
//! problem at once with file, line, column, key path and a hint.
//!
//! Loading runs in stages, each over the whole file: TOML syntax (with
//! recovery), `${VAR}` interpolation, the schema (types, unknown keys,
//! formats), then the checks that relate values to each other. A file that
//! passes all of them resolves, per environment, into [`resolve::Environment`].
//!
//! This crate does no I/O beyond reading the file it is given and looking up
//! the environment variables the file names.

mod diagnostic;
mod document;
mod formats;
pub mod model;
pub mod resolve;
pub mod schedule;
mod schema;
mod ssh_target;
mod suggest;
pub mod units;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

pub use diagnostic::{Diagnostic, Diagnostics, KeyPath, LineIndex, Problem, Segment};
/// The rules for names Gantry puts in host names, paths and files, for
/// callers that receive them from elsewhere (the agent's API).
pub use formats::{SECRET_NAME_MAX, check_env_name, check_name, check_secret_name};
pub use resolve::{Environment, LOCAL};
pub use schema::json_schema;
pub use ssh_target::SshTarget;

use document::{Document, Finding, Findings};

/// The file name Gantry looks for.
pub const FILE_NAME: &str = "gantry.toml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no {FILE_NAME} in {dir}")]
    NotFound { dir: PathBuf },
    /// The file `--config` named is not there.
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("unknown environment `{name}`")]
    UnknownEnvironment { name: String, known: Vec<String> },
}

impl Error {
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::NotFound { .. } => {
                Some("run `gantry init` to create one, or pass --config PATH".to_owned())
            }
            Error::Missing { .. } => Some(format!(
                "check the path given to --config or GANTRY_CONFIG (a file, or a \
                 directory holding {FILE_NAME}); `gantry init` creates one"
            )),
            Error::Read { .. } => None,
            Error::Invalid(_) => None,
            Error::UnknownEnvironment { name, known } => Some(
                match suggest::did_you_mean(name, known.iter().map(String::as_str)) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("environments are: {}", known.join(", ")),
                },
            ),
        }
    }
}

/// A gantry.toml that passed every check.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub file: model::File,
}

impl Config {
    /// The project directory: where gantry.toml is.
    pub fn project_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Every environment's name, `local` included.
    pub fn environment_names(&self) -> Vec<String> {
        resolve::environment_names(&self.file)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// The environment as it will run, with overrides and defaults applied.
    pub fn environment(&self, name: &str) -> Result<Environment, Error> {
        let known = self.environment_names();
        if !known.iter().any(|k| k == name) {
            return Err(Error::UnknownEnvironment {
                name: name.to_owned(),
                known,
            });
        }
        Ok(resolve::resolve(&self.file, name))
    }
}

/// Finds gantry.toml: `explicit` if given (a file, or a directory holding one),
/// else in `dir` or the nearest parent that has one.
pub fn locate(explicit: Option<&Path>, dir: &Path) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return Ok(if path.is_dir() {
            path.join(FILE_NAME)
        } else {
            path.to_owned()
        });
    }
    dir.ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NotFound {
            dir: dir.to_owned(),
        })
}

/// Reads and checks a gantry.toml, interpolating from the process environment.
pub fn load(path: &Path) -> Result<Config, Error> {
    load_named(path, &path.display().to_string())
}

/// As [`load`], with errors naming the file `name` (a path relative to where
/// the user stands reads better than an absolute one).
pub fn load_named(path: &Path, name: &str) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::Missing {
                path: path.to_owned(),
            }
        } else {
            Error::Read {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let file = parse(name, &text, &|var| std::env::var(var).ok())?;
    Ok(Config {
        path: path.to_owned(),
        file,
    })
}

/// Checks gantry.toml text. `name` is how errors refer to the file; `vars`
/// answers `${VAR}` lookups.
pub fn parse(
    name: &str,
    text: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<model::File, Error> {
    let (doc, mut findings) = Document::parse(text, vars);
    let syntax_ok = findings.items.iter().all(|f| f.problem != Problem::Syntax);
    let mut file = None;
    if syntax_ok {
        findings.absorb(schema::check(&doc), |_| true);
        // Set aside what is already known to be wrong, so the checks that relate
        // values to each other still run over the rest and every error shows at
        // once. Past the cap on findings, what was only counted is not set
        // aside: the checks below may then not run, and need not.
        let parsed = if findings.is_empty() {
            model::File::deserialize(&doc.value)
        } else {
            serde_json::from_value::<model::File>(prune(&doc.value, &findings.items))
        };
        match parsed {
            Ok(parsed) => {
                // A value set aside above would look missing to the checks below
                // ("has neither ssh nor provider"): skip what they say about it or
                // about the table that held it.
                let removed: Vec<KeyPath> = findings
                    .items
                    .iter()
                    .filter(|f| f.problem != Problem::UnknownKey)
                    .map(|f| f.path.clone())
                    .collect();
                findings.absorb(validate::check(&parsed, &doc), |f| {
                    !removed
                        .iter()
                        .any(|r| *r == f.path || r.parent().as_ref() == Some(&f.path))
                });
                file = Some(parsed);
            }
            // The schema should have caught whatever serde refuses; if it did not,
            // say so rather than report an invalid file with no errors.
            Err(error) if findings.is_empty() => findings.push(Finding {
                problem: Problem::InvalidValue,
                path: KeyPath::root(),
                span: 0..0,
                message: format!("invalid value: {error}"),
                hint: None,
            }),
            Err(_) => {}
        }
    }
    match file {
        Some(file) if findings.is_empty() => Ok(file),
        _ => Err(Error::Invalid(diagnostics(name, text, findings))),
    }
}

fn diagnostics(name: &str, text: &str, findings: Findings) -> Diagnostics {
    let lines = LineIndex::new(text);
    let mut items: Vec<Diagnostic> = findings
        .items
        .into_iter()
        .map(|f| {
            let (line, column) = lines.line_column(text, f.span.start);
            Diagnostic {
                code: f.problem.code(),
                path: f.path,
                file: name.to_owned(),
                line,
                column,
                message: f.message,
                hint: f.hint,
                span: f.span,
            }
        })
        .collect();
    items.sort_by(|a, b| (a.line, a.column, &a.message).cmp(&(b.line, b.column, &b.message)));
    Diagnostics {
        file: name.to_owned(),
        source: Arc::from(text),
        items,
        more: findings.more,
    }
}

/// A copy of `value` without the values findings point at. An array element
/// takes its whole array with it, so later indexes keep pointing at the source.
fn prune(value: &Value, findings: &[Finding]) -> Value {
    let mut value = value.clone();
    for finding in findings {
        let mut segments = finding.path.0.as_slice();
        while let Some((Segment::Index(_), rest)) = segments.split_last() {
            segments = rest;
        }
        let Some((Segment::Key(last), parents)) = segments.split_last() else {
            continue;
        };
        if let Some(Value::Object(map)) = descend(&mut value, parents) {
            map.remove(last);
        }
    }
    value
}

fn descend<'v>(value: &'v mut Value, segments: &[Segment]) -> Option<&'v mut Value> {
    segments
        .iter()
        .try_fold(value, |node, segment| match (segment, node) {
            (Segment::Key(k), Value::Object(map)) => map.get_mut(k),
            (Segment::Index(i), Value::Array(items)) => items.get_mut(*i),
            _ => None,
        })
}
