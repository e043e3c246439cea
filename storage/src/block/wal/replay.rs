//! Recovery at open: the legacy redb write-ahead tables of old stores, then the log files'
//! records after the `applied` mark, re-applied in sequence order to the object files and the
//! metadata; then both log files are emptied and reopened for a fresh [`WalState`].

use super::record::{decode_record, decode_wal};
use super::{applied_mark, frame, set_applied, LogFile, WalState, LEGACY_WAL, WAL_FILES};
use crate::block::objstore::meta::{encode_key, put_metas, ObjMeta, OBJECTS};
use crate::block::objstore::{sync_dir, ObjError, CS};
use crate::block::{ObjectKey, CHUNK_SIZE};
use redb::{Database, Durability, ReadableTable};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Replays whatever the store under `dir` logged before it stopped and opens its log files for
/// appending. `objects_dir` is where the object files live.
pub(crate) fn recover(db: &Database, dir: &Path, objects_dir: &Path) -> Result<WalState, ObjError> {
    replay_legacy_tables(db, objects_dir)?;
    let seq = replay_log(db, dir, objects_dir)?;
    let logs = [
        LogFile::open(&dir.join(WAL_FILES[0]))?,
        LogFile::open(&dir.join(WAL_FILES[1]))?,
    ];
    // The log files' directory entries must be durable before any record in them counts.
    sync_dir(dir)?;
    Ok(WalState::new(logs, seq))
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

/// Makes the replayed object files and their directories durable.
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
        if let Some(range) = frame::scan::<ObjError>(p, applied, |_, _| Ok(()))? {
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
            frame::scan::<ObjError>(p, applied, |_, payload| {
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
        LogFile::open(p)?.clear()?;
    }
    Ok(last)
}
