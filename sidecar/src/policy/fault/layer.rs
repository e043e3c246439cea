//! The tower layer: picks the fault a request gets and applies it.

use super::body::{corrupt_positions, FaultBody, Mode};
use super::registry::{Active, FaultRegistry};
use super::spec::FaultKind;
use crate::error::ProxyError;
use crate::{Request, Response};
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Names the fault that touched a response.
pub const H_FAULT: &str = "x-bulwark-fault";

/// Injects the registry's faults into the requests through it. Clones share the RNG.
#[derive(Clone)]
pub struct FaultLayer {
    registry: FaultRegistry,
    rng: Arc<Mutex<StdRng>>,
    listener: Option<Arc<str>>,
}

impl FaultLayer {
    /// Rolls and draws come from `StdRng::seed_from_u64(seed)`: the same seed and the same request
    /// sequence give the same faults.
    pub fn new(registry: FaultRegistry, seed: u64) -> Self {
        Self {
            registry,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            listener: None,
        }
    }

    /// Names the listener this layer serves, for specs with a `listener` matcher (a layer without a
    /// name never matches them).
    pub fn for_listener(mut self, name: &str) -> Self {
        self.listener = Some(Arc::from(name));
        self
    }

    pub fn registry(&self) -> &FaultRegistry {
        &self.registry
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    layer: FaultLayer,
}

pin_project_lite::pin_project! {
    /// The inner future untouched when no fault applies (no allocation), else a boxed one.
    #[project = FaultFutureProj]
    pub enum FaultFuture<F> {
        Pass { #[pin] fut: F },
        Fault { fut: BoxFuture<'static, Result<Response, ProxyError>> },
    }
}

impl<F> Future for FaultFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FaultFutureProj::Pass { fut } => fut.poll(cx),
            FaultFutureProj::Fault { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl FaultLayer {
    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        // The RNG has no invariant a panic could break.
        self.rng.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first live fault that matches `req` and passes its roll.
    fn pick(&self, faults: &[Arc<Active>], req: &Request) -> Option<Arc<Active>> {
        let now = Instant::now();
        let mut expired = false;
        let mut hit = None;
        for f in faults {
            if f.expires <= now {
                expired = true;
                continue;
            }
            if !f.matcher.matches(req, self.listener.as_deref()) {
                continue;
            }
            f.matched.fetch_add(1, Ordering::Relaxed);
            f.matched_total.inc();
            let p = f.spec.percent;
            let pass = if p >= 100.0 {
                true
            } else if p <= 0.0 {
                false
            } else {
                self.rng().random::<f64>() * 100.0 < p
            };
            if pass {
                f.injected.fetch_add(1, Ordering::Relaxed);
                f.injected_total.inc();
                hit = Some(f.clone());
                break;
            }
        }
        if expired {
            self.registry.prune();
        }
        hit
    }
}

fn synthetic(status: StatusCode, id: &str) -> Response {
    let mut r = http::Response::new(crate::full(format!("injected fault {id}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    tag(&mut r, id);
    r
}

fn tag(r: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert(H_FAULT, v);
    }
}

impl<S> tower::Service<Request> for FaultService<S>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = FaultFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let hit = {
            let faults = self.layer.registry.snapshot();
            if faults.is_empty() {
                None
            } else {
                self.layer.pick(&faults, &req)
            }
        };
        let Some(f) = hit else {
            return FaultFuture::Pass {
                fut: self.inner.call(req),
            };
        };
        tracing::debug!(fault = %f.id, kind = f.spec.kind.name(), path = req.uri().path(), "injecting fault");
        let id = f.id.clone();
        let fut: BoxFuture<'static, Result<Response, ProxyError>> = match f.spec.kind {
            FaultKind::Abort { status } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                Box::pin(futures::future::ready(Ok(synthetic(status, &id))))
            }
            FaultKind::Reset => {
                let mut r = synthetic(StatusCode::BAD_GATEWAY, &id);
                r.extensions_mut()
                    .insert(crate::error::DropConnection { reason: id });
                Box::pin(futures::future::ready(Ok(r)))
            }
            FaultKind::Blackhole => {
                let mut gone = f.gone.subscribe();
                let until = f.expires;
                drop(req);
                Box::pin(async move {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = gone.wait_for(|g| *g) => {}
                    }
                    Ok(synthetic(StatusCode::GATEWAY_TIMEOUT, &id))
                })
            }
            FaultKind::Delay(d) => {
                let wait = d.sample(&mut *self.layer.rng());
                // Take the service that was polled ready; leave a clone in its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(
                    tokio::time::sleep(wait)
                        .then(move |()| tower::ServiceExt::oneshot(inner, req))
                        .map_ok(move |mut r| {
                            tag(&mut r, &id);
                            r
                        }),
                )
            }
            FaultKind::Corrupt { bytes } => {
                let rng = self.layer.rng.clone();
                Box::pin(self.inner.call(req).map_ok(move |mut r| {
                    tag(&mut r, &id);
                    r.map(|b| {
                        let positions = {
                            let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
                            corrupt_positions(
                                http_body::Body::size_hint(&b).exact(),
                                bytes,
                                &mut *rng,
                            )
                        };
                        FaultBody::new(b, Mode::Corrupt { positions }).boxed()
                    })
                }))
            }
            FaultKind::Truncate { after_bytes } => {
                Box::pin(self.inner.call(req).map_ok(move |mut r| {
                    tag(&mut r, &id);
                    r.map(|b| {
                        FaultBody::new(
                            b,
                            Mode::Truncate {
                                after: after_bytes,
                                id,
                            },
                        )
                        .boxed()
                    })
                }))
            }
            FaultKind::Bandwidth { bytes_per_sec } => {
                Box::pin(self.inner.call(req).map_ok(move |mut r| {
                    tag(&mut r, &id);
                    r.map(|b| {
                        FaultBody::new(
                            b,
                            Mode::Pace {
                                bps: bytes_per_sec,
                                start: None,
                                sleep: None,
                            },
                        )
                        .boxed()
                    })
                }))
            }
        };
        FaultFuture::Fault { fut }
    }
}
