use super::codec::*;
use super::*;
use bytes::{Buf, BufMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::io::DuplexStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const MIB: usize = 1 << 20;
/// Reads at this offset of a gated device wait for the gate.
const GATED_OFFSET: u64 = 0;

/// An in-memory export; reads at `GATED_OFFSET` wait for `gate` when it is set.
struct MemDev {
    data: Mutex<Vec<u8>>,
    gate: Option<Arc<Notify>>,
    flushes: Mutex<u32>,
    fua_writes: Mutex<u32>,
}

impl MemDev {
    fn new(size: usize) -> Arc<Self> {
        Arc::new(MemDev {
            data: Mutex::new(vec![0; size]),
            gate: None,
            flushes: Mutex::new(0),
            fua_writes: Mutex::new(0),
        })
    }

    fn gated(size: usize, gate: Arc<Notify>) -> Arc<Self> {
        Arc::new(MemDev {
            data: Mutex::new(vec![0; size]),
            gate: Some(gate),
            flushes: Mutex::new(0),
            fua_writes: Mutex::new(0),
        })
    }

    fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        self.data.lock().unwrap()[range].to_vec()
    }

    fn fill(&self, offset: usize, bytes: &[u8]) {
        self.data.lock().unwrap()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
}

impl BlockDevice for MemDev {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, DevResult<Bytes>> {
        async move {
            if offset == GATED_OFFSET {
                if let Some(gate) = &self.gate {
                    gate.notified().await;
                }
            }
            let d = self.data.lock().unwrap();
            let (o, l) = (offset as usize, len as usize);
            Ok(Bytes::copy_from_slice(&d[o..o + l]))
        }
        .boxed()
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, DevResult<()>> {
        async move {
            if fua {
                *self.fua_writes.lock().unwrap() += 1;
            }
            self.fill(offset as usize, &data);
            Ok(())
        }
        .boxed()
    }
    fn write_zeroes(&self, offset: u64, len: u32, _fua: bool) -> BoxFuture<'_, DevResult<()>> {
        async move {
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + len as usize].fill(0);
            Ok(())
        }
        .boxed()
    }
    fn trim(&self, offset: u64, len: u32, fua: bool) -> BoxFuture<'_, DevResult<()>> {
        self.write_zeroes(offset, len, fua)
    }
    fn flush(&self) -> BoxFuture<'_, DevResult<()>> {
        async move {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
        .boxed()
    }
}

/// Fails every operation with the given error (or panics when `None`).
struct FailDev(Option<DevError>);

impl FailDev {
    fn fail<T>(&self) -> BoxFuture<'_, DevResult<T>> {
        let e = self.0.clone();
        async move {
            match e {
                Some(e) => Err(e),
                None => panic!("device bug"),
            }
        }
        .boxed()
    }
}

impl BlockDevice for FailDev {
    fn size(&self) -> u64 {
        MIB as u64
    }
    fn read(&self, _: u64, _: u32) -> BoxFuture<'_, DevResult<Bytes>> {
        self.fail()
    }
    fn write(&self, _: u64, _: Bytes, _: bool) -> BoxFuture<'_, DevResult<()>> {
        self.fail()
    }
    fn write_zeroes(&self, _: u64, _: u32, _: bool) -> BoxFuture<'_, DevResult<()>> {
        self.fail()
    }
    fn trim(&self, _: u64, _: u32, _: bool) -> BoxFuture<'_, DevResult<()>> {
        self.fail()
    }
    fn flush(&self) -> BoxFuture<'_, DevResult<()>> {
        self.fail()
    }
}

/// Exports `rbd/a` (1 MiB) and `rbd/b` (64 KiB), plus whatever a test adds; `rbd/busy`
/// exists but is unavailable.
struct TestProvider {
    exports: BTreeMap<String, Arc<dyn BlockDevice>>,
}

impl ExportProvider for TestProvider {
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        let names = self.exports.keys().cloned().collect();
        async move { Ok(names) }.boxed()
    }
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn BlockDevice>, OpenError>> {
        let found = self.exports.get(name).cloned();
        let name = name.to_owned();
        async move {
            if name == "rbd/busy" {
                return Err(OpenError::Unavailable("pool below min_size".into()));
            }
            found.ok_or_else(|| OpenError::Unknown(format!("no image {name}")))
        }
        .boxed()
    }
}

struct Fixture {
    a: Arc<MemDev>,
    b: Arc<MemDev>,
    provider: Arc<dyn ExportProvider>,
}

fn fixture_with(extra: Vec<(&str, Arc<dyn BlockDevice>)>) -> Fixture {
    let a = MemDev::new(MIB);
    let b = MemDev::new(64 << 10);
    let mut exports: BTreeMap<String, Arc<dyn BlockDevice>> = BTreeMap::new();
    exports.insert("rbd/a".into(), a.clone());
    exports.insert("rbd/b".into(), b.clone());
    for (name, dev) in extra {
        exports.insert(name.into(), dev);
    }
    Fixture {
        a,
        b,
        provider: Arc::new(TestProvider { exports }),
    }
}

fn fixture() -> Fixture {
    fixture_with(Vec::new())
}

/// Hang guard for protocol tests (never an assertion on speed).
async fn guard<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test timed out")
}

// --- a minimal hand-written client -------------------------------------------------------

fn start(provider: &Arc<dyn ExportProvider>) -> (DuplexStream, JoinHandle<Result<(), NbdError>>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let handle = tokio::spawn(serve_conn(server, provider.clone()));
    (client, handle)
}

async fn greet<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S, cflags: u32) {
    let mut g = [0u8; 18];
    c.read_exact(&mut g).await.unwrap();
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    let mut b = &g[..];
    assert_eq!(b.get_u64(), NBDMAGIC);
    assert_eq!(b.get_u64(), IHAVEOPT);
    assert_eq!(b.get_u16(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    c.write_all(&cflags.to_be_bytes()).await.unwrap();
}

async fn send_opt<S: AsyncWrite + Unpin>(c: &mut S, opt: u32, data: &[u8]) {
    let mut m = Vec::new();
    m.put_u64(IHAVEOPT);
    m.put_u32(opt);
    m.put_u32(data.len() as u32);
    m.extend_from_slice(data);
    c.write_all(&m).await.unwrap();
}

async fn read_rep<S: AsyncRead + Unpin>(c: &mut S) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    c.read_exact(&mut h).await.unwrap();
    let mut b = &h[..];
    assert_eq!(b.get_u64(), OPT_REPLY_MAGIC);
    let opt = b.get_u32();
    let ty = b.get_u32();
    let mut data = vec![0u8; b.get_u32() as usize];
    c.read_exact(&mut data).await.unwrap();
    (opt, ty, data)
}

fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.put_u32(name.len() as u32);
    d.extend_from_slice(name.as_bytes());
    d.put_u16(infos.len() as u16);
    for i in infos {
        d.put_u16(*i);
    }
    d
}

#[derive(Debug, Default)]
struct Info {
    size: u64,
    flags: u16,
    block: Option<(u32, u32, u32)>,
    name: Option<String>,
    description: Option<String>,
}

/// Reads NBD_REP_INFO replies up to the final reply; `Err(reply type, message)` on error.
async fn read_info<S: AsyncRead + Unpin>(c: &mut S, opt: u32) -> Result<Info, (u32, String)> {
    let mut info = Info::default();
    let mut saw_export = false;
    loop {
        let (o, ty, data) = read_rep(c).await;
        assert_eq!(o, opt);
        match ty {
            REP_INFO => {
                let mut b = &data[..];
                match b.get_u16() {
                    INFO_EXPORT => {
                        assert_eq!(data.len(), 12);
                        info.size = b.get_u64();
                        info.flags = b.get_u16();
                        saw_export = true;
                    }
                    INFO_BLOCK_SIZE => {
                        assert_eq!(data.len(), 14);
                        info.block = Some((b.get_u32(), b.get_u32(), b.get_u32()));
                    }
                    INFO_NAME => info.name = Some(String::from_utf8(b.to_vec()).unwrap()),
                    INFO_DESCRIPTION => {
                        info.description = Some(String::from_utf8(b.to_vec()).unwrap())
                    }
                    other => panic!("unexpected info {other}"),
                }
            }
            REP_ACK => {
                assert!(saw_export, "ACK without NBD_INFO_EXPORT");
                return Ok(info);
            }
            err => {
                assert!(err & 0x8000_0000 != 0, "unexpected reply {err}");
                return Err((err, String::from_utf8(data).unwrap()));
            }
        }
    }
}

/// Full handshake ending in GO on `name`; returns the export size.
async fn connect_go<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S, name: &str) -> u64 {
    greet(c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
    send_opt(c, OPT_GO, &info_data(name, &[INFO_BLOCK_SIZE])).await;
    let info = read_info(c, OPT_GO).await.expect("GO failed");
    assert_eq!(info.flags, TRANSMISSION_FLAGS);
    info.size
}

async fn request<S: AsyncWrite + Unpin>(
    c: &mut S,
    cmd: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: &[u8],
) {
    let mut m = Vec::with_capacity(28 + payload.len());
    m.put_u32(REQUEST_MAGIC);
    m.put_u16(flags);
    m.put_u16(cmd);
    m.put_u64(cookie);
    m.put_u64(offset);
    m.put_u32(len);
    m.extend_from_slice(payload);
    c.write_all(&m).await.unwrap();
}

/// Reads a simple reply header: (error, cookie).
async fn simple<S: AsyncRead + Unpin>(c: &mut S) -> (u32, u64) {
    let mut h = [0u8; 16];
    c.read_exact(&mut h).await.unwrap();
    let mut b = &h[..];
    assert_eq!(b.get_u32(), SIMPLE_REPLY_MAGIC);
    (b.get_u32(), b.get_u64())
}

async fn read_n<S: AsyncRead + Unpin>(c: &mut S, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    c.read_exact(&mut v).await.unwrap();
    v
}

async fn write_ok<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S, cookie: u64, off: u64, d: &[u8]) {
    request(c, CMD_WRITE, 0, cookie, off, d.len() as u32, d).await;
    assert_eq!(simple(c).await, (0, cookie));
}

async fn read_ok<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut S,
    cookie: u64,
    off: u64,
    len: usize,
) -> Vec<u8> {
    request(c, CMD_READ, 0, cookie, off, len as u32, &[]).await;
    assert_eq!(simple(c).await, (0, cookie));
    read_n(c, len).await
}

/// The server closed the connection: EOF on read.
async fn assert_closed<S: AsyncRead + Unpin>(c: &mut S) {
    let mut buf = [0u8; 1];
    assert_eq!(
        c.read(&mut buf).await.unwrap(),
        0,
        "connection should be closed"
    );
}

async fn disconnect<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S) {
    request(c, CMD_DISC, 0, 0, 0, 0, &[]).await;
    assert_closed(c).await;
}

// --- handshake ------------------------------------------------------------------------

#[tokio::test]
async fn go_unknown_export_then_another_option_works() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
        send_opt(&mut c, OPT_GO, &info_data("rbd/nope", &[])).await;
        let (ty, msg) = read_info(&mut c, OPT_GO).await.unwrap_err();
        assert_eq!(ty, REP_ERR_UNKNOWN);
        assert!(msg.contains("rbd/nope"), "{msg}");
        // Empty name: there is no default export.
        send_opt(&mut c, OPT_GO, &info_data("", &[])).await;
        assert_eq!(
            read_info(&mut c, OPT_GO).await.unwrap_err().0,
            REP_ERR_UNKNOWN
        );
        // Still negotiating: a GO on a real export succeeds.
        send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[INFO_BLOCK_SIZE])).await;
        let info = read_info(&mut c, OPT_GO).await.unwrap();
        assert_eq!(info.size, MIB as u64);
        assert_eq!(info.flags, TRANSMISSION_FLAGS);
        assert_eq!(info.block, Some((1, 4096, 32 << 20)));
        assert_eq!(&read_ok(&mut c, 1, 0, 16).await, &[0u8; 16]);
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn go_on_unavailable_export_is_err_shutdown() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
        send_opt(&mut c, OPT_INFO, &info_data("rbd/busy", &[])).await;
        let (ty, msg) = read_info(&mut c, OPT_INFO).await.unwrap_err();
        assert_eq!(ty, REP_ERR_SHUTDOWN);
        assert!(msg.contains("min_size"), "{msg}");
        send_opt(&mut c, OPT_ABORT, &[]).await;
        assert_eq!(read_rep(&mut c).await, (OPT_ABORT, REP_ACK, vec![]));
        assert_closed(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn list_exports() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
        send_opt(&mut c, OPT_LIST, &[]).await;
        let mut names = Vec::new();
        loop {
            let (opt, ty, data) = read_rep(&mut c).await;
            assert_eq!(opt, OPT_LIST);
            if ty == REP_ACK {
                break;
            }
            assert_eq!(ty, REP_SERVER);
            let mut b = &data[..];
            let n = b.get_u32() as usize;
            assert_eq!(n, b.len());
            names.push(String::from_utf8(b.to_vec()).unwrap());
        }
        assert_eq!(names, ["rbd/a", "rbd/b"]);
        // LIST with data is invalid; negotiation continues.
        send_opt(&mut c, OPT_LIST, b"x").await;
        assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
        send_opt(&mut c, OPT_ABORT, &[]).await;
        assert_eq!(read_rep(&mut c).await.1, REP_ACK);
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn info_then_go() {
    guard(async {
        let f = fixture();
        f.b.fill(0, b"hello");
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
        let req = [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 77];
        send_opt(&mut c, OPT_INFO, &info_data("rbd/b", &req)).await;
        let info = read_info(&mut c, OPT_INFO).await.unwrap();
        assert_eq!(info.size, 64 << 10);
        assert_eq!(info.name.as_deref(), Some("rbd/b"));
        assert!(info.description.unwrap().contains("rbd/b"));
        assert_eq!(info.block, Some((1, 4096, 32 << 20)));
        // INFO did not enter transmission: GO next.
        send_opt(&mut c, OPT_GO, &info_data("rbd/b", &[])).await;
        let info = read_info(&mut c, OPT_GO).await.unwrap();
        assert_eq!(info.size, 64 << 10);
        assert_eq!(read_ok(&mut c, 9, 0, 5).await, b"hello");
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn malformed_info_is_invalid() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
        // Name length larger than the option.
        let mut d = info_data("rbd/a", &[]);
        d[3] = 200;
        send_opt(&mut c, OPT_GO, &d).await;
        assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
        // Info count disagreeing with the length.
        let mut d = info_data("rbd/a", &[INFO_NAME]);
        d.pop();
        send_opt(&mut c, OPT_INFO, &d).await;
        assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
        // Too short to hold anything.
        send_opt(&mut c, OPT_GO, &[0, 0]).await;
        assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
        // Not UTF-8.
        send_opt(&mut c, OPT_GO, &[0, 0, 0, 1, 0xff, 0, 0]).await;
        assert_eq!(read_rep(&mut c).await.1, REP_ERR_INVALID);
        send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[])).await;
        read_info(&mut c, OPT_GO).await.unwrap();
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn abort_acks_and_closes() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
        send_opt(&mut c, OPT_ABORT, b"ignored").await;
        assert_eq!(read_rep(&mut c).await, (OPT_ABORT, REP_ACK, vec![]));
        assert_closed(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn export_name_with_and_without_zeroes() {
    guard(async {
        let f = fixture();
        f.a.fill(100, b"xyz");
        for no_zeroes in [true, false] {
            let (mut c, h) = start(&f.provider);
            let cflags = CFLAG_FIXED_NEWSTYLE | if no_zeroes { CFLAG_NO_ZEROES } else { 0 };
            greet(&mut c, cflags).await;
            send_opt(&mut c, OPT_EXPORT_NAME, b"rbd/a").await;
            let reply = read_n(&mut c, if no_zeroes { 10 } else { 134 }).await;
            let mut b = &reply[..];
            assert_eq!(b.get_u64(), MIB as u64);
            assert_eq!(b.get_u16(), TRANSMISSION_FLAGS);
            assert!(b.iter().all(|&z| z == 0));
            assert_eq!(read_ok(&mut c, 5, 100, 3).await, b"xyz");
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn export_name_unknown_or_unavailable_closes() {
    guard(async {
        let f = fixture();
        for name in ["rbd/nope", "rbd/busy", ""] {
            let (mut c, h) = start(&f.provider);
            greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
            send_opt(&mut c, OPT_EXPORT_NAME, name.as_bytes()).await;
            assert_closed(&mut c).await;
            let err = h.await.unwrap().unwrap_err();
            assert!(matches!(err, NbdError::ExportRefused { .. }), "{err}");
        }
    })
    .await
}

#[tokio::test]
async fn unsupported_options_are_unsup_and_parsing_continues() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
        // STARTTLS, STRUCTURED_REPLY, LIST/SET_META_CONTEXT, EXTENDED_HEADERS, unknown.
        for (opt, data) in [
            (5u32, &b""[..]),
            (8, b""),
            (9, b"\0\0\0\x05rbd/a\0\0\0\0"),
            (10, b"\0\0\0\x05rbd/a\0\0\0\0"),
            (11, b""),
            (4242, b"some data"),
        ] {
            send_opt(&mut c, opt, data).await;
            let (o, ty, msg) = read_rep(&mut c).await;
            assert_eq!((o, ty), (opt, REP_ERR_UNSUP));
            assert!(!msg.is_empty());
        }
        send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[])).await;
        read_info(&mut c, OPT_GO).await.unwrap();
        write_ok(&mut c, 1, 0, b"ok").await;
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
        assert_eq!(f.a.bytes(0..2), b"ok");
    })
    .await
}

#[tokio::test]
async fn oversized_option_is_too_big_and_drained() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES).await;
        let big = vec![7u8; MAX_OPTION_LEN as usize + 1];
        send_opt(&mut c, OPT_GO, &big).await;
        let (o, ty, _) = read_rep(&mut c).await;
        assert_eq!((o, ty), (OPT_GO, REP_ERR_TOO_BIG));
        send_opt(&mut c, OPT_GO, &info_data("rbd/a", &[])).await;
        read_info(&mut c, OPT_GO).await.unwrap();
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn bad_client_flags_or_option_magic_close() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE | 0x100).await;
        assert_closed(&mut c).await;
        assert!(matches!(
            h.await.unwrap(),
            Err(NbdError::ClientFlags(0x101))
        ));

        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
        c.write_all(&[0xaa; 16]).await.unwrap();
        assert_closed(&mut c).await;
        assert!(matches!(h.await.unwrap(), Err(NbdError::OptionMagic(_))));

        // A client hanging up mid-negotiation is a clean end.
        let (mut c, h) = start(&f.provider);
        greet(&mut c, CFLAG_FIXED_NEWSTYLE).await;
        drop(c);
        h.await.unwrap().unwrap();
    })
    .await
}

// --- transmission ---------------------------------------------------------------------

#[tokio::test]
async fn write_read_zeroes_trim_flush() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        assert_eq!(connect_go(&mut c, "rbd/a").await, MIB as u64);
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        write_ok(&mut c, 1, 4096, &pattern).await;
        assert_eq!(read_ok(&mut c, 2, 4096, 8192).await, pattern);
        assert_eq!(f.a.bytes(4096..4096 + 8192), pattern);
        // FUA reaches the device.
        request(&mut c, CMD_WRITE, CMD_FLAG_FUA, 3, 0, 4, b"fua!").await;
        assert_eq!(simple(&mut c).await, (0, 3));
        assert_eq!(*f.a.fua_writes.lock().unwrap(), 1);
        // WRITE_ZEROES (with NO_HOLE) and TRIM.
        request(
            &mut c,
            CMD_WRITE_ZEROES,
            CMD_FLAG_NO_HOLE,
            4,
            4096,
            4096,
            &[],
        )
        .await;
        assert_eq!(simple(&mut c).await, (0, 4));
        assert_eq!(f.a.bytes(4096..8192), vec![0; 4096]);
        request(&mut c, CMD_TRIM, 0, 5, 8192, 4096, &[]).await;
        assert_eq!(simple(&mut c).await, (0, 5));
        assert_eq!(f.a.bytes(8192..12288), vec![0; 4096]);
        request(&mut c, CMD_FLUSH, 0, 6, 0, 0, &[]).await;
        assert_eq!(simple(&mut c).await, (0, 6));
        assert_eq!(*f.a.flushes.lock().unwrap(), 1);
        // Zero-length requests succeed, even at the end of the export.
        for (i, cmd) in [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES]
            .into_iter()
            .enumerate()
        {
            request(&mut c, cmd, 0, 10 + i as u64, MIB as u64, 0, &[]).await;
            assert_eq!(simple(&mut c).await, (0, 10 + i as u64));
        }
        // The last byte of the export is addressable.
        write_ok(&mut c, 20, MIB as u64 - 1, b"z").await;
        assert_eq!(read_ok(&mut c, 21, MIB as u64 - 1, 1).await, b"z");
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
        // DISC flushes the device.
        assert_eq!(*f.a.flushes.lock().unwrap(), 2);
    })
    .await
}

#[tokio::test]
async fn out_of_range_requests_fail_and_connection_keeps_working() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        connect_go(&mut c, "rbd/b").await;
        let size = 64u64 << 10;
        // Read past the end, and an offset that overflows.
        request(&mut c, CMD_READ, 0, 1, size - 10, 20, &[]).await;
        assert_eq!(simple(&mut c).await, (NBD_EINVAL, 1));
        request(&mut c, CMD_READ, 0, 2, u64::MAX - 5, 4096, &[]).await;
        assert_eq!(simple(&mut c).await, (NBD_EINVAL, 2));
        // A write past the end: ENOSPC, and its payload is consumed.
        let payload = vec![0x5a; 8192];
        request(&mut c, CMD_WRITE, 0, 3, size - 4096, 8192, &payload).await;
        assert_eq!(simple(&mut c).await, (NBD_ENOSPC, 3));
        request(&mut c, CMD_WRITE, 0, 4, u64::MAX, 16, &[1; 16]).await;
        assert_eq!(simple(&mut c).await, (NBD_ENOSPC, 4));
        request(&mut c, CMD_WRITE_ZEROES, 0, 5, size, 1, &[]).await;
        assert_eq!(simple(&mut c).await, (NBD_ENOSPC, 5));
        request(&mut c, CMD_TRIM, 0, 6, size, 1, &[]).await;
        assert_eq!(simple(&mut c).await, (NBD_EINVAL, 6));
        // Unknown command flags: EINVAL (the WRITE's payload still consumed).
        request(&mut c, CMD_WRITE, 0x40, 7, 0, 4, b"nope").await;
        assert_eq!(simple(&mut c).await, (NBD_EINVAL, 7));
        request(&mut c, CMD_READ, 0x04, 8, 0, 4, &[]).await;
        assert_eq!(simple(&mut c).await, (NBD_EINVAL, 8));
        // CACHE, BLOCK_STATUS and unknown commands: EINVAL, no payload consumed.
        for (i, cmd) in [5u16, 7, 8, 999].into_iter().enumerate() {
            request(&mut c, cmd, 0, 100 + i as u64, 0, 4096, &[]).await;
            assert_eq!(simple(&mut c).await, (NBD_EINVAL, 100 + i as u64));
        }
        // Nothing was written, and the stream is still in sync.
        assert!(f.b.bytes(0..64 << 10).iter().all(|&x| x == 0));
        write_ok(&mut c, 9, 0, b"still here").await;
        assert_eq!(read_ok(&mut c, 10, 0, 10).await, b"still here");
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn oversized_read_and_write_are_einval() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        connect_go(&mut c, "rbd/a").await;
        let len = MAX_BLOCK_SIZE + 1;
        request(&mut c, CMD_READ, 0, 1, 0, len, &[]).await;
        assert_eq!(simple(&mut c).await, (NBD_EINVAL, 1));
        // The payload is drained while we send it.
        let payload = vec![0xee; len as usize];
        request(&mut c, CMD_WRITE, 0, 2, 0, len, &payload).await;
        assert_eq!(simple(&mut c).await, (NBD_EINVAL, 2));
        write_ok(&mut c, 3, 0, b"abc").await;
        assert_eq!(f.a.bytes(0..4), b"abc\0");
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn bad_request_magic_closes_connection() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        connect_go(&mut c, "rbd/a").await;
        write_ok(&mut c, 1, 0, b"x").await;
        let mut junk = [0u8; 28];
        junk[..4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        c.write_all(&junk).await.unwrap();
        assert_closed(&mut c).await;
        assert!(matches!(
            h.await.unwrap(),
            Err(NbdError::RequestMagic(0x1234_5678))
        ));
    })
    .await
}

#[tokio::test]
async fn hangup_mid_request_is_an_error_not_a_panic() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        connect_go(&mut c, "rbd/a").await;
        // A WRITE announcing 4 KiB, followed by only 10 bytes.
        request(&mut c, CMD_WRITE, 0, 1, 0, 4096, &[1; 10]).await;
        drop(c);
        assert!(matches!(h.await.unwrap(), Err(NbdError::Io(_))));
    })
    .await
}

#[tokio::test]
async fn garbage_never_panics() {
    guard(async {
        let f = fixture();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            let (mut c, h) = start(&f.provider);
            let mut junk = vec![0u8; 64 + round * 3];
            for b in junk.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            // Half of the rounds get past the greeting with valid magics in place.
            if round % 2 == 0 {
                junk[..4].copy_from_slice(&CFLAG_FIXED_NEWSTYLE.to_be_bytes());
                junk[4..12].copy_from_slice(&IHAVEOPT.to_be_bytes());
                junk[16..20].copy_from_slice(&[0, 0, 0, (round % 40) as u8]);
            }
            let mut greeting = [0u8; 18];
            c.read_exact(&mut greeting).await.unwrap();
            let _ = c.write_all(&junk).await;
            drop(c);
            // Whatever the result, the task must not panic.
            let _ = h.await.expect("server task panicked");
        }
    })
    .await
}

#[tokio::test]
async fn device_errors_map_to_errnos() {
    guard(async {
        let cases: Vec<(&str, Option<DevError>, u32)> = vec![
            (
                "t/io",
                Some(DevError::Io("replicas below min_size".into())),
                NBD_EIO,
            ),
            ("t/inval", Some(DevError::Invalid("no".into())), NBD_EINVAL),
            (
                "t/nospc",
                Some(DevError::NoSpace("full".into())),
                NBD_ENOSPC,
            ),
            (
                "t/ro",
                Some(DevError::ReadOnly("snapshot".into())),
                NBD_EPERM,
            ),
            ("t/panic", None, NBD_EIO),
        ];
        let extra = cases
            .iter()
            .map(|(n, e, _)| (*n, Arc::new(FailDev(e.clone())) as Arc<dyn BlockDevice>))
            .collect();
        let f = fixture_with(extra);
        for (name, _, expected) in cases {
            let (mut c, h) = start(&f.provider);
            connect_go(&mut c, name).await;
            request(&mut c, CMD_READ, 0, 1, 0, 512, &[]).await;
            assert_eq!(simple(&mut c).await, (expected, 1), "{name} read");
            request(&mut c, CMD_WRITE, 0, 2, 0, 3, b"abc").await;
            assert_eq!(simple(&mut c).await, (expected, 2), "{name} write");
            request(&mut c, CMD_WRITE_ZEROES, 0, 3, 0, 512, &[]).await;
            assert_eq!(simple(&mut c).await, (expected, 3), "{name} zeroes");
            request(&mut c, CMD_TRIM, 0, 4, 0, 512, &[]).await;
            assert_eq!(simple(&mut c).await, (expected, 4), "{name} trim");
            request(&mut c, CMD_FLUSH, 0, 5, 0, 0, &[]).await;
            assert_eq!(simple(&mut c).await, (expected, 5), "{name} flush");
            // DISC's flush fails too; the connection still closes cleanly.
            disconnect(&mut c).await;
            h.await.unwrap().unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn concurrent_requests_reply_out_of_order_by_cookie() {
    guard(async {
        let gate = Arc::new(Notify::new());
        let dev = MemDev::gated(MIB, gate.clone());
        dev.fill(0, b"slow");
        dev.fill(4096, b"fast");
        let f = fixture_with(vec![("rbd/gated", dev.clone() as Arc<dyn BlockDevice>)]);
        let (mut c, h) = start(&f.provider);
        connect_go(&mut c, "rbd/gated").await;
        // Cookie 1 blocks in the device; 2..=17 (queue depth 16) complete meanwhile.
        request(&mut c, CMD_READ, 0, 1, GATED_OFFSET, 4, &[]).await;
        for cookie in 2..=17u64 {
            request(&mut c, CMD_READ, 0, cookie, 4096, 4, &[]).await;
        }
        let mut seen = Vec::new();
        for _ in 2..=17 {
            let (err, cookie) = simple(&mut c).await;
            assert_eq!(err, 0);
            assert_eq!(read_n(&mut c, 4).await, b"fast", "cookie {cookie}");
            seen.push(cookie);
        }
        seen.sort_unstable();
        assert_eq!(seen, (2..=17).collect::<Vec<_>>());
        // A write completes too while the read is stuck.
        write_ok(&mut c, 18, 8192, b"w").await;
        gate.notify_one();
        assert_eq!(simple(&mut c).await, (0, 1));
        assert_eq!(read_n(&mut c, 4).await, b"slow");
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn disc_waits_for_in_flight_requests() {
    guard(async {
        let gate = Arc::new(Notify::new());
        let dev = MemDev::gated(MIB, gate.clone());
        dev.fill(0, b"late");
        let f = fixture_with(vec![("rbd/gated", dev.clone() as Arc<dyn BlockDevice>)]);
        let (mut c, h) = start(&f.provider);
        connect_go(&mut c, "rbd/gated").await;
        request(&mut c, CMD_READ, 0, 42, GATED_OFFSET, 4, &[]).await;
        request(&mut c, CMD_DISC, 0, 0, 0, 0, &[]).await;
        // The server has stopped reading but must still answer cookie 42 before closing.
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        gate.notify_one();
        assert_eq!(simple(&mut c).await, (0, 42));
        assert_eq!(read_n(&mut c, 4).await, b"late");
        assert_closed(&mut c).await;
        h.await.unwrap().unwrap();
        assert_eq!(*dev.flushes.lock().unwrap(), 1);
    })
    .await
}

#[tokio::test]
async fn deep_queue_of_writes_and_reads() {
    guard(async {
        let f = fixture();
        let (mut c, h) = start(&f.provider);
        connect_go(&mut c, "rbd/a").await;
        // More requests than MAX_INFLIGHT, sent without waiting for replies.
        let n = 300u64;
        let (mut rd, mut wr) = tokio::io::split(c);
        let sender = tokio::spawn(async move {
            for i in 0..n {
                let block = vec![(i % 251) as u8; 4096];
                request(&mut wr, CMD_WRITE, 0, i, (i % 256) * 4096, 4096, &block).await;
            }
            wr
        });
        let mut seen = vec![false; n as usize];
        for _ in 0..n {
            let (err, cookie) = simple(&mut rd).await;
            assert_eq!(err, 0);
            assert!(!std::mem::replace(&mut seen[cookie as usize], true));
        }
        let wr = sender.await.unwrap();
        c = rd.unsplit(wr);
        for i in (n - 256)..n {
            let off = (i % 256) * 4096;
            assert_eq!(
                read_ok(&mut c, i, off, 4096).await,
                vec![(i % 251) as u8; 4096]
            );
        }
        disconnect(&mut c).await;
        h.await.unwrap().unwrap();
    })
    .await
}

// --- serve() and real clients ---------------------------------------------------------

async fn start_tcp(f: &Fixture) -> (u16, watch::Sender<bool>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(serve(listener, f.provider.clone(), rx));
    (port, tx, handle)
}

/// Runs a child with a hang guard; returns (success, stdout + stderr).
async fn run_tool(program: &str, args: &[String]) -> (bool, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .unwrap_or_else(|_| panic!("{program} timed out (killed)"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn serve_stops_accepting_but_lets_connections_finish() {
    guard(async {
        let f = fixture();
        let (port, stop, handle) = start_tcp(&f).await;
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        connect_go(&mut c, "rbd/a").await;
        stop.send(true).unwrap();
        handle.await.unwrap();
        // The listener is gone...
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
        // ...but the established connection still works.
        write_ok(&mut c, 1, 0, b"after").await;
        assert_eq!(read_ok(&mut c, 2, 0, 5).await, b"after");
        disconnect(&mut c).await;
    })
    .await
}

#[tokio::test]
async fn qemu_io_end_to_end() {
    let f = fixture();
    f.a.fill(0, &[0x11; 256 << 10]);
    let (port, _stop, _h) = start_tcp(&f).await;
    let url = format!("nbd://127.0.0.1:{port}/rbd/a");
    let mut args = vec!["-f".to_string(), "raw".into(), url];
    for cmd in [
        "write -P 0xab 0 64k",
        "read -P 0xab 0 64k",
        "write -z 64k 64k",
        "read -P 0 64k 64k",
        "discard 0 4k",
        "flush",
    ] {
        args.push("-c".into());
        args.push(cmd.into());
    }
    let (ok, out) = run_tool("qemu-io", &args).await;
    assert!(ok, "qemu-io failed:\n{out}");
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    assert_eq!(f.a.bytes(0..4096), vec![0; 4096], "discarded range");
    assert_eq!(f.a.bytes(4096..64 << 10), vec![0xab; (64 << 10) - 4096]);
    assert_eq!(f.a.bytes(64 << 10..128 << 10), vec![0; 64 << 10]);
    assert_eq!(f.a.bytes(128 << 10..256 << 10), vec![0x11; 128 << 10]);
    assert!(*f.a.flushes.lock().unwrap() >= 1);
}

#[tokio::test]
async fn qemu_img_info_and_qemu_nbd_list() {
    let f = fixture();
    let (port, _stop, _h) = start_tcp(&f).await;
    let url = format!("nbd://127.0.0.1:{port}/rbd/a");
    let (ok, out) = run_tool("qemu-img", &["info".into(), url]).await;
    assert!(ok, "qemu-img info failed:\n{out}");
    assert!(out.contains("virtual size: 1 MiB (1048576 bytes)"), "{out}");

    let args = ["-L", "-b", "127.0.0.1", "-p", &port.to_string()].map(String::from);
    let (ok, out) = run_tool("qemu-nbd", &args).await;
    assert!(ok, "qemu-nbd -L failed:\n{out}");
    assert!(out.contains("exports available: 2"), "{out}");
    assert!(out.contains("export: 'rbd/a'"), "{out}");
    assert!(out.contains("export: 'rbd/b'"), "{out}");
    assert!(out.contains("size:  1048576"), "{out}");
}
