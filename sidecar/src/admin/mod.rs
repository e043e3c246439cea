//! Admin API (Envoy-style): one router, one error type ([`error::AdminError`], answered as the
//! status and `{"error": "..."}`), one module per resource:
//!
//! | path | module |
//! |---|---|
//! | `/live` `/ready` `/metrics` `/config` `/stats` | `health.rs` |
//! | `/circuits` | `circuits.rs` |
//! | `/log-level` | `logging.rs` |
//! | `/reload` | `reload.rs` |
//! | `/faults` | `faults.rs` |
//! | `/qod/...` | `qod.rs` |
//! | `/outages/...` | `outages.rs` |
//! | `/brownout` | `brownout.rs` |
//! | `/split/{listener}` | `split.rs` |
//!
//! `api.rs` and `client.rs` are the client side: the request/response types and a typed client
//! that `chaos` (and `canary`) use instead of the data plane's internals.
//!
//! Loopback by default; when a token is configured every call needs `Authorization: Bearer`.
//! Adding a resource: its module with `handle(...) -> Reply`, one arm in [`route`], and its
//! types and client methods in `api.rs`/`client.rs`.

pub mod api;
mod brownout;
mod circuits;
pub mod client;
pub mod error;
mod faults;
mod health;
mod logging;
mod outages;
mod qod;
mod reload;
mod reply;
mod split;

use crate::server::SidecarState;
use crate::Response;
use error::AdminError;
use http::header;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(
    tcp: TcpListener,
    shared: Arc<SidecarState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = tcp.accept() => match r { Ok(v) => v, Err(_) => continue },
            _ = shutdown.changed() => break,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The paths this API knows, for the 404 answer.
const PATHS: &str =
    "/metrics /ready /live /config /circuits /stats /log-level /reload /faults /qod /outages /brownout /split";

fn unknown_path() -> AdminError {
    AdminError::not_found(format!("unknown admin path; try {PATHS}"))
}

async fn route(state: &SidecarState, req: http::Request<Incoming>) -> Response {
    let cfg = state.config.load_full();
    if let Err(e) = authorize(cfg.admin.token.as_deref(), req.headers()) {
        return e.into_response();
    }
    let method = req.method().clone();
    let path = req.uri().path();
    let resource = path.split('/').nth(1).unwrap_or_default();
    let reply = match resource {
        "live" | "ready" | "metrics" | "config" | "stats" => {
            health::handle(state, &cfg, &method, path)
        }
        "circuits" if path == "/circuits" => circuits::handle(state, &method),
        "log-level" if path == "/log-level" => logging::handle(state, req).await,
        "reload" if path == "/reload" => reload::handle(state, &method),
        "faults" => faults::handle(state, req).await,
        "qod" => qod::handle(state, req).await,
        "outages" => outages::handle(state, &cfg, req).await,
        "brownout" if path == "/brownout" => brownout::handle(state, req).await,
        "split" => split::handle(state, &cfg, req).await,
        _ => Err(unknown_path()),
    };
    reply.unwrap_or_else(AdminError::into_response)
}

/// With a token configured, every call must carry it as a bearer token.
fn authorize(token: Option<&str>, headers: &http::HeaderMap) -> Result<(), AdminError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token) {
        Ok(())
    } else {
        Err(AdminError::new(
            http::StatusCode::UNAUTHORIZED,
            "admin token required (Authorization: Bearer …)",
        ))
    }
}
