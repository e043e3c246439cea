//! Structurally broken or non-file DAGs must be reported, never read as
//! truncated or padded files.

use super::*;

fn file(data: Option<&[u8]>, filesize: Option<u64>, blocksizes: Vec<u64>) -> UnixfsData {
    UnixfsData {
        kind: DataType::File,
        data: data.map(Bytes::copy_from_slice),
        filesize,
        blocksizes,
    }
}

fn dir() -> UnixfsData {
    UnixfsData {
        kind: DataType::Directory,
        data: None,
        filesize: None,
        blocksizes: vec![],
    }
}

async fn read(blocks: &[Block], root: &Block) -> Result<Vec<u8>, ReadError> {
    let mut src = MemSource::new(blocks);
    src.insert(root.clone());
    read_all(Arc::new(src), root.cid, 0, None).await
}

fn assert_corrupt(r: Result<Vec<u8>, ReadError>, needle: &str) {
    match r {
        Err(ReadError::Corrupt(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected Corrupt({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn blocksize_disagrees_with_child() {
    let a = raw_block(b"abcd");
    let b = raw_block(b"efgh");
    // Parent claims the second child has 5 bytes (and sums consistently).
    let root = pb_block(
        0,
        vec![(a.cid, 4), (b.cid, 4)],
        Some(file(None, Some(9), vec![4, 5])),
    );
    assert_corrupt(read(&[a, b], &root).await, "declared 5");
}

#[tokio::test]
async fn filesize_disagrees_with_blocksizes() {
    let a = raw_block(b"abcd");
    let root = pb_block(0, vec![(a.cid, 4)], Some(file(None, Some(5), vec![4])));
    assert_corrupt(read(&[a], &root).await, "filesize");
    assert!(matches!(
        node_kind(&root.cid, &root.data),
        Err(UnixfsError::Malformed(_))
    ));
}

#[tokio::test]
async fn link_count_disagrees_with_blocksizes() {
    let a = raw_block(b"abcd");
    let root = pb_block(0, vec![(a.cid, 4)], Some(file(None, Some(8), vec![4, 4])));
    assert_corrupt(read(&[a], &root).await, "blocksizes");
}

#[tokio::test]
async fn dag_pb_leaf_size_mismatch() {
    let leaf = pb_block(0, vec![], Some(file(Some(b"xyz"), Some(3), vec![])));
    let root = pb_block(0, vec![(leaf.cid, 9)], Some(file(None, Some(4), vec![4])));
    assert_corrupt(read(&[leaf], &root).await, "declared 4");
}

#[tokio::test]
async fn directory_root_is_not_a_file() {
    let d = pb_block(0, vec![], Some(dir()));
    match read(&[], &d).await {
        Err(ReadError::NotAFile(c)) => assert_eq!(c, d.cid),
        other => panic!("{other:?}"),
    }
    let src = MemSource::new(std::slice::from_ref(&d));
    assert!(matches!(
        file_size(&src, &d.cid).await,
        Err(ReadError::NotAFile(_))
    ));
    let kind = node_kind(&d.cid, &d.data).unwrap();
    assert_eq!(kind, NodeKind::Directory);
    assert!(kind.is_directory() && !kind.is_file());
}

#[tokio::test]
async fn directory_inside_file_is_corrupt() {
    let d = pb_block(0, vec![], Some(dir()));
    let root = pb_block(0, vec![(d.cid, 4)], Some(file(None, Some(0), vec![0])));
    // Zero-sized children are skipped, so declare one byte to force a visit.
    let root2 = pb_block(0, vec![(d.cid, 4)], Some(file(None, Some(1), vec![1])));
    assert_eq!(read(std::slice::from_ref(&d), &root).await.unwrap(), b"");
    assert_corrupt(read(&[d], &root2).await, "Directory node where file data");
}

#[tokio::test]
async fn other_codecs() {
    let cbor = Block {
        cid: cid_for(b"\xa0", 1, 0x71).unwrap(),
        data: Bytes::from_static(b"\xa0"),
    };
    assert!(matches!(
        read(&[], &cbor).await,
        Err(ReadError::NotAFile(_))
    ));
    assert!(matches!(
        node_kind(&cbor.cid, &cbor.data),
        Err(UnixfsError::UnsupportedCodec(0x71))
    ));
    let root = pb_block(0, vec![(cbor.cid, 1)], Some(file(None, Some(1), vec![1])));
    assert_corrupt(read(&[cbor], &root).await, "codec 0x71");
}

#[tokio::test]
async fn symlink_and_hamt_kinds() {
    for (t, want) in [
        (DataType::Symlink, NodeKind::Other(DataType::Symlink)),
        (DataType::HamtShard, NodeKind::Other(DataType::HamtShard)),
    ] {
        let b = pb_block(1, vec![], Some(UnixfsData { kind: t, ..dir() }));
        assert_eq!(node_kind(&b.cid, &b.data).unwrap(), want);
        assert!(matches!(read(&[], &b).await, Err(ReadError::NotAFile(_))));
    }
    assert!(NodeKind::Other(DataType::HamtShard).is_directory());
}

#[tokio::test]
async fn undecodable_blocks() {
    let no_data = pb_block(0, vec![], None);
    assert_corrupt(read(&[], &no_data).await, "without UnixFS data");
    let junk = Block {
        cid: cid_for(b"\xff\xff", 0, DAG_PB).unwrap(),
        data: Bytes::from_static(b"\xff\xff"),
    };
    assert_corrupt(read(&[], &junk).await, "malformed");
}

#[tokio::test]
async fn missing_block_after_partial_output() {
    let data: Vec<u8> = (0..40).collect();
    let (blocks, root) = add_bytes(&data, opts(0, false, 10, 174));
    let mut src = MemSource::new(&blocks);
    let third = blocks[2].cid;
    src.remove(&third);
    let mut s = read_range(Arc::new(src), root.cid, 0, None);
    let mut got = Vec::new();
    let err = loop {
        match s.next().await.expect("error before end") {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, ReadError::NotFound(c) if c == third));
    assert_eq!(
        got,
        &data[..20],
        "the two leaves before the hole are delivered"
    );
    assert!(s.next().await.is_none(), "stream ends after an error");
}

#[tokio::test]
async fn missing_root() {
    let c = cid_for(b"nope", 1, RAW).unwrap();
    let src: Arc<dyn BlockSource> = Arc::new(MemSource::default());
    assert!(matches!(
        read_all(src.clone(), c, 0, Some(0)).await,
        Err(ReadError::NotFound(_))
    ));
    assert!(matches!(
        file_size(&*src, &c).await,
        Err(ReadError::NotFound(_))
    ));
}

#[tokio::test]
async fn legacy_raw_type_and_data_plus_links() {
    // Old writers used UnixFS type Raw for leaves, and a node may carry
    // bytes of its own before its children's.
    let leaf = pb_block(
        0,
        vec![],
        Some(UnixfsData {
            kind: DataType::Raw,
            data: Some(Bytes::from_static(b"tail")),
            filesize: None,
            blocksizes: vec![],
        }),
    );
    let root = pb_block(
        0,
        vec![(leaf.cid, 10)],
        Some(file(Some(b"head-"), None, vec![4])),
    );
    assert_eq!(read(&[leaf], &root).await.unwrap(), b"head-tail");
    assert_eq!(
        node_kind(&root.cid, &root.data).unwrap(),
        NodeKind::File { size: 9 }
    );
}
