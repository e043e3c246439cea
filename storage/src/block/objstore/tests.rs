use super::meta::{decode_key, encode_key, ObjMeta};
use super::orphans::parse_object_file;
use super::writer::Chunk;
use super::*;
use crate::block::wal::checkpoint::{checkpoint_once, Checkpointed};
use crate::block::wal::record::{encode_record, encode_wal};
use crate::block::wal::{applied_mark, LEGACY_WAL, WAL_CHECKPOINT_AGE, WAL_FILES, WAL_MAX_OP};
use proptest::prelude::*;

const MAX: u64 = 64 * 1024;

fn key(image: &str, objno: u64) -> ObjectKey {
    ObjectKey {
        pool: 1,
        image: image.to_string(),
        objno,
    }
}

/// Non-zero bytes that differ by seed and position.
fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(31).wrapping_add(seed as u32) % 251) as u8 + 1)
        .collect::<Vec<u8>>()
        .into()
}

fn op(k: &ObjectKey, expect: u64, offset: u64, m: Mutation) -> WriteOp {
    WriteOp {
        key: k.clone(),
        expect,
        new: expect + 1,
        offset,
        m,
    }
}

async fn put(s: &ObjStore, k: &ObjectKey, expect: u64, offset: u64, m: Mutation) {
    assert_eq!(
        s.write(op(k, expect, offset, m)).await.unwrap(),
        WriteOutcome::Applied
    );
}

fn obj_path(dir: &Path, k: &ObjectKey) -> PathBuf {
    dir.join("objects").join(k.pool.to_string()).join(k.name())
}

/// Flips one byte of the object file in place, as disk rot or an operator would.
fn corrupt(dir: &Path, k: &ObjectKey, pos: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(obj_path(dir, k))
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, pos).unwrap();
}

#[test]
fn meta_encoding_roundtrips() {
    let m = ObjMeta {
        version: 7,
        crcs: vec![
            Some(0),
            None,
            Some(u32::MAX),
            None,
            None,
            None,
            None,
            None,
            Some(5),
        ],
    };
    assert_eq!(ObjMeta::decode(&m.encode()).unwrap(), m);
    assert_eq!(
        ObjMeta::decode(&ObjMeta::default().encode()).unwrap(),
        ObjMeta::default()
    );
    assert!(ObjMeta::decode(&m.encode()[..10]).is_err());
    let k = key("img.with.dots", 0xabc);
    assert_eq!(decode_key(&encode_key(&k)), Some(k.clone()));
    assert_eq!(parse_object_file(1, &k.name()), Some(k));
}

/// Small writes are durable through the write-ahead table: even if their file data never
/// reached the disk (simulated by emptying the file before reopening), reopening replays them.
#[tokio::test]
async fn logged_small_writes_survive_lost_file_data() {
    let d = tempfile::tempdir().unwrap();
    let k = key("wal", 0);
    let a = pattern(3, 4096);
    let b = pattern(4, 6000);
    {
        let s = ObjStore::open(d.path(), MAX).unwrap();
        put(&s, &k, 0, 8192, Mutation::Data(a.clone())).await;
        put(&s, &k, 1, 100, Mutation::Data(b.clone())).await;
    }
    OpenOptions::new()
        .write(true)
        .open(obj_path(d.path(), &k))
        .unwrap()
        .set_len(0)
        .unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let (v, got) = s.read(&k, 0, 12288).await.unwrap();
    assert_eq!(v, 2);
    let mut model = vec![0u8; 12288];
    model[8192..12288].copy_from_slice(&a);
    model[100..6100].copy_from_slice(&b);
    assert_eq!(&got[..], &model[..]);
    assert!(s.scrub(&k).await.unwrap().is_empty());
}

/// Rows of one legacy redb log table; a dropped table holds none.
fn legacy_rows(db: &Database, g: usize) -> u64 {
    use redb::ReadableTableMetadata;
    match db.begin_read().unwrap().open_table(LEGACY_WAL[g]) {
        Ok(t) => t.len().unwrap(),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => panic!("{e}"),
    }
}

fn applied(db: &Database) -> u64 {
    applied_mark(db).unwrap()
}

/// A store written before the log moved to files: records in both redb generations, in
/// interleaved sequence order, are replayed in that order at open and the tables dropped.
#[tokio::test]
async fn legacy_tables_are_replayed_in_sequence_order() {
    let d = tempfile::tempdir().unwrap();
    let k = key("gens", 0);
    let a = pattern(9, 4096);
    {
        // The metadata of a legacy store was committed beside its records: write it through
        // a store, then lose the file data and put the legacy records in.
        let s = ObjStore::open(d.path(), MAX).unwrap();
        put(&s, &k, 0, 0, Mutation::Data(a.clone())).await;
        s.import(&k, s.export(&k).await.unwrap()).await.unwrap();
    }
    fs::write(obj_path(d.path(), &k), b"").unwrap();
    {
        let db = Database::create(d.path().join("objects.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let (mut g0, mut g1) = (
                tx.open_table(LEGACY_WAL[0]).unwrap(),
                tx.open_table(LEGACY_WAL[1]).unwrap(),
            );
            // The first 8 bytes written four times; the last write is seq 4, in generation 0.
            g1.insert(1, encode_wal(&k, 0, &[1u8; 8]).as_slice())
                .unwrap();
            g0.insert(2, encode_wal(&k, 0, &[2u8; 8]).as_slice())
                .unwrap();
            g1.insert(3, encode_wal(&k, 0, &[3u8; 8]).as_slice())
                .unwrap();
            g0.insert(4, encode_wal(&k, 0, &a[..8]).as_slice()).unwrap();
            g1.insert(5, encode_wal(&k, 8, &a[8..]).as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let s = ObjStore::open(d.path(), MAX).unwrap();
    assert_eq!(&s.read(&k, 0, 4096).await.unwrap().1[..], &a[..]);
    for g in 0..2 {
        assert_eq!(legacy_rows(&s.inner.db, g), 0, "replay drops the tables");
    }
}

/// Log files as a crash during a background checkpoint leaves them: generation 1 holds the
/// older records, generation 0 the newer ones followed by leftovers; replay applies them in
/// sequence order and restores data and metadata.
#[tokio::test]
async fn replay_orders_generations_and_rebuilds_metadata() {
    let d = tempfile::tempdir().unwrap();
    let k = key("gens", 0);
    let (a, b, c) = (pattern(1, 4096), pattern(2, 4096), pattern(3, 4096));
    let rec = |version: u64, first: u64, chunks: Vec<Chunk>| {
        let plan: Vec<(u64, Chunk)> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, ch)| (first + i as u64, ch))
            .collect();
        let mut out = Vec::new();
        encode_record(&mut out, &k, version, &plan);
        move |o: &mut Vec<u8>| o.extend_from_slice(&out)
    };
    let (mut g0, mut g1) = (Vec::new(), Vec::new());
    wal::frame(&mut g1, 1, rec(1, 0, vec![Chunk::new(a.clone(), None)]));
    wal::frame(&mut g1, 2, rec(2, 1, vec![Chunk::new(a.clone(), None)]));
    wal::frame(
        &mut g0,
        3,
        rec(3, 0, vec![Chunk::new(b.clone(), None), Chunk::Hole]),
    );
    wal::frame(&mut g0, 4, rec(4, 2, vec![Chunk::new(c.clone(), None)]));
    // A leftover of an earlier use of generation 0 (older, so it ends the chain).
    wal::frame(&mut g0, 1, rec(9, 0, vec![Chunk::new(c.clone(), None)]));
    fs::write(d.path().join(WAL_FILES[0]), &g0).unwrap();
    fs::write(d.path().join(WAL_FILES[1]), &g1).unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let (v, got) = s.read(&k, 0, 3 * 4096).await.unwrap();
    assert_eq!(v, 4);
    assert_eq!(&got[..], [&b[..], &[0u8; 4096], &c[..]].concat().as_slice());
    assert_eq!(
        s.info(&k).unwrap().used_bytes,
        2 * 4096,
        "chunk 1 became a hole"
    );
    assert!(s.scrub(&k).await.unwrap().is_empty());
    assert_eq!(applied(&s.inner.db), 4);
    assert_eq!(
        lock(&s.inner.wal).seq,
        4,
        "numbering continues after the replay"
    );
    for f in WAL_FILES {
        assert_eq!(
            fs::metadata(d.path().join(f)).unwrap().len(),
            0,
            "replay empties {f}"
        );
    }
    // A gap (record 3 missing) is refused rather than replayed over.
    drop(s);
    let (mut g0, mut g1) = (Vec::new(), Vec::new());
    wal::frame(&mut g1, 5, rec(5, 0, vec![Chunk::new(a.clone(), None)]));
    wal::frame(&mut g0, 7, rec(6, 0, vec![Chunk::new(c.clone(), None)]));
    fs::write(d.path().join(WAL_FILES[0]), &g0).unwrap();
    fs::write(d.path().join(WAL_FILES[1]), &g1).unwrap();
    let err = ObjStore::open(d.path(), MAX).err().unwrap();
    assert!(err.to_string().contains("records are missing"), "{err}");
}

/// A background checkpoint flips the active generation; the writer's next batch commits the
/// metadata with the `applied` mark and reuses the old generation from offset 0; writes after
/// it are still durable through the new one.
#[tokio::test]
async fn checkpoint_commits_metadata_and_reuses_the_generation() {
    let d = tempfile::tempdir().unwrap();
    let k = key("flip", 0);
    let (a, b) = (pattern(7, 4096), pattern(8, 4096));
    {
        let s = ObjStore::open(d.path(), MAX).unwrap();
        put(&s, &k, 0, 0, Mutation::Data(a.clone())).await;
        assert_eq!(
            s.inner.load_meta(&k).unwrap(),
            None,
            "logged, not in redb yet"
        );
        assert_eq!(lock(&s.inner.metas).dirty, 1);
        lock(&s.inner.wal).last_checkpoint -= WAL_CHECKPOINT_AGE * 2;
        // Bounded wait for the checkpoint thread (it looks every 200 ms).
        let mut flipped = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let w = lock(&s.inner.wal);
            if w.active == 1 && w.done == Some(Checkpointed { gen: 0, seq: 1 }) {
                flipped = true;
                break;
            }
        }
        assert!(flipped, "the checkpoint did not run within 5 s");
        put(&s, &k, 1, 4096, Mutation::Data(b.clone())).await;
        assert_eq!(applied(&s.inner.db), 1);
        assert_eq!(s.inner.load_meta(&k).unwrap().unwrap().version, 1);
        let w = lock(&s.inner.wal);
        assert_eq!((w.logs[0].head(), w.seq), (0, 2), "generation 0 is reused");
        assert!(w.logs[1].head() > 0, "the new write is in generation 1");
    }
    // Lose the second write's file data: replay restores it from generation 1.
    OpenOptions::new()
        .write(true)
        .open(obj_path(d.path(), &k))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let (v, got) = s.read(&k, 0, 8192).await.unwrap();
    assert_eq!(v, 2);
    assert_eq!(&got[..], [&a[..], &b[..]].concat().as_slice());
}

/// A big write checkpoints synchronously first: the logged writes' metadata reaches redb, the
/// `applied` mark moves to the last record, and a replay has nothing older to re-apply.
#[tokio::test]
async fn big_write_checkpoints_the_log_first() {
    let d = tempfile::tempdir().unwrap();
    let (k1, k2) = (key("sync", 0), key("sync", 1));
    let small = pattern(5, 4096);
    let big = pattern(6, (WAL_MAX_OP + CS) as usize);
    {
        let s = ObjStore::open(d.path(), 2 * WAL_MAX_OP).unwrap();
        put(&s, &k1, 0, 0, Mutation::Data(small.clone())).await;
        put(&s, &k1, 1, 4096, Mutation::Data(small.clone())).await;
        put(&s, &k2, 0, 0, Mutation::Data(big.clone())).await;
        assert_eq!(applied(&s.inner.db), 2);
        assert_eq!(s.inner.load_meta(&k1).unwrap().unwrap().version, 2);
        assert_eq!(lock(&s.inner.metas).dirty, 0, "all of it committed");
        let heads = {
            let w = lock(&s.inner.wal);
            (w.logs[0].head(), w.logs[1].head())
        };
        assert_eq!(heads, (0, 0));
        put(&s, &k1, 2, 0, Mutation::Zero(4096)).await;
    }
    let s = ObjStore::open(d.path(), 2 * WAL_MAX_OP).unwrap();
    let (v, got) = s.read(&k1, 0, 8192).await.unwrap();
    assert_eq!(v, 3);
    assert_eq!(&got[..], [&[0u8; 4096][..], &small[..]].concat().as_slice());
    assert_eq!(
        &s.read(&k2, 0, big.len() as u64).await.unwrap().1[..],
        &big[..]
    );
}

#[tokio::test]
async fn roundtrip_aligned_and_unaligned() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let k = key("rt", 0);
    let a = pattern(1, 8192);
    put(&s, &k, 0, 4096, Mutation::Data(a.clone())).await;
    assert_eq!(s.read(&k, 4096, 8192).await.unwrap(), (1, a.clone()));
    // Unaligned offset and length, spanning three chunks, over existing data and a hole.
    let b = pattern(2, 9000);
    put(&s, &k, 1, 1000, Mutation::Data(b.clone())).await;
    let mut model = vec![0u8; MAX as usize];
    model[4096..12288].copy_from_slice(&a);
    model[1000..10000].copy_from_slice(&b);
    let (v, got) = s.read(&k, 0, MAX).await.unwrap();
    assert_eq!(v, 2);
    assert_eq!(&got[..], &model[..]);
    let (_, part) = s.read(&k, 999, 3).await.unwrap();
    assert_eq!(&part[..], &model[999..1002]);
    let (_, tail) = s.read(&k, 10001, 4095).await.unwrap();
    assert_eq!(&tail[..], &model[10001..14096]);
    assert_eq!(s.read(&k, 5, 0).await.unwrap(), (2, Bytes::new()));
    assert_eq!(
        s.info(&k),
        Some(ObjInfo {
            version: 2,
            used_bytes: 3 * 4096
        })
    );
    assert_eq!(s.version(&k), 2);
}

#[tokio::test]
async fn holes_read_as_zeros() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let k = key("holes", 3);
    assert_eq!(
        s.read(&k, 100, 5000).await.unwrap(),
        (0, Bytes::from(vec![0u8; 5000]))
    );
    assert_eq!(s.info(&k), None);
    put(&s, &k, 0, 8 * 4096, Mutation::Data(pattern(3, 4096))).await;
    let (v, got) = s.read(&k, 0, MAX).await.unwrap();
    assert_eq!(v, 1);
    assert!(got[..8 * 4096].iter().all(|&b| b == 0));
    assert_eq!(&got[8 * 4096..9 * 4096], &pattern(3, 4096)[..]);
    assert!(got[9 * 4096..].iter().all(|&b| b == 0));
    // Data that is all zeros is a hole too.
    put(&s, &k, 1, 0, Mutation::Data(Bytes::from(vec![0u8; 4096]))).await;
    assert_eq!(s.info(&k).unwrap().used_bytes, 4096);
    // The file is sparse and short: nothing was written past chunk 8.
    assert_eq!(
        fs::metadata(obj_path(d.path(), &k)).unwrap().len(),
        9 * 4096
    );
}

#[tokio::test]
async fn zero_and_trim() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let k = key("zt", 0);
    let data = pattern(4, MAX as usize);
    put(&s, &k, 0, 0, Mutation::Data(data.clone())).await;
    let mut model = data.to_vec();
    // Partial chunks at both ends, whole chunks inside.
    put(&s, &k, 1, 100, Mutation::Zero(3 * 4096)).await;
    model[100..100 + 3 * 4096].fill(0);
    put(&s, &k, 2, 6 * 4096 + 7, Mutation::Trim(2 * 4096 + 9)).await;
    model[6 * 4096 + 7..8 * 4096 + 16].fill(0);
    assert_eq!(&s.read(&k, 0, MAX).await.unwrap().1[..], &model[..]);
    assert_eq!(s.info(&k).unwrap().used_bytes, (16 - 2 - 1) * 4096);
    // Trimming the tail gives the space back.
    put(&s, &k, 3, 10 * 4096, Mutation::Trim(6 * 4096)).await;
    model[10 * 4096..].fill(0);
    assert_eq!(
        fs::metadata(obj_path(d.path(), &k)).unwrap().len(),
        10 * 4096
    );
    assert_eq!(
        s.read(&k, 0, MAX).await.unwrap(),
        (4, Bytes::from(model.clone()))
    );
    put(&s, &k, 4, 0, Mutation::Trim(MAX)).await;
    assert_eq!(
        s.info(&k),
        Some(ObjInfo {
            version: 5,
            used_bytes: 0
        })
    );
    assert_eq!(fs::metadata(obj_path(d.path(), &k)).unwrap().len(), 0);
    assert_eq!(
        s.read(&k, 0, MAX).await.unwrap(),
        (5, Bytes::from(vec![0u8; MAX as usize]))
    );
}

#[tokio::test]
async fn cas_outcomes() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let k = key("cas", 0);
    let w = |expect, new| WriteOp {
        key: k.clone(),
        expect,
        new,
        offset: 0,
        m: Mutation::Data(pattern(new as u8, 10)),
    };
    assert_eq!(s.write(w(0, 5)).await.unwrap(), WriteOutcome::Applied);
    assert_eq!(
        s.write(w(0, 5)).await.unwrap(),
        WriteOutcome::AlreadyApplied
    );
    assert_eq!(
        s.write(w(7, 8)).await.unwrap(),
        WriteOutcome::Stale { have: 5 }
    );
    assert_eq!(
        s.write(w(3, 4)).await.unwrap(),
        WriteOutcome::Conflict { have: 5 }
    );
    assert_eq!(
        s.write(w(3, 9)).await.unwrap(),
        WriteOutcome::Conflict { have: 5 }
    );
    // None of the refused writes changed anything.
    assert_eq!(s.read(&k, 0, 10).await.unwrap(), (5, pattern(5, 10)));
    assert_eq!(s.write(w(5, 6)).await.unwrap(), WriteOutcome::Applied);
    assert_eq!(s.read(&k, 0, 10).await.unwrap(), (6, pattern(6, 10)));
}

#[tokio::test]
async fn invalid_requests() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let k = key("inv", 0);
    fn inv<T>(r: Result<T, ObjError>) -> bool {
        matches!(r, Err(ObjError::Invalid(_)))
    }
    assert!(inv(s
        .write(op(&k, 0, MAX - 10, Mutation::Data(pattern(1, 11))))
        .await));
    assert!(inv(s.write(op(&k, 0, MAX, Mutation::Zero(1))).await));
    assert!(inv(s.write(op(&k, 0, u64::MAX, Mutation::Trim(2))).await));
    assert!(inv(s.read(&k, MAX - 1, 2).await));
    assert!(inv(s.read(&k, MAX + 1, 0).await));
    let mut same = op(&k, 3, 0, Mutation::Zero(1));
    same.new = 3;
    assert!(inv(s.write(same).await));
    assert!(inv(s
        .write(op(&key("a/b", 0), 0, 0, Mutation::Zero(1)))
        .await));
    assert!(inv(s.read(&key("", 0), 0, 1).await));
    let bad_chunk = ObjectImage {
        version: 1,
        chunks: vec![(MAX / CS, pattern(1, CHUNK_SIZE))],
    };
    assert!(inv(s.import(&k, bad_chunk).await));
    let short = ObjectImage {
        version: 1,
        chunks: vec![(0, pattern(1, 100))],
    };
    assert!(inv(s.import(&k, short).await));
    assert!(ObjStore::open(d.path(), 1000).is_err());
    // The edge of the object is fine.
    put(&s, &k, 0, MAX - 10, Mutation::Data(pattern(1, 10))).await;
    assert_eq!(s.read(&k, MAX - 10, 10).await.unwrap(), (1, pattern(1, 10)));
    assert_eq!(s.info(&k).unwrap().version, 1);
}

#[tokio::test]
async fn reopen_keeps_data_and_versions() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (
        key("re", 0),
        ObjectKey {
            pool: 2,
            ..key("re", 1)
        },
    );
    {
        let s = ObjStore::open(d.path(), MAX).unwrap();
        put(&s, &a, 0, 123, Mutation::Data(pattern(5, 20000))).await;
        put(&s, &a, 1, 4096, Mutation::Trim(4096)).await;
        put(&s, &b, 0, 0, Mutation::Data(pattern(6, 4096))).await;
    }
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let mut model = vec![0u8; MAX as usize];
    model[123..20123].copy_from_slice(&pattern(5, 20000));
    model[4096..8192].fill(0);
    assert_eq!(s.read(&a, 0, MAX).await.unwrap(), (2, Bytes::from(model)));
    assert_eq!(s.read(&b, 0, 4096).await.unwrap(), (1, pattern(6, 4096)));
    assert_eq!(s.list(1), vec![(a.clone(), s.info(&a).unwrap())]);
    assert_eq!(s.list(2), vec![(b.clone(), s.info(&b).unwrap())]);
    assert_eq!(s.list_all().len(), 2);
    let st = s.stats();
    assert_eq!(st.objects, 2);
    assert_eq!(st.used_bytes, 5 * 4096);
    assert!(st.total_bytes >= st.avail_bytes && st.total_bytes > 0);
}

#[tokio::test]
async fn corruption_is_detected_scrubbed_and_repaired() {
    let (good_dir, bad_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let good = ObjStore::open(good_dir.path(), MAX).unwrap();
    let bad = ObjStore::open(bad_dir.path(), MAX).unwrap();
    let k = key("rot", 9);
    let data = pattern(7, 3 * 4096);
    for s in [&good, &bad] {
        put(s, &k, 0, 0, Mutation::Data(data.clone())).await;
    }
    corrupt(bad_dir.path(), &k, 4096 + 17);
    fn is_corrupt<T>(r: Result<T, ObjError>, c: u64) -> bool {
        matches!(r, Err(ObjError::Corrupt { key, chunk }) if key.image == "rot" && key.objno == 9 && chunk == c)
    }
    assert!(is_corrupt(bad.read(&k, 4096 + 17, 1).await, 1));
    assert!(is_corrupt(bad.read(&k, 0, 3 * 4096).await, 1));
    assert_eq!(bad.read(&k, 0, 4096).await.unwrap().1, data.slice(..4096));
    assert_eq!(
        bad.read(&k, 8192, 4096).await.unwrap().1,
        data.slice(8192..)
    );
    assert_eq!(bad.scrub(&k).await.unwrap(), vec![1]);
    assert!(is_corrupt(bad.digest(&k).await, 1));
    assert!(is_corrupt(bad.export(&k).await, 1));
    // An unaligned write over the corrupt chunk refuses to bless it with a new CRC.
    assert!(is_corrupt(
        bad.write(op(&k, 1, 5000, Mutation::Data(pattern(1, 10))))
            .await,
        1
    ));
    assert!(is_corrupt(
        bad.write(op(&k, 1, 4097, Mutation::Zero(10))).await,
        1
    ));
    assert_eq!(bad.version(&k), 1);
    // Repair from the good replica.
    let img = good.export(&k).await.unwrap();
    bad.import(&k, img).await.unwrap();
    assert_eq!(bad.scrub(&k).await.unwrap(), Vec::<u64>::new());
    assert_eq!(bad.read(&k, 0, 3 * 4096).await.unwrap(), (1, data));
    assert_eq!(
        bad.digest(&k).await.unwrap(),
        good.digest(&k).await.unwrap()
    );
    // A whole-chunk overwrite of a corrupt chunk needs no read and also heals it.
    corrupt(bad_dir.path(), &k, 5);
    put(&bad, &k, 1, 0, Mutation::Data(pattern(8, 4096))).await;
    assert_eq!(bad.scrub(&k).await.unwrap(), Vec::<u64>::new());
    // A deleted file makes every data chunk corrupt — except what the write-ahead log still
    // holds (the last small write, chunk 0), which reopening replays.
    drop(bad);
    fs::remove_file(obj_path(bad_dir.path(), &k)).unwrap();
    let bad = ObjStore::open(bad_dir.path(), MAX).unwrap();
    assert_eq!(bad.scrub(&k).await.unwrap(), vec![1, 2]);
}

#[tokio::test]
async fn digest_ignores_how_zeros_were_made() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let s: Vec<_> = dirs
        .iter()
        .map(|d| ObjStore::open(d.path(), MAX).unwrap())
        .collect();
    let k = key("dg", 0);
    for st in &s {
        put(st, &k, 0, 0, Mutation::Data(pattern(9, 4 * 4096))).await;
    }
    put(&s[0], &k, 1, 4096, Mutation::Trim(4096)).await;
    put(
        &s[1],
        &k,
        1,
        4096,
        Mutation::Data(Bytes::from(vec![0u8; 4096])),
    )
    .await;
    put(&s[2], &k, 1, 4096, Mutation::Zero(4096)).await;
    let d0 = s[0].digest(&k).await.unwrap();
    assert_eq!(d0.0, 2);
    assert_eq!(d0, s[1].digest(&k).await.unwrap());
    assert_eq!(d0, s[2].digest(&k).await.unwrap());
    put(&s[2], &k, 2, 3, Mutation::Data(Bytes::from_static(b"x"))).await;
    assert_ne!(d0.1, s[2].digest(&k).await.unwrap().1);
    // A missing object and an object of holes hash alike.
    let missing = s[0].digest(&key("none", 0)).await.unwrap();
    put(&s[0], &k, 2, 0, Mutation::Trim(MAX)).await;
    assert_eq!(s[0].digest(&k).await.unwrap(), (3, missing.1));
}

#[tokio::test]
async fn export_import_roundtrip_replaces_object() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        ObjStore::open(d1.path(), MAX).unwrap(),
        ObjStore::open(d2.path(), MAX).unwrap(),
    );
    let k = key("ex", 4);
    put(&a, &k, 0, 4096, Mutation::Data(pattern(10, 2 * 4096))).await;
    put(&a, &k, 1, 9 * 4096 + 5, Mutation::Data(pattern(11, 3))).await;
    let img = a.export(&k).await.unwrap();
    assert_eq!(img.version, 2);
    assert_eq!(
        img.chunks.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 9]
    );
    assert!(img.chunks.iter().all(|c| c.1.len() == CHUNK_SIZE));
    // The target has other content, longer, at another version: all of it is replaced.
    put(&b, &k, 0, 0, Mutation::Data(pattern(12, MAX as usize))).await;
    put(&b, &k, 1, 0, Mutation::Zero(1)).await;
    put(&b, &k, 2, 0, Mutation::Zero(1)).await;
    b.import(&k, img.clone()).await.unwrap();
    assert_eq!(
        b.read(&k, 0, MAX).await.unwrap(),
        a.read(&k, 0, MAX).await.unwrap()
    );
    assert_eq!(b.info(&k), a.info(&k));
    assert_eq!(b.export(&k).await.unwrap(), img);
    assert_eq!(
        fs::metadata(obj_path(d2.path(), &k)).unwrap().len(),
        10 * 4096
    );
    // Writes continue from the imported version.
    assert_eq!(
        b.write(op(&k, 2, 0, Mutation::Zero(1))).await.unwrap(),
        WriteOutcome::Applied
    );
    // Importing what a replica without the object exports removes it.
    let none = a.export(&key("nothing", 0)).await.unwrap();
    assert_eq!(none, ObjectImage::default());
    b.import(&k, none).await.unwrap();
    assert_eq!(b.info(&k), None);
    assert!(!obj_path(d2.path(), &k).exists());
}

#[tokio::test]
async fn remove_and_remove_image() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    for n in 0..5 {
        put(
            &s,
            &key("gone", n),
            0,
            0,
            Mutation::Data(pattern(n as u8, 100)),
        )
        .await;
    }
    let keep = key("gone2", 0);
    put(&s, &keep, 0, 0, Mutation::Data(pattern(1, 100))).await;
    let other_pool = ObjectKey {
        pool: 2,
        ..key("gone", 0)
    };
    put(&s, &other_pool, 0, 0, Mutation::Data(pattern(1, 100))).await;

    s.remove(&key("gone", 4)).await.unwrap();
    s.remove(&key("gone", 4)).await.unwrap();
    assert_eq!(s.info(&key("gone", 4)), None);
    assert!(!obj_path(d.path(), &key("gone", 4)).exists());
    assert_eq!(
        s.read(&key("gone", 4), 0, 100).await.unwrap(),
        (0, Bytes::from(vec![0u8; 100]))
    );
    assert_eq!(s.remove_image(1, "gone").await.unwrap(), 4);
    assert_eq!(s.remove_image(1, "gone").await.unwrap(), 0);
    for n in 0..5 {
        assert!(!obj_path(d.path(), &key("gone", n)).exists());
    }
    assert_eq!(
        s.list_all().into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
        vec![keep.clone(), other_pool.clone()]
    );
    // A removed object starts again from version 0, without its old bytes.
    put(&s, &key("gone", 0), 0, 50, Mutation::Data(pattern(2, 10))).await;
    let mut want = vec![0u8; 100];
    want[50..60].copy_from_slice(&pattern(2, 10));
    assert_eq!(
        s.read(&key("gone", 0), 0, 100).await.unwrap(),
        (1, Bytes::from(want))
    );
    drop(s);
    let s = ObjStore::open(d.path(), MAX).unwrap();
    assert_eq!(s.list_all().len(), 3);
    assert_eq!(s.stats().used_bytes, 3 * 4096);
}

#[tokio::test]
async fn remove_then_write_in_one_batch() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let k = key("rw", 0);
    put(&s, &k, 0, 0, Mutation::Data(pattern(1, 3 * 4096))).await;
    // Queued back to back, so most likely one batch; correct either way.
    let r = s.remove(&k);
    let w = s.write(op(&k, 0, 4096 + 10, Mutation::Data(pattern(2, 10))));
    let (r, w) = tokio::join!(r, w);
    r.unwrap();
    assert_eq!(w.unwrap(), WriteOutcome::Applied);
    let mut want = vec![0u8; 3 * 4096];
    want[4106..4116].copy_from_slice(&pattern(2, 10));
    assert_eq!(
        s.read(&k, 0, 3 * 4096).await.unwrap(),
        (1, Bytes::from(want))
    );
    assert!(obj_path(d.path(), &k).exists());
    assert_eq!(s.info(&k).unwrap().used_bytes, 4096);
}

#[tokio::test]
async fn orphan_files_are_swept_at_open() {
    let d = tempfile::tempdir().unwrap();
    let k = key("orphan", 1);
    {
        let s = ObjStore::open(d.path(), MAX).unwrap();
        put(&s, &key("kept", 0), 0, 0, Mutation::Data(pattern(1, 10))).await;
    }
    fs::write(obj_path(d.path(), &k), b"stale").unwrap();
    let stray = d.path().join("objects/1/not-an-object");
    fs::write(&stray, b"x").unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    assert!(!obj_path(d.path(), &k).exists());
    assert!(stray.exists());
    assert!(obj_path(d.path(), &key("kept", 0)).exists());
    assert_eq!(
        s.read(&k, 0, 5).await.unwrap(),
        (0, Bytes::from(vec![0u8; 5]))
    );
}

#[tokio::test]
async fn writes_apply_in_call_order() {
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let k = key("order", 0);
    let futs: Vec<_> = (0..20u64)
        .map(|v| s.write(op(&k, v, v * 100, Mutation::Data(pattern(v as u8, 150)))))
        .collect();
    // Polled in reverse: the queue order is still the call order.
    for f in futs.into_iter().rev() {
        assert_eq!(f.await.unwrap(), WriteOutcome::Applied);
    }
    let mut model = vec![0u8; 2100];
    for v in 0..20usize {
        model[v * 100..v * 100 + 150].copy_from_slice(&pattern(v as u8, 150));
    }
    assert_eq!(s.read(&k, 0, 2100).await.unwrap(), (20, Bytes::from(model)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_group_committed() {
    let d = tempfile::tempdir().unwrap();
    let s = Arc::new(ObjStore::open(d.path(), 4 << 20).unwrap());
    let tasks: Vec<_> = (0..64u64)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move {
                let k = key("conc", n);
                for v in 0..4u64 {
                    let m = Mutation::Data(pattern((n + v) as u8, 4096 + 100));
                    let outcome = s.write(op(&k, v, v * 8192 + 7, m)).await.unwrap();
                    assert_eq!(outcome, WriteOutcome::Applied);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let commits = s.commits();
    assert!(commits < 64 * 4, "{commits} commits for 256 writes");
    drop(s);
    let s = ObjStore::open(d.path(), 4 << 20).unwrap();
    assert_eq!(s.list(1).len(), 64);
    for n in 0..64u64 {
        let k = key("conc", n);
        for v in 0..4u64 {
            let got = s.read(&k, v * 8192 + 7, 4196).await.unwrap();
            assert_eq!(got, (4, pattern((n + v) as u8, 4196)));
        }
        assert_eq!(s.scrub(&k).await.unwrap(), Vec::<u64>::new());
    }
}

#[derive(Clone, Debug)]
enum LogOp {
    Small {
        obj: u64,
        off: u64,
        len: u64,
        seed: u8,
    },
    Zero {
        obj: u64,
        off: u64,
        len: u64,
    },
    /// Bigger than [`WAL_MAX_OP`]: bypasses the log and checkpoints it synchronously.
    Big {
        obj: u64,
        off: u64,
        seed: u8,
    },
    Checkpoint,
    Reopen,
}

const LOG_MAX: u64 = 2 * WAL_MAX_OP;
const BIG: u64 = WAL_MAX_OP + 4096;

fn log_op() -> impl Strategy<Value = LogOp> {
    let small = (0..3u64, 0..LOG_MAX)
        .prop_flat_map(|(obj, off)| (Just(obj), Just(off), 1..=(LOG_MAX - off).min(9000)));
    prop_oneof![
        4 => (small.clone(), any::<u8>())
            .prop_map(|((obj, off, len), seed)| LogOp::Small { obj, off, len, seed }),
        1 => small.prop_map(|(obj, off, len)| LogOp::Zero { obj, off, len }),
        1 => (0..3u64, 0..=(LOG_MAX - BIG), any::<u8>())
            .prop_map(|(obj, off, seed)| LogOp::Big { obj, off, seed }),
        1 => Just(LogOp::Checkpoint),
        1 => Just(LogOp::Reopen),
    ]
}

async fn check_log_model(s: &ObjStore, model: &[(u64, Vec<u8>)]) {
    for (obj, (v, bytes)) in model.iter().enumerate() {
        let k = key("logmodel", obj as u64);
        let (got_v, got) = s.read(&k, 0, LOG_MAX).await.unwrap();
        assert_eq!(got_v, *v, "object {obj} version");
        assert!(got[..] == bytes[..], "object {obj} content differs");
        assert!(s.scrub(&k).await.unwrap().is_empty(), "object {obj} scrub");
    }
}

/// Logged small writes, direct big writes, background checkpoints and reopens (each a replay)
/// in random order, against a byte-vector model: after every reopen every object reads back
/// exactly, at its version, with every CRC right — metadata rebuilt from the log included.
#[test]
fn log_checkpoints_and_reopens_match_a_model() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(&prop::collection::vec(log_op(), 1..32), |ops| {
            rt.block_on(async {
                let d = tempfile::tempdir().unwrap();
                let mut s = ObjStore::open(d.path(), LOG_MAX).unwrap();
                let mut model = vec![(0u64, vec![0u8; LOG_MAX as usize]); 3];
                for o in &ops {
                    let (obj, off, m) = match *o {
                        LogOp::Small {
                            obj,
                            off,
                            len,
                            seed,
                        } => (obj, off, Mutation::Data(pattern(seed, len as usize))),
                        LogOp::Zero { obj, off, len } => (obj, off, Mutation::Zero(len)),
                        LogOp::Big { obj, off, seed } => {
                            (obj, off, Mutation::Data(pattern(seed, BIG as usize)))
                        }
                        LogOp::Checkpoint => {
                            checkpoint_once(&s.inner, true);
                            continue;
                        }
                        LogOp::Reopen => {
                            drop(s);
                            s = ObjStore::open(d.path(), LOG_MAX).unwrap();
                            check_log_model(&s, &model).await;
                            continue;
                        }
                    };
                    let (v, bytes) = &mut model[obj as usize];
                    let range = off as usize..(off + m.span()) as usize;
                    match &m {
                        Mutation::Data(data) => bytes[range].copy_from_slice(data),
                        _ => bytes[range].fill(0),
                    }
                    let k = key("logmodel", obj);
                    put(&s, &k, *v, off, m).await;
                    *v += 1;
                }
                drop(s);
                let s = ObjStore::open(d.path(), LOG_MAX).unwrap();
                check_log_model(&s, &model).await;
            });
            Ok(())
        })
        .unwrap();
}

#[derive(Clone, Debug)]
enum ModelOp {
    Data {
        off: u64,
        len: u64,
        seed: u8,
        zeros: bool,
    },
    Zero {
        off: u64,
        len: u64,
    },
    Trim {
        off: u64,
        len: u64,
    },
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let range = (0..MAX).prop_flat_map(|off| (Just(off), 0..=(MAX - off).min(3 * 4096 + 100)));
    prop_oneof![
        3 => (range.clone(), any::<u8>(), prop::bool::weighted(0.15))
            .prop_map(|((off, len), seed, zeros)| ModelOp::Data { off, len, seed, zeros }),
        1 => range.clone().prop_map(|(off, len)| ModelOp::Zero { off, len }),
        1 => range.prop_map(|(off, len)| ModelOp::Trim { off, len }),
    ]
}

/// Random write/zero/trim sequences against a `Vec<u8>` model. One store serves every case
/// (each case gets its own object) because opening a redb database costs ~0.1 s in debug
/// builds; it is reopened at the end to check every case's object survived.
#[test]
fn matches_a_byte_vector_model() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let s = ObjStore::open(d.path(), MAX).unwrap();
    let finals = Mutex::new(Vec::new());
    let mut runner = TestRunner::new(Config::with_cases(32));
    let strategy = prop::collection::vec(model_op(), 1..24);
    runner
        .run(&strategy, |ops| {
            let k = key("model", finals.lock().unwrap().len() as u64);
            let model = rt.block_on(run_model(&s, &k, &ops));
            finals.lock().unwrap().push((k, ops.len() as u64, model));
            Ok(())
        })
        .unwrap();
    drop(s);
    let s = ObjStore::open(d.path(), MAX).unwrap();
    rt.block_on(async {
        for (k, n, model) in finals.into_inner().unwrap() {
            assert_eq!(s.read(&k, 0, MAX).await.unwrap(), (n, Bytes::from(model)));
        }
    });
}

async fn run_model(s: &ObjStore, k: &ObjectKey, ops: &[ModelOp]) -> Vec<u8> {
    let mut model = vec![0u8; MAX as usize];
    let mut pending = Vec::new();
    for (v, o) in ops.iter().enumerate() {
        let (off, m) = match o {
            ModelOp::Data {
                off,
                len,
                seed,
                zeros,
            } => {
                let data = if *zeros {
                    Bytes::from(vec![0u8; *len as usize])
                } else {
                    pattern(*seed, *len as usize)
                };
                model[*off as usize..(*off + *len) as usize].copy_from_slice(&data);
                (*off, Mutation::Data(data))
            }
            ModelOp::Zero { off, len } => {
                model[*off as usize..(*off + *len) as usize].fill(0);
                (*off, Mutation::Zero(*len))
            }
            ModelOp::Trim { off, len } => {
                model[*off as usize..(*off + *len) as usize].fill(0);
                (*off, Mutation::Trim(*len))
            }
        };
        let w = s.write(op(k, v as u64, off, m));
        if v < ops.len() / 2 {
            // Committed one by one, checked after each.
            assert_eq!(w.await.unwrap(), WriteOutcome::Applied);
            let ro = off.saturating_sub(5000);
            let rl = 12000.min(MAX - ro);
            let (_, got) = s.read(k, ro, rl).await.unwrap();
            assert_eq!(&got[..], &model[ro as usize..(ro + rl) as usize]);
        } else {
            // Queued without waiting: these share batches, so later ops must see earlier
            // uncommitted ones.
            pending.push(w);
        }
    }
    for w in pending {
        assert_eq!(w.await.unwrap(), WriteOutcome::Applied);
    }
    let n = ops.len() as u64;
    assert_eq!(
        s.read(k, 0, MAX).await.unwrap(),
        (n, Bytes::from(model.clone()))
    );
    let used = model.chunks(CHUNK_SIZE).filter(|c| !is_zero(c)).count() as u64 * CS;
    assert_eq!(
        s.info(k),
        Some(ObjInfo {
            version: n,
            used_bytes: used
        })
    );
    assert_eq!(s.scrub(k).await.unwrap(), Vec::<u64>::new());
    model
}
