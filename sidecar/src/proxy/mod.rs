//! The data path: HTTP (h1 + h2c) and TCP listeners, the per-request edge, and the upstream client.

pub mod forward;
pub mod h1;
pub mod http;
pub mod pool;
pub mod tcp;
