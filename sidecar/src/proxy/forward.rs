//! The innermost service: sends the request to its upstream over a pooled hyper client and streams the
//! answer back. Connection failures become typed, local-origin errors for the breaker and retries.

use crate::error::{ProxyError, TimeoutKind};
use crate::{Body, Request, Response};
use futures::future::BoxFuture;
use http::header::{self, HeaderName};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Where requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Inbound: always the local node.
    Fixed(Authority),
    /// Outbound: the authority the request names, if allowed (`*` allows any).
    ByAuthority(Arc<Vec<String>>),
}

#[derive(Clone)]
pub struct Forward {
    client: Client<HttpConnector, Body>,
    target: Target,
    connect_timeout: Duration,
}

impl Forward {
    pub fn new(target: Target, connect_timeout: Duration) -> Self {
        Self::with_pool(target, connect_timeout, 256)
    }

    /// `max_idle` 0: a fresh connection per request (canaries: a pooled connection to a canary
    /// that crashed since would fail the next probe for the wrong reason).
    pub fn with_pool(target: Target, connect_timeout: Duration, max_idle: usize) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(connect_timeout));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(max_idle)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(conn);
        Self {
            client,
            target,
            connect_timeout,
        }
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

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Common case, none present: one pass over the few names, no hashing, no allocation.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(&named) {
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
        let auth = match self.upstream_of(&req) {
            Ok(a) => a,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let pq = req.uri().path_and_query().cloned();
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(auth.clone());
        parts.path_and_query = pq.or_else(|| Some("/".parse().expect("path")));
        *req.uri_mut() = Uri::from_parts(parts).expect("valid uri");
        // The node side speaks HTTP/1.1; h2 clients are served by the sidecar.
        *req.version_mut() = Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut());
        let client = self.client.clone();
        let connect_timeout = self.connect_timeout;
        Box::pin(async move {
            let upstream = auth.to_string();
            match client.request(req).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(
                        parts,
                        body.map_err(crate::box_err).boxed(),
                    ))
                }
                Err(e) => Err(classify_error(upstream, &e, connect_timeout)),
            }
        })
    }
}

fn classify_error(
    upstream: String,
    e: &hyper_util::client::legacy::Error,
    connect_timeout: Duration,
) -> ProxyError {
    let chain = error_chain(e);
    if e.is_connect() {
        if chain.contains("timed out") || chain.contains("TimedOut") {
            return ProxyError::Timeout {
                upstream,
                kind: TimeoutKind::Connect,
                after: connect_timeout,
            };
        }
        return ProxyError::Connect {
            upstream,
            msg: chain,
        };
    }
    ProxyError::Upstream {
        upstream,
        msg: chain,
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
