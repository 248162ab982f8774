//! What the agent checks of a request before it writes a file or starts a
//! process. The CLI validated the config, but the API is reachable by anyone
//! who can open `agent.sock`, and its names become paths (`releases/<project>`),
//! lines of the secrets file and host names: each is checked again here with
//! the config's own rules, so a refused request leaves the host as it was.

use gantry_core::Code;
use gantry_core::agent_api::DeployRequest;
use gantry_core::agent_api::v1::{
    Port, TooNew, Workload, check_env_name, check_name, check_revision,
};

use crate::error::AgentError;

const NAME_HINT: &str = "names are lowercase letters, digits and hyphens, starting with a letter; \
     secret and variable names are letters, digits and underscores";

fn invalid(what: &str, why: String) -> AgentError {
    AgentError::invalid(
        Code::RequestInvalid,
        format!("invalid {what}: {why}"),
        NAME_HINT,
    )
}

/// Every name and secret value of a deploy, and its processes' fixed ports
/// against the host's proxy (`proxy_ports`), before anything of it is
/// written.
pub(crate) fn check_deploy(request: &DeployRequest, proxy_ports: &[u16]) -> Result<(), AgentError> {
    // A spec this agent cannot read whole is refused, not half deployed.
    check_revision(request.spec_version).map_err(|too_new| {
        AgentError::conflict(Code::AgentIncompatible, too_new.to_string(), TooNew::HINT)
    })?;
    check_name(&request.project).map_err(|why| invalid("project name", why))?;
    let mut seen = std::collections::BTreeSet::new();
    for service in &request.services {
        check_name(&service.name).map_err(|why| invalid("service name", why))?;
        if !seen.insert(service.name.as_str()) {
            return Err(invalid(
                "service list",
                format!("`{}` appears twice", service.name),
            ));
        }
        for name in service.secrets.iter().chain(service.env.keys()) {
            check_env_name(name).map_err(|why| invalid("variable name", why))?;
        }
        let paths = [
            service.artifact.as_deref(),
            match &service.workload {
                gantry_core::agent_api::v1::Workload::Static { dir, .. } => Some(dir.as_str()),
                _ => None,
            },
        ];
        for path in paths.into_iter().flatten() {
            check_release_path(path).map_err(|why| invalid("path in the release", why))?;
        }
        if service.replicas > REPLICAS_MAX {
            return Err(invalid(
                "replica count",
                format!(
                    "`{}` asks for {} replicas, more than the {REPLICAS_MAX} one host runs",
                    service.name, service.replicas
                ),
            ));
        }
    }
    for (name, value) in &request.secrets {
        check_env_name(name).map_err(|why| invalid("secret name", why))?;
        // One variable a line in the secrets file: a line break would start another.
        if value.contains(['\n', '\r', '\0']) {
            return Err(AgentError::invalid(
                Code::SecretsInvalid,
                format!(
                    "the value of secret {name} has a line break or NUL, which a secrets file cannot hold"
                ),
                "store the value without line breaks (base64-encode it, for example)",
            ));
        }
    }
    check_proxy_ports(request, proxy_ports)
}

/// The most replicas of one service a host runs, as gantry.toml allows.
const REPLICAS_MAX: u32 = 1000;

/// A path the agent joins to a release's directory (`artifact`, a static
/// directory) stays inside it: relative, with no `..`, and no NUL.
fn check_release_path(path: &str) -> Result<(), String> {
    use std::path::Component;
    let inside = !path.contains('\0')
        && std::path::Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(())
    } else {
        Err(format!("`{path}` leads outside the release"))
    }
}

/// A process whose fixed port is one the host's proxy listens on
/// (`proxy_ports`) could not start: it is refused before anything of the
/// deploy is done, instead of failing its health check with the port
/// taken. gantry.toml cannot tell this machine's proxy ports (they are
/// where its agent was started), so this is where it is caught. A
/// container's fixed port is inside the container, and is not compared.
fn check_proxy_ports(request: &DeployRequest, proxy_ports: &[u16]) -> Result<(), AgentError> {
    for service in &request.services {
        let (Workload::Process { .. }, Some(Port::Fixed(port))) =
            (&service.workload, &service.port)
        else {
            continue;
        };
        if proxy_ports.contains(port) {
            return Err(AgentError::conflict(
                Code::DeployPortTaken,
                format!(
                    "`{}` would listen on port {port}, where this host's proxy listens",
                    service.name
                ),
                "give it another port in gantry.toml, or a named one (port = \"http\") \
                 for the agent to assign as $PORT; its routes reach it through the proxy",
            ));
        }
    }
    Ok(())
}

/// A `{project}` or `{service}` of a request's path, percent-decoded, must be a name.
pub(crate) fn check_path_param(key: &str, value: &str) -> Result<(), AgentError> {
    if matches!(key, "project" | "service") {
        check_name(value).map_err(|why| invalid(&format!("{key} name"), why))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an older CLI, or any client of the API, sends as a path in the
    /// release is refused when it would lead the agent out of it.
    #[test]
    fn a_path_in_the_release_may_not_lead_out_of_it() {
        for inside in [".", "dist", "public/site", "./bin"] {
            assert_eq!(check_release_path(inside), Ok(()), "{inside}");
        }
        for outside in ["../shared", "/usr/local/bin", "dist/../../etc", "a\0b"] {
            assert!(check_release_path(outside).is_err(), "{outside:?}");
        }
    }
}
