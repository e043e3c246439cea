//! A small upstream for sidecar tests (test code, not product code): fixed answers, a slow route,
//! chosen statuses, and a request counter.
//!
//! Routes: `/ok` (200, `?bytes=N` body), `/slow?ms=N` (answers after N ms), `/status/CODE`,
//! `/hold?ms=N` (streams the body slowly over N ms), anything else 200 "fixture".

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Fixture {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Resp = hyper::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

fn query(req: &hyper::Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn answer(req: hyper::Request<Incoming>) -> Resp {
    let q = query(&req);
    let ms = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0u64);
    let path = req.uri().path().to_string();
    let full = |status: u16, body: Vec<u8>| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
        r
    };
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return full(200, b"slow".to_vec());
    }
    if path == "/hold" {
        let chunks = 10u64;
        let stream = futures_stream(chunks, Duration::from_millis(ms / chunks));
        return hyper::Response::new(StreamBody::new(stream).boxed());
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return full(
            code.parse().unwrap_or(500),
            format!("status {code}\n").into_bytes(),
        );
    }
    if path == "/ok" {
        let n = q
            .get("bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2usize);
        let mut r = full(200, vec![b'o'; n]);
        // `header=N`: one response header of N bytes (for response-head limits).
        if let Some(h) = q.get("header").and_then(|v| v.parse::<usize>().ok()) {
            let v = hyper::header::HeaderValue::from_str(&"f".repeat(h)).expect("ascii");
            r.headers_mut().insert("x-fill", v);
        }
        return r;
    }
    // Drain the request body so uploads complete.
    let _ = req.into_body().collect().await;
    full(200, b"fixture".to_vec())
}

fn futures_stream(
    chunks: u64,
    gap: Duration,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for _ in 0..chunks {
            tokio::time::sleep(gap).await;
            if tx
                .send(Ok(Frame::data(Bytes::from_static(b"chunk\n"))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ReceiverStream(rx)
}

struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

impl Fixture {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicU64::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A stand-in OTLP/gRPC collector: accepts `TraceService/Export` calls over h2c, answers OK, and
/// keeps the raw request bodies (protobuf; tests look for strings in them).
pub struct OtlpSink {
    pub addr: SocketAddr,
    pub bodies: Arc<std::sync::Mutex<Vec<(String, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpSink {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies: Arc<std::sync::Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let store = bodies.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            store.lock().expect("sink lock").push((path, body));
                            // An empty ExportTraceServiceResponse, gRPC-framed, then grpc-status 0.
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(Frame::trailers({
                                    let mut t = hyper::HeaderMap::new();
                                    t.insert("grpc-status", "0".parse().expect("hv"));
                                    t
                                })),
                            ];
                            let mut r =
                                hyper::Response::new(StreamBody::new(futures_iter(frames)).boxed());
                            r.headers_mut()
                                .insert("content-type", "application/grpc".parse().expect("hv"));
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, bodies, task }
    }

    pub fn received(&self) -> Vec<(String, Bytes)> {
        self.bodies.lock().expect("sink lock").clone()
    }
}

fn futures_iter<T: Send + 'static>(items: Vec<T>) -> ReceiverStream<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(items.len().max(1));
    for i in items {
        let _ = tx.try_send(i);
    }
    ReceiverStream(rx)
}
