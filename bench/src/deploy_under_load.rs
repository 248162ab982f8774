//! What users see while a service is replaced under load: the same web
//! binary, loaded by client threads without pause, through 20 Gantry deploys
//! (through the agent's proxy) and through 20 plain stop-and-start restarts
//! on a fixed port, in one run. Counts every request exactly: failed
//! (connection refused or reset, no answer) and non-2xx. Prints one Markdown
//! table; never fails on a bad result.
//!
//! ```sh
//! cargo build --release -p gantry
//! cargo run --release -p gantry-bench --bin deploy-under-load [-- --rounds N --clients N]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gantry_bench::{PlainWeb, free_port};
use gantry_testkit::{KeepAlive, TestProject, example_bins, http_get_host, workspace_root};
use nix::sys::signal::Signal;

const HOST: &str = "web.underload.localhost";
/// A pause after each deploy or restart, so each one starts from a steady state.
const SETTLE: Duration = Duration::from_millis(300);

struct Options {
    rounds: usize,
    clients: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        rounds: 20,
        clients: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--rounds" => &mut options.rounds,
            "--clients" => &mut options.clients,
            other => {
                return Err(format!(
                    "unknown argument `{other}`: use --rounds N or --clients N"
                ));
            }
        };
        *slot = args
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{arg} takes a positive number"))?;
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let gantry = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("release/gantry");
    if !gantry.is_file() {
        eprintln!(
            "{} is missing: build it first with `cargo build --release -p gantry`",
            gantry.display()
        );
        return ExitCode::FAILURE;
    }
    eprintln!("building the example's binaries in release ...");
    let bins = example_bins();
    eprintln!("{} Gantry deploys under load ...", options.rounds);
    let deploys = match gantry_deploys(&gantry, &bins, &options) {
        Ok(counts) => counts,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "{} plain stop-and-start restarts under load ...",
        options.rounds
    );
    let plain = match plain_restarts(&bins.join("hello-web"), &options) {
        Ok(counts) => counts,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", table(&options, &deploys, &plain));
    ExitCode::SUCCESS
}

/// What the load saw.
#[derive(Default)]
struct Counts {
    requests: u64,
    failed: u64,
    non_2xx: u64,
    wall: Duration,
    /// One example of each kind of failure, to read.
    examples: Vec<String>,
}

impl Counts {
    fn ratio(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (self.failed + self.non_2xx) as f64 / self.requests as f64
    }

    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.non_2xx += other.non_2xx;
        for example in other.examples {
            if self.examples.len() < 3 && !self.examples.contains(&example) {
                self.examples.push(example);
            }
        }
    }
}

/// Client threads, half on keep-alive connections and half opening one per
/// request, with no pause between requests, until `work` returns.
fn under_load(
    port: u16,
    host: &'static str,
    clients: usize,
    work: impl FnOnce() -> Result<(), String>,
) -> Result<Counts, String> {
    let done = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|n| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut counts = Counts::default();
                let mut client = KeepAlive::new(port, host);
                while !done.load(Ordering::Relaxed) {
                    let answer = if n % 2 == 0 {
                        client.get("/")
                    } else {
                        http_get_host(port, host, "/")
                    };
                    counts.requests += 1;
                    let problem = match answer {
                        Ok((200..=299, _)) => None,
                        // No status line: the connection closed with no answer.
                        Ok((0, _)) => {
                            counts.failed += 1;
                            Some("closed without an answer".to_owned())
                        }
                        Ok((code, _)) => {
                            counts.non_2xx += 1;
                            Some(format!("HTTP {code}"))
                        }
                        Err(e) => {
                            counts.failed += 1;
                            Some(e.to_string())
                        }
                    };
                    if let Some(problem) = problem
                        && counts.examples.len() < 3
                        && !counts.examples.contains(&problem)
                    {
                        counts.examples.push(problem);
                    }
                }
                counts
            })
        })
        .collect();
    let started = Instant::now();
    let worked = work();
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut total = Counts {
        wall,
        ..Counts::default()
    };
    for thread in threads {
        total.add(
            thread
                .join()
                .map_err(|_| "a client thread panicked".to_owned())?,
        );
    }
    worked.map(|()| total)
}

fn gantry_deploys(gantry: &Path, bins: &Path, options: &Options) -> Result<Counts, String> {
    let port = free_port()?;
    let p = TestProject::new(gantry)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .file("VERSION", "0\n")
        .file(
            "gantry.toml",
            r#"[project]
name = "underload"

[services.web]
run = "bin/hello-web"
port = "http"
health = { path = "/healthz", interval = "100ms", timeout = "1s" }
stop_timeout = "5s"
"#,
        )
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    let deploy = |p: &TestProject| -> Result<(), String> {
        let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
        if run.code == 0 {
            Ok(())
        } else {
            Err(format!(
                "gantry deploy failed:\n{}\n{}",
                run.stdout, run.stderr
            ))
        }
    };
    deploy(&p)?;
    match http_get_host(port, HOST, "/") {
        Ok((200, _)) => {}
        other => return Err(format!("the proxy does not serve the example: {other:?}")),
    }
    under_load(port, HOST, options.clients, || {
        for n in 1..=options.rounds {
            std::fs::write(p.path().join("VERSION"), format!("{n}\n"))
                .map_err(|e| format!("cannot write VERSION: {e}"))?;
            deploy(&p)?;
            std::thread::sleep(SETTLE);
        }
        Ok(())
    })
}

fn plain_restarts(web: &Path, options: &Options) -> Result<Counts, String> {
    let mut plain = PlainWeb::start(web)?;
    let port = plain.port;
    under_load(port, "localhost", options.clients, || {
        for _ in 0..options.rounds {
            // What a restart script does: stop it (SIGTERM), start it again.
            plain.restart(Signal::SIGTERM)?;
            std::thread::sleep(SETTLE);
        }
        Ok(())
    })
}

fn table(options: &Options, deploys: &Counts, plain: &Counts) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} replacements of examples/hello's web under load from {} client threads ({} keep-alive, {} new connection per request, no pause)\n",
        options.rounds,
        options.clients,
        options.clients.div_ceil(2),
        options.clients / 2
    );
    let _ = writeln!(
        out,
        "| scenario | wall time | requests | failed | non-2xx | failure ratio | examples |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for (name, counts) in [
        ("`gantry deploy` through the proxy", deploys),
        ("plain stop-and-start, fixed port", plain),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.1} s | {} | {} | {} | {:.6} | {} |",
            counts.wall.as_secs_f64(),
            counts.requests,
            counts.failed,
            counts.non_2xx,
            counts.ratio(),
            counts.examples.join("; ")
        );
    }
    let ratio = if deploys.ratio() == 0.0 {
        if plain.ratio() == 0.0 {
            "both failed no request".to_owned()
        } else {
            "Gantry failed no request; plain restarts failed some (ratio unbounded)".to_owned()
        }
    } else {
        format!(
            "plain / Gantry failure ratio: {:.1}×",
            plain.ratio() / deploys.ratio()
        )
    };
    let _ = writeln!(out, "\n{ratio}");
    out
}
