//! HTTP/1.1 from clients: the listener side of the codec, driving the policy stack directly.
//!
//! Why not hyper's server connection, which this replaced on proxy listeners (the admin listener
//! still uses it): a callgrind profile of the 1 KiB benchmark put it at 29 % of the sidecar's
//! instructions per request (11.6k of 40k) — its dispatcher, a request-body channel even for
//! bodyless requests, a timer allocated per request for the header deadline, and its write
//! buffering. What a proxy listener needs is written out here, with hyper's behaviour kept where
//! clients can see it:
//!
//! - **h2c**: a connection that opens with the HTTP/2 preface is handed back ([`Served::H2`]) with
//!   what was read, for hyper's HTTP/2 server.
//! - **Bad heads**: a head over `max_head` or with more than 100 headers gets 431, a malformed one
//!   400, then the connection closes. A request with both `transfer-encoding` and
//!   `content-length`, or a `transfer-encoding` not ending in `chunked`, is refused with 400
//!   (RFC 9112 §6.1: what a proxy must not guess about — request smuggling).
//! - **Header deadline**: `header_read_timeout` runs from when the connection is ready for the next
//!   head (its start, or the end of the previous answer) until the head is complete, as in hyper:
//!   it also bounds how long a keep-alive connection may sit idle. It is closed without an answer.
//!   The timer is armed once and moved only when it fires early (no timer per request).
//! - **Request bodies**: none without `content-length`/`transfer-encoding`; otherwise a
//!   [`ReqBody`] reads them from the socket as the stack polls it (streaming, no channel), sending
//!   `100 Continue` first if the client asked and only once the body is really wanted. A body not
//!   read to its end by the time the answer is written closes the connection after it.
//! - **Answers**: `content-length` when the answer has one or its size is known, else chunked (for
//!   HTTP/1.0 clients, until close); no body for HEAD, 1xx, 204 and 304. The head goes out with
//!   the first body bytes in one write. A `date` is added when the answer has none; hop-by-hop
//!   headers are never written. A body failing mid-way closes the connection (the client sees a
//!   truncated answer, never a complete-looking one).
//! - **Keep-alive**: HTTP/1.1 unless `connection: close`; HTTP/1.0 only with `keep-alive`.
//!   Pipelined requests are answered in order.
//! - **Client gone**: while the stack works on a request without a body, a clean close by the
//!   client drops the request's future (which cancels the upstream exchange), as hyper did.
//! - **Drain**: on shutdown an idle connection closes at once; a busy one finishes its answer
//!   with `connection: close`.

use crate::codec::{
    is_hop_by_hop, itoa, parse_length, poll_decode, Chunk, ClientBodyError, Decoder, NameCache,
};
use crate::{Body, Request, Response};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// What an HTTP/2 client opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_HEADERS: usize = 100;
/// Room kept free in the read buffer before a read (most request heads fit many times over).
const HEAD_READ: usize = 8 * 1024;
/// Largest single read of a request body.
const BODY_READ: usize = 64 * 1024;
/// Bounds on reading and discarding what a client still sends after an answer that closes the
/// connection, so that the close does not reset the answer away (lingering close, as nginx does).
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (`max_header_bytes`).
    pub max_head: usize,
    pub header_read_timeout: Duration,
}

/// How a connection ended.
pub enum Served {
    /// Closed (by either side, after an error answer, or drained).
    Closed,
    /// The client speaks HTTP/2 with prior knowledge: the connection, with what was read from it.
    H2(Rewind),
}

/// The socket, shared with the body of the request being read (if it has one).
struct Wire {
    io: TcpStream,
    rx: Mutex<Rx>,
}

/// A request body's reading state; the connection's read buffer lives here while a body is out.
struct Rx {
    /// Which request the state belongs to: a body kept past its request reads nothing more.
    generation: u64,
    buf: BytesMut,
    dec: Decoder,
    /// `100 Continue` bytes written so far, while one is owed.
    continue_sent: Option<usize>,
    /// The body failed (bad chunk, truncated): the connection cannot be reused.
    failed: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A request body read from the client connection as it is polled.
pub struct ReqBody {
    wire: Arc<Wire>,
    generation: u64,
    /// Left to read under `content-length` (for `size_hint`).
    left: Option<u64>,
    done: bool,
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let wire = &*this.wire;
        let mut rx = lock(&wire.rx);
        if rx.generation != this.generation {
            this.done = true;
            return Poll::Ready(None);
        }
        // `100 Continue` goes out only when the body is wanted: a stack that answers without
        // reading (429, 503, 413) never invites the upload.
        while let Some(sent) = rx.continue_sent {
            ready!(wire.io.poll_write_ready(cx))?;
            match wire.io.try_write(&CONTINUE[sent..]) {
                Ok(n) if sent + n == CONTINUE.len() => rx.continue_sent = None,
                Ok(n) => rx.continue_sent = Some(sent + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    rx.failed = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        let Rx { buf, dec, .. } = &mut *rx;
        let r = ready!(poll_decode(buf, dec, BODY_READ, cx, |b, want, cx| {
            read_shared(&wire.io, b, want, cx)
        }));
        match r {
            Ok(Some(d)) => {
                if let Some(l) = this.left.as_mut() {
                    *l = l.saturating_sub(d.len() as u64);
                }
                if rx.dec == Decoder::Done {
                    this.done = true;
                }
                Poll::Ready(Some(Ok(Frame::data(d))))
            }
            Ok(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Err(e) => {
                rx.failed = true;
                this.done = true;
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) if !self.done => SizeHint::with_exact(n),
            Some(_) => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

/// Reads through a shared socket (a request body is out): readiness, then a read.
fn read_shared(
    io: &TcpStream,
    b: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    b.reserve(want);
    loop {
        ready!(io.poll_read_ready(cx))?;
        match io.try_read_buf(b) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

/// Writes as much of `pending` as the socket takes; ready once all of it is written.
fn write_shared(
    io: &TcpStream,
    pending: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !pending.is_empty() {
        ready!(io.poll_write_ready(cx))?;
        let mut slices = [IoSlice::new(&[]); 16];
        for (s, b) in slices.iter_mut().zip(pending.iter()) {
            *s = IoSlice::new(b);
        }
        let n = pending.len().min(slices.len());
        match io.try_write_vectored(&slices[..n]) {
            Ok(mut n) => {
                while n > 0 {
                    let front = pending.front_mut().expect("wrote more than pending");
                    if n >= front.len() {
                        n -= front.len();
                        pending.pop_front();
                    } else {
                        front.advance(n);
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the connection needs to know about the request it is answering.
struct Meta {
    keep_alive: bool,
    head_only: bool,
    http10: bool,
    has_body: bool,
}

/// Why a head could not be read.
enum HeadError {
    /// Answered with this status, then closed.
    Answer(StatusCode, &'static str),
    /// Closed without an answer (deadline, I/O error, EOF inside a head).
    Close,
}

/// How the answer body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

struct Conn {
    wire: Arc<Wire>,
    /// Read but not yet consumed (while no body is out).
    buf: BytesMut,
    /// Answer heads and chunk-size lines are written here and split off.
    wbuf: BytesMut,
    pending: VecDeque<Bytes>,
    limits: Limits,
    generation: u64,
    /// Set when the head deadline last had to be computed: the armed timer may be earlier.
    deadline: Instant,
    draining: bool,
    names: NameCache,
}

/// Serves HTTP/1.1 on `io` until it closes; `call` answers each request (`None`: drop the
/// connection without answering — an injected reset).
pub async fn serve<F, Fut>(
    io: TcpStream,
    limits: Limits,
    shutdown: &mut watch::Receiver<bool>,
    mut call: F,
) -> Served
where
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Option<Response>>,
{
    let mut c = Conn {
        wire: Arc::new(Wire {
            io,
            rx: Mutex::new(Rx {
                generation: 0,
                buf: BytesMut::new(),
                dec: Decoder::Done,
                continue_sent: None,
                failed: false,
            }),
        }),
        buf: BytesMut::with_capacity(HEAD_READ),
        wbuf: BytesMut::with_capacity(1024),
        pending: VecDeque::with_capacity(8),
        limits,
        generation: 0,
        deadline: Instant::now() + limits.header_read_timeout,
        draining: *shutdown.borrow(),
        names: NameCache::default(),
    };
    let drain = shutdown.clone();
    let stop = shutdown.changed();
    let mut stop = std::pin::pin!(stop);
    let timer = tokio::time::sleep_until(c.deadline);
    let mut timer = std::pin::pin!(timer);
    let mut first = true;
    loop {
        c.deadline = Instant::now() + c.limits.header_read_timeout;
        let head = std::future::poll_fn(|cx| {
            if c.draining && c.buf.is_empty() {
                return Poll::Ready(Ok(None));
            }
            match c.poll_head(cx, first) {
                Poll::Pending => {}
                r => return r,
            }
            // Watched only while waiting for a head: a busy connection learns of the drain when
            // its answer is written (`drain`), which is all the drain changes for it.
            if !c.draining && stop.as_mut().poll(cx).is_ready() {
                c.draining = true;
                if c.buf.is_empty() {
                    return Poll::Ready(Ok(None));
                }
            }
            // The timer may be set earlier than this head's deadline: move it, do not fire.
            while timer.as_mut().poll(cx).is_ready() {
                if Instant::now() >= c.deadline {
                    return Poll::Ready(Err(HeadError::Close));
                }
                timer.as_mut().reset(c.deadline);
            }
            Poll::Pending
        })
        .await;
        first = false;
        let (req, mut meta) = match head {
            Ok(Some(Head::Request(req, meta))) => (req, meta),
            Ok(Some(Head::H2)) => return c.into_h2(),
            Ok(None) | Err(HeadError::Close) => return Served::Closed,
            Err(HeadError::Answer(status, why)) => {
                c.answer_error(status, why).await;
                return Served::Closed;
            }
        };
        let mut fut = std::pin::pin!(call(req));
        let resp = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            // A client that closes while its bodyless request is in the works is gone: drop the
            // request (hyper did the same). Bytes arriving instead are a pipelined request.
            if !meta.has_body && c.buf.is_empty() {
                if let Some(w) = Arc::get_mut(&mut c.wire) {
                    c.buf.reserve(HEAD_READ);
                    match tokio_util::io::poll_read_buf(Pin::new(&mut w.io), cx, &mut c.buf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                        _ => {}
                    }
                }
            }
            Poll::Pending
        })
        .await;
        let Some(resp) = resp else {
            return Served::Closed;
        };
        c.draining |= *drain.borrow();
        meta.keep_alive &= !c.draining;
        // Let the rest of this round of ready events run first, so that answers leave together
        // (as HAProxy's event loop sends them): a client on another core then wakes once per
        // round instead of once per answer. Measured on the 1 KiB benchmark: cross-core wake-ups
        // (IPIs) per request 0.31 -> 0.04, HAProxy's figure, and ~8 % less CPU per request. At
        // low load it costs one more poll of this task and a non-blocking `epoll_wait`
        // (~1 µs of latency). See docs/BENCHMARKS.md, "Result, 2026-12-05 later".
        tokio::task::yield_now().await;
        let wrote = c.respond(resp, &mut meta).await;
        if !wrote {
            return Served::Closed;
        }
        if meta.has_body && !c.reclaim() {
            c.linger().await;
            return Served::Closed;
        }
        if !meta.keep_alive {
            return Served::Closed;
        }
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host (HTTP/1.0: at most one), and a
/// proxy must not guess between an absolute-form target's authority and a Host that names
/// another (request smuggling, cache poisoning): all are the client's error, 400.
fn check_host(uri: &Uri, hosts: u8, host: &[u8], http10: bool) -> Result<(), HeadError> {
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    match hosts {
        0 if !http10 => return Err(HeadError::Answer(BAD, "missing Host header")),
        0 => return Ok(()),
        1 => {}
        _ => return Err(HeadError::Answer(BAD, "more than one Host header")),
    }
    match uri.authority() {
        Some(a)
            if !a
                .as_str()
                .as_bytes()
                .eq_ignore_ascii_case(host.trim_ascii()) =>
        {
            Err(HeadError::Answer(
                BAD,
                "Host header disagrees with the request target's authority",
            ))
        }
        _ => Ok(()),
    }
}

// Boxing the request to shrink the variant would allocate once per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(Request, Meta),
    H2,
}

impl Conn {
    /// Reads until a whole head is buffered, and parses it. `Ok(None)`: the client closed between
    /// requests.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        first: bool,
    ) -> Poll<Result<Option<Head>, HeadError>> {
        loop {
            if !self.buf.is_empty() {
                if first {
                    let n = self.buf.len().min(H2_PREFACE.len());
                    if self.buf[..n] == H2_PREFACE[..n] {
                        if n == H2_PREFACE.len() {
                            return Poll::Ready(Ok(Some(Head::H2)));
                        }
                    } else if let Some(h) = self.parse()? {
                        return Poll::Ready(Ok(Some(h)));
                    }
                } else if let Some(h) = self.parse()? {
                    return Poll::Ready(Ok(Some(h)));
                }
                if self.buf.len() >= self.limits.max_head {
                    return Poll::Ready(Err(HeadError::Answer(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head too large",
                    )));
                }
            }
            let before = self.buf.len();
            match ready!(self.poll_read(cx)) {
                Ok(0) if before == 0 => return Poll::Ready(Ok(None)),
                Ok(0) | Err(_) => return Poll::Ready(Err(HeadError::Close)),
                Ok(_) => {}
            }
        }
    }

    /// Reads more into the connection's buffer.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(HEAD_READ);
        }
        match Arc::get_mut(&mut self.wire) {
            // Alone on the socket: tokio's own read, which skips the next read's system call
            // when this one came back short.
            Some(w) => tokio_util::io::poll_read_buf(Pin::new(&mut w.io), cx, &mut self.buf),
            None => read_shared(&self.wire.io, &mut self.buf, 0, cx),
        }
    }

    /// Parses a request head if a whole one is buffered.
    fn parse(&mut self) -> Result<Option<Head>, HeadError> {
        const BAD: StatusCode = StatusCode::BAD_REQUEST;
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut r,
            &self.buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::Answer(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "more than 100 headers",
                ))
            }
            Err(_) => return Err(HeadError::Answer(BAD, "malformed request head")),
        };
        if len > self.limits.max_head {
            return Err(HeadError::Answer(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ));
        }
        let method = Method::from_bytes(r.method.unwrap_or_default().as_bytes())
            .map_err(|_| HeadError::Answer(BAD, "invalid method"))?;
        let http10 = r.version != Some(1);
        // Where the target, names and values lie, so that they can share the frozen head once
        // the parser's borrow of the buffer has ended (a stack array: no allocation).
        let base = self.buf.as_ptr() as usize;
        let path = r.path.unwrap_or_default();
        let path = (path.as_ptr() as usize - base, path.len());
        let count = r.headers.len();
        let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        for (slot, h) in at.iter_mut().zip(r.headers.iter()) {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            *slot = (
                n as u32,
                h.name.len() as u32,
                v as u32,
                h.value.len() as u32,
            );
        }
        let head = self.buf.split_to(len).freeze();
        let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
            .map_err(|_| HeadError::Answer(BAD, "invalid request target"))?;
        let mut map = HeaderMap::with_capacity(count + 2);
        let (mut close, mut keep_alive, mut te, mut chunked, mut expect) =
            (false, false, false, false, false);
        let mut length: Option<u64> = None;
        // Host headers seen, and where the last one's value lies.
        let mut hosts = (0u8, 0usize, 0usize);
        for (i, &(ns, nl, vs, vl)) in at[..count].iter().enumerate() {
            let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
            let name = self
                .names
                .name(i, &head[ns..ns + nl])
                .map_err(|_| HeadError::Answer(BAD, "invalid header name"))?;
            let raw = &head[vs..vs + vl];
            if name == header::CONNECTION {
                for t in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    close |= t.eq_ignore_ascii_case(b"close");
                    keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name == header::TRANSFER_ENCODING {
                te = true;
                chunked = raw
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name == header::CONTENT_LENGTH {
                let n =
                    parse_length(raw).ok_or(HeadError::Answer(BAD, "invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Answer(BAD, "conflicting content-length"));
                }
                length = Some(n);
            } else if name == header::EXPECT {
                expect = raw.eq_ignore_ascii_case(b"100-continue");
            } else if name == header::HOST {
                hosts = (hosts.0.saturating_add(1), vs, vl);
            }
            let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
                .map_err(|_| HeadError::Answer(BAD, "invalid header value"))?;
            map.append(name, value);
        }
        check_host(&uri, hosts.0, &head[hosts.1..hosts.1 + hosts.2], http10)?;
        let dec = match (te, length) {
            (true, Some(_)) => {
                return Err(HeadError::Answer(
                    BAD,
                    "both transfer-encoding and content-length",
                ))
            }
            (true, None) if !chunked => {
                return Err(HeadError::Answer(
                    BAD,
                    "transfer-encoding must end in chunked",
                ))
            }
            (true, None) => Decoder::Chunked(Chunk::Size),
            (false, Some(n)) if n > 0 => Decoder::Length(n),
            _ => Decoder::Done,
        };
        let meta = Meta {
            keep_alive: if http10 { keep_alive && !close } else { !close },
            head_only: method == Method::HEAD,
            http10,
            has_body: dec != Decoder::Done,
        };
        self.generation += 1;
        let body = if meta.has_body {
            let left = match dec {
                Decoder::Length(n) => Some(n),
                _ => None,
            };
            let mut rx = lock(&self.wire.rx);
            rx.generation = self.generation;
            rx.buf = std::mem::take(&mut self.buf);
            rx.dec = dec;
            rx.continue_sent = (expect && !http10).then_some(0);
            rx.failed = false;
            drop(rx);
            Body::new(ReqBody {
                wire: self.wire.clone(),
                generation: self.generation,
                left,
                done: false,
            })
        } else {
            crate::empty()
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        *req.headers_mut() = map;
        Ok(Some(Head::Request(req, meta)))
    }

    /// Takes the read buffer back from a finished request body; `false` if the body was not read
    /// to its end (the connection cannot carry another request).
    fn reclaim(&mut self) -> bool {
        let mut rx = lock(&self.wire.rx);
        // A body still out belongs to no request from now on.
        rx.generation = 0;
        rx.continue_sent = None;
        if rx.failed || rx.dec != Decoder::Done {
            return false;
        }
        self.buf = std::mem::take(&mut rx.buf);
        true
    }

    /// Writes the answer; `false` if the connection must close without more (write failed, body
    /// failed or was cut short).
    async fn respond(&mut self, resp: Response, meta: &mut Meta) -> bool {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        let mut declared = None;
        if let Some(v) = parts.headers.get(header::CONTENT_LENGTH) {
            declared = parse_length(v.as_bytes());
        }
        let bodyless = meta.head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        use http_body::Body as _;
        let mut add_length = None;
        let framing = if bodyless {
            // A HEAD answer says how long the body would be, when that is known.
            if meta.head_only && declared.is_none() {
                add_length = body.size_hint().exact().filter(|&n| n > 0);
            }
            Framing::None
        } else if let Some(n) = declared {
            Framing::Length(n)
        } else if let Some(n) = body.size_hint().exact() {
            add_length = Some(n);
            Framing::Length(n)
        } else if meta.http10 {
            meta.keep_alive = false;
            Framing::Close
        } else {
            Framing::Chunked
        };
        if meta.has_body && Arc::strong_count(&self.wire) == 1 {
            // The stack let go of a body it did not read to its end: the next head cannot be
            // found, so say now that the connection closes after this answer. (A body still held
            // may yet be read while the answer streams; `reclaim` decides after it.)
            let rx = lock(&self.wire.rx);
            if rx.failed || rx.dec != Decoder::Done {
                meta.keep_alive = false;
            }
        }
        let w = &mut self.wbuf;
        w.reserve(256);
        w.extend_from_slice(b"HTTP/1.1 ");
        w.extend_from_slice(itoa(u64::from(status.as_u16()), &mut [0; 20]));
        w.extend_from_slice(b" ");
        w.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        w.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if is_hop_by_hop(name) || (name == header::CONTENT_LENGTH && declared.is_none()) {
                continue;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if !parts.headers.contains_key(header::DATE) {
            w.extend_from_slice(b"date: ");
            date::with(|d| w.extend_from_slice(d));
            w.extend_from_slice(b"\r\n");
        }
        if !meta.keep_alive {
            w.extend_from_slice(b"connection: close\r\n");
        } else if meta.http10 {
            w.extend_from_slice(b"connection: keep-alive\r\n");
        }
        if framing == Framing::Chunked {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if let Some(n) = add_length {
            w.extend_from_slice(b"content-length: ");
            w.extend_from_slice(itoa(n, &mut [0; 20]));
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        self.pending.clear();
        self.pending.push_back(w.split().freeze());
        let mut done = framing == Framing::None;
        // The body failed or broke its framing: what was gathered still goes out (the client
        // sees how far it got), then the connection closes with the answer incomplete.
        let mut broken = false;
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let Self {
            wire,
            wbuf,
            pending,
            ..
        } = self;
        let io = &wire.io;
        let ok = std::future::poll_fn(|cx| loop {
            // Gather what the body has ready (the head goes out with the first bytes).
            while !done && pending.len() <= 12 {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        done = true;
                        match framing {
                            Framing::Chunked => pending.push_back(Bytes::from_static(b"0\r\n\r\n")),
                            Framing::Length(_) if left != 0 => broken = true,
                            _ => {}
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(error = %e, "answer body failed; closing the connection");
                        (done, broken) = (true, true);
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(d) = frame.into_data() else { continue };
                        if d.is_empty() {
                            continue;
                        }
                        match framing {
                            Framing::Length(_) => {
                                if d.len() as u64 > left {
                                    (done, broken) = (true, true);
                                    continue;
                                }
                                left -= d.len() as u64;
                                pending.push_back(d);
                                if left == 0 {
                                    // Ends here whatever the body says: nothing more is framed.
                                    done = true;
                                }
                            }
                            Framing::Chunked => {
                                let mut line = [0u8; 18];
                                let n = hex_len(d.len(), &mut line);
                                wbuf.reserve(18);
                                wbuf.extend_from_slice(&line[..n]);
                                pending.push_back(wbuf.split().freeze());
                                pending.push_back(d);
                                pending.push_back(Bytes::from_static(b"\r\n"));
                            }
                            _ => pending.push_back(d),
                        }
                    }
                }
            }
            if pending.is_empty() {
                return if done {
                    Poll::Ready(!broken)
                } else {
                    Poll::Pending
                };
            }
            match ready!(write_shared(io, pending, cx)) {
                Ok(()) => continue,
                Err(_) => return Poll::Ready(false),
            }
        })
        .await;
        drop(body);
        ok && framing != Framing::Close
    }

    /// A short error answer for a head that could not be taken, then the connection closes.
    async fn answer_error(&mut self, status: StatusCode, why: &str) {
        tracing::debug!(%status, why, "refused a request head");
        let w = &mut self.wbuf;
        w.extend_from_slice(b"HTTP/1.1 ");
        w.extend_from_slice(itoa(u64::from(status.as_u16()), &mut [0; 20]));
        w.extend_from_slice(b" ");
        w.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        w.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
        w.extend_from_slice(itoa(why.len() as u64 + 1, &mut [0; 20]));
        w.extend_from_slice(b"\r\nconnection: close\r\ndate: ");
        date::with(|d| w.extend_from_slice(d));
        w.extend_from_slice(b"\r\n\r\n");
        w.extend_from_slice(why.as_bytes());
        w.extend_from_slice(b"\n");
        self.pending.clear();
        self.pending.push_back(w.split().freeze());
        let _ = tokio::time::timeout(
            LINGER_TIME,
            std::future::poll_fn(|cx| write_shared(&self.wire.io, &mut self.pending, cx)),
        )
        .await;
        self.linger().await;
    }

    /// Before closing with request bytes unread: stop sending, then read and discard (bounded)
    /// so the close does not turn into a reset that destroys the answer in the client's buffer.
    async fn linger(&mut self) {
        let Some(w) = Arc::get_mut(&mut self.wire) else {
            return;
        };
        use tokio::io::AsyncWriteExt;
        if w.io.shutdown().await.is_err() {
            return;
        }
        let mut seen = 0;
        let mut sink = BytesMut::new();
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while seen < LINGER_BYTES {
                sink.clear();
                sink.reserve(HEAD_READ);
                match tokio_util::io::read_buf(&mut w.io, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen += n,
                }
            }
        })
        .await;
    }

    fn into_h2(self) -> Served {
        match Arc::try_unwrap(self.wire) {
            Ok(w) => Served::H2(Rewind {
                pre: self.buf.freeze(),
                io: w.io,
            }),
            Err(_) => Served::Closed,
        }
    }
}

/// A chunk-size line (`<hex>\r\n`) into `out`; its length.
fn hex_len(mut n: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    out[len..len + 2].copy_from_slice(b"\r\n");
    len + 2
}

/// The `date` header value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let s = httpdate::fmt_http_date(now);
                if s.len() == 29 {
                    c.1.copy_from_slice(s.as_bytes());
                    c.0 = secs;
                }
            }
            f(&c.1)
        })
    }
}

/// The connection handed to HTTP/2, with the bytes already read from it replayed first.
pub struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
