//! The output contract, checked on the real binary: every command's JSON
//! parses, errors carry their code, message, hint and exit code, text mode
//! keeps stdout for reports, and secrets never leave the process.

use gantry_testkit::TestProject;
use serde_json::Value;

const SHOP: &str = r#"
[project]
name = "shop"

[services.web]
run = "./web"
port = "http"
health = { path = "/healthz" }
routes = ["shop.example.com"]
env = { RUST_LOG = "info", API_TOKEN = "${SHOP_TOKEN:-tok-from-default}" }
secrets = ["DATABASE_URL"]
depends_on = ["db"]

[services.db]
image = "postgres:16"
port = 5432
volumes = ["pgdata:/var/lib/postgresql/data"]

[hosts.web-1]
ssh = "deploy@203.0.113.10"

[environments.prod]
hosts = ["web-1"]
services.web.replicas = 2
"#;

fn project() -> TestProject {
    TestProject::new(env!("CARGO_BIN_EXE_gantry")).file("gantry.toml", SHOP)
}

fn error_of(run: &gantry_testkit::Run) -> Value {
    let doc = run.json();
    let error = doc
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("no `error` in {doc}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    assert_eq!(
        error["exit_code"], run.code,
        "the JSON names the exit code: {error}"
    );
    error
}

#[test]
fn every_command_prints_one_json_document() {
    let p = project();
    let validate = p.gantry(&["validate", "--output", "json"]);
    validate.expect_code(0);
    let v = validate.json();
    assert_eq!(v["valid"], true);
    assert_eq!(v["project"], "shop");
    assert_eq!(v["services"], serde_json::json!(["db", "web"]));

    let show = p.gantry(&["show", "--env", "prod", "--output", "json"]);
    show.expect_code(0);
    let s = show.json();
    assert_eq!(s["environment"]["name"], "prod");
    assert_eq!(s["environment"]["services"]["web"]["replicas"], 2);
    assert_eq!(
        s["environment"]["hosts"][0]["target"],
        "deploy@203.0.113.10"
    );

    let schema = p.gantry(&["schema", "--output", "json"]);
    schema.expect_code(0);
    assert_eq!(schema.json()["title"], "gantry.toml");

    for target in ["compose", "systemd"] {
        let out = format!("out-{target}");
        let render = p.gantry(&[
            "render", "--target", target, "--out", &out, "--output", "json",
        ]);
        render.expect_code(0);
        let r = render.json();
        assert_eq!(r["target"], target);
        assert!(r["files"].as_array().is_some_and(|f| !f.is_empty()), "{r}");
    }

    let init = p.gantry(&["init", "fresh", "--output", "json"]);
    init.expect_code(0);
    assert_eq!(init.json()["project"], "fresh");

    let completions = p.gantry(&["completions", "fish", "--output", "json"]);
    completions.expect_code(0);
    assert!(
        completions.json()["script"]
            .as_str()
            .is_some_and(|s| s.contains("gantry"))
    );
}

#[test]
fn json_is_the_default_when_stdout_is_not_a_terminal() {
    let run = project().gantry(&["validate"]);
    run.expect_code(0);
    assert_eq!(run.json()["valid"], true);
    assert!(run.stderr.is_empty(), "nothing on stderr: {}", run.stderr);
}

#[test]
fn invalid_config_exits_3_with_located_errors() {
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file(
        "gantry.toml",
        "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\nport = true\n",
    );
    let run = p.gantry(&["validate", "--output", "json"]);
    run.expect_code(3);
    let error = error_of(&run);
    assert_eq!(error["code"], "config.invalid");
    let first = &error["errors"][0];
    assert_eq!(first["path"], "services.web.port");
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(6), Some(8))
    );
    assert_eq!(first["code"], "config.wrong_type");
    assert!(first["hint"].as_str().is_some());

    let text = p.gantry(&["validate", "--output", "text"]);
    text.expect_code(3);
    assert!(
        text.stdout.is_empty(),
        "errors go to stderr: {}",
        text.stdout
    );
    assert!(text.stderr.contains("gantry.toml:6:8"), "{}", text.stderr);
    assert!(
        text.stderr.contains("port = true"),
        "shows the source line: {}",
        text.stderr
    );
    assert!(
        text.stderr.contains('^'),
        "a caret under the column: {}",
        text.stderr
    );
}

/// `--config` naming a file that is not there says that file, not "no
/// gantry.toml in" its directory.
#[test]
fn a_config_path_that_does_not_exist_is_named() {
    let p = project();
    let run = p.gantry(&["validate", "--config", "prod.toml", "--output", "json"]);
    run.expect_code(3);
    let error = error_of(&run);
    assert_eq!(error["code"], "config.not_found");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.ends_with("prod.toml does not exist"), "{error}");
}

#[test]
fn missing_config_and_unknown_environment_are_input_errors() {
    let empty = TestProject::new(env!("CARGO_BIN_EXE_gantry"));
    let run = empty.gantry(&["validate", "--output", "json"]);
    run.expect_code(3);
    let error = error_of(&run);
    assert_eq!(error["code"], "config.not_found");
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|h| h.contains("gantry init"))
    );

    for command in ["show", "validate"] {
        let run = project().gantry(&[command, "--env", "prdo", "--output", "json"]);
        run.expect_code(3);
        let error = error_of(&run);
        assert_eq!(error["code"], "config.unknown_environment", "{command}");
        assert_eq!(error["hint"], "did you mean `prod`?", "{command}");
    }
}

#[test]
fn usage_errors_exit_2_and_follow_the_requested_format() {
    let p = project();
    let run = p.gantry(&["deploy-everything", "--output", "json"]);
    run.expect_code(2);
    let error = error_of(&run);
    assert_eq!(error["code"], "usage");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("deploy-everything")),
        "{error}"
    );

    let run = p.gantry(&[
        "render",
        "--target",
        "kubernetes",
        "--out",
        "x",
        "--output",
        "text",
    ]);
    run.expect_code(2);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("kubernetes"), "{}", run.stderr);

    // An empty id is a usage error, before any agent is asked (it matched
    // every deployment as a prefix, or reached the agent as no path at all).
    for args in [
        &["releases", "show", ""][..],
        &["rollback", "--to", ""],
        &["backup", "pull", "web", ""],
    ] {
        let run = p.gantry(&[args, &["--output", "json"]].concat());
        run.expect_code(2);
        assert_eq!(error_of(&run)["code"], "usage", "{args:?}");
    }
}

#[test]
fn conflicts_exit_4() {
    let p = project();
    let run = p.gantry(&["init", "--output", "json"]);
    run.expect_code(4);
    assert_eq!(error_of(&run)["code"], "init.exists");
    let unchanged = std::fs::read_to_string(p.path().join("gantry.toml")).expect("read");
    assert_eq!(unchanged, SHOP, "a refused init leaves the file alone");

    std::fs::create_dir_all(p.path().join("busy")).expect("mkdir");
    std::fs::write(p.path().join("busy/notes.txt"), "mine").expect("write");
    let run = p.gantry(&[
        "render", "--target", "compose", "--out", "busy", "--output", "json",
    ]);
    run.expect_code(4);
    assert_eq!(error_of(&run)["code"], "output.exists");
    assert!(
        !p.path().join("busy/local").exists(),
        "nothing written into a foreign directory"
    );
}

#[test]
fn secrets_and_credentials_never_reach_the_output() {
    let p = project()
        .env("DATABASE_URL", "postgres://u:hunter2-db@db/shop")
        .env("SHOP_TOKEN", "tok-hunter2-env");
    for mode in ["json", "text"] {
        let run = p.gantry(&["show", "--output", mode]);
        run.expect_code(0);
        for secret in ["hunter2-db", "tok-hunter2-env"] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{secret} leaked in {mode} mode:\n{}{}",
                run.stdout,
                run.stderr
            );
        }
    }
    let s = p.gantry(&["show", "--output", "json"]).json();
    let secret = &s["secrets"][0];
    assert_eq!(secret["name"], "DATABASE_URL");
    assert_eq!(secret["available"], true);
    assert_eq!(
        s["environment"]["services"]["web"]["env"]["API_TOKEN"],
        "(redacted)"
    );
    assert_eq!(
        s["environment"]["services"]["web"]["env"]["RUST_LOG"],
        "info"
    );

    let unset = project().gantry(&["show", "--output", "json"]).json();
    assert_eq!(unset["secrets"][0]["available"], false);
}

#[test]
fn interpolation_reads_the_environment() {
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry"))
        .file(
            "gantry.toml",
            "[project]\nname = \"shop\"\n[services.web]\nrun = \"./web --level ${LEVEL} --home $${HOME}\"\n",
        )
        .env("LEVEL", "debug");
    let s = p.gantry(&["show", "--output", "json"]).json();
    assert_eq!(
        s["environment"]["services"]["web"]["run"],
        "./web --level debug --home ${HOME}"
    );
}

#[test]
fn render_is_deterministic_and_writes_only_under_out() {
    let p = project();
    let before = listing(p.path());
    p.gantry(&[
        "render", "--target", "compose", "--env", "prod", "--out", "a",
    ])
    .expect_code(0);
    p.gantry(&[
        "render", "--target", "compose", "--env", "prod", "--out", "b",
    ])
    .expect_code(0);
    let a = std::fs::read(p.path().join("a/web-1/compose.yaml")).expect("rendered");
    let b = std::fs::read(p.path().join("b/web-1/compose.yaml")).expect("rendered");
    assert_eq!(a, b, "the same config renders the same bytes");
    let after: Vec<String> = listing(p.path())
        .into_iter()
        .filter(|f| !f.starts_with("a/") && !f.starts_with("b/"))
        .collect();
    assert_eq!(before, after, "nothing written outside --out");

    // Rendering again into the same directory replaces what it wrote before.
    p.gantry(&[
        "render", "--target", "compose", "--env", "local", "--out", "a",
    ])
    .expect_code(0);
    assert!(
        !p.path().join("a/web-1/compose.yaml").exists(),
        "stale files removed"
    );
    assert!(p.path().join("a/local/compose.yaml").exists());
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                files.push(rel.display().to_string());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn init_writes_a_file_that_validates() {
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry"));
    p.gantry(&["init", "My App", "--output", "json"])
        .expect_code(0);
    let dir = p.path().join("My App");
    let text = std::fs::read_to_string(dir.join("gantry.toml")).expect("written");
    assert!(text.contains("name = \"my-app\""), "{text}");
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 10,
        "commented"
    );
    let run = p.gantry(&["validate", "-c", "My App", "--output", "json"]);
    run.expect_code(0);
    let run = p.gantry(&[
        "init", "My App", "--force", "--name", "other", "--output", "json",
    ]);
    run.expect_code(0);
    let run = p.gantry(&["init", "x", "--name", "Bad_Name", "--output", "json"]);
    run.expect_code(3);
    assert!(
        !p.path().join("x/gantry.toml").exists(),
        "no invalid file is written"
    );
}

#[test]
fn help_teaches_with_examples_and_version_prints() {
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry"));
    let top = p.gantry(&["--help"]);
    top.expect_code(0);
    assert!(
        top.stdout.contains("Examples:") && top.stdout.contains("Exit codes"),
        "{}",
        top.stdout
    );
    for command in [
        "validate",
        "show",
        "schema",
        "render",
        "init",
        "completions",
    ] {
        let help = p.gantry(&[command, "--help"]);
        help.expect_code(0);
        assert!(
            help.stdout.contains("Example: gantry"),
            "`{command} --help` shows an example:\n{}",
            help.stdout
        );
    }
    let version = p.gantry(&["--version"]);
    version.expect_code(0);
    assert_eq!(
        version.stdout.trim(),
        format!("gantry {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry"));
    for shell in ["bash", "zsh", "fish"] {
        let run = p.gantry(&["completions", shell]);
        run.expect_code(0);
        assert!(
            run.stdout.contains("validate") && run.stdout.contains("render"),
            "{shell}"
        );
    }
}

#[test]
fn every_error_code_is_documented() {
    let readme = std::fs::read_to_string(gantry_testkit::workspace_root().join("README.md"))
        .expect("README.md");
    for (code, class, _) in gantry_core::CODES {
        assert!(
            readme.contains(&format!("`{code}`")),
            "README.md does not document the error code `{code}`"
        );
        assert!(
            readme.contains(&format!("| {} |", class.code())),
            "README.md does not document exit code {}",
            class.code()
        );
    }
}

#[test]
fn cloud_provider_hosts_are_refused_by_validate_and_deploy_naming_the_host() {
    for provider in ["hetzner", "digitalocean"] {
        let p = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file(
            "gantry.toml",
            &format!(
                "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\n\n\
                 [hosts.cloud1]\nprovider = \"{provider}\"\n\n\
                 [environments.prod]\nhosts = [\"cloud1\"]\n"
            ),
        );
        for args in [
            &["validate", "--output", "json"][..],
            &["deploy", "-e", "prod", "--output", "json"],
            &["configure", "-e", "prod", "--output", "json"],
        ] {
            let run = p.gantry(args);
            let error = error_of(&run);
            assert_eq!(error["code"], "deploy.unsupported", "{args:?}: {error}");
            let message = error["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("cloud1") && message.contains(provider),
                "{args:?}: {error}"
            );
            assert!(
                error["hint"]
                    .as_str()
                    .is_some_and(|h| h.contains("gantry register cloud1 --ssh")),
                "{args:?} says what to do instead: {error}"
            );
        }
    }
    // This machine, as a provider, is supported.
    let local = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file(
        "gantry.toml",
        "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\n\n\
         [hosts.here]\nprovider = \"local\"\n\n[environments.prod]\nhosts = [\"here\"]\n",
    );
    local
        .gantry(&["validate", "--output", "json"])
        .expect_code(0);
}

/// `gantry ssh` hands the terminal to ssh, so ssh's reason for failing goes
/// there; the error says so rather than "no message".
#[test]
fn ssh_to_a_host_that_refuses_says_where_ssh_put_its_reason() {
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file(
        "gantry.toml",
        "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\n\n\
         [environments.prod]\nhosts = [\"h1\"]\n\n[hosts.h1]\nssh = \"nobody@127.0.0.1:1\"\n",
    );
    let run = p.gantry(&["ssh", "h1", "-e", "prod", "--output", "json", "--", "true"]);
    run.expect_code(5);
    let error = error_of(&run);
    assert_eq!(error["code"], "host.unreachable", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("status 255") && message.contains("printed above"),
        "{error}"
    );
    assert!(run.stderr.contains("Connection refused"), "{}", run.stderr);
}
