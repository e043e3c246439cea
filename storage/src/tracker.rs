//! The pin tracker: turns the replicated pinset into local state. Pins allocated here are fetched
//! (every block of the DAG, verified) and marked `pinned`; failures become `pin_error` with an
//! attempt count, are retried with backoff a few times, then wait for `recover` or the periodic
//! auto-recover (as IPFS Cluster's `pin_recover_interval`). Pins no longer allocated here are dropped.

use crate::node::Node;
use crate::pinset::{now_millis, now_rfc3339, LocalStatus, PinEntry, TrackerStatus};
use crate::unixfs::Cid;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Automatic retries before a failed pin waits for `recover` / the recover interval.
const AUTO_RETRIES: u32 = 3;
const MAX_PARALLEL_PINS: usize = 4;

pub async fn run(node: Arc<Node>) {
    let inflight: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        if let Err(e) = reconcile(&node, &inflight).await {
            tracing::warn!(error = %e, "pin tracker round failed");
        }
        tokio::select! {
            _ = node.tracker_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn reconcile(
    node: &Arc<Node>,
    inflight: &Arc<Mutex<HashSet<String>>>,
) -> Result<(), crate::node::NodeError> {
    let pins: HashMap<String, PinEntry> = node
        .db(|s| s.all_pins())
        .await?
        .into_iter()
        .map(|p| (p.cid.clone(), p))
        .collect();
    let locals: HashMap<String, LocalStatus> =
        node.db(|s| s.local_statuses()).await?.into_iter().collect();
    let now = now_millis();
    // Drop what is no longer ours.
    for cid in locals.keys() {
        let ours = pins.get(cid).is_some_and(|p| node.allocated_here(p));
        if !ours && !inflight.lock().expect("inflight").contains(cid) {
            let c = cid.clone();
            node.db(move |s| s.set_local_status(&c, None)).await?;
            tracing::info!(%cid, "unpinned locally");
        }
    }
    for (cid, p) in &pins {
        if !node.allocated_here(p) {
            continue;
        }
        let due = match locals.get(cid) {
            None => true,
            Some(l) => match l.status {
                TrackerStatus::Pinned => false,
                TrackerStatus::PinError => l.retry_at <= now,
                _ => true, // queued, or `pinning` left over from a crash
            },
        };
        if !due || inflight.lock().expect("inflight").len() >= MAX_PARALLEL_PINS {
            continue;
        }
        if !inflight.lock().expect("inflight").insert(cid.clone()) {
            continue;
        }
        let prev = locals.get(cid).cloned();
        let node = node.clone();
        let inflight = inflight.clone();
        let cid = cid.clone();
        tokio::spawn(async move {
            pin_one(&node, &cid, prev).await;
            inflight.lock().expect("inflight").remove(&cid);
            node.tracker_wake.notify_one();
        });
    }
    Ok(())
}

async fn pin_one(node: &Arc<Node>, cid: &str, prev: Option<LocalStatus>) {
    let attempts = prev.as_ref().map(|l| l.attempt_count).unwrap_or(0);
    let mut st = LocalStatus::new(TrackerStatus::Pinning);
    st.attempt_count = attempts;
    let _ = set(node, cid, st.clone()).await;
    let result = match cid.parse::<Cid>() {
        Ok(c) => {
            match tokio::time::timeout(node.cfg.cluster.pin_timeout, node.fetch_dag(c)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "pin timed out after {:?}",
                    node.cfg.cluster.pin_timeout
                )),
            }
        }
        Err(e) => Err(format!("invalid cid: {e}")),
    };
    // The pin may have been removed or re-allocated meanwhile: only record if still ours.
    let still_ours = node
        .pin_entry(cid)
        .await
        .ok()
        .flatten()
        .is_some_and(|p| node.allocated_here(&p));
    if !still_ours {
        return;
    }
    let st = match result {
        Ok(bytes) => {
            tracing::info!(%cid, bytes, "pinned locally");
            LocalStatus {
                status: TrackerStatus::Pinned,
                error: String::new(),
                attempt_count: attempts + 1,
                timestamp: now_rfc3339(),
                retry_at: 0,
            }
        }
        Err(error) => {
            let n = attempts + 1;
            let wait = if n < AUTO_RETRIES {
                Duration::from_secs(1 << n)
            } else {
                node.cfg.cluster.pin_recover_interval
            };
            tracing::warn!(%cid, %error, attempt = n, retry_in = ?wait, "pin failed");
            LocalStatus {
                status: TrackerStatus::PinError,
                error,
                attempt_count: n,
                timestamp: now_rfc3339(),
                retry_at: now_millis() + wait.as_millis() as u64,
            }
        }
    };
    let _ = set(node, cid, st).await;
}

async fn set(node: &Arc<Node>, cid: &str, st: LocalStatus) -> Result<(), crate::node::NodeError> {
    let c = cid.to_string();
    node.db(move |s| s.set_local_status(&c, Some(&st))).await
}
