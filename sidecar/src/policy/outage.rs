//! Planned outages: announce to the peers, drain, down for a window, back — so that peers route
//! around the node before it goes away.
//!
//! An outage is a schedule (`start`, `drain`, `duration`, optional `every` for recurring windows)
//! kept by the node's own sidecar and *announced* (the whole schedule) to the peer sidecars when it
//! is created or cancelled; every sidecar computes the phase from the wall clock, so no further
//! messages are needed and a recurring outage needs no driver task.
//!
//! | phase | local sidecar | peer sidecars |
//! |---|---|---|
//! | `scheduled` | normal | normal |
//! | `draining` (`drain` long) | still serves; `/ready` says 503 so balancers move away | route around: requests to the node's addresses get an immediate 503 `circuit open; reason=planned_outage` |
//! | `down` (`duration` long) | never sends to the node: reads fail over to a peer sidecar, writes get 503 + `Retry-After` | same as draining |
//! | `back` | normal | normal |
//!
//! `GET /outages` lists local and announced ones; `POST /outages` creates; `DELETE /outages/{id}`
//! cancels (the node is back at once, on every sidecar).

use crate::error::ProxyError;
use crate::policy::now_ms;
use crate::{Request, Response};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

/// Longest window and schedule horizon accepted: a typo must not take a node out for a year.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `POST /outages` takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageRequest {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain: Duration,
    /// RFC 3339 (`2026-11-23T18:00:00Z`); default: now.
    #[serde(default)]
    pub start: Option<String>,
    /// Or relative: start this long from now.
    #[serde(default, with = "humantime_serde")]
    pub start_in: Option<Duration>,
    /// Recurring: the window repeats this often (must exceed drain + duration).
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Recurring: stop after this many windows (default: until cancelled).
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub reason: String,
}

fn default_drain() -> Duration {
    Duration::from_secs(5)
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Scheduled,
    Draining,
    Down,
    Back,
}

/// A planned outage as stored and announced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Outage {
    pub id: String,
    /// The sidecar whose node goes away (its admin address).
    pub node: String,
    /// The addresses peers use to reach that node (its sidecar's inbound listeners).
    pub upstreams: Vec<String>,
    pub start_ms: u64,
    pub drain_ms: u64,
    pub duration_ms: u64,
    pub every_ms: Option<u64>,
    pub count: Option<u32>,
    pub reason: String,
    #[serde(default)]
    pub cancelled: bool,
}

/// Where an outage stands at `now`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub phase: Phase,
    /// When the current (or next) window starts draining and when it is back, ms since epoch.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
}

impl Outage {
    pub fn status(&self, now: u64) -> Status {
        let len = self.drain_ms + self.duration_ms;
        let mut start = self.start_ms;
        if let (Some(every), true) = (self.every_ms, now >= self.start_ms) {
            let k = (now - self.start_ms) / every;
            let k = match self.count {
                Some(c) if k >= c as u64 => c.saturating_sub(1) as u64,
                _ => k,
            };
            start = self.start_ms + k * every;
        }
        let end = start + len;
        let phase = if self.cancelled {
            Phase::Back
        } else if now < start {
            Phase::Scheduled
        } else if now < start + self.drain_ms {
            Phase::Draining
        } else if now < end {
            Phase::Down
        } else {
            // Between windows of a recurring outage: the next one is scheduled.
            match self.every_ms {
                Some(every)
                    if self
                        .count
                        .is_none_or(|c| (start - self.start_ms) / every + 1 < c as u64) =>
                {
                    return Status {
                        phase: Phase::Scheduled,
                        window_start_ms: start + every,
                        window_end_ms: start + every + len,
                    }
                }
                _ => Phase::Back,
            }
        };
        Status {
            phase,
            window_start_ms: start,
            window_end_ms: end,
        }
    }

    /// Still worth keeping (not back for good).
    fn pending(&self, now: u64) -> bool {
        self.status(now).phase != Phase::Back
    }
}

#[derive(Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub outage: Outage,
    #[serde(flatten)]
    pub status: Status,
    /// `local` (this node's) or `peer` (announced by another sidecar).
    pub scope: &'static str,
}

/// Local and announced outages, shared by every listener and the admin API.
pub struct OutageRegistry {
    local: Mutex<Vec<Outage>>,
    remote: Mutex<Vec<Outage>>,
    /// Whether either list is non-empty: lets every request skip the locks when there are none.
    any_local: std::sync::atomic::AtomicBool,
    any_remote: std::sync::atomic::AtomicBool,
    seq: AtomicU64,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Default for OutageRegistry {
    fn default() -> Self {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        Self {
            local: Mutex::new(Vec::new()),
            remote: Mutex::new(Vec::new()),
            any_local: Default::default(),
            any_remote: Default::default(),
            seq: AtomicU64::new(0),
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(conn),
        }
    }
}

impl OutageRegistry {
    /// The local node's phase now (the most severe of its outages).
    pub fn local_phase(&self) -> Option<(Phase, u64)> {
        if !self.any_local.load(Ordering::Acquire) {
            return None;
        }
        let now = now_ms();
        let l = self.local.lock().expect("outages lock");
        l.iter()
            .map(|o| o.status(now))
            .filter(|s| matches!(s.phase, Phase::Draining | Phase::Down))
            .max_by_key(|s| (s.phase == Phase::Down, s.window_end_ms))
            .map(|s| (s.phase, s.window_end_ms))
    }

    /// An announced outage covering `upstream` now: until when (ms).
    pub fn remote_down(&self, upstream: &str) -> Option<u64> {
        if !self.any_remote.load(Ordering::Acquire) {
            return None;
        }
        let now = now_ms();
        let r = self.remote.lock().expect("outages lock");
        r.iter()
            .filter(|o| o.upstreams.iter().any(|u| u == upstream))
            .map(|o| o.status(now))
            .filter(|s| matches!(s.phase, Phase::Draining | Phase::Down))
            .map(|s| s.window_end_ms)
            .max()
    }

    pub fn list(&self) -> Vec<Listed> {
        let now = now_ms();
        let mut v = Vec::new();
        for (scope, m, any) in [
            ("local", &self.local, &self.any_local),
            ("peer", &self.remote, &self.any_remote),
        ] {
            let mut m = m.lock().expect("outages lock");
            m.retain(|o| o.pending(now));
            any.store(!m.is_empty(), Ordering::Release);
            v.extend(m.iter().map(|o| Listed {
                outage: o.clone(),
                status: o.status(now),
                scope,
            }));
        }
        v
    }

    /// Validates and records a local outage, then announces it.
    pub fn create(
        &self,
        req: OutageRequest,
        node: &str,
        upstreams: Vec<String>,
        peers: &[String],
        token: Option<&str>,
    ) -> Result<Outage, String> {
        if req.duration.is_zero() || req.duration > MAX_WINDOW || req.drain > MAX_WINDOW {
            return Err("duration must be within (0, 7d] and drain within [0, 7d]".into());
        }
        let now = now_ms();
        let start_ms = match (&req.start, req.start_in) {
            (Some(_), Some(_)) => return Err("give start or start_in, not both".into()),
            (Some(s), None) => {
                let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
                    format!("start {s:?}: {e} (RFC 3339, e.g. 2026-11-23T18:00:00Z)")
                })?;
                t.duration_since(UNIX_EPOCH)
                    .map_err(|_| "start is before 1970".to_string())?
                    .as_millis() as u64
            }
            (None, Some(d)) => now + d.as_millis() as u64,
            (None, None) => now,
        };
        if start_ms > now + MAX_WINDOW.as_millis() as u64 * 52 {
            return Err("start is more than a year away".into());
        }
        let len = req.drain + req.duration;
        if let Some(e) = req.every {
            if e <= len {
                return Err(format!(
                    "every ({e:?}) must be longer than drain + duration ({len:?})"
                ));
            }
        }
        if req.count == Some(0) {
            return Err("count must be at least 1".into());
        }
        let o = Outage {
            id: format!(
                "outage-{}-{}",
                now / 1000,
                self.seq.fetch_add(1, Ordering::Relaxed) + 1
            ),
            node: node.to_string(),
            upstreams,
            start_ms,
            drain_ms: req.drain.as_millis() as u64,
            duration_ms: req.duration.as_millis() as u64,
            every_ms: req.every.map(|e| e.as_millis() as u64),
            count: req.count,
            reason: req.reason,
            cancelled: false,
        };
        {
            let mut l = self.local.lock().expect("outages lock");
            l.push(o.clone());
            self.any_local.store(true, Ordering::Release);
        }
        tracing::warn!(id = %o.id, start_ms = o.start_ms, drain_ms = o.drain_ms, duration_ms = o.duration_ms,
            every_ms = ?o.every_ms, reason = %o.reason, "planned outage scheduled; announcing to the peers");
        self.announce(&o, peers, token);
        Ok(o)
    }

    /// Cancels a local outage (back at once) and tells the peers.
    pub fn cancel(&self, id: &str, peers: &[String], token: Option<&str>) -> bool {
        let found = {
            let mut l = self.local.lock().expect("outages lock");
            let found = l.iter_mut().find(|o| o.id == id).map(|o| {
                o.cancelled = true;
                o.clone()
            });
            l.retain(|o| !o.cancelled);
            self.any_local.store(!l.is_empty(), Ordering::Release);
            found
        };
        match found {
            Some(o) => {
                tracing::warn!(id = %o.id, "planned outage cancelled; node back");
                self.announce(&o, peers, token);
                true
            }
            None => false,
        }
    }

    /// A peer's announcement (new or cancelled).
    pub fn receive(&self, o: Outage) {
        let mut r = self.remote.lock().expect("outages lock");
        r.retain(|x| x.id != o.id || x.node != o.node);
        if !o.cancelled {
            tracing::info!(id = %o.id, node = %o.node, upstreams = ?o.upstreams, "peer announced a planned outage; routing around it");
            r.push(o);
            self.any_remote.store(true, Ordering::Release);
        } else {
            tracing::info!(id = %o.id, node = %o.node, "peer's planned outage cancelled");
        }
        self.any_remote.store(!r.is_empty(), Ordering::Release);
    }

    fn announce(&self, o: &Outage, peers: &[String], token: Option<&str>) {
        let body = bytes::Bytes::from(serde_json::to_vec(o).expect("json"));
        for p in peers {
            let mut b = http::Request::post(format!("http://{p}/outages/announce"))
                .header("content-type", "application/json");
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            let Ok(req) = b.body(http_body_util::Full::new(body.clone())) else {
                continue;
            };
            let client = self.http.clone();
            let p = p.clone();
            tokio::spawn(async move {
                for attempt in 0..3u64 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    let r = req.clone();
                    if let Ok(Ok(resp)) =
                        tokio::time::timeout(Duration::from_secs(2), client.request(r)).await
                    {
                        if resp.status().is_success() {
                            return;
                        }
                    }
                }
                tracing::warn!(peer = %p, "could not announce a planned outage to a peer sidecar");
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gate: outbound requests to a node in an announced outage are answered at once.

#[derive(Clone)]
pub struct OutageGateLayer {
    reg: Arc<OutageRegistry>,
}

impl OutageGateLayer {
    pub fn new(reg: Arc<OutageRegistry>) -> Self {
        Self { reg }
    }
}

impl<S> tower::Layer<S> for OutageGateLayer {
    type Service = OutageGate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OutageGate {
            inner,
            reg: self.reg.clone(),
        }
    }
}

#[derive(Clone)]
pub struct OutageGate<S> {
    inner: S,
    reg: Arc<OutageRegistry>,
}

impl<S> tower::Service<Request> for OutageGate<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = crate::policy::Maybe<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let up = req
            .extensions()
            .get::<crate::policy::breaker::UpstreamName>()
            .map(|u| u.0.clone());
        if let Some(until) = up.as_deref().and_then(|u| self.reg.remote_down(u)) {
            let err = ProxyError::CircuitOpen {
                upstream: up.map(|u| u.to_string()).unwrap_or_default(),
                reason: "planned_outage".into(),
                retry_after: Duration::from_millis(until.saturating_sub(now_ms())),
            };
            return crate::policy::Maybe::err(err);
        }
        crate::policy::Maybe::direct(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage(start: u64, every: Option<u64>, count: Option<u32>) -> Outage {
        Outage {
            id: "o".into(),
            node: "n".into(),
            upstreams: vec!["127.0.0.12:9096".into()],
            start_ms: start,
            drain_ms: 10,
            duration_ms: 100,
            every_ms: every,
            count,
            reason: String::new(),
            cancelled: false,
        }
    }

    #[test]
    fn phases_of_one_window() {
        let o = outage(1000, None, None);
        assert_eq!(o.status(999).phase, Phase::Scheduled);
        assert_eq!(o.status(1000).phase, Phase::Draining);
        assert_eq!(o.status(1010).phase, Phase::Down);
        assert_eq!(o.status(1109).phase, Phase::Down);
        assert_eq!(o.status(1110).phase, Phase::Back);
        let mut c = o.clone();
        c.cancelled = true;
        assert_eq!(c.status(1050).phase, Phase::Back);
    }

    #[test]
    fn recurring_windows_and_count() {
        let o = outage(1000, Some(1000), Some(2));
        assert_eq!(o.status(1050).phase, Phase::Down);
        let between = o.status(1500);
        assert_eq!(between.phase, Phase::Scheduled);
        assert_eq!(between.window_start_ms, 2000);
        assert_eq!(o.status(2005).phase, Phase::Draining);
        assert_eq!(o.status(2050).phase, Phase::Down);
        assert_eq!(o.status(2500).phase, Phase::Back, "two windows only");
        assert_eq!(o.status(3050).phase, Phase::Back);
        let forever = outage(1000, Some(1000), None);
        assert_eq!(forever.status(1_000_050).phase, Phase::Down);
    }

    #[tokio::test]
    async fn create_validates_and_peers_route_around() {
        let reg = OutageRegistry::default();
        let bad = |j: serde_json::Value| {
            let r: OutageRequest = serde_json::from_value(j).unwrap();
            reg.create(r, "n", vec![], &[], None).unwrap_err()
        };
        assert!(bad(serde_json::json!({"duration": "0s"})).contains("duration"));
        assert!(bad(serde_json::json!({"duration": "1s", "every": "1s"})).contains("every"));
        assert!(
            bad(serde_json::json!({"duration": "1s", "start": "yesterday"})).contains("RFC 3339")
        );
        let ok: OutageRequest =
            serde_json::from_value(serde_json::json!({"duration": "1h", "drain": "0s"})).unwrap();
        let o = reg
            .create(ok, "n", vec!["127.0.0.11:5001".into()], &[], None)
            .unwrap();
        assert_eq!(reg.local_phase().map(|p| p.0), Some(Phase::Down));
        let peer = OutageRegistry::default();
        peer.receive(o.clone());
        assert!(peer.remote_down("127.0.0.11:5001").is_some());
        assert!(peer.remote_down("127.0.0.12:5001").is_none());
        let mut c = o.clone();
        c.cancelled = true;
        peer.receive(c);
        assert!(peer.remote_down("127.0.0.11:5001").is_none());
        assert!(reg.cancel(&o.id, &[], None));
        assert_eq!(reg.local_phase(), None);
    }
}
