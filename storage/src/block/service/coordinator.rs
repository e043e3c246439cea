//! The coordinator: client-facing image I/O. An image range is split into objects, each object's
//! acting set comes from placement, writes fan out to every up replica and are acknowledged once
//! `min_size` of them committed, reads learn the latest version from a read quorum and are served
//! by one replica at that version. Operations for other nodes are batched per peer.

use super::{BlockError, BlockService, ClusterMap, SELF};
use crate::block::meta::{Image, Pool};
use crate::block::wire::{self, MutKind, OpReq, OpResp};
use crate::block::ObjectKey;
use crate::node::Node;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard, Semaphore};

#[derive(Default)]
struct ObjState {
    /// The latest version known to exist on some replica; `None` = to be learnt again.
    version: Option<u64>,
    /// Replicas known to hold `version`.
    current: Vec<String>,
}

pub(super) struct ImageState {
    sig: u64,
    objects: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<ObjState>>>>,
}

impl ImageState {
    fn obj(&self, objno: u64) -> Arc<tokio::sync::Mutex<ObjState>> {
        self.objects
            .lock()
            .expect("objects lock")
            .entry(objno)
            .or_default()
            .clone()
    }
}

pub(super) struct Pending {
    req: OpReq,
    payload: Bytes,
    tx: oneshot::Sender<Result<(OpResp, Bytes), String>>,
}

/// Largest payload of one batch to a peer (the peer listener accepts 16 MiB bodies).
const BATCH_BYTES: usize = 8 << 20;
const BATCH_OPS: usize = 128;
/// Batches in flight to one peer at once.
const BATCHES_IN_FLIGHT: usize = 2;

impl BlockService {
    // ---- image I/O ----------------------------------------------------------------------------

    fn image_state(&self, img: &Image, sig: u64) -> Arc<ImageState> {
        let mut m = self.images.lock().expect("images lock");
        let st = m.entry(img.id.clone()).or_insert_with(|| {
            Arc::new(ImageState {
                sig,
                objects: Mutex::new(HashMap::new()),
            })
        });
        if st.sig != sig {
            *st = Arc::new(ImageState {
                sig,
                objects: Mutex::new(HashMap::new()),
            });
        }
        st.clone()
    }

    fn check_range(img: &Image, off: u64, len: u64) -> Result<(), BlockError> {
        match off.checked_add(len) {
            Some(end) if end <= img.size => Ok(()),
            _ => Err(BlockError::OutOfRange(format!(
                "range {off}+{len} is outside image '{}' of {} bytes",
                img.spec(),
                img.size
            ))),
        }
    }

    /// Splits `[off, off+len)` into per-object pieces `(objno, offset in object, len, offset in I/O)`.
    fn pieces(img: &Image, off: u64, len: u64) -> Vec<(u64, u64, u64, u64)> {
        let mut out = Vec::new();
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let objno = pos / img.object_size;
            let in_obj = pos % img.object_size;
            let n = (img.object_size - in_obj).min(end - pos);
            out.push((objno, in_obj, n, pos - off));
            pos += n;
        }
        out
    }

    fn record(&self, started: Instant, ok: bool) {
        if !ok {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        if started.elapsed() >= self.cfg.slow_op {
            self.stats
                .slow
                .lock()
                .expect("slow lock")
                .push(Instant::now());
        }
    }

    pub async fn io_read(
        &self,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
    ) -> Result<Bytes, BlockError> {
        Self::check_range(img, off, len)?;
        let started = Instant::now();
        let map = self.map();
        let st = self.image_state(img, map.sig);
        let parts = Self::pieces(img, off, len);
        let reads = parts.iter().map(|&(objno, o, n, _)| {
            let st = st.clone();
            let map = &map;
            async move { self.read_obj(map, pool, img, &st, objno, o, n).await }
        });
        let res = tokio::time::timeout(self.cfg.op_timeout, futures::future::try_join_all(reads))
            .await
            .unwrap_or_else(|_| Err(self.deadline("read")));
        self.record(started, res.is_ok());
        let chunks = res?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(len, Ordering::Relaxed);
        if chunks.len() == 1 {
            return Ok(chunks.into_iter().next().expect("one"));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for c in chunks {
            out.extend_from_slice(&c);
        }
        Ok(out.freeze())
    }

    pub async fn io_write(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        data: Bytes,
    ) -> Result<(), BlockError> {
        let len = data.len() as u64;
        self.io_mutate(pool, img, off, len, MutKind::Data, Some(data))
            .await
    }

    pub async fn io_zero(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
    ) -> Result<(), BlockError> {
        self.io_mutate(pool, img, off, len, MutKind::Zero, None)
            .await
    }

    pub async fn io_trim(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
    ) -> Result<(), BlockError> {
        self.io_mutate(pool, img, off, len, MutKind::Trim, None)
            .await
    }

    async fn io_mutate(
        self: &Arc<Self>,
        pool: &Pool,
        img: &Image,
        off: u64,
        len: u64,
        kind: MutKind,
        data: Option<Bytes>,
    ) -> Result<(), BlockError> {
        Self::check_range(img, off, len)?;
        let started = Instant::now();
        let map = self.map();
        let st = self.image_state(img, map.sig);
        let parts = Self::pieces(img, off, len);
        let writes = parts.iter().map(|&(objno, o, n, at)| {
            let st = st.clone();
            let payload = data
                .as_ref()
                .map(|d| d.slice(at as usize..(at + n) as usize))
                .unwrap_or_default();
            let map = &map;
            async move {
                self.write_obj(map, pool, img, &st, objno, o, n, kind, payload)
                    .await
            }
        });
        let res = tokio::time::timeout(self.cfg.op_timeout, futures::future::try_join_all(writes))
            .await
            .unwrap_or_else(|_| Err(self.deadline("write")));
        self.record(started, res.is_ok());
        res?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        if kind == MutKind::Data {
            self.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(())
    }

    fn deadline(&self, what: &str) -> BlockError {
        BlockError::Unavailable(format!(
            "{what} did not complete within the {:?} deadline (block.op_timeout): replicas too slow or unreachable; not acknowledged",
            self.cfg.op_timeout
        ))
    }

    fn key(pool: &Pool, img: &Image, objno: u64) -> ObjectKey {
        ObjectKey {
            pool: pool.id,
            image: img.id.clone(),
            objno,
        }
    }

    /// Learns the latest version among the up replicas (and which of them hold it).
    async fn discover(
        &self,
        map: &ClusterMap,
        key: &ObjectKey,
        up: &[String],
        need: u32,
    ) -> Result<(u64, Vec<String>), BlockError> {
        let asks = up.iter().map(|r| {
            let key = key.clone();
            async move {
                let res = self.op(map, r, OpReq::Version { key }, Bytes::new()).await;
                (r.clone(), res)
            }
        });
        let answers: Vec<(String, u64)> = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(r, res)| match res {
                Ok((OpResp::Version { version }, _)) => Some((r, version)),
                _ => None,
            })
            .collect();
        if (answers.len() as u32) < need {
            return Err(BlockError::Unavailable(format!(
                "object {}: only {} replica(s) answered, {need} needed to know its latest version",
                key.name(),
                answers.len()
            )));
        }
        let max = answers.iter().map(|(_, v)| *v).max().unwrap_or(0);
        let current = answers
            .into_iter()
            .filter(|(_, v)| *v == max)
            .map(|(r, _)| r)
            .collect();
        Ok((max, current))
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_obj(
        &self,
        map: &ClusterMap,
        pool: &Pool,
        img: &Image,
        st: &ImageState,
        objno: u64,
        off: u64,
        len: u64,
    ) -> Result<Bytes, BlockError> {
        let key = Self::key(pool, img, objno);
        let acting = self.acting(map, pool, &key);
        let up: Vec<String> = acting
            .iter()
            .filter(|r| map.up.contains(*r))
            .cloned()
            .collect();
        let need = pool.read_quorum();
        if (up.len() as u32) < need {
            return Err(BlockError::Unavailable(format!(
                "object {} of '{}': {} of {} replicas up, {} needed to read the latest data (size {}, min_size {})",
                key.name(), img.spec(), up.len(), pool.size, need, pool.size, pool.min_size
            )));
        }
        let obj = st.obj(objno);
        let (version, current) = {
            let mut s = obj.lock().await;
            if s.version.is_none() {
                let (v, cur) = self.discover(map, &key, &up, need).await?;
                s.version = Some(v);
                s.current = cur;
            }
            (s.version.unwrap_or(0), s.current.clone())
        };
        let mut order: Vec<&String> = Vec::new();
        if current.iter().any(|r| r == self.me()) {
            order.push(current.iter().find(|r| *r == self.me()).expect("present"));
        }
        order.extend(current.iter().filter(|r| *r != self.me()));
        let mut last_err = String::from("no replica holds the latest version");
        for r in order {
            let req = OpReq::Read {
                key: key.clone(),
                offset: off,
                len,
            };
            match self.op(map, r, req, Bytes::new()).await {
                Ok((OpResp::Data { version: v }, data)) if v >= version => return Ok(data),
                Ok((OpResp::Data { version: v }, _)) => {
                    last_err = format!("replica {r} is at version {v}, older than {version}");
                    obj.lock().await.current.retain(|c| c != r);
                }
                Ok((OpResp::Corrupt { msg }, _)) => {
                    tracing::error!(object = %key.name(), replica = %r, error = %msg, "replica failed its checksum on read; serving another replica and repairing");
                    last_err = msg;
                    obj.lock().await.current.retain(|c| c != r);
                    self.spawn_repair(key.clone(), r.clone(), version);
                }
                Ok((other, _)) => last_err = format!("replica {r}: {other:?}"),
                Err(e) => last_err = e,
            }
        }
        Err(BlockError::Io(format!(
            "object {} of '{}' could not be read from any up-to-date replica: {last_err}",
            key.name(),
            img.spec()
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_obj(
        self: &Arc<Self>,
        map: &ClusterMap,
        pool: &Pool,
        img: &Image,
        st: &ImageState,
        objno: u64,
        off: u64,
        len: u64,
        kind: MutKind,
        payload: Bytes,
    ) -> Result<(), BlockError> {
        let key = Self::key(pool, img, objno);
        let acting = self.acting(map, pool, &key);
        let up: Vec<String> = acting
            .iter()
            .filter(|r| map.up.contains(*r))
            .cloned()
            .collect();
        if (up.len() as u32) < pool.min_size {
            return Err(BlockError::Unavailable(format!(
                "object {} of '{}': only {} of {} replicas up, min_size is {}; write refused",
                key.name(),
                img.spec(),
                up.len(),
                pool.size,
                pool.min_size
            )));
        }
        if let Some(full) = self.full_replica(map, &up) {
            return Err(BlockError::Full(format!(
                "node {full} is full (block.full_ratio); writes are refused until space is freed"
            )));
        }
        let mut s = st.obj(objno).lock_owned().await;
        for attempt in 0..2 {
            if s.version.is_none() {
                let (v, cur) = self.discover(map, &key, &up, pool.min_size).await?;
                s.version = Some(v);
                s.current = cur;
            }
            let expect = s.version.unwrap_or(0);
            if expect == 0 && kind != MutKind::Data {
                // Never written anywhere: it already reads as zeros; do not create it.
                return Ok(());
            }
            let new = expect + 1;
            let req = OpReq::Write {
                key: key.clone(),
                expect,
                new,
                offset: off,
                kind,
                len,
            };
            let (acked, conflict, rest) =
                self.replicate(map, pool, &up, req, payload.clone()).await;
            if (acked.len() as u32) >= pool.min_size {
                s.version = Some(new);
                s.current = acked;
                self.finish_tail(s, rest);
                return Ok(());
            }
            s.version = None;
            s.current.clear();
            if !conflict || attempt == 1 {
                return Err(BlockError::Unavailable(format!(
                    "write to object {} of '{}' made durable on {} replica(s), min_size is {}: not acknowledged",
                    key.name(),
                    img.spec(),
                    acked.len(),
                    pool.min_size
                )));
            }
        }
        unreachable!("the loop returns")
    }

    /// Sends one write to every up replica and returns once `min_size` of them acknowledged it,
    /// or all answered: who acknowledged, whether a version conflict (another writer) was seen,
    /// and the replicas still working on it. The client is acknowledged then, with the write
    /// durable on `min_size` replicas; the rest finish under the object's lock (`finish_tail`).
    /// Waiting for every replica made the slowest one's commit set every write's latency.
    async fn replicate(
        self: &Arc<Self>,
        map: &ClusterMap,
        pool: &Pool,
        up: &[String],
        req: OpReq,
        payload: Bytes,
    ) -> (Vec<String>, bool, FuturesUnordered<ReplicaOp>) {
        let mut pending: FuturesUnordered<ReplicaOp> = up
            .iter()
            .map(|r| self.op_owned(map, r, req.clone(), payload.clone()))
            .collect();
        let mut acked = Vec::new();
        let mut conflict = false;
        while (acked.len() as u32) < pool.min_size {
            let Some((r, res)) = pending.next().await else {
                break;
            };
            if write_acked(&r, res, &mut conflict) {
                acked.push(r);
            }
        }
        (acked, conflict, pending)
    }

    /// Gives the replicas that had not answered an acknowledged write `replica_grace` more,
    /// holding the object's lock meanwhile: the object's next write (or a read learning its
    /// version) waits for them, so every replica still sees its writes in order, and one that
    /// answers in time counts as current. One that does not is left to recovery, as before.
    fn finish_tail(&self, mut s: OwnedMutexGuard<ObjState>, mut rest: FuturesUnordered<ReplicaOp>) {
        if rest.is_empty() {
            return;
        }
        let grace = self.cfg.replica_grace;
        tokio::spawn(async move {
            let late = async {
                let mut conflict = false;
                while let Some((r, res)) = rest.next().await {
                    if write_acked(&r, res, &mut conflict) {
                        s.current.push(r);
                    }
                }
            };
            let _ = tokio::time::timeout(grace, late).await;
            drop(s);
        });
    }

    fn full_replica(&self, map: &ClusterMap, up: &[String]) -> Option<String> {
        let scan = self.scan.read().expect("scan lock");
        up.iter()
            .find(|r| {
                scan.usage
                    .get(*r)
                    .is_some_and(|u| u.ratio() >= self.cfg.full_ratio)
                    || (*r == self.me() && self.usage().ratio() >= self.cfg.full_ratio)
            })
            .map(|r| {
                map.osds
                    .iter()
                    .find(|o| &o.id == r)
                    .map(|o| o.name.clone())
                    .unwrap_or_else(|| r.clone())
            })
    }

    fn spawn_repair(&self, key: ObjectKey, bad: String, version: u64) {
        let Some(me) = self.self_arc() else { return };
        tokio::spawn(async move {
            if let Err(e) = me.repair(&key, &bad, version).await {
                tracing::warn!(object = %key.name(), replica = %bad, error = %e, "repair failed; recovery will retry");
            }
        });
    }

    fn self_arc(&self) -> Option<Arc<Self>> {
        SELF.get().and_then(|w| w.upgrade())
    }

    /// Copies the object at `version` from a replica that holds it intact onto `bad`, replacing
    /// whatever `bad` has (force: also at an equal version, for corrupt or divergent copies).
    pub async fn repair(&self, key: &ObjectKey, bad: &str, version: u64) -> Result<(), BlockError> {
        let map = self.map();
        let meta = self.meta();
        let pool = meta
            .pool_by_id(key.pool)
            .ok_or_else(|| BlockError::NotFound(format!("pool id {} unknown", key.pool)))?;
        let acting = self.acting(&map, &pool, key);
        for src in acting.iter().filter(|r| *r != bad && map.up.contains(*r)) {
            if let Ok((OpResp::Exported { version: v, chunks }, data)) = self
                .op(&map, src, OpReq::Export { key: key.clone() }, Bytes::new())
                .await
            {
                if v < version {
                    continue;
                }
                let req = OpReq::Import {
                    key: key.clone(),
                    version: v,
                    chunks,
                    force: true,
                };
                return match self.op(&map, bad, req, data).await {
                    Ok((OpResp::Imported { .. }, _)) => {
                        tracing::info!(object = %key.name(), replica = %bad, source = %src, version = v, "replica repaired");
                        Ok(())
                    }
                    Ok((other, _)) => Err(BlockError::Io(format!("import refused: {other:?}"))),
                    Err(e) => Err(BlockError::Io(e)),
                };
            }
        }
        Err(BlockError::Io(format!(
            "no intact replica of {} at version {version} reachable",
            key.name()
        )))
    }

    // ---- replica operations (local or remote) --------------------------------------------------

    /// Runs one replica operation on `replica`: directly when it is this node, else batched to it.
    pub async fn op(
        &self,
        map: &ClusterMap,
        replica: &str,
        req: OpReq,
        payload: Bytes,
    ) -> Result<(OpResp, Bytes), String> {
        if replica == self.me() {
            return Ok(self.exec(req, payload).await);
        }
        let addr = map
            .addr(replica)
            .ok_or_else(|| format!("unknown node {replica}"))?
            .to_string();
        self.op_remote(replica, &addr, req, payload).await
    }

    /// [`Self::op`] as a future that owns what it needs, so it can outlive its caller.
    fn op_owned(
        self: &Arc<Self>,
        map: &ClusterMap,
        replica: &str,
        req: OpReq,
        payload: Bytes,
    ) -> ReplicaOp {
        let me = self.clone();
        let replica = replica.to_string();
        let addr = map.addr(&replica).map(str::to_string);
        Box::pin(async move {
            let res = if replica == me.me() {
                Ok(me.exec(req, payload).await)
            } else if let Some(addr) = addr {
                me.op_remote(&replica, &addr, req, payload).await
            } else {
                Err(format!("unknown node {replica}"))
            };
            (replica, res)
        })
    }

    async fn op_remote(
        &self,
        replica: &str,
        addr: &str,
        req: OpReq,
        payload: Bytes,
    ) -> Result<(OpResp, Bytes), String> {
        let tx = self.sender(addr);
        let (otx, orx) = oneshot::channel();
        tx.send(Pending {
            req,
            payload,
            tx: otx,
        })
        .await
        .map_err(|_| "peer sender stopped".to_string())?;
        match tokio::time::timeout(self.cfg.op_timeout, orx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("peer batch dropped".into()),
            Err(_) => Err(format!(
                "no answer from {replica} within {:?}",
                self.cfg.op_timeout
            )),
        }
    }

    fn sender(&self, addr: &str) -> mpsc::Sender<Pending> {
        let mut m = self.senders.lock().expect("senders lock");
        if let Some(tx) = m.get(addr) {
            if !tx.is_closed() {
                return tx.clone();
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(batcher(self.node.clone(), addr.to_string(), rx));
        m.insert(addr.to_string(), tx.clone());
        tx
    }
}

/// One replica's answer to an operation, tagged with the replica.
type ReplicaOp = futures::future::BoxFuture<'static, (String, Result<(OpResp, Bytes), String>)>;

/// Whether a replica's answer to a write acknowledges it; logs the others (a conflict, meaning
/// another writer changed the object, is also reported through `conflict`).
fn write_acked(r: &str, res: Result<(OpResp, Bytes), String>, conflict: &mut bool) -> bool {
    match res {
        Ok((OpResp::Applied | OpResp::AlreadyApplied, _)) => return true,
        Ok((OpResp::Conflict { have }, _)) => {
            tracing::warn!(replica = %r, have, "version conflict: another writer changed the object");
            *conflict = true;
        }
        Ok((OpResp::Stale { have }, _)) => {
            tracing::debug!(replica = %r, have, "replica is stale; recovery will bring it up to date");
        }
        Ok((other, _)) => tracing::warn!(replica = %r, answer = ?other, "replica refused a write"),
        Err(e) => tracing::debug!(replica = %r, error = %e, "replica write failed"),
    }
    false
}

/// Sends queued operations for one peer in batches, a few batches in flight at once. Taking a
/// permit before draining the queue lets operations pile up while the link is busy, so batches
/// grow with load (group commit across the network).
async fn batcher(node: Arc<Node>, addr: String, mut rx: mpsc::Receiver<Pending>) {
    let sem = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].payload.len();
        while batch.len() < BATCH_OPS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let items: Vec<(OpReq, Bytes)> = batch
                .iter()
                .map(|p| (p.req.clone(), p.payload.clone()))
                .collect();
            let body = wire::encode(&items);
            let res = node
                .peers
                .binary(&addr, "/peer/v1/block/ops", body)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let mut i = 0usize;
                    let reqs: Vec<&OpReq> = batch.iter().map(|p| &p.req).collect();
                    wire::decode::<OpResp>(b, |r| {
                        let n = reqs
                            .get(i)
                            .map(|q| wire::resp_payload_len(q, r))
                            .unwrap_or(0);
                        i += 1;
                        n
                    })
                    .map_err(|e| e.to_string())
                });
            match res {
                Ok(answers) if answers.len() == batch.len() => {
                    for (p, a) in batch.into_iter().zip(answers) {
                        let _ = p.tx.send(Ok(a));
                    }
                }
                Ok(answers) => {
                    let msg = format!(
                        "peer answered {} of {} operations",
                        answers.len(),
                        batch.len()
                    );
                    for p in batch {
                        let _ = p.tx.send(Err(msg.clone()));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
