//! `-v` and `-vv` show on stderr what Gantry does: each agent request with
//! its status and duration (-v), and the agent's answers (-vv); stdout
//! stays the one report. (-vvv, the requests' bodies, and the secret values
//! it must hide: agent_secrets.rs.)

mod agent_support;

use agent_support::{ends_with_a_duration, shell, traced};
use gantry_testkit::{Run, TestProject};

fn project() -> TestProject {
    shell(
        "verbose",
        "[services.api]\nrun = \"exec sleep 600\"\nhealth = { command = \"true\" }\n",
    )
}

/// `gantry FLAGS deploy`, which must succeed with one JSON document on stdout.
fn deploy(p: &TestProject, flags: &[&str]) -> Run {
    let args = [flags, &["deploy", "--skip-build", "--output", "json"]].concat();
    let run = p.gantry(&args);
    run.expect_code(0);
    assert_eq!(run.json()["environment"], "local", "{}", run.stdout);
    run
}

#[test]
fn v_shows_each_agent_request_with_its_status_and_how_long_it_took() {
    let p = project();
    let quiet = deploy(&p, &[]);
    assert!(
        traced(&quiet, "agent ").is_empty(),
        "without -v nothing is traced:\n{}",
        quiet.stderr
    );

    let run = deploy(&p, &["-v"]);
    let health = traced(&run, "agent local: GET /v1/health → 200 OK in ");
    let deploys = traced(
        &run,
        "agent local: POST /v1/projects/verbose/deploys → 200 OK in ",
    );
    assert!(!health.is_empty() && deploys.len() == 1, "{}", run.stderr);
    for line in health.iter().chain(&deploys) {
        assert!(ends_with_a_duration(line), "{line}");
    }
    let bodies = [
        traced(&run, "agent local: ←"),
        traced(&run, "agent local: →"),
    ];
    assert!(
        bodies.iter().all(Vec::is_empty),
        "-v shows no bodies:\n{}",
        run.stderr
    );
}

#[test]
fn vv_also_shows_the_agents_answers_but_not_the_requests_bodies() {
    let p = project();
    let run = deploy(&p, &["-vv"]);
    let deploys = traced(
        &run,
        "agent local: POST /v1/projects/verbose/deploys → 200 OK",
    );
    assert_eq!(deploys.len(), 1, "{}", run.stderr);
    let release = traced(&run, "agent local: ← ")
        .into_iter()
        .filter_map(|line| {
            serde_json::from_str::<serde_json::Value>(&line["agent local: ← ".len()..]).ok()
        })
        .find(|answer| answer["release"]["id"] == "r1");
    assert!(
        release.is_some(),
        "the deploy's answer, as JSON:\n{}",
        run.stderr
    );
    assert!(
        traced(&run, "agent local: →").is_empty(),
        "-vv shows no request bodies:\n{}",
        run.stderr
    );
}

/// `gantry agent` run with `flags` on `p`'s state directory, with a proxy,
/// until it is ready; then stopped. Its log (stderr) once it has exited.
fn agent_log(p: &TestProject, flags: &[&str]) -> String {
    let log = p.path().join("agent.stderr");
    let file = std::fs::File::create(&log).expect("create the agent's log file");
    let args = [flags, &["agent", "--proxy-listen", "127.0.0.1:0"]].concat();
    let mut agent = agent_support::command(p, &args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start `gantry agent`");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    gantry_testkit::wait_for("the agent to be ready", agent_support::DEADLINE, || {
        read().contains("agent ready")
    });
    if !flags.is_empty() {
        // Its debug event: the proxy's first route table.
        gantry_testkit::wait_for("the routes' debug line", agent_support::DEADLINE, || {
            read().contains("proxy routes replaced")
        });
    }
    p.gantry(&["agent", "stop"]).expect_code(0);
    gantry_testkit::wait_for("the agent to exit", agent_support::DEADLINE, || {
        agent.try_wait().ok().flatten().is_some()
    });
    read()
}

#[test]
fn v_on_the_agent_logs_its_debug_events_which_it_leaves_out_without() {
    let p = project();
    let quiet = agent_log(&p, &[]);
    assert!(
        quiet.contains("agent stopped") && !quiet.contains("DEBUG"),
        "without -v the agent logs no debug events:\n{quiet}"
    );
    let verbose = agent_log(&p, &["-v"]);
    assert!(
        verbose
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("proxy routes replaced")),
        "-v shows the agent's debug events:\n{verbose}"
    );
}
