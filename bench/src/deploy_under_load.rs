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
use std::time::Duration;

use gantry_bench::{Counts, PlainWeb, free_port, under_load};
use gantry_testkit::{TestProject, example_bins, http_get_host, workspace_root};
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
    under_load(port, HOST, "/", options.clients, || {
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
    under_load(port, "localhost", "/", options.clients, || {
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
