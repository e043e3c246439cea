//! Background load: the experiment's own steady traffic, so that metric probes and the report's
//! timeline have requests to measure even on an idle cluster. Each load sends `rate` requests per
//! second, each to a URL drawn with the run's seeded RNG, with at most `concurrency` in flight
//! (a tick that finds them all busy is counted as skipped, never queued: the load cannot pile up
//! behind a stalled cluster).

use crate::model::Load;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    statuses: Mutex<BTreeMap<String, u64>>,
}

/// What one load did, for the journal.
#[derive(Clone, Debug, Serialize)]
pub struct LoadStats {
    pub name: String,
    pub sent: u64,
    /// 1xx–4xx answers.
    pub ok: u64,
    /// 5xx answers and requests that got no answer.
    pub failed: u64,
    pub skipped: u64,
    pub statuses: BTreeMap<String, u64>,
}

pub struct Running {
    name: String,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// Starts one load; it runs until [`Running::stop`].
pub fn start(load: &Load, http: reqwest::Client, seed: u64) -> Running {
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let load = load.clone();
    // Each load has its own stream of draws, derived from the run's seed and its name.
    let salt = load.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let name = load.name.clone();
    let task = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed ^ salt);
        let slots = Arc::new(Semaphore::new(load.concurrency));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let method =
            reqwest::Method::from_bytes(load.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        loop {
            tick.tick().await;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                c.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let url = &load.urls[rng.random_range(0..load.urls.len())];
            let mut req = http.request(method.clone(), url).timeout(load.timeout);
            for (k, v) in &load.headers {
                req = req.header(k, v);
            }
            if let Some(b) = &load.body {
                req = req.body(b.clone());
            }
            let c = c.clone();
            c.sent.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _permit = permit;
                let class = match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        // Read the body so the request is complete (and truncations count).
                        let ok = r.bytes().await.is_ok();
                        if s >= 500 || !ok {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            c.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        if ok {
                            format!("{}xx", s / 100)
                        } else {
                            "body error".into()
                        }
                    }
                    Err(e) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        if e.is_timeout() {
                            "timeout".into()
                        } else {
                            "no answer".into()
                        }
                    }
                };
                *c.statuses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(class)
                    .or_default() += 1;
            });
        }
    });
    Running {
        name,
        counters,
        task,
    }
}

impl Running {
    pub fn stop(self) -> LoadStats {
        self.task.abort();
        let c = &self.counters;
        LoadStats {
            name: self.name,
            sent: c.sent.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            statuses: c
                .statuses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}
