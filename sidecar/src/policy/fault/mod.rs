//! HTTP fault injection for planned outages and chaos experiments: abort with a status, delay
//! (fixed or drawn from a distribution), connection reset, blackhole, corrupt payload, truncated
//! payload and bandwidth limit, matched by route, method, header, peer, upstream, listener and
//! traffic class, applied to a percentage of the matching requests.
//!
//! The layer goes first in the inbound stack (right after request id / trace span), so an injected
//! failure looks like a real one to the caller and costs nothing behind it.
//!
//! # Fault spec (JSON on the admin API, TOML in config)
//!
//! ```json
//! {
//!   "id": "slow-pins",                       // unique
//!   "kind": {"type": "delay", "dist": "uniform", "min_ms": 100, "max_ms": 500},
//!   "ttl": "10m",                            // mandatory: humantime string or milliseconds, ≤ 24h
//!   "percent": 50,                           // 0–100, default 100
//!   "route": "/api/v0/pin",                  // path prefix
//!   "method": "POST",
//!   "header": {"name": "x-tenant", "value": "a"},   // value optional: presence only
//!   "peer": "127.0.0.12",                    // the client's IP address
//!   "upstream": "127.0.0.13:5001",           // the upstream the request goes to (outbound)
//!   "listener": "api",                       // the listener's name (see FaultLayer::for_listener)
//!   "class": "replication"                   // control | replication | client
//! }
//! ```
//!
//! `kind` is one of
//! - `{"type": "abort", "status": 503}` (400..=599): answered at once, never forwarded;
//! - `{"type": "delay", "fixed_ms": 200}` (also `"dist": "fixed"`),
//!   `{"type": "delay", "dist": "uniform", "min_ms": 100, "max_ms": 500}`,
//!   `{"type": "delay", "dist": "normal", "mean_ms": 200, "stddev_ms": 50}` (clamped to
//!   0..=[`MAX_DELAY_MS`]): waits, then forwards;
//! - `{"type": "reset"}`: the connection is dropped without an answer (see [`crate::error::DropConnection`]);
//! - `{"type": "blackhole"}`: never answers while the fault lives; when it expires or is deleted the
//!   held requests get a `504` (a caller with a shorter timeout has given up long before);
//! - `{"type": "corrupt", "bytes": 4}`: forwards, then flips (XOR 0xff) that many bytes of the
//!   response body — same length, wrong payload;
//! - `{"type": "truncate", "after_bytes": 1024}`: forwards, then ends the response body with an
//!   error after that many bytes, so the client sees a cut transfer (bodies that are not longer pass);
//! - `{"type": "bandwidth", "bytes_per_sec": 65536}`: forwards, then paces the response body.
//!
//! All matchers are optional and AND-ed; a spec without any matches every request. The first live
//! fault (in insertion order) whose matchers match *and* whose percent roll passes is applied;
//! a fault whose roll fails lets the next one try. Rolls (and delay / corrupt draws) come from a
//! `StdRng` seeded by the layer's seed, so a run is reproducible for the same request sequence.
//!
//! Every fault carries a TTL so a crashed controller cannot leave one behind: an expired fault
//! stops applying by itself (checked at request time with `tokio::time`) and is pruned.
//!
//! Responses touched by a fault carry `x-bulwark-fault: <id>` (synthetic ones say
//! `injected fault <id>` in the body). They deliberately do *not* carry `x-bulwark-error`: an

mod body;
mod layer;
mod matcher;
mod metrics;
mod registry;
mod spec;
#[cfg(test)]
mod tests;

pub use body::Truncated;
pub use layer::{FaultFuture, FaultLayer, FaultService, H_FAULT};
pub use metrics::FaultMetrics;
pub use registry::{
    handle_add, handle_clear, handle_delete, handle_list, FaultError, FaultRegistry, FaultStatus,
};
pub use spec::{Delay, FaultKind, FaultSpec, HeaderMatch, Ttl, MAX_DELAY_MS, MAX_ID_LEN, MAX_TTL};
