//! HTTP/1.1 framing that both codecs share: the listener's (`listen/h1.rs`, request bodies from
//! clients) and the upstream client's (`upstream/h1.rs`, answers from upstreams). Body decoding,
//! header-name caching, hop-by-hop rules and the small number helpers live here once.

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderName;
use std::io;
use std::task::{ready, Context, Poll};

use crate::BoxError;

const MAX_CHUNK_LINE: usize = 4096;

const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Nothing of an answer arrived before the connection closed: on a reused connection, the
    /// upstream's keep-alive ran out under us.
    #[error("connection closed before an answer")]
    ClosedBeforeAnswer,
    #[error("invalid answer: {0}")]
    Invalid(String),
    #[error("answer head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("connection closed in the middle of the answer body")]
    Truncated,
    #[error("request body: {0}")]
    RequestBody(BoxError),
    #[error("request body length differs from its content-length")]
    BodyLength,
}

/// A request body the client framed wrongly (a malformed chunk, a body cut short): the client's
/// error, answered 400 — not the upstream's, and not a failure its breaker counts.
#[derive(Debug, thiserror::Error)]
#[error("request body from the client: {0}")]
pub struct ClientBodyError(#[source] pub H1Error);

/// How much of the answer body is left, and how it is delimited.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoder {
    /// Nothing (left) to read.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Eof,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    /// Trailer bytes seen so far (dropped: nothing downstream uses them).
    Trailers(usize),
}

pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A `content-length` value: digits only (RFC 9110 §8.6), or a list of equal ones.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// Header names of the previous head on one connection, by position, with the bytes they were
/// parsed from.
///
/// Why: a peer sends the same names in the same order on every message of a connection (nginx:
/// `Server`, `Date`, `Content-Type`, ...), and parsing a name (`HeaderName::from_bytes`: lowercase
/// into a buffer, a jump table over the standard names that the branch predictor keeps missing,
/// an allocation for other names) was ~1.4k instructions per proxied request. A byte comparison
/// with the name at the same position costs a few dozen; a name that differs is parsed as before
/// and replaces the cached one. Names are compared exactly (case and all), so a hit is the name the
/// parser would have produced.
#[derive(Default)]
pub(crate) struct NameCache(Vec<(Box<[u8]>, HeaderName)>);

/// Positions cached per connection: heads rarely have more names than this.
const NAME_CACHE_SLOTS: usize = 32;

impl NameCache {
    pub(crate) fn name(
        &mut self,
        i: usize,
        raw: &[u8],
    ) -> Result<HeaderName, http::header::InvalidHeaderName> {
        if let Some((b, n)) = self.0.get(i) {
            if **b == *raw {
                return Ok(n.clone());
            }
        }
        let n = HeaderName::from_bytes(raw)?;
        if i < self.0.len() {
            self.0[i] = (raw.into(), n.clone());
        } else if i == self.0.len() && i < NAME_CACHE_SLOTS {
            self.0.push((raw.into(), n.clone()));
        }
        Ok(n)
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    // A match on the lower-case name: a `const` array of `HeaderName`s was built, compared and
    // dropped for every header of every message (4 % of the instructions per request).
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The next piece of a body framed by `dec` out of `buf`, reading more with `fill` (which gets
/// the room it should make) when what is buffered does not finish a piece. Shared by answers read
/// from upstreams (`upstream/h1.rs`) and request bodies read from clients (`listen/h1.rs`).
pub(crate) fn poll_decode(
    buf: &mut BytesMut,
    dec: &mut Decoder,
    read_chunk: usize,
    cx: &mut Context<'_>,
    mut fill: impl FnMut(&mut BytesMut, usize, &mut Context<'_>) -> Poll<io::Result<usize>>,
) -> Poll<Result<Option<Bytes>, H1Error>> {
    loop {
        let want = match dec {
            Decoder::Done => return Poll::Ready(Ok(None)),
            Decoder::Length(rem) => {
                if !buf.is_empty() {
                    let n = (*rem).min(buf.len() as u64) as usize;
                    *rem -= n as u64;
                    if *rem == 0 {
                        *dec = Decoder::Done;
                    }
                    return Poll::Ready(Ok(Some(buf.split_to(n).freeze())));
                }
                (*rem).min(read_chunk as u64) as usize
            }
            Decoder::Eof => {
                if !buf.is_empty() {
                    return Poll::Ready(Ok(Some(buf.split().freeze())));
                }
                if ready!(fill(buf, read_chunk, cx))? == 0 {
                    *dec = Decoder::Done;
                    return Poll::Ready(Ok(None));
                }
                continue;
            }
            Decoder::Chunked(st) => match step_chunked(buf, st)? {
                Step::Data(d) => return Poll::Ready(Ok(Some(d))),
                Step::End => {
                    *dec = Decoder::Done;
                    return Poll::Ready(Ok(None));
                }
                Step::Again => continue,
                Step::Need => match st {
                    Chunk::Data(rem) => (*rem).min(read_chunk as u64) as usize,
                    _ => MAX_CHUNK_LINE,
                },
            },
        };
        if ready!(fill(buf, want, cx))? == 0 {
            return Poll::Ready(Err(H1Error::Truncated));
        }
    }
}

/// One step of the chunked decoder over what is buffered.
fn step_chunked(buf: &mut BytesMut, st: &mut Chunk) -> Result<Step, H1Error> {
    match st {
        Chunk::Size => {
            let Some(eol) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(H1Error::Invalid("chunk size line too long".into()));
                }
                return Ok(Step::Need);
            };
            let line = &buf[..eol];
            let digits = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            let rest = line[digits..].trim_ascii_start();
            if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') {
                return Err(H1Error::Invalid("chunk size".into()));
            }
            let size = line[..digits].iter().fold(0u64, |acc, &b| {
                acc * 16 + u64::from((b as char).to_digit(16).unwrap_or(0))
            });
            buf.advance(eol + 2);
            *st = if size == 0 {
                Chunk::Trailers(0)
            } else {
                Chunk::Data(size)
            };
            Ok(Step::Again)
        }
        Chunk::Data(rem) => {
            if buf.is_empty() {
                return Ok(Step::Need);
            }
            let n = (*rem).min(buf.len() as u64) as usize;
            *rem -= n as u64;
            if *rem == 0 {
                *st = Chunk::DataEnd;
            }
            Ok(Step::Data(buf.split_to(n).freeze()))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::Need);
            }
            if &buf[..2] != b"\r\n" {
                return Err(H1Error::Invalid("chunk not followed by CRLF".into()));
            }
            buf.advance(2);
            *st = Chunk::Size;
            Ok(Step::Again)
        }
        Chunk::Trailers(seen) => {
            let Some(eol) = find_crlf(buf) else {
                if *seen + buf.len() > MAX_TRAILERS {
                    return Err(H1Error::Invalid("trailers too large".into()));
                }
                return Ok(Step::Need);
            };
            buf.advance(eol + 2);
            if eol == 0 {
                return Ok(Step::End);
            }
            *seen += eol + 2;
            if *seen > MAX_TRAILERS {
                return Err(H1Error::Invalid("trailers too large".into()));
            }
            Ok(Step::Again)
        }
    }
}

enum Step {
    Data(Bytes),
    End,
    Again,
    Need,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}
