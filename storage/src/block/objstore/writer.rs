//! The group-commit writer: one thread takes every queued mutation (up to [`BATCH_MAX_OPS`] or
//! [`BATCH_MAX_BYTES`] of payload), applies them in arrival order against the batch's working
//! metadata, makes them durable — through the write-ahead log for a batch of small writes, else
//! by syncing each touched file and committing once — and answers every waiter.

use super::meta::{encode_key, put_metas, ObjMeta, OBJECTS, OBJECT_INFO};
use super::stripes::LockStripes;
use super::{
    is_zero, lock, read_lock, sync_dir, write_lock, Mutation, ObjError, ObjectImage, StoreState,
    WriteOp, WriteOutcome, CS,
};
use crate::block::wal::{self, WalState};
use crate::block::{ObjectKey, CHUNK_SIZE};
use bytes::Bytes;
use redb::Durability;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockWriteGuard};
use tokio::sync::{mpsc, oneshot};

const BATCH_MAX_OPS: usize = 256;
const BATCH_MAX_BYTES: u64 = 64 << 20;

/// A sparse-object chunk as a mutation leaves it.
pub(crate) enum Chunk {
    Hole,
    /// `src`: offset of these bytes in the op's payload, so adjacent chunks go out in one `pwrite`.
    Data {
        crc: u32,
        bytes: Bytes,
        src: Option<usize>,
    },
}

impl Chunk {
    pub(crate) fn new(bytes: Bytes, src: Option<usize>) -> Self {
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

    pub(crate) fn crc(&self) -> Option<u32> {
        match self {
            Chunk::Hole => None,
            Chunk::Data { crc, .. } => Some(*crc),
        }
    }
}

pub(crate) enum Op {
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

pub(crate) enum Done {
    Write(WriteOutcome),
    Unit,
    Count(u64),
}

pub(crate) struct Req {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Done, ObjError>>,
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

impl StoreState {
    /// The metadata a batch sees: its own changes first.
    fn working_meta(&self, st: &mut Batch, key: &ObjectKey) -> Result<Option<ObjMeta>, ObjError> {
        if let Some(m) = st.working.get(key) {
            return Ok(m.clone());
        }
        let m = self.meta(key)?.map(|m| (*m).clone());
        st.working.insert(key.clone(), m.clone());
        Ok(m)
    }

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
                    stripes.insert(LockStripes::of(&w.key));
                }
                Op::Import(k, _) | Op::Remove(k) => {
                    stripes.insert(LockStripes::of(k));
                }
                // Its objects are only known once earlier ops of the batch have run.
                Op::RemoveImage(..) => return self.stripes.write_all(),
            }
        }
        self.stripes.write(stripes)
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
            Op::Write(w) => w.m.span() <= wal::WAL_MAX_OP,
            _ => false,
        });
        // Also checkpoint synchronously when the background one falls far behind.
        if small && wal.bytes <= 4 * wal::WAL_CHECKPOINT_BYTES && !wal.force_sync {
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

    /// Anything but a batch of small writes: a synchronous checkpoint (every logged write's file
    /// synced, the dirty metadata committed), then each op with data-then-metadata durability, in
    /// the same redb transaction.
    fn apply_direct(
        &self,
        ops: &[Op],
        st: &mut Batch,
        wal: &mut WalState,
    ) -> Result<Vec<Result<Done, ObjError>>, ObjError> {
        wal.sync_logged_files()?;
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
        wal::set_applied(&tx, wal.seq)?;
        for f in st.touched.values() {
            f.sync_data()?;
        }
        for d in &st.dirs {
            sync_dir(d)?;
        }
        tx.commit()?;
        lock(&self.metas).mark_clean(&dirty);
        wal.finish_sync_checkpoint();
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
                wal::record::encode_record(out, &w.key, w.new, &plan)
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

/// The writer thread: takes what is queued (up to [`BATCH_MAX_OPS`] operations or
/// [`BATCH_MAX_BYTES`] of payload) and commits it as one batch, until every sender is gone.
pub(crate) fn writer_loop(inner: Arc<StoreState>, mut rx: mpsc::UnboundedReceiver<Req>) {
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
