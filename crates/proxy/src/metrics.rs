//! Prometheus metrics. Per-route handles are looked up once when a table is built; the request
//! path then only does relaxed atomic adds (prometheus-client's own Histogram takes a lock on
//! every observation, so latency uses the lock-free [`AtomicHistogram`] below).

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Default)]
pub struct AtomicHistogram(Arc<HistInner>);

#[derive(Debug, Default)]
struct HistInner {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per-bucket counts: the encoder makes them cumulative (and writes f64::MAX as +Inf).
        let mut count = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, c) in self.0.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            buckets.push((BUCKETS.get(i).copied().unwrap_or(f64::MAX), n));
        }
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorKind {
    kind: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The process-wide metric families.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<RouteLabel, AtomicHistogram>,
    upstream_errors: Family<ErrorKind, Counter>,
    pub open_connections: Gauge,
    pub rejected_connections: Counter,
    /// Requests refused before routing (malformed, too large, too slow): 400, 408, 417, 431.
    pub rejected_requests: Counter,
}

/// Handles for one route, resolved once per table build.
pub struct RouteMetrics {
    by_class: [Counter; 5],
    latency: AtomicHistogram,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, secs: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.latency.observe(secs);
    }
}

/// Why a request could not be answered by an upstream.
#[derive(Clone, Copy, Debug)]
pub enum UpstreamError {
    Connect,
    Timeout,
    BadResponse,
    NoneAvailable,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::<RouteLabel, AtomicHistogram>::default();
        let upstream_errors = Family::<ErrorKind, Counter>::default();
        let open_connections = Gauge::default();
        let rejected_connections = Counter::default();
        let rejected_requests = Counter::default();
        registry.register(
            "requests",
            "Requests by route and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to end of response, by route",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests an upstream could not answer, by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections",
            open_connections.clone(),
        );
        registry.register(
            "rejected_connections",
            "Client connections closed at once because the connection cap was reached",
            rejected_connections.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused before routing: malformed, too large or too slow (400/408/417/431)",
            rejected_requests.clone(),
        );
        Metrics {
            rejected_requests,
            registry,
            requests,
            latency,
            upstream_errors,
            open_connections,
            rejected_connections,
        }
    }

    pub fn route(&self, route: &str) -> RouteMetrics {
        let counter = |status| {
            self.requests
                .get_or_create(&RouteStatus {
                    route: route.to_string(),
                    status,
                })
                .clone()
        };
        RouteMetrics {
            by_class: CLASSES.map(counter),
            latency: self
                .latency
                .get_or_create(&RouteLabel {
                    route: route.to_string(),
                })
                .clone(),
        }
    }

    pub fn upstream_error(&self, e: UpstreamError) {
        let kind = match e {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::BadResponse => "bad_response",
            UpstreamError::NoneAvailable => "none_available",
        };
        self.upstream_errors
            .get_or_create(&ErrorKind { kind })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
