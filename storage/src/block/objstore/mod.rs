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
//!   `META_CACHE_CAP` clean entries, plus the dirty ones: `META_DIRTY_MAX` of them make a
//!   checkpoint due), so a 4 KiB read or write does not open a redb transaction and decode 4 KiB
//!   of CRCs each time.
//! - **Unaligned writes** read-modify-write their edge chunks, verifying them first: a corrupt edge
//!   chunk fails the write with `Corrupt` rather than blessing rotten bytes with a fresh CRC.
//!
//! # Modules
//! - this file: the public API ([`ObjStore`], its requests and errors) and the read path.
//! - `meta`: per-object metadata, its redb encoding and the metadata cache.
//! - `writer`: the group-commit writer thread (batches, write plans, data-then-metadata commits).
//! - `fd_cache`: the bounded cache of open object files.
//! - `stripes`: the lock stripes that keep readers out of a batch's commit window.
//! - `orphans`: the sweep of object files without metadata at open.
//! - [`super::wal`]: the write-ahead log — its files, records, checkpoints and replay.

mod fd_cache;
pub(crate) mod meta;
mod orphans;
mod stripes;
#[cfg(test)]
mod tests;
pub(crate) mod writer;

use super::wal::{self, WalState};
use super::{ObjectKey, CHUNK_SIZE};
use bytes::Bytes;
use fd_cache::FileCache;
use meta::{decode_info, decode_key, encode_key, MetaCache, ObjMeta, OBJECTS, OBJECT_INFO};
use redb::{Database, Durability, ReadableTable};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use stripes::LockStripes;
use tokio::sync::{mpsc, oneshot};
use writer::{Done, Op, Req};

pub(crate) const CS: u64 = CHUNK_SIZE as u64;
/// A file name is at most 255 bytes and the object name adds ".%016x".
const MAX_IMAGE_ID_LEN: usize = 255 - 17;
/// Upper bound accepted for `max_object_size` (RBD allows up to 32 MiB; leave headroom).
const MAX_OBJECT_SIZE_LIMIT: u64 = 1 << 30;

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

pub(crate) fn check_image(image: &str) -> Result<(), ObjError> {
    if image.is_empty() || image.len() > MAX_IMAGE_ID_LEN || image.contains(['/', '\0']) {
        return Err(ObjError::Invalid(format!(
            "image id {image:?} must be 1..={MAX_IMAGE_ID_LEN} bytes without '/' or NUL"
        )));
    }
    Ok(())
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(16);
    words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&x| x == 0)
}

/// Reads as much of `buf` as the file has from `pos`; bytes past its end stay as they are (zeros).
pub(crate) fn read_full_at(f: &File, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
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

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

// ---- shared state -----------------------------------------------------------------------------

/// Version and used bytes of every object, ordered so listings need no sort.
#[derive(Default)]
pub(crate) struct Index {
    pub(crate) map: BTreeMap<ObjectKey, ObjInfo>,
    pub(crate) used: u64,
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

    /// Loads the index from the small `object_info` table.
    fn load(db: &Database) -> Result<Self, ObjError> {
        let mut index = Index::default();
        let tx = db.begin_read()?;
        let t = tx.open_table(OBJECT_INFO)?;
        for row in t.iter()? {
            let (k, v) = row?;
            let key = decode_key(k.value())
                .ok_or_else(|| ObjError::Db("undecodable object key".into()))?;
            index.insert(key, decode_info(v.value())?);
        }
        Ok(index)
    }
}

/// Opens (creating if needed) the store's database and its tables.
fn create_db(dir: &Path) -> Result<Database, ObjError> {
    let db = Database::create(dir.join("objects.redb"))?;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate);
    tx.open_table(OBJECTS)?;
    tx.open_table(OBJECT_INFO)?;
    tx.open_table(wal::WAL_STATE)?;
    tx.commit()?;
    Ok(db)
}

/// The store's state shared by the API, the writer thread and the checkpoint thread.
pub(crate) struct StoreState {
    pub(crate) dir: PathBuf,
    pub(crate) objects_dir: PathBuf,
    pub(crate) db: Database,
    pub(crate) max_object_size: u64,
    pub(crate) index: RwLock<Index>,
    pub(crate) stripes: LockStripes,
    pub(crate) files: Mutex<FileCache>,
    pub(crate) metas: Mutex<MetaCache>,
    /// Group commits so far.
    pub(crate) batches: AtomicU64,
    /// The write-ahead log and the files written through it and not yet synced.
    pub(crate) wal: Mutex<WalState>,
}

impl StoreState {
    pub(crate) fn path(&self, key: &ObjectKey) -> PathBuf {
        self.objects_dir.join(key.pool.to_string()).join(key.name())
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<(), ObjError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.max_object_size => Ok(()),
            _ => Err(ObjError::Invalid(format!(
                "range {offset}+{len} exceeds the object size {}",
                self.max_object_size
            ))),
        }
    }

    pub(crate) fn open_existing(&self, key: &ObjectKey) -> Result<Option<Arc<File>>, ObjError> {
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

    pub(crate) fn load_meta(&self, key: &ObjectKey) -> Result<Option<ObjMeta>, ObjError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OBJECTS)?;
        let v = t.get(encode_key(key).as_slice())?;
        v.map(|v| ObjMeta::decode(v.value())).transpose()
    }

    /// The object's current metadata: the cache (which holds every entry newer than redb), else
    /// redb. Callers hold the object's stripe, so the writer cannot change it meanwhile.
    pub(crate) fn meta(&self, key: &ObjectKey) -> Result<Option<Arc<ObjMeta>>, ObjError> {
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

    /// Reads chunks `c0..c1` into a zeroed buffer and checks the CRC of every data chunk; returns
    /// the buffer and the chunks that failed.
    pub(crate) fn read_chunks(
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
        let _g = self.stripes.read(key);
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
        let _g = self.stripes.read(key);
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
    inner: Arc<StoreState>,
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
        let db = create_db(dir)?;
        let wal = wal::replay::recover(&db, dir, &objects_dir)?;
        let index = Index::load(&db)?;
        orphans::sweep(&objects_dir, &index)?;
        let inner = Arc::new(StoreState {
            dir: dir.to_path_buf(),
            objects_dir,
            db,
            max_object_size,
            index: RwLock::new(index),
            stripes: LockStripes::new(),
            files: Mutex::new(FileCache::default()),
            metas: Mutex::new(MetaCache::default()),
            batches: AtomicU64::new(0),
            wal: Mutex::new(wal),
        });
        let checkpointer = {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("objstore-checkpoint".into())
                .spawn(move || wal::checkpointer(weak))
                .map_err(|e| ObjError::Io(format!("cannot start the checkpoint thread: {e}")))?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("objstore-writer".into())
            .spawn(move || writer::writer_loop(w, rx))?;
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
