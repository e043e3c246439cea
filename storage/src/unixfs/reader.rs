//! Reading files back out of a DAG, one block at a time.
//!
//! Blocks arrive from a [`BlockSource`] that may be slow (peers), so the
//! reader fetches only blocks that overlap the requested range, using each
//! parent's `blocksizes` to place children without fetching them. Sizes are
//! cross-checked on every visited node, so a DAG that lies about its shape
//! is reported as corrupt instead of yielding a truncated or padded file.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};

use super::pb::{decode_dag_pb_shared, decode_unixfs_shared};
use super::{Cid, DataType, ReadError, UnixfsData, UnixfsError, DAG_PB, RAW};

/// Where readers get blocks from (local store, then peers). Object-safe on
/// purpose so stores and network fetchers can be swapped behind an `Arc`.
pub trait BlockSource: Send + Sync + 'static {
    fn get<'a>(&'a self, cid: &'a Cid) -> BoxFuture<'a, Result<Bytes, ReadError>>;
}

/// What a node is, for readers: lets gateway/cat answer "this is a
/// directory" clearly instead of failing deep inside a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    RawLeaf,
    File { size: u64 },
    Directory,
    Other(DataType),
}

impl NodeKind {
    /// HAMT shards are sharded directories, so they count too.
    pub fn is_directory(&self) -> bool {
        matches!(
            self,
            NodeKind::Directory | NodeKind::Other(DataType::HamtShard)
        )
    }

    pub fn is_file(&self) -> bool {
        matches!(self, NodeKind::RawLeaf | NodeKind::File { .. })
    }
}

pub fn node_kind(cid: &Cid, block: &[u8]) -> Result<NodeKind, UnixfsError> {
    match cid.codec() {
        RAW => Ok(NodeKind::RawLeaf),
        DAG_PB => {
            let node = decode_dag_pb_shared(&Bytes::copy_from_slice(block))?;
            let unixfs = unixfs_of(node.data.as_ref())?;
            Ok(match unixfs.kind {
                DataType::File | DataType::Raw => NodeKind::File {
                    size: file_node_size(&unixfs, node.links.len())?,
                },
                DataType::Directory => NodeKind::Directory,
                other => NodeKind::Other(other),
            })
        }
        other => Err(UnixfsError::UnsupportedCodec(other)),
    }
}

fn unixfs_of(data: Option<&Bytes>) -> Result<UnixfsData, UnixfsError> {
    let data =
        data.ok_or_else(|| UnixfsError::Malformed("dag-pb node without UnixFS data".into()))?;
    decode_unixfs_shared(data)
}

/// The node's own bytes plus its children's, checked against `filesize`
/// when present. Checked arithmetic because the numbers are untrusted.
fn file_node_size(unixfs: &UnixfsData, links: usize) -> Result<u64, UnixfsError> {
    if unixfs.blocksizes.len() != links {
        return Err(UnixfsError::Malformed(format!(
            "{} links but {} blocksizes",
            links,
            unixfs.blocksizes.len()
        )));
    }
    let own = unixfs.data.as_ref().map_or(0, |d| d.len() as u64);
    let total = unixfs
        .blocksizes
        .iter()
        .try_fold(own, |acc, &b| acc.checked_add(b))
        .ok_or_else(|| UnixfsError::Malformed("file size overflows u64".into()))?;
    match unixfs.filesize {
        Some(declared) if declared != total => Err(UnixfsError::Malformed(format!(
            "filesize {declared} disagrees with data + blocksizes {total}"
        ))),
        _ => Ok(total),
    }
}

/// A file node split into the part it carries itself and its children.
struct FileNode {
    own: Bytes,
    children: Vec<(Cid, u64)>,
    total: u64,
}

enum Decoded {
    File(FileNode),
    NotAFile(String),
}

fn decode_file_node(cid: &Cid, block: Bytes) -> Result<Decoded, UnixfsError> {
    match cid.codec() {
        RAW => {
            let total = block.len() as u64;
            Ok(Decoded::File(FileNode {
                own: block,
                children: Vec::new(),
                total,
            }))
        }
        DAG_PB => {
            let node = decode_dag_pb_shared(&block)?;
            let unixfs = unixfs_of(node.data.as_ref())?;
            if !matches!(unixfs.kind, DataType::File | DataType::Raw) {
                return Ok(Decoded::NotAFile(format!("{:?} node", unixfs.kind)));
            }
            let total = file_node_size(&unixfs, node.links.len())?;
            let children = node
                .links
                .iter()
                .zip(&unixfs.blocksizes)
                .map(|(l, &s)| (l.cid, s))
                .collect();
            Ok(Decoded::File(FileNode {
                own: unixfs.data.unwrap_or_default(),
                children,
                total,
            }))
        }
        other => Ok(Decoded::NotAFile(format!("codec 0x{other:x}"))),
    }
}

/// Total size of the file rooted at `root`; reads only the root block.
pub async fn file_size(src: &dyn BlockSource, root: &Cid) -> Result<u64, ReadError> {
    let block = src.get(root).await?;
    match decode_file_node(root, block).map_err(|e| corrupt(root, e))? {
        Decoded::File(node) => Ok(node.total),
        Decoded::NotAFile(_) => Err(ReadError::NotAFile(*root)),
    }
}

fn corrupt(cid: &Cid, e: impl std::fmt::Display) -> ReadError {
    ReadError::Corrupt(format!("{cid}: {e}"))
}

/// Stream the bytes `[offset, offset+len)` (`len` None = to the end; clamped
/// at EOF) of the file rooted at `root`. Each yielded chunk is (a slice of)
/// one leaf, so memory stays bounded by a block regardless of file size.
/// The root is always fetched, even for an empty range, so a missing or
/// non-file root is reported consistently.
pub fn read_range(
    src: Arc<dyn BlockSource>,
    root: Cid,
    offset: u64,
    len: Option<u64>,
) -> BoxStream<'static, Result<Bytes, ReadError>> {
    let walker = Walker {
        src,
        stack: vec![Pending {
            cid: root,
            start: 0,
            expected: None,
        }],
        range_start: offset,
        range_end: len.map_or(u64::MAX, |l| offset.saturating_add(l)),
    };
    futures::stream::unfold(walker, |mut w| async move {
        let item = w.next_chunk().await?;
        Some((item, w))
    })
    .boxed()
}

/// A node still to visit, with its position in the file.
struct Pending {
    cid: Cid,
    start: u64,
    /// Size the parent promised; `None` only for the root.
    expected: Option<u64>,
}

/// Depth-first walk with an explicit stack, so hostile deep DAGs cannot
/// overflow the call stack.
struct Walker {
    src: Arc<dyn BlockSource>,
    stack: Vec<Pending>,
    range_start: u64,
    range_end: u64,
}

impl Walker {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, ReadError>> {
        while let Some(p) = self.stack.pop() {
            match self.visit(p).await {
                Ok(Some(bytes)) => return Some(Ok(bytes)),
                Ok(None) => {}
                Err(e) => {
                    self.stack.clear();
                    return Some(Err(e));
                }
            }
        }
        None
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.range_end && end > self.range_start
    }

    async fn visit(&mut self, p: Pending) -> Result<Option<Bytes>, ReadError> {
        let block = self.src.get(&p.cid).await?;
        let node = match decode_file_node(&p.cid, block).map_err(|e| corrupt(&p.cid, e))? {
            Decoded::File(node) => node,
            Decoded::NotAFile(what) => {
                return Err(match p.expected {
                    None => ReadError::NotAFile(p.cid),
                    Some(_) => corrupt(&p.cid, format!("{what} where file data was expected")),
                })
            }
        };
        if let Some(expected) = p.expected {
            if expected != node.total {
                return Err(corrupt(
                    &p.cid,
                    format!(
                        "parent declared {expected} bytes but node holds {}",
                        node.total
                    ),
                ));
            }
        }
        let own_len = node.own.len() as u64;
        let overflow = || corrupt(&p.cid, "file offsets overflow u64");
        let mut child_start = p.start.checked_add(own_len).ok_or_else(overflow)?;
        let mut wanted = Vec::new();
        for (cid, size) in node.children {
            let child_end = child_start.checked_add(size).ok_or_else(overflow)?;
            if self.overlaps(child_start, child_end) {
                wanted.push(Pending {
                    cid,
                    start: child_start,
                    expected: Some(size),
                });
            }
            child_start = child_end;
        }
        self.stack.extend(wanted.into_iter().rev());

        let lo = p.start.max(self.range_start);
        let hi = (p.start + own_len).min(self.range_end);
        if lo >= hi {
            return Ok(None);
        }
        Ok(Some(
            node.own
                .slice((lo - p.start) as usize..(hi - p.start) as usize),
        ))
    }
}
