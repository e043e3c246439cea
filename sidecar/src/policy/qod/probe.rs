//! The probe layer: single-flight canary probing of unknown request signatures.

use super::blacklist::{now_ms, Entry, Sample};
use super::filter::{route_of, SigExt};
use super::signature::{self, Signature};
use super::state::RouteLatency;
use super::{OnUnavailable, OutcomeLabels, QodConfig, QodMode, QodState, H_QOD};
use crate::error::ProxyError;
use crate::policy::retry::{buffer, Buffered};
use crate::policy::{boxed_call, Maybe};
use crate::upstream::forward::Forward;
use crate::{Request, Response};
use bytes::Bytes;
use http::HeaderValue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Clone)]
pub struct Canary {
    pub addr: Arc<str>,
    pub forward: Forward,
}

#[derive(Clone)]
pub struct QodProbeLayer {
    on: Option<Arc<ProbeShared>>,
}

struct ProbeShared {
    st: Arc<QodState>,
    cfg: Arc<QodConfig>,
    listener: Arc<str>,
    canaries: Vec<Canary>,
}

impl QodProbeLayer {
    pub fn new(
        on: Option<(Arc<QodState>, Arc<QodConfig>)>,
        listener: &str,
        canaries: Vec<Canary>,
    ) -> Self {
        Self {
            on: on.filter(|_| !canaries.is_empty()).map(|(st, cfg)| {
                Arc::new(ProbeShared {
                    st,
                    cfg,
                    listener: Arc::from(listener),
                    canaries,
                })
            }),
        }
    }
}

impl<S> tower::Layer<S> for QodProbeLayer {
    type Service = QodProbe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        QodProbe {
            inner,
            on: self.on.clone(),
        }
    }
}

#[derive(Clone)]
pub struct QodProbe<S> {
    inner: S,
    on: Option<Arc<ProbeShared>>,
}

impl<S> tower::Service<Request> for QodProbe<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Maybe<Timed<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (Some(p), Some(ext)) = (&self.on, req.extensions().get::<SigExt>().copied()) else {
            return Maybe::direct(Timed {
                lat: None,
                fut: self.inner.call(req),
            });
        };
        let route = route_of(&req);
        if ext.dry_run_hit || p.st.is_known(ext.sig.known_key()) {
            // The hot path: time the answer head for this route's canary deadline.
            return Maybe::direct(Timed {
                lat: Some((p.st.route_latency(&route), tokio::time::Instant::now())),
                fut: self.inner.call(req),
            });
        }
        // Unknown: the inner service is needed later (fallback or after the wait), so take
        // the ready one and leave a clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Maybe::boxed(probe(p.clone(), inner, req, ext.sig, route))
    }
}

pin_project_lite::pin_project! {
    /// Times a known request's answer head for its route's canary deadline (a plain future, not
    /// an `async` block: this is the hot path, and it keeps rustc's `Send` inference simple).
    pub struct Timed<F> {
        lat: Option<(Arc<RouteLatency>, tokio::time::Instant)>,
        #[pin]
        fut: F,
    }
}

impl<F> std::future::Future for Timed<F>
where
    F: std::future::Future<Output = Result<Response, ProxyError>>,
{
    type Output = F::Output;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let r = std::task::ready!(this.fut.poll(cx));
        if let (Some((lat, start)), Ok(resp)) = (this.lat.as_ref(), &r) {
            if resp.status().as_u16() < 500 {
                lat.record(start.elapsed());
            }
        }
        Poll::Ready(r)
    }
}

fn is_safe(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

fn sample(parts: &http::request::Parts, body: Option<&Bytes>, max: usize) -> Sample {
    let mut uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if uri.len() > 2048 {
        let mut cut = 2048;
        while !uri.is_char_boundary(cut) {
            cut -= 1;
        }
        uri.truncate(cut);
    }
    let headers = parts
        .headers
        .iter()
        .take(32)
        .map(|(k, v)| {
            let val = if matches!(
                k.as_str(),
                "authorization" | "cookie" | "proxy-authorization"
            ) {
                "<redacted>".to_string()
            } else {
                let b = v.as_bytes();
                String::from_utf8_lossy(&b[..b.len().min(256)]).into_owned()
            };
            (k.as_str().to_string(), val)
        })
        .collect();
    let (body_s, body_len, truncated) = match body {
        Some(b) => (
            String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned(),
            Some(b.len() as u64),
            b.len() > max,
        ),
        None => (String::new(), None, true),
    };
    Sample {
        method: parts.method.to_string(),
        uri,
        headers,
        body: body_s,
        body_len,
        body_truncated: truncated,
    }
}

enum Attempt {
    Answered(Response),
    Unavailable(String),
    Struck(String),
}

async fn try_canary(c: &Canary, req: Request, deadline: Duration, st: &QodState) -> Attempt {
    let mut fwd = c.forward.clone();
    let fut = tower::Service::call(&mut fwd, req);
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(resp)) => {
            let outcome = if resp.status().as_u16() < 500 {
                "ok"
            } else {
                "error_status"
            };
            st.metrics
                .probes
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
            Attempt::Answered(resp)
        }
        Ok(Err(e @ (ProxyError::Connect { .. } | ProxyError::Timeout { .. }))) => {
            st.metrics
                .probes
                .get_or_create(&OutcomeLabels {
                    outcome: "unavailable",
                })
                .inc();
            Attempt::Unavailable(e.to_string())
        }
        Ok(Err(e)) => {
            st.metrics
                .probes
                .get_or_create(&OutcomeLabels { outcome: "strike" })
                .inc();
            Attempt::Struck(format!("canary {} failed: {e}", c.addr))
        }
        Err(_) => {
            st.metrics
                .probes
                .get_or_create(&OutcomeLabels { outcome: "timeout" })
                .inc();
            Attempt::Struck(format!(
                "canary {} gave no answer within {deadline:?}",
                c.addr
            ))
        }
    }
}

async fn probe<S>(
    p: Arc<ProbeShared>,
    mut inner: S,
    req: Request,
    sig: Signature,
    route: Arc<str>,
) -> Result<Response, ProxyError>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Send + 'static,
    S::Future: Send + 'static,
{
    let st = &p.st;
    let cfg = &p.cfg;
    let key = sig.known_key();
    // Single flight: one probe per unknown shape; the others wait (bounded) and re-check.
    let flight = st.flight(key);
    if flight.waiting.load(Ordering::Relaxed) >= cfg.max_waiters {
        return Err(ProxyError::ProbeBusy {
            reason: format!(
                "{} requests of this new shape already wait for its canary probe",
                cfg.max_waiters
            ),
        });
    }
    flight.waiting.fetch_add(1, Ordering::Relaxed);
    st.metrics.waiting.inc();
    let guard = tokio::time::timeout(cfg.wait_timeout, flight.lock.lock()).await;
    flight.waiting.fetch_sub(1, Ordering::Relaxed);
    st.metrics.waiting.dec();
    let Ok(guard) = guard else {
        return Err(ProxyError::ProbeBusy {
            reason: format!(
                "waited {:?} for the canary probe of this new shape",
                cfg.wait_timeout
            ),
        });
    };
    let result = probe_locked(&p, &mut inner, req, sig, &route).await;
    drop(guard);
    st.end_flight(key, &flight);
    result
}

/// The blacklist entry for a shape that struck `distinct` canaries, and its TTL: doubled for each
/// earlier time this shape was blacklisted, up to `max_ttl`.
fn blacklist_entry(
    p: &ProbeShared,
    sig: &Signature,
    described: &signature::Described,
    route: &Arc<str>,
    distinct: u32,
    struck: &[String],
    sample: Sample,
) -> (Entry, Duration) {
    let (st, cfg) = (&p.st, &p.cfg);
    let repeat = st.blacklist.repeats(sig.fine);
    let ttl = cfg
        .ttl
        .saturating_mul(1u32 << repeat.min(20))
        .min(cfg.max_ttl);
    let now = now_ms();
    let entry = Entry {
        id: signature::id(sig.fine),
        coarse: signature::id(sig.coarse),
        signature: described.clone(),
        route: route.to_string(),
        listener: p.listener.to_string(),
        reason: format!("crashed or hung {distinct} canaries: {}", struck.join("; ")),
        strikes: distinct,
        repeat,
        created_ms: now,
        expires_ms: now + ttl.as_millis() as u64,
        updated_ms: now,
        origin: "local".into(),
        node: st.node.clone(),
        dry_run: false,
        note: String::new(),
        deleted: false,
        sample: Some(sample),
    };
    (entry, ttl)
}

async fn probe_locked<S>(
    p: &ProbeShared,
    inner: &mut S,
    req: Request,
    sig: Signature,
    route: &Arc<str>,
) -> Result<Response, ProxyError>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Send + 'static,
    S::Future: Send + 'static,
{
    let (st, cfg) = (&p.st, &p.cfg);
    let key = sig.known_key();
    // Decided while we waited?
    if st.is_known(key) {
        return boxed_call(inner, req).await;
    }
    if let Some((id, expires_ms, dry, reason)) = st.blacklist.matching(sig.fine, now_ms()) {
        if !(dry || cfg.mode == QodMode::DryRun) {
            st.metrics.blocked.inc();
            return Err(ProxyError::QueryOfDeath {
                id,
                expires_in: Duration::from_millis(expires_ms.saturating_sub(now_ms())),
                reason,
            });
        }
        return boxed_call(inner, req).await;
    }
    let described = signature::describe(&req, route, &sig);
    let (parts, body) = req.into_parts();
    let declared = http_body::Body::size_hint(&body).exact();
    let buffered = buffer(body, cfg.max_body_bytes, declared)
        .await
        .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?;
    let (replay, mut once) = match buffered {
        Buffered::Replay(r) => (Some(r), None),
        Buffered::Once(b) => (None, Some(b)),
    };
    let deadline = st.deadline(cfg, route);
    let n = p.canaries.len();
    let first = st.first_canary(sig.fine, n);
    let safe = is_safe(&parts.method);
    let mut struck: Vec<String> = Vec::new();
    let mut unavailable: Vec<String> = Vec::new();
    for i in 0..n {
        let idx = (first + i) % n;
        let c = &p.canaries[idx];
        let body = match (&replay, once.take()) {
            (Some(r), _) => r.body(),
            (None, Some(b)) => b,
            (None, None) => break, // a big body is gone after one try
        };
        let r = Request::from_parts(parts.clone(), body);
        match try_canary(c, r, deadline, st).await {
            Attempt::Answered(mut resp) => {
                if resp.status().as_u16() < 500 {
                    st.mark_known(key, cfg.max_known);
                    st.clear_strikes(sig.fine);
                }
                if !struck.is_empty() {
                    tracing::warn!(canary = %c.addr, earlier = ?struck, route = %route,
                        "a canary failed on a request another canary answered: not treated as a query of death");
                }
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "canary={}; id={}",
                    c.addr,
                    signature::id(sig.fine)
                )) {
                    resp.headers_mut().insert(H_QOD, v);
                }
                return Ok(resp);
            }
            Attempt::Unavailable(why) => {
                unavailable.push(format!("{}: {why}", c.addr));
                continue;
            }
            Attempt::Struck(why) => {
                tracing::warn!(canary = %c.addr, route = %route, signature = %described.coarse,
                    shape = %described.fine, reason = %why, "canary strike: a new request shape crashed or hung a canary");
                let distinct = st.strike(sig.fine, idx, n == 1, cfg.ttl);
                st.suspect(key, cfg.ttl);
                struck.push(why.clone());
                if distinct >= cfg.strikes {
                    let sample = sample(&parts, replay.as_ref().map(|r| &r.data), cfg.sample_bytes);
                    let (entry, ttl) =
                        blacklist_entry(p, &sig, &described, route, distinct, &struck, sample);
                    let reason = entry.reason.clone();
                    st.clear_strikes(sig.fine);
                    st.add_entry(entry, "local");
                    return Err(ProxyError::QueryOfDeath {
                        id: signature::id(sig.fine),
                        expires_in: ttl,
                        reason,
                    });
                }
                if !(safe && cfg.confirm) {
                    return Err(ProxyError::ProbeStrike {
                        reason: format!("{why}; this request was not sent to the node (one more strike on another canary blacklists its shape)"),
                    });
                }
                // Safe request: confirm on the next canary now.
            }
        }
    }
    if !struck.is_empty() {
        return Err(ProxyError::ProbeStrike {
            reason: format!(
                "{}; no other canary could confirm it (unavailable: {})",
                struck.join("; "),
                if unavailable.is_empty() {
                    "none left".into()
                } else {
                    unavailable.join("; ")
                }
            ),
        });
    }
    // No canary reachable.
    tracing::warn!(route = %route, canaries = ?unavailable, "no canary reachable for a new request shape");
    if st.is_suspect(key) {
        return Err(ProxyError::ProbeUnavailable {
            reason: format!(
                "no canary reachable, and a request of this shape crashed a canary recently: not sent to the node ({})",
                unavailable.join("; ")
            ),
        });
    }
    match (cfg.on_canary_unavailable, replay) {
        (OnUnavailable::Forward, Some(r)) => {
            let req = Request::from_parts(parts, r.body());
            boxed_call(inner, req).await
        }
        _ => Err(ProxyError::ProbeUnavailable {
            reason: format!("no canary reachable ({})", unavailable.join("; ")),
        }),
    }
}
