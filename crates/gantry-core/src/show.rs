//! `gantry show`: one environment as it will run, after overrides,
//! interpolation and defaults. Secret values are never read into the report:
//! it says only whether each secret is available.

use std::path::PathBuf;

use serde::Serialize;

use crate::{Error, Project, config::Environment};

pub use crate::redact::REDACTED;
use crate::redact::Redactor;

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

pub fn show(
    project: &Project,
    environment: &str,
    is_set: &dyn Fn(&str) -> bool,
) -> Result<ShowReport, Error> {
    let config = project.load()?;
    let mut env = config.environment(environment)?;
    let mut secrets = Vec::new();
    // No secret values are read here: names and URL passwords are what show.
    let redactor = Redactor::default();
    for service in env.services.values_mut() {
        redactor.service(service);
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
