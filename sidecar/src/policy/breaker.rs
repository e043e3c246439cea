//! Per-upstream circuit breaker: stop sending to an upstream that keeps failing, so callers get an
//! immediate, explained 503 (and can pick another replica) instead of waiting on a dead node.
//!
//! # Design
//!
//! - **Failure accounting comes from `failsafe`**: its `consecutive_failures` policy `.or_else` its
//!   `success_rate_over_time_window` policy decides *when* an upstream is dead and for how long
//!   (`failsafe::backoff::exponential`, reset by `revived()` when the upstream recovers).
//! - **The state machine is ours**, on `tokio::time`: failsafe's own `StateMachine` reads
//!   `std::time::Instant` (paused test time cannot move it) and lets *every* call through while
//!   half-open, so a recovering node would get the whole backlog at once. Here half-open admits exactly
//!   one probe; everyone else gets `circuit_open` with reason `half_open_probe_in_flight`. The probe
//!   holds a drop guard, so a client that goes away mid-probe frees the slot instead of wedging the
//!   circuit half-open forever.
//! - **Why a circuit tripped is data** (`consecutive_failures` or `failure_rate`): the combined failsafe
//!   policy only answers "dead for D", so we count consecutive failures alongside it; when the count has
//!   reached the threshold that policy tripped, otherwise the rate policy did.
//! - **Open time** is failsafe's exponential backoff (base → max, doubling per failed probe), shortened
//!   by a seeded jitter of up to `jitter` × the backoff so that sidecars which saw the same outage do not
//!   probe in lock-step. failsafe's backoff counts whole seconds, hence whole-second `open_base`/`open_max`.
//! - **The failure-rate window runs on `std` time inside failsafe** (an exponentially weighted success
//!   rate plus a request counter over the window, and no verdict until one whole window has passed since
//!   the circuit was created or last closed). That is acceptable for a window of seconds, but it means
//!   paused-time tests cannot drive the rate trip; the one test that does uses a real one-second window.
//! - **What counts** (see [`Outcome`]): local-origin errors (connect, reset, timeout) and upstream 5xx
//!   are failures; a 5xx carrying `x-bulwark-error` is another sidecar's refusal relayed to us and counts
//!   as neither, so a healthy middle hop is never tripped by its upstream's trouble; other errors were
//!   produced by this sidecar and say nothing about the upstream.
//!
//! # Place in the stack
//!
//! `… ▸ breaker ▸ timeout/retry ▸ forward`: retries run *under* the breaker, so the breaker sees each
//! request's final outcome once, after retries. A request that fails, is retried and then succeeds is a
//! success here; the consecutive-failure threshold therefore counts failed *requests* (each of which may
//! be up to `1 + max_retries` failed attempts), and the breaker trips later than an attempt-counting one
//! would, but it never trips on a blip that a retry already hid. Timeouts sit below the breaker, so a
//! hung upstream turns into a counted failure rather than a dropped future that records nothing.

use crate::error::{ProxyError, H_ERROR};
use crate::policy::{Maybe, OnAnswer, Then};
use crate::{Request, Response};
use failsafe::backoff::{self, Exponential};
use failsafe::failure_policy::{
    consecutive_failures, success_rate_over_time_window, ConsecutiveFailures, OrElse,
    SuccessRateOverTimeWindow,
};
use failsafe::FailurePolicy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// The upstream a request is going to, set by the edge as a request extension. Breakers are keyed by
/// it, so one sick peer does not close the circuit to the healthy ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamName(pub Arc<str>);

impl UpstreamName {
    /// The key for a request: the edge's extension, else the URI authority (requests built without the
    /// edge, e.g. in tests), else one shared `default` circuit.
    pub fn of<B>(req: &http::Request<B>) -> Arc<str> {
        if let Some(m) = crate::classify::RequestMeta::of(req) {
            return m.upstream.clone();
        }
        if let Some(UpstreamName(n)) = req.extensions().get::<UpstreamName>() {
            return n.clone();
        }
        match req.uri().authority() {
            Some(a) => Arc::from(a.as_str()),
            None => Arc::from("default"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failed requests in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Failure share (0–1] of the recent requests that opens the circuit; 1.0 turns the rate trip off.
    pub failure_rate: f64,
    /// Window of the failure rate (whole seconds count; at least 1 s).
    #[serde(with = "humantime_serde")]
    pub failure_rate_window: Duration,
    /// Requests needed within the window before the failure rate may trip: a quiet upstream with two
    /// requests, one failed, is not "50 % failing".
    pub min_requests: u32,
    /// First open time; doubles with each failed probe up to `open_max`.
    #[serde(with = "humantime_serde")]
    pub open_base: Duration,
    #[serde(with = "humantime_serde")]
    pub open_max: Duration,
    /// Up to this share of each open time is cut at random, so sidecars do not probe in lock-step.
    pub jitter: f64,
    /// Circuits kept at most; beyond it the least recently used closed circuit is forgotten, so a
    /// stream of bogus upstream names cannot grow memory without bound.
    pub max_upstreams: usize,
    /// Seed for the open-time jitter (reproducible runs); random when absent.
    pub seed: Option<u64>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            failure_rate_window: Duration::from_secs(10),
            min_requests: 20,
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(60),
            jitter: 0.5,
            max_upstreams: 1024,
            seed: None,
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), String> {
        let whole_secs = |d: Duration| d.subsec_nanos() == 0 && d.as_secs() >= 1;
        if self.consecutive_failures < 1 {
            return Err("consecutive_failures must be ≥ 1".into());
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(format!(
                "failure_rate must be in (0, 1] (got {})",
                self.failure_rate
            ));
        }
        if self.failure_rate_window < Duration::from_secs(1) {
            return Err(format!(
                "failure_rate_window must be ≥ 1s (got {:?})",
                self.failure_rate_window
            ));
        }
        if self.min_requests < 1 {
            return Err("min_requests must be ≥ 1".into());
        }
        if !whole_secs(self.open_base) {
            return Err(format!(
                "open_base must be a whole number of seconds ≥ 1s (got {:?})",
                self.open_base
            ));
        }
        if !whole_secs(self.open_max) || self.open_max < self.open_base {
            return Err(format!(
                "open_max must be a whole number of seconds ≥ open_base (got {:?}, open_base {:?})",
                self.open_max, self.open_base
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!("jitter must be in [0, 1] (got {})", self.jitter));
        }
        if self.max_upstreams < 1 {
            return Err("max_upstreams must be ≥ 1".into());
        }
        Ok(())
    }

    /// The failsafe policy for one circuit. Values are clamped into what failsafe accepts (it panics
    /// otherwise), so an unvalidated config degrades instead of crashing the data path.
    fn policy(&self) -> Policy {
        let base = Duration::from_secs(self.open_base.as_secs().max(1));
        let max = Duration::from_secs(self.open_max.as_secs().max(base.as_secs()));
        let window = self.failure_rate_window.max(Duration::from_secs(1));
        let required_success = (1.0 - self.failure_rate).clamp(0.0, 1.0);
        consecutive_failures(
            self.consecutive_failures.max(1),
            backoff::exponential(base, max),
        )
        .or_else(success_rate_over_time_window(
            required_success,
            self.min_requests,
            window,
            backoff::exponential(base, max),
        ))
    }
}

type Policy = OrElse<ConsecutiveFailures<Exponential>, SuccessRateOverTimeWindow<Exponential>>;

/// How one finished request bears on its upstream's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect refused, reset, timeout: the path to the upstream failed.
    LocalOrigin,
    /// The upstream itself answered 5xx.
    Upstream5xx,
    /// A 5xx marked `x-bulwark-error`: a sidecar further away refused; our upstream is fine.
    Relayed,
    /// An error this sidecar produced without asking the upstream.
    Ignored,
}

impl Outcome {
    const COUNT: usize = 5;

    pub fn of<B>(res: &Result<http::Response<B>, ProxyError>) -> Self {
        match res {
            Err(e) if e.is_local_origin() => Self::LocalOrigin,
            Err(_) => Self::Ignored,
            Ok(r) if r.status().is_server_error() && r.headers().contains_key(H_ERROR) => {
                Self::Relayed
            }
            Ok(r) if r.status().is_server_error() => Self::Upstream5xx,
            Ok(_) => Self::Success,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::LocalOrigin => "local_origin",
            Self::Upstream5xx => "upstream_5xx",
            Self::Relayed => "relayed",
            Self::Ignored => "ignored",
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, Self::LocalOrigin | Self::Upstream5xx)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub upstream: Arc<str>,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub upstream: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct BreakerMetrics {
    /// 0 closed, 1 open, 2 half-open.
    pub state: Family<UpstreamLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub rejected: Family<UpstreamLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
}

impl BreakerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "breaker_state",
            "Circuit state per upstream: 0 closed, 1 open, 2 half-open",
            self.state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit state changes, by upstream and new state",
            self.transitions.clone(),
        );
        registry.register(
            "breaker_rejected",
            "Requests refused by an open or probing circuit",
            self.rejected.clone(),
        );
        registry.register(
            "breaker_outcomes",
            "Finished requests as the breaker classified them (success, local_origin, upstream_5xx, relayed, ignored)",
            self.outcomes.clone(),
        );
    }

    fn transition(&self, upstream: &Arc<str>, state: &State) {
        let (to, gauge) = match state {
            State::Closed => ("closed", 0),
            State::Open { .. } => ("open", 1),
            State::HalfOpen { .. } => ("half_open", 2),
        };
        self.state
            .get_or_create(&UpstreamLabels {
                upstream: upstream.clone(),
            })
            .set(gauge);
        self.transitions
            .get_or_create(&TransitionLabels {
                upstream: upstream.clone(),
                to,
            })
            .inc();
    }
}

/// One circuit's state, for the admin `/circuits` endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CircuitInfo {
    pub upstream: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Why the circuit tripped (`consecutive_failures` or `failure_rate`); absent while closed.
    pub reason: Option<String>,
    pub consecutive_failures: u32,
    /// Milliseconds until the next probe may go out; 0 unless open.
    pub open_until_ms: u64,
    /// Times the circuit went from closed to open.
    pub trips: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Circuit {
    /// The config the policy was built from; a reload takes effect at the circuit's next quiet moment.
    cfg: BreakerConfig,
    policy: Policy,
    state: State,
    /// Changes with every transition, so late outcomes of requests admitted under an earlier state
    /// (or by an evicted circuit of the same name) are not mistaken for the current probe's.
    epoch: u64,
    consecutive: u32,
    reason: Option<&'static str>,
    /// The last un-jittered open time, the fallback growth base when the policy has no verdict.
    last_open: Duration,
    trips: u64,
    last_error: Option<String>,
    last_used: Instant,
    rng: StdRng,
    /// This upstream's `breaker_outcomes_total` counters by [`Outcome`], resolved on first use:
    /// a `Family` lookup hashes the labels with SipHash under a lock, on every request otherwise.
    outcomes: [Option<Counter>; Outcome::COUNT],
}

impl Circuit {
    fn new(name: &str, cfg: &BreakerConfig, epoch: u64, now: Instant) -> Self {
        let rng = match cfg.seed {
            // Per-upstream streams, so one circuit's jitter does not depend on the order others tripped.
            Some(seed) => StdRng::seed_from_u64(seed ^ fnv1a(name.as_bytes())),
            None => StdRng::from_os_rng(),
        };
        Self {
            cfg: cfg.clone(),
            policy: cfg.policy(),
            state: State::Closed,
            epoch,
            consecutive: 0,
            reason: None,
            last_open: Duration::ZERO,
            trips: 0,
            last_error: None,
            last_used: now,
            rng,
            outcomes: Default::default(),
        }
    }

    fn count(&mut self, outcome: Outcome, name: &Arc<str>, metrics: &BreakerMetrics) {
        self.outcomes[outcome as usize]
            .get_or_insert_with(|| outcome_counter(name, outcome, metrics))
            .inc();
    }

    fn open_for(&mut self, base: Duration) -> Duration {
        self.last_open = base;
        let cut = self.cfg.jitter.clamp(0.0, 1.0) * self.rng.random::<f64>();
        base.mul_f64(1.0 - cut)
    }
}

#[derive(Debug, Default)]
struct Circuits {
    /// foldhash, not SipHash: three lookups per request, SipHash was 1.5 % of its instructions;
    /// the keys are configured upstreams (outbound: only allowed ones), so flooding is not a concern.
    map: HashMap<Arc<str>, Circuit, foldhash::quality::RandomState>,
    next_epoch: u64,
}

impl Circuits {
    fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }
}

/// All circuits of the process, shared by every clone of every breaker service (and by listeners
/// that reach the same upstream), and read by the admin API.
#[derive(Clone, Debug, Default)]
pub struct BreakerRegistry {
    inner: Arc<Mutex<Circuits>>,
}

impl BreakerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Circuits> {
        // A panic elsewhere while holding the lock leaves the counts usable; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Vec<CircuitInfo> {
        let now = Instant::now();
        let g = self.lock();
        let mut out: Vec<CircuitInfo> = g
            .map
            .iter()
            .map(|(name, c)| {
                let (state, open_until_ms) = match c.state {
                    State::Closed => ("closed", 0),
                    State::Open { until } => (
                        "open",
                        until.saturating_duration_since(now).as_millis() as u64,
                    ),
                    State::HalfOpen { .. } => ("half_open", 0),
                };
                CircuitInfo {
                    upstream: name.to_string(),
                    state: state.into(),
                    reason: c.reason.map(String::from),
                    consecutive_failures: c.consecutive,
                    open_until_ms,
                    trips: c.trips,
                    last_error: c.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        out
    }

    /// Decides, before the upstream is asked, whether this request may go.
    fn admit(
        &self,
        name: &Arc<str>,
        cfg: &BreakerConfig,
        metrics: &BreakerMetrics,
    ) -> Result<Ticket, ProxyError> {
        let now = Instant::now();
        let mut g = self.lock();
        if !g.map.contains_key(name) {
            if g.map.len() >= cfg.max_upstreams.max(1) {
                evict(&mut g, metrics);
            }
            let epoch = g.epoch();
            g.map
                .insert(name.clone(), Circuit::new(name, cfg, epoch, now));
            metrics
                .state
                .get_or_create(&UpstreamLabels {
                    upstream: name.clone(),
                })
                .set(0);
        }
        let epoch = g.epoch();
        let c = g.map.get_mut(name).expect("inserted above");
        c.last_used = now;
        if c.state == State::Closed && c.consecutive == 0 && c.cfg != *cfg {
            c.policy = cfg.policy();
            c.cfg = cfg.clone();
        }
        let reject = |reason: &str, retry_after: Duration| {
            metrics
                .rejected
                .get_or_create(&UpstreamLabels {
                    upstream: name.clone(),
                })
                .inc();
            Err(ProxyError::CircuitOpen {
                upstream: name.to_string(),
                reason: reason.into(),
                retry_after,
            })
        };
        let probe = match c.state {
            State::Closed => false,
            State::Open { until } if now < until => {
                return reject(c.reason.unwrap_or("open"), until - now);
            }
            State::Open { .. } | State::HalfOpen { probing: false } => {
                if !matches!(c.state, State::HalfOpen { .. }) {
                    c.epoch = epoch;
                    c.state = State::HalfOpen { probing: true };
                    metrics.transition(name, &c.state);
                    tracing::info!(upstream = %name, "circuit half-open: sending one probe");
                } else {
                    c.state = State::HalfOpen { probing: true };
                }
                true
            }
            State::HalfOpen { probing: true } => {
                return reject("half_open_probe_in_flight", c.cfg.open_base);
            }
        };
        Ok(Ticket {
            registry: self.clone(),
            metrics: metrics.clone(),
            upstream: name.clone(),
            epoch: c.epoch,
            probe,
            done: false,
        })
    }

    /// Counts the outcome (always) and applies it to the circuit it was admitted by (if current).
    fn complete(&self, t: &Ticket, outcome: Outcome, error: Option<String>) {
        let now = Instant::now();
        let mut g = self.lock();
        let epoch = g.epoch();
        let Some(c) = g.map.get_mut(&t.upstream) else {
            // Evicted since: counted all the same.
            drop(g);
            outcome_counter(&t.upstream, outcome, &t.metrics).inc();
            return;
        };
        c.count(outcome, &t.upstream, &t.metrics);
        if c.epoch != t.epoch {
            return;
        }
        if outcome.is_failure() {
            c.consecutive = c.consecutive.saturating_add(1);
            c.last_error = error;
        }
        match (c.state, t.probe, outcome.is_failure()) {
            (State::Closed, false, false) if outcome == Outcome::Success => {
                c.policy.record_success();
                c.consecutive = 0;
            }
            (State::Closed, false, true) => {
                if let Some(base) = c.policy.mark_dead_on_failure() {
                    let reason = if c.consecutive >= c.cfg.consecutive_failures {
                        "consecutive_failures"
                    } else {
                        "failure_rate"
                    };
                    let open_for = c.open_for(base);
                    c.reason = Some(reason);
                    c.trips += 1;
                    c.epoch = epoch;
                    c.state = State::Open {
                        until: now + open_for,
                    };
                    t.metrics.transition(&t.upstream, &c.state);
                    tracing::warn!(upstream = %t.upstream, reason, ?open_for, last_error = ?c.last_error, "circuit opened");
                }
            }
            (State::HalfOpen { .. }, true, false) if outcome == Outcome::Success => {
                c.policy.revived();
                c.policy.record_success();
                c.consecutive = 0;
                c.reason = None;
                c.epoch = epoch;
                c.state = State::Closed;
                t.metrics.transition(&t.upstream, &c.state);
                tracing::info!(upstream = %t.upstream, "circuit closed: probe succeeded");
            }
            (State::HalfOpen { .. }, true, true) => {
                // The policy has no verdict when the trip was by rate and the window has since emptied;
                // keep growing the open time anyway, as a failed probe means the upstream is still down.
                let fallback = (c.last_open * 2).min(c.cfg.open_max.max(c.cfg.open_base));
                let base = c.policy.mark_dead_on_failure().unwrap_or(fallback);
                let open_for = c.open_for(base);
                c.epoch = epoch;
                c.state = State::Open {
                    until: now + open_for,
                };
                t.metrics.transition(&t.upstream, &c.state);
                tracing::warn!(upstream = %t.upstream, ?open_for, last_error = ?c.last_error, "circuit re-opened: probe failed");
            }
            (State::HalfOpen { .. }, true, false) => {
                // The probe learned nothing (a relayed refusal, or our own error): let the next request probe.
                c.state = State::HalfOpen { probing: false };
            }
            _ => {}
        }
    }

    fn release_probe(&self, t: &Ticket) {
        let mut g = self.lock();
        if let Some(c) = g.map.get_mut(&t.upstream) {
            if c.epoch == t.epoch && c.state == (State::HalfOpen { probing: true }) {
                c.state = State::HalfOpen { probing: false };
            }
        }
    }
}

fn outcome_counter(upstream: &Arc<str>, outcome: Outcome, metrics: &BreakerMetrics) -> Counter {
    metrics
        .outcomes
        .get_or_create(&OutcomeLabels {
            upstream: upstream.clone(),
            outcome: outcome.as_str(),
        })
        .clone()
}

/// Forgets the least recently used circuit, preferring closed ones: forgetting an open circuit would
/// send traffic to an upstream known to be down.
fn evict(g: &mut Circuits, metrics: &BreakerMetrics) {
    let victim = g
        .map
        .iter()
        .min_by_key(|(_, c)| (c.state != State::Closed, c.last_used))
        .map(|(name, _)| name.clone());
    if let Some(name) = victim {
        g.map.remove(&name);
        metrics.state.remove(&UpstreamLabels { upstream: name });
    }
}

/// A stable hash (unlike `DefaultHasher`, it does not change between Rust releases), so a seed gives
/// the same jitter everywhere.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An admitted request's claim on its circuit. Dropped unfinished (the client went away), a probe
/// gives its slot back so the circuit does not stay half-open with nobody probing.
pub struct Ticket {
    registry: BreakerRegistry,
    metrics: BreakerMetrics,
    upstream: Arc<str>,
    epoch: u64,
    probe: bool,
    done: bool,
}

impl Ticket {
    fn finish(mut self, res: &Result<Response, ProxyError>) {
        self.done = true;
        let outcome = Outcome::of(res);
        let error = match res {
            Err(e) if outcome.is_failure() => Some(e.to_string()),
            Ok(r) if outcome.is_failure() => Some(format!("upstream answered {}", r.status())),
            _ => None,
        };
        self.registry.complete(&self, outcome, error);
    }
}

/// The breaker for L4 (TCP) listeners: one admission per connection, judged by whether the
/// upstream connect succeeded (a refused or timed-out connect is a local-origin failure).
pub struct ConnTicket(Ticket);

impl BreakerRegistry {
    /// Admits a new connection to `upstream`, or refuses it at once while its circuit is open
    /// (exactly one probe connection in half-open, as for requests).
    pub fn admit_connection(
        &self,
        upstream: &Arc<str>,
        cfg: &BreakerConfig,
        metrics: &BreakerMetrics,
    ) -> Result<ConnTicket, ProxyError> {
        self.admit(upstream, cfg, metrics).map(ConnTicket)
    }
}

impl ConnTicket {
    pub fn connected(self) {
        self.finish(Outcome::Success, None);
    }

    pub fn failed(self, error: String) {
        self.finish(Outcome::LocalOrigin, Some(error));
    }

    fn finish(mut self, outcome: Outcome, error: Option<String>) {
        let t = &mut self.0;
        t.done = true;
        t.registry.complete(t, outcome, error);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.registry.release_probe(self);
        }
    }
}

#[derive(Clone, Debug)]
pub struct BreakerLayer {
    config: Arc<BreakerConfig>,
    registry: BreakerRegistry,
    metrics: BreakerMetrics,
}

impl BreakerLayer {
    pub fn new(config: BreakerConfig, registry: BreakerRegistry, metrics: BreakerMetrics) -> Self {
        Self {
            config: Arc::new(config),
            registry,
            metrics,
        }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            config: self.config.clone(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BreakerService<S> {
    inner: S,
    config: Arc<BreakerConfig>,
    registry: BreakerRegistry,
    metrics: BreakerMetrics,
}

impl<S> Service<Request> for BreakerService<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Maybe<Then<S::Future, Ticket>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let name = UpstreamName::of(&req);
        // Decided before `inner.call`: the client below may start sending as soon as it is called.
        match self.registry.admit(&name, &self.config, &self.metrics) {
            Err(e) => Maybe::err(e),
            Ok(ticket) => Maybe::direct(Then::new(self.inner.call(req), ticket)),
        }
    }
}

impl OnAnswer for Ticket {
    fn on_answer(self, res: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        self.finish(&res);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutKind;
    use futures::future::BoxFuture;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// What the fake upstream does with one request.
    #[derive(Clone, Debug)]
    enum Act {
        Status(u16),
        /// A 5xx relayed from a sidecar further away.
        Marked(u16),
        Connect,
        Throttled,
        /// Answer `status` after `delay`.
        Slow(Duration, u16),
    }

    /// A scripted upstream: pops one act per call (then repeats `fallback`) and counts calls.
    #[derive(Clone)]
    struct Upstream {
        script: Arc<Mutex<VecDeque<Act>>>,
        fallback: Act,
        calls: Arc<AtomicUsize>,
    }

    impl Upstream {
        fn new(script: impl IntoIterator<Item = Act>, fallback: Act) -> Self {
            Self {
                script: Arc::new(Mutex::new(script.into_iter().collect())),
                fallback,
                calls: Arc::new(AtomicUsize::new(0)),
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Service<Request> for Upstream {
        type Response = Response;
        type Error = ProxyError;
        type Future = BoxFuture<'static, Result<Response, ProxyError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let act = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.fallback.clone());
            Box::pin(async move {
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
                            .insert(H_ERROR, http::HeaderValue::from_static("circuit_open"));
                        Ok(r)
                    }
                    Act::Connect => Err(ProxyError::Connect {
                        upstream: "u".into(),
                        msg: "refused".into(),
                    }),
                    Act::Throttled => Err(ProxyError::Throttled {
                        scope: "global",
                        retry_after: Duration::from_secs(1),
                    }),
                    Act::Slow(d, s) => {
                        tokio::time::sleep(d).await;
                        Ok(status(s))
                    }
                }
            })
        }
    }

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            seed: Some(7),
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    fn stack(
        cfg: BreakerConfig,
        up: &Upstream,
    ) -> (BreakerService<Upstream>, BreakerRegistry, BreakerMetrics) {
        let reg = BreakerRegistry::new();
        let m = BreakerMetrics::default();
        (
            BreakerLayer::new(cfg, reg.clone(), m.clone()).layer(up.clone()),
            reg,
            m,
        )
    }

    fn req(upstream: &str) -> Request {
        let mut r = http::Request::new(crate::empty());
        r.extensions_mut().insert(UpstreamName(Arc::from(upstream)));
        r
    }

    async fn send(
        svc: &mut BreakerService<Upstream>,
        upstream: &str,
    ) -> Result<Response, ProxyError> {
        svc.ready().await?.call(req(upstream)).await
    }

    fn reason(res: Result<Response, ProxyError>) -> String {
        match res {
            Err(ProxyError::CircuitOpen { reason, .. }) => reason,
            other => panic!("expected circuit_open, got {:?}", other.map(|r| r.status())),
        }
    }

    fn info(reg: &BreakerRegistry, upstream: &str) -> CircuitInfo {
        reg.snapshot()
            .into_iter()
            .find(|c| c.upstream == upstream)
            .expect("circuit exists")
    }

    #[tokio::test(start_paused = true)]
    async fn trips_after_consecutive_failures_and_answers_at_once() {
        let up = Upstream::new([], Act::Connect);
        let (mut svc, reg, m) = stack(cfg(), &up);
        for i in 1..=4 {
            assert!(matches!(
                send(&mut svc, "n1").await,
                Err(ProxyError::Connect { .. })
            ));
            assert_eq!(info(&reg, "n1").state, "closed", "after {i} failures");
        }
        assert!(send(&mut svc, "n1").await.is_err());
        assert_eq!(info(&reg, "n1").state, "open");
        assert_eq!(up.calls(), 5);

        let t0 = Instant::now();
        let res = send(&mut svc, "n1").await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        match res {
            Err(ProxyError::CircuitOpen {
                upstream,
                reason,
                retry_after,
            }) => {
                assert_eq!(upstream, "n1");
                assert_eq!(reason, "consecutive_failures");
                assert_eq!(retry_after, Duration::from_secs(1));
            }
            other => panic!("unexpected {:?}", other.map(|r| r.status())),
        }
        assert_eq!(up.calls(), 5, "an open circuit does not call the upstream");
        let up_l = UpstreamLabels {
            upstream: Arc::from("n1"),
        };
        assert_eq!(m.rejected.get_or_create(&up_l).get(), 1);
        assert_eq!(m.state.get_or_create(&up_l).get(), 1);
        let local = OutcomeLabels {
            upstream: Arc::from("n1"),
            outcome: "local_origin",
        };
        assert_eq!(m.outcomes.get_or_create(&local).get(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_consecutive_count() {
        let up = Upstream::new(
            [
                Act::Status(500),
                Act::Status(500),
                Act::Status(500),
                Act::Status(500),
                Act::Status(200),
            ],
            Act::Status(500),
        );
        let (mut svc, reg, _) = stack(cfg(), &up);
        for _ in 0..5 {
            let _ = send(&mut svc, "n1").await;
        }
        assert_eq!(info(&reg, "n1").consecutive_failures, 0);
        for _ in 0..4 {
            let _ = send(&mut svc, "n1").await;
        }
        assert_eq!(info(&reg, "n1").state, "closed");
        let _ = send(&mut svc, "n1").await;
        assert_eq!(info(&reg, "n1").state, "open");
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_5xx_counts_but_relayed_5xx_and_own_errors_do_not() {
        let up = Upstream::new([], Act::Marked(503));
        let (mut svc, reg, m) = stack(cfg(), &up);
        for _ in 0..20 {
            assert_eq!(send(&mut svc, "mid").await.unwrap().status(), 503);
        }
        let c = info(&reg, "mid");
        assert_eq!((c.state.as_str(), c.consecutive_failures), ("closed", 0));
        let relayed = OutcomeLabels {
            upstream: Arc::from("mid"),
            outcome: "relayed",
        };
        assert_eq!(m.outcomes.get_or_create(&relayed).get(), 20);

        let up = Upstream::new([], Act::Throttled);
        let (mut svc, reg, _) = stack(cfg(), &up);
        for _ in 0..20 {
            assert!(matches!(
                send(&mut svc, "mid").await,
                Err(ProxyError::Throttled { .. })
            ));
        }
        assert_eq!(info(&reg, "mid").state, "closed");

        let up = Upstream::new([], Act::Status(502));
        let (mut svc, reg, m) = stack(cfg(), &up);
        for _ in 0..5 {
            assert_eq!(send(&mut svc, "mid").await.unwrap().status(), 502);
        }
        let c = info(&reg, "mid");
        assert_eq!(
            (c.state.as_str(), c.reason.as_deref()),
            ("open", Some("consecutive_failures"))
        );
        assert_eq!(
            c.last_error.as_deref(),
            Some("upstream answered 502 Bad Gateway")
        );
        let u5 = OutcomeLabels {
            upstream: Arc::from("mid"),
            outcome: "upstream_5xx",
        };
        assert_eq!(m.outcomes.get_or_create(&u5).get(), 5);
    }

    /// The edge boxes the stack into a `BoxCloneSyncService`.
    #[test]
    fn service_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<BreakerService<Upstream>>();
        check::<BreakerRegistry>();
    }

    #[test]
    fn outcome_classification() {
        let ok = |s: u16| -> Result<Response, ProxyError> {
            let mut r = http::Response::new(crate::empty());
            *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
            Ok(r)
        };
        assert_eq!(Outcome::of(&ok(200)), Outcome::Success);
        assert_eq!(Outcome::of(&ok(404)), Outcome::Success);
        assert_eq!(Outcome::of(&ok(429)), Outcome::Success);
        assert_eq!(Outcome::of(&ok(500)), Outcome::Upstream5xx);
        let relayed = Ok(ProxyError::Shed {
            class: crate::classify::TrafficClass::Client,
            limit: 1,
        }
        .into_response());
        assert_eq!(Outcome::of(&relayed), Outcome::Relayed);
        let timeout = ProxyError::Timeout {
            upstream: "u".into(),
            kind: TimeoutKind::PerTry,
            after: Duration::from_secs(1),
        };
        assert_eq!(
            Outcome::of::<crate::Body>(&Err(timeout)),
            Outcome::LocalOrigin
        );
        assert_eq!(
            Outcome::of::<crate::Body>(&Err(ProxyError::NoRoute("x".into()))),
            Outcome::Ignored
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_one_probe_and_success_closes() {
        let up = Upstream::new([], Act::Connect);
        let (mut svc, reg, m) = stack(cfg(), &up);
        for _ in 0..5 {
            let _ = send(&mut svc, "n1").await;
        }
        assert_eq!(up.calls(), 5);
        *up.script.lock().unwrap() =
            VecDeque::from([Act::Slow(Duration::from_millis(500), 200), Act::Status(200)]);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let calls: Vec<_> = (0..50).map(|_| svc.clone().oneshot(req("n1"))).collect();
        let results = futures::future::join_all(calls).await;
        assert_eq!(up.calls(), 6, "the upstream saw exactly one probe");
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1);
        for r in results.into_iter().filter(|r| r.is_err()) {
            assert_eq!(reason(r), "half_open_probe_in_flight");
        }
        let c = info(&reg, "n1");
        assert_eq!(
            (c.state.as_str(), c.consecutive_failures, c.trips),
            ("closed", 0, 1)
        );
        let n1 = |to| TransitionLabels {
            upstream: Arc::from("n1"),
            to,
        };
        assert_eq!(m.transitions.get_or_create(&n1("open")).get(), 1);
        assert_eq!(m.transitions.get_or_create(&n1("half_open")).get(), 1);
        assert_eq!(m.transitions.get_or_create(&n1("closed")).get(), 1);
        assert_eq!(
            m.rejected
                .get_or_create(&UpstreamLabels {
                    upstream: Arc::from("n1")
                })
                .get(),
            49
        );
        // Closed again: traffic flows, and it takes a full new run of failures to trip.
        assert_eq!(send(&mut svc, "n1").await.unwrap().status(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_longer() {
        let up = Upstream::new([], Act::Status(500));
        let (mut svc, reg, _) = stack(
            BreakerConfig {
                open_max: Duration::from_secs(8),
                ..cfg()
            },
            &up,
        );
        for _ in 0..5 {
            let _ = send(&mut svc, "n1").await;
        }
        let mut expected = vec![];
        let mut seen = vec![];
        for open in [1u64, 2, 4, 8, 8] {
            expected.push(open * 1000);
            let c = info(&reg, "n1");
            assert_eq!(c.state, "open");
            seen.push(c.open_until_ms);
            // Still open a moment before the open time ends…
            tokio::time::sleep(Duration::from_millis(c.open_until_ms - 1)).await;
            assert_eq!(reason(send(&mut svc, "n1").await), "consecutive_failures");
            tokio::time::sleep(Duration::from_millis(1)).await;
            // …then the probe goes out, fails, and the circuit re-opens.
            assert_eq!(send(&mut svc, "n1").await.unwrap().status(), 500);
        }
        assert_eq!(seen, expected);
        assert_eq!(
            info(&reg, "n1").trips,
            1,
            "re-opening after a probe is not a new trip"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_time_is_jittered_but_reproducible() {
        let run = || async {
            let cfg = BreakerConfig {
                seed: Some(42),
                ..BreakerConfig::default()
            };
            let up = Upstream::new([], Act::Status(500));
            let (mut svc, reg, _) = stack(cfg, &up);
            for _ in 0..5 {
                let _ = send(&mut svc, "n1").await;
            }
            let mut opens = vec![];
            for _ in 0..4 {
                let ms = info(&reg, "n1").open_until_ms;
                opens.push(ms);
                // +1: the snapshot rounds down to whole milliseconds.
                tokio::time::sleep(Duration::from_millis(ms + 1)).await;
                assert_eq!(
                    send(&mut svc, "n1").await.unwrap().status(),
                    500,
                    "the probe went out"
                );
            }
            opens
        };
        let a = run().await;
        assert_eq!(a, run().await);
        for (i, ms) in a.iter().enumerate() {
            let base = 1000u64 << i;
            assert!(
                *ms >= base / 2 && *ms <= base,
                "open time {ms} ms not in (50 %, 100 %] of {base} ms"
            );
        }
        assert!(a.windows(2).all(|w| w[0] < w[1]), "open times grow: {a:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_releases_the_slot() {
        let up = Upstream::new([], Act::Connect);
        let (mut svc, reg, _) = stack(cfg(), &up);
        for _ in 0..5 {
            let _ = send(&mut svc, "n1").await;
        }
        *up.script.lock().unwrap() =
            VecDeque::from([Act::Slow(Duration::from_secs(3600), 200), Act::Status(200)]);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let probe = svc.ready().await.unwrap().call(req("n1"));
        assert_eq!(
            reason(send(&mut svc, "n1").await),
            "half_open_probe_in_flight"
        );
        drop(probe);
        assert_eq!(info(&reg, "n1").state, "half_open");
        assert_eq!(
            send(&mut svc, "n1").await.unwrap().status(),
            200,
            "the next request is the probe"
        );
        assert_eq!(info(&reg, "n1").state, "closed");
        assert_eq!(up.calls(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn inconclusive_probe_lets_the_next_request_probe() {
        let up = Upstream::new([], Act::Connect);
        let (mut svc, reg, _) = stack(cfg(), &up);
        for _ in 0..5 {
            let _ = send(&mut svc, "n1").await;
        }
        *up.script.lock().unwrap() = VecDeque::from([Act::Marked(503), Act::Status(204)]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(send(&mut svc, "n1").await.unwrap().status(), 503);
        assert_eq!(info(&reg, "n1").state, "half_open");
        assert_eq!(send(&mut svc, "n1").await.unwrap().status(), 204);
        assert_eq!(info(&reg, "n1").state, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_from_before_the_trip_are_ignored() {
        let slow = Act::Slow(Duration::from_millis(500), 200);
        let up = Upstream::new(
            [
                slow,
                Act::Connect,
                Act::Connect,
                Act::Connect,
                Act::Connect,
                Act::Connect,
            ],
            Act::Connect,
        );
        let (mut svc, reg, _) = stack(cfg(), &up);
        // Admitted (and sent) now, answered later.
        let early = tokio::spawn(svc.ready().await.unwrap().call(req("n1")));
        for _ in 0..5 {
            let _ = send(&mut svc, "n1").await;
        }
        assert_eq!(info(&reg, "n1").state, "open");
        // The slow request admitted while closed answers 200 during the open period: it proves nothing
        // about the upstream now, and must not close the circuit.
        assert_eq!(early.await.unwrap().unwrap().status(), 200);
        let c = info(&reg, "n1");
        assert_eq!(c.state, "open");
        assert_eq!(c.consecutive_failures, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn upstreams_are_independent() {
        let up = Upstream::new([], Act::Connect);
        let (mut svc, reg, _) = stack(cfg(), &up);
        for _ in 0..5 {
            let _ = send(&mut svc, "sick").await;
        }
        assert_eq!(reason(send(&mut svc, "sick").await), "consecutive_failures");
        // Another upstream still gets its requests through (and fails on its own account).
        assert!(matches!(
            send(&mut svc, "other").await,
            Err(ProxyError::Connect { .. })
        ));
        assert_eq!(info(&reg, "other").state, "closed");
        assert_eq!(info(&reg, "other").consecutive_failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_falls_back_to_authority_then_default() {
        let up = Upstream::new([], Act::Status(200));
        let (mut svc, reg, _) = stack(cfg(), &up);
        let r = http::Request::builder()
            .uri("http://127.0.0.12:9096/x")
            .body(crate::empty())
            .unwrap();
        svc.ready().await.unwrap().call(r).await.unwrap();
        let r = http::Request::builder()
            .uri("/x")
            .body(crate::empty())
            .unwrap();
        svc.ready().await.unwrap().call(r).await.unwrap();
        let names: Vec<_> = reg.snapshot().into_iter().map(|c| c.upstream).collect();
        assert_eq!(names, ["127.0.0.12:9096", "default"]);
    }

    #[tokio::test(start_paused = true)]
    async fn registry_is_bounded_and_keeps_open_circuits() {
        let up = Upstream::new([], Act::Connect);
        let cfg = BreakerConfig {
            max_upstreams: 3,
            ..cfg()
        };
        let (mut svc, reg, _) = stack(cfg, &up);
        for _ in 0..5 {
            let _ = send(&mut svc, "sick").await;
        }
        for name in ["a", "b", "c", "d"] {
            let _ = send(&mut svc, name).await;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let names: Vec<_> = reg.snapshot().into_iter().map(|c| c.upstream).collect();
        assert_eq!(
            names,
            ["c", "d", "sick"],
            "least recently used closed circuits go first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_reports_state_reason_and_timing() {
        let up = Upstream::new([], Act::Connect);
        let (mut svc, reg, _) = stack(cfg(), &up);
        for _ in 0..5 {
            let _ = send(&mut svc, "n1").await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let snap = reg.snapshot();
        assert_eq!(
            snap,
            vec![CircuitInfo {
                upstream: "n1".into(),
                state: "open".into(),
                reason: Some("consecutive_failures".into()),
                consecutive_failures: 5,
                open_until_ms: 600,
                trips: 1,
                last_error: Some("cannot connect to upstream u: refused".into()),
            }]
        );
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json[0]["state"], "open");
        assert_eq!(json[0]["open_until_ms"], 600);
    }

    /// The only test on real time: failsafe's rate window reads `std::time`, and will not judge before
    /// one whole window has passed.
    #[tokio::test]
    async fn failure_rate_trips_with_its_own_reason() {
        let cfg = BreakerConfig {
            consecutive_failures: 1000,
            failure_rate: 0.5,
            failure_rate_window: Duration::from_secs(1),
            min_requests: 4,
            ..cfg()
        };
        let up = Upstream::new([Act::Status(200)], Act::Status(500));
        let (mut svc, reg, _) = stack(cfg, &up);
        assert_eq!(send(&mut svc, "n1").await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for _ in 0..3 {
            assert_eq!(send(&mut svc, "n1").await.unwrap().status(), 500);
        }
        assert_eq!(
            info(&reg, "n1").state,
            "closed",
            "below min_requests in the window"
        );
        assert_eq!(send(&mut svc, "n1").await.unwrap().status(), 500);
        let c = info(&reg, "n1");
        assert_eq!(
            (c.state.as_str(), c.reason.as_deref()),
            ("open", Some("failure_rate"))
        );
        assert_eq!(reason(send(&mut svc, "n1").await), "failure_rate");
    }

    #[test]
    fn config_defaults_parse_and_validate() {
        let d = BreakerConfig::default();
        assert_eq!(d.validate(), Ok(()));
        let c: BreakerConfig =
            toml::from_str("consecutive_failures = 7\nopen_base = \"2s\"\nseed = 3").unwrap();
        assert_eq!(
            (c.consecutive_failures, c.open_base, c.seed),
            (7, Duration::from_secs(2), Some(3))
        );
        assert_eq!(c.open_max, d.open_max);
        assert!(
            toml::from_str::<BreakerConfig>("consecutive = 7").is_err(),
            "unknown fields are refused"
        );
        let bad = |c: BreakerConfig| c.validate().unwrap_err();
        assert_eq!(
            bad(BreakerConfig {
                consecutive_failures: 0,
                ..d.clone()
            }),
            "consecutive_failures must be ≥ 1"
        );
        assert!(bad(BreakerConfig {
            failure_rate: 0.0,
            ..d.clone()
        })
        .starts_with("failure_rate must be in (0, 1]"));
        assert!(bad(BreakerConfig {
            open_base: Duration::from_millis(1500),
            ..d.clone()
        })
        .starts_with("open_base"));
        assert!(bad(BreakerConfig {
            open_max: Duration::from_millis(500),
            ..d.clone()
        })
        .starts_with("open_max"));
        assert!(bad(BreakerConfig {
            jitter: 1.5,
            ..d.clone()
        })
        .starts_with("jitter"));
        assert_eq!(
            bad(BreakerConfig {
                max_upstreams: 0,
                ..d.clone()
            }),
            "max_upstreams must be ≥ 1"
        );
        assert!(bad(BreakerConfig {
            failure_rate_window: Duration::from_millis(10),
            ..d
        })
        .starts_with("failure_rate_window"));
    }
}
