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
//! - [`controller`]: `canary run` — starts the candidate (and a fresh baseline) as transient
//!   members, installs the sidecar split, polls its counters and feeds [`decide::Rollout::tick`],
//!   carries out the decisions; [`journal`] and [`report`] record it. The binary is `src/main.rs`.
#![forbid(unsafe_code)]

pub mod controller;
pub mod decide;
pub mod journal;
pub mod plan;
pub mod report;
pub mod sim;
pub mod stats;
