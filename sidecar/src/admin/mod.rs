//! Admin API (Envoy-style): `/metrics`, `/ready`, `/live`, `/config`, `/circuits`, `/log-level`,
//! `/reload`. Loopback by default; when bound elsewhere every call needs `Authorization: Bearer`.

pub mod api;
pub mod client;

use crate::server::SidecarState;
use crate::{full, Response};
use http::{header, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
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

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = http::Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("ct"),
    );
    r
}

fn json(v: &impl serde::Serialize) -> Response {
    let mut r = http::Response::new(full(serde_json::to_vec_pretty(v).expect("json")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("ct"),
    );
    r
}

async fn route(shared: &SidecarState, req: http::Request<Incoming>) -> Response {
    let cfg = shared.config.load_full();
    if let Some(token) = cfg.admin.token.as_deref().filter(|t| !t.is_empty()) {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == token);
        if !ok {
            return text(
                StatusCode::UNAUTHORIZED,
                "admin token required (Authorization: Bearer …)\n",
            );
        }
    }
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (Method::GET, "/ready") => {
            if shared.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Some((phase, _)) = shared.outages.local_phase() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("planned outage: {phase:?}\n").to_lowercase(),
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (Method::GET, "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &shared.registry) {
                Ok(()) => {
                    let mut r = text(StatusCode::OK, out);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8"
                            .parse()
                            .expect("ct"),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (Method::GET, "/config") => json(&cfg.redacted()),
        (Method::GET, "/circuits") => json(&shared.breakers.snapshot()),
        (Method::GET, "/stats") => {
            let in_flight: std::collections::BTreeMap<String, usize> =
                shared.in_flight().into_iter().collect();
            json(&serde_json::json!({
                "open_connections": shared.conns.count(),
                "draining": shared.draining.load(Ordering::SeqCst),
                "in_flight": in_flight,
            }))
        }
        (Method::GET, "/log-level") => match &shared.log {
            Some(l) => text(StatusCode::OK, format!("{}\n", l.level())),
            None => text(
                StatusCode::NOT_FOUND,
                "logging is not managed by this process\n",
            ),
        },
        (Method::PUT, "/log-level") | (Method::POST, "/log-level") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let level = String::from_utf8_lossy(&body).trim().to_string();
            match &shared.log {
                Some(l) => match l.set_level(&level) {
                    Ok(()) => {
                        tracing::info!(%level, "log level changed");
                        text(StatusCode::OK, format!("{level}\n"))
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
                None => text(
                    StatusCode::NOT_FOUND,
                    "logging is not managed by this process\n",
                ),
            }
        }
        (Method::GET, "/faults") => json(&crate::policy::fault::handle_list(&shared.faults)),
        (Method::DELETE, "/faults") => json(&crate::policy::fault::handle_clear(&shared.faults)),
        (Method::POST, "/faults") => {
            let body = match http_body_util::BodyExt::collect(req.into_body()).await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
            };
            match crate::policy::fault::handle_add(&shared.faults, &body) {
                Ok(v) => {
                    let mut r = json(&v);
                    *r.status_mut() = StatusCode::CREATED;
                    r
                }
                Err(e) => fault_error(e),
            }
        }
        (Method::DELETE, p) if p.starts_with("/faults/") => {
            match crate::policy::fault::handle_delete(&shared.faults, &p["/faults/".len()..]) {
                Ok(()) => text(StatusCode::NO_CONTENT, ""),
                Err(e) => fault_error(e),
            }
        }
        (m, p) if p == "/qod" || p.starts_with("/qod/") => {
            let (m, p) = (m.clone(), p.to_string());
            let q = req.uri().query().map(str::to_string);
            let body = match http_body_util::BodyExt::collect(req.into_body()).await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
            };
            match crate::policy::qod::admin::handle(&shared.qod, &m, &p, q.as_deref(), &body) {
                Some((status, _)) if status == StatusCode::NO_CONTENT => text(status, ""),
                Some((status, v)) => {
                    let mut r = json(&v);
                    *r.status_mut() = status;
                    r
                }
                None => text(StatusCode::NOT_FOUND, "unknown admin path\n"),
            }
        }
        (Method::GET, "/brownout") => text(StatusCode::OK, format!("{}\n", shared.brownout.mode())),
        (Method::PUT, "/brownout") | (Method::POST, "/brownout") => {
            let body = match http_body_util::BodyExt::collect(req.into_body()).await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
            };
            match shared.brownout.set(&String::from_utf8_lossy(&body)) {
                Ok(()) => {
                    tracing::warn!(mode = shared.brownout.mode(), "brownout switched");
                    text(StatusCode::OK, format!("{}\n", shared.brownout.mode()))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Method::GET, "/outages") => json(&shared.outages.list()),
        (Method::POST, "/outages") | (Method::POST, "/outages/announce") => {
            let announce = req.uri().path() == "/outages/announce";
            let body = match http_body_util::BodyExt::collect(req.into_body()).await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
            };
            if announce {
                return match serde_json::from_slice::<crate::policy::outage::Outage>(&body) {
                    Ok(o) => {
                        shared.outages.receive(o);
                        text(StatusCode::OK, "ok\n")
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("bad announcement: {e}\n")),
                };
            }
            let r: crate::policy::outage::OutageRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad outage: {e}\n")),
            };
            let upstreams = cfg
                .listeners
                .iter()
                .filter(|l| l.direction == crate::config::Direction::Inbound)
                .map(|l| l.listen.to_string())
                .collect();
            match shared.outages.create(
                r,
                &cfg.admin.listen.to_string(),
                upstreams,
                &cfg.mesh.peers,
                cfg.mesh.token.as_deref(),
            ) {
                Ok(o) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    let mut r = json(&crate::policy::outage::Listed {
                        status: o.status(now),
                        outage: o,
                        scope: "local",
                    });
                    *r.status_mut() = StatusCode::CREATED;
                    r
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Method::DELETE, p) if p.starts_with("/outages/") => {
            let id = &p["/outages/".len()..];
            if shared
                .outages
                .cancel(id, &cfg.mesh.peers, cfg.mesh.token.as_deref())
            {
                text(StatusCode::NO_CONTENT, "")
            } else {
                text(StatusCode::NOT_FOUND, format!("no local outage {id:?}\n"))
            }
        }
        (Method::POST, "/reload") => match shared.reload_from_file() {
            Ok(()) => text(StatusCode::OK, "reloaded\n"),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("reload rejected: {e}\n")),
        },
        (
            _,
            "/live" | "/ready" | "/metrics" | "/config" | "/circuits" | "/stats" | "/log-level" | "/reload"
            | "/faults" | "/outages" | "/brownout",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown admin path; try /metrics /ready /live /config /circuits /stats /log-level /reload /faults /qod /outages /brownout\n",
        ),
    }
}

fn fault_error(e: crate::policy::fault::FaultError) -> Response {
    let status = e.status();
    let mut r = json(&e.to_json());
    *r.status_mut() = status;
    r
}
