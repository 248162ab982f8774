//! One request's passage through the proxy, recorded when it ends: its
//! status class and latency in the metrics, and one JSON line in the access
//! log. It ends when the response body is done or dropped (or, for a
//! WebSocket, when the tunnel closes), so the duration covers the whole
//! response, not just its headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, StatusCode};
use serde::Serialize;

use crate::metrics::ServiceMetrics;

/// Where access-log lines go: a thread that writes them to the proxy's log
/// (`log`), so a slow terminal or pipe never holds up a request.
#[derive(Clone)]
pub(crate) struct AccessLog {
    lines: Option<mpsc::Sender<String>>,
}

impl AccessLog {
    pub(crate) fn stderr() -> AccessLog {
        let (lines, received) = mpsc::channel::<String>();
        let spawned = std::thread::Builder::new()
            .name("gantry-proxy-log".to_owned())
            .spawn(move || write_lines(&received));
        AccessLog {
            lines: spawned.ok().map(|_| lines),
        }
    }

    pub(crate) fn off() -> AccessLog {
        AccessLog { lines: None }
    }
}

/// Writes lines as they come, those waiting together; ends when every
/// sender is gone.
fn write_lines(received: &mpsc::Receiver<String>) {
    while let Ok(mut lines) = received.recv() {
        while let Ok(line) = received.try_recv() {
            lines.push_str(&line);
        }
        crate::log::write(&lines);
    }
}

/// What the access log says about a request, gathered as it is routed.
pub(crate) struct Entry {
    pub(crate) method: Method,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) client: IpAddr,
    pub(crate) request_id: HeaderValue,
    pub(crate) service: Option<Arc<str>>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    service: Option<&'a str>,
    upstream: Option<SocketAddr>,
    request_id: &'a str,
    client: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

pub(crate) struct Exchange {
    started: Instant,
    status: StatusCode,
    upstream: Option<SocketAddr>,
    error: Option<&'static str>,
    metrics: Arc<ServiceMetrics>,
    log: Option<(mpsc::Sender<String>, Box<Entry>)>,
}

impl Exchange {
    /// `entry` is asked for only when the access log is on.
    pub(crate) fn start(
        started: Instant,
        metrics: Arc<ServiceMetrics>,
        log: &AccessLog,
        entry: impl FnOnce() -> Entry,
    ) -> Exchange {
        Exchange {
            started,
            status: StatusCode::OK,
            upstream: None,
            error: None,
            metrics,
            log: log
                .lines
                .as_ref()
                .map(|lines| (lines.clone(), Box::new(entry()))),
        }
    }

    pub(crate) fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    pub(crate) fn set_upstream(&mut self, upstream: SocketAddr) {
        self.upstream = Some(upstream);
    }

    /// The response did not reach its end: said in the access log.
    pub(crate) fn set_error(&mut self, error: &'static str) {
        self.error = Some(error);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.metrics.record(self.status, took);
        let Some((lines, entry)) = self.log.take() else {
            return;
        };
        let line = Line {
            time: rfc3339(SystemTime::now()),
            method: entry.method.as_str(),
            host: &entry.host,
            path: &entry.path,
            status: self.status.as_u16(),
            duration_ms: (took.as_secs_f64() * 1e6).round() / 1e3,
            service: entry.service.as_deref(),
            upstream: self.upstream,
            request_id: entry.request_id.to_str().unwrap_or("-"),
            client: entry.client,
            error: self.error,
        };
        if let Ok(mut text) = serde_json::to_string(&line) {
            text.push('\n');
            let _ = lines.send(text);
        }
    }
}

/// `2026-04-14T09:30:12.345Z`.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil: the Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_exchange_writes_one_json_line_when_it_ends() {
        let (lines, received) = mpsc::channel();
        let log = AccessLog { lines: Some(lines) };
        let metrics = crate::metrics::Metrics::new();
        let mut exchange =
            Exchange::start(Instant::now(), metrics.service("web"), &log, || Entry {
                method: Method::POST,
                host: "shop.test".to_owned(),
                path: "/cart\"quoted\"".to_owned(),
                client: IpAddr::from([10, 0, 0, 7]),
                request_id: HeaderValue::from_static("abc"),
                service: Some(Arc::from("web")),
            });
        exchange.set_upstream(SocketAddr::from(([127, 0, 0, 1], 3000)));
        exchange.set_status(StatusCode::CREATED);
        drop(exchange);
        let line = received.try_recv().expect("a line");
        assert!(line.ends_with('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["host"], "shop.test");
        assert_eq!(json["path"], "/cart\"quoted\"");
        assert_eq!(json["status"], 201);
        assert_eq!(json["upstream"], "127.0.0.1:3000");
        assert_eq!(json["request_id"], "abc");
        assert_eq!(json["service"], "web");
        assert_eq!(json["client"], "10.0.0.7");
        assert!(json["duration_ms"].is_number());
        assert!(json.get("error").is_none());
    }

    #[test]
    fn with_the_log_off_nothing_is_gathered() {
        let metrics = crate::metrics::Metrics::new();
        let exchange = Exchange::start(
            Instant::now(),
            metrics.service("web"),
            &AccessLog::off(),
            || unreachable!("the entry is not built when the log is off"),
        );
        drop(exchange);
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_776_159_012_345);
        assert_eq!(rfc3339(t), "2026-04-14T09:30:12.345Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
