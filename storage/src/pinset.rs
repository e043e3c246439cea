//! The replicated pinset: one last-writer-wins register per CID (a state-based CRDT, as in IPFS
//! Cluster's CRDT mode), ordered by a hybrid logical clock, plus the allocation rule and the status
//! vocabulary of IPFS Cluster.
//!
//! Merging is commutative, associative and idempotent, so peers that exchange their states in any order
//! converge; an unpin is a tombstone entry so that it wins over the pin it removes. No consensus round is
//! needed for pin/unpin, which is why the pinset survives partitions.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hybrid logical clock stamp. Field order is the comparison order: wall time, then counter,
/// then the writer's peer ID as a deterministic tie-break.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Clock {
    pub millis: u64,
    pub counter: u32,
    pub origin: String,
}

impl Clock {
    /// The next stamp after `last` for a write made now by `origin`.
    pub fn tick(last: &Clock, origin: &str) -> Clock {
        let now = now_millis();
        if now > last.millis {
            Clock {
                millis: now,
                counter: 0,
                origin: origin.to_string(),
            }
        } else {
            Clock {
                millis: last.millis,
                counter: last.counter + 1,
                origin: origin.to_string(),
            }
        }
    }
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinEntry {
    pub cid: String,
    pub name: String,
    pub replication_factor_min: i32,
    pub replication_factor_max: i32,
    /// Peers that must hold the pin; empty = every peer (replication -1).
    pub allocations: Vec<String>,
    pub timestamp: String,
    /// Tombstone: the CID was unpinned.
    pub deleted: bool,
    pub clock: Clock,
}

impl PinEntry {
    pub fn allocated_to(&self, peer: &str) -> bool {
        !self.deleted && (self.allocations.is_empty() || self.allocations.iter().any(|a| a == peer))
    }

    /// Whether `peer` must hold the pin, knowing whether it is a transient member: an empty
    /// allocation ("every peer") means every *permanent* peer, so a transient member never fetches
    /// the whole `-1` pinset only to leave again.
    pub fn holds(&self, peer: &str, transient: bool) -> bool {
        if transient {
            !self.deleted && self.allocations.iter().any(|a| a == peer)
        } else {
            self.allocated_to(peer)
        }
    }
}

/// IPFS Cluster's per-peer status vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackerStatus {
    Pinned,
    Pinning,
    PinQueued,
    PinError,
    Unpinned,
    Unpinning,
    UnpinQueued,
    UnpinError,
    Remote,
    ClusterError,
    UnexpectedlyUnpinned,
    Undefined,
}

impl TrackerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Pinning => "pinning",
            Self::PinQueued => "pin_queued",
            Self::PinError => "pin_error",
            Self::Unpinned => "unpinned",
            Self::Unpinning => "unpinning",
            Self::UnpinQueued => "unpin_queued",
            Self::UnpinError => "unpin_error",
            Self::Remote => "remote",
            Self::ClusterError => "cluster_error",
            Self::UnexpectedlyUnpinned => "unexpectedly_unpinned",
            Self::Undefined => "undefined",
        }
    }

    /// Whether `filter` (a Cluster `?filter=` word) selects this status.
    pub fn matches(self, filter: &str) -> bool {
        match filter {
            "error" => matches!(self, Self::PinError | Self::UnpinError | Self::ClusterError),
            "queued" => matches!(self, Self::PinQueued | Self::UnpinQueued),
            f => self.as_str() == f,
        }
    }

    pub const FILTER_WORDS: &'static [&'static str] = &[
        "pinned",
        "pinning",
        "pin_queued",
        "pin_error",
        "unpinned",
        "unpinning",
        "unpin_queued",
        "unpin_error",
        "remote",
        "cluster_error",
        "unexpectedly_unpinned",
        "undefined",
        "error",
        "queued",
    ];
}

/// What this node's pin tracker knows of one CID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStatus {
    pub status: TrackerStatus,
    pub error: String,
    pub attempt_count: u32,
    pub timestamp: String,
    /// Unix millis before which a failed pin is not retried automatically.
    pub retry_at: u64,
}

impl LocalStatus {
    pub fn new(status: TrackerStatus) -> Self {
        Self {
            status,
            error: String::new(),
            attempt_count: 0,
            timestamp: now_rfc3339(),
            retry_at: 0,
        }
    }
}

/// One peer's view of one pin, in IPFS Cluster's JSON shape (`peer_map` values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPinInfo {
    pub peername: String,
    pub ipfs_peer_id: String,
    pub ipfs_peer_addresses: Vec<String>,
    pub status: TrackerStatus,
    pub timestamp: String,
    pub error: String,
    pub attempt_count: u32,
    pub priority_pin: bool,
}

/// IPFS Cluster's `GlobalPinInfo`: a pin and every peer's status of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalPinInfo {
    pub cid: String,
    pub name: String,
    pub allocations: Vec<String>,
    pub origins: Vec<String>,
    pub created: String,
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
    pub peer_map: std::collections::BTreeMap<String, PeerPinInfo>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not enough peers to allocate CID. Needed at least: {needed}. Wanted at most: {wanted}. Available candidates: {candidates:?}. See cluster peers with `storage peers ls`")]
pub struct AllocError {
    pub needed: i32,
    pub wanted: i32,
    pub candidates: Vec<String>,
}

/// IPFS Cluster's allocation rule. `live` lists the peers that can take a pin now, the local peer
/// first when it is live (it already holds freshly added content, so choosing it saves a transfer).
/// Existing live allocations are kept while they satisfy the minimum (no churn); missing ones are
/// chosen by rendezvous hashing so pins spread evenly and deterministically.
pub fn allocate(
    cid: &str,
    min: i32,
    max: i32,
    current: &[String],
    live: &[String],
    local: &str,
) -> Result<Vec<String>, AllocError> {
    if min == -1 {
        return Ok(vec![]);
    }
    let mut keep: Vec<String> = current
        .iter()
        .filter(|p| live.contains(p))
        .cloned()
        .collect();
    if keep.len() as i32 > max {
        keep.truncate(max as usize);
    }
    let needed = min - keep.len() as i32;
    let wanted = max - keep.len() as i32;
    if needed <= 0 {
        return Ok(keep);
    }
    let mut candidates: Vec<String> = live.iter().filter(|p| !keep.contains(p)).cloned().collect();
    if (candidates.len() as i32) < needed {
        return Err(AllocError {
            needed: min,
            wanted: max,
            candidates,
        });
    }
    candidates.sort_by_key(|p| (p != local, rendezvous(cid, p)));
    keep.extend(candidates.into_iter().take(wanted as usize));
    Ok(keep)
}

fn rendezvous(cid: &str, peer: &str) -> [u8; 32] {
    Sha256::digest(format!("{cid}/{peer}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("peer{i}")).collect()
    }

    #[test]
    fn transient_peers_hold_only_explicit_allocations() {
        let mut e = PinEntry {
            cid: "c".into(),
            name: String::new(),
            replication_factor_min: -1,
            replication_factor_max: -1,
            allocations: vec![],
            timestamp: String::new(),
            deleted: false,
            clock: Clock::default(),
        };
        assert!(e.holds("t", false));
        assert!(!e.holds("t", true), "-1 is every permanent peer");
        e.allocations = vec!["t".into()];
        assert!(e.holds("t", true));
        e.deleted = true;
        assert!(!e.holds("t", true) && !e.holds("t", false));
    }

    #[test]
    fn everywhere_is_an_empty_allocation() {
        assert_eq!(
            allocate("c", -1, -1, &[], &peers(3), "peer0").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn allocates_between_min_and_max_preferring_the_local_peer() {
        let live = peers(3);
        let a = allocate("c", 2, 3, &[], &live, "peer1").unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], "peer1");
        let a = allocate("c", 1, 2, &[], &live, "peer1").unwrap();
        assert_eq!(a.len(), 2);
        // Two live peers still satisfy min 2 / max 3.
        let a = allocate("c", 2, 3, &[], &peers(2), "peer0").unwrap();
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn fails_clearly_below_min() {
        let e = allocate("c", 3, 3, &[], &peers(2), "peer0").unwrap_err();
        assert_eq!(e.needed, 3);
        assert!(e.to_string().contains("not enough peers to allocate CID"));
    }

    #[test]
    fn keeps_existing_allocations_while_they_satisfy_min() {
        let live = peers(4);
        let cur = vec!["peer3".to_string(), "peer2".to_string()];
        assert_eq!(allocate("c", 2, 3, &cur, &live, "peer0").unwrap(), cur);
        // A dead allocation is replaced, the live one kept.
        let live = vec![
            "peer0".to_string(),
            "peer1".to_string(),
            "peer2".to_string(),
        ];
        let a = allocate("c", 2, 2, &cur, &live, "peer0").unwrap();
        assert_eq!(a, vec!["peer2".to_string(), "peer0".to_string()]);
    }

    #[test]
    fn spreads_deterministically() {
        let live = peers(10);
        let a = allocate("x", 3, 3, &[], &live, "nobody").unwrap();
        let b = allocate("x", 3, 3, &[], &live, "nobody").unwrap();
        assert_eq!(a, b);
        let mut counts = std::collections::HashMap::new();
        for i in 0..300 {
            for p in allocate(&format!("cid{i}"), 1, 1, &[], &live, "nobody").unwrap() {
                *counts.entry(p).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.len(), 10, "every peer gets some pins: {counts:?}");
    }

    #[test]
    fn clocks_order_by_time_then_counter_then_origin() {
        let a = Clock {
            millis: 1,
            counter: 0,
            origin: "b".into(),
        };
        let b = Clock {
            millis: 1,
            counter: 1,
            origin: "a".into(),
        };
        let c = Clock {
            millis: 2,
            counter: 0,
            origin: "a".into(),
        };
        assert!(a < b && b < c);
        let t = Clock::tick(
            &Clock {
                millis: u64::MAX - 1,
                counter: 3,
                origin: "z".into(),
            },
            "me",
        );
        assert_eq!((t.millis, t.counter), (u64::MAX - 1, 4));
    }
}
