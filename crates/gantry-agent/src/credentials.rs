//! Where a deploy's credentials go: into the project's secrets file (0600,
//! read by the relays), never into the store, a report or a command line.
//!
//! A value in `env` that is a credential (by its name, a URL with a password,
//! or a known secret's value) is moved to the secrets file and referenced by
//! name, so `releases show` and agent.db hold no value of it. A secret value
//! (or a URL's password) found in a command (`run`, `migrate`, a health
//! check) is refused: it would show in `ps` for every local user. What the API answers is redacted by value as well, for releases an
//! older agent stored.

use std::collections::BTreeMap;

use gantry_core::agent_api::v1::{Check, Health, Workload};
use gantry_core::agent_api::{DeployRequest, Release, ServiceSpec};
use gantry_core::redact::{Redactor, is_credential, url_passwords};

use gantry_core::Code;
use gantry_core::agent_dir::Paths;

use crate::error::AgentError;

/// Moves credential env values of every service into `request.secrets`,
/// and refuses a command (`run`, `migrate`, a health check) that holds a
/// secret's value or a URL's password.
pub(crate) fn separate(request: &mut DeployRequest) -> Result<(), AgentError> {
    let known = Redactor::new(request.secrets.values().cloned());
    // A release deployed again (a rollback, a revert, a secrets sync) was
    // admitted before: refusing it now would leave a failing host where it is.
    if request.rollback_of.is_none() && request.redeploy_of.is_none() {
        check_commands(request, &known)?;
    }
    let mut moved: BTreeMap<String, (String, String)> = BTreeMap::new();
    for service in &mut request.services {
        let credentials: Vec<String> = service
            .env
            .iter()
            // The secrets file holds one line a variable: a multi-line value stays.
            .filter(|(name, value)| {
                (is_credential(name, value) || known.finds_in(value))
                    && !value.contains(['\n', '\r', '\0'])
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in credentials {
            let Some(value) = service.env.remove(&name) else {
                continue;
            };
            if let Some((other, earlier)) = moved.get(&name)
                && *earlier != value
            {
                return Err(AgentError::invalid(
                    Code::SecretsInvalid,
                    format!(
                        "`{name}` holds a credential with different values in `{other}` and `{}`; the project's secrets have one value per name",
                        service.name
                    ),
                    "give the two credentials different names, or make it one secret",
                ));
            }
            if request.secrets.get(&name).is_some_and(|v| *v != value) {
                return Err(AgentError::invalid(
                    Code::SecretsInvalid,
                    format!(
                        "`{name}` of `{}` is both a secret and a credential in env, with different values",
                        service.name
                    ),
                    "keep it in one place: `secrets`",
                ));
            }
            if !service.secrets.contains(&name) {
                service.secrets.push(name.clone());
            }
            moved.insert(name, (service.name.clone(), value));
        }
    }
    for (name, (_, value)) in moved {
        request.secrets.insert(name, value);
    }
    Ok(())
}

/// Refuses a command the agent would run with a secret's value in it (of
/// `known`, the request's secrets) or a URL's password: `ps` shows every
/// command to every local user. A credential only in `env` is not looked
/// for: many are paths or flags a command may name as well.
fn check_commands(request: &DeployRequest, known: &Redactor) -> Result<(), AgentError> {
    for service in &request.services {
        for (what, command) in commands(service) {
            let holds = if known.finds_in(command) {
                "a secret's value"
            } else if url_passwords(command) != command {
                "a URL with a password"
            } else {
                continue;
            };
            return Err(AgentError::invalid(
                Code::SecretsInvalid,
                format!(
                    "the {what} of `{}` holds {holds}, which any local user would see in `ps`",
                    service.name
                ),
                "let the program read the secret from its environment; an argument in a command shows in `ps`",
            ));
        }
    }
    Ok(())
}

/// The commands of `service` the agent runs, where every local user sees
/// them: what each is, and its text.
fn commands(service: &ServiceSpec) -> Vec<(&'static str, &str)> {
    let mut commands = Vec::new();
    if let Workload::Process { run } = &service.workload {
        commands.push(("run command", run.as_str()));
    }
    if let Some(migrate) = &service.migrate {
        commands.extend(migrate.pre.as_deref().map(|c| ("migrate.pre command", c)));
        commands.extend(migrate.post.as_deref().map(|c| ("migrate.post command", c)));
    }
    if let Some(Health {
        check: Check::Command { command },
        ..
    }) = &service.health
    {
        commands.push(("health check command", command.as_str()));
    }
    commands
}

/// Secret values go to a 0600 file the relays read; nowhere else. A name a
/// service uses that the request does not carry keeps the value the file
/// had (a rollback's services may use credentials the CLI does not hold).
pub(crate) fn write_secrets(
    paths: &Paths,
    project: &str,
    request: &DeployRequest,
) -> std::io::Result<()> {
    if request.secrets.is_empty() {
        return Ok(());
    }
    let path = paths.secrets(project);
    let mut values = request.secrets.clone();
    let used = request.services.iter().flat_map(|s| s.secrets.iter());
    let kept = read_secrets(&path);
    for name in used {
        if !values.contains_key(name)
            && let Some(value) = kept.get(name)
        {
            values.insert(name.clone(), value.clone());
        }
    }
    let dir = path.parent().unwrap_or(&paths.root);
    std::fs::create_dir_all(dir)?;
    // Names and values were checked on admission: one variable a line.
    let text: String = values
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect();
    gantry_core::file::write_atomic(&path, text.as_bytes(), 0o600)
}

pub(crate) fn read_secrets(path: &std::path::Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Hides the project's secret values, credential env values and URL
/// passwords in releases the API answers with.
pub(crate) fn redact_releases(paths: &Paths, project: &str, releases: &mut [Release]) {
    let redactor = Redactor::new(read_secrets(&paths.secrets(project)).into_values());
    for release in releases {
        for service in &mut release.services {
            redactor.spec(service);
        }
        release.reason = release.reason.as_deref().map(|r| redactor.text(r));
        for line in &mut release.log_tail {
            *line = redactor.text(line);
        }
    }
}

#[cfg(test)]
mod command_tests {
    use super::*;
    use gantry_core::agent_api::Artifact;
    use gantry_core::agent_api::v1::Migrate;

    fn request(service: ServiceSpec, secrets: &[(&str, &str)]) -> DeployRequest {
        DeployRequest {
            project: "shop".to_owned(),
            environment: "production".to_owned(),
            config_hash: "c".to_owned(),
            artifact: Artifact {
                digest: "a".repeat(64),
                files: Vec::new(),
            },
            spec_version: gantry_core::agent_api::v1::SPEC_VERSION,
            services: vec![service],
            secrets: secrets
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            rollback_of: None,
            redeploy_of: None,
            deployment: None,
            tasks: Vec::new(),
            verify_ms: None,
        }
    }

    fn refused(request: &mut DeployRequest) -> String {
        separate(request).expect_err("refused").to_string()
    }

    /// A secret's value, or a URL's password, in any command the agent
    /// runs (where `ps` shows it) is refused: a secret, a credential just
    /// moved out of `env`, in `migrate` or a health check as in `run`.
    #[test]
    fn a_secret_in_any_command_is_refused() {
        let mut web = crate::store::test_service("web");
        web.migrate = Some(Migrate {
            pre: Some("./migrate --password hunter22".to_owned()),
            post: None,
        });
        let mut secret = request(web.clone(), &[("DB_PASSWORD", "hunter22")]);
        assert!(
            refused(&mut secret)
                .contains("the migrate.pre command of `web` holds a secret's value")
        );
        // A release deployed again was admitted before: not refused now.
        secret.rollback_of = Some("r1".to_owned());
        separate(&mut secret).expect("a rollback");

        let mut checked = crate::store::test_service("web");
        checked.health = Some(
            serde_json::from_value(serde_json::json!({
                "kind": "command",
                "command": "curl -u admin:s3cret-pass http://localhost/up",
                "interval": "1s",
                "timeout": "1s",
                "retries": 3,
                "start_period": "0s",
            }))
            .expect("a health check"),
        );
        let mut secret = request(checked, &[("ADMIN_PASS", "s3cret-pass")]);
        assert!(refused(&mut secret).contains("the health check command of `web`"));

        let mut url = crate::store::test_service("web");
        url.migrate = Some(Migrate {
            pre: None,
            post: Some("psql postgres://app:pw0rd@db/app -c 'select 1'".to_owned()),
        });
        assert!(
            refused(&mut request(url, &[]))
                .contains("the migrate.post command of `web` holds a URL with a password")
        );
        // A credential only in env may be a path a command names too.
        let mut keyed = crate::store::test_service("web");
        keyed.migrate = Some(Migrate {
            pre: Some("./migrate --key-file=/app/creds.json".to_owned()),
            post: None,
        });
        keyed.env.insert(
            "GOOGLE_APPLICATION_CREDENTIALS".to_owned(),
            "/app/creds.json".to_owned(),
        );
        separate(&mut request(keyed, &[])).expect("a path, not a secret");

        let clean = crate::store::test_service("web");
        let mut fine = request(clean, &[("TOKEN", "t0k3n-value")]);
        separate(&mut fine).expect("no secret in its commands");
    }
}
