//! A bounded cache of content addressed by CID, served only when the node cannot answer.
//!
//! Content named by a CID never changes, so a copy taken from an earlier answer is as good as the
//! node's — *if* it is really the content the CID names. Only content that can be verified against
//! its CID in isolation is cached, and it is verified twice (when stored and again when served):
//! - raw blocks (`/api/v0/block/get?arg=CID`): sha2-256 of the bytes is the CID's digest;
//! - files (`/api/v0/cat?arg=CID`, gateway `GET /ipfs/CID`) whose CID is a raw leaf (codec `raw`)
//!   or a single-chunk UnixFS file (dag-pb, as Kubo writes files up to one chunk): the block is
//!   rebuilt from the bytes and hashed.
//!
//! Bigger files (more than one block) cannot be checked without their DAG, so they are not cached;
//! a read of one falls over to a peer sidecar instead.

use bytes::{Bytes, BytesMut};
use cid::Cid;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

const SHA2_256: u64 = 0x12;
const RAW: u64 = 0x55;
const DAG_PB: u64 = 0x70;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The block's own bytes.
    Block,
    /// A file's content.
    File,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: Kind,
    pub cid: String,
}

/// The cache key of a request whose answer is content-addressed, if it is one.
pub fn cacheable(method: &http::Method, uri: &http::Uri) -> Option<Key> {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/ipfs/") {
        if *method != http::Method::GET || rest.contains('/') || uri.query().is_some() {
            return None;
        }
        return Some(Key {
            kind: Kind::File,
            cid: rest.to_string(),
        });
    }
    let kind = match path {
        "/api/v0/cat" => Kind::File,
        "/api/v0/block/get" => Kind::Block,
        _ => return None,
    };
    // Only `arg`: offsets, lengths and other options change the answer.
    let mut cid = None;
    for pair in uri.query()?.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("arg", v)) if cid.is_none() => cid = Some(v.to_string()),
            _ => return None,
        }
    }
    Some(Key { kind, cid: cid? })
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The dag-pb block of a single-chunk UnixFS file holding `data` (Kubo's encoding).
fn unixfs_file_block(data: &[u8]) -> Vec<u8> {
    let mut fs = Vec::with_capacity(data.len() + 16);
    fs.extend_from_slice(&[0x08, 0x02]); // Type = File
    if !data.is_empty() {
        fs.push(0x12);
        varint(data.len() as u64, &mut fs);
        fs.extend_from_slice(data);
    }
    fs.push(0x18);
    varint(data.len() as u64, &mut fs);
    let mut node = Vec::with_capacity(fs.len() + 8);
    node.push(0x0a); // PBNode.Data
    varint(fs.len() as u64, &mut node);
    node.extend_from_slice(&fs);
    node
}

/// Whether `body` is exactly the content `key` names (`false` when it cannot be checked).
pub fn verify(key: &Key, body: &[u8]) -> bool {
    let Ok(cid) = key.cid.parse::<Cid>() else {
        return false;
    };
    let mh = cid.hash();
    if mh.code() != SHA2_256 {
        return false;
    }
    let digest = match (key.kind, cid.codec()) {
        (Kind::Block, _) | (Kind::File, RAW) => Sha256::digest(body),
        (Kind::File, DAG_PB) => Sha256::digest(unixfs_file_block(body)),
        _ => return false,
    };
    digest.as_slice() == mh.digest()
}

struct Item {
    body: Bytes,
    content_type: Option<HeaderValue>,
}

#[derive(Default)]
struct Lru {
    map: HashMap<Key, Item>,
    order: VecDeque<Key>,
    bytes: usize,
}

pub struct CidCache {
    lru: Mutex<Lru>,
    max_bytes: usize,
    pub max_item: usize,
}

impl CidCache {
    pub fn new(max_bytes: usize, max_item: usize) -> Self {
        Self {
            lru: Mutex::new(Lru::default()),
            max_bytes,
            max_item,
        }
    }

    /// Stores a complete answer body if it verifies against its CID.
    pub fn insert(&self, key: Key, body: Bytes, content_type: Option<HeaderValue>) -> bool {
        if body.len() > self.max_item || body.len() > self.max_bytes || !verify(&key, &body) {
            return false;
        }
        let mut l = self.lru.lock().expect("cache lock");
        if l.map.contains_key(&key) {
            return true;
        }
        l.bytes += body.len();
        l.order.push_back(key.clone());
        l.map.insert(key, Item { body, content_type });
        while l.bytes > self.max_bytes {
            let Some(old) = l.order.pop_front() else {
                break;
            };
            if let Some(it) = l.map.remove(&old) {
                l.bytes -= it.body.len();
            }
        }
        true
    }

    /// A verified copy (checked again now: never serve unverified bytes).
    pub fn get(&self, key: &Key) -> Option<(Bytes, Option<HeaderValue>)> {
        let (body, ct) = {
            let l = self.lru.lock().expect("cache lock");
            let it = l.map.get(key)?;
            (it.body.clone(), it.content_type.clone())
        };
        if verify(key, &body) {
            Some((body, ct))
        } else {
            tracing::error!(cid = %key.cid, "cached content no longer matches its CID; dropped");
            let mut l = self.lru.lock().expect("cache lock");
            if let Some(it) = l.map.remove(key) {
                l.bytes -= it.body.len();
                l.order.retain(|k| k != key);
            }
            None
        }
    }

    pub fn len(&self) -> usize {
        self.lru.lock().expect("cache lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects the frames of an answer as it streams to the client; on a clean end of a body within
/// `max` bytes, hands the whole of it to `done`.
pub struct Tee {
    inner: crate::Body,
    buf: BytesMut,
    max: usize,
    done: Option<Box<dyn FnOnce(Bytes) + Send + Sync>>,
}

impl Tee {
    pub fn new(inner: crate::Body, max: usize, done: Box<dyn FnOnce(Bytes) + Send + Sync>) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            max,
            done: Some(done),
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let r = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        match &r {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    if this.done.is_some() && this.buf.len() + d.len() <= this.max {
                        this.buf.extend_from_slice(d);
                    } else {
                        this.done = None; // too big: not cached
                    }
                }
            }
            Some(Err(_)) => this.done = None,
            None => {
                if let Some(done) = this.done.take() {
                    done(std::mem::take(&mut this.buf).freeze());
                }
            }
        }
        std::task::Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: Kind, cid: &str) -> Key {
        Key {
            kind,
            cid: cid.into(),
        }
    }

    #[test]
    fn verifies_against_golden_cids() {
        // Kubo vectors (shared/reference/storage-anchors.md).
        let hw = b"hello world\n";
        assert!(verify(
            &key(Kind::File, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
            hw
        ));
        assert!(verify(
            &key(
                Kind::File,
                "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
            ),
            hw
        ));
        assert!(verify(
            &key(Kind::File, "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"),
            b"hello world"
        ));
        // The empty file.
        assert!(verify(
            &key(Kind::File, "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
            b""
        ));
        // Wrong bytes, wrong kind, garbage: never verified.
        assert!(!verify(
            &key(Kind::File, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
            b"hello world!"
        ));
        assert!(!verify(
            &key(
                Kind::Block,
                "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
            ),
            hw
        ));
        assert!(!verify(&key(Kind::File, "not-a-cid"), hw));
        // A raw block is its own bytes.
        let block = unixfs_file_block(hw);
        assert!(verify(
            &key(
                Kind::Block,
                "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
            ),
            &block
        ));
    }

    #[test]
    fn only_whole_content_requests_are_cacheable() {
        let k = |m: &str, u: &str| cacheable(&m.parse().unwrap(), &u.parse().unwrap());
        let cid = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o";
        assert_eq!(
            k("POST", &format!("/api/v0/cat?arg={cid}")),
            Some(key(Kind::File, cid))
        );
        assert_eq!(
            k("POST", &format!("/api/v0/block/get?arg={cid}")),
            Some(key(Kind::Block, cid))
        );
        assert_eq!(
            k("GET", &format!("/ipfs/{cid}")),
            Some(key(Kind::File, cid))
        );
        assert_eq!(k("POST", &format!("/api/v0/cat?arg={cid}&offset=3")), None);
        assert_eq!(k("GET", &format!("/ipfs/{cid}/sub")), None);
        assert_eq!(k("POST", &format!("/ipfs/{cid}")), None);
        assert_eq!(k("POST", "/api/v0/add"), None);
    }

    #[test]
    fn bounded_and_verified_on_the_way_in() {
        let c = CidCache::new(30, 20);
        let hw = Bytes::from_static(b"hello world\n");
        assert!(!c.insert(
            key(Kind::File, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
            Bytes::from_static(b"forged"),
            None
        ));
        assert!(c.insert(
            key(Kind::File, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
            hw.clone(),
            None
        ));
        assert!(c.insert(
            key(
                Kind::File,
                "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
            ),
            hw.clone(),
            None
        ));
        assert!(c.insert(
            key(Kind::File, "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"),
            Bytes::from_static(b"hello world"),
            None
        ));
        assert_eq!(c.len(), 2, "oldest evicted past 30 bytes");
        assert!(c
            .get(&key(
                Kind::File,
                "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
            ))
            .is_none());
    }
}
