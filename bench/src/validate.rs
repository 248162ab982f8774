//! How long `gantry_config::parse` takes on realistic gantry.toml files of 10,
//! 100 and 1000 services, and whether the cost per service stays flat as the
//! file grows. Prints a Markdown table; never fails on a slow result.
//!
//! Run with `cargo run --release -p gantry-bench --bin validate`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [10, 100, 1000];
const GOAL_SERVICES: usize = 1000;
const GOAL: Duration = Duration::from_millis(20);
/// Each size is measured for about this long, after a warm-up of a quarter of it.
const BUDGET: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let mut rows = Vec::new();
    for services in SIZES {
        let text = gantry_toml(services);
        // A benchmark of a file that fails to load would time the error path.
        if let Err(error) = gantry_config::parse("gantry.toml", &text, &no_vars) {
            eprintln!("the generated {services}-service file does not load: {error}");
            if let gantry_config::Error::Invalid(diagnostics) = &error {
                for d in diagnostics.items.iter().take(10) {
                    eprintln!("  {}:{}: {} ({})", d.line, d.column, d.message, d.path);
                }
            }
            return ExitCode::FAILURE;
        }
        rows.push(measure(services, &text));
    }
    print!("{}", table(&rows));
    println!();
    println!(
        "goal: {GOAL_SERVICES} services in under {} ms",
        GOAL.as_millis()
    );
    if let Some(row) = rows.iter().find(|r| r.services == GOAL_SERVICES) {
        let verdict = if row.median < GOAL { "met" } else { "NOT met" };
        println!("{verdict}: median {} (p90 {})", ms(row.median), ms(row.p90));
    }
    ExitCode::SUCCESS
}

/// The loader asks for `${VAR}` values; the generated files give every one a default.
fn no_vars(_: &str) -> Option<String> {
    None
}

struct Row {
    services: usize,
    bytes: usize,
    iterations: usize,
    median: Duration,
    p90: Duration,
}

impl Row {
    fn micros_per_service(&self) -> f64 {
        self.median.as_secs_f64() * 1e6 / self.services as f64
    }
}

fn parse_once(text: &str) -> Duration {
    let start = Instant::now();
    let result = gantry_config::parse("gantry.toml", text, &no_vars);
    let elapsed = start.elapsed();
    std::hint::black_box(result).ok();
    elapsed
}

fn measure(services: usize, text: &str) -> Row {
    let warm_up = Instant::now();
    let mut runs = 0u32;
    while warm_up.elapsed() < BUDGET / 4 || runs < 3 {
        parse_once(text);
        runs += 1;
    }
    let estimate = warm_up.elapsed() / runs;
    let iterations = (BUDGET.as_secs_f64() / estimate.as_secs_f64()).clamp(20.0, 20_000.0) as usize;
    let mut times: Vec<Duration> = (0..iterations).map(|_| parse_once(text)).collect();
    times.sort_unstable();
    Row {
        services,
        bytes: text.len(),
        iterations,
        median: percentile(&times, 50),
        p90: percentile(&times, 90),
    }
}

/// The `p`th percentile of sorted, non-empty `times` (nearest rank).
fn percentile(times: &[Duration], p: usize) -> Duration {
    let rank = (times.len() * p).div_ceil(100).max(1);
    times[rank - 1]
}

fn table(rows: &[Row]) -> String {
    let base = rows.first().map_or(1.0, Row::micros_per_service);
    let mut out = String::new();
    out.push_str(
        "| services | file size | median | p90 | µs per service | × 10-service cost | runs |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {:.2} | {} |",
            row.services,
            kib(row.bytes),
            ms(row.median),
            ms(row.p90),
            row.micros_per_service(),
            row.micros_per_service() / base,
            row.iterations,
        );
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// A gantry.toml as a real project of `count` services might write it: a mix of
/// processes and containers, each with a port, a health check, routes, env,
/// secrets, limits and dependencies on earlier services; a staging and a
/// production environment with overrides; SSH hosts.
fn gantry_toml(count: usize) -> String {
    let mut out = String::from("[project]\nname = \"bench\"\n");
    for i in 0..count {
        service(&mut out, i);
    }

    out.push_str("\n[environments.staging]\nhosts = [\"staging-1\"]\n");
    for i in (0..count).step_by(10) {
        let _ = writeln!(out, "services.{}.replicas = 1", name(i));
    }
    out.push_str("\n[environments.production]\nhosts = [\"web-1\", \"web-2\", \"web-3\"]\n");
    for i in (0..count).step_by(5) {
        let name = name(i);
        let _ = writeln!(out, "services.{name}.replicas = 3");
        let _ = writeln!(out, "services.{name}.env = {{ RUST_LOG = \"warn\" }}");
        if i % 3 != 2 {
            let _ = writeln!(out, "services.{name}.resources.memory = \"1G\"");
        }
    }

    out.push_str("\n[hosts.staging-1]\nssh = \"deploy@203.0.113.5\"\n");
    for h in 1..=3 {
        let _ = write!(
            out,
            "\n[hosts.web-{h}]\nssh = \"deploy@203.0.113.{}:2222\"\n",
            10 + h
        );
    }
    out
}

fn name(i: usize) -> String {
    format!("svc-{i:04}")
}

fn service(out: &mut String, i: usize) {
    let name = name(i);
    // Every third service is a container with a volume and a backup; the rest are processes.
    let container = i % 3 == 2;
    let _ = writeln!(out, "\n[services.{name}]");
    if container {
        let _ = writeln!(out, "image = \"ghcr.io/acme/{name}:1.{i}.0\"");
    } else {
        let _ = writeln!(out, "build = \"cargo build --release --bin {name}\"");
        let _ = writeln!(out, "run = \"target/release/{name} --port $PORT\"");
    }
    out.push_str("port = \"http\"\nreplicas = 2\n");
    let _ = write!(out, "routes = [\"{name}.example.com\"");
    if i.is_multiple_of(2) {
        let _ = write!(out, ", \"example.com/{name}\"");
    }
    out.push_str("]\n");
    out.push_str("secrets = [\"DATABASE_URL\", \"API_KEY\"]\n");
    let deps: Vec<String> = [i.checked_sub(1), (i >= 4).then_some(i / 2)]
        .into_iter()
        .flatten()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|d| format!("\"{}\"", self::name(d)))
        .collect();
    if !deps.is_empty() {
        let _ = writeln!(out, "depends_on = [{}]", deps.join(", "));
    }
    out.push_str("stop_timeout = \"15s\"\n");
    if container {
        let _ = writeln!(out, "volumes = [\"{name}-data:/var/lib/data\"]");
    }

    let _ = write!(
        out,
        "\n[services.{name}.health]\npath = \"/healthz\"\ninterval = \"2s\"\ntimeout = \"500ms\"\n"
    );
    let _ = write!(
        out,
        "\n[services.{name}.env]\nRUST_LOG = \"info\"\nSERVICE_NAME = \"{name}\"\n\
         UPSTREAM_URL = \"http://svc-upstream.internal:${{UPSTREAM_PORT:-8080}}\"\n"
    );
    let _ = write!(
        out,
        "\n[services.{name}.resources]\nmemory = \"{}M\"\ncpu = 0.5\npids = 256\n",
        128 << (i % 3)
    );
    if container {
        let _ = write!(
            out,
            "\n[services.{name}.backup]\nschedule = \"0 3 * * *\"\nkeep = 7\n"
        );
    }
}
