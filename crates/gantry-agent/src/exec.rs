//! How `gantry exec` runs a command as a service runs: its current
//! release's directory, environment and confinement. Secret values are not
//! in the answer: the command's runner reads the secrets file on the host.

use gantry_core::Code;
use gantry_core::agent_api::ExecSpec;

use crate::agent::Agent;
use crate::error::AgentError;
use crate::instance;
use crate::isolation::Isolation;

/// `GET /v1/projects/{project}/services/{service}/exec`.
pub(crate) async fn exec_spec(
    agent: &Agent,
    project: String,
    service: String,
) -> Result<ExecSpec, AgentError> {
    let (p, s) = (project.clone(), service.clone());
    let (release, instances) = agent
        .db(move |store| {
            let Some(id) = store.current(&p, &s)? else {
                return Ok(None);
            };
            let Some(release) = store.release(&p, &id)? else {
                return Ok(None);
            };
            Ok(Some((release, store.instances(&p)?)))
        })
        .await?
        .ok_or_else(|| {
            AgentError::not_found(
                Code::ServiceNotDeployed,
                format!("`{service}` of {project} runs no release on this host"),
                "deploy it first, or name a service `gantry status` lists",
            )
        })?;
    let spec = release
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| {
            AgentError::not_found(
                Code::ServiceNotDeployed,
                format!("release {} has no service `{service}`", release.id),
                "name a service `gantry status` lists",
            )
        })?;
    let cwd = instance::working_dir(agent, &project, &release.artifact_digest, spec);
    // The command must do no more than the service: where the agent runs
    // services as their project's user, it runs as that user too.
    let confinement = match agent.isolation {
        Isolation::AgentUser => None,
        Isolation::ProjectUsers => Some(
            agent
                .isolation
                .confinement(&agent.paths, &project, &service, spec.run_as_root)
                .map_err(|reason| {
                    AgentError::invalid(
                        Code::ExecFailed,
                        reason,
                        "its instances cannot start either: fix the service's config and deploy again",
                    )
                })?,
        ),
    };
    Ok(ExecSpec {
        confinement,
        env: instance::exec_environment(spec, &release.id, &instances),
        cwd: cwd.display().to_string(),
        secrets_file: agent.paths.secrets(&project).display().to_string(),
        secret_names: spec.secrets.clone(),
        release: release.id,
    })
}
