//! Log record payloads (the frames' contents, see [`super::frame`]): one small write's whole effect
//! on its object, and the row format of the redb write-ahead tables of stores written before the
//! log moved to files (read once at open by [`super::replay`]).

use crate::block::objstore::meta::{decode_key, encode_key};
use crate::block::objstore::writer::Chunk;
use crate::block::{ObjectKey, CHUNK_SIZE};

/// A legacy row (for tests that build an old store): `key len u16 BE ‖ key ‖ offset u64 BE ‖ data`.
#[cfg(test)]
pub(crate) fn encode_wal(key: &ObjectKey, pos: u64, data: &[u8]) -> Vec<u8> {
    let k = encode_key(key);
    let mut out = Vec::with_capacity(2 + k.len() + 8 + data.len());
    out.extend_from_slice(&(k.len() as u16).to_be_bytes());
    out.extend_from_slice(&k);
    out.extend_from_slice(&pos.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Inverse of [`encode_wal`]: the object, the byte offset and the data of a legacy row.
pub(crate) fn decode_wal(b: &[u8]) -> Option<(ObjectKey, u64, &[u8])> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let key = decode_key(b.get(2..2 + n)?)?;
    let pos = u64::from_be_bytes(b.get(2 + n..10 + n)?.try_into().ok()?);
    Some((key, pos, b.get(10 + n..)?))
}

/// Payload of a log record: one small write's whole effect on its object, so that replay restores
/// file bytes and metadata alike. `key len u16 LE ‖ key ‖ version u64 LE ‖ first chunk u64 LE ‖
/// n u32 LE ‖ n flags (1 = data, 0 = hole) ‖ the data chunks, CHUNK_SIZE bytes each`. CRCs are not
/// stored: the frame's own CRC covers the record, and replay recomputes them from the data.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    key: &ObjectKey,
    version: u64,
    plan: &[(u64, Chunk)],
) {
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

/// A decoded record; `data` holds one chunk per data flag, in order.
pub(crate) struct Record<'a> {
    pub(crate) key: ObjectKey,
    pub(crate) version: u64,
    pub(crate) first: u64,
    pub(crate) flags: &'a [u8],
    pub(crate) data: &'a [u8],
}

pub(crate) fn decode_record(b: &[u8]) -> Option<Record<'_>> {
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
