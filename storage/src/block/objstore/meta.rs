//! Per-object metadata — version, hole bitmap and the CRC32C of every data chunk — its encoding
//! in the store's redb tables, and the cache of decoded metadata of recently used objects (which
//! also holds the entries written through the log and not yet checkpointed).

use super::{ObjError, ObjInfo, CS};
use crate::block::ObjectKey;
use redb::TableDefinition;
use std::collections::HashMap;
use std::sync::Arc;

/// key → encoded [`ObjMeta`] (version, hole bitmap, CRCs of the data chunks).
pub(crate) const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// key → version (u64 LE) ‖ used bytes (u64 LE): small, so the index loads fast at open.
pub(crate) const OBJECT_INFO: TableDefinition<&[u8], &[u8]> = TableDefinition::new("object_info");
/// Clean entries the metadata cache keeps (~8 KiB each for a 4 MiB object).
const META_CACHE_CAP: usize = 1024;
/// Dirty entries that make a checkpoint due, whatever its size and age: random small writes over
/// a big image would otherwise keep one dirty entry per object touched in 5 s.
pub(crate) const META_DIRTY_MAX: usize = 2048;
const META_FORMAT: u8 = 1;

/// Per-object metadata: `crcs[i]` is `None` for a hole. Trailing holes are never stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ObjMeta {
    pub(crate) version: u64,
    pub(crate) crcs: Vec<Option<u32>>,
}

impl ObjMeta {
    pub(crate) fn chunk(&self, i: u64) -> Option<u32> {
        self.crcs.get(i as usize).copied().flatten()
    }

    pub(crate) fn set(&mut self, i: u64, crc: Option<u32>) {
        let i = i as usize;
        if i >= self.crcs.len() {
            if crc.is_none() {
                return;
            }
            self.crcs.resize(i + 1, None);
        }
        self.crcs[i] = crc;
    }

    pub(crate) fn trim_tail(&mut self) {
        while matches!(self.crcs.last(), Some(None)) {
            self.crcs.pop();
        }
    }

    pub(crate) fn present(&self) -> impl Iterator<Item = u64> + '_ {
        self.crcs
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u64)
    }

    pub(crate) fn info(&self) -> ObjInfo {
        ObjInfo {
            version: self.version,
            used_bytes: self.present().count() as u64 * CS,
        }
    }

    /// `format u8 ‖ version u64 LE ‖ n u32 LE ‖ bitmap ⌈n/8⌉ bytes ‖ CRC u32 LE per set bit`.
    pub(crate) fn encode(&self) -> Vec<u8> {
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

    pub(crate) fn decode(b: &[u8]) -> Result<Self, ObjError> {
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

pub(crate) fn encode_info(i: &ObjInfo) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&i.version.to_le_bytes());
    out[8..].copy_from_slice(&i.used_bytes.to_le_bytes());
    out
}

pub(crate) fn decode_info(b: &[u8]) -> Result<ObjInfo, ObjError> {
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
pub(crate) fn encode_key(k: &ObjectKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + k.image.len());
    out.extend_from_slice(&k.pool.to_be_bytes());
    out.extend_from_slice(k.image.as_bytes());
    out.push(0);
    out.extend_from_slice(&k.objno.to_be_bytes());
    out
}

pub(crate) fn decode_key(b: &[u8]) -> Option<ObjectKey> {
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

/// Decoded metadata of recently used objects. `dirty`: newer than the [`OBJECTS`] row (written
/// through the log and not yet checkpointed); only clean entries are evicted.
#[derive(Default)]
pub(crate) struct MetaCache {
    map: HashMap<ObjectKey, (Arc<ObjMeta>, bool)>,
    /// Dirty entries in `map`.
    pub(crate) dirty: usize,
}

impl MetaCache {
    pub(crate) fn insert(&mut self, key: ObjectKey, m: Arc<ObjMeta>, dirty: bool) {
        if let Some((_, true)) = self.map.insert(key, (m, dirty)) {
            self.dirty -= 1;
        }
        self.dirty += usize::from(dirty);
    }

    pub(crate) fn remove(&mut self, key: &ObjectKey) {
        if let Some((_, true)) = self.map.remove(key) {
            self.dirty -= 1;
        }
    }

    pub(crate) fn get(&self, key: &ObjectKey) -> Option<Arc<ObjMeta>> {
        self.map.get(key).map(|(m, _)| m.clone())
    }

    /// Adds a clean entry read from redb, unless the cache is full or has the key already.
    pub(crate) fn fill(&mut self, key: &ObjectKey, m: &Arc<ObjMeta>) {
        if self.map.len() < META_CACHE_CAP {
            self.map
                .entry(key.clone())
                .or_insert_with(|| (m.clone(), false));
        }
    }

    pub(crate) fn dirty(&self) -> Vec<(ObjectKey, Arc<ObjMeta>)> {
        self.map
            .iter()
            .filter(|(_, (_, d))| *d)
            .map(|(k, (m, _))| (k.clone(), m.clone()))
            .collect()
    }

    /// After those entries were committed: clean, unless replaced since.
    pub(crate) fn mark_clean(&mut self, committed: &[(ObjectKey, Arc<ObjMeta>)]) {
        for (k, m) in committed {
            if let Some((cur, d)) = self.map.get_mut(k) {
                if *d && Arc::ptr_eq(cur, m) {
                    *d = false;
                    self.dirty -= 1;
                }
            }
        }
    }

    pub(crate) fn evict(&mut self) {
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

/// Writes metadata rows (`objects` and `object_info`) in `tx`.
pub(crate) fn put_metas<'a>(
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
