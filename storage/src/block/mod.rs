//! The block service: a replicated block store modelled on Ceph RBD (pools with size/min_size,
//! images striped into objects, CRUSH-like placement with the host as failure domain) exported over
//! NBD and HTTP. See docs/block.md for the design and the decisions behind it.
//!
//! Module map, one concern each:
//! - [`placement`]: object → placement group → ordered acting set (rendezvous hashing, failure domain).
//! - [`objstore`]: this node's replicas: object files + per-chunk CRC32C + versions, group commit.
//! - `wal`: the object store's write-ahead log: its files (checksummed frames, two generations),
//!   records, checkpoints and replay.
//! - [`nbd`]: the NBD server (fixed newstyle), generic over [`nbd::ExportProvider`]: protocol codec,
//!   handshake, transmission.
//! - [`meta`]: pools and images, replicated on every node (LWW records).
//! - [`wire`]: batched replica operations between nodes.
//! - [`service`]: pools and images, the coordinator (image I/O → object replicas) and the replica
//!   side.
//! - [`recovery`]: background recovery, stray/orphan clean-up, scrub.
//! - [`health`]: Ceph-style health checks and reports.
//! - [`export`]: images as NBD exports.

pub mod export;
pub mod health;
pub mod meta;
pub mod nbd;
pub mod objstore;
pub mod placement;
pub mod recovery;
pub mod service;
mod wal;
pub mod wire;

/// Data is checksummed and versioned per chunk of this size inside an object.
pub const CHUNK_SIZE: usize = 4096;
/// RBD's default object size (order 22).
pub const DEFAULT_OBJECT_SIZE: u64 = 4 << 20;

/// Identifies one object of one image in one pool, as RBD's `rbd_data.<image-id>.<%016x objno>`.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    pub pool: u32,
    /// The image's immutable id (not its name: a renamed or re-created image never sees old data).
    pub image: String,
    pub objno: u64,
}

impl ObjectKey {
    /// The object's name, which placement hashes.
    pub fn name(&self) -> String {
        format!("{}.{:016x}", self.image, self.objno)
    }
}
