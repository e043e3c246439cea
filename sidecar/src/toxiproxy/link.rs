//! The data path of one proxy: accept loop, and per connection two directions ("links") that read
//! chunks, run them through the direction's toxics in insertion order, and write them on.
//!
//! Each direction is a reader (stamps every chunk with its arrival time, buffers up to 1024 chunks)
//! and a writer that turns toxics into a timeline: latency moves a chunk's due time from its
//! arrival (so latency does not cut throughput, and stacked latencies add up), bandwidth paces due
//! times to the rate, slicer splits chunks into slices `delay` µs apart, limit_data truncates and
//! closes. The writer watches the proxy's toxic list, so adding, updating or removing a toxic
//! applies to existing connections at the next chunk boundary (a chunk already being delayed
//! finishes under the toxics it started with).

use super::toxics::{Kind, Stream, Toxic};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Duration, Instant};

/// Bytes per direction (index: [`Stream::index`]).
#[derive(Default)]
pub struct Counters {
    pub received: [AtomicU64; 2],
    pub sent: [AtomicU64; 2],
}

/// What a proxy's connections share: its toxics (live), counters, and the seed of its RNGs.
pub struct ProxyShared {
    pub name: String,
    pub toxics: watch::Sender<Arc<Vec<Toxic>>>,
    pub counters: Counters,
    seed: u64,
    conn_no: AtomicU64,
}

impl ProxyShared {
    pub fn new(name: &str, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            toxics: watch::Sender::new(Arc::new(Vec::new())),
            counters: Counters::default(),
            seed,
            conn_no: AtomicU64::new(0),
        })
    }

    /// The RNG of connection `n` (in accept order) and direction: a pure function of the
    /// configured seed, the proxy name, `n` and the direction, so toxicity rolls and jitter
    /// replay exactly for the same sequence of connections.
    pub(crate) fn rng(&self, n: u64, dir: Stream) -> StdRng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mix = self.seed
            ^ h.rotate_left(17)
            ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (dir.index() as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        StdRng::seed_from_u64(mix)
    }
}

/// Accepts until the task is aborted (proxy disabled, changed or deleted); each connection ends
/// when `stop` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    shared: Arc<ProxyShared>,
    stop: watch::Receiver<bool>,
) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let n = shared.conn_no.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(
                    client,
                    upstream.clone(),
                    shared.clone(),
                    stop.clone(),
                    n,
                ));
            }
            Err(e) => {
                tracing::warn!(proxy = %shared.name, error = %e, "toxiproxy accept failed");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The source closed; the destination was half-closed after it.
    Eof,
    /// Close the whole connection (timeout, limit_data, I/O error).
    Close,
    /// Close with TCP RST (reset_peer).
    Reset,
}

async fn connection(
    client: TcpStream,
    upstream: String,
    sh: Arc<ProxyShared>,
    mut stop: watch::Receiver<bool>,
    n: u64,
) {
    if *stop.borrow() {
        return;
    }
    let server = tokio::select! {
        r = TcpStream::connect(&upstream) => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(proxy = %sh.name, %upstream, error = %e, "toxiproxy upstream connect failed");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let end = {
        let up = pump(
            &mut cr,
            &mut sw,
            Stream::Upstream,
            &sh,
            sh.rng(n, Stream::Upstream),
        );
        let down = pump(
            &mut sr,
            &mut cw,
            Stream::Downstream,
            &sh,
            sh.rng(n, Stream::Downstream),
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break End::Close;
                    }
                }
                e = &mut up, if !up_done => {
                    if e != End::Eof { break e; }
                    up_done = true;
                    if down_done { break End::Eof; }
                }
                e = &mut down, if !down_done => {
                    if e != End::Eof { break e; }
                    down_done = true;
                    if up_done { break End::Eof; }
                }
            }
        }
    };
    if end == End::Reset {
        // SO_LINGER 0 and no FIN first (a dropped write half would shut down writing): the
        // close then sends RST to both peers.
        let _ = cw.as_ref().set_zero_linger();
        let _ = sw.as_ref().set_zero_linger();
        cw.forget();
        sw.forget();
    }
}

async fn pump(
    src: &mut OwnedReadHalf,
    dst: &mut OwnedWriteHalf,
    dir: Stream,
    sh: &ProxyShared,
    mut rng: StdRng,
) -> End {
    let (tx, mut rx) = mpsc::channel::<(Bytes, Instant)>(1024);
    let received = &sh.counters.received[dir.index()];
    let reader = async move {
        let mut buf = vec![0u8; 32 * 1024];
        // A read error ends the stream like EOF; the writer then half-closes the other side.
        while let Ok(n) = src.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received.fetch_add(n as u64, Ordering::Relaxed);
            if tx
                .send((Bytes::copy_from_slice(&buf[..n]), Instant::now()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let writer = write_side(&mut rx, dst, dir, sh, &mut rng);
    tokio::pin!(reader, writer);
    let mut reader_done = false;
    loop {
        tokio::select! {
            e = &mut writer => return e,
            _ = &mut reader, if !reader_done => reader_done = true,
        }
    }
}

/// A toxic as attached to one connection direction.
#[derive(Clone)]
struct Attached {
    toxic: Toxic,
    /// The toxicity roll for this version of the toxic on this connection.
    active: bool,
    since: Instant,
}

/// Per-connection state of stateful toxics, kept by toxic name across updates.
#[derive(Default)]
struct State {
    limit_used: HashMap<String, u64>,
    bandwidth_next: HashMap<String, Instant>,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn rebuild(chain: &mut Vec<Attached>, toxics: &[Toxic], dir: Stream, rng: &mut StdRng) {
    let old = std::mem::take(chain);
    for t in toxics.iter().filter(|t| t.stream == dir) {
        if let Some(o) = old.iter().find(|o| o.toxic.version == t.version) {
            chain.push(o.clone());
        } else {
            let active = rng.random::<f32>() < t.toxicity;
            chain.push(Attached {
                toxic: t.clone(),
                active,
                since: Instant::now(),
            });
        }
    }
}

async fn write_side(
    rx: &mut mpsc::Receiver<(Bytes, Instant)>,
    dst: &mut OwnedWriteHalf,
    dir: Stream,
    sh: &ProxyShared,
    rng: &mut StdRng,
) -> End {
    let sent = &sh.counters.sent[dir.index()];
    let mut sub = sh.toxics.subscribe();
    let mut chain = Vec::new();
    let current = sub.borrow_and_update().clone();
    rebuild(&mut chain, &current, dir, rng);
    let mut state = State::default();
    loop {
        let active = || chain.iter().filter(|a| a.active);
        let blackhole = active().any(|a| matches!(a.toxic.kind, Kind::Timeout { .. }));
        let close_at = active()
            .filter_map(|a| match a.toxic.kind {
                Kind::Timeout { timeout } if timeout > 0 => Some(a.since + ms(timeout)),
                _ => None,
            })
            .min();
        let reset_after = active().find_map(|a| match a.toxic.kind {
            Kind::ResetPeer { timeout } => Some(ms(timeout)),
            _ => None,
        });
        let slow_close: u64 = active()
            .map(|a| match a.toxic.kind {
                Kind::SlowClose { delay } => delay,
                _ => 0,
            })
            .sum();
        tokio::select! {
            r = sub.changed() => {
                if r.is_err() {
                    return End::Close;
                }
                let current = sub.borrow_and_update().clone();
                rebuild(&mut chain, &current, dir, rng);
            }
            _ = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                return End::Close;
            }
            c = rx.recv() => match c {
                None => {
                    if blackhole {
                        return End::Close;
                    }
                    if slow_close > 0 {
                        sleep(ms(slow_close)).await;
                    }
                    let _ = dst.shutdown().await;
                    return End::Eof;
                }
                Some(_) if blackhole => {}
                Some(_) if reset_after.is_some() => {
                    sleep(reset_after.unwrap_or_default()).await;
                    return End::Reset;
                }
                Some((data, at)) => {
                    let (pieces, close) = transform(&chain, &mut state, data, at, rng);
                    for (p, due) in pieces {
                        sleep_until(due).await;
                        if dst.write_all(&p).await.is_err() {
                            return End::Close;
                        }
                        sent.fetch_add(p.len() as u64, Ordering::Relaxed);
                    }
                    if close {
                        return End::Close;
                    }
                }
            }
        }
    }
}

/// One chunk through the active toxics: the pieces to write with their due times, and whether
/// the connection closes after them.
fn transform(
    chain: &[Attached],
    st: &mut State,
    data: Bytes,
    at: Instant,
    rng: &mut StdRng,
) -> (Vec<(Bytes, Instant)>, bool) {
    let mut pieces = vec![(data, at)];
    let mut close = false;
    for a in chain.iter().filter(|a| a.active) {
        match a.toxic.kind {
            Kind::Latency { latency, jitter } => {
                for p in &mut pieces {
                    let j = if jitter > 0 {
                        let j = jitter.min(i64::MAX as u64) as i64;
                        rng.random_range(-j..j)
                    } else {
                        0
                    };
                    let d = (latency.min(i64::MAX as u64) as i64)
                        .saturating_add(j)
                        .max(0);
                    p.1 += ms(d as u64);
                }
            }
            Kind::Bandwidth { rate } if rate > 0 => {
                // At most 100 ms worth of data per write, paced back to back.
                let max = (rate.saturating_mul(100)).max(1) as usize;
                let next = st.bandwidth_next.entry(a.toxic.name.clone()).or_insert(at);
                let mut out = Vec::with_capacity(pieces.len());
                for (b, due) in pieces {
                    let mut off = 0;
                    while off < b.len() {
                        let end = (off + max).min(b.len());
                        let start = (*next).max(due);
                        let nanos = (end - off) as u64 * 1_000_000 / rate;
                        *next = start + Duration::from_nanos(nanos);
                        out.push((b.slice(off..end), *next));
                        off = end;
                    }
                }
                pieces = out;
            }
            Kind::Slicer {
                average_size,
                size_variation,
                delay,
            } if average_size > 0 => {
                let var = size_variation.min(average_size.saturating_sub(1)) as i64;
                let mut out = Vec::new();
                for (b, due) in pieces {
                    let mut t = due;
                    let mut off = 0;
                    while off < b.len() {
                        let v = if var > 0 {
                            rng.random_range(-var..=var)
                        } else {
                            0
                        };
                        let size = (average_size as i64 + v).max(1) as usize;
                        let end = (off + size).min(b.len());
                        out.push((b.slice(off..end), t));
                        t += Duration::from_micros(delay);
                        off = end;
                    }
                }
                pieces = out;
            }
            Kind::LimitData { bytes } => {
                let used = st.limit_used.entry(a.toxic.name.clone()).or_insert(0);
                let mut out = Vec::new();
                for (b, due) in pieces {
                    let room = bytes.saturating_sub(*used) as usize;
                    let take = room.min(b.len());
                    if take > 0 {
                        out.push((b.slice(..take), due));
                        *used += take as u64;
                    }
                    if *used >= bytes {
                        close = true;
                        break;
                    }
                }
                pieces = out;
            }
            _ => {}
        }
    }
    (pieces, close)
}
