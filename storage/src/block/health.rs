//! Health like `ceph health`: named checks, each OK / WARN / ERR, the overall status the worst of
//! them — plus the figures behind `status`, `osd tree`, `osd df` and `df`.
//!
//! One deliberate difference from Ceph: placement groups with fewer than `min_size` up replicas
//! make I/O impossible, and that is `PG_AVAILABILITY` at HEALTH_ERR here (Ceph reports it as a
//! WARN while every client hangs).

use super::recovery::{node_name, ScanReport};
use super::service::BlockService;
use serde::Serialize;
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    #[serde(rename = "HEALTH_OK")]
    Ok,
    #[serde(rename = "HEALTH_WARN")]
    Warn,
    #[serde(rename = "HEALTH_ERR")]
    Err,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "HEALTH_OK",
            Level::Warn => "HEALTH_WARN",
            Level::Err => "HEALTH_ERR",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub code: &'static str,
    pub severity: Level,
    pub summary: String,
    pub detail: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Health {
    pub status: Level,
    pub checks: Vec<Check>,
}

pub fn health(svc: &BlockService) -> Health {
    let map = svc.map();
    let scan = svc.scan.read().expect("scan lock").clone();
    let mut checks = Vec::new();
    let down: Vec<_> = map.osds.iter().filter(|o| !o.up).collect();
    if !down.is_empty() {
        checks.push(Check {
            code: "OSD_DOWN",
            severity: Level::Warn,
            summary: format!("{} osds down", down.len()),
            detail: down
                .iter()
                .map(|o| {
                    format!(
                        "osd.{} (host={}) is down (for {}s){}",
                        node_name(&map, &o.id),
                        o.host,
                        o.down_for_s,
                        if o.in_ { "" } else { ", out" }
                    )
                })
                .collect(),
        });
    }
    let inactive: u32 = scan.pools.values().map(|p| p.pgs_inactive).sum();
    let unavailable: u64 = scan.pools.values().map(|p| p.unavailable).sum();
    if inactive > 0 || unavailable > 0 {
        checks.push(Check {
            code: "PG_AVAILABILITY",
            severity: Level::Err,
            summary: format!(
                "Reduced data availability: {inactive} pgs inactive, {unavailable} objects unavailable: I/O to them is refused"
            ),
            detail: scan
                .pools
                .iter()
                .filter(|(_, p)| p.pgs_inactive > 0 || p.unavailable > 0)
                .map(|(n, p)| {
                    format!(
                        "pool '{n}': {} of {} pgs have fewer than min_size replicas up; {} objects have no up replica",
                        p.pgs_inactive, p.pgs, p.unavailable
                    )
                })
                .collect(),
        });
    }
    let objects: u64 = scan.pools.values().map(|p| p.objects).sum();
    let degraded: u64 = scan.pools.values().map(|p| p.degraded).sum();
    let undersized: u32 = scan.pools.values().map(|p| p.pgs_undersized).sum();
    if degraded > 0 || undersized > 0 {
        checks.push(Check {
            code: "PG_DEGRADED",
            severity: Level::Warn,
            summary: format!(
                "Degraded data redundancy: {degraded}/{objects} objects degraded ({:.3}%), {undersized} pgs undersized",
                pct(degraded, objects)
            ),
            detail: scan
                .pools
                .iter()
                .filter(|(_, p)| p.degraded > 0 || p.pgs_undersized > 0)
                .map(|(n, p)| {
                    format!(
                        "pool '{n}': {}/{} objects degraded, {} of {} pgs undersized",
                        p.degraded, p.objects, p.pgs_undersized, p.pgs
                    )
                })
                .collect(),
        });
    }
    let misplaced: u64 = scan.pools.values().map(|p| p.misplaced).sum();
    if misplaced > 0 {
        checks.push(Check {
            code: "OBJECT_MISPLACED",
            severity: Level::Warn,
            summary: format!(
                "{misplaced}/{objects} objects misplaced ({:.3}%)",
                pct(misplaced, objects)
            ),
            detail: vec![],
        });
    }
    let (mut full, mut near) = (Vec::new(), Vec::new());
    for (id, u) in &scan.usage {
        let r = u.ratio();
        let line = format!("osd.{} is {:.1}% full", node_name(&map, id), r * 100.0);
        if r >= svc.cfg.full_ratio {
            full.push(line);
        } else if r >= svc.cfg.nearfull_ratio {
            near.push(line);
        }
    }
    if !full.is_empty() {
        checks.push(Check {
            code: "OSD_FULL",
            severity: Level::Err,
            summary: format!("{} full osd(s): writes are refused", full.len()),
            detail: full,
        });
    }
    if !near.is_empty() {
        checks.push(Check {
            code: "OSD_NEARFULL",
            severity: Level::Warn,
            summary: format!("{} nearfull osd(s)", near.len()),
            detail: near,
        });
    }
    if scan.scrub_errors > 0 {
        checks.push(Check {
            code: "OSD_SCRUB_ERRORS",
            severity: Level::Err,
            summary: format!("{} scrub errors", scan.scrub_errors),
            detail: vec![
                "run `storage scrub` again once the replicas are back; see its output".into(),
            ],
        });
    }
    let slow: Vec<String> = scan
        .usage
        .iter()
        .filter(|(_, u)| u.slow_ops > 0)
        .map(|(id, u)| {
            format!(
                "osd.{}: {} ops slower than {:?} in the last minute",
                node_name(&map, id),
                u.slow_ops,
                svc.cfg.slow_op
            )
        })
        .collect();
    if !slow.is_empty() {
        let n: u64 = scan.usage.values().map(|u| u.slow_ops).sum();
        checks.push(Check {
            code: "SLOW_OPS",
            severity: Level::Warn,
            summary: format!("{n} slow ops"),
            detail: slow,
        });
    }
    let status = checks.iter().map(|c| c.severity).max().unwrap_or(Level::Ok);
    Health { status, checks }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

/// `storage status` (as `ceph -s`).
pub fn status(svc: &BlockService) -> serde_json::Value {
    let h = health(svc);
    let map = svc.map();
    let scan: ScanReport = svc.scan.read().expect("scan lock").clone();
    let meta = svc.meta();
    let up = map.osds.iter().filter(|o| o.up).count();
    let in_ = map.osds.iter().filter(|o| o.in_).count();
    let pgs: u32 = scan.pools.values().map(|p| p.pgs).sum();
    let undersized: u32 = scan.pools.values().map(|p| p.pgs_undersized).sum();
    let inactive: u32 = scan.pools.values().map(|p| p.pgs_inactive).sum();
    let objects: u64 = scan.pools.values().map(|p| p.objects).sum();
    let degraded: u64 = scan.pools.values().map(|p| p.degraded).sum();
    let stored: u64 = scan.pools.values().map(|p| p.stored).sum();
    let raw: u64 = scan.pools.values().map(|p| p.raw_used).sum();
    let total: u64 = scan.usage.values().map(|u| u.total).sum();
    let avail: u64 = scan.usage.values().map(|u| u.avail).sum();
    let mut pg_states = serde_json::Map::new();
    let clean = pgs - undersized;
    if clean > 0 {
        pg_states.insert("active+clean".into(), clean.into());
    }
    if undersized - inactive > 0 {
        pg_states.insert(
            "active+undersized+degraded".into(),
            (undersized - inactive).into(),
        );
    }
    if inactive > 0 {
        pg_states.insert(
            "undersized+degraded+peered (inactive)".into(),
            inactive.into(),
        );
    }
    serde_json::json!({
        "health": h,
        "osd": {"total": map.osds.len(), "up": up, "in": in_},
        "brownout": {
            "active": svc.brownout.active(),
            "recovery_rounds_yielded": svc.brownout.yielded.load(std::sync::atomic::Ordering::Relaxed),
        },
        "data": {
            "pools": meta.pools().len(),
            "images": meta.images(None).len(),
            "objects": objects,
            "degraded_objects": degraded,
            "stored_bytes": stored,
            "raw_used_bytes": raw,
            "raw_total_bytes": total,
            "raw_avail_bytes": avail,
            "pgs": pgs,
            "pg_states": pg_states,
        },
        "io": {
            "reads": svc.stats.reads.load(Ordering::Relaxed),
            "writes": svc.stats.writes.load(Ordering::Relaxed),
            "read_bytes": svc.stats.read_bytes.load(Ordering::Relaxed),
            "write_bytes": svc.stats.write_bytes.load(Ordering::Relaxed),
            "failed": svc.stats.failed.load(Ordering::Relaxed),
        },
        "recovery": {
            "objects_to_recover_by_this_node": scan.recovering,
            "recovered_objects": svc.stats.recovered_objects.load(Ordering::Relaxed),
            "recovered_bytes": svc.stats.recovered_bytes.load(Ordering::Relaxed),
        },
        "scan_at_ms": scan.at_ms,
    })
}

/// `storage osd tree`: hosts and their nodes.
pub fn osd_tree(svc: &BlockService) -> serde_json::Value {
    let map = svc.map();
    let mut hosts: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for o in &map.osds {
        hosts
            .entry(o.host.clone())
            .or_default()
            .push(serde_json::json!({
                "id": o.id, "name": node_name(&map, &o.id), "addr": o.addr,
                "status": if o.up { "up" } else { "down" }, "in": o.in_, "weight": 1.0,
                "down_for_s": o.down_for_s,
            }));
    }
    serde_json::json!({
        "root": "default",
        "hosts": hosts.into_iter().map(|(h, osds)| serde_json::json!({"host": h, "osds": osds})).collect::<Vec<_>>(),
    })
}

/// `storage osd df`: per node usage.
pub fn osd_df(svc: &BlockService) -> serde_json::Value {
    let map = svc.map();
    let scan = svc.scan.read().expect("scan lock").clone();
    let rows: Vec<_> = map
        .osds
        .iter()
        .map(|o| {
            let u = if o.id == svc.me() {
                Some(svc.usage())
            } else {
                scan.usage.get(&o.id).cloned()
            };
            serde_json::json!({
                "id": o.id, "name": node_name(&map, &o.id), "host": o.host,
                "status": if o.up { "up" } else { "down" },
                "total_bytes": u.as_ref().map(|u| u.total), "used_bytes": u.as_ref().map(|u| u.used),
                "avail_bytes": u.as_ref().map(|u| u.avail),
                "use_percent": u.as_ref().map(|u| (u.ratio() * 10000.0).round() / 100.0),
                "objects": u.as_ref().map(|u| u.objects),
            })
        })
        .collect();
    serde_json::json!({ "nodes": rows })
}

/// `storage df`: per pool.
pub fn df(svc: &BlockService) -> serde_json::Value {
    let scan = svc.scan.read().expect("scan lock").clone();
    let meta = svc.meta();
    let avail: u64 = scan.usage.values().map(|u| u.avail).min().unwrap_or(0);
    let total: u64 = scan.usage.values().map(|u| u.total).sum();
    let used: u64 = scan.usage.values().map(|u| u.used).sum();
    let raw_avail: u64 = scan.usage.values().map(|u| u.avail).sum();
    let pools: Vec<_> = meta
        .pools()
        .iter()
        .map(|p| {
            let s = scan.pools.get(&p.name).cloned().unwrap_or_default();
            serde_json::json!({
                "name": p.name, "id": p.id, "size": p.size, "min_size": p.min_size,
                "stored_bytes": s.stored, "objects": s.objects, "used_bytes": s.raw_used,
                // Every replica lands on a distinct node, so the fullest node bounds what fits.
                "max_avail_bytes": avail,
            })
        })
        .collect();
    serde_json::json!({
        "raw": {"total_bytes": total, "used_bytes": used, "avail_bytes": raw_avail},
        "pools": pools,
    })
}
