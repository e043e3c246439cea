//! `[qod]`: what probing does and how hard it tries.

use crate::classify::TrafficClass;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QodMode {
    Enforce,
    DryRun,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Send the request to the node unprobed (availability first).
    Forward,
    /// Refuse it with 503 (safety first).
    Reject,
}

/// `[qod]`. Probing runs on inbound HTTP listeners that name `canaries`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QodConfig {
    pub enabled: bool,
    pub mode: QodMode,
    /// Traffic classes that are probed (peer replication and control traffic are not, by default).
    pub classes: Vec<TrafficClass>,
    /// Confirm a strike of a safe request (GET, HEAD, OPTIONS) on a second canary at once.
    pub confirm: bool,
    /// Strikes on distinct canaries (or on the only one) that blacklist a signature.
    pub strikes: u32,
    /// Canary deadline = factor × the route's p99 answer time, clamped to [min, max].
    pub deadline_factor: f64,
    #[serde(with = "humantime_serde")]
    pub min_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// Used until a route has 20 observed answers.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Requests of one unknown signature that may wait for its probe; more get 503.
    pub max_waiters: usize,
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Bodies up to this size are kept to confirm on a second canary or fall back to the node.
    pub max_body_bytes: usize,
    /// First blacklisting; doubles on every repeat up to `max_ttl`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    pub max_known: usize,
    pub max_entries: usize,
    /// Body bytes kept in an entry's sample.
    pub sample_bytes: usize,
    /// Where the blacklist is kept across restarts (JSON, written atomically).
    pub state_file: Option<PathBuf>,
    /// `http://` URL that receives a JSON alert for every new local entry.
    pub webhook: Option<String>,
    pub on_canary_unavailable: OnUnavailable,
}

impl Default for QodConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: QodMode::Enforce,
            classes: vec![TrafficClass::Client],
            confirm: true,
            strikes: 2,
            deadline_factor: 4.0,
            min_deadline: Duration::from_millis(500),
            max_deadline: Duration::from_secs(10),
            default_deadline: Duration::from_secs(5),
            max_waiters: 64,
            wait_timeout: Duration::from_secs(15),
            max_body_bytes: 1 << 20,
            ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(24 * 3600),
            max_known: 100_000,
            max_entries: 10_000,
            sample_bytes: 4096,
            state_file: None,
            webhook: None,
            on_canary_unavailable: OnUnavailable::Forward,
        }
    }
}

impl QodConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.deadline_factor > 0.0 && self.deadline_factor.is_finite()) {
            return Err("deadline_factor must be > 0".into());
        }
        if self.min_deadline.is_zero() || self.min_deadline > self.max_deadline {
            return Err("need 0 < min_deadline <= max_deadline".into());
        }
        if self.default_deadline.is_zero() || self.wait_timeout.is_zero() {
            return Err("default_deadline and wait_timeout must be > 0".into());
        }
        if self.strikes == 0 || self.strikes > 8 {
            return Err("strikes must be within 1..=8".into());
        }
        if self.max_waiters == 0 || self.max_known == 0 || self.max_entries == 0 {
            return Err("max_waiters, max_known and max_entries must be > 0".into());
        }
        if self.max_body_bytes > 64 << 20 || self.sample_bytes > 1 << 20 {
            return Err("max_body_bytes must be <= 64 MiB and sample_bytes <= 1 MiB".into());
        }
        if self.ttl.is_zero() || self.max_ttl < self.ttl {
            return Err("need 0 < ttl <= max_ttl".into());
        }
        if self.classes.is_empty() {
            return Err("classes must name at least one traffic class".into());
        }
        if let Some(w) = &self.webhook {
            let u: http::Uri = w.parse().map_err(|e| format!("webhook {w:?}: {e}"))?;
            if u.scheme_str() != Some("http") || u.authority().is_none() {
                return Err(format!("webhook {w:?}: must be an http:// URL"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let ok = QodConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            QodConfig {
                deadline_factor: 0.0,
                ..ok.clone()
            },
            QodConfig {
                min_deadline: Duration::from_secs(20),
                ..ok.clone()
            },
            QodConfig {
                strikes: 0,
                ..ok.clone()
            },
            QodConfig {
                ttl: Duration::from_secs(3600 * 48),
                ..ok.clone()
            },
            QodConfig {
                webhook: Some("https://x/y".into()),
                ..ok.clone()
            },
            QodConfig {
                classes: vec![],
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
