//! The way in: listeners and the per-request edge.
//!
//! - `http.rs`: the HTTP listener's accept loop, h2c hand-off, and the edge every request crosses
//!   before the policy stack (classification, request id and trace context, metrics, the one place
//!   a [`crate::error::ProxyError`] becomes an answer for a data-plane client);
//! - `h1.rs`: the HTTP/1.1 server codec (framing, limits, keep-alive, drain);
//! - `tcp.rs`: L4 listeners (NBD), bytes copied both ways;
//! - `conn.rs`: open connections, counted for the drain.

pub mod conn;
pub mod h1;
pub mod http;
pub mod tcp;
