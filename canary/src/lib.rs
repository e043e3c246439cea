//! Bulwark progressive rollout driven by error-rate SLOs (`canary`).
//!
//! Not built yet: a later issue fills this crate and adds the `canary` binary. It deliberately has no
//! binary until then, so nothing can pretend to roll anything out.
#![forbid(unsafe_code)]
