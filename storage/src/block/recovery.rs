//! Background recovery, stray and orphan clean-up, and scrub.
//!
//! Every `recovery_interval` each node lists the objects (and versions) held by every up node and
//! classifies every object against its acting set: clean, degraded (a replica missing, down or
//! stale, or the acting set undersized), misplaced (a copy on a node outside the acting set) or
//! unavailable (no up replica at all). The first *up* member of an object's acting set — its
//! acting primary — copies the latest version to the replicas that lack it, at most
//! `recovery_max_active` objects at a time, and once the acting set is complete it removes the
//! strays. Every node computes the same classification from the same lists, so `health` on any
//! node reports the whole cluster without a monitor.
//!
//! Why a full listing rather than Ceph's PG logs: the lists are small (one line per 4 MiB object),
//! the scheme has no state to lose in a crash, and it converges from any starting point.

use super::meta::MetaView;
use super::service::{BlockService, ClusterMap};
use super::wire::{OpReq, OpResp};
use super::ObjectKey;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Capacity and load of one node, exchanged every round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    pub used: u64,
    pub total: u64,
    pub avail: u64,
    pub objects: u64,
    pub slow_ops: u64,
}

impl Usage {
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.used as f64 / self.total as f64
        }
    }
}

/// What one node holds: objects with their versions and used bytes, and its usage.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub objects: Vec<(ObjectKey, u64, u64)>,
    pub usage: Usage,
}

/// Per-pool figures of the last round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PoolScan {
    pub objects: u64,
    pub degraded: u64,
    pub misplaced: u64,
    pub unavailable: u64,
    /// Logical bytes stored (per object, the largest use among its up-to-date replicas).
    pub stored: u64,
    /// Raw bytes on all replicas.
    pub raw_used: u64,
    pub pgs: u32,
    pub pgs_undersized: u32,
    pub pgs_inactive: u32,
    /// Logical bytes per image id.
    #[serde(skip)]
    pub image_used: HashMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScanReport {
    /// Unix ms of the round; 0 before the first.
    pub at_ms: u64,
    pub pools: BTreeMap<String, PoolScan>,
    /// Per node id, from this round's inventories (absent when the node is down).
    #[serde(skip)]
    pub usage: HashMap<String, Usage>,
    /// Objects this node copied in the last round.
    pub recovering: u64,
    /// Inconsistencies the last scrub could not repair.
    pub scrub_errors: u64,
    pub last_scrub_ms: u64,
}

pub async fn run(svc: Arc<BlockService>) {
    let mut tick = tokio::time::interval(svc.cfg.recovery_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sync_meta(&svc).await;
        if svc.brownout.active() {
            svc.brownout
                .yielded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("brownout: this recovery round yields to client I/O");
            continue;
        }
        if let Err(e) = round(&svc).await {
            tracing::warn!(error = %e, "recovery round failed");
        }
    }
}

/// Anti-entropy for pool and image records: fetch a peer's set when its digest differs.
async fn sync_meta(svc: &Arc<BlockService>) {
    let map = svc.map();
    let digest = svc.meta().digest();
    for o in map.osds.iter().filter(|o| o.up && o.id != svc.me()) {
        let path = format!("/peer/v1/block/meta?digest={digest}");
        match svc
            .node
            .peers
            .call_json::<MetaAnswer>(&o.addr, http::Method::GET, &path, vec![])
            .await
        {
            Ok(a) if a.digest != digest => {
                if let Err(e) = svc.merge_meta(a.entries).await {
                    tracing::warn!(peer = %o.id, error = %e, "cannot merge block metadata");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(peer = %o.id, error = %e, "block metadata sync failed"),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct MetaAnswer {
    pub digest: String,
    /// Empty when the asker's digest matched.
    pub entries: Vec<super::meta::MetaEntry>,
}

pub async fn inventory(svc: &BlockService) -> Inventory {
    Inventory {
        objects: svc
            .objs
            .list_all()
            .into_iter()
            .map(|(k, i)| (k, i.version, i.used_bytes))
            .collect(),
        usage: svc.usage(),
    }
}

/// Inventories of every up node (this one included).
pub async fn inventories(svc: &BlockService, map: &ClusterMap) -> HashMap<String, Inventory> {
    let mut out = HashMap::new();
    out.insert(svc.me().to_string(), inventory(svc).await);
    let asks = map
        .osds
        .iter()
        .filter(|o| o.up && o.id != svc.me())
        .map(|o| async move {
            let r = svc
                .node
                .peers
                .call_json::<Inventory>(
                    &o.addr,
                    http::Method::GET,
                    "/peer/v1/block/inventory",
                    vec![],
                )
                .await;
            (o.id.clone(), r)
        });
    for (id, r) in futures::future::join_all(asks).await {
        match r {
            Ok(inv) => {
                out.insert(id, inv);
            }
            Err(e) => tracing::debug!(peer = %id, error = %e, "no inventory"),
        }
    }
    out
}

/// One object's replicas: holder → version.
type Holders = BTreeMap<String, u64>;

async fn round(svc: &Arc<BlockService>) -> Result<(), String> {
    let map = svc.map();
    let meta = svc.meta();
    let invs = inventories(svc, &map).await;
    let (objects, used) = holders_by_object(&invs);
    let mut report = new_report(svc, &invs);
    count_placement_groups(&meta, &map, &mut report);
    let mut work: Vec<(ObjectKey, String, u64, Vec<String>)> = Vec::new();
    let mut strays: Vec<(ObjectKey, String)> = Vec::new();
    // The inventories are taken at slightly different moments, so under writes a replica often
    // lists a version or two below another's while the writes in flight reach it. A replica that
    // really missed a write refuses every later one (version check), so its version stops moving:
    // it is stale only when it is behind with the same version as in the previous round. Without
    // this, every round under load copied whole 4 MiB objects to replicas that were merely a few
    // milliseconds behind (about ten per second in the 4K random-write benchmark).
    let before = std::mem::take(&mut *svc.behind.lock().expect("behind lock"));
    let mut behind_now: HashMap<(ObjectKey, String), u64> = HashMap::new();
    for (key, holders) in &objects {
        if meta.is_dead(&key.image) {
            // An image removed while this copy's node was away: each node removes its own.
            if holders.contains_key(svc.me()) {
                let _ = svc.objs.remove(key).await;
            }
            continue;
        }
        let Some(pool) = meta.pool_by_id(key.pool) else {
            continue;
        };
        let acting = svc.acting(&map, &pool, key);
        let vmax = holders.values().copied().max().unwrap_or(0);
        let ps = report.pools.entry(pool.name.clone()).or_default();
        ps.objects += 1;
        let stored = holders
            .iter()
            .filter(|(_, v)| **v == vmax)
            .filter_map(|(h, _)| used.get(&(key.clone(), h.clone())))
            .copied()
            .max()
            .unwrap_or(0);
        ps.stored += stored;
        *ps.image_used.entry(key.image.clone()).or_default() += stored;
        ps.raw_used += holders
            .keys()
            .filter_map(|h| used.get(&(key.clone(), h.clone())))
            .sum::<u64>();
        let latest = |r: &String| holders.get(r) == Some(&vmax);
        let mut stuck: Vec<&String> = Vec::new();
        for r in acting.iter().filter(|r| map.up.contains(*r) && !latest(r)) {
            let v = holders.get(r).copied().unwrap_or(0);
            let k = (key.clone(), r.clone());
            if before.get(&k) == Some(&v) {
                stuck.push(r);
            }
            behind_now.insert(k, v);
        }
        let current = |r: &String| !stuck.contains(&r);
        let degraded = acting.len() < pool.size as usize
            || acting.iter().any(|r| !map.up.contains(r) || !current(r));
        if degraded {
            ps.degraded += 1;
        }
        if holders.keys().any(|h| !acting.contains(h)) {
            ps.misplaced += 1;
        }
        if !holders
            .iter()
            .any(|(h, v)| *v == vmax && map.up.contains(h))
        {
            ps.unavailable += 1;
            continue;
        }
        let primary = acting.iter().find(|r| map.up.contains(*r));
        if primary.map(String::as_str) != Some(svc.me()) {
            continue;
        }
        let sources: Vec<String> = holders
            .iter()
            .filter(|(h, v)| **v == vmax && map.up.contains(*h))
            .map(|(h, _)| h.clone())
            .collect();
        for r in acting.iter().filter(|r| map.up.contains(*r) && !current(r)) {
            work.push((key.clone(), r.clone(), vmax, sources.clone()));
        }
        let complete = acting.len() == pool.size as usize
            && acting.iter().all(|r| map.up.contains(r) && latest(r));
        if complete {
            for h in holders.keys().filter(|h| !acting.contains(h)) {
                strays.push((key.clone(), h.clone()));
            }
        }
    }
    *svc.behind.lock().expect("behind lock") = behind_now;
    report.recovering = work.len() as u64;
    *svc.scan.write().expect("scan lock") = report;
    recover_objects(svc, &map, work).await;
    remove_strays(svc, &map, strays).await;
    Ok(())
}

/// Which node holds which version of every object, and the bytes each copy uses.
#[allow(clippy::type_complexity)]
fn holders_by_object(
    invs: &HashMap<String, Inventory>,
) -> (
    BTreeMap<ObjectKey, Holders>,
    HashMap<(ObjectKey, String), u64>,
) {
    let mut objects: BTreeMap<ObjectKey, Holders> = BTreeMap::new();
    let mut used: HashMap<(ObjectKey, String), u64> = HashMap::new();
    for (id, inv) in invs {
        for (k, v, u) in &inv.objects {
            objects.entry(k.clone()).or_default().insert(id.clone(), *v);
            used.insert((k.clone(), id.clone()), *u);
        }
    }
    (objects, used)
}

/// A fresh report with the nodes' usage; scrub results carry over from the previous one.
fn new_report(svc: &BlockService, invs: &HashMap<String, Inventory>) -> ScanReport {
    let mut report = ScanReport {
        at_ms: crate::pinset::now_millis(),
        usage: invs
            .iter()
            .map(|(k, v)| (k.clone(), v.usage.clone()))
            .collect(),
        ..Default::default()
    };
    let old = svc.scan.read().expect("scan lock");
    report.scrub_errors = old.scrub_errors;
    report.last_scrub_ms = old.last_scrub_ms;
    report
}

/// Placement-group availability per pool (it does not depend on objects existing).
fn count_placement_groups(meta: &MetaView, map: &ClusterMap, report: &mut ScanReport) {
    for pool in meta.pools() {
        let ps = report.pools.entry(pool.name.clone()).or_default();
        ps.pgs = pool.pg_num;
        for pg in 0..pool.pg_num {
            let acting = super::placement::place(
                pool.id,
                pg,
                pool.size as usize,
                pool.failure_domain,
                &map.osds_in,
            );
            let up = acting.iter().filter(|r| map.up.contains(*r)).count() as u32;
            if up < pool.size {
                ps.pgs_undersized += 1;
            }
            if up < pool.min_size {
                ps.pgs_inactive += 1;
            }
        }
    }
}

/// Copies each `(object, target, version, sources)` of `work`, at most `recovery_max_active`
/// objects at once.
async fn recover_objects(
    svc: &Arc<BlockService>,
    map: &ClusterMap,
    work: Vec<(ObjectKey, String, u64, Vec<String>)>,
) {
    let sem = Arc::new(tokio::sync::Semaphore::new(svc.cfg.recovery_max_active));
    let jobs = work.into_iter().map(|(key, target, version, sources)| {
        let sem = sem.clone();
        async move {
            let _p = sem.acquire().await;
            match copy(svc, map, &key, &target, version, &sources).await {
                Ok(bytes) => {
                    svc.stats.recovered_objects.fetch_add(1, Ordering::Relaxed);
                    svc.stats.recovered_bytes.fetch_add(bytes, Ordering::Relaxed);
                    tracing::info!(object = %key.name(), replica = %target, version, "object recovered");
                }
                Err(e) => {
                    tracing::warn!(object = %key.name(), replica = %target, error = %e, "recovery of object failed; retrying next round")
                }
            }
        }
    });
    futures::future::join_all(jobs).await;
}

/// Removes copies outside complete acting sets.
async fn remove_strays(svc: &BlockService, map: &ClusterMap, strays: Vec<(ObjectKey, String)>) {
    for (key, h) in strays {
        match svc
            .op(map, &h, OpReq::Remove { key: key.clone() }, Bytes::new())
            .await
        {
            Ok((OpResp::Removed, _)) => {
                tracing::info!(object = %key.name(), node = %h, "stray copy removed (acting set complete)")
            }
            other => {
                tracing::debug!(object = %key.name(), node = %h, answer = ?other, "stray removal failed")
            }
        }
    }
}

/// Copies the object at `version` (or newer) from one of `sources` to `target`; returns bytes moved.
async fn copy(
    svc: &BlockService,
    map: &ClusterMap,
    key: &ObjectKey,
    target: &str,
    version: u64,
    sources: &[String],
) -> Result<u64, String> {
    let mut last = String::from("no source");
    // Prefer this node's own copy: one network transfer instead of two.
    let mut order: Vec<&String> = sources.iter().filter(|s| *s == svc.me()).collect();
    order.extend(sources.iter().filter(|s| *s != svc.me()));
    for src in order {
        match svc
            .op(map, src, OpReq::Export { key: key.clone() }, Bytes::new())
            .await
        {
            Ok((OpResp::Exported { version: v, chunks }, data)) if v >= version => {
                let n = data.len() as u64;
                let req = OpReq::Import {
                    key: key.clone(),
                    version: v,
                    chunks,
                    force: false,
                };
                return match svc.op(map, target, req, data).await {
                    Ok((OpResp::Imported { .. }, _)) => Ok(n),
                    Ok((other, _)) => Err(format!("import answered {other:?}")),
                    Err(e) => Err(e),
                };
            }
            Ok((other, _)) => last = format!("{src}: {other:?}"),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Result of a scrub, as `storage scrub` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScrubReport {
    pub objects: u64,
    pub replicas_checked: u64,
    pub inconsistent: u64,
    pub repaired: u64,
    pub unrepaired: u64,
    pub errors: Vec<String>,
}

/// Deep scrub: every up replica of every object (of one pool, or all) recomputes its digest from
/// its data, verifying every checksum; replicas that are corrupt, stale or differ from the
/// majority of the latest version are repaired from a good one.
pub async fn scrub(
    svc: &BlockService,
    pool: Option<&str>,
) -> Result<ScrubReport, super::service::BlockError> {
    let map = svc.map();
    let meta = svc.meta();
    let pool_id = match pool {
        Some(p) => Some(svc.pool(p)?.id),
        None => None,
    };
    let invs = inventories(svc, &map).await;
    let mut objects: BTreeMap<ObjectKey, ()> = BTreeMap::new();
    for inv in invs.values() {
        for (k, _, _) in &inv.objects {
            if pool_id.is_none_or(|p| p == k.pool) && !meta.is_dead(&k.image) {
                objects.insert(k.clone(), ());
            }
        }
    }
    let mut rep = ScrubReport::default();
    for key in objects.keys() {
        let Some(p) = meta.pool_by_id(key.pool) else {
            continue;
        };
        rep.objects += 1;
        let acting = svc.acting(&map, &p, key);
        let up: Vec<&String> = acting.iter().filter(|r| map.up.contains(*r)).collect();
        let map_ref = &map;
        let asks = up.iter().map(|r| async move {
            let res = svc
                .op(map_ref, r, OpReq::Digest { key: key.clone() }, Bytes::new())
                .await;
            ((*r).clone(), res)
        });
        let answers = futures::future::join_all(asks).await;
        rep.replicas_checked += answers.len() as u64;
        let mut good: HashMap<(u64, String), Vec<String>> = HashMap::new();
        let mut bad: Vec<(String, String)> = Vec::new();
        for (r, a) in &answers {
            match a {
                Ok((OpResp::Digest { version, digest }, _)) => good
                    .entry((*version, digest.clone()))
                    .or_default()
                    .push(r.clone()),
                Ok((OpResp::Corrupt { msg }, _)) => {
                    bad.push((r.clone(), format!("corrupt: {msg}")))
                }
                Ok((other, _)) => bad.push((r.clone(), format!("{other:?}"))),
                Err(e) => {
                    tracing::debug!(replica = %r, error = %e, "scrub: replica did not answer")
                }
            }
        }
        let vmax = good.keys().map(|(v, _)| *v).max().unwrap_or(0);
        // The authoritative copy: the digest most replicas at the latest version agree on
        // (ties: the one the acting primary holds).
        let winner = good
            .iter()
            .filter(|((v, _), _)| *v == vmax)
            .max_by_key(|(_, holders)| {
                (
                    holders.len(),
                    holders.iter().any(|h| Some(h) == up.first().copied()),
                )
            })
            .map(|(k, _)| k.clone());
        for ((v, d), holders) in &good {
            if Some(&(*v, d.clone())) != winner.as_ref() {
                for h in holders {
                    let why = if *v < vmax {
                        format!("stale (version {v} < {vmax})")
                    } else {
                        "differs from the other replicas".to_string()
                    };
                    bad.push((h.clone(), why));
                }
            }
        }
        if bad.is_empty() {
            continue;
        }
        rep.inconsistent += 1;
        for (r, why) in bad {
            let line = format!("{} on {}: {why}", key.name(), node_name(&map, &r));
            tracing::warn!(object = %key.name(), replica = %r, problem = %why, "scrub found an inconsistent replica");
            match winner {
                Some(_) => match svc.repair(key, &r, vmax).await {
                    Ok(()) => {
                        rep.repaired += 1;
                        rep.errors.push(format!("{line} — repaired"));
                    }
                    Err(e) => {
                        rep.unrepaired += 1;
                        rep.errors.push(format!("{line} — NOT repaired: {e}"));
                    }
                },
                None => {
                    rep.unrepaired += 1;
                    rep.errors
                        .push(format!("{line} — NOT repaired: no intact replica"));
                }
            }
        }
    }
    {
        let mut s = svc.scan.write().expect("scan lock");
        s.scrub_errors = rep.unrepaired;
        s.last_scrub_ms = crate::pinset::now_millis();
    }
    Ok(rep)
}

pub fn node_name(map: &ClusterMap, id: &str) -> String {
    map.osds
        .iter()
        .find(|o| o.id == id)
        .map(|o| {
            if o.name.is_empty() {
                o.id.clone()
            } else {
                o.name.clone()
            }
        })
        .unwrap_or_else(|| id.to_string())
}
