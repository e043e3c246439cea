//! Node configuration: `<data>/config.toml`, written by `storage init`, validated before the daemon
//! starts (a bad file is a clear message and exit code 64, like every Bulwark binary).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("config {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Shown as `peername` in cluster answers; defaults to the data directory's name.
    pub peername: String,
    pub api: ApiConfig,
    pub peer: PeerConfig,
    pub cluster: ClusterConfig,
    pub limits: Limits,
    pub block: BlockConfig,
}

/// The block service (RBD-like images exported over NBD).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    /// NBD export listener (fixed newstyle; export names are `POOL/IMAGE`).
    pub nbd: SocketAddr,
    /// Failure-domain label for placement (Ceph's CRUSH `host`). Empty = the host part of the
    /// advertised peer address, so nodes on distinct addresses count as distinct hosts.
    pub host: String,
    /// Deadline of one replicated I/O. Below min_size or past it, the I/O fails (NBD EIO,
    /// HTTP 503) instead of hanging as a Ceph client without `rados_osd_op_timeout` does.
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    /// A write is acknowledged as soon as `min_size` replicas made it durable; the remaining up
    /// replicas get this much longer to answer, while the object's next write waits (so every
    /// replica applies an object's writes in order). One that misses it is recovered later.
    #[serde(with = "humantime_serde")]
    pub replica_grace: Duration,
    /// A node down this long is marked out and its objects are re-replicated elsewhere
    /// (Ceph's `mon_osd_down_out_interval`). Off by default: a node that blips should not move data.
    #[serde(with = "humantime_serde")]
    pub down_out_interval: Option<Duration>,
    /// How often degraded objects are looked for and recovered.
    #[serde(with = "humantime_serde")]
    pub recovery_interval: Duration,
    /// Objects recovered at once by this node (Ceph's `osd_recovery_max_active`).
    pub recovery_max_active: usize,
    /// Capacity used for near-full / full checks; 0 = the filesystem's size.
    pub capacity_bytes: u64,
    pub nearfull_ratio: f64,
    pub full_ratio: f64,
    /// An I/O slower than this counts as a slow operation (health check SLOW_OPS).
    #[serde(with = "humantime_serde")]
    pub slow_op: Duration,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            nbd: "127.0.0.1:10809".parse().unwrap(),
            host: String::new(),
            op_timeout: Duration::from_secs(5),
            replica_grace: Duration::from_millis(250),
            down_out_interval: None,
            recovery_interval: Duration::from_secs(1),
            recovery_max_active: 4,
            capacity_bytes: 0,
            nearfull_ratio: 0.85,
            full_ratio: 0.95,
            slow_op: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Kubo-compatible RPC (`/api/v0/...`).
    pub rpc: SocketAddr,
    /// Path gateway (`/ipfs/{cid}`).
    pub gateway: SocketAddr,
    /// IPFS-Cluster-compatible REST API.
    pub cluster: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeerConfig {
    /// Where this node accepts node-to-node traffic.
    pub listen: SocketAddr,
    /// The address peers dial to reach this node (defaults to `listen`). Behind a sidecar this is
    /// the sidecar's public peer address.
    pub advertise: Option<String>,
    /// Peers contacted at start to join the cluster (`HOST:PORT` or `/ip4/…/tcp/…[/p2p/ID]`).
    pub bootstrap: Vec<String>,
    /// A fixed peerset: when non-empty, only these peers are members and everybody else is refused.
    pub peerset: Vec<String>,
    /// Send all node-to-node traffic through this HTTP proxy (`HOST:PORT`): the local sidecar's
    /// outbound listener, so peer traffic gets the mesh's breakers, limits and faults.
    pub outbound_proxy: Option<String>,
    /// How often membership and the pinset are exchanged with every peer (anti-entropy).
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// A peer not heard from for this long is reported down.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Deadline of one node-to-node request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Run as a transient member (a canary candidate, a short-lived helper): a full member for
    /// reads, writes and membership, but never allocated pins or block placements, and it tells its
    /// peers it is leaving when stopped with SIGTERM, so they drop it at once instead of reporting
    /// it down. Needs `bootstrap` or `peerset`: a transient node joins an existing cluster.
    pub transient: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Default replication for pins that do not name one; -1 = every peer (IPFS Cluster's default).
    pub replication_factor_min: i32,
    pub replication_factor_max: i32,
    /// Re-allocate the pins of a peer that stays down this long. Off by default, as in IPFS Cluster:
    /// a peer that blips should not make the cluster move its whole pinset.
    #[serde(with = "humantime_serde")]
    pub repin_after: Option<Duration>,
    /// Pins in `pin_error` are retried automatically this often (IPFS Cluster: 12m).
    #[serde(with = "humantime_serde")]
    pub pin_recover_interval: Duration,
    /// A pin whose blocks cannot all be fetched within this time fails with `pin_error`.
    #[serde(with = "humantime_serde")]
    pub pin_timeout: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted `add` upload (whole multipart body), bytes.
    pub max_add_bytes: u64,
    /// Largest block accepted by `block/put` (Kubo refuses blocks over 1 MiB as well).
    pub max_block_size: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rpc: "127.0.0.1:5001".parse().unwrap(),
            gateway: "127.0.0.1:8080".parse().unwrap(),
            cluster: "127.0.0.1:9094".parse().unwrap(),
        }
    }
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9096".parse().unwrap(),
            advertise: None,
            bootstrap: vec![],
            peerset: vec![],
            outbound_proxy: None,
            sync_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            transient: false,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            replication_factor_min: -1,
            replication_factor_max: -1,
            repin_after: None,
            pin_recover_interval: Duration::from_secs(12 * 60),
            pin_timeout: Duration::from_secs(120),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_add_bytes: 4 << 30,
            max_block_size: 1 << 20,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    pub fn advertise(&self) -> String {
        self.peer
            .advertise
            .clone()
            .unwrap_or_else(|| self.peer.listen.to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let (min, max) = (
            self.cluster.replication_factor_min,
            self.cluster.replication_factor_max,
        );
        check_replication(min, max).map_err(ConfigError::Invalid)?;
        let p = &self.peer;
        if p.sync_interval.is_zero() || p.request_timeout.is_zero() {
            return bad("peer.sync_interval and peer.request_timeout must be > 0".into());
        }
        if p.peer_timeout <= p.sync_interval {
            return bad(format!(
                "peer.peer_timeout ({:?}) must be longer than peer.sync_interval ({:?})",
                p.peer_timeout, p.sync_interval
            ));
        }
        for a in p.bootstrap.iter().chain(&p.peerset) {
            if let Err(e) = crate::peer::PeerAddr::parse(a) {
                return bad(format!("peer address {a:?}: {e}"));
            }
        }
        if p.transient && p.bootstrap.is_empty() && p.peerset.is_empty() {
            return bad(
                "peer.transient needs peer.bootstrap or peer.peerset: a transient member joins an existing cluster"
                    .into(),
            );
        }
        if let Some(a) = &p.outbound_proxy {
            if let Err(e) = crate::peer::PeerAddr::parse(a) {
                return bad(format!("peer.outbound_proxy {a:?}: {e}"));
            }
        }
        if let Some(a) = &p.advertise {
            if let Err(e) = crate::peer::PeerAddr::parse(a) {
                return bad(format!("peer.advertise {a:?}: {e}"));
            }
        }
        if self.cluster.pin_recover_interval.is_zero() || self.cluster.pin_timeout.is_zero() {
            return bad("cluster.pin_recover_interval and cluster.pin_timeout must be > 0".into());
        }
        if self.limits.max_block_size == 0 || self.limits.max_add_bytes == 0 {
            return bad("limits must be > 0".into());
        }
        let b = &self.block;
        if b.op_timeout.is_zero() || b.recovery_interval.is_zero() || b.recovery_max_active == 0 {
            return bad(
                "block.op_timeout, block.recovery_interval and block.recovery_max_active must be > 0"
                    .into(),
            );
        }
        if !(0.0 < b.nearfull_ratio && b.nearfull_ratio < b.full_ratio && b.full_ratio <= 1.0) {
            return bad(format!(
                "block: need 0 < nearfull_ratio ({}) < full_ratio ({}) <= 1",
                b.nearfull_ratio, b.full_ratio
            ));
        }
        Ok(())
    }

    /// The failure-domain label this node announces.
    pub fn block_host(&self) -> String {
        if !self.block.host.is_empty() {
            return self.block.host.clone();
        }
        host_of(&self.advertise())
    }
}

/// The host part of `HOST:PORT` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> String {
    let h = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    h.trim_start_matches('[').trim_end_matches(']').to_string()
}

/// IPFS Cluster's rules: -1 means "every peer" and must be used for both bounds; otherwise
/// 1 ≤ min ≤ max.
pub fn check_replication(min: i32, max: i32) -> Result<(), String> {
    match (min, max) {
        (-1, -1) => Ok(()),
        (-1, _) | (_, -1) => Err(format!(
            "replication factor min {min} and max {max}: -1 (everywhere) must be used for both"
        )),
        (a, b) if a < 1 || b < 1 => Err(format!(
            "replication factor min {a} and max {b} must be -1 or at least 1"
        )),
        (a, b) if a > b => Err(format!(
            "replication factor min ({a}) is greater than max ({b})"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_validates() {
        let c = Config::default();
        c.validate().unwrap();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let mut c = Config::default();
        c.cluster.replication_factor_min = 3;
        c.cluster.replication_factor_max = 2;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.peer.bootstrap = vec!["not an address".into()];
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.peer.peer_timeout = c.peer.sync_interval;
        assert!(c.validate().is_err());
    }

    #[test]
    fn transient_needs_a_cluster_to_join() {
        let mut c: Config = toml::from_str("[peer]\ntransient = true\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("peer.transient needs peer.bootstrap"), "{e}");
        c.peer.bootstrap = vec!["127.0.0.1:9096".into()];
        c.validate().unwrap();
        assert!(c.to_toml().contains("transient = true"));
    }

    #[test]
    fn replication_rules_follow_ipfs_cluster() {
        assert!(check_replication(-1, -1).is_ok());
        assert!(check_replication(2, 3).is_ok());
        assert!(check_replication(-1, 3).is_err());
        assert!(check_replication(0, 3).is_err());
        assert!(check_replication(3, 2).is_err());
    }
}
