//! What the benchmarks share: the plain alternative a deploy is measured
//! against (the example's web binary on a fixed port, stopped and started
//! again, as a restart script does) and the small helpers around it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gantry_testkit::{KeepAlive, http_get, http_get_host, workspace_root};
use nix::sys::signal::Signal;

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Polls `GET /healthz` on `port` as tightly as a script would, for up to
/// ten seconds.
pub fn wait_answers(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if matches!(http_get(port, "/healthz"), Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing answered on port {port} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The example's web binary run by hand on a fixed port, answering
/// `VERSION` "plain"; stopped when dropped.
pub struct PlainWeb {
    dir: tempfile::TempDir,
    web: PathBuf,
    pub port: u16,
    child: Child,
}

impl PlainWeb {
    /// Starts `web` and waits until it answers.
    pub fn start(web: &Path) -> Result<PlainWeb, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a directory: {e}"))?;
        std::fs::write(dir.path().join("VERSION"), "plain\n")
            .map_err(|e| format!("cannot write VERSION: {e}"))?;
        let port = free_port()?;
        let child = spawn(web, dir.path(), port)?;
        let plain = PlainWeb {
            dir,
            web: web.to_owned(),
            port,
            child,
        };
        wait_answers(port)?;
        Ok(plain)
    }

    /// Stops it with `signal`, starts it again and waits until it answers:
    /// the whole of it is downtime.
    pub fn restart(&mut self, signal: Signal) -> Result<(), String> {
        self.stop(signal);
        self.child = spawn(&self.web, self.dir.path(), self.port)?;
        wait_answers(self.port)
    }

    fn stop(&mut self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        let _ = self.child.wait();
    }
}

impl Drop for PlainWeb {
    fn drop(&mut self) {
        self.stop(Signal::SIGKILL);
    }
}

fn spawn(web: &Path, dir: &Path, port: u16) -> Result<Child, String> {
    Command::new(web)
        .current_dir(dir)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", web.display()))
}

/// What the load saw.
#[derive(Default)]
pub struct Counts {
    pub requests: u64,
    pub failed: u64,
    pub non_2xx: u64,
    pub wall: Duration,
    /// One example of each kind of failure, to read.
    pub examples: Vec<String>,
}

impl Counts {
    /// (failed + non-2xx) / requests.
    pub fn ratio(&self) -> f64 {
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
/// request, with no pause between requests, all `GET path` with `Host:
/// host` on 127.0.0.1:`port`, until `work` returns.
pub fn under_load(
    port: u16,
    host: &str,
    path: &str,
    clients: usize,
    work: impl FnOnce() -> Result<(), String>,
) -> Result<Counts, String> {
    let done = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|n| {
            let done = Arc::clone(&done);
            let (host, path) = (host.to_owned(), path.to_owned());
            std::thread::spawn(move || {
                let mut counts = Counts::default();
                let mut client = KeepAlive::new(port, &host);
                while !done.load(Ordering::Relaxed) {
                    let answer = if n % 2 == 0 {
                        client.get(&path)
                    } else {
                        http_get_host(port, &host, &path)
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

/// `target/release/gantry` of this workspace (or of `CARGO_TARGET_DIR`).
pub fn gantry_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("release/gantry")
}

/// The `p`th percentile of `values` (nearest rank; sorts them).
pub fn percentile<T: Ord + Copy>(values: &mut [T], p: usize) -> T {
    values.sort_unstable();
    let rank = (values.len() * p).div_ceil(100).max(1);
    values[rank - 1]
}

/// Whole milliseconds as such (the agent's phases come in them), finer
/// times below 10 ms with two decimals.
pub fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) && !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    }
}
