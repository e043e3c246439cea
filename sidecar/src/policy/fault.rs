//! HTTP fault injection for planned outages and chaos experiments: abort with a status, delay
//! (fixed or drawn from a distribution), connection reset, blackhole, corrupt payload, truncated
//! payload and bandwidth limit, matched by route, method, header, peer, upstream, listener and
//! traffic class, applied to a percentage of the matching requests.
//!
//! The layer goes first in the inbound stack (right after request id / trace span), so an injected
//! failure looks like a real one to the caller and costs nothing behind it.
//!
//! # Fault spec (JSON on the admin API, TOML in config)
//!
//! ```json
//! {
//!   "id": "slow-pins",                       // unique
//!   "kind": {"type": "delay", "dist": "uniform", "min_ms": 100, "max_ms": 500},
//!   "ttl": "10m",                            // mandatory: humantime string or milliseconds, ≤ 24h
//!   "percent": 50,                           // 0–100, default 100
//!   "route": "/api/v0/pin",                  // path prefix
//!   "method": "POST",
//!   "header": {"name": "x-tenant", "value": "a"},   // value optional: presence only
//!   "peer": "127.0.0.12",                    // the client's IP address
//!   "upstream": "127.0.0.13:5001",           // the upstream the request goes to (outbound)
//!   "listener": "api",                       // the listener's name (see FaultLayer::for_listener)
//!   "class": "replication"                   // control | replication | client
//! }
//! ```
//!
//! `kind` is one of
//! - `{"type": "abort", "status": 503}` (400..=599): answered at once, never forwarded;
//! - `{"type": "delay", "fixed_ms": 200}` (also `"dist": "fixed"`),
//!   `{"type": "delay", "dist": "uniform", "min_ms": 100, "max_ms": 500}`,
//!   `{"type": "delay", "dist": "normal", "mean_ms": 200, "stddev_ms": 50}` (clamped to
//!   0..=[`MAX_DELAY_MS`]): waits, then forwards;
//! - `{"type": "reset"}`: the connection is dropped without an answer (see [`crate::error::DropConnection`]);
//! - `{"type": "blackhole"}`: never answers while the fault lives; when it expires or is deleted the
//!   held requests get a `504` (a caller with a shorter timeout has given up long before);
//! - `{"type": "corrupt", "bytes": 4}`: forwards, then flips (XOR 0xff) that many bytes of the
//!   response body — same length, wrong payload;
//! - `{"type": "truncate", "after_bytes": 1024}`: forwards, then ends the response body with an
//!   error after that many bytes, so the client sees a cut transfer (bodies that are not longer pass);
//! - `{"type": "bandwidth", "bytes_per_sec": 65536}`: forwards, then paces the response body.
//!
//! All matchers are optional and AND-ed; a spec without any matches every request. The first live
//! fault (in insertion order) whose matchers match *and* whose percent roll passes is applied;
//! a fault whose roll fails lets the next one try. Rolls (and delay / corrupt draws) come from a
//! `StdRng` seeded by the layer's seed, so a run is reproducible for the same request sequence.
//!
//! Every fault carries a TTL so a crashed controller cannot leave one behind: an expired fault
//! stops applying by itself (checked at request time with `tokio::time`) and is pruned.
//!
//! Responses touched by a fault carry `x-bulwark-fault: <id>` (synthetic ones say
//! `injected fault <id>` in the body). They deliberately do *not* carry `x-bulwark-error`: an
//! injected failure must look like the real one to the caller's breaker and retry logic.

use crate::classify::{ClientId, TrafficClass};
use crate::error::ProxyError;
use crate::policy::breaker::UpstreamName;
use crate::{Body, BoxError, Request, Response};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Names the fault that touched a response.
pub const H_FAULT: &str = "x-bulwark-fault";
/// No fault lives longer than this.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upper bound of any delay (fixed, drawn or clamped).
pub const MAX_DELAY_MS: u64 = 10 * 60 * 1000;
/// Upper bound of an id's length (it ends up in headers, logs and URLs).
pub const MAX_ID_LEN: usize = 128;
/// Bandwidth-limited bodies are released in pieces of at most this size.
const MAX_PACE_CHUNK: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Spec

/// How long a fault lives: a humantime string (`"30s"`, `"10m"`, `"1h 30m"`) or milliseconds.
/// Serialized as a humantime string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(pub Duration);

impl Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime_serde::re::humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Ttl;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a duration: a humantime string such as \"30s\" or \"10m\", or milliseconds",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<Ttl, E> {
                Ok(Ttl(Duration::from_millis(ms)))
            }
            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<Ttl, E> {
                u64::try_from(ms)
                    .map(|ms| Ttl(Duration::from_millis(ms)))
                    .map_err(|_| E::custom(format!("ttl must not be negative, got {ms}")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Ttl, E> {
                humantime_serde::re::humantime::parse_duration(s.trim())
                    .map(Ttl)
                    .map_err(|e| E::custom(format!("ttl {s:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a fault does. Internally tagged: `{"type": "abort", "status": 503}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    Abort { status: u16 },
    Delay(Delay),
    Reset,
    Blackhole,
    Corrupt { bytes: u32 },
    Truncate { after_bytes: u64 },
    Bandwidth { bytes_per_sec: u64 },
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Abort { .. } => "abort",
            Self::Delay(_) => "delay",
            Self::Reset => "reset",
            Self::Blackhole => "blackhole",
            Self::Corrupt { .. } => "corrupt",
            Self::Truncate { .. } => "truncate",
            Self::Bandwidth { .. } => "bandwidth",
        }
    }
}

/// A delay: `{"fixed_ms": 200}` (or `"dist": "fixed"`), `{"dist": "uniform", "min_ms", "max_ms"}`
/// or `{"dist": "normal", "mean_ms", "stddev_ms"}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDelay", into = "RawDelay")]
pub enum Delay {
    Fixed { ms: u64 },
    Uniform { min_ms: u64, max_ms: u64 },
    Normal { mean_ms: u64, stddev_ms: u64 },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fixed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mean_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stddev_ms: Option<u64>,
}

impl TryFrom<RawDelay> for Delay {
    type Error = String;

    fn try_from(r: RawDelay) -> Result<Self, String> {
        let dist = r.dist.as_deref().unwrap_or("fixed");
        let only = |allowed: &[&str]| -> Result<(), String> {
            let present = [
                ("fixed_ms", r.fixed_ms.is_some()),
                ("min_ms", r.min_ms.is_some()),
                ("max_ms", r.max_ms.is_some()),
                ("mean_ms", r.mean_ms.is_some()),
                ("stddev_ms", r.stddev_ms.is_some()),
            ];
            match present.iter().find(|(n, p)| *p && !allowed.contains(n)) {
                Some((n, _)) => Err(format!(
                    "delay with dist {dist:?} takes {}, not {n}",
                    allowed.join(" and ")
                )),
                None => Ok(()),
            }
        };
        let need = |v: Option<u64>, name: &str| {
            v.ok_or_else(|| format!("delay with dist {dist:?} needs {name}"))
        };
        let d = match dist {
            "fixed" => {
                only(&["fixed_ms"])?;
                Delay::Fixed {
                    ms: need(r.fixed_ms, "fixed_ms")?,
                }
            }
            "uniform" => {
                only(&["min_ms", "max_ms"])?;
                Delay::Uniform {
                    min_ms: need(r.min_ms, "min_ms")?,
                    max_ms: need(r.max_ms, "max_ms")?,
                }
            }
            "normal" => {
                only(&["mean_ms", "stddev_ms"])?;
                Delay::Normal {
                    mean_ms: need(r.mean_ms, "mean_ms")?,
                    stddev_ms: need(r.stddev_ms, "stddev_ms")?,
                }
            }
            other => {
                return Err(format!(
                    "unknown delay dist {other:?}: expected fixed, uniform or normal"
                ))
            }
        };
        d.validate()?;
        Ok(d)
    }
}

impl From<Delay> for RawDelay {
    fn from(d: Delay) -> Self {
        match d {
            Delay::Fixed { ms } => RawDelay {
                fixed_ms: Some(ms),
                ..Default::default()
            },
            Delay::Uniform { min_ms, max_ms } => RawDelay {
                dist: Some("uniform".into()),
                min_ms: Some(min_ms),
                max_ms: Some(max_ms),
                ..Default::default()
            },
            Delay::Normal { mean_ms, stddev_ms } => RawDelay {
                dist: Some("normal".into()),
                mean_ms: Some(mean_ms),
                stddev_ms: Some(stddev_ms),
                ..Default::default()
            },
        }
    }
}

impl Delay {
    fn validate(&self) -> Result<(), String> {
        let cap = |v: u64, name: &str| {
            if v > MAX_DELAY_MS {
                Err(format!(
                    "delay {name} must be at most {MAX_DELAY_MS} ms, got {v}"
                ))
            } else {
                Ok(())
            }
        };
        match *self {
            Delay::Fixed { ms } => cap(ms, "fixed_ms"),
            Delay::Uniform { min_ms, max_ms } => {
                cap(max_ms, "max_ms")?;
                if min_ms > max_ms {
                    return Err(format!(
                        "delay min_ms ({min_ms}) must not exceed max_ms ({max_ms})"
                    ));
                }
                Ok(())
            }
            Delay::Normal { mean_ms, stddev_ms } => {
                cap(mean_ms, "mean_ms")?;
                cap(stddev_ms, "stddev_ms")
            }
        }
    }

    /// Draws one delay (uniform: inclusive bounds; normal: Box–Muller, clamped to
    /// `0..=MAX_DELAY_MS`).
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        let ms = match *self {
            Delay::Fixed { ms } => ms,
            Delay::Uniform { min_ms, max_ms } => rng.random_range(min_ms..=max_ms),
            Delay::Normal { mean_ms, stddev_ms } => {
                // u1 in (0, 1] so ln(u1) is finite.
                let u1 = 1.0 - rng.random::<f64>();
                let u2 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let v = mean_ms as f64 + z * stddev_ms as f64;
                v.round().clamp(0.0, MAX_DELAY_MS as f64) as u64
            }
        };
        Duration::from_millis(ms)
    }
}

/// `{"name": "x-tenant"}` matches when the header is present, `{"name", "value"}` when one of its
/// values equals `value` exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn hundred() -> f64 {
    100.0
}

fn is_hundred(p: &f64) -> bool {
    *p == 100.0
}

/// One fault: what it does, to which requests, how often, for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub id: String,
    pub kind: FaultKind,
    /// Mandatory (an `Option` only so that its absence gets a precise message).
    #[serde(default)]
    pub ttl: Option<Ttl>,
    #[serde(default = "hundred", skip_serializing_if = "is_hundred")]
    pub percent: f64,
    /// Path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    /// The client's IP address, exactly (no CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The upstream the request is sent to ([`UpstreamName`]), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The listener's name, for layers built with [`FaultLayer::for_listener`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<TrafficClass>,
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(|_| ())
    }

    /// Checks every field and pre-parses the matchers.
    fn compile(&self) -> Result<Matcher, String> {
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN {
            return Err(format!(
                "fault id must be 1 to {MAX_ID_LEN} characters, got {}",
                self.id.len()
            ));
        }
        if !self
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(format!(
                "fault id {:?} may only contain ASCII letters, digits, '-', '_', '.' and ':'",
                self.id
            ));
        }
        let id = &self.id;
        match self.ttl {
            None => {
                return Err(format!(
                    "fault {id:?}: ttl is required (e.g. \"ttl\": \"10m\"), so that a crashed \
                     controller cannot leave the fault behind"
                ))
            }
            Some(Ttl(d)) if d.is_zero() || d > MAX_TTL => {
                return Err(format!(
                    "fault {id:?}: ttl must be more than 0 and at most 24h, got {}",
                    humantime_serde::re::humantime::format_duration(d)
                ))
            }
            Some(_) => {}
        }
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(format!(
                "fault {id:?}: percent must be between 0 and 100, got {}",
                self.percent
            ));
        }
        match &self.kind {
            FaultKind::Abort { status } if !(400..=599).contains(status) => {
                return Err(format!(
                    "fault {id:?}: abort status must be between 400 and 599, got {status}"
                ))
            }
            FaultKind::Delay(d) => d.validate().map_err(|e| format!("fault {id:?}: {e}"))?,
            FaultKind::Corrupt { bytes: 0 } => {
                return Err(format!("fault {id:?}: corrupt bytes must be at least 1"))
            }
            FaultKind::Bandwidth { bytes_per_sec: 0 } => {
                return Err(format!(
                    "fault {id:?}: bandwidth bytes_per_sec must be at least 1 (use blackhole to stop traffic)"
                ))
            }
            _ => {}
        }
        let route = match &self.route {
            Some(r) if !r.starts_with('/') => {
                return Err(format!(
                    "fault {id:?}: route must be a path prefix starting with '/', got {r:?}"
                ))
            }
            r => r.clone(),
        };
        let method = match &self.method {
            Some(m) => Some(
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("fault {id:?}: invalid method {m:?}"))?,
            ),
            None => None,
        };
        let header = match &self.header {
            Some(h) => {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("fault {id:?}: invalid header name {:?}", h.name))?;
                let value = match &h.value {
                    Some(v) => Some(
                        HeaderValue::from_str(v)
                            .map_err(|_| format!("fault {id:?}: invalid header value {v:?}"))?,
                    ),
                    None => None,
                };
                Some((name, value))
            }
            None => None,
        };
        let peer = match &self.peer {
            Some(p) => Some(p.trim().parse::<IpAddr>().map_err(|_| {
                format!("fault {id:?}: peer must be an IP address (no port, no CIDR), got {p:?}")
            })?),
            None => None,
        };
        Ok(Matcher {
            route,
            method,
            header,
            peer,
            upstream: self.upstream.clone(),
            listener: self.listener.clone(),
            class: self.class,
        })
    }
}

/// A spec's matchers, parsed once.
#[derive(Debug)]
struct Matcher {
    route: Option<String>,
    method: Option<Method>,
    header: Option<(HeaderName, Option<HeaderValue>)>,
    peer: Option<IpAddr>,
    upstream: Option<String>,
    listener: Option<String>,
    class: Option<TrafficClass>,
}

impl Matcher {
    fn matches(&self, req: &Request, listener: Option<&str>) -> bool {
        if let Some(r) = &self.route {
            if !req.uri().path().starts_with(r.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if req.method() != m {
                return false;
            }
        }
        if let Some((name, value)) = &self.header {
            let mut values = req.headers().get_all(name).iter().peekable();
            let ok = match value {
                None => values.peek().is_some(),
                Some(v) => values.any(|x| x == v),
            };
            if !ok {
                return false;
            }
        }
        if let Some(c) = self.class {
            if TrafficClass::of(req) != c {
                return false;
            }
        }
        if let Some(p) = self.peer {
            if peer_of(req) != Some(p) {
                return false;
            }
        }
        if let Some(u) = &self.upstream {
            if *UpstreamName::of(req) != **u {
                return false;
            }
        }
        if let Some(l) = &self.listener {
            if listener != Some(l.as_str()) {
                return false;
            }
        }
        true
    }
}

/// The client's address: the `SocketAddr` request extension (the edge's remote address), else the
/// address in [`ClientId::Addr`] (absent when the client sent a bearer token).
fn peer_of(req: &Request) -> Option<IpAddr> {
    if let Some(m) = crate::classify::RequestMeta::of(req) {
        return Some(m.remote.ip());
    }
    let ext = req.extensions();
    ext.get::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|| match ext.get::<ClientId>() {
            Some(ClientId::Addr(ip)) => Some(*ip),
            _ => None,
        })
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("invalid fault: {0}")]
    Invalid(String),
    #[error("fault {0:?} already exists")]
    Duplicate(String),
    #[error("no fault {0:?}")]
    NotFound(String),
}

impl FaultError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Duplicate(_) => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    /// `{"error": "<message>"}`, the admin API's error body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string() })
    }
}

/// The error a truncated body ends with.
#[derive(Debug, thiserror::Error)]
#[error("response truncated after {0} bytes by injected fault {1}")]
pub struct Truncated(pub u64, pub Arc<str>);

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Labelled by fault kind only (bounded cardinality); per-fault counts are on the admin list.
#[derive(Clone, Debug, Default)]
pub struct FaultMetrics {
    matched: Family<KindLabels, Counter>,
    injected: Family<KindLabels, Counter>,
    active: Gauge,
}

impl FaultMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "faults_matched",
            "Requests matched by an injected fault's matchers, by fault kind",
            self.matched.clone(),
        );
        registry.register(
            "faults_injected",
            "Faults injected into requests (matched and percent roll passed), by fault kind",
            self.injected.clone(),
        );
        registry.register(
            "faults_active",
            "Injected faults currently registered",
            self.active.clone(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Registry

struct Active {
    spec: FaultSpec,
    id: Arc<str>,
    matcher: Matcher,
    expires: Instant,
    ttl: Duration,
    matched: AtomicU64,
    injected: AtomicU64,
    /// Set to `true` when the fault is removed (or pruned): releases blackholed requests.
    gone: watch::Sender<bool>,
    matched_total: Counter,
    injected_total: Counter,
}

impl Active {
    fn status(&self, now: Instant) -> FaultStatus {
        FaultStatus {
            spec: self.spec.clone(),
            remaining_ms: self.expires.saturating_duration_since(now).as_millis() as u64,
            matched: self.matched.load(Ordering::Relaxed),
            injected: self.injected.load(Ordering::Relaxed),
        }
    }
}

/// A fault as listed: its spec, the time it has left and what it did so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultStatus {
    #[serde(flatten)]
    pub spec: FaultSpec,
    pub remaining_ms: u64,
    /// Requests that matched the fault's matchers.
    pub matched: u64,
    /// Of those, requests the fault was applied to (percent roll passed).
    pub injected: u64,
}

struct RegistryInner {
    /// A snapshot read on every request; writers (admin) replace it whole.
    faults: ArcSwap<Vec<Arc<Active>>>,
    write: Mutex<()>,
    metrics: FaultMetrics,
}

/// The faults of the process, shared by every listener's [`FaultLayer`] and the admin API.
#[derive(Clone)]
pub struct FaultRegistry {
    inner: Arc<RegistryInner>,
}

impl Default for FaultRegistry {
    fn default() -> Self {
        Self::new(FaultMetrics::default())
    }
}

impl std::fmt::Debug for FaultRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultRegistry")
            .field("len", &self.len())
            .finish()
    }
}

impl FaultRegistry {
    pub fn new(metrics: FaultMetrics) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                faults: ArcSwap::from_pointee(Vec::new()),
                write: Mutex::new(()),
                metrics,
            }),
        }
    }

    /// Faults registered, expired ones included until pruned.
    pub fn len(&self) -> usize {
        self.inner.faults.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.faults.load().is_empty()
    }

    /// Validates and adds `spec`; its TTL starts now. An expired fault's id can be reused.
    pub fn add(&self, spec: FaultSpec) -> Result<FaultStatus, FaultError> {
        let matcher = spec.compile().map_err(FaultError::Invalid)?;
        let ttl = spec.ttl.map(|t| t.0).unwrap_or(MAX_TTL);
        let now = Instant::now();
        let _w = self.lock();
        let mut next = self.live(now);
        if next.iter().any(|f| f.spec.id == spec.id) {
            return Err(FaultError::Duplicate(spec.id));
        }
        let kind = KindLabels {
            kind: spec.kind.name(),
        };
        let m = &self.inner.metrics;
        let active = Arc::new(Active {
            id: Arc::from(spec.id.as_str()),
            matcher,
            expires: now + ttl,
            ttl,
            matched: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            gone: watch::channel(false).0,
            matched_total: m.matched.get_or_create(&kind).clone(),
            injected_total: m.injected.get_or_create(&kind).clone(),
            spec,
        });
        let status = active.status(now);
        tracing::info!(fault = %active.id, kind = active.spec.kind.name(), ttl = ?active.ttl, "fault added");
        next.push(active);
        self.publish(next);
        Ok(status)
    }

    /// Removes the fault `id`; requests it holds (blackhole) are released.
    pub fn remove(&self, id: &str) -> Result<FaultSpec, FaultError> {
        let now = Instant::now();
        let _w = self.lock();
        let mut next = self.live(now);
        let Some(i) = next.iter().position(|f| f.spec.id == id) else {
            return Err(FaultError::NotFound(id.to_string()));
        };
        let f = next.remove(i);
        f.gone.send_replace(true);
        self.publish(next);
        tracing::info!(fault = %id, "fault removed");
        Ok(f.spec.clone())
    }

    /// Removes every fault; returns how many were live.
    pub fn clear(&self) -> usize {
        let now = Instant::now();
        let _w = self.lock();
        let n = self.live(now).len();
        for f in self.inner.faults.load().iter() {
            f.gone.send_replace(true);
        }
        self.publish(Vec::new());
        n
    }

    /// Live faults in the order they are tried.
    pub fn list(&self) -> Vec<FaultStatus> {
        let now = Instant::now();
        self.inner
            .faults
            .load()
            .iter()
            .filter(|f| f.expires > now)
            .map(|f| f.status(now))
            .collect()
    }

    /// Drops expired faults (done on every write and when a request meets one).
    pub fn prune(&self) {
        let now = Instant::now();
        let _w = self.lock();
        let next = self.live(now);
        if next.len() != self.inner.faults.load().len() {
            self.publish(next);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The live faults (caller holds the write lock); expired ones are told they are gone.
    fn live(&self, now: Instant) -> Vec<Arc<Active>> {
        let cur = self.inner.faults.load();
        let mut v = Vec::with_capacity(cur.len() + 1);
        for f in cur.iter() {
            if f.expires > now {
                v.push(f.clone());
            } else {
                f.gone.send_replace(true);
                tracing::info!(fault = %f.id, "fault expired");
            }
        }
        v
    }

    fn publish(&self, v: Vec<Arc<Active>>) {
        self.inner.metrics.active.set(v.len() as i64);
        self.inner.faults.store(Arc::new(v));
    }
}

// ---------------------------------------------------------------------------------------------
// Admin helpers (mounted under `/faults` on the admin listener)

/// `GET /faults` → `{"faults": [FaultStatus, …]}`.
pub fn handle_list(reg: &FaultRegistry) -> serde_json::Value {
    serde_json::json!({ "faults": reg.list() })
}

/// `POST /faults` with a [`FaultSpec`] as JSON → the added fault as listed (answer `201`).
/// Errors: `400` (unparsable or invalid spec, with the reason), `409` (duplicate id).
pub fn handle_add(reg: &FaultRegistry, body: &[u8]) -> Result<serde_json::Value, FaultError> {
    let spec: FaultSpec =
        serde_json::from_slice(body).map_err(|e| FaultError::Invalid(e.to_string()))?;
    let status = reg.add(spec)?;
    serde_json::to_value(status).map_err(|e| FaultError::Invalid(e.to_string()))
}

/// `DELETE /faults/{id}` → `204`; `404` when there is no such (live) fault.
pub fn handle_delete(reg: &FaultRegistry, id: &str) -> Result<(), FaultError> {
    reg.remove(id).map(|_| ())
}

/// `DELETE /faults` → `{"removed": n}`.
pub fn handle_clear(reg: &FaultRegistry) -> serde_json::Value {
    serde_json::json!({ "removed": reg.clear() })
}

// ---------------------------------------------------------------------------------------------
// Layer and service

/// Injects the registry's faults into the requests through it. Clones share the RNG.
#[derive(Clone)]
pub struct FaultLayer {
    registry: FaultRegistry,
    rng: Arc<Mutex<StdRng>>,
    listener: Option<Arc<str>>,
}

impl FaultLayer {
    /// Rolls and draws come from `StdRng::seed_from_u64(seed)`: the same seed and the same request
    /// sequence give the same faults.
    pub fn new(registry: FaultRegistry, seed: u64) -> Self {
        Self {
            registry,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            listener: None,
        }
    }

    /// Names the listener this layer serves, for specs with a `listener` matcher (a layer without a
    /// name never matches them).
    pub fn for_listener(mut self, name: &str) -> Self {
        self.listener = Some(Arc::from(name));
        self
    }

    pub fn registry(&self) -> &FaultRegistry {
        &self.registry
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    layer: FaultLayer,
}

pin_project_lite::pin_project! {
    /// The inner future untouched when no fault applies (no allocation), else a boxed one.
    #[project = FaultFutureProj]
    pub enum FaultFuture<F> {
        Pass { #[pin] fut: F },
        Fault { fut: BoxFuture<'static, Result<Response, ProxyError>> },
    }
}

impl<F> Future for FaultFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FaultFutureProj::Pass { fut } => fut.poll(cx),
            FaultFutureProj::Fault { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl FaultLayer {
    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        // The RNG has no invariant a panic could break.
        self.rng.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first live fault that matches `req` and passes its roll.
    fn pick(&self, faults: &[Arc<Active>], req: &Request) -> Option<Arc<Active>> {
        let now = Instant::now();
        let mut expired = false;
        let mut hit = None;
        for f in faults {
            if f.expires <= now {
                expired = true;
                continue;
            }
            if !f.matcher.matches(req, self.listener.as_deref()) {
                continue;
            }
            f.matched.fetch_add(1, Ordering::Relaxed);
            f.matched_total.inc();
            let p = f.spec.percent;
            let pass = if p >= 100.0 {
                true
            } else if p <= 0.0 {
                false
            } else {
                self.rng().random::<f64>() * 100.0 < p
            };
            if pass {
                f.injected.fetch_add(1, Ordering::Relaxed);
                f.injected_total.inc();
                hit = Some(f.clone());
                break;
            }
        }
        if expired {
            self.registry.prune();
        }
        hit
    }
}

fn synthetic(status: StatusCode, id: &str) -> Response {
    let mut r = http::Response::new(crate::full(format!("injected fault {id}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    tag(&mut r, id);
    r
}

fn tag(r: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert(H_FAULT, v);
    }
}

impl<S> tower::Service<Request> for FaultService<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = FaultFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let hit = {
            let faults = self.layer.registry.inner.faults.load();
            if faults.is_empty() {
                None
            } else {
                self.layer.pick(&faults, &req)
            }
        };
        let Some(f) = hit else {
            return FaultFuture::Pass {
                fut: self.inner.call(req),
            };
        };
        tracing::debug!(fault = %f.id, kind = f.spec.kind.name(), path = req.uri().path(), "injecting fault");
        let id = f.id.clone();
        let fut: BoxFuture<'static, Result<Response, ProxyError>> = match f.spec.kind {
            FaultKind::Abort { status } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                Box::pin(futures::future::ready(Ok(synthetic(status, &id))))
            }
            FaultKind::Reset => {
                let mut r = synthetic(StatusCode::BAD_GATEWAY, &id);
                r.extensions_mut()
                    .insert(crate::error::DropConnection { reason: id });
                Box::pin(futures::future::ready(Ok(r)))
            }
            FaultKind::Blackhole => {
                let mut gone = f.gone.subscribe();
                let until = f.expires;
                drop(req);
                Box::pin(async move {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = gone.wait_for(|g| *g) => {}
                    }
                    Ok(synthetic(StatusCode::GATEWAY_TIMEOUT, &id))
                })
            }
            FaultKind::Delay(d) => {
                let wait = d.sample(&mut *self.layer.rng());
                // Take the service that was polled ready; leave a clone in its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(
                    tokio::time::sleep(wait)
                        .then(move |()| tower::ServiceExt::oneshot(inner, req))
                        .map_ok(move |mut r| {
                            tag(&mut r, &id);
                            r
                        }),
                )
            }
            FaultKind::Corrupt { bytes } => {
                let rng = self.layer.rng.clone();
                Box::pin(self.inner.call(req).map_ok(move |mut r| {
                    tag(&mut r, &id);
                    r.map(|b| {
                        let positions = {
                            let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
                            corrupt_positions(
                                http_body::Body::size_hint(&b).exact(),
                                bytes,
                                &mut *rng,
                            )
                        };
                        FaultBody::new(b, Mode::Corrupt { positions }).boxed()
                    })
                }))
            }
            FaultKind::Truncate { after_bytes } => {
                Box::pin(self.inner.call(req).map_ok(move |mut r| {
                    tag(&mut r, &id);
                    r.map(|b| {
                        FaultBody::new(
                            b,
                            Mode::Truncate {
                                after: after_bytes,
                                id,
                            },
                        )
                        .boxed()
                    })
                }))
            }
            FaultKind::Bandwidth { bytes_per_sec } => {
                Box::pin(self.inner.call(req).map_ok(move |mut r| {
                    tag(&mut r, &id);
                    r.map(|b| {
                        FaultBody::new(
                            b,
                            Mode::Pace {
                                bps: bytes_per_sec,
                                start: None,
                                sleep: None,
                            },
                        )
                        .boxed()
                    })
                }))
            }
        };
        FaultFuture::Fault { fut }
    }
}

/// Which byte offsets to flip: `n` distinct offsets drawn over the body when its length is known,
/// else the first `n` bytes. Sorted ascending.
fn corrupt_positions(len: Option<u64>, n: u32, rng: &mut impl Rng) -> Vec<u64> {
    match len {
        Some(len) if len > u64::from(n) => {
            let mut set = std::collections::BTreeSet::new();
            while set.len() < n as usize {
                set.insert(rng.random_range(0..len));
            }
            set.into_iter().collect()
        }
        Some(len) => (0..len).collect(),
        None => (0..u64::from(n)).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Response bodies

enum Mode {
    /// Offsets (ascending, from the body's start) still to flip.
    Corrupt {
        positions: Vec<u64>,
    },
    Truncate {
        after: u64,
        id: Arc<str>,
    },
    Pace {
        bps: u64,
        start: Option<Instant>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

/// A response body with a fault applied to its data frames; trailers pass untouched.
struct FaultBody {
    inner: Body,
    mode: Mode,
    /// Data bytes released so far.
    sent: u64,
    /// Data taken from `inner` but not yet released (pacing).
    pending: Bytes,
    /// The body ended (truncation error sent).
    done: bool,
    /// Truncation cut a frame: the error is due on the next poll.
    cut: bool,
    corrupt_next: usize,
}

impl FaultBody {
    fn new(inner: Body, mode: Mode) -> Self {
        Self {
            inner,
            mode,
            sent: 0,
            pending: Bytes::new(),
            done: false,
            cut: false,
            corrupt_next: 0,
        }
    }
}

impl http_body::Body for FaultBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.cut {
            if let Mode::Truncate { after, id } = &this.mode {
                this.done = true;
                return Poll::Ready(Some(Err(Box::new(Truncated(*after, id.clone())))));
            }
        }
        loop {
            if let Mode::Pace { bps, start, sleep } = &mut this.mode {
                if !this.pending.is_empty() {
                    if let Some(s) = sleep.as_mut() {
                        ready!(s.as_mut().poll(cx));
                        *sleep = None;
                        let chunk = chunk_len(*bps).min(this.pending.len() as u64) as usize;
                        this.sent += chunk as u64;
                        return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(chunk)))));
                    }
                    // A byte is released once its transmission time at `bps` has passed.
                    let chunk = chunk_len(*bps).min(this.pending.len() as u64);
                    let t0 = *start.get_or_insert_with(Instant::now);
                    let due_ns = u128::from(this.sent + chunk) * 1_000_000_000 / u128::from(*bps);
                    let due = t0 + Duration::from_nanos(due_ns.min(u128::from(u64::MAX)) as u64);
                    *sleep = Some(Box::pin(tokio::time::sleep_until(due)));
                    continue;
                }
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            match &mut this.mode {
                Mode::Pace { .. } => {
                    this.pending = data;
                    continue;
                }
                Mode::Corrupt { positions } => {
                    let base = this.sent;
                    let end = base + data.len() as u64;
                    this.sent = end;
                    let from = this.corrupt_next;
                    let mut to = from;
                    while to < positions.len() && positions[to] < end {
                        to += 1;
                    }
                    if to == from {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let mut buf = BytesMut::from(&data[..]);
                    for &p in &positions[from..to] {
                        if let Some(b) = p.checked_sub(base).and_then(|o| buf.get_mut(o as usize)) {
                            *b ^= 0xff;
                        }
                    }
                    this.corrupt_next = to;
                    return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
                }
                Mode::Truncate { after, id } => {
                    let room = after.saturating_sub(this.sent);
                    if (data.len() as u64) <= room {
                        this.sent += data.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if room > 0 {
                        // Release what fits now; the error comes on the next poll, even if
                        // this was the inner body's last frame.
                        this.sent += room;
                        this.cut = true;
                        let keep = data.slice(..room as usize);
                        return Poll::Ready(Some(Ok(Frame::data(keep))));
                    }
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(Truncated(*after, id.clone())))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (!self.cut && self.pending.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Length-preserving for corrupt and pace; a truncated body keeps announcing the full
        // length, so the client can tell the transfer was cut.
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// Pieces of about 1/20 s of transfer, between 1 byte and 64 KiB.
fn chunk_len(bps: u64) -> u64 {
    (bps / 20).clamp(1, MAX_PACE_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DropConnection;
    use tower::{Layer, Service, ServiceExt};

    fn service<F, Fut>(f: F) -> tower::util::ServiceFn<F>
    where
        F: FnMut(Request) -> Fut,
        Fut: std::future::Future<Output = Result<Response, ProxyError>>,
    {
        tower::service_fn(f)
    }

    fn ok_upstream() -> impl tower::Service<
        Request,
        Response = Response,
        Error = ProxyError,
        Future = impl Future<Output = Result<Response, ProxyError>> + Send + 'static,
    > + Clone
           + Send
           + 'static {
        service(|_req| async { Ok(http::Response::new(crate::full("ok"))) })
    }

    /// An upstream answering `body` in frames of `frame` bytes.
    fn body_upstream(
        body: &'static [u8],
        frame: usize,
    ) -> impl tower::Service<
        Request,
        Response = Response,
        Error = ProxyError,
        Future = impl Future<Output = Result<Response, ProxyError>> + Send + 'static,
    > + Clone
           + Send
           + 'static {
        service(move |_req| async move {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = body
                .chunks(frame)
                .map(|c| Ok(Frame::data(Bytes::from_static(c))))
                .collect();
            let b = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed();
            Ok(http::Response::new(b))
        })
    }

    fn spec(json: serde_json::Value) -> FaultSpec {
        serde_json::from_value(json).expect("spec")
    }

    fn add(reg: &FaultRegistry, json: serde_json::Value) {
        reg.add(spec(json)).expect("add");
    }

    fn req(method: &str, path: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(crate::empty())
            .expect("req")
    }

    async fn send<S>(svc: &mut FaultService<S>, r: Request) -> Result<Response, ProxyError>
    where
        FaultService<S>: Service<Request, Response = Response, Error = ProxyError>,
    {
        svc.ready().await?.call(r).await
    }

    fn fault_of(r: &Response) -> Option<&str> {
        r.headers().get(H_FAULT).and_then(|v| v.to_str().ok())
    }

    async fn collect(r: Response) -> Result<Bytes, BoxError> {
        r.into_body().collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn no_faults_pass_through() {
        let reg = FaultRegistry::default();
        let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
        let r = send(&mut svc, req("GET", "/x")).await.expect("ok");
        assert_eq!(r.status(), 200);
        assert!(fault_of(&r).is_none());
        assert_eq!(&collect(r).await.expect("body")[..], b"ok");
        assert!(reg.is_empty());
    }

    #[tokio::test]
    async fn abort_by_route_and_method() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503},
                "ttl": "1m", "route": "/api/v0/pin", "method": "post"}),
        );
        let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
        let r = send(&mut svc, req("POST", "/api/v0/pin/add"))
            .await
            .expect("ok");
        assert_eq!(r.status(), 503);
        assert_eq!(fault_of(&r), Some("a"));
        assert_eq!(&collect(r).await.expect("body")[..], b"injected fault a\n");
        let r = send(&mut svc, req("GET", "/api/v0/pin/add"))
            .await
            .expect("ok");
        assert_eq!(r.status(), 200);
        let r = send(&mut svc, req("POST", "/api/v0/cat"))
            .await
            .expect("ok");
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn abort_by_header() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "h", "kind": {"type": "abort", "status": 500},
                "ttl": 60000, "header": {"name": "x-tenant", "value": "a"}}),
        );
        add(
            &reg,
            serde_json::json!({"id": "p", "kind": {"type": "abort", "status": 418},
                "ttl": 60000, "header": {"name": "x-chaos"}}),
        );
        let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
        let mut r = req("GET", "/");
        r.headers_mut()
            .insert("x-tenant", HeaderValue::from_static("a"));
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 500);
        let mut r = req("GET", "/");
        r.headers_mut()
            .insert("x-tenant", HeaderValue::from_static("b"));
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 200);
        let mut r = req("GET", "/");
        r.headers_mut()
            .insert("x-chaos", HeaderValue::from_static("whatever"));
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 418);
    }

    #[tokio::test]
    async fn abort_by_class_peer_upstream_listener() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "c", "kind": {"type": "abort", "status": 502},
                "ttl": "1m", "class": "replication"}),
        );
        add(
            &reg,
            serde_json::json!({"id": "p", "kind": {"type": "abort", "status": 503},
                "ttl": "1m", "peer": "127.0.0.12"}),
        );
        add(
            &reg,
            serde_json::json!({"id": "u", "kind": {"type": "abort", "status": 504},
                "ttl": "1m", "upstream": "127.0.0.13:5001"}),
        );
        add(
            &reg,
            serde_json::json!({"id": "l", "kind": {"type": "abort", "status": 429},
                "ttl": "1m", "listener": "gateway"}),
        );
        let mut svc = FaultLayer::new(reg.clone(), 1)
            .for_listener("api")
            .layer(ok_upstream());
        let mut r = req("GET", "/");
        r.extensions_mut().insert(TrafficClass::Replication);
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 502);
        let mut r = req("GET", "/");
        r.extensions_mut().insert(TrafficClass::Control);
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 200);
        // Unclassified requests are client traffic.
        assert_eq!(
            send(&mut svc, req("GET", "/")).await.expect("ok").status(),
            200
        );

        let mut r = req("GET", "/");
        r.extensions_mut()
            .insert("127.0.0.12:40000".parse::<SocketAddr>().expect("addr"));
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 503);
        let mut r = req("GET", "/");
        r.extensions_mut()
            .insert(ClientId::Addr("127.0.0.12".parse().expect("ip")));
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 503);
        let mut r = req("GET", "/");
        r.extensions_mut()
            .insert(ClientId::Addr("127.0.0.11".parse().expect("ip")));
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 200);

        let mut r = req("GET", "/");
        r.extensions_mut()
            .insert(UpstreamName(Arc::from("127.0.0.13:5001")));
        assert_eq!(send(&mut svc, r).await.expect("ok").status(), 504);

        let mut gw = FaultLayer::new(reg.clone(), 1)
            .for_listener("gateway")
            .layer(ok_upstream());
        assert_eq!(
            send(&mut gw, req("GET", "/")).await.expect("ok").status(),
            429
        );
    }

    #[tokio::test]
    async fn percent_zero_never_hundred_always() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "never", "kind": {"type": "abort", "status": 500},
                "ttl": "1m", "percent": 0}),
        );
        add(
            &reg,
            serde_json::json!({"id": "always", "kind": {"type": "abort", "status": 503},
                "ttl": "1m", "percent": 100}),
        );
        let mut svc = FaultLayer::new(reg.clone(), 7).layer(ok_upstream());
        for _ in 0..200 {
            let r = send(&mut svc, req("GET", "/")).await.expect("ok");
            assert_eq!(fault_of(&r), Some("always"));
        }
        let l = reg.list();
        assert_eq!((l[0].matched, l[0].injected), (200, 0));
        assert_eq!((l[1].matched, l[1].injected), (200, 200));
    }

    async fn run_half(seed: u64) -> Vec<bool> {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "half", "kind": {"type": "abort", "status": 503},
                "ttl": "1m", "percent": 50}),
        );
        let mut svc = FaultLayer::new(reg, seed).layer(ok_upstream());
        let mut v = Vec::new();
        for _ in 0..1000 {
            v.push(send(&mut svc, req("GET", "/")).await.expect("ok").status() == 503);
        }
        v
    }

    #[tokio::test]
    async fn percent_half_is_roughly_half_and_reproducible() {
        let a = run_half(42).await;
        let hits = a.iter().filter(|x| **x).count();
        assert!((400..=600).contains(&hits), "{hits} of 1000");
        assert_eq!(a, run_half(42).await, "same seed, same sequence");
        assert_ne!(a, run_half(43).await, "another seed, another sequence");
    }

    #[tokio::test]
    async fn failed_roll_lets_the_next_fault_try() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "first", "kind": {"type": "abort", "status": 500},
                "ttl": "1m", "percent": 0}),
        );
        add(
            &reg,
            serde_json::json!({"id": "second", "kind": {"type": "abort", "status": 503}, "ttl": "1m"}),
        );
        let mut svc = FaultLayer::new(reg, 1).layer(ok_upstream());
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert_eq!(fault_of(&r), Some("second"));
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_delay_waits_then_forwards() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "d", "kind": {"type": "delay", "fixed_ms": 250}, "ttl": "1m"}),
        );
        let mut svc = FaultLayer::new(reg, 1).layer(ok_upstream());
        let t = Instant::now();
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert_eq!(t.elapsed(), Duration::from_millis(250));
        assert_eq!(r.status(), 200);
        assert_eq!(fault_of(&r), Some("d"));
        assert_eq!(&collect(r).await.expect("body")[..], b"ok");
    }

    #[tokio::test(start_paused = true)]
    async fn uniform_delay_stays_in_bounds() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "d", "ttl": "1h",
                "kind": {"type": "delay", "dist": "uniform", "min_ms": 100, "max_ms": 300}}),
        );
        let mut svc = FaultLayer::new(reg, 3).layer(ok_upstream());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let t = Instant::now();
            send(&mut svc, req("GET", "/")).await.expect("ok");
            let ms = t.elapsed().as_millis() as u64;
            assert!((100..=300).contains(&ms), "{ms}");
            seen.insert(ms);
        }
        assert!(seen.len() > 10, "draws vary: {seen:?}");
    }

    #[test]
    fn normal_delay_is_centred_and_clamped() {
        let mut rng = StdRng::seed_from_u64(5);
        let d = Delay::Normal {
            mean_ms: 200,
            stddev_ms: 50,
        };
        let xs: Vec<u64> = (0..5000)
            .map(|_| d.sample(&mut rng).as_millis() as u64)
            .collect();
        let mean = xs.iter().sum::<u64>() as f64 / xs.len() as f64;
        assert!((190.0..210.0).contains(&mean), "{mean}");
        let within = xs.iter().filter(|x| (150..=250).contains(*x)).count();
        assert!((3000..3800).contains(&within), "{within} within 1σ");
        let wide = Delay::Normal {
            mean_ms: 10,
            stddev_ms: 1000,
        };
        for _ in 0..1000 {
            assert!(wide.sample(&mut rng) <= Duration::from_millis(MAX_DELAY_MS));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_stops_the_fault_by_itself() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503}, "ttl": "30s"}),
        );
        let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
        assert_eq!(
            send(&mut svc, req("GET", "/")).await.expect("ok").status(),
            503
        );
        assert_eq!(reg.list()[0].remaining_ms, 30_000);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(reg.list()[0].remaining_ms, 1_000);
        assert_eq!(
            send(&mut svc, req("GET", "/")).await.expect("ok").status(),
            503
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(reg.list().is_empty(), "expired faults are not listed");
        assert_eq!(
            send(&mut svc, req("GET", "/")).await.expect("ok").status(),
            200
        );
        assert!(reg.is_empty(), "the request pruned it");
        // The id is free again.
        add(
            &reg,
            serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503}, "ttl": "30s"}),
        );
    }

    #[test]
    fn invalid_specs_are_refused_with_a_reason() {
        let reg = FaultRegistry::default();
        let bad = |json: &str, want: &str| {
            let e = handle_add(&reg, json.as_bytes()).expect_err(json);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{json}");
            assert!(e.to_string().contains(want), "{json}: {e}");
        };
        bad(r#"{"id":"x","kind":{"type":"reset"}}"#, "ttl is required");
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"25h"}"#,
            "at most 24h",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":0}"#,
            "more than 0",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"soon"}"#,
            "ttl \"soon\"",
        );
        bad(
            r#"{"id":"x","kind":{"type":"abort","status":200},"ttl":"1m"}"#,
            "between 400 and 599",
        );
        bad(
            r#"{"id":"x","kind":{"type":"abort","status":600},"ttl":"1m"}"#,
            "between 400 and 599",
        );
        bad(
            r#"{"id":"x","kind":{"type":"explode"},"ttl":"1m"}"#,
            "unknown variant",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","dist":"uniform","min_ms":5,"max_ms":1},"ttl":"1m"}"#,
            "must not exceed",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","dist":"normal","mean_ms":5},"ttl":"1m"}"#,
            "needs stddev_ms",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","fixed_ms":5,"max_ms":9},"ttl":"1m"}"#,
            "not max_ms",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","dist":"pareto"},"ttl":"1m"}"#,
            "unknown delay dist",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","percent":101}"#,
            "percent",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","peer":"10.0.0.0/8"}"#,
            "IP address",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","route":"api"}"#,
            "starting with '/'",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","rout":"/api"}"#,
            "unknown field",
        );
        bad(
            r#"{"id":"","kind":{"type":"reset"},"ttl":"1m"}"#,
            "fault id",
        );
        bad(
            r#"{"id":"a b","kind":{"type":"reset"},"ttl":"1m"}"#,
            "fault id",
        );
        bad(
            r#"{"id":"x","kind":{"type":"bandwidth","bytes_per_sec":0},"ttl":"1m"}"#,
            "at least 1",
        );
        bad("not json", "invalid fault");
        assert!(reg.is_empty());
    }

    #[test]
    fn duplicate_id_conflicts_and_delete_of_unknown_is_not_found() {
        let reg = FaultRegistry::default();
        let body = br#"{"id":"x","kind":{"type":"reset"},"ttl":"1m"}"#;
        handle_add(&reg, body).expect("first");
        let e = handle_add(&reg, body).expect_err("duplicate");
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.to_json()["error"], "fault \"x\" already exists");
        handle_delete(&reg, "x").expect("delete");
        let e = handle_delete(&reg, "x").expect_err("gone");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn reset_is_marked_for_the_edge() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "r", "kind": {"type": "reset"}, "ttl": "1m"}),
        );
        let mut svc = FaultLayer::new(reg, 1).layer(ok_upstream());
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert!(DropConnection::of(&r).is_some());
        assert_eq!(
            r.status(),
            502,
            "the placeholder, if the edge does not map it"
        );
        let e = DropConnection::of(&r).expect("reset");
        assert_eq!(&*e.reason, "r");
        let r = http::Response::new(crate::empty());
        assert!(DropConnection::of(&r).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn blackhole_holds_until_the_ttl_ends() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "b", "kind": {"type": "blackhole"}, "ttl": "90s"}),
        );
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let up = service(move |_req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(http::Response::new(crate::full("ok"))) }
        });
        let mut svc = FaultLayer::new(reg, 1).layer(up);
        let t = Instant::now();
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert_eq!(t.elapsed(), Duration::from_secs(90));
        assert_eq!(r.status(), 504);
        assert_eq!(fault_of(&r), Some("b"));
        assert_eq!(calls.load(Ordering::SeqCst), 0, "never forwarded");
    }

    #[tokio::test(start_paused = true)]
    async fn blackhole_released_when_deleted() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "b", "kind": {"type": "blackhole"}, "ttl": "1h"}),
        );
        let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
        svc.ready().await.expect("ready");
        // The concrete future, spawned as is (an async block naming the service trips rustc's
        // higher-ranked inference).
        let held = tokio::spawn(svc.call(req("GET", "/")));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!held.is_finished());
        let t = Instant::now();
        handle_delete(&reg, "b").expect("delete");
        let r = held.await.expect("join").expect("ok");
        assert_eq!(r.status(), 504);
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    const PAYLOAD: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

    #[tokio::test]
    async fn corrupt_changes_bytes_not_length() {
        for (frame, json_bytes, want) in [(7, 5, 5), (100, 3, 3), (7, 1000, PAYLOAD.len())] {
            let reg = FaultRegistry::default();
            add(
                &reg,
                serde_json::json!({"id": "c", "kind": {"type": "corrupt", "bytes": json_bytes}, "ttl": "1m"}),
            );
            let mut svc = FaultLayer::new(reg, 9).layer(body_upstream(PAYLOAD, frame));
            let r = send(&mut svc, req("GET", "/")).await.expect("ok");
            assert_eq!(fault_of(&r), Some("c"));
            let got = collect(r).await.expect("body");
            assert_eq!(got.len(), PAYLOAD.len());
            let diff = got.iter().zip(PAYLOAD).filter(|(a, b)| a != b).count();
            assert_eq!(diff, want, "frame {frame}, bytes {json_bytes}");
        }
    }

    #[tokio::test]
    async fn corrupt_with_known_length_spreads_over_the_body() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "c", "kind": {"type": "corrupt", "bytes": 4}, "ttl": "1m"}),
        );
        let up = service(|_req| async { Ok(http::Response::new(crate::full(PAYLOAD))) });
        let mut svc = FaultLayer::new(reg, 11).layer(up);
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        let got = collect(r).await.expect("body");
        assert_eq!(got.len(), PAYLOAD.len());
        let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != PAYLOAD[i]).collect();
        assert_eq!(diff.len(), 4);
        assert_ne!(
            diff,
            vec![0, 1, 2, 3],
            "positions drawn over the whole body"
        );
    }

    #[tokio::test]
    async fn truncate_errors_after_n_bytes() {
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "t", "kind": {"type": "truncate", "after_bytes": 20}, "ttl": "1m"}),
        );
        let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(PAYLOAD, 7));
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert_eq!(fault_of(&r), Some("t"));
        let mut body = r.into_body();
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(&f.into_data().expect("data")),
                Some(Err(e)) => break e,
                None => panic!("body ended cleanly after {} bytes", got.len()),
            }
        };
        assert_eq!(&got[..], &PAYLOAD[..20]);
        assert!(
            err.to_string().contains("truncated after 20 bytes"),
            "{err}"
        );
        assert!(body.frame().await.is_none());

        // The cut falls inside the last frame: the error still comes.
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "t", "kind": {"type": "truncate", "after_bytes": 10}, "ttl": "1m"}),
        );
        let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(PAYLOAD, 1000));
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        let mut body = r.into_body();
        let f = body.frame().await.expect("frame").expect("data");
        assert_eq!(&f.into_data().expect("data")[..], &PAYLOAD[..10]);
        assert!(!http_body::Body::is_end_stream(&body));
        assert!(body.frame().await.expect("error").is_err());
        assert!(body.frame().await.is_none());

        // A body no longer than the limit passes whole.
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "t", "kind": {"type": "truncate", "after_bytes": 1000}, "ttl": "1m"}),
        );
        let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(PAYLOAD, 7));
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        assert_eq!(&collect(r).await.expect("whole")[..], PAYLOAD);
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_paces_the_body() {
        static BIG: [u8; 10_000] = [7u8; 10_000];
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "bw", "kind": {"type": "bandwidth", "bytes_per_sec": 1000}, "ttl": "1h"}),
        );
        let mut svc = FaultLayer::new(reg, 1).layer(body_upstream(&BIG, 4096));
        let r = send(&mut svc, req("GET", "/")).await.expect("ok");
        let t = Instant::now();
        let got = collect(r).await.expect("body");
        assert_eq!(&got[..], &BIG[..]);
        // 10 000 bytes at 1 000 B/s.
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(9_900) && e <= Duration::from_millis(10_100),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn counters_and_metrics_count() {
        let metrics = FaultMetrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let reg = FaultRegistry::new(metrics);
        add(
            &reg,
            serde_json::json!({"id": "a", "kind": {"type": "abort", "status": 503},
                "ttl": "1m", "route": "/x"}),
        );
        let mut svc = FaultLayer::new(reg.clone(), 1).layer(ok_upstream());
        for p in ["/x", "/x/1", "/y", "/x"] {
            send(&mut svc, req("GET", p)).await.expect("ok");
        }
        let l = reg.list();
        assert_eq!((l[0].matched, l[0].injected), (3, 3));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("faults_injected_total{kind=\"abort\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("faults_matched_total{kind=\"abort\"} 3"),
            "{text}"
        );
        assert!(text.contains("faults_active 1"), "{text}");
        assert_eq!(reg.clear(), 1);
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.ends_with("# EOF\n"));
        assert!(reg.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn admin_json_shapes() {
        let reg = FaultRegistry::default();
        let added = handle_add(
            &reg,
            br#"{"id":"slow","kind":{"type":"delay","dist":"uniform","min_ms":10,"max_ms":20},
                 "ttl":"10m","percent":25,"route":"/api","class":"client"}"#,
        )
        .expect("add");
        assert_eq!(
            added,
            serde_json::json!({
                "id": "slow",
                "kind": {"type": "delay", "dist": "uniform", "min_ms": 10, "max_ms": 20},
                "ttl": "10m",
                "percent": 25.0,
                "route": "/api",
                "class": "client",
                "remaining_ms": 600000,
                "matched": 0,
                "injected": 0
            })
        );
        handle_add(
            &reg,
            br#"{"id":"f","kind":{"type":"delay","fixed_ms":5},"ttl":1500}"#,
        )
        .expect("add");
        tokio::time::advance(Duration::from_secs(1)).await;
        let list = handle_list(&reg);
        assert_eq!(list["faults"].as_array().expect("array").len(), 2);
        assert_eq!(
            list["faults"][1],
            serde_json::json!({"id": "f", "kind": {"type": "delay", "fixed_ms": 5},
                "ttl": "1s 500ms", "remaining_ms": 500, "matched": 0, "injected": 0})
        );
        // Clients (chaos, canary) can read the list back.
        let back: Vec<FaultStatus> =
            serde_json::from_value(list["faults"].clone()).expect("statuses");
        assert_eq!(back, reg.list());
        // What the list says round-trips as a spec (the counters aside).
        let mut again = list["faults"][0].clone();
        for k in ["remaining_ms", "matched", "injected"] {
            again.as_object_mut().expect("object").remove(k);
        }
        let s: FaultSpec = serde_json::from_value(again).expect("round trip");
        assert_eq!(s.ttl, Some(Ttl(Duration::from_secs(600))));
        assert_eq!(handle_clear(&reg), serde_json::json!({"removed": 2}));
        assert_eq!(handle_list(&reg), serde_json::json!({"faults": []}));
    }

    /// The contract with the edge: a hyper service that returns an error for a response
    /// marked [`DropConnection`] makes hyper close the connection without writing an answer.
    #[tokio::test]
    async fn reset_mapped_by_the_edge_closes_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let reg = FaultRegistry::default();
        add(
            &reg,
            serde_json::json!({"id": "r", "kind": {"type": "reset"}, "ttl": "1m", "route": "/reset"}),
        );
        let stack = FaultLayer::new(reg, 1).layer(ok_upstream());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    return;
                };
                let stack = stack.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let mut stack = stack.clone();
                            let req: Request = req.map(|b| b.map_err(crate::box_err).boxed());
                            async move {
                                let resp = match stack.ready().await {
                                    Ok(s) => s.call(req).await,
                                    Err(e) => Err(e),
                                };
                                let resp = resp.unwrap_or_else(|e| e.into_response());
                                match DropConnection::of(&resp) {
                                    Some(reset) => Err(reset),
                                    None => Ok(resp),
                                }
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let ask = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        assert!(ask("/ok").await.starts_with("HTTP/1.1 200"));
        assert_eq!(ask("/reset").await, "", "no answer, connection closed");
    }

    #[test]
    fn specs_read_from_toml() {
        let s: FaultSpec = toml::from_str(
            r#"
            id = "cut"
            ttl = "5m"
            route = "/ipfs/"
            kind = { type = "truncate", after_bytes = 4096 }
            "#,
        )
        .expect("toml");
        s.validate().expect("valid");
        assert_eq!(s.kind, FaultKind::Truncate { after_bytes: 4096 });
    }
}
