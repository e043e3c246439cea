//! `chaos` end to end: short versions of the ready-made experiments against a real mesh (nodes
//! behind sidecars), an experiment built to deviate, a steady state that is not met, invalid input,
//! an abort, SIGINT (rolled back, journal written) and SIGKILL (the TTLs clean up), and a Chaos
//! Toolkit experiment that gets the verdict of its TOML twin.

use bulwark_e2e::fixture::Fixture;
use bulwark_e2e::{bin_dir, free_addr, http, start_mesh, wait_for, MeshHost, SidecarProc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The `chaos` binary, built once (with the storage and sidecar binaries of the harness).
fn chaos_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = bin_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "chaos", "-p", "chaos"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo").success(),
            "building chaos failed"
        );
        dir.join("chaos")
    })
    .clone()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

fn experiment(name: &str) -> PathBuf {
    repo().join("chaos/experiments").join(name)
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    journal: Option<Value>,
    report: Option<String>,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `chaos run FILE --var … --journal DIR/NAME.json --report DIR/NAME.html --quiet`, off the
/// async runtime.
async fn run_chaos(file: &Path, vars: &[String], out: &Path, name: &str) -> Ran {
    let journal = out.join(format!("{name}.json"));
    let report = out.join(format!("{name}.html"));
    let mut args: Vec<String> = vec!["run".into(), file.display().to_string()];
    for v in vars {
        args.push("--var".into());
        args.push(v.clone());
    }
    args.extend([
        "--journal".into(),
        journal.display().to_string(),
        "--report".into(),
        report.display().to_string(),
    ]);
    let o = chaos(args).await;
    Ran {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
        journal: std::fs::read(&journal)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("journal is JSON")),
        report: std::fs::read_to_string(&report).ok(),
    }
}

async fn chaos(args: Vec<String>) -> Output {
    let bin = chaos_bin();
    tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .expect("run chaos")
    })
    .await
    .expect("join")
}

/// The variables of the ready-made experiments for a test mesh; pid files go to `state`.
fn mesh_vars(hosts: &[MeshHost], state: &Path) -> Vec<String> {
    std::fs::create_dir_all(state).unwrap();
    let mut v = vec![
        format!("state={}", state.display()),
        "duration=2s".into(),
        "window=1s".into(),
        "rate=25".into(),
        "check_every=500ms".into(),
        "pause=2s".into(),
        "pause_s=2".into(),
        "drain=1s".into(),
        "delay_ms=1500".into(),
    ];
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        v.push(format!("admin{n}=http://{}", h.sidecar.admin));
        v.push(format!("cluster{n}=http://{}", h.cluster));
        v.push(format!("rpc{n}=http://{}", h.rpc));
        v.push(format!("peer{n}={}", h.peer));
        std::fs::write(
            state.join(format!("node{n}.pid")),
            h.node.process.pid().unwrap().to_string(),
        )
        .unwrap();
        std::fs::write(
            state.join(format!("sidecar{n}.pid")),
            h.sidecar.pid().unwrap().to_string(),
        )
        .unwrap();
    }
    v
}

/// The sidecar's live faults. Anything but a `{"faults": [...]}` answer fails the test: "no
/// faults left" must not pass because the listing could not be read.
async fn faults(admin: &str) -> Vec<Value> {
    let r = http().get(format!("{admin}/faults")).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {admin}/faults");
    let v: Value = r.json().await.unwrap();
    v["faults"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {admin}/faults answered {v}, not {{\"faults\": [...]}}"))
        .clone()
}

fn proc_state(pid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .unwrap_or('X')
}

/// Running or sleeping: neither stopped nor gone (a gone process is not "continued").
fn running(pid: u32) -> bool {
    matches!(proc_state(pid), 'R' | 'S' | 'D')
}

fn assert_held(r: &Ran, what: &str) {
    assert_eq!(r.code, 0, "{what}: {r:?}");
    let j = r.journal.as_ref().expect("journal");
    assert_eq!(j["verdict"], "held", "{what}");
    assert_eq!(j["deviated"], false, "{what}");
    assert_eq!(j["steady_states"]["before"]["met"], true, "{what}");
    assert_eq!(j["steady_states"]["after"]["met"], true, "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_made_experiments_hold_on_a_real_cluster_and_a_broken_one_deviates() {
    chaos_bin();
    let dir = tempfile::tempdir().unwrap();
    let policy =
        "[policy.breaker]\nconsecutive_failures = 3\nopen_base = \"1s\"\nopen_max = \"4s\"\n";
    let hosts = start_mesh(dir.path(), 3, policy).await;
    let state = dir.path().join("state");
    let vars = mesh_vars(&hosts, &state);
    let out = dir.path().join("out");
    let admins: Vec<String> = hosts
        .iter()
        .map(|h| format!("http://{}", h.sidecar.admin))
        .collect();

    // Every fault experiment: held, its fault window in the journal and the report, and nothing
    // left behind on any sidecar.
    for name in [
        "slow-replica.toml",
        "partition.toml",
        "query-of-death.toml",
        "nygard-1-unavailable.toml",
        "nygard-2-dropped.toml",
        "nygard-3-slow.toml",
        "nygard-4-wrong-payload.toml",
        "nygard-5-over-capacity.toml",
    ] {
        let r = run_chaos(&experiment(name), &vars, &out, name).await;
        assert_held(&r, name);
        let j = r.journal.as_ref().unwrap();
        let w = &j["fault_windows"][0];
        assert!(
            w["end_s"].as_f64().unwrap() > w["start_s"].as_f64().unwrap() + 1.5,
            "{name}: {w}"
        );
        assert!(!j["timeline"].as_array().unwrap().is_empty(), "{name}");
        assert!(j["loads"][0]["sent"].as_u64().unwrap() > 20, "{name}");
        assert!(
            !j["steady_states"]["during"].as_array().unwrap().is_empty(),
            "{name}"
        );
        let html = r.report.as_ref().expect("report");
        assert!(
            html.contains("<svg") && html.contains("hypothesis held"),
            "{name}"
        );
        for a in &admins {
            assert!(faults(a).await.is_empty(), "{name} left a fault on {a}");
        }
    }
    // The faults were real: the partition's blackholes matched node1's requests to node3.
    let j: Value =
        serde_json::from_slice(&std::fs::read(out.join("partition.toml.json")).unwrap()).unwrap();
    assert_eq!(
        j["run"][0]["output"]["faults"].as_array().unwrap().len(),
        4,
        "{}",
        j["run"][0]
    );

    // The planned outage: every sidecar has /outages, so a missing one is a failure, not a skip.
    let probe = http()
        .get(format!("{}/outages", admins[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200, "GET {}/outages", admins[2]);
    let r = run_chaos(&experiment("planned-outage.toml"), &vars, &out, "outage").await;
    assert_held(&r, "planned-outage.toml");
    let l = chaos(vec![
        "list".into(),
        "--sidecar".into(),
        admins[2].clone(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    assert!(l.status.success(), "{l:?}");
    let v: Value = serde_json::from_slice(&l.stdout).unwrap();
    assert!(v["sidecars"][0]["outages"].is_array(), "{v}");

    // Built to deviate: node1 is frozen while its health is the hypothesis.
    let deviate = dir.path().join("deviate.toml");
    std::fs::write(
        &deviate,
        r#"schema = "chaos/v1"
title = "must deviate: node1 frozen"
[vars]
cluster1 = "set by the test"
state = "set by the test"
[runtime]
hypothesis_interval = "500ms"
max_duration = "1m"
[hosts.node1]
pidfile = "${state}/node1.pid"
[[steady_state]]
name = "node1-health"
type = "http"
url = "${cluster1}/health"
timeout = "400ms"
tolerance = { status = [204] }
[[method]]
name = "freeze node1"
type = "signal"
host = "node1"
signal = "stop"
duration = "2s"
"#,
    )
    .unwrap();
    let r = run_chaos(&deviate, &vars, &out, "deviate").await;
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.journal.as_ref().unwrap();
    assert_eq!(j["verdict"], "deviated");
    assert_eq!(j["steady_states"]["before"]["met"], true);
    let during = j["steady_states"]["during"].as_array().unwrap();
    assert!(during.iter().any(|c| c["met"] == false), "{during:?}");
    // Continued after its duration: the "after" check passes and the process runs.
    assert_eq!(j["steady_states"]["after"]["met"], true);
    let pid = hosts[0].node.process.pid().unwrap();
    assert!(running(pid), "node1 runs again: state {}", proc_state(pid));
    assert!(r.stdout.contains("deviated"), "{r:?}");

    // Chaos Toolkit JSON (http probes, process actions) and its TOML twin: the same verdict.
    let toml = run_chaos(&experiment("paused-node.toml"), &vars, &out, "twin-toml").await;
    let ctk = run_chaos(&experiment("ctk-paused-node.json"), &vars, &out, "twin-ctk").await;
    assert_held(&toml, "paused-node.toml");
    assert_held(&ctk, "ctk-paused-node.json");
    let cj = ctk.journal.as_ref().unwrap();
    assert_eq!(cj["experiment"]["format"], "ctk");
    assert_eq!(cj["run"][0]["output"]["status"], 0, "{}", cj["run"][0]);
    assert_eq!(cj["run"][2]["tolerance_met"], true, "{}", cj["run"][2]);
    let pid = hosts[2].node.process.pid().unwrap();
    assert!(running(pid), "node3 runs again: state {}", proc_state(pid));
}

/// One sidecar in front of the test fixture, and an experiment TOML around it.
struct Single {
    _fx: Fixture,
    sidecar: SidecarProc,
    listen: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Single {
    async fn start() -> Self {
        let fx = Fixture::start().await;
        let dir = tempfile::tempdir().unwrap();
        let listen = free_addr();
        let sidecar = SidecarProc::start(
            dir.path(),
            "sc",
            &format!(
                "[[listener]]\nname = \"api\"\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
                fx.addr
            ),
        );
        sidecar.wait_ready().await;
        Self {
            _fx: fx,
            sidecar,
            listen,
            dir,
        }
    }

    fn admin(&self) -> String {
        format!("http://{}", self.sidecar.admin)
    }

    /// An experiment with one host `a` (this sidecar), a load on `/ok`, and the given body.
    fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let text = format!(
            "schema = \"chaos/v1\"\ntitle = \"{name}\"\n\n[hosts.a]\nadmin = \"{}\"\n\n\
             [[load]]\nname = \"clients\"\nurl = \"http://{}/ok\"\nrate = 20\n\n{body}",
            self.admin(),
            self.listen
        );
        std::fs::write(&p, text).unwrap();
        p
    }
}

const ERRORS: &str =
    "[[steady_state]]\nname = \"errors\"\ntype = \"metric\"\nmetric = \"error_ratio\"\n\
window = \"1s\"\nmin_requests = 5\ntolerance = { max = 0.05 }\n\n";

#[tokio::test(flavor = "multi_thread")]
async fn gates_safeguards_and_bad_input_stop_before_or_during_injection() {
    chaos_bin();
    let s = Single::start().await;
    let out = s.dir.path().join("out");

    // Steady state not met before the method: exit 2, nothing injected.
    let closed = free_addr();
    let f = s.write(
        "not-met.toml",
        &format!(
            "[[steady_state]]\nname = \"dead\"\ntype = \"http\"\nurl = \"http://{closed}/\"\n\
             timeout = \"300ms\"\ntolerance = {{ status = [200] }}\n\n\
             [[method]]\nname = \"abort all\"\ntype = \"fault\"\nhost = \"a\"\nduration = \"2s\"\n\
             fault = {{ kind = {{ type = \"abort\", status = 503 }} }}\n"
        ),
    );
    let r = run_chaos(&f, &[], &out, "not-met").await;
    assert_eq!(r.code, 2, "{r:?}");
    let j = r.journal.as_ref().unwrap();
    assert_eq!(j["status"], "not-started");
    assert_eq!(j["steady_states"]["before"]["met"], false);
    assert!(j["run"].as_array().unwrap().is_empty());
    assert!(faults(&s.admin()).await.is_empty());
    let m = http()
        .get(format!("{}/metrics", s.admin()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("bulwark_faults_injected_total{") && !l.ends_with(" 0")),
        "a fault was injected:\n{m}"
    );

    // Invalid: rejected before anything runs, naming the line and the field.
    let f = s.write(
        "invalid.toml",
        "[[method]]\nname = \"slow\"\ntype = \"fault\"\nhost = \"a\"\nduration = \"3 fortnights\"\n\
         fault = { kind = { type = \"delay\", fixed_ms = 100 } }\n",
    );
    let r = run_chaos(&f, &[], &out, "invalid").await;
    assert_eq!(r.code, 64, "{r:?}");
    // Header (5 lines) + load (4 lines) + blank + method: `duration` is line 16.
    assert!(
        r.stderr
            .contains("invalid.toml:16: method[0] (\"slow\").duration"),
        "{r:?}"
    );
    assert!(r.journal.is_none());
    let f = s.write(
        "typo.toml",
        "[[method]]\nname = \"x\"\ntype = \"pause\"\nduraton = \"1s\"\n",
    );
    let r = run_chaos(&f, &[], &out, "typo").await;
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr.contains("typo.toml:15:") && r.stderr.contains("unknown field `duraton`"),
        "{r:?}"
    );
    let ctk = s.dir.path().join("bad.json");
    std::fs::write(
        &ctk,
        r#"{"title": "t", "description": "d", "method": [
  {"type": "action", "name": "kill pods", "provider": {"type": "python", "module": "chaosk8s.pod.actions", "func": "terminate_pods"}}
]}"#,
    )
    .unwrap();
    let r = run_chaos(&ctk, &[], &out, "bad-ctk").await;
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr
            .contains("bad.json:2: method[0] (\"kill pods\").provider.type")
            && r.stderr.contains("\"python\" is not supported"),
        "{r:?}"
    );
    assert!(faults(&s.admin()).await.is_empty());

    // --dry-run: the plan, and nothing sent.
    let f = s.write(
        "dry.toml",
        "[[method]]\nname = \"abort all\"\ntype = \"fault\"\nhost = \"a\"\nduration = \"2s\"\n\
         fault = { kind = { type = \"abort\", status = 503 } }\n",
    );
    let o = chaos(vec![
        "run".into(),
        f.display().to_string(),
        "--dry-run".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("POST /faults") && text.contains("nothing was sent"),
        "{text}"
    );
    assert!(faults(&s.admin()).await.is_empty());

    // A safeguard: every request fails, the abort condition trips, the fault is removed at once.
    let f = s.write(
        "abort.toml",
        &format!(
            "{ERRORS}[[abort]]\nname = \"too many errors\"\nprobe = \"errors\"\ntolerance = {{ max = 0.5 }}\nfor = \"1s\"\n\n\
             [runtime]\nhypothesis_interval = \"500ms\"\n\n\
             [[method]]\nname = \"abort all\"\ntype = \"fault\"\nhost = \"a\"\nduration = \"30s\"\n\
             fault = {{ kind = {{ type = \"abort\", status = 503 }} }}\n"
        ),
    );
    let started = std::time::Instant::now();
    let r = run_chaos(&f, &[], &out, "abort").await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{r:?}");
    let j = r.journal.as_ref().unwrap();
    assert_eq!(j["verdict"], "aborted");
    assert_eq!(j["abort"]["name"], "too many errors");
    assert_eq!(j["run"][0]["status"], "interrupted");
    assert!(faults(&s.admin()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_rolls_back_and_writes_the_journal_and_sigkill_leaves_only_ttls() {
    chaos_bin();
    let s = Single::start().await;
    let out = s.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let admin = s.admin();

    // SIGINT in the middle of the method.
    let f = s.write(
        "interrupt.toml",
        &format!(
            "{ERRORS}[[method]]\nname = \"slow everything\"\ntype = \"fault\"\nhost = \"a\"\n\
             fault = {{ kind = {{ type = \"delay\", fixed_ms = 10 }} }}\n\n\
             [[method]]\nname = \"wait\"\ntype = \"pause\"\nduration = \"60s\"\n"
        ),
    );
    let journal = out.join("interrupt.json");
    let mut child = Command::new(chaos_bin())
        .args(["run", &f.display().to_string(), "--quiet", "--journal"])
        .arg(&journal)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the fault to be injected", Duration::from_secs(20), || {
        let a = admin.clone();
        async move { (!faults(&a).await.is_empty()).then_some(()) }
    })
    .await;
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let code = wait_for(
        "chaos to exit after SIGINT",
        Duration::from_secs(15),
        || {
            let c = child.try_wait().unwrap().map(|s| s.code());
            async move { c }
        },
    )
    .await;
    assert_eq!(code, Some(4));
    let j: Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    assert_eq!(j["verdict"], "interrupted");
    assert_eq!(j["status"], "interrupted");
    assert_eq!(j["abort"]["name"], "SIGINT");
    assert!(j["rollbacks"][0]["output"][0]
        .as_str()
        .unwrap()
        .starts_with("removed fault"));
    assert!(
        faults(&admin).await.is_empty(),
        "the rollback removes the fault"
    );
    assert!(out.join("interrupt.html").exists());

    // SIGKILL: nothing can roll back, the TTLs do. A short hard maximum gives short TTLs; a process
    // stopped by the experiment is continued by its watchdog.
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let f = s.write(
        "killed.toml",
        "[vars]\nvictim = 0\n\n[runtime]\nmax_duration = \"4s\"\nttl_margin = \"1s\"\n\n\
             [[method]]\nname = \"freeze the victim\"\ntype = \"signal\"\npid = \"${victim}\"\nsignal = \"stop\"\n\n\
             [[method]]\nname = \"abort all\"\ntype = \"fault\"\nhost = \"a\"\n\
             fault = { kind = { type = \"abort\", status = 503 } }\n\n\
             [[method]]\nname = \"wait\"\ntype = \"pause\"\nduration = \"3s\"\n",
    );
    let mut child = Command::new(chaos_bin())
        .args(["run", &f.display().to_string(), "--quiet", "--var"])
        .arg(format!("victim={}", victim.id()))
        .arg("--journal")
        .arg(out.join("killed.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the fault to be injected", Duration::from_secs(20), || {
        let a = admin.clone();
        async move { (!faults(&a).await.is_empty()).then_some(()) }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(proc_state(victim.id()), 'T', "the victim is stopped");
    let r = http()
        .get(format!("http://{}/ok", s.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the fault outlives chaos until its TTL");
    // `chaos list` shows what a dead run left behind.
    let l = chaos(vec![
        "list".into(),
        "--sidecar".into(),
        admin.clone(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    let v: Value = serde_json::from_slice(&l.stdout).unwrap();
    let left = v["sidecars"][0]["chaos_faults"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{v}");
    assert!(left[0]["remaining_ms"].as_u64().unwrap() <= 5_000, "{v}");
    wait_for(
        "the TTL to remove the fault",
        Duration::from_secs(10),
        || {
            let a = admin.clone();
            async move { faults(&a).await.is_empty().then_some(()) }
        },
    )
    .await;
    assert_eq!(
        http()
            .get(format!("http://{}/ok", s.listen))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let vid = victim.id();
    wait_for(
        "the watchdog to continue the victim",
        Duration::from_secs(10),
        || async move { running(vid).then_some(()) },
    )
    .await;
    let _ = victim.kill();
    let _ = victim.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ready_made_experiment_validates() {
    let files: Vec<String> = std::fs::read_dir(repo().join("chaos/experiments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "json"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(files.len() >= 11, "{files:?}");
    let mut args = vec!["validate".to_string()];
    args.extend(files.iter().cloned());
    let o = chaos(args).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text.matches(": valid: ").count(), files.len(), "{text}");
}

/// A toxic through the Toxiproxy-compatible API: injected (the hypothesis, traffic through the
/// proxy, deviates while it lives) and removed afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_toxic_action_breaks_traffic_through_the_proxy_and_is_removed() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tox, via) = (free_addr(), free_addr());
    let sidecar = SidecarProc::start(
        dir.path(),
        "sc",
        &format!(
            "[toxiproxy]\nlisten = \"{tox}\"\n\n[[listener]]\nname = \"api\"\nlisten = \"{}\"\nupstream = \"{}\"\n",
            free_addr(),
            fx.addr
        ),
    );
    sidecar.wait_ready().await;
    let r = http()
        .post(format!("http://{tox}/proxies"))
        .json(&serde_json::json!({"name": "fx", "listen": via.to_string(), "upstream": fx.addr.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let file = dir.path().join("toxic.toml");
    std::fs::write(
        &file,
        r#"schema = "chaos/v1"
title = "must deviate: the dependency stops answering"
[vars]
tox = "set by the test"
via = "set by the test"
[runtime]
hypothesis_interval = "300ms"
max_duration = "1m"
[hosts.a]
toxiproxy = "${tox}"
[[steady_state]]
name = "through-the-proxy"
type = "http"
url = "http://${via}/ok"
timeout = "500ms"
tolerance = { status = [200] }
[[method]]
name = "stop the data"
type = "toxic"
host = "a"
proxy = "fx"
toxic = { type = "timeout", attributes = { timeout = 0 } }
duration = "2s"
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let vars = vec![format!("tox=http://{tox}"), format!("via={via}")];
    let r = run_chaos(&file, &vars, &out, "toxic").await;
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.journal.as_ref().unwrap();
    assert_eq!(j["verdict"], "deviated");
    assert_eq!(j["steady_states"]["before"]["met"], true);
    assert_eq!(
        j["steady_states"]["after"]["met"], true,
        "the toxic was removed"
    );
    let toxics: Value = http()
        .get(format!("http://{tox}/proxies/fx/toxics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(toxics, serde_json::json!([]));
}
