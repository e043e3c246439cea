//! The admin API's one error type, answered one way: the status and `{"error": "<message>"}`
//! (the shape Kubo, IPFS Cluster and Toxiproxy clients already read).

use crate::{full, Response};
use http::{header, HeaderValue, StatusCode};

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub status: StatusCode,
    pub message: String,
}

impl AdminError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// The path exists; `allowed` says which methods it takes.
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed; use {allowed}"),
        )
    }

    pub fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut r = http::Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bulwark-admin\""),
            );
        }
        r
    }
}

impl From<crate::policy::fault::FaultError> for AdminError {
    fn from(e: crate::policy::fault::FaultError) -> Self {
        Self::new(e.status(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn answered_as_status_and_json_error() {
        let r = AdminError::not_found("no fault \"x\"").into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let b = r.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"], "no fault \"x\"");
        let r = AdminError::new(StatusCode::UNAUTHORIZED, "token").into_response();
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
