//! Chaos Toolkit experiment JSON as a second input format, read into the same validated model.
//!
//! Supported: `title`, `description`, `tags`, `configuration` (values and `{"type": "env"}`),
//! `${name}` substitution, `runtime` (rollback and hypothesis strategies, frequency, fail_fast),
//! `steady-state-hypothesis` probes, `method` and `rollbacks` activities with `pauses`,
//! `background` and `ref`, providers `http` (url, method, headers, arguments as body, timeout,
//! expected_status) and `process` (path, arguments, timeout), and tolerances that are an integer,
//! a list of integers, a string (the whole body/stdout), `{"type": "regex"}` and
//! `{"type": "range"}` on the status. Anything else that changes what runs — a `python` provider,
//! `secrets`, a `jsonpath` tolerance — is rejected at validation with the activity and the reason;
//! `controls` and unknown `extensions` are ignored with a warning. A `{"name": "bulwark"}` extension
//! may set `seed`, `max_duration` and `ttl_margin`.

use crate::experiment::status_ranges;
use crate::model::*;
use crate::vars::{line_of, substitute_json};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

struct Ctx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    /// The line of the activity named `name` (the first `"name": "…"` with that value).
    fn line_of_name(&self, name: &str) -> Option<usize> {
        let pat = format!(
            r#""name"\s*:\s*{}"#,
            regex::escape(&Value::String(name.into()).to_string())
        );
        regex::Regex::new(&pat)
            .ok()?
            .find(self.text)
            .map(|m| line_of(self.text, m.start()))
    }

    fn err(&mut self, line: Option<usize>, path: impl Into<String>, msg: impl Into<String>) {
        self.problems.push(Problem::new(line, path, msg));
    }
}

fn secs(v: &Value) -> Option<Duration> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (f >= 0.0 && f.is_finite()).then(|| Duration::from_secs_f64(f))
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn parse(
    text: &str,
    source: &str,
    cli_vars: &BTreeMap<String, String>,
) -> Result<(Experiment, Vec<String>), Invalid> {
    let invalid = |problems| Invalid {
        file: source.to_string(),
        problems,
    };
    let mut doc: Value = serde_json::from_str(text).map_err(|e| {
        invalid(vec![Problem::new(
            Some(e.line()),
            "",
            format!("not valid JSON: {e}"),
        )])
    })?;
    if !doc.is_object() {
        return Err(invalid(vec![Problem::new(
            Some(1),
            "",
            "an experiment is a JSON object",
        )]));
    }
    let mut c = Ctx {
        text,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let vars = variables(&mut c, &mut doc, source, cli_vars);
    let top = doc.as_object().cloned().unwrap_or_default();
    let (title, description, tags) = metadata(&mut c, &top);
    let runtime = runtime(&mut c, &top);
    let (steady_state, method, rollbacks) = activities(&mut c, &top);
    let exp = Experiment {
        title,
        description,
        tags,
        source: source.to_string(),
        format: Format::Ctk,
        vars,
        runtime,
        schedule: None,
        hosts: BTreeMap::new(),
        steady_state,
        loads: Vec::new(),
        method,
        rollbacks,
        aborts: Vec::new(),
    };
    if exp.planned_method() >= exp.runtime.max_duration {
        c.err(None, "extensions[bulwark].max_duration", format!(
            "the method needs {} but the hard maximum is {} (set it in a {{\"name\": \"bulwark\"}} extension)",
            humantime::format_duration(exp.planned_method()),
            humantime::format_duration(exp.runtime.max_duration)
        ));
    }
    if c.problems.is_empty() {
        Ok((exp, c.warnings))
    } else {
        Err(invalid(c.problems))
    }
}

/// Variables: `configuration` (values, or `{"type": "env"}`), then `--var`; substituted into `doc`.
fn variables(
    c: &mut Ctx,
    doc: &mut Value,
    source: &str,
    cli_vars: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let text = c.text;
    let configuration = doc.as_object_mut().and_then(|m| m.remove("configuration"));
    let mut vars = BTreeMap::new();
    if let Some(conf) = configuration {
        match conf {
            Value::Object(m) => {
                for (k, v) in m {
                    let val = match &v {
                        Value::Object(o)
                            if o.get("type").and_then(Value::as_str) == Some("env") =>
                        {
                            let key = o.get("key").and_then(Value::as_str).unwrap_or_default();
                            match std::env::var(key) {
                                Ok(x) => Some(x),
                                Err(_) => match o.get("default").and_then(scalar) {
                                    Some(d) => Some(d),
                                    None if cli_vars.contains_key(&k) => None,
                                    None => {
                                        c.err(None, format!("configuration.{k}"), format!("environment variable {key:?} is not set and has no default"));
                                        None
                                    }
                                },
                            }
                        }
                        other => match scalar(other) {
                            Some(s) => Some(s),
                            None => {
                                c.err(None, format!("configuration.{k}"), "only strings, numbers, booleans and {\"type\": \"env\"} are supported");
                                None
                            }
                        },
                    };
                    if let Some(v) = val {
                        vars.insert(k, v);
                    }
                }
            }
            _ => c.err(None, "configuration", "must be an object"),
        }
    }
    for (k, v) in cli_vars {
        if !vars.contains_key(k) && !text.contains(&format!("${{{k}}}")) {
            c.warnings
                .push(format!("--var {k} is not used by {source}"));
        }
        vars.insert(k.clone(), v.clone());
    }
    for u in substitute_json(doc, &vars) {
        let line = text.find(&format!("${{{u}}}")).map(|at| line_of(text, at));
        c.err(
            line,
            format!("${{{u}}}"),
            format!("unknown variable {u:?}: add it to configuration or pass --var {u}=VALUE"),
        );
    }
    vars
}

/// Title, description and tags; warnings for what is ignored, errors for what is not supported.
fn metadata(c: &mut Ctx, top: &serde_json::Map<String, Value>) -> (String, String, Vec<String>) {
    const KNOWN: &[&str] = &[
        "version",
        "title",
        "description",
        "tags",
        "contributions",
        "secrets",
        "extensions",
        "controls",
        "runtime",
        "steady-state-hypothesis",
        "method",
        "rollbacks",
    ];
    for k in top.keys() {
        if !KNOWN.contains(&k.as_str()) {
            c.warnings
                .push(format!("unknown top-level key {k:?} ignored"));
        }
    }
    let title = match top.get("title").and_then(Value::as_str) {
        Some(t) if !t.trim().is_empty() => t.to_string(),
        _ => {
            c.err(None, "title", "required (a non-empty string)");
            String::new()
        }
    };
    let description = match top.get("description").and_then(Value::as_str) {
        Some(d) => d.to_string(),
        None => {
            c.err(None, "description", "required (a string)");
            String::new()
        }
    };
    let tags = top
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if top
        .get("secrets")
        .is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()))
    {
        c.err(None, "secrets", "secrets are not supported: pass values with --var or configuration {\"type\": \"env\"}");
    }
    if top.get("controls").is_some() {
        c.warnings.push("controls are ignored".into());
    }
    (title, description, tags)
}

/// `runtime` (rollback and hypothesis strategies) and the `bulwark` extension (seed, durations).
fn runtime(c: &mut Ctx, top: &serde_json::Map<String, Value>) -> Runtime {
    let mut runtime = Runtime::default();
    if let Some(rt) = top.get("runtime") {
        if let Some(s) = rt.pointer("/rollbacks/strategy").and_then(Value::as_str) {
            runtime.rollbacks = match s {
                "default" | "always" => RollbackStrategy::Always,
                "never" => RollbackStrategy::Never,
                "deviated" => RollbackStrategy::OnDeviation,
                other => {
                    c.err(
                        None,
                        "runtime.rollbacks.strategy",
                        format!("{other:?}: expected default, always, never or deviated"),
                    );
                    RollbackStrategy::Always
                }
            };
        }
        if let Some(s) = rt.pointer("/hypothesis/strategy").and_then(Value::as_str) {
            let (b, d, a) = match s {
                "default" => (true, false, true),
                "before-method-only" => (true, false, false),
                "after-method-only" => (false, false, true),
                "during-method-only" => (false, true, false),
                "continuously" => (true, true, true),
                other => {
                    c.err(None, "runtime.hypothesis.strategy", format!("{other:?}: expected default, before-method-only, after-method-only, during-method-only or continuously"));
                    (true, false, true)
                }
            };
            runtime.hypothesis = HypothesisStrategy {
                before: b,
                during: d,
                after: a,
            };
        } else {
            // Chaos Toolkit's default: before and after only.
            runtime.hypothesis = HypothesisStrategy {
                before: true,
                during: false,
                after: true,
            };
        }
        if let Some(f) = rt.pointer("/hypothesis/frequency") {
            match secs(f).filter(|d| !d.is_zero()) {
                Some(d) => runtime.hypothesis_interval = d,
                None => c.err(None, "runtime.hypothesis.frequency", "seconds, more than 0"),
            }
        }
        if let Some(b) = rt.pointer("/hypothesis/fail_fast").and_then(Value::as_bool) {
            runtime.fail_fast = b;
        }
    } else {
        runtime.hypothesis = HypothesisStrategy {
            before: true,
            during: false,
            after: true,
        };
    }
    // Chaos Toolkit goes on after a failed action.
    runtime.stop_on_action_error = false;
    if let Some(exts) = top.get("extensions").and_then(Value::as_array) {
        for e in exts {
            if e.get("name").and_then(Value::as_str) != Some("bulwark") {
                continue;
            }
            if let Some(s) = e.get("seed") {
                match s.as_u64() {
                    Some(v) => runtime.seed = v,
                    None => c.err(None, "extensions[bulwark].seed", "a non-negative integer"),
                }
            }
            for (key, slot) in [
                ("max_duration", &mut runtime.max_duration),
                ("ttl_margin", &mut runtime.ttl_margin),
            ] {
                if let Some(v) = e.get(key) {
                    match v.as_str().map(|s| humantime::parse_duration(s.trim())) {
                        Some(Ok(d)) => *slot = d,
                        _ => c.err(
                            None,
                            format!("extensions[bulwark].{key}"),
                            "a duration such as \"5m\"",
                        ),
                    }
                }
            }
        }
    }
    runtime
}

/// The steady-state probes, the method and the rollbacks (`ref`s resolved in document order).
fn activities(
    c: &mut Ctx,
    top: &serde_json::Map<String, Value>,
) -> (Vec<Probe>, Vec<Activity>, Vec<Activity>) {
    let mut seen: Vec<Value> = Vec::new();
    let mut steady_state = Vec::new();
    if let Some(ssh) = top.get("steady-state-hypothesis") {
        if ssh.get("title").and_then(Value::as_str).is_none() {
            c.err(None, "steady-state-hypothesis.title", "required");
        }
        let probes = ssh
            .get("probes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, p) in probes.iter().enumerate() {
            let path = format!("steady-state-hypothesis.probes[{i}]");
            let p = resolve_ref(c, p, &seen, &path);
            seen.push(p.clone());
            if let Some(pr) = probe(c, &p, &path) {
                steady_state.push(pr);
            }
        }
    }
    let mut lists = Vec::new();
    for section in ["method", "rollbacks"] {
        let mut out = Vec::new();
        match top.get(section) {
            Some(Value::Array(a)) => {
                for (i, act) in a.iter().enumerate() {
                    let path = format!("{section}[{i}]");
                    let act = resolve_ref(c, act, &seen, &path);
                    seen.push(act.clone());
                    if let Some(x) = activity(c, &act, &path, section == "rollbacks") {
                        out.push(x);
                    }
                }
            }
            None if section == "rollbacks" => {}
            _ => c.err(
                None,
                section,
                "required: a list of activities (may be empty)",
            ),
        }
        lists.push(out);
    }
    let rollbacks = lists.pop().unwrap_or_default();
    let method = lists.pop().unwrap_or_default();
    (steady_state, method, rollbacks)
}

/// `{"ref": "name"}` → a copy of the earlier activity of that name.
fn resolve_ref(c: &mut Ctx, v: &Value, seen: &[Value], path: &str) -> Value {
    let Some(r) = v.get("ref").and_then(Value::as_str) else {
        return v.clone();
    };
    match seen
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(r))
    {
        Some(s) => s.clone(),
        None => {
            c.err(
                None,
                format!("{path}.ref"),
                format!("no earlier activity is named {r:?}"),
            );
            v.clone()
        }
    }
}

enum Provider {
    Http(HttpRequest, Option<i64>),
    Process(Command),
}

fn provider(
    c: &mut Ctx,
    act: &Value,
    path: &str,
    line: Option<usize>,
    name: &str,
) -> Option<Provider> {
    let Some(p) = act.get("provider").and_then(Value::as_object) else {
        c.err(line, format!("{path} ({name:?}).provider"), "missing");
        return None;
    };
    let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "http" => {
            let Some(url) = p.get("url").and_then(Value::as_str) else {
                c.err(line, format!("{path} ({name:?}).provider.url"), "missing");
                return None;
            };
            if reqwest::Url::parse(url).is_err() {
                c.err(
                    line,
                    format!("{path} ({name:?}).provider.url"),
                    format!("{url:?} is not a URL"),
                );
            }
            let method = p
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("GET")
                .to_ascii_uppercase();
            let mut headers: Vec<(String, String)> = p
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
                        .collect()
                })
                .unwrap_or_default();
            let body = match p.get("arguments") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(v) => {
                    if !headers
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    {
                        headers.push(("content-type".into(), "application/json".into()));
                    }
                    Some(v.to_string())
                }
            };
            let timeout = match p.get("timeout") {
                None => Duration::from_secs(3),
                Some(Value::Array(a)) => a.iter().filter_map(secs).sum(),
                Some(v) => secs(v).unwrap_or_else(|| {
                    c.err(
                        line,
                        format!("{path} ({name:?}).provider.timeout"),
                        "seconds, or [connect, read]",
                    );
                    Duration::from_secs(3)
                }),
            };
            if p.get("verify_tls").and_then(Value::as_bool) == Some(false) {
                c.warnings
                    .push(format!("{path}: verify_tls=false is ignored"));
            }
            let expected = p.get("expected_status").and_then(Value::as_i64);
            Some(Provider::Http(
                HttpRequest {
                    url: url.to_string(),
                    method,
                    headers,
                    body,
                    timeout,
                },
                expected,
            ))
        }
        "process" => {
            let Some(bin) = p.get("path").and_then(Value::as_str) else {
                c.err(line, format!("{path} ({name:?}).provider.path"), "missing");
                return None;
            };
            let args = match p.get("arguments") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
                Some(Value::Array(a)) => a.iter().filter_map(scalar).collect(),
                Some(_) => {
                    c.err(
                        line,
                        format!("{path} ({name:?}).provider.arguments"),
                        "a string or a list",
                    );
                    Vec::new()
                }
            };
            let timeout = p
                .get("timeout")
                .and_then(secs)
                .unwrap_or(Duration::from_secs(30));
            Some(Provider::Process(Command {
                path: bin.to_string(),
                args,
                timeout,
            }))
        }
        other => {
            c.err(
                line,
                format!("{path} ({name:?}).provider.type"),
                format!("provider type {other:?} is not supported: chaos runs Chaos Toolkit's http and process providers only"),
            );
            None
        }
    }
}

/// Tolerances on a provider's output (`status` is the HTTP status or the exit code).
fn tolerance(
    c: &mut Ctx,
    t: &Value,
    http: bool,
    path: &str,
    line: Option<usize>,
) -> Option<Tolerance> {
    let mut out = Tolerance::default();
    match t {
        Value::Number(_) | Value::Array(_) => match status_ranges(t) {
            Ok(r) => out.status = Some(r),
            Err(e) => c.err(line, format!("{path}.tolerance"), e),
        },
        Value::String(s) => {
            out.regex = regex::Regex::new(&format!(r"^\s*{}\s*$", regex::escape(s))).ok();
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("regex") => {
                let target = o.get("target").and_then(Value::as_str).unwrap_or(if http { "body" } else { "stdout" });
                if target != "body" && target != "stdout" {
                    c.err(line, format!("{path}.tolerance.target"), format!("{target:?}: a regex applies to the body (http) or stdout (process)"));
                }
                match o.get("pattern").and_then(Value::as_str).map(regex::Regex::new) {
                    Some(Ok(r)) => out.regex = Some(r),
                    Some(Err(e)) => c.err(line, format!("{path}.tolerance.pattern"), format!("bad regex: {e}")),
                    None => c.err(line, format!("{path}.tolerance.pattern"), "missing"),
                }
            }
            Some("range") => {
                let target = o.get("target").and_then(Value::as_str).unwrap_or("status");
                match (target, o.get("range").and_then(Value::as_array)) {
                    ("status", Some(r)) if r.len() == 2 && r.iter().all(Value::is_i64) => {
                        out.status = Some(vec![(r[0].as_i64().unwrap_or(0), r[1].as_i64().unwrap_or(0))]);
                    }
                    _ => c.err(line, format!("{path}.tolerance"), "a range tolerance is supported on the status only: {\"type\": \"range\", \"range\": [200, 299]}"),
                }
            }
            Some(other) => c.err(line, format!("{path}.tolerance.type"), format!("tolerance type {other:?} is not supported (integer, list, string, regex or range)")),
            None => c.err(line, format!("{path}.tolerance"), "an object tolerance needs a type"),
        },
        Value::Bool(_) => c.err(line, format!("{path}.tolerance"), "a boolean tolerance has no meaning for http or process output"),
        Value::Null => c.err(line, format!("{path}.tolerance"), "missing"),
    }
    Some(out)
}

fn probe(c: &mut Ctx, p: &Value, path: &str) -> Option<Probe> {
    let name = p
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let line = c.line_of_name(&name);
    if name.is_empty() {
        c.err(line, format!("{path}.name"), "required");
    }
    let prov = provider(c, p, path, line, &name)?;
    let path_n = format!("{path} ({name:?})");
    let Some(tv) = p.get("tolerance") else {
        c.err(
            line,
            format!("{path_n}.tolerance"),
            "every steady-state probe needs a tolerance",
        );
        return None;
    };
    let http = matches!(prov, Provider::Http(..));
    let tol = tolerance(c, tv, http, &path_n, line)?;
    let kind = match prov {
        Provider::Http(r, _) => ProbeKind::Http(r),
        Provider::Process(cmd) => ProbeKind::Command(cmd),
    };
    Some(Probe {
        name,
        line,
        kind,
        tolerance: tol,
    })
}

fn activity(c: &mut Ctx, a: &Value, path: &str, rollback: bool) -> Option<Activity> {
    let name = a
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let line = c.line_of_name(&name);
    let path_n = format!("{path} ({name:?})");
    match a.get("type").and_then(Value::as_str) {
        Some("action") | Some("probe") => {}
        other => {
            c.err(
                line,
                format!("{path_n}.type"),
                format!("{other:?}: an activity is \"action\" or \"probe\""),
            );
            return None;
        }
    }
    let prov = provider(c, a, path, line, &name)?;
    let http = matches!(prov, Provider::Http(..));
    let tol = match a.get("tolerance") {
        Some(t) => tolerance(c, t, http, &path_n, line),
        None => None,
    };
    let kind = match prov {
        Provider::Http(request, expected) => {
            let tolerance = tol.or_else(|| {
                expected.map(|s| Tolerance {
                    status: Some(vec![(s, s)]),
                    ..Default::default()
                })
            });
            ActionKind::Http { request, tolerance }
        }
        Provider::Process(command) => ActionKind::Command {
            command,
            tolerance: tol,
        },
    };
    let pauses = a
        .get("pauses")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let mut pause = |k: &str| match pauses.get(k) {
        None => Duration::ZERO,
        Some(v) => secs(v).unwrap_or_else(|| {
            c.err(line, format!("{path_n}.pauses.{k}"), "seconds (a number)");
            Duration::ZERO
        }),
    };
    let (pause_before, pause_after) = (pause("before"), pause("after"));
    let background = a
        .get("background")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if rollback && background {
        c.err(
            line,
            format!("{path_n}.background"),
            "rollbacks run one after the other",
        );
    }
    Some(Activity {
        name,
        line,
        kind,
        pause_before,
        pause_after,
        duration: None,
        background,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
  "title": "node survives a paused peer",
  "description": "d",
  "configuration": {"base": "http://127.0.0.1:1", "pid": "1234"},
  "steady-state-hypothesis": {
    "title": "up",
    "probes": [
      {"type": "probe", "name": "health", "tolerance": 200,
       "provider": {"type": "http", "url": "${base}/health", "timeout": 1}}
    ]
  },
  "method": [
    {"type": "action", "name": "pause", "provider": {"type": "process", "path": "kill", "arguments": ["-STOP", "${pid}"]},
     "pauses": {"after": 2}},
    {"ref": "health"}
  ],
  "rollbacks": [
    {"type": "action", "name": "resume", "provider": {"type": "process", "path": "kill", "arguments": "-CONT ${pid}"}}
  ]
}"#;

    #[test]
    fn http_and_process_providers_map_onto_the_model() {
        let cli = BTreeMap::from([("pid".to_string(), "4321".to_string())]);
        let (e, _) = parse(DOC, "x.json", &cli).unwrap();
        assert_eq!(e.steady_state.len(), 1);
        match &e.steady_state[0].kind {
            ProbeKind::Http(r) => {
                assert_eq!(r.url, "http://127.0.0.1:1/health");
                assert_eq!(r.timeout, Duration::from_secs(1));
            }
            k => panic!("{k:?}"),
        }
        assert!(e.steady_state[0].tolerance.status_ok(200));
        assert!(!e.steady_state[0].tolerance.status_ok(500));
        assert_eq!(e.method.len(), 2);
        match &e.method[0].kind {
            ActionKind::Command { command, .. } => assert_eq!(command.args, vec!["-STOP", "4321"]),
            k => panic!("{k:?}"),
        }
        assert_eq!(e.method[0].pause_after, Duration::from_secs(2));
        assert!(matches!(e.method[1].kind, ActionKind::Http { .. }));
        match &e.rollbacks[0].kind {
            ActionKind::Command { command, .. } => assert_eq!(command.args, vec!["-CONT", "4321"]),
            k => panic!("{k:?}"),
        }
        assert!(e.runtime.hypothesis.before && e.runtime.hypothesis.after);
    }

    #[test]
    fn unsupported_providers_are_rejected_naming_the_activity_and_its_line() {
        let doc = DOC.replace(
            r#""provider": {"type": "process", "path": "kill", "arguments": ["-STOP", "${pid}"]}"#,
            r#""provider": {"type": "python", "module": "chaosk8s.pod.actions", "func": "terminate_pods"}"#,
        );
        let e = parse(&doc, "x.json", &BTreeMap::new()).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        let p = &e.problems[0];
        assert!(p.path.contains("method[0] (\"pause\")"), "{p:?}");
        assert!(p.msg.contains("\"python\" is not supported"), "{p:?}");
        assert_eq!(p.line, Some(13));
        let e = parse("{\n  \"title\": 1,\n", "x.json", &BTreeMap::new()).unwrap_err();
        assert_eq!(e.problems[0].line, Some(3));
    }
}
