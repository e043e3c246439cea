//! What a request is, for the policies: its traffic class and the client it comes from.
//! Both are computed once at the edge and carried in request extensions.
//!
//! The edge puts everything in one [`RequestMeta`] extension (one allocation, and one box to clone
//! when retry copies the request head, instead of five). The single-value extensions are still
//! read when there is no `RequestMeta` (requests built by hand in tests, by other layers).

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the edge learnt about a request, once.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub class: TrafficClass,
    pub client: ClientId,
    pub remote: SocketAddr,
    /// The upstream's name (breakers, metrics, fault matching).
    pub upstream: Arc<str>,
    /// The route (class rule) it matched.
    pub route: Arc<str>,
    /// Set by the retry layer for the try in flight: where the upstream client hands the head back.
    pub head_back: Option<crate::upstream::HeadBack>,
}

impl RequestMeta {
    pub fn of<B>(req: &http::Request<B>) -> Option<&RequestMeta> {
        req.extensions().get::<RequestMeta>()
    }

    /// What the edge would attach to a client request for `upstream` (tests of layers below it).
    #[cfg(test)]
    pub fn for_test(upstream: &str) -> Self {
        RequestMeta {
            class: TrafficClass::Client,
            client: ClientId::Addr("127.0.0.1".parse().expect("ip")),
            remote: "127.0.0.1:1".parse().expect("addr"),
            upstream: Arc::from(upstream),
            route: Arc::from("other"),
            head_back: None,
        }
    }
}

/// Traffic classes in the order they are protected under load: control first, client last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficClass {
    /// Membership, health, gossip.
    Control,
    /// Replication and recovery between nodes.
    Replication,
    /// Everything clients ask for.
    Client,
}

impl TrafficClass {
    pub const ALL: [TrafficClass; 3] = [Self::Control, Self::Replication, Self::Client];

    /// The class the edge put on a request; unclassified requests are client traffic.
    pub fn of<B>(req: &http::Request<B>) -> Self {
        if let Some(m) = RequestMeta::of(req) {
            return m.class;
        }
        req.extensions()
            .get::<TrafficClass>()
            .copied()
            .unwrap_or(TrafficClass::Client)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Replication => "replication",
            Self::Client => "client",
        }
    }
}

/// Who is calling, for per-client limits: a bearer token when there is one, else the source address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientId {
    Token(String),
    Addr(IpAddr),
}

impl ClientId {
    /// The client the edge identified, if any.
    pub fn of<B>(req: &http::Request<B>) -> Option<ClientId> {
        match RequestMeta::of(req) {
            Some(m) => Some(m.client.clone()),
            None => req.extensions().get::<ClientId>().cloned(),
        }
    }

    pub fn from_request<B>(req: &http::Request<B>, remote: IpAddr) -> Self {
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| ClientId::Token(t.trim().to_string()))
            .unwrap_or(ClientId::Addr(remote))
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never print a whole token.
            ClientId::Token(t) => write!(f, "token:{}…", t.chars().take(4).collect::<String>()),
            ClientId::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// The route (class rule name) a request matched, for policies that key on it.
#[derive(Clone, Debug)]
pub struct RouteName(pub std::sync::Arc<str>);

impl RouteName {
    pub fn of<B>(req: &http::Request<B>) -> Option<Arc<str>> {
        match RequestMeta::of(req) {
            Some(m) => Some(m.route.clone()),
            None => req.extensions().get::<RouteName>().map(|r| r.0.clone()),
        }
    }
}
