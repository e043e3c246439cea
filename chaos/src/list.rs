//! `chaos list`: the planned outages the sidecars know (`GET /outages`: scheduled, announced,
//! draining, down, back), the faults `chaos` runs left in them (ids `chaos-…`, with the time they
//! have left), and the next allowed start of scheduled experiments.

use crate::model::{rfc3339, Experiment};
use serde::Serialize;
use serde_json::Value;
use sidecar::admin::client::{AdminClient, ClientError};
use std::time::{Duration, SystemTime};

#[derive(Debug, Serialize)]
pub struct SidecarListing {
    pub admin: String,
    /// None: this sidecar has no `/outages` (404).
    pub outages: Option<Vec<Value>>,
    pub chaos_faults: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExperimentListing {
    pub source: String,
    pub title: String,
    pub next_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_start: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub sidecars: Vec<SidecarListing>,
    pub experiments: Vec<ExperimentListing>,
}

/// A listing call's answer as JSON (the listing shows the sidecar's JSON as it is); `None` when
/// the sidecar does not have the endpoint (404).
fn found<T: Serialize>(r: Result<T, ClientError>) -> Result<Option<T>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(ClientError::Status {
            method,
            url,
            status,
            ..
        }) => Err(match reqwest::StatusCode::from_u16(status) {
            Ok(s) => format!("{method} {url}: {s}"),
            Err(_) => format!("{method} {url}: {status}"),
        }),
        Err(e) => Err(e.to_string()),
    }
}

fn to_values<T: Serialize>(v: Vec<T>) -> Vec<Value> {
    v.iter()
        .map(|x| serde_json::to_value(x).unwrap_or(Value::Null))
        .collect()
}

pub async fn collect(admins: &[String], experiments: &[Experiment]) -> Listing {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_default();
    let mut sidecars = Vec::new();
    for admin in admins {
        let admin = admin.trim_end_matches('/').to_string();
        let client = AdminClient::with_http(&admin, http.clone()).timeout(Duration::from_secs(3));
        let mut l = SidecarListing {
            admin: admin.clone(),
            outages: None,
            chaos_faults: Vec::new(),
            error: None,
        };
        match found(client.list_outages().await) {
            Ok(o) => l.outages = o.map(to_values),
            Err(e) => l.error = Some(e),
        }
        if l.error.is_none() {
            match found(client.list_faults().await) {
                Ok(Some(faults)) => {
                    let ours = faults
                        .into_iter()
                        .filter(|f| f.spec.id.starts_with("chaos-"));
                    l.chaos_faults = to_values(ours.collect());
                }
                Ok(None) => {}
                Err(e) => l.error = Some(e),
            }
        }
        sidecars.push(l);
    }
    let now = SystemTime::now();
    let experiments = experiments
        .iter()
        .map(|e| {
            let next = e
                .schedule
                .as_ref()
                .map(|s| s.next_start(now, e.runtime.max_duration));
            ExperimentListing {
                source: e.source.clone(),
                title: e.title.clone(),
                next_start: match &next {
                    Some(Ok(t)) => Some(rfc3339(*t)),
                    None => Some("now (no schedule)".into()),
                    Some(Err(_)) => None,
                },
                no_start: next.and_then(|n| n.err()),
            }
        })
        .collect();
    Listing {
        sidecars,
        experiments,
    }
}

/// A time field: the contract's RFC 3339 `start`, or the sidecar's `start_ms`.
fn time(v: &Value, k: &str) -> String {
    match v[format!("{k}_ms")].as_u64() {
        Some(ms) => rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        None => s(v, k),
    }
}

/// A duration field: a humantime string, or `*_ms`.
fn dur(v: &Value, k: &str) -> String {
    match v[format!("{k}_ms")].as_u64() {
        Some(ms) => humantime::format_duration(Duration::from_millis(ms)).to_string(),
        None => s(v, k),
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn print_table(l: &Listing) {
    println!(
        "{:<28} {:<18} {:<10} {:<26} {:<9} {:<7} REASON",
        "SIDECAR", "OUTAGE", "PHASE", "START", "DURATION", "DRAIN"
    );
    for sc in &l.sidecars {
        if let Some(e) = &sc.error {
            println!("{:<28} unreachable: {e}", sc.admin);
            continue;
        }
        match &sc.outages {
            None => println!(
                "{:<28} (no /outages: this sidecar cannot take planned outages)",
                sc.admin
            ),
            Some(v) if v.is_empty() => println!("{:<28} (no outages)", sc.admin),
            Some(v) => {
                for o in v {
                    println!(
                        "{:<28} {:<18} {:<10} {:<26} {:<9} {:<7} {}",
                        sc.admin,
                        s(o, "id"),
                        s(o, "phase"),
                        time(o, "start"),
                        dur(o, "duration"),
                        dur(o, "drain"),
                        s(o, "reason")
                    );
                }
            }
        }
        for f in &sc.chaos_faults {
            println!(
                "{:<28} fault {} ({}) {} ms left",
                sc.admin,
                s(f, "id"),
                f["spec"]["kind"]["type"]
                    .as_str()
                    .or(f["kind"]["type"].as_str())
                    .unwrap_or("?"),
                s(f, "remaining_ms")
            );
        }
    }
    for e in &l.experiments {
        match (&e.next_start, &e.no_start) {
            (Some(t), _) => println!(
                "experiment {:?} ({}): next allowed start {t}",
                e.title, e.source
            ),
            (None, Some(why)) => println!(
                "experiment {:?} ({}): no allowed start: {why}",
                e.title, e.source
            ),
            _ => {}
        }
    }
}
