//! A rolling deploy of the example to three hosts over SSH, per phase, and
//! the bytes a redeploy sends when one file changed. Prints one Markdown
//! table; never fails on a slow result.
//!
//! The hosts are network namespaces on this machine, each with its own sshd,
//! user and home (`gantry_testkit::hosts::TestHosts`), so it needs root:
//!
//! ```sh
//! cargo build --release -p gantry
//! sudo -E cargo run --release -p gantry-bench --bin remote_deploy [-- --redeploys N]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gantry_testkit::hosts::TestHosts;
use gantry_testkit::{TestProject, example_bins, workspace_root};
use serde_json::Value;

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const REDEPLOYS: usize = 3;
/// The agent's phases, in the order a service goes through them.
const PHASES: [&str; 5] = ["materialize", "start", "health", "switch", "stop-old"];

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
    let redeploys = redeploys_from_args()?;
    let gantry = gantry_binary();
    if !gantry.is_file() {
        return Err(format!(
            "{} is missing: build it first with `cargo build --release -p gantry`",
            gantry.display()
        ));
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Err("the hosts are network namespaces with their own sshd: run as root".into());
    }
    eprintln!("building the example's binaries in release ...");
    let bins = example_bins();
    eprintln!("starting three hosts ...");
    let hosts = TestHosts::start(HOSTS.len());
    let project = project(&gantry, &bins, &hosts)?;

    let mut rows: Vec<Row> = Vec::new();
    eprintln!("configure ...");
    let started = Instant::now();
    gantry_json(&project, &["configure", "-e", "prod"])?;
    rows.push(Row::wall(
        "configure (install gantry, start the agents)",
        started.elapsed(),
    ));

    eprintln!("first deploy ...");
    let first = Deploy::run(&project, 1)?;
    let artifact = artifact_bytes(&project)?;
    rows.extend(first.rows("first deploy", artifact));

    let mut changed = Vec::new();
    for round in 0..redeploys {
        eprintln!(
            "rolling redeploy {} of {redeploys} (VERSION changed) ...",
            round + 1
        );
        std::fs::write(project.path().join("VERSION"), format!("{}\n", round + 2))
            .map_err(|e| format!("write VERSION: {e}"))?;
        changed.push(Deploy::run(&project, round + 2)?);
    }
    // The redeploy with the median wall time stands for them all.
    changed.sort_by_key(|d| d.wall);
    let median = &changed[changed.len() / 2];
    rows.extend(median.rows(
        &format!("rolling redeploy, one file changed (median of {redeploys})"),
        artifact,
    ));

    eprintln!("redeploy with nothing changed ...");
    let same = Deploy::run(&project, redeploys + 1)?;
    rows.extend(
        same.rows("redeploy, nothing changed", artifact)
            .into_iter()
            .take(2),
    );

    let version_size = std::fs::metadata(project.path().join("VERSION"))
        .map_err(|e| format!("VERSION: {e}"))?
        .len();
    Ok(table(&rows, artifact, version_size, median))
}

fn redeploys_from_args() -> Result<usize, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(REDEPLOYS),
        [flag, n] if flag == "--redeploys" => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--redeploys takes a positive number, not `{n}`")),
        _ => Err("usage: remote_deploy [--redeploys N]".into()),
    }
}

fn gantry_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("release/gantry")
}

/// examples/hello with its prebuilt binaries, its `prod` environment the
/// three hosts (rolled one at a time, the default).
fn project(gantry: &Path, bins: &Path, hosts: &TestHosts) -> Result<TestProject, String> {
    let example = workspace_root().join("examples/hello/gantry.toml");
    let mut config = std::fs::read_to_string(&example)
        .map_err(|e| format!("read {}: {e}", example.display()))?
        .lines()
        .filter(|l| !l.starts_with("build ="))
        .collect::<Vec<_>>()
        .join("\n");
    let quoted: Vec<String> = HOSTS.iter().map(|h| format!("\"{h}\"")).collect();
    write!(
        config,
        "\n\n[environments.prod]\nhosts = [{}]\n",
        quoted.join(", ")
    )
    .map_err(|e| e.to_string())?;
    for host in HOSTS {
        write!(config, "\n[hosts.{host}]\nssh = \"{host}\"\n").map_err(|e| e.to_string())?;
    }
    Ok(TestProject::new(gantry)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", "1\n")
        .file("gantry.toml", &config)
        .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string()))
}

/// `gantry ARGS --output json`, which must exit 0.
fn gantry_json(project: &TestProject, args: &[&str]) -> Result<Value, String> {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let run = project.gantry(&args);
    if run.code != 0 {
        return Err(format!(
            "`gantry {}` exited with {}:\n{}\n{}",
            args.join(" "),
            run.code,
            run.stdout,
            run.stderr
        ));
    }
    serde_json::from_str(&run.stdout).map_err(|e| format!("`gantry {}`: {e}", args.join(" ")))
}

/// The bytes of the artifact's distinct blobs, as the CLI takes it: what a
/// host without any of them is sent.
fn artifact_bytes(project: &TestProject) -> Result<u64, String> {
    let scan = gantry_core::artifact::scan(project.path(), &Default::default())
        .map_err(|e| format!("scan {}: {e}", project.path().display()))?;
    let mut blobs: Vec<(&str, u64)> = scan
        .artifact
        .files
        .iter()
        .map(|f| (f.digest.as_str(), f.size))
        .collect();
    blobs.sort_unstable();
    blobs.dedup();
    Ok(blobs.iter().map(|(_, size)| size).sum())
}

/// One `gantry deploy -e prod`, as its report and the hosts' releases tell it.
struct Deploy {
    wall: Duration,
    /// By host: the CLI's upload time and bytes sent.
    upload: BTreeMap<String, (u64, u64)>,
    /// By host: each agent phase summed over the services, and the span from
    /// the first phase's start to the last one's end.
    phases: BTreeMap<String, (BTreeMap<String, u64>, u64)>,
}

impl Deploy {
    fn run(project: &TestProject, number: usize) -> Result<Deploy, String> {
        let started = Instant::now();
        let report = gantry_json(project, &["deploy", "-e", "prod", "--skip-build"])?;
        let wall = started.elapsed();
        let mut upload = BTreeMap::new();
        for host in report["hosts"].as_array().into_iter().flatten() {
            if host["outcome"] != "deployed" {
                return Err(format!("deploy {number}: a host did not deploy: {host:#}"));
            }
            let name = host["host"].as_str().unwrap_or_default().to_owned();
            let sent = &host["upload"];
            upload.insert(
                name,
                (
                    sent["duration_ms"].as_u64().unwrap_or_default(),
                    sent["bytes_sent"].as_u64().unwrap_or_default(),
                ),
            );
        }
        let releases = gantry_json(project, &["releases", "-e", "prod"])?;
        let mut phases = BTreeMap::new();
        for host in releases["hosts"].as_array().into_iter().flatten() {
            let name = host["host"].as_str().unwrap_or_default().to_owned();
            let newest = &host["releases"][0];
            let mut sums = BTreeMap::new();
            let (mut first, mut last) = (u64::MAX, 0u64);
            for phase in newest["phases"].as_array().into_iter().flatten() {
                let start = phase["started_at"].as_u64().unwrap_or_default();
                let took = phase["duration_ms"].as_u64().unwrap_or_default();
                *sums
                    .entry(phase["name"].as_str().unwrap_or_default().to_owned())
                    .or_insert(0) += took;
                first = first.min(start);
                last = last.max(start + took);
            }
            phases.insert(name, (sums, last.saturating_sub(first)));
        }
        Ok(Deploy {
            wall,
            upload,
            phases,
        })
    }

    fn bytes_sent(&self) -> u64 {
        self.upload.values().map(|(_, bytes)| bytes).sum()
    }

    fn rows(&self, title: &str, artifact: u64) -> Vec<Row> {
        let sent = self.bytes_sent();
        let mut rows = vec![
            Row {
                step: format!("**{title}**"),
                wall: Some(self.wall),
                per_host: self.phases.values().map(|(_, span)| Some(*span)).collect(),
                bytes: Some((sent, artifact * HOSTS.len() as u64)),
            },
            Row {
                step: "· upload (CLI side: ask what is missing, send it)".into(),
                wall: None,
                per_host: self.upload.values().map(|(ms, _)| Some(*ms)).collect(),
                bytes: None,
            },
        ];
        for phase in PHASES {
            rows.push(Row {
                step: format!("· agent: {phase}"),
                wall: None,
                per_host: self
                    .phases
                    .values()
                    .map(|(sums, _)| sums.get(phase).copied())
                    .collect(),
                bytes: None,
            });
        }
        rows
    }
}

struct Row {
    step: String,
    wall: Option<Duration>,
    /// Milliseconds, one per host in order.
    per_host: Vec<Option<u64>>,
    /// Bytes sent, and the bytes of the whole artifact to every host.
    bytes: Option<(u64, u64)>,
}

impl Row {
    fn wall(step: &str, wall: Duration) -> Row {
        Row {
            step: step.to_owned(),
            wall: Some(wall),
            per_host: Vec::new(),
            bytes: None,
        }
    }
}

fn table(rows: &[Row], artifact: u64, version_size: u64, changed: &Deploy) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| step | wall ms | {} | bytes sent | × whole artifact to every host |",
        HOSTS.map(|h| format!("{h} ms")).join(" | ")
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let wall = row
            .wall
            .map_or_else(String::new, |w| w.as_millis().to_string());
        let hosts: Vec<String> = (0..HOSTS.len())
            .map(|i| {
                row.per_host
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or_else(String::new, |ms| ms.to_string())
            })
            .collect();
        let (bytes, ratio) = match row.bytes {
            Some((sent, whole)) if whole > 0 => {
                let ratio = sent as f64 / whole as f64;
                let ratio = if ratio == 0.0 || ratio >= 0.001 {
                    format!("{ratio:.3}")
                } else {
                    format!("{ratio:.2e}")
                };
                (sent.to_string(), ratio)
            }
            _ => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "| {} | {wall} | {} | {bytes} | {ratio} |",
            row.step,
            hosts.join(" | ")
        );
    }
    let goal = version_size * HOSTS.len() as u64;
    let sent = changed.bytes_sent();
    let _ = writeln!(
        out,
        "\nartifact: {artifact} bytes; the changed file (VERSION): {version_size} bytes.\n\
         per-host ms on a deploy row: the agent's release, first phase start to last phase end.\n\
         goal: a redeploy with one file changed sends only that file's blob to each host \
         ({goal} bytes in all): sent {sent} bytes, {}",
        if sent == goal { "met" } else { "NOT met" }
    );
    out
}
