//! Bulwark storage node: a replicated pin service modelled on a private IPFS network with IPFS
//! Cluster, and a replicated block service modelled on Ceph RBD ([`block`], exported over NBD).
//! See docs/storage.md and docs/block.md for the design and the decisions behind them.
#![forbid(unsafe_code)]

pub mod api;
pub mod block;
pub mod block_client;
pub mod brownout;
pub mod build;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod departure;
pub mod identity;
pub mod ingest;
pub mod membership;
pub mod node;
pub mod peer;
pub mod pinset;
pub mod store;
pub mod swarm_key;
pub mod sync;
pub mod tracker;
pub mod unixfs;

#[cfg(test)]
mod convergence_tests;
