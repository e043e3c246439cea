//! The object store's write-ahead log: everything about the log lives here, the object store
//! ([`super::objstore`]) only appends to it and asks for checkpoints.
//!
//! - [`frame`]: the log files — checksummed frames appended to one of two generation files, made
//!   durable by one `fdatasync` per group commit.
//! - [`record`]: what a frame carries — one small write's whole effect on its object (new version,
//!   which chunks became data or holes, the data), and the legacy redb rows of older stores.
//! - [`checkpoint`]: the log's state in a running store, the background checkpoint thread and the
//!   synchronous checkpoint that any non-logged batch does first.
//! - [`replay`]: recovery at open — the records after the `applied` mark, re-applied in sequence
//!   order to the object files and the metadata, then the log emptied.
//!
//! The `applied` mark (the last record whose data is in synced files and whose metadata is
//! committed) lives in the store's redb database, table [`WAL_STATE`], so it commits atomically
//! with the metadata it covers.

pub(crate) mod checkpoint;
pub(crate) mod frame;
pub(crate) mod record;
pub(crate) mod replay;

pub(crate) use checkpoint::{checkpointer, WalState};
pub(crate) use frame::{frame, LogFile};

use super::objstore::ObjError;
use redb::{Database, TableDefinition};

/// The redb write-ahead tables of stores written before the log moved to files: replayed once at
/// open (`seq → [u16 key len][key][u64 offset][data]`) and then dropped.
pub(crate) const LEGACY_WAL: [TableDefinition<u64, &[u8]>; 2] =
    [TableDefinition::new("wal"), TableDefinition::new("wal1")];
/// [`APPLIED`] → the last log sequence number whose data is in synced files and whose metadata is
/// committed in the store's `objects` table; replay starts after it.
pub(crate) const WAL_STATE: TableDefinition<&str, u64> = TableDefinition::new("wal_state");
pub(crate) const APPLIED: &str = "applied";
pub(crate) const WAL_FILES: [&str; 2] = ["wal0.log", "wal1.log"];
/// Writes up to this size go through the write-ahead log (one `fdatasync` makes a whole batch of
/// them durable); bigger ones are `fdatasync`ed in their object files.
pub(crate) const WAL_MAX_OP: u64 = 256 << 10;
/// Checkpoint (sync the object files, reuse the log generation) after this many bytes...
pub(crate) const WAL_CHECKPOINT_BYTES: u64 = 32 << 20;
/// ...or this long after the previous checkpoint.
pub(crate) const WAL_CHECKPOINT_AGE: std::time::Duration = std::time::Duration::from_secs(5);
/// Records the log's `applied` mark in `tx`.
pub(crate) fn set_applied(tx: &redb::WriteTransaction, seq: u64) -> Result<(), ObjError> {
    tx.open_table(WAL_STATE)?.insert(APPLIED, seq)?;
    Ok(())
}

/// The log's `applied` mark; 0 for a new store.
pub(crate) fn applied_mark(db: &Database) -> Result<u64, ObjError> {
    let tx = db.begin_read()?;
    let t = tx.open_table(WAL_STATE)?;
    let v = t.get(APPLIED)?.map_or(0, |v| v.value());
    Ok(v)
}
