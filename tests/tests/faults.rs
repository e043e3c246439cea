//! HTTP fault injection through a real sidecar: faults added over the admin API (`/faults`),
//! observed by a real HTTP client, and gone by themselves when their TTL passes.

use bulwark_e2e::fixture::Fixture;
use bulwark_e2e::{free_addr, http, wait_for, SidecarProc};
use serde_json::{json, Value};
use std::time::Duration;

fn config(listen: std::net::SocketAddr, upstream: std::net::SocketAddr) -> String {
    format!("[[listener]]\nname = \"api\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n")
}

async fn add(s: &SidecarProc, spec: Value) -> reqwest::Response {
    http()
        .post(s.admin_url("/faults"))
        .json(&spec)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_faults_apply_to_matching_requests_and_expire_by_themselves() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let s = SidecarProc::start(dir.path(), "sc", &config(listen, fx.addr));
    s.wait_ready().await;
    let get = |path: &str| http().get(format!("http://{listen}{path}")).send();

    // Abort by route, with a TTL: other routes are untouched, and the fault ends on its own.
    let r = add(
        &s,
        json!({"id": "abort-ok", "kind": {"type": "abort", "status": 503}, "route": "/ok", "ttl": "2s"}),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = get("/ok?bytes=10").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-bulwark-fault"], "abort-ok");
    assert_eq!(get("/status/200").await.unwrap().status(), 200);
    let listed: Value = http()
        .get(s.admin_url("/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["faults"][0]["id"], "abort-ok");
    assert!(
        listed["faults"][0]["injected"].as_u64().unwrap() >= 1,
        "{listed}"
    );
    wait_for(
        "the abort fault's TTL to pass",
        Duration::from_secs(10),
        || async { (get("/ok?bytes=10").await.ok()?.status() == 200).then_some(()) },
    )
    .await;

    // Bad specs are refused with a reason: no TTL, duplicate id.
    let r = add(
        &s,
        json!({"id": "x", "kind": {"type": "abort", "status": 500}}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("ttl"));
    let spec = json!({"id": "dup", "kind": {"type": "delay", "fixed_ms": 1}, "ttl": "1m", "route": "/nothing"});
    assert_eq!(add(&s, spec.clone()).await.status(), 201);
    assert_eq!(add(&s, spec).await.status(), 409);
    let r = http()
        .delete(s.admin_url("/faults/dup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Wrong payload: same length, different bytes.
    let clean = get("/ok?bytes=4096").await.unwrap().bytes().await.unwrap();
    let r = add(
        &s,
        json!({"id": "corrupt", "kind": {"type": "corrupt", "bytes": 8}, "route": "/ok", "ttl": "1m"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let bad = get("/ok?bytes=4096").await.unwrap().bytes().await.unwrap();
    assert_eq!(bad.len(), clean.len());
    assert_ne!(bad, clean);
    let r = http()
        .delete(s.admin_url("/faults/corrupt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Truncated transfer: the client sees the body cut short. The head (which keeps announcing
    // the full length) goes out with the first 1000 bytes, then the connection closes: the answer
    // arrives, and reading its body fails.
    let r = add(
        &s,
        json!({"id": "cut", "kind": {"type": "truncate", "after_bytes": 1000}, "route": "/ok", "ttl": "1m"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = get("/ok?bytes=100000")
        .await
        .expect("the head of a truncated answer arrives before the cut");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-bulwark-fault"], "cut");
    assert_eq!(r.content_length(), Some(100_000));
    let body = r.bytes().await;
    assert!(
        body.is_err(),
        "a truncated body must not read as complete: {} bytes",
        body.map_or(0, |b| b.len())
    );
    let r = http()
        .delete(s.admin_url("/faults/cut"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Reset: the connection is dropped without an answer.
    let r = add(
        &s,
        json!({"id": "rst", "kind": {"type": "reset"}, "header": {"name": "x-chaos"}, "ttl": "1m"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = http()
        .get(format!("http://{listen}/ok"))
        .header("x-chaos", "1")
        .send()
        .await;
    assert!(r.is_err(), "expected a dropped connection, got {r:?}");
    assert_eq!(get("/ok").await.unwrap().status(), 200);

    // Clearing removes everything at once.
    let r: Value = http()
        .delete(s.admin_url("/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["removed"], 1);
    let r = http()
        .get(format!("http://{listen}/ok"))
        .header("x-chaos", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = s.metrics().await;
    assert!(m.contains("bulwark_faults_injected_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_from_the_config_apply_at_start_and_expire_and_bad_ones_are_rejected() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let fault = "[[fault]]\nid = \"boot-abort\"\nkind = { type = \"abort\", status = 503 }\n\
                 route = \"/ok\"\nttl = \"2s\"\n";
    let s = SidecarProc::start(
        dir.path(),
        "sc",
        &format!("{}\n{fault}", config(listen, fx.addr)),
    );
    s.wait_ready().await;
    let r = http()
        .get(format!("http://{listen}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-bulwark-fault"], "boot-abort");
    wait_for(
        "the config fault to expire",
        Duration::from_secs(10),
        || async {
            let r = http()
                .get(format!("http://{listen}/ok"))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;

    // A fault without a TTL is a configuration error (exit 64), named precisely.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}\n[[fault]]\nid = \"forever\"\nkind = {{ type = \"abort\", status = 503 }}\n",
            config(free_addr(), fx.addr)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bulwark_e2e::sidecar_bin())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fault \"forever\": ttl is required"), "{err}");
}
