//! Process lifecycle: bind every listener, serve, hot-reload on SIGHUP or `POST /reload`
//! (validate, then swap), and drain on SIGTERM (stop accepting, let in-flight work finish within
//! `drain_timeout`).

use crate::config::{Config, PolicyConfig, Protocol};
use crate::listen::http::ListenerRuntime;
use crate::metrics::{ProxyMetrics, ReloadLabels};
use crate::policy::breaker::{BreakerMetrics, BreakerRegistry};
use crate::policy::retry::{RetryLayer, RetryMetrics};
use crate::policy::shed::{ShedLayer, ShedMetrics};
use crate::policy::throttle::{ThrottleLayer, ThrottleMetrics};
use crate::telemetry::LogHandle;
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Open connections, so a drain knows when it is done.
#[derive(Default)]
pub struct ConnCounter {
    n: AtomicUsize,
    zero: Notify,
}

pub struct ConnGuard<'a>(&'a ConnCounter);

impl ConnCounter {
    pub fn enter(&self) -> ConnGuard<'_> {
        self.n.fetch_add(1, Ordering::SeqCst);
        ConnGuard(self)
    }

    pub fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// State that lives as long as the process, across reloads.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub config_path: Option<PathBuf>,
    pub metrics: ProxyMetrics,
    pub breakers: BreakerRegistry,
    pub breaker_metrics: BreakerMetrics,
    pub retry_metrics: RetryMetrics,
    pub throttle_metrics: ThrottleMetrics,
    pub shed_metrics: ShedMetrics,
    /// Injected HTTP faults (admin `/faults`), shared by every listener.
    pub faults: crate::policy::fault::FaultRegistry,
    /// Query-of-death probing: known signatures, strikes, the blacklist.
    pub qod: Arc<crate::policy::qod::QodState>,
    /// Planned outages, local and announced by peers.
    pub outages: Arc<crate::policy::outage::OutageRegistry>,
    pub degrade_metrics: crate::policy::degrade::DegradeMetrics,
    /// The brownout switch (admin `/brownout`).
    pub brownout: Arc<crate::policy::degrade::Brownout>,
    /// Verified content-addressed answers, for when the node cannot answer.
    pub cid_cache: Option<Arc<crate::policy::cache::CidCache>>,
    pub registry: Registry,
    pub conns: ConnCounter,
    pub draining: AtomicBool,
    pub log: Option<LogHandle>,
    /// OTLP export is on: proxied requests get spans.
    pub tracing: bool,
    runtimes: Mutex<HashMap<String, Arc<ArcSwap<ListenerRuntime>>>>,
    layers: Mutex<HashMap<String, PolicyLayers>>,
}

/// A listener's stateful policy layers. A reload keeps each one (its limiter state, in-flight count,
/// retry budget) unless that policy's own configuration changed.
#[derive(Clone)]
pub struct PolicyLayers {
    config: PolicyConfig,
    pub throttle: ThrottleLayer,
    pub shed: ShedLayer,
    pub retry: RetryLayer,
    /// Kept across reloads so the listener's fault RNG sequence is not reset.
    pub fault: crate::policy::fault::FaultLayer,
}

impl Shared {
    /// Fails when persisted state cannot be read (a corrupt blacklist file is not silently
    /// forgotten).
    pub fn new(
        cfg: Config,
        config_path: Option<PathBuf>,
        log: Option<LogHandle>,
    ) -> Result<Arc<Self>, String> {
        let metrics = ProxyMetrics::default();
        let breaker_metrics = BreakerMetrics::default();
        let retry_metrics = RetryMetrics::default();
        let throttle_metrics = ThrottleMetrics::default();
        let shed_metrics = ShedMetrics::default();
        let mut registry = Registry::with_prefix("bulwark");
        metrics.register(&mut registry);
        breaker_metrics.register(&mut registry);
        retry_metrics.register(&mut registry);
        throttle_metrics.register(&mut registry);
        shed_metrics.register(&mut registry);
        let fault_metrics = crate::policy::fault::FaultMetrics::default();
        fault_metrics.register(&mut registry);
        let qod_metrics = crate::policy::qod::QodMetrics::default();
        qod_metrics.register(&mut registry);
        let degrade_metrics = crate::policy::degrade::DegradeMetrics::default();
        degrade_metrics.register(&mut registry);
        let qod = crate::policy::qod::QodState::open(
            &cfg.qod,
            &cfg.mesh,
            cfg.admin.listen.to_string(),
            qod_metrics,
        )?;
        Ok(Arc::new(Self {
            qod,
            outages: Arc::default(),
            brownout: Arc::default(),
            cid_cache: (cfg.degrade.cache_bytes > 0).then(|| {
                Arc::new(crate::policy::cache::CidCache::new(
                    cfg.degrade.cache_bytes,
                    cfg.degrade.cache_item_bytes,
                ))
            }),
            degrade_metrics,
            faults: crate::policy::fault::FaultRegistry::new(fault_metrics),
            config: ArcSwap::from_pointee(cfg),
            config_path,
            metrics,
            breakers: BreakerRegistry::default(),
            breaker_metrics,
            retry_metrics,
            throttle_metrics,
            shed_metrics,
            registry,
            conns: ConnCounter::default(),
            draining: AtomicBool::new(false),
            log,
            tracing: false,
            runtimes: Mutex::new(HashMap::new()),
            layers: Mutex::new(HashMap::new()),
        }))
    }

    /// The policy layers for a listener under `policy`, reusing the current ones where unchanged.
    pub fn policy_layers(&self, listener: &str, policy: &PolicyConfig) -> PolicyLayers {
        let mut all = self.layers.lock().expect("layers lock");
        let old = all.get(listener);
        let throttle = match old {
            Some(o) if o.config.throttle == policy.throttle => o.throttle.clone(),
            _ => ThrottleLayer::new(policy.throttle.clone(), self.throttle_metrics.clone()),
        };
        let shed = match old {
            Some(o) if o.config.shed == policy.shed => o.shed.clone(),
            _ => ShedLayer::new(policy.shed.clone(), self.shed_metrics.clone()),
        };
        let retry = match old {
            Some(o) if o.config.retry == policy.retry => o.retry.clone(),
            _ => RetryLayer::new(policy.retry.clone(), self.retry_metrics.clone()),
        };
        let fault = match old {
            Some(o) => o.fault.clone(),
            // Seeded per listener (FNV-1a of its name): reproducible, and listeners do not
            // draw the same sequence.
            None => {
                let seed = listener.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
                });
                crate::policy::fault::FaultLayer::new(self.faults.clone(), seed)
                    .for_listener(listener)
            }
        };
        let layers = PolicyLayers {
            config: policy.clone(),
            throttle,
            shed,
            retry,
            fault,
        };
        all.insert(listener.to_string(), layers.clone());
        layers
    }

    /// In-flight requests per listener (admin `/stats`).
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        let all = self.layers.lock().expect("layers lock");
        let mut v: Vec<(String, usize)> = all
            .iter()
            .map(|(k, l)| (k.clone(), l.shed.handle().in_flight()))
            .collect();
        v.sort();
        v
    }

    /// Validates `text` as a whole new configuration and swaps it in. Listener addresses and
    /// protocols cannot change without a restart (their sockets are bound); everything else can.
    pub fn apply(&self, new: Config) -> Result<(), String> {
        let old = self.config.load_full();
        let shape = |c: &Config| {
            let mut v: Vec<_> = c
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.listen, l.protocol))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        if shape(&old) != shape(&new) || old.admin.listen != new.admin.listen {
            return self.reload_failed("listeners (names, addresses, protocols) and admin.listen cannot change on reload; restart the sidecar".into());
        }
        if old.qod.state_file != new.qod.state_file {
            return self.reload_failed(
                "qod.state_file cannot change on reload; restart the sidecar".into(),
            );
        }
        if old.worker_threads != new.worker_threads {
            return self.reload_failed(
                "worker_threads cannot change on reload; restart the sidecar".into(),
            );
        }
        if old.toxiproxy != new.toxiproxy {
            return self
                .reload_failed("[toxiproxy] cannot change on reload; restart the sidecar".into());
        }
        let new = Arc::new(new);
        let mut built = Vec::new();
        for l in new
            .listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Http)
        {
            match ListenerRuntime::build(new.clone(), &l.name, self) {
                Some(rt) => built.push((l.name.clone(), rt)),
                None => return self.reload_failed(format!("listener {:?}: cannot build", l.name)),
            }
        }
        if new.log.level != old.log.level {
            if let Some(log) = &self.log {
                log.set_level(&new.log.level)?;
            }
        }
        let rts = self.runtimes.lock().expect("runtimes lock");
        for (name, rt) in built {
            if let Some(slot) = rts.get(&name) {
                slot.store(Arc::new(rt));
            }
        }
        self.qod.reconfigure(&new.qod, &new.mesh);
        self.config.store(new);
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels {
                result: "ok".into(),
            })
            .inc();
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Re-reads the config file (SIGHUP, `POST /reload`).
    pub fn reload_from_file(&self) -> Result<(), String> {
        let Some(p) = &self.config_path else {
            return Err("no config file to reload from".into());
        };
        match Config::load(p) {
            Ok(c) => self.apply(c),
            Err(e) => self.reload_failed(e.to_string()),
        }
    }

    fn reload_failed(&self, msg: String) -> Result<(), String> {
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels {
                result: "rejected".into(),
            })
            .inc();
        tracing::error!(error = %msg, "configuration reload rejected; keeping the running configuration");
        Err(msg)
    }
}

/// Bound sockets, ready to serve (binding first means a port clash fails before anything runs).
pub struct Bound {
    listeners: Vec<(String, Protocol, TcpListener)>,
    admin: TcpListener,
    /// The Toxiproxy-compatible fault API, when `[toxiproxy] listen` is set.
    toxiproxy: Option<TcpListener>,
}

pub async fn bind(cfg: &Config) -> Result<Bound, String> {
    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        let t = TcpListener::bind(l.listen)
            .await
            .map_err(|e| format!("listener {:?}: cannot listen on {}: {e}", l.name, l.listen))?;
        listeners.push((l.name.clone(), l.protocol, t));
    }
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(|e| format!("admin: cannot listen on {}: {e}", cfg.admin.listen))?;
    let toxiproxy = match cfg.toxiproxy.listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| format!("toxiproxy: cannot listen on {a}: {e}"))?,
        ),
        None => None,
    };
    Ok(Bound {
        listeners,
        admin,
        toxiproxy,
    })
}

impl Bound {
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.local_addr().expect("bound")
    }

    pub fn toxiproxy_addr(&self) -> Option<std::net::SocketAddr> {
        self.toxiproxy.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn addr_of(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.0 == name)
            .and_then(|l| l.2.local_addr().ok())
    }
}

/// Serves until `stop` fires, then drains. Returns when the drain is over.
pub async fn run(shared: Arc<Shared>, bound: Bound, mut stop: watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let cfg = shared.config.load_full();
    for (name, proto, tcp) in bound.listeners {
        match proto {
            Protocol::Http => {
                let rt = ListenerRuntime::build(cfg.clone(), &name, &shared)
                    .expect("validated listener");
                let slot = Arc::new(ArcSwap::from_pointee(rt));
                shared
                    .runtimes
                    .lock()
                    .expect("runtimes lock")
                    .insert(name.clone(), slot.clone());
                tokio::spawn(crate::listen::http::serve(
                    tcp,
                    slot,
                    shared.clone(),
                    rx.clone(),
                ));
            }
            Protocol::Tcp => {
                tokio::spawn(crate::listen::tcp::serve(
                    tcp,
                    name.clone(),
                    shared.clone(),
                    rx.clone(),
                ));
            }
        }
        tracing::info!(listener = %name, "listening");
    }
    for f in &cfg.faults {
        // Validated with the config; a duplicate of a live one cannot happen at start.
        if let Err(e) = shared.faults.add(f.clone()) {
            tracing::error!(fault = %f.id, error = %e, "fault from the config not injected");
        }
    }
    tokio::spawn(crate::admin::serve(bound.admin, shared.clone(), rx.clone()));
    if cfg.qod.enabled {
        shared.qod.pull_from_peers();
    }
    if let Some(l) = bound.toxiproxy {
        tracing::info!(listen = ?l.local_addr().ok(), "toxiproxy-compatible fault API listening");
        tokio::spawn(crate::toxiproxy::serve(l, cfg.toxiproxy.seed, rx.clone()));
    }
    let _ = stop.changed().await;
    shared.draining.store(true, Ordering::SeqCst);
    let grace = shared.config.load().drain_timeout;
    tracing::info!(
        open_connections = shared.conns.count(),
        ?grace,
        "draining: no new connections, finishing in-flight requests"
    );
    let _ = tx.send(true);
    if tokio::time::timeout(grace, shared.conns.wait_zero())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = shared.conns.count(),
            "drain timeout reached; exiting with connections still open"
        );
    }
}
