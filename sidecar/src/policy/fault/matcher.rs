//! How a spec matches a request.

use super::spec::FaultSpec;
use crate::classify::{ClientId, TrafficClass};
use crate::policy::breaker::UpstreamName;
use crate::Request;
use http::{HeaderName, HeaderValue, Method};
use std::net::{IpAddr, SocketAddr};

/// A spec's matchers, parsed once.
#[derive(Debug)]
pub(super) struct Matcher {
    route: Option<String>,
    method: Option<Method>,
    header: Option<(HeaderName, Option<HeaderValue>)>,
    peer: Option<IpAddr>,
    upstream: Option<String>,
    listener: Option<String>,
    class: Option<TrafficClass>,
}

impl Matcher {
    /// Pre-parses `spec`'s matchers (the rest of the spec is checked by [`FaultSpec::compile`]).
    pub(super) fn new(spec: &FaultSpec) -> Result<Self, String> {
        let id = &spec.id;
        let route = match &spec.route {
            Some(r) if !r.starts_with('/') => {
                return Err(format!(
                    "fault {id:?}: route must be a path prefix starting with '/', got {r:?}"
                ))
            }
            r => r.clone(),
        };
        let method = match &spec.method {
            Some(m) => Some(
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("fault {id:?}: invalid method {m:?}"))?,
            ),
            None => None,
        };
        let header = match &spec.header {
            Some(h) => {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("fault {id:?}: invalid header name {:?}", h.name))?;
                let value = match &h.value {
                    Some(v) => Some(
                        HeaderValue::from_str(v)
                            .map_err(|_| format!("fault {id:?}: invalid header value {v:?}"))?,
                    ),
                    None => None,
                };
                Some((name, value))
            }
            None => None,
        };
        let peer = match &spec.peer {
            Some(p) => Some(p.trim().parse::<IpAddr>().map_err(|_| {
                format!("fault {id:?}: peer must be an IP address (no port, no CIDR), got {p:?}")
            })?),
            None => None,
        };
        Ok(Matcher {
            route,
            method,
            header,
            peer,
            upstream: spec.upstream.clone(),
            listener: spec.listener.clone(),
            class: spec.class,
        })
    }

    pub(super) fn matches(&self, req: &Request, listener: Option<&str>) -> bool {
        if let Some(r) = &self.route {
            if !req.uri().path().starts_with(r.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if req.method() != m {
                return false;
            }
        }
        if let Some((name, value)) = &self.header {
            let mut values = req.headers().get_all(name).iter().peekable();
            let ok = match value {
                None => values.peek().is_some(),
                Some(v) => values.any(|x| x == v),
            };
            if !ok {
                return false;
            }
        }
        if let Some(c) = self.class {
            if TrafficClass::of(req) != c {
                return false;
            }
        }
        if let Some(p) = self.peer {
            if peer_of(req) != Some(p) {
                return false;
            }
        }
        if let Some(u) = &self.upstream {
            if *UpstreamName::of(req) != **u {
                return false;
            }
        }
        if let Some(l) = &self.listener {
            if listener != Some(l.as_str()) {
                return false;
            }
        }
        true
    }
}

/// The client's address: the `SocketAddr` request extension (the edge's remote address), else the
/// address in [`ClientId::Addr`] (absent when the client sent a bearer token).
fn peer_of(req: &Request) -> Option<IpAddr> {
    if let Some(m) = crate::classify::RequestMeta::of(req) {
        return Some(m.remote.ip());
    }
    let ext = req.extensions();
    ext.get::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|| match ext.get::<ClientId>() {
            Some(ClientId::Addr(ip)) => Some(*ip),
            _ => None,
        })
}
