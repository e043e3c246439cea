//! Every failure the sidecar produces, and the one place where it becomes an HTTP answer.
//!
//! Synthetic answers carry `x-bulwark-error: <kind>` so callers (and the next hop's breaker) can tell a
//! sidecar's own refusal from an upstream's answer.

use crate::classify::TrafficClass;
use crate::Response;
use http::{HeaderValue, StatusCode};
use std::time::Duration;

pub const H_ERROR: &str = "x-bulwark-error";
pub const H_CIRCUIT: &str = "x-bulwark-circuit";

/// An answer that must not be sent: the listener drops the connection instead (HTTP/1.1: the
/// socket closes without an answer, the client sees "connection closed before message completed",
/// curl 52; HTTP/2: the stream is reset). A policy marks its (placeholder) response with it in the
/// extensions — today the `reset` fault. A listener that does not honour it sends the placeholder,
/// which is still a failure (the fault's is a 502 with `x-bulwark-fault`).
#[derive(Clone, Debug, thiserror::Error)]
#[error("connection dropped: {reason}")]
pub struct DropConnection {
    /// Why, for logs (the fault id for an injected reset).
    pub reason: std::sync::Arc<str>,
}

impl DropConnection {
    /// The marker on `resp`, if it has one.
    pub fn of(resp: &Response) -> Option<Self> {
        resp.extensions().get::<DropConnection>().cloned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    Connect,
    PerTry,
    Deadline,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("rate limit exceeded ({scope}); retry after {retry_after:?}")]
    Throttled {
        scope: &'static str,
        retry_after: Duration,
    },
    #[error("overloaded: {class:?} request shed (concurrency limit {limit})")]
    Shed { class: TrafficClass, limit: usize },
    #[error("circuit open for upstream {upstream}: {reason}")]
    CircuitOpen {
        upstream: String,
        reason: String,
        retry_after: Duration,
    },
    #[error("{kind:?} timeout after {after:?} talking to {upstream}")]
    Timeout {
        upstream: String,
        kind: TimeoutKind,
        after: Duration,
    },
    #[error("cannot connect to upstream {upstream}: {msg}")]
    Connect { upstream: String, msg: String },
    #[error("upstream {upstream} failed: {msg}")]
    Upstream { upstream: String, msg: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no route for {0}")]
    NoRoute(String),
    /// The request's shape crashed or hung canaries: refused, and not worth retrying as is.
    #[error("refused: this request's shape is blacklisted as a query of death (id {id}, for {expires_in:?} more): {reason}")]
    QueryOfDeath {
        id: String,
        expires_in: Duration,
        reason: String,
    },
    /// The canary failed on this (new) request shape; it was not sent to the node.
    #[error("canary probe failed: {reason}")]
    ProbeStrike { reason: String },
    #[error("canary probe busy: {reason}")]
    ProbeBusy { reason: String },
    #[error("canary probe impossible: {reason}")]
    ProbeUnavailable { reason: String },
    /// The node is down for a planned outage and this request cannot be served elsewhere.
    #[error("node down for a planned outage; retry after {retry_after:?} or use another node")]
    PlannedOutage { retry_after: Duration },
}

impl ProxyError {
    /// A short machine-readable kind, used in the `x-bulwark-error` header and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttled",
            Self::Shed { .. } => "shed",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::Upstream { .. } => "upstream",
            Self::BadRequest(_) => "bad_request",
            Self::NoRoute(_) => "no_route",
            Self::QueryOfDeath { .. } => "query_of_death",
            Self::ProbeStrike { .. } => "probe_strike",
            Self::ProbeBusy { .. } => "probe_busy",
            Self::ProbeUnavailable { .. } => "probe_unavailable",
            Self::PlannedOutage { .. } => "planned_outage",
        }
    }

    /// Failures that originate between this sidecar and its upstream (connect refused, reset,
    /// timeout): they always count against the upstream's circuit.
    pub fn is_local_origin(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Connect { .. } | Self::Upstream { .. }
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Shed { .. } | Self::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute(_) => StatusCode::NOT_FOUND,
            // 4xx on purpose: the request itself is the problem, and a 5xx invites retries.
            Self::QueryOfDeath { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ProbeStrike { .. } => StatusCode::BAD_GATEWAY,
            Self::ProbeBusy { .. } | Self::ProbeUnavailable { .. } | Self::PlannedOutage { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The answer for this failure: status, a one-line plain-text reason, and headers that say why.
    pub fn into_response(self) -> Response {
        let status = self.status();
        let mut r = http::Response::new(crate::full(format!("{self}\n")));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(H_ERROR, HeaderValue::from_static(self.kind()));
        let retry_after = match &self {
            Self::Throttled { retry_after, .. }
            | Self::CircuitOpen { retry_after, .. }
            | Self::PlannedOutage { retry_after } => Some(*retry_after),
            Self::Shed { .. } | Self::ProbeBusy { .. } | Self::ProbeUnavailable { .. } => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        };
        if let Some(d) = retry_after {
            // Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds).
            let secs = d.as_millis().div_ceil(1000).max(1);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs as u64));
        }
        if let Self::QueryOfDeath { id, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(&format!("blocked; id={id}")) {
                h.insert(crate::policy::qod::H_QOD, v);
            }
        }
        if let Self::CircuitOpen { reason, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(&format!("open; reason={reason}")) {
                h.insert(H_CIRCUIT, v);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_say_why() {
        let r = ProxyError::Throttled {
            scope: "client",
            retry_after: Duration::from_millis(1200),
        }
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()[H_ERROR], "throttled");
        let r = ProxyError::CircuitOpen {
            upstream: "n1".into(),
            reason: "consecutive_failures".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[H_CIRCUIT], "open; reason=consecutive_failures");
        assert!(ProxyError::Connect {
            upstream: "x".into(),
            msg: "refused".into()
        }
        .is_local_origin());
        assert!(!ProxyError::Shed {
            class: TrafficClass::Client,
            limit: 1
        }
        .is_local_origin());
    }
}
