//! The environment lifecycle commands on their own (no host needed): state
//! files under .gantry/state, refusals that say what to do instead.

use gantry_testkit::TestProject;

fn project() -> TestProject {
    TestProject::new(env!("CARGO_BIN_EXE_gantry")).file(
        "gantry.toml",
        "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\n",
    )
}

#[test]
fn create_list_show_and_purge_guard_their_states() {
    let p = project();
    let created = p.gantry(&["env", "create", "stage", "--output", "json"]);
    created.expect_code(0);
    assert_eq!(created.json()["state"], "created", "{}", created.stdout);
    let state = p.path().join(".gantry/state/stage.json");
    assert!(state.exists(), "the state is kept in {}", state.display());

    let again = p.gantry(&["env", "create", "stage", "--output", "json"]);
    again.expect_code(4);
    assert_eq!(again.json()["error"]["code"], "env.exists");

    let list = p.gantry(&["env", "list", "--output", "json"]).json();
    let envs = list["environments"].as_array().expect("environments");
    let stage = envs
        .iter()
        .find(|e| e["environment"] == "stage")
        .expect("stage is listed");
    assert_eq!(stage["state"], "created");
    assert_eq!(stage["declared"], false, "not in gantry.toml: {stage}");
    assert!(
        envs.iter()
            .any(|e| e["environment"] == "local" && e["declared"] == true),
        "{list:#}"
    );

    // Only a destroyed environment is forgotten.
    let purge = p.gantry(&["env", "purge", "stage", "--output", "json"]);
    purge.expect_code(4);
    assert_eq!(purge.json()["error"]["code"], "env.not_destroyed");
    assert!(
        purge.json()["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("gantry env destroy stage --yes")),
        "{}",
        purge.stdout
    );
    assert!(state.exists());

    let unknown = p.gantry(&["env", "show", "prod", "--output", "json"]);
    unknown.expect_code(4);
    assert_eq!(unknown.json()["error"]["code"], "env.unknown");

    // A damaged state file is named, not overwritten.
    std::fs::write(&state, b"{ not json").expect("damage it");
    let damaged = p.gantry(&["env", "show", "stage", "--output", "json"]);
    damaged.expect_code(3);
    assert_eq!(damaged.json()["error"]["code"], "state.corrupt");
    assert_eq!(std::fs::read(&state).expect("still there"), b"{ not json");
}

/// Every lifecycle state, in an environment gantry.toml declares and in one
/// it does not (created by `env create`), with a host that cannot be reached.
const PHASES: [&str; 8] = [
    "created",
    "provisioned",
    "provision_failed",
    "configured",
    "configure_failed",
    "running",
    "deploy_failed",
    "destroyed",
];

/// A host nothing listens for: ssh is refused at once.
const GONE: &str = "nobody@127.0.0.1:1";

fn project_with_prod() -> TestProject {
    TestProject::new(env!("CARGO_BIN_EXE_gantry")).file(
        "gantry.toml",
        &format!(
            "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"./web\"\n\n\
             [hosts.web1]\nssh = \"{GONE}\"\n\n[environments.prod]\nhosts = [\"web1\"]\n"
        ),
    )
}

/// A state file as the lifecycle leaves it in `phase` (a configured phase
/// went through `configured` first).
fn write_state(p: &TestProject, env: &str, phase: &str) {
    let configured = ["configured", "running", "deploy_failed"].contains(&phase);
    let mut history = vec![serde_json::json!({"state": "created", "at": 1})];
    if configured {
        history.push(serde_json::json!({"state": "configured", "at": 2}));
    }
    history.push(serde_json::json!({"state": phase, "at": 3}));
    let failure = phase.ends_with("_failed").then(
        || serde_json::json!({"step": "check ssh", "host": "web1", "error": "refused", "at": 3}),
    );
    let state = serde_json::json!({
        "environment": env,
        "state": phase,
        "hosts": {"web1": {"ssh": GONE}},
        "failure": failure,
        "history": history,
    });
    let dir = p.path().join(".gantry/state");
    std::fs::create_dir_all(&dir).expect("state dir");
    std::fs::write(dir.join(format!("{env}.json")), state.to_string()).expect("write state");
}

/// The `gantry ...` commands a refusal's hint names.
fn hinted(run: &gantry_testkit::Run) -> Vec<Vec<String>> {
    let error = &run.json()["error"];
    let hint = error["hint"].as_str().unwrap_or_default();
    let commands: Vec<Vec<String>> = hint
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| quoted.strip_prefix("gantry "))
        .map(|command| command.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert!(
        !commands.is_empty(),
        "refused with no command to run instead: {error}"
    );
    commands
}

/// Runs `command`; when refused, runs the first command its hint names that
/// was not run already (there must be one: a hint that only leads back is a
/// loop), then `command` again, until the environment's state is gone.
fn follow_hints(p: &TestProject, env: &str, command: Vec<String>, seen: &mut Vec<Vec<String>>) {
    seen.push(command.clone());
    let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
    args.extend(["--output", "json"]);
    let state = p.path().join(format!(".gantry/state/{env}.json"));
    let run = p.gantry(&args);
    if run.code == 0 || !state.exists() {
        return;
    }
    let next = hinted(&run)
        .into_iter()
        .find(|c| !seen.contains(c))
        .unwrap_or_else(|| panic!("the hints loop for `{env}`: {seen:?}\n{}", run.stdout));
    assert!(seen.len() < 6, "no way out for `{env}`: {seen:?}");
    follow_hints(p, env, next, seen);
    if state.exists() {
        let again = p.gantry(&args);
        assert_eq!(again.code, 0, "{command:?} still refused: {}", again.stdout);
    }
}

#[test]
fn every_lifecycle_state_has_a_way_out_that_its_hints_name() {
    for phase in PHASES {
        for env in ["prod", "stage"] {
            let p = project_with_prod();
            write_state(&p, env, phase);
            let mut seen = Vec::new();
            let start = vec!["env".into(), "purge".into(), env.into()];
            follow_hints(&p, env, start, &mut seen);
            assert!(
                !p.path().join(format!(".gantry/state/{env}.json")).exists(),
                "`{env}` in `{phase}` was never forgotten: {seen:?}"
            );
            // Forgotten, it starts over.
            p.gantry(&["env", "create", env]).expect_code(0);
        }
    }
}

#[test]
fn an_environment_created_then_failed_to_register_can_be_destroyed_and_purged() {
    let p = project();
    p.gantry(&["env", "create", "stage"]).expect_code(0);
    let register = p.gantry(&[
        "register", "web1", "--ssh", GONE, "-e", "stage", "--output", "json",
    ]);
    assert_ne!(register.code, 0, "{}", register.stdout);
    let show = p.gantry(&["env", "show", "stage"]);
    show.expect_code(0);
    assert!(
        show.stdout.contains("provision_failed") && !show.stdout.contains("ProvisionFailed"),
        "text spells states as JSON does: {}",
        show.stdout
    );
    let list = p.gantry(&["env", "list"]);
    assert!(list.stdout.contains("provision_failed"), "{}", list.stdout);

    let destroy = p.gantry(&["env", "destroy", "stage", "--yes", "--output", "json"]);
    destroy.expect_code(0);
    assert_eq!(destroy.json()["state"], "destroyed");
    let purge = p.gantry(&["env", "purge", "stage", "--output", "json"]);
    purge.expect_code(0);
    let purged = purge.json();
    assert_eq!(
        (&purged["environment"], &purged["purged"], &purged["was"]),
        (&"stage".into(), &true.into(), &"destroyed".into()),
        "{purged:#}"
    );
    assert!(!p.path().join(".gantry/state/stage.json").exists());
}

#[test]
fn a_destroyed_environment_refuses_register_before_touching_gantry_toml() {
    let p = project_with_prod();
    write_state(&p, "prod", "destroyed");
    let before = std::fs::read_to_string(p.path().join("gantry.toml")).expect("read");
    let register = p.gantry(&[
        "register", "web2", "--ssh", GONE, "-e", "prod", "--output", "json",
    ]);
    register.expect_code(4);
    assert!(
        register.json()["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("gantry env purge prod")),
        "{}",
        register.stdout
    );
    let after = std::fs::read_to_string(p.path().join("gantry.toml")).expect("read");
    assert_eq!(before, after);
}

#[test]
fn purge_force_forgets_a_live_environment_only_once_confirmed_with_yes() {
    let p = project();
    p.gantry(&["env", "create", "stage"]).expect_code(0);
    let state = p.path().join(".gantry/state/stage.json");

    let unconfirmed = p.gantry(&["env", "purge", "stage", "--force", "--output", "json"]);
    unconfirmed.expect_code(2);
    let error = &unconfirmed.json()["error"];
    assert_eq!(error["code"], "usage", "{error}");
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|h| h.contains("gantry env purge stage --force --yes")),
        "{error}"
    );
    assert!(state.exists(), "an unconfirmed purge keeps the state");

    let purge = p.gantry(&[
        "env", "purge", "stage", "--force", "--yes", "--output", "text",
    ]);
    purge.expect_code(0);
    assert_eq!(
        purge.stdout,
        "stage: forgotten (it was created: its services were not stopped)\n"
    );
    assert!(!state.exists(), "a confirmed purge forgets it");
}

/// `local` is this machine: it is never registered, so its hint must not
/// send the user to `gantry register`, which refuses it.
#[test]
fn local_without_state_points_at_status_not_at_register() {
    let p = project();
    for args in [
        &["env", "show", "local"][..],
        &["env", "destroy", "local", "--yes"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let run = p.gantry(&args);
        run.expect_code(4);
        let error = &run.json()["error"];
        assert_eq!(error["code"], "env.unknown", "{error}");
        let hint = error["hint"].as_str().unwrap_or_default();
        assert!(
            hint.contains("gantry status") && !hint.contains("register"),
            "{error}"
        );
    }
}

/// A name that could not be an environment's (a path, spaces) is refused by
/// every env command before any file is touched: `../../x` must not write
/// or delete a file outside .gantry/state.
#[test]
fn an_environment_name_that_is_a_path_is_refused_and_nothing_is_written() {
    let p = project();
    let outside = p.path().join("x.json");
    std::fs::write(&outside, b"kept").expect("a file outside the state");
    for args in [
        &["env", "create", "../x"][..],
        &["env", "create", "Bad Name!"],
        &["env", "show", "../x"],
        &["env", "destroy", "../x", "--yes"],
        &["env", "purge", "../x", "--force", "--yes"],
    ] {
        let run = p.gantry(&[args, &["--output", "json"]].concat());
        run.expect_code(4);
        let error = &run.json()["error"];
        assert_eq!(error["code"], "env.unknown", "{args:?}: {error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot be an environment's name")),
            "{args:?}: {error}"
        );
        assert_eq!(std::fs::read(&outside).expect("still there"), b"kept");
    }
    let states = std::fs::read_dir(p.path().join(".gantry/state"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(states, 0, "no state or lock file was left");
    // A name as gantry.toml names environments, hyphen and all, is fine.
    p.gantry(&["env", "create", "prod-eu"]).expect_code(0);
    assert!(p.path().join(".gantry/state/prod-eu.json").exists());
}
