//! Bulwark sidecar: the resilience proxy in front of every storage node.
//!
//! The request path is a tower stack, one [`tower::Layer`] per policy (see `policy/`), over a hyper
//! client; every failure is a typed [`error::ProxyError`] turned into an HTTP answer in one place.
#![forbid(unsafe_code)]

pub mod admin;
pub mod classify;
pub mod codec;
pub mod config;
pub mod error;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod stack;
pub mod telemetry;
pub mod toxiproxy;
pub mod upstream;

use bytes::Bytes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies stream both ways; nothing on the data path buffers a whole body.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;

/// A body from bytes (synthetic answers, tests).
pub fn full(b: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A named conversion: closures returning `Box<dyn Error>` in async code make the compiler infer a
/// lifetime-generic trait object that no service implements.
pub fn box_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

/// An empty body. `Empty` and the closure are zero-sized, so boxing them allocates nothing (every
/// bodyless request carries one).
pub fn empty() -> Body {
    use http_body_util::BodyExt;
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}
