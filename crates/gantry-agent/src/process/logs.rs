//! Instance logs: `<log_dir>/<instance>.log`, one JSON object per line
//! (`{"ts":..,"stream":..,"line":..}`), rotated by size to `.1` (newest) up
//! to `.<keep>`. The relay writes them; the agent reads them, live. Lines are
//! written whole in one `write`, so a reader sees at most a torn last line,
//! which it leaves for its next read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gantry_core::agent_api::Stream;
use serde::{Deserialize, Serialize};

/// Longer lines are split, so one runaway line cannot exhaust memory.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// `<instance>.log` for `n == 0`, else its `n`th rotation.
fn log_path(dir: &Path, instance: &str, n: u32) -> PathBuf {
    match n {
        0 => dir.join(format!("{instance}.log")),
        n => dir.join(format!("{instance}.log.{n}")),
    }
}

#[derive(Serialize)]
struct RecordOut<'a> {
    ts: u64,
    stream: Stream,
    line: &'a str,
}

#[derive(Deserialize)]
struct RecordIn {
    ts: u64,
    stream: Stream,
    line: String,
}

fn parse(line: &[u8]) -> Option<(u64, Stream, String)> {
    let r: RecordIn = serde_json::from_slice(line).ok()?;
    Some((r.ts, r.stream, r.line))
}

/// Appends lines to an instance's log, rotating it by size.
pub(crate) struct LogWriter {
    dir: PathBuf,
    instance: String,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl LogWriter {
    pub(crate) fn open(
        dir: &Path,
        instance: &str,
        max_bytes: u64,
        keep: u32,
    ) -> io::Result<LogWriter> {
        std::fs::create_dir_all(dir)?;
        let mut writer = LogWriter {
            dir: dir.to_owned(),
            instance: instance.to_owned(),
            max_bytes,
            keep,
            file: None,
            size: 0,
        };
        writer.reopen()?;
        Ok(writer)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = File::options().append(true).create(true).open(log_path(
            &self.dir,
            &self.instance,
            0,
        ))?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Writes one line now (readers follow the file live). A full disk loses
    /// lines but never stalls the service.
    pub(crate) fn write(&mut self, ts: u64, stream: Stream, line: &str) {
        let Ok(mut bytes) = serde_json::to_vec(&RecordOut { ts, stream, line }) else {
            return;
        };
        bytes.push(b'\n');
        if self.file.is_none() {
            let _ = self.reopen();
        }
        if let Some(file) = &mut self.file
            && file.write_all(&bytes).is_ok()
        {
            self.size += bytes.len() as u64;
        }
        if self.max_bytes > 0 && self.size >= self.max_bytes {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        rotate(&self.dir, &self.instance, self.keep);
        let _ = self.reopen();
    }
}

/// Moves `<dir>/<name>.log` to `.1` (the newest), `.1` to `.2` and so on,
/// dropping `.<keep>`; with `keep` 0 the log is removed. The agent's own log
/// rotates the same way.
pub(crate) fn rotate(dir: &Path, name: &str, keep: u32) {
    let path = |n| log_path(dir, name, n);
    if keep == 0 {
        let _ = std::fs::remove_file(path(0));
    } else {
        let _ = std::fs::remove_file(path(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(path(n), path(n + 1));
        }
        let _ = std::fs::rename(path(0), path(1));
    }
}

/// How many gone instances keep their logs, per project: rotation caps each
/// instance's log, this caps how many there are (a deploy makes new ones).
pub(crate) const KEEP_GONE: usize = 10;

/// A log written to this recently is never removed: its instance may be
/// starting, with no pid file yet.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the logs (rotations included) of instances that are gone (no pid
/// file in `run_dir`), all but the `keep` most recently written.
pub(crate) fn prune_gone(log_dir: &Path, run_dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return;
    };
    // Instance -> when its log was last written.
    let mut gone: std::collections::BTreeMap<String, std::time::SystemTime> = Default::default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((instance, rest)) = name.split_once(".log") else {
            continue;
        };
        let numbered = rest.is_empty()
            || rest
                .strip_prefix('.')
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if !numbered || super::read_pid_file(run_dir, instance).is_some() {
            continue;
        }
        let Ok(written) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        let newest = gone.entry(instance.to_owned()).or_insert(written);
        *newest = (*newest).max(written);
    }
    let now = std::time::SystemTime::now();
    let mut settled: Vec<(String, std::time::SystemTime)> = gone
        .into_iter()
        .filter(|(_, written)| now.duration_since(*written).is_ok_and(|age| age >= SETTLED))
        .collect();
    settled.sort_by_key(|(_, written)| std::cmp::Reverse(*written));
    for (instance, _) in settled.into_iter().skip(keep) {
        for n in 0.. {
            if std::fs::remove_file(log_path(log_dir, &instance, n)).is_err() && n > 0 {
                break;
            }
        }
    }
}

/// Reads `input` to its end, calling `emit` with each line (without its line
/// ending, lossy UTF-8, split at [`MAX_LINE`] bytes on a character boundary).
pub(crate) fn copy_lines(input: impl Read, mut emit: impl FnMut(&str)) {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line: Vec<u8> = Vec::new();
    let mut emit_bytes = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        emit(&String::from_utf8_lossy(bytes));
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if buf.is_empty() {
            if !line.is_empty() {
                emit_bytes(&line);
            }
            return;
        }
        let window = &buf[..buf.len().min(MAX_LINE - line.len())];
        if let Some(end) = window.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&window[..end]);
            reader.consume(end + 1);
            emit_bytes(&line);
            line.clear();
        } else {
            let taken = window.len();
            line.extend_from_slice(window);
            reader.consume(taken);
            if line.len() >= MAX_LINE {
                let cut = match std::str::from_utf8(&line) {
                    Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                    _ => line.len(),
                };
                emit_bytes(&line[..cut]);
                line.drain(..cut);
            }
        }
    }
}

/// An instance's log lines, oldest first, across rotated files: those at or
/// after `since_ms`, and of those only the last `tail`.
pub fn read_log(
    log_dir: &Path,
    instance: &str,
    since_ms: Option<u64>,
    tail: Option<usize>,
) -> Vec<(u64, Stream, String)> {
    let rotated = (1..)
        .take_while(|&n| log_path(log_dir, instance, n).exists())
        .count();
    let mut newest_first: Vec<Vec<(u64, Stream, String)>> = Vec::new();
    let mut count = 0;
    // Newest file first, so a tail reads only the files it needs.
    for n in 0..=rotated as u32 {
        let Ok(bytes) = std::fs::read(log_path(log_dir, instance, n)) else {
            continue;
        };
        let lines: Vec<_> = bytes
            .split(|&b| b == b'\n')
            .filter_map(parse)
            .filter(|(ts, _, _)| since_ms.is_none_or(|since| *ts >= since))
            .collect();
        count += lines.len();
        newest_first.push(lines);
        if tail.is_some_and(|t| count >= t) {
            break;
        }
    }
    let mut lines: Vec<_> = newest_first.into_iter().rev().flatten().collect();
    if let Some(t) = tail {
        lines.drain(..lines.len().saturating_sub(t));
    }
    lines
}

/// Follows an instance's log: each [`poll`](LogCursor::poll) returns the
/// lines written since the last one, across rotations (it keeps the file it
/// reads open, and finds it again among the rotated ones by inode).
#[derive(Debug)]
pub struct LogCursor {
    dir: PathBuf,
    instance: String,
    file: Option<(File, u64)>,
    offset: u64,
}

impl LogCursor {
    /// Starts after what the live file holds now.
    #[cfg(test)]
    pub fn at_end(log_dir: &Path, instance: &str) -> LogCursor {
        let mut cursor = LogCursor::at_start(log_dir, instance);
        cursor.open_current();
        if let Some((file, _)) = &cursor.file {
            cursor.offset = file.metadata().map_or(0, |m| m.len());
        }
        cursor
    }

    /// Starts at the beginning of the live file.
    pub fn at_start(log_dir: &Path, instance: &str) -> LogCursor {
        LogCursor {
            dir: log_dir.to_owned(),
            instance: instance.to_owned(),
            file: None,
            offset: 0,
        }
    }

    fn open_current(&mut self) {
        self.offset = 0;
        self.file = File::open(log_path(&self.dir, &self.instance, 0))
            .ok()
            .and_then(|f| Some((f.metadata().ok()?.ino(), f)))
            .map(|(ino, f)| (f, ino));
    }

    /// New complete lines, oldest first.
    pub fn poll(&mut self) -> Vec<(u64, Stream, String)> {
        let mut out = Vec::new();
        if self.file.is_none() {
            self.open_current();
        }
        let Some((_, ino)) = &self.file else {
            return out;
        };
        let ino = *ino;
        // Looked at before reading, so lines written before a rotation are read
        // from the old file now and the rotation is handled on the next poll.
        let current = std::fs::metadata(log_path(&self.dir, &self.instance, 0)).map(|m| m.ino());
        self.read_open_file(&mut out);
        if current.is_ok_and(|c| c != ino) {
            let found = (1..=1000u32)
                .map(|n| log_path(&self.dir, &self.instance, n))
                .take_while(|p| p.exists())
                .position(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino));
            // Files rotated after ours and before the live one, oldest first.
            if let Some(ours) = found {
                for n in (1..=ours as u32).rev() {
                    if let Ok(bytes) = std::fs::read(log_path(&self.dir, &self.instance, n)) {
                        out.extend(bytes.split(|&b| b == b'\n').filter_map(parse));
                    }
                }
            }
            self.open_current();
            self.read_open_file(&mut out);
        }
        out
    }

    fn read_open_file(&mut self, out: &mut Vec<(u64, Stream, String)>) {
        let Some((file, _)) = &mut self.file else {
            return;
        };
        if file.metadata().is_ok_and(|m| m.len() < self.offset) {
            self.offset = 0; // truncated
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        // Only whole lines; a torn last one is read again next time.
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        out.extend(bytes[..end].split(|&b| b == b'\n').filter_map(parse));
        self.offset += end as u64 + 1;
    }
}

#[cfg(test)]
mod tests;
