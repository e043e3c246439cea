//! Logs: `tracing` with a filter that the admin API can change at run time, plain or JSON.

use crate::config::LogFormat;
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

pub fn init(level: &str, format: LogFormat) -> LogHandle {
    let filter = EnvFilter::try_from_env("SIDECAR_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    LogHandle(handle)
}
