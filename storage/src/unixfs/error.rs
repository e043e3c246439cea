use super::Cid;

/// Failures of the synchronous, block-local operations (parsing, hashing,
/// building).
#[derive(Debug, thiserror::Error)]
pub enum UnixfsError {
    /// The full user-facing message, already in Kubo's
    /// `invalid path "<input>": invalid cid: <reason>` shape so HTTP
    /// handlers can pass it through verbatim.
    #[error("{0}")]
    InvalidCid(String),
    /// A well-formed path that goes beyond a bare CID (sub-paths, `/ipns/`):
    /// we only serve whole files addressed by CID.
    #[error("unsupported path {0:?}: only /ipfs/<cid> is supported")]
    PathUnsupported(String),
    #[error("unsupported multihash code 0x{0:x}")]
    UnsupportedHash(u64),
    #[error("unsupported codec 0x{0:x}")]
    UnsupportedCodec(u64),
    /// Boxed so the error stays small enough to return cheaply.
    #[error("block does not match its CID: expected {expected}, got {actual}")]
    HashMismatch {
        expected: Box<Cid>,
        actual: Box<Cid>,
    },
    #[error("malformed block: {0}")]
    Malformed(String),
    #[error("bad add options: {0}")]
    BadOptions(String),
}

/// Failures while reading a file out of a DAG. `Clone` so a stream error
/// can be fanned out to several waiters.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ReadError {
    /// The block is not available from the source.
    #[error("block {0} not found")]
    NotFound(Cid),
    /// The DAG is structurally inconsistent (sizes disagree, wrong node types,
    /// undecodable blocks).
    #[error("corrupt DAG: {0}")]
    Corrupt(String),
    /// The root exists but is not a file (directory, symlink, HAMT shard, or
    /// a non-UnixFS codec).
    #[error("{0} is not a file")]
    NotAFile(Cid),
    /// Any other failure reported by the block source.
    #[error("block source error: {0}")]
    Source(String),
}
