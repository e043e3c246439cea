//! Prometheus metrics of the data path (RED per listener, route, class and upstream; connections;
//! TCP bytes). Policy layers register their own families beside these in one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub route: String,
    pub class: String,
    pub upstream: String,
    /// `2xx`, `4xx`, `5xx`, …
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub listener: String,
    /// [`crate::error::ProxyError::kind`].
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    /// `upstream` (towards the node) or `downstream` (towards the client).
    pub direction: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct ProxyMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily<RouteLabels>,
    pub errors: Family<ErrorLabels, Counter>,
    pub connections: Family<ListenerLabels, Counter>,
    pub active_connections: Family<ListenerLabels, Gauge>,
    pub tcp_bytes: Family<BytesLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: String,
}

/// The bucket bounds of every latency histogram: 100 µs … ~13 s.
pub fn latency_bounds() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 18)
}

pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_bounds())
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            connections: Family::default(),
            active_connections: Family::default(),
            tcp_bytes: Family::default(),
            config_reloads: Family::default(),
        }
    }
}

impl ProxyMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "requests",
            "Requests answered, by listener, route, class, upstream and status class",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to response headers",
            self.duration.clone(),
        );
        r.register(
            "proxy_errors",
            "Requests answered by the sidecar itself, by error kind",
            self.errors.clone(),
        );
        r.register(
            "connections",
            "Accepted downstream connections",
            self.connections.clone(),
        );
        r.register(
            "active_connections",
            "Open downstream connections",
            self.active_connections.clone(),
        );
        r.register(
            "tcp_bytes",
            "Bytes proxied by TCP listeners",
            self.tcp_bytes.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads by result",
            self.config_reloads.clone(),
        );
    }
}

pub fn status_class(s: http::StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
