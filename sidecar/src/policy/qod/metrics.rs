//! Prometheus metrics of probing and the blacklist.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub origin: &'static str,
}

#[derive(Clone, Default)]
pub struct QodMetrics {
    pub probes: Family<OutcomeLabels, Counter>,
    pub blocked: Counter,
    pub dry_run_hits: Counter,
    pub blacklisted: Family<OriginLabels, Counter>,
    pub alerts: Counter,
    pub webhooks: Family<OutcomeLabels, Counter>,
    pub entries: Gauge,
    pub known: Gauge,
    pub waiting: Gauge,
}

impl QodMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "qod_probes",
            "Canary probes of unknown request signatures, by outcome (ok, error_status, strike, timeout, unavailable)",
            self.probes.clone(),
        );
        r.register(
            "qod_blocked",
            "Requests refused because their signature is blacklisted as a query of death",
            self.blocked.clone(),
        );
        r.register(
            "qod_dry_run_hits",
            "Requests matching a blacklist entry in dry-run mode (forwarded, not refused)",
            self.dry_run_hits.clone(),
        );
        r.register(
            "qod_blacklisted",
            "Blacklist entries added, by origin (local, peer, admin)",
            self.blacklisted.clone(),
        );
        r.register(
            "qod_alerts",
            "Alerts raised for new query-of-death entries (one per local entry)",
            self.alerts.clone(),
        );
        r.register(
            "qod_webhooks",
            "Alert webhook deliveries, by outcome",
            self.webhooks.clone(),
        );
        r.register(
            "qod_blacklist_entries",
            "Live blacklist entries",
            self.entries.clone(),
        );
        r.register(
            "qod_known_signatures",
            "Request signatures seen to succeed",
            self.known.clone(),
        );
        r.register(
            "qod_probe_waiters",
            "Requests waiting for a probe of their signature",
            self.waiting.clone(),
        );
    }
}
