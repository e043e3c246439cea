//! dag-pb and UnixFS protobuf encoding/decoding.

use super::*;

fn some_cid() -> Cid {
    cid_for(b"x", 1, RAW).unwrap()
}

#[test]
fn empty_file_block_decodes() {
    let node = decode_dag_pb(&[0x0a, 0x04, 0x08, 0x02, 0x18, 0x00]).unwrap();
    assert!(node.links.is_empty());
    let u = decode_unixfs(node.data.as_ref().unwrap()).unwrap();
    assert_eq!(
        u,
        UnixfsData {
            kind: DataType::File,
            data: None,
            filesize: Some(0),
            blocksizes: vec![]
        }
    );
}

#[test]
fn link_layout_and_round_trip() {
    let c = some_cid();
    let node = PbNode {
        links: vec![
            PbLink {
                cid: c,
                name: Some(String::new()),
                tsize: Some(300),
            },
            PbLink {
                cid: c,
                name: None,
                tsize: None,
            },
            PbLink {
                cid: c,
                name: Some("ünï".into()),
                tsize: Some(0),
            },
        ],
        data: Some(Bytes::new()),
    };
    let bytes = encode_dag_pb(&node);
    let cid_bytes = c.to_bytes();
    // Links first; the empty name is still written as `12 00`.
    let mut first = vec![
        0x12,
        (2 + cid_bytes.len() + 2 + 3) as u8,
        0x0a,
        cid_bytes.len() as u8,
    ];
    first.extend_from_slice(&cid_bytes);
    first.extend_from_slice(&[0x12, 0x00, 0x18, 0xac, 0x02]);
    assert_eq!(&bytes[..first.len()], &first[..]);
    assert_eq!(&bytes[bytes.len() - 2..], &[0x0a, 0x00]);
    assert_eq!(decode_dag_pb(&bytes).unwrap(), node);

    let bare = PbNode {
        links: vec![],
        data: None,
    };
    assert!(encode_dag_pb(&bare).is_empty());
    assert_eq!(decode_dag_pb(&[]).unwrap(), bare);
}

#[test]
fn unixfs_layout() {
    let u = UnixfsData {
        kind: DataType::File,
        data: None,
        filesize: Some(300),
        blocksizes: vec![200, 100],
    };
    let bytes = encode_unixfs(&u);
    assert_eq!(
        bytes,
        [0x08, 0x02, 0x18, 0xac, 0x02, 0x20, 0xc8, 0x01, 0x20, 0x64]
    );
    assert_eq!(decode_unixfs(&bytes).unwrap(), u);
}

#[test]
fn unixfs_accepts_packed_blocksizes_and_unknown_fields() {
    let bytes = [
        0x08, 0x02, // Type File
        0x22, 0x03, 0xc8, 0x01, 0x64, // packed blocksizes [200, 100]
        0x38, 0xa4, 0x03, // mode 0o644
        0x42, 0x02, 0x08, 0x01, // mtime {Seconds: 1}
        0x18, 0xac, 0x02, // filesize 300
    ];
    let u = decode_unixfs(&bytes).unwrap();
    assert_eq!(u.blocksizes, vec![200, 100]);
    assert_eq!(u.filesize, Some(300));
}

#[test]
fn unixfs_rejects() {
    for (bytes, why) in [
        (&[0x18, 0x01][..], "missing type"),
        (&[0x08, 0x09], "unknown type"),
        (&[0x08], "truncated"),
        (&[0x08, 0x02, 0x12, 0x05, 0x00], "data past end"),
        (&[0x08, 0x02, 0x1b], "group wire type"),
        (&[0x0a, 0x00], "type as bytes"),
        (&[0x08, 0x02, 0x21, 0x00], "blocksize as fixed64"),
    ] {
        assert!(decode_unixfs(bytes).is_err(), "{why}");
    }
}

#[test]
fn dag_pb_rejects_malformed() {
    let c = some_cid().to_bytes();
    let link_with = |inner: &[u8]| {
        let mut v = vec![0x12, inner.len() as u8];
        v.extend_from_slice(inner);
        v
    };
    let hash_field = {
        let mut v = vec![0x0a, c.len() as u8];
        v.extend_from_slice(&c);
        v
    };
    let mut trailing = vec![0x0a, c.len() as u8 + 1];
    trailing.extend_from_slice(&c);
    trailing.push(0);
    let mut name_first = vec![0x12, 0x00];
    name_first.extend_from_slice(&hash_field);
    let mut bad_utf8 = hash_field.clone();
    bad_utf8.extend_from_slice(&[0x12, 0x01, 0xff]);
    let mut dup_hash = hash_field.clone();
    dup_hash.extend_from_slice(&hash_field);
    let mut tsize_bytes = hash_field.clone();
    tsize_bytes.extend_from_slice(&[0x1a, 0x00]);

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x0a], "truncated length"),
        (vec![0x0a, 0x05, 0x01], "data past end"),
        (vec![0x1a, 0x00], "unknown field 3"),
        (vec![0x08, 0x01], "data as varint"),
        (vec![0x02, 0x00], "field 0"),
        (vec![0x0a, 0x00, 0x0a, 0x00], "duplicate data"),
        (
            [vec![0x0a, 0x00], link_with(&hash_field)].concat(),
            "links after data",
        ),
        (link_with(&[]), "link without hash"),
        (link_with(&[0x12, 0x00]), "link with only a name"),
        (link_with(&trailing), "trailing bytes after cid"),
        (link_with(&[0x0a, 0x02, 0x01, 0x55]), "truncated cid"),
        (link_with(&name_first), "name before hash"),
        (link_with(&bad_utf8), "invalid utf-8 name"),
        (link_with(&dup_hash), "duplicate hash"),
        (link_with(&tsize_bytes), "tsize as bytes"),
        (vec![0x12, 0x05, 0x0a], "link past end"),
        (
            vec![
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            "varint overflow",
        ),
        (
            vec![
                0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
            "11-byte varint",
        ),
    ];
    for (bytes, why) in cases {
        match decode_dag_pb(&bytes) {
            Err(UnixfsError::Malformed(_)) => {}
            other => panic!("{why}: {other:?}"),
        }
    }
}

/// Random and mutated inputs must never panic, and anything that decodes
/// must survive an encode/decode cycle unchanged.
#[test]
fn fuzzish_never_panics() {
    let mut rng = Rng(99);
    let (blocks, _) = add_bytes(&[1u8; 100], opts(0, false, 10, 3));
    let seeds: Vec<Vec<u8>> = blocks.iter().map(|b| b.data.to_vec()).collect();
    for i in 0..20_000 {
        let input: Vec<u8> = if i % 2 == 0 {
            let len = rng.below(48) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        } else {
            let mut v = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..=rng.below(3) {
                match rng.below(3) {
                    0 if !v.is_empty() => {
                        let at = rng.below(v.len() as u64) as usize;
                        v[at] ^= 1 << rng.below(8);
                    }
                    1 => v.truncate(rng.below(v.len() as u64 + 1) as usize),
                    _ => {
                        let at = rng.below(v.len() as u64 + 1) as usize;
                        v.insert(at, rng.next_u64() as u8);
                    }
                }
            }
            v
        };
        if let Ok(node) = decode_dag_pb(&input) {
            let again = decode_dag_pb(&encode_dag_pb(&node)).expect("re-encoding decodes");
            assert_eq!(again, node);
        }
        let _ = decode_unixfs(&input);
        let cid = cid_for(&input, 0, DAG_PB).unwrap();
        let _ = node_kind(&cid, &input);
    }
}
