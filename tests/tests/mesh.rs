//! The mesh end to end: storage nodes behind sidecars, node-to-node traffic leaving through the
//! local sidecar and entering through the peer's, as `deploy/local/cluster` runs them.

use bulwark_e2e::{http, start_mesh, test_bytes, wait_for};
use serde_json::Value;
use std::time::Duration;

/// Waits until the sidecar at `admin` reports the circuit to `upstream` in `state`.
async fn wait_circuit(admin: &str, upstream: &str, state: &str, limit: Duration) {
    let url = format!("{admin}/circuits");
    let what = format!("circuit to {upstream} to be {state}");
    wait_for(&what, limit, || {
        let f = circuits(url.clone());
        async move {
            f.await
                .iter()
                .any(|c| c["upstream"] == upstream && c["state"] == state)
                .then_some(())
        }
    })
    .await;
}

async fn circuits(url: String) -> Vec<Value> {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_traffic_crosses_the_sidecars_and_a_dead_host_trips_its_peers_circuits() {
    let dir = tempfile::tempdir().unwrap();
    let policy =
        "[policy.breaker]\nconsecutive_failures = 2\nopen_base = \"1s\"\nopen_max = \"2s\"\n";
    let mut hosts = start_mesh(dir.path(), 3, policy).await;

    // Content added on host 1 is read on host 3: the blocks travel sidecar → sidecar.
    let data = test_bytes(300_000, 3);
    let part = reqwest::multipart::Part::bytes(data.clone()).file_name("m.bin");
    let r = http()
        .post(hosts[0].rpc_url("add"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let cid = serde_json::from_str::<Value>(r.text().await.unwrap().lines().next().unwrap())
        .unwrap()["Hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http()
        .post(hosts[2].rpc_url("cat"))
        .query(&[("arg", cid.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), data);
    let m = hosts[0].sidecar.metrics().await;
    assert!(
        m.lines().any(|l| l.contains("listener=\"peer-out\"") && l.starts_with("bulwark_requests_total")),
        "no peer traffic through host 1's outbound listener"
    );

    // The whole host 3 goes away (node and sidecar): host 1's outbound circuit to it opens.
    let dead = hosts[2].peer.to_string();
    hosts[2].node.kill9();
    hosts[2].sidecar.kill9();
    let admin1 = hosts[0].sidecar.admin_url("");
    // host 1's circuit to host 3 to open
    wait_circuit(&admin1, &dead, "open", Duration::from_secs(5)).await;
    // Calls to it now fail fast, saying why, instead of waiting for timeouts.
    let g: Value = http()
        .get(hosts[0].cluster_url(&format!("/pins/{cid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dead_id = hosts[2].node.peer_id();
    assert_eq!(g["peer_map"][&dead_id]["status"], "cluster_error");
    let err = g["peer_map"][&dead_id]["error"].as_str().unwrap();
    assert!(err.contains("circuit") || err.contains("connect"), "{err}");

    // Host 3 returns: the circuit closes (after at most open_max) and it is pinned again.
    hosts[2].sidecar.spawn();
    hosts[2].sidecar.wait_ready().await;
    hosts[2].node.start();
    hosts[2].node.wait_ready().await;
    // host 1's circuit to host 3 to close
    wait_circuit(&admin1, &dead, "closed", Duration::from_secs(15)).await;
    wait_for("host 3 pinned again", Duration::from_secs(15), || {
        let req = http()
            .get(hosts[0].cluster_url(&format!("/pins/{cid}")))
            .send();
        let id = dead_id.clone();
        async move {
            let g: Value = req.await.ok()?.json().await.ok()?;
            (g["peer_map"][&id]["status"] == "pinned").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_node_behind_a_live_sidecar_is_answered_fast_by_that_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let policy =
        "[policy.breaker]\nconsecutive_failures = 2\nopen_base = \"1s\"\nopen_max = \"2s\"\n";
    let mut hosts = start_mesh(dir.path(), 2, policy).await;
    hosts[1].node.kill9();
    // Peer sync traffic alone trips host 2's own circuit to its node.
    let admin2 = hosts[1].sidecar.admin_url("");
    let node_peer = hosts[1].node.peer.to_string();
    // host 2's circuit to its node to open
    wait_circuit(&admin2, &node_peer, "open", Duration::from_secs(5)).await;
    // Host 1's outbound circuit stays closed: the refusals are relayed, not host 2's sidecar failing.
    let c1 = circuits(hosts[0].sidecar.admin_url("/circuits")).await;
    let to2 = c1
        .iter()
        .find(|c| c["upstream"] == hosts[1].peer.to_string().as_str())
        .unwrap();
    assert_eq!(to2["state"], "closed", "{c1:?}");
    // Clients of host 2 get an immediate, explained 503.
    let r = http().post(hosts[1].rpc_url("id")).send().await.unwrap();
    assert!(r.status() == 503 || r.status() == 502, "{}", r.status());
}
