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

use super::meta::{self, Image, MetaBody, MetaEntry, MetaView, Pool};
use super::objstore::{Mutation, ObjError, ObjStore, ObjectImage, WriteOp, WriteOutcome};
use super::placement::{self, Osd};
use super::wire::{self, MutKind, OpReq, OpResp};
use super::{ObjectKey, CHUNK_SIZE};
use crate::config::BlockConfig;
use crate::node::Node;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard, Semaphore};

/// Why a block operation failed; turned into HTTP answers in `api::error` and NBD errnos in `nbd_export`.
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

#[derive(Default)]
struct ObjState {
    /// The latest version known to exist on some replica; `None` = to be learnt again.
    version: Option<u64>,
    /// Replicas known to hold `version`.
    current: Vec<String>,
}

struct ImageState {
    sig: u64,
    objects: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<ObjState>>>>,
}

impl ImageState {
    fn obj(&self, objno: u64) -> Arc<tokio::sync::Mutex<ObjState>> {
        self.objects
            .lock()
            .expect("objects lock")
            .entry(objno)
            .or_default()
            .clone()
    }
}

struct Pending {
    req: OpReq,
    payload: Bytes,
    tx: oneshot::Sender<Result<(OpResp, Bytes), String>>,
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

/// Largest payload of one batch to a peer (the peer listener accepts 16 MiB bodies).
const BATCH_BYTES: usize = 8 << 20;
const BATCH_OPS: usize = 128;
/// Batches in flight to one peer at once.
const BATCHES_IN_FLIGHT: usize = 2;

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
            in_: true,
            down_for_s: 0,
        }];
        for (id, m) in self.node.members() {
            let up = self.node.is_live(&m);
            let since = m.last_seen.unwrap_or(m.known_since);
            let down_for = if up { Duration::ZERO } else { since.elapsed() };
            let in_ = up || self.cfg.down_out_interval.is_none_or(|d| down_for < d);
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

    // ---- image I/O ----------------------------------------------------------------------------

    fn image_state(&self, img: &Image, sig: u64) -> Arc<ImageState> {
        let mut m = self.images.lock().expect("images lock");
        let st = m.entry(img.id.clone()).or_insert_with(|| {
            Arc::new(ImageState {
                sig,
                objects: Mutex::new(HashMap::new()),
            })
        });
        if st.sig != sig {
            *st = Arc::new(ImageState {
                sig,
                objects: Mutex::new(HashMap::new()),
            });
        }
        st.clone()
    }

    fn check_range(img: &Image, off: u64, len: u64) -> Result<(), BlockError> {
        match off.checked_add(len) {
            Some(end) if end <= img.size => Ok(()),
            _ => Err(BlockError::OutOfRange(format!(
                "range {off}+{len} is outside image '{}' of {} bytes",
                img.spec(),
                img.size
            ))),
        }
    }

    /// Splits `[off, off+len)` into per-object pieces `(objno, offset in object, len, offset in I/O)`.
    fn pieces(img: &Image, off: u64, len: u64) -> Vec<(u64, u64, u64, u64)> {
        let mut out = Vec::new();
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let objno = pos / img.object_size;
            let in_obj = pos % img.object_size;
            let n = (img.object_size - in_obj).min(end - pos);
            out.push((objno, in_obj, n, pos - off));
            pos += n;
        }
        out
    }

    fn record(&self, started: Instant, ok: bool) {
        if !ok {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        if started.elapsed() >= self.cfg.slow_op {
            self.stats
                .slow
                .lock()
                .expect("slow lock")
                .push(Instant::now());
        }
    }

    pub async fn io_read(
        &self,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
    ) -> Result<Bytes, BlockError> {
        Self::check_range(img, off, len)?;
        let started = Instant::now();
        let map = self.map();
        let st = self.image_state(img, map.sig);
        let parts = Self::pieces(img, off, len);
        let reads = parts.iter().map(|&(objno, o, n, _)| {
            let st = st.clone();
            let map = &map;
            async move { self.read_obj(map, pool, img, &st, objno, o, n).await }
        });
        let res = tokio::time::timeout(self.cfg.op_timeout, futures::future::try_join_all(reads))
            .await
            .unwrap_or_else(|_| Err(self.deadline("read")));
        self.record(started, res.is_ok());
        let chunks = res?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(len, Ordering::Relaxed);
        if chunks.len() == 1 {
            return Ok(chunks.into_iter().next().expect("one"));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for c in chunks {
            out.extend_from_slice(&c);
        }
        Ok(out.freeze())
    }

    pub async fn io_write(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        data: Bytes,
    ) -> Result<(), BlockError> {
        let len = data.len() as u64;
        self.io_mutate(pool, img, off, len, MutKind::Data, Some(data))
            .await
    }

    pub async fn io_zero(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
    ) -> Result<(), BlockError> {
        self.io_mutate(pool, img, off, len, MutKind::Zero, None)
            .await
    }

    pub async fn io_trim(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
    ) -> Result<(), BlockError> {
        self.io_mutate(pool, img, off, len, MutKind::Trim, None)
            .await
    }

    async fn io_mutate(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
        kind: MutKind,
        data: Option<Bytes>,
    ) -> Result<(), BlockError> {
        Self::check_range(img, off, len)?;
        let started = Instant::now();
        let map = self.map();
        let st = self.image_state(img, map.sig);
        let parts = Self::pieces(img, off, len);
        let writes = parts.iter().map(|&(objno, o, n, at)| {
            let st = st.clone();
            let payload = data
                .as_ref()
                .map(|d| d.slice(at as usize..(at + n) as usize))
                .unwrap_or_default();
            let map = &map;
            async move {
                self.write_obj(map, pool, img, &st, objno, o, n, kind, payload)
                    .await
            }
        });
        let res = tokio::time::timeout(self.cfg.op_timeout, futures::future::try_join_all(writes))
            .await
            .unwrap_or_else(|_| Err(self.deadline("write")));
        self.record(started, res.is_ok());
        res?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        if kind == MutKind::Data {
            self.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(())
    }

    fn deadline(&self, what: &str) -> BlockError {
        BlockError::Unavailable(format!(
            "{what} did not complete within the {:?} deadline (block.op_timeout): replicas too slow or unreachable; not acknowledged",
            self.cfg.op_timeout
        ))
    }

    fn key(pool: &Pool, img: &Image, objno: u64) -> ObjectKey {
        ObjectKey {
            pool: pool.id,
            image: img.id.clone(),
            objno,
        }
    }

    /// Learns the latest version among the up replicas (and which of them hold it).
    async fn discover(
        &self,
        map: &ClusterMap,
        key: &ObjectKey,
        up: &[String],
        need: u32,
    ) -> Result<(u64, Vec<String>), BlockError> {
        let asks = up.iter().map(|r| {
            let key = key.clone();
            async move {
                let res = self.op(map, r, OpReq::Version { key }, Bytes::new()).await;
                (r.clone(), res)
            }
        });
        let answers: Vec<(String, u64)> = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(r, res)| match res {
                Ok((OpResp::Version { version }, _)) => Some((r, version)),
                _ => None,
            })
            .collect();
        if (answers.len() as u32) < need {
            return Err(BlockError::Unavailable(format!(
                "object {}: only {} replica(s) answered, {need} needed to know its latest version",
                key.name(),
                answers.len()
            )));
        }
        let max = answers.iter().map(|(_, v)| *v).max().unwrap_or(0);
        let current = answers
            .into_iter()
            .filter(|(_, v)| *v == max)
            .map(|(r, _)| r)
            .collect();
        Ok((max, current))
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_obj(
        &self,
        map: &ClusterMap,
        pool: &Pool,
        img: &Image,
        st: &ImageState,
        objno: u64,
        off: u64,
        len: u64,
    ) -> Result<Bytes, BlockError> {
        let key = Self::key(pool, img, objno);
        let acting = self.acting(map, pool, &key);
        let up: Vec<String> = acting
            .iter()
            .filter(|r| map.up.contains(*r))
            .cloned()
            .collect();
        let need = pool.read_quorum();
        if (up.len() as u32) < need {
            return Err(BlockError::Unavailable(format!(
                "object {} of '{}': {} of {} replicas up, {} needed to read the latest data (size {}, min_size {})",
                key.name(), img.spec(), up.len(), pool.size, need, pool.size, pool.min_size
            )));
        }
        let obj = st.obj(objno);
        let (version, current) = {
            let mut s = obj.lock().await;
            if s.version.is_none() {
                let (v, cur) = self.discover(map, &key, &up, need).await?;
                s.version = Some(v);
                s.current = cur;
            }
            (s.version.unwrap_or(0), s.current.clone())
        };
        let mut order: Vec<&String> = Vec::new();
        if current.iter().any(|r| r == self.me()) {
            order.push(current.iter().find(|r| *r == self.me()).expect("present"));
        }
        order.extend(current.iter().filter(|r| *r != self.me()));
        let mut last_err = String::from("no replica holds the latest version");
        for r in order {
            let req = OpReq::Read {
                key: key.clone(),
                offset: off,
                len,
            };
            match self.op(map, r, req, Bytes::new()).await {
                Ok((OpResp::Data { version: v }, data)) if v >= version => return Ok(data),
                Ok((OpResp::Data { version: v }, _)) => {
                    last_err = format!("replica {r} is at version {v}, older than {version}");
                    obj.lock().await.current.retain(|c| c != r);
                }
                Ok((OpResp::Corrupt { msg }, _)) => {
                    tracing::error!(object = %key.name(), replica = %r, error = %msg, "replica failed its checksum on read; serving another replica and repairing");
                    last_err = msg;
                    obj.lock().await.current.retain(|c| c != r);
                    self.spawn_repair(key.clone(), r.clone(), version);
                }
                Ok((other, _)) => last_err = format!("replica {r}: {other:?}"),
                Err(e) => last_err = e,
            }
        }
        Err(BlockError::Io(format!(
            "object {} of '{}' could not be read from any up-to-date replica: {last_err}",
            key.name(),
            img.spec()
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_obj(
        self: &Arc<Self>,
        map: &ClusterMap,
        pool: &Pool,
        img: &Image,
        st: &ImageState,
        objno: u64,
        off: u64,
        len: u64,
        kind: MutKind,
        payload: Bytes,
    ) -> Result<(), BlockError> {
        let key = Self::key(pool, img, objno);
        let acting = self.acting(map, pool, &key);
        let up: Vec<String> = acting
            .iter()
            .filter(|r| map.up.contains(*r))
            .cloned()
            .collect();
        if (up.len() as u32) < pool.min_size {
            return Err(BlockError::Unavailable(format!(
                "object {} of '{}': only {} of {} replicas up, min_size is {}; write refused",
                key.name(),
                img.spec(),
                up.len(),
                pool.size,
                pool.min_size
            )));
        }
        if let Some(full) = self.full_replica(map, &up) {
            return Err(BlockError::Full(format!(
                "node {full} is full (block.full_ratio); writes are refused until space is freed"
            )));
        }
        let mut s = st.obj(objno).lock_owned().await;
        for attempt in 0..2 {
            if s.version.is_none() {
                let (v, cur) = self.discover(map, &key, &up, pool.min_size).await?;
                s.version = Some(v);
                s.current = cur;
            }
            let expect = s.version.unwrap_or(0);
            if expect == 0 && kind != MutKind::Data {
                // Never written anywhere: it already reads as zeros; do not create it.
                return Ok(());
            }
            let new = expect + 1;
            let req = OpReq::Write {
                key: key.clone(),
                expect,
                new,
                offset: off,
                kind,
                len,
            };
            let (acked, conflict, rest) =
                self.replicate(map, pool, &up, req, payload.clone()).await;
            if (acked.len() as u32) >= pool.min_size {
                s.version = Some(new);
                s.current = acked;
                self.finish_tail(s, rest);
                return Ok(());
            }
            s.version = None;
            s.current.clear();
            if !conflict || attempt == 1 {
                return Err(BlockError::Unavailable(format!(
                    "write to object {} of '{}' made durable on {} replica(s), min_size is {}: not acknowledged",
                    key.name(),
                    img.spec(),
                    acked.len(),
                    pool.min_size
                )));
            }
        }
        unreachable!("the loop returns")
    }

    /// Sends one write to every up replica and returns once `min_size` of them acknowledged it,
    /// or all answered: who acknowledged, whether a version conflict (another writer) was seen,
    /// and the replicas still working on it. The client is acknowledged then, with the write
    /// durable on `min_size` replicas; the rest finish under the object's lock (`finish_tail`).
    /// Waiting for every replica made the slowest one's commit set every write's latency.
    async fn replicate(
        self: &Arc<Self>,
        map: &ClusterMap,
        pool: &Pool,
        up: &[String],
        req: OpReq,
        payload: Bytes,
    ) -> (Vec<String>, bool, FuturesUnordered<ReplicaOp>) {
        let mut pending: FuturesUnordered<ReplicaOp> = up
            .iter()
            .map(|r| self.op_owned(map, r, req.clone(), payload.clone()))
            .collect();
        let mut acked = Vec::new();
        let mut conflict = false;
        while (acked.len() as u32) < pool.min_size {
            let Some((r, res)) = pending.next().await else {
                break;
            };
            if write_acked(&r, res, &mut conflict) {
                acked.push(r);
            }
        }
        (acked, conflict, pending)
    }

    /// Gives the replicas that had not answered an acknowledged write `replica_grace` more,
    /// holding the object's lock meanwhile: the object's next write (or a read learning its
    /// version) waits for them, so every replica still sees its writes in order, and one that
    /// answers in time counts as current. One that does not is left to recovery, as before.
    fn finish_tail(&self, mut s: OwnedMutexGuard<ObjState>, mut rest: FuturesUnordered<ReplicaOp>) {
        if rest.is_empty() {
            return;
        }
        let grace = self.cfg.replica_grace;
        tokio::spawn(async move {
            let late = async {
                let mut conflict = false;
                while let Some((r, res)) = rest.next().await {
                    if write_acked(&r, res, &mut conflict) {
                        s.current.push(r);
                    }
                }
            };
            let _ = tokio::time::timeout(grace, late).await;
            drop(s);
        });
    }

    fn full_replica(&self, map: &ClusterMap, up: &[String]) -> Option<String> {
        let scan = self.scan.read().expect("scan lock");
        up.iter()
            .find(|r| {
                scan.usage
                    .get(*r)
                    .is_some_and(|u| u.ratio() >= self.cfg.full_ratio)
                    || (*r == self.me() && self.usage().ratio() >= self.cfg.full_ratio)
            })
            .map(|r| {
                map.osds
                    .iter()
                    .find(|o| &o.id == r)
                    .map(|o| o.name.clone())
                    .unwrap_or_else(|| r.clone())
            })
    }

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

    fn spawn_repair(&self, key: ObjectKey, bad: String, version: u64) {
        let Some(me) = self.self_arc() else { return };
        tokio::spawn(async move {
            if let Err(e) = me.repair(&key, &bad, version).await {
                tracing::warn!(object = %key.name(), replica = %bad, error = %e, "repair failed; recovery will retry");
            }
        });
    }

    fn self_arc(&self) -> Option<Arc<Self>> {
        SELF.get().and_then(|w| w.upgrade())
    }

    /// Copies the object at `version` from a replica that holds it intact onto `bad`, replacing
    /// whatever `bad` has (force: also at an equal version, for corrupt or divergent copies).
    pub async fn repair(&self, key: &ObjectKey, bad: &str, version: u64) -> Result<(), BlockError> {
        let map = self.map();
        let meta = self.meta();
        let pool = meta
            .pool_by_id(key.pool)
            .ok_or_else(|| BlockError::NotFound(format!("pool id {} unknown", key.pool)))?;
        let acting = self.acting(&map, &pool, key);
        for src in acting.iter().filter(|r| *r != bad && map.up.contains(*r)) {
            if let Ok((OpResp::Exported { version: v, chunks }, data)) = self
                .op(&map, src, OpReq::Export { key: key.clone() }, Bytes::new())
                .await
            {
                if v < version {
                    continue;
                }
                let req = OpReq::Import {
                    key: key.clone(),
                    version: v,
                    chunks,
                    force: true,
                };
                return match self.op(&map, bad, req, data).await {
                    Ok((OpResp::Imported { .. }, _)) => {
                        tracing::info!(object = %key.name(), replica = %bad, source = %src, version = v, "replica repaired");
                        Ok(())
                    }
                    Ok((other, _)) => Err(BlockError::Io(format!("import refused: {other:?}"))),
                    Err(e) => Err(BlockError::Io(e)),
                };
            }
        }
        Err(BlockError::Io(format!(
            "no intact replica of {} at version {version} reachable",
            key.name()
        )))
    }

    // ---- replica operations (local or remote) --------------------------------------------------

    /// Runs one replica operation on `replica`: directly when it is this node, else batched to it.
    pub async fn op(
        &self,
        map: &ClusterMap,
        replica: &str,
        req: OpReq,
        payload: Bytes,
    ) -> Result<(OpResp, Bytes), String> {
        if replica == self.me() {
            return Ok(self.exec(req, payload).await);
        }
        let addr = map
            .addr(replica)
            .ok_or_else(|| format!("unknown node {replica}"))?
            .to_string();
        self.op_remote(replica, &addr, req, payload).await
    }

    /// [`Self::op`] as a future that owns what it needs, so it can outlive its caller.
    fn op_owned(
        self: &Arc<Self>,
        map: &ClusterMap,
        replica: &str,
        req: OpReq,
        payload: Bytes,
    ) -> ReplicaOp {
        let me = self.clone();
        let replica = replica.to_string();
        let addr = map.addr(&replica).map(str::to_string);
        Box::pin(async move {
            let res = if replica == me.me() {
                Ok(me.exec(req, payload).await)
            } else if let Some(addr) = addr {
                me.op_remote(&replica, &addr, req, payload).await
            } else {
                Err(format!("unknown node {replica}"))
            };
            (replica, res)
        })
    }

    async fn op_remote(
        &self,
        replica: &str,
        addr: &str,
        req: OpReq,
        payload: Bytes,
    ) -> Result<(OpResp, Bytes), String> {
        let tx = self.sender(addr);
        let (otx, orx) = oneshot::channel();
        tx.send(Pending {
            req,
            payload,
            tx: otx,
        })
        .await
        .map_err(|_| "peer sender stopped".to_string())?;
        match tokio::time::timeout(self.cfg.op_timeout, orx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("peer batch dropped".into()),
            Err(_) => Err(format!(
                "no answer from {replica} within {:?}",
                self.cfg.op_timeout
            )),
        }
    }

    fn sender(&self, addr: &str) -> mpsc::Sender<Pending> {
        let mut m = self.senders.lock().expect("senders lock");
        if let Some(tx) = m.get(addr) {
            if !tx.is_closed() {
                return tx.clone();
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(batcher(self.node.clone(), addr.to_string(), rx));
        m.insert(addr.to_string(), tx.clone());
        tx
    }

    /// Executes one operation against this node's replicas.
    pub async fn exec(&self, req: OpReq, payload: Bytes) -> (OpResp, Bytes) {
        let fail = |e: ObjError| match e {
            ObjError::Corrupt { .. } => OpResp::Corrupt { msg: e.to_string() },
            e => OpResp::Error { msg: e.to_string() },
        };
        match req {
            OpReq::Write {
                key,
                expect,
                new,
                offset,
                kind,
                len,
            } => {
                let m = match kind {
                    MutKind::Data => Mutation::Data(payload),
                    MutKind::Zero => Mutation::Zero(len),
                    MutKind::Trim => Mutation::Trim(len),
                };
                let op = WriteOp {
                    key,
                    expect,
                    new,
                    offset,
                    m,
                };
                let r = match self.objs.write(op).await {
                    Ok(WriteOutcome::Applied) => OpResp::Applied,
                    Ok(WriteOutcome::AlreadyApplied) => OpResp::AlreadyApplied,
                    Ok(WriteOutcome::Stale { have }) => OpResp::Stale { have },
                    Ok(WriteOutcome::Conflict { have }) => OpResp::Conflict { have },
                    Err(e) => fail(e),
                };
                (r, Bytes::new())
            }
            OpReq::Read { key, offset, len } => match self.objs.read(&key, offset, len).await {
                Ok((version, data)) => (OpResp::Data { version }, data),
                Err(e) => (fail(e), Bytes::new()),
            },
            OpReq::Version { key } => (
                OpResp::Version {
                    version: self.objs.info(&key).map(|i| i.version).unwrap_or(0),
                },
                Bytes::new(),
            ),
            OpReq::Export { key } => match self.objs.export(&key).await {
                Ok(img) => {
                    let idx = img.chunks.iter().map(|(i, _)| *i).collect();
                    let mut data = BytesMut::with_capacity(img.chunks.len() * CHUNK_SIZE);
                    for (_, c) in &img.chunks {
                        data.extend_from_slice(c);
                    }
                    (
                        OpResp::Exported {
                            version: img.version,
                            chunks: idx,
                        },
                        data.freeze(),
                    )
                }
                Err(e) => (fail(e), Bytes::new()),
            },
            OpReq::Import {
                key,
                version,
                chunks,
                force,
            } => {
                let _g = self.import_lock.lock().await;
                let have = self.objs.info(&key).map(|i| i.version).unwrap_or(0);
                if have >= version && !force {
                    return (
                        OpResp::Imported {
                            applied: false,
                            have,
                        },
                        Bytes::new(),
                    );
                }
                let img = ObjectImage {
                    version,
                    chunks: chunks
                        .iter()
                        .enumerate()
                        .map(|(n, i)| (*i, payload.slice(n * CHUNK_SIZE..(n + 1) * CHUNK_SIZE)))
                        .collect(),
                };
                match self.objs.import(&key, img).await {
                    Ok(()) => (
                        OpResp::Imported {
                            applied: true,
                            have: version,
                        },
                        Bytes::new(),
                    ),
                    Err(e) => (fail(e), Bytes::new()),
                }
            }
            OpReq::Remove { key } => match self.objs.remove(&key).await {
                Ok(()) => (OpResp::Removed, Bytes::new()),
                Err(e) => (fail(e), Bytes::new()),
            },
            OpReq::Digest { key } => match self.objs.digest(&key).await {
                Ok((version, d)) => (
                    OpResp::Digest {
                        version,
                        digest: hex::encode(d),
                    },
                    Bytes::new(),
                ),
                Err(e) => (fail(e), Bytes::new()),
            },
        }
    }

    /// Runs a batch received from a peer; operations run concurrently so the store can commit
    /// them as a group.
    pub async fn exec_batch(&self, body: Bytes) -> Result<Vec<u8>, wire::WireError> {
        let items = wire::decode::<OpReq>(body, wire::req_payload_len)?;
        let results = futures::future::join_all(
            items
                .into_iter()
                .map(|(req, payload)| self.exec(req, payload)),
        )
        .await;
        Ok(wire::encode(&results))
    }
}

/// One replica's answer to an operation, tagged with the replica.
type ReplicaOp = futures::future::BoxFuture<'static, (String, Result<(OpResp, Bytes), String>)>;

/// Whether a replica's answer to a write acknowledges it; logs the others (a conflict, meaning
/// another writer changed the object, is also reported through `conflict`).
fn write_acked(r: &str, res: Result<(OpResp, Bytes), String>, conflict: &mut bool) -> bool {
    match res {
        Ok((OpResp::Applied | OpResp::AlreadyApplied, _)) => return true,
        Ok((OpResp::Conflict { have }, _)) => {
            tracing::warn!(replica = %r, have, "version conflict: another writer changed the object");
            *conflict = true;
        }
        Ok((OpResp::Stale { have }, _)) => {
            tracing::debug!(replica = %r, have, "replica is stale; recovery will bring it up to date");
        }
        Ok((other, _)) => tracing::warn!(replica = %r, answer = ?other, "replica refused a write"),
        Err(e) => tracing::debug!(replica = %r, error = %e, "replica write failed"),
    }
    false
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

/// Sends queued operations for one peer in batches, a few batches in flight at once. Taking a
/// permit before draining the queue lets operations pile up while the link is busy, so batches
/// grow with load (group commit across the network).
async fn batcher(node: Arc<Node>, addr: String, mut rx: mpsc::Receiver<Pending>) {
    let sem = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].payload.len();
        while batch.len() < BATCH_OPS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let items: Vec<(OpReq, Bytes)> = batch
                .iter()
                .map(|p| (p.req.clone(), p.payload.clone()))
                .collect();
            let body = wire::encode(&items);
            let res = node
                .peers
                .binary(&addr, "/peer/v1/block/ops", body)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let mut i = 0usize;
                    let reqs: Vec<&OpReq> = batch.iter().map(|p| &p.req).collect();
                    wire::decode::<OpResp>(b, |r| {
                        let n = reqs
                            .get(i)
                            .map(|q| wire::resp_payload_len(q, r))
                            .unwrap_or(0);
                        i += 1;
                        n
                    })
                    .map_err(|e| e.to_string())
                });
            match res {
                Ok(answers) if answers.len() == batch.len() => {
                    for (p, a) in batch.into_iter().zip(answers) {
                        let _ = p.tx.send(Ok(a));
                    }
                }
                Ok(answers) => {
                    let msg = format!(
                        "peer answered {} of {} operations",
                        answers.len(),
                        batch.len()
                    );
                    for p in batch {
                        let _ = p.tx.send(Err(msg.clone()));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
