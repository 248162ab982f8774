//! What the benchmarks share: the plain alternative a deploy is measured
//! against (the example's web binary on a fixed port, stopped and started
//! again, as a restart script does) and the small helpers around it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_testkit::http_get;
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
