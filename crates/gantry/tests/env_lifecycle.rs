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
    assert_eq!(again.json()["error"]["code"], "env.state");

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
    assert_eq!(unknown.json()["error"]["code"], "env.state");

    // A damaged state file is named, not overwritten.
    std::fs::write(&state, b"{ not json").expect("damage it");
    let damaged = p.gantry(&["env", "show", "stage", "--output", "json"]);
    damaged.expect_code(3);
    assert_eq!(damaged.json()["error"]["code"], "state.corrupt");
    assert_eq!(std::fs::read(&state).expect("still there"), b"{ not json");
}
