//! `gantry deploy`: build, snapshot the artifact, send the host only the
//! files it lacks, and ask its agent to roll the release out. The agent does
//! the cutover; this side prepares and reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::agent_api::{DeployRequest, Outcome, Release, ServiceStatus};
use crate::artifact;
use crate::config::resolve::{Reach, Workload};
use crate::{Error, Project};

/// Where a long operation reports what it is doing (stderr lines, JSON events).
pub trait Progress {
    fn step(&self, message: &str);
}

/// Progress nobody watches.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _: &str) {}
}

#[derive(Debug, Serialize)]
pub struct BuildStep {
    pub service: String,
    pub command: String,
    pub duration_ms: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Upload {
    pub files: usize,
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct DeployReport {
    pub project: String,
    pub environment: String,
    pub host: String,
    pub release: Release,
    pub services: Vec<ServiceStatus>,
    pub build: Vec<BuildStep>,
    pub upload: Upload,
}

#[derive(Clone, Debug, Default)]
pub struct DeployOptions {
    /// Use what is on disk; run no build command.
    pub skip_build: bool,
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Secret values: the CLI's environment first, then `.gantry/secrets.env`.
pub fn secret_values(
    dir: &Path,
    names: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, Error> {
    let file: BTreeMap<String, String> = std::fs::read_to_string(dir.join(".gantry/secrets.env"))
        .map(|text| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for name in names {
        match env(name).or_else(|| file.get(name).cloned()) {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() {
        Ok(values)
    } else {
        missing.dedup();
        Err(Error::MissingSecrets { names: missing })
    }
}

pub fn deploy(
    project: &Project,
    environment: &str,
    connect: crate::operate::Connect<'_>,
    env_vars: &dyn Fn(&str) -> Option<String>,
    options: &DeployOptions,
    progress: &dyn Progress,
) -> Result<DeployReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let dir = config.project_dir().to_owned();

    let [host] = env.hosts.as_slice() else {
        return Err(Error::Unsupported {
            what: format!("environment `{environment}` has {} hosts", env.hosts.len()),
            hint: "deploys to several hosts come with remote hosts; deploy `local` for now"
                .to_owned(),
        });
    };
    if host.reach != Reach::Local {
        return Err(Error::Unsupported {
            what: format!("host `{}` is remote", host.name),
            hint: "deploys over SSH come with remote hosts; deploy `local` for now".to_owned(),
        });
    }
    let services: Vec<_> = env.deploy_order().into_iter().cloned().collect();
    let other: Vec<String> = services
        .iter()
        .filter(|s| !matches!(s.workload, Workload::Process { .. }))
        .map(|s| s.name.clone())
        .collect();
    if !other.is_empty() {
        return Err(Error::Unsupported {
            what: format!(
                "{} {} not a process: only the process driver deploys yet",
                other.join(", "),
                if other.len() == 1 { "is" } else { "are" }
            ),
            hint: "the compose and static drivers come in a later version; `gantry render --target compose` writes the containers for Docker Compose meanwhile".to_owned(),
        });
    }

    let names: Vec<String> = services.iter().flat_map(|s| s.secrets.clone()).collect();
    let secrets = secret_values(&dir, &names, env_vars)?;

    let mut build = Vec::new();
    if !options.skip_build {
        let mut done: Vec<&str> = Vec::new();
        for service in &services {
            let Some(command) = &service.build else {
                continue;
            };
            if done.contains(&command.as_str()) {
                continue;
            }
            done.push(command);
            progress.step(&format!("building {}: {command}", service.name));
            let started = Instant::now();
            // The build's output is the user's to read: it goes to stderr as it comes.
            let status = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .current_dir(&dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::io::stderr())
                .status()
                .map_err(Error::io("run the build of", &dir))?;
            if !status.success() {
                return Err(Error::BuildFailed {
                    service: service.name.clone(),
                    command: command.clone(),
                    status: status.to_string(),
                });
            }
            build.push(BuildStep {
                service: service.name.clone(),
                command: command.clone(),
                duration_ms: ms(started),
            });
        }
    }

    progress.step("taking the artifact");
    let started = Instant::now();
    let extra: Vec<String> = services.iter().filter_map(|s| s.artifact.clone()).collect();
    let scan = artifact::scan(&dir, &extra).map_err(Error::io("read the project in", &dir))?;

    let agent = connect(host)?;
    let mut digests: Vec<String> = scan
        .artifact
        .files
        .iter()
        .map(|f| f.digest.clone())
        .collect();
    digests.sort();
    digests.dedup();
    let missing = agent.missing_blobs(&digests)?;
    let mut upload = Upload {
        files: scan.artifact.files.len(),
        ..Upload::default()
    };
    if !missing.is_empty() {
        progress.step(&format!(
            "sending {} of {} files to {}",
            missing.len(),
            digests.len(),
            agent.name()
        ));
    }
    for digest in &missing {
        let Some(source) = scan.sources.get(digest) else {
            continue;
        };
        agent.upload_blob(digest, source)?;
        upload.blobs_sent += 1;
        upload.bytes_sent += std::fs::metadata(source).map(|m| m.len()).unwrap_or(0);
    }
    upload.duration_ms = ms(started);

    let config_hash = {
        let text = serde_json::to_string(&services).unwrap_or_default();
        artifact::hex(&Sha256::digest(text.as_bytes()))
    };
    progress.step(&format!("deploying {} to {}", env.project, agent.name()));
    let request = DeployRequest {
        project: env.project.clone(),
        environment: env.name.clone(),
        config_hash,
        artifact: scan.artifact,
        services,
        secrets,
        rollback_of: None,
    };
    let result = agent.deploy(&request)?;
    let report = DeployReport {
        project: env.project,
        environment: env.name,
        host: host.name.clone(),
        release: result.release,
        services: result.services,
        build,
        upload,
    };
    finish(report)
}

/// A report whose release failed becomes a `deploy.failed` error carrying it.
pub fn finish(report: DeployReport) -> Result<DeployReport, Error> {
    if report.release.outcome == Outcome::Failed {
        return Err(Error::DeployFailed {
            release: report.release.id.clone(),
            reason: report.release.reason.clone().unwrap_or_default(),
            log_tail: report.release.log_tail.clone(),
            report: Box::new(serde_json::to_value(&report).unwrap_or_default()),
        });
    }
    Ok(report)
}
