//! The node's public HTTP APIs: Kubo-compatible RPC, the path gateway and the IPFS-Cluster-compatible
//! REST API. Errors are turned into responses in one place, [`error`], in each API's own dialect.

pub mod block;
pub mod cluster;
pub mod error;
pub mod gateway;
pub mod rpc;
pub mod upload;

use axum::body::Body;
use bytes::Bytes;
use futures::Stream;
use http::{HeaderValue, Response};
use serde::Serialize;

/// Newline-delimited JSON body, as both Kubo channels and Cluster streams use.
pub fn ndjson<T: Serialize>(items: &[T]) -> Bytes {
    let mut out = Vec::new();
    for i in items {
        serde_json::to_writer(&mut out, i).expect("serializable");
        out.push(b'\n');
    }
    out.into()
}

/// A streamed body whose mid-stream failure is reported in the `X-Stream-Error` trailer, as Kubo
/// does, instead of silently truncating.
pub fn stream_with_error_trailer<S, E>(s: S) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    use futures::StreamExt;
    use http_body::Frame;
    let frames = s
        .map(|r| match r {
            Ok(b) => Ok::<_, std::convert::Infallible>(Frame::data(b)),
            Err(e) => {
                tracing::warn!(error = %e, "stream failed after the answer started");
                let mut t = http::HeaderMap::new();
                let msg = e.to_string().replace(['\r', '\n'], " ");
                t.insert(
                    "x-stream-error",
                    HeaderValue::from_str(&msg).unwrap_or(HeaderValue::from_static("stream error")),
                );
                Ok(Frame::trailers(t))
            }
        })
        .scan(false, |done, f| {
            // Nothing may follow the trailers.
            if *done {
                return futures::future::ready(None);
            }
            if let Ok(fr) = &f {
                *done = fr.is_trailers();
            }
            futures::future::ready(Some(f))
        });
    Body::new(http_body_util::StreamBody::new(frames))
}

pub fn set_header<B>(r: &mut Response<B>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}
