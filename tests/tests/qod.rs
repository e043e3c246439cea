//! Canary probing against queries of death, end to end: real sidecars in front of real upstream
//! processes (`qod_fixture`, test code) that die on one request shape.

use bulwark_e2e::fixture::Fixture;
use bulwark_e2e::{free_addr, http, wait_for, Managed, SidecarProc};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One `qod_fixture` process on a fixed address (so it can be restarted in place).
struct Upstream {
    addr: SocketAddr,
    log: PathBuf,
    name: String,
    proc: Managed,
}

impl Upstream {
    fn start(dir: &Path, name: &str) -> Self {
        let mut u = Self {
            addr: free_addr(),
            log: dir.join(format!("{name}.requests")),
            name: name.into(),
            proc: Managed::new(dir.join(format!("{name}.log"))),
        };
        u.spawn();
        u
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qod_fixture"));
        cmd.arg(self.addr.to_string())
            .arg(&self.log)
            .arg(&self.name);
        self.proc.spawn(cmd);
    }

    async fn restart(&mut self) {
        self.proc.kill9();
        self.spawn();
        let a = self.addr;
        wait_for(
            "fixture listening",
            Duration::from_secs(10),
            || async move { tokio::net::TcpStream::connect(a).await.ok().map(|_| ()) },
        )
        .await;
    }

    /// Requests this process saw whose line contains `needle`.
    fn saw(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

fn sidecar_config(
    listen: SocketAddr,
    node: SocketAddr,
    canaries: [SocketAddr; 2],
    state: &Path,
    extra: &str,
    tail: &str,
) -> String {
    format!(
        "[qod]\nenabled = true\nstate_file = \"{}\"\ndefault_deadline = \"10s\"\n{extra}\n\n\
         [[listener]]\nname = \"api\"\nlisten = \"{listen}\"\nupstream = \"{node}\"\n\
         canaries = [\"{}\", \"{}\"]\n\n\
         [[class_rule]]\nname = \"cat\"\npath_prefix = \"/api/v0/cat\"\nclass = \"client\"\n\n{tail}",
        state.display(),
        canaries[0],
        canaries[1]
    )
}

async fn qod_header(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-bulwark-qod")
        .map(|v| v.to_str().unwrap().to_string())
}

async fn metric(s: &SidecarProc, name: &str) -> f64 {
    s.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn entries(s: &SidecarProc) -> Vec<Value> {
    http()
        .get(s.admin_url("/qod/blacklist"))
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_of_death_are_probed_confirmed_blacklisted_shared_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node_a = Upstream::start(d, "node-a");
    let node_b = Upstream::start(d, "node-b");
    let mut c1 = Upstream::start(d, "canary-1");
    let mut c2 = Upstream::start(d, "canary-2");
    let hook = Fixture::start().await;
    let (a_api, b_api) = (free_addr(), free_addr());
    // B first: A shares its entries with B, so it needs B's admin address.
    let mut b = SidecarProc::start(
        d,
        "sidecar-b",
        &sidecar_config(
            b_api,
            node_b.addr,
            [c1.addr, c2.addr],
            &d.join("b-qod.json"),
            "",
            "",
        ),
    );
    b.wait_ready().await;
    let mut a = SidecarProc::start(
        d,
        "sidecar-a",
        &sidecar_config(
            a_api,
            node_a.addr,
            [c1.addr, c2.addr],
            &d.join("a-qod.json"),
            &format!("webhook = \"http://{}/ok\"", hook.addr),
            &format!("[mesh]\npeers = [\"{}\"]\n", b.admin),
        ),
    );
    a.wait_ready().await;
    let get = |api: SocketAddr, q: &str| http().get(format!("http://{api}/api/v0/cat?{q}")).send();

    // A new shape goes to the first canary, and its answer is the real one.
    let r = get(a_api, "arg=one").await.unwrap();
    assert_eq!(r.status(), 200);
    let h = qod_header(&r).await.expect("probed answers say so");
    assert!(h.starts_with(&format!("canary={}", c1.addr)), "{h}");
    assert!(r.text().await.unwrap().starts_with("canary-1 GET"));
    assert_eq!(
        node_a.saw("arg=one"),
        0,
        "the node never saw the unknown request"
    );
    // Now known: straight to the node.
    let r = get(a_api, "arg=two").await.unwrap();
    assert_eq!(qod_header(&r).await, None);
    assert!(r.text().await.unwrap().starts_with("node-a GET"));

    // Known requests never wait on a probe: a new shape hangs on the canary (3 s) while known
    // requests of the same route are answered by the node.
    let slow = tokio::spawn(get(a_api, "arg=s&hang=1"));
    wait_for("probe in flight", Duration::from_secs(5), || async {
        (c1.saw("hang=1") == 1).then_some(())
    })
    .await;
    for i in 0..5 {
        let r = get(a_api, &format!("arg=k{i}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().starts_with("node-a"));
    }
    assert!(
        !slow.is_finished(),
        "the known requests did not wait for the probe"
    );
    // Single flight: two more requests of the probed shape wait for its probe instead of
    // reaching the canary, then go to the node once the shape is known.
    let same = [
        tokio::spawn(get(a_api, "arg=u&hang=1")),
        tokio::spawn(get(a_api, "arg=v&hang=1")),
    ];
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "the probe finished within its deadline");
    assert!(r.text().await.unwrap().starts_with("canary-1"));
    for w in same {
        let r = w.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().starts_with("node-a"));
    }
    assert_eq!(c1.saw("hang=1"), 1, "one probe for the shape");
    assert_eq!(node_a.saw("hang=1"), 2);

    // The query of death (a long run of spaces, as in the 2016 Stack Exchange outage): a safe
    // request, so the strike on canary 1 is confirmed on canary 2 at once, then blacklisted.
    let spaces = "%20".repeat(40);
    let r = get(a_api, &format!("arg=a{spaces}b")).await.unwrap();
    let h = qod_header(&r).await.unwrap_or_default();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(h.starts_with("blocked; id="), "{h}");
    let id = h.trim_start_matches("blocked; id=").to_string();
    assert!(
        body.contains("query of death") && body.contains("crashed or hung 2 canaries"),
        "{body}"
    );
    assert_eq!(c1.saw(&spaces), 1, "canary 1 died once");
    assert_eq!(c2.saw(&spaces), 1, "canary 2 confirmed it (and died once)");
    assert_eq!(node_a.saw(&spaces), 0, "never a non-canary node");
    assert!(!c1.proc.running() && !c2.proc.running());

    // Later copies (other literals, same shape) are refused at the edge.
    for q in ["arg=x", "arg=y", "arg=z"] {
        let r = get(a_api, &format!("{q}{spaces}.")).await.unwrap();
        assert_eq!(r.status(), 422);
    }
    // A near variant (another size bucket, so another fine signature) while both canaries are
    // down: refused, not forwarded to the node.
    let r = get(a_api, &format!("arg={}{spaces}", "v".repeat(200)))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-bulwark-error"], "probe_unavailable");
    assert_eq!(c1.saw(&spaces) + c2.saw(&spaces) + node_a.saw(&spaces), 2);

    // The alert: a metric, and the webhook called.
    assert_eq!(metric(&a, "bulwark_qod_alerts_total").await, 1.0);
    wait_for("webhook", Duration::from_secs(10), || async {
        (hook.count() >= 1).then_some(())
    })
    .await;
    assert!(a.log_text().contains("ALERT query of death blacklisted"));

    // Inspect: the entry keeps a sample of the request that proved it.
    let e: Value = http()
        .get(a.admin_url(&format!("/qod/blacklist/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(e["strikes"], 2);
    assert!(e["sample"]["uri"]
        .as_str()
        .unwrap()
        .contains("/api/v0/cat?arg=a%20"));
    assert!(e["signature"]["fine"].as_str().unwrap().contains("ws_run"));

    // Shared: the peer refuses it too, without its node or the canaries seeing it.
    wait_for(
        "entry shared with the peer",
        Duration::from_secs(10),
        || async {
            entries(&b)
                .await
                .iter()
                .any(|e| e["id"] == id.as_str())
                .then_some(())
        },
    )
    .await;
    let r = get(b_api, &format!("arg=q{spaces}q")).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(node_b.saw(&spaces), 0);

    // Persisted: a restarted sidecar still refuses it.
    a.kill9();
    a.spawn();
    a.wait_ready().await;
    let r = get(a_api, &format!("arg=r{spaces}r")).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(entries(&a).await.iter().any(|e| e["id"] == id.as_str()));

    // A peer that missed the push pulls the list when it starts.
    b.kill9();
    std::fs::remove_file(d.join("b-qod.json")).unwrap();
    let cfg = std::fs::read_to_string(&b.config).unwrap()
        + &format!("\n[mesh]\npeers = [\"{}\"]\n", a.admin);
    std::fs::write(&b.config, cfg).unwrap();
    b.spawn();
    b.wait_ready().await;
    wait_for(
        "entry pulled from the peer",
        Duration::from_secs(10),
        || async {
            entries(&b)
                .await
                .iter()
                .any(|e| e["id"] == id.as_str())
                .then_some(())
        },
    )
    .await;

    // Operators edit the list: block a harmless shape by hand, switch it to dry run, delete it.
    c1.restart().await;
    c2.restart().await;
    let r = get(a_api, "arg=h&flavor=x").await.unwrap();
    assert_eq!(r.status(), 200);
    let h = qod_header(&r).await.unwrap();
    let harmless = h.split("id=").nth(1).unwrap().to_string();
    let r = http()
        .post(a.admin_url("/qod/blacklist"))
        .json(&json!({"id": harmless, "ttl": "1h", "note": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(get(a_api, "arg=i&flavor=y").await.unwrap().status(), 422);
    let r = http()
        .patch(a.admin_url(&format!("/qod/blacklist/{harmless}")))
        .json(&json!({"dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(a_api, "arg=j&flavor=z").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        qod_header(&r).await.unwrap(),
        format!("dry-run; id={harmless}")
    );
    assert!(r.text().await.unwrap().starts_with("node-a"));
    assert_eq!(metric(&a, "bulwark_qod_dry_run_hits_total").await, 1.0);
    let r = http()
        .delete(a.admin_url(&format!("/qod/blacklist/{harmless}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = get(a_api, "arg=k&flavor=w").await.unwrap();
    assert_eq!((r.status().as_u16(), qod_header(&r).await), (200, None));
    // Bad input to the admin API.
    let r = http()
        .post(a.admin_url("/qod/blacklist"))
        .json(&json!({"id": "nothex", "ttl": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http()
        .get(a.admin_url("/qod/blacklist/0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A non-idempotent query of death: the first strike fails the request (the node never sees
    // it); the client's retry starts at the other canary, and that confirms it.
    let post = |q: &str| {
        http()
            .post(format!("http://{a_api}/api/v0/cat?{q}"))
            .body("payload")
            .send()
    };
    let r = post("arg=p&evil=1").await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-bulwark-error"], "probe_strike");
    assert_eq!((c1.saw("evil"), c2.saw("evil")), (1, 0));
    let r = post("arg=q&evil=2").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!((c1.saw("evil"), c2.saw("evil")), (1, 1));
    assert_eq!(post("arg=r&evil=3").await.unwrap().status(), 422);
    assert_eq!(node_a.saw("evil") + c1.saw("evil") + c2.saw("evil"), 2);

    // A hang is a strike too: with a 1 s canary deadline (hot reload), a new shape that hangs
    // both canaries for 3 s is blacklisted; the canaries live on.
    c1.restart().await;
    c2.restart().await;
    let cfg = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("default_deadline = \"10s\"", "default_deadline = \"1s\"");
    std::fs::write(&a.config, cfg).unwrap();
    let r = http().post(a.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = get(a_api, "arg=t&hang=1&tag=x").await.unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(body.contains("gave no answer within 1s"), "{body}");
    assert_eq!((c1.saw("tag=x"), c2.saw("tag=x")), (1, 1));
    assert_eq!(node_a.saw("tag=x"), 0);
    assert!(c1.proc.running() && c2.proc.running());
}
