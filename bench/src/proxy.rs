//! Gantry's proxy next to nginx and Caddy, in one run on loopback: the same
//! small upstream reached directly and through each proxy, over plain HTTP
//! and over TLS (each proxy serving the same certificate from a CA the bench
//! makes), loaded by wrk with keep-alive connections. Prints one Markdown
//! table with the ratios; never fails on a slow result.
//!
//! It installs nothing. wrk is required; nginx and Caddy are skipped (loudly)
//! when missing. On Debian, as root:
//!
//! ```sh
//! apt-get install -y wrk nginx caddy
//! cargo run --release -p gantry-bench --bin proxy [-- --duration 10 --connections 64 --rounds 1 --tls on]
//! ```

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use gantry_proxy::{CertFiles, ProxyConfig, Route, RouteTable, Tls};

/// What every upstream response carries.
const BODY: &str = "Hello from the upstream!\n";
const HOST: &str = "bench.test";
const WRK_THREADS: usize = 2;
const WARM_UP: Duration = Duration::from_secs(2);
const STARTUP: Duration = Duration::from_secs(10);

struct Options {
    duration: u64,
    connections: usize,
    rounds: usize,
    /// Only these targets (by name), when given.
    only: Option<Vec<String>>,
    /// Also the TLS rows (`--tls on`, the default), or not (`--tls off`).
    tls: bool,
}

impl Options {
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| name.starts_with(o.as_str())))
    }
}

fn main() -> ExitCode {
    let options = match options_from_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    if !on_path("wrk") {
        eprintln!(
            "wrk is missing: install it with `apt-get install -y wrk` (as root), then run again"
        );
        return ExitCode::FAILURE;
    }
    // One worker per core for every proxy, so none gets more CPU than another.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("cannot make a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&options, workers, dir.path()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn options_from_args() -> Result<Options, String> {
    let mut options = Options {
        duration: 10,
        connections: 64,
        rounds: 1,
        only: None,
        tls: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: proxy [--duration SECONDS] [--connections N] [--rounds N] [--only direct,gantry,nginx,caddy] [--tls on|off]";
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(usage.to_owned());
        };
        if flag == "--only" {
            options.only = Some(value.split(',').map(str::to_owned).collect());
            continue;
        }
        if flag == "--tls" {
            options.tls = match value.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(format!("--tls wants on or off, not `{value}`")),
            };
            continue;
        }
        let number: usize = value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} wants a positive number, not `{value}`"))?;
        match flag.as_str() {
            "--duration" => options.duration = number.min(300) as u64,
            "--connections" => options.connections = number.min(10_000),
            "--rounds" => options.rounds = number.min(10),
            _ => return Err(usage.to_owned()),
        }
    }
    Ok(options)
}

fn run(options: &Options, workers: usize, dir: &Path) -> Result<(), String> {
    let upstream = upstream::start(workers)?;
    eprintln!("upstream on {upstream} ({workers} threads)");

    let tls = if options.tls {
        Some(certificate::make(dir)?)
    } else {
        None
    };
    let mut targets: Vec<Target> = Vec::new();
    if options.wants("direct") {
        targets.push(Target::direct(upstream));
    }
    if options.wants("gantry") {
        targets.push(Target::gantry(upstream, workers, dir, None)?);
        if let Some(tls) = &tls {
            targets.push(Target::gantry(upstream, workers, dir, Some(tls))?);
        }
    }
    // nginx and Caddy: plain, then over TLS.
    let mut others: Vec<Option<&certificate::Files>> = vec![None];
    if let Some(tls) = &tls {
        others.push(Some(tls));
    }
    for tls in others {
        add_others(&mut targets, options, upstream, workers, dir, tls);
    }
    for target in &targets {
        check_answer(target, tls.as_ref())?;
    }

    let mut results: Vec<Vec<Wrk>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        for (target, results) in targets.iter().zip(&mut results) {
            eprintln!(
                "round {round}/{}: {} ({}s after {}s of warm-up) ...",
                options.rounds,
                target.name,
                options.duration,
                WARM_UP.as_secs()
            );
            wrk(target, options.connections, WARM_UP.as_secs())?;
            results.push(measure(target, options.connections, options.duration)?);
        }
    }
    let rows: Vec<Row> = targets
        .iter()
        .zip(results)
        .map(|(target, runs)| Row::median_of(&target.name, runs))
        .collect();

    println!(
        "\nwrk -t{WRK_THREADS} -c{} -d{}s --latency, {}-byte responses, keep-alive, loopback; \
         {workers} worker(s) per proxy; median of {} round(s){}\n",
        options.connections,
        options.duration,
        BODY.len(),
        options.rounds,
        if tls.is_some() {
            "; TLS rows: one ECDSA P-256 certificate from the bench's own CA for every proxy, TLS 1.3 as negotiated"
        } else {
            ""
        }
    );
    print!("{}", table(&rows));
    let gantry = rows.iter().find(|r| r.name == "gantry");
    let nginx = rows.iter().find(|r| r.name == "nginx");
    match (gantry, nginx) {
        (Some(gantry), Some(nginx)) => {
            let met = gantry.requests >= nginx.requests && gantry.p99 <= nginx.p99;
            println!(
                "goal: at least 1.0× nginx's req/s, p99 no worse than nginx's — {} \
                 ({:.2}× req/s, p99 {} vs {})",
                if met { "met" } else { "NOT met" },
                gantry.requests / nginx.requests,
                ms(gantry.p99),
                ms(nginx.p99),
            );
        }
        _ => println!(
            "goal: at least 1.0× nginx's req/s, p99 no worse than nginx's — not measured (no nginx)"
        ),
    }
    for target in targets {
        target.stop();
    }
    Ok(())
}

/// nginx and Caddy, plain or over TLS, when wanted and found.
fn add_others(
    targets: &mut Vec<Target>,
    options: &Options,
    upstream: SocketAddr,
    workers: usize,
    dir: &Path,
    tls: Option<&certificate::Files>,
) {
    if options.wants("nginx") {
        match Target::nginx(upstream, workers, dir, tls) {
            Ok(Some(nginx)) => targets.push(nginx),
            Ok(None) => eprintln!(
                "\n!!! nginx is missing: its row is skipped. Install it with `apt-get install -y nginx` (as root).\n"
            ),
            Err(message) => eprintln!("\n!!! nginx did not start, its row is skipped: {message}\n"),
        }
    }
    if options.wants("caddy") {
        match Target::caddy(upstream, workers, dir, tls) {
            Ok(Some(caddy)) => targets.push(caddy),
            Ok(None) => eprintln!(
                "\n!!! caddy is missing: its row is skipped. Install it with `apt-get install -y caddy` (as root).\n"
            ),
            Err(message) => eprintln!("\n!!! caddy did not start, its row is skipped: {message}\n"),
        }
    }
}

/// A server wrk loads: the upstream itself or a proxy in front of it.
struct Target {
    name: String,
    addr: SocketAddr,
    /// Loaded over TLS (`https://`).
    tls: bool,
    running: Running,
}

enum Running {
    InProcess,
    Gantry(gantry_proxy::RunningProxy),
    Process(Child),
}

impl Target {
    fn direct(upstream: SocketAddr) -> Target {
        Target {
            name: "direct (no proxy)".to_owned(),
            addr: upstream,
            tls: false,
            running: Running::InProcess,
        }
    }

    /// Over TLS: a proxy of its own with an HTTPS listener, the route
    /// serving the bench's certificate (wrk sends an IP address as SNI, which
    /// TLS ignores, so the route takes any host).
    fn gantry(
        upstream: SocketAddr,
        workers: usize,
        dir: &Path,
        tls: Option<&certificate::Files>,
    ) -> Result<Target, String> {
        let mut config = ProxyConfig::new(dir.join(if tls.is_some() {
            "gantry-tls"
        } else {
            "gantry"
        }));
        config.http = free_addr()?;
        config.https = match tls {
            Some(_) => Some(free_addr()?),
            None => None,
        };
        config.access_log = false;
        config.workers = workers;
        // wrk is one client with up to --connections of them, as nginx and
        // Caddy are run here with no per-client limit.
        config.clients.max_per_client = config.clients.max_connections;
        let proxy = gantry_proxy::start(config)
            .map_err(|e| format!("gantry's proxy did not start: {e}"))?;
        let route = Route::new("bench", vec![upstream]);
        let route = match tls {
            Some(files) => route.tls(Tls::Files(CertFiles {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })),
            None => route.hosts([HOST]),
        };
        let table = RouteTable {
            routes: vec![route],
        };
        let json = serde_json::to_string(&table).map_err(|e| e.to_string())?;
        put_routes(proxy.control_socket(), &json)?;
        let addr = match proxy.https_addr() {
            Some(https) if tls.is_some() => https,
            _ => proxy.http_addr(),
        };
        Ok(Target {
            name: name("gantry", tls.is_some()),
            addr,
            tls: tls.is_some(),
            running: Running::Gantry(proxy),
        })
    }

    /// nginx with an upstream keep-alive pool and the headers Gantry sets.
    fn nginx(
        upstream: SocketAddr,
        workers: usize,
        dir: &Path,
        tls: Option<&certificate::Files>,
    ) -> Result<Option<Target>, String> {
        let Some(nginx) = find_binary("nginx", &["/usr/sbin/nginx"]) else {
            return Ok(None);
        };
        let prefix = dir.join(if tls.is_some() { "nginx-tls" } else { "nginx" });
        std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
        let addr = free_addr()?;
        let p = prefix.display();
        let (ssl, ssl_files) = match tls {
            Some(files) => (
                " ssl",
                format!(
                    "\x20   ssl_certificate {};\n\
                     \x20   ssl_certificate_key {};\n\
                     \x20   ssl_protocols TLSv1.2 TLSv1.3;\n",
                    files.cert.display(),
                    files.key.display()
                ),
            ),
            None => ("", String::new()),
        };
        let conf = format!(
            "worker_processes {workers};\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20 access_log off;\n\
             \x20 client_body_temp_path {p}/client_body;\n\
             \x20 proxy_temp_path {p}/proxy;\n\
             \x20 fastcgi_temp_path {p}/fastcgi;\n\
             \x20 uwsgi_temp_path {p}/uwsgi;\n\
             \x20 scgi_temp_path {p}/scgi;\n\
             \x20 upstream app {{ server {upstream}; keepalive 128; }}\n\
             \x20 server {{\n\
             \x20   listen {addr}{ssl} backlog=4096;\n\
             {ssl_files}\
             \x20   location / {{\n\
             \x20     proxy_pass http://app;\n\
             \x20     proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\";\n\
             \x20     proxy_set_header Host $http_host;\n\
             \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20     proxy_set_header X-Forwarded-Host $http_host;\n\
             \x20     proxy_set_header X-Request-Id $request_id;\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n"
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run nginx: {e}"))?;
        started(child, addr, &name("nginx", tls.is_some()), tls.is_some()).map(Some)
    }

    /// Caddy's reverse_proxy, with an idle pool as large as the others' (Go's
    /// default keeps only a few idle connections per upstream, which would
    /// have it reconnect under this load); it sets X-Forwarded-* itself.
    fn caddy(
        upstream: SocketAddr,
        workers: usize,
        dir: &Path,
        tls: Option<&certificate::Files>,
    ) -> Result<Option<Target>, String> {
        let Some(caddy) = find_binary("caddy", &["/usr/bin/caddy"]) else {
            return Ok(None);
        };
        let home = dir.join(if tls.is_some() { "caddy-tls" } else { "caddy" });
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let addr = free_addr()?;
        let caddyfile = format!(
            "{{\n\
             \x20 admin off\n\
             \x20 auto_https off\n\
             }}\n\
             {scheme}://:{port} {{\n\
             \x20 bind {ip}\n\
             {tls_files}\
             \x20 reverse_proxy {upstream} {{\n\
             \x20   header_up X-Request-Id {{http.request.uuid}}\n\
             \x20   transport http {{\n\
             \x20     keepalive 90s\n\
             \x20     keepalive_idle_conns 1024\n\
             \x20     keepalive_idle_conns_per_host 1024\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n",
            port = addr.port(),
            ip = addr.ip(),
            scheme = if tls.is_some() { "https" } else { "http" },
            tls_files = tls.map_or_else(String::new, |files| format!(
                "\x20 tls {} {}\n",
                files.cert.display(),
                files.key.display()
            )),
        );
        let path = home.join("Caddyfile");
        std::fs::write(&path, caddyfile).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(home.join("caddy.log")).map_err(|e| e.to_string())?;
        let child = Command::new(caddy)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--adapter", "caddyfile"])
            .env("GOMAXPROCS", workers.to_string())
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run caddy: {e}"))?;
        started(child, addr, &name("caddy", tls.is_some()), tls.is_some())
            .map(Some)
            .map_err(|message| {
                let log = std::fs::read_to_string(home.join("caddy.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                format!(
                    "{message}; its log ends with:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
    }

    /// CPU time (user + system) the target has used so far: Gantry's
    /// proxy threads, or the server process and its children (nginx's
    /// workers). `None` for the upstream alone.
    fn cpu_time(&self) -> Option<Duration> {
        let ticks: u64 = match &self.running {
            Running::InProcess => return None,
            Running::Gantry(_) => std::fs::read_dir("/proc/self/task")
                .ok()?
                .filter_map(Result::ok)
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|name| name.starts_with("gantry-proxy"))
                })
                .filter_map(|task| stat_ticks(&task.path().join("stat")))
                .sum(),
            Running::Process(child) => {
                let pid = child.id();
                let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default();
                std::iter::once(pid.to_string())
                    .chain(children.split_whitespace().map(str::to_owned))
                    .filter_map(|pid| stat_ticks(Path::new(&format!("/proc/{pid}/stat"))))
                    .sum()
            }
        };
        // /proc counts in USER_HZ, 100 a second on Linux.
        Some(Duration::from_millis(ticks * 10))
    }

    fn stop(self) {
        match self.running {
            Running::InProcess => {}
            Running::Gantry(proxy) => proxy.stop(),
            Running::Process(child) => stop_child(child),
        }
    }
}

/// utime + stime from a `/proc/.../stat` file.
fn stat_ticks(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which may hold spaces, in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A row's name: `gantry`, or `gantry (TLS)`.
fn name(proxy: &str, tls: bool) -> String {
    if tls {
        format!("{proxy} (TLS)")
    } else {
        proxy.to_owned()
    }
}

/// Waits until a started server accepts connections.
fn started(mut child: Child, addr: SocketAddr, name: &str, tls: bool) -> Result<Target, String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok(Target {
                name: name.to_owned(),
                addr,
                tls,
                running: Running::Process(child),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited with {status}"));
        }
        if Instant::now() > deadline {
            stop_child(child);
            return Err(format!(
                "{name} did not listen on {addr} within {STARTUP:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM first (nginx's master then stops its workers), SIGKILL if it lingers.
fn stop_child(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn on_path(name: &str) -> bool {
    find_binary(name, &[]).is_some()
}

fn find_binary(name: &str, also: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(also.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
}

/// A loopback address with a port nothing listens on now.
fn free_addr() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// `PUT /v1/routes` on the proxy's control socket.
fn put_routes(socket: &Path, json: &str) -> Result<(), String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("control socket: {e}"))?;
    write!(
        stream,
        "PUT /v1/routes HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
    .map_err(|e| format!("control socket: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("control socket: {e}"))?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("PUT /v1/routes was refused: {answer}"))
    }
}

/// One GET through the target must come back 200 with the upstream's body;
/// over TLS, with a certificate that verifies against the bench's CA.
fn check_answer(target: &Target, tls: Option<&certificate::Files>) -> Result<(), String> {
    let fail = |what: String| format!("{} does not answer as expected: {what}", target.name);
    let stream = TcpStream::connect(target.addr).map_err(|e| fail(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| fail(e.to_string()))?;
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    match tls.filter(|_| target.tls) {
        Some(files) => {
            let mut stream = certificate::client(files, target.addr, stream).map_err(fail)?;
            stream
                .write_all(request.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            // A server may close without close_notify after `Connection: close`.
            match stream.read_to_string(&mut answer) {
                Err(e) if answer.is_empty() => return Err(fail(e.to_string())),
                _ => {}
            }
        }
        None => {
            let mut stream = stream;
            stream
                .write_all(request.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            stream
                .read_to_string(&mut answer)
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    if answer.starts_with("HTTP/1.1 200") && answer.ends_with(BODY) {
        Ok(())
    } else {
        Err(fail(answer))
    }
}

/// What one wrk run measured.
struct Wrk {
    requests: f64,
    /// Requests completed in the whole run.
    total: u64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// CPU time the server under test spent per request, user + system.
    cpu_per_request: Option<Duration>,
}

/// wrk against `target`, with the CPU time the target used meanwhile.
fn measure(target: &Target, connections: usize, seconds: u64) -> Result<Wrk, String> {
    let before = target.cpu_time();
    let mut run = wrk(target, connections, seconds)?;
    let after = target.cpu_time();
    if let (Some(before), Some(after)) = (before, after)
        && run.total > 0
    {
        let total = u32::try_from(run.total).unwrap_or(u32::MAX);
        run.cpu_per_request = Some(after.saturating_sub(before) / total);
    }
    Ok(run)
}

fn wrk(target: &Target, connections: usize, seconds: u64) -> Result<Wrk, String> {
    let scheme = if target.tls { "https" } else { "http" };
    let output = Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("{scheme}://{}/", target.addr))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests = field("Requests/sec:")?.parse().ok()?;
    // "  123456 requests in 10.00s, 12.34MB read"
    let total = text
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let p50 = duration(field("50%")?)?;
    let p99 = duration(field("99%")?)?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0" and
    // "Non-2xx or 3xx responses: N".
    let socket_errors: u64 = field("Socket errors:")
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let bad_status: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some(Wrk {
        requests,
        total,
        p50,
        p99,
        errors: socket_errors + bad_status,
        cpu_per_request: None,
    })
}

/// wrk's `512.00us`, `1.23ms`, `2.00s`.
fn duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    Some(Duration::from_secs_f64(value * scale))
}

struct Row {
    name: String,
    requests: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    cpu_per_request: Option<Duration>,
}

impl Row {
    /// The run with the median req/s stands for the target.
    fn median_of(name: &str, mut runs: Vec<Wrk>) -> Row {
        runs.sort_by(|a, b| a.requests.total_cmp(&b.requests));
        let errors = runs.iter().map(|r| r.errors).sum();
        let middle = runs.swap_remove(runs.len() / 2);
        Row {
            name: name.to_owned(),
            requests: middle.requests,
            p50: middle.p50,
            p99: middle.p99,
            errors,
            cpu_per_request: middle.cpu_per_request,
        }
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| target | req/s | p50 | p99 | errors | proxy CPU per request |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let cpu = row.cpu_per_request.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.1} µs", d.as_secs_f64() * 1e6),
        );
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {cpu} |",
            row.name,
            row.requests,
            ms(row.p50),
            ms(row.p99),
            row.errors
        );
    }
    let _ = writeln!(out);
    for tls in [false, true] {
        let row = |proxy: &str| rows.iter().find(|r| r.name == self::name(proxy, tls));
        let Some(gantry) = row("gantry") else {
            continue;
        };
        let over = if tls { " over TLS" } else { "" };
        for (other, name) in [(row("nginx"), "nginx"), (row("caddy"), "Caddy")] {
            match other {
                Some(other) => {
                    let _ = writeln!(
                        out,
                        "- Gantry/{name}{over}: {:.2}× req/s, {:.2}× p50, {:.2}× p99 (latency below 1 is better)",
                        gantry.requests / other.requests,
                        gantry.p50.as_secs_f64() / other.p50.as_secs_f64(),
                        gantry.p99.as_secs_f64() / other.p99.as_secs_f64(),
                    );
                }
                None => {
                    let _ = writeln!(out, "- Gantry/{name}{over}: not measured ({name} missing)");
                }
            }
        }
    }
    out
}

/// The certificate every TLS row serves: a CA the bench makes, and a leaf
/// it signed for `bench.test` and 127.0.0.1, as PEM files.
mod certificate {
    use std::net::{SocketAddr, TcpStream};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rustls::pki_types::CertificateDer;

    pub struct Files {
        pub cert: PathBuf,
        pub key: PathBuf,
        ca: CertificateDer<'static>,
    }

    pub fn make(dir: &Path) -> Result<Files, String> {
        let failed = |e: rcgen::Error| format!("cannot make the bench's certificate: {e}");
        let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gantry-bench CA");
        let ca = ca_params.self_signed(&ca_key).map_err(failed)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let leaf =
            rcgen::CertificateParams::new(vec![super::HOST.to_owned(), "127.0.0.1".to_owned()])
                .map_err(failed)?
                .signed_by(&key, &issuer)
                .map_err(failed)?;
        let files = Files {
            cert: dir.join("bench-cert.pem"),
            key: dir.join("bench-key.pem"),
            ca: ca.der().clone(),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        write(&files.cert, leaf.pem())?;
        write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// A TLS client on `stream` that trusts only the bench's CA.
    pub fn client(
        files: &Files,
        addr: SocketAddr,
        stream: TcpStream,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(files.ca.clone()).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::from(addr.ip());
        let connection =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        Ok(rustls::StreamOwned::new(connection, stream))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The upstream every target forwards to: a small hyper server on its own
/// runtime, answering every request with `BODY`.
mod upstream {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    use super::BODY;

    pub fn start(threads: usize) -> Result<SocketAddr, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("upstream")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the upstream's runtime: {e}"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("cannot bind the upstream: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot bind the upstream: {e}"))?;
        std::thread::spawn(move || runtime.block_on(serve(listener)));
        Ok(addr)
    }

    async fn serve(listener: tokio::net::TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_: Request<hyper::body::Incoming>| async {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n\
            \x20 Latency Distribution\n     50%  512.00us\n     75%    1.00ms\n     90%    2.00ms\n     99%    3.50ms\n\
            \x20 1000 requests in 1.00s, 100.00KB read\n\
            \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
            \x20 Non-2xx or 3xx responses: 4\n\
            Requests/sec:  12345.67\nTransfer/sec:      1.00MB\n";
        let wrk = parse_wrk(text).expect("parses");
        assert_eq!(wrk.total, 1000);
        assert!((wrk.requests - 12345.67).abs() < 1e-6);
        assert_eq!(wrk.p50, Duration::from_micros(512));
        assert_eq!(wrk.p99, Duration::from_micros(3500));
        assert_eq!(wrk.errors, 7);
    }
}
