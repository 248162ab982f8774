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

pub fn validate(project: &Project) -> Result<ValidateReport, Error> {
    let config = project.load()?;
    crate::deploy::refuse_provider_hosts(&config.file)?;
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
