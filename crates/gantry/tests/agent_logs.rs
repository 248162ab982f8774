//! `gantry logs [SERVICE] [-f] [--since D] [--tail N]` on the real agent:
//! what services print, as JSON lines in JSON mode, filtered and followed.

mod agent_support;

use agent_support::{DEADLINE, Lines, command, deploy, instances, json, service, shell};
use gantry_testkit::{TestProject, wait_for};
use serde_json::Value;

const SERVICES: &str = r#"[services.ticker]
run = "i=0; while :; do i=$((i+1)); echo \"tick $i\"; echo \"warn $i\" >&2; sleep 0.05; done"
health = { command = "true" }

[services.quiet]
run = "echo 'quiet started'; exec sleep 600"
health = { command = "true" }
"#;

/// `gantry logs ARGS --output json`: one JSON object a line.
fn log_lines(p: &TestProject, args: &[&str]) -> Vec<Value> {
    let args = [&["logs"][..], args, &["--output", "json"]].concat();
    let run = p.gantry(&args);
    run.expect_code(0);
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn texts(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["line"].as_str().expect("line"))
        .collect()
}

#[test]
fn logs_prints_what_services_print_as_json_lines_filtered_by_service_tail_and_since() {
    let p = shell("logs", SERVICES);
    let report = deploy(&p);
    let ticker_id = instances(service(&report, "ticker"))[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_for("ten ticks", DEADLINE, || {
        log_lines(&p, &["ticker"])
            .iter()
            .any(|l| l["line"] == "tick 10")
    });

    let all = log_lines(&p, &[]);
    assert!(texts(&all).contains(&"quiet started"), "{all:?}");
    assert!(texts(&all).contains(&"tick 1"), "{all:?}");
    let stamps: Vec<u64> = all.iter().map(|l| l["ts"].as_u64().expect("ts")).collect();
    assert!(stamps.is_sorted(), "merged by time: {stamps:?}");

    let ticker = log_lines(&p, &["ticker"]);
    for line in &ticker {
        assert_eq!(line["service"], "ticker", "{line}");
        assert_eq!(line["instance"], ticker_id.as_str(), "{line}");
        let text = line["line"].as_str().expect("line");
        let stream = if text.starts_with("warn") {
            "stderr"
        } else {
            "stdout"
        };
        assert_eq!(line["stream"], stream, "{line}");
    }
    assert!(!texts(&ticker).contains(&"quiet started"));

    let tail = log_lines(&p, &["ticker", "--tail", "3"]);
    assert_eq!(tail.len(), 3, "{tail:?}");
    let later = log_lines(&p, &["ticker"]);
    let position = |line: &Value| later.iter().position(|l| l == line).expect("in the log");
    assert!(
        tail.iter().map(position).collect::<Vec<_>>().is_sorted(),
        "the tail is in order: {tail:?}"
    );
    assert!(
        later.len() - position(&tail[0]) >= 3,
        "the tail is the end of the log"
    );

    assert_eq!(
        texts(&log_lines(&p, &["quiet", "--since", "10m"])),
        ["quiet started"]
    );
    wait_for("the quiet line to be older than 1s", DEADLINE, || {
        log_lines(&p, &["quiet", "--since", "1s"]).is_empty()
    });
    assert!(!log_lines(&p, &["ticker", "--since", "1s"]).is_empty());

    let text = p.gantry(&["logs", "quiet", "--output", "text"]);
    text.expect_code(0);
    assert!(
        text.stdout.trim_end().ends_with("quiet | quiet started"),
        "{}",
        text.stdout
    );
    let bad = p.gantry(&["logs", "--since", "soon", "--output", "json"]);
    bad.expect_code(2);
}

#[test]
fn logs_follow_prints_new_lines_as_they_come_across_restarts() {
    // Fast enough that lines are written while the follow reads the old ones.
    let p = shell(
        "logs-follow",
        r#"[services.ticker]
run = "i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.002; done"
health = { command = "true" }
"#,
    );
    let report = deploy(&p);
    let first = instances(service(&report, "ticker"))[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_for("a hundred ticks", DEADLINE, || {
        log_lines(&p, &["ticker"])
            .iter()
            .any(|l| l["line"] == "tick 100")
    });
    let seen = log_lines(&p, &["ticker"]).len();

    let follow = Lines::spawn(command(
        &p,
        &["logs", "ticker", "-f", "--tail", "10", "--output", "json"],
    ));
    let tick = |line: &str| -> Option<(String, u64)> {
        let v: Value = serde_json::from_str(line).ok()?;
        let n = v["line"].as_str()?.strip_prefix("tick ")?.parse().ok()?;
        Some((v["instance"].as_str()?.to_owned(), n))
    };
    // From the tail into what comes later, with no line lost or repeated.
    let mut ticks = Vec::new();
    follow.until("a hundred ticks printed after following began", |line| {
        let (id, n) = tick(line).unwrap_or_default();
        if id == first {
            ticks.push(n);
        }
        n as usize > seen + 100
    });
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive ticks: {ticks:?}"
    );

    json(&p, &["restart", "ticker"]);
    // The restarted instance counts from 1 again.
    follow.until("a tick of the restarted process", |line| {
        tick(line).is_some_and(|(id, n)| id == first && n <= 3)
    });
}

#[test]
fn text_logs_show_a_services_escape_sequences_escaped_not_raw() {
    // A title change, a screen clear, a carriage return that would hide what
    // came before, a bell, a bidi override; and a tab, which stays.
    let p = shell(
        "logs-escapes",
        r#"[services.noisy]
run = '''printf 'a\033]0;owned\007b\033[2Jc\rd\tafter\342\200\256e\n'; echo done; exec sleep 600'''
health = { command = "true" }
"#,
    );
    deploy(&p);
    wait_for("the service's output", DEADLINE, || {
        log_lines(&p, &["noisy"])
            .iter()
            .any(|l| l["line"] == "done")
    });
    // JSON keeps the line as printed.
    let json = log_lines(&p, &["noisy"]);
    assert!(
        texts(&json).contains(&"a\u{1b}]0;owned\u{7}b\u{1b}[2Jc\rd\tafter\u{202e}e"),
        "{json:?}"
    );

    let text = p.gantry(&["logs", "noisy", "--output", "text"]);
    text.expect_code(0);
    let raw: Vec<char> = text
        .stdout
        .chars()
        .filter(|&c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}')
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?} in:\n{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(r"a\u{1b}]0;owned\u{7}b\u{1b}[2Jc\u{d}d")
            && text.stdout.contains("\tafter\\u{202e}e"),
        "{}",
        text.stdout
    );
}

/// A follow begun before a service's first deploy gets its lines once it
/// runs: the agent answers a service it has not run yet with no lines so
/// far, not with an error.
#[test]
fn a_follow_begun_before_a_services_first_deploy_gets_its_lines() {
    let p = shell("logs-later", SERVICES);
    deploy(&p);
    let toml = std::fs::read_to_string(p.path().join("gantry.toml")).expect("gantry.toml");
    let later = "\n[services.later]\nrun = \"echo 'later started'; exec sleep 600\"\nhealth = { command = \"true\" }\n";
    std::fs::write(p.path().join("gantry.toml"), format!("{toml}{later}")).expect("write");

    let follow = Lines::spawn(command(&p, &["logs", "later", "-f", "--output", "json"]));
    deploy(&p);
    follow.until("the new service's first line", |line| {
        line.contains("later started")
    });
}
