//! `gantry ssh [HOST] [-- CMD]`: a shell, or one command, on a host of the
//! environment through the user's own ssh.

use crate::config::resolve::{Environment, Host, Reach};
use crate::configure::OpenShell;
use crate::{EnvRefusal, Error, Project};

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
            refusal: EnvRefusal::HostLocal,
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
                refusal: EnvRefusal::HostUnknown,
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
            refusal: EnvRefusal::NoHosts,
            environment: environment.to_owned(),
            problem: "has no hosts".to_owned(),
            hint: "register one with `gantry register`".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use crate::fake::{Fleet, Script, project};

    #[test]
    fn ssh_reaches_the_first_host_or_the_one_named_and_refuses_an_unknown_one() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([("h1", Script::default()), ("h2", Script::default())]);
        let shell = |spec: &Host| fleet.open_shell(spec);

        assert_eq!(ssh(&project, "prod", None, &[], &shell).unwrap(), 0);
        assert_eq!(ssh(&project, "prod", Some("h2"), &[], &shell).unwrap(), 0);
        assert_eq!(
            fleet.calls(),
            ["h1 ssh", "h1 interactive", "h2 ssh", "h2 interactive"]
        );

        let Err(Error::EnvState {
            refusal: EnvRefusal::HostUnknown,
            problem,
            hint,
            ..
        }) = ssh(&project, "prod", Some("h9"), &[], &shell)
        else {
            panic!("an unknown host was reached");
        };
        assert_eq!(problem, "has no host `h9`");
        assert_eq!(hint, "its hosts are: h1, h2");
    }

    #[test]
    fn ssh_to_this_machine_is_refused() {
        let (_dir, project) = project(&["h1"], 1);
        let fleet = Fleet::new([("h1", Script::default())]);
        let shell = |spec: &Host| fleet.open_shell(spec);
        let Err(Error::EnvState {
            refusal: EnvRefusal::HostLocal,
            problem,
            ..
        }) = ssh(&project, "local", None, &[], &shell)
        else {
            panic!("`local` was reached over ssh");
        };
        assert!(problem.contains("without SSH"), "{problem}");
        assert_eq!(fleet.calls(), Vec::<String>::new());
    }
}
