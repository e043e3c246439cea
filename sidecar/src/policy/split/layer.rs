//! The two layers: [`SplitLayer`] chooses a request's subset (after degrade, before the outage
//! gate and the breaker) and counts its final outcome; [`SplitAttemptLayer`] (between retry and
//! the upstream client) counts every attempt against the subset it went to, and applies the
//! subset's rehearsal fault ([`SubsetFault`](super::SubsetFault)) to the requests that drew it.

use super::registry::{Outcome, Routed, Slot};
use super::spec::{SubsetFault, REHEARSAL};
use crate::classify::{ClientId, RequestMeta};
use crate::error::ProxyError;
use crate::policy::{Maybe, OnAnswer, Then};
use crate::{Request, Response};
use http::{HeaderName, HeaderValue, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Pins a request to a subset (`stable` for the listener's own upstream); on every answer a
/// split routed, the subset that served it.
pub const H_SUBSET: HeaderName = HeaderName::from_static("x-bulwark-subset");
const ATTEMPT: HeaderName = HeaderName::from_static(crate::policy::retry::H_ATTEMPT);

/// Routes a listener's requests by its split, if one is installed.
#[derive(Clone)]
pub struct SplitLayer {
    slot: Arc<Slot>,
}

impl SplitLayer {
    pub fn new(slot: Arc<Slot>) -> Self {
        Self { slot }
    }
}

impl<S> Layer<S> for SplitLayer {
    type Service = SplitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SplitService {
            inner,
            slot: self.slot.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SplitService<S> {
    inner: S,
    slot: Arc<Slot>,
}

/// A routed request's answer: counted for its subset, and named in `x-bulwark-subset`.
pub struct Answered(Arc<super::registry::Route>);

impl OnAnswer for Option<Answered> {
    fn on_answer(self, mut res: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        if let Some(Answered(route)) = self {
            route.stats.request(Outcome::of(&res));
            if let Ok(r) = &mut res {
                r.headers_mut().insert(H_SUBSET, route.header.clone());
            }
        }
        res
    }
}

impl<S> Service<Request> for SplitService<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Maybe<Then<S::Future, Option<Answered>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // No split: this load is all the layer costs.
        if !self.slot.live.load(Ordering::Relaxed) {
            return Maybe::direct(Then::new(self.inner.call(req), None));
        }
        self.route(req)
    }
}

impl<S> SplitService<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    fn route(&mut self, mut req: Request) -> Maybe<Then<S::Future, Option<Answered>>> {
        let Some(split) = self.slot.split.load_full() else {
            return Maybe::direct(Then::new(self.inner.call(req), None));
        };
        if Instant::now() >= split.expires {
            self.slot.expire(&split);
            return Maybe::direct(Then::new(self.inner.call(req), None));
        }
        let route = match req.headers_mut().remove(H_SUBSET) {
            Some(pin) => match split.by_name(pin.as_bytes()) {
                Some(r) => r,
                None => {
                    let known: Vec<&str> = split.routes.iter().map(|r| &*r.name).collect();
                    return Maybe::err(ProxyError::BadRequest(format!(
                        "{H_SUBSET}: {:?} names no subset of this listener's split (it has {})",
                        String::from_utf8_lossy(pin.as_bytes()),
                        known.join(", ")
                    )));
                }
            },
            None if split.sticky => match ClientId::of(&req) {
                Some(c) => split.sticky(&c),
                None => split.roll(),
            },
            None => split.roll(),
        }
        .clone();
        if let Some(up) = &route.upstream {
            // The breaker, the outage gate and the error messages below key on this name.
            if let Some(m) = req.extensions_mut().get_mut::<RequestMeta>() {
                m.upstream = up.clone();
            }
        }
        let fault = split.rehearse(&route);
        req.extensions_mut().insert(Routed(route.clone(), fault));
        Maybe::direct(Then::new(self.inner.call(req), Some(Answered(route))))
    }
}

/// Counts each attempt of a routed request against its subset: sits between retry and the
/// upstream client, so a retried 502 counts as a 502 (and the retry as a retry), not as the
/// success that may follow it.
#[derive(Clone, Copy, Default)]
pub struct SplitAttemptLayer;

impl<S> Layer<S> for SplitAttemptLayer {
    type Service = SplitAttempt<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SplitAttempt { inner }
    }
}

#[derive(Clone)]
pub struct SplitAttempt<S> {
    inner: S,
}

/// One attempt in flight. Dropped before its answer (the per-try timeout or the deadline gave
/// up on it, or the client left), it counts as a timeout.
pub struct Attempt {
    route: Arc<super::registry::Route>,
    start: Instant,
    counted: bool,
    /// A rehearsal fault touched it: its answer is marked `x-bulwark-fault: split-rehearsal`.
    rehearsed: bool,
}

impl Attempt {
    fn count(&mut self, o: Outcome) {
        self.counted = true;
        self.route
            .stats
            .attempt(o, self.start.elapsed(), &self.route.bounds);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.counted {
            self.count(Outcome::Timeout);
        }
    }
}

impl OnAnswer for Option<Attempt> {
    fn on_answer(self, mut res: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        if let Some(mut a) = self {
            a.count(Outcome::of(&res));
            if let (true, Ok(r)) = (a.rehearsed, &mut res) {
                r.headers_mut().insert(
                    crate::policy::fault::H_FAULT,
                    HeaderValue::from_static(REHEARSAL),
                );
            }
        }
        res
    }
}

/// The answer a rehearsal abort gives in the subset's place.
fn rehearsal_abort(status: u16) -> Response {
    let mut r = http::Response::new(crate::full(format!(
        "injected fault {REHEARSAL} (status {status})\n"
    )));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pin_project_lite::pin_project! {
    /// One attempt's future: the inner one (counted when it answers), the same after a
    /// rehearsal delay (the inner future is not polled, so nothing is sent, until it ends), or
    /// a rehearsal abort's answer (nothing sent at all).
    #[project = AttemptProj]
    pub enum AttemptFuture<F> {
        Pass { #[pin] fut: Then<F, Option<Attempt>> },
        Delayed { #[pin] sleep: Sleep, #[pin] fut: Then<F, Option<Attempt>> },
        Aborted { answer: Option<(Response, Attempt)> },
    }
}

impl<F> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AttemptProj::Pass { fut } => fut.poll(cx),
            AttemptProj::Delayed { sleep, fut } => {
                // A finished `Sleep` stays ready, so polling it again costs nothing.
                std::task::ready!(sleep.poll(cx));
                fut.poll(cx)
            }
            AttemptProj::Aborted { answer } => {
                let (r, a) = answer.take().expect("polled after it completed");
                Poll::Ready(Some(a).on_answer(Ok(r)))
            }
        }
    }
}

/// An attempt of a request that drew its subset's rehearsal fault.
fn rehearse<S>(f: SubsetFault, a: Attempt, inner: &mut S, req: Request) -> AttemptFuture<S::Future>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    match (f.abort, f.delay_ms) {
        (Some(status), _) => {
            // As the upstream client does: the head goes back to retry for another try.
            crate::upstream::HeadBack::give_back(req.into_parts().0);
            AttemptFuture::Aborted {
                answer: Some((rehearsal_abort(status), a)),
            }
        }
        (None, Some(ms)) => AttemptFuture::Delayed {
            sleep: tokio::time::sleep(std::time::Duration::from_millis(ms)),
            fut: Then::new(inner.call(req), Some(a)),
        },
        // Validation admits neither both nor none; pass it through (marked).
        (None, None) => AttemptFuture::Pass {
            fut: Then::new(inner.call(req), Some(a)),
        },
    }
}

impl<S> Service<Request> for SplitAttempt<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let mut fault = None;
        let attempt = req.extensions().get::<Routed>().map(|r| {
            if req.headers().contains_key(ATTEMPT) {
                r.0.stats.retry();
            }
            fault = r.1;
            Attempt {
                route: r.0.clone(),
                start: Instant::now(),
                counted: false,
                rehearsed: r.1.is_some(),
            }
        });
        match (fault, attempt) {
            (Some(f), Some(a)) => rehearse(f, a, &mut self.inner, req),
            (_, attempt) => AttemptFuture::Pass {
                fut: Then::new(self.inner.call(req), attempt),
            },
        }
    }
}
