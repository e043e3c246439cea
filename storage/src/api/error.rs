//! The one place where node errors become HTTP answers, in the dialect of each API: Kubo's
//! `{"Message","Code","Type":"error"}` (500, or 400 for client errors) and plain-text parse errors,
//! IPFS Cluster's `{"code","message"}`, and the gateway's plain text with the path-gateway statuses.

use crate::node::NodeError;
use crate::unixfs::{ReadError, UnixfsError};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    NotFound,
    NotPinned,
    TooLarge,
    NotImplemented,
    Unavailable,
    Internal,
    /// Kubo's parse-phase errors: plain text with the given status.
    KuboParse(StatusCode),
}

#[derive(Debug)]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, message)
    }
    pub fn missing_arg(name: &str) -> Self {
        Self::new(
            Kind::KuboParse(StatusCode::BAD_REQUEST),
            format!("argument \"{name}\" is required"),
        )
    }
    pub fn missing_file(name: &str) -> Self {
        Self::new(
            Kind::KuboParse(StatusCode::BAD_REQUEST),
            format!("file argument '{name}' is required"),
        )
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let kind = match &e {
            NodeError::Invalid(_) | NodeError::Unixfs(_) => Kind::BadRequest,
            NodeError::BlockNotFound(_)
            | NodeError::Read(ReadError::NotFound(_))
            | NodeError::UnknownPeer(_) => Kind::NotFound,
            NodeError::Read(ReadError::NotAFile(_)) => Kind::NotImplemented,
            NodeError::NotPinned(_) => Kind::NotPinned,
            NodeError::TooLarge(_) => Kind::TooLarge,
            NodeError::Alloc(_) => Kind::Unavailable,
            NodeError::Store(_) | NodeError::Read(_) | NodeError::Io(_) => Kind::Internal,
        };
        if kind == Kind::Internal {
            tracing::error!(error = %e, "request failed");
        }
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<UnixfsError> for ApiError {
    fn from(e: UnixfsError) -> Self {
        NodeError::from(e).into()
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        NodeError::from(e).into()
    }
}

/// Kubo RPC dialect.
pub struct Kubo(pub ApiError);

impl<E: Into<ApiError>> From<E> for Kubo {
    fn from(e: E) -> Self {
        Kubo(e.into())
    }
}

impl IntoResponse for Kubo {
    fn into_response(self) -> Response {
        let ApiError { kind, message } = self.0;
        let (status, code) = match kind {
            Kind::KuboParse(s) => {
                return (
                    s,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    format!("{message}\n"),
                )
                    .into_response()
            }
            Kind::BadRequest => (StatusCode::BAD_REQUEST, 1),
            Kind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, 1),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, 0),
        };
        (
            status,
            Json(json!({ "Message": message, "Code": code, "Type": "error" })),
        )
            .into_response()
    }
}

/// IPFS Cluster REST dialect.
pub struct Cluster(pub ApiError);

impl<E: Into<ApiError>> From<E> for Cluster {
    fn from(e: E) -> Self {
        Cluster(e.into())
    }
}

impl IntoResponse for Cluster {
    fn into_response(self) -> Response {
        let ApiError { kind, message } = self.0;
        let status = match kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::NotFound | Kind::NotPinned => StatusCode::NOT_FOUND,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Kind::Unavailable | Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::KuboParse(s) => s,
        };
        let message = if kind == Kind::NotPinned {
            "pin is not part of the pinset".to_string()
        } else {
            message
        };
        (
            status,
            Json(json!({ "code": status.as_u16(), "message": message })),
        )
            .into_response()
    }
}

/// Path-gateway dialect: plain text; 404 for content that is not available.
pub struct Gateway(pub ApiError);

impl<E: Into<ApiError>> From<E> for Gateway {
    fn from(e: E) -> Self {
        Gateway(e.into())
    }
}

impl IntoResponse for Gateway {
    fn into_response(self) -> Response {
        let ApiError { kind, message } = self.0;
        let status = match kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::NotFound | Kind::NotPinned => StatusCode::NOT_FOUND,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Kind::Unavailable => StatusCode::BAD_GATEWAY,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::KuboParse(s) => s,
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{message}\n"),
        )
            .into_response()
    }
}

/// Block-service dialect: `{"code","error","message"}` JSON. Unavailability says when to retry, so
/// a client waits a bounded time instead of hanging the way a Ceph client does below min_size.
impl IntoResponse for crate::block::service::BlockError {
    fn into_response(self) -> Response {
        use crate::block::service::BlockError as B;
        let (status, code) = match &self {
            B::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            B::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            B::Exists(_) => (StatusCode::CONFLICT, "exists"),
            B::OutOfRange(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "out_of_range"),
            B::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            B::Full(_) => (StatusCode::INSUFFICIENT_STORAGE, "full"),
            B::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "block request failed");
        }
        let body =
            Json(json!({ "code": status.as_u16(), "error": code, "message": self.to_string() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(header::RETRY_AFTER, "5")], body).into_response();
        }
        (status, body).into_response()
    }
}
