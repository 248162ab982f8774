//! `gantry register HOST`: an existing server, reachable over SSH, joins an
//! environment. It is checked over SSH first; then gantry.toml gains
//! `[hosts.HOST]` (when not declared) and the environment lists it, with the
//! file's comments and layout kept (toml_edit); the environment's state
//! becomes `provisioned` until `gantry configure` runs.

use serde::Serialize;

use crate::config::resolve::{Host as HostSpec, Reach};
use crate::configure::OpenShell;
use crate::environment::{EnvState, HostRecord, Phase, StateDir};
use crate::progress::Progress;
use crate::{EnvRefusal, Error, Project, write_atomic};

#[derive(Debug, Serialize)]
pub struct RegisterReport {
    pub environment: String,
    pub host: String,
    pub ssh: String,
    /// What was added to gantry.toml (empty: it already said all of it).
    pub added: Vec<String>,
    pub state: Phase,
}

pub fn register(
    project: &Project,
    environment: &str,
    host: &str,
    ssh: Option<&str>,
    shell: OpenShell<'_>,
    progress: &dyn Progress,
) -> Result<RegisterReport, Error> {
    if environment == "local" || host == "local" {
        return Err(Error::RegisterLocal);
    }
    let config = project.load()?;
    let declared = config.file.hosts.get(host).and_then(|h| h.ssh.clone());
    let target = match (ssh, &declared) {
        (Some(given), Some(known)) if given != known => {
            return Err(Error::SshDiffers {
                host: host.to_owned(),
                known: known.clone(),
                given: given.to_owned(),
            });
        }
        (Some(given), _) => given.to_owned(),
        (None, Some(known)) => known.clone(),
        // A name from ~/.ssh/config.
        (None, None) => host.to_owned(),
    };

    let states = StateDir::of(config.project_dir());
    let _lock = states.lock(environment, &format!("gantry register {host}"))?;
    // Refused before anything is checked or written: gantry.toml stays as it was.
    if states
        .load(environment)?
        .is_some_and(|s| s.state() == Phase::Destroyed)
    {
        return Err(Error::EnvState {
            refusal: EnvRefusal::Destroyed,
            environment: environment.to_owned(),
            problem: "was destroyed".to_owned(),
            hint: format!("`gantry env purge {environment}` forgets it; then register hosts again"),
        });
    }

    progress.step(&format!("checking ssh {target}"));
    let spec = HostSpec {
        name: host.to_owned(),
        reach: Reach::Ssh {
            target: target.clone(),
        },
    };
    let checked = shell(&spec)
        .and_then(|s| Ok(s.run("uname -sm", None)?))
        .and_then(|ran| {
            if ran.ok() {
                Ok(())
            } else {
                Err(Error::ConfigureFailed {
                    host: host.to_owned(),
                    step: "check ssh".to_owned(),
                    message: ran.stderr.trim().to_owned(),
                })
            }
        });
    if let Err(error) = checked {
        // Recorded, so `gantry env show` says why the environment is not provisioned.
        let mut state = states
            .load(environment)?
            .unwrap_or_else(|| EnvState::new(environment));
        if !state.state().configured() {
            state.fail(
                Phase::ProvisionFailed,
                "check ssh",
                Some(host),
                &error.to_string(),
            )?;
            states.save(&state)?;
        }
        return Err(error);
    }
    let added = add_to_file(&config.path, environment, host, &target, declared.is_none())?;

    let mut state = states
        .load(environment)?
        .unwrap_or_else(|| EnvState::new(environment));
    state.hosts.entry(host.to_owned()).or_insert(HostRecord {
        ssh: Some(target.clone()),
        ..HostRecord::default()
    });
    // A new host needs configuring before the environment can deploy.
    if !added.is_empty() || !state.state().configured() {
        state.set(Phase::Provisioned)?;
    }
    states.save(&state)?;
    Ok(RegisterReport {
        environment: environment.to_owned(),
        host: host.to_owned(),
        ssh: target,
        added,
        state: state.state(),
    })
}

/// Adds `[hosts.HOST]` and the host to `[environments.ENV].hosts`, keeping
/// the rest of the file as written. Checks the result loads before writing.
fn add_to_file(
    path: &std::path::Path,
    environment: &str,
    host: &str,
    target: &str,
    declare: bool,
) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| Error::ConfigUneditable {
                path: path.to_owned(),
                problem: format!("it does not parse: {e}"),
                hint: "fix the file (`gantry validate` shows where), then register again"
                    .to_owned(),
            })?;
    let mut added = Vec::new();
    if declare {
        let hosts = table(&mut doc, "hosts", path)?;
        let mut entry = toml_edit::Table::new();
        entry.insert("ssh", toml_edit::value(target));
        hosts.insert(host, toml_edit::Item::Table(entry));
        added.push(format!("[hosts.{host}] ssh = \"{target}\""));
    }
    let envs = table(&mut doc, "environments", path)?;
    if !envs.contains_key(environment) {
        let mut entry = toml_edit::Table::new();
        entry.insert("hosts", toml_edit::value(toml_edit::Array::new()));
        envs.insert(environment, toml_edit::Item::Table(entry));
        added.push(format!("[environments.{environment}]"));
    }
    let list = envs
        .get_mut(environment)
        .and_then(|e| e.as_table_like_mut())
        .and_then(|e| {
            if !e.contains_key("hosts") {
                e.insert("hosts", toml_edit::value(toml_edit::Array::new()));
            }
            e.get_mut("hosts")
        })
        .and_then(|h| h.as_array_mut())
        .ok_or_else(|| Error::ConfigUneditable {
            path: path.to_owned(),
            problem: format!("`environments.{environment}.hosts` is not a list"),
            hint: "write it as hosts = [\"web1\", ...]".to_owned(),
        })?;
    if !list.iter().any(|v| v.as_str() == Some(host)) {
        list.push(host);
        added.push(format!("`{host}` in environments.{environment}.hosts"));
    }
    if added.is_empty() {
        return Ok(added);
    }
    let edited = doc.to_string();
    // Never write a file Gantry would then refuse.
    let check = crate::config::parse(&path.display().to_string(), &edited, &|var| {
        std::env::var(var).ok()
    });
    if let Err(e) = check {
        return Err(Error::ConfigUneditable {
            path: path.to_owned(),
            problem: format!("with host `{host}` added it would not load: {e}"),
            hint: "fix gantry.toml (`gantry validate`), then register again".to_owned(),
        });
    }
    write_atomic(path, edited.as_bytes())?;
    Ok(added)
}

/// The top-level table `name`, created if missing.
fn table<'a>(
    doc: &'a mut toml_edit::DocumentMut,
    name: &str,
    path: &std::path::Path,
) -> Result<&'a mut dyn toml_edit::TableLike, Error> {
    if !doc.contains_key(name) {
        let mut parent = toml_edit::Table::new();
        parent.set_implicit(true);
        doc.insert(name, toml_edit::Item::Table(parent));
    }
    doc.get_mut(name)
        .and_then(toml_edit::Item::as_table_like_mut)
        .ok_or_else(|| Error::ConfigUneditable {
            path: path.to_owned(),
            problem: format!("`{name}` is not a table"),
            hint: format!("write it as [{name}.<name>] tables"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    fn refused(toml: &str) -> Error {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("gantry.toml");
        std::fs::write(&path, toml).expect("write gantry.toml");
        let error = add_to_file(&path, "prod", "web1", "deploy@10.0.0.5", true)
            .expect_err("the edit is refused");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read gantry.toml"),
            toml,
            "nothing was written"
        );
        error
    }

    fn register_into(environment: &str, host: &str, ssh: Option<&str>) -> Error {
        let (_dir, project) = crate::fake::project(&["web1"], 1);
        let shell = |_: &HostSpec| -> Result<Box<dyn crate::host::Shell>, Error> {
            panic!("nothing is checked over SSH")
        };
        register(
            &project,
            environment,
            host,
            ssh,
            &shell,
            &crate::fake::Said::default(),
        )
        .expect_err("refused")
    }

    #[test]
    fn registering_local_is_register_local() {
        for (environment, host) in [("local", "web2"), ("prod", "local")] {
            let error = register_into(environment, host, Some("deploy@10.0.0.5"));
            assert_eq!(error.code(), Code::RegisterLocal, "{environment} {host}");
            assert_eq!(error.exit_class(), crate::ExitClass::Invalid);
        }
    }

    #[test]
    fn an_ssh_target_other_than_gantry_tomls_is_register_ssh_differs_naming_both() {
        let error = register_into("prod", "web1", Some("deploy@10.0.0.5"));
        assert_eq!(error.code(), Code::RegisterSshDiffers);
        assert_eq!(error.exit_class(), crate::ExitClass::Conflict);
        let message = error.to_string();
        assert!(
            message.contains("`web1`") && message.contains("`deploy@10.0.0.5`"),
            "{message}"
        );
    }

    #[test]
    fn a_gantry_toml_register_cannot_edit_is_config_uneditable_naming_why() {
        for (toml, why) in [
            ("[project\n", "does not parse"),
            ("hosts = 3\n", "`hosts` is not a table"),
            (
                "[environments.prod]\nhosts = \"web1\"\n",
                "`environments.prod.hosts` is not a list",
            ),
        ] {
            let error = refused(toml);
            assert_eq!(error.code(), Code::ConfigUneditable, "{toml}");
            assert_eq!(error.exit_class(), crate::ExitClass::Invalid);
            let message = error.to_string();
            assert!(
                message.contains("gantry.toml") && message.contains(why),
                "{toml}: {message}"
            );
        }
    }
}
