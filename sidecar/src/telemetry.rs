//! Logs and traces. Logs: `tracing` with a filter the admin API can change at run time, plain or
//! JSON. Traces: when `telemetry.otlp_endpoint` is set, spans go to an OTLP/gRPC collector (tonic,
//! batched on the tokio runtime — never the blocking HTTP client) and W3C `traceparent` is continued.

use crate::config::{LogFormat, TelemetryConfig};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

#[derive(Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl LogHandle {
    pub fn set_level(&self, directive: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(directive)
            .map_err(|e| format!("invalid log level {directive:?}: {e}"))?;
        self.0.reload(f).map_err(|e| e.to_string())
    }

    pub fn level(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }
}

/// Keeps the tracer provider alive; flushes pending spans when dropped at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime (the OTLP exporter uses it).
pub fn init(
    level: &str,
    format: LogFormat,
    tel: &TelemetryConfig,
) -> Result<(LogHandle, Telemetry), String> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("SIDECAR_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal();
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (otel, provider) = match &tel.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    tel.sample_ratio,
                ))))
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(tel.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("bulwark-sidecar");
            // Only our request spans go to the collector, whatever the log level says.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() == REQUEST_SPAN_TARGET
                }));
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok((LogHandle(handle), Telemetry { provider }))
}

pub const REQUEST_SPAN_TARGET: &str = "bulwark::request";

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A server span for one proxied request: child of the caller's `traceparent` if any, and made the
/// parent of the upstream request by rewriting `traceparent`.
pub fn request_span(
    listener: &str,
    route: &str,
    headers: &mut http::HeaderMap,
    method: &http::Method,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: "bulwark::request",
        "proxy",
        otel.kind = "server",
        listener = %listener,
        http.route = %route,
        http.request.method = %method,
        http.response.status_code = tracing::field::Empty,
    );
    let prop = TraceContextPropagator::new();
    let parent = prop.extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    prop.inject_context(&span.context(), &mut HeaderInjector(headers));
    span
}
