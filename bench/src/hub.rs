//! The tracker hub under load, on SQLite: 100,000 items; a filtered list
//! and a full-text search (p50 and p99); 200 agents polling with `since`;
//! claims a second; and the hub's memory. Prints one Markdown table and the
//! goals; never fails on a slow result.
//!
//! ```sh
//! cargo run --release -p gantry-bench --bin hub [-- --items N]
//! ```
//!
//! The hub runs in a child process (this binary, re-run with `--serve`), so
//! its RSS is the hub's alone. The items are written straight into the
//! database in one transaction (the hub's own triggers index them), which
//! takes seconds where 100,000 API calls would take minutes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gantry_hub::model::{Permission, Role};
use gantry_hub::{KeySpec, Limits, Location, ServeOptions, Store};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

const ITEMS: usize = 100_000;
const AGENTS: usize = 200;
const LIST_GOAL: Duration = Duration::from_millis(20);
const RSS_GOAL: u64 = 60 << 20;
const SAMPLES: usize = 400;
const POLL_FOR: Duration = Duration::from_secs(5);
const CLAIM_FOR: Duration = Duration::from_secs(5);
const CLAIMERS: usize = 16;
const WORDS: [&str; 12] = [
    "checkout",
    "cart",
    "login",
    "search",
    "invoice",
    "upload",
    "timeout",
    "crash",
    "slow",
    "render",
    "export",
    "migration",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(&args[2..]);
    }
    let items = match args.get(1).map(String::as_str) {
        Some("--items") => args.get(2).and_then(|n| n.parse().ok()).unwrap_or(ITEMS),
        _ => ITEMS,
    };
    match run(items) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// The child: `--serve DB PORT`, the hub until killed.
fn serve(args: &[String]) -> ExitCode {
    let (Some(db), Some(port)) = (args.first(), args.get(1).and_then(|p| p.parse().ok())) else {
        return ExitCode::FAILURE;
    };
    let options = ServeOptions {
        database: Location::Sqlite(db.into()),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        limits: Limits {
            per_address_per_minute: 10_000_000,
            per_key_per_minute: 10_000_000,
            ..Limits::default()
        },
        state_dir: None,
        background: gantry_hub::Background::default(),
    };
    match gantry_hub::run(&options, |_| {}) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(items: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a directory: {e}"))?;
    let db = dir.path().join("hub.db");
    eprintln!("seeding {items} items ...");
    let started = Instant::now();
    let keys = seed(&db, items)?;
    eprintln!("seeded in {:.1} s", started.elapsed().as_secs_f64());
    let port = gantry_bench::free_port()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let hub = Hub(Command::new(exe)
        .args(["--serve", &db.to_string_lossy(), &port.to_string()])
        .spawn()
        .map_err(|e| format!("cannot start the hub: {e}"))?);
    gantry_bench::wait_answers(port)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let report = runtime.block_on(measure(port, keys))?;
    let rss = status_kib(hub.0.id(), "VmRSS:").unwrap_or(0);
    let peak = status_kib(hub.0.id(), "VmHWM:").unwrap_or(0);
    print_table(items, &report, rss, peak);
    Ok(())
}

/// Makes the schema, a product and keys through the hub, then writes the
/// items in one transaction; the agents' keys.
fn seed(db: &Path, items: usize) -> Result<Vec<String>, String> {
    let store = Store::open(&Location::Sqlite(db.to_owned())).map_err(|e| e.to_string())?;
    store
        .add_product("SHOP", "The shop")
        .map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for n in 0..AGENTS {
        let key = store
            .create_key(&KeySpec {
                name: format!("agent-{n}"),
                role: Role::Agent,
                permission: Permission::Write,
                product: None,
                rate_per_minute: None,
                allow_from: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
        keys.push(key.secret);
    }
    drop(store);
    let mut conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let statuses = ["open", "open", "in_progress", "done", "closed"];
    let priorities = ["critical", "high", "medium", "medium", "low"];
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO items (product_id, seq, kind, title, description, status, priority, \
                 visibility, source, reporter, version, created_at, updated_at) \
                 VALUES (1, ?1, 'bug', ?2, ?3, ?4, ?5, 'internal', 'internal', 'seed', 1, ?6, ?6)",
            )
            .map_err(|e| e.to_string())?;
        for n in 0..items {
            let word = WORDS[n % WORDS.len()];
            let other = WORDS[(n / WORDS.len()) % WORDS.len()];
            let title = format!("The {word} page is {other} for item {n}");
            let description = format!("Seen on {word}; steps: open {other}, wait, look again.");
            let at = 1_700_000_000_000_i64 + n as i64 * 1000;
            insert
                .execute(rusqlite::params![
                    n as i64 + 1,
                    title,
                    description,
                    statuses[n % statuses.len()],
                    priorities[(n / 7) % priorities.len()],
                    at
                ])
                .map_err(|e| e.to_string())?;
        }
        tx.execute_batch(
            "INSERT INTO labels (product_id, name, color) VALUES (1, 'frontend', '#00aa00'), \
             (1, 'backend', '#0000aa'); \
             INSERT INTO item_labels (item_id, label_id) SELECT id, 1 + id % 2 FROM items WHERE id % 3 = 0;",
        )
        .map_err(|e| e.to_string())?;
        tx.execute(
            "UPDATE products SET next_seq = ?1 WHERE id = 1",
            [items as i64],
        )
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(keys)
}

/// One keep-alive HTTP/1.1 connection to the hub.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    key: String,
}

impl Conn {
    async fn open(port: u16, key: &str) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(Conn {
            sender,
            key: key.to_owned(),
        })
    }

    /// Sends one request; its status, ETag and body.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
    ) -> Result<(u16, Option<String>, Bytes), String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "hub")
            .header("authorization", format!("Bearer {}", self.key));
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, etag, body))
    }
}

struct Report {
    filtered: Vec<Duration>,
    search: Vec<Duration>,
    poll: Vec<Duration>,
    polls_per_second: f64,
    claims_per_second: f64,
}

async fn measure(port: u16, keys: Vec<String>) -> Result<Report, String> {
    let mut one = Conn::open(port, &keys[0]).await?;
    let filtered = timed(
        &mut one,
        "/api/agent/items?product=SHOP&status=open,in_progress&label=frontend&sort=-priority&limit=50",
    )
    .await?;
    let search = timed(&mut one, "/api/agent/items?q=checkout+slow&limit=50").await?;
    let (poll, polls_per_second) = poll(port, &keys).await?;
    let claims_per_second = claims(port, &keys).await?;
    Ok(Report {
        filtered,
        search,
        poll,
        polls_per_second,
        claims_per_second,
    })
}

/// `SAMPLES` sequential GETs of `path` after a warm-up; each one's time.
async fn timed(conn: &mut Conn, path: &str) -> Result<Vec<Duration>, String> {
    for _ in 0..20 {
        conn.send("GET", path, None).await?;
    }
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let (status, _, body) = conn.send("GET", path, None).await?;
        times.push(started.elapsed());
        if status != 200 || body.len() < 100 {
            return Err(format!(
                "{path}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    Ok(times)
}

/// Every agent polls `since` a minute ago, one request after another, for
/// `POLL_FOR`; each poll's time and the polls a second of them all.
async fn poll(port: u16, keys: &[String]) -> Result<(Vec<Duration>, f64), String> {
    let since = "2026-01-01T00:00:00Z";
    let path = format!("/api/agent/items?since={since}&status=open&limit=20");
    let mut agents = Vec::new();
    let started = Instant::now();
    for key in keys.iter().take(AGENTS) {
        let (key, path) = (key.clone(), path.clone());
        agents.push(tokio::spawn(async move {
            let mut conn = Conn::open(port, &key).await?;
            let mut times = Vec::new();
            while started.elapsed() < POLL_FOR {
                let at = Instant::now();
                let (status, _, _) = conn.send("GET", &path, None).await?;
                if status != 200 {
                    return Err(format!("a poll answered {status}"));
                }
                times.push(at.elapsed());
            }
            Ok::<_, String>(times)
        }));
    }
    let mut all = Vec::new();
    for agent in agents {
        all.extend(agent.await.map_err(|e| e.to_string())??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((all, rate))
}

/// `CLAIMERS` agents each read and claim items of their own, one after
/// another, for `CLAIM_FOR`; successful claims a second.
async fn claims(port: u16, keys: &[String]) -> Result<f64, String> {
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut agents = Vec::new();
    for (n, key) in keys.iter().take(CLAIMERS).enumerate() {
        let (key, claimed) = (key.clone(), claimed.clone());
        agents.push(tokio::spawn(async move {
            let mut conn = Conn::open(port, &key).await?;
            let mut item = n + 1;
            while started.elapsed() < CLAIM_FOR {
                let path = format!("/api/agent/items/{item}");
                let (_, etag, _) = conn.send("GET", &path, None).await?;
                let tag = etag.ok_or("no ETag")?;
                let (status, _, body) = conn
                    .send("PATCH", &format!("{path}/claim"), Some(&tag))
                    .await?;
                match status {
                    200 => {
                        claimed.fetch_add(1, Ordering::Relaxed);
                    }
                    // Finished items cannot be claimed; the next one can.
                    409 => {}
                    other => {
                        return Err(format!(
                            "a claim answered {other}: {}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                }
                item += CLAIMERS;
            }
            Ok::<_, String>(())
        }));
    }
    for agent in agents {
        agent.await.map_err(|e| e.to_string())??;
    }
    Ok(claimed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(at).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn print_table(items: usize, r: &Report, rss: u64, peak: u64) {
    println!("hub on SQLite, {items} items, release build\n");
    println!("| what | p50 | p99 | rate |");
    println!("|---|---|---|---|");
    for (name, times) in [
        (
            "filtered list (product, 2 statuses, label, by priority; 50 a page)",
            &r.filtered,
        ),
        ("full-text search (2 words; 50 a page)", &r.search),
    ] {
        println!(
            "| {name} | {} | {} | {} requests |",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            times.len()
        );
    }
    println!(
        "| {AGENTS} agents polling with `since` (20 a page) | {} | {} | {:.0} polls/s |",
        ms(percentile(&r.poll, 0.5)),
        ms(percentile(&r.poll, 0.99)),
        r.polls_per_second
    );
    println!(
        "| claims ({CLAIMERS} agents, GET then PATCH with If-Match) | | | {:.0} claims/s |",
        r.claims_per_second
    );
    println!(
        "| hub RSS after the run (peak) | {:.1} MiB | ({:.1} MiB) | |",
        rss as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64
    );
    let p99 = percentile(&r.filtered, 0.99);
    println!();
    println!(
        "goal: p99 of a filtered list under {} ms: {} ({})",
        LIST_GOAL.as_millis(),
        if p99 < LIST_GOAL { "met" } else { "missed" },
        ms(p99)
    );
    println!(
        "goal: hub RSS under {} MiB: {} ({:.1} MiB)",
        RSS_GOAL >> 20,
        if rss < RSS_GOAL { "met" } else { "missed" },
        rss as f64 / (1 << 20) as f64
    );
    println!("(no baseline to compare with: these are the goals the issue sets)");
}

/// A `/proc/PID/status` field in bytes.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
