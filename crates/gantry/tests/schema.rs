//! The committed JSON Schema (`schema/gantry.schema.json`, what editors load):
//! it is exactly what `gantry schema` prints, every good config satisfies it,
//! and for each bad config its `# schema:` comment says whether the schema
//! alone rejects the file. That pins down what the schema covers (types,
//! unknown keys, required keys, ranges, enums, patterns) and what only
//! Gantry's own checks catch (references, cycles, duplicates, conflicts
//! between keys, unset variables, and the custom string formats).

use std::path::{Path, PathBuf};

use gantry_testkit::{TestProject, workspace_root};
use serde_json::Value;

const REGENERATE: &str = "cargo run -p gantry -- schema > schema/gantry.schema.json";

fn committed_schema_text() -> String {
    let path = workspace_root().join("schema/gantry.schema.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nwrite it with `{REGENERATE}`",
            path.display()
        )
    })
}

#[test]
fn committed_schema_is_what_gantry_prints() {
    let run =
        TestProject::new(env!("CARGO_BIN_EXE_gantry")).gantry(&["schema", "--output", "json"]);
    run.expect_code(0);
    assert!(
        committed_schema_text() == run.stdout,
        "schema/gantry.schema.json is stale: the model changed since it was written.\n\
         Regenerate it with `{REGENERATE}` and commit the result."
    );
}

/// The validator an editor has: standard JSON Schema, with `format` as an
/// annotation (the 2020-12 default). Our formats (duration, route, schedule,
/// env-name, ...) are Gantry's own, so no editor checks them; what the schema
/// file enforces for an editor is types, unknown keys, required keys, minimums
/// and maximums, enums and `pattern`, which is why durations and sizes carry a
/// pattern next to their format. Gantry's loader registers the formats itself.
/// A bad config is marked `# schema: rejects` only if this validator rejects it.
fn editor_validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(&committed_schema_text()).expect("the committed schema is JSON");
    jsonschema::options()
        .should_validate_formats(false)
        .build(&schema)
        .expect("the committed schema compiles")
}

/// A gantry.toml as the JSON document an editor validates.
fn as_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read the config");
    toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

fn tomls_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn errors_of(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("  {}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_good_config_satisfies_the_schema() {
    let validator = editor_validator();
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("examples"))
        .expect("examples/")
        .flatten()
        .map(|entry| entry.path().join("gantry.toml"))
        .filter(|path| path.is_file())
        .collect();
    files.extend(tomls_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good"),
    ));
    assert!(files.len() > 1, "good configs are found: {files:?}");

    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let errors = errors_of(&validator, &as_json(file));
            (!errors.is_empty()).then(|| format!("{}:\n{}", file.display(), errors.join("\n")))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "good configs the schema rejects:\n\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn schema_rejects_exactly_the_bad_configs_marked_so() {
    let validator = editor_validator();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in tomls_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad")) {
        let text = std::fs::read_to_string(&file).expect("read the bad config");
        let verdict = text
            .lines()
            .find_map(|l| l.strip_prefix("# schema: "))
            .unwrap_or_else(|| panic!("{}: no `# schema:` line", file.display()));
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let rejects = match verdict {
            "rejects" => true,
            "accepts" => false,
            // TOML syntax errors: there is no document to validate.
            "n/a" => continue,
            other => panic!("{name}: `# schema: {other}` is not rejects, accepts or n/a"),
        };
        checked += 1;
        let errors = errors_of(&validator, &as_json(&file));
        match (rejects, errors.is_empty()) {
            (true, true) => failures.push(format!(
                "{name} is marked `# schema: rejects`, but the schema accepts it"
            )),
            (false, false) => failures.push(format!(
                "{name} is marked `# schema: accepts`, but the schema rejects it:\n{}",
                errors.join("\n")
            )),
            _ => {}
        }
    }
    assert!(
        checked >= 30,
        "only {checked} bad configs were checked against the schema"
    );
    assert!(
        failures.is_empty(),
        "the `# schema:` comments disagree with the schema:\n\n{}",
        failures.join("\n\n")
    );
}
