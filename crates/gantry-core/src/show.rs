//! `gantry show`: one environment as it will run, after overrides,
//! interpolation and defaults. Secret values are never read into the report:
//! it says only whether each secret is available.

use std::path::PathBuf;

use serde::Serialize;

use crate::{Error, Project, config::Environment};

/// Shown in place of a value that must not be printed.
pub const REDACTED: &str = "(redacted)";

#[derive(Debug, Serialize)]
pub struct ShowReport {
    pub file: PathBuf,
    pub environment: Environment,
    /// For each service's secrets: whether the value is set where the CLI runs.
    pub secrets: Vec<SecretStatus>,
}

#[derive(Debug, Serialize)]
pub struct SecretStatus {
    pub service: String,
    pub name: String,
    pub value: &'static str,
    pub available: bool,
}

/// Env values under names like these usually hold credentials. They belong in
/// `secrets`, but if one was interpolated into `env`, `show` still hides it.
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|word| key.contains(word))
}

pub fn show(
    project: &Project,
    environment: &str,
    is_set: &dyn Fn(&str) -> bool,
) -> Result<ShowReport, Error> {
    let config = project.load()?;
    let mut env = config.environment(environment)?;
    let mut secrets = Vec::new();
    for service in env.services.values_mut() {
        for (key, value) in service.env.iter_mut() {
            if looks_secret(key) {
                *value = REDACTED.to_owned();
            }
        }
        for name in &service.secrets {
            secrets.push(SecretStatus {
                service: service.name.clone(),
                name: name.clone(),
                value: REDACTED,
                available: is_set(name),
            });
        }
    }
    Ok(ShowReport {
        file: config.path.clone(),
        environment: env,
        secrets,
    })
}
