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

// ---------------------------------------------------------------------------------------------
// Server
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

use bytes::{Buf, BufMut, BytesMut};
use futures::FutureExt;
use std::io;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// IANA port for NBD.
pub const DEFAULT_PORT: u16 = 10809;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CFLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
const CFLAG_NO_ZEROES: u32 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const REP_ERR_SHUTDOWN: u32 = 0x8000_0007;
const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;
const TFLAG_SEND_TRIM: u16 = 1 << 5;
const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flags sent for every export: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
/// SEND_WRITE_ZEROES (not READ_ONLY, not CAN_MULTI_CONN).
pub const TRANSMISSION_FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

const NBD_EPERM: u32 = 1;
const NBD_EIO: u32 = 5;
const NBD_EINVAL: u32 = 22;
const NBD_ENOSPC: u32 = 28;

/// Advertised minimum block size.
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Advertised preferred block size.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Advertised maximum block size: the largest READ/WRITE accepted.
pub const MAX_BLOCK_SIZE: u32 = 32 << 20;
/// Longest option data accepted during the handshake.
const MAX_OPTION_LEN: u32 = 64 << 10;
/// The spec's limit for strings (export names, messages).
const MAX_STRING_LEN: usize = 4096;
/// Requests in flight per connection (parsed, not yet answered).
const MAX_INFLIGHT: u32 = 128;
/// READ/WRITE payload bytes in flight per connection, in units of `BYTE_UNIT`.
const BYTE_UNIT: u32 = 4096;
const MAX_INFLIGHT_BYTES: u32 = 64 << 20;
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
// Handshake
// ---------------------------------------------------------------------------------------------

enum Negotiated {
    /// The client aborted or hung up.
    Closed,
    Transmission {
        name: String,
        device: Arc<dyn BlockDevice>,
    },
}

async fn negotiate<R, W>(
    r: &mut R,
    w: &mut W,
    provider: &dyn ExportProvider,
    peer: &str,
) -> Result<Negotiated, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 18];
    {
        let mut b = &mut greeting[..];
        b.put_u64(NBDMAGIC);
        b.put_u64(IHAVEOPT);
        b.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    }
    w.write_all(&greeting).await?;
    w.flush().await?;

    let mut cf = [0u8; 4];
    if !read_full_or_eof(r, &mut cf).await? {
        return Ok(Negotiated::Closed);
    }
    let cflags = u32::from_be_bytes(cf);
    if cflags & !(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES) != 0 {
        debug!(peer, cflags, "nbd: unknown client flags, closing");
        return Err(NbdError::ClientFlags(cflags));
    }
    let no_zeroes = cflags & CFLAG_NO_ZEROES != 0;

    loop {
        let mut hdr = [0u8; 16];
        if !read_full_or_eof(r, &mut hdr).await? {
            return Ok(Negotiated::Closed);
        }
        let mut h = &hdr[..];
        let magic = h.get_u64();
        let opt = h.get_u32();
        let len = h.get_u32();
        if magic != IHAVEOPT {
            warn!(peer, magic, "nbd: bad option magic, closing");
            return Err(NbdError::OptionMagic(magic));
        }
        if len > MAX_OPTION_LEN {
            if opt == OPT_EXPORT_NAME {
                return Err(NbdError::ExportRefused {
                    name: String::new(),
                    reason: format!("option length {len} exceeds {MAX_OPTION_LEN}"),
                });
            }
            drain(r, u64::from(len)).await?;
            let msg = format!("option data of {len} bytes exceeds the limit of {MAX_OPTION_LEN}");
            opt_reply(w, opt, REP_ERR_TOO_BIG, &[msg.as_bytes()]).await?;
            w.flush().await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;

        match opt {
            OPT_EXPORT_NAME => {
                let name = match export_name(&data) {
                    Ok(n) if !n.is_empty() => n.to_owned(),
                    Ok(_) => {
                        return Err(NbdError::ExportRefused {
                            name: String::new(),
                            reason: "no default export".into(),
                        })
                    }
                    Err(reason) => {
                        return Err(NbdError::ExportRefused {
                            name: String::from_utf8_lossy(&data).into_owned(),
                            reason: reason.into(),
                        })
                    }
                };
                let device = match provider.open(&name).await {
                    Ok(d) => d,
                    Err(e) => {
                        debug!(peer, export = %name, error = %e, "nbd: EXPORT_NAME refused");
                        return Err(NbdError::ExportRefused {
                            name,
                            reason: e.to_string(),
                        });
                    }
                };
                let mut reply = [0u8; 10 + 124];
                {
                    let mut b = &mut reply[..];
                    b.put_u64(device.size());
                    b.put_u16(TRANSMISSION_FLAGS);
                }
                let n = if no_zeroes { 10 } else { reply.len() };
                w.write_all(&reply[..n]).await?;
                w.flush().await?;
                return Ok(Negotiated::Transmission { name, device });
            }
            OPT_ABORT => {
                // Data (if any) is ignored, as the spec asks. The client may already be gone.
                let _ = opt_reply(w, opt, REP_ACK, &[]).await;
                let _ = w.flush().await;
                return Ok(Negotiated::Closed);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    opt_reply(w, opt, REP_ERR_INVALID, &[b"NBD_OPT_LIST takes no data"]).await?;
                } else {
                    match provider.list().await {
                        Ok(names) => {
                            for name in &names {
                                let len = (name.len() as u32).to_be_bytes();
                                opt_reply(w, opt, REP_SERVER, &[&len, name.as_bytes()]).await?;
                            }
                            opt_reply(w, opt, REP_ACK, &[]).await?;
                        }
                        Err(e) => {
                            warn!(peer, error = %e, "nbd: listing exports failed");
                            let msg = format!("cannot list exports now: {e}");
                            opt_reply(w, opt, REP_ERR_SHUTDOWN, &[message(&msg)]).await?;
                        }
                    }
                }
            }
            OPT_INFO | OPT_GO => {
                if let Some(device) = info_or_go(w, opt, &data, provider, peer).await? {
                    if opt == OPT_GO {
                        w.flush().await?;
                        let name = parse_info_request(&data)
                            .and_then(|req| export_name(req.name).ok())
                            .unwrap_or_default()
                            .to_owned();
                        return Ok(Negotiated::Transmission { name, device });
                    }
                }
            }
            _ => {
                // STARTTLS (NOTLS mode), STRUCTURED_REPLY, LIST/SET_META_CONTEXT,
                // EXTENDED_HEADERS and anything unknown.
                let msg = format!("option {opt} is not supported by this server");
                opt_reply(w, opt, REP_ERR_UNSUP, &[msg.as_bytes()]).await?;
            }
        }
        w.flush().await?;
    }
}

/// The parsed data of NBD_OPT_INFO / NBD_OPT_GO.
struct InfoRequest<'a> {
    name: &'a [u8],
    /// `n` big-endian u16 information requests.
    infos: &'a [u8],
}

fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let mut b = data;
    let name_len = usize::try_from(b.try_get_u32().ok()?).ok()?;
    if name_len > b.len().checked_sub(2)? {
        return None;
    }
    let (name, mut rest) = b.split_at(name_len);
    let n = usize::from(rest.try_get_u16().ok()?);
    if rest.len() != n * 2 {
        return None;
    }
    Some(InfoRequest { name, infos: rest })
}

/// Validates an export name (the spec's string rules). The empty name is returned as is.
fn export_name(raw: &[u8]) -> Result<&str, &'static str> {
    if raw.len() > MAX_STRING_LEN {
        return Err("export name longer than 4096 bytes");
    }
    let s = std::str::from_utf8(raw).map_err(|_| "export name is not valid UTF-8")?;
    if s.contains('\0') {
        return Err("export name contains NUL");
    }
    Ok(s)
}

/// Handles NBD_OPT_INFO/GO up to and including the final reply; returns the opened device on
/// success (the caller enters transmission for GO).
async fn info_or_go<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    data: &[u8],
    provider: &dyn ExportProvider,
    peer: &str,
) -> Result<Option<Arc<dyn BlockDevice>>, NbdError> {
    let Some(req) = parse_info_request(data) else {
        opt_reply(
            w,
            opt,
            REP_ERR_INVALID,
            &[b"malformed NBD_OPT_INFO/GO data"],
        )
        .await?;
        return Ok(None);
    };
    let name = match export_name(req.name) {
        Ok(n) => n,
        Err(reason) => {
            opt_reply(w, opt, REP_ERR_INVALID, &[reason.as_bytes()]).await?;
            return Ok(None);
        }
    };
    if name.is_empty() {
        let msg = b"there is no default export; name one as POOL/IMAGE";
        opt_reply(w, opt, REP_ERR_UNKNOWN, &[msg]).await?;
        return Ok(None);
    }
    let device = match provider.open(name).await {
        Ok(d) => d,
        Err(OpenError::Unknown(m)) => {
            debug!(peer, export = name, error = %m, "nbd: unknown export");
            let msg = format!("unknown export {name:?}: {m}");
            opt_reply(w, opt, REP_ERR_UNKNOWN, &[message(&msg)]).await?;
            return Ok(None);
        }
        Err(OpenError::Unavailable(m)) => {
            debug!(peer, export = name, error = %m, "nbd: export unavailable");
            let msg = format!("export {name:?} cannot be served now: {m}");
            opt_reply(w, opt, REP_ERR_SHUTDOWN, &[message(&msg)]).await?;
            return Ok(None);
        }
    };

    let mut export = [0u8; 12];
    {
        let mut b = &mut export[..];
        b.put_u16(INFO_EXPORT);
        b.put_u64(device.size());
        b.put_u16(TRANSMISSION_FLAGS);
    }
    opt_reply(w, opt, REP_INFO, &[&export]).await?;
    // Always sent (the spec allows unrequested info): a client that does not understand it
    // ignores it, and qemu uses it to size its requests.
    let mut block = [0u8; 14];
    {
        let mut b = &mut block[..];
        b.put_u16(INFO_BLOCK_SIZE);
        b.put_u32(MIN_BLOCK_SIZE);
        b.put_u32(PREFERRED_BLOCK_SIZE);
        b.put_u32(MAX_BLOCK_SIZE);
    }
    opt_reply(w, opt, REP_INFO, &[&block]).await?;
    let (mut sent_name, mut sent_desc) = (false, false);
    for chunk in req.infos.chunks_exact(2) {
        match u16::from_be_bytes([chunk[0], chunk[1]]) {
            INFO_NAME if !sent_name => {
                sent_name = true;
                let ty = INFO_NAME.to_be_bytes();
                opt_reply(w, opt, REP_INFO, &[&ty, name.as_bytes()]).await?;
            }
            INFO_DESCRIPTION if !sent_desc => {
                sent_desc = true;
                let ty = INFO_DESCRIPTION.to_be_bytes();
                let desc = format!("Bulwark block image {name}");
                opt_reply(w, opt, REP_INFO, &[&ty, message(&desc)]).await?;
            }
            _ => {} // EXPORT and BLOCK_SIZE already sent; unknown ones are ignored.
        }
    }
    opt_reply(w, opt, REP_ACK, &[]).await?;
    Ok(Some(device))
}

/// Truncates a message to the spec's string limit (on a char boundary).
fn message(s: &str) -> &[u8] {
    if s.len() <= MAX_STRING_LEN {
        return s.as_bytes();
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

async fn opt_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    reply_type: u32,
    parts: &[&[u8]],
) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| io::Error::other("option reply too long"))?;
    let mut hdr = [0u8; 20];
    {
        let mut b = &mut hdr[..];
        b.put_u64(OPT_REPLY_MAGIC);
        b.put_u32(opt);
        b.put_u32(reply_type);
        b.put_u32(len);
    }
    w.write_all(&hdr).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    Ok(())
}

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

// ---------------------------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------------------------

/// One simple reply queued for the writer task. Dropping it releases its in-flight budget.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Bytes>,
    _budget: Budget,
}

/// In-flight accounting of one request: a request slot plus its payload bytes.
struct Budget {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

enum Op {
    Read { offset: u64, len: u32 },
    Write { offset: u64, data: Bytes, fua: bool },
    WriteZeroes { offset: u64, len: u32, fua: bool },
    Trim { offset: u64, len: u32, fua: bool },
    Flush,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::WriteZeroes { .. } => "write_zeroes",
            Op::Trim { .. } => "trim",
            Op::Flush => "flush",
        }
    }

    fn range(&self) -> (u64, u64) {
        match self {
            Op::Read { offset, len }
            | Op::WriteZeroes { offset, len, .. }
            | Op::Trim { offset, len, .. } => (*offset, u64::from(*len)),
            Op::Write { offset, data, .. } => (*offset, data.len() as u64),
            Op::Flush => (0, 0),
        }
    }

    async fn run(self, dev: &dyn BlockDevice) -> DevResult<Option<Bytes>> {
        match self {
            Op::Read { offset, len } => {
                let data = dev.read(offset, len).await?;
                if data.len() != len as usize {
                    return Err(DevError::Io(format!(
                        "device returned {} bytes for a read of {len}",
                        data.len()
                    )));
                }
                Ok(Some(data))
            }
            Op::Write { offset, data, fua } => dev.write(offset, data, fua).await.map(|()| None),
            Op::WriteZeroes { offset, len, fua } => {
                dev.write_zeroes(offset, len, fua).await.map(|()| None)
            }
            Op::Trim { offset, len, fua } => dev.trim(offset, len, fua).await.map(|()| None),
            Op::Flush => dev.flush().await.map(|()| None),
        }
    }
}

fn errno(e: &DevError) -> u32 {
    match e {
        DevError::Io(_) => NBD_EIO,
        DevError::Invalid(_) => NBD_EINVAL,
        DevError::NoSpace(_) => NBD_ENOSPC,
        DevError::ReadOnly(_) => NBD_EPERM,
    }
}

/// `offset..offset+len` lies inside an export of `size` bytes.
fn in_range(offset: u64, len: u32, size: u64) -> bool {
    offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= size)
}

struct Transmission {
    device: Arc<dyn BlockDevice>,
    export: Arc<str>,
    tx: mpsc::Sender<Reply>,
    slots: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Transmission {
    /// Waits for room for one more request carrying `payload` bytes (READ data or WRITE data).
    async fn budget(&self, payload: u32) -> Option<Budget> {
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        let units = payload.div_ceil(BYTE_UNIT);
        let bytes = if units == 0 {
            None
        } else {
            Some(self.bytes.clone().acquire_many_owned(units).await.ok()?)
        };
        Some(Budget {
            _slot: slot,
            _bytes: bytes,
        })
    }

    /// Queues an immediate reply; false once the writer is gone.
    async fn reply(&self, cookie: u64, error: u32, budget: Budget) -> bool {
        let reply = Reply {
            cookie,
            error,
            data: None,
            _budget: budget,
        };
        self.tx.send(reply).await.is_ok()
    }

    fn spawn(&self, cookie: u64, op: Op, budget: Budget) {
        let device = self.device.clone();
        let export = self.export.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let name = op.name();
            let (offset, len) = op.range();
            let outcome = AssertUnwindSafe(op.run(&*device)).catch_unwind().await;
            let (error, data) = match outcome {
                Ok(Ok(data)) => (0, data),
                Ok(Err(e)) => {
                    if let DevError::Io(msg) = &e {
                        warn!(export = %export, op = name, offset, len, error = %msg, "nbd: I/O error");
                    } else {
                        debug!(export = %export, op = name, offset, len, error = %e, "nbd: request failed");
                    }
                    (errno(&e), None)
                }
                Err(_) => {
                    warn!(export = %export, op = name, offset, len, "nbd: device panicked");
                    (NBD_EIO, None)
                }
            };
            let reply = Reply {
                cookie,
                error,
                data,
                _budget: budget,
            };
            // Fails only when the connection is already broken.
            let _ = tx.send(reply).await;
        });
    }
}

/// What ended the request loop.
enum End {
    /// NBD_CMD_DISC.
    Disconnect,
    /// The client hung up between requests, or the writer is gone.
    Closed,
}

async fn transmission<R, W>(
    mut r: R,
    w: W,
    device: Arc<dyn BlockDevice>,
    export: Arc<str>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(MAX_INFLIGHT as usize);
    let mut writer = tokio::spawn(write_replies(w, rx));
    let t = Transmission {
        device,
        export,
        tx,
        slots: Arc::new(Semaphore::new(MAX_INFLIGHT as usize)),
        bytes: Arc::new(Semaphore::new((MAX_INFLIGHT_BYTES / BYTE_UNIT) as usize)),
    };
    let mut writer_result = None;

    let end: Result<End, NbdError> = async {
        loop {
            let mut hdr = [0u8; 28];
            let got = tokio::select! {
                biased;
                res = &mut writer => {
                    writer_result = Some(res);
                    return Ok(End::Closed);
                }
                got = read_full_or_eof(&mut r, &mut hdr) => got?,
            };
            if !got {
                return Ok(End::Closed);
            }
            let mut h = &hdr[..];
            let magic = h.get_u32();
            let flags = h.get_u16();
            let cmd = h.get_u16();
            let cookie = h.get_u64();
            let offset = h.get_u64();
            let len = h.get_u32();
            if magic != REQUEST_MAGIC {
                warn!(export = %t.export, magic, "nbd: bad request magic, closing connection");
                return Err(NbdError::RequestMagic(magic));
            }
            if cmd == CMD_DISC {
                return Ok(End::Disconnect);
            }
            let payload = match cmd {
                CMD_READ | CMD_WRITE if len <= MAX_BLOCK_SIZE => len,
                _ => 0,
            };
            let Some(budget) = t.budget(payload).await else {
                return Ok(End::Closed);
            };
            let fua = flags & CMD_FLAG_FUA != 0;
            let size = t.device.size();
            let outcome = match cmd {
                CMD_WRITE => {
                    if len > MAX_BLOCK_SIZE {
                        drain(&mut r, u64::from(len)).await?;
                        Err(NBD_EINVAL)
                    } else {
                        let data = read_payload(&mut r, len as usize).await?;
                        if flags & !CMD_FLAG_FUA != 0 {
                            Err(NBD_EINVAL)
                        } else if len == 0 {
                            Err(0)
                        } else if !in_range(offset, len, size) {
                            Err(NBD_ENOSPC)
                        } else {
                            Ok(Op::Write { offset, data, fua })
                        }
                    }
                }
                CMD_READ => {
                    if flags & !CMD_FLAG_FUA != 0 || len > MAX_BLOCK_SIZE {
                        Err(NBD_EINVAL)
                    } else if len == 0 {
                        Err(0)
                    } else if !in_range(offset, len, size) {
                        Err(NBD_EINVAL)
                    } else {
                        Ok(Op::Read { offset, len })
                    }
                }
                CMD_WRITE_ZEROES => {
                    if flags & !(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE) != 0 {
                        Err(NBD_EINVAL)
                    } else if len == 0 {
                        Err(0)
                    } else if !in_range(offset, len, size) {
                        Err(NBD_ENOSPC)
                    } else {
                        Ok(Op::WriteZeroes { offset, len, fua })
                    }
                }
                CMD_TRIM => {
                    if flags & !CMD_FLAG_FUA != 0 {
                        Err(NBD_EINVAL)
                    } else if len == 0 {
                        Err(0)
                    } else if !in_range(offset, len, size) {
                        Err(NBD_EINVAL)
                    } else {
                        Ok(Op::Trim { offset, len, fua })
                    }
                }
                CMD_FLUSH => {
                    if flags & !CMD_FLAG_FUA != 0 {
                        Err(NBD_EINVAL)
                    } else {
                        Ok(Op::Flush)
                    }
                }
                // CACHE, BLOCK_STATUS (needs structured replies) and unknown commands: none
                // of them carries a payload, so nothing else is consumed.
                _ => {
                    debug!(export = %t.export, cmd, "nbd: unsupported command");
                    Err(NBD_EINVAL)
                }
            };
            match outcome {
                Ok(op) => t.spawn(cookie, op, budget),
                Err(error) => {
                    if !t.reply(cookie, error, budget).await {
                        return Ok(End::Closed);
                    }
                }
            }
        }
    }
    .await;

    if let Ok(End::Disconnect) = end {
        // Every request holds a slot until its reply is written (or dropped with a dead writer).
        if let Ok(all) = t.slots.acquire_many(MAX_INFLIGHT).await {
            drop(all);
        }
        match AssertUnwindSafe(t.device.flush()).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(export = %t.export, error = %e, "nbd: flush on disconnect failed"),
            Err(_) => warn!(export = %t.export, "nbd: device panicked in flush on disconnect"),
        }
    }
    // The writer ends (and closes the stream) once every sender is gone: ours now, the
    // handlers' when their requests complete.
    drop(t);
    let writer_result = match writer_result {
        Some(res) => res,
        None => writer.await,
    };
    let written = writer_result
        .map_err(|e| NbdError::Internal(format!("reply writer failed: {e}")))
        .and_then(|res| res.map_err(NbdError::from));
    end.and(written)
}

/// The only writer of the stream in transmission: writes replies in the order they complete,
/// flushing whenever no further reply is immediately ready. Closes the stream at the end.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Reply>,
) -> io::Result<()> {
    while let Some(first) = rx.recv().await {
        write_reply(&mut w, first).await?;
        while let Ok(next) = rx.try_recv() {
            write_reply(&mut w, next).await?;
        }
        w.flush().await?;
    }
    // The client may already have closed its side; nothing useful to report then.
    let _ = w.shutdown().await;
    Ok(())
}

async fn write_reply<W: AsyncWrite + Unpin>(w: &mut W, reply: Reply) -> io::Result<()> {
    let mut hdr = [0u8; 16];
    {
        let mut b = &mut hdr[..];
        b.put_u32(SIMPLE_REPLY_MAGIC);
        b.put_u32(reply.error);
        b.put_u64(reply.cookie);
    }
    w.write_all(&hdr).await?;
    if reply.error == 0 {
        if let Some(data) = &reply.data {
            w.write_all(data).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use tokio::io::DuplexStream;
    use tokio::sync::Notify;
    use tokio::task::JoinHandle;

    const MIB: usize = 1 << 20;
    /// Reads at this offset of a gated device wait for the gate.
    const GATED_OFFSET: u64 = 0;

    /// An in-memory export; reads at `GATED_OFFSET` wait for `gate` when it is set.
    struct MemDev {
        data: Mutex<Vec<u8>>,
        gate: Option<Arc<Notify>>,
        flushes: Mutex<u32>,
        fua_writes: Mutex<u32>,
    }

    impl MemDev {
        fn new(size: usize) -> Arc<Self> {
            Arc::new(MemDev {
                data: Mutex::new(vec![0; size]),
                gate: None,
                flushes: Mutex::new(0),
                fua_writes: Mutex::new(0),
            })
        }

        fn gated(size: usize, gate: Arc<Notify>) -> Arc<Self> {
            Arc::new(MemDev {
                data: Mutex::new(vec![0; size]),
                gate: Some(gate),
                flushes: Mutex::new(0),
                fua_writes: Mutex::new(0),
            })
        }

        fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
            self.data.lock().unwrap()[range].to_vec()
        }

        fn fill(&self, offset: usize, bytes: &[u8]) {
            self.data.lock().unwrap()[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
    }

    impl BlockDevice for MemDev {
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, DevResult<Bytes>> {
            async move {
                if offset == GATED_OFFSET {
                    if let Some(gate) = &self.gate {
                        gate.notified().await;
                    }
                }
                let d = self.data.lock().unwrap();
                let (o, l) = (offset as usize, len as usize);
                Ok(Bytes::copy_from_slice(&d[o..o + l]))
            }
            .boxed()
        }
        fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, DevResult<()>> {
            async move {
                if fua {
                    *self.fua_writes.lock().unwrap() += 1;
                }
                self.fill(offset as usize, &data);
                Ok(())
            }
            .boxed()
        }
        fn write_zeroes(&self, offset: u64, len: u32, _fua: bool) -> BoxFuture<'_, DevResult<()>> {
            async move {
                let mut d = self.data.lock().unwrap();
                d[offset as usize..offset as usize + len as usize].fill(0);
                Ok(())
            }
            .boxed()
        }
        fn trim(&self, offset: u64, len: u32, fua: bool) -> BoxFuture<'_, DevResult<()>> {
            self.write_zeroes(offset, len, fua)
        }
        fn flush(&self) -> BoxFuture<'_, DevResult<()>> {
            async move {
                *self.flushes.lock().unwrap() += 1;
                Ok(())
            }
            .boxed()
        }
    }

    /// Fails every operation with the given error (or panics when `None`).
    struct FailDev(Option<DevError>);

    impl FailDev {
        fn fail<T>(&self) -> BoxFuture<'_, DevResult<T>> {
            let e = self.0.clone();
            async move {
                match e {
                    Some(e) => Err(e),
                    None => panic!("device bug"),
                }
            }
            .boxed()
        }
    }

    impl BlockDevice for FailDev {
        fn size(&self) -> u64 {
            MIB as u64
        }
        fn read(&self, _: u64, _: u32) -> BoxFuture<'_, DevResult<Bytes>> {
            self.fail()
        }
        fn write(&self, _: u64, _: Bytes, _: bool) -> BoxFuture<'_, DevResult<()>> {
            self.fail()
        }
        fn write_zeroes(&self, _: u64, _: u32, _: bool) -> BoxFuture<'_, DevResult<()>> {
            self.fail()
        }
        fn trim(&self, _: u64, _: u32, _: bool) -> BoxFuture<'_, DevResult<()>> {
            self.fail()
        }
        fn flush(&self) -> BoxFuture<'_, DevResult<()>> {
            self.fail()
        }
    }

    /// Exports `rbd/a` (1 MiB) and `rbd/b` (64 KiB), plus whatever a test adds; `rbd/busy`
    /// exists but is unavailable.
    struct TestProvider {
        exports: BTreeMap<String, Arc<dyn BlockDevice>>,
    }

    impl ExportProvider for TestProvider {
        fn list(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
            let names = self.exports.keys().cloned().collect();
            async move { Ok(names) }.boxed()
        }
        fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn BlockDevice>, OpenError>> {
            let found = self.exports.get(name).cloned();
            let name = name.to_owned();
            async move {
                if name == "rbd/busy" {
                    return Err(OpenError::Unavailable("pool below min_size".into()));
                }
                found.ok_or_else(|| OpenError::Unknown(format!("no image {name}")))
            }
            .boxed()
        }
    }

    struct Fixture {
        a: Arc<MemDev>,
        b: Arc<MemDev>,
        provider: Arc<dyn ExportProvider>,
    }

    fn fixture_with(extra: Vec<(&str, Arc<dyn BlockDevice>)>) -> Fixture {
        let a = MemDev::new(MIB);
        let b = MemDev::new(64 << 10);
        let mut exports: BTreeMap<String, Arc<dyn BlockDevice>> = BTreeMap::new();
        exports.insert("rbd/a".into(), a.clone());
        exports.insert("rbd/b".into(), b.clone());
        for (name, dev) in extra {
            exports.insert(name.into(), dev);
        }
        Fixture {
            a,
            b,
            provider: Arc::new(TestProvider { exports }),
        }
    }

    fn fixture() -> Fixture {
        fixture_with(Vec::new())
    }

    /// Hang guard for protocol tests (never an assertion on speed).
    async fn guard<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .expect("test timed out")
    }

    // --- a minimal hand-written client -------------------------------------------------------

    fn start(
        provider: &Arc<dyn ExportProvider>,
    ) -> (DuplexStream, JoinHandle<Result<(), NbdError>>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let handle = tokio::spawn(serve_conn(server, provider.clone()));
        (client, handle)
    }

    async fn greet<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S, cflags: u32) {
        let mut g = [0u8; 18];
        c.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        let mut b = &g[..];
        assert_eq!(b.get_u64(), NBDMAGIC);
        assert_eq!(b.get_u64(), IHAVEOPT);
        assert_eq!(b.get_u16(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c.write_all(&cflags.to_be_bytes()).await.unwrap();
    }

    async fn send_opt<S: AsyncWrite + Unpin>(c: &mut S, opt: u32, data: &[u8]) {
        let mut m = Vec::new();
        m.put_u64(IHAVEOPT);
        m.put_u32(opt);
        m.put_u32(data.len() as u32);
        m.extend_from_slice(data);
        c.write_all(&m).await.unwrap();
    }

    async fn read_rep<S: AsyncRead + Unpin>(c: &mut S) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        c.read_exact(&mut h).await.unwrap();
        let mut b = &h[..];
        assert_eq!(b.get_u64(), OPT_REPLY_MAGIC);
        let opt = b.get_u32();
        let ty = b.get_u32();
        let mut data = vec![0u8; b.get_u32() as usize];
        c.read_exact(&mut data).await.unwrap();
        (opt, ty, data)
    }

    fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.put_u32(name.len() as u32);
        d.extend_from_slice(name.as_bytes());
        d.put_u16(infos.len() as u16);
        for i in infos {
            d.put_u16(*i);
        }
        d
    }

    #[derive(Debug, Default)]
    struct Info {
        size: u64,
        flags: u16,
        block: Option<(u32, u32, u32)>,
        name: Option<String>,
        description: Option<String>,
    }

    /// Reads NBD_REP_INFO replies up to the final reply; `Err(reply type, message)` on error.
    async fn read_info<S: AsyncRead + Unpin>(c: &mut S, opt: u32) -> Result<Info, (u32, String)> {
        let mut info = Info::default();
        let mut saw_export = false;
        loop {
            let (o, ty, data) = read_rep(c).await;
            assert_eq!(o, opt);
            match ty {
                REP_INFO => {
                    let mut b = &data[..];
                    match b.get_u16() {
                        INFO_EXPORT => {
                            assert_eq!(data.len(), 12);
                            info.size = b.get_u64();
                            info.flags = b.get_u16();
                            saw_export = true;
                        }
                        INFO_BLOCK_SIZE => {
                            assert_eq!(data.len(), 14);
                            info.block = Some((b.get_u32(), b.get_u32(), b.get_u32()));
                        }
                        INFO_NAME => info.name = Some(String::from_utf8(b.to_vec()).unwrap()),
                        INFO_DESCRIPTION => {
                            info.description = Some(String::from_utf8(b.to_vec()).unwrap())
                        }
                        other => panic!("unexpected info {other}"),
                    }
                }
                REP_ACK => {
                    assert!(saw_export, "ACK without NBD_INFO_EXPORT");
                    return Ok(info);
                }
                err => {
                    assert!(err & 0x8000_0000 != 0, "unexpected reply {err}");
                    return Err((err, String::from_utf8(data).unwrap()));
                }
            }
        }
    }

    /// Full handshake ending in GO on `name`; returns the export size.
    async fn connect_go<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S, name: &str) -> u64 {
        greet(c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
        send_opt(c, OPT_GO, &info_data(name, &[INFO_BLOCK_SIZE])).await;
        let info = read_info(c, OPT_GO).await.expect("GO failed");
        assert_eq!(info.flags, TRANSMISSION_FLAGS);
        info.size
    }

    async fn request<S: AsyncWrite + Unpin>(
        c: &mut S,
        cmd: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut m = Vec::with_capacity(28 + payload.len());
        m.put_u32(REQUEST_MAGIC);
        m.put_u16(flags);
        m.put_u16(cmd);
        m.put_u64(cookie);
        m.put_u64(offset);
        m.put_u32(len);
        m.extend_from_slice(payload);
        c.write_all(&m).await.unwrap();
    }

    /// Reads a simple reply header: (error, cookie).
    async fn simple<S: AsyncRead + Unpin>(c: &mut S) -> (u32, u64) {
        let mut h = [0u8; 16];
        c.read_exact(&mut h).await.unwrap();
        let mut b = &h[..];
        assert_eq!(b.get_u32(), SIMPLE_REPLY_MAGIC);
        (b.get_u32(), b.get_u64())
    }

    async fn read_n<S: AsyncRead + Unpin>(c: &mut S, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        c.read_exact(&mut v).await.unwrap();
        v
    }

    async fn write_ok<S: AsyncRead + AsyncWrite + Unpin>(
        c: &mut S,
        cookie: u64,
        off: u64,
        d: &[u8],
    ) {
        request(c, CMD_WRITE, 0, cookie, off, d.len() as u32, d).await;
        assert_eq!(simple(c).await, (0, cookie));
    }

    async fn read_ok<S: AsyncRead + AsyncWrite + Unpin>(
        c: &mut S,
        cookie: u64,
        off: u64,
        len: usize,
    ) -> Vec<u8> {
        request(c, CMD_READ, 0, cookie, off, len as u32, &[]).await;
        assert_eq!(simple(c).await, (0, cookie));
        read_n(c, len).await
    }

    /// The server closed the connection: EOF on read.
    async fn assert_closed<S: AsyncRead + Unpin>(c: &mut S) {
        let mut buf = [0u8; 1];
        assert_eq!(
            c.read(&mut buf).await.unwrap(),
            0,
            "connection should be closed"
        );
    }

    async fn disconnect<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S) {
        request(c, CMD_DISC, 0, 0, 0, 0, &[]).await;
        assert_closed(c).await;
    }

    // --- handshake ------------------------------------------------------------------------

    #[tokio::test]
    async fn go_unknown_export_then_another_option_works() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
            send_opt(&mut c, OPT_GO, &info_data("rbd/nope", &[])).await;
            let (ty, msg) = read_info(&mut c, OPT_GO).await.unwrap_err();
            assert_eq!(ty, REP_ERR_UNKNOWN);
            assert!(msg.contains("rbd/nope"), "{msg}");
            // Empty name: there is no default export.
            send_opt(&mut c, OPT_GO, &info_data("", &[])).await;
            assert_eq!(
                read_info(&mut c, OPT_GO).await.unwrap_err().0,
                REP_ERR_UNKNOWN
            );
            // Still negotiating: a GO on a real export succeeds.
            send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[INFO_BLOCK_SIZE])).await;
            let info = read_info(&mut c, OPT_GO).await.unwrap();
            assert_eq!(info.size, MIB as u64);
            assert_eq!(info.flags, TRANSMISSION_FLAGS);
            assert_eq!(info.block, Some((1, 4096, 32 << 20)));
            assert_eq!(&read_ok(&mut c, 1, 0, 16).await, &[0u8; 16]);
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn go_on_unavailable_export_is_err_shutdown() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
            send_opt(&mut c, OPT_INFO, &info_data("rbd/busy", &[])).await;
            let (ty, msg) = read_info(&mut c, OPT_INFO).await.unwrap_err();
            assert_eq!(ty, REP_ERR_SHUTDOWN);
            assert!(msg.contains("min_size"), "{msg}");
            send_opt(&mut c, OPT_ABORT, &[]).await;
            assert_eq!(read_rep(&mut c).await, (OPT_ABORT, REP_ACK, vec![]));
            assert_closed(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn list_exports() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
            send_opt(&mut c, OPT_LIST, &[]).await;
            let mut names = Vec::new();
            loop {
                let (opt, ty, data) = read_rep(&mut c).await;
                assert_eq!(opt, OPT_LIST);
                if ty == REP_ACK {
                    break;
                }
                assert_eq!(ty, REP_SERVER);
                let mut b = &data[..];
                let n = b.get_u32() as usize;
                assert_eq!(n, b.len());
                names.push(String::from_utf8(b.to_vec()).unwrap());
            }
            assert_eq!(names, ["rbd/a", "rbd/b"]);
            // LIST with data is invalid; negotiation continues.
            send_opt(&mut c, OPT_LIST, b"x").await;
            assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
            send_opt(&mut c, OPT_ABORT, &[]).await;
            assert_eq!(read_rep(&mut c).await.1, REP_ACK);
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn info_then_go() {
        guard(async {
            let f = fixture();
            f.b.fill(0, b"hello");
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
            let req = [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 77];
            send_opt(&mut c, OPT_INFO, &info_data("rbd/b", &req)).await;
            let info = read_info(&mut c, OPT_INFO).await.unwrap();
            assert_eq!(info.size, 64 << 10);
            assert_eq!(info.name.as_deref(), Some("rbd/b"));
            assert!(info.description.unwrap().contains("rbd/b"));
            assert_eq!(info.block, Some((1, 4096, 32 << 20)));
            // INFO did not enter transmission: GO next.
            send_opt(&mut c, OPT_GO, &info_data("rbd/b", &[])).await;
            let info = read_info(&mut c, OPT_GO).await.unwrap();
            assert_eq!(info.size, 64 << 10);
            assert_eq!(read_ok(&mut c, 9, 0, 5).await, b"hello");
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn malformed_info_is_invalid() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
            // Name length larger than the option.
            let mut d = info_data("rbd/a", &[]);
            d[3] = 200;
            send_opt(&mut c, OPT_GO, &d).await;
            assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
            // Info count disagreeing with the length.
            let mut d = info_data("rbd/a", &[INFO_NAME]);
            d.pop();
            send_opt(&mut c, OPT_INFO, &d).await;
            assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
            // Too short to hold anything.
            send_opt(&mut c, OPT_GO, &[0, 0]).await;
            assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
            // Not UTF-8.
            send_opt(&mut c, OPT_GO, &[0, 0, 0, 1, 0xff, 0, 0]).await;
            assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
            send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[])).await;
            read_info(&mut c, OPT_GO).await.unwrap();
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn abort_acks_and_closes() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
            send_opt(&mut c, OPT_ABORT, b"ignored").await;
            assert_eq!(read_rep(&mut c).await, (OPT_ABORT, REP_ACK, vec![]));
            assert_closed(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn export_name_with_and_without_zeroes() {
        guard(async {
            let f = fixture();
            f.a.fill(100, b"xyz");
            for no_zeroes in [true, false] {
                let (mut c, h) = start(&f.provider);
                let cflags = CFLAG_FIXED_NEWSTYLE | if no_zeroes { CFLAG_NO_ZEROES } else { 0 };
                greet(&mut c, cflags).await;
                send_opt(&mut c, OPT_EXPORT_NAME, b"rbd/a").await;
                let reply = read_n(&mut c, if no_zeroes { 10 } else { 134 }).await;
                let mut b = &reply[..];
                assert_eq!(b.get_u64(), MIB as u64);
                assert_eq!(b.get_u16(), TRANSMISSION_FLAGS);
                assert!(b.iter().all(|&z| z == 0));
                assert_eq!(read_ok(&mut c, 5, 100, 3).await, b"xyz");
                disconnect(&mut c).await;
                h.await.unwrap().unwrap();
            }
        })
        .await
    }

    #[tokio::test]
    async fn export_name_unknown_or_unavailable_closes() {
        guard(async {
            let f = fixture();
            for name in ["rbd/nope", "rbd/busy", ""] {
                let (mut c, h) = start(&f.provider);
                greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
                send_opt(&mut c, OPT_EXPORT_NAME, name.as_bytes()).await;
                assert_closed(&mut c).await;
                let err = h.await.unwrap().unwrap_err();
                assert!(matches!(err, NbdError::ExportRefused { .. }), "{err}");
            }
        })
        .await
    }

    #[tokio::test]
    async fn unsupported_options_are_unsup_and_parsing_continues() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
            // STARTTLS, STRUCTURED_REPLY, LIST/SET_META_CONTEXT, EXTENDED_HEADERS, unknown.
            for (opt, data) in [
                (5u32, &b""[..]),
                (8, b""),
                (9, b"\0\0\0\x05rbd/a\0\0\0\0"),
                (10, b"\0\0\0\x05rbd/a\0\0\0\0"),
                (11, b""),
                (4242, b"some data"),
            ] {
                send_opt(&mut c, opt, data).await;
                let (o, ty, msg) = read_rep(&mut c).await;
                assert_eq!((o, ty), (opt, REP_ERR_UNSUP));
                assert!(!msg.is_empty());
            }
            send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[])).await;
            read_info(&mut c, OPT_GO).await.unwrap();
            write_ok(&mut c, 1, 0, b"ok").await;
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
            assert_eq!(f.a.bytes(0..2), b"ok");
        })
        .await
    }

    #[tokio::test]
    async fn oversized_option_is_too_big_and_drained() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
            let big = vec![7u8; MAX_OPTION_LEN as usize + 1];
            send_opt(&mut c, OPT_GO, &big).await;
            let (o, ty, _) = read_rep(&mut c).await;
            assert_eq!((o, ty), (OPT_GO, REP_ERR_TOO_BIG));
            send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[])).await;
            read_info(&mut c, OPT_GO).await.unwrap();
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn bad_client_flags_or_option_magic_close() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | 0x100).await;
            assert_closed(&mut c).await;
            assert!(matches!(
                h.await.unwrap(),
                Err(NbdError::ClientFlags(0x101))
            ));

            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
            c.write_all(&[0xaa; 16]).await.unwrap();
            assert_closed(&mut c).await;
            assert!(matches!(h.await.unwrap(), Err(NbdError::OptionMagic(_))));

            // A client hanging up mid-negotiation is a clean end.
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
            drop(c);
            h.await.unwrap().unwrap();
        })
        .await
    }

    // --- transmission ---------------------------------------------------------------------

    #[tokio::test]
    async fn write_read_zeroes_trim_flush() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            assert_eq!(connect_go(&mut c, "rbd/a").await, MIB as u64);
            let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
            write_ok(&mut c, 1, 4096, &pattern).await;
            assert_eq!(read_ok(&mut c, 2, 4096, 8192).await, pattern);
            assert_eq!(f.a.bytes(4096..4096 + 8192), pattern);
            // FUA reaches the device.
            request(&mut c, CMD_WRITE, CMD_FLAG_FUA, 3, 0, 4, b"fua!").await;
            assert_eq!(simple(&mut c).await, (0, 3));
            assert_eq!(*f.a.fua_writes.lock().unwrap(), 1);
            // WRITE_ZEROES (with NO_HOLE) and TRIM.
            request(
                &mut c,
                CMD_WRITE_ZEROES,
                CMD_FLAG_NO_HOLE,
                4,
                4096,
                4096,
                &[],
            )
            .await;
            assert_eq!(simple(&mut c).await, (0, 4));
            assert_eq!(f.a.bytes(4096..8192), vec![0; 4096]);
            request(&mut c, CMD_TRIM, 0, 5, 8192, 4096, &[]).await;
            assert_eq!(simple(&mut c).await, (0, 5));
            assert_eq!(f.a.bytes(8192..12288), vec![0; 4096]);
            request(&mut c, CMD_FLUSH, 0, 6, 0, 0, &[]).await;
            assert_eq!(simple(&mut c).await, (0, 6));
            assert_eq!(*f.a.flushes.lock().unwrap(), 1);
            // Zero-length requests succeed, even at the end of the export.
            for (i, cmd) in [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES]
                .into_iter()
                .enumerate()
            {
                request(&mut c, cmd, 0, 10 + i as u64, MIB as u64, 0, &[]).await;
                assert_eq!(simple(&mut c).await, (0, 10 + i as u64));
            }
            // The last byte of the export is addressable.
            write_ok(&mut c, 20, MIB as u64 - 1, b"z").await;
            assert_eq!(read_ok(&mut c, 21, MIB as u64 - 1, 1).await, b"z");
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
            // DISC flushes the device.
            assert_eq!(*f.a.flushes.lock().unwrap(), 2);
        })
        .await
    }

    #[tokio::test]
    async fn out_of_range_requests_fail_and_connection_keeps_working() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, "rbd/b").await;
            let size = 64u64 << 10;
            // Read past the end, and an offset that overflows.
            request(&mut c, CMD_READ, 0, 1, size - 10, 20, &[]).await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 1));
            request(&mut c, CMD_READ, 0, 2, u64::MAX - 5, 4096, &[]).await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 2));
            // A write past the end: ENOSPC, and its payload is consumed.
            let payload = vec![0x5a; 8192];
            request(&mut c, CMD_WRITE, 0, 3, size - 4096, 8192, &payload).await;
            assert_eq!(simple(&mut c).await, (NBD_ENOSPC, 3));
            request(&mut c, CMD_WRITE, 0, 4, u64::MAX, 16, &[1; 16]).await;
            assert_eq!(simple(&mut c).await, (NBD_ENOSPC, 4));
            request(&mut c, CMD_WRITE_ZEROES, 0, 5, size, 1, &[]).await;
            assert_eq!(simple(&mut c).await, (NBD_ENOSPC, 5));
            request(&mut c, CMD_TRIM, 0, 6, size, 1, &[]).await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 6));
            // Unknown command flags: EINVAL (the WRITE's payload still consumed).
            request(&mut c, CMD_WRITE, 0x40, 7, 0, 4, b"nope").await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 7));
            request(&mut c, CMD_READ, 0x04, 8, 0, 4, &[]).await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 8));
            // CACHE, BLOCK_STATUS and unknown commands: EINVAL, no payload consumed.
            for (i, cmd) in [5u16, 7, 8, 999].into_iter().enumerate() {
                request(&mut c, cmd, 0, 100 + i as u64, 0, 4096, &[]).await;
                assert_eq!(simple(&mut c).await, (NBD_EINVAL, 100 + i as u64));
            }
            // Nothing was written, and the stream is still in sync.
            assert!(f.b.bytes(0..64 << 10).iter().all(|&x| x == 0));
            write_ok(&mut c, 9, 0, b"still here").await;
            assert_eq!(read_ok(&mut c, 10, 0, 10).await, b"still here");
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn oversized_read_and_write_are_einval() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, "rbd/a").await;
            let len = MAX_BLOCK_SIZE + 1;
            request(&mut c, CMD_READ, 0, 1, 0, len, &[]).await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 1));
            // The payload is drained while we send it.
            let payload = vec![0xee; len as usize];
            request(&mut c, CMD_WRITE, 0, 2, 0, len, &payload).await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 2));
            write_ok(&mut c, 3, 0, b"abc").await;
            assert_eq!(f.a.bytes(0..4), b"abc\0");
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn bad_request_magic_closes_connection() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, "rbd/a").await;
            write_ok(&mut c, 1, 0, b"x").await;
            let mut junk = [0u8; 28];
            junk[..4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            c.write_all(&junk).await.unwrap();
            assert_closed(&mut c).await;
            assert!(matches!(
                h.await.unwrap(),
                Err(NbdError::RequestMagic(0x1234_5678))
            ));
        })
        .await
    }

    #[tokio::test]
    async fn hangup_mid_request_is_an_error_not_a_panic() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, "rbd/a").await;
            // A WRITE announcing 4 KiB, followed by only 10 bytes.
            request(&mut c, CMD_WRITE, 0, 1, 0, 4096, &[1; 10]).await;
            drop(c);
            assert!(matches!(h.await.unwrap(), Err(NbdError::Io(_))));
        })
        .await
    }

    #[tokio::test]
    async fn garbage_never_panics() {
        guard(async {
            let f = fixture();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for round in 0..200 {
                let (mut c, h) = start(&f.provider);
                let mut junk = vec![0u8; 64 + round * 3];
                for b in junk.iter_mut() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                // Half of the rounds get past the greeting with valid magics in place.
                if round % 2 == 0 {
                    junk[..4].copy_from_slice(&CFLAG_FIXED_NEWSTYLE.to_be_bytes());
                    junk[4..12].copy_from_slice(&IHAVEOPT.to_be_bytes());
                    junk[16..20].copy_from_slice(&[0, 0, 0, (round % 40) as u8]);
                }
                let mut greeting = [0u8; 18];
                c.read_exact(&mut greeting).await.unwrap();
                let _ = c.write_all(&junk).await;
                drop(c);
                // Whatever the result, the task must not panic.
                let _ = h.await.expect("server task panicked");
            }
        })
        .await
    }

    #[tokio::test]
    async fn device_errors_map_to_errnos() {
        guard(async {
            let cases: Vec<(&str, Option<DevError>, u32)> = vec![
                (
                    "t/io",
                    Some(DevError::Io("replicas below min_size".into())),
                    NBD_EIO,
                ),
                ("t/inval", Some(DevError::Invalid("no".into())), NBD_EINVAL),
                (
                    "t/nospc",
                    Some(DevError::NoSpace("full".into())),
                    NBD_ENOSPC,
                ),
                (
                    "t/ro",
                    Some(DevError::ReadOnly("snapshot".into())),
                    NBD_EPERM,
                ),
                ("t/panic", None, NBD_EIO),
            ];
            let extra = cases
                .iter()
                .map(|(n, e, _)| (*n, Arc::new(FailDev(e.clone())) as Arc<dyn BlockDevice>))
                .collect();
            let f = fixture_with(extra);
            for (name, _, expected) in cases {
                let (mut c, h) = start(&f.provider);
                connect_go(&mut c, name).await;
                request(&mut c, CMD_READ, 0, 1, 0, 512, &[]).await;
                assert_eq!(simple(&mut c).await, (expected, 1), "{name} read");
                request(&mut c, CMD_WRITE, 0, 2, 0, 3, b"abc").await;
                assert_eq!(simple(&mut c).await, (expected, 2), "{name} write");
                request(&mut c, CMD_WRITE_ZEROES, 0, 3, 0, 512, &[]).await;
                assert_eq!(simple(&mut c).await, (expected, 3), "{name} zeroes");
                request(&mut c, CMD_TRIM, 0, 4, 0, 512, &[]).await;
                assert_eq!(simple(&mut c).await, (expected, 4), "{name} trim");
                request(&mut c, CMD_FLUSH, 0, 5, 0, 0, &[]).await;
                assert_eq!(simple(&mut c).await, (expected, 5), "{name} flush");
                // DISC's flush fails too; the connection still closes cleanly.
                disconnect(&mut c).await;
                h.await.unwrap().unwrap();
            }
        })
        .await
    }

    #[tokio::test]
    async fn concurrent_requests_reply_out_of_order_by_cookie() {
        guard(async {
            let gate = Arc::new(Notify::new());
            let dev = MemDev::gated(MIB, gate.clone());
            dev.fill(0, b"slow");
            dev.fill(4096, b"fast");
            let f = fixture_with(vec![("rbd/gated", dev.clone() as Arc<dyn BlockDevice>)]);
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, "rbd/gated").await;
            // Cookie 1 blocks in the device; 2..=17 (queue depth 16) complete meanwhile.
            request(&mut c, CMD_READ, 0, 1, GATED_OFFSET, 4, &[]).await;
            for cookie in 2..=17u64 {
                request(&mut c, CMD_READ, 0, cookie, 4096, 4, &[]).await;
            }
            let mut seen = Vec::new();
            for _ in 2..=17 {
                let (err, cookie) = simple(&mut c).await;
                assert_eq!(err, 0);
                assert_eq!(read_n(&mut c, 4).await, b"fast", "cookie {cookie}");
                seen.push(cookie);
            }
            seen.sort_unstable();
            assert_eq!(seen, (2..=17).collect::<Vec<_>>());
            // A write completes too while the read is stuck.
            write_ok(&mut c, 18, 8192, b"w").await;
            gate.notify_one();
            assert_eq!(simple(&mut c).await, (0, 1));
            assert_eq!(read_n(&mut c, 4).await, b"slow");
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn disc_waits_for_in_flight_requests() {
        guard(async {
            let gate = Arc::new(Notify::new());
            let dev = MemDev::gated(MIB, gate.clone());
            dev.fill(0, b"late");
            let f = fixture_with(vec![("rbd/gated", dev.clone() as Arc<dyn BlockDevice>)]);
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, "rbd/gated").await;
            request(&mut c, CMD_READ, 0, 42, GATED_OFFSET, 4, &[]).await;
            request(&mut c, CMD_DISC, 0, 0, 0, 0, &[]).await;
            // The server has stopped reading but must still answer cookie 42 before closing.
            tokio::task::yield_now().await;
            assert!(!h.is_finished());
            gate.notify_one();
            assert_eq!(simple(&mut c).await, (0, 42));
            assert_eq!(read_n(&mut c, 4).await, b"late");
            assert_closed(&mut c).await;
            h.await.unwrap().unwrap();
            assert_eq!(*dev.flushes.lock().unwrap(), 1);
        })
        .await
    }

    #[tokio::test]
    async fn deep_queue_of_writes_and_reads() {
        guard(async {
            let f = fixture();
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, "rbd/a").await;
            // More requests than MAX_INFLIGHT, sent without waiting for replies.
            let n = 300u64;
            let (mut rd, mut wr) = tokio::io::split(c);
            let sender = tokio::spawn(async move {
                for i in 0..n {
                    let block = vec![(i % 251) as u8; 4096];
                    request(&mut wr, CMD_WRITE, 0, i, (i % 256) * 4096, 4096, &block).await;
                }
                wr
            });
            let mut seen = vec![false; n as usize];
            for _ in 0..n {
                let (err, cookie) = simple(&mut rd).await;
                assert_eq!(err, 0);
                assert!(!std::mem::replace(&mut seen[cookie as usize], true));
            }
            let wr = sender.await.unwrap();
            c = rd.unsplit(wr);
            for i in (n - 256)..n {
                let off = (i % 256) * 4096;
                assert_eq!(
                    read_ok(&mut c, i, off, 4096).await,
                    vec![(i % 251) as u8; 4096]
                );
            }
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        })
        .await
    }

    // --- serve() and real clients ---------------------------------------------------------

    async fn start_tcp(f: &Fixture) -> (u16, watch::Sender<bool>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(serve(listener, f.provider.clone(), rx));
        (port, tx, handle)
    }

    /// Runs a child with a hang guard; returns (success, stdout + stderr).
    async fn run_tool(program: &str, args: &[String]) -> (bool, String) {
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), child)
            .await
            .unwrap_or_else(|_| panic!("{program} timed out (killed)"))
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    #[tokio::test]
    async fn serve_stops_accepting_but_lets_connections_finish() {
        guard(async {
            let f = fixture();
            let (port, stop, handle) = start_tcp(&f).await;
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            connect_go(&mut c, "rbd/a").await;
            stop.send(true).unwrap();
            handle.await.unwrap();
            // The listener is gone...
            assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err());
            // ...but the established connection still works.
            write_ok(&mut c, 1, 0, b"after").await;
            assert_eq!(read_ok(&mut c, 2, 0, 5).await, b"after");
            disconnect(&mut c).await;
        })
        .await
    }

    #[tokio::test]
    async fn qemu_io_end_to_end() {
        let f = fixture();
        f.a.fill(0, &[0x11; 256 << 10]);
        let (port, _stop, _h) = start_tcp(&f).await;
        let url = format!("nbd://127.0.0.1:{port}/rbd/a");
        let mut args = vec!["-f".to_string(), "raw".into(), url];
        for cmd in [
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -z 64k 64k",
            "read -P 0 64k 64k",
            "discard 0 4k",
            "flush",
        ] {
            args.push("-c".into());
            args.push(cmd.into());
        }
        let (ok, out) = run_tool("qemu-io", &args).await;
        assert!(ok, "qemu-io failed:\n{out}");
        assert!(!out.contains("Pattern verification failed"), "{out}");
        assert!(!out.to_lowercase().contains("error"), "{out}");
        assert_eq!(f.a.bytes(0..4096), vec![0; 4096], "discarded range");
        assert_eq!(f.a.bytes(4096..64 << 10), vec![0xab; (64 << 10) - 4096]);
        assert_eq!(f.a.bytes(64 << 10..128 << 10), vec![0; 64 << 10]);
        assert_eq!(f.a.bytes(128 << 10..256 << 10), vec![0x11; 128 << 10]);
        assert!(*f.a.flushes.lock().unwrap() >= 1);
    }

    #[tokio::test]
    async fn qemu_img_info_and_qemu_nbd_list() {
        let f = fixture();
        let (port, _stop, _h) = start_tcp(&f).await;
        let url = format!("nbd://127.0.0.1:{port}/rbd/a");
        let (ok, out) = run_tool("qemu-img", &["info".into(), url]).await;
        assert!(ok, "qemu-img info failed:\n{out}");
        assert!(out.contains("virtual size: 1 MiB (1048576 bytes)"), "{out}");

        let args = ["-L", "-b", "127.0.0.1", "-p", &port.to_string()].map(String::from);
        let (ok, out) = run_tool("qemu-nbd", &args).await;
        assert!(ok, "qemu-nbd -L failed:\n{out}");
        assert!(out.contains("exports available: 2"), "{out}");
        assert!(out.contains("export: 'rbd/a'"), "{out}");
        assert!(out.contains("export: 'rbd/b'"), "{out}");
        assert!(out.contains("size:  1048576"), "{out}");
    }
}
