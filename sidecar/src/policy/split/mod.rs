//! Traffic split: a share of a listener's requests goes to other upstreams — the *subsets* of a
//! progressive rollout (`candidate`, `baseline`) — beside the listener's own upstream (`stable`).
//! (In the sidecar "canaries" names the query-of-death probe targets; rollout arms are subsets.)
//!
//! # Design
//!
//! - **Driven at run time** (`PUT/GET/DELETE /split/{listener}`, `admin/split.rs`), never from
//!   the config file: a split is an experiment a controller runs, so it carries a **mandatory
//!   TTL** and is gone (100 % stable) when its controller stops renewing it. Expiry is checked
//!   lazily, on the next request or admin call, with `tokio::time` (paused-time tests).
//! - **Applied by an atomic swap** ([`registry::Slot`]: an `ArcSwapOption` behind an
//!   `AtomicBool`): no reload, no dropped connection; open connections see it on their next
//!   request. With no split installed the layer costs one relaxed atomic load.
//! - **Weights** are whole percents per subset (0–100, adding up to at most 100); stable gets the
//!   rest. Percent buckets 0–99 are laid out subsets first (in the order given), stable last; a
//!   request rolls a bucket from the split's seeded RNG (`seed`, default derived from the
//!   listener's name), or, with `sticky`, takes the bucket its client identity (bearer token, else
//!   address: [`ClientId`](crate::classify::ClientId)) hashes to — so a client keeps its subset
//!   while the weights stay, and raising a subset's weight only moves clients into it from the
//!   subsets after it and stable.
//! - **Pinning**: `x-bulwark-subset: NAME` on a request chooses the subset (`stable` too; an
//!   unknown name is a 400 while a split is live; the header is ignored when none is). The header
//!   is not forwarded. Every answer a split routed carries `x-bulwark-subset: NAME`; errors the
//!   sidecar answers itself carry `x-bulwark-error` instead (they are counted all the same).
//! - **Routing**: the chosen subset's address becomes the request's upstream for every layer
//!   inside this one — `RequestMeta::upstream` (the breaker's and the outage gate's key: the
//!   candidate's failures trip the candidate's circuit, never stable's) and the upstream client's
//!   target (a [`registry::Routed`] request extension that `upstream/forward.rs` honours).
//! - **One owner**: a split may name a `controller`; while it is live, a `PUT` from another (or
//!   from none) is refused (409). The owner's own `PUT` updates it in place (new weights, a fresh
//!   TTL) and keeps the counters; `DELETE` always works (rollback must never be refused).
//! - **Counters** ([`registry::SplitMetrics`], and per subset in `GET /split`, cumulative since
//!   the split's `generation` began): this layer counts each request's final outcome;
//!   [`SplitAttemptLayer`], between retry and the upstream client, counts every attempt and its
//!   time to headers, so a 502 that a retry hid still counts against the candidate
//!   (knative/serving#6549). The degrade layer sits outside, so a cache or failover answer never
//!   hides a failing subset either: the subset's failure is what is counted.
//!
//! - **Rehearsal faults** ([`SubsetFault`]): a subset may carry `{"abort": 500, "percent": 5}`
//!   or `{"delay_ms": 300, "percent": 5}`, so `canary run --rehearse` can make a good build
//!   look bad. The split layer draws it per request (a second RNG from the split's seed: routing
//!   stays the same) and records it in [`Routed`]; the attempt layer applies it to every attempt
//!   of that request in the subset's place (an abort is never sent), so it is counted exactly
//!   as the subset's own answer would be (`upstream_5xx` in `requests` and `attempts`), and
//!   marks the answer `x-bulwark-fault: split-rehearsal`. It lives and dies with the split.
//!
//! # Place in the stack
//!
//! `… ▸ degrade ▸ split ▸ outage gate ▸ breaker ▸ retry ▸ split attempts ▸ forward`: after the
//! cheap refusals and the query-of-death probe (a split must not let new request shapes bypass
//! the canaries, nor overload skip shedding), and after degrade (so the subset's failures stay
//! visible here and degrade can still answer the client); before the outage gate and the breaker,
//! which then judge the subset's own endpoint.

mod layer;
mod registry;
mod spec;
#[cfg(test)]
mod tests;

pub use layer::{
    AttemptFuture, SplitAttempt, SplitAttemptLayer, SplitLayer, SplitService, H_SUBSET,
};
pub use registry::{Outcome, Route, Routed, Slot, Split, SplitError, SplitMetrics, SplitRegistry};
pub use spec::{
    LatencyHistogram, Outcomes, SplitSpec, SplitStatus, Subset, SubsetFault, SubsetStatus,
    MAX_FAULT_DELAY_MS, MAX_SUBSETS, MAX_TTL, REHEARSAL, STABLE,
};
