//! Swarm-key authentication of peer requests and responses.
//!
//! A request carries the sender's peer ID, a timestamp, a nonce and an HMAC over method, path, those
//! fields and the body's SHA-256; the answer carries an HMAC over the request nonce, status, responder
//! and body hash. So an outsider can neither get an answer (no valid request MAC) nor feed a member
//! anything (no valid response MAC), and a captured request cannot be replayed (nonce + time window).

use crate::swarm_key::SwarmKey;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

pub const H_PEER: &str = "x-bulwark-peer";
pub const H_DATE: &str = "x-bulwark-date";
pub const H_NONCE: &str = "x-bulwark-nonce";
pub const H_MAC: &str = "x-bulwark-mac";
/// Fingerprint of the sender's key, so both sides can log *which* keys disagree.
pub const H_KEY_FP: &str = "x-bulwark-key-fp";

/// How far a request's timestamp may be from our clock.
pub const MAX_SKEW_MS: u64 = 120_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no swarm key credentials: this is a private network and the caller is not a member")]
    Missing,
    #[error("swarm key mismatch: the caller uses key {theirs}, this node uses key {ours}")]
    KeyMismatch { theirs: String, ours: String },
    #[error("request timestamp is {0} ms away from this node's clock")]
    Skew(u64),
    #[error("request replayed (nonce already seen)")]
    Replay,
}

fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header values here are hex or peer ids")
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Headers for an outgoing peer request. Returns them with the nonce, which the answer must echo.
pub fn sign_request(
    key: &SwarmKey,
    me: &str,
    method: &Method,
    path_and_query: &str,
    body: &[u8],
) -> (HeaderMap, String) {
    let date = crate::pinset::now_millis().to_string();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let mac = key.mac(&[
        b"req",
        method.as_str().as_bytes(),
        path_and_query.as_bytes(),
        me.as_bytes(),
        date.as_bytes(),
        nonce.as_bytes(),
        body_hash(body).as_bytes(),
    ]);
    let mut h = HeaderMap::new();
    h.insert(H_PEER, hv(me));
    h.insert(H_DATE, hv(&date));
    h.insert(H_NONCE, hv(&nonce));
    h.insert(H_MAC, hv(&mac));
    h.insert(H_KEY_FP, hv(&key.fingerprint()));
    (h, nonce)
}

/// Remembers recent nonces, bounded, to refuse replays within the skew window.
pub struct ReplayGuard {
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    cap: usize,
}

impl ReplayGuard {
    pub fn new(cap: usize) -> Self {
        Self {
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            cap,
        }
    }

    fn insert(&self, nonce: &str) -> bool {
        let mut g = self.seen.lock().expect("replay guard lock");
        let (set, order) = &mut *g;
        if !set.insert(nonce.to_string()) {
            return false;
        }
        order.push_back(nonce.to_string());
        while order.len() > self.cap {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

/// Checks an incoming peer request. Returns the caller's peer ID and the nonce to echo.
pub fn verify_request(
    key: &SwarmKey,
    guard: &ReplayGuard,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, String), AuthError> {
    let (Some(peer), Some(date), Some(nonce), Some(mac)) = (
        get(headers, H_PEER),
        get(headers, H_DATE),
        get(headers, H_NONCE),
        get(headers, H_MAC),
    ) else {
        return Err(AuthError::Missing);
    };
    let ok = key.verify(
        &[
            b"req",
            method.as_str().as_bytes(),
            path_and_query.as_bytes(),
            peer.as_bytes(),
            date.as_bytes(),
            nonce.as_bytes(),
            body_hash(body).as_bytes(),
        ],
        mac,
    );
    if !ok {
        return Err(AuthError::KeyMismatch {
            theirs: get(headers, H_KEY_FP).unwrap_or("unknown").to_string(),
            ours: key.fingerprint(),
        });
    }
    let sent: u64 = date.parse().unwrap_or(0);
    let skew = crate::pinset::now_millis().abs_diff(sent);
    if skew > MAX_SKEW_MS {
        return Err(AuthError::Skew(skew));
    }
    if !guard.insert(nonce) {
        return Err(AuthError::Replay);
    }
    Ok((peer.to_string(), nonce.to_string()))
}

/// Headers that authenticate an answer to the request with `nonce`.
pub fn sign_response(
    key: &SwarmKey,
    me: &str,
    nonce: &str,
    status: StatusCode,
    body: &[u8],
) -> HeaderMap {
    let mac = key.mac(&[
        b"resp",
        nonce.as_bytes(),
        status.as_str().as_bytes(),
        me.as_bytes(),
        body_hash(body).as_bytes(),
    ]);
    let mut h = HeaderMap::new();
    h.insert(H_PEER, hv(me));
    h.insert(H_MAC, hv(&mac));
    h.insert(H_KEY_FP, hv(&key.fingerprint()));
    h
}

/// Checks an answer; returns the responder's peer ID.
pub fn verify_response(
    key: &SwarmKey,
    nonce: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, AuthError> {
    let (Some(peer), Some(mac)) = (get(headers, H_PEER), get(headers, H_MAC)) else {
        return Err(AuthError::Missing);
    };
    let ok = key.verify(
        &[
            b"resp",
            nonce.as_bytes(),
            status.as_str().as_bytes(),
            peer.as_bytes(),
            body_hash(body).as_bytes(),
        ],
        mac,
    );
    if ok {
        Ok(peer.to_string())
    } else {
        Err(AuthError::KeyMismatch {
            theirs: get(headers, H_KEY_FP).unwrap_or("unknown").to_string(),
            ours: key.fingerprint(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip_and_refuse_outsiders() {
        let k = SwarmKey::generate();
        let other = SwarmKey::generate();
        let g = ReplayGuard::new(10);
        let (h, nonce) = sign_request(&k, "me", &Method::POST, "/peer/v1/hello", b"body");
        assert_eq!(
            verify_request(&k, &g, &Method::POST, "/peer/v1/hello", &h, b"body").unwrap(),
            ("me".to_string(), nonce.clone())
        );
        assert_eq!(
            verify_request(&k, &g, &Method::POST, "/peer/v1/hello", &h, b"body"),
            Err(AuthError::Replay)
        );
        let (h2, _) = sign_request(&k, "me", &Method::POST, "/peer/v1/hello", b"body");
        assert!(matches!(
            verify_request(&k, &g, &Method::POST, "/peer/v1/hello", &h2, b"tampered"),
            Err(AuthError::KeyMismatch { .. })
        ));
        let (h3, _) = sign_request(&other, "me", &Method::POST, "/peer/v1/hello", b"body");
        assert!(matches!(
            verify_request(&k, &g, &Method::POST, "/peer/v1/hello", &h3, b"body"),
            Err(AuthError::KeyMismatch { .. })
        ));
        assert_eq!(
            verify_request(&k, &g, &Method::POST, "/x", &HeaderMap::new(), b""),
            Err(AuthError::Missing)
        );
        let rh = sign_response(&k, "you", &nonce, StatusCode::OK, b"answer");
        assert_eq!(
            verify_response(&k, &nonce, StatusCode::OK, &rh, b"answer").unwrap(),
            "you"
        );
        assert!(verify_response(&k, "othernonce", StatusCode::OK, &rh, b"answer").is_err());
        assert!(verify_response(&other, &nonce, StatusCode::OK, &rh, b"answer").is_err());
        assert!(verify_response(&k, &nonce, StatusCode::NOT_FOUND, &rh, b"answer").is_err());
    }
}
