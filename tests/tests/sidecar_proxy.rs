//! The sidecar end to end: a real `sidecar` process in front of a fixture upstream or real storage
//! nodes, driven over HTTP/1.1, h2c, raw TCP and its admin API.

use bulwark_e2e::fixture::Fixture;
use bulwark_e2e::{free_addr, http, wait_for, Cluster, SidecarProc};
use std::io::{Read, Write};
use std::time::Duration;

fn inbound(listen: std::net::SocketAddr, upstream: std::net::SocketAddr, policy: &str) -> String {
    format!(
        "[[listener]]\nname = \"api\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n\n\
         [[class_rule]]\nname = \"control\"\npath_prefix = \"/control\"\nclass = \"control\"\n\n{policy}"
    )
}

/// An HTTP/2 client without TLS (prior knowledge), as h2c peers talk to the sidecar.
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_http1_and_h2c_streaming_both_ways() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, ""));
    s.wait_ready().await;

    let r = http()
        .get(format!("http://{listen}/ok?bytes=300000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-bulwark-error").is_none());
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);

    let h2 = h2c();
    let r = h2
        .get(format!("http://{listen}/ok?bytes=70000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 70_000);

    let upload = vec![7u8; 4 << 20];
    let r = http()
        .post(format!("http://{listen}/upload"))
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fixture");

    let m = s.metrics().await;
    assert!(m.contains("bulwark_requests_total{"), "{m}");
    assert!(m.contains("listener=\"api\""), "{m}");
    for path in ["/live", "/ready", "/config", "/circuits"] {
        assert_eq!(
            http().get(s.admin_url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
}

/// `upstream_buffer_bytes` caps each upstream connection's read buffer: bodies far bigger than it
/// still stream through intact, and a response head bigger than it is a clear 502 — which the
/// same request without the cap is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_capped_upstream_buffer_streams_big_bodies_and_refuses_oversized_heads() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (capped, plain) = (free_addr(), free_addr());
    let body = format!(
        "[[listener]]\nname = \"capped\"\nlisten = \"{capped}\"\nupstream = \"{up}\"\n\
         upstream_buffer_bytes = 8192\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"{plain}\"\nupstream = \"{up}\"\n",
        up = fx.addr
    );
    let s = SidecarProc::start(dir.path(), "sc", &body);
    s.wait_ready().await;

    let r = http()
        .get(format!("http://{capped}/ok?bytes=1000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), 1_000_000);
    assert!(got.iter().all(|&b| b == b'o'));

    let big_head = |l: std::net::SocketAddr| format!("http://{l}/ok?header=12000");
    let r = http().get(big_head(capped)).send().await.unwrap();
    assert_eq!(r.status(), 502, "a 12 KB response head does not fit 8 KiB");
    assert!(r.headers().get("x-bulwark-error").is_some());
    let r = http().get(big_head(plain)).send().await.unwrap();
    assert_eq!(r.status(), 200, "without the cap the same answer passes");
    assert_eq!(r.headers()["x-fill"].len(), 12_000);
}

/// `worker_threads = 1` runs the sidecar on tokio's current-thread scheduler (what the benchmark
/// and a node's sidecar on a small host use): the same streaming, h2c and deadline behaviour.
#[tokio::test(flavor = "multi_thread")]
async fn one_thread_runtime_proxies_streams_and_keeps_deadlines() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let policy = "[policy.retry]\nper_try_timeout = \"300ms\"\ndeadline = \"600ms\"\n";
    let cfg = format!("worker_threads = 1\n{}", inbound(listen, fx.addr, policy));
    let s = SidecarProc::start(dir.path(), "sc", &cfg);
    s.wait_ready().await;
    for i in 0..20 {
        let r = http()
            .get(format!("http://{listen}/ok?bytes={}", 1000 + i * 5000))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 1000 + i * 5000);
    }
    let h2 = h2c();
    let r = h2
        .get(format!("http://{listen}/ok?bytes=70000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.bytes().await.unwrap().len(), 70_000);
    let r = http()
        .post(format!("http://{listen}/upload"))
        .body(vec![1u8; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "fixture");
    let r = http()
        .get(format!("http://{listen}/slow?ms=5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-bulwark-error"], "timeout");
    // A reload that tries to change the thread count is refused; the sidecar keeps serving.
    let r = http().post(s.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "reload of the unchanged file");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("worker_threads = 1", "worker_threads = 2"),
    )
    .unwrap();
    let r = http().post(s.admin_url("/reload")).send().await.unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    assert!(r.text().await.unwrap().contains("worker_threads"));
    let r = http()
        .get(format!("http://{listen}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_hits_the_deadline() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let policy =
        "[policy.retry]\nper_try_timeout = \"200ms\"\ndeadline = \"500ms\"\nmax_retries = 1\n";
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, policy));
    s.wait_ready().await;
    let r = http()
        .get(format!("http://{listen}/slow?ms=5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-bulwark-error"], "timeout");
    // Retried once (GET is idempotent), never past the deadline.
    assert!(fx.count() <= 2, "{} attempts", fx.count());
    let r = http()
        .get(format!("http://{listen}/slow?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_rate_gets_429_while_others_are_served() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let policy = "[policy.throttle]\nper_client = { per_second = 2, burst = 5 }\n";
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, policy));
    s.wait_ready().await;
    let url = format!("http://{listen}/ok");
    let mut limited = 0;
    for _ in 0..20 {
        let r = http().get(&url).bearer_auth("greedy").send().await.unwrap();
        if r.status() == 429 {
            limited += 1;
            let ra: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(ra >= 1, "Retry-After {ra}");
            assert_eq!(r.headers()["x-bulwark-error"], "throttled");
        }
    }
    assert!(
        limited >= 10,
        "only {limited} of 20 over-rate requests limited"
    );
    let r = http().get(&url).bearer_auth("polite").send().await.unwrap();
    assert_eq!(r.status(), 200, "another client was throttled too");
    assert!(s.metrics().await.contains("throttled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_beyond_the_concurrency_limit_is_shed_while_control_traffic_passes() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let policy = "[policy.shed]\nmax_in_flight = 10\nclient_share = 0.5\n";
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, policy));
    s.wait_ready().await;
    // 12 slow streaming client requests: 5 fit under the client share, the rest are shed at once.
    let slow: Vec<_> = (0..12)
        .map(|_| {
            let url = format!("http://{listen}/hold?ms=1500");
            tokio::spawn(async move { http().get(url).send().await.unwrap() })
        })
        .collect();
    let mut shed = 0;
    let mut held = Vec::new();
    for h in slow {
        let r = h.await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["x-bulwark-error"], "shed");
            shed += 1;
        } else {
            assert_eq!(r.status(), 200);
            held.push(r);
        }
    }
    assert_eq!(held.len(), 5, "client share of 10 at 0.5");
    assert_eq!(shed, 7);
    // Bodies still streaming: their slots are held, yet control traffic passes.
    let r = http()
        .get(format!("http://{listen}/control/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "control traffic was shed");
    let r = http()
        .get(format!("http://{listen}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "client traffic admitted while the share is in use"
    );
    for r in held {
        assert_eq!(r.bytes().await.unwrap().len(), 60);
    }
    // Slots are released when bodies end.
    let r = http()
        .get(format!("http://{listen}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_the_sidecar_keeps_serving() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let out_listen = free_addr();
    let body = format!(
        "{}\n[[listener]]\nname = \"out\"\nlisten = \"{out_listen}\"\ndirection = \"outbound\"\nallowed_upstreams = [\"{}\"]\n",
        inbound(listen, fx.addr, ""),
        fx.addr
    );
    let s = SidecarProc::start(dir.path(), "sc", &body);
    s.wait_ready().await;

    // Malformed HTTP: a 400, then the connection closes.
    let mut c = std::net::TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    let mut buf = String::new();
    // Read to the end: an error here (the 5 s read timeout) means the connection stayed open.
    c.read_to_string(&mut buf).unwrap_or_else(|e| {
        panic!("the connection did not close after the 400: {e}; read {buf:?}")
    });
    assert!(buf.starts_with("HTTP/1.1 400"), "{buf:?}");

    // Oversized headers: refused (431), nothing forwarded. The listener answers 431 and then
    // lingers, reading and discarding what the client still sends (sidecar/src/listen/h1.rs,
    // `answer_error`), so the client gets the answer rather than a reset.
    let before = fx.count();
    let r = http()
        .get(format!("http://{listen}/ok"))
        .header("x-big", "a".repeat(200_000))
        .send()
        .await
        .expect("an oversized head is answered (431), not dropped");
    assert_eq!(r.status(), 431);
    assert_eq!(fx.count(), before);

    // Outbound to a peer that is not allowed.
    let r = http()
        .get(format!("http://{out_listen}/x"))
        .header("host", "10.1.2.3:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-bulwark-error"], "no_route");

    // Unknown admin path.
    let r = http().get(s.admin_url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Still serving.
    let r = http()
        .get(format!("http://{listen}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Invalid configs: exit 64 with the field at fault.
    let cases = [
        ("nonsense = [", "expected"),
        ("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n", "upstream"),
        ("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = \"x:1\"\n[policy.shed]\nclient_share = 7.0\n", "client_share"),
        ("worker_threads = 1000\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = \"x:1\"\n", "worker_threads"),
        ("[admin]\nlisten = \"0.0.0.0:9901\"\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = \"x:1\"\n", "token"),
        ("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = \"x:1\"\nupstream_buffer_bytes = 100\n", "upstream_buffer_bytes"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = std::process::Command::new(bulwark_e2e::sidecar_bin())
            .arg("check")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "case {i}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "case {i}: {err}");
        let out = std::process::Command::new(bulwark_e2e::sidecar_bin())
            .arg("run")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "run case {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_validates_then_swaps_and_sigterm_drains_in_flight_requests() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let mut s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, ""));
    s.wait_ready().await;
    // A long streaming response in flight across the reload.
    let inflight = tokio::spawn({
        let url = format!("http://{listen}/hold?ms=1500");
        async move {
            http()
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = reload_with_global_limit_of_one(&s).await;
    let codes: Vec<u16> = futures_join(listen, 3).await;
    assert!(
        codes.contains(&429),
        "reloaded limit not applied: {codes:?}"
    );
    // An invalid file is rejected and the running config kept.
    std::fs::write(&s.config, "garbage = [").unwrap();
    let r = http().post(s.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let cfg: serde_json::Value = http()
        .get(s.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["policy"]["throttle"]["global"]["per_second"], 1);
    assert_eq!(
        inflight.await.unwrap(),
        60,
        "the in-flight stream was cut by the reload"
    );

    // SIGTERM while a request is in flight: it completes, then the process exits 0.
    // Back to the config without the limit, so the request below is not throttled.
    std::fs::write(&s.config, text).unwrap();
    let r = http().post(s.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let inflight = tokio::spawn({
        let url = format!("http://{listen}/hold?ms=1000");
        async move { http().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = s.pid().unwrap();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let st = inflight.await.unwrap();
    assert_eq!(st.unwrap(), 200);
    let code = wait_for("sidecar to exit", Duration::from_secs(15), || {
        let st = s.child().unwrap().try_wait().unwrap();
        async move { st }
    })
    .await;
    assert_eq!(code.code(), Some(0));
}

async fn futures_join(listen: std::net::SocketAddr, n: usize) -> Vec<u16> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            http()
                .get(format!("http://{listen}/ok"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_opens_its_circuit_calls_fail_fast_and_it_closes_on_return() {
    let mut c = Cluster::start(1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let policy = "[policy.breaker]\nconsecutive_failures = 3\nopen_base = \"1s\"\nopen_max = \"2s\"\n[policy.retry]\nmax_retries = 0\n";
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, c.nodes[0].rpc, policy));
    s.wait_ready().await;
    let url = format!("http://{listen}/api/v0/version");
    assert_eq!(http().post(&url).send().await.unwrap().status(), 200);

    c.nodes[0].kill9();
    // Connection refused a few times, then the circuit answers by itself.
    let r = wait_for("the circuit to open", Duration::from_secs(10), || {
        let req = http().post(&url).send();
        async move {
            let r = req.await.ok()?;
            (r.headers().get("x-bulwark-circuit").is_some()).then_some(r)
        }
    })
    .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers()["x-bulwark-circuit"]
        .to_str()
        .unwrap()
        .starts_with("open"));
    let circuits: serde_json::Value = http()
        .get(s.admin_url("/circuits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(circuits.to_string().contains("open"), "{circuits}");

    c.nodes[0].start();
    c.nodes[0].wait_ready().await;
    wait_for("the circuit to close", Duration::from_secs(10), || {
        let req = http().post(&url).send();
        async move { (req.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    let circuits: serde_json::Value = http()
        .get(s.admin_url("/circuits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(circuits.to_string().contains("closed"), "{circuits}");
}

/// L4 listeners share the per-upstream circuit breaker: connects to a dead upstream trip it, and
/// while it is open new client connections are closed at once, even if the upstream came back.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_listeners_open_a_circuit_on_connect_failures() {
    let dead = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let body = format!(
        "[[listener]]\nname = \"nbd\"\nprotocol = \"tcp\"\nlisten = \"{listen}\"\nupstream = \"{dead}\"\n\n\
         [policy.breaker]\nconsecutive_failures = 2\nopen_base = \"30s\"\nopen_max = \"30s\"\n"
    );
    let s = SidecarProc::start(dir.path(), "sc", &body);
    s.wait_ready().await;
    let closed = |addr| {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = Vec::new();
        // The sidecar closes a client it cannot serve: EOF (or a reset), never data.
        let n = c.read_to_end(&mut b).unwrap_or(0);
        n == 0
    };
    assert!(closed(listen));
    assert!(closed(listen));
    let circuits: serde_json::Value =
        wait_for("the circuit to open", Duration::from_secs(5), || async {
            let v: serde_json::Value = http()
                .get(s.admin_url("/circuits"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v[0]["state"] == "open").then_some(v)
        })
        .await;
    assert_eq!(circuits[0]["upstream"], dead.to_string(), "{circuits}");
    // The upstream comes back, but the circuit is open: turned away without a connect.
    let up = tokio::net::TcpListener::bind(dead).await.unwrap();
    assert!(closed(listen));
    let m = s.metrics().await;
    assert!(
        m.contains("bulwark_proxy_errors_total{listener=\"nbd\",kind=\"circuit_open\"} 1"),
        "{m}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(200), up.accept()).await;
    assert!(
        accepted.is_err(),
        "an open circuit must not connect upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_listeners_proxy_bytes_and_count_them() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let body = format!("[[listener]]\nname = \"nbd\"\nprotocol = \"tcp\"\nlisten = \"{listen}\"\nupstream = \"{echo_addr}\"\n");
    let s = SidecarProc::start(dir.path(), "sc", &body);
    s.wait_ready().await;
    let mut c = std::net::TcpStream::connect(listen).unwrap();
    c.write_all(b"ping over tcp").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"ping over tcp");
    let m = wait_for("byte counters", Duration::from_secs(5), || async {
        let m = s.metrics().await;
        m.contains("bulwark_tcp_bytes_total{listener=\"nbd\",direction=\"upstream\"} 13")
            .then_some(m)
    })
    .await;
    assert!(m.contains("direction=\"downstream\"} 13"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_traced_to_an_otlp_collector_and_the_w3c_trace_is_continued() {
    let fx = Fixture::start().await;
    let sink = bulwark_e2e::fixture::OtlpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let body = format!(
        "[telemetry]\notlp_endpoint = \"http://{}\"\nservice_name = \"sidecar-under-test\"\n\n{}",
        sink.addr,
        inbound(listen, fx.addr, "")
    );
    let mut s = SidecarProc::start(dir.path(), "sc", &body);
    s.wait_ready().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http()
        .get(format!("http://{listen}/ok"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Spans are batched: SIGTERM flushes them on the way out.
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(s.pid().unwrap().to_string())
        .status()
        .unwrap();
    wait_for("the sidecar to exit", Duration::from_secs(15), || {
        let st = s.child().unwrap().try_wait().unwrap();
        async move { st }
    })
    .await;
    let got = wait_for("an OTLP export", Duration::from_secs(10), || {
        let got = sink.received();
        async move { (!got.is_empty()).then_some(got) }
    })
    .await;
    assert!(
        got.iter()
            .all(|(p, _)| p == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"),
        "{got:?}"
    );
    let all: Vec<u8> = got.iter().flat_map(|(_, b)| b.to_vec()).collect();
    let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"sidecar-under-test"), "service name missing");
    assert!(contains(b"proxy"), "span name missing");
    // The span joined the caller's trace (trace id bytes are in the export).
    let tid: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        contains(&tid),
        "the caller's trace id is not in the exported span"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config_file() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, ""));
    s.wait_ready().await;
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{text}\n[policy.shed]\nmax_in_flight = 77\n"),
    )
    .unwrap();
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(s.pid().unwrap().to_string())
        .status()
        .unwrap();
    let url = s.admin_url("/config");
    wait_for("the reloaded config", Duration::from_secs(10), || {
        let req = http().get(&url).send();
        async move {
            let cfg: serde_json::Value = req.await.ok()?.json().await.ok()?;
            (cfg["policy"]["shed"]["max_in_flight"] == 77).then_some(())
        }
    })
    .await;
    assert_eq!(
        http()
            .get(format!("http://{listen}/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(s
        .metrics()
        .await
        .contains("bulwark_config_reloads_total{result=\"ok\"} 1"));
}

/// Appends a global limit of 1 request/s (burst 1) to the sidecar's config and reloads it;
/// returns the config as it was.
async fn reload_with_global_limit_of_one(s: &SidecarProc) -> String {
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{text}\n[policy.throttle]\nglobal = {{ per_second = 1, burst = 1 }}\n"),
    )
    .unwrap();
    let r = http().post(s.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    text
}

/// One HTTP/1.1 request on an open connection; the answer's status (its body is read and dropped).
fn status_on(c: &mut std::net::TcpStream, path: &str) -> u16 {
    write!(c, "GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length answer");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_takes_up_a_reload_on_its_next_request() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, ""));
    s.wait_ready().await;
    let mut c = std::net::TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The connection keeps its stack between requests: no limit yet.
    for _ in 0..5 {
        assert_eq!(status_on(&mut c, "/ok"), 200);
    }
    let text = reload_with_global_limit_of_one(&s).await;
    // Same connection: the new limit applies to its very next requests.
    let codes: Vec<u16> = (0..3).map(|_| status_on(&mut c, "/ok")).collect();
    assert!(
        codes.contains(&429),
        "reload not seen on the open connection: {codes:?}"
    );
    // And back: the limit goes away on the same connection too.
    std::fs::write(&s.config, text).unwrap();
    let r = http().post(s.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..5 {
        assert_eq!(status_on(&mut c, "/ok"), 200);
    }
}

// ---- HTTP/1.1 conformance of the listener (RFC 9112), over a raw socket ----------------------

/// A sidecar in front of the fixture upstream, for raw-socket conformance checks.
async fn conformance_sidecar() -> (
    Fixture,
    tempfile::TempDir,
    SidecarProc,
    std::net::SocketAddr,
) {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let s = SidecarProc::start(dir.path(), "sc", &inbound(listen, fx.addr, ""));
    s.wait_ready().await;
    (fx, dir, s, listen)
}

/// Writes `req` as is on a new connection and reads what comes back until the sidecar closes it
/// (or 5 s pass, or the connection is reset: whatever arrived by then is returned).
async fn raw_exchange(listen: std::net::SocketAddr, req: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
    c.write_all(req).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match c.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The answer's status line.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// `req` is refused with 400 by the sidecar itself (no `x-bulwark-error` from an upstream
/// failure, nothing forwarded), and the sidecar keeps serving.
async fn assert_refused_400(fx: &Fixture, listen: std::net::SocketAddr, req: &[u8], what: &str) {
    let before = fx.count();
    let answer = raw_exchange(listen, req).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 "),
        "{what}: want 400, got {:?}\nfull answer: {answer:?}",
        status_line(&answer)
    );
    assert_eq!(fx.count(), before, "{what}: the request was forwarded");
    let r = http()
        .get(format!("http://{listen}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{what}: the sidecar stopped serving");
}

/// RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request that lacks a Host header.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_http11_request_without_host_is_400() {
    let (fx, _dir, _s, listen) = conformance_sidecar().await;
    assert_refused_400(
        &fx,
        listen,
        b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n",
        "no Host",
    )
    .await;
}

/// RFC 9112 §3.2: ... or more than one Host header.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_request_with_two_host_headers_is_400() {
    let (fx, _dir, _s, listen) = conformance_sidecar().await;
    assert_refused_400(
        &fx,
        listen,
        b"GET /ok HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "two Host headers",
    )
    .await;
}

/// An absolute-form target whose authority disagrees with the Host header is refused (the two
/// would route differently behind a proxy); one that agrees is proxied as usual.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_absolute_form_target_must_agree_with_host() {
    let (fx, _dir, _s, listen) = conformance_sidecar().await;
    let before = fx.count();
    let answer = raw_exchange(
        listen,
        b"GET http://a.example:80/ok HTTP/1.1\r\nHost: a.example:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "agreeing absolute-form: want 200, got {:?}\nfull answer: {answer:?}",
        status_line(&answer)
    );
    assert!(answer.ends_with("\r\n\r\noo"), "{answer:?}");
    assert_eq!(fx.count(), before + 1, "proxied once");

    assert_refused_400(
        &fx,
        listen,
        b"GET http://a.example:80/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "absolute-form authority a.example:80 with Host b.example",
    )
    .await;
}

/// A chunked request body that is not valid chunked coding is the client's error: 400, not a
/// 502 blaming the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_malformed_chunked_request_body_is_400() {
    let (_fx, _dir, _s, listen) = conformance_sidecar().await;
    let answer = raw_exchange(
        listen,
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 "),
        "want 400, got {:?}\nfull answer: {answer:?}",
        status_line(&answer)
    );
    let r = http()
        .get(format!("http://{listen}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the sidecar stopped serving");
}
