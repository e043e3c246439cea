//! Checkpoints: the log's state in a running store ([`WalState`]), the background checkpoint
//! thread, the commit of a finished background checkpoint, and the synchronous checkpoint a batch
//! that does not go through the log makes first (so a replay never re-applies an old small write
//! over newer bytes).

use super::{set_applied, LogFile, WAL_CHECKPOINT_AGE, WAL_CHECKPOINT_BYTES};
use crate::block::objstore::meta::{put_metas, META_DIRTY_MAX};
use crate::block::objstore::{lock, sync_dir, ObjError, StoreState};
use crate::block::ObjectKey;
use redb::Durability;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

/// A finished background checkpoint, for the writer to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpointed {
    /// The generation whose records it covers (all of it: nothing newer went there).
    pub(crate) gen: usize,
    /// Its last record.
    pub(crate) seq: u64,
}

/// The log of a running store and what its next checkpoint owes; behind `StoreState::wal`, locked by the
/// writer for a whole batch and briefly by the checkpoint thread.
pub(crate) struct WalState {
    pub(crate) logs: [LogFile; 2],
    /// The generation (index into `logs`) new records go to.
    pub(crate) active: usize,
    /// The last record written.
    pub(crate) seq: u64,
    /// Bytes logged since the last checkpoint.
    pub(crate) bytes: u64,
    /// Files written through the log since the last checkpoint, owed an `fdatasync`.
    pub(crate) lazy: HashMap<ObjectKey, Arc<File>>,
    /// Directories of files created since the last checkpoint, owed a sync.
    pub(crate) dirs: HashSet<PathBuf>,
    pub(crate) last_checkpoint: std::time::Instant,
    /// Files a background checkpoint is syncing (a synchronous checkpoint syncs them too).
    pub(crate) syncing: Vec<Arc<File>>,
    pub(crate) syncing_dirs: HashSet<PathBuf>,
    /// Bumped by every synchronous checkpoint: a background one that started before it finds a
    /// different epoch when it ends and is dropped (the synchronous one covered it).
    pub(crate) epoch: u64,
    /// A finished background checkpoint the writer has yet to commit.
    pub(crate) done: Option<Checkpointed>,
    /// A background checkpoint (or its commit) failed: the writer's next batch checkpoints
    /// synchronously (its error then fails that batch, so no write is acknowledged over a broken
    /// disk).
    pub(crate) force_sync: bool,
    /// Appending to the log failed: no more writes until the store is reopened (see [`super::frame`]).
    pub(crate) broken: Option<String>,
    pub(crate) stop: bool,
}

impl WalState {
    /// The state after open: replay emptied both generations; `seq` is the last record in use.
    pub(crate) fn new(logs: [LogFile; 2], seq: u64) -> Self {
        Self {
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
        }
    }

    /// First step of a synchronous checkpoint: syncs every file and directory written through
    /// the log, including those a background checkpoint is syncing right now.
    pub(crate) fn sync_logged_files(&self) -> Result<(), ObjError> {
        for f in self.lazy.values().chain(self.syncing.iter()) {
            f.sync_data()?;
        }
        for d in self.dirs.iter().chain(self.syncing_dirs.iter()) {
            sync_dir(d)?;
        }
        Ok(())
    }

    /// Last step of a synchronous checkpoint, after its commit (dirty metadata and the `applied`
    /// mark): both generations are reused, and a background checkpoint still running is dropped.
    pub(crate) fn finish_sync_checkpoint(&mut self) {
        for log in &mut self.logs {
            log.rewind();
        }
        self.epoch += 1;
        self.done = None;
        self.lazy.clear();
        self.dirs.clear();
        self.bytes = 0;
        self.force_sync = false;
        self.last_checkpoint = std::time::Instant::now();
    }
}

/// Checkpoints in the background, so the writer never stalls on syncing many files: take the
/// set of written-but-unsynced files and the log's last sequence number, flip the active
/// generation, sync the files outside the lock, then let the writer commit the metadata and the
/// `applied` mark in its next batch and reuse the old generation.
pub(crate) fn checkpointer(inner: std::sync::Weak<StoreState>) {
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
pub(crate) fn checkpoint_once(inner: &StoreState, force: bool) -> bool {
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
impl StoreState {
    /// Commits a finished background checkpoint: the dirty metadata and the `applied` mark, after
    /// which the checkpointed generation is reused.
    pub(crate) fn finish_checkpoint(
        &self,
        wal: &mut WalState,
        c: Checkpointed,
    ) -> Result<(), ObjError> {
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
}
