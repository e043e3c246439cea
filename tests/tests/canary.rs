//! The `canary` binary end to end: real storage nodes, a real sidecar in front of node 3, and the
//! controller as a process.

use bulwark_e2e::{canary_bin, free_addr, get_json, wait_for, Cluster, SidecarProc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn canary(state: &Path, args: &[&str]) -> Output {
    Command::new(canary_bin())
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run canary")
}

/// A `canary run` in the background, its stdout and stderr in `STATE/out.log`; killed on drop.
struct Running {
    child: std::process::Child,
    log: PathBuf,
}

impl Running {
    fn start(state: &Path, args: &[&str]) -> Running {
        let log = state.join("out.log");
        let f = std::fs::File::create(&log).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new(canary_bin())
            .process_group(0)
            .arg("--state")
            .arg(state)
            .args(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn canary");
        Running { child, log }
    }

    fn out(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the exit; its code and the output (the output in the panic if
    /// it does not exit in time).
    async fn wait(&mut self, limit: Duration) -> (Option<i32>, String) {
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), self.out());
            }
            assert!(
                start.elapsed() < limit,
                "canary did not exit within {limit:?}:\n{}",
                self.out()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Running {
    /// The controller and whatever it left behind (its process group: candidate, baseline).
    fn drop(&mut self) {
        let pg = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-9", "--", &pg])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the split on `rpc` is installed; the journal's pid of member `name`.
async fn live_split_and_pid(s: &SidecarProc, state: &Path, name: &str) -> u32 {
    wait_for("the split installed", Duration::from_secs(30), || async {
        let r = bulwark_e2e::http()
            .get(s.admin_url("/split/rpc"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    wait_for(
        "the member's pid in the journal",
        Duration::from_secs(10),
        || async {
            let j: Value =
                serde_json::from_str(&std::fs::read_to_string(state.join("journal.json")).ok()?)
                    .ok()?;
            let ev = j["events"].as_array()?;
            let what = ev
                .iter()
                .filter_map(|e| e["what"].as_str())
                .find(|w| w.starts_with(&format!("{name} ")))?;
            let rest = what.split("pid Some(").nth(1)?;
            rest.split(')').next()?.parse().ok()
        },
    )
    .await
}

async fn split_status(s: &SidecarProc) -> u16 {
    bulwark_e2e::http()
        .get(s.admin_url("/split/rpc"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A plan for node 3 of `c` behind sidecar admin `admin`; `extra` replaces parts. Its members
/// take ten ports of their own (tests run in parallel on 127.0.0.1) and write pid files to
/// `DIR/pids`.
fn plan(dir: &Path, admin: &str, data: &Path, cand: &Path, body: &str) -> PathBuf {
    let p = dir.join("plan.toml");
    let first = bulwark_e2e::free_port_block("127.0.0.1", 10);
    let t = format!(
        "name = \"e2e\"\n\n[[target]]\nnode = \"node3\"\nadmin = \"{admin}\"\nlisteners = [\"rpc\"]\n\
         data = \"{}\"\n\n[candidate]\nbinary = \"{}\"\n\n{body}\n\n[members]\n\
         ports = \"{first}-{}\"\npid_dir = \"{}\"\n",
        data.display(),
        cand.display(),
        first + 9,
        dir.join("pids").display()
    );
    std::fs::write(&p, t).unwrap();
    p
}

const FAST: &str =
    "[baseline]\nkind = \"fresh\"\n\n[steps]\nweights = [10, 50]\nmin_time = \"1s\"\n\
    max_time = \"20s\"\nmin_requests = 50\ntick = \"500ms\"\n\n[slo]\nerror_rate = 0.001\n\
    p99_ratio = 100.0\n\n[test]\nalpha = 0.05\nbeta = 0.2\neffect = 2.0\n\n[inconclusive]\n\
    hold = \"5s\"\n\n[promotion]\nscope = \"one\"\nbake = \"0s\"\n\n[split]\nttl = \"3s\"\n\n\
    [load]\nlistener = \"rpc\"\nrate = 200\nmethod = \"POST\"\npaths = [\"/api/v0/version\"]\n";

/// A 3-node cluster and a sidecar whose listener `rpc` fronts node 3's RPC.
async fn setup() -> (Cluster, SidecarProc, SocketAddrs) {
    let c = Cluster::start(3, &[]).await;
    let listen = free_addr();
    let admin = free_addr();
    let body = format!(
        "[[listener]]\nname = \"rpc\"\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
        c.nodes[2].rpc
    );
    let s = SidecarProc::start_with_admin(c.dir.path(), "sc3", &body, admin);
    s.wait_ready().await;
    (c, s, SocketAddrs { admin, listen })
}

struct SocketAddrs {
    admin: std::net::SocketAddr,
    listen: std::net::SocketAddr,
}

#[test]
fn an_invalid_plan_exits_64_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        "127.0.0.1:1",
        Path::new("/x"),
        Path::new("/y"),
        "[baseline]\nkind = \"sideways\"\n",
    );
    for cmd in ["validate", "run"] {
        let o = canary(dir.path(), &[cmd, p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(64), "{}", text(&o));
        let t = text(&o);
        assert!(
            t.contains(&format!("{}:13: baseline.kind:", p.display())),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_candidate_binary_exits_5_with_nothing_left_running() {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        Path::new("/nonexistent/storage"),
        FAST,
    );
    let o = canary(dir.path(), &["run", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
    let splits = get_json(&s.admin_url("/split")).await;
    assert_eq!(
        splits["splits"].as_array().map(Vec::len),
        Some(0),
        "{splits}"
    );
    // Nothing joined: still three members.
    c.wait_members(3).await;
    assert!(!dir.path().join("controller.json").exists());
}

/// The rehearsal: 5 % of the candidate's requests aborted with 500 by its sidecar.
#[tokio::test(flavor = "multi_thread")]
async fn a_rehearsed_abort_build_is_rolled_back_and_journal_matches_the_sidecar() {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = bulwark_e2e::storage_bin();
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &bin,
        FAST,
    );
    let mut run = Running::start(
        dir.path(),
        &[
            "run",
            p.to_str().unwrap(),
            "--seed",
            "7",
            "--rehearse",
            "abort=500,percent=5",
        ],
    );
    let (code, t) = run.wait(Duration::from_secs(40)).await;
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("ROLLBACK"), "{t}");
    assert!(t.contains("split removed"), "{t}");
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("journal.json")).unwrap())
            .unwrap();
    assert_eq!(j["rehearsal"], "abort=500,percent=5");
    let v = &j["verdict"];
    let cand = v["candidate"]["requests"].as_u64().unwrap();
    assert!(cand > 0 && cand <= 1000, "{v}");
    // Journal counts + those admitted after the split was removed = the sidecar's counters.
    let metrics = s.metrics().await;
    let sidecar = metric_attempts(&metrics, "candidate");
    let after = v["admitted_after_split"].as_u64().unwrap();
    assert_eq!(cand + after, sidecar, "{v}");
    assert!(after <= 50, "{v}");
    let splits = get_json(&s.admin_url("/split")).await;
    assert_eq!(
        splits["splits"].as_array().map(Vec::len),
        Some(0),
        "{splits}"
    );
    // The candidate and baseline left: three members again.
    wait_for("members back to 3", Duration::from_secs(15), || async {
        let peers = c.nodes[0].peers().await;
        (peers
            .iter()
            .filter(|p| p["error"].as_str() == Some(""))
            .count()
            == 3)
            .then_some(())
    })
    .await;
    assert!(dir.path().join("report.html").exists());
}

/// Sum of `bulwark_split_attempts_total{subset="NAME"}` (process-cumulative).
fn metric_attempts(text: &str, subset: &str) -> u64 {
    let needle = format!("subset=\"{subset}\"");
    text.lines()
        .filter(|l| l.starts_with("bulwark_split_attempts_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_controllers_split_expires_within_its_ttl() {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &bulwark_e2e::storage_bin(),
        FAST,
    );
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "3"]);
    let cand = live_split_and_pid(&s, dir.path(), "candidate").await;
    let base = live_split_and_pid(&s, dir.path(), "baseline").await;
    assert!(alive(cand) && alive(base));
    // SIGKILL the controller alone (nothing reaches its members from the test).
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    let killed = std::time::Instant::now();
    assert_eq!(split_status(&s).await, 200);
    // ttl = 3s in FAST.
    wait_for("the split to expire", Duration::from_secs(6), || async {
        (split_status(&s).await == 404).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_millis(3500), "{took:?}");
    // The members outlive the split (their watchdogs wait out its TTL): nothing was routed to a
    // member that had already gone.
    assert!(
        alive(cand) && alive(base),
        "members stopped before the split expired"
    );
    let splits = get_json(&s.admin_url("/split")).await;
    assert_eq!(
        splits["splits"].as_array().map(Vec::len),
        Some(0),
        "{splits}"
    );
    // Then the members' watchdogs stop them: candidate and baseline get SIGTERM, leave the
    // membership, and their pid files go.
    members_leave(&c, dir.path(), &[cand, base], "SIGKILLed controller").await;
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// The member processes `pids` end, node 1 lists exactly the three nodes again (the members
/// left, not merely failed), and `DIR/pids` is empty.
async fn members_leave(c: &Cluster, dir: &Path, pids: &[u32], what: &str) {
    wait_for(
        &format!("members {pids:?} to end ({what})"),
        Duration::from_secs(15),
        || async { pids.iter().all(|&p| !alive(p)).then_some(()) },
    )
    .await;
    wait_for(
        &format!("membership back to the 3 nodes ({what})"),
        Duration::from_secs(20),
        || async {
            let peers = c.nodes[0].peers().await;
            let live = peers
                .iter()
                .filter(|p| p["error"].as_str() == Some(""))
                .count();
            (peers.len() == 3 && live == 3).then_some(())
        },
    )
    .await;
    wait_for(
        &format!("pid files removed ({what})"),
        Duration::from_secs(10),
        || async {
            let left = std::fs::read_dir(dir.join("pids")).map_or(0, |d| d.count());
            (left == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_killed_mid_step_is_a_critical_rollback_and_its_digest_is_refused_without_force(
) {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &bulwark_e2e::storage_bin(),
        FAST,
    );
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "5"]);
    let pid = live_split_and_pid(&s, dir.path(), "candidate").await;
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (code, t) = run.wait(Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{t}");
    assert!(t.to_lowercase().contains("critical"), "{t}");
    assert!(t.contains("split removed"), "{t}");
    assert_eq!(split_status(&s).await, 404, "{t}");

    // A real (not rehearsed) rollback: the digest is remembered ...
    let j = journal(dir.path());
    let digest = j["digests"]["candidate"].as_str().unwrap().to_string();
    let rb: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("rolled_back.json")).unwrap(),
    )
    .unwrap();
    assert!(rb.contains(&digest), "{rb:?}");
    // ... and a later run of the same build is refused (exit 5), saying why, nothing started.
    let runs_before = std::fs::read_dir(dir.path().join("runs")).unwrap().count();
    let o = canary(dir.path(), &["run", p.to_str().unwrap(), "--seed", "6"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(5), "{t}");
    assert!(t.contains("rolled back by an earlier run"), "{t}");
    assert!(t.contains(&digest) && t.contains("--force"), "{t}");
    assert_eq!(split_status(&s).await, 404, "{t}");
    assert!(!dir.path().join("controller.json").exists(), "{t}");
    let runs_after = std::fs::read_dir(dir.path().join("runs")).unwrap().count();
    assert_eq!(runs_before, runs_after, "no members started: {t}");

    // With --force it starts (split installed, candidate up); the operator aborts it (exit 3).
    std::fs::remove_file(dir.path().join("journal.json")).unwrap();
    let mut forced = Running::start(
        dir.path(),
        &["run", p.to_str().unwrap(), "--seed", "8", "--force"],
    );
    live_split_and_pid(&s, dir.path(), "candidate").await;
    wait_for("controller.json", Duration::from_secs(10), || async {
        dir.path().join("controller.json").exists().then_some(())
    })
    .await;
    let o = canary(dir.path(), &["abort"]);
    assert!(o.status.success(), "{}", text(&o));
    let (code, t) = forced.wait(Duration::from_secs(30)).await;
    assert_eq!(code, Some(3), "{t}");
    assert_eq!(split_status(&s).await, 404, "{t}");
}

fn journal(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("journal.json")).unwrap()).unwrap()
}

/// `canary status` until its tick line satisfies `f`; that line.
async fn status_line(dir: &Path, what: &str, f: impl Fn(&str) -> bool) -> String {
    wait_for(what, Duration::from_secs(30), || async {
        let o = canary(dir, &["status"]);
        if !o.status.success() {
            return None;
        }
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let line = out.lines().next()?.to_string();
        (line.starts_with("tick ") && f(&line)).then_some(line)
    })
    .await
}

/// The tick number of a tick line (`tick 12 +6s ...`).
fn tick_no(line: &str) -> u64 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_and_sigterm_roll_back_exit_4_and_leave_nothing_running() {
    let (c, s, a) = setup().await;
    // A controller that stays in its first step (min_time 60 s).
    let body = FAST
        .replace("min_time = \"1s\"", "min_time = \"60s\"")
        .replace("max_time = \"20s\"", "max_time = \"90s\"");
    for (sig, seed) in [("INT", "21"), ("TERM", "22")] {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(
            dir.path(),
            &a.admin.to_string(),
            &c.nodes[2].data,
            &bulwark_e2e::storage_bin(),
            &body,
        );
        let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", seed]);
        let cand = live_split_and_pid(&s, dir.path(), "candidate").await;
        let base = live_split_and_pid(&s, dir.path(), "baseline").await;
        status_line(dir.path(), "a first tick", |_| true).await;
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &run.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let (code, t) = run.wait(Duration::from_secs(30)).await;
        assert_eq!(code, Some(4), "SIG{sig}: {t}");
        assert!(t.contains(&format!("SIG{sig}: rolling back")), "{t}");
        assert!(t.contains("split removed"), "{t}");
        assert!(t.contains("interrupted (rolled back)"), "{t}");
        assert_eq!(split_status(&s).await, 404, "{t}");
        assert!(!dir.path().join("controller.json").exists(), "{t}");
        // An interruption is not the build's fault: its digest is not remembered.
        assert!(!dir.path().join("rolled_back.json").exists(), "{t}");
        members_leave(&c, dir.path(), &[cand, base], &format!("SIG{sig}")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_tick_and_an_operator_promote_passes_the_step() {
    let (c, _s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let cand = dir.path().join("storage-candidate");
    std::fs::copy(bulwark_e2e::storage_bin(), &cand).unwrap();
    // One step that would not pass by itself for a minute.
    let body = FAST
        .replace("weights = [10, 50]", "weights = [50]")
        .replace("error_rate = 0.001", "error_rate = 0.05")
        .replace("min_time = \"1s\"", "min_time = \"60s\"")
        .replace("max_time = \"20s\"", "max_time = \"90s\"");
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &cand,
        &body,
    );
    let restart = restart_script(dir.path(), c.nodes[2].process.pid().unwrap());
    with_restart(&p, &restart);
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "31"]);
    // `status` prints the current tick line: tick number, step, weight, the numbers.
    let first = status_line(dir.path(), "a tick in step 1/1", |l| {
        l.contains("step 1/1 w=50%") && l.contains("cand ") && l.contains("guard Λ=")
    })
    .await;
    let later = status_line(dir.path(), "a later tick", |l| tick_no(l) > tick_no(&first)).await;
    assert!(
        later.contains("continue (") && later.contains("time "),
        "{later}"
    );
    let o = canary(dir.path(), &["promote"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("promote"), "{}", text(&o));
    let (code, t) = run.wait(Duration::from_secs(50)).await;
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("operator: promote"), "{t}");
    assert!(t.contains("runs the candidate"), "{t}");
    let j = journal(dir.path());
    let actions = j["actions"].to_string();
    assert!(actions.contains("operator: promote"), "{actions}");
    assert_eq!(
        j["verdict"]["promoted_digest"], j["digests"]["candidate"],
        "{}",
        j["verdict"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_during_an_inconclusive_hold_sticks_past_the_old_deadline() {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    // 1 req/s against 500 minimum requests: inconclusive after 3 s, rolled back 4 s later.
    let body = FAST
        .replace("min_requests = 50", "min_requests = 500")
        .replace("max_time = \"20s\"", "max_time = \"3s\"")
        .replace("hold = \"5s\"", "hold = \"4s\"")
        .replace("rate = 200", "rate = 1");
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &bulwark_e2e::storage_bin(),
        &body,
    );
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "41"]);
    let held = status_line(dir.path(), "an inconclusive hold", |l| {
        l.contains("INCONCLUSIVE, holding")
    })
    .await;
    // The hold began at most this long ago: it would roll back within `hold` = 4 s of now.
    let seen = std::time::Instant::now();
    let o = canary(dir.path(), &["resume"]);
    assert!(o.status.success(), "{}", text(&o));
    // Past the old rollback time the controller still runs, holding (or testing) in step 1.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "rolled back at the old deadline despite the resume ({held}):\n{}",
        run.out()
    );
    let t = run.out();
    let resumed = t
        .lines()
        .find(|l| l.contains("operator: resume (hold ended"))
        .unwrap_or_else(|| panic!("no resume in:\n{t}"));
    assert!(resumed.contains("→ continue ("), "{resumed}");
    // It then holds again on the new deadline and, with nobody there, rolls back: exit 2.
    let (code, t) = run.wait(Duration::from_secs(20)).await;
    assert_eq!(code, Some(2), "{t}");
    assert!(seen.elapsed() >= Duration::from_secs(6), "{t}");
    let j = journal(dir.path());
    assert!(j["actions"].to_string().contains("operator: resume"), "{j}");
    assert_eq!(split_status(&s).await, 404, "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_a_second_holds_inconclusive_and_exits_2_with_the_counts() {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let body = FAST
        .replace("min_requests = 50", "min_requests = 500")
        .replace("max_time = \"20s\"", "max_time = \"3s\"")
        .replace("hold = \"5s\"", "hold = \"2s\"")
        .replace("rate = 200", "rate = 1");
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &bulwark_e2e::storage_bin(),
        &body,
    );
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "9"]);
    let (code, t) = run.wait(Duration::from_secs(40)).await;
    assert_eq!(code, Some(2), "{t}");
    let verdict = t
        .lines()
        .find(|l| l.contains("verdict:"))
        .unwrap_or_default();
    assert!(verdict.contains("inconclusive"), "{t}");
    assert!(
        verdict.contains("candidate ") && verdict.contains(" req "),
        "{t}"
    );
    assert!(t.contains("INCONCLUSIVE, holding"), "{t}");
    assert_eq!(split_status(&s).await, 404, "{t}");
}

/// A restart command the test controls (no deploy/): SIGTERM node 3 (`pid`, or the process a
/// previous restart started), wait for it to be gone, start `{binary}` on `{data}` in the
/// background (in the controller's process group, so the test's cleanup ends it), its pid in
/// `DIR/promoted.pid`.
fn restart_script(dir: &Path, pid: u32) -> String {
    restart_script_as(dir, "", pid)
}

/// [`restart_script`] with `tag` in its file names (`restart{tag}.sh`, `promoted{tag}.pid`).
fn restart_script_as(dir: &Path, tag: &str, pid: u32) -> String {
    let sh = dir.join(format!("restart{tag}.sh"));
    let d = dir.display();
    std::fs::write(
        &sh,
        format!(
            "#!/bin/sh\nP=$(cat {d}/promoted{tag}.pid 2>/dev/null || echo {pid})\nkill -TERM $P\n\
             while [ -e /proc/$P ] && [ \"$(cut -d' ' -f3 /proc/$P/stat)\" != Z ]; do sleep 0.1; done\n\
             nohup \"$1\" daemon --data \"$2\" >> {d}/promoted{tag}.log 2>&1 &\n\
             echo $! > {d}/promoted{tag}.pid\n"
        ),
    )
    .unwrap();
    format!("sh {} {{binary}} {{data}}", sh.display())
}

/// Gives the plan at `p` the `restart` command of its target.
fn with_restart(p: &Path, restart: &str) {
    let t = std::fs::read_to_string(p).unwrap();
    let t = t.replacen(
        "\n\n[candidate]",
        &format!("\nrestart = \"{restart}\"\n\n[candidate]"),
        1,
    );
    std::fs::write(p, t).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_build_is_promoted_and_node_3_runs_its_digest() {
    let (mut c, _s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    // An identical build, as a file of its own: the promoted node must run *this* file.
    let cand = dir.path().join("storage-candidate");
    std::fs::copy(bulwark_e2e::storage_bin(), &cand).unwrap();
    let body = FAST
        .replace("weights = [10, 50]", "weights = [50]")
        .replace("error_rate = 0.001", "error_rate = 0.05");
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &cand,
        &body,
    );
    let old = c.nodes[2].process.pid().unwrap();
    let restart = restart_script(dir.path(), old);
    with_restart(&p, &restart);
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "11"]);
    let (code, t) = run.wait(Duration::from_secs(50)).await;
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("runs the candidate"), "{t}");
    assert!(!c.nodes[2].running(), "the old node 3 still runs");
    let pid: u32 = std::fs::read_to_string(dir.path().join("promoted.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, cand, "{t}");
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("journal.json")).unwrap())
            .unwrap();
    let want = j["digests"]["candidate"].as_str().unwrap().to_string();
    assert_eq!(
        j["verdict"]["promoted_digest"],
        want.as_str(),
        "{}",
        j["verdict"]
    );
    let v: Value = bulwark_e2e::http()
        .post(c.nodes[2].rpc_url("version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["BinaryDigest"], want.as_str(), "{v}");
    // And node 3 serves behind its sidecar again (once the sidecar's breaker, tripped by the
    // restart, lets it through).
    let url = format!("http://{}/api/v0/version", a.listen);
    wait_for(
        "node 3 behind its sidecar",
        Duration::from_secs(20),
        || async {
            let r = bulwark_e2e::http().post(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_controller_on_the_same_node_is_refused_while_the_first_runs() {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    // A first controller that stays in its first step (min_time 60 s).
    let body = FAST
        .replace("min_time = \"1s\"", "min_time = \"60s\"")
        .replace("max_time = \"20s\"", "max_time = \"90s\"");
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &bulwark_e2e::storage_bin(),
        &body,
    );
    let mut first = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "11"]);
    let cand_pid = live_split_and_pid(&s, dir.path(), "candidate").await;
    let owner: String = wait_for("controller.json", Duration::from_secs(10), || async {
        let t = std::fs::read_to_string(dir.path().join("controller.json")).ok()?;
        let v: Value = serde_json::from_str(&t).ok()?;
        v["controller"].as_str().map(String::from)
    })
    .await;
    // Its members' pid files, as deploy/local reads them.
    let pidfile = dir.path().join("pids").join("node3-candidate.pid");
    let pid_text = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid_text.trim(), cand_pid.to_string());
    assert!(dir.path().join("pids").join("node3-baseline.pid").is_file());

    // A second controller (its own state dir, the same plan and node) is refused: exit 5, naming
    // the first, before it starts anything.
    let dir2 = tempfile::tempdir().unwrap();
    let mut second = Running::start(dir2.path(), &["run", p.to_str().unwrap(), "--seed", "12"]);
    let (code, t) = second.wait(Duration::from_secs(20)).await;
    assert_eq!(code, Some(5), "{t}");
    assert!(t.contains("another controller"), "{t}");
    assert!(t.contains(&owner), "the refusal names {owner}: {t}");
    assert!(
        !dir2.path().join("runs").exists(),
        "no members started: {t}"
    );
    // The first is untouched: still running, its split live, its pid files its own.
    assert!(first.child.try_wait().unwrap().is_none(), "{}", first.out());
    assert_eq!(split_status(&s).await, 200);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid_text);

    // The operator aborts the first: exit 3, split gone, its pid files removed.
    let o = canary(dir.path(), &["abort"]);
    assert!(o.status.success(), "{}", text(&o));
    let (code, t) = first.wait(Duration::from_secs(30)).await;
    assert_eq!(code, Some(3), "{t}");
    assert_eq!(split_status(&s).await, 404, "{t}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("pids"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "pid files left: {left:?}\n{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_during_the_bake_restores_the_node_to_the_stable_build() {
    let (c, _s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let cand = dir.path().join("storage-candidate");
    std::fs::copy(bulwark_e2e::storage_bin(), &cand).unwrap();
    // Promoted quickly, then a bake of a minute.
    let body = FAST
        .replace("weights = [10, 50]", "weights = [50]")
        .replace("error_rate = 0.001", "error_rate = 0.05")
        .replace("bake = \"0s\"", "bake = \"60s\"");
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &cand,
        &body,
    );
    let restart = restart_script(dir.path(), c.nodes[2].process.pid().unwrap());
    with_restart(&p, &restart);
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "51"]);
    let promoted: u32 = wait_for("the promotion", Duration::from_secs(40), || async {
        if !run.out().contains("runs the candidate") {
            return None;
        }
        std::fs::read_to_string(dir.path().join("promoted.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert_eq!(
        std::fs::read_link(format!("/proc/{promoted}/exe")).unwrap(),
        cand
    );
    status_line(dir.path(), "a bake tick", |l| l.contains("bake node#0")).await;
    let st = Command::new("kill")
        .args(["-TERM", &run.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (code, t) = run.wait(Duration::from_secs(50)).await;
    assert_eq!(code, Some(4), "{t}");
    assert!(t.contains("node3 back on the stable build"), "{t}");
    // Node 3 runs the stable binary again (a new process), not the candidate file.
    assert!(!alive(promoted), "{t}");
    let pid: u32 = std::fs::read_to_string(dir.path().join("promoted.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, promoted, "{t}");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, bulwark_e2e::storage_bin(), "{t}");
    let j = journal(dir.path());
    assert!(
        j["verdict"]["promoted_digest"].is_null(),
        "{}",
        j["verdict"]
    );
}

/// Candidate binaries that exist but do not start: a script that exits 1 at once, and a file
/// that is not executable. Each → exit 5 with a clear message, nothing left running.
#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_that_does_not_start_exits_5_with_nothing_left_running() {
    let (c, s, a) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("storage-exits-1");
    std::fs::write(&failing, "#!/bin/sh\necho 'broken build' >&2\nexit 1\n").unwrap();
    let not_exec = dir.path().join("storage-not-executable");
    std::fs::copy(bulwark_e2e::storage_bin(), &not_exec).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (cand, want) in [(&failing, "init failed"), (&not_exec, "ermission denied")] {
        let p = plan(
            dir.path(),
            &a.admin.to_string(),
            &c.nodes[2].data,
            cand,
            FAST,
        );
        let o = canary(dir.path(), &["run", p.to_str().unwrap()]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(5), "{t}");
        assert!(t.contains("candidate") && t.contains(want), "{t}");
        // No split, no pid files, no controller.json, still three members; the fresh baseline
        // started beside it is gone.
        let splits = get_json(&s.admin_url("/split")).await;
        assert_eq!(
            splits["splits"].as_array().map(Vec::len),
            Some(0),
            "{splits}"
        );
        let left = std::fs::read_dir(dir.path().join("pids")).map_or(0, |d| d.count());
        assert_eq!(left, 0, "pid files left: {t}");
        assert!(!dir.path().join("controller.json").exists(), "{t}");
        // The fresh baseline, started beside the candidate, joined and left again.
        wait_for(
            "membership back to the 3 nodes",
            Duration::from_secs(20),
            || async {
                let peers = c.nodes[0].peers().await;
                let live = peers
                    .iter()
                    .filter(|p| p["error"].as_str() == Some(""))
                    .count();
                (peers.len() == 3 && live == 3).then_some(())
            },
        )
        .await;
        let o = Command::new("pgrep")
            .args(["-f", &dir.path().join("runs").display().to_string()])
            .output()
            .unwrap();
        assert!(o.stdout.is_empty(), "member processes left: {}", text(&o));
    }
}

/// Sum of a Prometheus counter `NAME{...subset="S"...outcome="O"...}`.
fn metric_outcome(text: &str, name: &str, subset: &str, outcome: &str) -> u64 {
    let (s, o) = (
        format!("subset=\"{subset}\""),
        format!("outcome=\"{outcome}\""),
    );
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&s) && l.contains(&o))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// knative/serving#6549: the candidate answers 502 to some requests; the sidecar retries them
/// (its default retry policy: GETs, two retries) and may hide them from the final answers, but
/// every attempt counts against the candidate. The 502s are the split's fault on the candidate
/// subset, applied in the candidate's place to every attempt below the retry layer (what the
/// retry sees is a 502 from the candidate's slot, without `x-bulwark-error`, so it retries it).
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_502_still_counts_against_the_candidate() {
    let (c, s, a) = setup().await;
    let cfg = get_json(&s.admin_url("/config")).await;
    let dir = tempfile::tempdir().unwrap();
    let body = FAST
        .replace("method = \"POST\"", "method = \"GET\"")
        .replace("\"/api/v0/version\"", "\"/block/v1/health\"");
    let p = plan(
        dir.path(),
        &a.admin.to_string(),
        &c.nodes[2].data,
        &bulwark_e2e::storage_bin(),
        &body,
    );
    let mut run = Running::start(
        dir.path(),
        &[
            "run",
            p.to_str().unwrap(),
            "--seed",
            "61",
            "--rehearse",
            "abort=502,percent=5",
        ],
    );
    let (code, t) = run.wait(Duration::from_secs(40)).await;
    assert_eq!(code, Some(1), "{t}\n{cfg}");
    let v = &journal(dir.path())["verdict"];
    let errors = v["candidate"]["errors_5xx"].as_u64().unwrap();
    let after = v["admitted_after_split"].as_u64().unwrap();
    let m = s.metrics().await;
    let attempts_5xx = metric_outcome(
        &m,
        "bulwark_split_attempts_total",
        "candidate",
        "upstream_5xx",
    );
    let answered_5xx = metric_outcome(
        &m,
        "bulwark_split_requests_total",
        "candidate",
        "upstream_5xx",
    );
    let retries: u64 = m
        .lines()
        .filter(|l| {
            l.starts_with("bulwark_split_retries_total{") && l.contains("subset=\"candidate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    eprintln!(
        "journal 5xx {errors}, sidecar attempts 5xx {attempts_5xx}, answered 5xx {answered_5xx}, \
         retries {retries}, after {after}"
    );
    assert!(retries > 0, "no retries: {v}\n{m}");
    // The journal's errors are the sidecar's per-attempt 5xx (those admitted after the split
    // was removed aside), and more than the requests that finally answered 5xx.
    assert!(
        errors <= attempts_5xx && attempts_5xx <= errors + after,
        "journal {errors}, sidecar attempts {attempts_5xx}, after {after}: {v}"
    );
    assert!(
        errors > answered_5xx,
        "journal {errors} vs requests answered 5xx {answered_5xx}: {v}"
    );
    assert_eq!(split_status(&s).await, 404, "{t}");
}

/// `restart_script` for one of several nodes: its pid file is `DIR/promoted-NAME.pid`.
fn restart_script_named(dir: &Path, name: &str, pid: u32) -> String {
    restart_script_as(dir, &format!("-{name}"), pid)
}

/// `scope = "all"`: the steps run on node 3, then node 3 and node 2 (each behind a sidecar of its
/// own) are promoted one at a time, each baked; exit 0, both run the candidate file and report
/// its digest, and no split is left on either sidecar.
#[tokio::test(flavor = "multi_thread")]
async fn scope_all_promotes_every_target_one_at_a_time_with_a_bake() {
    let (c, s3, a3) = setup().await;
    let admin2 = free_addr();
    let s2 = SidecarProc::start_with_admin(
        c.dir.path(),
        "sc2",
        &format!(
            "[[listener]]\nname = \"rpc\"\nlisten = \"{}\"\nupstream = \"{}\"\n",
            free_addr(),
            c.nodes[1].rpc
        ),
        admin2,
    );
    s2.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let cand = dir.path().join("storage-candidate");
    std::fs::copy(bulwark_e2e::storage_bin(), &cand).unwrap();
    // A long TTL: a split left behind would still be there when the run ends.
    let body = FAST
        .replace("weights = [10, 50]", "weights = [50]")
        .replace("error_rate = 0.001", "error_rate = 0.05")
        .replace("scope = \"one\"", "scope = \"all\"")
        .replace("bake = \"0s\"", "bake = \"2s\"")
        .replace("ttl = \"3s\"", "ttl = \"30s\"");
    let p = plan(
        dir.path(),
        &a3.admin.to_string(),
        &c.nodes[2].data,
        &cand,
        &body,
    );
    let r3 = restart_script_named(dir.path(), "node3", c.nodes[2].process.pid().unwrap());
    let r2 = restart_script_named(dir.path(), "node2", c.nodes[1].process.pid().unwrap());
    let t = std::fs::read_to_string(&p).unwrap();
    let second = format!(
        "restart = \"{r3}\"\n\n[[target]]\nnode = \"node2\"\nadmin = \"{admin2}\"\n\
         listeners = [\"rpc\"]\ndata = \"{}\"\nrestart = \"{r2}\"\n\n[candidate]",
        c.nodes[1].data.display()
    );
    let t = t.replacen("\n[candidate]", &second, 1);
    std::fs::write(&p, t).unwrap();
    let mut run = Running::start(dir.path(), &["run", p.to_str().unwrap(), "--seed", "71"]);
    let (code, t) = run.wait(Duration::from_secs(55)).await;
    assert_eq!(code, Some(0), "{t}");
    let j = journal(dir.path());
    let want = j["digests"]["candidate"].as_str().unwrap().to_string();
    assert_eq!(j["verdict"]["promoted_digest"], want.as_str(), "{t}");
    for (i, name) in [(2, "node3"), (1, "node2")] {
        assert!(t.contains(&format!("{name} runs the candidate")), "{t}");
        let pid: u32 = std::fs::read_to_string(dir.path().join(format!("promoted-{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, cand, "{name}: {t}");
        let v: Value = bulwark_e2e::http()
            .post(c.nodes[i].rpc_url("version"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["BinaryDigest"], want.as_str(), "{name}: {v}");
    }
    // Node 3 was promoted and baked before node 2 (one at a time).
    let n3 = t.find("node3 runs the candidate").unwrap();
    let n2 = t.find("node2 runs the candidate").unwrap();
    assert!(n3 < n2, "{t}");
    for s in [&s3, &s2] {
        let splits = get_json(&s.admin_url("/split")).await;
        assert_eq!(
            splits["splits"].as_array().map(Vec::len),
            Some(0),
            "{splits}\n{t}"
        );
    }
}
