//! Canary request probing against queries of death (QoD).
//!
//! A request whose signature has never been seen to succeed is sent first, single-flight per
//! signature, to a canary upstream with a deadline derived from its route's normal latency. If the
//! canary answers, the signature becomes known and that answer is the real one. If the canary
//! crashes, resets or hangs, that is a strike: safe (idempotent) requests are confirmed on a second
//! canary at once; others fail and are confirmed when the client tries again (the next try starts
//! at the next canary). Strikes on `strikes` distinct canaries blacklist the request's *fine*
//! signature with a TTL that doubles on every repeat; later copies are refused at the edge before
//! they cost anything.
//!
//! Two layers share one [`QodState`]: [`QodFilterLayer`] (right after fault injection: compute the
//! signature, refuse blacklisted requests) and [`QodProbeLayer`] (after throttling and shedding, so
//! a flood of unknown requests is limited before it reaches a canary). Known requests pay for a
//! signature (no allocation), one uncontended lock for the blacklist and a read lock for the known
//! set; they never wait on a probe.
//!
//! Decisions (also in `docs/sidecar.md`):
//! - A strike is a local-origin failure *after connecting* (reset, EOF before the answer, a broken
//!   answer) or no answer head within the deadline. A canary that refuses connections is
//!   *unavailable*, not struck: the next canary is tried, and with none left `on_canary_unavailable`
//!   decides (forward to the node, the default, or refuse with 503).
//! - Any answer proves the canary survived. Only answers below 500 mark the signature known; a 5xx
//!   is passed on but the shape stays unknown (probed again next time).
//! - The known set lives in memory only: after a restart (often a new backend version) every shape
//!   is probed once again. The blacklist persists (`state_file`) and is shared with the `[mesh]` peers.
//! - While no canary is reachable, a request whose probe group (known key) struck a canary
//!   recently is refused (503) even with `on_canary_unavailable = "forward"`: the canaries are
//!   likely down because a sibling crashed them, and a near variant must not reach the node.
//! - `mode = "dry_run"`: entries are still created (and alert), but matching requests are counted,
//!   logged and forwarded to the node instead of refused.

pub mod admin;
pub mod blacklist;
pub mod signature;

use crate::classify::{RouteName, TrafficClass};
use crate::error::ProxyError;
use crate::policy::retry::{buffer, Buffered};
use crate::policy::Maybe;
use crate::proxy::forward::Forward;
use crate::{Request, Response};
use blacklist::{now_ms, Blacklist, Entry, Merge, Sample};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use signature::Signature;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// On answers that went through probing: `canary=<addr>; id=<sig>`, `blocked; id=<sig>`, `dry-run; id=<sig>`.
pub const H_QOD: &str = "x-bulwark-qod";

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QodMode {
    Enforce,
    DryRun,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Send the request to the node unprobed (availability first).
    Forward,
    /// Refuse it with 503 (safety first).
    Reject,
}

/// `[qod]`. Probing runs on inbound HTTP listeners that name `canaries`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QodConfig {
    pub enabled: bool,
    pub mode: QodMode,
    /// Traffic classes that are probed (peer replication and control traffic are not, by default).
    pub classes: Vec<TrafficClass>,
    /// Confirm a strike of a safe request (GET, HEAD, OPTIONS) on a second canary at once.
    pub confirm: bool,
    /// Strikes on distinct canaries (or on the only one) that blacklist a signature.
    pub strikes: u32,
    /// Canary deadline = factor × the route's p99 answer time, clamped to [min, max].
    pub deadline_factor: f64,
    #[serde(with = "humantime_serde")]
    pub min_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// Used until a route has 20 observed answers.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Requests of one unknown signature that may wait for its probe; more get 503.
    pub max_waiters: usize,
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Bodies up to this size are kept to confirm on a second canary or fall back to the node.
    pub max_body_bytes: usize,
    /// First blacklisting; doubles on every repeat up to `max_ttl`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    pub max_known: usize,
    pub max_entries: usize,
    /// Body bytes kept in an entry's sample.
    pub sample_bytes: usize,
    /// Where the blacklist is kept across restarts (JSON, written atomically).
    pub state_file: Option<PathBuf>,
    /// `http://` URL that receives a JSON alert for every new local entry.
    pub webhook: Option<String>,
    pub on_canary_unavailable: OnUnavailable,
}

impl Default for QodConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: QodMode::Enforce,
            classes: vec![TrafficClass::Client],
            confirm: true,
            strikes: 2,
            deadline_factor: 4.0,
            min_deadline: Duration::from_millis(500),
            max_deadline: Duration::from_secs(10),
            default_deadline: Duration::from_secs(5),
            max_waiters: 64,
            wait_timeout: Duration::from_secs(15),
            max_body_bytes: 1 << 20,
            ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(24 * 3600),
            max_known: 100_000,
            max_entries: 10_000,
            sample_bytes: 4096,
            state_file: None,
            webhook: None,
            on_canary_unavailable: OnUnavailable::Forward,
        }
    }
}

impl QodConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.deadline_factor > 0.0 && self.deadline_factor.is_finite()) {
            return Err("deadline_factor must be > 0".into());
        }
        if self.min_deadline.is_zero() || self.min_deadline > self.max_deadline {
            return Err("need 0 < min_deadline <= max_deadline".into());
        }
        if self.default_deadline.is_zero() || self.wait_timeout.is_zero() {
            return Err("default_deadline and wait_timeout must be > 0".into());
        }
        if self.strikes == 0 || self.strikes > 8 {
            return Err("strikes must be within 1..=8".into());
        }
        if self.max_waiters == 0 || self.max_known == 0 || self.max_entries == 0 {
            return Err("max_waiters, max_known and max_entries must be > 0".into());
        }
        if self.max_body_bytes > 64 << 20 || self.sample_bytes > 1 << 20 {
            return Err("max_body_bytes must be <= 64 MiB and sample_bytes <= 1 MiB".into());
        }
        if self.ttl.is_zero() || self.max_ttl < self.ttl {
            return Err("need 0 < ttl <= max_ttl".into());
        }
        if self.classes.is_empty() {
            return Err("classes must name at least one traffic class".into());
        }
        if let Some(w) = &self.webhook {
            let u: http::Uri = w.parse().map_err(|e| format!("webhook {w:?}: {e}"))?;
            if u.scheme_str() != Some("http") || u.authority().is_none() {
                return Err(format!("webhook {w:?}: must be an http:// URL"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub origin: &'static str,
}

#[derive(Clone, Default)]
pub struct QodMetrics {
    pub probes: Family<OutcomeLabels, Counter>,
    pub blocked: Counter,
    pub dry_run_hits: Counter,
    pub blacklisted: Family<OriginLabels, Counter>,
    pub alerts: Counter,
    pub webhooks: Family<OutcomeLabels, Counter>,
    pub entries: Gauge,
    pub known: Gauge,
    pub waiting: Gauge,
}

impl QodMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "qod_probes",
            "Canary probes of unknown request signatures, by outcome (ok, error_status, strike, timeout, unavailable)",
            self.probes.clone(),
        );
        r.register(
            "qod_blocked",
            "Requests refused because their signature is blacklisted as a query of death",
            self.blocked.clone(),
        );
        r.register(
            "qod_dry_run_hits",
            "Requests matching a blacklist entry in dry-run mode (forwarded, not refused)",
            self.dry_run_hits.clone(),
        );
        r.register(
            "qod_blacklisted",
            "Blacklist entries added, by origin (local, peer, admin)",
            self.blacklisted.clone(),
        );
        r.register(
            "qod_alerts",
            "Alerts raised for new query-of-death entries (one per local entry)",
            self.alerts.clone(),
        );
        r.register(
            "qod_webhooks",
            "Alert webhook deliveries, by outcome",
            self.webhooks.clone(),
        );
        r.register(
            "qod_blacklist_entries",
            "Live blacklist entries",
            self.entries.clone(),
        );
        r.register(
            "qod_known_signatures",
            "Request signatures seen to succeed",
            self.known.clone(),
        );
        r.register(
            "qod_probe_waiters",
            "Requests waiting for a probe of their signature",
            self.waiting.clone(),
        );
    }
}

/// Keys are already hashes.
#[derive(Default)]
struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 << 8) | x as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct Known {
    set: IdSet,
    order: VecDeque<u64>,
}

/// Answer times of one route, in power-of-two microsecond buckets (for the canary deadline).
#[derive(Default)]
struct RouteLatency {
    buckets: [AtomicU64; 32],
    total: AtomicU64,
}

impl RouteLatency {
    fn record(&self, d: Duration) {
        let us = d.as_micros().clamp(1, u32::MAX as u128) as u32;
        let b = (31 - us.leading_zeros()) as usize;
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        // Age old observations: halve everything every 4096 answers.
        if self.total.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            for c in &self.buckets {
                let v = c.load(Ordering::Relaxed);
                c.store(v / 2, Ordering::Relaxed);
            }
        }
    }

    /// Upper bound of the bucket holding the 99th percentile, if enough is known.
    fn p99(&self) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        if n < 20 {
            return None;
        }
        let want = (n * 99).div_ceil(100);
        let mut acc = 0;
        for (i, c) in counts.iter().enumerate() {
            acc += c;
            if acc >= want {
                return Some(Duration::from_micros(2u64 << i));
            }
        }
        None
    }
}

struct Flight {
    lock: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

/// Strikes of one fine signature not (yet) blacklisted: which canaries struck, and when.
#[derive(Clone, Copy)]
struct Strikes {
    canaries: u64,
    count: u32,
    last_ms: u64,
}

/// Probing state shared by every listener, alive across reloads.
pub struct QodState {
    pub blacklist: Blacklist,
    known: RwLock<Known>,
    strikes: Mutex<HashMap<u64, Strikes>>,
    /// Probe groups (known keys) with a recent strike → until when (ms). While no canary is
    /// reachable, requests of these groups are refused rather than forwarded: the canaries are
    /// most likely down *because* a sibling of theirs crashed them.
    suspects: Mutex<HashMap<u64, u64>>,
    flights: Mutex<HashMap<u64, Arc<Flight>>>,
    latency: RwLock<HashMap<Arc<str>, Arc<RouteLatency>>>,
    pub metrics: QodMetrics,
    /// This sidecar's name in entries it creates (its admin address).
    pub node: String,
    config: arc_swap::ArcSwap<QodConfig>,
    mesh: arc_swap::ArcSwap<crate::config::MeshConfig>,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
}

impl QodState {
    pub fn open(
        cfg: &QodConfig,
        mesh: &crate::config::MeshConfig,
        node: String,
        metrics: QodMetrics,
    ) -> Result<Arc<Self>, String> {
        let blacklist = Blacklist::open(cfg.state_file.as_deref(), cfg.max_entries)?;
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(conn);
        let st = Arc::new(Self {
            blacklist,
            known: RwLock::new(Known::default()),
            strikes: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            latency: RwLock::new(HashMap::new()),
            metrics,
            node,
            config: arc_swap::ArcSwap::from_pointee(cfg.clone()),
            mesh: arc_swap::ArcSwap::from_pointee(mesh.clone()),
            http,
        });
        st.metrics.entries.set(st.blacklist.live_count() as i64);
        Ok(st)
    }

    /// A reload's new settings (peers, webhook, TTLs) for the background work.
    pub fn reconfigure(&self, cfg: &QodConfig, mesh: &crate::config::MeshConfig) {
        self.config.store(Arc::new(cfg.clone()));
        self.mesh.store(Arc::new(mesh.clone()));
    }

    pub fn peers(&self) -> Vec<String> {
        self.mesh.load().peers.clone()
    }

    pub fn config(&self) -> Arc<QodConfig> {
        self.config.load_full()
    }

    pub fn is_known(&self, key: u64) -> bool {
        self.known.read().expect("known lock").set.contains(&key)
    }

    fn mark_known(&self, key: u64, max: usize) {
        let mut k = self.known.write().expect("known lock");
        if k.set.insert(key) {
            k.order.push_back(key);
            while k.order.len() > max {
                if let Some(old) = k.order.pop_front() {
                    k.set.remove(&old);
                }
            }
        }
        self.metrics.known.set(k.set.len() as i64);
    }

    pub fn known_count(&self) -> usize {
        self.known.read().expect("known lock").set.len()
    }

    /// Forget every known signature (e.g. after deploying a new backend version).
    pub fn forget_known(&self) -> usize {
        let mut k = self.known.write().expect("known lock");
        let n = k.set.len();
        *k = Known::default();
        self.metrics.known.set(0);
        n
    }

    fn route_latency(&self, route: &Arc<str>) -> Arc<RouteLatency> {
        if let Some(r) = self.latency.read().expect("latency lock").get(route) {
            return r.clone();
        }
        self.latency
            .write()
            .expect("latency lock")
            .entry(route.clone())
            .or_default()
            .clone()
    }

    fn deadline(&self, cfg: &QodConfig, route: &Arc<str>) -> Duration {
        match self.route_latency(route).p99() {
            Some(p99) => p99
                .mul_f64(cfg.deadline_factor)
                .clamp(cfg.min_deadline, cfg.max_deadline),
            None => cfg.default_deadline,
        }
    }

    /// Adds an entry, raises the alert for local ones, and shares it with the peers.
    pub fn add_entry(self: &Arc<Self>, e: Entry, origin: &'static str) {
        let merged = self.blacklist.merge(e.clone());
        self.metrics.entries.set(self.blacklist.live_count() as i64);
        if merged != Merge::New {
            return;
        }
        self.metrics
            .blacklisted
            .get_or_create(&OriginLabels { origin })
            .inc();
        match origin {
            "peer" => tracing::info!(
                id = %e.id, route = %e.route, from = %e.node,
                "query-of-death entry received from a peer sidecar"
            ),
            _ => {
                self.metrics.alerts.inc();
                tracing::error!(
                    target: "bulwark::alert",
                    alert = "query_of_death",
                    id = %e.id,
                    listener = %e.listener,
                    route = %e.route,
                    signature = %e.signature.coarse,
                    shape = %e.signature.fine,
                    strikes = e.strikes,
                    expires_in_s = (e.expires_ms.saturating_sub(now_ms())) / 1000,
                    reason = %e.reason,
                    "ALERT query of death blacklisted: inspect GET /qod/blacklist/{} on this sidecar's admin API",
                    e.id
                );
                self.send_webhook(&e);
            }
        }
        if origin != "peer" {
            self.share(vec![e]);
        }
    }

    /// Applies an edit or deletion and shares it.
    pub fn update_entry(self: &Arc<Self>, e: Entry) {
        self.blacklist.merge(e.clone());
        self.metrics.entries.set(self.blacklist.live_count() as i64);
        self.share(vec![e]);
    }

    fn send_webhook(self: &Arc<Self>, e: &Entry) {
        let Some(url) = self.config().webhook.clone() else {
            return;
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "event": "query_of_death_blacklisted",
            "sidecar": self.node,
            "entry": e,
        }))
        .expect("json");
        let st = self.clone();
        tokio::spawn(async move {
            let ok = st.post(&url, None, body).await;
            let outcome = if ok { "delivered" } else { "failed" };
            st.metrics
                .webhooks
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
            if !ok {
                tracing::warn!(%url, "query-of-death alert webhook could not be delivered");
            }
        });
    }

    /// Pushes entries to every peer (bounded tries, in the background).
    fn share(self: &Arc<Self>, entries: Vec<Entry>) {
        let cfg = self.mesh.load_full();
        if cfg.peers.is_empty() {
            return;
        }
        let body = serde_json::to_vec(&entries).expect("json");
        for peer in cfg.peers.clone() {
            let st = self.clone();
            let body = body.clone();
            let token = cfg.token.clone();
            tokio::spawn(async move {
                let url = format!("http://{peer}/qod/blacklist/sync");
                if !st.post(&url, token.as_deref(), body).await {
                    tracing::warn!(%peer, "could not share blacklist entries with a peer sidecar (it pulls them when it starts)");
                }
            });
        }
    }

    /// POST with 3 tries, 2 s each; true when the receiver answered 2xx.
    async fn post(&self, url: &str, token: Option<&str>, body: Vec<u8>) -> bool {
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let mut b = http::Request::post(url).header("content-type", "application/json");
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            let Ok(req) = b.body(http_body_util::Full::new(Bytes::from(body.clone()))) else {
                return false;
            };
            match tokio::time::timeout(Duration::from_secs(2), self.http.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => return true,
                _ => continue,
            }
        }
        false
    }

    /// Pulls the peers' lists once (a sidecar that was down missed their pushes).
    pub fn pull_from_peers(self: &Arc<Self>) {
        let cfg = self.mesh.load_full();
        for peer in cfg.peers.clone() {
            let st = self.clone();
            let token = cfg.token.clone();
            tokio::spawn(async move {
                let url = format!("http://{peer}/qod/blacklist?tombstones=1");
                let mut b = http::Request::get(&url);
                if let Some(t) = &token {
                    b = b.header("authorization", format!("Bearer {t}"));
                }
                let Ok(req) = b.body(http_body_util::Full::new(Bytes::new())) else {
                    return;
                };
                let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_secs(3), st.http.request(req)).await
                else {
                    tracing::debug!(%peer, "peer sidecar not reachable for the blacklist pull");
                    return;
                };
                let Ok(Ok(body)) =
                    tokio::time::timeout(Duration::from_secs(3), resp.into_body().collect()).await
                else {
                    return;
                };
                match serde_json::from_slice::<Vec<Entry>>(&body.to_bytes()) {
                    Ok(entries) => {
                        for e in entries {
                            st.add_entry(e, "peer");
                        }
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "bad blacklist from a peer"),
                }
            });
        }
    }

    /// Records a strike by canary `idx`; returns the distinct canaries (count) that struck.
    fn strike(&self, fine: u64, idx: usize, single_canary: bool, ttl: Duration) -> u32 {
        let now = now_ms();
        let mut m = self.strikes.lock().expect("strikes lock");
        m.retain(|_, s| now.saturating_sub(s.last_ms) < ttl.as_millis() as u64);
        let s = m.entry(fine).or_insert(Strikes {
            canaries: 0,
            count: 0,
            last_ms: now,
        });
        s.canaries |= 1 << (idx % 64);
        s.count += 1;
        s.last_ms = now;
        if single_canary {
            s.count
        } else {
            s.canaries.count_ones()
        }
    }

    fn suspect(&self, key: u64, ttl: Duration) {
        let now = now_ms();
        let mut m = self.suspects.lock().expect("suspects lock");
        m.retain(|_, until| *until > now);
        m.insert(key, now + ttl.as_millis() as u64);
    }

    fn is_suspect(&self, key: u64) -> bool {
        let m = self.suspects.lock().expect("suspects lock");
        m.get(&key).is_some_and(|until| *until > now_ms())
    }

    /// The canary a new probe of `fine` starts at: after the ones that already struck.
    fn first_canary(&self, fine: u64, n: usize) -> usize {
        let m = self.strikes.lock().expect("strikes lock");
        match m.get(&fine) {
            Some(s) => (0..n)
                .find(|i| s.canaries & (1 << (i % 64)) == 0)
                .unwrap_or(0),
            None => 0,
        }
    }

    fn clear_strikes(&self, fine: u64) {
        self.strikes.lock().expect("strikes lock").remove(&fine);
    }

    fn flight(&self, key: u64) -> Arc<Flight> {
        self.flights
            .lock()
            .expect("flights lock")
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Flight {
                    lock: tokio::sync::Mutex::new(()),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    fn end_flight(&self, key: u64, f: &Arc<Flight>) {
        let mut m = self.flights.lock().expect("flights lock");
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(f) <= 2 {
            m.remove(&key);
        }
    }
}

/// What the filter decided, for the probe layer.
#[derive(Clone, Copy)]
pub struct SigExt {
    pub sig: Signature,
    /// A dry-run blacklist hit: forwarded to the node unprobed.
    pub dry_run_hit: bool,
}

// ---------------------------------------------------------------------------------------------
// Filter layer: signature + blacklist.

#[derive(Clone)]
pub struct QodFilterLayer {
    on: Option<(Arc<QodState>, Arc<QodConfig>)>,
}

impl QodFilterLayer {
    /// `None`: probing is off for this listener and the layer passes everything through.
    pub fn new(on: Option<(Arc<QodState>, Arc<QodConfig>)>) -> Self {
        Self { on }
    }
}

impl<S> tower::Layer<S> for QodFilterLayer {
    type Service = QodFilter<S>;
    fn layer(&self, inner: S) -> Self::Service {
        QodFilter {
            inner,
            on: self.on.clone(),
        }
    }
}

#[derive(Clone)]
pub struct QodFilter<S> {
    inner: S,
    on: Option<(Arc<QodState>, Arc<QodConfig>)>,
}

fn route_of(req: &Request) -> Arc<str> {
    req.extensions()
        .get::<RouteName>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| Arc::from("other"))
}

impl<S> tower::Service<Request> for QodFilter<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Maybe<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some((st, cfg)) = &self.on else {
            return Maybe::direct(self.inner.call(req));
        };
        if !cfg.classes.contains(&TrafficClass::of(&req)) {
            return Maybe::direct(self.inner.call(req));
        }
        let route = route_of(&req);
        let sig = signature::of(&req, &route);
        let mut dry_run_hit = false;
        if let Some((id, expires_ms, entry_dry, reason)) = st.blacklist.matching(sig.fine, now_ms())
        {
            if cfg.mode == QodMode::DryRun || entry_dry {
                dry_run_hit = true;
                st.metrics.dry_run_hits.inc();
                tracing::warn!(%id, %route, "dry run: request matches a query-of-death entry; forwarded");
            } else {
                st.metrics.blocked.inc();
                let err = ProxyError::QueryOfDeath {
                    id,
                    expires_in: Duration::from_millis(expires_ms.saturating_sub(now_ms())),
                    reason,
                };
                return Maybe::err(err);
            }
        }
        req.extensions_mut().insert(SigExt { sig, dry_run_hit });
        let fut = self.inner.call(req);
        if dry_run_hit {
            return Maybe::boxed(mark_dry_run(fut, signature::id(sig.fine)));
        }
        Maybe::direct(fut)
    }
}

async fn mark_dry_run<F>(fut: F, id: String) -> Result<Response, ProxyError>
where
    F: std::future::Future<Output = Result<Response, ProxyError>>,
{
    let mut r = fut.await?;
    if let Ok(v) = HeaderValue::from_str(&format!("dry-run; id={id}")) {
        r.headers_mut().insert(H_QOD, v);
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Probe layer: single-flight canary probing of unknown signatures.

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

/// Boxes the inner future outside any `async` block (see `retry::boxed_call`, rust#64552).
fn boxed_call<S>(inner: &mut S, req: Request) -> BoxFuture<'static, Result<Response, ProxyError>>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError>,
    S::Future: Send + 'static,
{
    Box::pin(inner.call(req))
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
                    let repeat = st.blacklist.repeats(sig.fine);
                    let ttl = cfg
                        .ttl
                        .saturating_mul(1u32 << repeat.min(20))
                        .min(cfg.max_ttl);
                    let now = now_ms();
                    let reason =
                        format!("crashed or hung {distinct} canaries: {}", struck.join("; "));
                    let entry = Entry {
                        id: signature::id(sig.fine),
                        coarse: signature::id(sig.coarse),
                        signature: described.clone(),
                        route: route.to_string(),
                        listener: p.listener.to_string(),
                        reason: reason.clone(),
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
                        sample: Some(sample(
                            &parts,
                            replay.as_ref().map(|r| &r.data),
                            cfg.sample_bytes,
                        )),
                    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cfg: &QodConfig) -> Arc<QodState> {
        QodState::open(
            cfg,
            &crate::config::MeshConfig::default(),
            "test".into(),
            QodMetrics::default(),
        )
        .unwrap()
    }

    #[test]
    fn canary_deadline_follows_the_routes_p99_within_bounds() {
        let cfg = QodConfig::default();
        let st = state(&cfg);
        let route: Arc<str> = Arc::from("cat");
        assert_eq!(
            st.deadline(&cfg, &route),
            cfg.default_deadline,
            "too few answers"
        );
        let lat = st.route_latency(&route);
        for _ in 0..99 {
            lat.record(Duration::from_millis(10));
        }
        lat.record(Duration::from_millis(200));
        // p99 of 100 answers is in the 8–16 ms bucket: 16 ms × 4 = 64 ms, raised to the minimum.
        assert_eq!(st.deadline(&cfg, &route), cfg.min_deadline);
        for _ in 0..100 {
            lat.record(Duration::from_millis(700));
        }
        // Now p99 is in the 512–1024 ms bucket: 1.024 s × 4.
        assert_eq!(
            st.deadline(&cfg, &route),
            Duration::from_micros(1 << 10 << 10) * 4
        );
        for _ in 0..1000 {
            lat.record(Duration::from_secs(30));
        }
        assert_eq!(st.deadline(&cfg, &route), cfg.max_deadline);
    }

    #[test]
    fn strikes_count_distinct_canaries_and_start_the_next_probe_elsewhere() {
        let cfg = QodConfig::default();
        let st = state(&cfg);
        assert_eq!(st.first_canary(7, 3), 0);
        assert_eq!(st.strike(7, 0, false, cfg.ttl), 1);
        assert_eq!(st.first_canary(7, 3), 1, "after the one that struck");
        assert_eq!(
            st.strike(7, 0, false, cfg.ttl),
            1,
            "the same canary twice is one"
        );
        assert_eq!(st.strike(7, 1, false, cfg.ttl), 2);
        st.clear_strikes(7);
        assert_eq!(st.first_canary(7, 3), 0);
        // With a single canary, repeated strikes count.
        assert_eq!(st.strike(8, 0, true, cfg.ttl), 1);
        assert_eq!(st.strike(8, 0, true, cfg.ttl), 2);
    }

    #[test]
    fn known_set_is_bounded_oldest_first() {
        let st = state(&QodConfig::default());
        for k in 0..5 {
            st.mark_known(k, 3);
        }
        assert_eq!(st.known_count(), 3);
        assert!(!st.is_known(0) && !st.is_known(1) && st.is_known(4));
        assert_eq!(st.forget_known(), 3);
        assert!(!st.is_known(4));
    }

    #[test]
    fn config_is_validated() {
        let ok = QodConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            QodConfig {
                deadline_factor: 0.0,
                ..ok.clone()
            },
            QodConfig {
                min_deadline: Duration::from_secs(20),
                ..ok.clone()
            },
            QodConfig {
                strikes: 0,
                ..ok.clone()
            },
            QodConfig {
                ttl: Duration::from_secs(3600 * 48),
                ..ok.clone()
            },
            QodConfig {
                webhook: Some("https://x/y".into()),
                ..ok.clone()
            },
            QodConfig {
                classes: vec![],
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
