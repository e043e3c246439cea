//! Node-to-node protocol: HTTP on the peer port, every request and response authenticated with the
//! swarm key (see [`auth`]). Plain HTTP on purpose: the sidecars proxy, observe and fault this traffic.

pub mod auth;
pub mod client;
pub mod loglimit;
pub mod server;

use crate::pinset::PinEntry;
use serde::{Deserialize, Serialize};

/// A peer address as operators write it: `HOST:PORT`, or a multiaddr `/ip4/A/tcp/P[/p2p/ID]`
/// (also `/ip6`, `/dns`, `/dns4`, `/dns6`) as IPFS Cluster's `--bootstrap` takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    pub host_port: String,
    pub id: Option<String>,
}

impl PeerAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with('/') {
            let parts: Vec<&str> = s.split('/').skip(1).collect();
            let (proto, host, tcp, port) = match parts.as_slice() {
                [p, h, t, port, ..] => (*p, *h, *t, *port),
                _ => return Err("multiaddr must look like /ip4/HOST/tcp/PORT[/p2p/ID]".into()),
            };
            if !matches!(proto, "ip4" | "ip6" | "dns" | "dns4" | "dns6") || tcp != "tcp" {
                return Err(format!("unsupported multiaddr protocols /{proto}/…/{tcp}"));
            }
            let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
            let id = match &parts[4..] {
                [] => None,
                ["p2p", id] | ["ipfs", id] if !id.is_empty() => Some(id.to_string()),
                rest => return Err(format!("unexpected multiaddr suffix /{}", rest.join("/"))),
            };
            let host_port = if proto == "ip6" {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            return Ok(Self { host_port, id });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| "expected HOST:PORT or a /ip4/…/tcp/… multiaddr".to_string())?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err("empty or malformed host".into());
        }
        port.parse::<u16>()
            .map_err(|_| format!("bad port {port:?}"))?;
        Ok(Self {
            host_port: s.to_string(),
            id: None,
        })
    }

    /// The multiaddr form used in `id` answers.
    pub fn multiaddr(host_port: &str, id: &str) -> String {
        match host_port.parse::<std::net::SocketAddr>() {
            Ok(std::net::SocketAddr::V4(a)) => format!("/ip4/{}/tcp/{}/p2p/{id}", a.ip(), a.port()),
            Ok(std::net::SocketAddr::V6(a)) => format!("/ip6/{}/tcp/{}/p2p/{id}", a.ip(), a.port()),
            Err(_) => match host_port.rsplit_once(':') {
                Some((h, p)) => format!("/dns/{h}/tcp/{p}/p2p/{id}"),
                None => host_port.to_string(),
            },
        }
    }
}

/// Exchanged on every membership round: who I am, where I am reachable, whom I know.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub id: String,
    pub addr: String,
    pub peername: String,
    pub members: Vec<(String, String)>,
    /// Failure-domain label for block placement (absent from older nodes).
    #[serde(default)]
    pub host: String,
    /// The sender is a transient member: it gets no pin allocations and no block placements, and
    /// says goodbye when it stops. Every field below is absent from older nodes (so `default`):
    /// a canary runs builds of different ages side by side, and their greetings must still parse.
    #[serde(default)]
    pub transient: bool,
    /// Members of `members` the sender knows to be transient, so a member learnt second-hand is
    /// never taken for an allocation target before it greets us itself.
    #[serde(default)]
    pub transient_members: Vec<String>,
    /// When the sender's process started (Unix ms): a goodbye names the incarnation that left, so a
    /// greeting still in flight from it cannot bring it back, while a restarted process can.
    #[serde(default)]
    pub incarnation: u64,
    /// SHA-256 of the sender's running binary (see [`crate::build`]).
    #[serde(default)]
    pub digest: String,
    /// The sender's build version.
    #[serde(default)]
    pub version: String,
    /// Members that left or were removed, as the sender knows them (see [`crate::departure`]).
    #[serde(default)]
    pub departed: Vec<crate::departure::Departure>,
}

/// One page of a peer's pinset feed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedPage {
    pub epoch: u64,
    pub entries: Vec<(u64, PinEntry)>,
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_multiaddrs() {
        assert_eq!(
            PeerAddr::parse("127.0.0.11:9096").unwrap(),
            PeerAddr {
                host_port: "127.0.0.11:9096".into(),
                id: None
            }
        );
        assert_eq!(
            PeerAddr::parse("/ip4/127.0.0.11/tcp/9096/p2p/12D3KooWabc").unwrap(),
            PeerAddr {
                host_port: "127.0.0.11:9096".into(),
                id: Some("12D3KooWabc".into())
            }
        );
        assert_eq!(
            PeerAddr::parse("/ip6/::1/tcp/1").unwrap().host_port,
            "[::1]:1"
        );
        for bad in [
            "",
            "nohost",
            "h:notaport",
            "/ip4/1.2.3.4/udp/1",
            "/ip4/1.2.3.4/tcp/x",
            "/ip4/1/tcp/1/foo/bar",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PeerAddr::multiaddr("127.0.0.1:9096", "ID"),
            "/ip4/127.0.0.1/tcp/9096/p2p/ID"
        );
    }
}
