//! Graceful degradation on the inbound edge: qualified answers instead of failures.
//!
//! Reads fail over to a peer sidecar (the listener's `failover` addresses, in order) when the local
//! node cannot answer: it is down for a planned outage, refuses connections, times out, or its
//! circuit is open. A failed-over answer carries `x-bulwark-degraded: failover; via=<addr>`, and the
//! request carries `x-bulwark-failover` so the peer does not fail it over again.
//!
//! Writes are never failed over or acknowledged on anyone's behalf: during a planned outage they
//! get `503` with `Retry-After` (the end of the window) and `x-bulwark-error: planned_outage`.
//!
//! "Read" means GET/HEAD, or a path under one of `read_routes` (Kubo's RPC sends reads as POST).
//! Only requests whose body fits `max_replay_bytes` can be sent a second time.

use crate::error::ProxyError;
use crate::policy::cache::{self, CidCache};
use crate::policy::outage::{OutageRegistry, Phase};
use crate::policy::retry::{buffer, Buffered};
use crate::policy::{boxed_call, Maybe};
use crate::upstream::forward::Forward;
use crate::{Request, Response};
use futures::future::BoxFuture;
use http::HeaderValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub const H_DEGRADED: &str = "x-bulwark-degraded";
pub const H_FAILOVER: &str = "x-bulwark-failover";
/// As a `HeaderName` for the per-request lookup (a `&str` key is parsed on every lookup).
const FAILOVER: http::HeaderName = http::HeaderName::from_static(H_FAILOVER);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DegradeConfig {
    /// Path prefixes that are reads whatever their method.
    pub read_routes: Vec<String>,
    pub max_replay_bytes: usize,
    /// Memory for verified content-addressed answers (0: no cache); see `policy::cache`.
    pub cache_bytes: usize,
    /// Largest answer kept.
    pub cache_item_bytes: usize,
    /// Brownout starts when the listener's in-flight requests reach this share of
    /// `shed.max_in_flight` (0: only when switched on over the admin API).
    pub brownout_at: f64,
    /// Optional work dropped under brownout, first match wins.
    pub brownout_rules: Vec<BrownoutRule>,
}

/// A request whose answer gets cheaper under brownout: `add_query` is appended to its query.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrownoutRule {
    #[serde(default = "get")]
    pub method: String,
    pub path_prefix: String,
    pub add_query: String,
    /// Said in the degraded answer's header, e.g. `local-status-only`.
    pub name: String,
}

fn get() -> String {
    "GET".into()
}

impl Default for DegradeConfig {
    fn default() -> Self {
        Self {
            read_routes: [
                "/api/v0/cat",
                "/api/v0/block/get",
                "/api/v0/block/stat",
                "/api/v0/dag/get",
                "/api/v0/ls",
                "/api/v0/id",
                "/api/v0/version",
                "/ipfs/",
            ]
            .map(String::from)
            .to_vec(),
            max_replay_bytes: 64 * 1024,
            cache_bytes: 64 << 20,
            cache_item_bytes: 1 << 20,
            brownout_at: 0.75,
            brownout_rules: vec![BrownoutRule {
                method: "GET".into(),
                path_prefix: "/pins".into(),
                add_query: "local=true".into(),
                name: "local-status-only".into(),
            }],
        }
    }
}

impl DegradeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.read_routes.iter().any(|r| !r.starts_with('/')) {
            return Err("read_routes are path prefixes starting with '/'".into());
        }
        if self.max_replay_bytes > 16 << 20 {
            return Err("max_replay_bytes must be <= 16 MiB".into());
        }
        if self.cache_item_bytes > self.cache_bytes.max(1) || self.cache_bytes > 16 << 30 {
            return Err("need cache_item_bytes <= cache_bytes <= 16 GiB".into());
        }
        if !(0.0..=1.0).contains(&self.brownout_at) {
            return Err("brownout_at must be within 0..=1".into());
        }
        for r in &self.brownout_rules {
            r.method
                .parse::<http::Method>()
                .map_err(|_| format!("brownout rule {:?}: bad method", r.name))?;
            if !r.path_prefix.starts_with('/') || r.add_query.is_empty() || r.name.is_empty() {
                return Err(format!(
                    "brownout rule {:?}: need a path_prefix starting with '/', add_query and name",
                    r.name
                ));
            }
            format!("/x?{}", r.add_query)
                .parse::<http::Uri>()
                .map_err(|e| format!("brownout rule {:?}: add_query: {e}", r.name))?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DegradedLabels {
    pub listener: String,
    /// `failover`, `cache`, `brownout`, `planned_outage_refused`, `failover_failed`.
    pub kind: &'static str,
}

#[derive(Clone, Default)]
pub struct DegradeMetrics {
    pub answers: Family<DegradedLabels, Counter>,
}

impl DegradeMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "degraded_answers",
            "Degraded answers (from the verified CID cache, failed over to a peer sidecar, or refused during a planned outage)",
            self.answers.clone(),
        );
    }
}

/// The brownout switch: `auto` (by load), or forced `on` / `off` over the admin API.
#[derive(Default)]
pub struct Brownout {
    /// 0 auto, 1 on, 2 off.
    mode: std::sync::atomic::AtomicU8,
}

impl Brownout {
    pub fn set(&self, mode: &str) -> Result<(), String> {
        let m = match mode.trim() {
            "auto" => 0,
            "on" => 1,
            "off" => 2,
            other => return Err(format!("brownout mode {other:?}: use auto, on or off")),
        };
        self.mode.store(m, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub fn mode(&self) -> &'static str {
        match self.mode.load(std::sync::atomic::Ordering::Relaxed) {
            1 => "on",
            2 => "off",
            _ => "auto",
        }
    }

    fn active(&self, in_flight: usize, max: usize, at: f64) -> bool {
        match self.mode.load(std::sync::atomic::Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => at > 0.0 && in_flight as f64 >= at * max as f64,
        }
    }
}

/// What an inbound listener's degradation layer works with.
pub struct DegradeDeps {
    pub cfg: DegradeConfig,
    pub outages: Arc<OutageRegistry>,
    pub peers: Vec<Peer>,
    pub metrics: DegradeMetrics,
    pub cache: Option<Arc<CidCache>>,
    pub brownout: Arc<Brownout>,
    pub shed: crate::policy::shed::ShedHandle,
    pub max_in_flight: usize,
}

#[derive(Clone)]
pub struct Peer {
    pub addr: Arc<str>,
    pub forward: Forward,
}

#[derive(Clone)]
pub struct DegradeLayer {
    on: Option<Arc<Inner>>,
}

struct Inner {
    cfg: DegradeConfig,
    cache: Option<Arc<CidCache>>,
    outages: Arc<OutageRegistry>,
    peers: Vec<Peer>,
    metrics: DegradeMetrics,
    brownout: Arc<Brownout>,
    shed: crate::policy::shed::ShedHandle,
    max_in_flight: usize,
    listener: String,
}

impl DegradeLayer {
    /// `None` (outbound listeners): the layer passes everything through.
    pub fn new(deps: Option<DegradeDeps>, listener: &str) -> Self {
        Self {
            on: deps.map(|d| {
                Arc::new(Inner {
                    cfg: d.cfg,
                    cache: d.cache,
                    outages: d.outages,
                    peers: d.peers,
                    metrics: d.metrics,
                    brownout: d.brownout,
                    shed: d.shed,
                    max_in_flight: d.max_in_flight,
                    listener: listener.to_string(),
                })
            }),
        }
    }
}

impl<S> tower::Layer<S> for DegradeLayer {
    type Service = Degrade<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Degrade {
            inner,
            on: self.on.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Degrade<S> {
    inner: S,
    on: Option<Arc<Inner>>,
}

impl Inner {
    fn is_read(&self, req: &Request) -> bool {
        matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            || self
                .cfg
                .read_routes
                .iter()
                .any(|p| req.uri().path().starts_with(p.as_str()))
    }

    fn count(&self, kind: &'static str) {
        self.metrics
            .answers
            .get_or_create(&DegradedLabels {
                listener: self.listener.clone(),
                kind,
            })
            .inc();
    }
}

/// A successful content-addressed answer streams on to the client; a copy is kept if it verifies.
fn keep_copy(on: &Arc<Inner>, key: Option<cache::Key>, resp: Response) -> Response {
    let (Some(key), Some(cache)) = (key, on.cache.clone()) else {
        return resp;
    };
    if resp.status() != http::StatusCode::OK || cache.get(&key).is_some() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let ct = parts.headers.get(http::header::CONTENT_TYPE).cloned();
    let max = cache.max_item;
    let tee = cache::Tee::new(
        body,
        max,
        Box::new(move |bytes| {
            if !cache.insert(key.clone(), bytes, ct) {
                tracing::debug!(cid = %key.cid, "answer not cached (too big, or not verifiable in isolation)");
            }
        }),
    );
    Response::from_parts(parts, http_body_util::BodyExt::boxed(tee))
}

/// The local node could not answer (down, or overloaded): worth a qualified answer.
fn node_failed(r: &Result<Response, ProxyError>) -> bool {
    match r {
        Err(e) => e.is_local_origin() || matches!(e, ProxyError::CircuitOpen { .. }),
        Ok(resp) => resp.status() == http::StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl<S> tower::Service<Request> for Degrade<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = crate::policy::Maybe<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(on) = self.on.clone() else {
            return Maybe::direct(self.inner.call(req));
        };
        let mut browned = None;
        if on
            .brownout
            .active(on.shed.in_flight(), on.max_in_flight, on.cfg.brownout_at)
        {
            // Tell the node too, so it can let background work (recovery) yield.
            req.headers_mut()
                .insert("x-bulwark-brownout", HeaderValue::from_static("1"));
            if let Some(rule) = on.cfg.brownout_rules.iter().find(|r| {
                req.method().as_str() == r.method && req.uri().path().starts_with(&r.path_prefix)
            }) {
                let pq = match req.uri().query() {
                    Some(q) => format!("{}?{q}&{}", req.uri().path(), rule.add_query),
                    None => format!("{}?{}", req.uri().path(), rule.add_query),
                };
                if let Ok(uri) = pq.parse::<http::Uri>() {
                    *req.uri_mut() = uri;
                    on.count("brownout");
                    browned = Some(rule.name.clone());
                }
            }
        }
        let fut = self.route(on, req);
        match browned {
            None => fut,
            Some(name) => {
                let fut: BoxFuture<'static, Result<Response, ProxyError>> = Box::pin(fut);
                Maybe::boxed(async move {
                    let mut r = fut.await?;
                    if let Ok(v) = HeaderValue::from_str(&format!("brownout; dropped={name}")) {
                        r.headers_mut().insert(H_DEGRADED, v);
                    }
                    Ok(r)
                })
            }
        }
    }
}

impl<S> Degrade<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    fn route(&mut self, on: Arc<Inner>, req: Request) -> Maybe<S::Future> {
        let down = match on.outages.local_phase() {
            Some((Phase::Down, until)) => Some(until),
            _ => None,
        };
        // A read a peer already failed over to us is not failed over again.
        let read = on.is_read(&req) && !req.headers().contains_key(FAILOVER);
        if let Some(until) = down {
            if !read {
                on.count("planned_outage_refused");
                let retry_after =
                    Duration::from_millis(until.saturating_sub(crate::policy::now_ms()));
                return Maybe::err(ProxyError::PlannedOutage { retry_after });
            }
        }
        let key = on
            .cache
            .as_ref()
            .filter(|_| read)
            .and_then(|_| cache::cacheable(req.method(), req.uri()));
        // The hot path: nothing this layer could do if the node failed.
        if down.is_none() && (!read || (on.peers.is_empty() && key.is_none())) {
            return Maybe::direct(self.inner.call(req));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Maybe::boxed(async move {
            let (parts, body) = req.into_parts();
            let declared = http_body::Body::size_hint(&body).exact();
            let replay = match buffer(body, on.cfg.max_replay_bytes, declared).await {
                Ok(Buffered::Replay(r)) => r,
                Ok(Buffered::Once(b)) => {
                    // Too big to send twice: the node or nothing.
                    return boxed_call(&mut inner, Request::from_parts(parts, b)).await;
                }
                Err(e) => {
                    return Err(ProxyError::BadRequest(format!(
                        "reading the request body: {e}"
                    )))
                }
            };
            let first = if down.is_some() {
                None
            } else {
                let r = boxed_call(
                    &mut inner,
                    Request::from_parts(parts.clone(), replay.body()),
                )
                .await;
                if !node_failed(&r) {
                    return Ok(keep_copy(&on, key, r?));
                }
                Some(r)
            };
            let why = if down.is_some() {
                "planned-outage"
            } else {
                "node-unavailable"
            };
            if let Some((body, ct)) = key.as_ref().and_then(|k| on.cache.as_ref()?.get(k)) {
                on.count("cache");
                let mut resp = Response::new(crate::full(body));
                if let Some(ct) = ct {
                    resp.headers_mut().insert(http::header::CONTENT_TYPE, ct);
                }
                if let Ok(v) =
                    HeaderValue::from_str(&format!("cache; reason={why}; verified=sha2-256"))
                {
                    resp.headers_mut().insert(H_DEGRADED, v);
                }
                tracing::info!(reason = why, path = %parts.uri.path(), "answered from the verified CID cache");
                return Ok(resp);
            }
            for p in &on.peers {
                let mut req = Request::from_parts(parts.clone(), replay.body());
                req.headers_mut()
                    .insert(H_FAILOVER, HeaderValue::from_static("1"));
                let mut fwd = p.forward.clone();
                let fut = tower::Service::call(&mut fwd, req);
                if let Ok(mut resp) = fut.await {
                    on.count("failover");
                    if let Ok(v) =
                        HeaderValue::from_str(&format!("failover; reason={why}; via={}", p.addr))
                    {
                        resp.headers_mut().insert(H_DEGRADED, v);
                    }
                    tracing::info!(via = %p.addr, reason = why, path = %parts.uri.path(), "read failed over to a peer sidecar");
                    return Ok(resp);
                }
            }
            on.count("failover_failed");
            match first {
                Some(r) => r,
                None => Err(ProxyError::PlannedOutage {
                    retry_after: Duration::from_secs(1),
                }),
            }
        })
    }
}
