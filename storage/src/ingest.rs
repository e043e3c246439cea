//! `add`: chunk and hash a stream into a UnixFS DAG, spooling the blocks to a temporary file and
//! committing them in one durable transaction only once the whole input has arrived.
//!
//! So an upload that is cut off, oversized or malformed stores nothing, and a slow client never holds
//! the store's single write transaction while it trickles data in.

use crate::node::{Node, NodeError};
use crate::unixfs::{AddOptions, Block, Cid, FileBuilder, FileRoot};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

pub struct Ingest {
    builder: FileBuilder,
    spool: Option<BufWriter<File>>,
    bytes: u64,
    limit: u64,
}

impl Ingest {
    /// `only_hash` computes the CID without keeping anything.
    pub fn new(
        node: &Node,
        opts: AddOptions,
        only_hash: bool,
        limit: u64,
    ) -> Result<Self, NodeError> {
        let spool = if only_hash {
            None
        } else {
            let dir = node.data_dir.join("tmp");
            std::fs::create_dir_all(&dir).map_err(|e| NodeError::Io(format!("spool dir: {e}")))?;
            let f = tempfile::tempfile_in(&dir)
                .map_err(|e| NodeError::Io(format!("spool file: {e}")))?;
            Some(BufWriter::with_capacity(1 << 20, f))
        };
        Ok(Self {
            builder: FileBuilder::new(opts),
            spool,
            bytes: 0,
            limit,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), NodeError> {
        self.bytes += data.len() as u64;
        if self.bytes > self.limit {
            return Err(NodeError::TooLarge(format!(
                "request body exceeds the limit of {} bytes (limits.max_add_bytes)",
                self.limit
            )));
        }
        let blocks = self.builder.push(data);
        self.spool(&blocks)
    }

    fn spool(&mut self, blocks: &[Block]) -> Result<(), NodeError> {
        let Some(w) = self.spool.as_mut() else {
            return Ok(());
        };
        for b in blocks {
            let cid = b.cid.to_bytes();
            let r = w
                .write_all(&(cid.len() as u32).to_le_bytes())
                .and_then(|_| w.write_all(&cid))
                .and_then(|_| w.write_all(&(b.data.len() as u32).to_le_bytes()))
                .and_then(|_| w.write_all(&b.data));
            r.map_err(|e| NodeError::Io(format!("spool write: {e}")))?;
        }
        Ok(())
    }

    /// Finishes the DAG and, unless only hashing, commits every block durably before returning.
    pub async fn finish(mut self, node: &Node) -> Result<FileRoot, NodeError> {
        let builder = std::mem::replace(&mut self.builder, FileBuilder::new(AddOptions::default()));
        let (blocks, root) = builder.finish();
        self.spool(&blocks)?;
        let Some(w) = self.spool.take() else {
            return Ok(root);
        };
        let mut f = w
            .into_inner()
            .map_err(|e| NodeError::Io(format!("spool flush: {e}")))?;
        node.db(move |s| {
            let io = |e: std::io::Error| crate::store::StoreError::Db(format!("spool read: {e}"));
            f.seek(SeekFrom::Start(0)).map_err(io)?;
            let mut r = BufReader::with_capacity(1 << 20, f);
            s.put_blocks_with(|put| {
                let mut len = [0u8; 4];
                loop {
                    match r.read_exact(&mut len) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                        Err(e) => return Err(io(e)),
                    }
                    let mut cid = vec![0; u32::from_le_bytes(len) as usize];
                    r.read_exact(&mut cid).map_err(io)?;
                    r.read_exact(&mut len).map_err(io)?;
                    let mut data = vec![0; u32::from_le_bytes(len) as usize];
                    r.read_exact(&mut data).map_err(io)?;
                    let cid = Cid::try_from(cid)
                        .map_err(|e| crate::store::StoreError::Db(format!("spool cid: {e}")))?;
                    put(&cid, &data)?;
                }
            })
        })
        .await?;
        Ok(root)
    }
}
