//! `storage daemon`: opens the node, binds its four listeners and runs the background tasks until
//! SIGTERM/SIGINT, then stops accepting and lets in-flight requests finish.

use crate::config::Config;
use crate::identity::Identity;
use crate::node::Node;
use crate::swarm_key::SwarmKey;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;

pub const CONFIG_FILE: &str = "config.toml";
pub const IDENTITY_FILE: &str = "identity.json";
pub const SWARM_KEY_FILE: &str = "swarm.key";

/// Opens the node from its data directory (config already loaded and validated by the caller).
pub fn open(data: &Path, cfg: Config) -> anyhow::Result<Arc<Node>> {
    let ident = Identity::load(&data.join(IDENTITY_FILE)).with_context(|| {
        format!(
            "{} is not an initialised node directory (run `storage init --data {}`)",
            data.display(),
            data.display()
        )
    })?;
    let key_path = data.join(SWARM_KEY_FILE);
    if !key_path.exists() {
        anyhow::bail!(
            "no swarm key at {}: Bulwark nodes only run in a private network. Create one with `storage keygen > {}` (the same file on every node)",
            key_path.display(),
            key_path.display()
        );
    }
    let key = SwarmKey::load(&key_path)?;
    Ok(Node::open(cfg, ident, key, data.to_path_buf())?)
}

pub async fn run(node: Arc<Node>) -> anyhow::Result<()> {
    let cfg = node.cfg.clone();
    // The build's digest is computed once, before anything answers, so `version` never reports a
    // binary installed after this process started.
    let build = tokio::task::spawn_blocking(crate::build::identity)
        .await
        .context("computing the binary digest")?;
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for the {what} on {addr}"))
    };
    let rpc = bind(cfg.api.rpc, "Kubo RPC API").await?;
    let gw = bind(cfg.api.gateway, "gateway").await?;
    let cl = bind(cfg.api.cluster, "cluster REST API").await?;
    let peer = bind(cfg.peer.listen, "peer protocol").await?;
    let nbd = bind(cfg.block.nbd, "NBD export").await?;
    let block = crate::block::service::BlockService::open(node.clone())?;
    crate::block::service::register(&block);
    tracing::info!(
        peer_id = %node.me(), rpc = %cfg.api.rpc, gateway = %cfg.api.gateway, cluster = %cfg.api.cluster,
        peer = %cfg.peer.listen, nbd = %cfg.block.nbd, advertise = %cfg.advertise(), swarm_key = %node.key.fingerprint(),
        version = build.version, binary_digest = %build.digest, "storage node ready"
    );
    tokio::spawn(crate::tracker::run(node.clone()));
    tokio::spawn(crate::sync::run(node.clone()));
    tokio::spawn(crate::block::recovery::run(block.clone()));
    let shutdown = shutdown_signal();
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let serve = |l: TcpListener, r: axum::Router| {
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            axum::serve(l, r.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = rx.recv().await;
                })
                .await
        })
    };
    let observe = |r: axum::Router| {
        r.layer(axum::middleware::from_fn_with_state(
            block.brownout.clone(),
            crate::brownout::observe,
        ))
    };
    let tasks = vec![
        serve(
            rpc,
            observe(
                crate::api::block::router(block.clone())
                    .merge(crate::api::rpc::router(node.clone())),
            ),
        ),
        serve(gw, observe(crate::api::gateway::router(node.clone()))),
        serve(cl, observe(crate::api::cluster::router(node.clone()))),
        serve(
            peer,
            crate::peer::server::router(
                node.clone(),
                crate::api::block::peer_router(block.clone()),
            ),
        ),
    ];
    let (nbd_stop, nbd_rx) = tokio::sync::watch::channel(false);
    let provider = Arc::new(crate::block::export::Exports(block.clone()));
    let nbd_task = tokio::spawn(crate::block::nbd::serve(nbd, provider, nbd_rx));
    shutdown.await;
    if node.cfg.peer.transient {
        // Before the listeners close: peers drop this member at once instead of reporting it down.
        node.leave().await;
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = tx.send(());
    let _ = nbd_stop.send(true);
    drop(nbd_task);
    let drain = futures::future::join_all(tasks);
    if tokio::time::timeout(std::time::Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within 10s; exiting anyway");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
