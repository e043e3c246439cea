//! Command line: node setup (`init`, `keygen`, `daemon`) and client commands that talk to a running
//! node over its APIs (`--api` for the Kubo RPC, `--cluster-api` for the Cluster REST API).

use crate::config::Config;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Exit codes shared by every Bulwark binary.
pub mod exit {
    pub const OK: i32 = 0;
    /// The operation failed (the node answered with an error).
    pub const FAILED: i32 = 1;
    /// Bad command line (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// Invalid configuration (EX_CONFIG-like, as the sidecar uses).
    pub const CONFIG: i32 = 64;
    /// The node could not be reached (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
}

#[derive(Parser, Debug)]
#[command(
    name = "storage",
    version,
    about = "Bulwark storage node: a replicated pin service on a private network"
)]
pub struct Cli {
    /// Kubo RPC address of the node to talk to.
    #[arg(
        long,
        global = true,
        env = "STORAGE_API",
        default_value = "127.0.0.1:5001"
    )]
    pub api: String,
    /// Cluster REST address; defaults to the --api host on port 9094.
    #[arg(long, global = true, env = "STORAGE_CLUSTER_API")]
    pub cluster_api: Option<String>,
    /// Log format of the daemon.
    #[arg(long, global = true, env = "STORAGE_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

impl Cli {
    pub fn cluster_addr(&self) -> String {
        self.cluster_api.clone().unwrap_or_else(|| {
            let host = self
                .api
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&self.api);
            format!("{host}:9094")
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a node: identity, config and data directory.
    Init {
        #[command(flatten)]
        data: DataDir,
        /// Swarm key file to copy into the node (a new one is generated when absent).
        #[arg(long)]
        swarm_key: Option<PathBuf>,
        #[command(flatten)]
        set: ConfigFlags,
    },
    /// Print a new swarm key in the IPFS pnet format.
    Keygen,
    /// Run the node.
    Daemon {
        #[command(flatten)]
        data: DataDir,
        /// Overrides on top of the data directory's config.toml (not saved).
        #[command(flatten)]
        set: ConfigFlags,
    },
    /// Validate a node's config.toml without starting it.
    Check {
        #[command(flatten)]
        data: DataDir,
    },
    /// Show the node's identity (with its build's version and binary digest).
    Id,
    /// The node's build: version and SHA-256 of its running binary (as `sha256sum` prints it).
    Version {
        /// This command's own binary instead of the node's (no node needed).
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Cluster peers.
    Peers {
        #[command(subcommand)]
        cmd: PeersCmd,
    },
    /// Add a file; prints its CID (pins it in the cluster unless --no-pin).
    Add {
        file: PathBuf,
        /// 0 (Kubo's default, "Qm…") or 1 ("bafy…", raw leaves).
        #[arg(long, default_value_t = 0)]
        cid_version: u8,
        /// Leaves as raw blocks (default: true with CIDv1, false with CIDv0).
        #[arg(long)]
        raw_leaves: Option<bool>,
        /// Compute the CID only; store nothing.
        #[arg(long, short = 'n')]
        only_hash: bool,
        /// Store the blocks but do not pin them in the cluster.
        #[arg(long)]
        no_pin: bool,
        /// Print only the CID.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Print a file's bytes.
    Cat {
        cid: String,
        /// First byte to print.
        #[arg(long)]
        offset: Option<u64>,
        /// Number of bytes to print.
        #[arg(long)]
        length: Option<u64>,
    },
    /// Cluster pins.
    Pin {
        #[command(subcommand)]
        cmd: PinCmd,
    },
    /// Per-peer status of a pin (with a CID), or the block cluster's status as `ceph -s` (without).
    Status {
        /// The pin to show; without it, the block service's cluster status.
        cid: Option<String>,
        /// `plain` is an alias of `text`.
        #[arg(long, default_value = "text", value_parser = ["text", "plain", "json"])]
        format: String,
    },
    /// Retry a failed pin on every peer.
    Recover { cid: String },
    /// Block service: pools of replicated images (as `ceph osd pool`).
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
    },
    /// Block service: images striped into replicated objects (as `rbd`).
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Block service health, as `ceph health [detail]`.
    ///
    /// Prints HEALTH_OK, HEALTH_WARN or HEALTH_ERR followed by the failing checks. The exit code is
    /// 0 whatever the health (as `ceph health`): read the first word, or use `--format json`.
    Health {
        /// `detail`: every check with its detail lines.
        #[arg(value_name = "detail", value_parser = ["detail"])]
        detail: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Block service nodes (OSDs).
    Osd {
        #[command(subcommand)]
        cmd: OsdCmd,
    },
    /// Block service usage: raw capacity and per pool (as `ceph df`).
    Df {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Deep-scrub every object of a pool (or of all pools), repairing bad replicas from good ones.
    ///
    /// Exits 1 when some objects could not be repaired.
    Scrub {
        /// Only this pool.
        pool: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
}

/// Output format of the block commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable, as `ceph` / `rbd` print it.
    #[default]
    Plain,
    /// The API's JSON answer, pretty-printed.
    Json,
}

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Plain)]
    pub format: Format,
}

impl FormatArg {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create a replicated pool.
    Create {
        name: String,
        /// Replicas of every object (server default 3).
        #[arg(long)]
        size: Option<u32>,
        /// Replicas that must acknowledge a write (server default size - size/2).
        #[arg(long)]
        min_size: Option<u32>,
        /// Placement groups (server default 64).
        #[arg(long)]
        pg_num: Option<u32>,
        /// What replicas must not share (server default host).
        #[arg(long, value_parser = ["host", "osd"])]
        failure_domain: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List pools.
    Ls {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Remove a pool (it must hold no image).
    Rm {
        name: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Change a pool's size or min_size.
    Set {
        name: String,
        /// The setting to change.
        #[arg(value_parser = ["size", "min_size"])]
        key: String,
        value: u32,
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Create an image (thin-provisioned).
    Create {
        /// POOL/IMAGE
        #[arg(value_parser = parse_image_spec)]
        spec: ImageSpec,
        /// Size, e.g. 64M, 10G, 4096 (binary units).
        #[arg(long, value_parser = parse_size_arg)]
        size: String,
        /// Object size: a power of two between 64K and 32M (default 4M).
        #[arg(long, value_parser = parse_size_arg)]
        object_size: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List images, of one pool or of all (then named POOL/IMAGE).
    Ls {
        pool: Option<String>,
        /// Long listing: sizes, usage and objects.
        #[arg(long, short = 'l')]
        long: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show an image (as `rbd info`).
    Info {
        /// POOL/IMAGE
        #[arg(value_parser = parse_image_spec)]
        spec: ImageSpec,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Grow (or, with --allow-shrink, shrink) an image.
    Resize {
        /// POOL/IMAGE
        #[arg(value_parser = parse_image_spec)]
        spec: ImageSpec,
        /// New size, e.g. 128M, 1G.
        #[arg(long, value_parser = parse_size_arg)]
        size: String,
        /// Allow a smaller size (the data past it is lost).
        #[arg(long)]
        allow_shrink: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Remove an image and its data.
    Rm {
        /// POOL/IMAGE
        #[arg(value_parser = parse_image_spec)]
        spec: ImageSpec,
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum OsdCmd {
    /// Nodes grouped by host, up/down and in/out (as `ceph osd tree`).
    Tree {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Per-node usage (as `ceph osd df`).
    Df {
        #[command(flatten)]
        format: FormatArg,
    },
}

/// An image named `POOL/IMAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    pub pool: String,
    pub image: String,
}

impl std::fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)
    }
}

pub fn parse_image_spec(s: &str) -> Result<ImageSpec, String> {
    match s.split_once('/') {
        Some((p, i)) if !p.is_empty() && !i.is_empty() && !i.contains('/') => Ok(ImageSpec {
            pool: p.to_string(),
            image: i.to_string(),
        }),
        _ => Err(format!("expected POOL/IMAGE (e.g. rbd/disk1), got {s:?}")),
    }
}

/// Checks a size the way the node will parse it, and keeps the text (the API accepts `"64M"`).
pub fn parse_size_arg(s: &str) -> Result<String, String> {
    crate::block::meta::parse_size(s)?;
    Ok(s.trim().to_string())
}

#[derive(Subcommand, Debug)]
pub enum PeersCmd {
    /// List cluster peers, whether they are reachable, and which are transient.
    Ls {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Remove a member for good: every node forgets it, its pins are re-allocated, and that
    /// identity is refused from then on (re-initialise the node to join again).
    Rm {
        /// The member's peer ID (see `peers ls`).
        peer_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PinCmd {
    /// Pin a CID in the cluster, held by between --replication-min and --replication-max peers.
    Add {
        cid: String,
        /// Fewest peers that must hold the pin (fails if fewer are up); -1 = every peer.
        #[arg(long, allow_negative_numbers = true)]
        replication_min: Option<i32>,
        /// Most peers that should hold the pin.
        #[arg(long, allow_negative_numbers = true)]
        replication_max: Option<i32>,
        /// A name for the pin.
        #[arg(long)]
        name: Option<String>,
    },
    /// Unpin a CID everywhere.
    Rm { cid: String },
    /// List the cluster pinset with allocations.
    Ls,
}

#[derive(Args, Debug, Clone)]
pub struct DataDir {
    /// The node's data directory.
    #[arg(
        long = "data",
        env = "STORAGE_PATH",
        default_value = ".bulwark-storage"
    )]
    pub path: PathBuf,
}

/// Config settings that can be given on the command line.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigFlags {
    /// Human-readable node name shown in cluster answers.
    #[arg(long)]
    pub peername: Option<String>,
    /// Kubo RPC listen address.
    #[arg(long)]
    pub rpc: Option<SocketAddr>,
    /// Gateway (`/ipfs/{cid}`) listen address.
    #[arg(long)]
    pub gateway: Option<SocketAddr>,
    /// Cluster REST listen address.
    #[arg(long)]
    pub cluster: Option<SocketAddr>,
    /// Peer protocol listen address.
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Address peers dial to reach this node.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Peer to join at start (repeatable): HOST:PORT or /ip4/A/tcp/P[/p2p/ID].
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Fixed peerset member (repeatable); only these peers are admitted.
    #[arg(long)]
    pub peerset: Vec<String>,
    /// Send peer traffic through this HTTP proxy (the local sidecar's outbound listener).
    #[arg(long)]
    pub outbound_proxy: Option<String>,
    /// Run as a transient member: no pin allocations, leaves the cluster cleanly on SIGTERM.
    #[arg(long)]
    pub transient: bool,
    /// Default minimum replication of new pins (-1 = every peer).
    #[arg(long, allow_negative_numbers = true)]
    pub replication_min: Option<i32>,
    /// Default maximum replication of new pins (-1 = every peer).
    #[arg(long, allow_negative_numbers = true)]
    pub replication_max: Option<i32>,
    /// Re-allocate the pins of a peer down this long (e.g. 10m). Off by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub repin_after: Option<Duration>,
    /// Block service: NBD export listen address (export names are POOL/IMAGE).
    #[arg(long)]
    pub nbd: Option<SocketAddr>,
    /// Block service: failure-domain host label of this node (default: the advertised host).
    #[arg(long)]
    pub block_host: Option<String>,
    /// Block service: mark a node out after it has been down this long, re-replicating its objects
    /// elsewhere (e.g. 10m). Off by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub down_out_interval: Option<Duration>,
    /// Block service: deadline of one replicated I/O (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub op_timeout: Option<Duration>,
    /// Block service: how long replicas that had not answered an acknowledged write still get,
    /// with the object's next write held back (e.g. 250ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub replica_grace: Option<Duration>,
    /// Block service: how often degraded objects are looked for and recovered (e.g. 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub recovery_interval: Option<Duration>,
}

impl ConfigFlags {
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = &self.peername {
            c.peername = v.clone();
        }
        if let Some(v) = self.rpc {
            c.api.rpc = v;
        }
        if let Some(v) = self.gateway {
            c.api.gateway = v;
        }
        if let Some(v) = self.cluster {
            c.api.cluster = v;
        }
        if let Some(v) = self.peer_listen {
            c.peer.listen = v;
        }
        if let Some(v) = &self.advertise {
            c.peer.advertise = Some(v.clone());
        }
        if !self.bootstrap.is_empty() {
            c.peer.bootstrap = self.bootstrap.clone();
        }
        if let Some(v) = &self.outbound_proxy {
            c.peer.outbound_proxy = Some(v.clone());
        }
        if !self.peerset.is_empty() {
            c.peer.peerset = self.peerset.clone();
        }
        if self.transient {
            c.peer.transient = true;
        }
        if let Some(v) = self.replication_min {
            c.cluster.replication_factor_min = v;
        }
        if let Some(v) = self.replication_max {
            c.cluster.replication_factor_max = v;
        }
        if self.repin_after.is_some() {
            c.cluster.repin_after = self.repin_after;
        }
        if let Some(v) = self.nbd {
            c.block.nbd = v;
        }
        if let Some(v) = &self.block_host {
            c.block.host = v.clone();
        }
        if self.down_out_interval.is_some() {
            c.block.down_out_interval = self.down_out_interval;
        }
        if let Some(v) = self.op_timeout {
            c.block.op_timeout = v;
        }
        if let Some(v) = self.replica_grace {
            c.block.replica_grace = v;
        }
        if let Some(v) = self.recovery_interval {
            c.block.recovery_interval = v;
        }
    }
}
