//! The block service end to end: real nodes (and sidecars), a real NBD client (`qemu-io`/`qemu-img`
//! from qemu-utils), kill -9 during writes, two nodes down, on-disk corruption and scrub, bad input.

use bulwark_e2e::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Runs `qemu-io` against an NBD export; a hang guard kills it after 60 s (not a speed assertion).
async fn qemu_io(nbd: SocketAddr, export: &str, cmds: &[String]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("qemu-io");
    cmd.args(["-f", "raw", &format!("nbd://{nbd}/{export}")]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("qemu-io hung for 60 s")
        .expect("run qemu-io (qemu-utils installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io exits 0 even when a command failed; failures are printed.
    let failed = !out.status.success()
        || text.contains("failed")
        || text.contains("error")
        || text.contains("Pattern verification");
    (!failed, text)
}

fn cli_at(api: SocketAddr, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--api".to_string(), api.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run(&storage_bin(), &all);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `PUT /block/v1/images/{spec}/data?offset=` through the node's HTTP API.
async fn put_data(api: SocketAddr, spec: &str, offset: u64, data: Vec<u8>) -> reqwest::Response {
    http()
        .put(format!(
            "http://{api}/block/v1/images/{spec}/data?offset={offset}"
        ))
        .body(data)
        .send()
        .await
        .unwrap()
}

/// `GET /block/v1/images/{spec}/data` with `Range: bytes={range}`.
async fn get_range(api: SocketAddr, spec: &str, range: &str) -> reqwest::Response {
    http()
        .get(format!("http://{api}/block/v1/images/{spec}/data"))
        .header("Range", format!("bytes={range}"))
        .send()
        .await
        .unwrap()
}

async fn health(api: SocketAddr) -> Option<Value> {
    http()
        .get(format!("http://{api}/block/v1/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Waits until health is `status` with (at least) the named checks.
async fn wait_health_with(
    api: SocketAddr,
    status: &str,
    checks: &[&str],
    limit: Duration,
) -> Value {
    let what = format!("{api} to report {status} {checks:?}");
    wait_for(&what, limit, || async move {
        let h = health(api).await?;
        let c = codes(&h);
        (h["status"] == status && checks.iter().all(|k| c.iter().any(|x| x == k))).then_some(h)
    })
    .await
}

async fn wait_health(api: SocketAddr, status: &str, limit: Duration) -> Value {
    wait_health_with(api, status, &[], limit).await
}

fn codes(h: &Value) -> Vec<String> {
    h["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["code"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes through one node's sidecar, reads through another's; kill -9 a node during writes and
/// check every acknowledged write; the node's return brings the pool back to clean; with two of
/// three nodes down I/O fails with a clear error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nbd_through_sidecars_survives_node_loss_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = start_mesh(dir.path(), 3, "").await;
    let api = hosts[0].rpc;
    let (code, out) = cli_at(
        api,
        &["pool", "create", "rbd", "--size", "3", "--min-size", "2"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_at(api, &["image", "create", "rbd/vm", "--size", "64M"]);
    assert_eq!(code, 0, "{out}");

    // Patterns, one spanning two 4 MiB objects, written via node 1, read back via node 2.
    let (ok, out) = qemu_io(
        hosts[0].nbd,
        "rbd/vm",
        &[
            "write -P 0x11 0 1M".into(),
            "write -P 0x22 4190208 8k".into(),
            "write -z 2M 64k".into(),
            "flush".into(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = qemu_io(
        hosts[1].nbd,
        "rbd/vm",
        &[
            "read -P 0x11 0 1M".into(),
            "read -P 0x22 4190208 8k".into(),
            "read -P 0 2M 64k".into(),
        ],
    )
    .await;
    assert!(ok, "read back through another node: {out}");

    // kill -9 node 3 while one qemu-io process is writing: every acknowledged write must be
    // readable afterwards. qemu-io runs its commands in order and prints one line per completed
    // write; a write that failed prints an error instead.
    let writes: Vec<String> = (0..48u64)
        .map(|i| {
            format!(
                "write -P {:#x} {} 256k",
                0x40 + i,
                8 * 1024 * 1024 + i * 262144
            )
        })
        .collect();
    let mut cmd = tokio::process::Command::new("qemu-io");
    cmd.args(["-f", "raw", &format!("nbd://{}/rbd/vm", hosts[0].nbd)]);
    for w in &writes {
        cmd.args(["-c", w]);
    }
    cmd.kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("qemu-io");
    // Let some writes complete first (a hang guard bounds this; it asserts nothing about speed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    hosts[2].node.kill9();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("qemu-io hung")
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let acked: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let off: u64 = l
                .strip_prefix("wrote 262144/262144 bytes at offset ")?
                .trim()
                .parse()
                .ok()?;
            Some((0x40 + (off - 8 * 1024 * 1024) / 262144, off))
        })
        .collect();
    // One of three replicas down is within size - min_size: writes go on.
    assert_eq!(
        acked.len(),
        48,
        "writes must continue with one node down: {text}"
    );
    let reads: Vec<String> = acked
        .iter()
        .map(|(p, o)| format!("read -P {p:#x} {o} 256k"))
        .collect();
    let (ok, out) = qemu_io(hosts[1].nbd, "rbd/vm", &reads).await;
    assert!(ok, "acknowledged writes lost: {out}");
    wait_health_with(
        api,
        "HEALTH_WARN",
        &["OSD_DOWN", "PG_DEGRADED"],
        Duration::from_secs(20),
    )
    .await;

    // The node returns: recovery brings its replicas up to date and the cluster back to clean.
    hosts[2].node.start();
    hosts[2].node.wait_ready().await;
    let h = wait_health(api, "HEALTH_OK", Duration::from_secs(60)).await;
    assert!(codes(&h).is_empty(), "{h}");
    // Every node computes the cluster's state from its own scan (once a second): the returned
    // node reports it clean too, through the CLI.
    let rpc3 = hosts[2].rpc;
    wait_for(
        "node 3 to report no degraded objects",
        Duration::from_secs(30),
        || async move {
            let (code, out) = cli_at(rpc3, &["status", "--format", "json"]);
            let st: Value = serde_json::from_str(&out).ok()?;
            (code == 0 && st["data"]["degraded_objects"] == 0).then_some(())
        },
    )
    .await;
    // The recovered node serves the latest data (its own replica or a peer's).
    let (ok, out) = qemu_io(hosts[2].nbd, "rbd/vm", &reads).await;
    assert!(ok, "after recovery: {out}");

    // Two of three down: below min_size. Writes fail with an error, not a hang.
    hosts[1].node.kill9();
    hosts[2].node.kill9();
    wait_health_with(
        api,
        "HEALTH_ERR",
        &["PG_AVAILABILITY"],
        Duration::from_secs(20),
    )
    .await;
    let (ok, out) = qemu_io(hosts[0].nbd, "rbd/vm", &["write -P 0x99 0 4k".into()]).await;
    assert!(!ok, "a write below min_size must fail: {out}");
    assert!(
        out.contains("Input/output error"),
        "NBD error should be EIO: {out}"
    );
    let resp = put_data(hosts[0].rpc, "rbd/vm", 0, vec![1u8; 4096]).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("min_size"),
        "{body}"
    );
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn object_file(node: &Path, pool_id: u64, image_id: &str, objno: u64) -> std::path::PathBuf {
    node.join("blocks")
        .join("objects")
        .join(pool_id.to_string())
        .join(format!("{image_id}.{objno:016x}"))
}

/// A replica corrupted on disk is never served: reads come from the others, scrub finds and
/// repairs it, and a read that meets it repairs it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_replica_is_never_served_and_scrub_repairs_it() {
    let c = Cluster::start(3, &[]).await;
    let api = c.nodes[0].rpc;
    assert_eq!(cli_at(api, &["pool", "create", "rbd"]).0, 0);
    assert_eq!(
        cli_at(api, &["image", "create", "rbd/img", "--size", "8M"]).0,
        0
    );
    let data = test_bytes(256 * 1024, 7);
    let put = put_data(api, "rbd/img", 0, data.clone()).await;
    assert_eq!(put.status(), 204, "{}", put.text().await.unwrap());
    let info = get_json(&format!("http://{api}/block/v1/images/rbd/img")).await;
    let file = object_file(
        &c.nodes[1].data,
        info["pool_id"].as_u64().unwrap(),
        info["id"].as_str().unwrap(),
        0,
    );
    let corrupt = |f: &Path| {
        let mut b = std::fs::read(f).expect("object file on disk");
        for x in &mut b[1000..1100] {
            *x ^= 0xff;
        }
        std::fs::write(f, b).unwrap();
    };
    corrupt(&file);
    let (code, out) = cli_at(api, &["scrub", "rbd"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired"), "{out}");
    let rep: Value = http()
        .post(format!("http://{api}/block/v1/scrub?pool=rbd"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rep["inconsistent"], 0, "scrub repaired it: {rep}");
    assert_eq!(&std::fs::read(&file).unwrap()[..data.len()], &data[..]);

    // Corrupt again and read through the node that holds the bad copy.
    corrupt(&file);
    let got = get_range(c.nodes[1].rpc, "rbd/img", &format!("0-{}", data.len() - 1)).await;
    assert_eq!(got.status(), 206);
    assert_eq!(&got.bytes().await.unwrap()[..], &data[..]);
    wait_for("read repair", Duration::from_secs(10), || {
        let f = file.clone();
        let d = data.clone();
        async move { (std::fs::read(&f).ok()?[..d.len()] == d[..]).then_some(()) }
    })
    .await;
    let h = wait_health(api, "HEALTH_OK", Duration::from_secs(20)).await;
    assert!(codes(&h).is_empty(), "{h}");
}

/// Out-of-range I/O, unknown exports and pools, shrinking without the flag, NBD protocol garbage:
/// clear errors, and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_bad_input_gets_clear_errors() {
    let c = Cluster::start(1, &[]).await;
    let n = &c.nodes[0];
    let api = n.rpc;
    let (code, out) = cli_at(
        api,
        &["pool", "create", "p", "--size", "1", "--min-size", "1"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_at(
        api,
        &["pool", "create", "p", "--size", "1", "--min-size", "1"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already exists"), "{out}");
    let (code, out) = cli_at(
        api,
        &["pool", "create", "q", "--size", "2", "--min-size", "3"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("min_size"), "{out}");
    let (code, out) = cli_at(api, &["image", "create", "p/x", "--size", "12Q"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = cli_at(api, &["image", "create", "nosuch/x", "--size", "1M"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pool 'nosuch' does not exist"), "{out}");
    let (code, out) = cli_at(api, &["image", "create", "p/x", "--size", "1M"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_at(api, &["image", "resize", "p/x", "--size", "512K"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("allow-shrink"), "{out}");
    let (code, out) = cli_at(api, &["pool", "rm", "p"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("image"), "{out}");

    // HTTP: out of range.
    let r = get_range(api, "p/x", "2000000-2000010").await;
    assert_eq!(r.status(), 416);
    let r = put_data(api, "p/x", 1048000, vec![0u8; 4096]).await;
    assert_eq!(r.status(), 416);
    let r = http()
        .get(format!("http://{api}/block/v1/images/p/nosuch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // NBD: out-of-range read, unknown export, protocol garbage.
    let (ok, out) = qemu_io(n.nbd, "p/x", &["read 1048064 4096".into()]).await;
    assert!(!ok, "{out}");
    let info = tokio::process::Command::new("qemu-img")
        .args(["info", &format!("nbd://{}/p/nosuch", n.nbd)])
        .output()
        .await
        .unwrap();
    assert!(!info.status.success());
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(n.nbd).await.unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        // Valid client flags, then an option header whose magic is not IHAVEOPT: a protocol
        // violation, which the server answers by closing the connection without a word.
        s.write_all(b"\x00\x00\x00\x03GARBAGE GARBAGE GARBAGE")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("the server kept a connection open after protocol garbage");
        // A close with the garbage's tail still unread may reach the client as a reset.
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("reading until the server closes: {e}"),
        }
        assert!(
            buf.is_empty(),
            "the server answered protocol garbage: {buf:?}"
        );
    }
    // Still serving.
    let (ok, out) = qemu_io(
        n.nbd,
        "p/x",
        &[
            "write -P 0x5a 0 64k".into(),
            "read -P 0x5a 0 64k".into(),
            "write -P 0x6b 614400 4096".into(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (code, out) = cli_at(
        api,
        &["image", "resize", "p/x", "--size", "512K", "--allow-shrink"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_at(api, &["image", "resize", "p/x", "--size", "1M"]);
    assert_eq!(code, 0, "{out}");
    // Growing again never resurrects data cut off by the shrink.
    let (ok, out) = qemu_io(
        n.nbd,
        "p/x",
        &["read -P 0 614400 4096".into(), "read -P 0x5a 0 64k".into()],
    )
    .await;
    assert!(ok, "{out}");
}

/// With `down_out_interval` set, a node that stays down is marked out and its objects are
/// re-replicated on the remaining nodes; when it returns, data moves back and strays are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_marked_out_gets_its_objects_re_replicated() {
    let mut c = Cluster::start(4, &["--down-out-interval", "2s"]).await;
    let api = c.nodes[0].rpc;
    assert_eq!(
        cli_at(api, &["pool", "create", "rbd", "--pg-num", "16"]).0,
        0
    );
    assert_eq!(
        cli_at(api, &["image", "create", "rbd/img", "--size", "32M"]).0,
        0
    );
    let data = test_bytes(8 * 1024 * 1024, 11);
    let put = put_data(api, "rbd/img", 0, data.clone()).await;
    assert_eq!(put.status(), 204, "{}", put.text().await.unwrap());
    wait_health(api, "HEALTH_OK", Duration::from_secs(20)).await;

    c.nodes[3].kill9();
    // Down → out after 2 s → remapped and recovered: only OSD_DOWN remains.
    let h = wait_for(
        "re-replication after out",
        Duration::from_secs(60),
        || async move {
            let h = health(api).await?;
            let cs = codes(&h);
            (cs == ["OSD_DOWN"]).then_some(h)
        },
    )
    .await;
    assert!(
        h["checks"][0]["detail"][0]
            .as_str()
            .unwrap()
            .contains("out"),
        "{h}"
    );
    let got = get_range(c.nodes[1].rpc, "rbd/img", &format!("0-{}", data.len() - 1)).await;
    assert_eq!(got.status(), 206);
    assert!(got.bytes().await.unwrap()[..] == data[..]);

    c.nodes[3].start();
    c.nodes[3].wait_ready().await;
    wait_health(api, "HEALTH_OK", Duration::from_secs(60)).await;
    let got = get_range(c.nodes[3].rpc, "rbd/img", &format!("0-{}", data.len() - 1)).await;
    assert!(got.bytes().await.unwrap()[..] == data[..]);
}

/// Steady writes never look like lost replicas: the recovery rounds' inventories are taken at
/// slightly different moments, so under load a replica often lists a version just below the
/// latest while writes in flight reach it. Recovery must leave such replicas alone (it once
/// copied whole 4 MiB objects to them every round) and the pool must stay clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_writes_cause_no_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = start_mesh(dir.path(), 3, "").await;
    let api = hosts[0].rpc;
    let (code, out) = cli_at(
        api,
        &["pool", "create", "hot", "--size", "3", "--min-size", "2"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_at(api, &["image", "create", "hot/img", "--size", "16M"]);
    assert_eq!(code, 0, "{out}");
    // 16 writers × 120 writes of 4 KiB over 4 objects, for a few seconds: several recovery
    // rounds (1 s each) see the objects change between inventories.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16u64 {
        writers.spawn(async move {
            for i in 0..120u64 {
                let block = (w * 7919 + i * 104_729) % 4096;
                let r = put_data(api, "hot/img", block * 4096, vec![(w + i) as u8; 4096]).await;
                assert_eq!(r.status(), 204, "write {w}/{i}");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    // Wait until every node has started a round 3 s after the last write: the round before it
    // (≥ 2 s after, its "previous round" ≥ 1 s after) had all its inventories from after the
    // writes and finished its copies. Then ask every node what it copied.
    let quiet_from = unix_ms() + 3000;
    wait_for(
        "a recovery round 3 s after the last write on every node",
        Duration::from_secs(20),
        || {
            let hosts = &hosts;
            async move {
                for h in hosts {
                    let v = get_json(&format!("http://{}/block/v1/status", h.rpc)).await;
                    if v["scan_at_ms"].as_u64()? < quiet_from {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let mut copied = 0;
    for h in &hosts {
        let v = get_json(&format!("http://{}/block/v1/status", h.rpc)).await;
        copied += v["recovery"]["recovered_objects"]
            .as_u64()
            .expect("status has recovery");
    }
    assert_eq!(
        copied, 0,
        "recovery copied objects although no replica missed a write"
    );
    wait_health(api, "HEALTH_OK", Duration::from_secs(10)).await;
}

/// A write is acknowledged once `min_size` replicas made it durable, not when the slowest one
/// answers: with node3's replication traffic delayed 3 s by its sidecar and a replica_grace far
/// longer than that, a write returns while node3 still holds the old bytes. The object's next
/// write still reaches node3 after it: node3 ends with the last write by itself, without
/// recovery (whose interval is set longer than the test; a replica that got the writes out of
/// order would refuse the later one as stale and keep the old bytes until recovery).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_is_acknowledged_without_waiting_for_the_slowest_replica() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = start_mesh_nodes(
        dir.path(),
        3,
        "",
        &[
            "--replica-grace",
            "20s",
            "--op-timeout",
            "30s",
            "--recovery-interval",
            "60s",
        ],
    )
    .await;
    let api = hosts[0].rpc;
    let (code, out) = cli_at(
        api,
        &["pool", "create", "slow", "--size", "3", "--min-size", "2"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_at(api, &["image", "create", "slow/img", "--size", "4M"]);
    assert_eq!(code, 0, "{out}");
    let info = get_json(&format!("http://{api}/block/v1/images/slow/img")).await;
    let file = object_file(
        &hosts[2].node.data,
        info["pool_id"].as_u64().unwrap(),
        info["id"].as_str().unwrap(),
        0,
    );
    let head = |f: &Path| {
        std::fs::read(f)
            .map(|b| b[..4096].to_vec())
            .unwrap_or_default()
    };
    let wait_head = |what: &'static str, want: Vec<u8>, limit: u64| {
        let file = file.clone();
        wait_for(what, Duration::from_secs(limit), move || {
            let ok = head(&file) == want;
            async move { ok.then_some(()) }
        })
    };
    let (a, b, c) = (vec![0xaau8; 4096], vec![0xbbu8; 4096], vec![0xccu8; 4096]);
    assert_eq!(put_data(api, "slow/img", 0, a.clone()).await.status(), 204);
    wait_head("node3 to hold the first write", a.clone(), 10).await;

    let fault = json!({"id": "slow-node3", "kind": {"type": "delay", "fixed_ms": 3000},
        "route": "/peer/v1/block/ops", "ttl": "1m"});
    let r = http()
        .post(hosts[2].sidecar.admin_url("/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = put_data(api, "slow/img", 0, b.clone()).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    assert_eq!(
        head(&file),
        a,
        "acknowledged only after the delayed replica had applied it"
    );
    // The next write of the object waits for node3's answer to the last one, then goes to all.
    let r = put_data(api, "slow/img", 0, c.clone()).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = http()
        .delete(hosts[2].sidecar.admin_url("/faults/slow-node3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_head("node3 to apply both writes in order", c.clone(), 20).await;
    let got = get_range(hosts[2].rpc, "slow/img", "0-4095").await;
    assert_eq!(got.bytes().await.unwrap()[..], c[..]);
    wait_health(api, "HEALTH_OK", Duration::from_secs(10)).await;
}
