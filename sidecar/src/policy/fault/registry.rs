//! The faults of the process ([`FaultRegistry`]), their errors and the admin operations on them.

use super::matcher::Matcher;
use super::metrics::{FaultMetrics, KindLabels};
use super::spec::{FaultSpec, MAX_TTL};
use arc_swap::ArcSwap;
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("invalid fault: {0}")]
    Invalid(String),
    #[error("fault {0:?} already exists")]
    Duplicate(String),
    #[error("no fault {0:?}")]
    NotFound(String),
}

impl FaultError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Duplicate(_) => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    /// `{"error": "<message>"}`, the admin API's error body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string() })
    }
}

pub(super) struct Active {
    pub(super) spec: FaultSpec,
    pub(super) id: Arc<str>,
    pub(super) matcher: Matcher,
    pub(super) expires: Instant,
    ttl: Duration,
    pub(super) matched: AtomicU64,
    pub(super) injected: AtomicU64,
    /// Set to `true` when the fault is removed (or pruned): releases blackholed requests.
    pub(super) gone: watch::Sender<bool>,
    pub(super) matched_total: Counter,
    pub(super) injected_total: Counter,
}

impl Active {
    fn status(&self, now: Instant) -> FaultStatus {
        FaultStatus {
            spec: self.spec.clone(),
            remaining_ms: self.expires.saturating_duration_since(now).as_millis() as u64,
            matched: self.matched.load(Ordering::Relaxed),
            injected: self.injected.load(Ordering::Relaxed),
        }
    }
}

/// A fault as listed: its spec, the time it has left and what it did so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultStatus {
    #[serde(flatten)]
    pub spec: FaultSpec,
    pub remaining_ms: u64,
    /// Requests that matched the fault's matchers.
    pub matched: u64,
    /// Of those, requests the fault was applied to (percent roll passed).
    pub injected: u64,
}

struct RegistryInner {
    /// A snapshot read on every request; writers (admin) replace it whole.
    faults: ArcSwap<Vec<Arc<Active>>>,
    write: Mutex<()>,
    metrics: FaultMetrics,
}

/// The faults of the process, shared by every listener's [`FaultLayer`](super::FaultLayer) and
/// the admin API.
#[derive(Clone)]
pub struct FaultRegistry {
    inner: Arc<RegistryInner>,
}

impl Default for FaultRegistry {
    fn default() -> Self {
        Self::new(FaultMetrics::default())
    }
}

impl std::fmt::Debug for FaultRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultRegistry")
            .field("len", &self.len())
            .finish()
    }
}

impl FaultRegistry {
    pub fn new(metrics: FaultMetrics) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                faults: ArcSwap::from_pointee(Vec::new()),
                write: Mutex::new(()),
                metrics,
            }),
        }
    }

    /// Faults registered, expired ones included until pruned.
    pub fn len(&self) -> usize {
        self.inner.faults.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.faults.load().is_empty()
    }

    /// Validates and adds `spec`; its TTL starts now. An expired fault's id can be reused.
    pub fn add(&self, spec: FaultSpec) -> Result<FaultStatus, FaultError> {
        let matcher = spec.compile().map_err(FaultError::Invalid)?;
        let ttl = spec.ttl.map(|t| t.0).unwrap_or(MAX_TTL);
        let now = Instant::now();
        let _w = self.lock();
        let mut next = self.live(now);
        if next.iter().any(|f| f.spec.id == spec.id) {
            return Err(FaultError::Duplicate(spec.id));
        }
        let kind = KindLabels {
            kind: spec.kind.name(),
        };
        let m = &self.inner.metrics;
        let active = Arc::new(Active {
            id: Arc::from(spec.id.as_str()),
            matcher,
            expires: now + ttl,
            ttl,
            matched: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            gone: watch::channel(false).0,
            matched_total: m.matched.get_or_create(&kind).clone(),
            injected_total: m.injected.get_or_create(&kind).clone(),
            spec,
        });
        let status = active.status(now);
        tracing::info!(fault = %active.id, kind = active.spec.kind.name(), ttl = ?active.ttl, "fault added");
        next.push(active);
        self.publish(next);
        Ok(status)
    }

    /// Removes the fault `id`; requests it holds (blackhole) are released.
    pub fn remove(&self, id: &str) -> Result<FaultSpec, FaultError> {
        let now = Instant::now();
        let _w = self.lock();
        let mut next = self.live(now);
        let Some(i) = next.iter().position(|f| f.spec.id == id) else {
            return Err(FaultError::NotFound(id.to_string()));
        };
        let f = next.remove(i);
        f.gone.send_replace(true);
        self.publish(next);
        tracing::info!(fault = %id, "fault removed");
        Ok(f.spec.clone())
    }

    /// Removes every fault; returns how many were live.
    pub fn clear(&self) -> usize {
        let now = Instant::now();
        let _w = self.lock();
        let n = self.live(now).len();
        for f in self.inner.faults.load().iter() {
            f.gone.send_replace(true);
        }
        self.publish(Vec::new());
        n
    }

    /// Live faults in the order they are tried.
    pub fn list(&self) -> Vec<FaultStatus> {
        let now = Instant::now();
        self.inner
            .faults
            .load()
            .iter()
            .filter(|f| f.expires > now)
            .map(|f| f.status(now))
            .collect()
    }

    /// Drops expired faults (done on every write and when a request meets one).
    pub fn prune(&self) {
        let now = Instant::now();
        let _w = self.lock();
        let next = self.live(now);
        if next.len() != self.inner.faults.load().len() {
            self.publish(next);
        }
    }

    /// The current snapshot, read on every request.
    pub(super) fn snapshot(&self) -> arc_swap::Guard<Arc<Vec<Arc<Active>>>> {
        self.inner.faults.load()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The live faults (caller holds the write lock); expired ones are told they are gone.
    fn live(&self, now: Instant) -> Vec<Arc<Active>> {
        let cur = self.inner.faults.load();
        let mut v = Vec::with_capacity(cur.len() + 1);
        for f in cur.iter() {
            if f.expires > now {
                v.push(f.clone());
            } else {
                f.gone.send_replace(true);
                tracing::info!(fault = %f.id, "fault expired");
            }
        }
        v
    }

    fn publish(&self, v: Vec<Arc<Active>>) {
        self.inner.metrics.active.set(v.len() as i64);
        self.inner.faults.store(Arc::new(v));
    }
}

// ---------------------------------------------------------------------------------------------
// Admin operations (mounted under `/faults` on the admin listener)

/// `GET /faults` → `{"faults": [FaultStatus, …]}`.
pub fn handle_list(reg: &FaultRegistry) -> serde_json::Value {
    serde_json::json!({ "faults": reg.list() })
}

/// `POST /faults` with a [`FaultSpec`] as JSON → the added fault as listed (answer `201`).
/// Errors: `400` (unparsable or invalid spec, with the reason), `409` (duplicate id).
pub fn handle_add(reg: &FaultRegistry, body: &[u8]) -> Result<serde_json::Value, FaultError> {
    let spec: FaultSpec =
        serde_json::from_slice(body).map_err(|e| FaultError::Invalid(e.to_string()))?;
    let status = reg.add(spec)?;
    serde_json::to_value(status).map_err(|e| FaultError::Invalid(e.to_string()))
}

/// `DELETE /faults/{id}` → `204`; `404` when there is no such (live) fault.
pub fn handle_delete(reg: &FaultRegistry, id: &str) -> Result<(), FaultError> {
    reg.remove(id).map(|_| ())
}

/// `DELETE /faults` → `{"removed": n}`.
pub fn handle_clear(reg: &FaultRegistry) -> serde_json::Value {
    serde_json::json!({ "removed": reg.clear() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fault::Ttl;

    #[test]
    fn duplicate_id_conflicts_and_delete_of_unknown_is_not_found() {
        let reg = FaultRegistry::default();
        let body = br#"{"id":"x","kind":{"type":"reset"},"ttl":"1m"}"#;
        handle_add(&reg, body).expect("first");
        let e = handle_add(&reg, body).expect_err("duplicate");
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.to_json()["error"], "fault \"x\" already exists");
        handle_delete(&reg, "x").expect("delete");
        let e = handle_delete(&reg, "x").expect_err("gone");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test(start_paused = true)]
    async fn admin_json_shapes() {
        let reg = FaultRegistry::default();
        let added = handle_add(
            &reg,
            br#"{"id":"slow","kind":{"type":"delay","dist":"uniform","min_ms":10,"max_ms":20},
                 "ttl":"10m","percent":25,"route":"/api","class":"client"}"#,
        )
        .expect("add");
        assert_eq!(
            added,
            serde_json::json!({
                "id": "slow",
                "kind": {"type": "delay", "dist": "uniform", "min_ms": 10, "max_ms": 20},
                "ttl": "10m",
                "percent": 25.0,
                "route": "/api",
                "class": "client",
                "remaining_ms": 600000,
                "matched": 0,
                "injected": 0
            })
        );
        handle_add(
            &reg,
            br#"{"id":"f","kind":{"type":"delay","fixed_ms":5},"ttl":1500}"#,
        )
        .expect("add");
        tokio::time::advance(Duration::from_secs(1)).await;
        let list = handle_list(&reg);
        assert_eq!(list["faults"].as_array().expect("array").len(), 2);
        assert_eq!(
            list["faults"][1],
            serde_json::json!({"id": "f", "kind": {"type": "delay", "fixed_ms": 5},
                "ttl": "1s 500ms", "remaining_ms": 500, "matched": 0, "injected": 0})
        );
        // Clients (chaos, canary) can read the list back.
        let back: Vec<FaultStatus> =
            serde_json::from_value(list["faults"].clone()).expect("statuses");
        assert_eq!(back, reg.list());
        // What the list says round-trips as a spec (the counters aside).
        let mut again = list["faults"][0].clone();
        for k in ["remaining_ms", "matched", "injected"] {
            again.as_object_mut().expect("object").remove(k);
        }
        let s: FaultSpec = serde_json::from_value(again).expect("round trip");
        assert_eq!(s.ttl, Some(Ttl(Duration::from_secs(600))));
        assert_eq!(handle_clear(&reg), serde_json::json!({"removed": 2}));
        assert_eq!(handle_list(&reg), serde_json::json!({"faults": []}));
    }
}
