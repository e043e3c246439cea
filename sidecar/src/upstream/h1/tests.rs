//! The codec against scripted upstreams on loopback: each test's upstream reads the request up to a
//! marker, writes canned bytes, and hands back what it received.

use super::*;
use crate::BoxError;
use http_body_util::{BodyExt, StreamBody};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Accepts one connection, reads until `until` has arrived, writes `answer`, then closes when
/// `close` (else holds the connection open until the test ends it). Returns what it read.
async fn scripted(
    until: &'static [u8],
    answer: &'static [u8],
    close: bool,
) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 65536];
        while !got.windows(until.len()).any(|w| w == until) {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(answer).await.unwrap();
        if !close {
            // Held open (bounded) so that "until close" framing is not what ends the answer.
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await;
        }
        got
    });
    (addr, task)
}

async fn conn(addr: SocketAddr, cap: Option<usize>) -> Conn {
    Conn::new(TcpStream::connect(addr).await.unwrap(), cap)
}

fn request(method: Method, headers: &[(&str, &str)], body: Body) -> (Vec<u8>, Out, Body) {
    let mut b = http::Request::builder().method(method).uri("/p?q=1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    let mut head = Vec::new();
    let out = encode_head(&parts, &body, &mut head).unwrap();
    (head, out, body)
}

async fn read_body(c: &mut Conn, mut dec: Decoder) -> Result<Vec<u8>, H1Error> {
    let mut out = Vec::new();
    while let Some(d) = std::future::poll_fn(|cx| c.poll_data(&mut dec, cx)).await? {
        out.extend_from_slice(&d);
    }
    Ok(out)
}

fn streaming(chunks: Vec<&'static [u8]>) -> Body {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c))));
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

use http_body::Frame;

#[tokio::test]
async fn get_without_body_sends_no_framing_and_reads_a_length_body() {
    let (addr, up) = scripted(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
        false,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::GET, &[("host", "u")], crate::empty());
    assert_eq!(out, Out::Empty);
    let a = c.exchange(&head, body, out, false).await.unwrap();
    assert_eq!(a.parts.status, 200);
    assert_eq!(a.parts.headers["x-a"], "1");
    assert!(a.keep_alive);
    assert_eq!(read_body(&mut c, a.body).await.unwrap(), b"hello");
    assert!(c.drained());
    assert!(c.idle_ok());
    drop(c);
    let sent = String::from_utf8(up.await.unwrap()).unwrap();
    assert_eq!(sent, "GET /p?q=1 HTTP/1.1\r\nhost: u\r\n\r\n");
}

#[tokio::test]
async fn chunked_answer_with_extensions_and_trailers() {
    let (addr, _up) = scripted(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
        false,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::GET, &[], crate::empty());
    let a = c.exchange(&head, body, out, false).await.unwrap();
    assert!(
        !a.parts.headers.contains_key("transfer-encoding"),
        "hop-by-hop header handed up"
    );
    assert!(a.keep_alive);
    assert_eq!(read_body(&mut c, a.body).await.unwrap(), b"hello world");
    assert!(c.drained());
}

#[tokio::test]
async fn answer_without_length_is_read_until_close_and_not_reused() {
    let (addr, _up) = scripted(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nall of it", true).await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::GET, &[], crate::empty());
    let a = c.exchange(&head, body, out, false).await.unwrap();
    assert!(!a.keep_alive);
    assert_eq!(read_body(&mut c, a.body).await.unwrap(), b"all of it");
}

#[tokio::test]
async fn head_answers_and_204_have_no_body_and_interim_answers_are_skipped() {
    let (addr, _up) = scripted(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        false,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::HEAD, &[], crate::empty());
    let a = c.exchange(&head, body, out, true).await.unwrap();
    assert_eq!(a.body, Decoder::Done);
    assert_eq!(a.parts.headers["content-length"], "1000");

    let (addr, _up) = scripted(
        b"\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nconnection: close, x-hop\r\nx-hop: 1\r\nx-kept: 2\r\n\r\n",
        false,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::DELETE, &[], crate::empty());
    let a = c.exchange(&head, body, out, false).await.unwrap();
    assert_eq!(a.parts.status, 204);
    assert_eq!(a.body, Decoder::Done);
    assert!(!a.keep_alive, "connection: close honoured");
    assert!(!a.parts.headers.contains_key("connection"));
    assert!(
        !a.parts.headers.contains_key("x-hop"),
        "a header named by connection is hop-by-hop"
    );
    assert_eq!(a.parts.headers["x-kept"], "2");
}

#[tokio::test]
async fn bad_answers_are_errors() {
    let cases: [(&'static [u8], &str); 4] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            "conflicting",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "content-length",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        (b"garbage\r\n\r\n", "invalid answer"),
    ];
    for (answer, want) in cases {
        let (addr, _up) = scripted(b"\r\n\r\n", answer, false).await;
        let mut c = conn(addr, None).await;
        let (head, out, body) = request(Method::GET, &[], crate::empty());
        let Err(e) = c.exchange(&head, body, out, false).await else {
            panic!("accepted {:?}", String::from_utf8_lossy(answer));
        };
        assert!(e.to_string().contains(want), "{e} for {answer:?}");
    }
}

#[tokio::test]
async fn a_head_over_the_cap_is_refused_and_a_short_body_is_truncated() {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let big = BIG.get_or_init(|| {
        let mut v = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        v.extend(std::iter::repeat_n(b'a', 12_000));
        v.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        v
    });
    let (addr, _up) = scripted(b"\r\n\r\n", big, false).await;
    let mut c = conn(addr, Some(8192)).await;
    let (head, out, body) = request(Method::GET, &[], crate::empty());
    let e = c.exchange(&head, body, out, false).await.err().unwrap();
    assert!(matches!(e, H1Error::HeadTooLarge(8192)), "{e}");

    let (addr, _up) = scripted(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        true,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::GET, &[], crate::empty());
    let a = c.exchange(&head, body, out, false).await.unwrap();
    let e = read_body(&mut c, a.body).await.err().unwrap();
    assert!(matches!(e, H1Error::Truncated), "{e}");
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    // Known size: content-length.
    let (addr, up) = scripted(
        b"abcdef",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::PUT, &[], crate::full("abcdef"));
    assert_eq!(out, Out::Length(6));
    c.exchange(&head, body, out, false).await.unwrap();
    drop(c);
    let sent = String::from_utf8(up.await.unwrap()).unwrap();
    assert_eq!(
        sent,
        "PUT /p?q=1 HTTP/1.1\r\ncontent-length: 6\r\n\r\nabcdef"
    );

    // Unknown size: chunked.
    let (addr, up) = scripted(
        b"0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::POST, &[], streaming(vec![b"ab", b"", b"cde"]));
    assert_eq!(out, Out::Chunked);
    c.exchange(&head, body, out, false).await.unwrap();
    drop(c);
    let sent = String::from_utf8(up.await.unwrap()).unwrap();
    assert!(
        sent.ends_with("transfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{sent:?}"
    );

    // Empty POST says so.
    let mut head = Vec::new();
    let (parts, ()) = http::Request::post("/").body(()).unwrap().into_parts();
    assert_eq!(
        encode_head(&parts, &crate::empty(), &mut head),
        Ok(Out::Empty)
    );
    assert!(String::from_utf8(head)
        .unwrap()
        .contains("content-length: 0\r\n"));
}

#[tokio::test]
async fn a_body_longer_than_its_content_length_fails_the_exchange() {
    let (addr, _up) = scripted(b"\r\n\r\n", b"", false).await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(
        Method::PUT,
        &[("content-length", "3")],
        streaming(vec![b"ab", b"cd"]),
    );
    assert_eq!(out, Out::Length(3));
    let e = c.exchange(&head, body, out, false).await.err().unwrap();
    assert!(matches!(e, H1Error::BodyLength), "{e}");
}

#[tokio::test]
async fn an_early_answer_ends_an_upload_the_upstream_does_not_read() {
    // The upstream answers 413 after the head and never reads the 64 MiB body: sending the whole
    // body first would block once the socket buffers fill.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut chunk = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
            .await
            .unwrap();
        // Holds the connection without reading (bounded), as a server refusing an upload does.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let mut c = conn(addr, None).await;
    static CHUNK: [u8; 65536] = [7u8; 65536];
    let frames = (0..1024).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from_static(&CHUNK))));
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    let (head, out, body) = request(Method::PUT, &[], body);
    let a = tokio::time::timeout(Duration::from_secs(20), c.exchange(&head, body, out, false))
        .await
        .expect("blocked on an upload nobody reads")
        .unwrap();
    assert_eq!(a.parts.status, 413);
    assert!(
        !a.keep_alive,
        "an upload cut short leaves the connection unusable"
    );
    assert_eq!(read_body(&mut c, a.body).await.unwrap(), b"big");
}

#[tokio::test]
async fn a_closed_idle_connection_is_seen_and_reported_as_closed_before_an_answer() {
    let (addr, up) = scripted(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        true,
    )
    .await;
    let mut c = conn(addr, None).await;
    let (head, out, body) = request(Method::GET, &[], crate::empty());
    let a = c.exchange(&head, body, out, false).await.unwrap();
    assert_eq!(a.body, Decoder::Done);
    up.await.unwrap();
    // The reactor reports the close as readiness (bounded wait).
    tokio::time::timeout(Duration::from_secs(5), c.io.readable())
        .await
        .expect("the upstream's close was not reported")
        .unwrap();
    assert!(!c.idle_ok(), "a closed idle connection was taken as usable");
    let (head, out, body) = request(Method::GET, &[], crate::empty());
    let e = c.exchange(&head, body, out, false).await.err().unwrap();
    assert!(matches!(e, H1Error::ClosedBeforeAnswer), "{e}");
}

#[test]
fn name_cache_hits_only_on_the_same_bytes_at_the_same_position() {
    let mut c = NameCache::default();
    let n = |c: &mut NameCache, i, raw: &str| c.name(i, raw.as_bytes()).unwrap();
    assert_eq!(n(&mut c, 0, "Content-Type"), header::CONTENT_TYPE);
    assert_eq!(n(&mut c, 1, "X-Custom"), "x-custom");
    // Hits give what the parser gives; other spellings and positions are parsed afresh.
    assert_eq!(n(&mut c, 0, "Content-Type"), header::CONTENT_TYPE);
    assert_eq!(n(&mut c, 0, "content-type"), header::CONTENT_TYPE);
    assert_eq!(n(&mut c, 0, "X-Other"), "x-other");
    assert_eq!(n(&mut c, 1, "X-Custom"), "x-custom");
    assert_eq!(n(&mut c, 1, "X-Customs"), "x-customs");
    assert_eq!(n(&mut c, 1, "X-Custo"), "x-custo");
    // A gap in positions is not cached, and an invalid name is still refused.
    assert_eq!(n(&mut c, 9, "Server"), header::SERVER);
    assert!(c.name(0, b"bad name").is_err());
    assert!(c.name(0, b"").is_err());
}

#[tokio::test]
async fn answers_on_one_connection_keep_their_own_header_names() {
    let (addr, _up) = scripted(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-B: 2\r\nx-c: 3\r\n\r\n",
        false,
    )
    .await;
    let mut c = conn(addr, None).await;
    for want in [&[("x-a", "1")][..], &[("x-b", "2"), ("x-c", "3")][..]] {
        let (head, out, body) = request(Method::GET, &[], crate::empty());
        let a = c.exchange(&head, body, out, false).await.unwrap();
        let got: Vec<_> = a
            .parts
            .headers
            .iter()
            .filter(|(k, _)| *k != header::CONTENT_LENGTH)
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(read_body(&mut c, a.body).await.unwrap(), b"");
    }
}
