//! Operating what runs: status, logs, releases, rollback, stop, restart.
//! Each asks the environment's host and returns the agent's answer as the report.

use serde::Serialize;

use crate::agent_api::{Release, RollbackRequest, ServiceSelector, Status};
use crate::config::resolve::Host as HostSpec;
use crate::deploy::{DeployReport, Upload, finish, secret_values};
use crate::host::{Host, LogQuery};
use crate::{Error, Project};

pub type Connect<'a> = &'a dyn Fn(&HostSpec) -> Result<Box<dyn Host>, Error>;

/// The project's name and its one host, connected.
fn target(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
) -> Result<(String, Box<dyn Host>), Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let Some(host) = env.hosts.first() else {
        return Err(Error::Unsupported {
            what: format!("environment `{environment}` has no hosts"),
            hint: "add hosts to it in gantry.toml".to_owned(),
        });
    };
    Ok((env.project, connect(host)?))
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub environment: String,
    pub host: String,
    #[serde(flatten)]
    pub status: Status,
}

pub fn status(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
) -> Result<StatusReport, Error> {
    let (name, host) = target(project, environment, connect)?;
    Ok(StatusReport {
        environment: environment.to_owned(),
        host: host.name().to_owned(),
        status: host.status(&name)?,
    })
}

#[derive(Debug, Serialize)]
pub struct ReleasesReport {
    pub project: String,
    pub releases: Vec<Release>,
}

pub fn releases(
    project: &Project,
    environment: &str,
    connect: Connect<'_>,
) -> Result<ReleasesReport, Error> {
    let (name, host) = target(project, environment, connect)?;
    Ok(ReleasesReport {
        releases: host.releases(&name)?,
        project: name,
    })
}

pub fn release(
    project: &Project,
    environment: &str,
    id: &str,
    connect: Connect<'_>,
) -> Result<Release, Error> {
    let (name, host) = target(project, environment, connect)?;
    Ok(host.release(&name, id)?)
}

pub fn rollback(
    project: &Project,
    environment: &str,
    to: Option<&str>,
    connect: Connect<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
) -> Result<DeployReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let names: Vec<String> = env
        .services
        .values()
        .flat_map(|s| s.secrets.clone())
        .collect();
    // Secrets the agent already holds are reused; those set here override them.
    let secrets = secret_values(config.project_dir(), &names, env_vars).unwrap_or_default();
    let (name, host) = target(project, environment, connect)?;
    let result = host.rollback(
        &name,
        &RollbackRequest {
            to: to.map(str::to_owned),
            secrets,
        },
    )?;
    finish(DeployReport {
        project: name,
        environment: environment.to_owned(),
        host: host.name().to_owned(),
        release: result.release,
        services: result.services,
        build: Vec::new(),
        upload: Upload::default(),
    })
}

/// Stop or restart: the two act alike on a selection of services.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Stop,
    Restart,
}

pub fn act(
    project: &Project,
    environment: &str,
    action: Action,
    service: Option<&str>,
    connect: Connect<'_>,
) -> Result<StatusReport, Error> {
    let (name, host) = target(project, environment, connect)?;
    let selector = ServiceSelector {
        service: service.map(str::to_owned),
    };
    let status = match action {
        Action::Stop => host.stop(&name, &selector)?,
        Action::Restart => host.restart(&name, &selector)?,
    };
    Ok(StatusReport {
        environment: environment.to_owned(),
        host: host.name().to_owned(),
        status,
    })
}

/// Streams log lines to `sink` until it returns false or the lines end.
pub fn logs(
    project: &Project,
    environment: &str,
    query: &LogQuery,
    connect: Connect<'_>,
    sink: &mut dyn FnMut(crate::agent_api::LogLine) -> bool,
) -> Result<(), Error> {
    let (name, host) = target(project, environment, connect)?;
    Ok(host.logs(&name, query, sink)?)
}
