//! Bulwark progressive rollout driven by error-rate SLOs (`canary`): the pure-logic half.
//!
//! What is here is everything a rollout *decides*, built and tested without processes or clocks:
//!
//! - [`plan`]: the rollout plan (TOML), validated up front so a bad plan fails before anything runs,
//!   with `FILE:LINE: field: message` errors (the CLI exits 64 on them).
//! - [`stats`]: the sequential tests — the relative test against the concurrent baseline
//!   ([`stats::sprt`]), the absolute SLO guard ([`stats::guard`]), the p99 ratio
//!   ([`stats::latency`]) and the fixed-sample bound they are compared with ([`stats::sample_size`]).
//! - [`decide`]: one tick's decision as a state machine over counts the controller gathers; time is
//!   an input, so it is tested (and simulated) without real clocks.
//! - [`sim`]: a seeded simulation over the real decision code (false rollback rate, power, requests
//!   needed to reject a bad build).
//!
//! The controller and the `canary` binary (which start the candidate, install the sidecar split,
//! poll counters and feed [`decide::Rollout::tick`]) are a later step; see docs/canary.md.
#![forbid(unsafe_code)]

pub mod decide;
pub mod plan;
pub mod sim;
pub mod stats;
