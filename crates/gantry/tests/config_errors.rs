//! The corpus of bad configs in `tests/bad`, run through the real binary: each
//! file states, in `# expect: <key.path> @ <line>:<column>` comments, every
//! error it must produce, and gets exactly those, in JSON and in text, with a
//! message and (where one helps) a hint. Both forms are snapshotted, so a
//! change in wording or layout shows up in review. The good configs
//! (`examples/*/gantry.toml` and `tests/good`) must validate.
//!
//! A file may carry `# known-issue:` lines: its expectations say what the
//! loader should report, and the loader does not yet. Such a file must keep
//! failing its check (so a fix is noticed and the marker removed) and is not
//! snapshotted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gantry_testkit::{Run, TestProject};
use serde_json::Value;

/// Where an error points: key path (empty for the whole file), line, column.
type Location = (String, u64, u64);

/// Codes whose errors always have something to suggest: the key or name meant,
/// the order to break, the variable to set.
const HINTED: &[&str] = &[
    "config.unknown_key",
    "config.unknown_reference",
    "config.cycle",
    "config.duplicate_route",
    "config.unset_variable",
];

struct Case {
    name: String,
    text: String,
    expected: BTreeSet<Location>,
    known_issue: bool,
}

impl Case {
    fn read(path: &Path) -> Case {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name")
            .to_owned();
        let text = std::fs::read_to_string(path).expect("read the bad config");
        let mut expected = BTreeSet::new();
        let mut schema_lines = 0;
        let mut known_issue = false;
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            if let Some(rest) = line.strip_prefix("# expect: ") {
                let location = parse_expectation(rest)
                    .unwrap_or_else(|| panic!("{name}: cannot read `{line}`"));
                assert!(
                    expected.insert(location),
                    "{name}: `{line}` is listed twice"
                );
            } else if let Some(verdict) = line.strip_prefix("# schema: ") {
                assert!(
                    ["rejects", "accepts", "n/a"].contains(&verdict),
                    "{name}: `{line}` is not rejects, accepts or n/a"
                );
                schema_lines += 1;
            } else if line.starts_with("# known-issue:") {
                known_issue = true;
            }
        }
        assert!(
            !expected.is_empty(),
            "{name}: no `# expect:` line in its header"
        );
        assert_eq!(
            schema_lines, 1,
            "{name}: needs exactly one `# schema:` line"
        );
        Case {
            name,
            text,
            expected,
            known_issue,
        }
    }
}

/// `services.web.port @ 6:8`, or `<root> @ 1:1` for the file as a whole.
fn parse_expectation(text: &str) -> Option<Location> {
    let (path, at) = text.split_once(" @ ")?;
    let (line, column) = at.split_once(':')?;
    let path = if path == "<root>" { "" } else { path };
    Some((path.to_owned(), line.parse().ok()?, column.parse().ok()?))
}

/// `gantry validate` on the case, in JSON mode and in text mode.
fn validate(case: &Case) -> (Run, Run) {
    let project = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file("gantry.toml", &case.text);
    (
        project.gantry(&["validate", "--output", "json"]),
        project.gantry(&["validate", "--output", "text"]),
    )
}

/// Every way the binary's report for `case` differs from its expectations.
fn check(case: &Case, json_run: &Run, text_run: &Run) -> Result<Value, Vec<String>> {
    let mut problems = Vec::new();
    for run in [json_run, text_run] {
        if run.code != 3 {
            problems.push(format!(
                "`gantry {}` exited {}, not 3\nstdout:\n{}\nstderr:\n{}",
                run.args.join(" "),
                run.code,
                run.stdout,
                run.stderr
            ));
        }
    }
    let Ok(json) = serde_json::from_str::<Value>(&json_run.stdout) else {
        problems.push(format!(
            "stdout is not one JSON document:\n{}",
            json_run.stdout
        ));
        return Err(problems);
    };
    let error = &json["error"];
    if error["code"] != "config.invalid" {
        problems.push(format!(
            "error code is {}, not config.invalid",
            error["code"]
        ));
    }
    if error["exit_code"] != 3 {
        problems.push(format!("exit_code is {}, not 3", error["exit_code"]));
    }
    let errors = error["errors"].as_array().cloned().unwrap_or_default();

    let found: BTreeSet<Location> = errors.iter().filter_map(location).collect();
    if found.len() != errors.len() {
        problems.push(format!(
            "errors without a path, line and column:\n{errors:#?}"
        ));
    }
    if found != case.expected {
        let show = |set: &BTreeSet<Location>| {
            set.iter()
                .map(|(p, l, c)| format!("  # expect: {} @ {l}:{c}", display_path(p)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        problems.push(format!(
            "the errors differ from the `# expect:` lines\nexpected:\n{}\nfound:\n{}\nmissing:\n{}\nunexpected:\n{}",
            show(&case.expected),
            show(&found),
            show(&case.expected.difference(&found).cloned().collect()),
            show(&found.difference(&case.expected).cloned().collect()),
        ));
    }

    for e in &errors {
        let code = e["code"].as_str().unwrap_or_default();
        if e["message"].as_str().is_none_or(|m| m.trim().is_empty()) {
            problems.push(format!("an error without a message: {e}"));
        }
        match e.get("hint") {
            Some(hint) if hint.as_str().is_none_or(|h| h.trim().is_empty()) => {
                problems.push(format!("an empty hint: {e}"));
            }
            None if HINTED.contains(&code) => {
                problems.push(format!("a {code} error without a hint: {e}"));
            }
            _ => {}
        }
    }

    if !text_run.stdout.is_empty() {
        problems.push(format!("text mode printed on stdout:\n{}", text_run.stdout));
    }
    problems.extend(check_text(&text_run.stderr, &errors));

    if problems.is_empty() {
        Ok(json)
    } else {
        Err(problems)
    }
}

fn location(error: &Value) -> Option<Location> {
    Some((
        error["path"].as_str()?.to_owned(),
        error["line"].as_u64()?,
        error["column"].as_u64()?,
    ))
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

/// Each error's `--> file:line:column` line, followed by its source line with a caret.
fn check_text(stderr: &str, errors: &[Value]) -> Vec<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let mut problems = Vec::new();
    let arrows = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("--> "))
        .count();
    if arrows != errors.len() {
        problems.push(format!(
            "text shows {arrows} locations for {} errors:\n{stderr}",
            errors.len()
        ));
    }
    for e in errors {
        let arrow = format!(
            "--> {}:{}:{}",
            e["file"].as_str().unwrap_or_default(),
            e["line"],
            e["column"]
        );
        let Some(at) = lines.iter().position(|l| l.trim() == arrow) else {
            problems.push(format!("text has no `{arrow}` line:\n{stderr}"));
            continue;
        };
        // The snippet runs until the blank line that ends this error's block.
        let caret = lines[at + 1..]
            .iter()
            .take_while(|l| !l.trim().is_empty())
            .any(|l| l.contains('|') && l.contains('^'));
        if !caret {
            problems.push(format!("no caret under `{arrow}`:\n{stderr}"));
        }
    }
    if !lines
        .last()
        .is_some_and(|l| l.starts_with("error: ") && l.contains(" has "))
    {
        problems.push(format!("text does not end with a summary line:\n{stderr}"));
    }
    problems
}

/// Escapes text for use in an insta filter, which is a regular expression.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[test]
fn every_bad_config_is_reported_where_it_is_wrong() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let count = std::fs::read_dir(&dir).expect("tests/bad").count();
    assert!(
        count >= 30,
        "the corpus has {count} files; it covers at least 30 mistakes"
    );

    let mut failures: Vec<String> = Vec::new();
    insta::glob!("bad/*.toml", |path| {
        let case = Case::read(path);
        let (json_run, text_run) = validate(&case);
        let outcome = check(&case, &json_run, &text_run);
        match (outcome, case.known_issue) {
            (Ok(_), true) => failures.push(format!(
                "{}: now reported as expected; remove its `# known-issue:` lines",
                case.name
            )),
            (Err(_), true) => {}
            (Err(problems), false) => {
                let report = format!("{}:\n{}", case.name, problems.join("\n"));
                eprintln!("{report}\n");
                failures.push(report);
            }
            (Ok(json), false) => snapshot(&case, &json, &text_run.stderr),
        }
    });
    assert!(
        failures.is_empty(),
        "{} of the bad configs are not reported as their comments say:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn snapshot(case: &Case, json: &Value, text: &str) {
    // Errors name the file relative to where gantry runs; should an absolute
    // path show up, the temporary directory must not make the snapshot differ.
    let filters: Vec<(String, &str)> = std::env::temp_dir()
        .canonicalize()
        .into_iter()
        .chain([std::env::temp_dir()])
        .map(|dir| {
            (
                format!("{}/[^/\\s\"]+", literal(&dir.display().to_string())),
                "[TEMP]",
            )
        })
        .collect();
    let filters: Vec<(&str, &str)> = filters.iter().map(|(r, s)| (r.as_str(), *s)).collect();
    insta::with_settings!({
        filters => filters,
        description => format!("gantry validate on tests/bad/{}", case.name),
        omit_expression => true,
    }, {
        insta::assert_snapshot!("text", text);
        insta::assert_json_snapshot!("json", json);
    });
}

fn good_configs() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let examples = gantry_testkit::workspace_root().join("examples");
    for entry in std::fs::read_dir(&examples).expect("examples/").flatten() {
        let file = entry.path().join("gantry.toml");
        if file.is_file() {
            files.push(file);
        }
    }
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good");
    for entry in std::fs::read_dir(&good).expect("tests/good").flatten() {
        if entry.path().extension().is_some_and(|e| e == "toml") {
            files.push(entry.path());
        }
    }
    files.sort();
    files
}

#[test]
fn every_good_config_validates() {
    let files = good_configs();
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("examples/shop/gantry.toml")),
        "the examples are found: {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read the good config");
        let project = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file("gantry.toml", &text);
        let run = project.gantry(&["validate", "--output", "json"]);
        let valid = serde_json::from_str::<Value>(&run.stdout).is_ok_and(|v| v["valid"] == true);
        if run.code != 0 || !valid {
            failures.push(format!(
                "{} (exit {}):\n{}{}",
                file.display(),
                run.code,
                run.stdout,
                run.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "good configs rejected:\n\n{}",
        failures.join("\n\n")
    );
}

/// A 5 MB gantry.toml wrong on every line: the report keeps the first 100
/// errors and counts the rest, in JSON and in text, so its size does not
/// follow the file's.
#[test]
fn a_file_wrong_on_every_line_gives_a_bounded_report_counting_the_rest() {
    let mut text = String::from("[project]\nname = \"big\"\nunknown_first = 1\n");
    let mut lines = 1;
    while text.len() < 5 << 20 {
        text.push_str(&format!("unknown_key_{lines} = {lines}\n"));
        lines += 1;
    }
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file("gantry.toml", &text);

    let json_run = p.gantry(&["validate", "--output", "json"]);
    json_run.expect_code(3);
    assert!(
        json_run.stdout.len() < 64 << 10,
        "{} bytes",
        json_run.stdout.len()
    );
    let error = &json_run.json()["error"];
    let shown = error["errors"].as_array().expect("errors").len();
    assert_eq!(shown, 100, "the first 100 are shown");
    assert_eq!(error["more_errors"], lines - 100, "the rest are counted");
    assert_eq!(error["errors"][0]["line"], 3, "in the file's order");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("has {lines} errors"))),
        "{}",
        error["message"]
    );

    let text_run = p.gantry(&["validate", "--output", "text"]);
    text_run.expect_code(3);
    assert!(
        text_run.stderr.len() < 64 << 10,
        "{} bytes",
        text_run.stderr.len()
    );
    assert!(
        text_run
            .stderr
            .contains(&format!("and {} more errors, not shown", lines - 100)),
        "{}",
        &text_run.stderr[text_run.stderr.len().saturating_sub(500)..]
    );
}
