//! Timeouts and budgeted retries: the innermost policy, right above the connection pool.
//!
//! # Design
//!
//! - **Two clocks per request.** Each attempt gets `per_try_timeout`; the whole request, including
//!   every retry and every backoff pause, gets `deadline`, which is never exceeded: an attempt's timer
//!   is the earlier of the two, and a backoff that would end past the deadline is not slept — the last
//!   answer goes back at once. Both cover the wait for response *headers*; a body that stalls while
//!   streaming is the forwarder's idle timeout's business, not ours (we never buffer responses).
//! - **What is retried**: only methods the operator lists (default `GET`, `HEAD`, `OPTIONS`; storage
//!   writes such as `PUT` are idempotent only per protocol, so they are opt-in), and only when the try
//!   failed on the way to the upstream (connect refused, reset, per-try timeout) or the upstream said
//!   502/503/504 *itself*. A 5xx carrying `x-bulwark-error` is another sidecar's deliberate refusal
//!   (open circuit, shed); retrying it would defeat that refusal. 429 is never retried.
//! - **A budget, not just a count** (Finagle/Linkerd): `max_retries` bounds one request, but under a
//!   fleet-wide outage every request would still multiply into `1 + max_retries`. The rate budget lets
//!   retries be at most `ratio` of recent requests plus `min_per_sec` (so quiet services can retry at
//!   all), over `ttl`. It is `tower::retry::budget::TpsBudget`, which already reads `tokio::time`, so
//!   paused-time tests drive it. A retry withdraws when it is decided (before its backoff), so retries
//!   waiting in backoff are counted (the Envoy miscount in envoyproxy/envoy#30205 cannot happen here).
//! - **Replay buffer**: a retry needs the request body again. Only retryable requests are buffered, and
//!   only up to `max_replay_bytes`. A declared `Content-Length` above the cap is not buffered at all; a
//!   body without one that turns out bigger is sent once as the collected prefix chained with the rest
//!   of the stream. Either way that request gets no retry, and memory stays bounded per request.
//! - **Backoff**: full jitter (AWS style) between `backoff_base` × 2ⁿ⁻¹ capped at `backoff_max`, from
//!   a seeded RNG so runs reproduce.
//!
//! # Place in the stack
//!
//! `… ▸ breaker ▸ timeout/retry ▸ forward`. The breaker above sees one outcome per request, after the
//! retries (see `breaker.rs`); the timeouts here turn a hung upstream into a `Timeout` error the breaker
//! counts. Retried attempts carry `x-bulwark-attempt: N` (N ≥ 2), so the upstream's logs can tell a
//! retry from a new request.

use crate::classify::RequestMeta;
use crate::error::{ProxyError, TimeoutKind, H_ERROR};
use crate::policy::boxed_call;
use crate::policy::breaker::UpstreamName;
use crate::upstream::HeadBack;
use crate::{Body, BoxError, Request, Response};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{sleep, timeout_at, Instant};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};

/// Set on every retried upstream request: the attempt number, 2 for the first retry.
pub const H_ATTEMPT: &str = "x-bulwark-attempt";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Time to response headers for one attempt.
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Duration,
    /// Time to response headers for the whole request, retries and backoff included.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Retries per request on top of the first attempt; 0 turns retries off (timeouts still apply).
    pub max_retries: u32,
    /// Methods safe to send twice. List `PUT`/`DELETE` only when the upstream protocol makes them
    /// idempotent (e.g. content-addressed writes).
    pub retry_methods: Vec<String>,
    pub budget: RetryBudgetConfig,
    /// Largest request body kept for replay; bigger bodies are streamed once, without retry.
    pub max_replay_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Seed for the backoff jitter (reproducible runs); random when absent.
    pub seed: Option<u64>,
}

/// Retries allowed: `ratio` × requests seen in the last `ttl`, plus `min_per_sec` × `ttl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    pub ratio: f32,
    pub min_per_sec: u32,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            per_try_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            max_retries: 2,
            retry_methods: vec!["GET".into(), "HEAD".into(), "OPTIONS".into()],
            budget: RetryBudgetConfig::default(),
            max_replay_bytes: 64 * 1024,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            seed: None,
        }
    }
}

/// Retries beyond this multiply an outage rather than ride it out.
const MAX_RETRIES_LIMIT: u32 = 10;

impl RetryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.per_try_timeout.is_zero() {
            return Err("per_try_timeout must be > 0".into());
        }
        if self.deadline.is_zero() {
            return Err("deadline must be > 0".into());
        }
        if self.max_retries > MAX_RETRIES_LIMIT {
            return Err(format!(
                "max_retries must be ≤ {MAX_RETRIES_LIMIT} (got {})",
                self.max_retries
            ));
        }
        for m in &self.retry_methods {
            let upper = m.chars().all(|c| c.is_ascii_uppercase());
            if m.is_empty() || !upper || Method::from_bytes(m.as_bytes()).is_err() {
                return Err(format!(
                    "retry_methods: {m:?} is not an HTTP method (upper case, e.g. \"GET\")"
                ));
            }
        }
        let b = &self.budget;
        if !(b.ratio.is_finite() && (0.0..=1000.0).contains(&b.ratio)) {
            return Err(format!(
                "budget.ratio must be in [0, 1000] (got {})",
                b.ratio
            ));
        }
        if b.min_per_sec >= i32::MAX as u32 {
            return Err(format!(
                "budget.min_per_sec must be < {} (got {})",
                i32::MAX,
                b.min_per_sec
            ));
        }
        if b.ttl < Duration::from_secs(1) || b.ttl > Duration::from_secs(60) {
            return Err(format!(
                "budget.ttl must be between 1s and 60s (got {:?})",
                b.ttl
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err(format!(
                "backoff_base ({:?}) must be ≤ backoff_max ({:?})",
                self.backoff_base, self.backoff_max
            ));
        }
        Ok(())
    }

    /// `TpsBudget::new` panics outside its ranges; clamp so an unvalidated config cannot crash.
    fn budget(&self) -> TpsBudget {
        let b = &self.budget;
        let ratio = if b.ratio.is_finite() {
            b.ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let ttl = b.ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        TpsBudget::new(ttl, b.min_per_sec.min(i32::MAX as u32 - 1), ratio)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryOutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct RetryMetrics {
    /// `retried` (each retry sent), `success_after_retry`, and the reasons a wanted retry did not
    /// happen: `budget_exhausted`, `not_retryable` (method), `too_large_to_replay`,
    /// `head_not_returned` (the service below kept the request head; see `proxy::HeadBack`).
    pub requests: Family<RetryOutcomeLabels, Counter>,
    /// `per_try`, `deadline`.
    pub timeouts: Family<TimeoutLabels, Counter>,
    /// Same events as `requests{outcome="budget_exhausted"}`, as its own series for alerting.
    pub budget_exhausted: Counter,
}

impl RetryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "retry_requests",
            "Retry decisions: retried, success_after_retry, budget_exhausted, not_retryable, too_large_to_replay, head_not_returned",
            self.requests.clone(),
        );
        registry.register(
            "timeouts",
            "Requests or attempts that timed out, by kind (per_try, deadline)",
            self.timeouts.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            self.budget_exhausted.clone(),
        );
    }

    fn count(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&RetryOutcomeLabels { outcome })
            .inc();
    }
}

/// State shared by all clones of one layer's services: the budget must see every request.
#[derive(Debug)]
struct RetryState {
    cfg: RetryConfig,
    methods: Vec<Method>,
    budget: TpsBudget,
    rng: Mutex<StdRng>,
    metrics: RetryMetrics,
}

impl RetryState {
    /// Full jitter: uniform in [0, min(max, base × 2^(failed_tries − 1))].
    fn backoff(&self, failed_tries: u32) -> Duration {
        let exp = 1u32
            .checked_shl(failed_tries.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let ceiling = self
            .cfg
            .backoff_base
            .saturating_mul(exp)
            .min(self.cfg.backoff_max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<RetryState>,
}

impl RetryLayer {
    pub fn new(config: RetryConfig, metrics: RetryMetrics) -> Self {
        // Validation rejects anything else; an unparsable method here just never matches.
        let methods = config
            .retry_methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let shared = RetryState {
            budget: config.budget(),
            methods,
            rng: Mutex::new(rng),
            metrics,
            cfg: config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetryService<S> {
    inner: S,
    shared: Arc<RetryState>,
}

impl<S> Service<Request> for RetryService<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone for the next caller.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(run(inner, self.shared.clone(), req))
    }
}

/// A response (or error) worth another attempt at the same upstream.
fn worth_retrying(res: &Result<Response, ProxyError>) -> bool {
    match res {
        Err(ProxyError::Timeout {
            kind: TimeoutKind::Deadline,
            ..
        }) => false,
        Err(e) => e.is_local_origin(),
        Ok(r) => matches!(r.status().as_u16(), 502..=504) && !r.headers().contains_key(H_ERROR),
    }
}

async fn run<S>(mut inner: S, sh: Arc<RetryState>, req: Request) -> Result<Response, ProxyError>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
    S::Future: Send + 'static,
{
    let deadline = Instant::now() + sh.cfg.deadline;
    let upstream = UpstreamName::of(&req);
    sh.budget.deposit();

    if !sh.methods.contains(req.method()) || sh.cfg.max_retries == 0 {
        let retryable_method = sh.methods.contains(req.method());
        let res = attempt(&mut inner, req, &sh, deadline, &upstream).await;
        if !retryable_method && worth_retrying(&res) {
            sh.metrics.count("not_retryable");
        }
        return res;
    }

    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let replay = match timeout_at(deadline, buffer(body, sh.cfg.max_replay_bytes, declared)).await {
        Err(_) => return Err(deadline_error(&sh, &upstream)),
        Ok(Err(e)) => {
            return Err(ProxyError::BadRequest(format!(
                "reading the request body: {e}"
            )))
        }
        Ok(Ok(Buffered::Replay(r))) => r,
        Ok(Ok(Buffered::Once(body))) => {
            let res = attempt(
                &mut inner,
                Request::from_parts(parts, body),
                &sh,
                deadline,
                &upstream,
            )
            .await;
            if worth_retrying(&res) {
                sh.metrics.count("too_large_to_replay");
            }
            return res;
        }
    };

    // The head is not cloned for each try: the upstream client hands it back (`HeadBack`), or,
    // for a request without `RequestMeta` to carry the slot, a copy is kept.
    let slot = HeadBack::default();
    let mut head = parts;
    let mut tries = 1u32;
    loop {
        if tries > 1 {
            head.headers.insert(H_ATTEMPT, HeaderValue::from(tries));
        }
        let copy = match head.extensions.get_mut::<RequestMeta>() {
            Some(m) => {
                m.head_back = Some(slot.clone());
                None
            }
            None => Some(head.clone()),
        };
        let res = attempt(
            &mut inner,
            Request::from_parts(head, replay.body()),
            &sh,
            deadline,
            &upstream,
        )
        .await;
        if !worth_retrying(&res) {
            if tries > 1 && matches!(&res, Ok(r) if !r.status().is_server_error()) {
                sh.metrics.count("success_after_retry");
            }
            return res;
        }
        if tries > sh.cfg.max_retries {
            return res;
        }
        let Some(back) = copy.or_else(|| slot.take()) else {
            // The service below kept the head: nothing to send again.
            sh.metrics.count("head_not_returned");
            return res;
        };
        head = back;
        let pause = sh.backoff(tries);
        if Instant::now() + pause >= deadline {
            // No time for another try: answer with what we have rather than a bare deadline error.
            return res;
        }
        if !sh.budget.withdraw() {
            sh.metrics.count("budget_exhausted");
            sh.metrics.budget_exhausted.inc();
            return res;
        }
        drop(res);
        sleep(pause).await;
        sh.metrics.count("retried");
        tries += 1;
    }
}

/// One try, bounded by the per-try timeout and the overall deadline, whichever comes first.
async fn attempt<S>(
    inner: &mut S,
    req: Request,
    sh: &RetryState,
    deadline: Instant,
    upstream: &Arc<str>,
) -> Result<Response, ProxyError>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
    S::Future: Send + 'static,
{
    let try_end = Instant::now() + sh.cfg.per_try_timeout;
    let (end, per_try) = if try_end < deadline {
        (try_end, true)
    } else {
        (deadline, false)
    };
    let call = async {
        futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
        boxed_call(inner, req).await
    };
    match timeout_at(end, call).await {
        Ok(res) => res,
        Err(_) if per_try => {
            sh.metrics
                .timeouts
                .get_or_create(&TimeoutLabels { kind: "per_try" })
                .inc();
            Err(ProxyError::Timeout {
                upstream: upstream.to_string(),
                kind: TimeoutKind::PerTry,
                after: sh.cfg.per_try_timeout,
            })
        }
        Err(_) => Err(deadline_error(sh, upstream)),
    }
}

fn deadline_error(sh: &RetryState, upstream: &Arc<str>) -> ProxyError {
    sh.metrics
        .timeouts
        .get_or_create(&TimeoutLabels { kind: "deadline" })
        .inc();
    ProxyError::Timeout {
        upstream: upstream.to_string(),
        kind: TimeoutKind::Deadline,
        after: sh.cfg.deadline,
    }
}

/// A request body kept for sending again.
pub(crate) struct Replay {
    pub(crate) data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    pub(crate) fn body(&self) -> Body {
        match &self.trailers {
            // `Full` keeps an exact size hint, so the upstream sees the same framing every time.
            None => crate::full(self.data.clone()),
            Some(t) => {
                let frames = [Frame::data(self.data.clone()), Frame::trailers(t.clone())];
                StreamBody::new(futures::stream::iter(frames.map(Ok::<_, BoxError>))).boxed()
            }
        }
    }
}

pub(crate) enum Buffered {
    Replay(Replay),
    /// Too big to keep: the body to send once (the collected prefix, then the rest of the stream).
    Once(Body),
}

pub(crate) async fn buffer(
    mut body: Body,
    cap: usize,
    declared: Option<u64>,
) -> Result<Buffered, BoxError> {
    if declared.is_some_and(|n| n > cap as u64) {
        return Ok(Buffered::Once(body));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let mut trailers = None;
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        match frame?.into_data() {
            Ok(data) => {
                len += data.len();
                chunks.push(data);
                if len > cap {
                    let prefix = futures::stream::iter(
                        chunks
                            .into_iter()
                            .map(|b| Ok::<_, BoxError>(Frame::data(b))),
                    );
                    let rest = BodyStream::new(body);
                    return Ok(Buffered::Once(
                        StreamBody::new(futures::StreamExt::chain(prefix, rest)).boxed(),
                    ));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            all.freeze()
        }
    };
    Ok(Buffered::Replay(Replay { data, trailers }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tower::ServiceExt;

    #[derive(Clone, Debug)]
    enum Act {
        Status(u16),
        /// A sidecar's own refusal relayed from below.
        Marked(u16),
        Connect,
        Hang,
    }

    /// What the fake upstream received on one attempt.
    #[derive(Clone, Debug)]
    struct Seen {
        attempt: Option<String>,
        kept: Option<String>,
        body: Bytes,
        trailers: Option<HeaderMap>,
    }

    /// A scripted upstream that reads each request body to the end and records it.
    #[derive(Clone)]
    struct Upstream {
        script: Arc<Mutex<VecDeque<Act>>>,
        fallback: Act,
        seen: Arc<Mutex<Vec<Seen>>>,
        give_back: bool,
    }

    impl Upstream {
        fn new(script: impl IntoIterator<Item = Act>, fallback: Act) -> Self {
            Self {
                script: Arc::new(Mutex::new(script.into_iter().collect())),
                fallback,
                seen: Arc::default(),
                give_back: true,
            }
        }
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
        fn calls(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    impl Service<Request> for Upstream {
        type Response = Response;
        type Error = ProxyError;
        type Future = BoxFuture<'static, Result<Response, ProxyError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request) -> Self::Future {
            let act = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.fallback.clone());
            let seen = self.seen.clone();
            let (parts, body) = req.into_parts();
            let attempt = parts
                .headers
                .get(H_ATTEMPT)
                .map(|v| v.to_str().unwrap().to_string());
            let kept = parts
                .headers
                .get("x-kept")
                .map(|v| v.to_str().unwrap().to_string());
            // As the upstream client does: the head goes back to the retry layer.
            if self.give_back {
                HeadBack::give_back(parts);
            }
            Box::pin(async move {
                let collected = body.collect().await.expect("request body");
                let trailers = collected.trailers().cloned();
                seen.lock().unwrap().push(Seen {
                    attempt,
                    kept,
                    body: collected.to_bytes(),
                    trailers,
                });
                let status = |s: u16| {
                    let mut r = http::Response::new(crate::empty());
                    *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
                    r
                };
                match act {
                    Act::Status(s) => Ok(status(s)),
                    Act::Marked(s) => {
                        let mut r = status(s);
                        r.headers_mut()
                            .insert(H_ERROR, HeaderValue::from_static("shed"));
                        Ok(r)
                    }
                    Act::Connect => Err(ProxyError::Connect {
                        upstream: "u".into(),
                        msg: "refused".into(),
                    }),
                    Act::Hang => futures::future::pending().await,
                }
            })
        }
    }

    fn cfg() -> RetryConfig {
        RetryConfig {
            seed: Some(1),
            ..RetryConfig::default()
        }
    }

    fn stack(cfg: RetryConfig, up: &Upstream) -> (RetryService<Upstream>, RetryMetrics) {
        let m = RetryMetrics::default();
        (RetryLayer::new(cfg, m.clone()).layer(up.clone()), m)
    }

    fn req(method: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri("http://n1:5001/api")
            .body(crate::empty())
            .unwrap()
    }

    /// A body that arrives in pieces, without a Content-Length (like gRPC or chunked uploads).
    fn chunked(pieces: &[&'static str]) -> Body {
        let frames: Vec<_> = pieces
            .iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    async fn send(svc: &mut RetryService<Upstream>, r: Request) -> Result<Response, ProxyError> {
        svc.ready().await?.call(r).await
    }

    fn outcome(m: &RetryMetrics, outcome: &'static str) -> u64 {
        m.requests
            .get_or_create(&RetryOutcomeLabels { outcome })
            .get()
    }

    fn timeouts(m: &RetryMetrics, kind: &'static str) -> u64 {
        m.timeouts.get_or_create(&TimeoutLabels { kind }).get()
    }

    /// As the edge sends them: with `RequestMeta`, which carries the head-back slot.
    fn with_meta(mut r: Request) -> Request {
        r.extensions_mut().insert(RequestMeta::for_test("n1:5001"));
        r
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_keeps_the_head_gets_no_retry() {
        let mut up = Upstream::new([Act::Status(503)], Act::Status(200));
        up.give_back = false;
        let (mut svc, m) = stack(cfg(), &up);
        assert_eq!(
            send(&mut svc, with_meta(req("GET")))
                .await
                .unwrap()
                .status(),
            503
        );
        assert_eq!(
            (
                up.calls(),
                outcome(&m, "head_not_returned"),
                outcome(&m, "retried")
            ),
            (1, 1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_is_sent_again_with_its_headers_handed_back_or_copied() {
        for meta in [true, false] {
            let up = Upstream::new([Act::Status(503), Act::Connect], Act::Status(200));
            let (mut svc, m) = stack(cfg(), &up);
            let mut r = if meta {
                with_meta(req("GET"))
            } else {
                req("GET")
            };
            r.headers_mut()
                .insert("x-kept", HeaderValue::from_static("yes"));
            assert_eq!(send(&mut svc, r).await.unwrap().status(), 200);
            let seen = up.seen();
            assert_eq!(seen.len(), 3);
            assert!(seen.iter().all(|s| s.kept.as_deref() == Some("yes")));
            let attempts: Vec<_> = seen.into_iter().map(|s| s.attempt).collect();
            assert_eq!(attempts, [None, Some("2".into()), Some("3".into())]);
            assert_eq!(outcome(&m, "head_not_returned"), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_then_success_on_retry() {
        let up = Upstream::new([Act::Hang], Act::Status(200));
        let (mut svc, m) = stack(
            RetryConfig {
                per_try_timeout: Duration::from_secs(1),
                ..cfg()
            },
            &up,
        );
        let t0 = Instant::now();
        assert_eq!(send(&mut svc, req("GET")).await.unwrap().status(), 200);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took <= Duration::from_millis(1025),
            "took {took:?}"
        );
        let attempts: Vec<_> = up.seen().into_iter().map(|s| s.attempt).collect();
        assert_eq!(attempts, [None, Some("2".to_string())]);
        assert_eq!(timeouts(&m, "per_try"), 1);
        assert_eq!(
            (outcome(&m, "retried"), outcome(&m, "success_after_retry")),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_is_a_typed_error() {
        let up = Upstream::new([], Act::Hang);
        let (mut svc, m) = stack(
            RetryConfig {
                per_try_timeout: Duration::from_secs(2),
                ..cfg()
            },
            &up,
        );
        match send(&mut svc, req("POST")).await {
            Err(ProxyError::Timeout {
                kind: TimeoutKind::PerTry,
                after,
                upstream,
            }) => {
                assert_eq!(
                    (after, upstream.as_str()),
                    (Duration::from_secs(2), "n1:5001")
                );
            }
            other => panic!("unexpected {:?}", other.map(|r| r.status())),
        }
        assert_eq!((up.calls(), outcome(&m, "not_retryable")), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_caps_the_total_even_with_retries_left() {
        let up = Upstream::new([], Act::Hang);
        let cfg = RetryConfig {
            per_try_timeout: Duration::from_secs(1),
            deadline: Duration::from_millis(2500),
            max_retries: 10,
            ..cfg()
        };
        let (mut svc, m) = stack(cfg, &up);
        let t0 = Instant::now();
        let res = send(&mut svc, req("GET")).await;
        assert!(
            t0.elapsed() <= Duration::from_millis(2500),
            "deadline exceeded: {:?}",
            t0.elapsed()
        );
        assert!(
            matches!(
                res,
                Err(ProxyError::Timeout {
                    kind: TimeoutKind::Deadline,
                    ..
                })
            ),
            "got {:?}",
            res.map(|r| r.status())
        );
        assert_eq!(up.calls(), 3);
        assert_eq!((timeouts(&m, "per_try"), timeouts(&m, "deadline")), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_never_sleeps_past_the_deadline() {
        let up = Upstream::new([], Act::Status(503));
        let cfg = RetryConfig {
            deadline: Duration::from_millis(100),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(5),
            ..cfg()
        };
        let (mut svc, _) = stack(cfg, &up);
        let t0 = Instant::now();
        assert_eq!(
            send(&mut svc, req("GET")).await.unwrap().status(),
            503,
            "the last answer, at once"
        );
        assert!(t0.elapsed() < Duration::from_millis(100));
        assert_eq!(up.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn post_is_not_retried() {
        let up = Upstream::new([Act::Status(503)], Act::Status(200));
        let (mut svc, m) = stack(cfg(), &up);
        assert_eq!(send(&mut svc, req("POST")).await.unwrap().status(), 503);
        assert_eq!(up.calls(), 1);
        assert_eq!(outcome(&m, "not_retryable"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn operator_listed_put_is_retried() {
        let up = Upstream::new([Act::Connect], Act::Status(201));
        let cfg = RetryConfig {
            retry_methods: vec!["GET".into(), "PUT".into()],
            ..cfg()
        };
        let (mut svc, _) = stack(cfg, &up);
        assert_eq!(send(&mut svc, req("PUT")).await.unwrap().status(), 201);
        assert_eq!(up.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_worth_a_retry() {
        // Upstream 503 without the marker: retried.
        let up = Upstream::new([Act::Status(503)], Act::Status(200));
        let (mut svc, _) = stack(cfg(), &up);
        assert_eq!(send(&mut svc, req("GET")).await.unwrap().status(), 200);
        assert_eq!(up.calls(), 2);
        // A sidecar's own refusal, a 429, or a plain 500: not retried.
        for (act, status) in [
            (Act::Marked(503), 503),
            (Act::Status(429), 429),
            (Act::Status(500), 500),
        ] {
            let up = Upstream::new([act], Act::Status(200));
            let (mut svc, m) = stack(cfg(), &up);
            assert_eq!(send(&mut svc, req("GET")).await.unwrap().status(), status);
            assert_eq!(
                (up.calls(), outcome(&m, "retried")),
                (1, 0),
                "status {status}"
            );
        }
        // Connect failures: retried, up to max_retries.
        let up = Upstream::new([], Act::Connect);
        let (mut svc, m) = stack(cfg(), &up);
        assert!(matches!(
            send(&mut svc, req("HEAD")).await,
            Err(ProxyError::Connect { .. })
        ));
        assert_eq!(
            (
                up.calls(),
                outcome(&m, "retried"),
                outcome(&m, "success_after_retry")
            ),
            (3, 2, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn budget_runs_out_under_sustained_failure() {
        let up = Upstream::new([], Act::Status(503));
        let (mut svc, m) = stack(cfg(), &up);
        for _ in 0..100 {
            assert_eq!(send(&mut svc, req("GET")).await.unwrap().status(), 503);
        }
        // The reserve (min_per_sec × ttl = 100 retries) plus 20 % of the 100 requests; nothing has
        // expired yet, as the whole run (backoff included) stays within one ttl.
        let retried = outcome(&m, "retried");
        assert_eq!(retried, 120);
        assert_eq!(up.calls() as u64, 100 + retried);
        assert!(outcome(&m, "budget_exhausted") > 0);
        assert_eq!(m.budget_exhausted.get(), outcome(&m, "budget_exhausted"));
    }

    #[tokio::test(start_paused = true)]
    async fn body_is_replayed_identically() {
        let up = Upstream::new([Act::Status(502), Act::Connect], Act::Status(200));
        let (mut svc, _) = stack(
            RetryConfig {
                retry_methods: vec!["PUT".into()],
                ..cfg()
            },
            &up,
        );
        let r = http::Request::builder()
            .method("PUT")
            .uri("/blocks/b1")
            .body(chunked(&["hello ", "storage ", "world"]))
            .unwrap();
        assert_eq!(send(&mut svc, r).await.unwrap().status(), 200);
        let seen = up.seen();
        assert_eq!(seen.len(), 3);
        for s in &seen {
            assert_eq!(s.body, "hello storage world");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_are_replayed_too() {
        let up = Upstream::new([Act::Status(503)], Act::Status(200));
        let (mut svc, _) = stack(cfg(), &up);
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("abc"));
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"data"))),
            Ok(Frame::trailers(t.clone())),
        ];
        let body = StreamBody::new(futures::stream::iter(frames)).boxed();
        let r = http::Request::builder()
            .method("GET")
            .uri("/")
            .body(body)
            .unwrap();
        assert_eq!(send(&mut svc, r).await.unwrap().status(), 200);
        for s in up.seen() {
            assert_eq!(
                (s.body.as_ref(), s.trailers.as_ref()),
                (&b"data"[..], Some(&t))
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn body_over_the_cap_goes_once_and_intact() {
        // No Content-Length: found out while buffering; the prefix and the rest both arrive.
        let up = Upstream::new([], Act::Status(503));
        let (mut svc, m) = stack(
            RetryConfig {
                max_replay_bytes: 8,
                ..cfg()
            },
            &up,
        );
        let r = http::Request::builder()
            .method("GET")
            .uri("/")
            .body(chunked(&["0123", "4567", "89ab", "cdef"]))
            .unwrap();
        assert_eq!(send(&mut svc, r).await.unwrap().status(), 503);
        let seen = up.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body, "0123456789abcdef");
        assert_eq!(outcome(&m, "too_large_to_replay"), 1);

        // A declared Content-Length over the cap: not buffered at all.
        let up = Upstream::new([], Act::Status(503));
        let (mut svc, m) = stack(
            RetryConfig {
                max_replay_bytes: 8,
                ..cfg()
            },
            &up,
        );
        let r = http::Request::builder()
            .method("GET")
            .uri("/")
            .header("content-length", "16")
            .body(crate::full("0123456789abcdef"))
            .unwrap();
        assert_eq!(send(&mut svc, r).await.unwrap().status(), 503);
        assert_eq!(up.seen()[0].body, "0123456789abcdef");
        assert_eq!((up.calls(), outcome(&m, "too_large_to_replay")), (1, 1));

        // Exactly at the cap: still replayable.
        let up = Upstream::new([Act::Status(503)], Act::Status(200));
        let (mut svc, _) = stack(
            RetryConfig {
                max_replay_bytes: 8,
                ..cfg()
            },
            &up,
        );
        let r = http::Request::builder()
            .method("GET")
            .uri("/")
            .body(chunked(&["0123", "4567"]))
            .unwrap();
        assert_eq!(send(&mut svc, r).await.unwrap().status(), 200);
        assert_eq!(
            up.seen().iter().map(|s| s.body.clone()).collect::<Vec<_>>(),
            ["01234567", "01234567"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_full_jitter_within_bounds_and_seeded() {
        let layer = |seed| {
            RetryLayer::new(
                RetryConfig {
                    seed: Some(seed),
                    ..RetryConfig::default()
                },
                RetryMetrics::default(),
            )
        };
        let a = layer(9);
        let b = layer(9);
        for n in 1..=6 {
            let ceiling = Duration::from_millis((25u64 << (n - 1)).min(250));
            let (x, y) = (a.shared.backoff(n), b.shared.backoff(n));
            assert_eq!(x, y, "same seed, same pauses");
            assert!(x <= ceiling, "attempt {n}: {x:?} > {ceiling:?}");
        }
    }

    /// The edge boxes the stack into a `BoxCloneSyncService`.
    #[test]
    fn service_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<RetryService<Upstream>>();
    }

    #[test]
    fn config_defaults_parse_and_validate() {
        let d = RetryConfig::default();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.retry_methods, ["GET", "HEAD", "OPTIONS"]);
        let c: RetryConfig = toml::from_str(
            "per_try_timeout = \"2s\"\nretry_methods = [\"GET\", \"PUT\"]\n[budget]\nratio = 0.1\n",
        )
        .unwrap();
        assert_eq!(c.per_try_timeout, Duration::from_secs(2));
        assert_eq!((c.budget.ratio, c.budget.min_per_sec), (0.1, 10));
        assert!(
            toml::from_str::<RetryConfig>("retries = 3").is_err(),
            "unknown fields are refused"
        );
        let bad = |c: RetryConfig| c.validate().unwrap_err();
        assert_eq!(
            bad(RetryConfig {
                per_try_timeout: Duration::ZERO,
                ..d.clone()
            }),
            "per_try_timeout must be > 0"
        );
        assert!(bad(RetryConfig {
            max_retries: 11,
            ..d.clone()
        })
        .starts_with("max_retries must be ≤ 10"));
        assert!(bad(RetryConfig {
            retry_methods: vec!["get".into()],
            ..d.clone()
        })
        .starts_with("retry_methods"));
        let budget = RetryBudgetConfig {
            ttl: Duration::from_secs(120),
            ..d.budget.clone()
        };
        assert!(bad(RetryConfig {
            budget,
            ..d.clone()
        })
        .starts_with("budget.ttl"));
        let budget = RetryBudgetConfig {
            ratio: -1.0,
            ..d.budget.clone()
        };
        assert!(bad(RetryConfig {
            budget,
            ..d.clone()
        })
        .starts_with("budget.ratio"));
        assert!(bad(RetryConfig {
            backoff_base: Duration::from_secs(1),
            ..d
        })
        .starts_with("backoff_base"));
    }
}
