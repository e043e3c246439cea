//! This node's object replicas: object data in sparse files, per-chunk CRC32C and versions in redb,
//! group-committed by one writer thread.
//!
//! # Layout
//! - `dir/objects/<pool>/<image>.<%016x objno>`: the object's bytes at their offsets (a sparse file
//!   that may be shorter than the object; whatever is missing reads as zeros).
//! - `dir/objects.redb`: table `objects` (key → version + one CRC32C per 4 KiB chunk, holes marked in
//!   a bitmap), table `object_info` (key → version + used bytes) and table `wal_state` (the log's
//!   `applied` mark).
//! - `dir/wal0.log`, `dir/wal1.log`: the two generations of the write-ahead log ([`super::wal`]).
//!
//! # Decisions
//! - **Data in files, metadata in redb.** Object data is large and overwritten in place; a B-tree
//!   would copy every 4 KiB overwrite into fresh pages, a file takes a `pwrite`. The small
//!   per-object metadata wants transactions, and redb gives them with one commit for many objects.
//! - **Every read verifies the CRC of every chunk it touches.** Disk rot and operators editing the
//!   files must never be served; a mismatch is `ObjError::Corrupt { chunk }`, which the cluster
//!   repairs from another replica (export there, [`ObjStore::import`] here). Corrupting a replica on
//!   purpose must be done *in place* (write into the existing file): open handles are cached, so a
//!   file replaced by rename is not seen until its handle leaves the cache.
//! - **Holes are explicit** (a bitmap, not a magic CRC value: any u32, including 0, is a possible
//!   CRC32C). A chunk that was never written, was zeroed/trimmed, or was written with all-zero data
//!   is a hole: it reads as zeros without I/O, costs nothing in `used_bytes`, and is skipped by the
//!   digest. Since *every* all-zero chunk is a hole, replicas with the same content have the same
//!   metadata and digest whether they got there by trim, zero-write or zero data. Stale bytes may
//!   remain in the file under a hole; they are never read (a partial write into a hole starts from
//!   zeros, not from the file). Interior holes do not give space back (no `fallocate` punching
//!   without another dependency); trailing holes do: the file is truncated after the last data
//!   chunk.
//! - **Durability order: data first, then metadata.** A batch `pwrite`s its data, `fdatasync`s each
//!   touched file once (and the directories of newly created files), then commits one redb
//!   transaction (`Durability::Immediate`), and only then answers. A crash between the two leaves
//!   chunks whose bytes no longer match their committed CRC: they read as `Corrupt` and are repaired
//!   from another replica — the write itself was never acknowledged, so nothing acknowledged is lost.
//!   Removal goes the other way (metadata first, then unlink) so a crash leaves at worst an orphan
//!   file, which [`ObjStore::open`] deletes.
//! - **Write-ahead log for small writes.** Syncing every touched file costs one fdatasync per
//!   object (≈165 µs each here; 16 random 4 KiB writes touch ~16 objects), so writes up to 256 KiB
//!   instead go as records into a log file ([`super::wal`]): one `pwrite` and one `fdatasync` make
//!   the whole batch durable, and neither their object files nor their metadata rows are written
//!   durably then. A record is the write's whole effect on the object — new version, which chunks
//!   became data or holes, the data — so replaying it restores both file bytes and metadata.
//!   Until a checkpoint their metadata lives in an in-memory cache (entries marked dirty); a
//!   background checkpoint thread (every 32 MiB, 5 s or 2048 dirty objects) syncs their files outside the writer's
//!   path, and the writer's next batch then commits the dirty metadata to redb together with the
//!   `applied` mark (the last record whose data is synced), after which that log generation is
//!   reused. Any other kind of operation (import, removal, big write) first checkpoints
//!   synchronously, so a replay never re-applies an old small write over newer bytes.
//!   [`ObjStore::open`] replays the records after `applied` in order — absolute bytes and chunk
//!   states, so replaying what already reached the file or the table is harmless. Bigger writes
//!   keep the data-then-metadata order above.
//! - **Group commit.** One fdatasync costs ≈165 µs on the reference disk, so at queue depth 16 a
//!   commit per write would serialise on the disk. All mutations go to one writer thread, which
//!   takes everything queued (up to 256 operations or 64 MiB of payload), applies them in arrival
//!   order, syncs each touched file once, commits once and answers every waiter. Because mutations
//!   are queued when [`ObjStore::write`] *is called* (not when its future is first polled), writes
//!   to one object apply in call order.
//! - **Version compare-and-set** happens in the writer against the batch's working state, so two
//!   writes to one object in one batch see each other exactly as if they were committed separately.
//! - **Readers vs. the writer.** Between the writer's `pwrite` and its commit, file and metadata
//!   disagree. Objects hash onto 1024 lock stripes; the writer holds the stripes of its batch from
//!   first `pwrite` to after the commit, readers hold one stripe while reading metadata and data, so a
//!   reader never sees that window (it would report false corruption).
//! - **In-memory index** (`BTreeMap`, ordered so listings need no sort) of version and used bytes,
//!   loaded from the small `object_info` table at open; listing, `info` and `stats` do no I/O.
//! - **Metadata cache.** Decoded per-object metadata of recently used objects (at most
//!   [`META_CACHE_CAP`] clean entries, plus the dirty ones: [`META_DIRTY_MAX`] of them make a
//!   checkpoint due), so a 4 KiB read or write does not open a redb transaction and decode 4 KiB
//!   of CRCs each time.
//! - **Unaligned writes** read-modify-write their edge chunks, verifying them first: a corrupt edge
//!   chunk fails the write with `Corrupt` rather than blessing rotten bytes with a fresh CRC.

use super::{wal, ObjectKey, CHUNK_SIZE};
use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::{mpsc, oneshot};

/// key → encoded [`ObjMeta`] (version, hole bitmap, CRCs of the data chunks).
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// key → version (u64 LE) ‖ used bytes (u64 LE): small, so the index loads fast at open.
const OBJECT_INFO: TableDefinition<&[u8], &[u8]> = TableDefinition::new("object_info");
/// The redb write-ahead tables of stores written before the log moved to files: replayed once at
/// open (`seq → [u16 key len][key][u64 offset][data]`) and then dropped.
const LEGACY_WAL: [TableDefinition<u64, &[u8]>; 2] =
    [TableDefinition::new("wal"), TableDefinition::new("wal1")];
/// [`APPLIED`] → the last log sequence number whose data is in synced files and whose metadata is
/// committed in [`OBJECTS`]; replay starts after it.
const WAL_STATE: TableDefinition<&str, u64> = TableDefinition::new("wal_state");
const APPLIED: &str = "applied";
const WAL_FILES: [&str; 2] = ["wal0.log", "wal1.log"];
/// Clean entries the metadata cache keeps (~8 KiB each for a 4 MiB object).
const META_CACHE_CAP: usize = 1024;
/// Dirty entries that make a checkpoint due, whatever its size and age: random small writes over
/// a big image would otherwise keep one dirty entry per object touched in 5 s.
const META_DIRTY_MAX: usize = 2048;
/// Writes up to this size go through the write-ahead log (one `fdatasync` makes a whole batch of
/// them durable); bigger ones are `fdatasync`ed in their object files.
const WAL_MAX_OP: u64 = 256 << 10;
/// Checkpoint (sync the object files, empty the write-ahead table) after this many bytes...
const WAL_CHECKPOINT_BYTES: u64 = 32 << 20;
/// ...or this long after the previous checkpoint.
const WAL_CHECKPOINT_AGE: std::time::Duration = std::time::Duration::from_secs(5);

const CS: u64 = CHUNK_SIZE as u64;
const LOCK_STRIPES: usize = 1024;
const FILE_CACHE_CAP: usize = 256;
const BATCH_MAX_OPS: usize = 256;
const BATCH_MAX_BYTES: u64 = 64 << 20;
/// A file name is at most 255 bytes and the object name adds ".%016x".
const MAX_IMAGE_ID_LEN: usize = 255 - 17;
/// Upper bound accepted for `max_object_size` (RBD allows up to 32 MiB; leave headroom).
const MAX_OBJECT_SIZE_LIMIT: u64 = 1 << 30;
const META_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjError {
    #[error("object {}/{} chunk {chunk} failed its CRC32C check; this replica is corrupt and must be repaired from another replica", .key.pool, .key.name())]
    Corrupt { key: ObjectKey, chunk: u64 },
    #[error("object store I/O error: {0}")]
    Io(String),
    #[error("object store metadata error: {0}")]
    Db(String),
    #[error("invalid object store request: {0}")]
    Invalid(String),
}

impl From<io::Error> for ObjError {
    fn from(e: io::Error) -> Self {
        ObjError::Io(e.to_string())
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for ObjError {
            fn from(e: $t) -> Self { ObjError::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What a write does to the byte range starting at [`WriteOp::offset`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Data(Bytes),
    /// Write zeros over `len` bytes.
    Zero(u64),
    /// Discard `len` bytes; reads back as zeros, exactly like [`Mutation::Zero`].
    Trim(u64),
}

impl Mutation {
    fn span(&self) -> u64 {
        match self {
            Mutation::Data(d) => d.len() as u64,
            Mutation::Zero(n) | Mutation::Trim(n) => *n,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOp {
    pub key: ObjectKey,
    /// The version the coordinator believes this replica has (0 = object absent).
    pub expect: u64,
    /// The version the object has after this write; must be greater than `expect`.
    pub new: u64,
    /// Byte offset within the object.
    pub offset: u64,
    pub m: Mutation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied,
    /// The replica already has version `new` (a retried write).
    AlreadyApplied,
    /// The replica is behind `expect`: it missed writes and needs recovery.
    Stale {
        have: u64,
    },
    /// The replica is ahead of `expect` with a version other than `new`.
    Conflict {
        have: u64,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjInfo {
    pub version: u64,
    /// Non-hole chunks × [`CHUNK_SIZE`].
    pub used_bytes: u64,
}

/// An object's full sparse content, for recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectImage {
    pub version: u64,
    /// Non-hole chunks only, ascending, each exactly [`CHUNK_SIZE`] bytes.
    pub chunks: Vec<(u64, Bytes)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub objects: u64,
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub avail_bytes: u64,
}

// ---- metadata encoding ------------------------------------------------------------------------

/// Per-object metadata: `crcs[i]` is `None` for a hole. Trailing holes are never stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ObjMeta {
    version: u64,
    crcs: Vec<Option<u32>>,
}

impl ObjMeta {
    fn chunk(&self, i: u64) -> Option<u32> {
        self.crcs.get(i as usize).copied().flatten()
    }

    fn set(&mut self, i: u64, crc: Option<u32>) {
        let i = i as usize;
        if i >= self.crcs.len() {
            if crc.is_none() {
                return;
            }
            self.crcs.resize(i + 1, None);
        }
        self.crcs[i] = crc;
    }

    fn trim_tail(&mut self) {
        while matches!(self.crcs.last(), Some(None)) {
            self.crcs.pop();
        }
    }

    fn present(&self) -> impl Iterator<Item = u64> + '_ {
        self.crcs
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u64)
    }

    fn info(&self) -> ObjInfo {
        ObjInfo {
            version: self.version,
            used_bytes: self.present().count() as u64 * CS,
        }
    }

    /// `format u8 ‖ version u64 LE ‖ n u32 LE ‖ bitmap ⌈n/8⌉ bytes ‖ CRC u32 LE per set bit`.
    fn encode(&self) -> Vec<u8> {
        let n = self.crcs.len();
        let mut out = Vec::with_capacity(13 + n.div_ceil(8) + 4 * n);
        out.push(META_FORMAT);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for (i, c) in self.crcs.iter().enumerate() {
            if c.is_some() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for c in self.crcs.iter().flatten() {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Result<Self, ObjError> {
        let bad = || ObjError::Db("undecodable object metadata".into());
        if b.len() < 13 || b[0] != META_FORMAT {
            return Err(bad());
        }
        let version = u64::from_le_bytes(b[1..9].try_into().map_err(|_| bad())?);
        let n = u32::from_le_bytes(b[9..13].try_into().map_err(|_| bad())?) as usize;
        let bitmap = b.get(13..13 + n.div_ceil(8)).ok_or_else(bad)?;
        let mut crcs = b[13 + bitmap.len()..].chunks_exact(4);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                let c = crcs.next().ok_or_else(bad)?;
                out.push(Some(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            } else {
                out.push(None);
            }
        }
        if crcs.next().is_some() || !crcs.remainder().is_empty() {
            return Err(bad());
        }
        Ok(Self { version, crcs: out })
    }
}

fn encode_info(i: &ObjInfo) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&i.version.to_le_bytes());
    out[8..].copy_from_slice(&i.used_bytes.to_le_bytes());
    out
}

fn decode_info(b: &[u8]) -> Result<ObjInfo, ObjError> {
    let b: [u8; 16] = b
        .try_into()
        .map_err(|_| ObjError::Db("undecodable object info".into()))?;
    let (v, u) = b.split_at(8);
    Ok(ObjInfo {
        version: u64::from_le_bytes(v.try_into().unwrap_or_default()),
        used_bytes: u64::from_le_bytes(u.try_into().unwrap_or_default()),
    })
}

/// `pool u32 BE ‖ image ‖ 0 ‖ objno u64 BE` (image ids never contain NUL).
fn encode_key(k: &ObjectKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + k.image.len());
    out.extend_from_slice(&k.pool.to_be_bytes());
    out.extend_from_slice(k.image.as_bytes());
    out.push(0);
    out.extend_from_slice(&k.objno.to_be_bytes());
    out
}

fn decode_key(b: &[u8]) -> Option<ObjectKey> {
    let n = b.len();
    if n < 13 || b[n - 9] != 0 {
        return None;
    }
    Some(ObjectKey {
        pool: u32::from_be_bytes(b[..4].try_into().ok()?),
        image: std::str::from_utf8(&b[4..n - 9]).ok()?.to_string(),
        objno: u64::from_be_bytes(b[n - 8..].try_into().ok()?),
    })
}

fn check_image(image: &str) -> Result<(), ObjError> {
    if image.is_empty() || image.len() > MAX_IMAGE_ID_LEN || image.contains(['/', '\0']) {
        return Err(ObjError::Invalid(format!(
            "image id {image:?} must be 1..={MAX_IMAGE_ID_LEN} bytes without '/' or NUL"
        )));
    }
    Ok(())
}

/// Inverse of [`ObjectKey::name`] for a file in pool directory `pool`.
fn parse_object_file(pool: u32, name: &str) -> Option<ObjectKey> {
    let n = name.len();
    if n < 18 || name.as_bytes()[n - 17] != b'.' {
        return None;
    }
    let hex = &name[n - 16..];
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let key = ObjectKey {
        pool,
        image: name[..n - 17].to_string(),
        objno: u64::from_str_radix(hex, 16).ok()?,
    };
    check_image(&key.image).ok()?;
    Some(key)
}

fn stripe(key: &ObjectKey) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % LOCK_STRIPES as u64) as usize
}

fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(16);
    words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&x| x == 0)
}

/// Reads as much of `buf` as the file has from `pos`; bytes past its end stay as they are (zeros).
fn read_full_at(f: &File, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, pos) {
            Ok(0) => break,
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

// ---- shared state -----------------------------------------------------------------------------

#[derive(Default)]
struct Index {
    map: BTreeMap<ObjectKey, ObjInfo>,
    used: u64,
}

impl Index {
    fn insert(&mut self, key: ObjectKey, info: ObjInfo) {
        if let Some(old) = self.map.insert(key, info) {
            self.used -= old.used_bytes;
        }
        self.used += info.used_bytes;
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(old) = self.map.remove(key) {
            self.used -= old.used_bytes;
        }
    }
}

/// Bounded cache of open object files, evicting the least recently used.
#[derive(Default)]
struct FileCache {
    map: HashMap<ObjectKey, (Arc<File>, u64)>,
    tick: u64,
}

impl FileCache {
    fn get(&mut self, key: &ObjectKey) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(f, t)| {
            *t = tick;
            f.clone()
        })
    }

    fn insert(&mut self, key: ObjectKey, f: Arc<File>) {
        if self.map.len() >= FILE_CACHE_CAP && !self.map.contains_key(&key) {
            if let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&old);
            }
        }
        self.tick += 1;
        self.map.insert(key, (f, self.tick));
    }

    fn remove(&mut self, key: &ObjectKey) {
        self.map.remove(key);
    }
}

/// Decoded metadata of recently used objects. `dirty`: newer than the [`OBJECTS`] row (written
/// through the log and not yet checkpointed); only clean entries are evicted.
#[derive(Default)]
struct MetaCache {
    map: HashMap<ObjectKey, (Arc<ObjMeta>, bool)>,
    /// Dirty entries in `map`.
    dirty: usize,
}

impl MetaCache {
    fn insert(&mut self, key: ObjectKey, m: Arc<ObjMeta>, dirty: bool) {
        if let Some((_, true)) = self.map.insert(key, (m, dirty)) {
            self.dirty -= 1;
        }
        self.dirty += usize::from(dirty);
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some((_, true)) = self.map.remove(key) {
            self.dirty -= 1;
        }
    }

    fn get(&self, key: &ObjectKey) -> Option<Arc<ObjMeta>> {
        self.map.get(key).map(|(m, _)| m.clone())
    }

    /// Adds a clean entry read from redb, unless the cache is full or has the key already.
    fn fill(&mut self, key: &ObjectKey, m: &Arc<ObjMeta>) {
        if self.map.len() < META_CACHE_CAP {
            self.map
                .entry(key.clone())
                .or_insert_with(|| (m.clone(), false));
        }
    }

    fn dirty(&self) -> Vec<(ObjectKey, Arc<ObjMeta>)> {
        self.map
            .iter()
            .filter(|(_, (_, d))| *d)
            .map(|(k, (m, _))| (k.clone(), m.clone()))
            .collect()
    }

    /// After those entries were committed: clean, unless replaced since.
    fn mark_clean(&mut self, committed: &[(ObjectKey, Arc<ObjMeta>)]) {
        for (k, m) in committed {
            if let Some((cur, d)) = self.map.get_mut(k) {
                if *d && Arc::ptr_eq(cur, m) {
                    *d = false;
                    self.dirty -= 1;
                }
            }
        }
    }

    fn evict(&mut self) {
        let mut excess = self.map.len().saturating_sub(META_CACHE_CAP);
        if excess > 0 {
            self.map.retain(|_, (_, d)| {
                let keep = *d || excess == 0;
                if !keep {
                    excess -= 1;
                }
                keep
            });
        }
    }
}

struct Inner {
    dir: PathBuf,
    objects_dir: PathBuf,
    db: Database,
    max_object_size: u64,
    index: RwLock<Index>,
    locks: Vec<RwLock<()>>,
    files: Mutex<FileCache>,
    metas: Mutex<MetaCache>,
    batches: AtomicU64,
    /// The write-ahead log and the files written through it and not yet synced.
    wal: Mutex<WalState>,
}

/// A finished background checkpoint, for the writer to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpointed {
    /// The generation whose records it covers (all of it: nothing newer went there).
    gen: usize,
    /// Its last record.
    seq: u64,
}

struct WalState {
    logs: [wal::LogFile; 2],
    /// The generation (index into `logs`) new records go to.
    active: usize,
    /// The last record written.
    seq: u64,
    /// Bytes logged since the last checkpoint.
    bytes: u64,
    lazy: HashMap<ObjectKey, Arc<File>>,
    dirs: HashSet<PathBuf>,
    last_checkpoint: std::time::Instant,
    /// Files a background checkpoint is syncing (a synchronous checkpoint syncs them too).
    syncing: Vec<Arc<File>>,
    syncing_dirs: HashSet<PathBuf>,
    /// Bumped by every synchronous checkpoint: a background one that started before it finds a
    /// different epoch when it ends and is dropped (the synchronous one covered it).
    epoch: u64,
    done: Option<Checkpointed>,
    /// A background checkpoint (or its commit) failed: the writer's next batch checkpoints
    /// synchronously (its error then fails that batch, so no write is acknowledged over a broken
    /// disk).
    force_sync: bool,
    /// Appending to the log failed: no more writes until the store is reopened (see [`wal`]).
    broken: Option<String>,
    stop: bool,
}

/// Checkpoints in the background, so the writer never stalls on syncing many files: take the
/// set of written-but-unsynced files and the log's last sequence number, flip the active
/// generation, sync the files outside the lock, then let the writer commit the metadata and the
/// `applied` mark in its next batch and reuse the old generation.
fn checkpointer(inner: std::sync::Weak<Inner>) {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Some(inner) = inner.upgrade() else { return };
        if !checkpoint_once(&inner, false) {
            return;
        }
    }
}

/// One round of the checkpoint thread; `false` once the store is stopping. `force`: whatever the
/// log's size and age (tests drive checkpoints with it).
fn checkpoint_once(inner: &Inner, force: bool) -> bool {
    let (files, dirs, snap, epoch) = {
        let mut w = lock(&inner.wal);
        if w.stop {
            return false;
        }
        let due = force
            || w.bytes > WAL_CHECKPOINT_BYTES
            || (w.last_checkpoint.elapsed() > WAL_CHECKPOINT_AGE && !w.lazy.is_empty())
            || lock(&inner.metas).dirty >= META_DIRTY_MAX;
        if !due || !w.syncing.is_empty() || w.done.is_some() || w.force_sync || w.broken.is_some() {
            return true;
        }
        let files: Vec<(ObjectKey, Arc<File>)> = w.lazy.drain().collect();
        let dirs: HashSet<PathBuf> = std::mem::take(&mut w.dirs);
        w.syncing = files.iter().map(|(_, f)| f.clone()).collect();
        w.syncing_dirs = dirs.clone();
        w.bytes = 0;
        w.last_checkpoint = std::time::Instant::now();
        let snap = Checkpointed {
            gen: w.active,
            seq: w.seq,
        };
        w.active ^= 1;
        (files, dirs, snap, w.epoch)
    };
    let mut ok = true;
    for (_, f) in &files {
        if let Err(e) = f.sync_data() {
            tracing::error!(error = %e, "checkpoint: cannot sync an object file; keeping the log");
            ok = false;
        } else {
            drop_cached(f);
        }
    }
    for d in &dirs {
        if let Err(e) = sync_dir(d) {
            tracing::error!(error = %e, "checkpoint: cannot sync a directory; keeping the log");
            ok = false;
        }
    }
    let mut w = lock(&inner.wal);
    w.syncing.clear();
    w.syncing_dirs.clear();
    if w.epoch != epoch {
        // A synchronous checkpoint ran meanwhile and covered all of this.
    } else if ok {
        w.done = Some(snap);
    } else {
        // Keep the files owed a sync; the writer retries synchronously.
        for (k, f) in files {
            w.lazy.entry(k).or_insert(f);
        }
        w.dirs.extend(dirs);
        w.force_sync = true;
    }
    true
}

/// Drops a synced object file's clean pages from the page cache. Objects written in big pieces
/// (a prefill, recovery, imports) sit in large folios, and every later 4 KiB buffered write into
/// one makes ext4 walk all of the folio's buffer heads (`ext4_block_write_begin` was the biggest
/// single cost of a replica under 4K random writes, ~15% of its CPU); pages dropped here come back
/// as 4 KiB folios. Reads are served from verified object files either way; only their caching
/// changes. Advisory: a failure changes nothing but speed.
fn drop_cached(f: &File) {
    if let Err(e) = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::debug!(error = %e, "checkpoint: fadvise(DONTNEED) failed");
    }
}

#[cfg(test)]
fn encode_wal(key: &ObjectKey, pos: u64, data: &[u8]) -> Vec<u8> {
    let k = encode_key(key);
    let mut out = Vec::with_capacity(2 + k.len() + 8 + data.len());
    out.extend_from_slice(&(k.len() as u16).to_be_bytes());
    out.extend_from_slice(&k);
    out.extend_from_slice(&pos.to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn decode_wal(b: &[u8]) -> Option<(ObjectKey, u64, &[u8])> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let key = decode_key(b.get(2..2 + n)?)?;
    let pos = u64::from_be_bytes(b.get(2 + n..10 + n)?.try_into().ok()?);
    Some((key, pos, b.get(10 + n..)?))
}

/// Payload of a log record: one small write's whole effect on its object, so that replay restores
/// file bytes and metadata alike. `key len u16 LE ‖ key ‖ version u64 LE ‖ first chunk u64 LE ‖
/// n u32 LE ‖ n flags (1 = data, 0 = hole) ‖ the data chunks, CHUNK_SIZE bytes each`. CRCs are not
/// stored: the frame's own CRC covers the record, and replay recomputes them from the data.
fn encode_record(out: &mut Vec<u8>, key: &ObjectKey, version: u64, plan: &[(u64, Chunk)]) {
    let k = encode_key(key);
    out.extend_from_slice(&(k.len() as u16).to_le_bytes());
    out.extend_from_slice(&k);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&plan.first().map_or(0, |(c, _)| *c).to_le_bytes());
    out.extend_from_slice(&(plan.len() as u32).to_le_bytes());
    out.extend(plan.iter().map(|(_, ch)| u8::from(ch.crc().is_some())));
    for (_, ch) in plan {
        if let Chunk::Data { bytes, .. } = ch {
            out.extend_from_slice(bytes);
        }
    }
}

struct Record<'a> {
    key: ObjectKey,
    version: u64,
    first: u64,
    flags: &'a [u8],
    data: &'a [u8],
}

fn decode_record(b: &[u8]) -> Option<Record<'_>> {
    let kn = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let key = decode_key(b.get(2..2 + kn)?)?;
    let rest = b.get(2 + kn..)?;
    let version = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let first = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
    let n = u32::from_le_bytes(rest.get(16..20)?.try_into().ok()?) as usize;
    let flags = rest.get(20..20 + n)?;
    let data = rest.get(20 + n..)?;
    let chunks = flags.iter().filter(|&&f| f == 1).count();
    if flags.iter().any(|&f| f > 1) || data.len() != chunks * CHUNK_SIZE {
        return None;
    }
    Some(Record {
        key,
        version,
        first,
        flags,
        data,
    })
}

/// A sparse-object chunk as a mutation leaves it.
enum Chunk {
    Hole,
    /// `src`: offset of these bytes in the op's payload, so adjacent chunks go out in one `pwrite`.
    Data {
        crc: u32,
        bytes: Bytes,
        src: Option<usize>,
    },
}

impl Chunk {
    fn new(bytes: Bytes, src: Option<usize>) -> Self {
        if is_zero(&bytes) {
            Chunk::Hole
        } else {
            Chunk::Data {
                crc: crc32c::crc32c(&bytes),
                bytes,
                src,
            }
        }
    }

    fn crc(&self) -> Option<u32> {
        match self {
            Chunk::Hole => None,
            Chunk::Data { crc, .. } => Some(*crc),
        }
    }
}

enum Op {
    Write(WriteOp),
    Import(ObjectKey, ObjectImage),
    Remove(ObjectKey),
    RemoveImage(u32, String),
}

impl Op {
    fn payload(&self) -> u64 {
        match self {
            Op::Write(w) => match &w.m {
                Mutation::Data(d) => d.len() as u64,
                _ => 0,
            },
            Op::Import(_, img) => img.chunks.len() as u64 * CS,
            _ => 0,
        }
    }
}

enum Done {
    Write(WriteOutcome),
    Unit,
    Count(u64),
}

struct Req {
    op: Op,
    reply: oneshot::Sender<Result<Done, ObjError>>,
}

/// The writer's view of one batch: metadata as the batch has left it so far, and what to do at
/// commit.
#[derive(Default)]
struct Batch {
    working: HashMap<ObjectKey, Option<ObjMeta>>,
    dirty: HashSet<ObjectKey>,
    touched: HashMap<ObjectKey, Arc<File>>,
    dirs: HashSet<PathBuf>,
    unlink: HashSet<ObjectKey>,
    /// The batch goes through the write-ahead log: each write appends its record to `log`.
    logged: bool,
    log: Vec<u8>,
    /// The last sequence number given to a record of `log`.
    seq: u64,
}

impl Batch {
    fn put(&mut self, key: &ObjectKey, m: Option<ObjMeta>) {
        self.working.insert(key.clone(), m);
        self.dirty.insert(key.clone());
    }
}

impl Inner {
    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.objects_dir.join(key.pool.to_string()).join(key.name())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ObjError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.max_object_size => Ok(()),
            _ => Err(ObjError::Invalid(format!(
                "range {offset}+{len} exceeds the object size {}",
                self.max_object_size
            ))),
        }
    }

    fn open_existing(&self, key: &ObjectKey) -> Result<Option<Arc<File>>, ObjError> {
        if let Some(f) = lock(&self.files).get(key) {
            return Ok(Some(f));
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(key))
        {
            Ok(f) => {
                let f = Arc::new(f);
                lock(&self.files).insert(key.clone(), f.clone());
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn load_meta(&self, key: &ObjectKey) -> Result<Option<ObjMeta>, ObjError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OBJECTS)?;
        let v = t.get(encode_key(key).as_slice())?;
        v.map(|v| ObjMeta::decode(v.value())).transpose()
    }

    /// The object's current metadata: the cache (which holds every entry newer than redb), else
    /// redb. Callers hold the object's stripe, so the writer cannot change it meanwhile.
    fn meta(&self, key: &ObjectKey) -> Result<Option<Arc<ObjMeta>>, ObjError> {
        if let Some(m) = lock(&self.metas).get(key) {
            return Ok(Some(m));
        }
        let Some(m) = self.load_meta(key)? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        lock(&self.metas).fill(key, &m);
        Ok(Some(m))
    }

    /// The metadata a batch sees: its own changes first.
    fn working_meta(&self, st: &mut Batch, key: &ObjectKey) -> Result<Option<ObjMeta>, ObjError> {
        if let Some(m) = st.working.get(key) {
            return Ok(m.clone());
        }
        let m = self.meta(key)?.map(|m| (*m).clone());
        st.working.insert(key.clone(), m.clone());
        Ok(m)
    }

    /// Reads chunks `c0..c1` into a zeroed buffer and checks the CRC of every data chunk; returns
    /// the buffer and the chunks that failed.
    fn read_chunks(
        &self,
        key: &ObjectKey,
        meta: &ObjMeta,
        c0: u64,
        c1: u64,
    ) -> Result<(Vec<u8>, Vec<u64>), ObjError> {
        let mut buf = vec![0u8; ((c1 - c0) * CS) as usize];
        let mut bad = Vec::new();
        let end = c1.min(meta.crcs.len() as u64);
        if (c0..end).all(|c| meta.chunk(c).is_none()) {
            return Ok((buf, bad));
        }
        // A missing file reads as zeros, which fail the CRC of any data chunk (data chunks are
        // never all zeros).
        let file = self.open_existing(key)?;
        let mut c = c0;
        while c < end {
            if meta.chunk(c).is_none() {
                c += 1;
                continue;
            }
            let mut e = c + 1;
            while e < end && meta.chunk(e).is_some() {
                e += 1;
            }
            let region = &mut buf[((c - c0) * CS) as usize..((e - c0) * CS) as usize];
            if let Some(f) = &file {
                read_full_at(f, region, c * CS)?;
            }
            for i in c..e {
                let off = ((i - c0) * CS) as usize;
                if Some(crc32c::crc32c(&buf[off..off + CHUNK_SIZE])) != meta.chunk(i) {
                    bad.push(i);
                }
            }
            c = e;
        }
        Ok((buf, bad))
    }

    fn read_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<(u64, Bytes), ObjError> {
        let _g = read_lock(&self.locks[stripe(key)]);
        let Some(meta) = self.meta(key)? else {
            return Ok((0, Bytes::from(vec![0u8; len as usize])));
        };
        if len == 0 {
            return Ok((meta.version, Bytes::new()));
        }
        let c0 = offset / CS;
        let c1 = (offset + len).div_ceil(CS);
        let (buf, bad) = self.read_chunks(key, &meta, c0, c1)?;
        if let Some(&chunk) = bad.first() {
            return Err(ObjError::Corrupt {
                key: key.clone(),
                chunk,
            });
        }
        let start = (offset - c0 * CS) as usize;
        Ok((
            meta.version,
            Bytes::from(buf).slice(start..start + len as usize),
        ))
    }

    /// The whole object (chunks `0..n`), with the chunks that failed their CRC.
    fn read_whole(&self, key: &ObjectKey) -> Result<Option<(ObjMeta, Bytes, Vec<u64>)>, ObjError> {
        let _g = read_lock(&self.locks[stripe(key)]);
        let Some(meta) = self.meta(key)? else {
            return Ok(None);
        };
        let (buf, bad) = self.read_chunks(key, &meta, 0, meta.crcs.len() as u64)?;
        Ok(Some(((*meta).clone(), Bytes::from(buf), bad)))
    }

    fn read_verified(&self, key: &ObjectKey) -> Result<Option<(ObjMeta, Bytes)>, ObjError> {
        match self.read_whole(key)? {
            None => Ok(None),
            Some((_, _, bad)) if !bad.is_empty() => Err(ObjError::Corrupt {
                key: key.clone(),
                chunk: bad[0],
            }),
            Some((meta, buf, _)) => Ok(Some((meta, buf))),
        }
    }

    // ---- writer side --------------------------------------------------------------------------

    fn commit_batch(&self, batch: Vec<Req>) {
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        let _guards = self.lock_for(&ops);
        let mut st = Batch::default();
        match self.apply_batch(&ops, &mut st) {
            Ok(results) => {
                self.publish(st);
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = ops.len(), "object store group commit failed");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Write-locks the stripes of every object in the batch, in ascending order.
    fn lock_for(&self, ops: &[Op]) -> Vec<RwLockWriteGuard<'_, ()>> {
        let mut stripes = BTreeSet::new();
        for op in ops {
            match op {
                Op::Write(w) => {
                    stripes.insert(stripe(&w.key));
                }
                Op::Import(k, _) | Op::Remove(k) => {
                    stripes.insert(stripe(k));
                }
                // Its objects are only known once earlier ops of the batch have run.
                Op::RemoveImage(..) => return self.locks.iter().map(write_lock).collect(),
            }
        }
        stripes
            .into_iter()
            .map(|i| write_lock(&self.locks[i]))
            .collect()
    }

    fn apply_batch(
        &self,
        ops: &[Op],
        st: &mut Batch,
    ) -> Result<Vec<Result<Done, ObjError>>, ObjError> {
        let mut wal = lock(&self.wal);
        if let Some(why) = &wal.broken {
            return Err(ObjError::Io(format!(
                "the write-ahead log failed ({why}); this replica refuses writes until it is restarted"
            )));
        }
        let small = ops.iter().all(|op| match op {
            Op::Write(w) => w.m.span() <= WAL_MAX_OP,
            _ => false,
        });
        // Also checkpoint synchronously when the background one falls far behind.
        if small && wal.bytes <= 4 * WAL_CHECKPOINT_BYTES && !wal.force_sync {
            self.apply_logged(ops, st, &mut wal)
        } else {
            self.apply_direct(ops, st, &mut wal)
        }
    }

    /// Small writes only: their records go to the active log generation, one append for the batch.
    fn apply_logged(
        &self,
        ops: &[Op],
        st: &mut Batch,
        wal: &mut WalState,
    ) -> Result<Vec<Result<Done, ObjError>>, ObjError> {
        if let Some(c) = wal.done.take() {
            self.finish_checkpoint(wal, c)?;
        }
        st.logged = true;
        st.seq = wal.seq;
        let results: Vec<_> = ops.iter().map(|op| self.apply_op(st, op)).collect();
        if !st.log.is_empty() {
            let active = wal.active;
            if let Err(e) = wal.logs[active].append(&st.log) {
                tracing::error!(error = %e, "cannot append to the write-ahead log; refusing writes until restarted");
                wal.broken = Some(e.to_string());
                return Err(e.into());
            }
            wal.seq = st.seq;
            wal.bytes += st.log.len() as u64;
        }
        for (k, f) in &st.touched {
            wal.lazy.insert(k.clone(), f.clone());
        }
        wal.dirs.extend(st.dirs.iter().cloned());
        Ok(results)
    }

    /// Commits a finished background checkpoint: the dirty metadata and the `applied` mark, after
    /// which the checkpointed generation is reused.
    fn finish_checkpoint(&self, wal: &mut WalState, c: Checkpointed) -> Result<(), ObjError> {
        let dirty = lock(&self.metas).dirty();
        let commit = || -> Result<(), ObjError> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::Immediate);
            put_metas(&tx, dirty.iter().map(|(k, m)| (k, &**m)))?;
            set_applied(&tx, c.seq)?;
            tx.commit()?;
            Ok(())
        };
        if let Err(e) = commit() {
            // The generation cannot be reused yet; the next batch checkpoints synchronously.
            wal.force_sync = true;
            return Err(e);
        }
        lock(&self.metas).mark_clean(&dirty);
        wal.logs[c.gen].rewind();
        Ok(())
    }

    /// Anything but a batch of small writes: a synchronous checkpoint (every logged write's file
    /// synced, the dirty metadata committed), then each op with data-then-metadata durability, in
    /// the same redb transaction.
    fn apply_direct(
        &self,
        ops: &[Op],
        st: &mut Batch,
        wal: &mut WalState,
    ) -> Result<Vec<Result<Done, ObjError>>, ObjError> {
        for f in wal.lazy.values().chain(wal.syncing.iter()) {
            f.sync_data()?;
        }
        for d in wal.dirs.iter().chain(wal.syncing_dirs.iter()) {
            sync_dir(d)?;
        }
        let dirty = lock(&self.metas).dirty();
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate);
        let results: Vec<_> = ops.iter().map(|op| self.apply_op(st, op)).collect();
        // The cache's dirty entries first: this batch's own changes to the same objects win.
        let changed = st
            .dirty
            .iter()
            .filter_map(|k| Some((k, st.working.get(k)?.as_ref()?)));
        put_metas(&tx, dirty.iter().map(|(k, m)| (k, &**m)).chain(changed))?;
        {
            let mut table = tx.open_table(OBJECTS)?;
            let mut info = tx.open_table(OBJECT_INFO)?;
            for key in st
                .dirty
                .iter()
                .filter(|k| matches!(st.working.get(*k), Some(None)))
            {
                let k = encode_key(key);
                table.remove(k.as_slice())?;
                info.remove(k.as_slice())?;
            }
        }
        set_applied(&tx, wal.seq)?;
        for f in st.touched.values() {
            f.sync_data()?;
        }
        for d in &st.dirs {
            sync_dir(d)?;
        }
        tx.commit()?;
        lock(&self.metas).mark_clean(&dirty);
        for log in &mut wal.logs {
            log.rewind();
        }
        wal.epoch += 1;
        wal.done = None;
        wal.lazy.clear();
        wal.dirs.clear();
        wal.bytes = 0;
        wal.force_sync = false;
        wal.last_checkpoint = std::time::Instant::now();
        Ok(results)
    }

    /// After the commit: make the batch visible in the index and the metadata cache, and unlink
    /// removed objects' files.
    fn publish(&self, st: Batch) {
        {
            let mut idx = write_lock(&self.index);
            for key in &st.dirty {
                match st.working.get(key) {
                    Some(Some(m)) => idx.insert(key.clone(), m.info()),
                    _ => idx.remove(key),
                }
            }
        }
        {
            let mut metas = lock(&self.metas);
            let mut working = st.working;
            for key in &st.dirty {
                match working.remove(key).flatten() {
                    Some(m) => metas.insert(key.clone(), Arc::new(m), st.logged),
                    None => metas.remove(key),
                }
            }
            metas.evict();
        }
        for key in &st.unlink {
            lock(&self.files).remove(key);
            match fs::remove_file(self.path(key)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The removal is committed; the orphan file is deleted at the next open.
                Err(e) => {
                    tracing::warn!(object = %key.name(), error = %e, "cannot unlink removed object")
                }
            }
        }
    }

    fn apply_op(&self, st: &mut Batch, op: &Op) -> Result<Done, ObjError> {
        match op {
            Op::Write(w) => self.apply_write(st, w).map(Done::Write),
            Op::Import(key, img) => self.apply_import(st, key, img).map(|()| Done::Unit),
            Op::Remove(key) => {
                st.put(key, None);
                st.unlink.insert(key.clone());
                Ok(Done::Unit)
            }
            Op::RemoveImage(pool, image) => {
                let lo = ObjectKey {
                    pool: *pool,
                    image: image.clone(),
                    objno: 0,
                };
                let hi = ObjectKey {
                    objno: u64::MAX,
                    ..lo.clone()
                };
                let mut keys: BTreeSet<ObjectKey> = read_lock(&self.index)
                    .map
                    .range(lo..=hi)
                    .map(|(k, _)| k.clone())
                    .collect();
                keys.extend(
                    st.working
                        .keys()
                        .filter(|k| k.pool == *pool && k.image == *image)
                        .cloned(),
                );
                let mut removed = 0;
                for key in keys {
                    if self.working_meta(st, &key)?.is_some() {
                        removed += 1;
                    }
                    st.put(&key, None);
                    st.unlink.insert(key);
                }
                Ok(Done::Count(removed))
            }
        }
    }

    fn apply_write(&self, st: &mut Batch, w: &WriteOp) -> Result<WriteOutcome, ObjError> {
        let cur = self.working_meta(st, &w.key)?;
        let have = cur.as_ref().map_or(0, |m| m.version);
        if have != w.expect {
            return Ok(if have == w.new {
                WriteOutcome::AlreadyApplied
            } else if have < w.expect {
                WriteOutcome::Stale { have }
            } else {
                WriteOutcome::Conflict { have }
            });
        }
        let mut meta = cur.unwrap_or_default();
        let old_len = meta.crcs.len();
        let plan = self.plan(&w.key, &meta, w.offset, &w.m)?;
        let payload = match &w.m {
            Mutation::Data(d) => Some(d),
            _ => None,
        };
        self.write_chunks(st, &w.key, &plan, payload)?;
        for (c, chunk) in &plan {
            meta.set(*c, chunk.crc());
        }
        meta.trim_tail();
        meta.version = w.new;
        if meta.crcs.len() < old_len {
            self.truncate(st, &w.key, meta.crcs.len() as u64)?;
        }
        if st.logged {
            st.seq += 1;
            wal::frame(&mut st.log, st.seq, |out| {
                encode_record(out, &w.key, w.new, &plan)
            });
        }
        st.put(&w.key, Some(meta));
        Ok(WriteOutcome::Applied)
    }

    fn apply_import(
        &self,
        st: &mut Batch,
        key: &ObjectKey,
        img: &ObjectImage,
    ) -> Result<(), ObjError> {
        if img.version == 0 && img.chunks.is_empty() {
            // What a replica without the object exports: make this one match, i.e. remove it.
            st.put(key, None);
            st.unlink.insert(key.clone());
            return Ok(());
        }
        // Later duplicates win, as if the chunks were written in order.
        let chunks: BTreeMap<u64, &Bytes> = img.chunks.iter().map(|(i, b)| (*i, b)).collect();
        let plan: Vec<(u64, Chunk)> = chunks
            .into_iter()
            .map(|(i, b)| (i, Chunk::new(b.clone(), None)))
            .collect();
        self.write_chunks(st, key, &plan, None)?;
        let mut meta = ObjMeta {
            version: img.version,
            crcs: Vec::new(),
        };
        for (c, chunk) in &plan {
            meta.set(*c, chunk.crc());
        }
        meta.trim_tail();
        self.truncate(st, key, meta.crcs.len() as u64)?;
        st.put(key, Some(meta));
        Ok(())
    }

    /// The new content of every chunk the mutation touches. Partial chunks start from their
    /// current (verified) content; nothing is written yet.
    fn plan(
        &self,
        key: &ObjectKey,
        meta: &ObjMeta,
        offset: u64,
        m: &Mutation,
    ) -> Result<Vec<(u64, Chunk)>, ObjError> {
        let len = m.span();
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset + len;
        let (c0, c1) = (offset / CS, end.div_ceil(CS));
        let mut out = Vec::with_capacity((c1 - c0) as usize);
        for c in c0..c1 {
            let (cs, ce) = (c * CS, (c + 1) * CS);
            let (lo, hi) = (offset.max(cs), end.min(ce));
            let src = (lo - offset) as usize..(hi - offset) as usize;
            let chunk = if lo == cs && hi == ce {
                match m {
                    Mutation::Data(d) => Chunk::new(d.slice(src.clone()), Some(src.start)),
                    Mutation::Zero(_) | Mutation::Trim(_) => Chunk::Hole,
                }
            } else {
                let (mut base, bad) = self.read_chunks(key, meta, c, c + 1)?;
                if !bad.is_empty() {
                    return Err(ObjError::Corrupt {
                        key: key.clone(),
                        chunk: c,
                    });
                }
                let dst = (lo - cs) as usize..(hi - cs) as usize;
                match m {
                    Mutation::Data(d) => base[dst].copy_from_slice(&d[src]),
                    Mutation::Zero(_) | Mutation::Trim(_) => base[dst].fill(0),
                }
                Chunk::new(Bytes::from(base), None)
            };
            out.push((c, chunk));
        }
        Ok(out)
    }

    /// `pwrite`s the data chunks of a plan: runs of chunks adjacent in the object and in the
    /// payload go out as one slice of it, other runs are gathered into one buffer.
    fn write_chunks(
        &self,
        st: &mut Batch,
        key: &ObjectKey,
        plan: &[(u64, Chunk)],
        payload: Option<&Bytes>,
    ) -> Result<(), ObjError> {
        let data: Vec<(u64, &Bytes, Option<usize>)> = plan
            .iter()
            .filter_map(|(c, ch)| match ch {
                Chunk::Hole => None,
                Chunk::Data { bytes, src, .. } => Some((*c, bytes, *src)),
            })
            .collect();
        if data.is_empty() {
            return Ok(());
        }
        let file = self.file_for_write(st, key)?;
        let mut i = 0;
        while i < data.len() {
            let (c, bytes, src) = data[i];
            let mut j = i + 1;
            while j < data.len() {
                let step = (j - i) as u64;
                let joins = data[j].0 == c + step
                    && match (src, data[j].2) {
                        (Some(a), Some(b)) => b == a + step as usize * CHUNK_SIZE,
                        (None, None) => true,
                        _ => false,
                    };
                if !joins {
                    break;
                }
                j += 1;
            }
            let pos = c * CS;
            let run: Bytes = match (j - i, src, payload) {
                (1, _, _) => (*bytes).clone(),
                (n, Some(a), Some(p)) => p.slice(a..a + n * CHUNK_SIZE),
                (n, _, _) => {
                    let mut buf = Vec::with_capacity(n * CHUNK_SIZE);
                    for (_, b, _) in &data[i..j] {
                        buf.extend_from_slice(b);
                    }
                    Bytes::from(buf)
                }
            };
            file.write_all_at(&run, pos)?;
            i = j;
        }
        Ok(())
    }

    /// The object's file for writing, created (with its pool directory) if needed. A file created
    /// here gets its directory synced before the commit, or the entry could vanish in a crash.
    fn file_for_write(&self, st: &mut Batch, key: &ObjectKey) -> Result<Arc<File>, ObjError> {
        // Written again after a removal in this batch: keep the file instead of unlinking it after
        // the commit, but empty it (stale bytes under holes are never read; this frees them).
        let recreated = st.unlink.remove(key);
        let f = match st.touched.get(key) {
            Some(f) => f.clone(),
            None => match self.open_existing(key)? {
                Some(f) => f,
                None => {
                    let path = self.path(key);
                    let pool_dir = self.objects_dir.join(key.pool.to_string());
                    let open = || {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(&path)
                    };
                    let f = match open() {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            fs::create_dir_all(&pool_dir)?;
                            st.dirs.insert(self.objects_dir.clone());
                            open()?
                        }
                        r => r?,
                    };
                    st.dirs.insert(pool_dir);
                    let f = Arc::new(f);
                    lock(&self.files).insert(key.clone(), f.clone());
                    f
                }
            },
        };
        if recreated {
            f.set_len(0)?;
        }
        st.touched.insert(key.clone(), f.clone());
        Ok(f)
    }

    /// Gives back the space of trailing holes.
    fn truncate(&self, st: &mut Batch, key: &ObjectKey, keep_chunks: u64) -> Result<(), ObjError> {
        let f = match st.touched.get(key) {
            Some(f) => Some(f.clone()),
            None => self.open_existing(key)?,
        };
        let Some(f) = f else { return Ok(()) };
        let keep = keep_chunks * CS;
        if f.metadata()?.len() > keep {
            f.set_len(keep)?;
            st.touched.insert(key.clone(), f);
        }
        Ok(())
    }
}

fn writer_loop(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Req>) {
    let mut carry: Option<Req> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.blocking_recv() {
                Some(r) => r,
                None => return,
            },
        };
        let mut bytes = first.op.payload();
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX_OPS {
            let Ok(r) = rx.try_recv() else { break };
            let b = r.op.payload();
            if bytes + b > BATCH_MAX_BYTES {
                carry = Some(r);
                break;
            }
            bytes += b;
            batch.push(r);
        }
        inner.commit_batch(batch);
    }
}

/// Writes metadata rows (`objects` and `object_info`) in `tx`.
fn put_metas<'a>(
    tx: &redb::WriteTransaction,
    metas: impl IntoIterator<Item = (&'a ObjectKey, &'a ObjMeta)>,
) -> Result<(), ObjError> {
    let mut table = tx.open_table(OBJECTS)?;
    let mut info = tx.open_table(OBJECT_INFO)?;
    for (key, m) in metas {
        let k = encode_key(key);
        table.insert(k.as_slice(), m.encode().as_slice())?;
        info.insert(k.as_slice(), encode_info(&m.info()).as_slice())?;
    }
    Ok(())
}

/// Records the log's `applied` mark in `tx`.
fn set_applied(tx: &redb::WriteTransaction, seq: u64) -> Result<(), ObjError> {
    tx.open_table(WAL_STATE)?.insert(APPLIED, seq)?;
    Ok(())
}

fn applied_mark(db: &Database) -> Result<u64, ObjError> {
    let tx = db.begin_read()?;
    let t = tx.open_table(WAL_STATE)?;
    let v = t.get(APPLIED)?.map_or(0, |v| v.value());
    Ok(v)
}

/// An object file for replay, created (with its pool directory) if missing.
fn replay_file<'f>(
    files: &'f mut HashMap<ObjectKey, File>,
    objects_dir: &Path,
    key: &ObjectKey,
) -> Result<&'f File, ObjError> {
    if !files.contains_key(key) {
        let pool_dir = objects_dir.join(key.pool.to_string());
        fs::create_dir_all(&pool_dir)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(pool_dir.join(key.name()))?;
        files.insert(key.clone(), f);
    }
    Ok(&files[key])
}

fn sync_replayed(files: &HashMap<ObjectKey, File>, objects_dir: &Path) -> Result<(), ObjError> {
    for f in files.values() {
        f.sync_data()?;
    }
    let pools: HashSet<u32> = files.keys().map(|k| k.pool).collect();
    for p in pools {
        sync_dir(&objects_dir.join(p.to_string()))?;
    }
    sync_dir(objects_dir)?;
    Ok(())
}

/// Re-applies the records of the redb write-ahead tables of a store written before the log moved
/// to files (data bytes at absolute offsets, their metadata already committed beside them), in
/// sequence order, syncs the files and drops the tables.
fn replay_legacy_tables(db: &Database, objects_dir: &Path) -> Result<(), ObjError> {
    let mut files: HashMap<ObjectKey, File> = HashMap::new();
    let mut n = 0u64;
    {
        let tx = db.begin_read()?;
        let open = |t| match tx.open_table(t) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(ObjError::from(e)),
        };
        let (t0, t1) = (open(LEGACY_WAL[0])?, open(LEGACY_WAL[1])?);
        if t0.is_none() && t1.is_none() {
            return Ok(());
        }
        let (i0, i1) = (
            t0.as_ref().map(|t| t.iter()).transpose()?,
            t1.as_ref().map(|t| t.iter()).transpose()?,
        );
        // Sequence numbers are global across both generations: replay in their order.
        let (mut a, mut b) = (
            i0.into_iter().flatten().peekable(),
            i1.into_iter().flatten().peekable(),
        );
        loop {
            let seq = |r: Option<&Result<(redb::AccessGuard<u64>, _), redb::StorageError>>| {
                r.map(|r| r.as_ref().map_or(0, |(k, _)| k.value()))
            };
            let row = match (seq(a.peek()), seq(b.peek())) {
                (None, None) => break,
                (Some(x), Some(y)) if y < x => b.next(),
                (Some(_), _) => a.next(),
                (None, Some(_)) => b.next(),
            };
            let Some(row) = row else { break };
            let (_, v) = row?;
            let (key, pos, data) = decode_wal(v.value())
                .ok_or_else(|| ObjError::Db("undecodable write-ahead record".into()))?;
            replay_file(&mut files, objects_dir, &key)?.write_all_at(data, pos)?;
            n += 1;
        }
    }
    sync_replayed(&files, objects_dir)?;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate);
    for t in LEGACY_WAL {
        tx.delete_table(t)?;
    }
    tx.commit()?;
    tracing::info!(
        records = n,
        objects = files.len(),
        "replayed the object store's legacy write-ahead tables"
    );
    Ok(())
}

/// Re-applies the log records after the `applied` mark — to the object files and to the
/// metadata — in sequence order across both generations, syncs the files, commits the metadata
/// with the new mark, and empties both log files. Returns the last sequence number in use.
fn replay_log(db: &Database, dir: &Path, objects_dir: &Path) -> Result<u64, ObjError> {
    let applied = applied_mark(db)?;
    let paths = WAL_FILES.map(|f| dir.join(f));
    // First pass: each generation's chain, to order them (a generation holds one contiguous run
    // of sequence numbers; the older one is replayed first).
    let mut chains = Vec::new();
    for p in &paths {
        if let Some(range) = wal::scan::<ObjError>(p, applied, |_, _| Ok(()))? {
            chains.push((range, p));
        }
    }
    chains.sort_by_key(|((first, _), _)| *first);
    let mut expect = applied + 1;
    for ((first, last), p) in &chains {
        if *first != expect {
            return Err(ObjError::Db(format!(
                "write-ahead log {} starts at record {first}, expected {expect}: records are missing; refusing to replay over a gap (restore this replica from its peers)",
                p.display()
            )));
        }
        expect = last + 1;
    }
    let mut metas: HashMap<ObjectKey, ObjMeta> = HashMap::new();
    let mut files: HashMap<ObjectKey, File> = HashMap::new();
    let mut n = 0u64;
    {
        let tx = db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        for (_, p) in &chains {
            wal::scan::<ObjError>(p, applied, |_, payload| {
                let r = decode_record(payload)
                    .ok_or_else(|| ObjError::Db("undecodable write-ahead record".into()))?;
                let meta = match metas.entry(r.key.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(match table.get(encode_key(&r.key).as_slice())? {
                            Some(v) => ObjMeta::decode(v.value())?,
                            None => ObjMeta::default(),
                        })
                    }
                };
                // decode_record checked one data chunk per data flag.
                let mut data = r.data.chunks_exact(CHUNK_SIZE);
                for (i, &flag) in r.flags.iter().enumerate() {
                    let c = r.first + i as u64;
                    match (flag == 1).then(|| data.next()).flatten() {
                        Some(chunk) => {
                            replay_file(&mut files, objects_dir, &r.key)?
                                .write_all_at(chunk, c * CS)?;
                            meta.set(c, Some(crc32c::crc32c(chunk)));
                        }
                        None => meta.set(c, None),
                    }
                }
                meta.trim_tail();
                meta.version = r.version;
                n += 1;
                Ok(())
            })?;
        }
    }
    let last = expect - 1;
    if n > 0 {
        sync_replayed(&files, objects_dir)?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate);
        put_metas(&tx, &metas)?;
        set_applied(&tx, last)?;
        tx.commit()?;
        tracing::info!(
            records = n,
            objects = metas.len(),
            last,
            "replayed the object store's write-ahead log"
        );
    }
    // Nothing in the files is needed any more; empty them so no leftover (say, a frame a torn
    // write left valid behind an invalid one) can ever join a later chain.
    for p in &paths {
        wal::LogFile::open(p)?.clear()?;
    }
    Ok(last)
}

/// Deletes object files without metadata: left by a crash between a removal's commit and its
/// unlink, or by a batch whose commit failed.
fn sweep_orphans(objects_dir: &Path, index: &Index) -> Result<(), ObjError> {
    for pool in fs::read_dir(objects_dir)? {
        let pool = pool?;
        let Some(pool_no) = pool
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if !pool.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(pool.path())? {
            let f = f?;
            let Some(key) = f
                .file_name()
                .to_str()
                .and_then(|n| parse_object_file(pool_no, n))
            else {
                continue;
            };
            if !index.map.contains_key(&key) {
                tracing::info!(pool = pool_no, object = %key.name(), "deleting orphan object file");
                fs::remove_file(f.path())?;
            }
        }
    }
    Ok(())
}

fn stopped() -> ObjError {
    ObjError::Io("the object store writer has stopped".into())
}

async fn recv(
    rx: Result<oneshot::Receiver<Result<Done, ObjError>>, ObjError>,
) -> Result<Done, ObjError> {
    rx?.await.map_err(|_| stopped())?
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ObjError> + Send + 'static,
) -> Result<T, ObjError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ObjError::Io(format!("blocking task failed: {e}")))?
}

// ---- public API -------------------------------------------------------------------------------

/// This node's object replicas. `Send + Sync`; share it with an `Arc`. Dropping it waits for the
/// queued mutations to commit and closes the database.
pub struct ObjStore {
    inner: Arc<Inner>,
    tx: Option<mpsc::UnboundedSender<Req>>,
    writer: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ObjStore {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        lock(&self.inner.wal).stop = true;
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
    }
}

impl ObjStore {
    /// Opens (creating if needed) the store under `dir`. `max_object_size` must be a multiple of
    /// [`CHUNK_SIZE`]; every offset + length is checked against it.
    pub fn open(dir: &Path, max_object_size: u64) -> Result<Self, ObjError> {
        if max_object_size == 0
            || max_object_size & (CS - 1) != 0
            || max_object_size > MAX_OBJECT_SIZE_LIMIT
        {
            return Err(ObjError::Invalid(format!(
                "max object size {max_object_size} must be a non-zero multiple of {CHUNK_SIZE} up to {MAX_OBJECT_SIZE_LIMIT}"
            )));
        }
        let objects_dir = dir.join("objects");
        fs::create_dir_all(&objects_dir)?;
        sync_dir(dir)?;
        let db = Database::create(dir.join("objects.redb"))?;
        {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate);
            tx.open_table(OBJECTS)?;
            tx.open_table(OBJECT_INFO)?;
            tx.open_table(WAL_STATE)?;
            tx.commit()?;
        }
        replay_legacy_tables(&db, &objects_dir)?;
        let seq = replay_log(&db, dir, &objects_dir)?;
        let logs = [
            wal::LogFile::open(&dir.join(WAL_FILES[0]))?,
            wal::LogFile::open(&dir.join(WAL_FILES[1]))?,
        ];
        // The log files' directory entries must be durable before any record in them counts.
        sync_dir(dir)?;
        let mut index = Index::default();
        {
            let tx = db.begin_read()?;
            let t = tx.open_table(OBJECT_INFO)?;
            for row in t.iter()? {
                let (k, v) = row?;
                let key = decode_key(k.value())
                    .ok_or_else(|| ObjError::Db("undecodable object key".into()))?;
                index.insert(key, decode_info(v.value())?);
            }
        }
        sweep_orphans(&objects_dir, &index)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            objects_dir,
            db,
            max_object_size,
            index: RwLock::new(index),
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            files: Mutex::new(FileCache::default()),
            metas: Mutex::new(MetaCache::default()),
            batches: AtomicU64::new(0),
            wal: Mutex::new(WalState {
                logs,
                active: 0,
                seq,
                bytes: 0,
                lazy: HashMap::new(),
                dirs: HashSet::new(),
                last_checkpoint: std::time::Instant::now(),
                syncing: Vec::new(),
                syncing_dirs: HashSet::new(),
                epoch: 0,
                done: None,
                force_sync: false,
                broken: None,
                stop: false,
            }),
        });
        let checkpointer = {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("objstore-checkpoint".into())
                .spawn(move || checkpointer(weak))
                .map_err(|e| ObjError::Io(format!("cannot start the checkpoint thread: {e}")))?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("objstore-writer".into())
            .spawn(move || writer_loop(w, rx))?;
        Ok(Self {
            inner,
            tx: Some(tx),
            writer: Some(writer),
            checkpointer: Some(checkpointer),
        })
    }

    fn submit(&self, op: Op) -> oneshot::Receiver<Result<Done, ObjError>> {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // If the writer is gone the request (and its reply sender) is dropped: `stopped()`.
            let _ = tx.send(Req { op, reply });
        }
        rx
    }

    /// Compare-and-set write, group-committed: durable when the future returns `Ok`. The write is
    /// queued when this is *called*, so writes to one object apply in call order.
    pub fn write(
        &self,
        op: WriteOp,
    ) -> impl Future<Output = Result<WriteOutcome, ObjError>> + Send + 'static {
        let rx = self
            .validate_write(&op)
            .map(|()| self.submit(Op::Write(op)));
        async move {
            match recv(rx).await? {
                Done::Write(o) => Ok(o),
                _ => Err(ObjError::Io("unexpected writer reply".into())),
            }
        }
    }

    fn validate_write(&self, op: &WriteOp) -> Result<(), ObjError> {
        check_image(&op.key.image)?;
        if op.new <= op.expect {
            return Err(ObjError::Invalid(format!(
                "new version {} must be greater than expected version {}",
                op.new, op.expect
            )));
        }
        self.inner.check_range(op.offset, op.m.span())
    }

    /// Reads `len` bytes at `offset`, verifying every chunk touched. A missing object reads as
    /// version 0 and zeros.
    pub async fn read(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<(u64, Bytes), ObjError> {
        check_image(&key.image)?;
        self.inner.check_range(offset, len)?;
        let (inner, key) = (self.inner.clone(), key.clone());
        blocking(move || inner.read_range(&key, offset, len)).await
    }

    pub fn info(&self, key: &ObjectKey) -> Option<ObjInfo> {
        read_lock(&self.inner.index).map.get(key).copied()
    }

    /// The object's version; 0 when it does not exist.
    pub fn version(&self, key: &ObjectKey) -> u64 {
        self.info(key).map_or(0, |i| i.version)
    }

    /// The objects of `pool`, sorted by key.
    pub fn list(&self, pool: u32) -> Vec<(ObjectKey, ObjInfo)> {
        let start = ObjectKey {
            pool,
            image: String::new(),
            objno: 0,
        };
        read_lock(&self.inner.index)
            .map
            .range(start..)
            .take_while(|(k, _)| k.pool == pool)
            .map(|(k, i)| (k.clone(), *i))
            .collect()
    }

    /// Every object, sorted by key.
    pub fn list_all(&self) -> Vec<(ObjectKey, ObjInfo)> {
        read_lock(&self.inner.index)
            .map
            .iter()
            .map(|(k, i)| (k.clone(), *i))
            .collect()
    }

    /// The object's verified sparse content; a missing object is version 0 without chunks.
    pub async fn export(&self, key: &ObjectKey) -> Result<ObjectImage, ObjError> {
        check_image(&key.image)?;
        let (inner, key) = (self.inner.clone(), key.clone());
        blocking(move || {
            let Some((meta, buf)) = inner.read_verified(&key)? else {
                return Ok(ObjectImage::default());
            };
            let chunks = meta
                .present()
                .map(|c| {
                    let off = (c * CS) as usize;
                    (c, buf.slice(off..off + CHUNK_SIZE))
                })
                .collect();
            Ok(ObjectImage {
                version: meta.version,
                chunks,
            })
        })
        .await
    }

    /// Replaces the object with `img` (chunks not in it become holes), durably, ordered with
    /// writes. An empty image at version 0 (what a replica without the object exports) removes it.
    pub fn import(
        &self,
        key: &ObjectKey,
        img: ObjectImage,
    ) -> impl Future<Output = Result<(), ObjError>> + Send + 'static {
        let rx = self
            .validate_import(key, &img)
            .map(|()| self.submit(Op::Import(key.clone(), img)));
        async move { recv(rx).await.map(|_| ()) }
    }

    fn validate_import(&self, key: &ObjectKey, img: &ObjectImage) -> Result<(), ObjError> {
        check_image(&key.image)?;
        let max_chunks = self.inner.max_object_size / CS;
        for (c, data) in &img.chunks {
            if *c >= max_chunks || data.len() != CHUNK_SIZE {
                return Err(ObjError::Invalid(format!(
                    "image chunk {c} of {} bytes: chunks must be {CHUNK_SIZE} bytes below chunk {max_chunks}",
                    data.len()
                )));
            }
        }
        Ok(())
    }

    /// Removes the object's data and metadata, durably. Removing a missing object is fine.
    pub fn remove(
        &self,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<(), ObjError>> + Send + 'static {
        let rx = check_image(&key.image).map(|()| self.submit(Op::Remove(key.clone())));
        async move { recv(rx).await.map(|_| ()) }
    }

    /// Removes every object of one image; returns how many existed.
    pub fn remove_image(
        &self,
        pool: u32,
        image: &str,
    ) -> impl Future<Output = Result<u64, ObjError>> + Send + 'static {
        let rx = check_image(image).map(|()| self.submit(Op::RemoveImage(pool, image.to_string())));
        async move {
            match recv(rx).await? {
                Done::Count(n) => Ok(n),
                _ => Err(ObjError::Io("unexpected writer reply".into())),
            }
        }
    }

    /// Reads every data chunk and returns the ones whose CRC fails (empty for a healthy or missing
    /// object).
    pub async fn scrub(&self, key: &ObjectKey) -> Result<Vec<u64>, ObjError> {
        check_image(&key.image)?;
        let (inner, key) = (self.inner.clone(), key.clone());
        blocking(move || {
            Ok(inner
                .read_whole(&key)?
                .map(|(_, _, bad)| bad)
                .unwrap_or_default())
        })
        .await
    }

    /// SHA-256 over `chunk index (u64 LE) ‖ data` of every non-zero chunk, ascending: equal for
    /// replicas with equal content however their zeros got there. `Corrupt` if a chunk fails.
    pub async fn digest(&self, key: &ObjectKey) -> Result<(u64, [u8; 32]), ObjError> {
        check_image(&key.image)?;
        let (inner, key) = (self.inner.clone(), key.clone());
        blocking(move || {
            let mut h = Sha256::new();
            let Some((meta, buf)) = inner.read_verified(&key)? else {
                return Ok((0, h.finalize().into()));
            };
            for c in meta.present() {
                let off = (c * CS) as usize;
                let data = &buf[off..off + CHUNK_SIZE];
                if !is_zero(data) {
                    h.update(c.to_le_bytes());
                    h.update(data);
                }
            }
            Ok((meta.version, h.finalize().into()))
        })
        .await
    }

    pub fn stats(&self) -> StoreStats {
        let (objects, used_bytes) = {
            let idx = read_lock(&self.inner.index);
            (idx.map.len() as u64, idx.used)
        };
        StoreStats {
            objects,
            used_bytes,
            total_bytes: fs4::total_space(&self.inner.dir).unwrap_or(0),
            avail_bytes: fs4::available_space(&self.inner.dir).unwrap_or(0),
        }
    }

    /// Group commits so far (each one log append, or one fdatasync per touched file plus one redb
    /// commit).
    pub fn commits(&self) -> u64 {
        self.inner.batches.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u64 = 64 * 1024;

    fn key(image: &str, objno: u64) -> ObjectKey {
        ObjectKey {
            pool: 1,
            image: image.to_string(),
            objno,
        }
    }

    /// Non-zero bytes that differ by seed and position.
    fn pattern(seed: u8, len: usize) -> Bytes {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(31).wrapping_add(seed as u32) % 251) as u8 + 1)
            .collect::<Vec<u8>>()
            .into()
    }

    fn op(k: &ObjectKey, expect: u64, offset: u64, m: Mutation) -> WriteOp {
        WriteOp {
            key: k.clone(),
            expect,
            new: expect + 1,
            offset,
            m,
        }
    }

    async fn put(s: &ObjStore, k: &ObjectKey, expect: u64, offset: u64, m: Mutation) {
        assert_eq!(
            s.write(op(k, expect, offset, m)).await.unwrap(),
            WriteOutcome::Applied
        );
    }

    fn obj_path(dir: &Path, k: &ObjectKey) -> PathBuf {
        dir.join("objects").join(k.pool.to_string()).join(k.name())
    }

    /// Flips one byte of the object file in place, as disk rot or an operator would.
    fn corrupt(dir: &Path, k: &ObjectKey, pos: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(obj_path(dir, k))
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, pos).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, pos).unwrap();
    }

    #[test]
    fn meta_encoding_roundtrips() {
        let m = ObjMeta {
            version: 7,
            crcs: vec![
                Some(0),
                None,
                Some(u32::MAX),
                None,
                None,
                None,
                None,
                None,
                Some(5),
            ],
        };
        assert_eq!(ObjMeta::decode(&m.encode()).unwrap(), m);
        assert_eq!(
            ObjMeta::decode(&ObjMeta::default().encode()).unwrap(),
            ObjMeta::default()
        );
        assert!(ObjMeta::decode(&m.encode()[..10]).is_err());
        let k = key("img.with.dots", 0xabc);
        assert_eq!(decode_key(&encode_key(&k)), Some(k.clone()));
        assert_eq!(parse_object_file(1, &k.name()), Some(k));
    }

    /// Small writes are durable through the write-ahead table: even if their file data never
    /// reached the disk (simulated by emptying the file before reopening), reopening replays them.
    #[tokio::test]
    async fn logged_small_writes_survive_lost_file_data() {
        let d = tempfile::tempdir().unwrap();
        let k = key("wal", 0);
        let a = pattern(3, 4096);
        let b = pattern(4, 6000);
        {
            let s = ObjStore::open(d.path(), MAX).unwrap();
            put(&s, &k, 0, 8192, Mutation::Data(a.clone())).await;
            put(&s, &k, 1, 100, Mutation::Data(b.clone())).await;
        }
        OpenOptions::new()
            .write(true)
            .open(obj_path(d.path(), &k))
            .unwrap()
            .set_len(0)
            .unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let (v, got) = s.read(&k, 0, 12288).await.unwrap();
        assert_eq!(v, 2);
        let mut model = vec![0u8; 12288];
        model[8192..12288].copy_from_slice(&a);
        model[100..6100].copy_from_slice(&b);
        assert_eq!(&got[..], &model[..]);
        assert!(s.scrub(&k).await.unwrap().is_empty());
    }

    /// Rows of one legacy redb log table; a dropped table holds none.
    fn legacy_rows(db: &Database, g: usize) -> u64 {
        use redb::ReadableTableMetadata;
        match db.begin_read().unwrap().open_table(LEGACY_WAL[g]) {
            Ok(t) => t.len().unwrap(),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => panic!("{e}"),
        }
    }

    fn applied(db: &Database) -> u64 {
        applied_mark(db).unwrap()
    }

    /// A store written before the log moved to files: records in both redb generations, in
    /// interleaved sequence order, are replayed in that order at open and the tables dropped.
    #[tokio::test]
    async fn legacy_tables_are_replayed_in_sequence_order() {
        let d = tempfile::tempdir().unwrap();
        let k = key("gens", 0);
        let a = pattern(9, 4096);
        {
            // The metadata of a legacy store was committed beside its records: write it through
            // a store, then lose the file data and put the legacy records in.
            let s = ObjStore::open(d.path(), MAX).unwrap();
            put(&s, &k, 0, 0, Mutation::Data(a.clone())).await;
            s.import(&k, s.export(&k).await.unwrap()).await.unwrap();
        }
        fs::write(obj_path(d.path(), &k), b"").unwrap();
        {
            let db = Database::create(d.path().join("objects.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let (mut g0, mut g1) = (
                    tx.open_table(LEGACY_WAL[0]).unwrap(),
                    tx.open_table(LEGACY_WAL[1]).unwrap(),
                );
                // The first 8 bytes written four times; the last write is seq 4, in generation 0.
                g1.insert(1, encode_wal(&k, 0, &[1u8; 8]).as_slice())
                    .unwrap();
                g0.insert(2, encode_wal(&k, 0, &[2u8; 8]).as_slice())
                    .unwrap();
                g1.insert(3, encode_wal(&k, 0, &[3u8; 8]).as_slice())
                    .unwrap();
                g0.insert(4, encode_wal(&k, 0, &a[..8]).as_slice()).unwrap();
                g1.insert(5, encode_wal(&k, 8, &a[8..]).as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let s = ObjStore::open(d.path(), MAX).unwrap();
        assert_eq!(&s.read(&k, 0, 4096).await.unwrap().1[..], &a[..]);
        for g in 0..2 {
            assert_eq!(legacy_rows(&s.inner.db, g), 0, "replay drops the tables");
        }
    }

    /// Log files as a crash during a background checkpoint leaves them: generation 1 holds the
    /// older records, generation 0 the newer ones followed by leftovers; replay applies them in
    /// sequence order and restores data and metadata.
    #[tokio::test]
    async fn replay_orders_generations_and_rebuilds_metadata() {
        let d = tempfile::tempdir().unwrap();
        let k = key("gens", 0);
        let (a, b, c) = (pattern(1, 4096), pattern(2, 4096), pattern(3, 4096));
        let rec = |version: u64, first: u64, chunks: Vec<Chunk>| {
            let plan: Vec<(u64, Chunk)> = chunks
                .into_iter()
                .enumerate()
                .map(|(i, ch)| (first + i as u64, ch))
                .collect();
            let mut out = Vec::new();
            encode_record(&mut out, &k, version, &plan);
            move |o: &mut Vec<u8>| o.extend_from_slice(&out)
        };
        let (mut g0, mut g1) = (Vec::new(), Vec::new());
        wal::frame(&mut g1, 1, rec(1, 0, vec![Chunk::new(a.clone(), None)]));
        wal::frame(&mut g1, 2, rec(2, 1, vec![Chunk::new(a.clone(), None)]));
        wal::frame(
            &mut g0,
            3,
            rec(3, 0, vec![Chunk::new(b.clone(), None), Chunk::Hole]),
        );
        wal::frame(&mut g0, 4, rec(4, 2, vec![Chunk::new(c.clone(), None)]));
        // A leftover of an earlier use of generation 0 (older, so it ends the chain).
        wal::frame(&mut g0, 1, rec(9, 0, vec![Chunk::new(c.clone(), None)]));
        fs::write(d.path().join(WAL_FILES[0]), &g0).unwrap();
        fs::write(d.path().join(WAL_FILES[1]), &g1).unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let (v, got) = s.read(&k, 0, 3 * 4096).await.unwrap();
        assert_eq!(v, 4);
        assert_eq!(&got[..], [&b[..], &[0u8; 4096], &c[..]].concat().as_slice());
        assert_eq!(
            s.info(&k).unwrap().used_bytes,
            2 * 4096,
            "chunk 1 became a hole"
        );
        assert!(s.scrub(&k).await.unwrap().is_empty());
        assert_eq!(applied(&s.inner.db), 4);
        assert_eq!(
            lock(&s.inner.wal).seq,
            4,
            "numbering continues after the replay"
        );
        for f in WAL_FILES {
            assert_eq!(
                fs::metadata(d.path().join(f)).unwrap().len(),
                0,
                "replay empties {f}"
            );
        }
        // A gap (record 3 missing) is refused rather than replayed over.
        drop(s);
        let (mut g0, mut g1) = (Vec::new(), Vec::new());
        wal::frame(&mut g1, 5, rec(5, 0, vec![Chunk::new(a.clone(), None)]));
        wal::frame(&mut g0, 7, rec(6, 0, vec![Chunk::new(c.clone(), None)]));
        fs::write(d.path().join(WAL_FILES[0]), &g0).unwrap();
        fs::write(d.path().join(WAL_FILES[1]), &g1).unwrap();
        let err = ObjStore::open(d.path(), MAX).err().unwrap();
        assert!(err.to_string().contains("records are missing"), "{err}");
    }

    /// A background checkpoint flips the active generation; the writer's next batch commits the
    /// metadata with the `applied` mark and reuses the old generation from offset 0; writes after
    /// it are still durable through the new one.
    #[tokio::test]
    async fn checkpoint_commits_metadata_and_reuses_the_generation() {
        let d = tempfile::tempdir().unwrap();
        let k = key("flip", 0);
        let (a, b) = (pattern(7, 4096), pattern(8, 4096));
        {
            let s = ObjStore::open(d.path(), MAX).unwrap();
            put(&s, &k, 0, 0, Mutation::Data(a.clone())).await;
            assert_eq!(
                s.inner.load_meta(&k).unwrap(),
                None,
                "logged, not in redb yet"
            );
            assert_eq!(lock(&s.inner.metas).dirty, 1);
            lock(&s.inner.wal).last_checkpoint -= WAL_CHECKPOINT_AGE * 2;
            // Bounded wait for the checkpoint thread (it looks every 200 ms).
            let mut flipped = false;
            for _ in 0..100 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let w = lock(&s.inner.wal);
                if w.active == 1 && w.done == Some(Checkpointed { gen: 0, seq: 1 }) {
                    flipped = true;
                    break;
                }
            }
            assert!(flipped, "the checkpoint did not run within 5 s");
            put(&s, &k, 1, 4096, Mutation::Data(b.clone())).await;
            assert_eq!(applied(&s.inner.db), 1);
            assert_eq!(s.inner.load_meta(&k).unwrap().unwrap().version, 1);
            let w = lock(&s.inner.wal);
            assert_eq!((w.logs[0].head(), w.seq), (0, 2), "generation 0 is reused");
            assert!(w.logs[1].head() > 0, "the new write is in generation 1");
        }
        // Lose the second write's file data: replay restores it from generation 1.
        OpenOptions::new()
            .write(true)
            .open(obj_path(d.path(), &k))
            .unwrap()
            .set_len(4096)
            .unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let (v, got) = s.read(&k, 0, 8192).await.unwrap();
        assert_eq!(v, 2);
        assert_eq!(&got[..], [&a[..], &b[..]].concat().as_slice());
    }

    /// A big write checkpoints synchronously first: the logged writes' metadata reaches redb, the
    /// `applied` mark moves to the last record, and a replay has nothing older to re-apply.
    #[tokio::test]
    async fn big_write_checkpoints_the_log_first() {
        let d = tempfile::tempdir().unwrap();
        let (k1, k2) = (key("sync", 0), key("sync", 1));
        let small = pattern(5, 4096);
        let big = pattern(6, (WAL_MAX_OP + CS) as usize);
        {
            let s = ObjStore::open(d.path(), 2 * WAL_MAX_OP).unwrap();
            put(&s, &k1, 0, 0, Mutation::Data(small.clone())).await;
            put(&s, &k1, 1, 4096, Mutation::Data(small.clone())).await;
            put(&s, &k2, 0, 0, Mutation::Data(big.clone())).await;
            assert_eq!(applied(&s.inner.db), 2);
            assert_eq!(s.inner.load_meta(&k1).unwrap().unwrap().version, 2);
            assert_eq!(lock(&s.inner.metas).dirty, 0, "all of it committed");
            let heads = {
                let w = lock(&s.inner.wal);
                (w.logs[0].head(), w.logs[1].head())
            };
            assert_eq!(heads, (0, 0));
            put(&s, &k1, 2, 0, Mutation::Zero(4096)).await;
        }
        let s = ObjStore::open(d.path(), 2 * WAL_MAX_OP).unwrap();
        let (v, got) = s.read(&k1, 0, 8192).await.unwrap();
        assert_eq!(v, 3);
        assert_eq!(&got[..], [&[0u8; 4096][..], &small[..]].concat().as_slice());
        assert_eq!(
            &s.read(&k2, 0, big.len() as u64).await.unwrap().1[..],
            &big[..]
        );
    }

    #[tokio::test]
    async fn roundtrip_aligned_and_unaligned() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let k = key("rt", 0);
        let a = pattern(1, 8192);
        put(&s, &k, 0, 4096, Mutation::Data(a.clone())).await;
        assert_eq!(s.read(&k, 4096, 8192).await.unwrap(), (1, a.clone()));
        // Unaligned offset and length, spanning three chunks, over existing data and a hole.
        let b = pattern(2, 9000);
        put(&s, &k, 1, 1000, Mutation::Data(b.clone())).await;
        let mut model = vec![0u8; MAX as usize];
        model[4096..12288].copy_from_slice(&a);
        model[1000..10000].copy_from_slice(&b);
        let (v, got) = s.read(&k, 0, MAX).await.unwrap();
        assert_eq!(v, 2);
        assert_eq!(&got[..], &model[..]);
        let (_, part) = s.read(&k, 999, 3).await.unwrap();
        assert_eq!(&part[..], &model[999..1002]);
        let (_, tail) = s.read(&k, 10001, 4095).await.unwrap();
        assert_eq!(&tail[..], &model[10001..14096]);
        assert_eq!(s.read(&k, 5, 0).await.unwrap(), (2, Bytes::new()));
        assert_eq!(
            s.info(&k),
            Some(ObjInfo {
                version: 2,
                used_bytes: 3 * 4096
            })
        );
        assert_eq!(s.version(&k), 2);
    }

    #[tokio::test]
    async fn holes_read_as_zeros() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let k = key("holes", 3);
        assert_eq!(
            s.read(&k, 100, 5000).await.unwrap(),
            (0, Bytes::from(vec![0u8; 5000]))
        );
        assert_eq!(s.info(&k), None);
        put(&s, &k, 0, 8 * 4096, Mutation::Data(pattern(3, 4096))).await;
        let (v, got) = s.read(&k, 0, MAX).await.unwrap();
        assert_eq!(v, 1);
        assert!(got[..8 * 4096].iter().all(|&b| b == 0));
        assert_eq!(&got[8 * 4096..9 * 4096], &pattern(3, 4096)[..]);
        assert!(got[9 * 4096..].iter().all(|&b| b == 0));
        // Data that is all zeros is a hole too.
        put(&s, &k, 1, 0, Mutation::Data(Bytes::from(vec![0u8; 4096]))).await;
        assert_eq!(s.info(&k).unwrap().used_bytes, 4096);
        // The file is sparse and short: nothing was written past chunk 8.
        assert_eq!(
            fs::metadata(obj_path(d.path(), &k)).unwrap().len(),
            9 * 4096
        );
    }

    #[tokio::test]
    async fn zero_and_trim() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let k = key("zt", 0);
        let data = pattern(4, MAX as usize);
        put(&s, &k, 0, 0, Mutation::Data(data.clone())).await;
        let mut model = data.to_vec();
        // Partial chunks at both ends, whole chunks inside.
        put(&s, &k, 1, 100, Mutation::Zero(3 * 4096)).await;
        model[100..100 + 3 * 4096].fill(0);
        put(&s, &k, 2, 6 * 4096 + 7, Mutation::Trim(2 * 4096 + 9)).await;
        model[6 * 4096 + 7..8 * 4096 + 16].fill(0);
        assert_eq!(&s.read(&k, 0, MAX).await.unwrap().1[..], &model[..]);
        assert_eq!(s.info(&k).unwrap().used_bytes, (16 - 2 - 1) * 4096);
        // Trimming the tail gives the space back.
        put(&s, &k, 3, 10 * 4096, Mutation::Trim(6 * 4096)).await;
        model[10 * 4096..].fill(0);
        assert_eq!(
            fs::metadata(obj_path(d.path(), &k)).unwrap().len(),
            10 * 4096
        );
        assert_eq!(
            s.read(&k, 0, MAX).await.unwrap(),
            (4, Bytes::from(model.clone()))
        );
        put(&s, &k, 4, 0, Mutation::Trim(MAX)).await;
        assert_eq!(
            s.info(&k),
            Some(ObjInfo {
                version: 5,
                used_bytes: 0
            })
        );
        assert_eq!(fs::metadata(obj_path(d.path(), &k)).unwrap().len(), 0);
        assert_eq!(
            s.read(&k, 0, MAX).await.unwrap(),
            (5, Bytes::from(vec![0u8; MAX as usize]))
        );
    }

    #[tokio::test]
    async fn cas_outcomes() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let k = key("cas", 0);
        let w = |expect, new| WriteOp {
            key: k.clone(),
            expect,
            new,
            offset: 0,
            m: Mutation::Data(pattern(new as u8, 10)),
        };
        assert_eq!(s.write(w(0, 5)).await.unwrap(), WriteOutcome::Applied);
        assert_eq!(
            s.write(w(0, 5)).await.unwrap(),
            WriteOutcome::AlreadyApplied
        );
        assert_eq!(
            s.write(w(7, 8)).await.unwrap(),
            WriteOutcome::Stale { have: 5 }
        );
        assert_eq!(
            s.write(w(3, 4)).await.unwrap(),
            WriteOutcome::Conflict { have: 5 }
        );
        assert_eq!(
            s.write(w(3, 9)).await.unwrap(),
            WriteOutcome::Conflict { have: 5 }
        );
        // None of the refused writes changed anything.
        assert_eq!(s.read(&k, 0, 10).await.unwrap(), (5, pattern(5, 10)));
        assert_eq!(s.write(w(5, 6)).await.unwrap(), WriteOutcome::Applied);
        assert_eq!(s.read(&k, 0, 10).await.unwrap(), (6, pattern(6, 10)));
    }

    #[tokio::test]
    async fn invalid_requests() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let k = key("inv", 0);
        fn inv<T>(r: Result<T, ObjError>) -> bool {
            matches!(r, Err(ObjError::Invalid(_)))
        }
        assert!(inv(s
            .write(op(&k, 0, MAX - 10, Mutation::Data(pattern(1, 11))))
            .await));
        assert!(inv(s.write(op(&k, 0, MAX, Mutation::Zero(1))).await));
        assert!(inv(s.write(op(&k, 0, u64::MAX, Mutation::Trim(2))).await));
        assert!(inv(s.read(&k, MAX - 1, 2).await));
        assert!(inv(s.read(&k, MAX + 1, 0).await));
        let mut same = op(&k, 3, 0, Mutation::Zero(1));
        same.new = 3;
        assert!(inv(s.write(same).await));
        assert!(inv(s
            .write(op(&key("a/b", 0), 0, 0, Mutation::Zero(1)))
            .await));
        assert!(inv(s.read(&key("", 0), 0, 1).await));
        let bad_chunk = ObjectImage {
            version: 1,
            chunks: vec![(MAX / CS, pattern(1, CHUNK_SIZE))],
        };
        assert!(inv(s.import(&k, bad_chunk).await));
        let short = ObjectImage {
            version: 1,
            chunks: vec![(0, pattern(1, 100))],
        };
        assert!(inv(s.import(&k, short).await));
        assert!(ObjStore::open(d.path(), 1000).is_err());
        // The edge of the object is fine.
        put(&s, &k, 0, MAX - 10, Mutation::Data(pattern(1, 10))).await;
        assert_eq!(s.read(&k, MAX - 10, 10).await.unwrap(), (1, pattern(1, 10)));
        assert_eq!(s.info(&k).unwrap().version, 1);
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_versions() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (
            key("re", 0),
            ObjectKey {
                pool: 2,
                ..key("re", 1)
            },
        );
        {
            let s = ObjStore::open(d.path(), MAX).unwrap();
            put(&s, &a, 0, 123, Mutation::Data(pattern(5, 20000))).await;
            put(&s, &a, 1, 4096, Mutation::Trim(4096)).await;
            put(&s, &b, 0, 0, Mutation::Data(pattern(6, 4096))).await;
        }
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let mut model = vec![0u8; MAX as usize];
        model[123..20123].copy_from_slice(&pattern(5, 20000));
        model[4096..8192].fill(0);
        assert_eq!(s.read(&a, 0, MAX).await.unwrap(), (2, Bytes::from(model)));
        assert_eq!(s.read(&b, 0, 4096).await.unwrap(), (1, pattern(6, 4096)));
        assert_eq!(s.list(1), vec![(a.clone(), s.info(&a).unwrap())]);
        assert_eq!(s.list(2), vec![(b.clone(), s.info(&b).unwrap())]);
        assert_eq!(s.list_all().len(), 2);
        let st = s.stats();
        assert_eq!(st.objects, 2);
        assert_eq!(st.used_bytes, 5 * 4096);
        assert!(st.total_bytes >= st.avail_bytes && st.total_bytes > 0);
    }

    #[tokio::test]
    async fn corruption_is_detected_scrubbed_and_repaired() {
        let (good_dir, bad_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let good = ObjStore::open(good_dir.path(), MAX).unwrap();
        let bad = ObjStore::open(bad_dir.path(), MAX).unwrap();
        let k = key("rot", 9);
        let data = pattern(7, 3 * 4096);
        for s in [&good, &bad] {
            put(s, &k, 0, 0, Mutation::Data(data.clone())).await;
        }
        corrupt(bad_dir.path(), &k, 4096 + 17);
        fn is_corrupt<T>(r: Result<T, ObjError>, c: u64) -> bool {
            matches!(r, Err(ObjError::Corrupt { key, chunk }) if key.image == "rot" && key.objno == 9 && chunk == c)
        }
        assert!(is_corrupt(bad.read(&k, 4096 + 17, 1).await, 1));
        assert!(is_corrupt(bad.read(&k, 0, 3 * 4096).await, 1));
        assert_eq!(bad.read(&k, 0, 4096).await.unwrap().1, data.slice(..4096));
        assert_eq!(
            bad.read(&k, 8192, 4096).await.unwrap().1,
            data.slice(8192..)
        );
        assert_eq!(bad.scrub(&k).await.unwrap(), vec![1]);
        assert!(is_corrupt(bad.digest(&k).await, 1));
        assert!(is_corrupt(bad.export(&k).await, 1));
        // An unaligned write over the corrupt chunk refuses to bless it with a new CRC.
        assert!(is_corrupt(
            bad.write(op(&k, 1, 5000, Mutation::Data(pattern(1, 10))))
                .await,
            1
        ));
        assert!(is_corrupt(
            bad.write(op(&k, 1, 4097, Mutation::Zero(10))).await,
            1
        ));
        assert_eq!(bad.version(&k), 1);
        // Repair from the good replica.
        let img = good.export(&k).await.unwrap();
        bad.import(&k, img).await.unwrap();
        assert_eq!(bad.scrub(&k).await.unwrap(), Vec::<u64>::new());
        assert_eq!(bad.read(&k, 0, 3 * 4096).await.unwrap(), (1, data));
        assert_eq!(
            bad.digest(&k).await.unwrap(),
            good.digest(&k).await.unwrap()
        );
        // A whole-chunk overwrite of a corrupt chunk needs no read and also heals it.
        corrupt(bad_dir.path(), &k, 5);
        put(&bad, &k, 1, 0, Mutation::Data(pattern(8, 4096))).await;
        assert_eq!(bad.scrub(&k).await.unwrap(), Vec::<u64>::new());
        // A deleted file makes every data chunk corrupt — except what the write-ahead log still
        // holds (the last small write, chunk 0), which reopening replays.
        drop(bad);
        fs::remove_file(obj_path(bad_dir.path(), &k)).unwrap();
        let bad = ObjStore::open(bad_dir.path(), MAX).unwrap();
        assert_eq!(bad.scrub(&k).await.unwrap(), vec![1, 2]);
    }

    #[tokio::test]
    async fn digest_ignores_how_zeros_were_made() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let s: Vec<_> = dirs
            .iter()
            .map(|d| ObjStore::open(d.path(), MAX).unwrap())
            .collect();
        let k = key("dg", 0);
        for st in &s {
            put(st, &k, 0, 0, Mutation::Data(pattern(9, 4 * 4096))).await;
        }
        put(&s[0], &k, 1, 4096, Mutation::Trim(4096)).await;
        put(
            &s[1],
            &k,
            1,
            4096,
            Mutation::Data(Bytes::from(vec![0u8; 4096])),
        )
        .await;
        put(&s[2], &k, 1, 4096, Mutation::Zero(4096)).await;
        let d0 = s[0].digest(&k).await.unwrap();
        assert_eq!(d0.0, 2);
        assert_eq!(d0, s[1].digest(&k).await.unwrap());
        assert_eq!(d0, s[2].digest(&k).await.unwrap());
        put(&s[2], &k, 2, 3, Mutation::Data(Bytes::from_static(b"x"))).await;
        assert_ne!(d0.1, s[2].digest(&k).await.unwrap().1);
        // A missing object and an object of holes hash alike.
        let missing = s[0].digest(&key("none", 0)).await.unwrap();
        put(&s[0], &k, 2, 0, Mutation::Trim(MAX)).await;
        assert_eq!(s[0].digest(&k).await.unwrap(), (3, missing.1));
    }

    #[tokio::test]
    async fn export_import_roundtrip_replaces_object() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            ObjStore::open(d1.path(), MAX).unwrap(),
            ObjStore::open(d2.path(), MAX).unwrap(),
        );
        let k = key("ex", 4);
        put(&a, &k, 0, 4096, Mutation::Data(pattern(10, 2 * 4096))).await;
        put(&a, &k, 1, 9 * 4096 + 5, Mutation::Data(pattern(11, 3))).await;
        let img = a.export(&k).await.unwrap();
        assert_eq!(img.version, 2);
        assert_eq!(
            img.chunks.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![1, 2, 9]
        );
        assert!(img.chunks.iter().all(|c| c.1.len() == CHUNK_SIZE));
        // The target has other content, longer, at another version: all of it is replaced.
        put(&b, &k, 0, 0, Mutation::Data(pattern(12, MAX as usize))).await;
        put(&b, &k, 1, 0, Mutation::Zero(1)).await;
        put(&b, &k, 2, 0, Mutation::Zero(1)).await;
        b.import(&k, img.clone()).await.unwrap();
        assert_eq!(
            b.read(&k, 0, MAX).await.unwrap(),
            a.read(&k, 0, MAX).await.unwrap()
        );
        assert_eq!(b.info(&k), a.info(&k));
        assert_eq!(b.export(&k).await.unwrap(), img);
        assert_eq!(
            fs::metadata(obj_path(d2.path(), &k)).unwrap().len(),
            10 * 4096
        );
        // Writes continue from the imported version.
        assert_eq!(
            b.write(op(&k, 2, 0, Mutation::Zero(1))).await.unwrap(),
            WriteOutcome::Applied
        );
        // Importing what a replica without the object exports removes it.
        let none = a.export(&key("nothing", 0)).await.unwrap();
        assert_eq!(none, ObjectImage::default());
        b.import(&k, none).await.unwrap();
        assert_eq!(b.info(&k), None);
        assert!(!obj_path(d2.path(), &k).exists());
    }

    #[tokio::test]
    async fn remove_and_remove_image() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        for n in 0..5 {
            put(
                &s,
                &key("gone", n),
                0,
                0,
                Mutation::Data(pattern(n as u8, 100)),
            )
            .await;
        }
        let keep = key("gone2", 0);
        put(&s, &keep, 0, 0, Mutation::Data(pattern(1, 100))).await;
        let other_pool = ObjectKey {
            pool: 2,
            ..key("gone", 0)
        };
        put(&s, &other_pool, 0, 0, Mutation::Data(pattern(1, 100))).await;

        s.remove(&key("gone", 4)).await.unwrap();
        s.remove(&key("gone", 4)).await.unwrap();
        assert_eq!(s.info(&key("gone", 4)), None);
        assert!(!obj_path(d.path(), &key("gone", 4)).exists());
        assert_eq!(
            s.read(&key("gone", 4), 0, 100).await.unwrap(),
            (0, Bytes::from(vec![0u8; 100]))
        );
        assert_eq!(s.remove_image(1, "gone").await.unwrap(), 4);
        assert_eq!(s.remove_image(1, "gone").await.unwrap(), 0);
        for n in 0..5 {
            assert!(!obj_path(d.path(), &key("gone", n)).exists());
        }
        assert_eq!(
            s.list_all().into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            vec![keep.clone(), other_pool.clone()]
        );
        // A removed object starts again from version 0, without its old bytes.
        put(&s, &key("gone", 0), 0, 50, Mutation::Data(pattern(2, 10))).await;
        let mut want = vec![0u8; 100];
        want[50..60].copy_from_slice(&pattern(2, 10));
        assert_eq!(
            s.read(&key("gone", 0), 0, 100).await.unwrap(),
            (1, Bytes::from(want))
        );
        drop(s);
        let s = ObjStore::open(d.path(), MAX).unwrap();
        assert_eq!(s.list_all().len(), 3);
        assert_eq!(s.stats().used_bytes, 3 * 4096);
    }

    #[tokio::test]
    async fn remove_then_write_in_one_batch() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let k = key("rw", 0);
        put(&s, &k, 0, 0, Mutation::Data(pattern(1, 3 * 4096))).await;
        // Queued back to back, so most likely one batch; correct either way.
        let r = s.remove(&k);
        let w = s.write(op(&k, 0, 4096 + 10, Mutation::Data(pattern(2, 10))));
        let (r, w) = tokio::join!(r, w);
        r.unwrap();
        assert_eq!(w.unwrap(), WriteOutcome::Applied);
        let mut want = vec![0u8; 3 * 4096];
        want[4106..4116].copy_from_slice(&pattern(2, 10));
        assert_eq!(
            s.read(&k, 0, 3 * 4096).await.unwrap(),
            (1, Bytes::from(want))
        );
        assert!(obj_path(d.path(), &k).exists());
        assert_eq!(s.info(&k).unwrap().used_bytes, 4096);
    }

    #[tokio::test]
    async fn orphan_files_are_swept_at_open() {
        let d = tempfile::tempdir().unwrap();
        let k = key("orphan", 1);
        {
            let s = ObjStore::open(d.path(), MAX).unwrap();
            put(&s, &key("kept", 0), 0, 0, Mutation::Data(pattern(1, 10))).await;
        }
        fs::write(obj_path(d.path(), &k), b"stale").unwrap();
        let stray = d.path().join("objects/1/not-an-object");
        fs::write(&stray, b"x").unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        assert!(!obj_path(d.path(), &k).exists());
        assert!(stray.exists());
        assert!(obj_path(d.path(), &key("kept", 0)).exists());
        assert_eq!(
            s.read(&k, 0, 5).await.unwrap(),
            (0, Bytes::from(vec![0u8; 5]))
        );
    }

    #[tokio::test]
    async fn writes_apply_in_call_order() {
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let k = key("order", 0);
        let futs: Vec<_> = (0..20u64)
            .map(|v| s.write(op(&k, v, v * 100, Mutation::Data(pattern(v as u8, 150)))))
            .collect();
        // Polled in reverse: the queue order is still the call order.
        for f in futs.into_iter().rev() {
            assert_eq!(f.await.unwrap(), WriteOutcome::Applied);
        }
        let mut model = vec![0u8; 2100];
        for v in 0..20usize {
            model[v * 100..v * 100 + 150].copy_from_slice(&pattern(v as u8, 150));
        }
        assert_eq!(s.read(&k, 0, 2100).await.unwrap(), (20, Bytes::from(model)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_are_group_committed() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(ObjStore::open(d.path(), 4 << 20).unwrap());
        let tasks: Vec<_> = (0..64u64)
            .map(|n| {
                let s = s.clone();
                tokio::spawn(async move {
                    let k = key("conc", n);
                    for v in 0..4u64 {
                        let m = Mutation::Data(pattern((n + v) as u8, 4096 + 100));
                        let outcome = s.write(op(&k, v, v * 8192 + 7, m)).await.unwrap();
                        assert_eq!(outcome, WriteOutcome::Applied);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let commits = s.commits();
        assert!(commits < 64 * 4, "{commits} commits for 256 writes");
        drop(s);
        let s = ObjStore::open(d.path(), 4 << 20).unwrap();
        assert_eq!(s.list(1).len(), 64);
        for n in 0..64u64 {
            let k = key("conc", n);
            for v in 0..4u64 {
                let got = s.read(&k, v * 8192 + 7, 4196).await.unwrap();
                assert_eq!(got, (4, pattern((n + v) as u8, 4196)));
            }
            assert_eq!(s.scrub(&k).await.unwrap(), Vec::<u64>::new());
        }
    }

    #[derive(Clone, Debug)]
    enum LogOp {
        Small {
            obj: u64,
            off: u64,
            len: u64,
            seed: u8,
        },
        Zero {
            obj: u64,
            off: u64,
            len: u64,
        },
        /// Bigger than [`WAL_MAX_OP`]: bypasses the log and checkpoints it synchronously.
        Big {
            obj: u64,
            off: u64,
            seed: u8,
        },
        Checkpoint,
        Reopen,
    }

    const LOG_MAX: u64 = 2 * WAL_MAX_OP;
    const BIG: u64 = WAL_MAX_OP + 4096;

    fn log_op() -> impl Strategy<Value = LogOp> {
        let small = (0..3u64, 0..LOG_MAX)
            .prop_flat_map(|(obj, off)| (Just(obj), Just(off), 1..=(LOG_MAX - off).min(9000)));
        prop_oneof![
            4 => (small.clone(), any::<u8>())
                .prop_map(|((obj, off, len), seed)| LogOp::Small { obj, off, len, seed }),
            1 => small.prop_map(|(obj, off, len)| LogOp::Zero { obj, off, len }),
            1 => (0..3u64, 0..=(LOG_MAX - BIG), any::<u8>())
                .prop_map(|(obj, off, seed)| LogOp::Big { obj, off, seed }),
            1 => Just(LogOp::Checkpoint),
            1 => Just(LogOp::Reopen),
        ]
    }

    async fn check_log_model(s: &ObjStore, model: &[(u64, Vec<u8>)]) {
        for (obj, (v, bytes)) in model.iter().enumerate() {
            let k = key("logmodel", obj as u64);
            let (got_v, got) = s.read(&k, 0, LOG_MAX).await.unwrap();
            assert_eq!(got_v, *v, "object {obj} version");
            assert!(got[..] == bytes[..], "object {obj} content differs");
            assert!(s.scrub(&k).await.unwrap().is_empty(), "object {obj} scrub");
        }
    }

    /// Logged small writes, direct big writes, background checkpoints and reopens (each a replay)
    /// in random order, against a byte-vector model: after every reopen every object reads back
    /// exactly, at its version, with every CRC right — metadata rebuilt from the log included.
    #[test]
    fn log_checkpoints_and_reopens_match_a_model() {
        use proptest::test_runner::{Config, TestRunner};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut runner = TestRunner::new(Config::with_cases(24));
        runner
            .run(&prop::collection::vec(log_op(), 1..32), |ops| {
                rt.block_on(async {
                    let d = tempfile::tempdir().unwrap();
                    let mut s = ObjStore::open(d.path(), LOG_MAX).unwrap();
                    let mut model = vec![(0u64, vec![0u8; LOG_MAX as usize]); 3];
                    for o in &ops {
                        let (obj, off, m) = match *o {
                            LogOp::Small {
                                obj,
                                off,
                                len,
                                seed,
                            } => (obj, off, Mutation::Data(pattern(seed, len as usize))),
                            LogOp::Zero { obj, off, len } => (obj, off, Mutation::Zero(len)),
                            LogOp::Big { obj, off, seed } => {
                                (obj, off, Mutation::Data(pattern(seed, BIG as usize)))
                            }
                            LogOp::Checkpoint => {
                                checkpoint_once(&s.inner, true);
                                continue;
                            }
                            LogOp::Reopen => {
                                drop(s);
                                s = ObjStore::open(d.path(), LOG_MAX).unwrap();
                                check_log_model(&s, &model).await;
                                continue;
                            }
                        };
                        let (v, bytes) = &mut model[obj as usize];
                        let range = off as usize..(off + m.span()) as usize;
                        match &m {
                            Mutation::Data(data) => bytes[range].copy_from_slice(data),
                            _ => bytes[range].fill(0),
                        }
                        let k = key("logmodel", obj);
                        put(&s, &k, *v, off, m).await;
                        *v += 1;
                    }
                    drop(s);
                    let s = ObjStore::open(d.path(), LOG_MAX).unwrap();
                    check_log_model(&s, &model).await;
                });
                Ok(())
            })
            .unwrap();
    }

    #[derive(Clone, Debug)]
    enum ModelOp {
        Data {
            off: u64,
            len: u64,
            seed: u8,
            zeros: bool,
        },
        Zero {
            off: u64,
            len: u64,
        },
        Trim {
            off: u64,
            len: u64,
        },
    }

    fn model_op() -> impl Strategy<Value = ModelOp> {
        let range = (0..MAX).prop_flat_map(|off| (Just(off), 0..=(MAX - off).min(3 * 4096 + 100)));
        prop_oneof![
            3 => (range.clone(), any::<u8>(), prop::bool::weighted(0.15))
                .prop_map(|((off, len), seed, zeros)| ModelOp::Data { off, len, seed, zeros }),
            1 => range.clone().prop_map(|(off, len)| ModelOp::Zero { off, len }),
            1 => range.prop_map(|(off, len)| ModelOp::Trim { off, len }),
        ]
    }

    /// Random write/zero/trim sequences against a `Vec<u8>` model. One store serves every case
    /// (each case gets its own object) because opening a redb database costs ~0.1 s in debug
    /// builds; it is reopened at the end to check every case's object survived.
    #[test]
    fn matches_a_byte_vector_model() {
        use proptest::test_runner::{Config, TestRunner};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        let s = ObjStore::open(d.path(), MAX).unwrap();
        let finals = Mutex::new(Vec::new());
        let mut runner = TestRunner::new(Config::with_cases(32));
        let strategy = prop::collection::vec(model_op(), 1..24);
        runner
            .run(&strategy, |ops| {
                let k = key("model", finals.lock().unwrap().len() as u64);
                let model = rt.block_on(run_model(&s, &k, &ops));
                finals.lock().unwrap().push((k, ops.len() as u64, model));
                Ok(())
            })
            .unwrap();
        drop(s);
        let s = ObjStore::open(d.path(), MAX).unwrap();
        rt.block_on(async {
            for (k, n, model) in finals.into_inner().unwrap() {
                assert_eq!(s.read(&k, 0, MAX).await.unwrap(), (n, Bytes::from(model)));
            }
        });
    }

    async fn run_model(s: &ObjStore, k: &ObjectKey, ops: &[ModelOp]) -> Vec<u8> {
        let mut model = vec![0u8; MAX as usize];
        let mut pending = Vec::new();
        for (v, o) in ops.iter().enumerate() {
            let (off, m) = match o {
                ModelOp::Data {
                    off,
                    len,
                    seed,
                    zeros,
                } => {
                    let data = if *zeros {
                        Bytes::from(vec![0u8; *len as usize])
                    } else {
                        pattern(*seed, *len as usize)
                    };
                    model[*off as usize..(*off + *len) as usize].copy_from_slice(&data);
                    (*off, Mutation::Data(data))
                }
                ModelOp::Zero { off, len } => {
                    model[*off as usize..(*off + *len) as usize].fill(0);
                    (*off, Mutation::Zero(*len))
                }
                ModelOp::Trim { off, len } => {
                    model[*off as usize..(*off + *len) as usize].fill(0);
                    (*off, Mutation::Trim(*len))
                }
            };
            let w = s.write(op(k, v as u64, off, m));
            if v < ops.len() / 2 {
                // Committed one by one, checked after each.
                assert_eq!(w.await.unwrap(), WriteOutcome::Applied);
                let ro = off.saturating_sub(5000);
                let rl = 12000.min(MAX - ro);
                let (_, got) = s.read(k, ro, rl).await.unwrap();
                assert_eq!(&got[..], &model[ro as usize..(ro + rl) as usize]);
            } else {
                // Queued without waiting: these share batches, so later ops must see earlier
                // uncommitted ones.
                pending.push(w);
            }
        }
        for w in pending {
            assert_eq!(w.await.unwrap(), WriteOutcome::Applied);
        }
        let n = ops.len() as u64;
        assert_eq!(
            s.read(k, 0, MAX).await.unwrap(),
            (n, Bytes::from(model.clone()))
        );
        let used = model.chunks(CHUNK_SIZE).filter(|c| !is_zero(c)).count() as u64 * CS;
        assert_eq!(
            s.info(k),
            Some(ObjInfo {
                version: n,
                used_bytes: used
            })
        );
        assert_eq!(s.scrub(k).await.unwrap(), Vec::<u64>::new());
        model
    }
}
