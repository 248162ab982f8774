//! What `gantry -v` shows of the way to the agents: each agent request with
//! its status and duration (INFO), each answer's body (DEBUG), each request's
//! body (TRACE), and each `ssh` command with its exit and duration (INFO).
//! They are `tracing` events; whoever runs the CLI decides where they go.
//!
//! Nothing here may show a secret value: bodies pass through a `Redactor`
//! that hides every value under `secrets`, credential-looking env values,
//! URL passwords, and every secret value a request carried before.

use std::ffi::OsString;
use std::sync::Mutex;
use std::time::Instant;

use gantry_core::redact::{Redactor, secret_values, url_passwords};
use hyper::{Method, StatusCode};

use crate::client::ClientError;

/// The trace of one host's agent connection.
pub(crate) struct Trace {
    host: String,
    /// The secret values this connection has carried so far.
    redactor: Mutex<Redactor>,
}

impl Trace {
    pub(crate) fn new(host: &str) -> Trace {
        Trace {
            host: host.to_owned(),
            redactor: Mutex::new(Redactor::default()),
        }
    }

    /// Before a request is sent: its body (TRACE). The secret values it
    /// carries are remembered at every level, so that no later answer or
    /// error (shown from -v on) shows them either.
    pub(crate) fn request(&self, method: &Method, path: &str, body: Body<'_>) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        self.learn(body);
        if tracing::enabled!(tracing::Level::TRACE) {
            let shown = self.shown(body);
            tracing::trace!("agent {}: → {method} {path} {shown}", self.host);
        }
    }

    /// Once the answer is in (or the request failed): method, path, status
    /// and duration (INFO); the answer's body (DEBUG).
    pub(crate) fn answered(
        &self,
        method: &Method,
        path: &str,
        started: Instant,
        answer: Result<(StatusCode, Body<'_>), &ClientError>,
    ) {
        let took = started.elapsed();
        match answer {
            Ok((status, body)) => {
                tracing::info!(
                    "agent {}: {method} {path} → {status} in {took:.1?}",
                    self.host
                );
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let shown = self.shown(body);
                    tracing::debug!("agent {}: ← {shown}", self.host);
                }
            }
            // Nothing listens (yet): a connect that polls for an agent it
            // started says so once per try, which -v spares the reader.
            Err(error @ ClientError::Connect(_)) => tracing::debug!(
                "agent {}: {method} {path} failed after {took:.1?}: {error}",
                self.host
            ),
            Err(error) => {
                let error = self.redactor().text(&error.to_string());
                tracing::info!(
                    "agent {}: {method} {path} failed after {took:.1?}: {error}",
                    self.host
                );
            }
        }
    }

    /// A transport program (`ssh ... gantry agent connect`) started.
    pub(crate) fn connection_started(&self, argv: &[OsString]) {
        tracing::info!(
            "ssh {}: {} (the agent's connection)",
            self.host,
            command_line(argv)
        );
    }

    /// A transport program ended, after `started`.
    pub(crate) fn connection_ended(&self, started: Instant, how: &str) {
        let took = started.elapsed();
        tracing::info!(
            "ssh {}: the agent's connection {how} after {took:.1?}",
            self.host
        );
    }

    /// Remembers the secret values `body` carries.
    fn learn(&self, body: Body<'_>) {
        if let Body::Bytes(bytes) = body
            && let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes)
        {
            self.redactor().learn(secret_values(&json));
        }
    }

    fn redactor(&self) -> std::sync::MutexGuard<'_, Redactor> {
        self.redactor.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shown(&self, body: Body<'_>) -> String {
        match body {
            Body::Bytes([]) => "(no body)".to_owned(),
            Body::Bytes(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(mut json) => {
                    self.redactor().json(&mut json);
                    json.to_string()
                }
                Err(_) => self.redactor().text(&String::from_utf8_lossy(bytes)),
            },
            Body::File(length) => format!("({length} bytes of a file)"),
            Body::Stream => "(a stream of lines)".to_owned(),
        }
    }
}

/// A body as the trace sees it.
#[derive(Clone, Copy)]
pub(crate) enum Body<'a> {
    Bytes(&'a [u8]),
    /// Read from disk as it is sent; never shown.
    File(u64),
    /// Handed on line by line as it arrives; never shown.
    Stream,
}

/// An `ssh` command that ran on `host`: its command line, its exit code
/// (None: killed by a signal, or it did not start) and its duration (INFO).
pub(crate) fn ssh_ran(host: &str, argv: &[OsString], code: Option<i32>, started: Instant) {
    let took = started.elapsed();
    let exit = code.map_or_else(|| "no exit code".to_owned(), |code| format!("exit {code}"));
    tracing::info!("ssh {host}: {} → {exit} in {took:.1?}", command_line(argv));
}

/// A command line as a POSIX shell would take it. Command lines carry no
/// secret values; a URL's password typed into one is hidden all the same.
fn command_line(argv: &[OsString]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|word| gantry_core::host::shell_quote(&word.to_string_lossy()))
        .collect();
    url_passwords(&words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_reads_as_a_shell_would_take_it() {
        let argv: Vec<OsString> = [
            "ssh",
            "-o",
            "ControlPath=/run/x/%C",
            "--",
            "web1",
            "echo it's",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            command_line(&argv),
            r"ssh -o ControlPath=/run/x/%C -- web1 'echo it'\''s'"
        );
    }

    #[test]
    fn a_secret_a_request_carried_is_hidden_in_every_body_after_it() {
        let trace = Trace::new("web1");
        let request = br#"{"secrets":{"API_TOKEN":"s3cr3t-value"}}"#;
        trace.learn(Body::Bytes(request));
        assert_eq!(
            trace.shown(Body::Bytes(request)),
            r#"{"secrets":{"API_TOKEN":"(redacted)"}}"#
        );
        assert_eq!(
            trace.shown(Body::Bytes(br#"{"log":"token s3cr3t-value"}"#)),
            r#"{"log":"token (redacted)"}"#
        );
        assert_eq!(
            trace.shown(Body::Bytes(b"not json: s3cr3t-value")),
            "not json: (redacted)"
        );
    }
}
