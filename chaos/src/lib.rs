//! Bulwark chaos experiments (`chaos run experiment.toml`).
//!
//! Not built yet: issue #6 fills this crate and adds the `chaos` binary. It deliberately has no
//! binary until then, so nothing can pretend to run an experiment.
#![forbid(unsafe_code)]
