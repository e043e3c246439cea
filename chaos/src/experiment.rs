//! The TOML experiment format (`schema = "chaos/v1"`, see docs/chaos.md) and its validation.
//!
//! Every table is read into a flat struct whose fields carry their source spans, so that both
//! toml's own errors (unknown key, wrong type) and the semantic checks here (a duration that does
//! not parse, a host that does not exist, a fault the sidecar would refuse) name the line and the
//! field. All problems are collected, not just the first; nothing is run unless there are none.

use crate::model::*;
use crate::schedule;
use crate::vars::{line_of, neutralized, substitute_toml};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

type S<T> = Spanned<T>;

/// The only schema this version reads.
pub const SCHEMA: &str = "chaos/v1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    schema: Option<S<String>>,
    title: S<String>,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // read before substitution, see `load_toml`
    vars: toml::Table,
    runtime: Option<S<RawRuntime>>,
    schedule: Option<S<RawSchedule>>,
    #[serde(default)]
    hosts: BTreeMap<String, S<RawHost>>,
    #[serde(default)]
    steady_state: Vec<S<RawProbe>>,
    #[serde(default)]
    load: Vec<S<RawLoad>>,
    #[serde(default)]
    method: Vec<S<RawActivity>>,
    #[serde(default)]
    rollback: Vec<S<RawActivity>>,
    #[serde(default)]
    abort: Vec<S<RawProbe>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    seed: Option<S<i64>>,
    hypothesis: Option<S<String>>,
    hypothesis_interval: Option<S<String>>,
    rollbacks: Option<S<String>>,
    max_duration: Option<S<String>>,
    ttl_margin: Option<S<String>>,
    sample_interval: Option<S<String>>,
    settle: Option<S<String>>,
    on_action_error: Option<S<String>>,
    fail_fast: Option<bool>,
    journal: Option<String>,
    report: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    at: Option<S<String>>,
    every: Option<S<String>>,
    #[serde(default)]
    window: Vec<S<String>>,
    #[serde(default)]
    blackout: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    admin: Option<S<String>>,
    toxiproxy: Option<S<String>>,
    peer: Option<S<String>>,
    pid: Option<S<toml::Value>>,
    pidfile: Option<S<String>>,
    sidecar_pid: Option<S<toml::Value>>,
    sidecar_pidfile: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTolerance {
    status: Option<S<toml::Value>>,
    min: Option<S<f64>>,
    max: Option<S<f64>>,
    range: Option<S<Vec<f64>>>,
    regex: Option<S<String>>,
    state: Option<S<Vec<String>>>,
    max_ms: Option<S<f64>>,
}

/// Steady-state probes and abort conditions (an abort may instead name a probe with `probe`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: S<String>,
    #[serde(rename = "type")]
    type_: Option<S<String>>,
    url: Option<S<String>>,
    method: Option<S<String>>,
    headers: Option<S<BTreeMap<String, String>>>,
    body: Option<S<String>>,
    timeout: Option<S<String>>,
    metric: Option<S<String>>,
    quantile: Option<S<f64>>,
    series: Option<S<String>>,
    hosts: Option<S<Vec<String>>>,
    labels: Option<S<BTreeMap<String, String>>>,
    window: Option<S<String>>,
    min_requests: Option<S<i64>>,
    errors: Option<S<Vec<String>>>,
    host: Option<S<String>>,
    process: Option<S<String>>,
    pid: Option<S<toml::Value>>,
    pidfile: Option<S<String>>,
    path: Option<S<String>>,
    args: Option<S<Vec<String>>>,
    tolerance: Option<S<RawTolerance>>,
    probe: Option<S<String>>,
    #[serde(rename = "for")]
    for_: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    name: S<String>,
    url: Option<S<String>>,
    urls: Option<S<Vec<String>>>,
    method: Option<S<String>>,
    headers: Option<S<BTreeMap<String, String>>>,
    body: Option<S<String>>,
    rate: S<f64>,
    timeout: Option<S<String>>,
    concurrency: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPauses {
    before: Option<S<String>>,
    after: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActivity {
    name: S<String>,
    #[serde(rename = "type")]
    type_: S<String>,
    pauses: Option<S<RawPauses>>,
    duration: Option<S<String>>,
    background: Option<S<bool>>,
    host: Option<S<String>>,
    hosts: Option<S<Vec<String>>>,
    pick: Option<S<i64>>,
    fault: Option<S<toml::Table>>,
    proxy: Option<S<String>>,
    toxic: Option<S<toml::Table>>,
    drain: Option<S<String>>,
    reason: Option<S<String>>,
    signal: Option<S<String>>,
    process: Option<S<String>>,
    pid: Option<S<toml::Value>>,
    pidfile: Option<S<String>>,
    isolate: Option<S<Vec<String>>>,
    from: Option<S<Vec<String>>>,
    listener: Option<S<String>>,
    url: Option<S<String>>,
    method: Option<S<String>>,
    headers: Option<S<BTreeMap<String, String>>>,
    body: Option<S<String>>,
    timeout: Option<S<String>>,
    path: Option<S<String>>,
    args: Option<S<Vec<String>>>,
    tolerance: Option<S<RawTolerance>>,
    probe: Option<S<String>>,
}

macro_rules! present {
    ($raw:expr; $($f:ident => $n:literal),* $(,)?) => {{
        let mut v: Vec<(&'static str, Range<usize>)> = Vec::new();
        $( if let Some(x) = &$raw.$f { v.push(($n, x.span())); } )*
        v
    }};
}

impl RawProbe {
    fn fields(&self) -> Vec<(&'static str, Range<usize>)> {
        present!(self; url => "url", method => "method", headers => "headers", body => "body",
            timeout => "timeout", metric => "metric", quantile => "quantile", series => "series",
            hosts => "hosts", labels => "labels", window => "window", min_requests => "min_requests",
            errors => "errors", host => "host", process => "process", pid => "pid",
            pidfile => "pidfile", path => "path", args => "args", tolerance => "tolerance",
            probe => "probe", for_ => "for")
    }
}

impl RawActivity {
    fn fields(&self) -> Vec<(&'static str, Range<usize>)> {
        present!(self; pauses => "pauses", duration => "duration", background => "background",
            host => "host", hosts => "hosts", pick => "pick", fault => "fault", proxy => "proxy",
            toxic => "toxic", drain => "drain", reason => "reason", signal => "signal",
            process => "process", pid => "pid", pidfile => "pidfile", isolate => "isolate",
            from => "from", listener => "listener", url => "url", method => "method",
            headers => "headers", body => "body", timeout => "timeout", path => "path",
            args => "args", tolerance => "tolerance", probe => "probe")
    }
}

/// Reads an experiment file: TOML, or Chaos Toolkit JSON when the name ends in `.json`.
pub fn load(
    path: &Path,
    cli_vars: &BTreeMap<String, String>,
) -> Result<(Experiment, Vec<String>), Invalid> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Invalid {
        file: source.clone(),
        problems: vec![Problem::new(None, "", format!("cannot read the file: {e}"))],
    })?;
    if path.extension().is_some_and(|e| e == "json") {
        crate::ctk::parse(&text, &source, cli_vars)
    } else {
        parse(&text, &source, cli_vars)
    }
}

/// Byte range of the `[vars]` table (its header to the next table header), if any.
fn vars_section(text: &str) -> Option<Range<usize>> {
    let mut start = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(s) = start {
            if t.starts_with('[') {
                return Some(s..pos);
            }
        } else if t.starts_with("[vars]") {
            start = Some(pos);
        }
        pos += line.len();
    }
    start.map(|s| s..text.len())
}

fn toml_problem(e: &toml::de::Error, text: &str) -> Problem {
    Problem::new(
        e.span().map(|s| line_of(text, s.start)),
        "",
        e.message().trim().to_string(),
    )
}

/// Parses and validates a TOML experiment. Returns the experiment and warnings.
pub fn parse(
    text: &str,
    source: &str,
    cli_vars: &BTreeMap<String, String>,
) -> Result<(Experiment, Vec<String>), Invalid> {
    let invalid = |problems| Invalid {
        file: source.to_string(),
        problems,
    };
    // 1. The file's own variable defaults, read with every placeholder neutralized.
    #[derive(Deserialize)]
    struct VarsOnly {
        #[serde(default)]
        vars: toml::Table,
    }
    let neutral = neutralized(text);
    let file_vars = toml::from_str::<VarsOnly>(&neutral)
        .map_err(|e| invalid(vec![toml_problem(&e, text)]))?
        .vars;
    let mut vars = BTreeMap::new();
    let mut problems = Vec::new();
    for (k, v) in &file_vars {
        let s = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                problems.push(Problem::new(
                    None,
                    format!("vars.{k}"),
                    "a variable is a string, number or boolean",
                ));
                continue;
            }
        };
        vars.insert(k.clone(), s);
    }
    let mut warnings = Vec::new();
    for (k, v) in cli_vars {
        if !vars.contains_key(k) && !text.contains(&format!("${{{k}}}")) {
            warnings.push(format!("--var {k} is not used by {source}"));
        }
        vars.insert(k.clone(), v.clone());
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    // 2. Substitute, keeping lines where they were.
    let text = substitute_toml(text, &vars, vars_section(text)).map_err(invalid)?;
    // 3. Shape (types, unknown or missing keys) with toml's own spans.
    let raw: RawFile = toml::from_str(&text).map_err(|e| invalid(vec![toml_problem(&e, &text)]))?;
    // 4. Meaning.
    let mut v = Validator {
        text: &text,
        problems: Vec::new(),
    };
    let exp = v.experiment(raw, source, vars);
    if v.problems.is_empty() {
        Ok((exp, warnings))
    } else {
        Err(invalid(v.problems))
    }
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

fn dur_str(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration such as \"500ms\", \"5s\" or \"2m\": {e}"))
}

fn url_ok(u: &str) -> Result<(), String> {
    match reqwest::Url::parse(u) {
        Ok(p) if p.scheme() == "http" || p.scheme() == "https" => Ok(()),
        Ok(p) => Err(format!(
            "{u:?}: scheme {:?} is not http or https",
            p.scheme()
        )),
        Err(e) => Err(format!("{u:?} is not a URL: {e}")),
    }
}

fn pid_of(v: &toml::Value) -> Result<u32, String> {
    let n = match v {
        toml::Value::Integer(i) => u32::try_from(*i).ok(),
        toml::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|p| *p > 1)
        .ok_or_else(|| format!("{v} is not a process id (an integer above 1)"))
}

fn to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::json!(i),
        toml::Value::Float(f) => serde_json::json!(f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => a.iter().map(to_json).collect(),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

/// Statuses: `200`, `[200, 204]`, `"2xx"`, `[[200, 299], 404]`, `"200-299"`.
pub fn status_ranges(v: &serde_json::Value) -> Result<Vec<(i64, i64)>, String> {
    fn one(v: &serde_json::Value) -> Result<(i64, i64), String> {
        match v {
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(|i| (i, i))
                .ok_or_else(|| format!("{n} is not an integer status")),
            serde_json::Value::String(s) => {
                let s = s.trim();
                if s.len() == 3 && s.ends_with("xx") {
                    let d: i64 = s[..1]
                        .parse()
                        .map_err(|_| format!("{s:?} is not a status class such as \"2xx\""))?;
                    return Ok((d * 100, d * 100 + 99));
                }
                if let Some((a, b)) = s.split_once('-') {
                    let a = a.trim().parse().map_err(|_| format!("bad range {s:?}"))?;
                    let b = b.trim().parse().map_err(|_| format!("bad range {s:?}"))?;
                    return Ok((a, b));
                }
                s.parse::<i64>()
                    .map(|i| (i, i))
                    .map_err(|_| format!("{s:?} is not a status, class (\"2xx\") or range"))
            }
            serde_json::Value::Array(a) if a.len() == 2 && a.iter().all(|x| x.is_i64()) => {
                Ok((a[0].as_i64().unwrap_or(0), a[1].as_i64().unwrap_or(0)))
            }
            other => Err(format!(
                "{other} is not a status, class or [low, high] range"
            )),
        }
    }
    let list = match v {
        // A list is a list of statuses (as in Chaos Toolkit), each of which may be a range.
        serde_json::Value::Array(a) => a.iter().map(one).collect::<Result<Vec<_>, _>>()?,
        other => vec![one(other)?],
    };
    if list.is_empty() {
        return Err("the list of statuses is empty".into());
    }
    if let Some((a, b)) = list.iter().find(|(a, b)| a > b) {
        return Err(format!("range {a}-{b} is empty"));
    }
    Ok(list)
}

/// What a tolerance may contain for each probe type.
fn tolerance_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "http" => &["status", "regex", "max_ms"],
        "metric" => &["min", "max", "range"],
        "process" => &["state"],
        "command" => &["status", "regex"],
        _ => &[],
    }
}

impl Validator<'_> {
    fn line(&self, span: &Range<usize>) -> Option<usize> {
        Some(line_of(self.text, span.start))
    }

    fn err(&mut self, span: Range<usize>, path: impl Into<String>, msg: impl Into<String>) {
        let line = self.line(&span);
        self.problems.push(Problem::new(line, path, msg));
    }

    fn dur(&mut self, v: &Option<S<String>>, path: &str, field: &str) -> Option<Duration> {
        let s = v.as_ref()?;
        match dur_str(s.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(s.span(), format!("{path}.{field}"), e);
                None
            }
        }
    }

    fn url(&mut self, v: &S<String>, path: &str, field: &str) -> String {
        if let Err(e) = url_ok(v.get_ref()) {
            self.err(v.span(), format!("{path}.{field}"), e);
        }
        v.get_ref().trim_end_matches('/').to_string()
    }

    fn experiment(
        &mut self,
        raw: RawFile,
        source: &str,
        vars: BTreeMap<String, String>,
    ) -> Experiment {
        if let Some(s) = &raw.schema {
            if s.get_ref() != SCHEMA {
                self.err(
                    s.span(),
                    "schema",
                    format!("this chaos reads schema {SCHEMA:?}, not {:?}", s.get_ref()),
                );
            }
        }
        if raw.title.get_ref().trim().is_empty() {
            self.err(raw.title.span(), "title", "must not be empty");
        }
        let runtime = self.runtime(raw.runtime.as_ref());
        let schedule = raw.schedule.as_ref().map(|s| self.schedule(s, &runtime));
        let hosts: BTreeMap<String, Host> = raw
            .hosts
            .iter()
            .map(|(n, h)| (n.clone(), self.host(n, h)))
            .collect();
        let mut names = BTreeSet::new();
        let mut steady_state = Vec::new();
        for (i, p) in raw.steady_state.iter().enumerate() {
            let path = format!("steady_state[{i}] ({:?})", p.get_ref().name.get_ref());
            if !names.insert(p.get_ref().name.get_ref().clone()) {
                self.err(
                    p.get_ref().name.span(),
                    &path,
                    "a probe of this name already exists",
                );
            }
            if let Some(x) = &p.get_ref().probe {
                self.err(
                    x.span(),
                    format!("{path}.probe"),
                    "only an [[abort]] can refer to a probe",
                );
            }
            if let Some(x) = &p.get_ref().for_ {
                self.err(
                    x.span(),
                    format!("{path}.for"),
                    "only an [[abort]] has `for`",
                );
            }
            if let Some(pr) = self.probe(p, &path, &hosts) {
                steady_state.push(pr);
            }
        }
        // Without an explicit `settle`, the "after" check waits one metric window, so that it
        // measures traffic after the method rather than the tail of the last fault.
        let mut runtime = runtime;
        if raw
            .runtime
            .as_ref()
            .is_none_or(|r| r.get_ref().settle.is_none())
            && runtime.hypothesis.after
        {
            runtime.settle = steady_state
                .iter()
                .filter_map(|p| match &p.kind {
                    ProbeKind::Metric(q) => Some(q.window),
                    _ => None,
                })
                .max()
                .unwrap_or_default();
        }
        let loads = raw
            .load
            .iter()
            .enumerate()
            .filter_map(|(i, l)| self.load(i, l))
            .collect();
        let method = self.activities(&raw.method, "method", &hosts, &steady_state, &runtime);
        let rollbacks = self.activities(&raw.rollback, "rollback", &hosts, &steady_state, &runtime);
        let aborts = raw
            .abort
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.abort(i, a, &hosts, &steady_state))
            .collect();
        let exp = Experiment {
            title: raw.title.get_ref().clone(),
            description: raw.description.unwrap_or_default(),
            tags: raw.tags,
            source: source.to_string(),
            format: Format::Toml,
            vars,
            runtime,
            schedule,
            hosts,
            steady_state,
            loads,
            method,
            rollbacks,
            aborts,
        };
        let need = exp.planned_method() + exp.runtime.settle;
        if need >= exp.runtime.max_duration {
            let span = raw
                .runtime
                .as_ref()
                .and_then(|r| r.get_ref().max_duration.as_ref().map(|m| m.span()))
                .unwrap_or(raw.title.span());
            self.err(
                span,
                "runtime.max_duration",
                format!(
                    "the method needs {} (pauses, durations and settle) but the hard maximum is {}",
                    humantime::format_duration(need),
                    humantime::format_duration(exp.runtime.max_duration)
                ),
            );
        }
        exp
    }

    fn runtime(&mut self, raw: Option<&S<RawRuntime>>) -> Runtime {
        let mut rt = Runtime::default();
        let Some(raw) = raw else { return rt };
        let r = raw.get_ref();
        let p = "runtime";
        if let Some(s) = &r.seed {
            match u64::try_from(*s.get_ref()) {
                Ok(v) => rt.seed = v,
                Err(_) => self.err(s.span(), "runtime.seed", "must not be negative"),
            }
        }
        if let Some(h) = &r.hypothesis {
            let (b, d, a) = match h.get_ref().as_str() {
                "continuous" => (true, true, true),
                "before-after" => (true, false, true),
                "before" => (true, false, false),
                "after" => (false, false, true),
                "during" => (false, true, false),
                other => {
                    self.err(
                        h.span(),
                        "runtime.hypothesis",
                        format!(
                            "{other:?}: expected continuous, before-after, before, after or during"
                        ),
                    );
                    (true, true, true)
                }
            };
            rt.hypothesis = HypothesisStrategy {
                before: b,
                during: d,
                after: a,
            };
        }
        if let Some(s) = &r.rollbacks {
            rt.rollbacks = match s.get_ref().as_str() {
                "always" => RollbackStrategy::Always,
                "on-deviation" => RollbackStrategy::OnDeviation,
                "never" => RollbackStrategy::Never,
                other => {
                    self.err(
                        s.span(),
                        "runtime.rollbacks",
                        format!("{other:?}: expected always, on-deviation or never"),
                    );
                    RollbackStrategy::Always
                }
            };
        }
        if let Some(s) = &r.on_action_error {
            match s.get_ref().as_str() {
                "stop" => rt.stop_on_action_error = true,
                "continue" => rt.stop_on_action_error = false,
                other => self.err(
                    s.span(),
                    "runtime.on_action_error",
                    format!("{other:?}: expected stop or continue"),
                ),
            }
        }
        let positive = |v: &mut Self, d: Option<Duration>, f: &Option<S<String>>, name: &str| {
            if let (Some(d), Some(s)) = (d, f) {
                if d.is_zero() {
                    v.err(s.span(), format!("runtime.{name}"), "must be more than 0");
                }
            }
            d
        };
        let d = self.dur(&r.hypothesis_interval, p, "hypothesis_interval");
        if let Some(d) = positive(self, d, &r.hypothesis_interval, "hypothesis_interval") {
            rt.hypothesis_interval = d;
        }
        let d = self.dur(&r.max_duration, p, "max_duration");
        if let Some(d) = positive(self, d, &r.max_duration, "max_duration") {
            rt.max_duration = d;
        }
        let d = self.dur(&r.sample_interval, p, "sample_interval");
        if let Some(d) = positive(self, d, &r.sample_interval, "sample_interval") {
            rt.sample_interval = d;
        }
        if let Some(d) = self.dur(&r.ttl_margin, p, "ttl_margin") {
            rt.ttl_margin = d;
        }
        if let Some(d) = self.dur(&r.settle, p, "settle") {
            rt.settle = d;
        }
        if rt.max_duration + rt.ttl_margin > Duration::from_secs(23 * 3600) {
            self.err(
                raw.span(),
                "runtime.max_duration",
                "max_duration + ttl_margin must stay under 23h (the sidecar caps fault TTLs at 24h)",
            );
        }
        rt.fail_fast = r.fail_fast.unwrap_or(false);
        rt.journal = r.journal.as_ref().map(PathBuf::from);
        rt.report = r.report.as_ref().map(PathBuf::from);
        rt
    }

    fn schedule(&mut self, raw: &S<RawSchedule>, rt: &Runtime) -> schedule::Schedule {
        let r = raw.get_ref();
        let mut s = schedule::Schedule::default();
        if let Some(a) = &r.at {
            match schedule::parse_at(a.get_ref()) {
                Ok(t) => s.at = Some(t),
                Err(e) => self.err(a.span(), "schedule.at", e),
            }
        }
        if let Some(d) = self.dur(&r.every, "schedule", "every") {
            if d < rt.max_duration {
                self.err(
                    r.every.as_ref().map(|e| e.span()).unwrap_or(raw.span()),
                    "schedule.every",
                    "the period must be at least runtime.max_duration (runs must not overlap)",
                );
            }
            s.every = Some(d);
        }
        for (i, w) in r.window.iter().enumerate() {
            match schedule::parse_window(w.get_ref()) {
                Ok(w) => s.windows.push(w),
                Err(e) => self.err(w.span(), format!("schedule.window[{i}]"), e),
            }
        }
        for (i, b) in r.blackout.iter().enumerate() {
            match schedule::parse_blackout(b.get_ref()) {
                Ok(b) => s.blackouts.push(b),
                Err(e) => self.err(b.span(), format!("schedule.blackout[{i}]"), e),
            }
        }
        if let (Some(at), None, Some(a)) = (s.at, s.every, &r.at) {
            if let Some(why) = s.refusal(at, rt.max_duration) {
                self.err(
                    a.span(),
                    "schedule.at",
                    format!("this start is not allowed: {why}"),
                );
            }
        }
        s
    }

    fn host(&mut self, name: &str, raw: &S<RawHost>) -> Host {
        let r = raw.get_ref();
        let p = format!("hosts.{name}");
        let mut h = Host {
            name: name.to_string(),
            ..Default::default()
        };
        h.admin = r.admin.as_ref().map(|u| self.url(u, &p, "admin"));
        h.toxiproxy = r.toxiproxy.as_ref().map(|u| self.url(u, &p, "toxiproxy"));
        if let Some(peer) = &r.peer {
            if peer.get_ref().parse::<std::net::SocketAddr>().is_err() {
                self.err(
                    peer.span(),
                    format!("{p}.peer"),
                    "expected IP:PORT, e.g. \"127.0.0.11:9096\"",
                );
            }
            h.peer = Some(peer.get_ref().clone());
        }
        h.node_pid = self.pid_source(&r.pid, &r.pidfile, &p, "pid", "pidfile");
        h.sidecar_pid = self.pid_source(
            &r.sidecar_pid,
            &r.sidecar_pidfile,
            &p,
            "sidecar_pid",
            "sidecar_pidfile",
        );
        h
    }

    fn pid_source(
        &mut self,
        pid: &Option<S<toml::Value>>,
        file: &Option<S<String>>,
        path: &str,
        pid_name: &str,
        file_name: &str,
    ) -> Option<PidSource> {
        match (pid, file) {
            (Some(p), Some(_)) => {
                self.err(
                    p.span(),
                    format!("{path}.{pid_name}"),
                    format!("give {pid_name} or {file_name}, not both"),
                );
                None
            }
            (Some(p), None) => match pid_of(p.get_ref()) {
                Ok(n) => Some(PidSource::Pid(n)),
                Err(e) => {
                    self.err(p.span(), format!("{path}.{pid_name}"), e);
                    None
                }
            },
            (None, Some(f)) => Some(PidSource::File(PathBuf::from(f.get_ref()))),
            (None, None) => None,
        }
    }

    fn only(
        &mut self,
        fields: &[(&'static str, Range<usize>)],
        allowed: &[&str],
        path: &str,
        what: &str,
    ) {
        for (f, span) in fields {
            if !allowed.contains(f) {
                self.err(
                    span.clone(),
                    format!("{path}.{f}"),
                    format!(
                        "`{f}` does not apply to {what} (it takes: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn headers(h: &Option<S<BTreeMap<String, String>>>) -> Vec<(String, String)> {
        h.as_ref()
            .map(|h| {
                h.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn method_name(&mut self, m: &Option<S<String>>, path: &str) -> String {
        match m {
            Some(m) => {
                let up = m.get_ref().trim().to_ascii_uppercase();
                if reqwest::Method::from_bytes(up.as_bytes()).is_err() || up.is_empty() {
                    self.err(
                        m.span(),
                        format!("{path}.method"),
                        format!("{:?} is not an HTTP method", m.get_ref()),
                    );
                }
                up
            }
            None => "GET".into(),
        }
    }

    fn tolerance(&mut self, raw: &S<RawTolerance>, kind: &str, path: &str) -> Tolerance {
        let r = raw.get_ref();
        let path = format!("{path}.tolerance");
        let present = present!(r; status => "status", min => "min", max => "max", range => "range",
            regex => "regex", state => "state", max_ms => "max_ms");
        if present.is_empty() {
            self.err(
                raw.span(),
                &path,
                format!(
                    "empty tolerance (a {kind} probe takes: {})",
                    tolerance_keys(kind).join(", ")
                ),
            );
        }
        self.only(
            &present,
            tolerance_keys(kind),
            &path,
            &format!("the tolerance of a {kind} probe"),
        );
        let mut t = Tolerance::default();
        if let Some(s) = &r.status {
            match status_ranges(&to_json(s.get_ref())) {
                Ok(v) => t.status = Some(v),
                Err(e) => self.err(s.span(), format!("{path}.status"), e),
            }
        }
        t.min = r.min.as_ref().map(|v| *v.get_ref());
        t.max = r.max.as_ref().map(|v| *v.get_ref());
        if let Some(rg) = &r.range {
            match rg.get_ref().as_slice() {
                [a, b] if a <= b => {
                    t.min = Some(*a);
                    t.max = Some(*b);
                }
                _ => self.err(
                    rg.span(),
                    format!("{path}.range"),
                    "expected [low, high] with low ≤ high",
                ),
            }
        }
        if let (Some(a), Some(b)) = (t.min, t.max) {
            if a > b {
                self.err(raw.span(), &path, format!("min {a} is above max {b}"));
            }
        }
        if let Some(re) = &r.regex {
            match regex::Regex::new(re.get_ref()) {
                Ok(x) => t.regex = Some(x),
                Err(e) => self.err(
                    re.span(),
                    format!("{path}.regex"),
                    format!("bad regex: {e}"),
                ),
            }
        }
        if let Some(st) = &r.state {
            let mut v = Vec::new();
            for s in st.get_ref() {
                match s.as_str() {
                    "running" => v.push(ProcState::Running),
                    "stopped" => v.push(ProcState::Stopped),
                    "gone" => v.push(ProcState::Gone),
                    other => self.err(
                        st.span(),
                        format!("{path}.state"),
                        format!("{other:?}: expected running, stopped or gone"),
                    ),
                }
            }
            t.state = Some(v);
        }
        t.max_ms = r.max_ms.as_ref().map(|v| *v.get_ref());
        t
    }

    fn host_names(
        &mut self,
        list: &S<Vec<String>>,
        hosts: &BTreeMap<String, Host>,
        path: &str,
        field: &str,
    ) -> Vec<String> {
        if list.get_ref().is_empty() {
            self.err(list.span(), format!("{path}.{field}"), "the list is empty");
        }
        for n in list.get_ref() {
            if !hosts.contains_key(n) {
                self.err(
                    list.span(),
                    format!("{path}.{field}"),
                    format!("unknown host {n:?} (declare it under [hosts.{n}])"),
                );
            }
        }
        list.get_ref().clone()
    }

    fn probe(
        &mut self,
        raw: &S<RawProbe>,
        path: &str,
        hosts: &BTreeMap<String, Host>,
    ) -> Option<Probe> {
        let r = raw.get_ref();
        let Some(ty) = &r.type_ else {
            self.err(
                raw.span(),
                format!("{path}.type"),
                "missing: http, metric, process or command",
            );
            return None;
        };
        let kind_name = ty.get_ref().as_str();
        let mut fields = r.fields();
        fields.retain(|(f, _)| *f != "probe" && *f != "for");
        let kind = match kind_name {
            "http" => {
                self.only(
                    &fields,
                    &["url", "method", "headers", "body", "timeout", "tolerance"],
                    path,
                    "an http probe",
                );
                let url = match &r.url {
                    Some(u) => self.url(u, path, "url"),
                    None => {
                        self.err(raw.span(), format!("{path}.url"), "missing");
                        String::new()
                    }
                };
                ProbeKind::Http(HttpRequest {
                    url,
                    method: self.method_name(&r.method, path),
                    headers: Self::headers(&r.headers),
                    body: r.body.as_ref().map(|b| b.get_ref().clone()),
                    timeout: self
                        .dur(&r.timeout, path, "timeout")
                        .unwrap_or(Duration::from_secs(2)),
                })
            }
            "metric" => {
                self.only(
                    &fields,
                    &[
                        "metric",
                        "quantile",
                        "series",
                        "hosts",
                        "labels",
                        "window",
                        "min_requests",
                        "errors",
                        "tolerance",
                    ],
                    path,
                    "a metric probe",
                );
                let stat = match r.metric.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
                    Some(("error_ratio", _)) => Stat::ErrorRatio,
                    Some(("request_rate", _)) => Stat::RequestRate,
                    Some(("latency", _)) => {
                        let q = r.quantile.as_ref().map(|q| *q.get_ref()).unwrap_or(0.99);
                        if !(q > 0.0 && q <= 1.0) {
                            self.err(
                                r.quantile.as_ref().map(|q| q.span()).unwrap_or(raw.span()),
                                format!("{path}.quantile"),
                                "must be in (0, 1]",
                            );
                        }
                        Stat::Latency { quantile: q }
                    }
                    Some(("value", span)) => match &r.series {
                        Some(s) => Stat::Value {
                            series: s.get_ref().clone(),
                        },
                        None => {
                            self.err(
                                span,
                                format!("{path}.series"),
                                "metric = \"value\" needs `series` (a metric name)",
                            );
                            Stat::ErrorRatio
                        }
                    },
                    Some((other, span)) => {
                        self.err(
                            span,
                            format!("{path}.metric"),
                            format!(
                                "{other:?}: expected error_ratio, latency, request_rate or value"
                            ),
                        );
                        Stat::ErrorRatio
                    }
                    None => {
                        self.err(
                            raw.span(),
                            format!("{path}.metric"),
                            "missing: error_ratio, latency, request_rate or value",
                        );
                        Stat::ErrorRatio
                    }
                };
                if let (Some(q), false) = (&r.quantile, matches!(stat, Stat::Latency { .. })) {
                    self.err(
                        q.span(),
                        format!("{path}.quantile"),
                        "only metric = \"latency\" takes a quantile",
                    );
                }
                if let (Some(q), false) = (&r.series, matches!(stat, Stat::Value { .. })) {
                    self.err(
                        q.span(),
                        format!("{path}.series"),
                        "only metric = \"value\" takes a series",
                    );
                }
                let names = match &r.hosts {
                    Some(h) => self.host_names(h, hosts, path, "hosts"),
                    None => hosts
                        .values()
                        .filter(|h| h.admin.is_some())
                        .map(|h| h.name.clone())
                        .collect(),
                };
                if names.is_empty() {
                    self.err(
                        raw.span(),
                        format!("{path}.hosts"),
                        "a metric probe needs hosts with an `admin` URL",
                    );
                }
                for n in &names {
                    if hosts.get(n).is_some_and(|h| h.admin.is_none()) {
                        self.err(
                            r.hosts.as_ref().map(|h| h.span()).unwrap_or(raw.span()),
                            format!("{path}.hosts"),
                            format!("host {n:?} has no `admin` URL to scrape"),
                        );
                    }
                }
                let labels = r
                    .labels
                    .as_ref()
                    .map(|l| l.get_ref().clone())
                    .unwrap_or_default();
                if let Some(l) = &r.labels {
                    let allowed: &[&str] = match stat {
                        Stat::Latency { .. } => &["listener", "route"],
                        Stat::Value { .. } => &[],
                        _ => &["listener", "route", "class", "upstream"],
                    };
                    for k in l.get_ref().keys() {
                        if !allowed.is_empty() && !allowed.contains(&k.as_str()) {
                            self.err(
                                l.span(),
                                format!("{path}.labels.{k}"),
                                format!("this metric is labelled by {} only", allowed.join(", ")),
                            );
                        }
                    }
                }
                let window = self
                    .dur(&r.window, path, "window")
                    .unwrap_or(Duration::from_secs(5));
                let min_requests = match &r.min_requests {
                    Some(m) if *m.get_ref() < 0 => {
                        self.err(
                            m.span(),
                            format!("{path}.min_requests"),
                            "must not be negative",
                        );
                        0
                    }
                    Some(m) => *m.get_ref() as u64,
                    None => 1,
                };
                let errors = r
                    .errors
                    .as_ref()
                    .map(|e| e.get_ref().clone())
                    .unwrap_or_else(|| vec!["5xx".into()]);
                if let Some(e) = &r.errors {
                    for c in e.get_ref() {
                        if !["1xx", "2xx", "3xx", "4xx", "5xx"].contains(&c.as_str()) {
                            self.err(
                                e.span(),
                                format!("{path}.errors"),
                                format!("{c:?} is not a status class (\"4xx\", \"5xx\")"),
                            );
                        }
                    }
                }
                ProbeKind::Metric(MetricQuery {
                    stat,
                    hosts: names,
                    labels,
                    window,
                    min_requests,
                    errors,
                })
            }
            "process" => {
                self.only(
                    &fields,
                    &["host", "process", "pid", "pidfile", "tolerance"],
                    path,
                    "a process probe",
                );
                let target = self.proc_target(
                    &r.host,
                    &r.process,
                    &r.pid,
                    &r.pidfile,
                    hosts,
                    path,
                    raw.span(),
                )?;
                ProbeKind::Process { target }
            }
            "command" => {
                self.only(
                    &fields,
                    &["path", "args", "timeout", "tolerance"],
                    path,
                    "a command probe",
                );
                ProbeKind::Command(self.command(&r.path, &r.args, &r.timeout, path, raw.span()))
            }
            other => {
                self.err(
                    ty.span(),
                    format!("{path}.type"),
                    format!("{other:?}: a probe is http, metric, process or command"),
                );
                return None;
            }
        };
        let tolerance = match &r.tolerance {
            Some(t) => self.tolerance(t, kind_name, path),
            None => {
                self.err(
                    raw.span(),
                    format!("{path}.tolerance"),
                    "missing: every probe needs a tolerance",
                );
                Tolerance::default()
            }
        };
        Some(Probe {
            name: r.name.get_ref().clone(),
            line: self.line(&raw.span()),
            kind,
            tolerance,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn proc_target(
        &mut self,
        host: &Option<S<String>>,
        process: &Option<S<String>>,
        pid: &Option<S<toml::Value>>,
        pidfile: &Option<S<String>>,
        hosts: &BTreeMap<String, Host>,
        path: &str,
        span: Range<usize>,
    ) -> Option<ProcTarget> {
        let which = self.process_kind(process, path);
        match (host, pid.is_some() || pidfile.is_some()) {
            (Some(h), false) => {
                match hosts.get(h.get_ref()) {
                    None => self.err(
                        h.span(),
                        format!("{path}.host"),
                        format!("unknown host {:?}", h.get_ref()),
                    ),
                    Some(x) => {
                        let has = match which {
                            Proc::Node => x.node_pid.is_some(),
                            Proc::Sidecar => x.sidecar_pid.is_some(),
                        };
                        if !has {
                            let f = if which == Proc::Node {
                                "pid or pidfile"
                            } else {
                                "sidecar_pid or sidecar_pidfile"
                            };
                            self.err(
                                h.span(),
                                format!("{path}.host"),
                                format!("host {:?} has no {f}", h.get_ref()),
                            );
                        }
                    }
                }
                Some(ProcTarget::Host {
                    host: h.get_ref().clone(),
                    process: which,
                })
            }
            (None, true) => self
                .pid_source(pid, pidfile, path, "pid", "pidfile")
                .map(ProcTarget::Direct),
            (Some(h), true) => {
                self.err(
                    h.span(),
                    format!("{path}.host"),
                    "give host (with process) or pid/pidfile, not both",
                );
                None
            }
            (None, false) => {
                self.err(span, path.to_string(), "name the process: host = \"…\" (and process = \"node\"|\"sidecar\"), pid or pidfile");
                None
            }
        }
    }

    fn process_kind(&mut self, process: &Option<S<String>>, path: &str) -> Proc {
        match process.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("node", _)) => Proc::Node,
            Some(("sidecar", _)) => Proc::Sidecar,
            Some((other, span)) => {
                self.err(
                    span,
                    format!("{path}.process"),
                    format!("{other:?}: expected node or sidecar"),
                );
                Proc::Node
            }
        }
    }

    fn command(
        &mut self,
        p: &Option<S<String>>,
        args: &Option<S<Vec<String>>>,
        timeout: &Option<S<String>>,
        path: &str,
        span: Range<usize>,
    ) -> Command {
        let cmd = match p {
            Some(p) if !p.get_ref().trim().is_empty() => p.get_ref().clone(),
            _ => {
                self.err(span, format!("{path}.path"), "missing: the program to run");
                String::new()
            }
        };
        Command {
            path: cmd,
            args: args
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default(),
            timeout: self
                .dur(timeout, path, "timeout")
                .unwrap_or(Duration::from_secs(10)),
        }
    }

    fn load(&mut self, i: usize, raw: &S<RawLoad>) -> Option<Load> {
        let r = raw.get_ref();
        let path = format!("load[{i}] ({:?})", r.name.get_ref());
        let mut urls = Vec::new();
        if let Some(u) = &r.url {
            urls.push(self.url(u, &path, "url"));
        }
        if let Some(us) = &r.urls {
            for u in us.get_ref() {
                if let Err(e) = url_ok(u) {
                    self.err(us.span(), format!("{path}.urls"), e);
                }
                urls.push(u.clone());
            }
        }
        if urls.is_empty() {
            self.err(raw.span(), format!("{path}.urls"), "give url or urls");
        }
        let rate = *r.rate.get_ref();
        if !(rate > 0.0 && rate <= 1000.0) {
            self.err(
                r.rate.span(),
                format!("{path}.rate"),
                "requests per second, more than 0 and at most 1000",
            );
        }
        let concurrency = match &r.concurrency {
            Some(c) if !(1..=256).contains(c.get_ref()) => {
                self.err(c.span(), format!("{path}.concurrency"), "must be 1 to 256");
                16
            }
            Some(c) => *c.get_ref() as usize,
            None => 16,
        };
        Some(Load {
            name: r.name.get_ref().clone(),
            urls,
            method: self.method_name(&r.method, &path),
            headers: Self::headers(&r.headers),
            body: r.body.as_ref().map(|b| b.get_ref().clone()),
            rate,
            timeout: self
                .dur(&r.timeout, &path, "timeout")
                .unwrap_or(Duration::from_secs(2)),
            concurrency,
        })
    }

    fn abort(
        &mut self,
        i: usize,
        raw: &S<RawProbe>,
        hosts: &BTreeMap<String, Host>,
        ssh: &[Probe],
    ) -> Option<Abort> {
        let r = raw.get_ref();
        let path = format!("abort[{i}] ({:?})", r.name.get_ref());
        let for_ = self.dur(&r.for_, &path, "for").unwrap_or_default();
        let probe = match &r.probe {
            Some(name) => {
                let others: Vec<_> = r
                    .fields()
                    .into_iter()
                    .filter(|(f, _)| !["probe", "for", "tolerance"].contains(f))
                    .collect();
                if let Some(t) = &r.type_ {
                    self.err(
                        t.span(),
                        format!("{path}.type"),
                        "an abort refers to a probe (`probe`) or defines one (`type` …), not both",
                    );
                }
                self.only(&others, &[], &path, "an abort that refers to a probe");
                let Some(base) = ssh.iter().find(|p| &p.name == name.get_ref()) else {
                    self.err(
                        name.span(),
                        format!("{path}.probe"),
                        format!("no steady-state probe is named {:?}", name.get_ref()),
                    );
                    return None;
                };
                let mut p = base.clone();
                if let Some(t) = &r.tolerance {
                    p.tolerance = self.tolerance(t, p.kind.type_name(), &path);
                }
                p.name = r.name.get_ref().clone();
                p.line = self.line(&raw.span());
                p
            }
            None => self.probe(raw, &path, hosts)?,
        };
        Some(Abort {
            name: r.name.get_ref().clone(),
            probe,
            for_,
        })
    }

    fn targets(
        &mut self,
        r: &RawActivity,
        hosts: &BTreeMap<String, Host>,
        path: &str,
        need: &str,
    ) -> Option<Targets> {
        let list = match (&r.host, &r.hosts) {
            (Some(h), None) => {
                if !hosts.contains_key(h.get_ref()) {
                    self.err(
                        h.span(),
                        format!("{path}.host"),
                        format!(
                            "unknown host {:?} (declare it under [hosts.{}])",
                            h.get_ref(),
                            h.get_ref()
                        ),
                    );
                    return None;
                }
                vec![h.get_ref().clone()]
            }
            (None, Some(hs)) => self.host_names(hs, hosts, path, "hosts"),
            (Some(h), Some(_)) => {
                self.err(
                    h.span(),
                    format!("{path}.host"),
                    "give host or hosts, not both",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    r.name.span(),
                    format!("{path}.hosts"),
                    "missing: host = \"…\" or hosts = [\"…\"]",
                );
                return None;
            }
        };
        for n in &list {
            let Some(h) = hosts.get(n) else { continue };
            let missing = match need {
                "admin" => h.admin.is_none(),
                "toxiproxy" => h.toxiproxy.is_none(),
                _ => false,
            };
            if missing {
                let span = r
                    .host
                    .as_ref()
                    .map(|x| x.span())
                    .or(r.hosts.as_ref().map(|x| x.span()))
                    .unwrap_or(r.name.span());
                self.err(
                    span,
                    format!("{path}.hosts"),
                    format!("host {n:?} has no `{need}` URL"),
                );
            }
        }
        let pick = match &r.pick {
            Some(p) if *p.get_ref() < 1 || *p.get_ref() as usize > list.len() => {
                self.err(
                    p.span(),
                    format!("{path}.pick"),
                    format!("must be 1 to {} (the number of hosts)", list.len()),
                );
                None
            }
            Some(p) => Some(*p.get_ref() as usize),
            None => None,
        };
        Some(Targets { hosts: list, pick })
    }

    fn activities(
        &mut self,
        raw: &[S<RawActivity>],
        section: &str,
        hosts: &BTreeMap<String, Host>,
        ssh: &[Probe],
        rt: &Runtime,
    ) -> Vec<Activity> {
        let mut out = Vec::new();
        for (i, a) in raw.iter().enumerate() {
            let path = format!("{section}[{i}] ({:?})", a.get_ref().name.get_ref());
            if let Some(act) = self.activity(a, &path, hosts, ssh, rt, section == "rollback") {
                out.push(act);
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn activity(
        &mut self,
        raw: &S<RawActivity>,
        path: &str,
        hosts: &BTreeMap<String, Host>,
        ssh: &[Probe],
        rt: &Runtime,
        rollback: bool,
    ) -> Option<Activity> {
        let r = raw.get_ref();
        let ty = r.type_.get_ref().as_str();
        let fields = r.fields();
        const COMMON: [&str; 4] = ["pauses", "duration", "background", "tolerance"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            COMMON
                .iter()
                .copied()
                .chain(extra.iter().copied())
                .collect()
        };
        let what = format!("a {ty} action");
        let mut duration = self.dur(&r.duration, path, "duration");
        let kind = match ty {
            "fault" => {
                self.only(
                    &fields,
                    &with(&["host", "hosts", "pick", "fault"]),
                    path,
                    &what,
                );
                let targets = self.targets(r, hosts, path, "admin")?;
                let Some(f) = &r.fault else {
                    self.err(raw.span(), format!("{path}.fault"), "missing: the fault, e.g. fault = { kind = { type = \"abort\", status = 503 } }");
                    return None;
                };
                let spec = to_json(&toml::Value::Table(f.get_ref().clone()));
                if let Err(e) = crate::action::check_fault(&spec) {
                    self.err(f.span(), format!("{path}.fault"), e);
                }
                ActionKind::Fault { targets, spec }
            }
            "toxic" => {
                self.only(
                    &fields,
                    &with(&["host", "hosts", "pick", "proxy", "toxic"]),
                    path,
                    &what,
                );
                let targets = self.targets(r, hosts, path, "toxiproxy")?;
                let proxy = match &r.proxy {
                    Some(p) => p.get_ref().clone(),
                    None => {
                        self.err(
                            raw.span(),
                            format!("{path}.proxy"),
                            "missing: the Toxiproxy proxy name",
                        );
                        String::new()
                    }
                };
                let Some(t) = &r.toxic else {
                    self.err(raw.span(), format!("{path}.toxic"), "missing: the toxic, e.g. toxic = { type = \"latency\", attributes = { latency = 300 } }");
                    return None;
                };
                let toxic = to_json(&toml::Value::Table(t.get_ref().clone()));
                if let Err(e) = crate::action::check_toxic(&toxic) {
                    self.err(t.span(), format!("{path}.toxic"), e);
                }
                ActionKind::Toxic {
                    targets,
                    proxy,
                    toxic,
                }
            }
            "outage" => {
                self.only(
                    &fields,
                    &with(&["host", "hosts", "pick", "drain", "reason"]),
                    path,
                    &what,
                );
                let targets = self.targets(r, hosts, path, "admin")?;
                if duration.is_none() {
                    self.err(
                        raw.span(),
                        format!("{path}.duration"),
                        "an outage needs a duration (how long the node is down)",
                    );
                    duration = Some(Duration::from_secs(1));
                }
                ActionKind::Outage {
                    targets,
                    drain: self.dur(&r.drain, path, "drain").unwrap_or_default(),
                    reason: r
                        .reason
                        .as_ref()
                        .map(|x| x.get_ref().clone())
                        .unwrap_or_else(|| r.name.get_ref().clone()),
                }
            }
            "signal" => {
                self.only(
                    &fields,
                    &with(&[
                        "host", "hosts", "pick", "process", "pid", "pidfile", "signal",
                    ]),
                    path,
                    &what,
                );
                let signal = match r.signal.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                    Some(("kill", _)) => Signal::Kill,
                    Some(("term", _)) => Signal::Term,
                    Some(("int", _)) => Signal::Int,
                    Some(("stop", _)) => Signal::Stop,
                    Some(("continue", _)) => Signal::Continue,
                    Some((other, span)) => {
                        self.err(
                            span,
                            format!("{path}.signal"),
                            format!("{other:?}: expected kill, term, int, stop or continue"),
                        );
                        return None;
                    }
                    None => {
                        self.err(
                            raw.span(),
                            format!("{path}.signal"),
                            "missing: kill, term, int, stop or continue",
                        );
                        return None;
                    }
                };
                if let (Some(d), true) = (&r.duration, signal != Signal::Stop) {
                    self.err(
                        d.span(),
                        format!("{path}.duration"),
                        "only signal = \"stop\" takes a duration (continued after it)",
                    );
                }
                let process = self.process_kind(&r.process, path);
                let direct = r.pid.is_some() || r.pidfile.is_some();
                let (targets, pid) = if direct {
                    if r.host.is_some() || r.hosts.is_some() {
                        self.err(
                            raw.span(),
                            path.to_string(),
                            "give host(s) or pid/pidfile, not both",
                        );
                    }
                    (
                        None,
                        self.pid_source(&r.pid, &r.pidfile, path, "pid", "pidfile"),
                    )
                } else {
                    let t = self.targets(r, hosts, path, "")?;
                    for n in &t.hosts {
                        let Some(h) = hosts.get(n) else { continue };
                        let has = match process {
                            Proc::Node => h.node_pid.is_some(),
                            Proc::Sidecar => h.sidecar_pid.is_some(),
                        };
                        if !has {
                            self.err(
                                r.name.span(),
                                format!("{path}.hosts"),
                                format!(
                                    "host {n:?} has no {} pid or pidfile",
                                    if process == Proc::Node {
                                        "node"
                                    } else {
                                        "sidecar"
                                    }
                                ),
                            );
                        }
                    }
                    (Some(t), None)
                };
                ActionKind::Signal {
                    targets,
                    process,
                    pid,
                    signal,
                }
            }
            "partition" => {
                self.only(
                    &fields,
                    &with(&["isolate", "from", "listener"]),
                    path,
                    &what,
                );
                let Some(iso) = &r.isolate else {
                    self.err(
                        raw.span(),
                        format!("{path}.isolate"),
                        "missing: the hosts to cut off, e.g. isolate = [\"node3\"]",
                    );
                    return None;
                };
                let isolate = self.host_names(iso, hosts, path, "isolate");
                let from = match &r.from {
                    Some(f) => self.host_names(f, hosts, path, "from"),
                    None => hosts
                        .keys()
                        .filter(|h| !isolate.contains(h))
                        .cloned()
                        .collect(),
                };
                if from.is_empty() || from.iter().any(|f| isolate.contains(f)) {
                    self.err(
                        iso.span(),
                        format!("{path}.from"),
                        "the two sides must be non-empty and must not share a host",
                    );
                }
                for n in isolate.iter().chain(&from) {
                    if let Some(h) = hosts.get(n) {
                        if h.admin.is_none() || h.peer.is_none() {
                            self.err(
                                iso.span(),
                                format!("{path}.isolate"),
                                format!("host {n:?} needs `admin` and `peer` for a partition"),
                            );
                        }
                    }
                }
                ActionKind::Partition {
                    isolate,
                    from,
                    listener: r.listener.as_ref().map(|l| l.get_ref().clone()),
                }
            }
            "http" => {
                self.only(
                    &fields,
                    &with(&["url", "method", "headers", "body", "timeout"]),
                    path,
                    &what,
                );
                let Some(u) = &r.url else {
                    self.err(raw.span(), format!("{path}.url"), "missing");
                    return None;
                };
                ActionKind::Http {
                    request: HttpRequest {
                        url: self.url(u, path, "url"),
                        method: self.method_name(&r.method, path),
                        headers: Self::headers(&r.headers),
                        body: r.body.as_ref().map(|b| b.get_ref().clone()),
                        timeout: self
                            .dur(&r.timeout, path, "timeout")
                            .unwrap_or(Duration::from_secs(5)),
                    },
                    tolerance: r
                        .tolerance
                        .as_ref()
                        .map(|t| self.tolerance(t, "http", path)),
                }
            }
            "command" => {
                self.only(&fields, &with(&["path", "args", "timeout"]), path, &what);
                ActionKind::Command {
                    command: self.command(&r.path, &r.args, &r.timeout, path, raw.span()),
                    tolerance: r
                        .tolerance
                        .as_ref()
                        .map(|t| self.tolerance(t, "command", path)),
                }
            }
            "probe" => {
                self.only(&fields, &["pauses", "probe"], path, &what);
                let Some(name) = &r.probe else {
                    self.err(
                        raw.span(),
                        format!("{path}.probe"),
                        "missing: the name of a steady-state probe",
                    );
                    return None;
                };
                let Some(p) = ssh.iter().find(|p| &p.name == name.get_ref()) else {
                    self.err(
                        name.span(),
                        format!("{path}.probe"),
                        format!("no steady-state probe is named {:?}", name.get_ref()),
                    );
                    return None;
                };
                ActionKind::Probe {
                    probe: Box::new(p.clone()),
                }
            }
            "pause" => {
                self.only(&fields, &["duration"], path, &what);
                if duration.is_none() {
                    self.err(
                        raw.span(),
                        format!("{path}.duration"),
                        "a pause needs a duration",
                    );
                }
                ActionKind::Pause
            }
            other => {
                self.err(
                    r.type_.span(),
                    format!("{path}.type"),
                    format!("{other:?}: an action is fault, toxic, outage, signal, partition, http, command, probe or pause"),
                );
                return None;
            }
        };
        if let Some(t) = &r.tolerance {
            if !matches!(kind, ActionKind::Http { .. } | ActionKind::Command { .. }) {
                self.err(
                    t.span(),
                    format!("{path}.tolerance"),
                    "only http and command actions take a tolerance",
                );
            }
        }
        if let Some(d) = &r.duration {
            if matches!(kind, ActionKind::Http { .. } | ActionKind::Command { .. }) {
                self.err(
                    d.span(),
                    format!("{path}.duration"),
                    "http and command actions take `timeout`, not `duration`",
                );
            }
        }
        let background = r.background.as_ref().is_some_and(|b| *b.get_ref());
        if rollback {
            if let Some(b) = &r.background {
                self.err(
                    b.span(),
                    format!("{path}.background"),
                    "rollbacks run one after the other",
                );
            }
            if let (Some(d), false) = (&r.duration, matches!(kind, ActionKind::Pause)) {
                self.err(
                    d.span(),
                    format!("{path}.duration"),
                    "a rollback is not undone after a duration",
                );
            }
        }
        if let Some(d) = duration {
            if d + rt.ttl_margin > rt.max_duration + rt.ttl_margin
                && !matches!(kind, ActionKind::Pause)
            {
                self.err(
                    r.duration.as_ref().map(|x| x.span()).unwrap_or(raw.span()),
                    format!("{path}.duration"),
                    "longer than runtime.max_duration",
                );
            }
        }
        let (pause_before, pause_after) = match &r.pauses {
            Some(p) => (
                self.dur(&p.get_ref().before, path, "pauses.before")
                    .unwrap_or_default(),
                self.dur(&p.get_ref().after, path, "pauses.after")
                    .unwrap_or_default(),
            ),
            None => (Duration::ZERO, Duration::ZERO),
        };
        Some(Activity {
            name: r.name.get_ref().clone(),
            line: self.line(&raw.span()),
            kind,
            pause_before,
            pause_after,
            duration,
            background,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema = "chaos/v1"
title = "slow replica"

[vars]
admin3 = "http://127.0.0.13:9901"
d = "2s"

[runtime]
seed = 7
max_duration = "1m"

[hosts.node3]
admin = "${admin3}"
peer = "127.0.0.13:9096"

[[steady_state]]
name = "errors"
type = "metric"
metric = "error_ratio"
labels = { listener = "rpc" }
tolerance = { max = 0.01 }

[[method]]
name = "delay"
type = "fault"
host = "node3"
duration = "${d}"
fault = { kind = { type = "delay", fixed_ms = 200 }, listener = "peer-in" }
"#;

    fn parse_str(s: &str, cli: &[(&str, &str)]) -> Result<Experiment, Invalid> {
        let cli = cli
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(s, "x.toml", &cli).map(|(e, _)| e)
    }

    #[test]
    fn a_good_file_parses_with_its_defaults_and_cli_overrides() {
        let e = parse_str(GOOD, &[("d", "3s")]).unwrap();
        assert_eq!(e.runtime.seed, 7);
        assert_eq!(
            e.hosts["node3"].admin.as_deref(),
            Some("http://127.0.0.13:9901")
        );
        assert_eq!(e.method[0].duration, Some(Duration::from_secs(3)));
        assert!(matches!(e.steady_state[0].kind, ProbeKind::Metric(_)));
        assert_eq!(e.steady_state[0].tolerance.max, Some(0.01));
    }

    fn problems(s: &str) -> Vec<Problem> {
        parse_str(s, &[]).unwrap_err().problems
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        // Unknown key: toml's own error, at the key's line.
        let p = problems(&GOOD.replace("duration = \"${d}\"", "duraton = \"2s\""));
        assert_eq!(p[0].line, Some(28), "{p:?}");
        assert!(p[0].msg.contains("unknown field `duraton`"), "{p:?}");
        // Semantic: bad duration.
        let p = problems(&GOOD.replace("d = \"2s\"", "d = \"2 parsecs\""));
        assert_eq!(p[0].line, Some(28), "{p:?}");
        assert!(p[0].path.ends_with(".duration"), "{p:?}");
        // A fault the sidecar would refuse.
        let p = problems(&GOOD.replace("fixed_ms = 200", "fixed_ms = 200, dist = \"zipf\""));
        assert_eq!(p[0].line, Some(29), "{p:?}");
        assert!(
            p[0].path.ends_with(".fault") && p[0].msg.contains("zipf"),
            "{p:?}"
        );
        // Unknown host, wrong tolerance key, and both are reported.
        let p = problems(
            &GOOD
                .replace("host = \"node3\"", "host = \"node9\"")
                .replace("{ max = 0.01 }", "{ status = 200 }"),
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p
            .iter()
            .any(|x| x.msg.contains("unknown host \"node9\"") && x.line == Some(27)));
        assert!(p
            .iter()
            .any(|x| x.path.contains("tolerance.status") && x.line == Some(22)));
        // A field that belongs to another type.
        let p = problems(&GOOD.replace("host = \"node3\"", "host = \"node3\"\nsignal = \"kill\""));
        assert!(
            p[0].msg
                .contains("`signal` does not apply to a fault action"),
            "{p:?}"
        );
        // Undeclared variable.
        let p = problems(&GOOD.replace("${d}", "${dd}"));
        assert_eq!(p[0].line, Some(28));
        // The method does not fit the hard maximum.
        let p = problems(&GOOD.replace("d = \"2s\"", "d = \"2m\""));
        assert!(p.iter().any(|x| x.path == "runtime.max_duration"), "{p:?}");
    }

    #[test]
    fn status_forms() {
        use serde_json::json;
        assert_eq!(status_ranges(&json!(200)).unwrap(), vec![(200, 200)]);
        assert_eq!(status_ranges(&json!("2xx")).unwrap(), vec![(200, 299)]);
        assert_eq!(
            status_ranges(&json!([200, "500-503"])).unwrap(),
            vec![(200, 200), (500, 503)]
        );
        assert!(status_ranges(&json!("abc")).is_err());
    }
}
