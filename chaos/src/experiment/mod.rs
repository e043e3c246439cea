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

// After `present!`: macros are in scope for the modules declared below them.
mod activity;
mod probe;
mod validator;

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
