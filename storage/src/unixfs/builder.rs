//! Kubo's balanced DAG layout, built incrementally.
//!
//! The tree is kept as one open (not yet full) node per level. A child is
//! added to level 0; when a level is already full the node it holds is
//! sealed first and becomes a child of the level above. This reproduces
//! Kubo's shape without knowing the file length in advance: subtrees are
//! filled left to right, and because `finish` seals every level from the
//! bottom up, a trailing partial subtree keeps the full depth
//! (175 leaves → root[node(174 leaves), node(1 leaf)]).

use bytes::Bytes;

use super::cidutil::cid_for;
use super::pb::{encode_dag_pb, encode_unixfs};
use super::{AddOptions, Block, Cid, DataType, PbLink, PbNode, UnixfsData, DAG_PB, RAW};

/// What a parent needs to know about a finished child.
#[derive(Clone, Copy, Debug)]
struct Child {
    cid: Cid,
    /// File bytes under the child: goes into the parent's `blocksizes`.
    file_size: u64,
    /// Encoded bytes of the whole subtree: goes into the link's `Tsize`.
    cumulative_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRoot {
    pub cid: Cid,
    pub file_size: u64,
    /// What Kubo prints as `Size` after `ipfs add`.
    pub cumulative_size: u64,
}

/// Streaming balanced-layout builder. Blocks come out children-before-parents
/// so a store can persist them in order.
pub struct FileBuilder {
    opts: AddOptions,
    buf: Vec<u8>,
    leaves: u64,
    levels: Vec<Vec<Child>>,
    out: Vec<Block>,
}

impl FileBuilder {
    /// Never fails so it can sit on hot paths; out-of-range options are
    /// clamped (chunk size ≥ 1, max links ≥ 2, any version above 0 means 1).
    /// Use [`AddOptions::validate`] to reject them instead.
    pub fn new(opts: AddOptions) -> Self {
        let opts = AddOptions {
            cid_version: opts.cid_version.min(1),
            raw_leaves: opts.raw_leaves,
            chunk_size: opts.chunk_size.max(1),
            max_links: opts.max_links.max(2),
        };
        FileBuilder {
            opts,
            buf: Vec::new(),
            leaves: 0,
            levels: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Returns the blocks completed by this input (possibly none).
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Block> {
        let chunk = self.opts.chunk_size;
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= chunk {
                let (head, tail) = data.split_at(chunk);
                self.add_leaf(head.to_vec());
                data = tail;
                continue;
            }
            let take = (chunk - self.buf.len()).min(data.len());
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(chunk);
            }
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == chunk {
                let full = std::mem::take(&mut self.buf);
                self.add_leaf(full);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Returns the remaining blocks; the root is the last one.
    pub fn finish(mut self) -> (Vec<Block>, FileRoot) {
        // Kubo turns empty input into a single empty chunk.
        if !self.buf.is_empty() || self.leaves == 0 {
            let rest = std::mem::take(&mut self.buf);
            self.add_leaf(rest);
        }
        let mut level = 0;
        let root = loop {
            if level + 1 == self.levels.len() {
                if level == 0 && self.levels[0].len() == 1 {
                    // A single chunk is its own root, with no wrapper node.
                    break self.levels[0][0];
                }
                break self.seal(level);
            }
            let node = self.seal(level);
            self.add_child(level + 1, node);
            level += 1;
        };
        let root = FileRoot {
            cid: root.cid,
            file_size: root.file_size,
            cumulative_size: root.cumulative_size,
        };
        (self.out, root)
    }

    fn add_leaf(&mut self, chunk: Vec<u8>) {
        self.leaves += 1;
        let file_size = chunk.len() as u64;
        let (cid, data) = if self.opts.raw_leaves {
            let cid = cid_for(&chunk, 1, RAW).expect("v1 accepts any codec");
            (cid, Bytes::from(chunk))
        } else {
            let unixfs = UnixfsData {
                kind: DataType::File,
                data: (!chunk.is_empty()).then(|| Bytes::from(chunk)),
                filesize: Some(file_size),
                blocksizes: Vec::new(),
            };
            self.dag_pb_block(Vec::new(), &unixfs)
        };
        let child = Child {
            cid,
            file_size,
            cumulative_size: data.len() as u64,
        };
        self.out.push(Block { cid, data });
        self.add_child(0, child);
    }

    fn add_child(&mut self, level: usize, child: Child) {
        if self.levels.len() <= level {
            self.levels.push(Vec::with_capacity(self.opts.max_links));
        }
        if self.levels[level].len() == self.opts.max_links {
            let sealed = self.seal(level);
            self.add_child(level + 1, sealed);
        }
        self.levels[level].push(child);
    }

    /// Emits the open node at `level` as a block and empties that level.
    fn seal(&mut self, level: usize) -> Child {
        let children = std::mem::take(&mut self.levels[level]);
        let unixfs = UnixfsData {
            kind: DataType::File,
            data: None,
            filesize: Some(children.iter().map(|c| c.file_size).sum()),
            blocksizes: children.iter().map(|c| c.file_size).collect(),
        };
        let links = children
            .iter()
            .map(|c| PbLink {
                cid: c.cid,
                name: Some(String::new()),
                tsize: Some(c.cumulative_size),
            })
            .collect();
        let (cid, data) = self.dag_pb_block(links, &unixfs);
        let child = Child {
            cid,
            file_size: unixfs.filesize.unwrap_or_default(),
            cumulative_size: data.len() as u64
                + children.iter().map(|c| c.cumulative_size).sum::<u64>(),
        };
        self.out.push(Block { cid, data });
        self.levels[level] = Vec::with_capacity(self.opts.max_links);
        child
    }

    fn dag_pb_block(&self, links: Vec<PbLink>, unixfs: &UnixfsData) -> (Cid, Bytes) {
        let node = PbNode {
            links,
            data: Some(Bytes::from(encode_unixfs(unixfs))),
        };
        let bytes = encode_dag_pb(&node);
        let cid = cid_for(&bytes, self.opts.cid_version, DAG_PB).expect("dag-pb valid for v0/v1");
        (cid, Bytes::from(bytes))
    }
}

/// Convenience for tests and small inputs.
pub fn add_bytes(data: &[u8], opts: AddOptions) -> (Vec<Block>, FileRoot) {
    let mut builder = FileBuilder::new(opts);
    let mut blocks = builder.push(data);
    let (rest, root) = builder.finish();
    blocks.extend(rest);
    (blocks, root)
}
