//! Tests for the UnixFS module; shared fixtures live here.

mod cids;
mod codec;
mod corrupt;
mod golden;
mod roundtrip;
mod shape;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use futures::future::BoxFuture;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::*;

pub(super) const CHUNK: usize = DEFAULT_CHUNK_SIZE;

/// The golden vectors' data: ChaCha20 keystream keyed by SHA-256(seed).
fn chacha_bytes(seed: &str, len: usize) -> Vec<u8> {
    let key: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    let mut cipher = chacha20::ChaCha20::new(&key.into(), &[0u8; 12].into());
    let mut buf = vec![0u8; len];
    cipher.apply_keystream(&mut buf);
    buf
}

/// Prefixes of one keystream are consistent, so each seed is generated once
/// at the largest length any test needs and sliced from there.
pub(super) fn seeded(seed: &str, len: usize) -> &'static [u8] {
    static V0: OnceLock<Vec<u8>> = OnceLock::new();
    static CHUNK_V0: OnceLock<Vec<u8>> = OnceLock::new();
    static CHUNK_V1: OnceLock<Vec<u8>> = OnceLock::new();
    let (cell, max) = match seed {
        "v0-seed" => (&V0, 174 * CHUNK + 1),
        "chunk-v0-seed" => (&CHUNK_V0, CHUNK + 1),
        "chunk-v1-seed" => (&CHUNK_V1, (1 << 20) + 1),
        other => panic!("unknown seed {other}"),
    };
    assert!(len <= max, "{seed}: {len} > {max}");
    &cell.get_or_init(|| chacha_bytes(seed, max))[..len]
}

/// Deterministic pseudo-random numbers (splitmix64), so failures reproduce.
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

pub(super) fn opts(
    cid_version: u8,
    raw_leaves: bool,
    chunk_size: usize,
    max_links: usize,
) -> AddOptions {
    AddOptions {
        cid_version,
        raw_leaves,
        chunk_size,
        max_links,
    }
}

/// Feeds `data` in `piece`-sized pushes and returns everything emitted.
pub(super) fn add_in_pieces(data: &[u8], o: AddOptions, piece: usize) -> (Vec<Block>, FileRoot) {
    let mut b = FileBuilder::new(o);
    let mut blocks = Vec::new();
    for p in data.chunks(piece) {
        blocks.extend(b.push(p));
    }
    let (rest, root) = b.finish();
    blocks.extend(rest);
    (blocks, root)
}

/// Invariants every builder output must satisfy: blocks hash to their CIDs,
/// children come before parents, the root is last, and the root's
/// cumulative size equals the bytes emitted.
pub(super) fn check_blocks(blocks: &[Block], root: &FileRoot) {
    assert_eq!(blocks.last().expect("at least one block").cid, root.cid);
    let mut seen = HashSet::new();
    for b in blocks {
        verify_block(&b.cid, &b.data).expect("block hashes to its cid");
        if b.cid.codec() == DAG_PB {
            for l in decode_dag_pb(&b.data).expect("decodes").links {
                assert!(
                    seen.contains(&l.cid),
                    "child {} after parent {}",
                    l.cid,
                    b.cid
                );
            }
        }
        seen.insert(b.cid);
    }
    let total: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
    assert_eq!(root.cumulative_size, total);
}

/// In-memory source that records every fetch.
#[derive(Default)]
pub(super) struct MemSource {
    blocks: HashMap<Cid, Bytes>,
    fetched: Mutex<Vec<Cid>>,
}

impl MemSource {
    pub fn new(blocks: &[Block]) -> Self {
        let mut s = MemSource::default();
        for b in blocks {
            s.insert(b.clone());
        }
        s
    }

    pub fn insert(&mut self, b: Block) {
        self.blocks.insert(b.cid, b.data);
    }

    pub fn remove(&mut self, cid: &Cid) {
        self.blocks.remove(cid);
    }

    pub fn take_fetched(&self) -> Vec<Cid> {
        std::mem::take(&mut *self.fetched.lock().unwrap())
    }
}

impl BlockSource for MemSource {
    fn get<'a>(&'a self, cid: &'a Cid) -> BoxFuture<'a, Result<Bytes, ReadError>> {
        Box::pin(async move {
            self.fetched.lock().unwrap().push(*cid);
            self.blocks
                .get(cid)
                .cloned()
                .ok_or(ReadError::NotFound(*cid))
        })
    }
}

/// Collects a range read, asserting the reader never yields empty chunks.
pub(super) async fn read_all(
    src: Arc<dyn BlockSource>,
    root: Cid,
    offset: u64,
    len: Option<u64>,
) -> Result<Vec<u8>, ReadError> {
    let mut stream = read_range(src, root, offset, len);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        assert!(!chunk.is_empty(), "reader yielded an empty chunk");
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Expected bytes of a range read, with the reader's clamping rules.
pub(super) fn slice_of(data: &[u8], offset: u64, len: Option<u64>) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = match len {
        Some(l) => (offset.saturating_add(l)).min(data.len() as u64) as usize,
        None => data.len(),
    };
    &data[start..end.max(start)]
}

/// Builds a dag-pb block from parts, for hand-made (often broken) DAGs.
pub(super) fn pb_block(version: u8, links: Vec<(Cid, u64)>, unixfs: Option<UnixfsData>) -> Block {
    let node = PbNode {
        links: links
            .into_iter()
            .map(|(cid, tsize)| PbLink {
                cid,
                name: Some(String::new()),
                tsize: Some(tsize),
            })
            .collect(),
        data: unixfs.map(|u| Bytes::from(encode_unixfs(&u))),
    };
    let data = encode_dag_pb(&node);
    Block {
        cid: cid_for(&data, version, DAG_PB).unwrap(),
        data: data.into(),
    }
}

pub(super) fn raw_block(data: &[u8]) -> Block {
    Block {
        cid: cid_for(data, 1, RAW).unwrap(),
        data: Bytes::copy_from_slice(data),
    }
}
