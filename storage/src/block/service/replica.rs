//! The replica side: operations from coordinators — this node's own or a peer's, one at a time
//! or in batches — run against this node's object store.

use super::BlockService;
use crate::block::objstore::{Mutation, ObjError, ObjectImage, WriteOp, WriteOutcome};
use crate::block::wire::{self, MutKind, OpReq, OpResp};
use crate::block::CHUNK_SIZE;
use bytes::{Bytes, BytesMut};

impl BlockService {
    /// Executes one operation against this node's replicas.
    pub async fn exec(&self, req: OpReq, payload: Bytes) -> (OpResp, Bytes) {
        let fail = |e: ObjError| match e {
            ObjError::Corrupt { .. } => OpResp::Corrupt { msg: e.to_string() },
            e => OpResp::Error { msg: e.to_string() },
        };
        match req {
            OpReq::Write {
                key,
                expect,
                new,
                offset,
                kind,
                len,
            } => {
                let m = match kind {
                    MutKind::Data => Mutation::Data(payload),
                    MutKind::Zero => Mutation::Zero(len),
                    MutKind::Trim => Mutation::Trim(len),
                };
                let op = WriteOp {
                    key,
                    expect,
                    new,
                    offset,
                    m,
                };
                let r = match self.objs.write(op).await {
                    Ok(WriteOutcome::Applied) => OpResp::Applied,
                    Ok(WriteOutcome::AlreadyApplied) => OpResp::AlreadyApplied,
                    Ok(WriteOutcome::Stale { have }) => OpResp::Stale { have },
                    Ok(WriteOutcome::Conflict { have }) => OpResp::Conflict { have },
                    Err(e) => fail(e),
                };
                (r, Bytes::new())
            }
            OpReq::Read { key, offset, len } => match self.objs.read(&key, offset, len).await {
                Ok((version, data)) => (OpResp::Data { version }, data),
                Err(e) => (fail(e), Bytes::new()),
            },
            OpReq::Version { key } => (
                OpResp::Version {
                    version: self.objs.info(&key).map(|i| i.version).unwrap_or(0),
                },
                Bytes::new(),
            ),
            OpReq::Export { key } => match self.objs.export(&key).await {
                Ok(img) => {
                    let idx = img.chunks.iter().map(|(i, _)| *i).collect();
                    let mut data = BytesMut::with_capacity(img.chunks.len() * CHUNK_SIZE);
                    for (_, c) in &img.chunks {
                        data.extend_from_slice(c);
                    }
                    (
                        OpResp::Exported {
                            version: img.version,
                            chunks: idx,
                        },
                        data.freeze(),
                    )
                }
                Err(e) => (fail(e), Bytes::new()),
            },
            OpReq::Import {
                key,
                version,
                chunks,
                force,
            } => {
                let _g = self.import_lock.lock().await;
                let have = self.objs.info(&key).map(|i| i.version).unwrap_or(0);
                if have >= version && !force {
                    return (
                        OpResp::Imported {
                            applied: false,
                            have,
                        },
                        Bytes::new(),
                    );
                }
                let img = ObjectImage {
                    version,
                    chunks: chunks
                        .iter()
                        .enumerate()
                        .map(|(n, i)| (*i, payload.slice(n * CHUNK_SIZE..(n + 1) * CHUNK_SIZE)))
                        .collect(),
                };
                match self.objs.import(&key, img).await {
                    Ok(()) => (
                        OpResp::Imported {
                            applied: true,
                            have: version,
                        },
                        Bytes::new(),
                    ),
                    Err(e) => (fail(e), Bytes::new()),
                }
            }
            OpReq::Remove { key } => match self.objs.remove(&key).await {
                Ok(()) => (OpResp::Removed, Bytes::new()),
                Err(e) => (fail(e), Bytes::new()),
            },
            OpReq::Digest { key } => match self.objs.digest(&key).await {
                Ok((version, d)) => (
                    OpResp::Digest {
                        version,
                        digest: hex::encode(d),
                    },
                    Bytes::new(),
                ),
                Err(e) => (fail(e), Bytes::new()),
            },
        }
    }

    /// Runs a batch received from a peer; operations run concurrently so the store can commit
    /// them as a group.
    pub async fn exec_batch(&self, body: Bytes) -> Result<Vec<u8>, wire::WireError> {
        let items = wire::decode::<OpReq>(body, wire::req_payload_len)?;
        let results = futures::future::join_all(
            items
                .into_iter()
                .map(|(req, payload)| self.exec(req, payload)),
        )
        .await;
        Ok(wire::encode(&results))
    }
}
