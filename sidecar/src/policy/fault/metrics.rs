//! Prometheus metrics of the injected faults.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) kind: &'static str,
}

/// Labelled by fault kind only (bounded cardinality); per-fault counts are on the admin list.
#[derive(Clone, Debug, Default)]
pub struct FaultMetrics {
    pub(super) matched: Family<KindLabels, Counter>,
    pub(super) injected: Family<KindLabels, Counter>,
    pub(super) active: Gauge,
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
