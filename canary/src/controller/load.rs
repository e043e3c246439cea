//! The plan's built-in load: `rate` requests per second to a listener, paths in turn.
use crate::plan::Load;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts the load against `listen`; abort the handle to stop it. `sent` counts requests.
pub fn start(load: &Load, listen: SocketAddr, sent: Arc<AtomicU64>) -> JoinHandle<()> {
    let load = load.clone();
    tokio::spawn(async move {
        let Ok(http) = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
        else {
            return;
        };
        let method = reqwest::Method::from_bytes(load.method.as_bytes()).unwrap_or_default();
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0usize.. {
            every.tick().await;
            let path = &load.paths[i % load.paths.len()];
            let req = http.request(method.clone(), format!("http://{listen}{path}"));
            sent.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = req.send().await.map(|r| r.bytes());
            });
        }
    })
}
