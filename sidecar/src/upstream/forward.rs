//! The innermost service: sends the request to its upstream over a pooled connection (`pool.rs`) and
//! streams the answer back. Connection failures become typed, local-origin errors for the breaker and
//! retries.

use crate::codec::is_hop_by_hop;
use crate::error::ProxyError;
use crate::policy::split::Routed;
use crate::upstream::pool::Pool;
use crate::{Request, Response};
use futures::future::BoxFuture;
use http::header::{self, HeaderName};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Uri, Version};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Where requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Inbound: the local node — unless a traffic split routed the request to a subset (a
    /// [`Routed`] extension): then the subset's address (the pool keeps each host's connections).
    Fixed(Authority),
    /// Outbound: the authority the request names, if allowed (`*` allows any).
    ByAuthority(Arc<Vec<String>>),
}

#[derive(Clone)]
pub struct Forward {
    pool: Pool,
    target: Target,
}

/// Idle upstream connections are closed after this (the node's own keep-alive is longer).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Forward {
    /// `max_buf`: `upstream_buffer_bytes` (head and body read cap), `None` for `h1`'s defaults.
    pub fn new(target: Target, connect_timeout: Duration, max_buf: Option<usize>) -> Self {
        Self::with_pool(target, connect_timeout, 256, max_buf)
    }

    /// `max_idle` 0: a fresh connection per request (canaries: a pooled connection to a canary
    /// that crashed since would fail the next probe for the wrong reason).
    pub fn with_pool(
        target: Target,
        connect_timeout: Duration,
        max_idle: usize,
        max_buf: Option<usize>,
    ) -> Self {
        Self {
            pool: Pool::new(
                match &target {
                    Target::Fixed(a) => Some(a.clone()),
                    Target::ByAuthority(_) => None,
                },
                max_idle,
                POOL_IDLE_TIMEOUT,
                connect_timeout,
                max_buf,
            ),
            target,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The upstream a request goes to, checked against the allow-list for outbound traffic.
    pub fn upstream_of(&self, req: &Request) -> Result<Authority, ProxyError> {
        match &self.target {
            Target::Fixed(a) => Ok(a.clone()),
            Target::ByAuthority(allowed) => {
                let auth = req
                    .uri()
                    .authority()
                    .cloned()
                    .or_else(|| {
                        req.headers()
                            .get(header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .and_then(|h| h.parse().ok())
                    })
                    .ok_or_else(|| {
                        ProxyError::BadRequest("outbound request names no upstream (Host)".into())
                    })?;
                if allowed.iter().any(|a| a == "*" || a == auth.as_str()) {
                    Ok(auth)
                } else {
                    Err(ProxyError::NoRoute(format!(
                        "upstream {auth} is not in allowed_upstreams"
                    )))
                }
            }
        }
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Common case, none present: one pass over the names, no hashing, no allocation.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let mut named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    named.extend(h.keys().filter(|k| is_hop_by_hop(k)).cloned());
    for n in &named {
        h.remove(n);
    }
}

impl tower::Service<Request> for Forward {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // A traffic split's subset (`policy::split`) replaces an inbound listener's upstream.
        let routed = match &self.target {
            Target::Fixed(_) => req.extensions().get::<Routed>().and_then(Routed::addr),
            Target::ByAuthority(_) => None,
        };
        let auth = match routed {
            Some(a) => a.clone(),
            None => match self.upstream_of(&req) {
                Ok(a) => a,
                Err(e) => return Box::pin(async move { Err(e) }),
            },
        };
        // HTTP/1.1 to the upstream in origin form (`GET /path?q`), with a Host header: h2 clients
        // send only `:authority`, which names this sidecar, so the upstream's name is used then.
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
        *req.version_mut() = Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut());
        if !req.headers().contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        let pool = self.pool.clone();
        Box::pin(async move {
            // The answer comes without hop-by-hop headers (`h1` leaves them out).
            let resp = pool.send(&auth, req).await?;
            Ok(resp.map(|body| body.map_err(crate::box_err).boxed()))
        })
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn outbound_routes_only_to_allowed_upstreams() {
        let f = Forward::new(
            Target::ByAuthority(Arc::new(vec!["127.0.0.12:9096".into()])),
            Duration::from_secs(1),
            None,
        );
        let ok = http::Request::builder()
            .uri("http://127.0.0.12:9096/x")
            .body(crate::empty())
            .unwrap();
        assert_eq!(f.upstream_of(&ok).unwrap().as_str(), "127.0.0.12:9096");
        let host = http::Request::builder()
            .uri("/x")
            .header("host", "127.0.0.12:9096")
            .body(crate::empty())
            .unwrap();
        assert!(f.upstream_of(&host).is_ok());
        let bad = http::Request::builder()
            .uri("http://10.0.0.1:80/x")
            .body(crate::empty())
            .unwrap();
        assert!(matches!(f.upstream_of(&bad), Err(ProxyError::NoRoute(_))));
    }
}
