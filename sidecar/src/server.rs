//! Process lifecycle: bind every listener, serve, hot-reload on SIGHUP or `POST /reload`
//! (validate, then swap), and drain on SIGTERM (stop accepting, let in-flight work finish within
//! `drain_timeout`).

use crate::config::{Config, Protocol};
use crate::listen::conn::ConnCounter;
use crate::listen::http::ListenerRuntime;
use crate::metrics::{ProxyMetrics, ReloadLabels};
use crate::policy::breaker::{BreakerMetrics, BreakerRegistry};
use crate::policy::retry::RetryMetrics;
use crate::policy::shed::ShedMetrics;
use crate::policy::throttle::ThrottleMetrics;
use crate::telemetry::LogHandle;
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// State that lives as long as the process, across reloads.
pub struct SidecarState {
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
    /// Traffic splits per listener (admin `/split`), kept across reloads.
    pub splits: crate::policy::split::SplitRegistry,
    pub registry: Registry,
    pub conns: ConnCounter,
    pub draining: AtomicBool,
    pub log: Option<LogHandle>,
    /// OTLP export is on: proxied requests get spans.
    pub tracing: bool,
    runtimes: Mutex<HashMap<String, Arc<ArcSwap<ListenerRuntime>>>>,
    /// Stateful policy layers per listener, kept across reloads.
    pub layer_cache: crate::stack::LayerCache,
}

impl SidecarState {
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
        let split_metrics = crate::policy::split::SplitMetrics::default();
        split_metrics.register(&mut registry);
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
            splits: crate::policy::split::SplitRegistry::new(split_metrics),
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
            layer_cache: Default::default(),
        }))
    }

    /// In-flight requests per listener (admin `/stats`).
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        self.layer_cache.in_flight()
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
pub async fn run(shared: Arc<SidecarState>, bound: Bound, mut stop: watch::Receiver<bool>) {
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
