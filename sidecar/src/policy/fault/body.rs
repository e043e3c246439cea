//! Response bodies with a fault applied: corrupted, truncated or paced.

use crate::{Body, BoxError};
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use rand::Rng;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Bandwidth-limited bodies are released in pieces of at most this size.
const MAX_PACE_CHUNK: u64 = 64 * 1024;

/// The error a truncated body ends with.
#[derive(Debug, thiserror::Error)]
#[error("response truncated after {0} bytes by injected fault {1}")]
pub struct Truncated(pub u64, pub Arc<str>);

/// Which byte offsets to flip: `n` distinct offsets drawn over the body when its length is known,
/// else the first `n` bytes. Sorted ascending.
pub(super) fn corrupt_positions(len: Option<u64>, n: u32, rng: &mut impl Rng) -> Vec<u64> {
    match len {
        Some(len) if len > u64::from(n) => {
            let mut set = std::collections::BTreeSet::new();
            while set.len() < n as usize {
                set.insert(rng.random_range(0..len));
            }
            set.into_iter().collect()
        }
        Some(len) => (0..len).collect(),
        None => (0..u64::from(n)).collect(),
    }
}

pub(super) enum Mode {
    /// Offsets (ascending, from the body's start) still to flip.
    Corrupt {
        positions: Vec<u64>,
    },
    Truncate {
        after: u64,
        id: Arc<str>,
    },
    Pace {
        bps: u64,
        start: Option<Instant>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

/// A response body with a fault applied to its data frames; trailers pass untouched.
pub(super) struct FaultBody {
    inner: Body,
    mode: Mode,
    /// Data bytes released so far.
    sent: u64,
    /// Data taken from `inner` but not yet released (pacing).
    pending: Bytes,
    /// The body ended (truncation error sent).
    done: bool,
    /// Truncation cut a frame: the error is due on the next poll.
    cut: bool,
    corrupt_next: usize,
}

impl FaultBody {
    pub(super) fn new(inner: Body, mode: Mode) -> Self {
        Self {
            inner,
            mode,
            sent: 0,
            pending: Bytes::new(),
            done: false,
            cut: false,
            corrupt_next: 0,
        }
    }
}

impl http_body::Body for FaultBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.cut {
            if let Mode::Truncate { after, id } = &this.mode {
                this.done = true;
                return Poll::Ready(Some(Err(Box::new(Truncated(*after, id.clone())))));
            }
        }
        loop {
            if let Mode::Pace { bps, start, sleep } = &mut this.mode {
                if !this.pending.is_empty() {
                    if let Some(s) = sleep.as_mut() {
                        ready!(s.as_mut().poll(cx));
                        *sleep = None;
                        let chunk = chunk_len(*bps).min(this.pending.len() as u64) as usize;
                        this.sent += chunk as u64;
                        return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(chunk)))));
                    }
                    // A byte is released once its transmission time at `bps` has passed.
                    let chunk = chunk_len(*bps).min(this.pending.len() as u64);
                    let t0 = *start.get_or_insert_with(Instant::now);
                    let due_ns = u128::from(this.sent + chunk) * 1_000_000_000 / u128::from(*bps);
                    let due = t0 + Duration::from_nanos(due_ns.min(u128::from(u64::MAX)) as u64);
                    *sleep = Some(Box::pin(tokio::time::sleep_until(due)));
                    continue;
                }
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            match &mut this.mode {
                Mode::Pace { .. } => {
                    this.pending = data;
                    continue;
                }
                Mode::Corrupt { positions } => {
                    let base = this.sent;
                    let end = base + data.len() as u64;
                    this.sent = end;
                    let from = this.corrupt_next;
                    let mut to = from;
                    while to < positions.len() && positions[to] < end {
                        to += 1;
                    }
                    if to == from {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let mut buf = BytesMut::from(&data[..]);
                    for &p in &positions[from..to] {
                        if let Some(b) = p.checked_sub(base).and_then(|o| buf.get_mut(o as usize)) {
                            *b ^= 0xff;
                        }
                    }
                    this.corrupt_next = to;
                    return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
                }
                Mode::Truncate { after, id } => {
                    let room = after.saturating_sub(this.sent);
                    if (data.len() as u64) <= room {
                        this.sent += data.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if room > 0 {
                        // Release what fits now; the error comes on the next poll, even if
                        // this was the inner body's last frame.
                        this.sent += room;
                        this.cut = true;
                        let keep = data.slice(..room as usize);
                        return Poll::Ready(Some(Ok(Frame::data(keep))));
                    }
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(Truncated(*after, id.clone())))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (!self.cut && self.pending.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Length-preserving for corrupt and pace; a truncated body keeps announcing the full
        // length, so the client can tell the transfer was cut.
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// Pieces of about 1/20 s of transfer, between 1 byte and 64 KiB.
fn chunk_len(bps: u64) -> u64 {
    (bps / 20).clamp(1, MAX_PACE_CHUNK)
}
