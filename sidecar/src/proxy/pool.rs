//! Upstream HTTP/1.1 connections, kept alive and reused, on hyper's connection-level client.
//!
//! Why not hyper-util's pooled `Client`: for every HTTP/1 request it spawns a task that waits for the
//! connection to become idle again before returning it to the pool, and checks connections out
//! through a keyed pool behind its own locks and hashing — a second task, its wake-ups and its
//! allocations on every request. Here a connection goes back to the idle list when its response body
//! ends (the body wrapper does it), with no task of its own.
//!
//! Rules:
//! - **LIFO**: the most recently used idle connection goes first, so a burst's extra connections
//!   age out while a steady load keeps reusing the warm ones.
//! - **Only ready connections are reused.** A connection whose request body is still being sent (the
//!   upstream answered early) stays in the list until it is ready or closed; checkout never waits for
//!   one — it opens a new connection instead.
//! - **A request never sent is never lost**: when a pooled connection turns out to be closed before
//!   the request was written (the upstream's keep-alive ran out), hyper hands the request back and
//!   it goes to the next connection — safe for every method, since the upstream never saw it.
//! - **Bounded**: at most `max_idle` idle connections per upstream (the oldest is dropped first), and
//!   none idle longer than `idle_timeout` is reused (swept lazily at each checkout and checkin of
//!   that upstream). `max_idle` 0 is a fresh connection per request (canaries).
//! - Errors are typed for the breaker: connect refused/failed → `Connect`, connect timeout →
//!   `Timeout(Connect)`, anything after the connection was made → `Upstream` (all local-origin).

use crate::error::{ProxyError, TimeoutKind};
use crate::proxy::forward::error_chain;
use crate::Body;
use bytes::Bytes;
use http::uri::Authority;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Pooled connections tried per request before a new one is opened (each failed one was closed
/// under us without the request being sent).
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
    /// Each connection's read buffer cap (`upstream_buffer_bytes`); `None`: hyper's adaptive one.
    max_buf: Option<usize>,
}

/// One upstream's idle connections, oldest first.
#[derive(Default)]
struct Host {
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    tx: SendRequest<Body>,
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

    /// Sends `req` (origin-form URI, `Host` set) to `auth` and returns the answer, whose body gives
    /// the connection back to the pool when it ends.
    pub async fn send(
        &self,
        auth: &Authority,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<PooledBody>, ProxyError> {
        let host = self.host(auth);
        for _ in 0..MAX_STALE_TRIES {
            let Some(mut tx) = self.checkout(&host) else {
                break;
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(host, tx, resp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_error(auth, e.error())),
                },
            }
        }
        let mut tx = self.connect(auth).await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok(self.wrap(host, tx, resp)),
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

    fn checkout(&self, host: &Host) -> Option<SendRequest<Body>> {
        let mut idle = lock(&host.idle);
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        // Newest first; closed or expired ones are dropped (older ones behind them are swept at
        // checkin).
        while let Some(c) = idle.back() {
            if c.tx.is_closed() || now.duration_since(c.since) >= self.inner.idle_timeout {
                idle.pop_back();
                continue;
            }
            if c.tx.is_ready() {
                return idle.pop_back().map(|c| c.tx);
            }
            break;
        }
        // The newest is busy finishing its request body: any other ready one will do.
        let i = idle.iter().rposition(|c| c.tx.is_ready())?;
        idle.remove(i).map(|c| c.tx)
    }

    fn checkin(&self, host: &Host, tx: SendRequest<Body>) {
        if self.inner.max_idle == 0 || tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = lock(&host.idle);
        while let Some(c) = idle.front() {
            let stale = c.tx.is_closed() || now.duration_since(c.since) >= self.inner.idle_timeout;
            if !stale && idle.len() < self.inner.max_idle {
                break;
            }
            idle.pop_front();
        }
        idle.push_back(Idle { tx, since: now });
    }

    async fn connect(&self, auth: &Authority) -> Result<SendRequest<Body>, ProxyError> {
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
        let mut builder = http1::Builder::new();
        if let Some(n) = self.inner.max_buf {
            builder.max_buf_size(n);
        }
        let (tx, conn) =
            builder
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| ProxyError::Connect {
                    upstream: auth.to_string(),
                    msg: error_chain(&e),
                })?;
        let upstream = auth.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%upstream, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    fn wrap(
        &self,
        host: Arc<Host>,
        tx: SendRequest<Body>,
        resp: http::Response<Incoming>,
    ) -> http::Response<PooledBody> {
        resp.map(|body| {
            let mut b = PooledBody {
                body,
                ret: Some(Return {
                    pool: self.clone(),
                    host,
                    tx,
                }),
            };
            if b.body.is_end_stream() {
                b.give_back();
            }
            b
        })
    }
}

fn upstream_error(auth: &Authority, e: &hyper::Error) -> ProxyError {
    ProxyError::Upstream {
        upstream: auth.to_string(),
        msg: error_chain(e),
    }
}

struct Return {
    pool: Pool,
    host: Arc<Host>,
    tx: SendRequest<Body>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An upstream answer's body; its connection goes back to the pool when the body has ended cleanly.
/// Dropped early or failed, the connection is dropped with it (hyper closes it: the rest of the
/// answer was never read).
pub struct PooledBody {
    body: Incoming,
    ret: Option<Return>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(r) = self.ret.take() {
            r.pool.checkin(&r.host, r.tx);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.ret = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
        let Err(e) = pool.send(&auth, get(&auth)).await else {
            panic!("connected to a closed port");
        };
        assert!(matches!(e, ProxyError::Connect { .. }), "{e:?}");
        assert!(e.is_local_origin());
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
