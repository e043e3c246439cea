//! Actions: what the method does to the cluster, and how each thing it does is undone.
//!
//! Everything injected is written into the [`Ledger`] before the request that injects it returns to
//! the method, with a TTL on the sidecar's side (faults, toxics, outages) or a detached watchdog
//! (a stopped process is continued), so that a `chaos` that dies — even by SIGKILL — leaves nothing
//! behind once the TTLs pass. The run removes things explicitly: after an action's `duration`, and
//! in the rollbacks.

use crate::model::*;
use crate::probe::{http_call, run_command, run_probe, truncate};
use crate::prom::Sampler;
use rand::rngs::StdRng;
use serde_json::{json, Value};
use sidecar::admin::api::{validate_toxic_create, FaultSpec, OutageSpec};
use sidecar::admin::client::{AdminClient, ClientError, ToxiproxyClient};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A fault spec as the sidecar reads it, minus the `id` and `ttl` the run adds.
pub fn check_fault(spec: &Value) -> Result<(), String> {
    let Some(m) = spec.as_object() else {
        return Err("a fault is a table".into());
    };
    for k in ["id", "ttl"] {
        if m.contains_key(k) {
            return Err(format!(
                "`{k}` is set by chaos (a unique id per run, a TTL from runtime.max_duration)"
            ));
        }
    }
    let mut full = spec.clone();
    full["id"] = json!("chaos-validate");
    full["ttl"] = json!(60_000);
    let parsed: FaultSpec = serde_json::from_value(full).map_err(|e| e.to_string())?;
    parsed.validate()
}

/// A toxic as the Toxiproxy-compatible API reads it, minus the `ttl_ms` the run adds.
pub fn check_toxic(toxic: &Value) -> Result<(), String> {
    if toxic.get("ttl_ms").is_some() {
        return Err("`ttl_ms` is set by chaos from runtime.max_duration".into());
    }
    validate_toxic_create(toxic)
}

/// An admin call's failure as `chaos` reports it: a refused call shows the status and (the start
/// of) the server's answer as sent.
fn call_error(e: ClientError) -> String {
    match e {
        ClientError::Status {
            method,
            url,
            status,
            body,
            ..
        } => format!("{method} {url}: {status} {}", truncate(body.trim(), 300)),
        other => other.to_string(),
    }
}

/// A removal that finds the thing already gone (expired by its TTL) has done its job.
fn gone_is_done(r: Result<(), ClientError>) -> Result<(), String> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        r => r.map_err(call_error),
    }
}

/// One thing the run has put into the cluster and must take out again.
#[derive(Debug)]
pub enum Injected {
    Fault {
        admin: String,
        id: String,
    },
    Toxic {
        api: String,
        proxy: String,
        name: String,
    },
    Outage {
        admin: String,
        id: String,
    },
    /// A SIGSTOPped process and the watchdog that continues it if `chaos` dies.
    Stopped {
        pid: u32,
        watchdog: Option<std::process::Child>,
    },
}

impl Injected {
    fn describe(&self) -> String {
        match self {
            Injected::Fault { admin, id } => format!("fault {id} on {admin}"),
            Injected::Toxic { api, proxy, name } => format!("toxic {name} on {api} proxy {proxy}"),
            Injected::Outage { admin, id } => format!("outage {id} on {admin}"),
            Injected::Stopped { pid, .. } => format!("stopped process {pid}"),
        }
    }
}

/// When a fault was in force, for the report's shading.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultWindow {
    pub name: String,
    pub start_s: f64,
    pub end_s: Option<f64>,
}

struct Entry {
    key: u64,
    what: Injected,
    window: usize,
}

#[derive(Default)]
pub struct Ledger {
    entries: Vec<Entry>,
    pub windows: Vec<FaultWindow>,
}

/// Everything a run shares between the method, the background actions and the rollbacks.
pub struct Ctx {
    pub http: reqwest::Client,
    pub exp: Arc<Experiment>,
    /// Part of every fault id and toxic name, so a run only ever removes its own.
    pub run_id: String,
    pub t0: Instant,
    pub deadline: Instant,
    pub rng: Mutex<StdRng>,
    pub ledger: Mutex<Ledger>,
    pub sampler: Arc<Sampler>,
    seq: AtomicU64,
}

/// What an action did.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub output: Value,
    pub error: Option<String>,
    pub tolerance_met: Option<bool>,
    /// Ledger keys this action added (removed after its duration).
    pub keys: Vec<u64>,
}

impl Outcome {
    fn ok(output: Value, keys: Vec<u64>) -> Self {
        Self {
            ok: true,
            output,
            error: None,
            tolerance_met: None,
            keys,
        }
    }
    fn failed(output: Value, error: String, keys: Vec<u64>) -> Self {
        Self {
            ok: false,
            output,
            error: Some(error),
            tolerance_met: None,
            keys,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state of a process from `/proc` (a zombie counts as gone).
pub fn proc_state(pid: u32) -> ProcState {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => match s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
        {
            Some('T') | Some('t') => ProcState::Stopped,
            Some('Z') | Some('X') | None => ProcState::Gone,
            Some(_) => ProcState::Running,
        },
        Err(_) => ProcState::Gone,
    }
}

async fn send_signal(pid: u32, sig: Signal) -> Result<(), String> {
    let out = tokio::process::Command::new("kill")
        .arg(sig.kill_arg())
        .arg(pid.to_string())
        .output()
        .await
        .map_err(|e| format!("running kill: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kill {} {pid}: {}",
            sig.kill_arg(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A detached `sh` (own process group, so a terminal's Ctrl-C does not reach it) that continues
/// `pid` after `ttl`: the TTL of a SIGSTOP.
fn spawn_watchdog(pid: u32, ttl: Duration) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sleep {}; kill -CONT {pid}", ttl.as_secs().max(1)))
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

impl Ctx {
    pub fn new(
        exp: Arc<Experiment>,
        http: reqwest::Client,
        run_id: String,
        rng: StdRng,
        sampler: Arc<Sampler>,
        t0: Instant,
    ) -> Self {
        let deadline = t0 + exp.runtime.max_duration;
        Self {
            http,
            exp,
            run_id,
            t0,
            deadline,
            rng: Mutex::new(rng),
            ledger: Mutex::new(Ledger::default()),
            sampler,
            seq: AtomicU64::new(0),
        }
    }

    pub fn now_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// TTL of something injected now that should last `duration` (or to the end of the run): never
    /// past the hard maximum, plus the margin.
    pub fn ttl(&self, duration: Option<Duration>) -> Duration {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let d = duration.map_or(remaining, |d| d.min(remaining));
        (d + self.exp.runtime.ttl_margin).max(Duration::from_secs(1))
    }

    fn host(&self, name: &str) -> &Host {
        // Validation guarantees every referenced host exists.
        &self.exp.hosts[name]
    }

    /// The hosts an action applies to, drawing `pick` of them with the seeded RNG.
    fn pick(&self, t: &Targets) -> Vec<String> {
        match t.pick {
            Some(k) if k < t.hosts.len() => {
                let mut rng = lock(&self.rng);
                let idx = rand::seq::index::sample(&mut *rng, t.hosts.len(), k);
                idx.iter().map(|i| t.hosts[i].clone()).collect()
            }
            _ => t.hosts.clone(),
        }
    }

    fn open_window(&self, name: &str) -> usize {
        let mut l = lock(&self.ledger);
        l.windows.push(FaultWindow {
            name: name.to_string(),
            start_s: self.now_s(),
            end_s: None,
        });
        l.windows.len() - 1
    }

    fn record(&self, what: Injected, window: usize) -> u64 {
        let key = self.next();
        lock(&self.ledger).entries.push(Entry { key, what, window });
        key
    }

    /// Things still in force, for the journal and for `chaos` messages.
    pub fn outstanding(&self) -> Vec<String> {
        lock(&self.ledger)
            .entries
            .iter()
            .map(|e| e.what.describe())
            .collect()
    }

    pub fn windows(&self) -> Vec<FaultWindow> {
        lock(&self.ledger).windows.clone()
    }

    /// Removes the given ledger entries (all when `keys` is None), newest first. Returns a line per
    /// removal and the errors.
    pub async fn undo(&self, keys: Option<&[u64]>) -> (Vec<String>, Vec<String>) {
        let taken: Vec<Entry> = {
            let mut l = lock(&self.ledger);
            let (take, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut l.entries)
                .into_iter()
                .partition(|e| keys.is_none_or(|k| k.contains(&e.key)));
            l.entries = keep;
            take
        };
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for e in taken.into_iter().rev() {
            let desc = e.what.describe();
            let window = e.window;
            match self.remove(e.what).await {
                Ok(()) => done.push(format!("removed {desc}")),
                Err(err) => errors.push(format!("removing {desc}: {err}")),
            }
            let mut l = lock(&self.ledger);
            let still = l.entries.iter().any(|x| x.window == window);
            let now = self.now_s();
            if let Some(w) = l.windows.get_mut(window) {
                if !still && w.end_s.is_none() {
                    w.end_s = Some(now);
                }
            }
        }
        (done, errors)
    }

    /// The admin API of a sidecar (`base` from the experiment's hosts), on the run's HTTP client.
    fn admin(&self, base: &str) -> AdminClient {
        AdminClient::with_http(base, self.http.clone())
    }

    fn toxiproxy(&self, base: &str) -> ToxiproxyClient {
        ToxiproxyClient::with_http(base, self.http.clone())
    }

    async fn remove(&self, what: Injected) -> Result<(), String> {
        match what {
            Injected::Fault { admin, id } => {
                gone_is_done(self.admin(&admin).delete_fault(&id).await)
            }
            Injected::Toxic { api, proxy, name } => {
                gone_is_done(self.toxiproxy(&api).delete_toxic(&proxy, &name).await)
            }
            Injected::Outage { admin, id } => {
                gone_is_done(self.admin(&admin).delete_outage(&id).await)
            }
            Injected::Stopped { pid, watchdog } => {
                let r = if proc_state(pid) == ProcState::Gone {
                    Ok(())
                } else {
                    send_signal(pid, Signal::Continue).await
                };
                if let Some(mut w) = watchdog {
                    // Our own child, in its own process group: end the group (sh and its sleep).
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", "--", &format!("-{}", w.id())])
                        .status();
                    let _ = w.wait();
                }
                r
            }
        }
    }

    async fn inject_fault(
        &self,
        host: &str,
        spec: &Value,
        ttl: Duration,
        window: usize,
        keys: &mut Vec<u64>,
    ) -> Result<Value, String> {
        let admin = self.host(host).admin.clone().unwrap_or_default();
        let id = format!("{}-{}", self.run_id, self.next());
        let mut body = spec.clone();
        body["id"] = json!(id);
        body["ttl"] = json!(ttl.as_millis() as u64);
        let spec: FaultSpec =
            serde_json::from_value(body).map_err(|e| format!("fault spec: {e}"))?;
        self.admin(&admin)
            .add_fault(&spec)
            .await
            .map_err(call_error)?;
        keys.push(self.record(
            Injected::Fault {
                admin,
                id: id.clone(),
            },
            window,
        ));
        Ok(json!({"host": host, "id": id, "ttl_ms": ttl.as_millis() as u64}))
    }

    fn resolve_pid(&self, host: &str, process: Proc) -> Result<u32, String> {
        let h = self.host(host);
        let src = match process {
            Proc::Node => h.node_pid.as_ref(),
            Proc::Sidecar => h.sidecar_pid.as_ref(),
        };
        src.ok_or_else(|| format!("host {host} has no pid"))?
            .resolve()
    }

    /// Carries out one action (not its pauses, not its duration).
    pub async fn perform(&self, act: &Activity) -> Outcome {
        match &act.kind {
            ActionKind::Fault { targets, spec } => self.fault_action(act, targets, spec).await,
            ActionKind::Toxic {
                targets,
                proxy,
                toxic,
            } => self.toxic_action(act, targets, proxy, toxic).await,
            ActionKind::Outage {
                targets,
                drain,
                reason,
            } => self.outage_action(act, targets, drain, reason).await,
            ActionKind::Signal {
                targets,
                process,
                pid,
                signal,
            } => self.signal_action(act, targets, process, pid, signal).await,
            ActionKind::Partition {
                isolate,
                from,
                listener,
            } => self.partition_action(act, isolate, from, listener).await,
            ActionKind::Http { request, tolerance } => self.http_action(request, tolerance).await,
            ActionKind::Command { command, tolerance } => {
                self.command_action(command, tolerance).await
            }
            ActionKind::Probe { probe } => {
                let r = run_probe(probe, self).await;
                Outcome::ok(serde_json::to_value(&r).unwrap_or(Value::Null), Vec::new())
            }
            ActionKind::Pause => Outcome::ok(Value::Null, Vec::new()),
        }
    }

    async fn fault_action(&self, act: &Activity, targets: &Targets, spec: &Value) -> Outcome {
        let mut keys = Vec::new();
        let ttl = self.ttl(act.duration);
        let window = self.open_window(&act.name);
        let mut out = Vec::new();
        for h in self.pick(targets) {
            match self.inject_fault(&h, spec, ttl, window, &mut keys).await {
                Ok(v) => out.push(v),
                Err(e) => return Outcome::failed(json!(out), e, keys),
            }
        }
        Outcome::ok(json!({"injected": out}), keys)
    }

    async fn toxic_action(
        &self,
        act: &Activity,
        targets: &Targets,
        proxy: &str,
        toxic: &Value,
    ) -> Outcome {
        let mut keys = Vec::new();
        let ttl = self.ttl(act.duration);
        let window = self.open_window(&act.name);
        let mut out = Vec::new();
        for h in self.pick(targets) {
            let api = self.host(&h).toxiproxy.clone().unwrap_or_default();
            let name = format!("{}-{}", self.run_id, self.next());
            let mut body = toxic.clone();
            if body.get("name").is_none() {
                body["name"] = json!(name);
            }
            let name = body["name"].as_str().unwrap_or_default().to_string();
            body["ttl_ms"] = json!(ttl.as_millis() as u64);
            match self.toxiproxy(&api).create_toxic(proxy, &body).await {
                Ok(_) => {
                    keys.push(self.record(
                        Injected::Toxic {
                            api,
                            proxy: proxy.to_string(),
                            name: name.clone(),
                        },
                        window,
                    ));
                    out.push(json!({"host": h, "proxy": proxy, "toxic": name, "ttl_ms": ttl.as_millis() as u64}));
                }
                Err(e) => return Outcome::failed(json!(out), call_error(e), keys),
            }
        }
        Outcome::ok(json!({"injected": out}), keys)
    }

    async fn outage_action(
        &self,
        act: &Activity,
        targets: &Targets,
        drain: &Duration,
        reason: &str,
    ) -> Outcome {
        let mut keys = Vec::new();
        let d = act.duration.unwrap_or_default();
        let window = self.open_window(&act.name);
        let mut out = Vec::new();
        for h in self.pick(targets) {
            let admin = self.host(&h).admin.clone().unwrap_or_default();
            let spec = OutageSpec {
                duration: d,
                drain: Some(*drain),
                reason: format!("chaos: {reason} ({})", self.run_id),
                ..Default::default()
            };
            match self.admin(&admin).add_outage(&spec).await {
                Ok(o) => {
                    let id = o.outage.id.clone();
                    let v = serde_json::to_value(&o).unwrap_or(Value::Null);
                    keys.push(self.record(
                        Injected::Outage {
                            admin,
                            id: id.clone(),
                        },
                        window,
                    ));
                    out.push(json!({"host": h, "outage": v}));
                }
                Err(e) if e.is_not_found() => {
                    return Outcome::failed(
                        json!(out),
                        format!(
                            "{admin} has no /outages: this sidecar cannot take planned outages"
                        ),
                        keys,
                    )
                }
                Err(e) => return Outcome::failed(json!(out), call_error(e), keys),
            }
        }
        Outcome::ok(json!({"outages": out}), keys)
    }

    async fn signal_action(
        &self,
        act: &Activity,
        targets: &Option<Targets>,
        process: &Proc,
        pid: &Option<PidSource>,
        signal: &Signal,
    ) -> Outcome {
        let mut keys = Vec::new();
        let pids: Vec<(String, Result<u32, String>)> = match (targets, pid) {
            (Some(t), _) => self
                .pick(t)
                .into_iter()
                .map(|h| {
                    let p = self.resolve_pid(&h, *process);
                    (h, p)
                })
                .collect(),
            (None, Some(src)) => vec![("pid".to_string(), src.resolve())],
            (None, None) => vec![],
        };
        let window = (*signal != Signal::Continue).then(|| self.open_window(&act.name));
        let mut out = Vec::new();
        for (h, p) in pids {
            let pid = match p {
                Ok(p) => p,
                Err(e) => return Outcome::failed(json!(out), e, keys),
            };
            if *signal == Signal::Stop {
                // The watchdog first: from the moment the process stops, something will
                // continue it.
                let watchdog = spawn_watchdog(pid, self.ttl(act.duration));
                if let Err(e) = send_signal(pid, *signal).await {
                    if let Some(mut w) = watchdog {
                        let _ = w.kill();
                        let _ = w.wait();
                    }
                    return Outcome::failed(json!(out), e, keys);
                }
                keys.push(self.record(
                    Injected::Stopped { pid, watchdog },
                    window.unwrap_or_default(),
                ));
            } else if let Err(e) = send_signal(pid, *signal).await {
                return Outcome::failed(json!(out), e, keys);
            }
            out.push(json!({"target": h, "pid": pid, "signal": signal}));
        }
        let mut o = Outcome::ok(json!({"signalled": out}), keys);
        if matches!(signal, Signal::Kill | Signal::Term | Signal::Int) {
            o.output["note"] = json!("a killed process is not restarted by chaos: bring it back with a rollback (e.g. a command)");
        }
        o
    }

    async fn partition_action(
        &self,
        act: &Activity,
        isolate: &[String],
        from: &[String],
        listener: &Option<String>,
    ) -> Outcome {
        let mut keys = Vec::new();
        let ttl = self.ttl(act.duration);
        let window = self.open_window(&act.name);
        let mut out = Vec::new();
        // Each side's outbound requests to the other side's peer address are blackholed.
        let mut pairs = Vec::new();
        for a in isolate {
            for b in from {
                pairs.push((a.clone(), b.clone()));
                pairs.push((b.clone(), a.clone()));
            }
        }
        for (src, dst) in pairs {
            let mut spec = json!({
                "kind": {"type": "blackhole"},
                "upstream": self.host(&dst).peer.clone().unwrap_or_default(),
            });
            if let Some(l) = listener {
                spec["listener"] = json!(l);
            }
            match self.inject_fault(&src, &spec, ttl, window, &mut keys).await {
                Ok(mut v) => {
                    v["to"] = json!(dst);
                    out.push(v);
                }
                Err(e) => return Outcome::failed(json!(out), e, keys),
            }
        }
        Outcome::ok(
            json!({"mechanism": "sidecar blackhole faults matched by upstream", "faults": out}),
            keys,
        )
    }

    async fn http_action(&self, request: &HttpRequest, tolerance: &Option<Tolerance>) -> Outcome {
        let keys = Vec::new();
        match http_call(&self.http, request).await {
            Ok((status, body, ms)) => {
                let out =
                    json!({"status": status, "body": truncate(&body, 2000), "elapsed_ms": ms});
                let t = tolerance.as_ref();
                let met = t.map(|t| {
                    t.status_ok(status as i64)
                        && t.regex.as_ref().is_none_or(|r| r.is_match(&body))
                        && t.max_ms.is_none_or(|m| ms <= m)
                });
                let mut o = if met == Some(false) {
                    Outcome::failed(out, "the response is outside the tolerance".into(), keys)
                } else {
                    Outcome::ok(out, keys)
                };
                o.tolerance_met = met;
                o
            }
            Err(e) => Outcome::failed(Value::Null, e, keys),
        }
    }

    async fn command_action(&self, command: &Command, tolerance: &Option<Tolerance>) -> Outcome {
        let keys = Vec::new();
        match run_command(command).await {
            Ok((code, stdout, stderr)) => {
                let out = json!({"status": code, "stdout": truncate(&stdout, 2000), "stderr": truncate(&stderr, 2000)});
                let met = match tolerance {
                    Some(t) => {
                        t.status_ok(code as i64)
                            && t.regex.as_ref().is_none_or(|r| r.is_match(&stdout))
                    }
                    None => code == 0,
                };
                let mut o = if met {
                    Outcome::ok(out, keys)
                } else {
                    Outcome::failed(out, format!("exit status {code}"), keys)
                };
                o.tolerance_met = tolerance.as_ref().map(|_| met);
                o
            }
            Err(e) => Outcome::failed(Value::Null, e, keys),
        }
    }

    /// What `--dry-run` prints for an action: the requests it would send.
    pub fn describe(&self, act: &Activity) -> String {
        let hosts = |t: &Targets| match t.pick {
            Some(k) => format!("{k} of {:?} (seeded)", t.hosts),
            None => format!("{:?}", t.hosts),
        };
        let ttl = humantime::format_duration(self.ttl(act.duration));
        match &act.kind {
            ActionKind::Fault { targets, spec } => {
                format!("POST /faults {spec} on {} (ttl {ttl})", hosts(targets))
            }
            ActionKind::Toxic {
                targets,
                proxy,
                toxic,
            } => format!(
                "POST /proxies/{proxy}/toxics {toxic} on {} (ttl {ttl})",
                hosts(targets)
            ),
            ActionKind::Outage { targets, drain, .. } => format!(
                "POST /outages duration {} drain {} on {}",
                humantime::format_duration(act.duration.unwrap_or_default()),
                humantime::format_duration(*drain),
                hosts(targets)
            ),
            ActionKind::Signal {
                targets,
                process,
                pid,
                signal,
            } => match (targets, pid) {
                (Some(t), _) => format!(
                    "signal {signal:?} to the {process:?} process of {}",
                    hosts(t)
                ),
                (None, p) => format!("signal {signal:?} to {p:?}"),
            },
            ActionKind::Partition { isolate, from, .. } => {
                format!("blackhole traffic between {isolate:?} and {from:?} (ttl {ttl})")
            }
            ActionKind::Http { request, .. } => format!("{} {}", request.method, request.url),
            ActionKind::Command { command, .. } => {
                format!("run {} {:?}", command.path, command.args)
            }
            ActionKind::Probe { probe } => format!("probe {}", probe.name),
            ActionKind::Pause => "pause".into(),
        }
    }
}

/// Output shape of a process probe, shared with the journal.
pub fn state_name(s: ProcState) -> &'static str {
    match s {
        ProcState::Running => "running",
        ProcState::Stopped => "stopped",
        ProcState::Gone => "gone",
    }
}

/// Wall-clock of a run-relative offset.
pub fn wall(t0_wall: SystemTime, offset_s: f64) -> String {
    rfc3339(t0_wall + Duration::from_secs_f64(offset_s.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_and_toxic_checks_use_the_sidecars_own_rules() {
        assert!(check_fault(&json!({"kind": {"type": "abort", "status": 503}})).is_ok());
        let e = check_fault(&json!({"kind": {"type": "abort", "status": 200}})).unwrap_err();
        assert!(e.contains("between 400 and 599"), "{e}");
        let e = check_fault(&json!({"kind": {"type": "abort", "status": 503}, "ttl": "1m"}))
            .unwrap_err();
        assert!(e.contains("set by chaos"), "{e}");
        assert!(check_toxic(&json!({"type": "latency", "attributes": {"latency": 100}})).is_ok());
        assert!(check_toxic(&json!({"type": "zap"})).is_err());
    }

    #[test]
    fn process_states_come_from_proc() {
        assert_eq!(proc_state(std::process::id()), ProcState::Running);
        assert_eq!(proc_state(u32::MAX - 1), ProcState::Gone);
    }
}
