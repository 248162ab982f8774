//! What `gantry deploy` costs beyond waiting for health, next to a plain
//! stop-and-start of the same web binary, and how much memory the agent
//! holds with ten services running. Prints one Markdown table; never fails
//! on a slow result.
//!
//! It runs the release build of the binary, so build that first:
//!
//! ```sh
//! cargo build --release -p gantry
//! cargo run --release -p gantry-bench --bin deploy [-- --deploys N]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gantry_bench::{PlainWeb, gantry_binary, ms, percentile};
use gantry_testkit::{TestProject, example_bins, workspace_root};
use nix::sys::signal::Signal;

const DEPLOYS: usize = 20;
const OVERHEAD_GOAL: Duration = Duration::from_millis(300);
const AGENT_RSS_GOAL: u64 = 20 << 20;
const MEMORY_SERVICES: usize = 10;
/// How long the agent's memory is sampled, once every `SAMPLE_EVERY`.
const SAMPLE_FOR: Duration = Duration::from_secs(3);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The phases a deploy spends waiting for new instances to pass their check.
const HEALTH: &str = "health";
/// The agent's phases, in the order a service goes through them.
const PHASES: [&str; 5] = ["materialize", "start", HEALTH, "switch", "stop-old"];

fn main() -> ExitCode {
    let deploys = match deploys_from_args() {
        Ok(n) => n,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let gantry = gantry_binary();
    if !gantry.is_file() {
        eprintln!(
            "{} is missing: build it first with `cargo build --release -p gantry`",
            gantry.display()
        );
        return ExitCode::FAILURE;
    }
    eprintln!("building the example's binaries in release ...");
    let bins = example_bins();

    eprintln!(
        "timing {deploys} deploys of examples/hello with {} ...",
        gantry.display()
    );
    let deploy = match time_deploys(&gantry, &bins, deploys) {
        Ok(deploy) => deploy,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("timing {deploys} plain stop-and-starts of hello-web ...");
    let plain = match time_plain_restarts(&bins.join("hello-web"), deploys) {
        Ok(plain) => plain,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("measuring the agent's memory with {MEMORY_SERVICES} services ...");
    let memory = match measure_memory(&gantry, &bins) {
        Ok(memory) => memory,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };

    println!(
        "{deploys} deploys of examples/hello (web ×2 with an HTTP check every 100 ms, worker) on `local`, \
         each of a new VERSION, with {}\n",
        gantry.display()
    );
    print!("{}", table(&deploy, &plain, &memory));
    ExitCode::SUCCESS
}

fn deploys_from_args() -> Result<usize, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(DEPLOYS),
        [flag, n] if flag == "--deploys" => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--deploys wants a positive number, not `{n}`")),
        _ => Err("usage: deploy [--deploys N]".to_owned()),
    }
}

/// Each deploy's times, by what they measure.
#[derive(Default)]
struct Deploys {
    /// The CLI's wall time, from starting `gantry deploy` to its exit.
    wall: Vec<Duration>,
    /// Taking the artifact and sending the host what it lacks (the CLI's side).
    upload: Vec<Duration>,
    /// Each agent phase summed over the services.
    phases: BTreeMap<&'static str, Vec<Duration>>,
    /// Wall time minus the health phases.
    overhead: Vec<Duration>,
    /// Wall time minus the upload and the agent's phases: starting the CLI,
    /// loading the config, connecting, recording the release, the report.
    rest: Vec<Duration>,
    /// The agent's memory after the deploys, with the example running.
    agent_rss: Vec<u64>,
}

fn time_deploys(gantry: &Path, bins: &Path, n: usize) -> Result<Deploys, String> {
    let config = std::fs::read_to_string(workspace_root().join("examples/hello/gantry.toml"))
        .map_err(|e| format!("cannot read examples/hello/gantry.toml: {e}"))?;
    let project = TestProject::new(gantry)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("gantry.toml", &config);
    let mut times = Deploys::default();
    // The first deploy starts the agent and uploads the binaries: not timed.
    for round in 0..=n {
        std::fs::write(project.path().join("VERSION"), format!("{round}\n"))
            .map_err(|e| format!("cannot write VERSION: {e}"))?;
        let started = Instant::now();
        let run = project.gantry(&["deploy", "--skip-build", "--output", "json"]);
        let wall = started.elapsed();
        if run.code != 0 {
            return Err(format!(
                "deploy {round} failed (exit {}):\n{}{}",
                run.code, run.stdout, run.stderr
            ));
        }
        if round == 0 {
            continue;
        }
        let report = run.json();
        let mut phases: BTreeMap<&'static str, Duration> =
            PHASES.iter().map(|p| (*p, Duration::ZERO)).collect();
        for phase in report["release"]["phases"].as_array().into_iter().flatten() {
            let name = phase["name"].as_str().unwrap_or_default();
            if let Some(total) = PHASES
                .iter()
                .find(|p| **p == name)
                .and_then(|p| phases.get_mut(p))
            {
                *total += millis(&phase["duration_ms"]);
            }
        }
        let upload = millis(&report["upload"]["duration_ms"]);
        let agent: Duration = phases.values().sum();
        times.wall.push(wall);
        times.upload.push(upload);
        times.overhead.push(wall.saturating_sub(phases[HEALTH]));
        times.rest.push(wall.saturating_sub(upload + agent));
        for (name, d) in phases {
            times.phases.entry(name).or_default().push(d);
        }
    }
    let agent = agent_pid(project.state_dir()).ok_or("the agent is not running")?;
    times.agent_rss = sample_rss(agent);
    Ok(times)
}

fn millis(value: &serde_json::Value) -> Duration {
    Duration::from_millis(value.as_u64().unwrap_or(0))
}

/// The plain alternative: kill the running hello-web, start the new one on
/// the same port, and wait until it answers. Each round's time is downtime.
fn time_plain_restarts(web: &Path, n: usize) -> Result<Vec<Duration>, String> {
    let mut plain = PlainWeb::start(web)?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        plain.restart(Signal::SIGKILL)?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// Resident memory, in bytes, sampled over a few seconds.
struct Memory {
    agent_idle: Vec<u64>,
    agent_busy: Vec<u64>,
    /// The private memory (`RssAnon`) of the ten instances' relays, summed
    /// (one sample): their file pages are the gantry binary's, shared with
    /// the agent and each other.
    relays: u64,
}

fn measure_memory(gantry: &Path, bins: &Path) -> Result<Memory, String> {
    let mut config = String::from("[project]\nname = \"memory\"\n");
    for n in 1..=MEMORY_SERVICES {
        // A command check passes at once, so the deploy does not wait out a start period.
        let _ = write!(
            config,
            "\n[services.worker{n}]\nrun = \"bin/hello-worker\"\nhealth = {{ command = \"true\" }}\n"
        );
    }
    let project = TestProject::new(gantry)
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("gantry.toml", &config)
        .file("VERSION", "1\n");
    // Any command starts the agent; before the deploy it runs nothing.
    let status = project.gantry(&["status", "--output", "json"]);
    if status.code != 0 {
        return Err(format!("gantry status failed:\n{}", status.stderr));
    }
    let agent = agent_pid(project.state_dir()).ok_or("the agent is not running")?;
    let agent_idle = sample_rss(agent);
    let run = project.gantry(&["deploy", "--skip-build", "--output", "json"]);
    if run.code != 0 {
        return Err(format!(
            "the deploy of {MEMORY_SERVICES} services failed (exit {}):\n{}",
            run.code, run.stderr
        ));
    }
    let agent_busy = sample_rss(agent);
    let relays = relay_pids(project.state_dir())
        .into_iter()
        .filter_map(|pid| status_kib(pid, "RssAnon:"))
        .sum();
    Ok(Memory {
        agent_idle,
        agent_busy,
        relays,
    })
}

fn sample_rss(pid: u32) -> Vec<u64> {
    let until = Instant::now() + SAMPLE_FOR;
    let mut samples = Vec::new();
    while Instant::now() < until {
        samples.extend(vm_rss(pid));
        std::thread::sleep(SAMPLE_EVERY);
    }
    samples.sort_unstable();
    samples
}

/// `VmRSS` of `pid`, in bytes: what the goal is about.
fn vm_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A size line of `/proc/<pid>/status`, in bytes.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The agent of `state_dir`: the pid its lock file names.
fn agent_pid(state_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(state_dir.join("agent.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The relays whose spec lives under `state_dir`, found by their command line.
fn relay_pids(state_dir: &Path) -> Vec<u32> {
    let run_dir = state_dir.join("run");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&b"relay".as_slice())
                && args
                    .iter()
                    .any(|a| Path::new(&*String::from_utf8_lossy(a)).starts_with(&run_dir))
        })
        .collect()
}

/// The `p`th percentile of non-empty `values` (nearest rank); sorts them.
fn table(deploy: &Deploys, plain: &[Duration], memory: &Memory) -> String {
    let mut out = String::new();
    out.push_str("| measure | median | p90 | × plain restart | goal | verdict |\n");
    out.push_str("|---|---:|---:|---:|---|---|\n");
    let plain_median = percentile(&mut plain.to_vec(), 50);
    let mut time_row = |name: &str, values: &[Duration], goal: Option<Duration>| {
        let mut values = values.to_vec();
        let (median, p90) = (percentile(&mut values, 50), percentile(&mut values, 90));
        let ratio = median.as_secs_f64() / plain_median.as_secs_f64().max(1e-9);
        let (goal, verdict) = match goal {
            Some(goal) => (
                format!("under {}", ms(goal)),
                match (median < goal, p90 < goal) {
                    (true, true) => "met",
                    (true, false) => "met by the median; p90 over",
                    (false, _) => "NOT met",
                }
                .to_owned(),
            ),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {ratio:.1} | {goal} | {verdict} |",
            ms(median),
            ms(p90)
        );
    };
    time_row(
        "plain stop-and-start of hello-web (kill, start, answers)",
        plain,
        None,
    );
    time_row("`gantry deploy`, wall time (CLI)", &deploy.wall, None);
    time_row("· snapshot + upload (CLI)", &deploy.upload, None);
    for phase in PHASES {
        let label = if phase == HEALTH {
            "· agent: health (the wait)".to_owned()
        } else {
            format!("· agent: {phase}")
        };
        time_row(&label, &deploy.phases[phase], None);
    }
    time_row(
        "· the rest (CLI start, config, connect, record, report)",
        &deploy.rest,
        None,
    );
    time_row(
        "**deploy overhead beyond the health wait**",
        &deploy.overhead,
        Some(OVERHEAD_GOAL),
    );
    let mut memory_row = |name: &str, values: &[u64], goal: Option<u64>| {
        let mut values = values.to_vec();
        let (median, p90) = if values.is_empty() {
            (0, 0)
        } else {
            (percentile(&mut values, 50), percentile(&mut values, 90))
        };
        let (goal, verdict) = match goal {
            Some(goal) => (
                format!("under {}", mib(goal)),
                if p90 < goal { "met" } else { "NOT met" }.to_owned(),
            ),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | | {goal} | {verdict} |",
            mib(median),
            mib(p90)
        );
    };
    memory_row("agent RSS, no services", &memory.agent_idle, None);
    memory_row(
        "agent RSS, after the deploys above (3 instances)",
        &deploy.agent_rss,
        None,
    );
    memory_row(
        &format!("**agent RSS, {MEMORY_SERVICES} services running**"),
        &memory.agent_busy,
        Some(AGENT_RSS_GOAL),
    );
    memory_row(
        &format!("their {MEMORY_SERVICES} relays' private memory, together (not the agent)"),
        &[memory.relays],
        None,
    );
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / f64::from(1 << 20))
}
