//! Membership and anti-entropy: every `sync_interval` each node says hello to every peer it knows
//! (learning their members in turn) and pulls the part of their pinset feed it has not seen. Pulls are
//! idempotent and the merge is a CRDT merge, so any schedule of exchanges converges — after partitions,
//! restarts and lost pushes alike.

use crate::node::{Member, Node};
use crate::peer::client::PeerError;
use crate::pinset::{allocate, PinEntry};
use crate::store::Watermark;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest page of a pinset feed.
pub const FEED_PAGE: usize = 1000;

pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.cfg.peer.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if node.is_leaving() {
            // A goodbye was said: greeting anybody now would only look like a comeback.
            return;
        }
        round(&node).await;
        if coordinator(&node) && node.realloc_due.load(std::sync::atomic::Ordering::Relaxed) {
            if let Err(e) = crate::departure::reallocate_departed(&node).await {
                tracing::warn!(error = %e, "re-allocating departed peers' pins failed");
            }
        }
        if let Some(after) = node.cfg.cluster.repin_after {
            if let Err(e) = repin_lost(&node, after).await {
                tracing::warn!(error = %e, "re-allocation round failed");
            }
        }
    }
}

async fn round(node: &Arc<Node>) {
    let mut targets: Vec<(Option<String>, String)> = node
        .members()
        .into_iter()
        .map(|(id, m)| (Some(id), m.addr))
        .collect();
    targets.extend(node.pending_addrs().into_iter().map(|a| (None, a)));
    let calls = targets.into_iter().map(|(id, addr)| {
        let node = node.clone();
        async move { exchange(&node, id, &addr).await }
    });
    futures::future::join_all(calls).await;
}

async fn exchange(node: &Arc<Node>, id: Option<String>, addr: &str) {
    let hello = match node.peers.hello(addr, &node.hello()).await {
        Ok(h) => h,
        Err(e) => {
            match &id {
                Some(id) => node.peer_failed(id, &e),
                None => match &e {
                    // An authenticated refusal (e.g. not in the peer's fixed peerset): say so, once a minute.
                    PeerError::Status { status: 403, .. } if node.refusals.allow(addr) => {
                        tracing::warn!(%addr, error = %e, "bootstrap peer refused to admit this node")
                    }
                    _ => tracing::debug!(%addr, error = %e, "bootstrap peer not reachable yet"),
                },
            }
            return;
        }
    };
    if !node.admits(&hello.id, &hello.addr) {
        tracing::warn!(peer = %hello.id, addr = %hello.addr, "peer is not in this node's fixed peerset; ignored");
        return;
    }
    if let Err(e) = node.saw_peer(&hello, Some(addr)) {
        tracing::debug!(peer = %hello.id, %addr, error = %e, "greeting answer not taken");
        return;
    }
    if let Err(e) = pull(node, &hello.id, &hello.addr).await {
        tracing::debug!(peer = %hello.id, error = %e, "pinset pull failed");
    }
}

/// Pulls the peer's pinset feed from our watermark on.
async fn pull(node: &Arc<Node>, id: &str, addr: &str) -> Result<(), crate::node::NodeError> {
    let pid = id.to_string();
    let mut w = node.db(move |s| s.watermark(&pid)).await?;
    for _ in 0..1000 {
        let page = node
            .peers
            .feed(addr, w.epoch, w.seq)
            .await
            .map_err(|e| crate::node::NodeError::Io(e.to_string()))?;
        if page.epoch != w.epoch {
            w = Watermark {
                epoch: page.epoch,
                seq: 0,
            };
        }
        let Some(last) = page.entries.last().map(|(s, _)| *s) else {
            break;
        };
        let entries: Vec<PinEntry> = page.entries.into_iter().map(|(_, e)| e).collect();
        let changed = node.merge(entries).await?;
        if !changed.is_empty() {
            tracing::debug!(peer = %id, n = changed.len(), "merged pinset entries");
        }
        w.seq = last;
        let (pid, wm) = (id.to_string(), w);
        node.db(move |s| s.set_watermark(&pid, wm)).await?;
        if !page.more {
            break;
        }
    }
    Ok(())
}

/// Off by default. When a peer has been down longer than `after`, the lowest-ID live peer re-allocates
/// the pins that peer held, keeping every other allocation (IPFS Cluster's repinning).
async fn repin_lost(node: &Arc<Node>, after: Duration) -> Result<(), crate::node::NodeError> {
    if !coordinator(node) {
        return Ok(());
    }
    let live = node.allocatable_peers();
    let members = node.members();
    let lost: Vec<&String> = members
        .iter()
        .filter(|(_, m)| !node.is_live(m) && down_for(m) >= after)
        .map(|(id, _)| id)
        .collect();
    if lost.is_empty() {
        return Ok(());
    }
    for p in node.pins().await? {
        if !p.allocations.iter().any(|a| lost.contains(&a)) {
            continue;
        }
        let keep: Vec<String> = p
            .allocations
            .iter()
            .filter(|a| !lost.contains(a))
            .cloned()
            .collect();
        match allocate(
            &p.cid,
            p.replication_factor_min,
            p.replication_factor_max,
            &keep,
            &live,
            node.me(),
        ) {
            Ok(allocs) if allocs != p.allocations => {
                let cid = p
                    .cid
                    .parse()
                    .map_err(|e| crate::node::NodeError::Invalid(format!("{e}")))?;
                // `pin` keeps the live allocations and replaces the lost ones, as computed above.
                let e = node
                    .pin(
                        &cid,
                        Some(p.name.clone()),
                        Some(p.replication_factor_min),
                        Some(p.replication_factor_max),
                    )
                    .await?;
                tracing::warn!(cid = %p.cid, from = ?p.allocations, to = ?e.allocations, "re-allocated the pin of a peer down for longer than repin_after");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(cid = %p.cid, error = %e, "cannot re-allocate pin"),
        }
    }
    Ok(())
}

/// Whether this node moves pins around this round: the lowest-ID live permanent peer, which every
/// node computes alike from its own view. Never a transient member, which may leave at any moment.
fn coordinator(node: &Node) -> bool {
    node.allocatable_peers().iter().min().map(String::as_str) == Some(node.me())
}

fn down_for(m: &Member) -> Duration {
    match m.last_seen {
        Some(t) => t.elapsed(),
        None => Instant::now().saturating_duration_since(m.known_since),
    }
}
