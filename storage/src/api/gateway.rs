//! Path gateway `GET|HEAD /ipfs/{cid}` (the "reliable" subset of the path-gateway spec): file bytes
//! with single Range requests, ETag/If-None-Match, immutable caching, `?format=raw`, and 404 for
//! content that no reachable peer has.

use super::error::{ApiError, Gateway, Kind};
use super::set_header;
use crate::node::{Node, NodeBlocks};
use crate::unixfs::{self, parse_cid_path, Cid, NodeKind};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderMap, Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ipfs/{*path}", get(serve).head(serve))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .with_state(node)
}

const IMMUTABLE: &str = "public, max-age=29030400, immutable";

async fn serve(
    State(node): State<Arc<Node>>,
    method: Method,
    Path(path): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Gateway> {
    let mut parts = path.splitn(2, '/');
    let cid_str = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or("");
    let cid = parse_cid_path(cid_str)
        .map_err(|e| ApiError::bad(format!("invalid CID {cid_str:?}: {e}")))?;
    if !rest.is_empty() {
        return Err(ApiError::new(
            Kind::NotImplemented,
            "paths inside a DAG are not supported: request /ipfs/{cid} of a file",
        )
        .into());
    }
    let raw = q.get("format").map(String::as_str) == Some("raw")
        || headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("application/vnd.ipld.raw"));
    let etag = if raw {
        format!("\"{cid}.raw\"")
    } else {
        format!("\"{cid}\"")
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        common_headers(&mut r, &cid, &etag);
        return Ok(r);
    }
    let root = node.get_block(&cid).await?;
    if raw {
        let mut r = Response::new(if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(root.clone())
        });
        common_headers(&mut r, &cid, &etag);
        set_header(&mut r, "content-type", "application/vnd.ipld.raw");
        set_header(
            &mut r,
            "content-disposition",
            &format!("attachment; filename=\"{cid}.bin\""),
        );
        set_header(&mut r, "x-content-type-options", "nosniff");
        set_header(&mut r, "content-length", &root.len().to_string());
        return Ok(r);
    }
    let size = match unixfs::node_kind(&cid, &root)? {
        NodeKind::RawLeaf => root.len() as u64,
        NodeKind::File { size } => size,
        NodeKind::Directory => {
            return Err(
                ApiError::new(Kind::NotImplemented, "directory listings are not supported").into(),
            )
        }
        NodeKind::Other(t) => {
            return Err(ApiError::new(
                Kind::NotImplemented,
                format!("cannot serve a UnixFS {t:?} node"),
            )
            .into())
        }
    };
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, size) {
            RangeSpec::One(a, b) => Some((a, b)),
            RangeSpec::Ignore => None,
            RangeSpec::Unsatisfiable => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                set_header(&mut r, "content-range", &format!("bytes */{size}"));
                return Ok(r);
            }
        },
    };
    let (start, len) = range.map(|(a, b)| (a, b - a + 1)).unwrap_or((0, size));
    let src: Arc<dyn unixfs::BlockSource> = Arc::new(NodeBlocks(node.clone()));
    // Sniff the type from the first bytes (one leaf at most).
    let head = if size == 0 {
        bytes::Bytes::new()
    } else {
        first_bytes(src.clone(), cid, 512.min(size)).await?
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(unixfs::read_range(src, cid, start, Some(len)))
    };
    let mut r = Response::new(body);
    common_headers(&mut r, &cid, &etag);
    set_header(&mut r, "content-type", sniff(&head));
    set_header(&mut r, "content-length", &len.to_string());
    if let Some((a, b)) = range {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        set_header(&mut r, "content-range", &format!("bytes {a}-{b}/{size}"));
        set_header(&mut r, "etag", &format!("\"{cid}.{a}-{b}\""));
    }
    Ok(r)
}

async fn first_bytes(
    src: Arc<dyn unixfs::BlockSource>,
    cid: Cid,
    n: u64,
) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt;
    let mut s = unixfs::read_range(src, cid, 0, Some(n));
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.into())
}

fn common_headers(r: &mut Response, cid: &Cid, etag: &str) {
    set_header(r, "etag", etag);
    set_header(r, "cache-control", IMMUTABLE);
    set_header(r, "x-ipfs-path", &format!("/ipfs/{cid}"));
    set_header(r, "x-ipfs-roots", &cid.to_string());
    set_header(r, "accept-ranges", "bytes");
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    One(u64, u64),
    /// Multi-range or unparsable: serve the whole file (RFC 9110 allows ignoring Range).
    Ignore,
    Unsatisfiable,
}

fn parse_range(spec: &str, size: u64) -> RangeSpec {
    let Some(r) = spec.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if r.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = r.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => Some((a, b.min(size.saturating_sub(1)))),
        (Ok(a), Err(_)) if b.is_empty() => Some((a, size.saturating_sub(1))),
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 {
                return RangeSpec::Unsatisfiable;
            }
            Some((size.saturating_sub(n), size.saturating_sub(1)))
        }
        _ => return RangeSpec::Ignore,
    };
    match parsed {
        Some((a, b)) if a < size && a <= b => RangeSpec::One(a, b),
        _ => RangeSpec::Unsatisfiable,
    }
}

fn sniff(head: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"\x1f\x8b", "application/gzip"),
        (b"PK\x03\x04", "application/zip"),
    ];
    if let Some((_, t)) = MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        return t;
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multibyte character cut at the sniff boundary is still text.
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    };
    if text
        && !head
            .iter()
            .any(|&b| b == 0 || (b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c)))
    {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::One(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::One(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::One(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeSpec::One(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=5-1", 100), RangeSpec::Ignore);
    }

    #[test]
    fn sniffs_common_types() {
        assert_eq!(sniff(b"hello\n"), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nxxxx"), "image/png");
        assert_eq!(sniff(&[0, 1, 2, 3]), "application/octet-stream");
    }
}
