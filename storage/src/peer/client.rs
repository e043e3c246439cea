//! Authenticated calls to peers. Every answer is checked against the swarm key before it is used.

use super::auth::{self, AuthError};
use super::loglimit::LogLimiter;
use super::{FeedPage, Hello};
use crate::pinset::{LocalStatus, PeerPinInfo, PinEntry};
use crate::swarm_key::SwarmKey;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A persistent refusal (wrong swarm key) is logged again at most this often per peer.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, Clone)]
pub enum PeerError {
    #[error("peer {addr} unreachable: {msg}")]
    Unreachable { addr: String, msg: String },
    #[error("peer {addr} refused us ({status}): {msg}")]
    Refused {
        addr: String,
        status: u16,
        msg: String,
    },
    #[error("peer {addr} gave an answer we cannot trust: {msg}")]
    Untrusted { addr: String, msg: String },
    #[error("peer {addr} answered {status}: {msg}")]
    Status {
        addr: String,
        status: u16,
        msg: String,
    },
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    key: SwarmKey,
    me: String,
    refusals: Arc<LogLimiter>,
}

impl PeerClient {
    /// `proxy`: the local sidecar's outbound listener, when the node runs in the mesh.
    pub fn new(key: SwarmKey, me: String, timeout: Duration, proxy: Option<&str>) -> Self {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy();
        if let Some(p) = proxy {
            b = b.proxy(
                reqwest::Proxy::http(format!("http://{p}")).expect("validated proxy address"),
            );
        }
        let http = b.build().expect("http client");
        Self {
            http,
            key,
            me,
            refusals: Arc::new(LogLimiter::new(REFUSAL_LOG_EVERY)),
        }
    }

    /// One authenticated exchange. Returns the status, the responder's ID and the body.
    async fn call(
        &self,
        addr: &str,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, String, Bytes), PeerError> {
        let (headers, nonce) =
            auth::sign_request(&self.key, &self.me, &method, path_and_query, &body);
        let url = format!("http://{addr}{path_and_query}");
        let resp = self
            .http
            .request(method, &url)
            .headers(headers)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| PeerError::Unreachable {
                addr: addr.into(),
                msg: error_chain(&e),
            })?;
        let status = resp.status();
        let rh = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| PeerError::Unreachable {
            addr: addr.into(),
            msg: error_chain(&e),
        })?;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            && rh.get(auth::H_MAC).is_none()
        {
            let msg = String::from_utf8_lossy(&body).trim().to_string();
            if self.refusals.allow(addr) {
                tracing::error!(peer = addr, %status, reason = %msg, "peer refused our request (private network)");
            }
            return Err(PeerError::Refused {
                addr: addr.into(),
                status: status.as_u16(),
                msg,
            });
        }
        // A mesh sidecar answering for the peer (open circuit, shed, timeout) signs nothing: report
        // its reason as an unavailable peer rather than as an untrusted answer.
        if rh.get(auth::H_MAC).is_none() {
            if let Some(kind) = rh.get("x-bulwark-error").and_then(|v| v.to_str().ok()) {
                return Err(PeerError::Status {
                    addr: addr.into(),
                    status: status.as_u16(),
                    msg: format!("sidecar: {kind}: {}", String::from_utf8_lossy(&body).trim()),
                });
            }
        }
        match auth::verify_response(&self.key, &nonce, status, &rh, &body) {
            Ok(peer) => Ok((status, peer, body)),
            Err(e) => {
                if matches!(e, AuthError::KeyMismatch { .. }) && self.refusals.allow(addr) {
                    tracing::error!(peer = addr, error = %e, "refusing the answer of a peer that does not hold our swarm key");
                }
                Err(PeerError::Untrusted {
                    addr: addr.into(),
                    msg: e.to_string(),
                })
            }
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, PeerError> {
        let (status, _, body) = self.call(addr, method, path, body).await?;
        if !status.is_success() {
            return Err(PeerError::Status {
                addr: addr.into(),
                status: status.as_u16(),
                msg: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| PeerError::Untrusted {
            addr: addr.into(),
            msg: format!("malformed answer: {e}"),
        })
    }

    pub async fn hello(&self, addr: &str, me: &Hello) -> Result<Hello, PeerError> {
        let body = serde_json::to_vec(me).expect("hello serializes");
        self.json(addr, Method::POST, "/peer/v1/hello", body).await
    }

    /// `Ok(None)` when the peer does not have the block.
    pub async fn block(&self, addr: &str, cid: &str) -> Result<Option<Bytes>, PeerError> {
        let (status, _, body) = self
            .call(addr, Method::GET, &format!("/peer/v1/blocks/{cid}"), vec![])
            .await?;
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(PeerError::Status {
                addr: addr.into(),
                status: s.as_u16(),
                msg: String::from_utf8_lossy(&body).into(),
            }),
        }
    }

    pub async fn feed(&self, addr: &str, epoch: u64, since: u64) -> Result<FeedPage, PeerError> {
        self.json(
            addr,
            Method::GET,
            &format!("/peer/v1/pinset?epoch={epoch}&since={since}"),
            vec![],
        )
        .await
    }

    pub async fn push(&self, addr: &str, entries: &[PinEntry]) -> Result<(), PeerError> {
        let body = serde_json::to_vec(entries).expect("entries serialize");
        let _: serde_json::Value = self
            .json(addr, Method::POST, "/peer/v1/pinset", body)
            .await?;
        Ok(())
    }

    pub async fn status(&self, addr: &str, cid: &str) -> Result<PeerPinInfo, PeerError> {
        self.json(addr, Method::GET, &format!("/peer/v1/status/{cid}"), vec![])
            .await
    }

    pub async fn statuses(&self, addr: &str) -> Result<HashMap<String, LocalStatus>, PeerError> {
        self.json(addr, Method::GET, "/peer/v1/status", vec![])
            .await
    }

    /// An authenticated exchange with a binary body (block-service operations); non-2xx is an error.
    pub async fn binary(&self, addr: &str, path: &str, body: Vec<u8>) -> Result<Bytes, PeerError> {
        let (status, _, body) = self.call(addr, Method::POST, path, body).await?;
        if !status.is_success() {
            return Err(PeerError::Status {
                addr: addr.into(),
                status: status.as_u16(),
                msg: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        Ok(body)
    }

    /// An authenticated JSON exchange on any peer path.
    pub async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, PeerError> {
        self.json(addr, method, path, body).await
    }

    /// Tells a peer about departures (a goodbye, or a removal made here).
    pub async fn departures(
        &self,
        addr: &str,
        deps: &[crate::departure::Departure],
    ) -> Result<(), PeerError> {
        let body = serde_json::to_vec(deps).expect("departures serialize");
        let _: serde_json::Value = self
            .json(addr, Method::POST, "/peer/v1/departures", body)
            .await?;
        Ok(())
    }

    pub async fn recover(&self, addr: &str, cid: &str) -> Result<PeerPinInfo, PeerError> {
        self.json(
            addr,
            Method::POST,
            &format!("/peer/v1/recover/{cid}"),
            vec![],
        )
        .await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
