//! Resilience policies, one [`tower::Layer`] each, with its config, errors (as
//! [`crate::error::ProxyError`]), metrics and tests beside it.
//!
//! Every layer wraps a `Service<Request, Response = Response, Error = ProxyError>` and returns one.

pub mod breaker;
pub mod cache;
pub mod degrade;
pub mod fault;
pub mod outage;
pub mod qod;
pub mod retry;
pub mod shed;
pub mod split;
pub mod throttle;

use crate::error::ProxyError;
use crate::Response;
use futures::future::BoxFuture;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Boxes the inner future outside any `async` block: rustc cannot yet prove an async block holding
/// `S::Future` is `Send` (the boxed error type's lifetime gets erased; rust#64552).
pub(crate) fn boxed_call<S>(
    inner: &mut S,
    req: crate::Request,
) -> BoxFuture<'static, Result<Response, ProxyError>>
where
    S: tower::Service<crate::Request, Response = Response, Error = ProxyError>,
    S::Future: Send + 'static,
{
    Box::pin(inner.call(req))
}

/// Wall-clock milliseconds: for state shared with other processes (blacklist entries, outage
/// schedules), where `tokio::time` would not mean the same instant on the peer.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pin_project_lite::pin_project! {
    /// A layer's answer: the inner service's own future when the layer has nothing to do (no
    /// allocation: every request crosses every layer), or a boxed future on the rarer paths.
    #[project = MaybeProj]
    pub enum Maybe<F> {
        Direct { #[pin] fut: F },
        Boxed { fut: BoxFuture<'static, Result<Response, ProxyError>> },
    }
}

impl<F> Maybe<F> {
    pub fn direct(fut: F) -> Self {
        Maybe::Direct { fut }
    }

    pub fn boxed(fut: impl Future<Output = Result<Response, ProxyError>> + Send + 'static) -> Self {
        Maybe::Boxed { fut: Box::pin(fut) }
    }

    pub fn err(e: ProxyError) -> Self {
        Self::boxed(std::future::ready(Err(e)))
    }
}

impl<F> Future for Maybe<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            MaybeProj::Direct { fut } => fut.poll(cx),
            MaybeProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// What a layer does with the inner service's answer once it has come (see [`Then`]).
pub trait OnAnswer {
    fn on_answer(self, res: Result<Response, ProxyError>) -> Result<Response, ProxyError>;
}

pin_project_lite::pin_project! {
    /// The inner service's future, then `done` applied to its answer: a named future instead of a
    /// boxed combinator, so the layers every request crosses (shed, breaker, throttle) allocate
    /// nothing, copy no future into a box and add no indirect call per poll. Dropped before the
    /// answer, `done` is dropped unapplied (a breaker ticket then gives back its probe slot, a
    /// shed permit its slot).
    pub struct Then<F, D> {
        #[pin]
        fut: F,
        done: Option<D>,
    }
}

impl<F, D> Then<F, D> {
    pub fn new(fut: F, done: D) -> Self {
        Self {
            fut,
            done: Some(done),
        }
    }
}

impl<F, D> Future for Then<F, D>
where
    F: Future<Output = Result<Response, ProxyError>>,
    D: OnAnswer,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.fut.poll(cx));
        let done = this.done.take().expect("Then polled after it completed");
        Poll::Ready(done.on_answer(res))
    }
}
