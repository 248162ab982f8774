//! The output contract: a report on stdout, as text or as exactly one JSON
//! document; errors as `{"error": {...}}` in JSON mode or rustc-style on
//! stderr in text mode; logs and progress only ever on stderr.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use gantry_config::Diagnostics;
use gantry_core::Code;
use serde::Serialize;
use serde_json::json;

use crate::args::OutputMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Text,
    Json,
}

impl Mode {
    pub fn resolve(requested: OutputMode) -> Mode {
        match requested {
            OutputMode::Text => Mode::Text,
            OutputMode::Json => Mode::Json,
            OutputMode::Auto if std::io::stdout().is_terminal() => Mode::Text,
            OutputMode::Auto => Mode::Json,
        }
    }
}

/// A report a command returns: JSON from its fields, text from `text`.
pub trait Report: Serialize {
    fn text(&self) -> String;
}

/// An error as every command prints it.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub exit: u8,
    pub message: String,
    pub hint: Option<String>,
    pub diagnostics: Option<Box<Diagnostics>>,
    /// More for scripts: the report of a failed deploy.
    pub details: Option<Box<serde_json::Value>>,
}

impl Failure {
    /// A failure with `code`'s exit class and no hint.
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            exit: code.exit_class().code(),
            message: message.into(),
            hint: None,
            diagnostics: None,
            details: None,
        }
    }

    pub fn with_hint(self, hint: impl Into<String>) -> Failure {
        Failure {
            hint: Some(hint.into()),
            ..self
        }
    }

    /// Reading or writing something failed.
    pub fn io(what: &str, error: std::io::Error) -> Failure {
        Failure::new(Code::IoFailed, format!("cannot {what}: {error}"))
    }
}

impl From<gantry_core::Error> for Failure {
    fn from(error: gantry_core::Error) -> Self {
        Failure {
            code: error.code(),
            exit: error.exit_class().code(),
            message: error.to_string(),
            hint: error.hint(),
            diagnostics: error.diagnostics().cloned().map(Box::new),
            details: error.details().cloned().map(Box::new),
        }
    }
}

pub struct Printer {
    pub mode: Mode,
    pub quiet: bool,
    pub color: bool,
    /// Whether stdout is a stream of JSON lines already (`gantry logs`): a
    /// failure after them is one more line, so a line reader reads it too.
    streamed: AtomicBool,
}

impl Printer {
    pub fn new(mode: Mode, quiet: bool) -> Printer {
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::io::stderr().is_terminal();
        Printer {
            mode,
            quiet,
            color,
            streamed: AtomicBool::new(false),
        }
    }

    /// A line for people, on stderr; silent with -q and in JSON mode.
    pub fn status(&self, line: &str) {
        if !self.quiet && self.mode == Mode::Text {
            eprintln!("{line}");
        }
    }

    pub fn report(&self, report: &impl Report) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match self.mode {
            Mode::Json => {
                serde_json::to_writer_pretty(&mut stdout, report)?;
                writeln!(stdout)
            }
            Mode::Text => {
                let text = report.text();
                stdout.write_all(text.as_bytes())?;
                if !text.is_empty() && !text.ends_with('\n') {
                    writeln!(stdout)?;
                }
                Ok(())
            }
        }
    }

    /// Text that must reach stdout as it is, whatever the mode: a script a
    /// shell reads, a man page.
    pub fn verbatim(&self, text: &str) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()
    }

    /// One log line: `[time] service/instance line` in text, a JSON object a line in JSON.
    pub fn log_line(&self, line: &gantry_core::agent_api::LogLine) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match self.mode {
            Mode::Json => {
                self.streamed.store(true, Ordering::Relaxed);
                serde_json::to_writer(&mut stdout, line)?;
                writeln!(stdout)?;
            }
            Mode::Text => {
                let secs = line.ts / 1000;
                let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
                let text = printable(&line.line, &['\t']);
                match &line.host {
                    Some(host) => writeln!(
                        stdout,
                        "{h:02}:{m:02}:{s:02} {host} {} | {text}",
                        line.service
                    )?,
                    None => writeln!(stdout, "{h:02}:{m:02}:{s:02} {} | {text}", line.service)?,
                }
            }
        }
        stdout.flush()
    }

    pub fn failure(&self, failure: &Failure) {
        match self.mode {
            Mode::Json => {
                let mut stdout = std::io::stdout().lock();
                let _ = if self.streamed.load(Ordering::Relaxed) {
                    serde_json::to_writer(&mut stdout, &failure_json(failure))
                } else {
                    serde_json::to_writer_pretty(&mut stdout, &failure_json(failure))
                };
                let _ = writeln!(stdout);
            }
            Mode::Text => eprint!("{}", render_failure(failure, self.color)),
        }
    }

    /// The failure as one JSON line on stderr, whatever the mode: for a
    /// command whose stdout is a protocol (`gantry agent connect`), read by
    /// the CLI on the other end of SSH.
    pub fn failure_line(&self, failure: &Failure) {
        eprintln!("{}", failure_json(failure));
    }
}

fn failure_json(failure: &Failure) -> serde_json::Value {
    let mut error = json!({
        "code": failure.code,
        "message": failure.message,
        "exit_code": failure.exit,
    });
    if let Some(hint) = &failure.hint {
        error["hint"] = json!(hint);
    }
    if let Some(d) = &failure.diagnostics {
        error["errors"] = json!(d.items);
        // Past the first errors, only their number.
        if d.more > 0 {
            error["more_errors"] = json!(d.more);
        }
    }
    if let Some(details) = &failure.details {
        error["details"] = (**details).clone();
    }
    json!({ "error": error })
}

/// Progress of long operations as lines on stderr (text mode, not with -q).
pub struct StderrProgress<'a>(pub &'a Printer);

impl gantry_core::progress::Progress for StderrProgress<'_> {
    /// Text: `· message` lines. JSON: one `{"progress": message}` object a
    /// line, so a script can follow a long deploy while stdout stays one report.
    fn step(&self, message: &str) {
        match self.0.mode {
            Mode::Text => self.0.status(&format!("· {message}")),
            Mode::Json if !self.0.quiet => eprintln!("{}", json!({ "progress": message })),
            Mode::Json => {}
        }
    }
}

impl StderrProgress<'_> {
    /// Text: the plan a deploy is about to carry out, as `gantry plan`
    /// prints it, on stderr (stdout stays the one report).
    pub fn plan(&self, report: &gantry_core::plan::PlanReport) {
        let text = report.text().replacen(" (nothing was changed)", "", 1);
        self.0.status(text.trim_end());
    }
}

/// rustc-style text: each diagnostic with its source line and a caret, then a summary.
/// Text made safe for a terminal: control characters (escape sequences,
/// carriage returns, backspaces) and bidirectional overrides are shown
/// escaped (`\u{1b}`) instead of acted on, except those in `keep`. What a
/// service prints must not move the cursor, retitle the window or hide a
/// line. JSON output needs none of this: its encoding escapes them.
pub(crate) fn printable<'a>(text: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    let unsafe_char = |c: char| {
        !keep.contains(&c)
            && (c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

pub fn render_failure(failure: &Failure, color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    let Some(diagnostics) = &failure.diagnostics else {
        // A deploy's failure quotes the service's last output.
        let message = printable(&failure.message, &['\t', '\n']);
        let mut group = vec![Group::with_title(Level::ERROR.primary_title(&*message))];
        let hint = failure
            .hint
            .as_deref()
            .map(|hint| printable(hint, &['\t', '\n']));
        if let Some(hint) = &hint {
            group.push(Group::with_title(Level::HELP.secondary_title(&**hint)));
        }
        out.push_str(&renderer.render(&group));
        out.push('\n');
        return out;
    };
    for d in &diagnostics.items {
        let label = if d.path.0.is_empty() {
            String::new()
        } else {
            format!("at `{}`", d.path)
        };
        // A span must cover at least one character for the caret to show.
        let source: &str = &diagnostics.source;
        let start = d.span.start.min(source.len());
        // Keep the caret on the line it starts on: a span that runs into the line
        // break would draw a second, empty line.
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let end = d.span.end.max(start).min(line_end);
        let end = if end == start {
            source[start..]
                .char_indices()
                .nth(1)
                .map_or(source.len(), |(i, _)| start + i)
        } else {
            end
        };
        let mut groups = vec![
            Level::ERROR
                .primary_title(d.message.as_str())
                .id(d.code)
                .element(
                    Snippet::source(source).path(d.file.as_str()).annotation(
                        AnnotationKind::Primary
                            .span(start..end)
                            .label(label.as_str()),
                    ),
                ),
        ];
        if let Some(hint) = &d.hint {
            groups.push(Group::with_title(
                Level::HELP.secondary_title(hint.as_str()),
            ));
        }
        out.push_str(&renderer.render(&groups));
        out.push_str("\n\n");
    }
    if diagnostics.more > 0 {
        out.push_str(&format!(
            "and {} more error{}, not shown\n\n",
            diagnostics.more,
            if diagnostics.more == 1 { "" } else { "s" }
        ));
    }
    let count = diagnostics.total();
    out.push_str(&format!(
        "error: {} has {count} error{}\n",
        diagnostics.file,
        if count == 1 { "" } else { "s" }
    ));
    out
}
