//! Live splits, one slot per listener, and their counters.
//!
//! A slot is an `ArcSwapOption<Split>` behind an `AtomicBool`: the data path reads the flag (one
//! relaxed load) and, only when it is set, the split. Writers (`PUT`, `DELETE`, expiry) take the
//! slot's mutex, so the flag and the split never disagree for long: a request that sees the flag
//! set and no split simply passes. Slots are kept by listener name for the process's life, so a
//! hot reload (a new stack) finds the live split where it was.

use super::spec::{
    parse_addr, LatencyHistogram, Outcomes, SplitSpec, SplitStatus, SubsetFault, SubsetStatus,
    STABLE,
};
use crate::metrics::{latency_bounds, latency_histogram};
use arc_swap::ArcSwapOption;
use http::uri::Authority;
use http::HeaderValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Why a `PUT` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

impl SplitError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Invalid(_) => http::StatusCode::BAD_REQUEST,
            Self::Conflict(_) => http::StatusCode::CONFLICT,
        }
    }
}

/// How one request or attempt ended (see [`Outcomes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Degraded,
    Upstream5xx,
    LocalError,
    Timeout,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Self::Ok,
        Self::Degraded,
        Self::Upstream5xx,
        Self::LocalError,
        Self::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Upstream5xx => "upstream_5xx",
            Self::LocalError => "local_error",
            Self::Timeout => "timeout",
        }
    }

    pub fn of(res: &Result<crate::Response, crate::error::ProxyError>) -> Self {
        use crate::error::{ProxyError, H_ERROR};
        match res {
            Err(ProxyError::Timeout { .. }) => Self::Timeout,
            Err(_) => Self::LocalError,
            Ok(r) if r.status().is_server_error() => {
                if r.headers().contains_key(H_ERROR) {
                    Self::LocalError
                } else {
                    Self::Upstream5xx
                }
            }
            Ok(r) if r.headers().contains_key(crate::policy::degrade::H_DEGRADED) => Self::Degraded,
            Ok(_) => Self::Ok,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubsetLabels {
    pub listener: Arc<str>,
    pub subset: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubsetOutcomeLabels {
    pub listener: Arc<str>,
    pub subset: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SplitListenerLabels {
    pub listener: Arc<str>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// `bulwark_split_*`: cumulative over the process (the JSON counters of `GET /split` count from
/// the split's install instead).
#[derive(Clone)]
pub struct SplitMetrics {
    pub requests: Family<SubsetOutcomeLabels, Counter>,
    pub attempts: Family<SubsetOutcomeLabels, Counter>,
    pub retries: Family<SubsetLabels, Counter>,
    pub attempt_duration: HistogramFamily<SubsetLabels>,
    pub weight: Family<SubsetLabels, Gauge>,
    pub expired: Family<SplitListenerLabels, Counter>,
    pub fault_injected: Family<SubsetLabels, Counter>,
}

impl Default for SplitMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            attempts: Family::default(),
            retries: Family::default(),
            attempt_duration: Family::new_with_constructor(latency_histogram),
            weight: Family::default(),
            expired: Family::default(),
            fault_injected: Family::default(),
        }
    }
}

impl SplitMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "split_requests",
            "Requests routed by a traffic split, by listener, subset and final outcome (ok, degraded, upstream_5xx, local_error, timeout)",
            self.requests.clone(),
        );
        r.register(
            "split_attempts",
            "Attempts sent to a split's subset (each retry counts), by listener, subset and outcome",
            self.attempts.clone(),
        );
        r.register(
            "split_retries",
            "Attempts to a split's subset that were retries",
            self.retries.clone(),
        );
        r.register(
            "split_attempt_duration_seconds",
            "Time to response headers per attempt, by listener and subset",
            self.attempt_duration.clone(),
        );
        r.register(
            "split_weight",
            "Current share of a listener's requests per subset, percent (stable 100 when no split)",
            self.weight.clone(),
        );
        r.register(
            "split_expired",
            "Splits removed because their TTL ran out (their controller stopped renewing them)",
            self.expired.clone(),
        );
        r.register(
            "split_fault_injected",
            "Requests routed to a subset that its rehearsal fault hit (abort or delay)",
            self.fault_injected.clone(),
        );
    }
}

/// One subset's counters since its split's generation began, with its Prometheus handles
/// resolved once (no family lookup per request).
pub(crate) struct Stats {
    requests: [AtomicU64; 5],
    attempts: [AtomicU64; 5],
    retries: AtomicU64,
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    injected: AtomicU64,
    prom_requests: [Counter; 5],
    prom_attempts: [Counter; 5],
    prom_retries: Counter,
    prom_duration: Histogram,
    prom_injected: Counter,
}

impl Stats {
    fn new(m: &SplitMetrics, listener: &Arc<str>, subset: &Arc<str>, bounds: usize) -> Self {
        let per = |f: &Family<SubsetOutcomeLabels, Counter>| {
            Outcome::ALL.map(|o| {
                f.get_or_create(&SubsetOutcomeLabels {
                    listener: listener.clone(),
                    subset: subset.clone(),
                    outcome: o.as_str(),
                })
                .clone()
            })
        };
        let labels = SubsetLabels {
            listener: listener.clone(),
            subset: subset.clone(),
        };
        Self {
            requests: Default::default(),
            attempts: Default::default(),
            retries: AtomicU64::new(0),
            buckets: (0..=bounds).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            prom_requests: per(&m.requests),
            prom_attempts: per(&m.attempts),
            prom_retries: m.retries.get_or_create(&labels).clone(),
            prom_duration: m.attempt_duration.get_or_create(&labels).clone(),
            prom_injected: m.fault_injected.get_or_create(&labels).clone(),
        }
    }

    pub(crate) fn request(&self, o: Outcome) {
        self.requests[o as usize].fetch_add(1, Ordering::Relaxed);
        self.prom_requests[o as usize].inc();
    }

    pub(crate) fn attempt(&self, o: Outcome, took: Duration, bounds: &[f64]) {
        self.attempts[o as usize].fetch_add(1, Ordering::Relaxed);
        self.prom_attempts[o as usize].inc();
        let secs = took.as_secs_f64();
        self.prom_duration.observe(secs);
        let i = bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn injected(&self) {
        self.injected.fetch_add(1, Ordering::Relaxed);
        self.prom_injected.inc();
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.prom_retries.inc();
    }

    fn outcomes(a: &[AtomicU64; 5]) -> Outcomes {
        let v = |o: Outcome| a[o as usize].load(Ordering::Relaxed);
        Outcomes {
            ok: v(Outcome::Ok),
            degraded: v(Outcome::Degraded),
            upstream_5xx: v(Outcome::Upstream5xx),
            local_error: v(Outcome::LocalError),
            timeout: v(Outcome::Timeout),
        }
    }

    fn latency(&self, bounds: &[f64]) -> LatencyHistogram {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        LatencyHistogram {
            bounds_seconds: bounds.to_vec(),
            count: counts.iter().sum(),
            counts,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A subset as the data path routes to it.
pub struct Route {
    pub name: Arc<str>,
    /// `None` for stable: the listener's own upstream, whatever a reload made it.
    pub(crate) addr: Option<Authority>,
    /// The address as the breaker's key (`RequestMeta::upstream`); `None` for stable.
    pub(crate) upstream: Option<Arc<str>>,
    /// The value of `x-bulwark-subset` on its answers.
    pub(crate) header: HeaderValue,
    weight: u32,
    addr_text: String,
    /// The subset's rehearsal fault (never on stable).
    pub(crate) fault: Option<SubsetFault>,
    pub(crate) stats: Arc<Stats>,
    /// Latency bucket bounds (shared by every route of the registry).
    pub(crate) bounds: Arc<[f64]>,
}

/// The request extension naming the subset a split chose: the attempt layer counts against it
/// (and applies the subset's rehearsal fault to every attempt when the request drew it), and
/// the upstream client sends to its address.
#[derive(Clone)]
pub struct Routed(pub Arc<Route>, pub(crate) Option<SubsetFault>);

impl Routed {
    /// The subset's address when it is not stable (the upstream client's override).
    pub fn addr(&self) -> Option<&Authority> {
        self.0.addr.as_ref()
    }
}

/// One installed split.
pub struct Split {
    /// Stable first, then the subsets in the order given.
    pub(crate) routes: Vec<Arc<Route>>,
    /// The route index for each percent bucket 0–99: subsets in order, then stable.
    buckets: [u8; 100],
    pub(crate) expires: Instant,
    ttl: Duration,
    pub(crate) sticky: bool,
    controller: Option<String>,
    generation: u64,
    installed_ms: u64,
    rng: Mutex<StdRng>,
    /// Draws the subsets' rehearsal faults: seeded apart from `rng`, so a rehearsal does not
    /// change which requests go where.
    fault_rng: Mutex<StdRng>,
}

/// Mixed into the split's seed for the rehearsal-fault draws.
const FAULT_SEED: u64 = 0x7265_6865_6172_7365;

/// Fixed seed of the stickiness hash: a client keeps its bucket across splits and restarts.
const STICKY_SEED: u64 = 0x5b1f_7c3a_9e0d_4261;

impl Split {
    /// The route `x-bulwark-subset` names, if any.
    pub(crate) fn by_name(&self, name: &[u8]) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name.as_bytes() == name)
    }

    /// A weighted roll from the split's seeded RNG.
    pub(crate) fn roll(&self) -> &Arc<Route> {
        let b = lock(&self.rng).random_range(0..100usize);
        &self.routes[self.buckets[b] as usize]
    }

    /// The rehearsal fault `route`'s request gets, if its subset has one and the draw hits it.
    pub(crate) fn rehearse(&self, route: &Route) -> Option<SubsetFault> {
        let f = route.fault?;
        let hit = f.percent >= 100.0 || lock(&self.fault_rng).random::<f64>() * 100.0 < f.percent;
        if hit {
            route.stats.injected();
        }
        hit.then_some(f)
    }

    /// The client's bucket: the same client, the same subset while the weights stay.
    pub(crate) fn sticky(&self, client: &crate::classify::ClientId) -> &Arc<Route> {
        let h = foldhash::quality::FixedState::with_seed(STICKY_SEED).hash_one(client);
        &self.routes[self.buckets[(h % 100) as usize] as usize]
    }

    fn status(&self, listener: &str, now: Instant) -> SplitStatus {
        SplitStatus {
            listener: listener.to_string(),
            controller: self.controller.clone(),
            sticky: self.sticky,
            ttl_ms: self.ttl.as_millis() as u64,
            remaining_ms: self.expires.saturating_duration_since(now).as_millis() as u64,
            generation: self.generation,
            installed_ms: self.installed_ms,
            subsets: self
                .routes
                .iter()
                .map(|r| SubsetStatus {
                    name: r.name.to_string(),
                    addr: r.addr_text.clone(),
                    weight: r.weight,
                    requests: Stats::outcomes(&r.stats.requests),
                    attempts: Stats::outcomes(&r.stats.attempts),
                    retries: r.stats.retries.load(Ordering::Relaxed),
                    latency: r.stats.latency(&r.bounds),
                    fault: r.fault,
                    fault_injected: r.stats.injected.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// One listener's split slot; the split layer of that listener holds it.
pub struct Slot {
    listener: Arc<str>,
    /// Set while a split is installed: the data path's one load when there is none.
    pub(crate) live: AtomicBool,
    pub(crate) split: ArcSwapOption<Split>,
    write: Mutex<()>,
    metrics: SplitMetrics,
}

impl Slot {
    /// Removes `current` if it is still the installed split (a `PUT` may have replaced it).
    pub(crate) fn expire(&self, current: &Arc<Split>) {
        let _w = lock(&self.write);
        self.expire_locked(current);
    }

    /// [`Self::expire`] with the write lock held.
    fn expire_locked(&self, current: &Arc<Split>) {
        let now = self.split.load();
        if now.as_ref().is_some_and(|s| Arc::ptr_eq(s, current)) {
            self.clear(current);
            self.metrics
                .expired
                .get_or_create(&SplitListenerLabels {
                    listener: self.listener.clone(),
                })
                .inc();
            tracing::warn!(listener = %self.listener, generation = current.generation,
                "traffic split expired (TTL ran out without a renewal): 100 % stable");
        }
    }

    /// With the write lock held: no split, weights back to stable.
    fn clear(&self, old: &Split) {
        self.live.store(false, Ordering::Release);
        self.split.store(None);
        for r in &old.routes {
            let w = if &*r.name == STABLE { 100 } else { 0 };
            self.weight_gauge(&r.name).set(w);
        }
    }

    fn weight_gauge(&self, subset: &Arc<str>) -> Gauge {
        self.metrics
            .weight
            .get_or_create(&SubsetLabels {
                listener: self.listener.clone(),
                subset: subset.clone(),
            })
            .clone()
    }

    /// The installed split unless its TTL ran out (then it is removed). `locked`: the caller
    /// holds the write lock.
    fn current(&self, now: Instant, locked: bool) -> Option<Arc<Split>> {
        let s = self.split.load_full()?;
        if now >= s.expires {
            if locked {
                self.expire_locked(&s);
            } else {
                self.expire(&s);
            }
            return None;
        }
        Some(s)
    }
}

/// Every listener's split slot.
pub struct SplitRegistry {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    metrics: SplitMetrics,
    generation: AtomicU64,
    bounds: Arc<[f64]>,
}

impl SplitRegistry {
    pub fn new(metrics: SplitMetrics) -> Self {
        Self {
            slots: Mutex::default(),
            metrics,
            generation: AtomicU64::new(0),
            bounds: latency_bounds().collect(),
        }
    }

    /// The slot of `listener` (made on first use; the stack's split layer holds it).
    pub fn slot(&self, listener: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(listener.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    listener: Arc::from(listener),
                    live: AtomicBool::new(false),
                    split: ArcSwapOption::empty(),
                    write: Mutex::new(()),
                    metrics: self.metrics.clone(),
                })
            })
            .clone()
    }

    /// Installs (or, for its own controller, updates) the split of `listener`, whose stable
    /// upstream is `stable_addr`. A live split owned by another controller is a conflict.
    /// Updating keeps the counters of the subsets whose name and address stay.
    pub fn put(
        &self,
        listener: &str,
        stable_addr: &str,
        spec: SplitSpec,
    ) -> Result<SplitStatus, SplitError> {
        spec.validate().map_err(SplitError::Invalid)?;
        let ttl = spec.ttl().map_err(SplitError::Invalid)?;
        let slot = self.slot(listener);
        let _w = lock(&slot.write);
        let now = Instant::now();
        let old = slot.current(now, true);
        if let Some(old) = &old {
            if old.controller.is_some() && old.controller != spec.controller {
                return Err(SplitError::Conflict(format!(
                    "listener {listener:?} has a live split owned by controller {:?} ({} ms left); \
                     it must end (DELETE or TTL) before another controller can install one",
                    old.controller.as_deref().unwrap_or_default(),
                    old.expires.saturating_duration_since(now).as_millis()
                )));
            }
        }
        let keep = |name: &str, addr: &str| {
            old.as_ref()
                .and_then(|o| o.routes.iter().find(|r| &*r.name == name))
                .filter(|r| r.addr_text == addr)
                .map(|r| r.stats.clone())
        };
        let (generation, installed_ms) = match &old {
            Some(o) => (o.generation, o.installed_ms),
            None => (
                self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                crate::policy::now_ms(),
            ),
        };
        let name_arc: Arc<str> = Arc::from(listener);
        let route = |name: &str,
                     addr: Option<Authority>,
                     text: &str,
                     weight: u32,
                     fault: Option<SubsetFault>| {
            let name: Arc<str> = Arc::from(name);
            Arc::new(Route {
                stats: keep(&name, text).unwrap_or_else(|| {
                    Arc::new(Stats::new(
                        &self.metrics,
                        &name_arc,
                        &name,
                        self.bounds.len(),
                    ))
                }),
                upstream: addr.as_ref().map(|a| Arc::from(a.as_str())),
                header: HeaderValue::from_str(&name).expect("validated name"),
                addr,
                addr_text: text.to_string(),
                weight,
                fault,
                bounds: self.bounds.clone(),
                name,
            })
        };
        let mut routes = vec![route(STABLE, None, stable_addr, spec.stable_weight(), None)];
        for s in &spec.subsets {
            let addr = parse_addr(&s.addr).map_err(SplitError::Invalid)?;
            routes.push(route(&s.name, Some(addr), &s.addr, s.weight, s.fault));
        }
        let mut buckets = [0u8; 100];
        let mut at = 0usize;
        for (i, s) in spec.subsets.iter().enumerate() {
            for b in &mut buckets[at..at + s.weight as usize] {
                *b = (i + 1) as u8;
            }
            at += s.weight as usize;
        }
        let seed = spec
            .seed
            .unwrap_or_else(|| foldhash::quality::FixedState::with_seed(0).hash_one(listener));
        // The owner's renewal continues the draws where they were: reseeding on every renewal
        // replayed the same first draws each time (a controller renews every tick), so a 5 %
        // rehearsal fault never fired and the weighted roll kept repeating its first values.
        // The seed applies when a split is installed.
        let (rng, fault_rng) = match &old {
            Some(o) => (lock(&o.rng).clone(), lock(&o.fault_rng).clone()),
            None => (
                StdRng::seed_from_u64(seed),
                StdRng::seed_from_u64(seed ^ FAULT_SEED),
            ),
        };
        let split = Arc::new(Split {
            buckets,
            expires: now + ttl,
            ttl,
            sticky: spec.sticky,
            controller: spec.controller,
            generation,
            installed_ms,
            rng: Mutex::new(rng),
            fault_rng: Mutex::new(fault_rng),
            routes,
        });
        if let Some(o) = &old {
            for r in &o.routes {
                slot.weight_gauge(&r.name).set(0);
            }
        }
        for r in &split.routes {
            slot.weight_gauge(&r.name).set(r.weight as i64);
        }
        slot.split.store(Some(split.clone()));
        slot.live.store(true, Ordering::Release);
        tracing::info!(listener, generation, ttl = ?ttl, subsets = ?split.routes.iter()
            .map(|r| format!("{}={}%", r.name, r.weight)).collect::<Vec<_>>(),
            rehearsal = ?split.routes.iter().filter_map(|r| r.fault.map(|f| format!("{}: {f:?}", r.name)))
            .collect::<Vec<_>>(), "traffic split installed");
        Ok(split.status(listener, now))
    }

    /// The live split of `listener`, if any.
    pub fn get(&self, listener: &str) -> Option<SplitStatus> {
        let slot = lock(&self.slots).get(listener).cloned()?;
        let now = Instant::now();
        slot.current(now, false).map(|s| s.status(listener, now))
    }

    /// Every live split, by listener name.
    pub fn list(&self) -> Vec<SplitStatus> {
        let mut names: Vec<String> = lock(&self.slots).keys().cloned().collect();
        names.sort();
        names.iter().filter_map(|n| self.get(n)).collect()
    }

    /// Removes the split of `listener`: `true` when there was a live one.
    pub fn delete(&self, listener: &str) -> bool {
        let Some(slot) = lock(&self.slots).get(listener).cloned() else {
            return false;
        };
        let _w = lock(&slot.write);
        let Some(old) = slot.current(Instant::now(), true) else {
            return false;
        };
        slot.clear(&old);
        tracing::info!(
            listener,
            generation = old.generation,
            "traffic split removed: 100 % stable"
        );
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can be left half-done by a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
