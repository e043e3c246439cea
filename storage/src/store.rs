//! The node's embedded, crash-safe state: blocks, the replicated pinset, local pin status, members.
//!
//! redb commits are durable when `commit()` returns (`Durability::Immediate`), so anything this module
//! has returned `Ok` for survives `kill -9` and power loss. Blocks are keyed by multihash, as in Kubo's
//! blockstore, and are verified against it when stored and again on every read: a block whose bytes
//! changed on disk is reported, dropped and never served.

use crate::pinset::{LocalStatus, PinEntry};
use crate::unixfs::{verify_block, Cid};
use bytes::Bytes;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks");
const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pins");
const PIN_SEQ: TableDefinition<u64, &str> = TableDefinition::new("pin_seq");
const LOCAL: TableDefinition<&str, &[u8]> = TableDefinition::new("local_status");
const MEMBERS: TableDefinition<&str, &str> = TableDefinition::new("members");
const WATERMARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("watermarks");
/// Members that left or were removed ([`crate::departure::Departure`], JSON), keyed by peer ID.
const DEPARTED: TableDefinition<&str, &[u8]> = TableDefinition::new("departed");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Block-service metadata records (pools, images, tombstones), JSON, keyed by record key.
const BLOCK_META: TableDefinition<&str, &[u8]> = TableDefinition::new("block_meta");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("block {cid} failed verification on read ({reason}); it was removed and will be fetched again")]
    Corrupt { cid: String, reason: String },
    #[error("block does not match its CID: {0}")]
    Mismatch(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// Where a peer's pinset feed was read up to. `epoch` names that peer's database so that a peer whose
/// store was recreated is read again from the start.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watermark {
    pub epoch: u64,
    pub seq: u64,
}

pub struct Store {
    db: Database,
    epoch: u64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        let epoch = {
            // Open every table once so later read transactions never meet a missing table.
            tx.open_table(BLOCKS)?;
            tx.open_table(PINS)?;
            tx.open_table(PIN_SEQ)?;
            tx.open_table(LOCAL)?;
            tx.open_table(MEMBERS)?;
            tx.open_table(WATERMARKS)?;
            tx.open_table(DEPARTED)?;
            tx.open_table(BLOCK_META)?;
            let mut meta = tx.open_table(META)?;
            let existing = meta.get("epoch")?.map(|v| v.value());
            match existing {
                Some(e) => e,
                None => {
                    let e = rand::random::<u64>() >> 1;
                    meta.insert("epoch", e)?;
                    e
                }
            }
        };
        tx.commit()?;
        Ok(Self { db, epoch })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    // ---- blocks -------------------------------------------------------------------------------

    /// Verifies and stores blocks in one durable transaction: all or nothing.
    pub fn put_blocks<'a>(
        &self,
        blocks: impl IntoIterator<Item = (&'a Cid, &'a [u8])>,
    ) -> Result<(), StoreError> {
        self.put_blocks_with(|put| {
            for (cid, data) in blocks {
                put(cid, data)?;
            }
            Ok(())
        })
    }

    /// Like [`Store::put_blocks`] for producers that cannot hand out an iterator (a spool file being
    /// read back): `fill` gets a `put` function; everything it puts commits together or not at all.
    pub fn put_blocks_with(
        &self,
        fill: impl FnOnce(
            &mut dyn FnMut(&Cid, &[u8]) -> Result<(), StoreError>,
        ) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(BLOCKS)?;
            let mut put = |cid: &Cid, data: &[u8]| -> Result<(), StoreError> {
                verify_block(cid, data).map_err(|e| StoreError::Mismatch(e.to_string()))?;
                t.insert(cid.hash().to_bytes().as_slice(), data)?;
                Ok(())
            };
            fill(&mut put)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Verified read. A block that fails verification is deleted and reported as corrupt.
    pub fn get_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        let key = cid.hash().to_bytes();
        let data = {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(BLOCKS)?;
            match t.get(key.as_slice())? {
                Some(v) => Bytes::copy_from_slice(v.value()),
                None => return Ok(None),
            }
        };
        if let Err(e) = verify_block(cid, &data) {
            tracing::error!(%cid, error = %e, "stored block is corrupt; removing it");
            let tx = self.db.begin_write()?;
            tx.open_table(BLOCKS)?.remove(key.as_slice())?;
            tx.commit()?;
            return Err(StoreError::Corrupt {
                cid: cid.to_string(),
                reason: e.to_string(),
            });
        }
        Ok(Some(data))
    }

    pub fn has_block(&self, cid: &Cid) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .open_table(BLOCKS)?
            .get(cid.hash().to_bytes().as_slice())?
            .is_some())
    }

    /// Test and repair hook: overwrite a block's bytes without verification (what disk rot does).
    #[doc(hidden)]
    pub fn corrupt_block_for_tests(&self, cid: &Cid, data: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(BLOCKS)?
            .insert(cid.hash().to_bytes().as_slice(), data)?;
        tx.commit()?;
        Ok(())
    }

    pub fn block_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(BLOCKS)?.len()?)
    }

    // ---- pinset (CRDT state) ------------------------------------------------------------------

    /// Merges entries into the pinset (last-writer-wins per CID). Returns the entries that changed
    /// the state; each gets a fresh local sequence number so peers can pull it as a delta.
    pub fn merge_pins(&self, entries: &[PinEntry]) -> Result<Vec<PinEntry>, StoreError> {
        let tx = self.db.begin_write()?;
        let mut changed = Vec::new();
        {
            let mut pins = tx.open_table(PINS)?;
            let mut by_seq = tx.open_table(PIN_SEQ)?;
            let mut meta = tx.open_table(META)?;
            let mut seq = meta.get("seq")?.map(|v| v.value()).unwrap_or(0);
            for e in entries {
                let old: Option<StoredPin> = match pins.get(e.cid.as_str())? {
                    Some(v) => Some(serde_json::from_slice(v.value())?),
                    None => None,
                };
                if let Some(old) = &old {
                    if old.entry.clock >= e.clock {
                        continue;
                    }
                    by_seq.remove(old.seq)?;
                }
                seq += 1;
                let rec = StoredPin {
                    seq,
                    entry: e.clone(),
                };
                pins.insert(e.cid.as_str(), serde_json::to_vec(&rec)?.as_slice())?;
                by_seq.insert(seq, e.cid.as_str())?;
                changed.push(e.clone());
            }
            meta.insert("seq", seq)?;
        }
        tx.commit()?;
        Ok(changed)
    }

    pub fn pin(&self, cid: &str) -> Result<Option<PinEntry>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PINS)?;
        let v = t.get(cid)?;
        Ok(match v {
            Some(v) => Some(serde_json::from_slice::<StoredPin>(v.value())?.entry),
            None => None,
        })
    }

    /// Every entry, tombstones included.
    pub fn all_pins(&self) -> Result<Vec<PinEntry>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PINS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(serde_json::from_slice::<StoredPin>(v.value())?.entry);
        }
        Ok(out)
    }

    /// The pinset feed: entries changed after `since` in this store's epoch (everything when the
    /// caller knew another epoch), at most `limit`, with their sequence numbers.
    pub fn pins_since(
        &self,
        epoch: u64,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PinEntry)>, StoreError> {
        let since = if epoch == self.epoch { since } else { 0 };
        let tx = self.db.begin_read()?;
        let by_seq = tx.open_table(PIN_SEQ)?;
        let pins = tx.open_table(PINS)?;
        let mut out = Vec::new();
        for item in by_seq.range(since + 1..)? {
            let (seq, cid) = item?;
            if let Some(v) = pins.get(cid.value())? {
                out.push((
                    seq.value(),
                    serde_json::from_slice::<StoredPin>(v.value())?.entry,
                ));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    // ---- local pin status ---------------------------------------------------------------------

    pub fn local_status(&self, cid: &str) -> Result<Option<LocalStatus>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOCAL)?;
        let v = t.get(cid)?;
        Ok(match v {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    pub fn local_statuses(&self) -> Result<Vec<(String, LocalStatus)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOCAL)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }

    pub fn set_local_status(&self, cid: &str, st: Option<&LocalStatus>) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(LOCAL)?;
            match st {
                Some(st) => {
                    t.insert(cid, serde_json::to_vec(st)?.as_slice())?;
                }
                None => {
                    t.remove(cid)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- block metadata -----------------------------------------------------------------------

    pub fn block_meta(&self) -> Result<Vec<crate::block::meta::MetaEntry>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOCK_META)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Last-writer-wins merge in one durable transaction; returns the entries that won.
    pub fn merge_block_meta(
        &self,
        entries: &[crate::block::meta::MetaEntry],
    ) -> Result<Vec<crate::block::meta::MetaEntry>, StoreError> {
        let tx = self.db.begin_write()?;
        let mut won = Vec::new();
        {
            let mut t = tx.open_table(BLOCK_META)?;
            for e in entries {
                let newer = match t.get(e.key.as_str())? {
                    Some(old) => {
                        let old: crate::block::meta::MetaEntry =
                            serde_json::from_slice(old.value())?;
                        e.clock > old.clock
                    }
                    None => true,
                };
                if newer {
                    t.insert(e.key.as_str(), serde_json::to_vec(e)?.as_slice())?;
                    won.push(e.clone());
                }
            }
        }
        tx.commit()?;
        Ok(won)
    }

    // ---- membership ---------------------------------------------------------------------------

    /// `(id, addr, host)`. The value is `ADDR HOST` (an address has no spaces); a value without a
    /// host (older stores) gets the address's host part.
    pub fn members(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MEMBERS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let v = v.value();
            let (addr, host) = match v.split_once(' ') {
                Some((a, h)) => (a.to_string(), h.to_string()),
                None => (v.to_string(), crate::config::host_of(v)),
            };
            out.push((k.value().to_string(), addr, host));
        }
        Ok(out)
    }

    pub fn put_member(&self, id: &str, addr: &str, host: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        let v = if host.is_empty() {
            addr.to_string()
        } else {
            format!("{addr} {host}")
        };
        tx.open_table(MEMBERS)?.insert(id, v.as_str())?;
        tx.commit()?;
        Ok(())
    }

    pub fn departures(&self) -> Result<Vec<crate::departure::Departure>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DEPARTED)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Records a departure and forgets the member in one transaction, so a crash cannot leave a
    /// removed peer listed as a member without its tombstone.
    pub fn put_departure(&self, d: &crate::departure::Departure) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(DEPARTED)?
            .insert(d.id.as_str(), serde_json::to_vec(d)?.as_slice())?;
        tx.open_table(MEMBERS)?.remove(d.id.as_str())?;
        tx.open_table(WATERMARKS)?.remove(d.id.as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Drops a departure record (a transient member that left came back with a new incarnation).
    pub fn delete_departure(&self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(DEPARTED)?.remove(id)?;
        tx.commit()?;
        Ok(())
    }

    pub fn watermark(&self, peer: &str) -> Result<Watermark, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(WATERMARKS)?;
        let v = t.get(peer)?;
        Ok(match v {
            Some(v) => serde_json::from_slice(v.value())?,
            None => Watermark::default(),
        })
    }

    pub fn set_watermark(&self, peer: &str, w: Watermark) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(WATERMARKS)?
            .insert(peer, serde_json::to_vec(&w)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredPin {
    seq: u64,
    entry: PinEntry,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinset::Clock;
    use crate::unixfs::{add_bytes, AddOptions};

    fn entry(cid: &str, millis: u64, origin: &str) -> PinEntry {
        PinEntry {
            cid: cid.into(),
            name: format!("{origin}@{millis}"),
            replication_factor_min: -1,
            replication_factor_max: -1,
            allocations: vec![],
            timestamp: String::new(),
            deleted: false,
            clock: Clock {
                millis,
                counter: 0,
                origin: origin.into(),
            },
        }
    }

    #[test]
    fn blocks_are_verified_on_put_and_get() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let (blocks, root) = add_bytes(b"hello world\n", AddOptions::default());
        let b = &blocks[0];
        assert!(s.put_blocks([(&b.cid, &b"tampered"[..])]).is_err());
        assert!(!s.has_block(&root.cid).unwrap());
        s.put_blocks([(&b.cid, &b.data[..])]).unwrap();
        assert_eq!(s.get_block(&root.cid).unwrap().unwrap(), b.data);
        s.corrupt_block_for_tests(&root.cid, b"rot").unwrap();
        assert!(matches!(
            s.get_block(&root.cid),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(
            s.get_block(&root.cid).unwrap().is_none(),
            "corrupt block dropped"
        );
    }

    #[test]
    fn pinset_merges_last_writer_wins_and_feeds_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let ep = s.epoch();
        assert_eq!(s.merge_pins(&[entry("a", 5, "x")]).unwrap().len(), 1);
        assert_eq!(s.merge_pins(&[entry("a", 4, "y")]).unwrap().len(), 0);
        assert_eq!(s.merge_pins(&[entry("a", 5, "x")]).unwrap().len(), 0);
        assert_eq!(s.merge_pins(&[entry("b", 1, "x")]).unwrap().len(), 1);
        assert_eq!(s.pin("a").unwrap().unwrap().name, "x@5");
        let feed = s.pins_since(ep, 0, 100).unwrap();
        assert_eq!(feed.len(), 2);
        let last = feed.last().unwrap().0;
        assert!(s.pins_since(ep, last, 100).unwrap().is_empty());
        // Another epoch (the reader knew an older database) restarts the feed.
        assert_eq!(s.pins_since(ep + 1, last, 100).unwrap().len(), 2);
        // An update moves the entry to the end of the feed.
        s.merge_pins(&[entry("a", 6, "z")]).unwrap();
        let tail = s.pins_since(ep, last, 100).unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].1.name, "z@6");
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb");
        let epoch = {
            let s = Store::open(&p).unwrap();
            s.merge_pins(&[entry("a", 1, "x")]).unwrap();
            s.put_member("peer", "127.0.0.1:1", "rack1-host").unwrap();
            s.epoch()
        };
        let s = Store::open(&p).unwrap();
        assert_eq!(s.epoch(), epoch);
        assert!(s.pin("a").unwrap().is_some());
        assert_eq!(
            s.members().unwrap(),
            vec![("peer".into(), "127.0.0.1:1".into(), "rack1-host".into())]
        );
    }
}
