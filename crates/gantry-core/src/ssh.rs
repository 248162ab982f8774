//! `gantry ssh [HOST] [-- CMD]`: a shell, or one command, on a host of the
//! environment through the user's own ssh.

use crate::config::resolve::{Environment, Host, Reach};
use crate::configure::OpenShell;
use crate::{Error, Project};

/// Runs `command` (a shell when it is empty) on `host`, or on the
/// environment's first host; the remote command's exit code.
pub fn ssh(
    project: &Project,
    environment: &str,
    host: Option<&str>,
    command: &[String],
    shell: OpenShell<'_>,
) -> Result<i32, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let host = pick(&env, environment, host)?;
    if host.reach == Reach::Local {
        return Err(Error::EnvState {
            environment: environment.to_owned(),
            problem: format!("reaches `{}` without SSH: it is this machine", host.name),
            hint: "use a shell here".to_owned(),
        });
    }
    let command = (!command.is_empty()).then(|| command.join(" "));
    Ok(shell(host)?.interactive(command.as_deref())?)
}

/// The host named `name`, or the environment's first.
fn pick<'a>(
    env: &'a Environment,
    environment: &str,
    name: Option<&str>,
) -> Result<&'a Host, Error> {
    match name {
        Some(name) => env
            .hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Error::EnvState {
                environment: environment.to_owned(),
                problem: format!("has no host `{name}`"),
                hint: format!(
                    "its hosts are: {}",
                    env.hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        None => env.hosts.first().ok_or_else(|| Error::EnvState {
            environment: environment.to_owned(),
            problem: "has no hosts".to_owned(),
            hint: "register one with `gantry register`".to_owned(),
        }),
    }
}
