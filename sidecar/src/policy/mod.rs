//! Resilience policies, one [`tower::Layer`] each, with its config, errors (as
//! [`crate::error::ProxyError`]), metrics and tests beside it.
//!
//! Every layer wraps a `Service<Request, Response = Response, Error = ProxyError>` and returns one.

pub mod breaker;
pub mod cache;
pub mod degrade;
pub mod fault;
pub mod outage;
pub mod qod;
pub mod retry;
pub mod shed;
pub mod throttle;
