//! `gantry validate`: every check, over every environment, with nothing run.

use std::path::PathBuf;

use serde::Serialize;

use crate::{Error, Project};

#[derive(Debug, Serialize)]
pub struct ValidateReport {
    pub file: PathBuf,
    pub project: String,
    pub valid: bool,
    pub services: Vec<String>,
    pub environments: Vec<EnvironmentSummary>,
}

#[derive(Debug, Serialize)]
pub struct EnvironmentSummary {
    pub name: String,
    pub hosts: Vec<String>,
    pub services: usize,
}

/// Checks gantry.toml and every environment it declares; `environment`, the
/// one the command line selects (`-e`, `GANTRY_ENV`), must be one of them.
pub fn validate(project: &Project, environment: &str) -> Result<ValidateReport, Error> {
    let config = project.load()?;
    crate::deploy::refuse_provider_hosts(&config.file)?;
    config.environment(environment)?;
    let environments = config
        .environment_names()
        .iter()
        .map(|name| {
            let env = config.environment(name)?;
            Ok(EnvironmentSummary {
                name: env.name,
                hosts: env.hosts.into_iter().map(|h| h.name).collect(),
                services: env.services.len(),
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(ValidateReport {
        file: config.path.clone(),
        project: config.file.project.name.clone(),
        valid: true,
        services: config.file.services.keys().cloned().collect(),
        environments,
    })
}
