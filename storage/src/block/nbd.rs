//! NBD export (fixed newstyle). Interface fixed by the integrator; the server is filled in below.

use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;

pub type DevResult<T> = Result<T, DevError>;

/// Why one I/O failed; the server maps each to an NBD errno.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DevError {
    /// EIO: the data cannot be read or made durable now (replicas below min_size, deadline passed,
    /// every replica corrupt). The message is logged by the server, never sent (NBD has no text).
    #[error("{0}")]
    Io(String),
    /// EINVAL: a request the device refuses (out of range is checked by the server before this).
    #[error("{0}")]
    Invalid(String),
    /// ENOSPC: the cluster is full.
    #[error("{0}")]
    NoSpace(String),
    /// EPERM: a write to a read-only export.
    #[error("{0}")]
    ReadOnly(String),
}

/// One opened export. Every method returns only when the operation is complete; a successful
/// `write`/`write_zeroes`/`trim` is already durable on `min_size` replicas, so FUA and FLUSH need
/// no extra work from the server (they are still passed on).
pub trait BlockDevice: Send + Sync + 'static {
    /// Current size in bytes (an image may be resized while exported).
    fn size(&self) -> u64;
    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, DevResult<Bytes>>;
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, DevResult<()>>;
    fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> BoxFuture<'_, DevResult<()>>;
    fn trim(&self, offset: u64, len: u32, fua: bool) -> BoxFuture<'_, DevResult<()>>;
    fn flush(&self) -> BoxFuture<'_, DevResult<()>>;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// NBD_REP_ERR_UNKNOWN: no such export (unknown pool or image, malformed `POOL/IMAGE`).
    #[error("{0}")]
    Unknown(String),
    /// NBD_REP_ERR_SHUTDOWN-like refusal: the export exists but cannot be served now.
    #[error("{0}")]
    Unavailable(String),
}

/// Where exports come from: the block service (any node serves any image).
pub trait ExportProvider: Send + Sync + 'static {
    /// Export names (`POOL/IMAGE`) for NBD_OPT_LIST.
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, String>>;
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn BlockDevice>, OpenError>>;
}
