//! `gantry exec SERVICE -- CMD`: runs a command as a service runs, on the
//! first host that runs the service (or the one named). On this machine the
//! caller runs it (`here`); on another host, `gantry agent exec` runs it
//! there through ssh, so the service's secrets never leave the host.

use crate::config::resolve::{Host, Reach};
use crate::configure::OpenShell;
use crate::host::{remote_gantry, shell_quote};
use crate::{EnvRefusal, Error, Project};

/// Runs the command on this machine as a service of `project` runs: the
/// command's exit code.
pub type Here<'a> = &'a dyn Fn(&str) -> Result<i32, Error>;

/// The command's exit code, wherever it ran.
pub fn exec(
    project: &Project,
    environment: &str,
    service: &str,
    host: Option<&str>,
    command: &[String],
    shell: OpenShell<'_>,
    here: Here<'_>,
) -> Result<i32, Error> {
    let (chosen, name) = target(project, environment, service, host)?;
    if chosen.reach == Reach::Local {
        return here(&name);
    }
    let remote = remote_gantry(&format!(
        "agent exec --project {} --service {} -- {}",
        shell_quote(&name),
        shell_quote(service),
        command
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(shell(&chosen)?.interactive(Some(&remote))?)
}

/// The host `exec` runs on: `host` if given (it must run the service), else
/// the first host of the environment that runs it; and the project's name.
fn target(
    project: &Project,
    environment: &str,
    service: &str,
    host: Option<&str>,
) -> Result<(Host, String), Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let Some(spec) = env.services.get(service) else {
        return Err(Error::no_service(&env, environment, service));
    };
    let runs = |h: &&Host| spec.runs_on(&h.name);
    let chosen = match host {
        Some(name) => env
            .hosts
            .iter()
            .filter(runs)
            .find(|h| h.name == name)
            .ok_or_else(|| Error::EnvState {
                refusal: EnvRefusal::ServiceNotOnHost,
                environment: environment.to_owned(),
                problem: format!("does not run `{service}` on a host `{name}`"),
                hint: "leave out --host to use the first host that runs it".to_owned(),
            })?,
        None => env.hosts.iter().find(runs).ok_or_else(|| Error::EnvState {
            refusal: EnvRefusal::ServiceNotOnHost,
            environment: environment.to_owned(),
            problem: format!("runs `{service}` on no host"),
            hint: "check the service's `hosts` in gantry.toml".to_owned(),
        })?,
    };
    Ok((chosen.clone(), env.project.clone()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use crate::fake::{Fleet, Script, project};

    #[test]
    fn exec_runs_on_this_machine_for_local_with_the_projects_name() {
        let (_dir, project) = project(&["h1"], 1);
        let fleet = Fleet::new([("h1", Script::default())]);
        let shell = |spec: &Host| fleet.open_shell(spec);
        let here = |name: &str| Ok(if name == "shop" { 7 } else { 1 });
        let code = exec(
            &project,
            "local",
            "web",
            None,
            &["true".to_owned()],
            &shell,
            &here,
        );
        assert_eq!(code.unwrap(), 7);
        assert_eq!(fleet.calls(), Vec::<String>::new());
    }

    #[test]
    fn exec_on_a_remote_host_goes_through_its_shell_and_refuses_a_host_without_the_service() {
        let (_dir, project) = project(&["h1", "h2"], 1);
        let fleet = Fleet::new([("h1", Script::default()), ("h2", Script::default())]);
        let shell = |spec: &Host| fleet.open_shell(spec);
        let here = |_: &str| -> Result<i32, Error> { panic!("run here") };
        let command = ["true".to_owned()];
        let exec_on = |host| exec(&project, "prod", "web", host, &command, &shell, &here);

        assert_eq!(exec_on(Some("h2")).unwrap(), 0);
        assert_eq!(fleet.calls(), ["h2 ssh", "h2 interactive"]);
        let Err(Error::EnvState {
            refusal: EnvRefusal::ServiceNotOnHost,
            problem,
            ..
        }) = exec_on(Some("h9"))
        else {
            panic!("ran on a host that does not run `web`");
        };
        assert_eq!(problem, "does not run `web` on a host `h9`");
        let Err(Error::EnvState {
            refusal: EnvRefusal::ServiceUnknown,
            hint,
            ..
        }) = exec(&project, "prod", "db", None, &command, &shell, &here)
        else {
            panic!("ran an unknown service");
        };
        assert_eq!(hint, "its services are: web");
    }

    #[test]
    fn words_survive_the_remote_shell() {
        for word in ["plain", "two words", "it's", "$HOME", "a\"b", "", "`x`"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .expect("run sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word);
        }
    }
}
