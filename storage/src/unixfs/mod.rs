//! UnixFS files over dag-pb, byte-compatible with Kubo's `ipfs add`.
//!
//! The point of this module is that a file added here gets the very CID Kubo
//! would give it, so content added through either is interchangeable and
//! users can check our CIDs with stock tooling. Every layout choice below
//! (chunk size, link fan-out, field order, the empty `Name` on links) exists
//! because Kubo makes it and any deviation changes the hash.
//!
//! * [`pb`]: the two small protobuf schemas (dag-pb `PBNode`, UnixFS `Data`).
//! * [`cidutil`]: hashing, CID construction, verification and path parsing.
//! * [`builder`]: the streaming balanced-tree builder behind `ipfs add`.
//! * [`reader`]: range reads over a DAG fetched block by block.

mod builder;
mod cidutil;
mod error;
mod pb;
mod reader;

#[cfg(test)]
mod tests;

pub use builder::{add_bytes, FileBuilder, FileRoot};
pub use cid::Cid;
pub use cidutil::{cid_for, parse_cid_path, verify_block};
pub use error::{ReadError, UnixfsError};
pub use pb::{
    decode_dag_pb, decode_unixfs, encode_dag_pb, encode_unixfs, DataType, PbLink, PbNode,
    UnixfsData,
};
pub use reader::{file_size, node_kind, read_range, BlockSource, NodeKind};

/// Multicodec for dag-pb, the codec of every non-raw UnixFS node.
pub const DAG_PB: u64 = 0x70;
/// Multicodec for raw blocks (`--raw-leaves`).
pub const RAW: u64 = 0x55;
/// Multihash code for sha2-256, the only hash Kubo uses by default.
pub const SHA2_256: u64 = 0x12;
/// Multihash code for the identity "hash" (digest is the data itself).
pub const IDENTITY: u64 = 0x00;
/// Kubo's default chunker, `size-262144`.
pub const DEFAULT_CHUNK_SIZE: usize = 262_144;
/// Kubo's balanced layout fan-out; chosen upstream so that a full node stays
/// under 8 KiB with CIDv0 links.
pub const DEFAULT_MAX_LINKS: usize = 174;

/// A content-addressed block ready to be stored; `data` hashes to `cid`.
#[derive(Clone, Debug)]
pub struct Block {
    pub cid: Cid,
    pub data: bytes::Bytes,
}

/// Knobs of `ipfs add` that change the resulting CIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddOptions {
    /// CID version of dag-pb nodes (0 or 1).
    pub cid_version: u8,
    /// Store leaves as raw blocks (CIDv1, codec raw) instead of UnixFS
    /// dag-pb nodes. Kubo forces CIDv1 for raw leaves even under
    /// `--cid-version 0`, because CIDv0 can only express dag-pb; so do we.
    pub raw_leaves: bool,
    /// Fixed-size chunker size in bytes.
    pub chunk_size: usize,
    /// Maximum children per internal node.
    pub max_links: usize,
}

impl Default for AddOptions {
    /// Matches plain `ipfs add`.
    fn default() -> Self {
        AddOptions {
            cid_version: 0,
            raw_leaves: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_links: DEFAULT_MAX_LINKS,
        }
    }
}

impl AddOptions {
    /// Kubo's resolution of `--cid-version` and `--raw-leaves`: asking for
    /// CIDv1 turns raw leaves on unless they were explicitly switched off.
    pub fn kubo(cid_version: u8, raw_leaves: Option<bool>) -> Result<Self, UnixfsError> {
        if cid_version > 1 {
            return Err(UnixfsError::BadOptions(format!(
                "unknown CID version: {cid_version}"
            )));
        }
        Ok(AddOptions {
            cid_version,
            raw_leaves: raw_leaves.unwrap_or(cid_version == 1),
            ..AddOptions::default()
        })
    }

    /// Rejects option sets that cannot describe a DAG. [`FileBuilder::new`]
    /// does not fail, so callers taking options from users should check here
    /// first rather than rely on the builder's clamping.
    pub fn validate(&self) -> Result<(), UnixfsError> {
        if self.cid_version > 1 {
            return Err(UnixfsError::BadOptions(format!(
                "unknown CID version: {}",
                self.cid_version
            )));
        }
        if self.chunk_size == 0 {
            return Err(UnixfsError::BadOptions("chunk size must be > 0".into()));
        }
        if self.max_links < 2 {
            return Err(UnixfsError::BadOptions("max links must be >= 2".into()));
        }
        Ok(())
    }
}
