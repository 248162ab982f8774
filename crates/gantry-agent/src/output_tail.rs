//! The end of a command's output, kept as it streams: at most a bound of
//! bytes in memory however much the command writes, and how many bytes
//! were cut before them, so the text can say so.

/// The last `max` bytes of a stream, and how many came before them.
#[derive(Debug)]
pub(crate) struct OutputTail {
    max: usize,
    kept: Vec<u8>,
    total: u64,
}

impl OutputTail {
    pub(crate) fn new(max: usize) -> OutputTail {
        OutputTail {
            max,
            kept: Vec::new(),
            total: 0,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if bytes.len() >= self.max {
            self.kept.clear();
            self.kept
                .extend_from_slice(&bytes[bytes.len() - self.max..]);
            return;
        }
        self.kept.extend_from_slice(bytes);
        // Cut in halves of the bound, not at every push.
        if self.kept.len() > self.max + self.max / 2 {
            let cut = self.kept.len() - self.max;
            self.kept.drain(..cut);
        }
    }

    /// The bytes cut before the text, and the text: from the first whole
    /// line after a cut (half a line would be half a secret, too).
    pub(crate) fn into_parts(mut self) -> (u64, String) {
        if self.kept.len() > self.max {
            let cut = self.kept.len() - self.max;
            self.kept.drain(..cut);
        }
        let mut start = 0;
        if self.total > self.kept.len() as u64
            && let Some(newline) = self.kept.iter().position(|b| *b == b'\n')
        {
            start = newline + 1;
        }
        let text = String::from_utf8_lossy(&self.kept[start..]).into_owned();
        (self.total - (self.kept.len() - start) as u64, text)
    }

    /// The text, after a line `[... N bytes cut]` when any was.
    pub(crate) fn into_text(self) -> String {
        match self.into_parts() {
            (0, text) => text,
            (cut, text) => format!("{}\n{text}", cut_line(cut)),
        }
    }
}

/// What stands for the output left out.
pub(crate) fn cut_line(bytes: u64) -> String {
    format!("[... {bytes} bytes cut]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_output_is_kept_whole() {
        let mut tail = OutputTail::new(64);
        tail.push(b"one\n");
        tail.push(b"two\n");
        assert_eq!(tail.into_parts(), (0, "one\ntwo\n".to_owned()));
    }

    #[test]
    fn a_long_output_keeps_its_last_whole_lines_and_says_how_much_was_cut() {
        let mut tail = OutputTail::new(1000);
        let mut written = 0;
        for n in 0..10_000 {
            let line = format!("line {n}\n");
            written += line.len();
            tail.push(line.as_bytes());
        }
        let (cut, text) = tail.into_parts();
        assert!(text.len() <= 1000, "{} bytes kept", text.len());
        assert!(text.starts_with("line "), "{text}");
        assert!(text.ends_with("line 9999\n"), "{text}");
        assert_eq!(cut + text.len() as u64, written as u64);
    }

    #[test]
    fn one_push_larger_than_the_bound_keeps_its_end() {
        let mut tail = OutputTail::new(4);
        tail.push(b"abcdefgh");
        assert_eq!(tail.into_parts(), (4, "efgh".to_owned()));
    }
}
