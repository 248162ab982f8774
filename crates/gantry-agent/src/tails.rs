//! The last lines each instance printed, kept in memory: what `status` and a
//! failed deploy show without reading log files. The relays write the files;
//! the supervisor feeds this from them as they grow.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use gantry_core::agent_api::Stream;

use crate::process::LogCursor;

/// Lines kept per instance.
const KEEP: usize = 200;

struct Tail {
    cursor: LogCursor,
    lines: VecDeque<(u64, Stream, String)>,
}

#[derive(Default)]
pub struct Tails {
    inner: Mutex<HashMap<String, Tail>>,
}

impl Tails {
    /// Starts keeping the tail of `instance` (from the start of its log), if not already.
    pub fn follow(&self, log_dir: &Path, instance: &str) {
        let mut tails = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        tails.entry(instance.to_owned()).or_insert_with(|| Tail {
            cursor: LogCursor::at_start(log_dir, instance),
            lines: VecDeque::with_capacity(KEEP),
        });
    }

    /// Reads what every followed instance wrote since the last call.
    pub fn poll(&self) {
        let mut tails = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        tails.values_mut().for_each(Self::read);
    }

    fn read(tail: &mut Tail) {
        for line in tail.cursor.poll() {
            if tail.lines.len() == KEEP {
                tail.lines.pop_front();
            }
            tail.lines.push_back(line);
        }
    }

    /// Stops keeping an instance's tail (it was stopped on purpose).
    pub fn forget(&self, instance: &str) {
        let mut tails = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        tails.remove(instance);
    }

    /// The last `n` stderr lines of an instance, if its tail is kept,
    /// including what it wrote since the last poll.
    pub fn stderr(&self, instance: &str, n: usize) -> Option<Vec<String>> {
        let mut tails = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tail = tails.get_mut(instance)?;
        Self::read(tail);
        let tail = &*tail;
        let lines: Vec<String> = tail
            .lines
            .iter()
            .filter(|(_, stream, _)| *stream == Stream::Stderr)
            .map(|(_, _, line)| line.clone())
            .collect();
        Some(lines[lines.len().saturating_sub(n)..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_of_each_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("i-1.log");
        let mut text = String::new();
        for n in 0..300 {
            let stream = if n % 2 == 0 { "stderr" } else { "stdout" };
            text.push_str(&format!(
                "{{\"ts\":{n},\"stream\":\"{stream}\",\"line\":\"line {n}\"}}\n"
            ));
        }
        std::fs::write(&log, text).expect("write");
        let tails = Tails::default();
        tails.follow(dir.path(), "i-1");
        tails.poll();
        let last = tails.stderr("i-1", 2).expect("followed");
        assert_eq!(last, ["line 296", "line 298"]);
        assert_eq!(tails.stderr("i-1", 1000).expect("followed").len(), KEEP / 2);
        tails.forget("i-1");
        assert!(tails.stderr("i-1", 2).is_none());
    }
}
