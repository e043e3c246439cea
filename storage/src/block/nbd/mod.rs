//! NBD export (fixed newstyle): the interface an export provider implements, and the server.
//!
//! - this file: the interface ([`ExportProvider`], [`BlockDevice`] and their errors), the accept
//!   loop and one connection's life (handshake, then transmission), and stream helpers.
//! - `codec`: the protocol's wire constants and pure parsing/encoding of options, requests and
//!   replies, including the validation of requests (unit-tested without a stream).
//! - `handshake`: option negotiation up to the chosen export.
//! - `transmission`: reading and decoding requests, dispatching them to the device, and writing
//!   replies.

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

// ---------------------------------------------------------------------------------------------
// Server (the protocol choices apply to `codec`, `handshake` and `transmission`)
// ---------------------------------------------------------------------------------------------
//
// Protocol subset (doc/proto.md of NetworkBlockDevice/nbd):
// - Fixed newstyle handshake only, NOTLS mode. Options: EXPORT_NAME, ABORT, LIST, INFO, GO;
//   everything else (STARTTLS, STRUCTURED_REPLY, meta contexts, EXTENDED_HEADERS, unknown) gets
//   NBD_REP_ERR_UNSUP and the next option is parsed normally.
// - Transmission: simple replies only; READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES. Requests run
//   concurrently and their replies go out in completion order (matched by cookie) through one
//   writer task, so a reply header and its data are never interleaved with another reply.
//
// Choices where the spec leaves room:
// - `OpenError::Unavailable` → NBD_REP_ERR_SHUTDOWN (with the message). The spec defines it as
//   "unwilling to continue negotiation" and obliges the client to soft-disconnect, which is the
//   right recovery for an export that cannot be served *now*: reconnect later or to another node
//   (any node serves any image). NBD_REP_ERR_UNKNOWN would claim the export does not exist (GO
//   text: "does not exist on this server") and NBD_REP_ERR_POLICY a permanent refusal. A failing
//   `ExportProvider::list` is answered the same way (the spec names ERR_SHUTDOWN as a LIST error).
// - Option data longer than `MAX_OPTION_LEN` (64 KiB; no valid option of ours comes close) is
//   drained without buffering and answered with NBD_REP_ERR_TOO_BIG ("the request is too large
//   to process"), keeping the stream in sync. NBD_OPT_EXPORT_NAME cannot return an error, so an
//   oversized one closes the connection, as does an unknown/unavailable export name there.
// - Block sizes advertised (NBD_INFO_BLOCK_SIZE, always sent): min 1, preferred 4096, max 32 MiB.
//   READ/WRITE longer than 32 MiB → EINVAL (a WRITE's payload is drained first; 32 MiB is the
//   largest length the spec says must not be treated as a denial of service). TRIM and
//   WRITE_ZEROES carry no payload and are not capped (the Linux kernel client, which never sees
//   NBD_INFO_BLOCK_SIZE, sends them up to 4 GiB); the device receives them as `u32` lengths.
// - Range checks use `device.size()` at request time: past the end (or offset+len overflow) →
//   EINVAL for READ/TRIM, ENOSPC for WRITE/WRITE_ZEROES, as the spec's error section says.
// - Unknown command flags → EINVAL (spec SHOULD). FUA is accepted on every command (clients are
//   known to set it on reads); NO_HOLE on WRITE_ZEROES is accepted (the device never creates holes
//   that could later fail with ENOSPC in a way the client could avoid, so it is a no-op).
// - Zero-length READ/WRITE/TRIM/WRITE_ZEROES succeed without touching the device.
// - An empty export name (the "default export") is refused: ERR_UNKNOWN for INFO/GO, close for
//   EXPORT_NAME.
// - NBD_CMD_DISC: stop reading, wait for every in-flight request to be answered, call
//   `device.flush()` (best effort), then close. A hard disconnect (EOF) also waits for in-flight
//   requests before closing (their device operations are never cancelled midway).

mod codec;
mod handshake;
#[cfg(test)]
mod tests;
mod transmission;

pub use codec::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, TRANSMISSION_FLAGS};

use bytes::BytesMut;
use handshake::{negotiate, Negotiated};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};
use transmission::transmission;

/// IANA port for NBD.
pub const DEFAULT_PORT: u16 = 10809;

const BUF_SIZE: usize = 256 << 10;

/// Why a connection ended abnormally. Per-request failures are NBD errnos, never this.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("connection i/o: {0}")]
    Io(#[from] io::Error),
    /// The client set handshake flags we did not advertise (the spec says: drop the connection).
    #[error("client sent unknown handshake flags {0:#x}")]
    ClientFlags(u32),
    #[error("bad option magic {0:#x} (protocol violation)")]
    OptionMagic(u64),
    #[error("bad request magic {0:#x} (protocol violation)")]
    RequestMagic(u32),
    /// NBD_OPT_EXPORT_NAME for an export we cannot serve: it has no error reply, so we close.
    #[error("NBD_OPT_EXPORT_NAME {name:?} refused: {reason}")]
    ExportRefused { name: String, reason: String },
    #[error("internal: {0}")]
    Internal(String),
}

/// Accepts NBD clients on `listener` until `*shutdown` becomes true (or its sender is dropped),
/// one task per connection. Connections already accepted are not interrupted: they end when
/// their client disconnects.
pub async fn serve(
    listener: TcpListener,
    provider: Arc<dyn ExportProvider>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    debug!(?local, "nbd: accepting connections");
    if *shutdown.borrow_and_update() {
        return;
    }
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow_and_update() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(%peer, error = %e, "nbd: set_nodelay failed");
                    }
                    let provider = provider.clone();
                    tokio::spawn(async move {
                        let peer = peer.to_string();
                        if let Err(e) = run_conn(stream, provider, &peer).await {
                            debug!(%peer, error = %e, "nbd: connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "nbd: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    debug!(?local, "nbd: stopped accepting connections");
}

/// Serves one already-accepted connection (handshake, then transmission) until the client
/// disconnects. `Ok(())` for a clean end (ABORT, DISC, or the client hanging up between messages).
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    provider: Arc<dyn ExportProvider>,
) -> Result<(), NbdError> {
    run_conn(stream, provider, "-").await
}

async fn run_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    provider: Arc<dyn ExportProvider>,
    peer: &str,
) -> Result<(), NbdError> {
    let (rh, wh) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(BUF_SIZE, rh);
    let mut writer = BufWriter::with_capacity(BUF_SIZE, wh);
    match negotiate(&mut reader, &mut writer, &*provider, peer).await? {
        Negotiated::Closed => {
            debug!(peer, "nbd: client left during negotiation");
            Ok(())
        }
        Negotiated::Transmission { name, device } => {
            debug!(peer, export = %name, size = device.size(), "nbd: export opened");
            let export: Arc<str> = name.into();
            let res = transmission(reader, writer, device, export.clone()).await;
            match &res {
                Ok(()) => debug!(peer, export = %export, "nbd: export closed"),
                Err(e) => debug!(peer, export = %export, error = %e, "nbd: export closed"),
            }
            res
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stream helpers (handshake and transmission)
// ---------------------------------------------------------------------------------------------

/// Fills `buf`; `Ok(false)` if the stream ended cleanly before the first byte.
async fn read_full_or_eof<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

/// Discards exactly `n` bytes without buffering them.
async fn drain<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(n), &mut tokio::io::sink()).await?;
    if copied != n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads exactly `len` payload bytes into a fresh buffer (no zero-fill).
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    let mut take = r.take(len as u64);
    while buf.len() < len {
        if take.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}
