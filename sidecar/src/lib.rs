//! Bulwark sidecar: the resilience proxy in front of every storage node (circuit breakers,
//! throttling, canary request probing, graceful degradation, fault injection).
//!
//! Not built yet: issues #3 (proxy, breakers, throttling) and #5 (query-of-death probing,
//! degradation, fault injection) fill this crate and add the `sidecar` binary. It deliberately has no
//! binary until then, so nothing can pretend to proxy.
#![forbid(unsafe_code)]
