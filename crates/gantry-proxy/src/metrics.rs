//! What `GET /metrics` reports, in the Prometheus text format: requests by
//! service and status class, their latency, and upstream errors. Handles are
//! looked up once per route table, so a request only bumps atomics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The service label of requests that matched no route.
pub(crate) const NO_ROUTE: &str = "-";

/// Seconds; from half a millisecond to half a minute.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    kind: &'static str,
}

/// Why a request to an upstream failed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UpstreamError {
    /// It refused the connection, or did not accept it in time.
    Connect,
    /// No response headers within the response timeout.
    Timeout,
    /// The connection failed after it was made (reset, bad response).
    Response,
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Response => "response",
        }
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    websockets: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gantry_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ServiceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let websockets = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by service and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response, by service",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed attempts to reach an upstream, by upstream and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "websockets_open",
            "WebSocket connections being relayed",
            websockets.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            websockets,
        }
    }

    /// The handles one service's requests are counted with.
    pub(crate) fn service(&self, service: &str) -> Arc<ServiceMetrics> {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            self.requests.get_or_create_owned(&RequestLabels {
                service: service.to_owned(),
                class,
            })
        });
        let latency = self.latency.get_or_create_owned(&ServiceLabels {
            service: service.to_owned(),
        });
        Arc::new(ServiceMetrics { classes, latency })
    }

    pub(crate) fn upstream_error(&self, upstream: SocketAddr, kind: UpstreamError) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.to_string(),
                kind: kind.label(),
            })
            .inc();
    }

    pub(crate) fn websockets(&self) -> &Gauge {
        &self.websockets
    }

    /// The text `GET /metrics` answers.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

pub(crate) struct ServiceMetrics {
    classes: [Counter; 5],
    latency: Histogram,
}

impl ServiceMetrics {
    pub(crate) fn record(&self, status: StatusCode, took: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.latency.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_service_and_class() {
        let metrics = Metrics::new();
        let web = metrics.service("web");
        web.record(StatusCode::OK, Duration::from_millis(2));
        web.record(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(2));
        metrics.upstream_error(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            UpstreamError::Connect,
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"gantry_proxy_requests_total{service="web",class="2xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gantry_proxy_requests_total{service="web",class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gantry_proxy_request_duration_seconds_count{service="web"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"gantry_proxy_upstream_errors_total{upstream="127.0.0.1:9",kind="connect"} 1"#
            ),
            "{text}"
        );
    }
}
