//! Membership changes a canary rollout relies on, through real `storage` processes: a transient
//! member (joins, gets no allocations, leaves cleanly on SIGTERM), `peers rm` (a member removed for
//! good, its pins re-allocated), and the build identity every node reports.

use bulwark_e2e::{http, storage_bin, wait_for, Cluster, NodeProc};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `sha256sum` of the storage binary these tests run.
fn binary_sha256() -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(storage_bin())
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

fn add_no_pin(node: &NodeProc, dir: &std::path::Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    let out = node.cli(&["add", "-q", "--no-pin", p.to_str().unwrap()]);
    assert!(out.status.success(), "add failed: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Pins `cid` through `node` with `min..max` replication; returns the allocations.
async fn pin(node: &NodeProc, cid: &str, min: i32, max: i32) -> Vec<String> {
    let r = http()
        .post(node.cluster_url(&format!(
            "/pins/{cid}?replication-min={min}&replication-max={max}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    strings(&v["allocations"])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn allocations(node: &NodeProc, cid: &str) -> Vec<String> {
    let r = http()
        .get(node.cluster_url(&format!("/allocations/{cid}")))
        .send()
        .await
        .unwrap();
    strings(&r.json::<Value>().await.unwrap()["allocations"])
}

/// Peer ID → status word of `cid`, as `node` sees it.
async fn statuses(node: &NodeProc, cid: &str) -> Option<Vec<(String, String)>> {
    let r = http()
        .get(node.cluster_url(&format!("/pins/{cid}")))
        .send()
        .await
        .ok()?;
    let g: Value = r.json().await.ok()?;
    Some(
        g["peer_map"]
            .as_object()?
            .iter()
            .map(|(k, v)| (k.clone(), v["status"].as_str().unwrap_or("").to_string()))
            .collect(),
    )
}

/// Waits until every peer in `holders` reports `cid` pinned (as `node` sees it).
async fn wait_pinned_on(node: &NodeProc, cid: &str, holders: &[String]) {
    wait_for(
        &format!("{cid} pinned on {holders:?}"),
        Duration::from_secs(30),
        || async {
            let st = statuses(node, cid).await?;
            holders
                .iter()
                .all(|h| st.iter().any(|(id, s)| id == h && s == "pinned"))
                .then_some(())
        },
    )
    .await;
}

async fn peer_ids(node: &NodeProc) -> BTreeSet<String> {
    node.peers()
        .await
        .iter()
        .filter_map(|p| p["id"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_member_joins_gets_no_allocations_and_leaves_cleanly_on_sigterm() {
    let c = Cluster::start(3, &[]).await;
    let perm: Vec<String> = c.nodes.iter().map(NodeProc::peer_id).collect();
    let boot = c.nodes[0].peer.to_string();
    let mut t = NodeProc::init(
        c.dir.path(),
        "canary",
        &c.key,
        &["--bootstrap".into(), boot],
    );
    t.start_with(&["--transient"]);
    t.wait_ready().await;
    let tid = t.peer_id();
    c.wait_members(4).await;

    // `peers ls` on a permanent node shows it up and transient; the JSON form carries digests.
    let out = c.nodes[1].cli(&["peers", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with(&tid))
        .map(String::from)
        .expect("transient peer listed");
    assert!(line.ends_with("| up | transient"), "{line}");
    assert_eq!(stdout(&out).matches("transient").count(), 1);
    let out = c.nodes[1].cli(&["peers", "ls", "--format", "json"]);
    let peers: Value = serde_json::from_slice(&out.stdout).expect("json");
    let digest = binary_sha256();
    for p in peers.as_array().unwrap() {
        assert_eq!(p["transient"], p["id"] == tid.as_str(), "{p}");
        assert_eq!(p["binary_digest"], digest.as_str(), "{p}");
    }

    // It serves what it is asked: an add through it, pinned everywhere (-1) except on itself.
    let everywhere = add_no_pin(&t, c.dir.path(), "a.txt", b"transient add\n");
    let r = http()
        .post(t.cluster_url(&format!("/pins/{everywhere}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_pinned_on(&c.nodes[0], &everywhere, &perm).await;
    let st = statuses(&c.nodes[0], &everywhere).await.unwrap();
    assert!(st.contains(&(tid.clone(), "remote".into())), "{st:?}");
    // A bounded pin asked of the transient node itself: 3 of the 3 permanent peers, never it,
    // even when more are wanted than there are permanent peers.
    let three = add_no_pin(&t, c.dir.path(), "b.txt", b"three copies\n");
    let allocs = pin(&t, &three, 3, 3).await;
    assert_eq!(
        allocs.iter().cloned().collect::<BTreeSet<_>>(),
        perm.iter().cloned().collect()
    );
    let wide = add_no_pin(&c.nodes[0], c.dir.path(), "c.txt", b"up to four\n");
    let allocs = pin(&c.nodes[0], &wide, 1, 4).await;
    assert_eq!(allocs.len(), 3, "{allocs:?}");
    assert!(!allocs.contains(&tid));
    let out = t.cli(&["cat", &three]);
    assert_eq!(out.stdout, b"three copies\n", "{}", stderr(&out));
    let r = http()
        .post(c.nodes[0].cluster_url(&format!(
            "/pins/{three}?replication-min=4&replication-max=4"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500, "min 4 needs 4 permanent peers");
    wait_pinned_on(&c.nodes[0], &three, &perm).await;
    wait_pinned_on(&c.nodes[0], &wide, &allocs).await;
    let before: Vec<Vec<String>> = allocations_of(&c.nodes[0], &[&everywhere, &three, &wide]).await;

    // SIGTERM: a clean goodbye; every peer drops it well before any down timeout would.
    let stopped = Instant::now();
    let st = t.terminate(Duration::from_secs(15)).expect("exited");
    assert!(st.success(), "{st:?}\n{}", t.log_text());
    for n in &c.nodes {
        wait_for(
            &format!("{} to drop the transient peer", n.name),
            Duration::from_secs(5).saturating_sub(stopped.elapsed()),
            || async { (!peer_ids(n).await.contains(&tid)).then_some(()) },
        )
        .await;
    }
    let dropped_after = stopped.elapsed();
    assert!(dropped_after < Duration::from_secs(5), "{dropped_after:?}");
    assert!(
        t.log_text().contains("transient member left the cluster"),
        "{}",
        t.log_text()
    );

    // No comeback through gossip, no re-allocation storm.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &c.nodes {
        let ids = peer_ids(n).await;
        assert_eq!(ids.len(), 3, "{}: {ids:?}", n.name);
        let log = n.log_text();
        assert!(log.contains("peer left the cluster"), "{}", n.name);
        assert!(!log.contains("re-allocated"), "{}: {log}", n.name);
        assert!(
            !log.lines()
                .any(|l| l.contains("peer is down") && l.contains(&tid)),
            "{}: the transient peer was reported down",
            n.name
        );
    }
    let after = allocations_of(&c.nodes[0], &[&everywhere, &three, &wide]).await;
    assert_eq!(before, after);
}

async fn allocations_of(node: &NodeProc, cids: &[&str]) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for c in cids {
        v.push(allocations(node, c).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_rm_removes_a_stopped_member_for_good_and_reallocates_its_pins() {
    let mut c = Cluster::start(4, &[]).await;
    let ids: Vec<String> = c.nodes.iter().map(NodeProc::peer_id).collect();
    let gone = ids[3].clone();
    // Pinned through node 4 itself: the local peer is allocated first, so node 4 holds a replica.
    let cid = add_no_pin(&c.nodes[3], c.dir.path(), "r.txt", b"re-allocate me\n");
    let allocs = pin(&c.nodes[3], &cid, 3, 3).await;
    assert!(allocs.contains(&gone), "{allocs:?}");
    wait_pinned_on(&c.nodes[0], &cid, &allocs).await;

    c.nodes[3].kill9();
    // Unknown peer: 404 with a message, over the API and the CLI; this node itself: 400.
    let r = http()
        .delete(c.nodes[0].cluster_url("/peers/12D3KooWNotAMember"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 404);
    assert!(
        v["message"].as_str().unwrap().contains("not a member"),
        "{v}"
    );
    let out = c.nodes[0].cli(&["peers", "rm", "12D3KooWNotAMember"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(HTTP 404)"), "{}", stderr(&out));
    let r = http()
        .delete(c.nodes[0].cluster_url(&format!("/peers/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let out = c.nodes[0].cli(&["peers", "rm", &gone]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("removed {gone}"));
    for n in &c.nodes[..3] {
        wait_for(
            &format!("{} to forget the removed peer", n.name),
            Duration::from_secs(5),
            || async {
                let listed = stdout(&n.cli(&["peers", "ls"]));
                (!listed.contains(&gone) && listed.lines().count() == 3).then_some(())
            },
        )
        .await;
    }
    // Its pin is re-allocated to the three remaining peers and pinned there.
    wait_for(
        "the pin to be re-allocated",
        Duration::from_secs(10),
        || async {
            let mut ok = true;
            for n in &c.nodes[..3] {
                let a = allocations(n, &cid).await;
                ok &= a.len() == 3 && !a.contains(&gone);
            }
            ok.then_some(())
        },
    )
    .await;
    wait_pinned_on(&c.nodes[0], &cid, &ids[..3]).await;
    let r = http()
        .delete(c.nodes[1].cluster_url(&format!("/peers/{gone}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "already removed");

    // For good: the same identity started again is refused by every member.
    c.nodes[3].start();
    c.nodes[3].wait_ready().await;
    let n4 = &c.nodes[3];
    wait_for(
        "the removed node to be told",
        Duration::from_secs(10),
        || async {
            let peers = n4.peers().await;
            peers
                .iter()
                .filter(|p| p["id"] != gone.as_str())
                .any(|p| p["error"].as_str().unwrap_or("").contains("removed"))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in &c.nodes[..3] {
        assert!(
            !peer_ids(n).await.contains(&gone),
            "{} re-admitted it",
            n.name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn version_and_id_report_the_running_binary_digest() {
    let c = Cluster::start(1, &[]).await;
    let n = &c.nodes[0];
    let digest = binary_sha256();
    assert_eq!(digest.len(), 64);
    let v: Value = http()
        .post(n.rpc_url("version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["BinaryDigest"], digest.as_str(), "{v}");
    assert_eq!(v["Version"], "0.42.0", "Kubo's field keeps its meaning");
    assert!(v["BuildVersion"].as_str().is_some_and(|s| !s.is_empty()));
    let id: Value = http()
        .post(n.rpc_url("id"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(id["BinaryDigest"], digest.as_str());
    let cv: Value = http()
        .get(n.cluster_url("/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cv["binary_digest"], digest.as_str());

    let out = n.cli(&["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&digest), "{}", stdout(&out));
    let out = n.cli(&["version", "--format", "json"]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["BinaryDigest"], digest.as_str());
    let out = n.cli(&["id"]);
    assert!(stdout(&out).contains(&digest));
    // `--local` needs no node.
    let out = bulwark_e2e::run(
        &storage_bin(),
        &[
            "version".into(),
            "--local".into(),
            "--format".into(),
            "json".into(),
        ],
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["BinaryDigest"], digest.as_str());
}
