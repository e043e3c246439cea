//! Rate limits: GCRA request limits (global and per client) answered with 429 + `Retry-After`,
//! and a byte-rate limit that paces response bodies of bulk transfers.
//!
//! Request limits reject instead of waiting: a client over its rate learns at once when to come
//! back, and the sidecar holds no state (timers, queued requests) on its behalf. Only the byte
//! limiter waits, because a body that has already started cannot be refused, only slowed.
//!
//! Built on governor rather than tower's `RateLimit`: governor's limiters live behind an `Arc`,
//! so every clone of the service (one per connection) enforces the same limit, whereas tower's
//! limiter is per instance and not `Clone`.
//!
//! Only `check`/`check_key`/`check_n` are used, never governor's `until_ready`: it sleeps on
//! futures-timer, which neither the tokio runtime's timer nor paused test time drives.

use crate::classify::{ClientId, TrafficClass};
use crate::error::ProxyError;
use crate::policy::{Maybe, OnAnswer, Then};
use crate::{Body, BoxError, Request, Response};
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{InsufficientCapacity, Quota, RateLimiter};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
pub const DEFAULT_BURST_BYTES: u64 = 1024 * 1024;
/// The byte limiter counts in cells of this size, so that a `u32` cell count covers large bursts.
pub const BYTES_PER_CELL: u64 = 1024;
/// Above this a byte rate would need a replenish period under one nanosecond per cell.
pub const MAX_BYTES_PER_SECOND: u64 = BYTES_PER_CELL * 1_000_000_000;
/// Bodies are released in pieces of at most this size. Small pieces keep concurrent bodies
/// competing for similar amounts, so one large frame cannot be starved by many small ones, and
/// keep each wait short.
const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Stale per-client state is swept at least this often (in per-client checks) even when the key
/// table is not full, so the `throttle_keys` gauge follows the live population.
const SWEEP_EVERY: u64 = 1024;

/// A GCRA quota: `per_second` sustained, up to `burst` at once after a quiet period.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for Rate {
    fn default() -> Self {
        Self {
            per_second: 100,
            burst: 100,
        }
    }
}

impl Rate {
    fn validate(&self, name: &str) -> Result<(), String> {
        if self.per_second == 0 {
            return Err(format!(
                "throttle.{name}.per_second must be at least 1 (omit `{name}` to turn the limit off)"
            ));
        }
        if self.burst == 0 {
            return Err(format!("throttle.{name}.burst must be at least 1"));
        }
        Ok(())
    }

    fn quota(&self) -> Quota {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(nz(self.per_second)).allow_burst(nz(self.burst))
    }
}

/// `None` turns a limit off. Exempt classes bypass every limit here, requests and bytes alike:
/// control traffic (membership, health) is what lets the cluster notice and route around an
/// overloaded node, so throttling it would make overload worse.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub global: Option<Rate>,
    pub per_client: Option<Rate>,
    /// Upper bound on per-client limiter states kept in memory.
    pub max_clients: usize,
    pub exempt_classes: Vec<TrafficClass>,
    /// ThrottleState by all response bodies through this listener (not per request).
    pub bytes_per_second: Option<u64>,
    pub burst_bytes: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            global: None,
            per_client: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            exempt_classes: vec![TrafficClass::Control],
            bytes_per_second: None,
            burst_bytes: DEFAULT_BURST_BYTES,
        }
    }
}

impl ThrottleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.global {
            r.validate("global")?;
        }
        if let Some(r) = &self.per_client {
            r.validate("per_client")?;
        }
        if self.max_clients == 0 {
            return Err("throttle.max_clients must be at least 1".into());
        }
        if let Some(bps) = self.bytes_per_second {
            if !(BYTES_PER_CELL..=MAX_BYTES_PER_SECOND).contains(&bps) {
                return Err(format!(
                    "throttle.bytes_per_second must be between {BYTES_PER_CELL} and \
                     {MAX_BYTES_PER_SECOND}, got {bps} (omit it to turn the limit off)"
                ));
            }
        }
        if self.burst_bytes < BYTES_PER_CELL {
            return Err(format!(
                "throttle.burst_bytes must be at least {BYTES_PER_CELL} (one KiB), got {}",
                self.burst_bytes
            ));
        }
        if self.burst_bytes / BYTES_PER_CELL > u64::from(u32::MAX) {
            return Err(format!(
                "throttle.burst_bytes must be at most {} bytes, got {}",
                u64::from(u32::MAX) * BYTES_PER_CELL,
                self.burst_bytes
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottledLabels {
    scope: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct ThrottleMetrics {
    throttled: Family<ThrottledLabels, Counter>,
    keys: Gauge,
    keys_overflow: Counter,
    bytes_wait_seconds: Counter<f64, AtomicU64>,
}

impl ThrottleMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "throttled",
            "Requests refused with 429, by limit (client or global) and traffic class",
            self.throttled.clone(),
        );
        registry.register(
            "throttle_keys",
            "Per-client limiter states held in memory",
            self.keys.clone(),
        );
        registry.register(
            "throttle_keys_overflow",
            "Requests checked against the global limit only because the per-client key table was full",
            self.keys_overflow.clone(),
        );
        registry.register(
            "throttled_bytes_wait_seconds",
            "Time response bodies spent waiting for the byte-rate limit",
            self.bytes_wait_seconds.clone(),
        );
    }

    #[cfg(test)]
    fn throttled(&self, scope: &'static str, class: TrafficClass) -> u64 {
        self.throttled
            .get_or_create(&ThrottledLabels {
                scope,
                class: class.as_str(),
            })
            .get()
    }
}

/// Per-client key: requests without a [`ClientId`] share the `None` ("anonymous") budget.
type ClientKey = Option<ClientId>;

/// governor's own keyed stores grow with every new key until `retain_recent` runs; this one
/// refuses to grow past `max` even between sweeps.
///
/// A key that does not fit is judged as if it were new (which always passes a fresh GCRA state)
/// and its state is not kept: such a client is held only by the global limit. That is the
/// deliberate choice over refusing unknown clients outright: a flood of distinct identities
/// (spoofed tokens, many addresses) must not lock out legitimate clients arriving meanwhile, and
/// the global limit still caps what the flood as a whole gets (so a per-client limit should come
/// with a global one). Clients already tracked keep their own limit throughout.
#[derive(Debug)]
struct BoundedKeyStore {
    /// Theoretical arrival time per key, in nanoseconds since the limiter started.
    map: Mutex<HashMap<ClientKey, u64>>,
    len: AtomicUsize,
    max: usize,
    keys: Gauge,
    overflow: Counter,
}

impl BoundedKeyStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, u64>> {
        // The map holds plain numbers: a panic elsewhere cannot leave it inconsistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_len(&self, len: usize) {
        self.len.store(len, Ordering::Relaxed);
        self.keys.set(i64::try_from(len).unwrap_or(i64::MAX));
    }
}

impl StateStore for BoundedKeyStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.lock();
        if let Some(tat) = map.get_mut(key) {
            let (t, next) = f(Some(Nanos::from(*tat)))?;
            *tat = next.as_u64();
            return Ok(t);
        }
        if map.len() >= self.max {
            self.overflow.inc();
            return f(None).map(|(t, _)| t);
        }
        let (t, next) = f(None)?;
        map.insert(key.clone(), next.as_u64());
        self.publish_len(map.len());
        Ok(t)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for BoundedKeyStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        let mut map = self.lock();
        map.retain(|_, tat| *tat > drop_below);
        self.publish_len(map.len());
    }

    fn shrink_to_fit(&self) {
        self.lock().shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// governor clock on tokio time, for the byte limiter: its waits are tokio sleeps, so its notion
/// of "now" must be the one those sleeps advance (including paused time in tests).
#[derive(Clone, Debug)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<C> = RateLimiter<ClientKey, BoundedKeyStore, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct ByteLimiter {
    limiter: Direct<TokioClock>,
    clock: TokioClock,
    /// Largest piece released at once; never more cells than the burst, which `check_n` could
    /// never grant.
    chunk_bytes: usize,
    wait_seconds: Counter<f64, AtomicU64>,
}

struct ThrottleState<C: Clock> {
    clock: C,
    global: Option<Direct<C>>,
    per_client: Option<Keyed<C>>,
    max_clients: usize,
    exempt: [bool; 3],
    bytes: Option<Arc<ByteLimiter>>,
    metrics: ThrottleMetrics,
    /// Per-client checks so far, and the count at the last sweep of stale keys.
    checks: AtomicU64,
    last_sweep: AtomicU64,
}

fn class_index(class: TrafficClass) -> usize {
    match class {
        TrafficClass::Control => 0,
        TrafficClass::Replication => 1,
        TrafficClass::Client => 2,
    }
}

impl<C> ThrottleState<C>
where
    C: Clock,
{
    /// Per-client limit first, then global.
    ///
    /// In this order a client over its own rate is refused without touching the global budget,
    /// so one abusive client cannot use up the capacity every other client shares. The price is
    /// that governor has no refund: a request that passes its client limit and is then refused
    /// by the global limit has still used one of its client's cells. That only happens while
    /// the whole listener is over its global rate, and it errs towards slowing clients that are
    /// sending at that moment, which is acceptable.
    fn admit(&self, req: &Request, class: TrafficClass) -> Result<(), ProxyError> {
        if let Some(limiter) = &self.per_client {
            self.maybe_sweep(limiter);
            let key: ClientKey = ClientId::of(req);
            if let Err(not_until) = limiter.check_key(&key) {
                return Err(self.refuse(
                    "client",
                    class,
                    not_until.wait_time_from(self.clock.now()),
                ));
            }
        }
        if let Some(limiter) = &self.global {
            if let Err(not_until) = limiter.check() {
                return Err(self.refuse(
                    "global",
                    class,
                    not_until.wait_time_from(self.clock.now()),
                ));
            }
        }
        Ok(())
    }

    fn refuse(
        &self,
        scope: &'static str,
        class: TrafficClass,
        retry_after: Duration,
    ) -> ProxyError {
        self.metrics
            .throttled
            .get_or_create(&ThrottledLabels {
                scope,
                class: class.as_str(),
            })
            .inc();
        tracing::debug!(
            scope,
            class = class.as_str(),
            ?retry_after,
            "request throttled"
        );
        ProxyError::Throttled { scope, retry_after }
    }

    /// Sweeps keys whose state is indistinguishable from a fresh one: every `SWEEP_EVERY` checks,
    /// and more often while the table is full (so new clients get tracked again as soon as old
    /// ones go quiet), but at most once per `max_clients / 16` checks then, so a flood of new
    /// keys costs amortised O(1) per request rather than a full scan each.
    fn maybe_sweep(&self, limiter: &Keyed<C>) {
        let n = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_sweep.load(Ordering::Relaxed);
        let since = n.saturating_sub(last);
        let full_gap = (self.max_clients as u64 / 16).clamp(1, SWEEP_EVERY);
        let due = since >= SWEEP_EVERY || (since >= full_gap && limiter.len() >= self.max_clients);
        if due
            && self
                .last_sweep
                .compare_exchange(last, n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Every service built from one layer, and every clone of those, shares the same limiters.
pub struct ThrottleLayer<C: Clock = DefaultClock> {
    shared: Arc<ThrottleState<C>>,
}

impl<C: Clock> Clone for ThrottleLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl ThrottleLayer {
    /// `config` should have passed [`ThrottleConfig::validate`]; out-of-range values are
    /// clamped rather than trusted.
    pub fn new(config: ThrottleConfig, metrics: ThrottleMetrics) -> Self {
        Self::with_clock(config, metrics, DefaultClock::default())
    }
}

impl<C> ThrottleLayer<C>
where
    C: Clock + Clone,
{
    /// The request limiters run on `clock` (tests pass governor's `FakeRelativeClock`); the byte
    /// limiter always runs on tokio time, because it sleeps.
    pub fn with_clock(config: ThrottleConfig, metrics: ThrottleMetrics, clock: C) -> Self {
        let global = config
            .global
            .as_ref()
            .map(|r| RateLimiter::direct_with_clock(r.quota(), clock.clone()));
        let per_client = config.per_client.as_ref().map(|r| {
            let store = BoundedKeyStore {
                map: Mutex::new(HashMap::new()),
                len: AtomicUsize::new(0),
                max: config.max_clients.max(1),
                keys: metrics.keys.clone(),
                overflow: metrics.keys_overflow.clone(),
            };
            RateLimiter::new(r.quota(), store, clock.clone())
        });
        let bytes = config.bytes_per_second.map(|bps| {
            let bps = bps.clamp(BYTES_PER_CELL, MAX_BYTES_PER_SECOND);
            let burst_cells = (config.burst_bytes / BYTES_PER_CELL).clamp(1, u64::from(u32::MAX));
            let period = Duration::from_nanos(BYTES_PER_CELL * 1_000_000_000 / bps);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(NonZeroU32::new(burst_cells as u32).unwrap_or(NonZeroU32::MIN));
            let clock = TokioClock {
                origin: tokio::time::Instant::now(),
            };
            let chunk_bytes = (burst_cells * BYTES_PER_CELL).min(MAX_CHUNK_BYTES as u64) as usize;
            Arc::new(ByteLimiter {
                limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
                clock,
                chunk_bytes,
                wait_seconds: metrics.bytes_wait_seconds.clone(),
            })
        });
        let mut exempt = [false; 3];
        for c in &config.exempt_classes {
            exempt[class_index(*c)] = true;
        }
        Self {
            shared: Arc::new(ThrottleState {
                clock,
                global,
                per_client,
                max_clients: config.max_clients.max(1),
                exempt,
                bytes,
                metrics,
                checks: AtomicU64::new(0),
                last_sweep: AtomicU64::new(0),
            }),
        }
    }
}

impl<S, C: Clock> tower::Layer<S> for ThrottleLayer<C> {
    type Service = Throttle<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            shared: self.shared.clone(),
        }
    }
}

pub struct Throttle<S, C: Clock = DefaultClock> {
    inner: S,
    shared: Arc<ThrottleState<C>>,
}

impl<S: Clone, C: Clock> Clone for Throttle<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> tower::Service<Request> for Throttle<S, C>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: Clock,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Maybe<Then<S::Future, PaceBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let class = TrafficClass::of(&req);
        if self.shared.exempt[class_index(class)] {
            return Maybe::direct(Then::new(self.inner.call(req), PaceBody(None)));
        }
        if let Err(e) = self.shared.admit(&req, class) {
            return Maybe::err(e);
        }
        let pace = PaceBody(self.shared.bytes.clone());
        Maybe::direct(Then::new(self.inner.call(req), pace))
    }
}

/// The answer's body under the byte-rate limit, if one is set.
pub struct PaceBody(Option<Arc<ByteLimiter>>);

impl OnAnswer for PaceBody {
    fn on_answer(self, res: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        match self.0 {
            Some(bytes) => res.map(|resp| resp.map(|body| ThrottledBody::new(body, bytes).boxed())),
            None => res,
        }
    }
}

pin_project_lite::pin_project! {
    /// Releases the wrapped body's data no faster than the shared byte limiter allows.
    struct ThrottledBody {
        #[pin]
        inner: Body,
        limiter: Arc<ByteLimiter>,
        // Data taken from `inner` but not yet released.
        pending: Bytes,
        // Bytes already paid for (cells are whole KiB) but not yet released, so many small
        // frames are charged what they carry rather than a KiB each.
        credit: u64,
        wait: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    }
}

impl ThrottledBody {
    fn new(inner: Body, limiter: Arc<ByteLimiter>) -> Self {
        Self {
            inner,
            limiter,
            pending: Bytes::new(),
            credit: 0,
            wait: None,
        }
    }
}

impl http_body::Body for ThrottledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some((sleep, waited)) = this.wait.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.limiter.wait_seconds.inc_by(waited.as_secs_f64());
                *this.wait = None;
            }
            if !this.pending.is_empty() {
                let len = this.pending.len().min(this.limiter.chunk_bytes);
                let need = (len as u64).saturating_sub(*this.credit);
                if need == 0 {
                    *this.credit -= len as u64;
                    return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(len)))));
                }
                let cells = need.div_ceil(BYTES_PER_CELL);
                let n = NonZeroU32::new(cells as u32).unwrap_or(NonZeroU32::MIN);
                match this.limiter.limiter.check_n(n) {
                    Ok(Ok(())) => {
                        *this.credit = *this.credit + cells * BYTES_PER_CELL - len as u64;
                        return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(len)))));
                    }
                    Ok(Err(not_until)) => {
                        let d = not_until.wait_time_from(this.limiter.clock.now());
                        *this.wait = Some((Box::pin(tokio::time::sleep(d)), d));
                        continue;
                    }
                    // Unreachable, since chunks are never larger than the burst; releasing the
                    // data unpaced beats stalling the body forever.
                    Err(InsufficientCapacity(_)) => {
                        return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(len)))));
                    }
                }
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => *this.pending = data,
                    // Trailers are not paced.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::{IpAddr, Ipv4Addr};
    use tower::{Layer, Service, ServiceExt};

    /// Pins the closure's argument type through the bound: an annotated closure argument
    /// (`|r: Request|`) is inferred as higher-ranked over the boxed error's lifetime and then
    /// fails the `Service<Request>` bounds.
    fn service<F, Fut>(f: F) -> tower::util::ServiceFn<F>
    where
        F: FnMut(Request) -> Fut,
        Fut: std::future::Future<Output = Result<Response, ProxyError>>,
    {
        tower::service_fn(f)
    }

    fn ok_upstream() -> impl tower::Service<
        Request,
        Response = Response,
        Error = ProxyError,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        service(|_req| async { Ok(http::Response::new(crate::full("ok"))) })
    }

    fn req(client: Option<&str>, class: TrafficClass) -> Request {
        let mut r = http::Request::new(crate::empty());
        r.extensions_mut().insert(class);
        if let Some(c) = client {
            r.extensions_mut().insert(ClientId::Token(c.into()));
        }
        r
    }

    fn client(c: &str) -> Request {
        req(Some(c), TrafficClass::Client)
    }

    async fn send<S>(svc: &mut S, r: Request) -> Result<Response, ProxyError>
    where
        S: Service<Request, Response = Response, Error = ProxyError>,
    {
        svc.ready().await?.call(r).await
    }

    fn rate(per_second: u32, burst: u32) -> Option<Rate> {
        Some(Rate { per_second, burst })
    }

    fn layer(
        cfg: ThrottleConfig,
    ) -> (
        ThrottleLayer<FakeRelativeClock>,
        ThrottleMetrics,
        FakeRelativeClock,
    ) {
        cfg.validate().unwrap();
        let metrics = ThrottleMetrics::default();
        let clock = FakeRelativeClock::default();
        (
            ThrottleLayer::with_clock(cfg, metrics.clone(), clock.clone()),
            metrics,
            clock,
        )
    }

    fn assert_throttled(r: Result<Response, ProxyError>, want_scope: &str, want_wait: Duration) {
        match r {
            Err(ProxyError::Throttled { scope, retry_after }) => {
                assert_eq!(scope, want_scope);
                assert_eq!(retry_after, want_wait);
            }
            Err(e) => panic!("expected throttled, got {e}"),
            Ok(_) => panic!("expected throttled, got an answer"),
        }
    }

    #[tokio::test]
    async fn client_over_its_rate_gets_429_while_others_are_served() {
        let (layer, metrics, _clock) = layer(ThrottleConfig {
            per_client: rate(2, 2),
            ..Default::default()
        });
        let mut svc = layer.layer(ok_upstream());
        send(&mut svc, client("a")).await.unwrap();
        send(&mut svc, client("a")).await.unwrap();
        let err = send(&mut svc, client("a")).await.unwrap_err();
        let resp = err.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "1");

        // Exact wait: one cell per 500 ms, bucket empty at t=0.
        assert_throttled(
            send(&mut svc, client("a")).await,
            "client",
            Duration::from_millis(500),
        );
        send(&mut svc, client("b")).await.unwrap();
        send(&mut svc, client("b")).await.unwrap();
        assert_eq!(metrics.throttled("client", TrafficClass::Client), 2);
        assert_eq!(metrics.keys.get(), 2);
    }

    #[tokio::test]
    async fn limiter_refills_as_the_clock_advances() {
        let (layer, _, clock) = layer(ThrottleConfig {
            per_client: rate(1, 1),
            ..Default::default()
        });
        let mut svc = layer.layer(ok_upstream());
        send(&mut svc, client("a")).await.unwrap();
        assert_throttled(
            send(&mut svc, client("a")).await,
            "client",
            Duration::from_secs(1),
        );
        clock.advance(Duration::from_millis(400));
        assert_throttled(
            send(&mut svc, client("a")).await,
            "client",
            Duration::from_millis(600),
        );
        clock.advance(Duration::from_millis(600));
        send(&mut svc, client("a")).await.unwrap();
    }

    #[tokio::test]
    async fn global_limit_applies_across_clients() {
        let (layer, metrics, clock) = layer(ThrottleConfig {
            global: rate(3, 3),
            per_client: rate(10, 10),
            ..Default::default()
        });
        let mut svc = layer.layer(ok_upstream());
        for c in ["a", "b", "c"] {
            send(&mut svc, client(c)).await.unwrap();
        }
        let r = send(&mut svc, req(Some("d"), TrafficClass::Replication)).await;
        assert_throttled(r, "global", Duration::from_nanos(333_333_333));
        assert_eq!(metrics.throttled("global", TrafficClass::Replication), 1);
        clock.advance(Duration::from_secs(1));
        send(&mut svc, client("d")).await.unwrap();
    }

    #[tokio::test]
    async fn a_client_refused_by_its_own_limit_leaves_the_global_budget_alone() {
        let (layer, _, _) = layer(ThrottleConfig {
            global: rate(2, 2),
            per_client: rate(1, 1),
            ..Default::default()
        });
        let mut svc = layer.layer(ok_upstream());
        send(&mut svc, client("abuser")).await.unwrap();
        for _ in 0..10 {
            assert_throttled(
                send(&mut svc, client("abuser")).await,
                "client",
                Duration::from_secs(1),
            );
        }
        send(&mut svc, client("polite")).await.unwrap();
    }

    #[tokio::test]
    async fn requests_without_identity_share_one_anonymous_budget() {
        let (layer, _, _) = layer(ThrottleConfig {
            per_client: rate(1, 1),
            ..Default::default()
        });
        let mut svc = layer.layer(ok_upstream());
        send(&mut svc, http::Request::new(crate::empty()))
            .await
            .unwrap();
        assert_throttled(
            send(&mut svc, req(None, TrafficClass::Client)).await,
            "client",
            Duration::from_secs(1),
        );
        let mut by_addr = req(None, TrafficClass::Client);
        by_addr
            .extensions_mut()
            .insert(ClientId::Addr(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        send(&mut svc, by_addr).await.unwrap();
    }

    #[tokio::test]
    async fn control_traffic_is_never_throttled() {
        let (layer, metrics, _) = layer(ThrottleConfig {
            global: rate(1, 1),
            per_client: rate(1, 1),
            ..Default::default()
        });
        let mut svc = layer.layer(ok_upstream());
        for _ in 0..50 {
            send(&mut svc, req(Some("a"), TrafficClass::Control))
                .await
                .unwrap();
        }
        // Control requests took nothing from the budgets.
        send(&mut svc, client("a")).await.unwrap();
        assert_eq!(metrics.throttled("client", TrafficClass::Control), 0);
        assert_eq!(metrics.throttled("global", TrafficClass::Control), 0);
    }

    #[tokio::test]
    async fn key_memory_stays_bounded_under_many_clients() {
        let (layer, metrics, clock) = layer(ThrottleConfig {
            global: rate(1000, 1000),
            per_client: rate(1, 1),
            max_clients: 8,
            ..Default::default()
        });
        let limiter_len =
            |l: &ThrottleLayer<FakeRelativeClock>| l.shared.per_client.as_ref().unwrap().len();
        let mut svc = layer.layer(ok_upstream());
        for i in 0..100 {
            // Every client is new and under its own rate; all still pass.
            send(&mut svc, client(&format!("c{i}"))).await.unwrap();
            assert!(limiter_len(&layer) <= 8);
        }
        assert_eq!(limiter_len(&layer), 8);
        assert_eq!(metrics.keys.get(), 8);
        assert_eq!(metrics.keys_overflow.get(), 92);
        // Tracked clients keep their own limit while the table is full ...
        assert_throttled(
            send(&mut svc, client("c0")).await,
            "client",
            Duration::from_secs(1),
        );
        // ... untracked ones are held by the global limit only.
        send(&mut svc, client("c99")).await.unwrap();
        assert_eq!(metrics.keys_overflow.get(), 93);

        // Once the old clients go quiet, their state is swept and new clients are tracked again.
        clock.advance(Duration::from_secs(5));
        send(&mut svc, client("new")).await.unwrap();
        assert_throttled(
            send(&mut svc, client("new")).await,
            "client",
            Duration::from_secs(1),
        );
        assert_eq!(limiter_len(&layer), 1);
        assert_eq!(metrics.keys.get(), 1);
        assert_eq!(metrics.keys_overflow.get(), 93);
    }

    #[tokio::test]
    async fn stale_keys_are_swept_even_below_the_bound() {
        let (layer, metrics, clock) = layer(ThrottleConfig {
            per_client: rate(1000, 1),
            ..Default::default()
        });
        let mut svc = layer.layer(ok_upstream());
        for i in 0..SWEEP_EVERY - 1 {
            send(&mut svc, client(&format!("c{i}"))).await.unwrap();
        }
        assert_eq!(metrics.keys.get(), (SWEEP_EVERY - 1) as i64);
        clock.advance(Duration::from_secs(1));
        send(&mut svc, client("last")).await.unwrap();
        assert_eq!(metrics.keys.get(), 1);
    }

    /// A large body through a byte-limited listener.
    fn big_body(frames: usize, frame_bytes: usize) -> Body {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..frames)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; frame_bytes]))))
            .collect();
        BodyExt::boxed(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )))
    }

    fn bulk_upstream(
        frames: usize,
        frame_bytes: usize,
    ) -> impl tower::Service<
        Request,
        Response = Response,
        Error = ProxyError,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        service(move |_req| async move { Ok(http::Response::new(big_body(frames, frame_bytes))) })
    }

    fn byte_limited(bps: u64, burst: u64) -> (ThrottleLayer<FakeRelativeClock>, ThrottleMetrics) {
        let (layer, metrics, _) = layer(ThrottleConfig {
            bytes_per_second: Some(bps),
            burst_bytes: burst,
            ..Default::default()
        });
        (layer, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn byte_rate_paces_a_large_body() {
        // 256 KiB at 64 KiB/s with a 16 KiB burst: the first 16 KiB go at once, the rest take
        // 240 KiB / 64 KiB/s = 3.75 s. Frames (128 KiB) are larger than the burst and are split.
        let (layer, metrics) = byte_limited(64 * 1024, 16 * 1024);
        let mut svc = layer.layer(bulk_upstream(2, 131_072));
        let start = tokio::time::Instant::now();
        let resp = send(&mut svc, client("a")).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let elapsed = start.elapsed();
        assert_eq!(body.len(), 262_144);
        assert!(body[..131_072].iter().all(|&b| b == 0));
        assert!(body[131_072..].iter().all(|&b| b == 1));
        assert!(
            (Duration::from_millis(3700)..=Duration::from_millis(3800)).contains(&elapsed),
            "{elapsed:?}"
        );
        let waited = metrics.bytes_wait_seconds.get();
        assert!((3.7..=3.8).contains(&waited), "{waited}");
    }

    #[tokio::test(start_paused = true)]
    async fn byte_rate_is_shared_by_all_bodies_of_the_listener() {
        // Two 128 KiB bodies at once through one 64 KiB/s limiter take as long as one 256 KiB.
        let (layer, _) = byte_limited(64 * 1024, 16 * 1024);
        let svc = layer.layer(bulk_upstream(8, 16 * 1024));
        let start = tokio::time::Instant::now();
        let read = |mut svc: Throttle<_, FakeRelativeClock>| async move {
            let resp = send(&mut svc, client("a")).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes().len()
        };
        let (a, b) = futures::join!(read(svc.clone()), read(svc.clone()));
        assert_eq!(a + b, 262_144);
        let elapsed = start.elapsed();
        assert!(
            (Duration::from_millis(3700)..=Duration::from_millis(3800)).contains(&elapsed),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn small_frames_are_charged_what_they_carry() {
        // 64 KiB in 100-byte frames at 64 KiB/s (burst 1 KiB) takes about a second, not the
        // ~10 s it would if every frame cost a whole KiB cell.
        let (layer, _) = byte_limited(64 * 1024, 1024);
        let mut svc = layer.layer(bulk_upstream(655, 100));
        let start = tokio::time::Instant::now();
        let resp = send(&mut svc, client("a")).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 65_500);
        let elapsed = start.elapsed();
        assert!(
            (Duration::from_millis(950)..=Duration::from_millis(1050)).contains(&elapsed),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn control_bodies_are_not_paced() {
        let (layer, metrics) = byte_limited(1024, 1024);
        let mut svc = layer.layer(bulk_upstream(4, 64 * 1024));
        let start = tokio::time::Instant::now();
        let resp = send(&mut svc, req(None, TrafficClass::Control))
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 256 * 1024);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(metrics.bytes_wait_seconds.get(), 0.0);
    }

    #[tokio::test]
    async fn throttled_body_passes_trailers_and_errors_through() {
        let (layer, _) = byte_limited(1024 * 1024, 1024 * 1024);
        let inner = service(|_req| async {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"abc"))),
                Ok(Frame::trailers(http::HeaderMap::new())),
                Err("upstream reset".into()),
            ];
            Ok(http::Response::new(BodyExt::boxed(
                http_body_util::StreamBody::new(futures::stream::iter(frames)),
            )))
        });
        let mut svc = layer.layer(inner);
        let mut body = send(&mut svc, client("a")).await.unwrap().into_body();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        let f = body.frame().await.unwrap().unwrap();
        assert!(f.is_trailers());
        assert!(body.frame().await.unwrap().is_err());
    }

    #[test]
    fn config_validation() {
        assert_eq!(ThrottleConfig::default().validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut ThrottleConfig)| {
            let mut c = ThrottleConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            bad(&|c| c.global = rate(0, 5)),
            "throttle.global.per_second must be at least 1 (omit `global` to turn the limit off)"
        );
        assert_eq!(
            bad(&|c| c.per_client = rate(5, 0)),
            "throttle.per_client.burst must be at least 1"
        );
        assert_eq!(
            bad(&|c| c.max_clients = 0),
            "throttle.max_clients must be at least 1"
        );
        assert_eq!(
            bad(&|c| c.bytes_per_second = Some(100)),
            "throttle.bytes_per_second must be between 1024 and 1024000000000, got 100 \
             (omit it to turn the limit off)"
        );
        assert_eq!(
            bad(&|c| c.burst_bytes = 512),
            "throttle.burst_bytes must be at least 1024 (one KiB), got 512"
        );
        assert!(
            bad(&|c| c.burst_bytes = u64::MAX).starts_with("throttle.burst_bytes must be at most")
        );
    }

    #[test]
    fn config_from_toml() {
        let c: ThrottleConfig = toml::from_str(
            r#"
            per_client = { per_second = 50, burst = 100 }
            exempt_classes = ["control", "replication"]
            bytes_per_second = 10485760
            "#,
        )
        .unwrap();
        assert_eq!(
            c,
            ThrottleConfig {
                per_client: rate(50, 100),
                exempt_classes: vec![TrafficClass::Control, TrafficClass::Replication],
                bytes_per_second: Some(10 * 1024 * 1024),
                ..Default::default()
            }
        );
        c.validate().unwrap();
        assert!(toml::from_str::<ThrottleConfig>("per_client = { rps = 5 }").is_err());
        assert!(toml::from_str::<ThrottleConfig>("global_rate = 5").is_err());
        let back: ThrottleConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[tokio::test]
    async fn metrics_are_exported() {
        let (layer, metrics, _) = layer(ThrottleConfig {
            per_client: rate(1, 1),
            ..Default::default()
        });
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut svc = layer.layer(ok_upstream());
        send(&mut svc, client("a")).await.unwrap();
        send(&mut svc, client("a")).await.unwrap_err();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            "throttled_total{scope=\"client\",class=\"client\"} 1",
            "throttle_keys 1",
            "throttle_keys_overflow_total 0",
            "throttled_bytes_wait_seconds_total 0",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn layer_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<ThrottleLayer>();
        check::<ThrottleLayer<FakeRelativeClock>>();
        check::<Throttle<tower::util::BoxCloneSyncService<Request, Response, ProxyError>>>();
    }
}
