//! Membership as this node sees it: who the members are, which are live, which may receive
//! allocations, and what a greeting (`hello`) says and changes. Liveness is judged from the last
//! successful exchange in either direction; departures are in [`crate::departure`].

use crate::departure::Refusal;
use crate::node::Node;
use crate::peer::client::PeerError;
use crate::peer::{Hello, PeerAddr};
use crate::pinset::PinEntry;
use std::collections::HashMap;
use std::time::Instant;

/// What this node knows of another member.
#[derive(Clone, Debug)]
pub struct Member {
    pub addr: String,
    /// Failure-domain label for block placement (from the peer's hello, persisted).
    pub host: String,
    pub peername: String,
    pub last_seen: Option<Instant>,
    pub last_error: String,
    /// When we first learnt of the peer in this run (down-time is counted from here at worst).
    pub known_since: Instant,
    /// The peer's going down has been logged (so it is logged once per outage).
    pub reported_down: bool,
    /// A transient member: no pin allocations, no block placements (from its greetings).
    pub transient: bool,
    /// The incarnation (process start, Unix ms) of the last greeting received from the peer
    /// itself; 0 when only known second-hand.
    pub incarnation: u64,
    /// Build identity the peer announced (empty for older nodes or before its first greeting).
    pub digest: String,
    pub version: String,
}

impl Member {
    /// A member known only by its address so far (from the store, a peer, or a bootstrap list).
    pub fn fresh(addr: &str, host: &str, now: Instant) -> Self {
        Member {
            addr: addr.to_string(),
            host: host.to_string(),
            peername: String::new(),
            last_seen: None,
            last_error: String::new(),
            known_since: now,
            reported_down: false,
            transient: false,
            incarnation: 0,
            digest: String::new(),
            version: String::new(),
        }
    }
}

impl Node {
    pub fn members(&self) -> HashMap<String, Member> {
        self.members.read().expect("members lock").clone()
    }

    pub fn pending_addrs(&self) -> Vec<String> {
        self.pending.lock().expect("pending lock").clone()
    }

    pub fn is_live(&self, m: &Member) -> bool {
        m.last_seen
            .is_some_and(|t| t.elapsed() < self.cfg.peer.peer_timeout)
    }

    /// Live peer IDs, this node first.
    pub fn live_peers(&self) -> Vec<String> {
        let mut v = vec![self.me().to_string()];
        let mut others: Vec<String> = self
            .members()
            .into_iter()
            .filter(|(_, m)| self.is_live(m))
            .map(|(id, _)| id)
            .collect();
        others.sort();
        v.extend(others);
        v
    }

    /// The peers new allocations may go to: live and not transient (this node first when it
    /// qualifies, as [`allocate`] prefers it). Every node computes the same set from its own view.
    pub fn allocatable_peers(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.cfg.peer.transient {
            v.push(self.me().to_string());
        }
        let mut others: Vec<String> = self
            .members()
            .into_iter()
            .filter(|(_, m)| self.is_live(m) && !m.transient)
            .map(|(id, _)| id)
            .collect();
        others.sort();
        v.extend(others);
        v
    }

    /// Whether this node must hold `e` (see [`PinEntry::holds`]).
    pub fn allocated_here(&self, e: &PinEntry) -> bool {
        e.holds(self.me(), self.cfg.peer.transient)
    }

    pub fn hello(&self) -> Hello {
        let all = self.members();
        let mut transient_members: Vec<String> = all
            .iter()
            .filter(|(_, m)| m.transient)
            .map(|(id, _)| id.clone())
            .collect();
        transient_members.sort();
        let mut members: Vec<(String, String)> =
            all.into_iter().map(|(id, m)| (id, m.addr)).collect();
        members.sort();
        let build = crate::build::identity();
        Hello {
            id: self.me().to_string(),
            addr: self.cfg.advertise(),
            peername: self.peername(),
            members,
            host: self.cfg.block_host(),
            transient: self.cfg.peer.transient,
            transient_members,
            incarnation: self.incarnation,
            digest: build.digest.clone(),
            version: build.version.to_string(),
            departed: self.departures(),
        }
    }

    /// In fixed-peerset mode, only listed peers (by ID or address) are members.
    pub fn admits(&self, id: &str, addr: &str) -> bool {
        let set = &self.cfg.peer.peerset;
        set.is_empty()
            || set
                .iter()
                .filter_map(|a| PeerAddr::parse(a).ok())
                .any(|pa| pa.id.as_deref() == Some(id) || (pa.id.is_none() && pa.host_port == addr))
    }

    /// Records a successful exchange with a peer (and the peers it told us about, and the
    /// departures it knows). Refused when the peer was removed, or is the incarnation that left.
    pub fn saw_peer(&self, hello: &Hello, reached_at: Option<&str>) -> Result<(), Refusal> {
        if hello.id == self.me() {
            return Ok(());
        }
        self.check_greeting(&hello.id, hello.incarnation)?;
        self.apply_departures(&hello.departed);
        // Snapshot first: `departed` is never locked while `members` is (lock order).
        let gone: std::collections::HashSet<String> = self
            .departed
            .read()
            .expect("departed lock")
            .keys()
            .cloned()
            .collect();
        let now = Instant::now();
        let fresh = |addr: &str| Member::fresh(addr, &crate::config::host_of(addr), now);
        let (came_up, dirty) = {
            let mut ms = self.members.write().expect("members lock");
            let mut dirty = !ms.contains_key(&hello.id);
            let m = ms
                .entry(hello.id.clone())
                .or_insert_with(|| fresh(&hello.addr));
            let came_up = m.last_seen.is_none() || m.reported_down;
            dirty |= m.addr != hello.addr;
            m.addr = hello.addr.clone();
            if !hello.host.is_empty() && m.host != hello.host {
                m.host = hello.host.clone();
                dirty = true;
            }
            m.peername = hello.peername.clone();
            m.transient = hello.transient;
            m.incarnation = hello.incarnation;
            m.digest = hello.digest.clone();
            m.version = hello.version.clone();
            m.last_seen = Some(now);
            m.last_error.clear();
            m.reported_down = false;
            for (id, addr) in &hello.members {
                if id != self.me()
                    && !ms.contains_key(id)
                    && self.admits(id, addr)
                    && !gone.contains(id)
                {
                    let mut m = fresh(addr);
                    m.transient = hello.transient_members.contains(id);
                    ms.insert(id.clone(), m);
                    dirty = true;
                    tracing::info!(peer = %id, %addr, "learnt of a new cluster peer");
                }
            }
            (came_up, dirty)
        };
        self.pending
            .lock()
            .expect("pending lock")
            .retain(|a| a != &hello.addr && Some(a.as_str()) != reached_at);
        if came_up {
            tracing::info!(peer = %hello.id, addr = %hello.addr, name = %hello.peername, "peer is up");
        }
        if dirty {
            // Persist membership so a restarted node finds its peers without a bootstrap.
            let store = self.store.clone();
            let all: Vec<(String, String, String)> = self
                .members()
                .into_iter()
                .map(|(id, m)| (id, m.addr, m.host))
                .collect();
            tokio::task::spawn_blocking(move || {
                for (id, addr, host) in all {
                    if let Err(e) = store.put_member(&id, &addr, &host) {
                        tracing::warn!(error = %e, "cannot persist member");
                    }
                }
            });
        }
        Ok(())
    }

    /// Records a failed exchange; the transition to "down" is logged once, not every round.
    pub fn peer_failed(&self, id: &str, err: &PeerError) {
        let timeout = self.cfg.peer.peer_timeout;
        let mut ms = self.members.write().expect("members lock");
        if let Some(m) = ms.get_mut(id) {
            m.last_error = err.to_string();
            let live = m.last_seen.is_some_and(|t| t.elapsed() < timeout);
            if !live && !m.reported_down {
                m.reported_down = true;
                tracing::warn!(peer = %id, addr = %m.addr, error = %err, "peer is down");
            }
        }
    }
}
