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

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The next connection of a listener, or `None` once `shutdown` fires. Every listener accepts
/// here, so limits on accepting (back-off, caps) have one place.
pub async fn accept(
    tcp: &TcpListener,
    name: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = tcp.accept() => match r {
                Ok(v) => return Some(v),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}
