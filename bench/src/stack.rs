//! examples/stack's web replaced by a changed image, under load: Gantry's
//! deploys (per phase, through the agent's proxy) next to a plain `docker
//! stop`, `docker rm`, `docker run` of the same images on a fixed port, in
//! one run; failed and non-2xx requests counted for both. Prints Markdown
//! tables; never fails on a bad result.
//!
//! ```sh
//! cargo build --release -p gantry
//! cargo run --release -p gantry-bench --bin stack [-- --rounds N --clients N --engine overlay2]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use gantry_bench::{Counts, free_port, gantry_binary, ms, percentile, under_load};
use gantry_testkit::dockerd::Dockerd;
use gantry_testkit::hosts::TestHosts;
use gantry_testkit::http_get;
use gantry_testkit::stack::Stack;

const OVERHEAD_GOAL: Duration = Duration::from_millis(300);
/// The phase a deploy spends waiting for the new instance to pass its check.
const HEALTH: &str = "health";
/// The plain container's name, and its network's.
const PLAIN: &str = "gantry-bench-stack-plain";

struct Options {
    rounds: usize,
    clients: usize,
    /// A storage driver for an engine of the bench's own beside the
    /// machine's; `None`: the machine's engine.
    storage: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        rounds: 10,
        clients: 4,
        storage: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--rounds" => &mut options.rounds,
            "--clients" => &mut options.clients,
            "--engine" => {
                options.storage = match args.next().as_deref() {
                    Some("machine") => None,
                    Some("overlay2") => Some("overlay2".to_owned()),
                    _ => return Err("--engine takes `machine` or `overlay2`".to_owned()),
                };
                continue;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`: use --rounds N, --clients N or --engine machine|overlay2"
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
    let gantry = gantry_binary();
    if !gantry.is_file() {
        eprintln!(
            "{} is missing: build it first with `cargo build --release -p gantry`",
            gantry.display()
        );
        return ExitCode::FAILURE;
    }
    match run(&gantry, &options) {
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

fn run(gantry: &Path, options: &Options) -> Result<String, String> {
    eprintln!("preparing the images (built once, then cached) ...");
    let mut stack = Stack::new(gantry, "benchstack", free_port()?);
    let engine = Engine::start(options.storage.as_deref(), &mut stack)?;
    // The verify window (5 s by default) is the CLI watching a release that
    // already serves; the plain way watches nothing, so neither does this.
    stack.skip_verify_window();
    // Web's image is built on the machine's engine (the bench's own has
    // no network for the build's apt-get), as every later one.
    new_image(&engine, &stack, "first")?;
    let first = stack
        .project
        .gantry(&["deploy", "--skip-build", "--output", "json"]);
    if first.code != 0 {
        return Err(format!(
            "the first deploy failed:\n{}{}",
            first.stdout, first.stderr
        ));
    }
    let quiet = Pass::run(&stack, &engine, options.rounds, 0)?;
    let loaded = Pass::run(&stack, &engine, options.rounds, options.clients)?;
    eprintln!("a one-layer change shipped to an SSH host with its own engine ...");
    let shipping = one_layer_change(gantry)?;
    let (engine_name, web_image) = (engine.name(), stack.web_image());
    drop(stack);
    drop(engine);
    let mut out = format!(
        "{} replacements of examples/stack's web by a changed image on {engine_name}, each way; \
         first with no other load (the times the goal is judged on), then under load from {} client threads\n\n",
        options.rounds, options.clients
    );
    out.push_str("### No other load\n\n");
    out.push_str(&table(&quiet.deploys, &quiet.restarts));
    let _ = writeln!(
        out,
        "\n### Under load from {} client threads\n",
        options.clients
    );
    out.push_str(&table(&loaded.deploys, &loaded.restarts));
    out.push_str(&load_table(&loaded.deploy_load, &loaded.plain_load));
    let _ = writeln!(
        out,
        "\n| one-layer change of web's image to an SSH host | bytes |\n|---|---:|\n\
         | Gantry (`upload.image_bytes_sent`) | {} |\n\
         | `docker save {image} \\| ssh host docker load` | {} |\n\
         | ratio | {:.5} |",
        shipping.gantry,
        shipping.plain,
        shipping.gantry as f64 / shipping.plain.max(1) as f64,
        image = web_image,
    );
    Ok(out)
}

/// Bytes that one changed layer of web's image costs to reach a host.
struct Shipping {
    /// Gantry's deploy: the host's `upload.image_bytes_sent`.
    gantry: u64,
    /// `docker save IMAGE | ssh HOST docker load`: the bytes piped to ssh.
    plain: u64,
}

/// The example deployed to one SSH test host with a Docker Engine of its
/// own (not timed), web's VERSION changed, deployed again, and the new
/// image also piped to the host by `docker save | ssh host docker load`.
fn one_layer_change(gantry: &Path) -> Result<Shipping, String> {
    let mut hosts = TestHosts::start(1);
    let engines = gantry_testkit::dockerd::engines_for(&mut hosts, gantry);
    let mut stack = Stack::new(gantry, "benchship", free_port()?);
    stack.on_hosts(&hosts);
    let deploy = |stack: &Stack| -> Result<u64, String> {
        let run = stack
            .project
            .gantry(&["deploy", "-e", "prod", "--output", "json"]);
        if run.code != 0 {
            return Err(format!(
                "gantry deploy -e prod failed:\n{}{}",
                run.stdout, run.stderr
            ));
        }
        Ok(run.json()["hosts"][0]["upload"]["image_bytes_sent"]
            .as_u64()
            .unwrap_or(0))
    };
    deploy(&stack)?;
    stack.set_version("shipped-2");
    let gantry_bytes = deploy(&stack)?;
    let plain = save_load_over_ssh(&stack.web_image(), &hosts.ssh_config)?;
    drop(engines);
    Ok(Shipping {
        gantry: gantry_bytes,
        plain,
    })
}

/// `docker save IMAGE | ssh -F CONFIG h1 docker load`: the bytes piped.
fn save_load_over_ssh(image: &str, ssh_config: &Path) -> Result<u64, String> {
    let mut save = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run docker save: {e}"))?;
    let mut load = Command::new("ssh")
        .arg("-F")
        .arg(ssh_config)
        .args(["h1", "docker", "load", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let (Some(mut from), Some(mut to)) = (save.stdout.take(), load.stdin.take()) else {
        return Err("no pipes to docker save and ssh".to_owned());
    };
    let bytes = std::io::copy(&mut from, &mut to).map_err(|e| format!("piping: {e}"))?;
    drop(to);
    let saved = save.wait().map_err(|e| e.to_string())?;
    let loaded = load.wait().map_err(|e| e.to_string())?;
    if !saved.success() || !loaded.success() {
        return Err(format!(
            "docker save ({saved}) | ssh h1 docker load ({loaded}) failed"
        ));
    }
    Ok(bytes)
}

/// One pass of both ways: `rounds` Gantry deploys, then `rounds` plain
/// restarts, each under load from `clients` threads (none: no load).
struct Pass {
    deploys: Deploys,
    restarts: Restarts,
    deploy_load: Counts,
    plain_load: Counts,
}

impl Pass {
    fn run(stack: &Stack, engine: &Engine, rounds: usize, clients: usize) -> Result<Pass, String> {
        let load = match clients {
            0 => "with no other load".to_owned(),
            n => format!("under load from {n} clients"),
        };
        eprintln!("{rounds} Gantry deploys of web {load} ...");
        let mut deploys = Deploys::default();
        let deploy_load = under_load(
            stack.proxy_port,
            &stack.web_host(),
            "/version",
            clients,
            || {
                for round in 0..rounds {
                    new_image(engine, stack, &format!("gantry-{clients}-{round}"))?;
                    deploys.time(stack)?;
                }
                Ok(())
            },
        )?;
        eprintln!("{rounds} plain docker stop + run {load} ...");
        let plain = Plain::start(engine, &stack.web_image())?;
        let mut restarts = Restarts::default();
        let plain_load = under_load(plain.port, "localhost", "/version", clients, || {
            for round in 0..rounds {
                new_image(engine, stack, &format!("plain-{clients}-{round}"))?;
                restarts.time(&plain, &stack.web_image())?;
            }
            Ok(())
        })?;
        Ok(Pass {
            deploys,
            restarts,
            deploy_load,
            plain_load,
        })
    }
}

/// A new VERSION built into web's image on the machine's engine, as the
/// example's `build` does, and given to the engine both sides run on; not
/// timed (both sides run the same image).
fn new_image(engine: &Engine, stack: &Stack, version: &str) -> Result<(), String> {
    stack.set_version(version);
    let dir = stack.project.path().join("web");
    docker(&[
        "build",
        "--quiet",
        "--tag",
        &stack.web_image(),
        &dir.to_string_lossy(),
    ])?;
    engine.take(&stack.web_image())
}

/// The Docker engine Gantry's agent and the plain way both run on: the
/// machine's, or (`--engine overlay2`) one of the bench's own beside it,
/// storing with overlay2. Images are built on the machine's engine (its
/// builds reach Debian's packages; the other one has no outside network)
/// and copied to the other with `docker save | docker load`.
struct Engine {
    own: Option<Dockerd>,
}

impl Engine {
    fn start(storage: Option<&str>, stack: &mut Stack) -> Result<Engine, String> {
        let Some(storage) = storage else {
            return Ok(Engine { own: None });
        };
        eprintln!("starting an engine of the bench's own with {storage} ...");
        let engine = Engine {
            own: Some(Dockerd::beside_machine(storage)),
        };
        for image in ["postgres:15", "redis:7"] {
            engine.take(image)?;
        }
        if let Some(own) = &engine.own {
            stack.project.set_env("DOCKER_HOST", &own.host());
        }
        Ok(engine)
    }

    /// Copies `image` from the machine's engine, if this is another one.
    fn take(&self, image: &str) -> Result<(), String> {
        let Some(own) = &self.own else {
            return Ok(());
        };
        let script = r#"docker save "$1" | DOCKER_HOST="$2" docker load -q >/dev/null"#;
        let status = Command::new("sh")
            .args(["-c", script, "sh", image, &own.host()])
            .status()
            .map_err(|e| format!("cannot run docker save | docker load: {e}"))?;
        if !status.success() {
            return Err(format!("cannot copy {image} to the bench's engine"));
        }
        Ok(())
    }

    /// `docker ARGS` on this engine.
    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("docker");
        if let Some(own) = &self.own {
            command.env("DOCKER_HOST", own.host());
        }
        run_docker(command, args)
    }

    fn name(&self) -> String {
        match &self.own {
            Some(own) => format!(
                "an engine of the bench's own ({})",
                own.docker(&["info", "--format", "{{.Driver}}"])
            ),
            None => format!(
                "the machine's engine ({})",
                docker(&["info", "--format", "{{.Driver}}"]).unwrap_or_default()
            ),
        }
    }
}

/// `docker ARGS` on the machine's engine.
fn docker(args: &[&str]) -> Result<String, String> {
    run_docker(Command::new("docker"), args)
}

fn run_docker(mut command: Command, args: &[&str]) -> Result<String, String> {
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Each deploy's times: the CLI's wall time, web's phases, the other
/// services' phases together, the rest, and the wall time minus every
/// health phase.
#[derive(Default)]
struct Deploys {
    wall: Vec<Duration>,
    phases: BTreeMap<String, Vec<Duration>>,
    /// Web's phases in the order the agent reports them.
    order: Vec<String>,
    others: Vec<Duration>,
    rest: Vec<Duration>,
    overhead: Vec<Duration>,
    /// The time web's phases waited on the engine's create, start, stop
    /// and remove calls, as the agent counts it (`engine_ms`).
    engine: Vec<Duration>,
    /// The wall time minus every health phase and `engine`.
    own: Vec<Duration>,
}

impl Deploys {
    fn time(&mut self, stack: &Stack) -> Result<(), String> {
        let started = Instant::now();
        let run = stack
            .project
            .gantry(&["deploy", "--skip-build", "--output", "json"]);
        let wall = started.elapsed();
        if run.code != 0 {
            return Err(format!(
                "gantry deploy failed (exit {}):\n{}{}",
                run.code, run.stdout, run.stderr
            ));
        }
        let report = run.json();
        let (mut health, mut others, mut all) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut engine = Duration::ZERO;
        let mut web = BTreeMap::<String, Duration>::new();
        for phase in report["release"]["phases"].as_array().into_iter().flatten() {
            let name = phase["name"].as_str().unwrap_or("?").to_owned();
            let took = Duration::from_millis(phase["duration_ms"].as_u64().unwrap_or(0));
            all += took;
            engine += Duration::from_millis(phase["engine_ms"].as_u64().unwrap_or(0));
            if name == HEALTH {
                health += took;
            }
            // Phases of no service (materialize) count as web's.
            if phase["service"].as_str().is_some_and(|s| s != "web") {
                others += took;
                continue;
            }
            if !self.order.contains(&name) {
                self.order.push(name.clone());
            }
            *web.entry(name).or_default() += took;
        }
        for (name, took) in web {
            self.phases.entry(name).or_default().push(took);
        }
        self.wall.push(wall);
        self.others.push(others);
        self.rest.push(wall.saturating_sub(all));
        self.overhead.push(wall.saturating_sub(health));
        self.engine.push(engine);
        self.own
            .push(wall.saturating_sub(health).saturating_sub(engine));
        Ok(())
    }
}

/// The plain way: one container of web's image on a fixed loopback port.
struct Plain<'e> {
    port: u16,
    engine: &'e Engine,
}

impl<'e> Plain<'e> {
    fn start(engine: &'e Engine, image: &str) -> Result<Plain<'e>, String> {
        let _ = engine.docker(&["rm", "-f", PLAIN]);
        // A network of its own, as Gantry's project network.
        let _ = engine.docker(&["network", "rm", PLAIN]);
        engine.docker(&["network", "create", PLAIN])?;
        let plain = Plain {
            port: free_port()?,
            engine,
        };
        plain.run(image)?;
        wait_healthy(plain.port)?;
        Ok(plain)
    }

    fn run(&self, image: &str) -> Result<(), String> {
        self.engine
            .docker(&[
                "run",
                "-d",
                "--name",
                PLAIN,
                "--network",
                PLAIN,
                "-e",
                "PORT=8000",
                "-p",
                &format!("127.0.0.1:{}:8000", self.port),
                image,
            ])
            .map(drop)
    }
}

impl Drop for Plain<'_> {
    fn drop(&mut self) {
        let _ = self.engine.docker(&["rm", "-f", PLAIN]);
        let _ = self.engine.docker(&["network", "rm", PLAIN]);
    }
}

/// Polls `GET /healthz` as tightly as a script would, for up to 30 s.
fn wait_healthy(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(port, "/healthz"), Ok((200, _))) {
        if Instant::now() > deadline {
            return Err(format!("nothing answered on port {port} within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Each plain restart's steps.
#[derive(Default)]
struct Restarts {
    stop: Vec<Duration>,
    run: Vec<Duration>,
    health: Vec<Duration>,
    wall: Vec<Duration>,
    overhead: Vec<Duration>,
}

impl Restarts {
    fn time(&mut self, plain: &Plain, image: &str) -> Result<(), String> {
        let started = Instant::now();
        plain.engine.docker(&["stop", PLAIN])?;
        plain.engine.docker(&["rm", PLAIN])?;
        let stopped = Instant::now();
        plain.run(image)?;
        let ran = Instant::now();
        wait_healthy(plain.port)?;
        let healthy = Instant::now();
        self.stop.push(stopped - started);
        self.run.push(ran - stopped);
        self.health.push(healthy - ran);
        self.wall.push(healthy - started);
        self.overhead.push(ran - started);
        Ok(())
    }
}

/// The row "Gantry beyond the plain restart": the median (and p90) of the
/// deploys' wall time minus the same percentile of the plain restart's
/// total. Both wait for the same new container to answer, so what is left
/// is what Gantry adds to the plain way; negative when it takes less.
fn beyond_plain(out: &mut String, wall: &[Duration], plain: &[Duration]) {
    if wall.is_empty() || plain.is_empty() {
        return;
    }
    let (mut wall, mut plain) = (wall.to_vec(), plain.to_vec());
    let signed = |a: Duration, b: Duration| a.as_secs_f64() * 1e3 - b.as_secs_f64() * 1e3;
    let median = signed(percentile(&mut wall, 50), percentile(&mut plain, 50));
    let p90 = signed(percentile(&mut wall, 90), percentile(&mut plain, 90));
    let ratio = median / (percentile(&mut plain, 50).as_secs_f64() * 1e3).max(1e-9);
    let verdict = if median <= OVERHEAD_GOAL.as_secs_f64() * 1e3 {
        "met"
    } else {
        "NOT met"
    };
    let _ = writeln!(
        out,
        "| **Gantry beyond the plain restart** (wall time minus the plain restart's total) \
         | {median:.0} ms | {p90:.0} ms | {ratio:.2} | at most {} | {verdict} |",
        ms(OVERHEAD_GOAL)
    );
}

fn table(deploys: &Deploys, restarts: &Restarts) -> String {
    let mut out = String::new();
    out.push_str("| measure | median | p90 | × plain restart | goal | verdict |\n");
    out.push_str("|---|---:|---:|---:|---|---|\n");
    let plain_median = percentile(&mut restarts.wall.clone(), 50);
    let mut row = |name: &str, values: &[Duration], goal: Option<Duration>| {
        if values.is_empty() {
            return;
        }
        let mut values = values.to_vec();
        let (median, p90) = (percentile(&mut values, 50), percentile(&mut values, 90));
        let ratio = median.as_secs_f64() / plain_median.as_secs_f64().max(1e-9);
        let (goal, verdict) = goal.map_or((String::new(), ""), |goal| {
            (
                format!("at most {}", ms(goal)),
                if median <= goal { "met" } else { "NOT met" },
            )
        });
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {ratio:.2} | {goal} | {verdict} |",
            ms(median),
            ms(p90)
        );
    };
    row("plain: docker stop + rm", &restarts.stop, None);
    row("plain: docker run", &restarts.run, None);
    row(
        "plain: until /healthz answers (the wait)",
        &restarts.health,
        None,
    );
    row(
        "**plain restart, total (all of it downtime)**",
        &restarts.wall,
        None,
    );
    row("plain: beyond the health wait", &restarts.overhead, None);
    row("`gantry deploy`, wall time (CLI)", &deploys.wall, None);
    for phase in &deploys.order {
        let label = if phase == HEALTH {
            "· agent: health (the wait)".to_owned()
        } else {
            format!("· agent: {phase}")
        };
        row(&label, &deploys.phases[phase], None);
    }
    row(
        "· agent: the other services (db, cache, worker)",
        &deploys.others,
        None,
    );
    row(
        "· the rest (CLI start, config, artifact, connecting, recording, report)",
        &deploys.rest,
        None,
    );
    row(
        "**deploy overhead beyond the health waits** (strict)",
        &deploys.overhead,
        Some(OVERHEAD_GOAL),
    );
    row(
        "· of which Docker's create, start, stop and rm calls (the agent's count)",
        &deploys.engine,
        None,
    );
    row(
        "**Gantry's own overhead** (beyond the health waits and those Docker calls)",
        &deploys.own,
        Some(OVERHEAD_GOAL),
    );
    beyond_plain(&mut out, &deploys.wall, &restarts.wall);
    out
}

/// The requests of the pass under load: failed and non-2xx, both ways.
fn load_table(deploy_load: &Counts, plain_load: &Counts) -> String {
    let mut out = String::new();
    out.push_str("\n| under load | requests | failed | non-2xx | failure ratio | examples |\n");
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    for (name, counts) in [
        ("`gantry deploy` through the proxy", deploy_load),
        ("plain docker stop + run, fixed port", plain_load),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {:.6} | {} |",
            counts.requests,
            counts.failed,
            counts.non_2xx,
            counts.ratio(),
            counts.examples.join("; ")
        );
    }
    let verdict = match (deploy_load.failed + deploy_load.non_2xx, plain_load.ratio()) {
        (0, r) if r > 0.0 => "goal met: Gantry failed no request where the plain way failed some",
        (0, _) => "Gantry failed no request; neither did the plain way",
        _ => "goal NOT met: Gantry failed requests",
    };
    let _ = writeln!(out, "\n{verdict}");
    out
}
