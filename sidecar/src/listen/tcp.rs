//! L4 listeners for non-HTTP protocols (the block service's NBD): connect to the upstream within the
//! listener's connect timeout and copy bytes both ways, counting them.

use crate::metrics::{BytesLabels, ErrorLabels, ListenerLabels};
use crate::server::SidecarState;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub async fn serve(
    tcp: TcpListener,
    name: String,
    shared: Arc<SidecarState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let labels = ListenerLabels {
        listener: name.clone(),
    };
    loop {
        let Some((mut down, remote)) = super::accept(&tcp, &name, &mut shutdown).await else {
            break;
        };
        shared.metrics.connections.get_or_create(&labels).inc();
        let cfg = shared.config.load_full();
        let Some(l) = cfg.listeners.iter().find(|l| l.name == name).cloned() else {
            continue;
        };
        let breaker = cfg.policy_for(&l).breaker.clone();
        let shared = shared.clone();
        let name = name.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let guard = shared.conns.enter();
            let upstream = l.upstream.unwrap_or_default();
            // The same per-upstream circuit as HTTP: while it is open, clients are turned away at
            // once instead of each waiting out a connect timeout.
            let key: std::sync::Arc<str> = std::sync::Arc::from(upstream.as_str());
            let ticket = match shared.breakers.admit_connection(
                &key,
                &breaker,
                &shared.breaker_metrics,
            ) {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(listener = %name, %remote, %upstream, error = %e, "circuit open; closing the client connection");
                    shared
                        .metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            listener: name,
                            kind: "circuit_open".into(),
                        })
                        .inc();
                    return;
                }
            };
            let up = match tokio::time::timeout(l.connect_timeout, TcpStream::connect(&upstream))
                .await
            {
                Ok(Ok(s)) => {
                    ticket.connected();
                    s
                }
                Ok(Err(e)) => {
                    ticket.failed(format!("connect: {e}"));
                    tracing::warn!(listener = %name, %remote, %upstream, error = %e, "upstream connect failed; closing the client connection");
                    shared
                        .metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            listener: name,
                            kind: "connect".into(),
                        })
                        .inc();
                    return;
                }
                Err(_) => {
                    ticket.failed("connect timed out".into());
                    tracing::warn!(listener = %name, %remote, %upstream, "upstream connect timed out; closing the client connection");
                    shared
                        .metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            listener: name,
                            kind: "timeout".into(),
                        })
                        .inc();
                    return;
                }
            };
            let _ = up.set_nodelay(true);
            let _ = down.set_nodelay(true);
            let mut up = up;
            let copied = tokio::select! {
                r = tokio::io::copy_bidirectional(&mut down, &mut up) => r,
                _ = shutdown.changed() => Ok((0, 0)),
            };
            match copied {
                Ok((to_up, to_down)) => {
                    let m = &shared.metrics.tcp_bytes;
                    m.get_or_create(&BytesLabels {
                        listener: name.clone(),
                        direction: "upstream".into(),
                    })
                    .inc_by(to_up);
                    m.get_or_create(&BytesLabels {
                        listener: name,
                        direction: "downstream".into(),
                    })
                    .inc_by(to_down);
                }
                Err(e) => {
                    tracing::debug!(listener = %name, %remote, error = %e, "tcp session ended with an error")
                }
            }
            drop(guard);
        });
    }
}
