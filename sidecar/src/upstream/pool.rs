//! Upstream HTTP/1.1 connections, kept alive and reused, each driven by the request using it
//! (`h1.rs`: no connection task, no channel between the request and its connection).
//!
//! Rules:
//! - **LIFO**: the most recently used idle connection goes first, so a burst's extra connections
//!   age out while a steady load keeps reusing the warm ones.
//! - **Back in the pool only when clean**: a connection returns to the idle list when its answer
//!   body has been read to the end with nothing left over and the upstream allowed keep-alive. An
//!   answer dropped early (client gone, deadline) takes its connection with it: it is closed.
//! - **A dead idle connection is never used**: checkout skips one the reactor has seen become
//!   readable (the upstream closed it, or sent something unasked). If a reused connection still
//!   closes before any of the answer arrived (the upstream's keep-alive ran out as we wrote), a
//!   bodyless request of an idempotent method is sent again on the next connection; anything else
//!   fails as an upstream error, for the retry policy to judge.
//! - **Bounded**: at most `max_idle` idle connections per upstream (the oldest is dropped first), and
//!   none idle longer than `idle_timeout` is reused (swept lazily at each checkout and checkin of
//!   that upstream). `max_idle` 0 is a fresh connection per request (canaries).
//! - Errors are typed for the breaker: connect refused/failed → `Connect`, connect timeout →
//!   `Timeout(Connect)`, anything after the connection was made → `Upstream` (all local-origin).

use crate::codec::{Decoder, H1Error};
use crate::error::{ProxyError, TimeoutKind};
use crate::upstream::h1::{self, Answer, Conn, Out, Upload};
use crate::upstream::HeadBack;
use crate::Body;
use bytes::Bytes;
use http::uri::Authority;
use http_body::{Frame, SizeHint};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Pooled connections tried per request before a new one is opened (each failed one was closed
/// under us before answering).
const MAX_STALE_TRIES: usize = 4;

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    /// The upstream of an inbound listener, found without hashing (its one upstream).
    fixed: Option<(Authority, Arc<Host>)>,
    /// Any other upstream (outbound listeners route by authority).
    hosts: Mutex<HashMap<Authority, Arc<Host>>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Each connection's read cap (`upstream_buffer_bytes`); `None`: `h1`'s defaults.
    max_buf: Option<usize>,
}

/// One upstream's idle connections, oldest first.
#[derive(Default)]
struct Host {
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Pool {
    /// `fixed`: the upstream most requests go to, if there is one.
    pub fn new(
        fixed: Option<Authority>,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        max_buf: Option<usize>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                fixed: fixed.map(|a| (a, Arc::default())),
                hosts: Mutex::new(HashMap::new()),
                max_idle,
                idle_timeout,
                connect_timeout,
                max_buf,
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set, hop-by-hop headers removed) to `auth` and returns
    /// the answer, whose body gives the connection back to the pool when it ends.
    pub async fn send(
        &self,
        auth: &Authority,
        req: http::Request<Body>,
    ) -> Result<http::Response<PooledBody>, ProxyError> {
        let host = self.host(auth);
        let (parts, body) = req.into_parts();
        let mut head = Vec::with_capacity(256);
        let out = h1::encode_head(&parts, &body, &mut head).map_err(ProxyError::BadRequest)?;
        let is_head = parts.method == http::Method::HEAD;
        // Sent again on another connection when a reused one turns out closed: nothing of it is
        // lost (no body) and the upstream did not answer it.
        let resendable = out == Out::Empty && parts.method.is_idempotent();
        // Encoded: the retry layer above may have the head back for another try.
        HeadBack::give_back(parts);
        let mut body = Some(body);
        for _ in 0..MAX_STALE_TRIES {
            let Some(mut conn) = self.checkout(&host) else {
                break;
            };
            let b = body.take().unwrap_or_else(crate::empty);
            match conn.exchange(&head, b, out, is_head).await {
                Ok(a) => return Ok(self.wrap(host, conn, a)),
                Err(H1Error::ClosedBeforeAnswer) if resendable => continue,
                Err(e) => return Err(upstream_error(auth, &e)),
            }
        }
        let mut conn = self.connect(auth).await?;
        let b = body.take().unwrap_or_else(crate::empty);
        match conn.exchange(&head, b, out, is_head).await {
            Ok(a) => Ok(self.wrap(host, conn, a)),
            Err(e) => Err(upstream_error(auth, &e)),
        }
    }

    #[cfg(test)]
    fn idle_count(&self, auth: &Authority) -> usize {
        lock(&self.host(auth).idle).len()
    }

    fn host(&self, auth: &Authority) -> Arc<Host> {
        match &self.inner.fixed {
            Some((a, h)) if a == auth => h.clone(),
            _ => lock(&self.inner.hosts)
                .entry(auth.clone())
                .or_default()
                .clone(),
        }
    }

    fn checkout(&self, host: &Host) -> Option<Conn> {
        let mut idle = lock(&host.idle);
        let now = Instant::now();
        // Newest first; closed or expired ones are dropped (older ones behind them are swept at
        // checkin).
        while let Some(c) = idle.pop_back() {
            if now.duration_since(c.since) < self.inner.idle_timeout && c.conn.idle_ok() {
                return Some(c.conn);
            }
        }
        None
    }

    fn checkin(&self, host: &Host, conn: Conn) {
        if self.inner.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = lock(&host.idle);
        while let Some(c) = idle.front() {
            let stale = now.duration_since(c.since) >= self.inner.idle_timeout;
            if !stale && idle.len() < self.inner.max_idle {
                break;
            }
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }

    async fn connect(&self, auth: &Authority) -> Result<Conn, ProxyError> {
        let after = self.inner.connect_timeout;
        let addr = (auth.host(), auth.port_u16().unwrap_or(80));
        let tcp = match tokio::time::timeout(after, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    upstream: auth.to_string(),
                    kind: TimeoutKind::Connect,
                    after,
                })
            }
            Ok(Err(e)) => {
                return Err(ProxyError::Connect {
                    upstream: auth.to_string(),
                    msg: e.to_string(),
                })
            }
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        Ok(Conn::new(tcp, self.inner.max_buf))
    }

    fn wrap(&self, host: Arc<Host>, conn: Conn, a: Answer) -> http::Response<PooledBody> {
        let mut b = PooledBody {
            conn: Some(conn),
            dec: a.body,
            keep_alive: a.keep_alive,
            upload: a.upload,
            ret: Some(Return {
                pool: self.clone(),
                host,
            }),
        };
        if b.dec == Decoder::Done {
            b.finish();
        }
        http::Response::from_parts(a.parts, b)
    }
}

fn upstream_error(auth: &Authority, e: &H1Error) -> ProxyError {
    if let H1Error::RequestBody(b) = e {
        if let Some(c) = b.downcast_ref::<crate::codec::ClientBodyError>() {
            return ProxyError::BadRequest(c.to_string());
        }
    }
    ProxyError::Upstream {
        upstream: auth.to_string(),
        msg: crate::upstream::forward::error_chain(e),
    }
}

struct Return {
    pool: Pool,
    host: Arc<Host>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An upstream answer's body, read from its connection as it is polled; the connection goes back
/// to the pool when the body has ended cleanly. Dropped early or failed, the connection is closed
/// with it (the rest of the answer was never read).
pub struct PooledBody {
    /// `None` once the body has ended (the connection went back or was closed).
    conn: Option<Conn>,
    dec: Decoder,
    keep_alive: bool,
    /// The rest of the request body, after an early success answer: sent as this body is read.
    upload: Option<Upload>,
    ret: Option<Return>,
}

impl PooledBody {
    fn finish(&mut self) {
        let (Some(conn), Some(r)) = (self.conn.take(), self.ret.take()) else {
            return;
        };
        if self.keep_alive && conn.drained() {
            r.pool.checkin(&r.host, conn);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(up) = this.upload.as_mut() {
            match conn.poll_upload(up, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    this.upload = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {}
            }
        }
        match conn.poll_data(&mut this.dec, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(d))) => {
                if this.dec == Decoder::Done {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(d))))
            }
            Poll::Ready(Ok(None)) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.dec == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.dec {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A minimal HTTP/1.1 upstream: answers every request on a connection with `body`, counts
    /// accepted connections, and closes a connection after `close_after` answers (0 = never).
    async fn upstream(body: &'static str, close_after: usize) -> (Authority, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let auth: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(k) = s.read(&mut chunk).await else {
                            return;
                        };
                        if k == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            answered += 1;
                            let close = close_after != 0 && answered >= close_after;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n",
                                body.len(),
                                if close { "connection: close\r\n" } else { "" }
                            );
                            if s.write_all(head.as_bytes()).await.is_err()
                                || s.write_all(body.as_bytes()).await.is_err()
                            {
                                return;
                            }
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (auth, accepted)
    }

    fn get(auth: &Authority) -> http::Request<Body> {
        http::Request::builder()
            .uri("/x")
            .header("host", auth.as_str())
            .body(crate::empty())
            .unwrap()
    }

    async fn fetch(pool: &Pool, auth: &Authority) -> String {
        let resp = pool.send(auth, get(auth)).await.unwrap();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (auth, accepted) = upstream("hello", 0).await;
        let pool = Pool::new(
            Some(auth.clone()),
            8,
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        );
        for _ in 0..50 {
            assert_eq!(fetch(&pool, &auth).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(&auth), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_more_and_keep_at_most_max_idle() {
        let (auth, accepted) = upstream("hi", 0).await;
        let pool = Pool::new(
            None,
            2,
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        );
        // Four answers held open at once: four connections.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.send(&auth, get(&auth)).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        for r in held {
            r.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(&auth), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_upstream_is_not_reused() {
        // The upstream closes after every answer: each request needs a new connection, and none
        // fails because of a dead pooled one.
        let (auth, accepted) = upstream("bye", 1).await;
        let pool = Pool::new(
            None,
            8,
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        );
        for _ in 0..10 {
            assert_eq!(fetch(&pool, &auth).await, "bye");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn an_abandoned_body_does_not_return_its_connection() {
        let (auth, _) = upstream("partial", 0).await;
        let pool = Pool::new(
            None,
            8,
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        );
        let resp = pool.send(&auth, get(&auth)).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(&auth), 0);
        assert_eq!(fetch(&pool, &auth).await, "partial");
    }

    #[tokio::test]
    async fn an_upstream_streaming_its_answer_while_reading_the_upload_gets_all_of_it() {
        // The upstream answers right after the head and echoes the upload as it reads it: the
        // upload must go on while the answer body is read, or both sides wait for each other.
        const N: usize = 8 << 20;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let auth: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            let end = loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {N}\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let mut echoed = got.len() - end;
            s.write_all(&got[end..]).await.unwrap();
            while echoed < N {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "upload stopped after {echoed} bytes");
                s.write_all(&buf[..n]).await.unwrap();
                echoed += n;
            }
        });
        let pool = Pool::new(
            None,
            8,
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        );
        let req = http::Request::put("/echo")
            .header("host", auth.as_str())
            .body(crate::full(vec![9u8; N]))
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            let resp = pool.send(&auth, req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .expect("upload and answer waited for each other");
        assert_eq!(got.len(), N);
        assert!(got.iter().all(|&b| b == 9));
        assert_eq!(
            pool.idle_count(&auth),
            0,
            "an early answer's connection is not reused"
        );
    }

    #[tokio::test]
    async fn max_idle_zero_never_pools() {
        let (auth, accepted) = upstream("x", 0).await;
        let pool = Pool::new(
            None,
            0,
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        );
        for _ in 0..3 {
            fetch(&pool, &auth).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle_count(&auth), 0);
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let auth: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        drop(l);
        let pool = Pool::new(
            None,
            8,
            Duration::from_secs(30),
            Duration::from_secs(1),
            None,
        );
        let slot = HeadBack::default();
        let mut req = get(&auth);
        req.headers_mut()
            .insert("x-kept", http::HeaderValue::from_static("1"));
        req.extensions_mut().insert(crate::classify::RequestMeta {
            head_back: Some(slot.clone()),
            ..crate::classify::RequestMeta::for_test(auth.as_str())
        });
        let Err(e) = pool.send(&auth, req).await else {
            panic!("connected to a closed port");
        };
        assert!(matches!(e, ProxyError::Connect { .. }), "{e:?}");
        assert!(e.is_local_origin());
        // The head came back for a retry, without its own slot in it.
        let head = slot.take().expect("head handed back");
        assert_eq!(head.headers["x-kept"], "1");
        let meta = head.extensions.get::<crate::classify::RequestMeta>();
        assert!(meta.expect("meta kept").head_back.is_none());
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_not_reused() {
        // Real time (paused time would also fire the connect timeout while loopback I/O is pending).
        let (auth, accepted) = upstream("t", 0).await;
        let pool = Pool::new(
            None,
            8,
            Duration::from_millis(100),
            Duration::from_secs(1),
            None,
        );
        fetch(&pool, &auth).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        fetch(&pool, &auth).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(&auth), 1);
    }
}
