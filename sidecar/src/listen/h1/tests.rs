//! The listener codec against raw clients on loopback: each test writes bytes a client could send
//! and checks the bytes that come back, and what the service behind it saw.

use super::*;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, StreamBody};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Svc = Arc<dyn Fn(Request) -> BoxFuture<'static, Option<Response>> + Send + Sync>;

const LIMITS: Limits = Limits {
    max_head: 8192,
    header_read_timeout: Duration::from_secs(10),
};

/// Serves one connection with `svc`; the sender starts a drain.
async fn start(limits: Limits, svc: Svc) -> (SocketAddr, watch::Sender<bool>, JoinHandle<Served>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        serve(s, limits, &mut rx, move |req| svc(req)).await
    });
    (addr, tx, task)
}

/// Answers `<method> <target> host=<host> body=<the request body>` (reading all of it).
fn echo() -> Svc {
    Arc::new(|req: Request| {
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes());
            let text = match body {
                Ok(b) => format!(
                    "{} {} host={} body={}",
                    parts.method,
                    parts.uri,
                    parts
                        .headers
                        .get("host")
                        .map_or("-", |h| h.to_str().unwrap()),
                    String::from_utf8_lossy(&b)
                ),
                Err(e) => format!("body error: {e}"),
            };
            Some(http::Response::new(crate::full(text)))
        })
    })
}

/// Reads until the peer closes (bounded).
async fn read_all(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `n` answers with a `content-length` body have arrived (bounded).
async fn read_answers(c: &mut TcpStream, n: usize) -> Vec<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut answers = Vec::new();
    for _ in 0..1000 {
        while answers.len() < n {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.parse().unwrap());
            if buf.len() < end + 4 + len {
                break;
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            answers.push((head, body));
        }
        if answers.len() == n {
            return answers;
        }
        let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk)).await;
        match r {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    answers
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, _tx, task) = start(LIMITS, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"GET /a?x=1 HTTP/1.1\r\nHost: one\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: two\r\nContent-Length: 5\r\n\r\nhello\
          GET /c HTTP/1.1\r\nHost: three\r\n\r\n",
    )
    .await
    .unwrap();
    let a = read_answers(&mut c, 3).await;
    assert_eq!(a.len(), 3, "{a:?}");
    assert!(a[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{}", a[0].0);
    assert!(a[0].0.contains("\r\ndate: "), "{}", a[0].0);
    assert!(!a[0].0.contains("connection: close"), "{}", a[0].0);
    assert_eq!(a[0].1, "GET /a?x=1 host=one body=");
    assert_eq!(a[1].1, "POST /b host=two body=hello");
    assert_eq!(a[2].1, "GET /c host=three body=");
    drop(c);
    assert!(matches!(task.await.unwrap(), Served::Closed));
}

#[tokio::test]
async fn chunked_request_bodies_are_decoded_and_the_connection_is_reused() {
    let (addr, _tx, _task) = start(LIMITS, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nx-trailer: t\r\n\r\n",
    )
    .await
    .unwrap();
    let a = read_answers(&mut c, 1).await;
    assert_eq!(a[0].1, "PUT /up host=h body=abcdefg");
    // Same connection, next request.
    c.write_all(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let a = read_answers(&mut c, 1).await;
    assert_eq!(a[0].1, "GET /next host=h body=");
}

#[tokio::test]
async fn a_large_body_streams_through_in_pieces() {
    let (addr, _tx, _task) = start(LIMITS, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let n = 3 * 1024 * 1024;
    let head = format!("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n");
    let mut w = c.into_split();
    let writer = tokio::spawn(async move {
        w.1.write_all(head.as_bytes()).await.unwrap();
        w.1.write_all(&vec![b'z'; n]).await.unwrap();
        w.1
    });
    let mut r = w.0;
    let mut buf = Vec::new();
    let want = n + "POST /big host=h body=".len();
    let mut chunk = vec![0u8; 65536];
    for _ in 0..100_000 {
        let k = tokio::time::timeout(Duration::from_secs(10), r.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        if k == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..k]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() >= end + 4 + want {
                break;
            }
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(buf.len() - end - 4, want);
    let w = writer.await.unwrap();
    c = r.reunite(w).unwrap();
    drop(c);
}

#[tokio::test]
async fn expect_100_continue_is_sent_only_when_the_body_is_read() {
    // A service that reads: the client waits for the interim answer before sending.
    let (addr, _tx, _task) = start(LIMITS, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = vec![0u8; CONTINUE.len()];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, CONTINUE);
    c.write_all(b"ok").await.unwrap();
    let a = read_answers(&mut c, 1).await;
    assert_eq!(a[0].1, "POST /e host=h body=ok");

    // A service that refuses without reading: no 100, the answer, then the connection closes.
    let refuse: Svc = Arc::new(|_req| {
        Box::pin(async {
            let mut r = http::Response::new(crate::full("too big"));
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            Some(r)
        })
    });
    let (addr, _tx, _task) = start(LIMITS, refuse).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n",
    )
    .await
    .unwrap();
    let all = read_all(&mut c).await;
    assert!(
        all.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{all}"
    );
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert!(!all.contains("100 Continue"), "{all}");
}

#[tokio::test]
async fn bad_heads_get_400_or_431_and_the_connection_closes() {
    let cases: &[(&[u8], &str)] = &[
        (b"THIS IS NOT HTTP\r\n\r\n", "HTTP/1.1 400 "),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        // RFC 9112 §3.2: exactly one Host, agreeing with an absolute-form target.
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "HTTP/1.1 400 "),
        (
            b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
    ];
    for (req, want) in cases {
        let (addr, _tx, task) = start(LIMITS, echo()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(req).await.unwrap();
        let all = read_all(&mut c).await;
        assert!(
            all.starts_with(want),
            "{:?}: {all}",
            String::from_utf8_lossy(req)
        );
        assert!(all.contains("connection: close\r\n"), "{all}");
        // (The codec lingers for the client's close before it lets go.)
        drop(c);
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }
    // A head over the cap, and one with more than 100 headers.
    let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    let many: String = std::iter::once("GET / HTTP/1.1\r\n".to_string())
        .chain((0..101).map(|i| format!("x-{i}: 1\r\n")))
        .chain(std::iter::once("\r\n".to_string()))
        .collect();
    for req in [big, many] {
        let (addr, _tx, _task) = start(LIMITS, echo()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        let all = read_all(&mut c).await;
        assert!(all.starts_with("HTTP/1.1 431 "), "{all}");
    }
}

#[tokio::test]
async fn a_head_not_complete_by_the_deadline_is_closed_without_an_answer() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..LIMITS
    };
    let (addr, _tx, task) = start(limits, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: slow").await.unwrap();
    let all = read_all(&mut c).await;
    assert_eq!(all, "");
    assert!(matches!(task.await.unwrap(), Served::Closed));

    // The deadline runs per head: a connection answering requests in time stays up past it.
    let (addr, _tx, _task) = start(limits, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.write_all(format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let a = read_answers(&mut c, 1).await;
        assert_eq!(a.len(), 1, "request {i}");
    }
}

#[tokio::test]
async fn answers_are_framed_by_what_is_known_of_their_body() {
    let svc: Svc = Arc::new(|req: Request| {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let mut r = match path.as_str() {
                // Unknown size: chunked for HTTP/1.1, until close for HTTP/1.0.
                "/stream" => http::Response::new(Body::new(StreamBody::new(
                    futures::stream::iter(["ab", "cde"].map(|s| {
                        Ok::<_, crate::BoxError>(Frame::data(Bytes::from_static(s.as_bytes())))
                    })),
                ))),
                "/none" => {
                    let mut r = http::Response::new(crate::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                _ => http::Response::new(crate::full("12345")),
            };
            // Hop-by-hop headers from the stack are not this connection's: never written.
            r.headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
            r.headers_mut()
                .insert("keep-alive", HeaderValue::from_static("timeout=1"));
            Some(r)
        })
    });
    let (addr, _tx, _task) = start(LIMITS, svc.clone()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"0\r\n\r\n") {
        let k = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(k > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(
        got.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{got}"
    );
    assert!(
        !got.contains("\r\nconnection:"),
        "hop-by-hop written: {got}"
    );
    assert!(
        !got.contains("\r\nkeep-alive:"),
        "hop-by-hop written: {got}"
    );

    // HEAD: the head with its length, no body; 204: no body. (If either wrote a body, the
    // next answer would not start where its head should.)
    c.write_all(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.contains("content-length: 5\r\n"), "{head}");
    c.write_all(b"GET /none HTTP/1.1\r\nHost: h\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let a = read_answers(&mut c, 2).await;
    assert!(a[0].0.starts_with("HTTP/1.1 204 No Content"), "{a:?}");
    assert!(a[1].0.starts_with("HTTP/1.1 200 OK"), "{a:?}");
    assert_eq!(a[1].1, "12345");

    // HTTP/1.0: no chunked encoding; the body runs until the close.
    let (addr, _tx, _task) = start(LIMITS, svc).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.0\r\n\r\n").await.unwrap();
    let all = read_all(&mut c).await;
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert!(!all.contains("chunked"), "{all}");
    assert!(all.ends_with("\r\n\r\nabcde"), "{all}");
}

#[tokio::test]
async fn http10_keep_alive_is_honoured_when_asked() {
    let (addr, _tx, _task) = start(LIMITS, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let a = read_answers(&mut c, 1).await;
    assert!(a[0].0.contains("connection: keep-alive"), "{}", a[0].0);
    c.write_all(b"GET /2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let all = read_all(&mut c).await;
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert!(all.ends_with("GET /2 host=h body="), "{all}");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let hang: Svc = Arc::new(move |_req| {
        let flag = Flag(d.clone());
        Box::pin(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            None
        })
    });
    let (addr, _tx, task) = start(LIMITS, hang).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    drop(c);
    let served = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("connection ended")
        .unwrap();
    assert!(matches!(served, Served::Closed));
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_reset_answer_and_a_failing_body_close_without_a_complete_answer() {
    let svc: Svc = Arc::new(|req: Request| {
        Box::pin(async move {
            if req.uri().path() == "/reset" {
                return None;
            }
            let frames: Vec<Result<Frame<Bytes>, crate::BoxError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"part"))),
                Err("upstream went away".into()),
            ];
            Some(http::Response::new(Body::new(StreamBody::new(
                futures::stream::iter(frames),
            ))))
        })
    });
    let (addr, _tx, _task) = start(LIMITS, svc.clone()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /reset HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_all(&mut c).await, "");

    let (addr, _tx, _task) = start(LIMITS, svc).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /fail HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let all = read_all(&mut c).await;
    assert!(all.contains("\r\n4\r\npart\r\n"), "{all}");
    assert!(!all.ends_with("0\r\n\r\n"), "looks complete: {all}");
}

#[tokio::test]
async fn a_drain_closes_idle_connections_and_lets_busy_ones_finish() {
    let (addr, tx, task) = start(LIMITS, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answers(&mut c, 1).await.len(), 1);
    tx.send(true).unwrap();
    assert_eq!(read_all(&mut c).await, "");
    assert!(matches!(task.await.unwrap(), Served::Closed));

    let slow: Svc = Arc::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some(http::Response::new(crate::full("done")))
        })
    });
    let (addr, tx, _task) = start(LIMITS, slow).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(true).unwrap();
    let all = read_all(&mut c).await;
    assert!(all.starts_with("HTTP/1.1 200 OK"), "{all}");
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert!(all.ends_with("done"), "{all}");
}

#[tokio::test]
async fn the_http2_preface_hands_the_connection_over_with_what_was_read() {
    let (addr, _tx, task) = start(LIMITS, echo()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    // The preface in two pieces, then the start of a frame.
    c.write_all(&H2_PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.write_all(&H2_PREFACE[10..]).await.unwrap();
    c.write_all(b"frame").await.unwrap();
    let Served::H2(mut io) = task.await.unwrap() else {
        panic!("not handed over")
    };
    let mut got = vec![0u8; H2_PREFACE.len() + 5];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..24], H2_PREFACE);
    assert_eq!(&got[24..], b"frame");
    io.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
}
