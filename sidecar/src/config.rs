//! The sidecar's one TOML file, validated as a whole before use: a bad file is a precise message and
//! exit code 64, and a hot reload that fails validation changes nothing.

use crate::classify::TrafficClass;
use crate::policy::{
    breaker::BreakerConfig, retry::RetryConfig, shed::ShedConfig, throttle::ThrottleConfig,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Policies for every HTTP listener unless the listener overrides them.
    pub policy: PolicyConfig,
    /// How requests are classified (first match wins; otherwise the listener's class).
    #[serde(rename = "class_rule")]
    pub class_rules: Vec<ClassRule>,
    /// Grace period for in-flight requests on SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The Toxiproxy-compatible fault API (TCP toxics); off unless `listen` is set.
    pub toxiproxy: ToxiproxyConfig,
    /// Canary probing against queries of death (listeners name their `canaries`).
    pub qod: crate::policy::qod::QodConfig,
    /// Graceful degradation (listeners name their `failover` peers).
    pub degrade: crate::policy::degrade::DegradeConfig,
    /// The peer sidecars' admin APIs: blacklist sharing and planned-outage announcements.
    pub mesh: MeshConfig,
    /// HTTP faults injected at start (same spec as `POST /faults`; the TTL counts from start).
    #[serde(rename = "fault")]
    pub faults: Vec<crate::policy::fault::FaultSpec>,
    /// Runtime threads. A sidecar shares its node's cores, so it should not take all of them: `1`
    /// runs everything on one thread (tokio's current-thread scheduler: no work stealing, no
    /// cross-thread wake-ups — the cheapest per request, like HAProxy's `nbthread 1` or Envoy's
    /// `--concurrency 1`); `0` (the default) means one per CPU. Read at start only: a reload that
    /// changes it is refused with a message saying so.
    pub worker_threads: usize,
}

/// A sidecar has no business with more threads than this; a typo like `4000` is caught.
pub const MAX_WORKER_THREADS: usize = 256;

/// `[mesh]`: the other sidecars of the cluster, as their admin addresses.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    pub peers: Vec<String>,
    /// Bearer token for the peers' admin APIs, when they need one.
    pub token: Option<String>,
}

/// `[toxiproxy]`: a Toxiproxy-compatible API (same paths, shapes and status codes) whose proxies
/// are TCP listeners with toxics. It has no authentication (Toxiproxy clients send none), so it
/// must listen on loopback unless `allow_non_loopback` says otherwise.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToxiproxyConfig {
    pub listen: Option<SocketAddr>,
    /// Seeds the toxicity rolls and jitter (reproducible runs; see `toxiproxy` module docs).
    pub seed: u64,
    pub allow_non_loopback: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Required when `listen` is not a loopback address: `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".parse().expect("addr"),
            token: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An EnvFilter directive, e.g. `info` or `info,sidecar=debug`; changeable at run time.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Plain,
        }
    }
}

/// OpenTelemetry trace export. Off unless an endpoint is set; then every proxied request is a
/// server span that continues the caller's W3C trace and is passed on upstream in `traceparent`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Share of new traces sampled (callers' sampling decisions are kept).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "bulwark-sidecar".into(),
            sample_ratio: 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (h2c), every policy applies.
    Http,
    /// Plain TCP (NBD and other binary protocols): connect, breaker, byte counts.
    Tcp,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Public address → the local node.
    Inbound,
    /// The local node's peer traffic → peer sidecars, routed by each request's authority.
    Outbound,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default = "default_direction")]
    pub direction: Direction,
    /// Inbound: the local node's address. Outbound: unused (the request names its peer).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Outbound: which peer addresses may be reached (`HOST:PORT`, or `*` for any).
    #[serde(default)]
    pub allowed_upstreams: Vec<String>,
    /// Class of requests no rule matches.
    #[serde(default = "default_class")]
    pub class: TrafficClass,
    /// Replace the global policies for this listener.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// HTTP/1 header read deadline (slowloris guard).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest accepted request head (HTTP/1 buffer, HTTP/2 header list), bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest response head accepted from the upstream and largest single body read, bytes (a
    /// bigger head is a 502). Unset: heads up to 408 KiB, body reads of up to 64 KiB (`upstream/h1.rs`).
    /// Smaller bounds the memory an in-flight answer holds, at more system calls per large body.
    #[serde(default)]
    pub upstream_buffer_bytes: Option<usize>,
    /// Inbound HTTP: peer sidecars' matching public addresses that reads fail over to when the
    /// local node cannot answer (see `policy::degrade`).
    #[serde(default)]
    pub failover: Vec<String>,
    /// Inbound HTTP: canary upstreams (`HOST:PORT`, same API as `upstream`) that new request
    /// shapes are probed on first when `[qod] enabled`; the first is tried first.
    #[serde(default)]
    pub canaries: Vec<String>,
}

fn default_protocol() -> Protocol {
    Protocol::Http
}
fn default_direction() -> Direction {
    Direction::Inbound
}
fn default_class() -> TrafficClass {
    TrafficClass::Client
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
/// Below this a head with a few cookies would not fit (and it was hyper's minimum, which the
/// setting kept when the upstream client was hyper's).
const MIN_UPSTREAM_BUFFER: usize = 8192;
const MAX_UPSTREAM_BUFFER: usize = 64 << 20;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub breaker: BreakerConfig,
    pub throttle: ThrottleConfig,
    pub shed: ShedConfig,
    pub retry: RetryConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    /// Also the `route` label in metrics.
    pub name: String,
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Matches when this header is present (any value), e.g. a peer protocol header.
    #[serde(default)]
    pub header: Option<String>,
    pub class: TrafficClass,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            msg: e.to_string(),
        })?;
        if cfg.drain_timeout.is_zero() {
            cfg.drain_timeout = Duration::from_secs(10);
        }
        cfg.validate().map_err(|msg| ConfigError::Invalid {
            path: path.into(),
            msg,
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(format!(
                "worker_threads must be ≤ {MAX_WORKER_THREADS} (got {}; 0 = one per CPU)",
                self.worker_threads
            ));
        }
        if self.listeners.is_empty() {
            return Err("at least one [[listener]] is required".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        addrs.insert(self.admin.listen);
        for l in &self.listeners {
            let at = |m: String| format!("listener {:?}: {m}", l.name);
            if l.name.is_empty() || !names.insert(l.name.clone()) {
                return Err(format!(
                    "listener names must be unique and non-empty (found {:?})",
                    l.name
                ));
            }
            if !addrs.insert(l.listen) {
                return Err(at(format!("address {} is used twice", l.listen)));
            }
            match (l.direction, &l.upstream) {
                (Direction::Inbound, None) => {
                    return Err(at("inbound listeners need `upstream`".into()))
                }
                (Direction::Inbound, Some(u)) => {
                    check_host_port(u).map_err(|e| at(format!("upstream {u:?}: {e}")))?
                }
                (Direction::Outbound, _) if l.protocol == Protocol::Tcp => {
                    return Err(at(
                        "outbound listeners are HTTP only (they route by request authority)".into(),
                    ))
                }
                (Direction::Outbound, _) if l.allowed_upstreams.is_empty() => {
                    return Err(at(
                        "outbound listeners need `allowed_upstreams` (peer addresses, or \"*\")"
                            .into(),
                    ))
                }
                _ => {}
            }
            for u in &l.allowed_upstreams {
                if u != "*" {
                    check_host_port(u).map_err(|e| at(format!("allowed upstream {u:?}: {e}")))?;
                }
            }
            if l.connect_timeout.is_zero() || l.header_read_timeout.is_zero() {
                return Err(at(
                    "connect_timeout and header_read_timeout must be > 0".into()
                ));
            }
            if l.max_header_bytes < 8192 {
                return Err(at("max_header_bytes must be at least 8192".into()));
            }
            match l.upstream_buffer_bytes {
                Some(n) if !(MIN_UPSTREAM_BUFFER..=MAX_UPSTREAM_BUFFER).contains(&n) => {
                    return Err(at(format!(
                        "upstream_buffer_bytes must be {MIN_UPSTREAM_BUFFER}..={MAX_UPSTREAM_BUFFER} (got {n})"
                    )))
                }
                Some(_) if l.protocol == Protocol::Tcp => {
                    return Err(at("upstream_buffer_bytes is for HTTP listeners".into()))
                }
                _ => {}
            }
            if let Some(p) = &l.policy {
                p.validate().map_err(at)?;
            }
            for f in &l.failover {
                check_host_port(f).map_err(|e| at(format!("failover {f:?}: {e}")))?;
                if l.direction != Direction::Inbound || l.protocol != Protocol::Http {
                    return Err(at("failover is for inbound HTTP listeners".into()));
                }
                if *f == l.listen.to_string() {
                    return Err(at(format!("failover {f:?} is this listener itself")));
                }
            }
            for c in &l.canaries {
                check_host_port(c).map_err(|e| at(format!("canary {c:?}: {e}")))?;
                if l.direction != Direction::Inbound || l.protocol != Protocol::Http {
                    return Err(at("canaries are for inbound HTTP listeners".into()));
                }
                if l.upstream.as_deref() == Some(c.as_str()) {
                    return Err(at(format!(
                        "canary {c:?} is this listener's own upstream: a canary must be another process"
                    )));
                }
            }
        }
        self.policy.validate()?;
        self.qod.validate().map_err(|e| format!("qod: {e}"))?;
        self.degrade
            .validate()
            .map_err(|e| format!("degrade: {e}"))?;
        let mut ids = std::collections::HashSet::new();
        for f in &self.faults {
            f.validate().map_err(|e| format!("[[fault]]: {e}"))?;
            if !ids.insert(f.id.as_str()) {
                return Err(format!("[[fault]]: id {:?} is used twice", f.id));
            }
        }
        for p in &self.mesh.peers {
            check_host_port(p).map_err(|e| format!("mesh.peers {p:?}: {e}"))?;
        }
        for r in &self.class_rules {
            if r.path_prefix.is_none() && r.header.is_none() {
                return Err(format!(
                    "class_rule {:?}: give a path_prefix or a header",
                    r.name
                ));
            }
        }
        if !self.admin.listen.ip().is_loopback()
            && self.admin.token.as_deref().unwrap_or("").is_empty()
        {
            return Err(format!(
                "admin.listen {} is not loopback: set admin.token (the admin API can change the proxy)",
                self.admin.listen
            ));
        }
        if let Some(t) = self.toxiproxy.listen {
            if !addrs.insert(t) {
                return Err(format!("toxiproxy.listen {t} is used twice"));
            }
            if !t.ip().is_loopback() && !self.toxiproxy.allow_non_loopback {
                return Err(format!(
                    "toxiproxy.listen {t} is not loopback: the fault API has no authentication; set toxiproxy.allow_non_loopback = true to accept that"
                ));
            }
        }
        if let Some(e) = &self.telemetry.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "telemetry.otlp_endpoint {e:?}: must be an http:// or https:// URL"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(format!(
                "telemetry.sample_ratio {} must be within 0..=1",
                self.telemetry.sample_ratio
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| format!("log.level {:?}: {e}", self.log.level))?;
        Ok(())
    }

    /// The class and route name of a request: first matching rule, else the listener's class.
    pub fn classify<'a>(
        &'a self,
        listener: &ListenerConfig,
        path: &str,
        headers: &http::HeaderMap,
    ) -> (TrafficClass, &'a str) {
        for r in &self.class_rules {
            let path_ok = r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p));
            let header_ok = r.header.as_deref().is_none_or(|h| headers.contains_key(h));
            if path_ok && header_ok {
                return (r.class, &r.name);
            }
        }
        (listener.class, "other")
    }

    pub fn policy_for<'a>(&'a self, l: &'a ListenerConfig) -> &'a PolicyConfig {
        l.policy.as_ref().unwrap_or(&self.policy)
    }

    /// What `/config` shows: everything but secrets.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        if c.admin.token.is_some() {
            c.admin.token = Some("<redacted>".into());
        }
        if c.mesh.token.is_some() {
            c.mesh.token = Some("<redacted>".into());
        }
        c
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.breaker
            .validate()
            .map_err(|e| format!("policy.breaker: {e}"))?;
        self.throttle
            .validate()
            .map_err(|e| format!("policy.throttle: {e}"))?;
        self.shed
            .validate()
            .map_err(|e| format!("policy.shed: {e}"))?;
        self.retry
            .validate()
            .map_err(|e| format!("policy.retry: {e}"))?;
        Ok(())
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT")?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    port.parse::<u16>()
        .map_err(|_| format!("bad port {port:?}"))?;
    Ok(())
}
