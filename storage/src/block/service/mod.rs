//! The block service on one node: the coordinator of image I/O (any node serves any image, as a
//! librbd client would) and the replica side of other coordinators' object operations.
//!
//! Consistency, in short (docs/block.md has the long form):
//! - Every object has a version. A write is sent to every *up* member of the object's acting set as
//!   a compare-and-set (`expect` → `new`); it is acknowledged only when at least `min_size` replicas
//!   committed it durably. Fewer up replicas than `min_size` → refused at once; fewer
//!   acknowledgements by the deadline → failed, never half-acknowledged.
//! - A replica that missed writes (it was down, or a write to it failed) answers `stale` and is not
//!   counted; recovery copies the whole object to it later.
//! - Reads need `read_quorum` up replicas (so that one of them holds the last acknowledged write),
//!   learn the object's latest version from them once, and are served by one replica at that version,
//!   this node's own when it has it. Every byte served passed its checksum on the replica.
//! - A node caches what it learnt about object versions per image, and forgets it whenever the set
//!   of up nodes changes. Like RBD's exclusive lock, the design assumes one writer per image at a time.
//!
//! - this file: errors, the cluster map, counters, and pools and images (metadata replicated on
//!   every node).
//! - `coordinator`: the client-facing side — image I/O split into objects, placement onto acting
//!   sets, fan-out to the replicas (batched per peer), `min_size` acknowledgements, read repair.
//! - `replica`: the replica side — operations from coordinators (this node's or a peer's) run
//!   against this node's object store.

mod coordinator;
mod replica;

use super::meta::{self, Image, MetaBody, MetaEntry, MetaView, Pool};
use super::objstore::{ObjError, ObjStore};
use super::placement::{self, Osd};
use super::ObjectKey;
use crate::config::BlockConfig;
use crate::node::Node;
use coordinator::{ImageState, Pending};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Why a block operation failed; turned into HTTP answers in `api::error` and NBD errnos in `block::export`.
#[derive(Debug, thiserror::Error, Clone)]
pub enum BlockError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    OutOfRange(String),
    /// The I/O cannot be made safe now (too few replicas up or acknowledging in time).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Io(String),
}

impl From<ObjError> for BlockError {
    fn from(e: ObjError) -> Self {
        BlockError::Io(e.to_string())
    }
}

/// One storage node as placement and health see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OsdInfo {
    pub id: String,
    pub name: String,
    pub host: String,
    pub addr: String,
    pub up: bool,
    #[serde(rename = "in")]
    pub in_: bool,
    /// Seconds since the node was last heard from (0 when up).
    pub down_for_s: u64,
}

/// The cluster as this node sees it now.
#[derive(Clone, Debug)]
pub struct ClusterMap {
    pub osds: Vec<OsdInfo>,
    pub osds_in: Vec<Osd>,
    pub up: HashSet<String>,
    /// Changes whenever the set of up or in nodes changes.
    pub sig: u64,
}

impl ClusterMap {
    pub fn addr(&self, id: &str) -> Option<&str> {
        self.osds
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.addr.as_str())
    }
}

/// Counters for metrics, `status` and the SLOW_OPS check.
#[derive(Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub failed: AtomicU64,
    pub recovered_objects: AtomicU64,
    pub recovered_bytes: AtomicU64,
    /// Completion times of slow operations (pruned to the last minute).
    pub slow: Mutex<Vec<Instant>>,
}

pub const SLOW_WINDOW: Duration = Duration::from_secs(60);

impl Stats {
    pub fn slow_ops(&self) -> usize {
        let mut s = self.slow.lock().expect("slow lock");
        s.retain(|t| t.elapsed() < SLOW_WINDOW);
        s.len()
    }
}

pub struct BlockService {
    pub node: Arc<Node>,
    pub objs: Arc<ObjStore>,
    pub cfg: BlockConfig,
    meta: RwLock<MetaView>,
    images: Mutex<HashMap<String, Arc<ImageState>>>,
    senders: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
    /// Orders check-then-import on this replica so two recoveries never roll it back.
    import_lock: tokio::sync::Mutex<()>,
    pub stats: Stats,
    /// Set by client requests the sidecar marked; recovery yields while it lasts.
    pub brownout: Arc<crate::brownout::Brownout>,
    /// Written by the recovery loop, read by health and status.
    pub scan: RwLock<super::recovery::ScanReport>,
    /// Replicas the last recovery round saw behind an object's latest version, with the version
    /// they had: see `recovery::round` (a replica is only stale once it stops advancing).
    pub(crate) behind: Mutex<HashMap<(ObjectKey, String), u64>>,
}

impl BlockService {
    pub fn open(node: Arc<Node>) -> anyhow::Result<Arc<Self>> {
        let cfg = node.cfg.block.clone();
        let objs = Arc::new(ObjStore::open(&node.data_dir.join("blocks"), 32 << 20)?);
        let entries = node.store.block_meta()?;
        for e in &entries {
            node.observe_clock(&e.clock);
        }
        Ok(Arc::new(Self {
            node,
            objs,
            cfg,
            meta: RwLock::new(MetaView::from_entries(entries)),
            images: Mutex::new(HashMap::new()),
            senders: Mutex::new(HashMap::new()),
            import_lock: tokio::sync::Mutex::new(()),
            stats: Stats::default(),
            brownout: Arc::default(),
            scan: RwLock::new(Default::default()),
            behind: Mutex::new(HashMap::new()),
        }))
    }

    pub fn me(&self) -> &str {
        self.node.me()
    }

    // ---- cluster map --------------------------------------------------------------------------

    pub fn map(&self) -> ClusterMap {
        let mut osds = vec![OsdInfo {
            id: self.me().to_string(),
            name: self.node.peername(),
            host: self.node.cfg.block_host(),
            addr: self.node.cfg.advertise(),
            up: true,
            // A transient member is never "in": no object is placed on a node that is about to
            // leave (it still coordinates the I/O it is asked for).
            in_: !self.node.cfg.peer.transient,
            down_for_s: 0,
        }];
        for (id, m) in self.node.members() {
            let up = self.node.is_live(&m);
            let since = m.last_seen.unwrap_or(m.known_since);
            let down_for = if up { Duration::ZERO } else { since.elapsed() };
            let in_ =
                !m.transient && (up || self.cfg.down_out_interval.is_none_or(|d| down_for < d));
            osds.push(OsdInfo {
                id,
                name: m.peername.clone(),
                host: m.host.clone(),
                addr: m.addr.clone(),
                up,
                in_,
                down_for_s: down_for.as_secs(),
            });
        }
        osds.sort_by(|a, b| a.id.cmp(&b.id));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for o in &osds {
            (&o.id, &o.host, o.up, o.in_).hash(&mut h);
        }
        ClusterMap {
            osds_in: osds
                .iter()
                .filter(|o| o.in_)
                .map(|o| Osd {
                    id: o.id.clone(),
                    host: o.host.clone(),
                    weight: 1.0,
                })
                .collect(),
            up: osds.iter().filter(|o| o.up).map(|o| o.id.clone()).collect(),
            sig: h.finish(),
            osds,
        }
    }

    /// Ordered acting set of an object.
    pub fn acting(&self, map: &ClusterMap, pool: &Pool, key: &ObjectKey) -> Vec<String> {
        placement::place_object(
            pool.id,
            pool.pg_num,
            &key.name(),
            pool.size as usize,
            pool.failure_domain,
            &map.osds_in,
        )
        .1
    }

    // ---- metadata -----------------------------------------------------------------------------

    pub fn meta(&self) -> MetaView {
        self.meta.read().expect("meta lock").clone()
    }

    /// Merges records (local changes or a peer's), durably, and updates the view.
    pub async fn merge_meta(&self, entries: Vec<MetaEntry>) -> Result<usize, BlockError> {
        for e in &entries {
            self.node.observe_clock(&e.clock);
        }
        let won = self
            .node
            .db(move |s| s.merge_block_meta(&entries))
            .await
            .map_err(|e| BlockError::Io(e.to_string()))?;
        if !won.is_empty() {
            self.meta.write().expect("meta lock").apply(&won);
        }
        Ok(won.len())
    }

    /// Commits a metadata change here and on enough peers: at least `need` nodes (this one
    /// included) must have it durably before the change is acknowledged.
    async fn commit_meta(&self, entries: Vec<MetaEntry>, need: u32) -> Result<(), BlockError> {
        let map = self.map();
        let up_peers: Vec<String> = map
            .osds
            .iter()
            .filter(|o| o.up && o.id != self.me())
            .map(|o| o.addr.clone())
            .collect();
        if (up_peers.len() as u32) + 1 < need {
            return Err(BlockError::Unavailable(format!(
                "only {} of the {} nodes needed to store this change durably are up",
                up_peers.len() + 1,
                need
            )));
        }
        self.merge_meta(entries.clone()).await?;
        let body = serde_json::to_vec(&entries).expect("meta serializes");
        let pushes = up_peers.iter().map(|addr| {
            let body = body.clone();
            async move {
                self.node
                    .peers
                    .call_json::<serde_json::Value>(
                        addr,
                        http::Method::POST,
                        "/peer/v1/block/meta",
                        body,
                    )
                    .await
            }
        });
        let acked = 1 + futures::future::join_all(pushes)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count() as u32;
        if acked < need {
            // Kept here and pushed by anti-entropy later, but not acknowledged as durable.
            return Err(BlockError::Unavailable(format!(
                "the change reached only {acked} of the {need} nodes needed; it is not acknowledged (it may still apply once peers return)"
            )));
        }
        Ok(())
    }

    fn entry(&self, key: String, body: MetaBody) -> MetaEntry {
        MetaEntry {
            key,
            clock: self.node.tick(),
            body,
        }
    }

    pub async fn pool_create(
        &self,
        name: &str,
        size: u32,
        min_size: u32,
        pg_num: u32,
        domain: placement::FailureDomain,
    ) -> Result<Pool, BlockError> {
        meta::check_name("pool", name).map_err(BlockError::Invalid)?;
        meta::check_pool_sizes(size, min_size).map_err(BlockError::Invalid)?;
        if pg_num == 0 || pg_num > 4096 {
            return Err(BlockError::Invalid(format!(
                "pg_num {pg_num} must be between 1 and 4096"
            )));
        }
        if self.meta().pool(name).is_some() {
            return Err(BlockError::Exists(format!("pool '{name}' already exists")));
        }
        let clock = self.node.tick();
        let id = {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(format!(
                "{name}/{}/{}/{}",
                clock.millis, clock.counter, clock.origin
            ));
            u32::from_le_bytes([d[0], d[1], d[2], d[3]]) & 0x7fff_ffff
        };
        let pool = Pool {
            id,
            name: name.to_string(),
            size,
            min_size,
            pg_num,
            failure_domain: domain,
            created: crate::pinset::now_rfc3339(),
        };
        let e = MetaEntry {
            key: meta::pool_key(name),
            clock,
            body: MetaBody::Pool(pool.clone()),
        };
        self.commit_meta(vec![e], min_size).await?;
        Ok(pool)
    }

    pub async fn pool_set(
        &self,
        name: &str,
        size: Option<u32>,
        min_size: Option<u32>,
    ) -> Result<Pool, BlockError> {
        let mut p = self.pool(name)?;
        if let Some(s) = size {
            p.size = s;
        }
        if let Some(m) = min_size {
            p.min_size = m;
        }
        meta::check_pool_sizes(p.size, p.min_size).map_err(BlockError::Invalid)?;
        let e = self.entry(meta::pool_key(name), MetaBody::Pool(p.clone()));
        self.commit_meta(vec![e], p.min_size).await?;
        Ok(p)
    }

    pub async fn pool_rm(&self, name: &str) -> Result<(), BlockError> {
        let p = self.pool(name)?;
        let imgs = self.meta().images(Some(name));
        if !imgs.is_empty() {
            return Err(BlockError::Invalid(format!(
                "pool '{name}' still has {} image(s); remove them first",
                imgs.len()
            )));
        }
        let e = self.entry(meta::pool_key(name), MetaBody::Removed);
        self.commit_meta(vec![e], p.min_size).await
    }

    pub fn pool(&self, name: &str) -> Result<Pool, BlockError> {
        self.meta
            .read()
            .expect("meta lock")
            .pool(name)
            .ok_or_else(|| BlockError::NotFound(format!("pool '{name}' does not exist")))
    }

    pub fn image(&self, pool: &str, name: &str) -> Result<(Pool, Image), BlockError> {
        let p = self.pool(pool)?;
        let i = self
            .meta
            .read()
            .expect("meta lock")
            .image(pool, name)
            .ok_or_else(|| BlockError::NotFound(format!("image '{pool}/{name}' does not exist")))?;
        Ok((p, i))
    }

    /// `POOL/IMAGE` as export names and CLI arguments spell images.
    pub fn image_spec(&self, spec: &str) -> Result<(Pool, Image), BlockError> {
        let (pool, name) = parse_spec(spec)?;
        self.image(pool, name)
    }

    pub async fn image_create(
        &self,
        pool: &str,
        name: &str,
        size: u64,
        object_size: u64,
    ) -> Result<Image, BlockError> {
        let p = self.pool(pool)?;
        meta::check_name("image", name).map_err(BlockError::Invalid)?;
        meta::check_object_size(object_size).map_err(BlockError::Invalid)?;
        if self.meta().image(pool, name).is_some() {
            return Err(BlockError::Exists(format!(
                "image '{pool}/{name}' already exists"
            )));
        }
        let clock = self.node.tick();
        let id = {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(format!(
                "{pool}/{name}/{}/{}/{}",
                clock.millis, clock.counter, clock.origin
            ));
            hex::encode(&d[..6])
        };
        let img = Image {
            id,
            pool: pool.to_string(),
            pool_id: p.id,
            name: name.to_string(),
            size,
            object_size,
            created: crate::pinset::now_rfc3339(),
        };
        let e = MetaEntry {
            key: meta::image_key(pool, name),
            clock,
            body: MetaBody::Image(img.clone()),
        };
        self.commit_meta(vec![e], p.min_size).await?;
        Ok(img)
    }

    pub async fn image_resize(
        self: &Arc<Self>,
        spec: &str,
        size: u64,
        allow_shrink: bool,
    ) -> Result<Image, BlockError> {
        let (p, mut img) = self.image_spec(spec)?;
        if size < img.size {
            if !allow_shrink {
                return Err(BlockError::Invalid(format!(
                    "shrinking '{spec}' from {} to {} bytes discards data; pass --allow-shrink (allow_shrink=true) to do it",
                    img.size, size
                )));
            }
            // Zero the cut-off range first, so growing again later never resurrects old data.
            let old = img.size;
            self.io_trim(&p, &img, size, old - size).await?;
        }
        img.size = size;
        let e = self.entry(
            meta::image_key(&img.pool, &img.name),
            MetaBody::Image(img.clone()),
        );
        self.commit_meta(vec![e], p.min_size).await?;
        Ok(img)
    }

    pub async fn image_rm(&self, spec: &str) -> Result<(), BlockError> {
        let (p, img) = self.image_spec(spec)?;
        let entries = vec![
            self.entry(meta::image_key(&img.pool, &img.name), MetaBody::Removed),
            self.entry(
                format!("dead/{}", img.id),
                MetaBody::Dead {
                    pool_id: p.id,
                    image_id: img.id.clone(),
                },
            ),
        ];
        self.commit_meta(entries, p.min_size).await?;
        // Objects go now here; every other node deletes its own in its next recovery round.
        self.objs.remove_image(p.id, &img.id).await?;
        self.images.lock().expect("images lock").remove(&img.id);
        Ok(())
    }

    /// This node's capacity and use, for placement (near-full checks) and health.
    pub fn usage(&self) -> super::recovery::Usage {
        let s = self.objs.stats();
        // Without a configured capacity, what this node can hold is its data plus the
        // filesystem's free space: a disk filled by something else makes the node (near)full.
        let (total, avail) = if self.cfg.capacity_bytes > 0 {
            let t = self.cfg.capacity_bytes;
            (t, t.saturating_sub(s.used_bytes).min(s.avail_bytes))
        } else {
            (s.used_bytes + s.avail_bytes, s.avail_bytes)
        };
        super::recovery::Usage {
            used: s.used_bytes,
            total,
            avail,
            objects: s.objects,
            slow_ops: self.stats.slow_ops() as u64,
        }
    }
}

/// The service, for tasks spawned from `&self` methods (set once at start).
static SELF: std::sync::OnceLock<std::sync::Weak<BlockService>> = std::sync::OnceLock::new();

pub fn register(svc: &Arc<BlockService>) {
    let _ = SELF.set(Arc::downgrade(svc));
}

pub fn parse_spec(spec: &str) -> Result<(&str, &str), BlockError> {
    match spec.split_once('/') {
        Some((p, i)) if !p.is_empty() && !i.is_empty() && !i.contains('/') => Ok((p, i)),
        _ => Err(BlockError::Invalid(format!("{spec:?} is not POOL/IMAGE"))),
    }
}
