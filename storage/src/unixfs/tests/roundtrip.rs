//! Build → read back, whole files and ranges.

use super::*;

fn source(blocks: &[Block]) -> Arc<MemSource> {
    Arc::new(MemSource::new(blocks))
}

async fn check_ranges(src: Arc<MemSource>, root: Cid, data: &[u8], rng: &mut Rng, n: usize) {
    let len = data.len() as u64;
    let mut ranges = vec![
        (0, None),
        (0, Some(0)),
        (0, Some(1)),
        (len.saturating_sub(1), None),
        (len, None),
        (len + 10, Some(5)),
        (0, Some(len + 1000)),
        (1, Some(u64::MAX)),
    ];
    for _ in 0..n {
        let off = rng.below(len + 2);
        let l = match rng.below(3) {
            0 => None,
            1 => Some(rng.below(len + 2)),
            _ => Some(rng.below(64)),
        };
        ranges.push((off, l));
    }
    for (off, l) in ranges {
        let got = read_all(src.clone(), root, off, l).await.unwrap();
        assert!(got == slice_of(data, off, l), "range {off}+{l:?} of {len}");
    }
}

#[tokio::test]
async fn sizes_around_chunk_boundaries_small_chunks() {
    let mut rng = Rng(1);
    let chunk = 16;
    let mut sizes: Vec<usize> = (0..=80).collect();
    for k in [4, 16, 64, 65] {
        for d in [-1i64, 0, 1] {
            sizes.push((k * chunk as i64 + d) as usize);
        }
    }
    for len in sizes {
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        for (v, raw) in [(0, false), (1, true), (0, true)] {
            let o = opts(v, raw, chunk, 4);
            let (blocks, root) = add_bytes(&data, o);
            check_blocks(&blocks, &root);
            let src = source(&blocks);
            assert_eq!(file_size(&*src, &root.cid).await.unwrap(), len as u64);
            let kind = node_kind(&root.cid, &blocks.last().unwrap().data).unwrap();
            assert!(kind.is_file());
            check_ranges(src, root.cid, &data, &mut rng, 10).await;
        }
    }
}

#[tokio::test]
async fn kubo_sizes_around_chunk_boundaries() {
    let mut rng = Rng(2);
    let data = seeded("v0-seed", 3 * CHUNK + 1);
    for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 1] {
        let data = &data[..len];
        for o in [AddOptions::default(), AddOptions::kubo(1, None).unwrap()] {
            let (blocks, root) = add_bytes(data, o);
            let src = source(&blocks);
            assert_eq!(file_size(&*src, &root.cid).await.unwrap(), len as u64);
            check_ranges(src, root.cid, data, &mut rng, 5).await;
        }
    }
}

#[tokio::test]
async fn three_level_dag_small_chunks() {
    let mut rng = Rng(3);
    let data: Vec<u8> = (0..5000).map(|_| rng.next_u64() as u8).collect();
    // 5000 / 10 = 500 leaves with fan-out 5 → depth 4.
    let (blocks, root) = add_bytes(&data, opts(1, true, 10, 5));
    check_ranges(source(&blocks), root.cid, &data, &mut rng, 200).await;
}

/// Full Kubo geometry, 2 levels: whole file, random ranges, and proof that
/// range reads fetch only the blocks on the path to the bytes they need.
#[tokio::test]
async fn two_level_kubo_dag_reads_only_needed_blocks() {
    let data = seeded("v0-seed", 174 * CHUNK + 1);
    let mut rng = Rng(4);
    for o in [AddOptions::default(), AddOptions::kubo(1, None).unwrap()] {
        let (blocks, root) = add_bytes(data, o);
        let src = source(&blocks);
        let dyn_src: Arc<dyn BlockSource> = src.clone();

        let whole = read_all(dyn_src.clone(), root.cid, 0, None).await.unwrap();
        assert!(whole == data);
        assert_eq!(src.take_fetched().len(), blocks.len());

        let last = data.len() as u64 - 1;
        let got = read_all(dyn_src.clone(), root.cid, last, Some(1))
            .await
            .unwrap();
        assert_eq!(got, &data[last as usize..]);
        let fetched = src.take_fetched();
        assert_eq!(fetched.len(), 3, "root, second depth-1 node, last leaf");
        assert_eq!(fetched[0], root.cid);
        let second = &blocks[blocks.len() - 2];
        assert_eq!(fetched[1], second.cid);
        assert_eq!(
            fetched[2],
            decode_dag_pb(&second.data).unwrap().links[0].cid
        );

        // A range straddling two leaves in the first subtree.
        let got = read_all(dyn_src.clone(), root.cid, CHUNK as u64 - 2, Some(4))
            .await
            .unwrap();
        assert_eq!(got, &data[CHUNK - 2..CHUNK + 2]);
        assert_eq!(src.take_fetched().len(), 4);

        assert_eq!(
            file_size(&*src, &root.cid).await.unwrap(),
            data.len() as u64
        );
        assert_eq!(src.take_fetched(), vec![root.cid]);

        check_ranges(src, root.cid, data, &mut rng, 20).await;
    }
}

#[tokio::test]
async fn streams_leaf_by_leaf() {
    let data = seeded("chunk-v0-seed", CHUNK + 1);
    let (blocks, root) = add_bytes(data, AddOptions::default());
    let mut s = read_range(source(&blocks), root.cid, 0, None);
    let mut sizes = Vec::new();
    while let Some(c) = s.next().await {
        sizes.push(c.unwrap().len());
    }
    assert_eq!(sizes, vec![CHUNK, 1]);
}
