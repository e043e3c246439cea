//! Probes: HTTP requests, sidecar metrics over a window, process states and commands, each judged
//! against its tolerance. A probe that cannot be carried out (connection refused, no data) does
//! not meet its tolerance: an unknown state is never taken for a steady one.

use crate::action::{proc_state, state_name, Ctx};
use crate::model::*;
use serde::Serialize;
use serde_json::{json, Value};

/// At most `n` bytes of `s` (on a char boundary), marked when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Sends `r`; returns status, body and elapsed milliseconds.
pub async fn http_call(
    http: &reqwest::Client,
    r: &HttpRequest,
) -> Result<(u16, String, f64), String> {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = http.request(method, &r.url).timeout(r.timeout);
    for (k, v) in &r.headers {
        req = req.header(k, v);
    }
    if let Some(b) = &r.body {
        req = req.body(b.clone());
    }
    let start = std::time::Instant::now();
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{} {}: {}", r.method, r.url, error_chain(&e)))?;
    let status = resp.status().as_u16();
    let body = match tokio::time::timeout(r.timeout, resp.text()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Err(format!(
                "{} {}: reading the body: {}",
                r.method,
                r.url,
                error_chain(&e)
            ))
        }
        Err(_) => {
            return Err(format!(
                "{} {}: reading the body timed out",
                r.method, r.url
            ))
        }
    };
    Ok((status, body, start.elapsed().as_secs_f64() * 1000.0))
}

/// reqwest's Display stops at "error sending request"; the cause is what an operator needs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    let mut n = 0;
    while let Some(c) = cur {
        if n >= 4 {
            break;
        }
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
        n += 1;
    }
    s
}

/// Runs a command without a shell; returns exit code (-1 when killed by a signal), stdout, stderr.
pub async fn run_command(c: &Command) -> Result<(i32, String, String), String> {
    let child = tokio::process::Command::new(&c.path)
        .args(&c.args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(c.timeout, child).await {
        Ok(Ok(o)) => Ok((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )),
        Ok(Err(e)) => Err(format!("running {}: {e}", c.path)),
        Err(_) => Err(format!(
            "{} did not finish within {}",
            c.path,
            humantime::format_duration(c.timeout)
        )),
    }
}

/// One probe's result, as the journal records it.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub tolerance_met: bool,
    /// Short form for progress lines and the report ("0.0021", "200 in 3 ms", "running").
    pub value: String,
    pub tolerance: String,
    pub output: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at_s: f64,
    pub duration_ms: f64,
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

pub async fn run_probe(p: &Probe, ctx: &Ctx) -> ProbeResult {
    let at_s = ctx.now_s();
    let start = std::time::Instant::now();
    let t = &p.tolerance;
    let (ok, value, output, error) = match &p.kind {
        ProbeKind::Http(r) => match http_call(&ctx.http, r).await {
            Ok((status, body, ms)) => {
                let ok = t.status_ok(status as i64)
                    && t.regex.as_ref().is_none_or(|re| re.is_match(&body))
                    && t.max_ms.is_none_or(|m| ms <= m);
                (
                    ok,
                    format!("{status} in {ms:.0} ms"),
                    json!({"status": status, "elapsed_ms": ms, "body": truncate(&body, 500)}),
                    None,
                )
            }
            Err(e) => (false, "no answer".to_string(), Value::Null, Some(e)),
        },
        ProbeKind::Metric(q) => {
            let r = ctx.sampler.query(q);
            let out = serde_json::to_value(&r).unwrap_or(Value::Null);
            match r.value {
                Some(v) => {
                    let shown = match q.stat {
                        Stat::Latency { .. } => format!("{} ms", fmt_num(v)),
                        Stat::RequestRate => format!("{}/s", fmt_num(v)),
                        _ => fmt_num(v),
                    };
                    (t.value_ok(v), shown, out, None)
                }
                None => (false, "no data".to_string(), out, r.no_data.clone()),
            }
        }
        ProbeKind::Process { target } => {
            let pid = match target {
                ProcTarget::Direct(src) => src.resolve(),
                ProcTarget::Host { host, process } => {
                    let h = &ctx.exp.hosts[host];
                    let src = match process {
                        Proc::Node => h.node_pid.as_ref(),
                        Proc::Sidecar => h.sidecar_pid.as_ref(),
                    };
                    src.ok_or_else(|| format!("host {host} has no pid"))
                        .and_then(|s| s.resolve())
                }
            };
            match pid {
                Ok(pid) => {
                    let st = proc_state(pid);
                    let ok = t.state.as_ref().is_none_or(|s| s.contains(&st));
                    (
                        ok,
                        state_name(st).to_string(),
                        json!({"pid": pid, "state": state_name(st)}),
                        None,
                    )
                }
                // A pid file that is gone means the process is gone.
                Err(e) => {
                    let ok = t
                        .state
                        .as_ref()
                        .is_some_and(|s| s.contains(&ProcState::Gone));
                    (ok, "gone".into(), json!({"state": "gone"}), Some(e))
                }
            }
        }
        ProbeKind::Command(c) => match run_command(c).await {
            Ok((code, stdout, stderr)) => {
                let ok = t.status_ok(code as i64)
                    && t.regex.as_ref().is_none_or(|re| re.is_match(&stdout));
                (
                    ok,
                    format!("exit {code}"),
                    json!({"status": code, "stdout": truncate(&stdout, 500), "stderr": truncate(&stderr, 500)}),
                    None,
                )
            }
            Err(e) => (false, "did not run".into(), Value::Null, Some(e)),
        },
    };
    ProbeResult {
        name: p.name.clone(),
        type_: p.kind.type_name(),
        tolerance_met: ok,
        value,
        tolerance: t.describe(),
        output,
        error,
        at_s,
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Runs probes concurrently.
pub async fn run_all(probes: &[Probe], ctx: &Ctx) -> Vec<ProbeResult> {
    futures::future::join_all(probes.iter().map(|p| run_probe(p, ctx))).await
}
