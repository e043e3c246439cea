//! What an operator (or the `canary` controller) writes to `PUT /split/{listener}`, and what
//! `GET /split/{listener}` answers. These are the wire types; `admin::api` re-exports them.

use crate::policy::fault::Ttl;
use http::uri::Authority;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The name of the listener's own upstream as a subset: it takes the weight the others leave.
pub const STABLE: &str = "stable";
/// Longest rehearsal delay a subset's fault may add (as fault injection's own bound).
pub const MAX_FAULT_DELAY_MS: u64 = 60_000;
/// The value of `x-bulwark-fault` on an answer a subset's rehearsal fault touched.
pub const REHEARSAL: &str = "split-rehearsal";
/// Subsets beside stable, at most.
pub const MAX_SUBSETS: usize = 8;
/// A split lives at most this long without being renewed (as faults do).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_NAME_LEN: usize = 32;
const MAX_CONTROLLER_LEN: usize = 64;

/// `PUT /split/{listener}`: subsets beside the listener's stable upstream.
///
/// ```json
/// {"subsets": [{"name": "candidate", "addr": "127.0.0.21:5001", "weight": 5},
///              {"name": "baseline", "addr": "127.0.0.22:5001", "weight": 5}],
///  "ttl": "2m", "sticky": true, "controller": "canary-7f3a"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub subsets: Vec<Subset>,
    /// Mandatory: the split is gone this long after its last `PUT` (a dead controller leaves
    /// 100 % stable behind). Humantime (`"30s"`) or milliseconds; at most 24 h. An `Option`
    /// only so that its absence gets a precise message.
    #[serde(default)]
    pub ttl: Option<Ttl>,
    /// Keep each client (its bearer token, else its address) on one subset while the weights
    /// stay; otherwise every request is rolled.
    #[serde(default)]
    pub sticky: bool,
    /// Who owns the split: while it is live, a `PUT` naming another controller (or none) is
    /// refused with 409. Absent: anyone may replace it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// Seed of the weighted roll (reproducible runs); default: derived from the listener's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// One subset: a name (`candidate`, `baseline`, …; not `stable`), the upstream it sends to and
/// its share of the requests in percent (0–100; a weight of 0 is reachable only by pinning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    /// `HOST:PORT`, the same form as a listener's `upstream`.
    pub addr: String,
    pub weight: u32,
    /// A rehearsal fault for the requests routed to this subset (see [`SubsetFault`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<SubsetFault>,
}

impl Subset {
    /// A subset without a rehearsal fault.
    pub fn new(name: impl Into<String>, addr: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            addr: addr.into(),
            weight,
            fault: None,
        }
    }

    /// The same subset with a rehearsal fault.
    pub fn with_fault(mut self, fault: SubsetFault) -> Self {
        self.fault = Some(fault);
        self
    }
}

/// A **rehearsal fault** on one subset: `{"abort": 500, "percent": 5}` or `{"delay_ms": 300,
/// "percent": 5}` (exactly one of `abort` and `delay_ms`). It makes a good build look bad so an
/// operator can prove a rollout catches one (`canary run --rehearse abort=500,percent=5`); the
/// sidecar's own fault layer cannot do it, as it runs before the split and sees only stable's
/// upstream.
///
/// - **Which requests**: `percent` of the requests routed to the subset (by roll, stickiness or
///   pin), drawn from a second RNG seeded from the split's `seed` (so routing is the same with or
///   without a rehearsal). The draw is made once per request: a hit request gets the fault on
///   *every* attempt, so a retry cannot hide it (a bad build fails a request every time, too).
/// - **Where**: between retry and the upstream client, as if the subset answered so itself: an
///   abort is never sent, and answers `abort` (500–599: a status below 500 would count as `ok`
///   and rehearse nothing); a delay waits `delay_ms` before the attempt is sent, inside the
///   attempt's time (the per-try timeout and the latency histogram see it).
/// - **Counted** like the subset's own answer: an abort is `upstream_5xx` in the subset's
///   `attempts` and `requests` (the retry layer retries a 502–504 as it would a real one, and
///   the breaker counts it), a delay is `ok` (or `timeout`) with its latency; `fault_injected`
///   in `GET /split` counts the requests hit. The answer carries `x-bulwark-fault:
///   split-rehearsal`.
/// - **Lifetime**: the split's. It goes with the split's TTL or `DELETE`, and the owner's next
///   `PUT` keeps it only if it names it again.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetFault {
    /// Answer this status (500–599) instead of sending the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<u16>,
    /// Wait this long (at most 60 000 ms) before sending the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Share of the subset's requests that get the fault, percent in (0, 100].
    pub percent: f64,
}

impl SubsetFault {
    pub fn abort(status: u16, percent: f64) -> Self {
        Self {
            abort: Some(status),
            delay_ms: None,
            percent,
        }
    }

    pub fn delay(ms: u64, percent: f64) -> Self {
        Self {
            abort: None,
            delay_ms: Some(ms),
            percent,
        }
    }

    /// The rules `PUT /split` applies to a subset's fault.
    pub fn validate(&self) -> Result<(), String> {
        match (self.abort, self.delay_ms) {
            (Some(_), Some(_)) | (None, None) => {
                return Err("a fault is either {\"abort\": STATUS, \"percent\": P} or \
                            {\"delay_ms\": MS, \"percent\": P}"
                    .into())
            }
            (Some(s), None) if !(500..=599).contains(&s) => {
                return Err(format!(
                    "fault abort status must be 500 to 599 (an answer below 500 counts as ok \
                     and rehearses nothing), got {s}"
                ))
            }
            (None, Some(ms)) if ms == 0 || ms > MAX_FAULT_DELAY_MS => {
                return Err(format!(
                    "fault delay_ms must be 1 to {MAX_FAULT_DELAY_MS}, got {ms}"
                ))
            }
            _ => {}
        }
        if !(self.percent > 0.0 && self.percent <= 100.0) {
            return Err(format!(
                "fault percent must be above 0 and at most 100, got {}",
                self.percent
            ));
        }
        Ok(())
    }
}

impl SplitSpec {
    /// Every rule `PUT /split` applies; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.ttl()?;
        if self.subsets.is_empty() || self.subsets.len() > MAX_SUBSETS {
            return Err(format!(
                "a split needs 1 to {MAX_SUBSETS} subsets beside stable, got {}",
                self.subsets.len()
            ));
        }
        let mut total = 0u32;
        for (i, s) in self.subsets.iter().enumerate() {
            validate_name(&s.name)?;
            if self.subsets[..i].iter().any(|o| o.name == s.name) {
                return Err(format!("subset name {:?} appears twice", s.name));
            }
            parse_addr(&s.addr).map_err(|e| format!("subset {:?}: {e}", s.name))?;
            if let Some(f) = &s.fault {
                f.validate()
                    .map_err(|e| format!("subset {:?}: {e}", s.name))?;
            }
            if s.weight > 100 {
                return Err(format!(
                    "subset {:?}: weight must be 0 to 100 (percent), got {}",
                    s.name, s.weight
                ));
            }
            total += s.weight;
        }
        if total > 100 {
            return Err(format!(
                "weights add up to {total}; at most 100 (stable gets what is left)"
            ));
        }
        if let Some(c) = &self.controller {
            if c.is_empty() || c.len() > MAX_CONTROLLER_LEN || c.chars().any(char::is_control) {
                return Err(format!(
                    "controller must be 1 to {MAX_CONTROLLER_LEN} printable characters"
                ));
            }
        }
        Ok(())
    }

    /// The TTL, checked: present, above zero, at most [`MAX_TTL`].
    pub fn ttl(&self) -> Result<Duration, String> {
        match self.ttl {
            None => Err(
                "ttl is mandatory (e.g. \"ttl\": \"2m\"): a controller that dies must not \
                 leave its split behind"
                    .into(),
            ),
            Some(Ttl(d)) if d.is_zero() => Err("ttl must be above zero".into()),
            Some(Ttl(d)) if d > MAX_TTL => Err(format!("ttl must be at most 24h, got {d:?}")),
            Some(Ttl(d)) => Ok(d),
        }
    }

    /// What stable gets: 100 minus the subsets' weights.
    pub fn stable_weight(&self) -> u32 {
        100u32.saturating_sub(self.subsets.iter().map(|s| s.weight).sum())
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars {
        return Err(format!(
            "subset name {name:?}: 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '-' and '_'"
        ));
    }
    if name == STABLE {
        return Err(
            "subset name \"stable\" is the listener's own upstream; it takes the weight \
             the subsets leave"
                .into(),
        );
    }
    Ok(())
}

/// `HOST:PORT`, nothing else (no scheme, no user info, no path).
pub(crate) fn parse_addr(addr: &str) -> Result<Authority, String> {
    let a: Authority = addr
        .parse()
        .map_err(|e| format!("addr {addr:?} is not HOST:PORT ({e})"))?;
    if a.port_u16().is_none() || a.host().is_empty() || addr.contains('@') {
        return Err(format!("addr {addr:?} is not HOST:PORT"));
    }
    Ok(a)
}

/// `GET /split/{listener}`: the live split, what is left of its TTL, and per subset (stable
/// first) its weight and what it counted since the split was installed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitStatus {
    pub listener: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    pub sticky: bool,
    /// The TTL of the last `PUT`, in ms, and what is left of it.
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    /// Changes whenever the counters start from zero (a new install; not a `PUT` by the owning
    /// controller over its live split, which keeps them), so a reader diffing them notices.
    pub generation: u64,
    /// When this generation was installed, ms since the Unix epoch.
    pub installed_ms: u64,
    pub subsets: Vec<SubsetStatus>,
}

impl SplitStatus {
    pub fn subset(&self, name: &str) -> Option<&SubsetStatus> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// One subset's share and counters, cumulative since the split's generation began.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubsetStatus {
    pub name: String,
    pub addr: String,
    pub weight: u32,
    /// Requests routed to the subset, by their final outcome (after retries), as this layer
    /// saw them (before the degrade layer's cache or failover could hide a failure).
    pub requests: Outcomes,
    /// Every attempt sent to the subset (a retried request counts each try), by outcome.
    pub attempts: Outcomes,
    /// Attempts that were retries (attempt 2 and later).
    pub retries: u64,
    /// Time to response headers per attempt.
    pub latency: LatencyHistogram,
    /// The subset's rehearsal fault, if its split has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<SubsetFault>,
    /// Requests the rehearsal fault hit (each counted in `requests` by its outcome as well).
    #[serde(default)]
    pub fault_injected: u64,
}

/// Outcomes of requests or attempts. `ok`: an answer below 500; `degraded`: an answer a
/// sidecar further on served from its cache or a failover peer (`x-bulwark-degraded`);
/// `upstream_5xx`: the subset answered 5xx itself; `local_error`: connect refused, reset, a
/// broken answer, or a sidecar's refusal (open circuit; a 5xx carrying `x-bulwark-error`);
/// `timeout`: per-try timeout or deadline (an attempt abandoned before its answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    pub ok: u64,
    pub degraded: u64,
    pub upstream_5xx: u64,
    pub local_error: u64,
    pub timeout: u64,
}

impl Outcomes {
    pub fn total(&self) -> u64 {
        self.ok + self.degraded + self.upstream_5xx + self.local_error + self.timeout
    }

    /// Everything that is not `ok` or `degraded`.
    pub fn errors(&self) -> u64 {
        self.upstream_5xx + self.local_error + self.timeout
    }
}

/// A latency histogram: `counts[i]` observations at most `bounds_seconds[i]` (and above the one
/// before); the last count is above every bound. Not cumulative, so two readings subtract.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub bounds_seconds: Vec<f64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// The upper bound of the bucket holding quantile `q` (0–1); `None` when empty, infinity
    /// when it falls above the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.bounds_seconds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}
