//! Tests that drive the whole layer: matchers, rolls, each fault kind on a real service.

use super::*;
use crate::classify::{ClientId, TrafficClass};
use crate::error::{DropConnection, ProxyError};
use crate::policy::breaker::UpstreamName;
use crate::{BoxError, Request, Response};
use bytes::Bytes;
use http::HeaderValue;
use http_body::Frame;
use http_body_util::BodyExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn service<F, Fut>(f: F) -> tower::util::ServiceFn<F>
where
    F: FnMut(Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ProxyError>>,
{
    tower::service_fn(f)
}

fn ok_upstream() -> impl tower::Service<
    Request,
    Response = Response,
    Error = ProxyError,
    Future = impl Future<Output = Result<Response, ProxyError>> + Send + 'static,
> + Clone
       + Send
       + 'static {
    service(|_req| async { Ok(http::Response::new(crate::full("ok"))) })
}

/// An upstream answering `body` in frames of `frame` bytes.
fn body_upstream(
    body: &'static [u8],
    frame: usize,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = ProxyError,
    Future = impl Future<Output = Result<Response, ProxyError>> + Send + 'static,
> + Clone
       + Send
       + 'static {
    service(move |_req| async move {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = body
            .chunks(frame)
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        let b = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed();
        Ok(http::Response::new(b))
    })
}

fn spec(json: serde_json::Value) -> FaultSpec {
    serde_json::from_value(json).expect("spec")
}

fn add(reg: &FaultRegistry, json: serde_json::Value) {
    reg.add(spec(json)).expect("add");
}

fn req(method: &str, path: &str) -> Request {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(crate::empty())
        .expect("req")
}

async fn send<S>(svc: &mut FaultService<S>, r: Request) -> Result<Response, ProxyError>
where
    FaultService<S>: Service<Request, Response = Response, Error = ProxyError>,
{
    svc.ready().await?.call(r).await
}

fn fault_of(r: &Response) -> Option<&str> {
    r.headers().get(H_FAULT).and_then(|v| v.to_str().ok())
}

async fn collect(r: Response) -> Result<Bytes, BoxError> {
    r.into_body().collect().await.map(|c| c.to_bytes())
}

#[tokio::test]
async fn no_faults_pass_through() {
    let reg = FaultRegistry::default();
    let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
    let r = send(&mut svc, req("GET", "/x")).await.expect("ok");
    assert_eq!(r.status(), 200);
    assert!(fault_of(&r).is_none());
    assert_eq!(&collect(r).await.expect("body")[..], b"ok");
    assert!(reg.is_empty());
}

#[tokio::test]
async fn abort_by_route_and_method() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503},
            "ttl": "1m", "route": "/api/v0/pin", "method": "post"}),
    );
    let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
    let r = send(&mut svc, req("POST", "/api/v0/pin/add"))
        .await
        .expect("ok");
    assert_eq!(r.status(), 503);
    assert_eq!(fault_of(&r), Some("a"));
    assert_eq!(&collect(r).await.expect("body")[..], b"injected fault a\n");
    let r = send(&mut svc, req("GET", "/api/v0/pin/add"))
        .await
        .expect("ok");
    assert_eq!(r.status(), 200);
    let r = send(&mut svc, req("POST", "/api/v0/cat"))
        .await
        .expect("ok");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn abort_by_header() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "h", "kind": {"type": "abort", "status": 500},
            "ttl": 60000, "header": {"name": "x-tenant", "value": "a"}}),
    );
    add(
        &reg,
        serde_json::json!({"id": "p", "kind": {"type": "abort", "status": 418},
            "ttl": 60000, "header": {"name": "x-chaos"}}),
    );
    let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
    let mut r = req("GET", "/");
    r.headers_mut()
        .insert("x-tenant", HeaderValue::from_static("a"));
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 500);
    let mut r = req("GET", "/");
    r.headers_mut()
        .insert("x-tenant", HeaderValue::from_static("b"));
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 200);
    let mut r = req("GET", "/");
    r.headers_mut()
        .insert("x-chaos", HeaderValue::from_static("whatever"));
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 418);
}

#[tokio::test]
async fn abort_by_class_peer_upstream_listener() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "c", "kind": {"type": "abort", "status": 502},
            "ttl": "1m", "class": "replication"}),
    );
    add(
        &reg,
        serde_json::json!({"id": "p", "kind": {"type": "abort", "status": 503},
            "ttl": "1m", "peer": "127.0.0.12"}),
    );
    add(
        &reg,
        serde_json::json!({"id": "u", "kind": {"type": "abort", "status": 504},
            "ttl": "1m", "upstream": "127.0.0.13:5001"}),
    );
    add(
        &reg,
        serde_json::json!({"id": "l", "kind": {"type": "abort", "status": 429},
            "ttl": "1m", "listener": "gateway"}),
    );
    let mut svc = FaultLayer::new(reg.clone(), 1)
        .for_listener("api")
        .layer(ok_upstream());
    let mut r = req("GET", "/");
    r.extensions_mut().insert(TrafficClass::Replication);
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 502);
    let mut r = req("GET", "/");
    r.extensions_mut().insert(TrafficClass::Control);
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 200);
    // Unclassified requests are client traffic.
    assert_eq!(
        send(&mut svc, req("GET", "/")).await.expect("ok").status(),
        200
    );

    let mut r = req("GET", "/");
    r.extensions_mut()
        .insert("127.0.0.12:40000".parse::<SocketAddr>().expect("addr"));
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 503);
    let mut r = req("GET", "/");
    r.extensions_mut()
        .insert(ClientId::Addr("127.0.0.12".parse().expect("ip")));
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 503);
    let mut r = req("GET", "/");
    r.extensions_mut()
        .insert(ClientId::Addr("127.0.0.11".parse().expect("ip")));
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 200);

    let mut r = req("GET", "/");
    r.extensions_mut()
        .insert(UpstreamName(Arc::from("127.0.0.13:5001")));
    assert_eq!(send(&mut svc, r).await.expect("ok").status(), 504);

    let mut gw = FaultLayer::new(reg.clone(), 1)
        .for_listener("gateway")
        .layer(ok_upstream());
    assert_eq!(
        send(&mut gw, req("GET", "/")).await.expect("ok").status(),
        429
    );
}

#[tokio::test]
async fn percent_zero_never_hundred_always() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "never", "kind": {"type": "abort", "status": 500},
            "ttl": "1m", "percent": 0}),
    );
    add(
        &reg,
        serde_json::json!({"id": "always", "kind": {"type": "abort", "status": 503},
            "ttl": "1m", "percent": 100}),
    );
    let mut svc = FaultLayer::new(reg.clone(), 7).layer(ok_upstream());
    for _ in 0..200 {
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert_eq!(fault_of(&r), Some("always"));
    }
    let l = reg.list();
    assert_eq!((l[0].matched, l[0].injected), (200, 0));
    assert_eq!((l[1].matched, l[1].injected), (200, 200));
}

async fn run_half(seed: u64) -> Vec<bool> {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "half", "kind": {"type": "abort", "status": 503},
            "ttl": "1m", "percent": 50}),
    );
    let mut svc = FaultLayer::new(reg, seed).layer(ok_upstream());
    let mut v = Vec::new();
    for _ in 0..1000 {
        v.push(send(&mut svc, req("GET", "/")).await.expect("ok").status() == 503);
    }
    v
}

#[tokio::test]
async fn percent_half_is_roughly_half_and_reproducible() {
    let a = run_half(42).await;
    let hits = a.iter().filter(|x| **x).count();
    assert!((400..=600).contains(&hits), "{hits} of 1000");
    assert_eq!(a, run_half(42).await, "same seed, same sequence");
    assert_ne!(a, run_half(43).await, "another seed, another sequence");
}

#[tokio::test]
async fn failed_roll_lets_the_next_fault_try() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "first", "kind": {"type": "abort", "status": 500},
            "ttl": "1m", "percent": 0}),
    );
    add(
        &reg,
        serde_json::json!({"id": "second", "kind": {"type": "abort", "status": 503}, "ttl": "1m"}),
    );
    let mut svc = FaultLayer::new(reg, 1).layer(ok_upstream());
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    assert_eq!(fault_of(&r), Some("second"));
}

#[tokio::test(start_paused = true)]
async fn fixed_delay_waits_then_forwards() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "d", "kind": {"type": "delay", "fixed_ms": 250}, "ttl": "1m"}),
    );
    let mut svc = FaultLayer::new(reg, 1).layer(ok_upstream());
    let t = Instant::now();
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    assert_eq!(t.elapsed(), Duration::from_millis(250));
    assert_eq!(r.status(), 200);
    assert_eq!(fault_of(&r), Some("d"));
    assert_eq!(&collect(r).await.expect("body")[..], b"ok");
}

#[tokio::test(start_paused = true)]
async fn uniform_delay_stays_in_bounds() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "d", "ttl": "1h",
            "kind": {"type": "delay", "dist": "uniform", "min_ms": 100, "max_ms": 300}}),
    );
    let mut svc = FaultLayer::new(reg, 3).layer(ok_upstream());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let t = Instant::now();
        send(&mut svc, req("GET", "/")).await.expect("ok");
        let ms = t.elapsed().as_millis() as u64;
        assert!((100..=300).contains(&ms), "{ms}");
        seen.insert(ms);
    }
    assert!(seen.len() > 10, "draws vary: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_stops_the_fault_by_itself() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503}, "ttl": "30s"}),
    );
    let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
    assert_eq!(
        send(&mut svc, req("GET", "/")).await.expect("ok").status(),
        503
    );
    assert_eq!(reg.list()[0].remaining_ms, 30_000);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(reg.list()[0].remaining_ms, 1_000);
    assert_eq!(
        send(&mut svc, req("GET", "/")).await.expect("ok").status(),
        503
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(reg.list().is_empty(), "expired faults are not listed");
    assert_eq!(
        send(&mut svc, req("GET", "/")).await.expect("ok").status(),
        200
    );
    assert!(reg.is_empty(), "the request pruned it");
    // The id is free again.
    add(
        &reg,
        serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503}, "ttl": "30s"}),
    );
}

#[tokio::test]
async fn reset_is_marked_for_the_edge() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "r", "kind": {"type": "reset"}, "ttl": "1m"}),
    );
    let mut svc = FaultLayer::new(reg, 1).layer(ok_upstream());
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    assert!(DropConnection::of(&r).is_some());
    assert_eq!(
        r.status(),
        502,
        "the placeholder, if the edge does not map it"
    );
    let e = DropConnection::of(&r).expect("reset");
    assert_eq!(&*e.reason, "r");
    let r = http::Response::new(crate::empty());
    assert!(DropConnection::of(&r).is_none());
}

#[tokio::test(start_paused = true)]
async fn blackhole_holds_until_the_ttl_ends() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "b", "kind": {"type": "blackhole"}, "ttl": "90s"}),
    );
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let up = service(move |_req| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok(http::Response::new(crate::full("ok"))) }
    });
    let mut svc = FaultLayer::new(reg, 1).layer(up);
    let t = Instant::now();
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    assert_eq!(t.elapsed(), Duration::from_secs(90));
    assert_eq!(r.status(), 504);
    assert_eq!(fault_of(&r), Some("b"));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "never forwarded");
}

#[tokio::test(start_paused = true)]
async fn blackhole_released_when_deleted() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "b", "kind": {"type": "blackhole"}, "ttl": "1h"}),
    );
    let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
    svc.ready().await.expect("ready");
    // The concrete future, spawned as is (an async block naming the service trips rustc's
    // higher-ranked inference).
    let held = tokio::spawn(svc.call(req("GET", "/")));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!held.is_finished());
    let t = Instant::now();
    handle_delete(&reg, "b").expect("delete");
    let r = held.await.expect("join").expect("ok");
    assert_eq!(r.status(), 504);
    assert_eq!(t.elapsed(), Duration::ZERO);
}

const PAYLOAD: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[tokio::test]
async fn corrupt_changes_bytes_not_length() {
    for (frame, json_bytes, want) in [(7, 5, 5), (100, 3, 3), (7, 1000, PAYLOAD.len())] {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "c", "kind": {"type": "corrupt", "bytes": json_bytes}, "ttl": "1m"}),
        );
        let mut svc = FaultLayer::new(reg, 9).layer(body_upstream(PAYLOAD, frame));
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert_eq!(fault_of(&r), Some("c"));
        let got = collect(r).await.expect("body");
        assert_eq!(got.len(), PAYLOAD.len());
        let diff = got.iter().zip(PAYLOAD).filter(|(a, b)| a != b).count();
        assert_eq!(diff, want, "frame {frame}, bytes {json_bytes}");
    }
}

#[tokio::test]
async fn corrupt_with_known_length_spreads_over_the_body() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "c", "kind": {"type": "corrupt", "bytes": 4}, "ttl": "1m"}),
    );
    let up = service(|_req| async { Ok(http::Response::new(crate::full(PAYLOAD))) });
    let mut svc = FaultLayer::new(reg, 11).layer(up);
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    let got = collect(r).await.expect("body");
    assert_eq!(got.len(), PAYLOAD.len());
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != PAYLOAD[i]).collect();
    assert_eq!(diff.len(), 4);
    assert_ne!(
        diff,
        vec![0, 1, 2, 3],
        "positions drawn over the whole body"
    );
}

#[tokio::test]
async fn truncate_errors_after_n_bytes() {
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "t", "kind": {"type": "truncate", "after_bytes": 20}, "ttl": "1m"}),
    );
    let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(PAYLOAD, 7));
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    assert_eq!(fault_of(&r), Some("t"));
    let mut body = r.into_body();
    let mut got = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().expect("data")),
            Some(Err(e)) => break e,
            None => panic!("body ended cleanly after {} bytes", got.len()),
        }
    };
    assert_eq!(&got[..], &PAYLOAD[..20]);
    assert!(
        err.to_string().contains("truncated after 20 bytes"),
        "{err}"
    );
    assert!(body.frame().await.is_none());

    // The cut falls inside the last frame: the error still comes.
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "t", "kind": {"type": "truncate", "after_bytes": 10}, "ttl": "1m"}),
    );
    let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(PAYLOAD, 1000));
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    let mut body = r.into_body();
    let f = body.frame().await.expect("frame").expect("data");
    assert_eq!(&f.into_data().expect("data")[..], &PAYLOAD[..10]);
    assert!(!http_body::Body::is_end_stream(&body));
    assert!(body.frame().await.expect("error").is_err());
    assert!(body.frame().await.is_none());

    // A body no longer than the limit passes whole.
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "t", "kind": {"type": "truncate", "after_bytes": 1000}, "ttl": "1m"}),
    );
    let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(PAYLOAD, 7));
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    assert_eq!(&collect(r).await.expect("whole")[..], PAYLOAD);
}

#[tokio::test(start_paused = true)]
async fn bandwidth_paces_the_body() {
    static BIG: [u8; 10_000] = [7u8; 10_000];
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "bw", "kind": {"type": "bandwidth", "bytes_per_sec": 1000}, "ttl": "1h"}),
    );
    let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(&BIG, 4096));
    let r = send(&mut svc, req("GET", "/")).await.expect("ok");
    let t = Instant::now();
    let got = collect(r).await.expect("body");
    assert_eq!(&got[..], &BIG[..]);
    // 10 000 bytes at 1 000 B/s.
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(9_900) && e <= Duration::from_millis(10_100),
        "{e:?}"
    );
}

#[tokio::test]
async fn counters_and_metrics_count() {
    let metrics = FaultMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let reg = FaultRegistry::new(metrics);
    add(
        &reg,
        serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503},
            "ttl": "1m", "route": "/x"}),
    );
    let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
    for p in ["/x", "/x/1", "/y", "/x"] {
        send(&mut svc, req("GET", p)).await.expect("ok");
    }
    let l = reg.list();
    assert_eq!((l[0].matched, l[0].injected), (3, 3));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("faults_injected_total{kind=\"abort\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("faults_matched_total{kind=\"abort\"} 3"),
        "{text}"
    );
    assert!(text.contains("faults_active 1"), "{text}");
    assert_eq!(reg.clear(), 1);
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.ends_with("# EOF\n"));
    assert!(reg.is_empty());
}

/// The contract with the edge: a hyper service that returns an error for a response
/// marked [`DropConnection`] makes hyper close the connection without writing an answer.
#[tokio::test]
async fn reset_mapped_by_the_edge_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reg = FaultRegistry::default();
    add(
        &reg,
        serde_json::json!({"id": "r", "kind": {"type": "reset"}, "ttl": "1m", "route": "/reset"}),
    );
    let stack = FaultLayer::new(reg, 1).layer(ok_upstream());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                return;
            };
            let stack = stack.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut stack = stack.clone();
                        let req: Request = req.map(|b| b.map_err(crate::box_err).boxed());
                        async move {
                            let resp = match stack.ready().await {
                                Ok(s) => s.call(req).await,
                                Err(e) => Err(e),
                            };
                            let resp = resp.unwrap_or_else(|e| e.into_response());
                            match DropConnection::of(&resp) {
                                Some(reset) => Err(reset),
                                None => Ok(resp),
                            }
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let ask = |path: &'static str| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(ask("/ok").await.starts_with("HTTP/1.1 200"));
    assert_eq!(ask("/reset").await, "", "no answer, connection closed");
}
