//! The admin API's wire types: what a client (`chaos`, `canary`, scripts written in Rust) sends to a
//! sidecar's admin listener and its Toxiproxy-compatible fault API, and what it reads back. Use them
//! with [`super::client`]; nothing here pulls in the data plane.
//!
//! Where the data plane already has a type that *is* the wire form, it is re-exported here rather
//! than copied, so there is one definition: the fault spec ([`FaultSpec`], validated with
//! [`FaultSpec::validate`], the same rules `POST /faults` applies), a listed fault
//! ([`FaultStatus`]), a circuit ([`CircuitInfo`]), a blacklist entry ([`BlacklistEntry`]), a
//! stored outage ([`Outage`]) and a traffic split ([`SplitSpec`], [`SplitStatus`]). The types defined here are the shapes the server builds inline or
//! keeps private (outage request, stats, blacklist add, toxics); the tests at the bottom check each
//! against the server's own serialization or parser, so the two cannot drift apart silently.
//!
//! | call | request | answer |
//! |---|---|---|
//! | `GET /faults` | | [`FaultList`] |
//! | `POST /faults` | [`FaultSpec`] | `201` [`FaultStatus`] |
//! | `DELETE /faults/{id}` | | `204` |
//! | `DELETE /faults` | | [`Removed`] |
//! | `GET /outages` | | `[`[`OutageEntry`]`]` |
//! | `POST /outages` | [`OutageSpec`] | `201` [`OutageEntry`] |
//! | `DELETE /outages/{id}` | | `204` |
//! | `GET /circuits` | | `[`[`CircuitInfo`]`]` |
//! | `GET /stats` | | [`Stats`] |
//! | `GET /qod/blacklist` | | `[`[`BlacklistEntry`]`]` |
//! | `POST /qod/blacklist` | [`BlacklistAdd`] | `201` [`BlacklistEntry`] |
//! | `DELETE /qod/blacklist/{id}` | | `204` |
//! | `PUT /split/{listener}` | [`SplitSpec`] | `200` [`SplitStatus`]; `400`, `404`, `409` |
//! | `GET /split/{listener}` | | [`SplitStatus`]; `404` when none is live |
//! | `DELETE /split/{listener}` | | `204`; `404` when none was live |
//! | `GET /split` | | [`SplitList`] |
//! | `GET /metrics` | | OpenMetrics text |
//! | `GET /ready`, `GET /live` | | `200`/`503` text |
//! | `POST /reload` | | `200`/`400` text |
//!
//! Errors: the admin API answers `{"error": "<message>"}` ([`ErrorBody`]) or a line of text; the
//! Toxiproxy-compatible API answers `{"error": "<message>", "status": <code>}`.
//!
//! Toxiproxy-compatible API (its own port): `GET /proxies` → name → [`ProxyInfo`];
//! `POST /proxies/{proxy}/toxics` with a toxic create body (JSON, checked by
//! [`validate_toxic_create`]) → [`ToxicInfo`]; `DELETE /proxies/{proxy}/toxics/{name}` → `204`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::classify::TrafficClass;
pub use crate::policy::breaker::CircuitInfo;
pub use crate::policy::fault::{Delay, FaultKind, FaultSpec, FaultStatus, HeaderMatch, Ttl};
pub use crate::policy::outage::{Outage, Phase};
pub use crate::policy::qod::blacklist::{Entry as BlacklistEntry, Sample as BlacklistSample};
pub use crate::policy::qod::signature::Described as SignatureDescription;
pub use crate::policy::split::{
    LatencyHistogram, Outcomes, SplitSpec, SplitStatus, Subset, SubsetFault, SubsetStatus,
    REHEARSAL,
};
pub use crate::toxiproxy::toxics::Stream;

/// An admin API error body: `{"error": "<message>"}` (the Toxiproxy-compatible API adds `status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /faults`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultList {
    pub faults: Vec<FaultStatus>,
}

/// `GET /split`: every live split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitList {
    pub splits: Vec<SplitStatus>,
}

/// `DELETE /faults`: how many live faults were removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: usize,
}

/// `POST /outages`: a planned outage window (durations as humantime strings on the wire).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageSpec {
    /// How long the node is down (after the drain).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// How long peers are told to drain before it goes down (the server's default: 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain: Option<Duration>,
    /// RFC 3339 start; default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Or relative: start this long from now.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_in: Option<Duration>,
    /// Recurring: the window repeats this often.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    /// Recurring: stop after this many windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default)]
    pub reason: String,
}

/// An outage as `GET /outages` lists it and `POST /outages` answers: the stored outage, where it
/// stands now, and whose it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutageEntry {
    #[serde(flatten)]
    pub outage: Outage,
    pub phase: Phase,
    /// When the current (or next) window starts draining and when it is back, ms since epoch.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// `local` (this node's) or `peer` (announced by another sidecar).
    pub scope: String,
}

/// `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub open_connections: usize,
    pub draining: bool,
    /// Requests in flight per listener.
    pub in_flight: BTreeMap<String, usize>,
}

/// `POST /qod/blacklist`: an entry added by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistAdd {
    /// The fine signature: 16 hex digits.
    pub id: String,
    /// At most 30 days.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// A toxic as the Toxiproxy-compatible API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToxicInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub stream: Stream,
    pub toxicity: f32,
    #[serde(default)]
    pub attributes: serde_json::Value,
    /// Bulwark extension: removed this many ms after its last create/update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A proxy as the Toxiproxy-compatible API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyInfo {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    #[serde(default)]
    pub toxics: Vec<ToxicInfo>,
}

/// Checks a `POST /proxies/{proxy}/toxics` body by the rules the server applies (type, stream,
/// toxicity, attributes, name, `ttl_ms`); `Err` carries the server's message.
pub fn validate_toxic_create(body: &serde_json::Value) -> Result<(), String> {
    crate::toxiproxy::toxics::Toxic::from_create(body, 0)
        .map(|_| ())
        .map_err(|e| e.msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outage_spec_is_what_the_server_parses() {
        let spec = OutageSpec {
            duration: Duration::from_secs(90),
            drain: Some(Duration::from_secs(2)),
            reason: "chaos".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            json!({"duration": "1m 30s", "drain": "2s", "reason": "chaos"})
        );
        let r: crate::policy::outage::OutageRequest = serde_json::from_value(v).unwrap();
        assert_eq!(
            (r.duration, r.drain),
            (spec.duration, Duration::from_secs(2))
        );
        let full = OutageSpec {
            start_in: Some(Duration::from_secs(1)),
            every: Some(Duration::from_secs(60)),
            count: Some(3),
            start: Some("2030-01-01T00:00:00Z".into()),
            ..spec
        };
        let r: crate::policy::outage::OutageRequest =
            serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!((r.every, r.count), (full.every, Some(3)));
    }

    #[test]
    fn outage_entry_reads_what_the_server_lists() {
        let o = Outage {
            id: "o1".into(),
            node: "127.0.0.1:9901".into(),
            upstreams: vec!["127.0.0.1:5001".into()],
            start_ms: 1_000,
            drain_ms: 100,
            duration_ms: 1_000,
            every_ms: None,
            count: None,
            reason: "r".into(),
            cancelled: false,
        };
        let listed = crate::policy::outage::Listed {
            status: o.status(1_050),
            outage: o.clone(),
            scope: "local",
        };
        let v = serde_json::to_value(&listed).unwrap();
        let e: OutageEntry = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            (&e.outage, e.phase, e.scope.as_str()),
            (&o, Phase::Draining, "local")
        );
        assert_eq!(serde_json::to_value(&e).unwrap(), v);
    }

    #[test]
    fn fault_spec_round_trips_and_validates() {
        let v = json!({"id": "f1", "kind": {"type": "abort", "status": 503}, "ttl": "10s"});
        let s: FaultSpec = serde_json::from_value(v.clone()).unwrap();
        s.validate().unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let bad: FaultSpec = serde_json::from_value(
            json!({"id": "f1", "kind": {"type": "abort", "status": 200}, "ttl": 1000}),
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("between 400 and 599"));
    }

    #[test]
    fn blacklist_add_is_what_the_server_takes() {
        let a = BlacklistAdd {
            id: "00112233aabbccdd".into(),
            ttl: Duration::from_secs(3600),
            note: "n".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({"id": "00112233aabbccdd", "ttl": "1h", "note": "n", "dry_run": false})
        );
    }

    #[test]
    fn toxic_shapes_and_validation_follow_the_server() {
        let body = json!({"type": "latency", "attributes": {"latency": 100}, "ttl_ms": 5});
        validate_toxic_create(&body).unwrap();
        let t = crate::toxiproxy::toxics::Toxic::from_create(&body, 1).unwrap();
        let info: ToxicInfo = serde_json::from_value(t.to_json()).unwrap();
        assert_eq!(
            (
                info.name.as_str(),
                info.type_.as_str(),
                info.stream,
                info.ttl_ms
            ),
            ("latency_downstream", "latency", Stream::Downstream, Some(5))
        );
        assert_eq!(serde_json::to_value(&info).unwrap(), t.to_json());
        assert_eq!(
            validate_toxic_create(&json!({"type": "zap"})).unwrap_err(),
            "invalid toxic type"
        );
    }
}
