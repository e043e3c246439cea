//! The one place that builds a listener's policy stack from its configuration.
//!
//! Order, outermost first (DESIGN.md "A request's way"; docs/ARCHITECTURE.md):
//!
//! 1. **fault**: injected faults first, so what they inject looks like a real failure to every
//!    policy behind them;
//! 2. **qod filter**: known queries of death are refused before they cost anything;
//! 3. **throttle** (429) and 4. **shed** (503, by traffic class): overload protection;
//! 5. **qod probe**: a request shape never seen to succeed goes to a canary first — after
//!    throttling and shedding had their say;
//! 6. **degrade**: cache, failover and brownout answers when the node cannot answer;
//! 7. **split**: a traffic split (admin `/split`) picks the request's subset — its address is the
//!    upstream for everything below, so the outage gate and the breaker judge the subset's own
//!    endpoint; after degrade so a cache or failover answer never hides a failing subset;
//! 8. **outage gate**: peers in a planned outage are not sent to;
//! 9. **breaker**: per upstream endpoint;
//! 10. **retry**: deadlines and budgeted retries, innermost so each try is judged by the breaker;
//! 11. **split attempts**: every attempt counted against its subset (a retried 502 still counts);
//!
//! then the upstream client ([`Forward`]: target — a split's subset overrides it — pool,
//! HTTP/1.1 codec).
//!
//! Adding a policy: its module under `policy/` (layer, config section, errors, metrics, tests),
//! then one `.layer(...)` line below. Stateful layers that must survive a hot reload (limiter
//! state, in-flight counts, retry budgets, fault RNG) are kept in [`LayerCache`].

use crate::config::{Config, Direction, ListenerConfig, PolicyConfig};
use crate::error::ProxyError;
use crate::policy::breaker::BreakerLayer;
use crate::policy::degrade::{DegradeDeps, DegradeLayer, Peer};
use crate::policy::fault::FaultLayer;
use crate::policy::outage::OutageGateLayer;
use crate::policy::qod::{Canary, QodFilterLayer, QodProbeLayer};
use crate::policy::retry::RetryLayer;
use crate::policy::shed::ShedLayer;
use crate::policy::split::{SplitAttemptLayer, SplitLayer};
use crate::policy::throttle::ThrottleLayer;
use crate::server::SidecarState;
use crate::upstream::forward::{Forward, Target};
use crate::{Request, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

/// A listener's whole policy stack, type-erased: what the edge calls for each request.
pub type Stack = BoxCloneSyncService<Request, Response, ProxyError>;

/// What [`build`] makes for a listener.
pub struct Built {
    pub stack: Stack,
    /// The stack's innermost service, kept by the edge to name a request's upstream.
    pub forward: Forward,
}

/// Builds the stack for `listener` under `cfg`; `None` when an address in it does not parse
/// (validation rejects such a config before it gets here).
pub fn build(cfg: &Arc<Config>, listener: &ListenerConfig, shared: &SidecarState) -> Option<Built> {
    let name = listener.name.as_str();
    let policy = cfg.policy_for(listener);
    let max_buf = listener.upstream_buffer_bytes;
    let forward = Forward::new(target(listener)?, listener.connect_timeout, max_buf);
    let layers = shared.layer_cache.layers_for(name, policy, shared);
    let inbound = listener.direction == Direction::Inbound;
    // The blacklist applies on every inbound listener; probing only where canaries are named.
    let qod = (cfg.qod.enabled && inbound).then(|| (shared.qod.clone(), Arc::new(cfg.qod.clone())));
    let degrade = inbound.then(|| DegradeDeps {
        cfg: cfg.degrade.clone(),
        outages: shared.outages.clone(),
        peers: failover_peers(listener),
        metrics: shared.degrade_metrics.clone(),
        cache: shared.cid_cache.clone(),
        brownout: shared.brownout.clone(),
        shed: layers.shed.handle(),
        max_in_flight: policy.shed.max_in_flight,
    });
    let stack = ServiceBuilder::new()
        .layer(layers.fault)
        .layer(QodFilterLayer::new(qod.clone()))
        .layer(layers.throttle)
        .layer(layers.shed)
        .layer(QodProbeLayer::new(qod, name, canaries(listener)))
        .layer(DegradeLayer::new(degrade, name))
        .layer(SplitLayer::new(shared.splits.slot(name)))
        .layer(OutageGateLayer::new(shared.outages.clone()))
        .layer(BreakerLayer::new(
            policy.breaker.clone(),
            shared.breakers.clone(),
            shared.breaker_metrics.clone(),
        ))
        .layer(layers.retry)
        .layer(SplitAttemptLayer)
        .service(forward.clone());
    Some(Built {
        stack: BoxCloneSyncService::new(stack),
        forward,
    })
}

/// Inbound: always the local node. Outbound: the authority a request names, if allowed.
fn target(listener: &ListenerConfig) -> Option<Target> {
    Some(match listener.direction {
        Direction::Inbound => Target::Fixed(
            listener
                .upstream
                .as_deref()
                .unwrap_or_default()
                .parse()
                .ok()?,
        ),
        Direction::Outbound => Target::ByAuthority(Arc::new(listener.allowed_upstreams.clone())),
    })
}

/// Query-of-death probe targets. A fresh connection per probe (`max_idle` 0): a pooled connection
/// to a canary that crashed since would fail the next probe for the wrong reason.
fn canaries(l: &ListenerConfig) -> Vec<Canary> {
    let fresh = |t| Forward::with_pool(t, l.connect_timeout, 0, l.upstream_buffer_bytes);
    forwards(&l.canaries, fresh)
        .map(|(addr, forward)| Canary { addr, forward })
        .collect()
}

/// Peer sidecars that reads fail over to when the local node cannot answer.
fn failover_peers(l: &ListenerConfig) -> Vec<Peer> {
    let pooled = |t| Forward::new(t, l.connect_timeout, l.upstream_buffer_bytes);
    forwards(&l.failover, pooled)
        .map(|(addr, forward)| Peer { addr, forward })
        .collect()
}

/// An upstream client per address (unparsable ones are skipped: validation refused them).
fn forwards<'a>(
    addrs: &'a [String],
    make: impl Fn(Target) -> Forward + 'a,
) -> impl Iterator<Item = (Arc<str>, Forward)> + 'a {
    addrs
        .iter()
        .filter_map(move |a| Some((Arc::from(a.as_str()), make(Target::Fixed(a.parse().ok()?)))))
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
    pub fault: FaultLayer,
}

/// The stateful layers of every listener, by listener name, kept across reloads.
#[derive(Default)]
pub struct LayerCache(Mutex<HashMap<String, PolicyLayers>>);

impl LayerCache {
    /// The policy layers for a listener under `policy`, reusing the current ones where unchanged.
    pub fn layers_for(
        &self,
        listener: &str,
        policy: &PolicyConfig,
        shared: &SidecarState,
    ) -> PolicyLayers {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let old = all.get(listener);
        let throttle = match old {
            Some(o) if o.config.throttle == policy.throttle => o.throttle.clone(),
            _ => ThrottleLayer::new(policy.throttle.clone(), shared.throttle_metrics.clone()),
        };
        let shed = match old {
            Some(o) if o.config.shed == policy.shed => o.shed.clone(),
            _ => ShedLayer::new(policy.shed.clone(), shared.shed_metrics.clone()),
        };
        let retry = match old {
            Some(o) if o.config.retry == policy.retry => o.retry.clone(),
            _ => RetryLayer::new(policy.retry.clone(), shared.retry_metrics.clone()),
        };
        let fault = match old {
            Some(o) => o.fault.clone(),
            // Seeded per listener (FNV-1a of its name): reproducible, and listeners do not
            // draw the same sequence.
            None => {
                let seed = listener.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
                });
                FaultLayer::new(shared.faults.clone(), seed).for_listener(listener)
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
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, usize)> = all
            .iter()
            .map(|(k, l)| (k.clone(), l.shed.handle().in_flight()))
            .collect();
        v.sort();
        v
    }
}
