//! Graceful degradation and planned outages through real nodes and sidecars: reads fail over to a
//! peer sidecar, degraded answers say so, writes are refused clearly, and a planned outage of one
//! node is invisible to readers.

use bulwark_e2e::{http, start_mesh_degrading, test_bytes, wait_for, MeshHost};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn add(h: &MeshHost, data: &[u8]) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(data.to_vec()).file_name("d.bin");
    http()
        .post(h.rpc_url("add"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
}

/// One read through `h`'s sidecar: (status, degraded header, body ok).
async fn read(h: &MeshHost, cid: &str, data: &[u8]) -> (u16, Option<String>, bool) {
    let r = http()
        .post(h.rpc_url("cat"))
        .query(&[("arg", cid)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let deg = r
        .headers()
        .get("x-bulwark-degraded")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.bytes().await.unwrap();
    (status, deg, body == data)
}

async fn outages(h: &MeshHost) -> Vec<Value> {
    http()
        .get(h.sidecar.admin_url("/outages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn planned_outage_is_invisible_to_readers_and_reads_fail_over_from_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = start_mesh_degrading(dir.path(), 3, "").await;
    let data = test_bytes(100_000, 11);
    let r = add(&hosts[0], &data).await;
    assert_eq!(r.status(), 200);
    let cid = serde_json::from_str::<Value>(r.text().await.unwrap().lines().next().unwrap())
        .unwrap()["Hash"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("pinned everywhere", Duration::from_secs(20), || {
        let req = http()
            .get(hosts[1].cluster_url(&format!("/pins/{cid}")))
            .send();
        async move {
            let g: Value = req.await.ok()?.json().await.ok()?;
            let m = g["peer_map"].as_object()?;
            (m.len() == 3 && m.values().all(|p| p["status"] == "pinned")).then_some(())
        }
    })
    .await;
    assert_eq!(read(&hosts[0], &cid, &data).await, (200, None, true));

    // Bad input: a clear 400, nothing scheduled.
    let r = http()
        .post(hosts[0].sidecar.admin_url("/outages"))
        .json(&json!({"duration": "2s", "every": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(outages(&hosts[0]).await.is_empty());

    // Plan an outage of host 1: 1 s of drain, then 3 s down.
    let r = http()
        .post(hosts[0].sidecar.admin_url("/outages"))
        .json(&json!({"drain": "1s", "duration": "3s", "reason": "kernel upgrade"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let o: Value = r.json().await.unwrap();
    assert_eq!(o["phase"], "draining");
    // Announced: the peers list it too.
    wait_for("outage announced", Duration::from_secs(5), || async {
        outages(&hosts[1])
            .await
            .iter()
            .any(|x| x["id"] == o["id"] && x["scope"] == "peer")
            .then_some(())
    })
    .await;
    let r = http()
        .get(hosts[0].sidecar.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "balancers are told to move away");

    // Read through host 1 for the whole window: no client-visible error at all.
    let start = Instant::now();
    let (mut reads, mut degraded, mut refused_write, mut peer_saw_it) = (0, 0, false, false);
    while start.elapsed() < Duration::from_millis(5500) {
        let (status, deg, ok) = read(&hosts[0], &cid, &data).await;
        assert_eq!(
            (status, ok),
            (200, true),
            "a read failed during the planned outage"
        );
        reads += 1;
        if let Some(d) = deg {
            // From the verified CID cache (this content was read through host 1 before), or
            // from a peer sidecar.
            assert!(
                d == "cache; reason=planned-outage; verified=sha2-256"
                    || d.starts_with("failover; reason=planned-outage; via="),
                "{d}"
            );
            degraded += 1;
            if !refused_write {
                // Down: a write is refused clearly, never acknowledged on the node's behalf.
                let r = add(&hosts[0], b"written during the outage").await;
                assert_eq!(r.status(), 503);
                assert_eq!(r.headers()["x-bulwark-error"], "planned_outage");
                assert!(r.headers().contains_key("retry-after"));
                refused_write = true;
            }
            if !peer_saw_it {
                // Peers route around the node: their view marks it, with the reason.
                let g: Value = http()
                    .get(hosts[1].cluster_url(&format!("/pins/{cid}")))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let e = &g["peer_map"][hosts[0].node.peer_id()];
                if e["status"] == "cluster_error" {
                    assert!(
                        e["error"].as_str().unwrap().contains("planned_outage"),
                        "{e}"
                    );
                    peer_saw_it = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reads > 10 && degraded > 0,
        "{reads} reads, {degraded} degraded"
    );
    assert!(refused_write);
    assert!(peer_saw_it, "host 2 never routed around host 1");
    // Back by itself.
    wait_for("back after the window", Duration::from_secs(5), || async {
        outages(&hosts[0]).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(read(&hosts[0], &cid, &data).await, (200, None, true));
    let r = http()
        .get(hosts[0].sidecar.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A scheduled outage can be listed and cancelled (peers forget it too).
    let r = http()
        .post(hosts[0].sidecar.admin_url("/outages"))
        .json(&json!({"start_in": "1h", "duration": "10m", "every": "1d"}))
        .send()
        .await
        .unwrap();
    let o: Value = r.json().await.unwrap();
    assert_eq!(o["phase"], "scheduled");
    wait_for(
        "scheduled outage announced",
        Duration::from_secs(5),
        || async { (outages(&hosts[2]).await.len() == 1).then_some(()) },
    )
    .await;
    let id = o["id"].as_str().unwrap();
    let r = http()
        .delete(hosts[0].sidecar.admin_url(&format!("/outages/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_for("cancellation announced", Duration::from_secs(5), || async {
        outages(&hosts[2]).await.is_empty().then_some(())
    })
    .await;

    // Brownout (switched on by hand here; by load otherwise): cluster-wide status becomes local
    // status, said in a header, and the node's background recovery yields to client I/O.
    let brownout = |mode: &'static str| {
        http()
            .put(hosts[0].sidecar.admin_url("/brownout"))
            .body(mode)
            .send()
    };
    assert_eq!(brownout("sometimes").await.unwrap().status(), 400);
    assert_eq!(brownout("on").await.unwrap().status(), 200);
    let pin_status = |h: &MeshHost| http().get(h.cluster_url(&format!("/pins/{cid}"))).send();
    let r = pin_status(&hosts[0]).await.unwrap();
    assert_eq!(
        r.headers()["x-bulwark-degraded"],
        "brownout; dropped=local-status-only"
    );
    let g: Value = r.json().await.unwrap();
    assert_eq!(g["peer_map"].as_object().unwrap().len(), 1);
    let status_url = format!("http://{}/block/v1/status", hosts[0].rpc);
    wait_for(
        "recovery yields to client I/O",
        Duration::from_secs(10),
        || {
            let req = http().get(&status_url).send();
            async move {
                let s: Value = req.await.ok()?.json().await.ok()?;
                (s["brownout"]["active"] == true
                    && s["brownout"]["recovery_rounds_yielded"].as_u64()? >= 1)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(brownout("off").await.unwrap().status(), 200);
    let r = pin_status(&hosts[0]).await.unwrap();
    assert!(!r.headers().contains_key("x-bulwark-degraded"));
    let g: Value = r.json().await.unwrap();
    assert_eq!(g["peer_map"].as_object().unwrap().len(), 3);

    // Unplanned: host 1's node dies. Reads through its sidecar keep succeeding, marked degraded:
    // content read before comes from the verified cache, other content from a peer sidecar.
    let data2 = test_bytes(2_000_000, 12);
    let r = add(&hosts[1], &data2).await;
    assert_eq!(r.status(), 200);
    let cid2 = serde_json::from_str::<Value>(r.text().await.unwrap().lines().last().unwrap())
        .unwrap()["Hash"]
        .as_str()
        .unwrap()
        .to_string();
    hosts[0].node.kill9();
    for _ in 0..3 {
        let (status, deg, ok) = read(&hosts[0], &cid, &data).await;
        assert_eq!((status, ok), (200, true));
        assert_eq!(
            deg.as_deref(),
            Some("cache; reason=node-unavailable; verified=sha2-256")
        );
        let (status, deg, ok) = read(&hosts[0], &cid2, &data2).await;
        assert_eq!(
            (status, ok),
            (200, true),
            "a 2 MB file (not cacheable) fails over"
        );
        let d = deg.expect("a failed-over answer says so");
        assert!(
            d.starts_with("failover; reason=node-unavailable; via="),
            "{d}"
        );
    }
    let m = hosts[0].sidecar.metrics().await;
    for kind in ["failover", "cache", "brownout", "planned_outage_refused"] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("bulwark_degraded_answers_total")
                    && l.contains(&format!("kind=\"{kind}\""))),
            "no {kind} answers counted"
        );
    }
}
