//! Probing state shared by every listener and kept across reloads: known signatures, strikes,
//! single-flight slots, route latencies, the blacklist, and sharing it with the peers.

use super::blacklist::{now_ms, Blacklist, Entry, Merge};
use super::{OriginLabels, OutcomeLabels, QodConfig, QodMetrics};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
pub(super) struct RouteLatency {
    buckets: [AtomicU64; 32],
    total: AtomicU64,
}

impl RouteLatency {
    pub(super) fn record(&self, d: Duration) {
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

pub(super) struct Flight {
    pub(super) lock: tokio::sync::Mutex<()>,
    pub(super) waiting: AtomicUsize,
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

    pub(super) fn mark_known(&self, key: u64, max: usize) {
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

    pub(super) fn route_latency(&self, route: &Arc<str>) -> Arc<RouteLatency> {
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

    pub(super) fn deadline(&self, cfg: &QodConfig, route: &Arc<str>) -> Duration {
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
    pub(super) fn strike(&self, fine: u64, idx: usize, single_canary: bool, ttl: Duration) -> u32 {
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

    pub(super) fn suspect(&self, key: u64, ttl: Duration) {
        let now = now_ms();
        let mut m = self.suspects.lock().expect("suspects lock");
        m.retain(|_, until| *until > now);
        m.insert(key, now + ttl.as_millis() as u64);
    }

    pub(super) fn is_suspect(&self, key: u64) -> bool {
        let m = self.suspects.lock().expect("suspects lock");
        m.get(&key).is_some_and(|until| *until > now_ms())
    }

    /// The canary a new probe of `fine` starts at: after the ones that already struck.
    pub(super) fn first_canary(&self, fine: u64, n: usize) -> usize {
        let m = self.strikes.lock().expect("strikes lock");
        match m.get(&fine) {
            Some(s) => (0..n)
                .find(|i| s.canaries & (1 << (i % 64)) == 0)
                .unwrap_or(0),
            None => 0,
        }
    }

    pub(super) fn clear_strikes(&self, fine: u64) {
        self.strikes.lock().expect("strikes lock").remove(&fine);
    }

    pub(super) fn flight(&self, key: u64) -> Arc<Flight> {
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

    pub(super) fn end_flight(&self, key: u64, f: &Arc<Flight>) {
        let mut m = self.flights.lock().expect("flights lock");
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(f) <= 2 {
            m.remove(&key);
        }
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
}
