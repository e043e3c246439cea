//! `/live`, `/ready`, `/metrics`, `/config`, `/stats`: what a supervisor, Prometheus and an operator
//! read. Readiness is false while draining and during the local node's planned outage, so load
//! balancers and peers move away before the node does.

use super::error::AdminError;
use super::reply::{json, text, Reply};
use crate::config::Config;
use crate::server::SidecarState;
use http::{header, HeaderValue, Method, StatusCode};
use std::sync::atomic::Ordering;

pub fn handle(state: &SidecarState, cfg: &Config, method: &Method, path: &str) -> Reply {
    if method != Method::GET {
        return Err(AdminError::method_not_allowed("GET"));
    }
    Ok(match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => ready(state),
        "/metrics" => metrics(state)?,
        "/config" => json(&cfg.redacted()),
        "/stats" => {
            let in_flight: std::collections::BTreeMap<String, usize> =
                state.in_flight().into_iter().collect();
            json(&serde_json::json!({
                "open_connections": state.conns.count(),
                "draining": state.draining.load(Ordering::SeqCst),
                "in_flight": in_flight,
            }))
        }
        _ => return Err(super::unknown_path()),
    })
}

fn ready(state: &SidecarState) -> crate::Response {
    if state.draining.load(Ordering::SeqCst) {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if let Some((phase, _)) = state.outages.local_phase() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("planned outage: {phase:?}\n").to_lowercase(),
        )
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

fn metrics(state: &SidecarState) -> Reply {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &state.registry)
        .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut r = text(StatusCode::OK, out);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(r)
}
