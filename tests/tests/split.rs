//! Traffic split end to end: a real `sidecar` process in front of two upstream fixtures, stable
//! and candidate, driven through `/split/{listener}` on its admin API.

use bulwark_e2e::fixture::Fixture;
use bulwark_e2e::{free_addr, http, wait_for, SidecarProc};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// Stable and candidate fixtures, and a ready sidecar whose listener `api` (at `listen`) is in
/// front of stable, retrying GETs twice with short backoffs.
struct Setup {
    stable: Fixture,
    cand: Fixture,
    listen: SocketAddr,
    s: SidecarProc,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let (stable, cand) = (Fixture::start().await, Fixture::start().await);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let body = format!(
        "[[listener]]\nname = \"api\"\nlisten = \"{listen}\"\nupstream = \"{}\"\n\n\
         [policy.retry]\nmax_retries = 2\nbackoff_base = \"1ms\"\nbackoff_max = \"5ms\"\n",
        stable.addr
    );
    let s = SidecarProc::start(dir.path(), "sc", &body);
    s.wait_ready().await;
    Setup {
        stable,
        cand,
        listen,
        s,
        _dir: dir,
    }
}

fn split(candidate: SocketAddr, weight: u32, ttl: &str, controller: &str) -> Value {
    json!({"subsets": [{"name": "candidate", "addr": candidate.to_string(), "weight": weight}],
           "ttl": ttl, "controller": controller})
}

/// GET `path` through the sidecar, optionally pinned: the status and the subset named.
async fn get(listen: SocketAddr, path: &str, pin: Option<&str>) -> (u16, Option<String>) {
    let mut req = http().get(format!("http://{listen}{path}"));
    if let Some(p) = pin {
        req = req.header("x-bulwark-subset", p);
    }
    let r = req.send().await.expect("request through the sidecar");
    let subset = r
        .headers()
        .get("x-bulwark-subset")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), subset)
}

/// A subset's entry in `GET /split/api`.
fn subset<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["subsets"]
        .as_array()
        .expect("subsets")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no subset {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifty_fifty_split_reaches_both_names_the_subset_and_obeys_pins() {
    let Setup {
        stable,
        cand,
        listen,
        s,
        _dir,
    } = setup().await;

    // Bad input first: nothing is installed by it.
    let mut no_ttl = split(cand.addr, 50, "1m", "c1");
    no_ttl.as_object_mut().unwrap().remove("ttl");
    let (code, v) = s.admin_json(Method::PUT, "/split/api", Some(no_ttl)).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("ttl is mandatory"),
        "{v}"
    );
    let body = Some(split(cand.addr, 50, "1m", "c1"));
    let (code, v) = s.admin_json(Method::PUT, "/split/nope", body.clone()).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no listener \"nope\""),
        "{v}"
    );
    let (code, _) = s.admin_json(Method::GET, "/split/api", None).await;
    assert_eq!(code, 404);

    let (code, v) = s.admin_json(Method::PUT, "/split/api", body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(subset(&v, "stable")["weight"], 50);
    // A second controller on the same node is refused while the split is live.
    let other = Some(split(cand.addr, 10, "1m", "c2"));
    let (code, v) = s.admin_json(Method::PUT, "/split/api", other).await;
    assert_eq!(code, 409, "{v}");

    let (mut to_stable, mut to_cand) = (0u64, 0u64);
    for _ in 0..200 {
        let (code, sub) = get(listen, "/ok", None).await;
        assert_eq!(code, 200);
        match sub.as_deref() {
            Some("stable") => to_stable += 1,
            Some("candidate") => to_cand += 1,
            other => panic!("answer names {other:?}"),
        }
    }
    assert_eq!((stable.count(), cand.count()), (to_stable, to_cand));
    assert!(to_stable > 60 && to_cand > 60, "{to_stable} / {to_cand}");

    // Pins: the named subset, whatever the roll.
    for _ in 0..10 {
        assert_eq!(
            get(listen, "/ok", Some("candidate")).await,
            (200, Some("candidate".into()))
        );
        assert_eq!(
            get(listen, "/ok", Some("stable")).await,
            (200, Some("stable".into()))
        );
    }
    assert_eq!(
        (stable.count(), cand.count()),
        (to_stable + 10, to_cand + 10)
    );
    assert_eq!(get(listen, "/ok", Some("nope")).await, (400, None));

    let (code, v) = s.admin_json(Method::GET, "/split/api", None).await;
    assert_eq!(code, 200);
    assert_eq!(subset(&v, "candidate")["requests"]["ok"], to_cand + 10);
    assert_eq!(subset(&v, "stable")["attempts"]["ok"], to_stable + 10);
    assert_eq!(subset(&v, "candidate")["latency"]["count"], to_cand + 10);
    assert!(v["remaining_ms"].as_u64().unwrap() > 30_000, "{v}");

    // Removed: all stable, answers unmarked; a second DELETE finds nothing.
    let (code, _) = s.admin_json(Method::DELETE, "/split/api", None).await;
    assert_eq!(code, 204);
    let (code, _) = s.admin_json(Method::DELETE, "/split/api", None).await;
    assert_eq!(code, 404);
    let before = cand.count();
    for _ in 0..20 {
        assert_eq!(get(listen, "/ok", None).await, (200, None));
    }
    assert_eq!(cand.count(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_split_expires_after_its_ttl() {
    let Setup {
        stable,
        cand,
        listen,
        s,
        _dir,
    } = setup().await;
    let body = Some(split(cand.addr, 100, "2s", "dies"));
    let (code, v) = s.admin_json(Method::PUT, "/split/api", body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        get(listen, "/ok", None).await,
        (200, Some("candidate".into()))
    );
    // The controller "dies" (never renews): within the TTL (and a margin) it is all stable.
    let started = std::time::Instant::now();
    wait_for("the split to expire", Duration::from_secs(6), || async {
        (get(listen, "/ok", None).await == (200, None)).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let before = cand.count();
    for _ in 0..20 {
        assert_eq!(get(listen, "/ok", None).await, (200, None));
    }
    assert_eq!(cand.count(), before);
    assert!(stable.count() >= 20, "{}", stable.count());
    let (code, _) = s.admin_json(Method::GET, "/split/api", None).await;
    assert_eq!(code, 404);
    let m = s.metrics().await;
    assert!(
        m.contains("bulwark_split_expired_total{listener=\"api\"} 1"),
        "{m}"
    );
    // Another controller may install one now.
    let body = Some(split(cand.addr, 10, "1m", "next"));
    assert_eq!(s.admin_json(Method::PUT, "/split/api", body).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_502_counts_every_attempt_against_the_candidate() {
    let Setup {
        stable,
        cand,
        listen,
        s,
        _dir,
    } = setup().await;
    let body = Some(split(cand.addr, 0, "1m", "c1"));
    assert_eq!(s.admin_json(Method::PUT, "/split/api", body).await.0, 200);

    let r = get(listen, "/status/502", Some("candidate")).await;
    assert_eq!(r, (502, Some("candidate".into())));
    assert_eq!((cand.count(), stable.count()), (3, 0), "1 try + 2 retries");
    let (_, v) = s.admin_json(Method::GET, "/split/api", None).await;
    let c = subset(&v, "candidate");
    assert_eq!(c["attempts"]["upstream_5xx"], 3, "{v}");
    assert_eq!(c["retries"], 2, "{v}");
    assert_eq!(c["requests"]["upstream_5xx"], 1, "{v}");
    assert_eq!(c["requests"]["ok"], 0, "{v}");
    let m = s.metrics().await;
    for line in [
        "bulwark_split_attempts_total{listener=\"api\",subset=\"candidate\",outcome=\"upstream_5xx\"} 3",
        "bulwark_split_requests_total{listener=\"api\",subset=\"candidate\",outcome=\"upstream_5xx\"} 1",
        "bulwark_split_retries_total{listener=\"api\",subset=\"candidate\"} 2",
        "bulwark_split_weight{listener=\"api\",subset=\"stable\"} 100",
        "bulwark_split_attempt_duration_seconds_count{listener=\"api\",subset=\"candidate\"} 3",
    ] {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
    // A candidate that cannot be reached is a local error, tried three times.
    let gone = free_addr();
    let body = Some(
        json!({"subsets": [{"name": "candidate", "addr": gone.to_string(),
        "weight": 0}], "ttl": "1m", "controller": "c1"}),
    );
    let (code, v) = s.admin_json(Method::PUT, "/split/api", body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(get(listen, "/ok", Some("candidate")).await.0, 502);
    let (_, v) = s.admin_json(Method::GET, "/split/api", None).await;
    let c = subset(&v, "candidate");
    assert_eq!(
        (
            c["attempts"]["local_error"].as_u64(),
            c["requests"]["local_error"].as_u64()
        ),
        (Some(3), Some(1)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rehearsal_fault_hits_only_the_candidate_and_counts_against_it() {
    let Setup {
        stable,
        cand,
        listen,
        s,
        _dir,
    } = setup().await;
    let with_fault = |weight: u32, fault: Value| {
        Some(
            json!({"subsets": [{"name": "candidate", "addr": cand.addr.to_string(),
            "weight": weight, "fault": fault}], "ttl": "1m", "controller": "rehearsal", "seed": 5}),
        )
    };
    // Bad faults are refused and install nothing.
    for (fault, why) in [
        (json!({"abort": 404, "percent": 5}), "500 to 599"),
        (json!({"abort": 500, "percent": 0}), "above 0"),
        (json!({"delay_ms": 60_001, "percent": 5}), "1 to 60000"),
        (json!({"abort": 500, "delay_ms": 5, "percent": 5}), "either"),
        (json!({"abort": 500}), "percent"),
    ] {
        let (code, v) = s
            .admin_json(Method::PUT, "/split/api", with_fault(50, fault))
            .await;
        assert_eq!(code, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    assert_eq!(s.admin_json(Method::GET, "/split/api", None).await.0, 404);

    // abort=500,percent=5 on a 50 % candidate: stable untouched, ~5 % of the candidate's 500s.
    let body = with_fault(50, json!({"abort": 500, "percent": 5}));
    let (code, v) = s.admin_json(Method::PUT, "/split/api", body).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        subset(&v, "candidate")["fault"],
        json!({"abort": 500, "percent": 5.0})
    );
    // One client, kept-alive connections: the loop is quick.
    let client = http();
    let (mut to_cand, mut aborted) = (0u64, 0u64);
    for _ in 0..1200 {
        let r = client
            .get(format!("http://{listen}/ok"))
            .send()
            .await
            .unwrap();
        let sub = r.headers()["x-bulwark-subset"]
            .to_str()
            .unwrap()
            .to_string();
        let fault = r
            .headers()
            .get("x-bulwark-fault")
            .map(|v| v.to_str().unwrap().to_string());
        match (r.status().as_u16(), sub.as_str(), fault.as_deref()) {
            (200, "stable", None) => {}
            (200, "candidate", None) => to_cand += 1,
            (500, "candidate", Some("split-rehearsal")) => {
                to_cand += 1;
                aborted += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // ~600 candidate requests, 5 %: ~30 (sd ~5.3).
    assert!(to_cand.abs_diff(600) < 90, "{to_cand}");
    assert!(
        aborted.abs_diff(to_cand / 20) <= 18,
        "{aborted} of {to_cand}"
    );
    assert_eq!(cand.count(), to_cand - aborted, "an abort is never sent");
    assert_eq!(stable.count(), 1200 - to_cand);
    let (_, v) = s.admin_json(Method::GET, "/split/api", None).await;
    let c = subset(&v, "candidate");
    assert_eq!(c["requests"]["upstream_5xx"], aborted, "{v}");
    assert_eq!(c["attempts"]["upstream_5xx"], aborted, "{v}");
    assert_eq!(c["requests"]["ok"], to_cand - aborted, "{v}");
    assert_eq!(c["fault_injected"], aborted, "{v}");
    assert_eq!(subset(&v, "stable")["fault_injected"], 0, "{v}");
    let m = s.metrics().await;
    let line = format!(
        "bulwark_split_fault_injected_total{{listener=\"api\",subset=\"candidate\"}} {aborted}"
    );
    assert!(m.contains(&line), "{line} missing from\n{m}");

    // The owner switches the rehearsal to a delay: every candidate request waits 300 ms.
    let body = with_fault(0, json!({"delay_ms": 300, "percent": 100}));
    assert_eq!(s.admin_json(Method::PUT, "/split/api", body).await.0, 200);
    let t0 = std::time::Instant::now();
    let r = client
        .get(format!("http://{listen}/ok"))
        .header("x-bulwark-subset", "candidate")
        .send()
        .await
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-bulwark-fault"], "split-rehearsal");
    let t0 = std::time::Instant::now();
    assert_eq!(
        get(listen, "/ok", Some("stable")).await,
        (200, Some("stable".into()))
    );
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "stable is not delayed"
    );

    // The rehearsal ends with the split: nothing marked afterwards.
    assert_eq!(
        s.admin_json(Method::DELETE, "/split/api", None).await.0,
        204
    );
    for _ in 0..20 {
        let r = client
            .get(format!("http://{listen}/ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-bulwark-fault").is_none());
    }
}
