//! Toxics on a loopback echo server, and the HTTP API through the router. Waits are bounded and
//! assert outcomes (and lower bounds of injected delays), never speed.

use super::toxics::Stream;
use super::*;
use axum::body::Body;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(10);

async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    a
}

async fn setup(seed: u64) -> (Arc<Toxiproxy>, SocketAddr) {
    let up = echo().await;
    let tp = Toxiproxy::new(seed);
    let v = tp
        .create(&json!({"name": "p", "listen": "127.0.0.1:0", "upstream": up.to_string()}))
        .await
        .unwrap();
    let addr: SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
    assert_ne!(addr.port(), 0);
    (tp, addr)
}

async fn add(tp: &Arc<Toxiproxy>, body: Value) -> Value {
    tp.add_toxic("p", &body).await.unwrap()
}

/// Sends `msg`, reads until `msg.len()` bytes, EOF or error; returns what came back and the time.
async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    s.write_all(msg).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < msg.len() {
        match timeout(LIMIT, s.read(&mut buf))
            .await
            .expect("bounded read")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (got, t0.elapsed())
}

/// Reads until EOF or error: `Ok(bytes)` on EOF, `Err(kind)` on error.
async fn read_to_end(s: &mut TcpStream) -> Result<Vec<u8>, std::io::ErrorKind> {
    let mut got = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .expect("bounded read")
        .map_err(|e| e.kind())?;
    Ok(got)
}

#[tokio::test]
async fn toxiproxy_passes_data_and_counts_bytes() {
    let (tp, addr) = setup(0).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, _) = roundtrip(&mut s, b"hello").await;
    assert_eq!(got, b"hello");
    let m = tp.metrics_text().await;
    assert!(
        m.contains("toxiproxy_proxy_received_bytes_total{proxy=\"p\",direction=\"upstream\"} 5")
    );
    assert!(m.contains("toxiproxy_proxy_sent_bytes_total{proxy=\"p\",direction=\"downstream\"} 5"));
}

#[tokio::test]
async fn toxiproxy_latency_applies_to_existing_connections_and_is_removed() {
    let (tp, addr) = setup(0).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"a").await.0, b"a");
    add(
        &tp,
        json!({"type": "latency", "attributes": {"latency": 300}}),
    )
    .await;
    let (got, took) = roundtrip(&mut s, b"b").await;
    assert_eq!(got, b"b");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // Upstream latency adds up with downstream latency.
    add(
        &tp,
        json!({"type": "latency", "stream": "upstream", "attributes": {"latency": 200}}),
    )
    .await;
    let mut s2 = TcpStream::connect(addr).await.unwrap();
    let (got, took) = roundtrip(&mut s2, b"c").await;
    assert_eq!(got, b"c");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    tp.remove_toxic("p", "latency_downstream").await.unwrap();
    tp.remove_toxic("p", "latency_upstream").await.unwrap();
    assert!(tp.toxics("p").await.unwrap().as_array().unwrap().is_empty());
    assert_eq!(roundtrip(&mut s2, b"d").await.0, b"d");
}

#[tokio::test]
async fn toxiproxy_disable_closes_listener_and_connections() {
    let (tp, addr) = setup(0).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"x").await.0, b"x");
    tp.update("p", &json!({"enabled": false})).await.unwrap();
    let e = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // The open connection was closed too.
    let mut buf = [0u8; 1];
    let n = timeout(LIMIT, s.read(&mut buf)).await.expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    let v = tp.update("p", &json!({"enabled": true})).await.unwrap();
    assert_eq!(v["listen"], addr.to_string());
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"y").await.0, b"y");
}

#[tokio::test]
async fn toxiproxy_timeout_closes_after_delay_and_zero_blackholes() {
    let (tp, addr) = setup(0).await;
    add(
        &tp,
        json!({"type": "timeout", "attributes": {"timeout": 200}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    s.write_all(b"lost").await.unwrap();
    let r = read_to_end(&mut s).await;
    assert!(matches!(&r, Ok(v) if v.is_empty()) || r.is_err(), "{r:?}");
    assert!(t0.elapsed() >= Duration::from_millis(150));

    tp.update_toxic(
        "p",
        "timeout_downstream",
        &json!({"attributes": {"timeout": 0}}),
    )
    .await
    .unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"lost").await.unwrap();
    let mut buf = [0u8; 8];
    assert!(
        timeout(Duration::from_millis(400), s.read(&mut buf))
            .await
            .is_err(),
        "blackholed: nothing comes back and the connection stays open"
    );
    tp.remove_toxic("p", "timeout_downstream").await.unwrap();
    assert_eq!(roundtrip(&mut s, b"back").await.0, b"back");
}

#[tokio::test]
async fn toxiproxy_reset_peer_sends_rst() {
    let (tp, addr) = setup(0).await;
    add(
        &tp,
        json!({"type": "reset_peer", "attributes": {"timeout": 100}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let r = read_to_end(&mut s).await;
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn toxiproxy_limit_data_truncates_then_closes() {
    let (tp, addr) = setup(0).await;
    add(
        &tp,
        json!({"type": "limit_data", "attributes": {"bytes": 10}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"0123456").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = s.write_all(b"789abcdef").await;
    let got = read_to_end(&mut s).await.unwrap_or_default();
    assert_eq!(got, b"0123456789");
}

#[tokio::test]
async fn toxiproxy_slicer_and_bandwidth_keep_data_intact() {
    let (tp, addr) = setup(0).await;
    add(
        &tp,
        json!({"type": "slicer", "attributes": {"average_size": 7, "size_variation": 3, "delay": 100}}),
    )
    .await;
    add(
        &tp,
        json!({"type": "bandwidth", "attributes": {"rate": 100}}),
    )
    .await;
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, took) = roundtrip(&mut s, &data).await;
    assert_eq!(got, data);
    // 40 KB at 100 KB/s.
    assert!(took >= Duration::from_millis(350), "{took:?}");
}

#[tokio::test]
async fn toxiproxy_slow_close_delays_eof() {
    let (tp, addr) = setup(0).await;
    add(
        &tp,
        json!({"type": "slow_close", "attributes": {"delay": 300}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"z").await.0, b"z");
    let t0 = Instant::now();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, Ok(vec![]));
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn toxiproxy_toxicity_zero_is_inert_and_rolls_are_seeded() {
    let (tp, addr) = setup(7).await;
    add(
        &tp,
        json!({"type": "limit_data", "toxicity": 0.0, "attributes": {"bytes": 0}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"free").await.0, b"free");

    use rand::Rng;
    let rolls = |seed: u64| {
        let sh = ProxyShared::new("p", seed);
        (0..32u64)
            .map(|n| sh.rng(n, Stream::Downstream).random::<f32>() < 0.5)
            .collect::<Vec<_>>()
    };
    assert_eq!(rolls(7), rolls(7));
    assert_ne!(rolls(7), rolls(8));
}

#[tokio::test]
async fn toxiproxy_ttl_removes_the_toxic() {
    let (tp, addr) = setup(0).await;
    let v = add(
        &tp,
        json!({"type": "latency", "ttl_ms": 200, "attributes": {"latency": 1000}}),
    )
    .await;
    assert_eq!(v["ttl_ms"], 200);
    let t0 = Instant::now();
    while !tp.toxics("p").await.unwrap().as_array().unwrap().is_empty() {
        assert!(t0.elapsed() < LIMIT, "ttl never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(150));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, took) = roundtrip(&mut s, b"q").await;
    assert_eq!(got, b"q");
    assert!(took < Duration::from_millis(1000));
}

async fn call(app: &Router, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

use axum::Router;

#[tokio::test]
async fn toxiproxy_api_codes_and_shapes() {
    let up = echo().await;
    let app = api::router(Toxiproxy::new(0));
    let p = json!({"name": "db", "listen": "127.0.0.1:0", "upstream": up.to_string()});
    let (st, v) = call(&app, "POST", "/proxies", Some(p.clone())).await;
    assert_eq!(st, 201);
    assert_eq!(v["enabled"], true);
    assert_eq!(v["toxics"], json!([]));
    let listen = v["listen"].as_str().unwrap().to_string();
    assert!(!listen.ends_with(":0"));
    assert_eq!(
        call(&app, "POST", "/proxies", Some(p.clone())).await,
        (409, json!({"error": "proxy already exists", "status": 409}))
    );
    assert_eq!(
        call(&app, "POST", "/proxies", Some(json!({"upstream": "x:1"}))).await,
        (
            400,
            json!({"error": "missing required field: name", "status": 400})
        )
    );
    assert_eq!(
        call(&app, "POST", "/proxies", Some(json!({"name": "n"})))
            .await
            .0,
        400
    );
    assert_eq!(call(&app, "POST", "/proxies", None).await.0, 400);
    let (st, v) = call(&app, "GET", "/proxies", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["db"]["listen"], listen);
    assert_eq!(call(&app, "GET", "/proxies/nope", None).await.0, 404);

    let (st, t) = call(
        &app,
        "POST",
        "/proxies/db/toxics",
        Some(json!({"type": "latency", "attributes": {"latency": 10}})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(t["name"], "latency_downstream");
    assert_eq!(t["toxicity"], 1.0);
    assert_eq!(
        call(
            &app,
            "POST",
            "/proxies/db/toxics",
            Some(json!({"type": "latency"}))
        )
        .await
        .0,
        409
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/proxies/db/toxics",
            Some(json!({"type": "bogus"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/proxies/nope/toxics",
            Some(json!({"type": "noop"}))
        )
        .await
        .0,
        404
    );
    let (st, t) = call(
        &app,
        "PATCH",
        "/proxies/db/toxics/latency_downstream",
        Some(json!({"attributes": {"jitter": 3}})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(t["attributes"], json!({"latency": 10, "jitter": 3}));
    assert_eq!(
        call(&app, "GET", "/proxies/db/toxics/latency_downstream", None)
            .await
            .1,
        t
    );
    assert_eq!(
        call(&app, "GET", "/proxies/db/toxics", None).await.1,
        json!([t])
    );
    assert_eq!(
        call(&app, "GET", "/proxies/db/toxics/none", None).await.0,
        404
    );

    let (st, v) = call(&app, "POST", "/proxies/db", Some(json!({"enabled": false}))).await;
    assert_eq!(
        (st, &v["enabled"], &v["listen"]),
        (200, &json!(false), &json!(listen))
    );
    assert_eq!(call(&app, "POST", "/reset", None).await.0, 204);
    let (_, v) = call(&app, "GET", "/proxies/db", None).await;
    assert_eq!((&v["enabled"], &v["toxics"]), (&json!(true), &json!([])));

    // populate: idempotent for an unchanged proxy, creates the others.
    let pop = json!([{"name": "db", "listen": listen, "upstream": up.to_string()},
                     {"name": "db2", "listen": "127.0.0.1:0", "upstream": up.to_string()}]);
    let (st, v) = call(&app, "POST", "/populate", Some(pop)).await;
    assert_eq!(st, 201);
    assert_eq!(v["proxies"].as_array().unwrap().len(), 2);
    assert_eq!(v["proxies"][0]["listen"], listen);
    assert_eq!(
        call(&app, "POST", "/populate", Some(json!([{"name": "x"}])))
            .await
            .0,
        400
    );

    let (st, v) = call(&app, "GET", "/version", None).await;
    assert_eq!((st, &v["version"]), (200, &json!(COMPAT_VERSION)));
    assert_eq!(call(&app, "DELETE", "/proxies/db2", None).await.0, 204);
    assert_eq!(call(&app, "DELETE", "/proxies/db2", None).await.0, 404);
    assert_eq!(
        call(
            &app,
            "DELETE",
            "/proxies/db/toxics/latency_downstream",
            None
        )
        .await
        .0,
        404
    );

    let req = http::Request::builder()
        .uri("/proxies")
        .header("user-agent", "Mozilla/5.0 (X11)")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 403);
    let (st, m) = call(&app, "GET", "/metrics", None).await;
    assert_eq!(st, 200);
    assert!(m
        .as_str()
        .unwrap()
        .contains("toxiproxy_proxy_sent_bytes_total{proxy=\"db\",direction=\"upstream\"} 0"));
}

#[tokio::test]
async fn toxiproxy_bind_conflict_is_500() {
    let up = echo().await;
    let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tp = Toxiproxy::new(0);
    let e = tp
        .create(&json!({"name": "a", "listen": busy.local_addr().unwrap().to_string(), "upstream": up.to_string()}))
        .await
        .unwrap_err();
    assert_eq!(e.status, 500);
    assert!(tp.list().await.as_object().unwrap().is_empty());
}

#[test]
fn toxiproxy_config_section() {
    use crate::config::Config;
    let base =
        "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:7000\"\nupstream = \"127.0.0.1:7001\"\n";
    assert_eq!(Config::parse(base, "t").unwrap().toxiproxy.listen, None);
    let c = Config::parse(
        &format!("{base}[toxiproxy]\nlisten = \"127.0.0.1:8474\"\nseed = 9\n"),
        "t",
    )
    .unwrap();
    assert_eq!(
        (c.toxiproxy.listen, c.toxiproxy.seed),
        (Some("127.0.0.1:8474".parse().unwrap()), 9)
    );
    let e = Config::parse(
        &format!("{base}[toxiproxy]\nlisten = \"0.0.0.0:8474\"\n"),
        "t",
    )
    .unwrap_err();
    assert!(e.to_string().contains("not loopback"), "{e}");
    assert!(Config::parse(
        &format!("{base}[toxiproxy]\nlisten = \"0.0.0.0:8474\"\nallow_non_loopback = true\n"),
        "t"
    )
    .is_ok());
    assert!(Config::parse(
        &format!("{base}[toxiproxy]\nlisten = \"127.0.0.1:7000\"\n"),
        "t"
    )
    .is_err());
}
