//! Where the proxy's lines go (its events and the access log): stderr, or
//! with `--log-file` a file that never grows past its cap: when the next
//! line would pass it, the file becomes `<file>.1` (replacing the one
//! before) and a new one starts. It is process-wide, as stderr is, which it
//! stands in for.
//!
//! Events a client can cause at will (a failed TLS handshake) go through a
//! `Tally`: the first of each interval is written, the rest are counted
//! into one summary line, so no client can fill the disk.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The log file's cap unless told otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// The smallest cap: room for a few lines.
pub const MIN_MAX_BYTES: u64 = 4096;

static SINK: Mutex<Option<CappedFile>> = Mutex::new(None);

/// Sends this process's log lines to `path`, capped at `max_bytes` (at
/// least `MIN_MAX_BYTES`) with one rotated file.
pub fn to_file(path: &Path, max_bytes: u64) -> std::io::Result<()> {
    let file = CappedFile::open(path, max_bytes.max(MIN_MAX_BYTES))?;
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    Ok(())
}

/// Writes one JSON event line.
pub(crate) fn event(event: &serde_json::Value) {
    let mut line = event.to_string();
    line.push('\n');
    write(&line);
}

/// Writes one plain line (a message that is not an event).
pub(crate) fn text(message: &str) {
    write(&format!("gantry-proxy: {message}\n"));
}

/// Writes lines already ending in `\n`.
pub(crate) fn write(lines: &str) {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    match sink.as_mut() {
        Some(file) => file.write(lines.as_bytes()),
        None => {
            let _ = std::io::stderr().write_all(lines.as_bytes());
        }
    }
}

struct CappedFile {
    path: PathBuf,
    file: File,
    max_bytes: u64,
}

impl CappedFile {
    fn open(path: &Path, max_bytes: u64) -> std::io::Result<CappedFile> {
        Ok(CappedFile {
            path: path.to_owned(),
            file: append(path)?,
            max_bytes,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        let bytes = &bytes[..bytes
            .len()
            .min(usize::try_from(self.max_bytes).unwrap_or(0))];
        // The file's own size, not a count: another process (the proxy
        // handing off, or stderr redirected here) may write to it too.
        let size = self.file.metadata().map_or(0, |m| m.len());
        if size + bytes.len() as u64 > self.max_bytes {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            // A rename that fails must not let the file grow past its cap:
            // start it again empty instead.
            if std::fs::rename(&self.path, &rotated).is_err() {
                if self.file.set_len(0).is_err() {
                    return;
                }
            } else {
                match append(&self.path) {
                    Ok(file) => self.file = file,
                    Err(_) => return,
                }
            }
        }
        let _ = self.file.write_all(bytes);
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Counts events of one kind: the first in each interval is written whole,
/// the others only as a count in one summary line.
pub(crate) struct Tally {
    event: &'static str,
    interval: Duration,
    state: Mutex<Option<(Instant, u64)>>,
}

impl Tally {
    pub(crate) const fn new(event: &'static str, interval: Duration) -> Tally {
        Tally {
            event,
            interval,
            state: Mutex::new(None),
        }
    }

    /// Records one event; writes `detail` when it is the interval's first.
    pub(crate) fn record(&self, detail: impl FnOnce() -> serde_json::Value) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.as_mut() {
            Some((since, more)) if since.elapsed() < self.interval => *more += 1,
            _ => {
                self.summarize(state.take());
                *state = Some((Instant::now(), 0));
                event(&detail());
            }
        }
    }

    /// Writes the count of the events not written, once their interval is
    /// over: call it every interval.
    pub(crate) fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .as_ref()
            .is_some_and(|(since, _)| since.elapsed() >= self.interval)
        {
            self.summarize(state.take());
        }
    }

    fn summarize(&self, ended: Option<(Instant, u64)>) {
        if let Some((_, more)) = ended.filter(|(_, more)| *more > 0) {
            event(&serde_json::json!({
                "event": self.event,
                "more": more,
                "interval_s": self.interval.as_secs(),
            }));
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_never_passes_its_cap_and_rotates_once() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("proxy.log");
        let mut file = CappedFile::open(&path, 100).expect("open");
        for _ in 0..50 {
            file.write(b"0123456789abcdefghi\n");
            let size = std::fs::metadata(&path).expect("meta").len();
            assert!(size <= 100, "{size}");
        }
        let rotated = std::fs::metadata(dir.path().join("proxy.log.1")).expect("rotated");
        assert!(rotated.len() <= 100);
    }
}
