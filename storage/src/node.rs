//! The node: one value shared by every API and background task. It owns the store, the identity, the
//! swarm key and the membership view, and implements the operations the APIs expose.

use crate::config::{check_replication, Config};
use crate::departure::Departure;
use crate::identity::Identity;
use crate::peer::client::{PeerClient, PeerError};
use crate::peer::{auth::ReplayGuard, PeerAddr};
use crate::pinset::{
    allocate, now_millis, now_rfc3339, AllocError, Clock, GlobalPinInfo, LocalStatus, PeerPinInfo,
    PinEntry, TrackerStatus,
};
use crate::store::{Store, StoreError};
use crate::swarm_key::SwarmKey;
use crate::unixfs::{self, BlockSource, Cid, ReadError, UnixfsError};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::Notify;

pub const AGENT: &str = concat!("bulwark-storage/", env!("CARGO_PKG_VERSION"));
/// What `version` reports: the Kubo release whose RPC contract this node follows.
pub const KUBO_COMPAT_VERSION: &str = "0.42.0";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    #[error("block was not found locally (offline): ipld: could not find {0}")]
    BlockNotFound(String),
    #[error("not pinned or pinned indirectly")]
    NotPinned(String),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unixfs(#[from] UnixfsError),
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Io(String),
    /// A peer ID that is not a member (`peers rm`, `id?arg=`).
    #[error("{0}")]
    UnknownPeer(String),
}

pub use crate::membership::Member;

pub struct Node {
    pub cfg: Config,
    pub ident: Identity,
    pub key: SwarmKey,
    pub store: Arc<Store>,
    pub peers: PeerClient,
    pub replay: ReplayGuard,
    /// Refused peer requests, logged once a minute per source address.
    pub refusals: crate::peer::loglimit::LogLimiter,
    pub data_dir: PathBuf,
    pub(crate) members: RwLock<HashMap<String, Member>>,
    /// Bootstrap/peerset addresses whose peer ID we have not learnt yet.
    pub(crate) pending: Mutex<Vec<String>>,
    /// Tombstones of members that left or were removed ([`crate::departure`]).
    pub(crate) departed: RwLock<HashMap<String, Departure>>,
    /// Set once a transient member starts saying goodbye: it greets nobody any more.
    pub(crate) leaving: AtomicBool,
    /// Some pin may still be allocated to a departed peer: the coordinator looks (see
    /// [`crate::departure::reallocate_departed`]); cleared after a round that found nothing stuck.
    pub(crate) realloc_due: AtomicBool,
    /// "Cannot re-allocate" is logged once a minute per pin, not every round.
    pub(crate) realloc_log: crate::peer::loglimit::LogLimiter,
    clock: Mutex<Clock>,
    pub tracker_wake: Notify,
    pub started: Instant,
    /// This process's incarnation: its start time, Unix ms (see [`crate::peer::Hello::incarnation`]).
    pub incarnation: u64,
}

impl Node {
    pub fn open(
        cfg: Config,
        ident: Identity,
        key: SwarmKey,
        data_dir: PathBuf,
    ) -> Result<Arc<Self>, NodeError> {
        let store = Arc::new(Store::open(&data_dir.join("store.redb"))?);
        let peers = PeerClient::new(
            key.clone(),
            ident.peer_id.clone(),
            cfg.peer.request_timeout,
            cfg.peer.outbound_proxy.as_deref(),
        );
        let now = Instant::now();
        let departed: HashMap<String, Departure> = store
            .departures()?
            .into_iter()
            .filter(|d| d.current(now_millis()))
            .map(|d| (d.id.clone(), d))
            .collect();
        let mut members = HashMap::new();
        for (id, addr, host) in store.members()? {
            if id != ident.peer_id && !departed.contains_key(&id) {
                members.insert(id, Member::fresh(&addr, &host, now));
            }
        }
        let mut pending = Vec::new();
        for a in cfg.peer.bootstrap.iter().chain(&cfg.peer.peerset) {
            let pa = PeerAddr::parse(a).map_err(NodeError::Invalid)?;
            if pa.host_port != cfg.advertise() && !members.values().any(|m| m.addr == pa.host_port)
            {
                pending.push(pa.host_port);
            }
        }
        let max_clock = store
            .all_pins()?
            .into_iter()
            .map(|p| p.clock)
            .max()
            .unwrap_or_default();
        Ok(Arc::new(Self {
            cfg,
            ident,
            key,
            store,
            peers,
            replay: ReplayGuard::new(100_000),
            refusals: crate::peer::loglimit::LogLimiter::new(
                crate::peer::client::REFUSAL_LOG_EVERY,
            ),
            data_dir,
            members: RwLock::new(members),
            pending: Mutex::new(pending),
            realloc_due: AtomicBool::new(!departed.is_empty()),
            departed: RwLock::new(departed),
            leaving: AtomicBool::new(false),
            realloc_log: crate::peer::loglimit::LogLimiter::new(std::time::Duration::from_secs(60)),
            clock: Mutex::new(max_clock),
            tracker_wake: Notify::new(),
            started: now,
            incarnation: now_millis(),
        }))
    }

    pub fn me(&self) -> &str {
        &self.ident.peer_id
    }

    pub fn peername(&self) -> String {
        if self.cfg.peername.is_empty() {
            self.data_dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        } else {
            self.cfg.peername.clone()
        }
    }

    /// Runs a store operation off the async threads (redb commits fsync).
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| NodeError::Io(format!("store task failed: {e}")))?
            .map_err(NodeError::from)
    }

    // ---- blocks ------------------------------------------------------------------------------

    /// A verified block: from the local store, else fetched from a live peer, verified and kept.
    pub async fn get_block(&self, cid: &Cid) -> Result<Bytes, NodeError> {
        let c = *cid;
        match self.db(move |s| s.get_block(&c)).await {
            Ok(Some(b)) => return Ok(b),
            Ok(None) => {}
            Err(NodeError::Store(StoreError::Corrupt { .. })) => {}
            Err(e) => return Err(e),
        }
        self.fetch_from_peers(cid).await
    }

    pub async fn has_block(&self, cid: &Cid) -> Result<bool, NodeError> {
        let c = *cid;
        self.db(move |s| s.has_block(&c)).await
    }

    async fn fetch_from_peers(&self, cid: &Cid) -> Result<Bytes, NodeError> {
        let mut members: Vec<(String, Member)> = self.members().into_iter().collect();
        // Live peers first; then the others, in case our view is stale.
        members.sort_by_key(|(id, m)| (!self.is_live(m), id.clone()));
        let key = cid.to_string();
        for (id, m) in members {
            match self.peers.block(&m.addr, &key).await {
                Ok(Some(data)) => {
                    if let Err(e) = unixfs::verify_block(cid, &data) {
                        tracing::error!(peer = %id, %cid, error = %e, "peer sent a block that does not match its CID; dropped");
                        continue;
                    }
                    let (c, d) = (*cid, data.clone());
                    self.db(move |s| s.put_blocks([(&c, &d[..])])).await?;
                    return Ok(data);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(peer = %id, %cid, error = %e, "block fetch failed"),
            }
        }
        Err(NodeError::BlockNotFound(key))
    }

    pub async fn put_block(&self, data: Bytes, version: u8, codec: u64) -> Result<Cid, NodeError> {
        if data.len() > self.cfg.limits.max_block_size {
            return Err(NodeError::TooLarge(format!(
                "produced block is over {}: big blocks can't be exchanged with other peers. consider using UnixFS for automatic chunking of bigger files",
                human_bytes(self.cfg.limits.max_block_size as u64)
            )));
        }
        let cid = unixfs::cid_for(&data, version, codec)?;
        self.db(move |s| s.put_blocks([(&cid, &data[..])])).await?;
        Ok(cid)
    }

    /// Fetches every block of the DAG under `root` (a recursive pin), verifying each.
    pub async fn fetch_dag(self: &Arc<Self>, root: Cid) -> Result<u64, NodeError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut todo = vec![root];
        let mut inflight = FuturesUnordered::new();
        let mut total = 0u64;
        loop {
            while inflight.len() < 8 {
                let Some(c) = todo.pop() else { break };
                let node = self.clone();
                inflight.push(async move { node.get_block(&c).await.map(|b| (c, b)) });
            }
            let Some(res) = inflight.next().await else {
                break;
            };
            let (c, b) = res?;
            total += b.len() as u64;
            if c.codec() == unixfs::DAG_PB {
                let pb = unixfs::decode_dag_pb(&b)?;
                todo.extend(pb.links.iter().rev().map(|l| l.cid));
            }
        }
        Ok(total)
    }

    // ---- pins --------------------------------------------------------------------------------

    pub fn tick(&self) -> Clock {
        let mut c = self.clock.lock().expect("clock lock");
        *c = Clock::tick(&c, self.me());
        c.clone()
    }

    /// Keeps the local clock ahead of a stamp seen (block metadata uses the same clock).
    pub fn observe_clock(&self, seen: &Clock) {
        let mut c = self.clock.lock().expect("clock lock");
        if *seen > *c {
            *c = seen.clone();
        }
    }

    /// Keeps the local clock ahead of every stamp seen, so local writes order after them.
    pub fn observe(&self, entries: &[PinEntry]) {
        let mut c = self.clock.lock().expect("clock lock");
        if let Some(max) = entries.iter().map(|e| &e.clock).max() {
            if *max > *c {
                *c = max.clone();
            }
        }
    }

    /// Merges entries (local or from peers) and wakes the tracker if anything changed.
    pub async fn merge(&self, entries: Vec<PinEntry>) -> Result<Vec<PinEntry>, NodeError> {
        self.observe(&entries);
        let changed = self.db(move |s| s.merge_pins(&entries)).await?;
        if !changed.is_empty() {
            self.tracker_wake.notify_one();
            // A pin made concurrently with a departure, by a node that had not heard of it yet.
            let deps = self.departed.read().expect("departed lock");
            if changed
                .iter()
                .any(|e| e.allocations.iter().any(|a| deps.contains_key(a)))
            {
                self.realloc_due.store(true, Ordering::Relaxed);
            }
        }
        Ok(changed)
    }

    pub async fn pin(
        self: &Arc<Self>,
        cid: &Cid,
        name: Option<String>,
        min: Option<i32>,
        max: Option<i32>,
    ) -> Result<PinEntry, NodeError> {
        let (min, max) = match (min, max) {
            (None, None) => (
                self.cfg.cluster.replication_factor_min,
                self.cfg.cluster.replication_factor_max,
            ),
            (Some(a), None) => (
                a,
                if a == -1 {
                    -1
                } else {
                    a.max(self.cfg.cluster.replication_factor_max)
                },
            ),
            (None, Some(b)) => (
                if b == -1 {
                    -1
                } else {
                    b.min(self.cfg.cluster.replication_factor_min.max(1))
                },
                b,
            ),
            (Some(a), Some(b)) => (a, b),
        };
        check_replication(min, max).map_err(NodeError::Invalid)?;
        let key = cid.to_string();
        let k2 = key.clone();
        let existing = self.db(move |s| s.pin(&k2)).await?.filter(|e| !e.deleted);
        let current = existing
            .as_ref()
            .map(|e| e.allocations.clone())
            .unwrap_or_default();
        let allocations = allocate(
            &key,
            min,
            max,
            &current,
            &self.allocatable_peers(),
            self.me(),
        )?;
        let entry = PinEntry {
            cid: key,
            name: name
                .or_else(|| existing.as_ref().map(|e| e.name.clone()))
                .unwrap_or_default(),
            replication_factor_min: min,
            replication_factor_max: max,
            allocations,
            timestamp: existing
                .as_ref()
                .map(|e| e.timestamp.clone())
                .unwrap_or_else(now_rfc3339),
            deleted: false,
            clock: self.tick(),
        };
        self.merge(vec![entry.clone()]).await?;
        self.push_to_peers(vec![entry.clone()]);
        tracing::info!(cid = %entry.cid, allocations = ?entry.allocations, min, max, "pinned in the cluster pinset");
        Ok(entry)
    }

    pub async fn unpin(self: &Arc<Self>, cid: &Cid) -> Result<PinEntry, NodeError> {
        let key = cid.to_string();
        let k2 = key.clone();
        let Some(mut entry) = self.db(move |s| s.pin(&k2)).await?.filter(|e| !e.deleted) else {
            return Err(NodeError::NotPinned(key));
        };
        entry.deleted = true;
        entry.clock = self.tick();
        self.merge(vec![entry.clone()]).await?;
        self.push_to_peers(vec![entry.clone()]);
        tracing::info!(cid = %entry.cid, "unpinned from the cluster pinset");
        Ok(entry)
    }

    /// Best-effort immediate push; anti-entropy delivers it anyway if this fails.
    fn push_to_peers(self: &Arc<Self>, entries: Vec<PinEntry>) {
        for (id, m) in self.members() {
            if !self.is_live(&m) {
                continue;
            }
            let node = self.clone();
            let entries = entries.clone();
            tokio::spawn(async move {
                if let Err(e) = node.peers.push(&m.addr, &entries).await {
                    tracing::debug!(peer = %id, error = %e, "pin push failed; anti-entropy will deliver it");
                }
            });
        }
    }

    pub async fn pin_entry(&self, cid: &str) -> Result<Option<PinEntry>, NodeError> {
        let k = cid.to_string();
        Ok(self.db(move |s| s.pin(&k)).await?.filter(|e| !e.deleted))
    }

    pub async fn pins(&self) -> Result<Vec<PinEntry>, NodeError> {
        let mut v: Vec<PinEntry> = self
            .db(|s| s.all_pins())
            .await?
            .into_iter()
            .filter(|e| !e.deleted)
            .collect();
        v.sort_by(|a, b| a.cid.cmp(&b.cid));
        Ok(v)
    }

    // ---- status ------------------------------------------------------------------------------

    fn peer_info(&self, status: TrackerStatus, local: Option<&LocalStatus>) -> PeerPinInfo {
        PeerPinInfo {
            peername: self.peername(),
            ipfs_peer_id: self.me().to_string(),
            ipfs_peer_addresses: vec![PeerAddr::multiaddr(&self.cfg.advertise(), self.me())],
            status,
            timestamp: local
                .map(|l| l.timestamp.clone())
                .unwrap_or_else(now_rfc3339),
            error: local.map(|l| l.error.clone()).unwrap_or_default(),
            attempt_count: local.map(|l| l.attempt_count).unwrap_or(0),
            priority_pin: false,
        }
    }

    /// This peer's status of one CID, from the pinset and the tracker.
    pub fn local_view(&self, entry: Option<&PinEntry>, local: Option<&LocalStatus>) -> PeerPinInfo {
        let status = match entry {
            Some(e) if self.allocated_here(e) => {
                local.map(|l| l.status).unwrap_or(TrackerStatus::PinQueued)
            }
            Some(e) if !e.deleted => TrackerStatus::Remote,
            _ => TrackerStatus::Unpinned,
        };
        self.peer_info(status, local)
    }

    pub async fn local_status_of(&self, cid: &str) -> Result<PeerPinInfo, NodeError> {
        let (k1, k2) = (cid.to_string(), cid.to_string());
        let entry = self.db(move |s| s.pin(&k1)).await?;
        let local = self.db(move |s| s.local_status(&k2)).await?;
        Ok(self.local_view(entry.as_ref(), local.as_ref()))
    }

    fn unreachable_info(&self, id: &str, m: &Member, err: String) -> PeerPinInfo {
        PeerPinInfo {
            peername: m.peername.clone(),
            ipfs_peer_id: id.to_string(),
            ipfs_peer_addresses: vec![PeerAddr::multiaddr(&m.addr, id)],
            status: TrackerStatus::ClusterError,
            timestamp: now_rfc3339(),
            error: err,
            attempt_count: 0,
            priority_pin: false,
        }
    }

    fn global(
        &self,
        cid: &str,
        entry: Option<&PinEntry>,
        peer_map: BTreeMap<String, PeerPinInfo>,
    ) -> GlobalPinInfo {
        GlobalPinInfo {
            cid: cid.to_string(),
            name: entry.map(|e| e.name.clone()).unwrap_or_default(),
            allocations: entry.map(|e| e.allocations.clone()).unwrap_or_default(),
            origins: vec![],
            created: entry.map(|e| e.timestamp.clone()).unwrap_or_default(),
            metadata: None,
            peer_map,
        }
    }

    /// Cluster-wide status of one CID. Unreachable peers are marked `cluster_error`, never fatal.
    pub async fn status(
        self: &Arc<Self>,
        cid: &str,
        local_only: bool,
    ) -> Result<GlobalPinInfo, NodeError> {
        let entry = self.pin_entry(cid).await?;
        let mut map = BTreeMap::new();
        map.insert(self.me().to_string(), self.local_status_of(cid).await?);
        if !local_only {
            let calls = self.members().into_iter().map(|(id, m)| {
                let node = self.clone();
                let cid = cid.to_string();
                async move {
                    let r = node.peers.status(&m.addr, &cid).await;
                    let info = match r {
                        Ok(i) => i,
                        Err(e) => node.unreachable_info(&id, &m, e.to_string()),
                    };
                    (id, info)
                }
            });
            map.extend(futures::future::join_all(calls).await);
        }
        Ok(self.global(cid, entry.as_ref(), map))
    }

    /// Cluster-wide status of every pin, one round-trip per peer.
    pub async fn status_all(
        self: &Arc<Self>,
        local_only: bool,
    ) -> Result<Vec<GlobalPinInfo>, NodeError> {
        let pins = self.pins().await?;
        let mine: HashMap<String, LocalStatus> =
            self.db(|s| s.local_statuses()).await?.into_iter().collect();
        let mut remote: Vec<RemoteStatuses> = vec![];
        if !local_only {
            let calls = self.members().into_iter().map(|(id, m)| {
                let node = self.clone();
                async move {
                    let r = node.peers.statuses(&m.addr).await;
                    (id, m, r)
                }
            });
            remote = futures::future::join_all(calls).await;
        }
        let mut out = Vec::new();
        for p in &pins {
            let mut map = BTreeMap::new();
            map.insert(
                self.me().to_string(),
                self.local_view(Some(p), mine.get(&p.cid)),
            );
            for (id, m, r) in &remote {
                let info = match r {
                    Ok(sts) => {
                        let local = sts.get(&p.cid);
                        let status = if p.holds(id, m.transient) {
                            local.map(|l| l.status).unwrap_or(TrackerStatus::PinQueued)
                        } else {
                            TrackerStatus::Remote
                        };
                        PeerPinInfo {
                            peername: m.peername.clone(),
                            ipfs_peer_id: id.clone(),
                            ipfs_peer_addresses: vec![PeerAddr::multiaddr(&m.addr, id)],
                            status,
                            timestamp: local
                                .map(|l| l.timestamp.clone())
                                .unwrap_or_else(now_rfc3339),
                            error: local.map(|l| l.error.clone()).unwrap_or_default(),
                            attempt_count: local.map(|l| l.attempt_count).unwrap_or(0),
                            priority_pin: false,
                        }
                    }
                    Err(e) => self.unreachable_info(id, m, e.to_string()),
                };
                map.insert(id.clone(), info);
            }
            out.push(self.global(&p.cid, Some(p), map));
        }
        Ok(out)
    }

    /// Re-queues a failed pin on this peer (idempotent).
    pub async fn recover_local(&self, cid: &str) -> Result<PeerPinInfo, NodeError> {
        let k = cid.to_string();
        let requeued = self
            .db(move |s| match s.local_status(&k)? {
                Some(mut l)
                    if matches!(
                        l.status,
                        TrackerStatus::PinError | TrackerStatus::UnpinError
                    ) =>
                {
                    l.status = TrackerStatus::PinQueued;
                    l.retry_at = 0;
                    l.timestamp = now_rfc3339();
                    s.set_local_status(&k, Some(&l))?;
                    Ok(true)
                }
                _ => Ok(false),
            })
            .await?;
        if requeued {
            tracing::info!(%cid, "recover: pin re-queued");
            self.tracker_wake.notify_one();
        }
        self.local_status_of(cid).await
    }

    /// `recover` on every peer: unreachable peers are reported, not fatal.
    pub async fn recover(self: &Arc<Self>, cid: &str) -> Result<GlobalPinInfo, NodeError> {
        let entry = self.pin_entry(cid).await?;
        let mut map = BTreeMap::new();
        map.insert(self.me().to_string(), self.recover_local(cid).await?);
        let calls = self.members().into_iter().map(|(id, m)| {
            let node = self.clone();
            let cid = cid.to_string();
            async move {
                let info = match node.peers.recover(&m.addr, &cid).await {
                    Ok(i) => i,
                    Err(e) => node.unreachable_info(&id, &m, e.to_string()),
                };
                (id, info)
            }
        });
        map.extend(futures::future::join_all(calls).await);
        Ok(self.global(cid, entry.as_ref(), map))
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn now_ms() -> u64 {
        now_millis()
    }
}

/// One peer's answer to "all your local statuses", with what we know of the peer.
type RemoteStatuses = (
    String,
    Member,
    Result<HashMap<String, LocalStatus>, PeerError>,
);

/// Blocks for DAG readers come from the node: local store first, then peers, always verified.
pub struct NodeBlocks(pub Arc<Node>);

impl BlockSource for NodeBlocks {
    fn get<'a>(&'a self, cid: &'a Cid) -> BoxFuture<'a, Result<Bytes, ReadError>> {
        Box::pin(async move {
            self.0.get_block(cid).await.map_err(|e| match e {
                NodeError::BlockNotFound(_) => ReadError::NotFound(*cid),
                other => ReadError::Source(other.to_string()),
            })
        })
    }
}

pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}
