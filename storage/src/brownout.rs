//! Brownout as seen by a node: its sidecar marks client requests `x-bulwark-brownout: 1` while it
//! is overloaded (or an operator switched brownout on), and optional background work yields to
//! client I/O for a short while after each marked request — the block service's recovery rounds
//! are skipped (degraded objects stay tracked and are recovered once the brownout is over).

use crate::pinset::now_millis as now_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const HEADER: &str = "x-bulwark-brownout";
/// How long one marked request keeps the node in brownout.
const HOLD: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Brownout {
    until_ms: AtomicU64,
    /// Background rounds skipped because of a brownout.
    pub yielded: AtomicU64,
}

impl Brownout {
    pub fn mark(&self) {
        self.until_ms
            .fetch_max(now_ms() + HOLD.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn active(&self) -> bool {
        self.until_ms.load(Ordering::Relaxed) > now_ms()
    }
}

/// Axum middleware for the client-facing routers.
pub async fn observe(
    axum::extract::State(b): axum::extract::State<Arc<Brownout>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.headers().contains_key(HEADER) {
        b.mark();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_request_holds_brownout_for_a_while() {
        let b = Brownout::default();
        assert!(!b.active());
        b.mark();
        assert!(b.active());
    }
}
