//! HTTP/1.1 to the upstream: one request at a time on a connection the pool owns, read and written
//! by the request's own future.
//!
//! Why not hyper's client connection (`hyper::client::conn::http1`), which this replaced: it runs
//! every connection as a task of its own and hands each request to it through a channel, so a
//! proxied request crosses two tasks and their wake-ups, and its adaptive read buffer grows to
//! ~400 KiB per upstream connection under 64 KiB answers. A callgrind profile of the 1 KiB
//! benchmark put that connection task at 30 % of the sidecar's instructions per request (16k of
//! 54k), and the read buffers were what kept the 64 KiB peak RSS near 30 MiB. The proxy needs far
//! less than a general client: origin-form requests it has already normalised (`forward.rs`), no
//! upgrades, no pipelining. What it must get right is framing (RFC 9112 §6), written out here:
//!
//! - **Request body**: `content-length` when the request carries one or its size is known, else
//!   chunked; a body that turns out longer or shorter than its `content-length` fails the exchange.
//!   The body is sent while the socket is watched for an early answer (an upstream refusing an
//!   upload with 413 need not read it first). An early error answer stops the upload; an early
//!   success lets the rest of it go on while the answer body is read (an upstream may stream its
//!   answer as it reads). Either way the connection is not reused.
//! - **Response body**: none for HEAD, 1xx, 204 and 304; chunked when `transfer-encoding` ends in
//!   `chunked`; else `content-length`; else until the upstream closes. Interim 1xx answers (100
//!   Continue) are skipped; 101 is an error (the proxy strips `Upgrade`, so none was asked for).
//! - **Hop-by-hop headers** (RFC 9110 §7.6.1, and those `connection` names) are read for framing
//!   and reuse, then left out of the answer handed up: they describe this connection only.
//! - **Reuse**: only after a body read to its end with nothing left over, on HTTP/1.1 without
//!   `connection: close` (HTTP/1.0 only with `keep-alive`), and never after `transfer-encoding`
//!   came with a `content-length`.
//! - **Bounded memory**: a response head larger than the cap (`upstream_buffer_bytes`, default
//!   hyper's 408 KiB) is an error; body bytes are read at most `read_chunk` at a time into a
//!   buffer the frames are split off, so a connection holds one chunk while its frame is in flight.

use crate::codec::{
    is_hop_by_hop, itoa, parse_length, poll_decode, Chunk, Decoder, H1Error, NameCache,
};
use crate::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// hyper's default limit, so every answer that passed before still passes.
pub const DEFAULT_MAX_HEAD: usize = 8192 + 4096 * 100;
/// Largest body read when no cap is set: a 64 KiB answer in one read, and the most a connection
/// keeps allocated for its body frames.
const DEFAULT_READ_CHUNK: usize = 64 * 1024;
/// Buffer reserved for reading a response head (most heads, and a small body, fit).
const HEAD_READ: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    Empty,
    Length(u64),
    Chunked,
}

/// A final answer's head.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Decoder,
    pub keep_alive: bool,
    /// The rest of a request body still to send (the upstream answered early with a success).
    pub upload: Option<Upload>,
}

/// A request body on its way out: what is framed but not yet written, and what is still to come.
pub struct Upload {
    body: Body,
    pending: VecDeque<Bytes>,
    /// Bytes still due under `content-length` framing.
    left: Option<u64>,
    chunked: bool,
    done: bool,
}

impl Upload {
    fn new(head: &[u8], body: Body, out: Out) -> Self {
        let mut pending = VecDeque::with_capacity(4);
        pending.push_back(Bytes::copy_from_slice(head));
        Self {
            body,
            pending,
            left: match out {
                Out::Length(n) => Some(n),
                _ => None,
            },
            chunked: out == Out::Chunked,
            done: false,
        }
    }
}

/// Writes the request line and headers for `parts` into `out`, with the framing header the body
/// needs, and says which framing that is.
pub fn encode_head(
    parts: &http::request::Parts,
    body: &Body,
    out: &mut Vec<u8>,
) -> Result<Out, String> {
    use http_body::Body as _;
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.uri.path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut declared = None;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())
                .ok_or_else(|| "invalid content-length".to_string())?;
            if declared.is_some_and(|d| d != n) {
                return Err("conflicting content-length headers".into());
            }
            if declared.is_some() {
                continue;
            }
            declared = Some(n);
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match declared {
        Some(0) if body.is_end_stream() => Out::Empty,
        Some(n) => Out::Length(n),
        None if body.is_end_stream() => {
            // Methods whose requests normally carry content say "none" explicitly, as hyper did.
            if !matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
            ) && parts.method != Method::CONNECT
            {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Out::Empty
        }
        None => match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa(n, &mut [0; 20]));
                out.extend_from_slice(b"\r\n");
                Out::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Out::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    Ok(framing)
}

/// One upstream connection and what has been read from it but not yet consumed.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    max_head: usize,
    read_chunk: usize,
    names: NameCache,
}

impl Conn {
    /// `cap`: `upstream_buffer_bytes` — the largest head accepted and the largest body read.
    pub fn new(io: TcpStream, cap: Option<usize>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            max_head: cap.unwrap_or(DEFAULT_MAX_HEAD),
            read_chunk: cap.unwrap_or(DEFAULT_READ_CHUNK),
            names: NameCache::default(),
        }
    }

    /// Whether an idle connection can take a request: the reactor has seen nothing arrive on it
    /// (an upstream closing it makes it readable). No system call unless something did arrive.
    pub fn idle_ok(&self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Whether everything read has been consumed (a leftover byte after an answer means the
    /// upstream sent more than it framed: the connection is not reused).
    pub fn drained(&self) -> bool {
        self.buf.is_empty()
    }

    /// Sends a request (`head` from [`encode_head`], then `body` framed as `out`) and reads the
    /// final answer's head. The body is not read.
    pub async fn exchange(
        &mut self,
        head: &[u8],
        body: Body,
        out: Out,
        is_head: bool,
    ) -> Result<Answer, H1Error> {
        if out == Out::Empty {
            if let Err(e) = self.io.write_all(head).await {
                return Err(closed_or(e));
            }
        } else if let Some(early) = self.send_body(head, body, out, is_head).await? {
            return Ok(early);
        }
        std::future::poll_fn(|cx| self.poll_head(cx, is_head)).await
    }

    /// Reads until a whole final answer head is buffered, and parses it.
    fn poll_head(&mut self, cx: &mut Context<'_>, is_head: bool) -> Poll<Result<Answer, H1Error>> {
        loop {
            if let Some(a) = self.parse_head(is_head)? {
                return Poll::Ready(Ok(a));
            }
            let before = self.buf.len();
            match ready!(self.poll_fill(cx, HEAD_READ)) {
                Ok(0) if before == 0 => return Poll::Ready(Err(H1Error::ClosedBeforeAnswer)),
                Ok(0) => {
                    return Poll::Ready(Err(H1Error::Invalid(
                        "connection closed in the middle of the head".into(),
                    )))
                }
                Ok(_) => {}
                Err(e) if before == 0 => return Poll::Ready(Err(closed_or(e))),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Writes the head and the body while watching for an early final answer, which is returned
    /// with the connection marked not reusable. After an early error answer (4xx/5xx) the upload
    /// stops (RFC 9112 §9.3: the upstream does not want the rest); after an early success the rest
    /// of the upload goes on as the answer body is read (an upstream may stream its answer while
    /// it reads).
    async fn send_body(
        &mut self,
        head: &[u8],
        body: Body,
        out: Out,
        is_head: bool,
    ) -> Result<Option<Answer>, H1Error> {
        let mut up = Upload::new(head, body, out);
        // The answer side first: an early answer is taken before more of the upload is written.
        let early = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll_head(cx, is_head) {
                return Poll::Ready(r.map(Some));
            }
            self.poll_upload(&mut up, cx).map_ok(|()| None)
        })
        .await?;
        Ok(early.map(|mut a| {
            a.keep_alive = false;
            if a.parts.status.as_u16() < 400 {
                a.upload = Some(up);
            }
            a
        }))
    }

    /// Moves an upload on as far as it goes without waiting; ready once all of it is written.
    pub fn poll_upload(
        &mut self,
        up: &mut Upload,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), H1Error>> {
        use http_body::Body as _;
        loop {
            if !up.pending.is_empty() {
                ready!(self.io.poll_write_ready(cx))?;
                // At most four pieces are pending (head, or a chunk's size line, data and CRLF).
                let mut slices = [IoSlice::new(&[]); 4];
                for (s, b) in slices.iter_mut().zip(&up.pending) {
                    *s = IoSlice::new(b);
                }
                let n = up.pending.len().min(slices.len());
                match self.io.try_write_vectored(&slices[..n]) {
                    Ok(mut n) => {
                        while n > 0 {
                            let front = up.pending.front_mut().expect("wrote more than pending");
                            if n >= front.len() {
                                n -= front.len();
                                up.pending.pop_front();
                            } else {
                                front.advance(n);
                                n = 0;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(closed_or(e))),
                }
                continue;
            }
            if up.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut up.body).poll_frame(cx)) {
                None => {
                    up.done = true;
                    if up.left.is_some_and(|l| l != 0) {
                        return Poll::Ready(Err(H1Error::BodyLength));
                    }
                    if up.chunked {
                        up.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(H1Error::RequestBody(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => {
                        if let Some(l) = up.left.as_mut() {
                            *l = l.checked_sub(d.len() as u64).ok_or(H1Error::BodyLength)?;
                        }
                        if up.chunked {
                            up.pending
                                .push_back(Bytes::from(format!("{:x}\r\n", d.len())));
                            up.pending.push_back(d);
                            up.pending.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            up.pending.push_back(d);
                        }
                    }
                    // Request trailers are dropped (no upstream of ours reads them).
                    Err(_) => {}
                },
            }
        }
    }

    /// Parses a final answer head from the buffer if a whole one is there (interim 1xx answers are
    /// consumed and skipped).
    fn parse_head(&mut self, is_head: bool) -> Result<Option<Answer>, H1Error> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            // Uninitialised slots: zeroing 100 headers cost 3k instructions per answer (memset).
            let mut headers =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut r,
                &self.buf,
                &mut headers,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() >= self.max_head {
                        return Err(H1Error::HeadTooLarge(self.max_head));
                    }
                    return Ok(None);
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(H1Error::Invalid(format!("more than {MAX_HEADERS} headers")))
                }
                Err(e) => return Err(H1Error::Invalid(e.to_string())),
            };
            if len > self.max_head {
                return Err(H1Error::HeadTooLarge(self.max_head));
            }
            let code = r.code.unwrap_or(0);
            let status = StatusCode::from_u16(code)
                .map_err(|_| H1Error::Invalid(format!("status {code}")))?;
            if status.is_informational() {
                if code == 101 {
                    return Err(H1Error::Invalid("101 switching protocols".into()));
                }
                self.buf.advance(len);
                continue;
            }
            let version = if r.version == Some(1) {
                Version::HTTP_11
            } else {
                Version::HTTP_10
            };
            // Where each name and value lies in the buffer, so that the values can share the frozen
            // head's allocation once the parser's borrow of the buffer has ended.
            let base = self.buf.as_ptr() as usize;
            let count = r.headers.len();
            let at: Vec<(usize, usize, usize, usize)> = r
                .headers
                .iter()
                .map(|h| {
                    let n = h.name.as_ptr() as usize - base;
                    let v = h.value.as_ptr() as usize - base;
                    (n, n + h.name.len(), v, v + h.value.len())
                })
                .collect();
            let head = self.buf.split_to(len).freeze();
            let mut map = HeaderMap::with_capacity(count);
            let (mut close, mut keep_alive_token, mut chunked, mut te) =
                (false, false, false, false);
            let mut length: Option<u64> = None;
            // Headers the `connection` header names beyond close/keep-alive (rare).
            let mut named: Vec<HeaderName> = Vec::new();
            for (i, &(ns, ne, vs, ve)) in at.iter().enumerate() {
                let name = self
                    .names
                    .name(i, &head[ns..ne])
                    .map_err(|_| H1Error::Invalid("header name".into()))?;
                let raw = &head[vs..ve];
                if name == header::CONNECTION {
                    for t in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if t.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive_token = true;
                        } else if let Ok(n) = HeaderName::from_bytes(t) {
                            named.push(n);
                        }
                    }
                    continue;
                } else if name == header::TRANSFER_ENCODING {
                    te = true;
                    chunked = raw
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                } else if name == header::CONTENT_LENGTH {
                    let n = parse_length(raw)
                        .ok_or_else(|| H1Error::Invalid("content-length".into()))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(H1Error::Invalid("conflicting content-length".into()));
                    }
                    length = Some(n);
                }
                if is_hop_by_hop(&name) {
                    continue;
                }
                let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                    .map_err(|_| H1Error::Invalid("header value".into()))?;
                map.append(name, value);
            }
            for n in &named {
                map.remove(n);
            }
            let mut keep_alive = if version == Version::HTTP_11 {
                !close
            } else {
                keep_alive_token && !close
            };
            let body = if is_head || code == 204 || code == 304 {
                Decoder::Done
            } else if te {
                // Both framings present smells of request smuggling: use chunked, then close.
                if length.is_some() {
                    keep_alive = false;
                }
                if chunked {
                    Decoder::Chunked(Chunk::Size)
                } else {
                    keep_alive = false;
                    Decoder::Eof
                }
            } else {
                match length {
                    Some(0) => Decoder::Done,
                    Some(n) => Decoder::Length(n),
                    None => {
                        keep_alive = false;
                        Decoder::Eof
                    }
                }
            };
            let mut resp = http::Response::new(());
            *resp.status_mut() = status;
            *resp.version_mut() = version;
            *resp.headers_mut() = map;
            let (parts, ()) = resp.into_parts();
            return Ok(Some(Answer {
                parts,
                body,
                keep_alive,
                upload: None,
            }));
        }
    }

    /// Reads more into the buffer (at least `want` bytes of room). `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The next piece of the answer body; `Ok(None)` once it has ended (`dec` is then `Done`).
    pub fn poll_data(
        &mut self,
        dec: &mut Decoder,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, H1Error>> {
        let Self {
            io,
            buf,
            read_chunk,
            ..
        } = self;
        poll_decode(buf, dec, *read_chunk, cx, |b, want, cx| {
            b.reserve(want);
            tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, b)
        })
    }
}

/// A write or first read failing because the peer had closed is the same "closed before an
/// answer" as a clean end of stream.
fn closed_or(e: io::Error) -> H1Error {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => H1Error::ClosedBeforeAnswer,
        _ => H1Error::Io(e),
    }
}

#[cfg(test)]
mod tests;
