//! The validated experiment, whatever file format it came from. Everything here has been checked:
//! the run never meets a malformed duration, an unknown host or a fault the sidecar would refuse.

use regex::Regex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One thing wrong with an experiment file: where (line, when known, and the key path) and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub line: Option<usize>,
    pub path: String,
    pub msg: String,
}

impl Problem {
    pub fn new(line: Option<usize>, path: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            line,
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// An experiment that cannot be run, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct Invalid {
    /// The file (as given on the command line).
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                Some(l) => write!(f, "{}:{l}: ", self.file)?,
                None => write!(f, "{}: ", self.file)?,
            }
            if p.path.is_empty() {
                write!(f, "{}", p.msg)?;
            } else {
                write!(f, "{}: {}", p.path, p.msg)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Toml,
    Ctk,
}

#[derive(Clone, Debug, Serialize)]
pub struct Experiment {
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub source: String,
    pub format: Format,
    pub vars: BTreeMap<String, String>,
    pub runtime: Runtime,
    pub schedule: Option<crate::schedule::Schedule>,
    pub hosts: BTreeMap<String, Host>,
    pub steady_state: Vec<Probe>,
    pub loads: Vec<Load>,
    pub method: Vec<Activity>,
    pub rollbacks: Vec<Activity>,
    pub aborts: Vec<Abort>,
}

/// When the steady-state hypothesis is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HypothesisStrategy {
    pub before: bool,
    pub during: bool,
    pub after: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackStrategy {
    Always,
    OnDeviation,
    Never,
}

#[derive(Clone, Debug, Serialize)]
pub struct Runtime {
    pub seed: u64,
    pub hypothesis: HypothesisStrategy,
    #[serde(with = "hdur")]
    pub hypothesis_interval: Duration,
    pub rollbacks: RollbackStrategy,
    /// Hard stop: past it the method is stopped and rolled back (exit "aborted"); every injected
    /// fault's TTL is derived from it.
    #[serde(with = "hdur")]
    pub max_duration: Duration,
    /// Added to every TTL so a fault outlives the step that removes it by a little, never by much.
    #[serde(with = "hdur")]
    pub ttl_margin: Duration,
    #[serde(with = "hdur")]
    pub sample_interval: Duration,
    /// Wait between the end of the method and the "after" check.
    #[serde(with = "hdur")]
    pub settle: Duration,
    /// Stop the method at the first failed action (exit 5) instead of going on.
    pub stop_on_action_error: bool,
    /// Stop at the first deviation during the method (the verdict stays "deviated").
    pub fail_fast: bool,
    pub journal: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            seed: 0,
            hypothesis: HypothesisStrategy {
                before: true,
                during: true,
                after: true,
            },
            hypothesis_interval: Duration::from_secs(1),
            rollbacks: RollbackStrategy::Always,
            max_duration: Duration::from_secs(600),
            ttl_margin: Duration::from_secs(10),
            sample_interval: Duration::from_secs(1),
            settle: Duration::ZERO,
            stop_on_action_error: true,
            fail_fast: false,
            journal: None,
            report: None,
        }
    }
}

/// Durations as humantime strings in the journal.
pub mod hdur {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// Where a process id comes from: given, or read from a pid file at the moment it is needed (so a
/// restarted process is found again).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PidSource {
    Pid(u32),
    File(PathBuf),
}

impl PidSource {
    pub fn resolve(&self) -> Result<u32, String> {
        match self {
            PidSource::Pid(p) => Ok(*p),
            PidSource::File(f) => {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| format!("pid file {}: {e}", f.display()))?;
                t.trim().parse().map_err(|_| {
                    format!("pid file {}: not a process id: {:?}", f.display(), t.trim())
                })
            }
        }
    }
}

/// One node of the cluster as the experiment addresses it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Host {
    pub name: String,
    /// Sidecar admin API base URL (`http://127.0.0.11:9901`).
    pub admin: Option<String>,
    /// Toxiproxy-compatible API base URL.
    pub toxiproxy: Option<String>,
    /// The node's public peer address (`127.0.0.11:9096`), the `upstream` of other nodes' outbound
    /// requests to it (used by partitions).
    pub peer: Option<String>,
    pub node_pid: Option<PidSource>,
    pub sidecar_pid: Option<PidSource>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HttpRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    #[serde(with = "hdur")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Command {
    pub path: String,
    pub args: Vec<String>,
    #[serde(with = "hdur")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "stat")]
pub enum Stat {
    /// Errors / requests over the window (errors: the listed status classes, default 5xx).
    ErrorRatio,
    /// A latency quantile in milliseconds from the request-duration histogram.
    Latency { quantile: f64 },
    /// Requests per second over the window.
    RequestRate,
    /// The sum of the latest values of a series (a gauge, or a counter's total).
    Value { series: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct MetricQuery {
    pub stat: Stat,
    /// Host names whose sidecars are summed.
    pub hosts: Vec<String>,
    /// Exact label matches (listener, route, class, upstream, or any label for `value`).
    pub labels: BTreeMap<String, String>,
    #[serde(with = "hdur")]
    pub window: Duration,
    /// Fewer requests than this in the window: no data, the tolerance is not met.
    pub min_requests: u64,
    /// Status classes that count as errors.
    pub errors: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proc {
    Node,
    Sidecar,
}

/// A process, by host role or directly.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcTarget {
    Host { host: String, process: Proc },
    Direct(PidSource),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum ProbeKind {
    Http(HttpRequest),
    Metric(MetricQuery),
    Process { target: ProcTarget },
    Command(Command),
}

impl ProbeKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ProbeKind::Http(_) => "http",
            ProbeKind::Metric(_) => "metric",
            ProbeKind::Process { .. } => "process",
            ProbeKind::Command(_) => "command",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcState {
    Running,
    Stopped,
    Gone,
}

/// What a probe's output must look like. Only the parts that apply to the probe's type may be set
/// (checked at validation).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tolerance {
    /// Inclusive ranges of HTTP statuses or exit codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<(i64, i64)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Response body (http) or stdout (command) must match.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_regex")]
    pub regex: Option<Regex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<ProcState>>,
    /// Upper bound of an http probe's response time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
}

fn ser_regex<S: serde::Serializer>(r: &Option<Regex>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_str(r.as_str()),
        None => s.serialize_none(),
    }
}

impl Tolerance {
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.min.is_none()
            && self.max.is_none()
            && self.regex.is_none()
            && self.state.is_none()
            && self.max_ms.is_none()
    }

    pub fn status_ok(&self, code: i64) -> bool {
        self.status
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code)))
    }

    pub fn value_ok(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }

    /// Short human form, for progress lines and the report.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.status {
            let list: Vec<String> = s
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            parts.push(format!("status in [{}]", list.join(", ")));
        }
        match (self.min, self.max) {
            (Some(a), Some(b)) => parts.push(format!("{a} ≤ v ≤ {b}")),
            (Some(a), None) => parts.push(format!("v ≥ {a}")),
            (None, Some(b)) => parts.push(format!("v ≤ {b}")),
            _ => {}
        }
        if let Some(r) = &self.regex {
            parts.push(format!("matches /{}/", r.as_str()));
        }
        if let Some(s) = &self.state {
            let l: Vec<String> = s.iter().map(|x| format!("{x:?}").to_lowercase()).collect();
            parts.push(format!("state in [{}]", l.join(", ")));
        }
        if let Some(m) = self.max_ms {
            parts.push(format!("≤ {m} ms"));
        }
        parts.join(", ")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(flatten)]
    pub kind: ProbeKind,
    pub tolerance: Tolerance,
}

/// Traffic the experiment sends itself for its whole length (from before the "before" check to
/// after the "after" check), so metric probes have requests to measure.
#[derive(Clone, Debug, Serialize)]
pub struct Load {
    pub name: String,
    pub urls: Vec<String>,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// Requests per second (spread evenly; each picks a URL with the seeded RNG).
    pub rate: f64,
    #[serde(with = "hdur")]
    pub timeout: Duration,
    /// At most this many requests in flight; beyond it a tick is skipped and counted.
    pub concurrency: usize,
}

/// Hosts an action applies to: all listed, or `pick` of them drawn with the seeded RNG.
#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    pub hosts: Vec<String>,
    pub pick: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Kill,
    Term,
    Int,
    Stop,
    Continue,
}

impl Signal {
    pub fn kill_arg(self) -> &'static str {
        match self {
            Signal::Kill => "-KILL",
            Signal::Term => "-TERM",
            Signal::Int => "-INT",
            Signal::Stop => "-STOP",
            Signal::Continue => "-CONT",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum ActionKind {
    /// An HTTP fault on each target's sidecar (`POST /faults`); `spec` is the sidecar's fault JSON
    /// without `id` and `ttl`, which the run adds.
    Fault {
        targets: Targets,
        spec: serde_json::Value,
    },
    /// A Toxiproxy toxic (`POST /proxies/{proxy}/toxics`) with `ttl_ms` added by the run.
    Toxic {
        targets: Targets,
        proxy: String,
        toxic: serde_json::Value,
    },
    /// A planned outage (`POST /outages`): announce, drain, down, back.
    Outage {
        targets: Targets,
        #[serde(with = "hdur")]
        drain: Duration,
        reason: String,
    },
    /// A signal to a node's or sidecar's process.
    Signal {
        targets: Option<Targets>,
        process: Proc,
        pid: Option<PidSource>,
        signal: Signal,
    },
    /// `isolate` cannot reach `from` and back: blackhole faults on each side's outbound listener
    /// matching the other side's peer address.
    Partition {
        isolate: Vec<String>,
        from: Vec<String>,
        listener: Option<String>,
    },
    Http {
        request: HttpRequest,
        tolerance: Option<Tolerance>,
    },
    Command {
        command: Command,
        tolerance: Option<Tolerance>,
    },
    /// A steady-state probe run as a step (recorded, never a deviation by itself).
    Probe {
        probe: Box<Probe>,
    },
    Pause,
}

impl ActionKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ActionKind::Fault { .. } => "fault",
            ActionKind::Toxic { .. } => "toxic",
            ActionKind::Outage { .. } => "outage",
            ActionKind::Signal { .. } => "signal",
            ActionKind::Partition { .. } => "partition",
            ActionKind::Http { .. } => "http",
            ActionKind::Command { .. } => "command",
            ActionKind::Probe { .. } => "probe",
            ActionKind::Pause => "pause",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Activity {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(flatten)]
    pub kind: ActionKind,
    #[serde(with = "hdur")]
    pub pause_before: Duration,
    #[serde(with = "hdur")]
    pub pause_after: Duration,
    /// How long the injected fault lasts before the run removes it; without it, it lasts until the
    /// rollbacks (or its TTL).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_dur"
    )]
    pub duration: Option<Duration>,
    /// The method goes on at once; the action (and its removal after `duration`) runs beside it.
    pub background: bool,
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&humantime::format_duration(*d)),
        None => s.serialize_none(),
    }
}

impl Activity {
    /// Time the method spends on this step when it runs in the foreground.
    pub fn planned(&self) -> Duration {
        let body = if self.background {
            Duration::ZERO
        } else {
            self.duration.unwrap_or_default()
        };
        self.pause_before + body + self.pause_after
    }
}

/// A safeguard: when `probe` stays outside `tolerance` for `for_`, the run stops and rolls back.
#[derive(Clone, Debug, Serialize)]
pub struct Abort {
    pub name: String,
    pub probe: Probe,
    #[serde(rename = "for", with = "hdur")]
    pub for_: Duration,
}

impl Experiment {
    /// Time the method needs in the foreground (pauses and durations).
    pub fn planned_method(&self) -> Duration {
        self.method.iter().map(Activity::planned).sum()
    }
}

/// Wall-clock `SystemTime` as RFC 3339 with milliseconds, for journals.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
