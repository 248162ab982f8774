//! `gantry plan` for three SSH hosts and twenty services, next to the
//! deploy it foretells, in the same run. Prints one Markdown table; never
//! fails on a slow result.
//!
//! The hosts are network namespaces on this machine, each with its own
//! sshd, user and home (`gantry_testkit::hosts::TestHosts`), so it needs root:
//!
//! ```sh
//! cargo build --release -p gantry
//! sudo -E cargo run --release -p gantry-bench --bin plan [-- --rounds N]
//! ```
//!
//! `GANTRY_BIN=path` runs another build of the binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gantry_bench::{gantry_binary, ms, percentile};
use gantry_testkit::TestProject;
use gantry_testkit::hosts::TestHosts;
use serde_json::Value;

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const SERVICES: usize = 20;
const ROUNDS: usize = 5;

fn main() -> ExitCode {
    match run() {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let rounds = rounds_from_args()?;
    let gantry = std::env::var_os("GANTRY_BIN").map_or_else(gantry_binary, PathBuf::from);
    if !gantry.is_file() {
        return Err(format!(
            "{} is missing: build it first with `cargo build --release -p gantry`",
            gantry.display()
        ));
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Err("the hosts are network namespaces with their own sshd: run as root".into());
    }
    eprintln!("starting three hosts ...");
    let hosts = TestHosts::start(HOSTS.len());
    for host in HOSTS {
        hosts.host(host).install_gantry(&gantry);
    }
    let project = project(&gantry, &hosts, 1);

    eprintln!("first deploy ...");
    let first = timed(&project, &["deploy", "-e", "prod", "--skip-build"])?.0;

    eprintln!("{rounds} plans with nothing changed ...");
    let (same, verdict_same) = plans(&project, rounds)?;
    eprintln!("{rounds} deploys with nothing changed ...");
    let kept = deploys(&project, rounds, |_| Ok(()))?;

    // One file, one service's env value and one secret's value changed:
    // every service runs from the files, so each host replaces all twenty.
    let change = |round: usize| -> Result<(), String> {
        std::fs::write(project.path().join("VERSION"), format!("{}\n", round + 2))
            .map_err(|e| format!("write VERSION: {e}"))?;
        std::fs::write(project.path().join("gantry.toml"), config(round + 2))
            .map_err(|e| format!("write gantry.toml: {e}"))?;
        std::fs::write(
            project.path().join(".gantry/secrets.env"),
            format!("TOKEN=bench-token-{}\n", round + 2),
        )
        .map_err(|e| format!("write secrets.env: {e}"))
    };
    change(0)?;
    eprintln!("{rounds} plans of a change ...");
    let (changed, verdict_changed) = plans(&project, rounds)?;
    eprintln!("{rounds} deploys of a change ...");
    let deployed = deploys(&project, rounds, change)?;

    Ok(table(&Table {
        rounds,
        first,
        same,
        kept,
        changed,
        deployed,
        verdict_same,
        verdict_changed,
    }))
}

fn rounds_from_args() -> Result<usize, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(ROUNDS),
        [flag, n] if flag == "--rounds" => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--rounds takes a positive number, not `{n}`")),
        _ => Err("usage: plan [--rounds N]".into()),
    }
}

/// Twenty `/bin/sh` services on every host of `prod`, each with an env
/// value (the first's says `version`) and a secret, every fourth with a
/// port, a route and an HTTP-less health command, rolled out one host at a
/// time (the default).
fn config(version: usize) -> String {
    let mut config = String::from("[project]\nname = \"benchplan\"\n");
    for i in 0..SERVICES {
        let _ = write!(
            config,
            "\n[services.s{i:02}]\nrun = \"exec sleep 100000\"\nhealth = {{ command = \"true\", interval = \"100ms\" }}\nsecrets = [\"TOKEN\"]\nenv = {{ LEVEL = \"{}\" }}\n",
            if i == 0 { version } else { 1 }
        );
        if i % 4 == 0 {
            let _ = writeln!(config, "routes = [\"s{i:02}.plan.bench\"]\nport = \"http\"");
        }
    }
    let quoted: Vec<String> = HOSTS.iter().map(|h| format!("\"{h}\"")).collect();
    let _ = write!(
        config,
        "\n[environments.prod]\nhosts = [{}]\n",
        quoted.join(", ")
    );
    for host in HOSTS {
        let _ = write!(config, "\n[hosts.{host}]\nssh = \"{host}\"\n");
    }
    config
}

fn project(gantry: &Path, hosts: &TestHosts, version: usize) -> TestProject {
    TestProject::new(gantry)
        .file("VERSION", &format!("{version}\n"))
        .file("gantry.toml", &config(version))
        .file(".gantry/secrets.env", "TOKEN=bench-token-1\n")
        .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string())
}

/// `gantry ARGS --output json`, which must exit 0, and how long it took.
fn timed(project: &TestProject, args: &[&str]) -> Result<(Duration, Value), String> {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let started = Instant::now();
    let run = project.gantry(&args);
    let took = started.elapsed();
    if run.code != 0 {
        return Err(format!(
            "`gantry {}` exited with {}:\n{}\n{}",
            args.join(" "),
            run.code,
            run.stdout,
            run.stderr
        ));
    }
    let report = serde_json::from_str(&run.stdout)
        .map_err(|e| format!("`gantry {}`: {e}", args.join(" ")))?;
    Ok((took, report))
}

/// `rounds` plans' times, and what the last one said.
fn plans(project: &TestProject, rounds: usize) -> Result<(Vec<Duration>, String), String> {
    let mut times = Vec::new();
    let mut verdict = String::new();
    for _ in 0..rounds {
        let (took, report) = timed(project, &["plan", "-e", "prod"])?;
        times.push(took);
        verdict = verdict_of(&report);
    }
    Ok((times, verdict))
}

/// `rounds` deploys' times, each after `before(round)`.
fn deploys(
    project: &TestProject,
    rounds: usize,
    before: impl Fn(usize) -> Result<(), String>,
) -> Result<Vec<Duration>, String> {
    let mut times = Vec::new();
    for round in 0..rounds {
        before(round)?;
        times.push(timed(project, &["deploy", "-e", "prod", "--skip-build"])?.0);
    }
    Ok(times)
}

/// `h1: new_release, 20 replaced (5 changed)`, for each host.
fn verdict_of(plan: &Value) -> String {
    plan["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let services = h["services"].as_array().map_or(&[][..], Vec::as_slice);
            let count = |f: &dyn Fn(&Value) -> bool| services.iter().filter(|s| f(s)).count();
            format!(
                "{}: {}, {} of {} replaced ({} changed)",
                h["host"].as_str().unwrap_or("?"),
                h["change"].as_str().unwrap_or("?"),
                count(&|s| s["replaced"] == true),
                services.len(),
                count(&|s| s["change"] == "changed"),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

struct Table {
    rounds: usize,
    first: Duration,
    same: Vec<Duration>,
    kept: Vec<Duration>,
    changed: Vec<Duration>,
    deployed: Vec<Duration>,
    verdict_same: String,
    verdict_changed: String,
}

fn table(t: &Table) -> String {
    let mut deployed = t.deployed.clone();
    let deploy_median = percentile(&mut deployed, 50);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`gantry plan` and `gantry deploy` of {SERVICES} services on {} SSH hosts, {} rounds each\n",
        HOSTS.len(),
        t.rounds
    );
    let _ = writeln!(out, "| what | median | p90 | × deploy of a change |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let mut row = |what: &str, times: &[Duration]| {
        let mut times = times.to_vec();
        let (median, p90) = (percentile(&mut times, 50), percentile(&mut times, 90));
        let ratio = median.as_secs_f64() / deploy_median.as_secs_f64().max(1e-9);
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {ratio:.3} |",
            ms(median),
            ms(p90)
        );
    };
    row("`gantry plan`, nothing changed", &t.same);
    row(
        "`gantry plan` of a change (a file, an env value, a secret's value)",
        &t.changed,
    );
    row("`gantry deploy` of such a change", &t.deployed);
    row("`gantry deploy`, nothing changed", &t.kept);
    row("the first deploy", &[t.first]);
    let _ = writeln!(
        out,
        "\nthe plan, nothing changed: {}\nthe plan of a change: {}",
        t.verdict_same, t.verdict_changed
    );
    out
}
