//! Credentials written into `env` (by name, or as a URL with a password)
//! reach the service but not the agent's store nor `releases show`; a secret
//! interpolated into `run`, where every local user would see it in `ps`, is
//! refused.

mod agent_support;

use agent_support::{AgentProcess, DEADLINE, deploy, files_under, post_json, shell};
use gantry_testkit::wait_for;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

const PASSWORD: &str = "hunter2-in-a-url";
const TOKEN: &str = "tok-0123456789abcdef";
const RUN_SECRET: &str = "visible-in-ps-42";

#[test]
fn credentials_in_env_reach_the_service_but_not_the_store_or_releases_show() {
    let out = tempfile::tempdir().expect("tempdir");
    // A root agent runs the service as its project's own user: like /tmp.
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let got = out.path().join("got");
    let p = shell(
        "creds",
        &format!(
            "[services.app]\nrun = \"printf '%s %s' \\\"$DATABASE_URL\\\" \\\"$API_TOKEN\\\" > {}; exec sleep 600\"\n\
             env = {{ DATABASE_URL = \"postgres://shop:{PASSWORD}@db:5432/shop\", API_TOKEN = \"{TOKEN}\", RUST_LOG = \"info\" }}\n\
             health = {{ command = \"true\" }}\n",
            got.display()
        ),
    );
    deploy(&p);
    wait_for("the service to write what it got", DEADLINE, || {
        got.exists()
    });
    wait_for("the whole line", DEADLINE, || {
        std::fs::read_to_string(&got).is_ok_and(|s| s.contains(TOKEN))
    });
    assert_eq!(
        std::fs::read_to_string(&got).expect("read"),
        format!("postgres://shop:{PASSWORD}@db:5432/shop {TOKEN}")
    );

    let shown = p.gantry(&["releases", "show", "r1", "--output", "json"]);
    shown.expect_code(0);
    for value in [PASSWORD, TOKEN] {
        assert!(!shown.stdout.contains(value), "shown: {}", shown.stdout);
    }
    assert!(shown.stdout.contains("RUST_LOG"), "{}", shown.stdout);

    // The store (and its journal) and the logs; the artifact holds
    // gantry.toml as the user wrote it, credentials and all.
    let kept = files_under(p.state_dir()).into_iter().filter(|f| {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        name.is_some_and(|n| n.starts_with("agent.db") || n.ends_with(".log"))
    });
    for file in kept {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for value in [PASSWORD, TOKEN] {
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{} holds {value}",
                file.display()
            );
        }
    }
}

#[test]
fn a_secret_interpolated_into_run_is_refused_by_validate_and_by_the_agent() {
    let p = shell(
        "runsecret",
        "[services.app]\nrun = \"exec sleep 600 --password ${DB_PASS}\"\nsecrets = [\"DB_PASS\"]\n\
         health = { command = \"true\" }\n",
    )
    .env("DB_PASS", RUN_SECRET);
    let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let text = run.json().to_string();
    assert!(!text.contains(RUN_SECRET), "{text}");
    assert!(text.contains("interpolates secret `DB_PASS`"), "{text}");

    // Another client, past validate: the agent finds the value in `run`.
    let _agent = AgentProcess::start(&p);
    let app = json!({
        "name": "app",
        "driver": "process",
        "run": format!("exec sleep 600 --password {RUN_SECRET}"),
        "replicas": 1,
        "env": {},
        "secrets": ["DB_PASS"],
        "routes": [],
        "resources": {},
        "depends_on": [],
        "volumes": [],
        "stop_timeout": "1s",
        "restart": "always",
    });
    let request = json!({
        "project": "runsecret",
        "environment": "local",
        "config_hash": "c0ffee",
        "artifact": { "digest": gantry_core::artifact::tree_digest(&[]), "files": [] },
        "services": [app],
        "secrets": { "DB_PASS": RUN_SECRET },
    });
    let (code, answer) = post_json(&p, "/v1/projects/runsecret/deploys", &request);
    assert_eq!(code, 422, "{answer:#}");
    assert_eq!(answer["error"]["code"], "secrets.invalid", "{answer:#}");
    assert!(!answer.to_string().contains(RUN_SECRET), "{answer:#}");
}

#[test]
fn show_hides_the_password_of_a_url_in_env() {
    let p = shell(
        "showcreds",
        &format!(
            "[services.app]\nrun = \"exec sleep 600\"\n\
             env = {{ DATABASE_URL = \"postgres://shop:{PASSWORD}@db:5432/shop\" }}\n"
        ),
    );
    let shown = p.gantry(&["show", "--output", "json"]);
    shown.expect_code(0);
    assert!(!shown.stdout.contains(PASSWORD), "{}", shown.stdout);
    assert!(
        shown
            .stdout
            .contains("postgres://shop:(redacted)@db:5432/shop"),
        "{}",
        shown.stdout
    );
}
