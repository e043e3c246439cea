//! Success answers and request bodies, shared by the resource modules.

use super::error::AdminError;
use crate::{full, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

pub type Reply = Result<Response, AdminError>;

pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = http::Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(v: &impl serde::Serialize) -> Response {
    json_with(StatusCode::OK, v)
}

pub fn json_with(status: StatusCode, v: &impl serde::Serialize) -> Response {
    let mut r = http::Response::new(full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn no_content() -> Response {
    text(StatusCode::NO_CONTENT, "")
}

pub async fn body(req: http::Request<Incoming>) -> Result<Bytes, AdminError> {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| AdminError::bad_request(format!("cannot read body: {e}")))
}
