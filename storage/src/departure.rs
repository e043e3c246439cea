//! Members leaving the cluster: a transient member's goodbye on SIGTERM, and `peers rm`.
//!
//! Without this, membership only grows: a member that stops is reported down for ever, and one whose
//! pins must move waits for `repin_after`. A departure is a **tombstone** for a peer ID, recorded
//! durably by every node and gossiped in every greeting (like the pinset's unpin tombstones), so a
//! node that was down or partitioned when it happened learns it on its next exchange, and no node
//! re-learns the departed peer second-hand from one that has not heard yet.
//!
//! - [`DepartureKind::Left`]: a transient member said goodbye. It names the *incarnation* (process
//!   start time) that left: a greeting still in flight from that process cannot bring it back, but
//!   the same identity started again (a new incarnation) rejoins like any member.
//! - [`DepartureKind::Removed`]: an operator removed the member (`storage peers rm`). Final for that
//!   identity: every node refuses its peer requests, and it can only come back re-initialised with a
//!   new identity (a new data directory), i.e. as a new member.
//!
//! Either way the pins allocated to the departed peer are re-allocated per their replication factors
//! by one node (the coordinator of [`crate::sync`]), every round until none is left; a transient
//! member holds no allocations, so its goodbye moves nothing.

use crate::node::{Node, NodeError};
use crate::pinset::now_millis;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a goodbye is kept and gossiped. Long enough for any node that was away to hear it;
/// bounded so canary runs (a new transient identity each) do not grow every greeting for ever.
/// Removals are kept for good: they are what makes a removal final.
pub const LEFT_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a leaving node waits for its peers to acknowledge the goodbye before it stops anyway
/// (peers that did not hear it learn it by gossip, or report the node down as before).
pub const GOODBYE_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepartureKind {
    Left,
    Removed,
}

/// A peer ID's tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    pub id: String,
    pub kind: DepartureKind,
    /// When it happened, Unix ms.
    pub at: u64,
    /// For `Left`: the incarnation that left (see [`crate::peer::Hello::incarnation`]).
    #[serde(default)]
    pub incarnation: u64,
    /// The node that recorded it first (the leaving node itself, or where `peers rm` was asked).
    pub by: String,
}

impl Departure {
    /// Whether this record should replace `old` for the same ID: a removal beats a goodbye, a later
    /// goodbye beats an earlier one; otherwise the first record stays (merging is idempotent).
    pub fn supersedes(&self, old: &Departure) -> bool {
        match (old.kind, self.kind) {
            (DepartureKind::Left, DepartureKind::Removed) => true,
            (DepartureKind::Left, DepartureKind::Left) => self.incarnation > old.incarnation,
            _ => false,
        }
    }

    /// Still worth keeping and gossiping at `now` (Unix ms).
    pub fn current(&self, now: u64) -> bool {
        self.kind == DepartureKind::Removed
            || now.saturating_sub(self.at) < LEFT_KEPT.as_millis() as u64
    }
}

/// Why a greeting is not taken as a sign of membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("peer {0} was removed from this cluster (`storage peers rm`); it cannot rejoin with this identity: initialise a new data directory to join as a new member")]
    Removed(String),
    #[error("peer {0} has left the cluster; this greeting is from the incarnation that left")]
    Departed(String),
    #[error("this node is leaving the cluster")]
    Leaving,
}

impl Node {
    pub fn departures(&self) -> Vec<Departure> {
        let now = now_millis();
        let mut v: Vec<Departure> = self
            .departed
            .read()
            .expect("departed lock")
            .values()
            .filter(|d| d.current(now))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn is_removed(&self, id: &str) -> bool {
        self.departed
            .read()
            .expect("departed lock")
            .get(id)
            .is_some_and(|d| d.kind == DepartureKind::Removed)
    }

    /// Whether `id` has a tombstone (so it must not be learnt second-hand).
    pub fn has_departed(&self, id: &str) -> bool {
        self.departed
            .read()
            .expect("departed lock")
            .contains_key(id)
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// Decides whether a greeting from the peer itself counts. A goodbye is cleared by a greeting
    /// from a newer incarnation (the node was started again): it rejoins.
    pub fn check_greeting(&self, id: &str, incarnation: u64) -> Result<(), Refusal> {
        if self.is_leaving() {
            return Err(Refusal::Leaving);
        }
        let cleared = {
            let mut deps = self.departed.write().expect("departed lock");
            match deps.get(id) {
                None => return Ok(()),
                Some(d) if d.kind == DepartureKind::Removed => {
                    return Err(Refusal::Removed(id.to_string()))
                }
                Some(d) if incarnation <= d.incarnation => {
                    return Err(Refusal::Departed(id.to_string()))
                }
                Some(_) => deps.remove(id),
            }
        };
        if cleared.is_some() {
            tracing::info!(peer = %id, incarnation, "a member that had left is back (new incarnation)");
            let (store, id) = (self.store.clone(), id.to_string());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.delete_departure(&id) {
                    tracing::warn!(error = %e, "cannot persist a departure");
                }
            });
        }
        Ok(())
    }

    /// Merges departures (ours, a peer's goodbye, or a peer's gossip): the departed members are
    /// forgotten here, durably. Returns how many changed anything.
    pub fn apply_departures(&self, deps: &[Departure]) -> usize {
        let now = now_millis();
        let mut changed = Vec::new();
        for d in deps.iter().filter(|d| d.current(now)) {
            if self.apply_one(d) {
                changed.push(d.clone());
            }
        }
        if !changed.is_empty() {
            self.realloc_due.store(true, Ordering::Relaxed);
            let store = self.store.clone();
            let n = changed.len();
            tokio::task::spawn_blocking(move || {
                for d in &changed {
                    if let Err(e) = store.put_departure(d) {
                        tracing::warn!(peer = %d.id, error = %e, "cannot persist a departure");
                    }
                }
            });
            n
        } else {
            0
        }
    }

    fn apply_one(&self, d: &Departure) -> bool {
        let mut deps = self.departed.write().expect("departed lock");
        if deps.get(&d.id).is_some_and(|old| !d.supersedes(old)) {
            return false;
        }
        if d.id == self.me() {
            // A goodbye of ours is about an earlier incarnation (this one is running): keeping it
            // would make us gossip our own departure.
            if d.kind == DepartureKind::Left {
                return false;
            }
            tracing::error!(by = %d.by, "this node was removed from the cluster (`storage peers rm`); its peers refuse it now. Re-initialise it (new data directory) to join again");
            deps.insert(d.id.clone(), d.clone());
            return true;
        }
        let mut ms = self.members.write().expect("members lock");
        if d.kind == DepartureKind::Left
            && ms.get(&d.id).is_some_and(|m| m.incarnation > d.incarnation)
        {
            // The member was started again after that goodbye and has greeted us since.
            return false;
        }
        deps.insert(d.id.clone(), d.clone());
        let gone = ms.remove(&d.id);
        match d.kind {
            DepartureKind::Left => {
                tracing::info!(peer = %d.id, name = gone.as_ref().map(|m| m.peername.as_str()).unwrap_or(""), "peer left the cluster (clean goodbye)")
            }
            DepartureKind::Removed => {
                tracing::warn!(peer = %d.id, by = %d.by, "peer removed from the cluster for good")
            }
        }
        true
    }

    /// A transient member's goodbye, on SIGTERM: stop greeting, tell every member (concurrently,
    /// for at most [`GOODBYE_DEADLINE`]), and return. Peers that miss it learn it by gossip.
    pub async fn leave(self: &Arc<Self>) {
        self.leaving.store(true, Ordering::Relaxed);
        let d = Departure {
            id: self.me().to_string(),
            kind: DepartureKind::Left,
            at: now_millis(),
            incarnation: self.incarnation,
            by: self.me().to_string(),
        };
        let members = self.members();
        let total = members.len();
        let calls = members.into_values().map(|m| {
            let node = self.clone();
            let d = d.clone();
            async move {
                let call = node.peers.departures(&m.addr, std::slice::from_ref(&d));
                match tokio::time::timeout(GOODBYE_DEADLINE, call).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(addr = %m.addr, error = %e, "goodbye not delivered");
                        false
                    }
                    Err(_) => false,
                }
            }
        });
        let acked = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        tracing::info!(acked, peers = total, "transient member left the cluster");
    }

    /// `peers rm`: removes a member for good, here and (best effort now, by gossip anyway) on
    /// every peer, then re-allocates its pins.
    pub async fn remove_peer(self: &Arc<Self>, id: &str) -> Result<Departure, NodeError> {
        if id == self.me() {
            return Err(NodeError::Invalid(format!(
                "cannot remove {id}: it is this node; ask another member to remove it"
            )));
        }
        if self.is_removed(id) {
            return Err(NodeError::UnknownPeer(format!(
                "peer {id} was already removed from the cluster"
            )));
        }
        if !self.members().contains_key(id) {
            return Err(NodeError::UnknownPeer(format!(
                "peer {id} is not a member of this cluster (see `storage peers ls`)"
            )));
        }
        let d = Departure {
            id: id.to_string(),
            kind: DepartureKind::Removed,
            at: now_millis(),
            incarnation: 0,
            by: self.me().to_string(),
        };
        self.apply_one(&d);
        self.realloc_due.store(true, Ordering::Relaxed);
        let d2 = d.clone();
        self.db(move |s| s.put_departure(&d2)).await?;
        for (pid, m) in self.members() {
            let (node, d) = (self.clone(), d.clone());
            tokio::spawn(async move {
                if let Err(e) = node.peers.departures(&m.addr, &[d]).await {
                    tracing::debug!(peer = %pid, error = %e, "removal push failed; gossip delivers it");
                }
            });
        }
        if let Err(e) = reallocate_departed(self).await {
            tracing::warn!(error = %e, "re-allocating the removed peer's pins failed; retried every round");
        }
        Ok(d)
    }
}

/// Re-allocates every pin allocated to a departed peer (the others are kept), per its replication
/// factors. Idempotent and deterministic, so running it on several nodes at once is harmless; the
/// sync loop runs it on the coordinator until nothing is left.
pub async fn reallocate_departed(node: &Arc<Node>) -> Result<usize, NodeError> {
    let gone: HashMap<String, DepartureKind> = node
        .departed
        .read()
        .expect("departed lock")
        .iter()
        .map(|(id, d)| (id.clone(), d.kind))
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    let mut moved = 0;
    let mut stuck = 0;
    for p in node.pins().await? {
        if !p.allocations.iter().any(|a| gone.contains_key(a)) {
            continue;
        }
        let cid = p
            .cid
            .parse()
            .map_err(|e| NodeError::Invalid(format!("{e}")))?;
        let (min, max) = (p.replication_factor_min, p.replication_factor_max);
        // `pin` keeps the allocations on live peers and replaces the rest: a departed peer is no
        // member any more, so it is never live, and its place goes to a live candidate.
        match node
            .pin(&cid, Some(p.name.clone()), Some(min), Some(max))
            .await
        {
            Ok(e) => {
                tracing::warn!(cid = %p.cid, from = ?p.allocations, to = ?e.allocations, "re-allocated the pin of a departed peer");
                moved += 1;
            }
            Err(NodeError::Alloc(e)) => {
                stuck += 1;
                if node.realloc_log.allow(&p.cid) {
                    tracing::warn!(cid = %p.cid, error = %e, "cannot re-allocate the pin of a departed peer yet");
                }
            }
            Err(e) => return Err(e),
        }
    }
    if stuck == 0 {
        node.realloc_due.store(false, Ordering::Relaxed);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, kind: DepartureKind, inc: u64) -> Departure {
        Departure {
            id: id.into(),
            kind,
            at: now_millis(),
            incarnation: inc,
            by: "x".into(),
        }
    }

    #[test]
    fn removal_beats_goodbye_and_later_goodbyes_win() {
        let left1 = d("p", DepartureKind::Left, 1);
        let left2 = d("p", DepartureKind::Left, 2);
        let rm = d("p", DepartureKind::Removed, 0);
        assert!(rm.supersedes(&left2));
        assert!(!left2.supersedes(&rm));
        assert!(left2.supersedes(&left1));
        assert!(!left1.supersedes(&left2));
        assert!(!left1.supersedes(&left1), "merging is idempotent");
        assert!(!rm.supersedes(&rm));
    }

    #[test]
    fn goodbyes_expire_removals_do_not() {
        let mut left = d("p", DepartureKind::Left, 1);
        let mut rm = d("p", DepartureKind::Removed, 0);
        left.at = 0;
        rm.at = 0;
        let now = LEFT_KEPT.as_millis() as u64 + 1;
        assert!(!left.current(now));
        assert!(rm.current(now));
        assert!(d("p", DepartureKind::Left, 1).current(now_millis()));
    }

    fn node(dir: &std::path::Path) -> Arc<Node> {
        let cfg = crate::config::Config::default();
        let ident = crate::identity::Identity::generate();
        let key = crate::swarm_key::SwarmKey::generate();
        Node::open(cfg, ident, key, dir.to_path_buf()).unwrap()
    }

    fn hello(id: &str, transient: bool, incarnation: u64) -> crate::peer::Hello {
        crate::peer::Hello {
            id: id.into(),
            // Nobody listens there: pushes to it fail fast, as to a stopped peer.
            addr: "127.0.0.1:9".into(),
            peername: id.into(),
            members: vec![],
            host: String::new(),
            transient,
            transient_members: vec![],
            incarnation,
            digest: String::new(),
            version: String::new(),
            departed: vec![],
        }
    }

    const CID: &str = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o";

    #[tokio::test]
    async fn transient_members_get_no_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        n.saw_peer(&hello("perm", false, 1), None).unwrap();
        n.saw_peer(&hello("trans", true, 1), None).unwrap();
        assert!(n.members()["trans"].transient);
        let peers = n.allocatable_peers();
        assert_eq!(peers, vec![n.me().to_string(), "perm".to_string()]);
        let e = n
            .pin(&CID.parse().unwrap(), None, Some(1), Some(3))
            .await
            .unwrap();
        assert_eq!(e.allocations.len(), 2);
        assert!(!e.allocations.contains(&"trans".to_string()));
        // Three permanent peers are needed for min 3: the transient one does not count.
        let err = n
            .pin(&CID.parse().unwrap(), None, Some(3), Some(3))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::Alloc(_)), "{err}");
    }

    #[tokio::test]
    async fn a_goodbye_is_final_for_that_incarnation_only() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        n.saw_peer(&hello("t", true, 5), None).unwrap();
        let bye = Departure {
            incarnation: 5,
            ..d("t", DepartureKind::Left, 5)
        };
        assert_eq!(n.apply_departures(std::slice::from_ref(&bye)), 1);
        assert!(!n.members().contains_key("t"));
        assert_eq!(n.apply_departures(&[bye]), 0, "idempotent");
        // Another member still lists it: not re-learnt second-hand.
        let mut other = hello("o", false, 1);
        other.members = vec![("t".into(), "127.0.0.1:9".into())];
        n.saw_peer(&other, None).unwrap();
        assert!(!n.members().contains_key("t"));
        // A greeting still in flight from the process that left is refused...
        assert_eq!(
            n.saw_peer(&hello("t", true, 5), None),
            Err(Refusal::Departed("t".into()))
        );
        // ...while the same identity started again rejoins.
        n.saw_peer(&hello("t", true, 6), None).unwrap();
        assert!(n.members().contains_key("t"));
        assert!(!n.has_departed("t"));
        // A peer that has not heard of the comeback still gossips the old goodbye: it does not
        // drop the member again.
        let mut stale = hello("o", false, 1);
        stale.departed = vec![Departure {
            incarnation: 5,
            ..d("t", DepartureKind::Left, 5)
        }];
        n.saw_peer(&stale, None).unwrap();
        assert!(n.members().contains_key("t"));
        // Our own old goodbye, gossiped back to us, is not kept.
        let me = n.me().to_string();
        assert_eq!(n.apply_departures(&[d(&me, DepartureKind::Left, 1)]), 0);
        assert!(n.departures().is_empty());
    }

    #[tokio::test]
    async fn removal_is_for_good_and_moves_the_pins() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        for p in ["a", "b"] {
            n.saw_peer(&hello(p, false, 1), None).unwrap();
        }
        let e = n
            .pin(&CID.parse().unwrap(), None, Some(3), Some(3))
            .await
            .unwrap();
        assert_eq!(e.allocations.len(), 3);
        let me = n.me().to_string();
        assert!(matches!(
            n.remove_peer(&me).await,
            Err(NodeError::Invalid(_))
        ));
        assert!(matches!(
            n.remove_peer("nobody").await,
            Err(NodeError::UnknownPeer(_))
        ));
        // Only two permanent peers are left for a min-3 pin: it cannot move yet, and says so.
        n.remove_peer("a").await.unwrap();
        assert!(matches!(
            n.remove_peer("a").await,
            Err(NodeError::UnknownPeer(m)) if m.contains("already removed")
        ));
        assert!(n.realloc_due.load(Ordering::Relaxed));
        n.saw_peer(&hello("c", false, 1), None).unwrap();
        assert_eq!(reallocate_departed(&n).await.unwrap(), 1);
        assert!(!n.realloc_due.load(Ordering::Relaxed));
        let e = n.pin_entry(CID).await.unwrap().unwrap();
        assert!(!e.allocations.contains(&"a".to_string()), "{e:?}");
        assert_eq!(e.allocations.len(), 3);
        // The removed identity cannot come back, whatever its incarnation.
        assert_eq!(
            n.saw_peer(&hello("a", false, 99), None),
            Err(Refusal::Removed("a".into()))
        );
        assert!(n.is_removed("a"));
        // Gossip carries the removal to nodes that missed it.
        assert!(n.hello().departed.iter().any(|d| d.id == "a"));
    }

    #[test]
    fn departures_survive_in_the_store_and_forget_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        s.put_member("p", "127.0.0.1:1", "h").unwrap();
        s.put_member("q", "127.0.0.1:2", "h").unwrap();
        let rm = d("p", DepartureKind::Removed, 0);
        s.put_departure(&rm).unwrap();
        assert_eq!(s.departures().unwrap(), vec![rm]);
        assert_eq!(s.members().unwrap().len(), 1);
        s.delete_departure("p").unwrap();
        assert!(s.departures().unwrap().is_empty());
    }
}
