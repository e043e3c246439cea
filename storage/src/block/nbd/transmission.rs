//! The transmission phase: requests are read and decoded ([`super::codec::decode_request`]) one
//! after the other, then dispatched (`Transmission::dispatch`) — each valid one to the device in its own task, the others
//! answered at once. Replies go out in completion order (matched by cookie) through one writer
//! task, so a reply header and its data are never interleaved with another reply.

use super::codec::{
    decode_request, errno, parse_request_header, simple_reply_header, Decoded, Op, Payload,
    RequestHeader, NBD_EIO,
};
use super::{drain, read_full_or_eof, read_payload, BlockDevice, DevError, DevResult, NbdError};
use bytes::Bytes;
use futures::FutureExt;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Requests in flight per connection (parsed, not yet answered).
const MAX_INFLIGHT: u32 = 128;
/// READ/WRITE payload bytes in flight per connection, in units of `BYTE_UNIT`.
const BYTE_UNIT: u32 = 4096;
const MAX_INFLIGHT_BYTES: u32 = 64 << 20;

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

/// One connection's transmission phase: the device, where replies go, and the in-flight budget.
struct Transmission {
    device: Arc<dyn BlockDevice>,
    export: Arc<str>,
    tx: mpsc::Sender<Reply>,
    slots: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// What ended the request loop.
enum End {
    /// NBD_CMD_DISC.
    Disconnect,
    /// The client hung up between requests, or the writer is gone.
    Closed,
}

/// What reading the next request gave.
enum Incoming {
    Request {
        cookie: u64,
        decoded: Decoded,
        budget: Budget,
    },
    End(End),
}

pub(super) async fn transmission<R, W>(
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
            match t.next_request(&hdr, &mut r).await? {
                Incoming::Request {
                    cookie,
                    decoded,
                    budget,
                } => {
                    if !t.dispatch(cookie, decoded, budget).await {
                        return Ok(End::Closed);
                    }
                }
                Incoming::End(end) => return Ok(end),
            }
        }
    }
    .await;
    if let Ok(End::Disconnect) = end {
        t.drain_and_flush().await;
    }
    // The writer ends (and closes the stream) once every sender is gone: ours now, the
    // handlers' when their requests complete.
    drop(t);
    end.and(finish_writer(writer, writer_result).await)
}

/// The reply writer's outcome, awaited if the request loop has not seen it end.
async fn finish_writer(
    writer: JoinHandle<io::Result<()>>,
    seen: Option<Result<io::Result<()>, tokio::task::JoinError>>,
) -> Result<(), NbdError> {
    let writer_result = match seen {
        Some(res) => res,
        None => writer.await,
    };
    writer_result
        .map_err(|e| NbdError::Internal(format!("reply writer failed: {e}")))
        .and_then(|res| res.map_err(NbdError::from))
}

impl Transmission {
    /// Decodes the request whose header was read: takes its in-flight budget, reads the payload a
    /// WRITE carries and validates it against the export.
    async fn next_request<R: AsyncRead + Unpin>(
        &self,
        hdr: &[u8; 28],
        r: &mut R,
    ) -> Result<Incoming, NbdError> {
        let h: RequestHeader = parse_request_header(hdr).inspect_err(|e| {
            warn!(export = %self.export, error = %e, "nbd: bad request magic, closing connection");
        })?;
        if h.is_disconnect() {
            return Ok(Incoming::End(End::Disconnect));
        }
        let Some(budget) = self.budget(h.budget_bytes()).await else {
            return Ok(Incoming::End(End::Closed));
        };
        let size = self.device.size();
        let data = match h.payload() {
            Payload::None => None,
            Payload::Read(len) => Some(read_payload(r, len as usize).await?),
            Payload::Drain(len) => {
                drain(r, u64::from(len)).await?;
                None
            }
        };
        if !h.is_supported() {
            debug!(export = %self.export, cmd = h.cmd, "nbd: unsupported command");
        }
        Ok(Incoming::Request {
            cookie: h.cookie,
            decoded: decode_request(&h, data, size),
            budget,
        })
    }

    /// Runs a decoded request on the device, or answers it at once; false once the writer is gone.
    async fn dispatch(&self, cookie: u64, decoded: Decoded, budget: Budget) -> bool {
        match decoded {
            Decoded::Run(op) => {
                self.spawn(cookie, op, budget);
                true
            }
            Decoded::Answer(error) => self.reply(cookie, error, budget).await,
        }
    }

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
            let outcome = AssertUnwindSafe(run(op, &*device)).catch_unwind().await;
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

    /// After NBD_CMD_DISC: waits until every in-flight request is answered, then flushes the
    /// device (best effort).
    async fn drain_and_flush(&self) {
        // Every request holds a slot until its reply is written (or dropped with a dead writer).
        if let Ok(all) = self.slots.acquire_many(MAX_INFLIGHT).await {
            drop(all);
        }
        match AssertUnwindSafe(self.device.flush()).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(export = %self.export, error = %e, "nbd: flush on disconnect failed")
            }
            Err(_) => warn!(export = %self.export, "nbd: device panicked in flush on disconnect"),
        }
    }
}

/// Runs one request on the device; a READ's data comes back.
async fn run(op: Op, dev: &dyn BlockDevice) -> DevResult<Option<Bytes>> {
    match op {
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
    w.write_all(&simple_reply_header(reply.error, reply.cookie))
        .await?;
    if reply.error == 0 {
        if let Some(data) = &reply.data {
            w.write_all(data).await?;
        }
    }
    Ok(())
}
