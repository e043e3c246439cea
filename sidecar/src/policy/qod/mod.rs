//! Canary request probing against queries of death (QoD).
//!
//! A request whose signature has never been seen to succeed is sent first, single-flight per
//! signature, to a canary upstream with a deadline derived from its route's normal latency. If the
//! canary answers, the signature becomes known and that answer is the real one. If the canary
//! crashes, resets or hangs, that is a strike: safe (idempotent) requests are confirmed on a second
//! canary at once; others fail and are confirmed when the client tries again (the next try starts
//! at the next canary). Strikes on `strikes` distinct canaries blacklist the request's *fine*
//! signature with a TTL that doubles on every repeat; later copies are refused at the edge before
//! they cost anything.
//!
//! Two layers (`filter.rs`, `probe.rs`) share one [`QodState`] (`state.rs`): [`QodFilterLayer`] (right after fault injection: compute the
//! signature, refuse blacklisted requests) and [`QodProbeLayer`] (after throttling and shedding, so
//! a flood of unknown requests is limited before it reaches a canary). Known requests pay for a
//! signature (no allocation), one uncontended lock for the blacklist and a read lock for the known
//! set; they never wait on a probe.
//!
//! Decisions (also in `docs/sidecar.md`):
//! - A strike is a local-origin failure *after connecting* (reset, EOF before the answer, a broken
//!   answer) or no answer head within the deadline. A canary that refuses connections is
//!   *unavailable*, not struck: the next canary is tried, and with none left `on_canary_unavailable`
//!   decides (forward to the node, the default, or refuse with 503).
//! - Any answer proves the canary survived. Only answers below 500 mark the signature known; a 5xx
//!   is passed on but the shape stays unknown (probed again next time).
//! - The known set lives in memory only: after a restart (often a new backend version) every shape
//!   is probed once again. The blacklist persists (`state_file`) and is shared with the `[mesh]` peers.
//! - While no canary is reachable, a request whose probe group (known key) struck a canary
//!   recently is refused (503) even with `on_canary_unavailable = "forward"`: the canaries are
//!   likely down because a sibling crashed them, and a near variant must not reach the node.
//! - `mode = "dry_run"`: entries are still created (and alert), but matching requests are counted,
//!   logged and forwarded to the node instead of refused.

pub mod blacklist;
mod config;
mod filter;
mod metrics;
mod probe;
pub mod signature;
mod state;

pub use config::{OnUnavailable, QodConfig, QodMode};
pub use filter::{QodFilter, QodFilterLayer, SigExt};
pub use metrics::{OriginLabels, OutcomeLabels, QodMetrics};
pub use probe::{Canary, QodProbe, QodProbeLayer, Timed};
pub use state::QodState;

/// On answers that went through probing: `canary=<addr>; id=<sig>`, `blocked; id=<sig>`, `dry-run; id=<sig>`.
pub const H_QOD: &str = "x-bulwark-qod";
