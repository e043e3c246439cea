//! The filter layer: signature and blacklist, right after fault injection.

use super::blacklist::now_ms;
use super::signature::{self, Signature};
use super::{QodConfig, QodMode, QodState, H_QOD};
use crate::classify::{RouteName, TrafficClass};
use crate::error::ProxyError;
use crate::policy::Maybe;
use crate::{Request, Response};
use http::HeaderValue;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What the filter decided, for the probe layer.
#[derive(Clone, Copy)]
pub struct SigExt {
    pub sig: Signature,
    /// A dry-run blacklist hit: forwarded to the node unprobed.
    pub dry_run_hit: bool,
}

#[derive(Clone)]
pub struct QodFilterLayer {
    on: Option<(Arc<QodState>, Arc<QodConfig>)>,
}

impl QodFilterLayer {
    /// `None`: probing is off for this listener and the layer passes everything through.
    pub fn new(on: Option<(Arc<QodState>, Arc<QodConfig>)>) -> Self {
        Self { on }
    }
}

impl<S> tower::Layer<S> for QodFilterLayer {
    type Service = QodFilter<S>;
    fn layer(&self, inner: S) -> Self::Service {
        QodFilter {
            inner,
            on: self.on.clone(),
        }
    }
}

#[derive(Clone)]
pub struct QodFilter<S> {
    inner: S,
    on: Option<(Arc<QodState>, Arc<QodConfig>)>,
}

pub(super) fn route_of(req: &Request) -> Arc<str> {
    RouteName::of(req).unwrap_or_else(|| Arc::from("other"))
}

impl<S> tower::Service<Request> for QodFilter<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Maybe<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some((st, cfg)) = &self.on else {
            return Maybe::direct(self.inner.call(req));
        };
        if !cfg.classes.contains(&TrafficClass::of(&req)) {
            return Maybe::direct(self.inner.call(req));
        }
        let route = route_of(&req);
        let sig = signature::of(&req, &route);
        let mut dry_run_hit = false;
        if let Some((id, expires_ms, entry_dry, reason)) = st.blacklist.matching(sig.fine, now_ms())
        {
            if cfg.mode == QodMode::DryRun || entry_dry {
                dry_run_hit = true;
                st.metrics.dry_run_hits.inc();
                tracing::warn!(%id, %route, "dry run: request matches a query-of-death entry; forwarded");
            } else {
                st.metrics.blocked.inc();
                let err = ProxyError::QueryOfDeath {
                    id,
                    expires_in: Duration::from_millis(expires_ms.saturating_sub(now_ms())),
                    reason,
                };
                return Maybe::err(err);
            }
        }
        req.extensions_mut().insert(SigExt { sig, dry_run_hit });
        let fut = self.inner.call(req);
        if dry_run_hit {
            return Maybe::boxed(mark_dry_run(fut, signature::id(sig.fine)));
        }
        Maybe::direct(fut)
    }
}

async fn mark_dry_run<F>(fut: F, id: String) -> Result<Response, ProxyError>
where
    F: std::future::Future<Output = Result<Response, ProxyError>>,
{
    let mut r = fut.await?;
    if let Ok(v) = HeaderValue::from_str(&format!("dry-run; id={id}")) {
        r.headers_mut().insert(H_QOD, v);
    }
    Ok(r)
}
