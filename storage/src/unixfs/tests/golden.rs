//! CIDs produced by Kubo's `ipfs add`, reproduced byte for byte.

use super::*;

fn v0() -> AddOptions {
    AddOptions::default()
}

fn v1() -> AddOptions {
    AddOptions::kubo(1, None).unwrap()
}

/// The 1 MiB-chunk, 1024-link, CIDv1 configuration of the last vectors.
fn v1_mib() -> AddOptions {
    opts(1, true, 1 << 20, 1024)
}

fn add_checked(data: &[u8], o: AddOptions, want: &str) -> (Vec<Block>, FileRoot) {
    let (blocks, root) = add_bytes(data, o);
    assert_eq!(root.cid.to_string(), want, "len {} opts {o:?}", data.len());
    assert_eq!(root.file_size, data.len() as u64);
    check_blocks(&blocks, &root);
    (blocks, root)
}

/// The same input fed in awkward pieces must yield the same blocks.
fn same_when_streamed(data: &[u8], o: AddOptions, piece: usize, expected: &[Block]) {
    let (blocks, root) = add_in_pieces(data, o, piece);
    assert_eq!(root.cid, expected.last().unwrap().cid, "piece {piece}");
    let got: Vec<Cid> = blocks.iter().map(|b| b.cid).collect();
    let want: Vec<Cid> = expected.iter().map(|b| b.cid).collect();
    assert_eq!(got, want, "piece {piece}");
}

#[test]
fn hello_world_newline() {
    let (_, root) = add_checked(
        b"hello world\n",
        v0(),
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
    );
    assert_eq!(root.cumulative_size, 20);
    add_checked(
        b"hello world\n",
        v1(),
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
    );
}

#[test]
fn hello_world() {
    add_checked(
        b"hello world",
        v0(),
        "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD",
    );
    add_checked(
        b"hello world",
        v1(),
        "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
    );
}

#[test]
fn dsadsad() {
    let (_, root) = add_checked(
        b"dsadsad\n",
        v0(),
        "QmQcCtMgLVwvMQGu6mvsRYLjwqrZJcYtH4mboM9urWW9vX",
    );
    assert_eq!(root.cumulative_size, 16);
    add_checked(
        b"dsadsad\n",
        v1(),
        "bafkreiatrjkbyc7fz4ain4lpdv7els2cr7h55bjzrg6pg2oo2sf47hmmum",
    );
}

#[test]
fn empty_file() {
    let (blocks, _) = add_checked(b"", v0(), "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH");
    assert_eq!(blocks.len(), 1);
    assert_eq!(&blocks[0].data[..], &[0x0a, 0x04, 0x08, 0x02, 0x18, 0x00]);
    add_checked(
        b"",
        v1(),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    );
    // Pushing nothing at all is the same as pushing an empty slice.
    let (blocks, root) = FileBuilder::new(v0()).finish();
    assert_eq!(
        root.cid.to_string(),
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    );
    assert_eq!(blocks.len(), 1);
}

#[test]
fn exactly_one_chunk() {
    let data = seeded("chunk-v0-seed", CHUNK);
    let (blocks, _) = add_checked(data, v0(), "QmWmRj3dFDZdb6ABvbmKhEL6TmPbAfBZ1t5BxsEyJrcZhE");
    assert_eq!(
        blocks.len(),
        1,
        "one full chunk must not grow an empty second leaf"
    );
    add_checked(
        data,
        v1(),
        "bafkreid33n22tcydu7pk2egzkyq4phh5mjwhyf6son6zggnlnlyi3257um",
    );
}

#[test]
fn one_chunk_plus_one_byte_any_piece_size() {
    let data = seeded("chunk-v0-seed", CHUNK + 1);
    for (o, want) in [
        (v0(), "QmYyLxtzZyW22zpoVAtKANLRHpDjZtNeDjQdJrcQNWoRkJ"),
        (
            v1(),
            "bafybeibyui7o3sbw3yifnewshhrbnuntcehluzvbkwgi5vmtsdobnc2c6y",
        ),
    ] {
        let (blocks, _) = add_checked(data, o, want);
        assert_eq!(blocks.len(), 3);
        for piece in [1, 7, 100_000, CHUNK, CHUNK + 1] {
            same_when_streamed(data, o, piece, &blocks);
        }
    }
}

#[test]
fn full_single_level_174_chunks() {
    let data = seeded("v0-seed", 174 * CHUNK);
    for (o, want) in [
        (v0(), "QmUbBALi174SnogsUzLpYbD4xPiBSFANF4iztWCsHbMKh2"),
        (
            v1(),
            "bafybeidajp2ewrtxcagm2u3qstbk2kw5srzbu7g7oraqepajpgumviz3z4",
        ),
    ] {
        let (blocks, _) = add_checked(data, o, want);
        assert_eq!(blocks.len(), 175);
        same_when_streamed(data, o, 100_000, &blocks);
    }
}

#[test]
fn two_levels_174_chunks_plus_one_byte() {
    let data = seeded("v0-seed", 174 * CHUNK + 1);
    for (o, want, piece) in [
        (
            v0(),
            "QmV81WL765sC8DXsRhE5fJv2rwhS4icHRaf3J9Zk5FdRnW",
            100_000,
        ),
        (
            v1(),
            "bafybeifr472xiwfk53w5s7bayijk3lq2go6ocqqcfch6ygy5qwza5hkdl4",
            7,
        ),
    ] {
        let (blocks, _) = add_checked(data, o, want);
        // 175 leaves, two depth-1 nodes, one root.
        assert_eq!(blocks.len(), 178);
        same_when_streamed(data, o, piece, &blocks);
    }
}

#[test]
fn mebibyte_chunks_1024_links() {
    let data = seeded("chunk-v1-seed", 1 << 20);
    add_checked(
        data,
        v1_mib(),
        "bafkreiacndfy443ter6qr2tmbbdhadvxxheowwf75s6zehscklu6ezxmta",
    );
    let data = seeded("chunk-v1-seed", (1 << 20) + 1);
    let (blocks, _) = add_checked(
        data,
        v1_mib(),
        "bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64",
    );
    same_when_streamed(data, v1_mib(), 7, &blocks);
}

#[test]
fn raw_leaves_under_v0_use_v1_leaves() {
    // Kubo: a single raw leaf is the root, so the "v0" add yields a v1 CID.
    let o = AddOptions::kubo(0, Some(true)).unwrap();
    add_checked(
        b"hello world\n",
        o,
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
    );
    let data = seeded("chunk-v0-seed", CHUNK + 1);
    let (blocks, root) = add_bytes(data, o);
    check_blocks(&blocks, &root);
    assert_eq!(root.cid.version(), cid::Version::V0);
    for leaf in &blocks[..2] {
        assert_eq!(leaf.cid.codec(), RAW);
        assert_eq!(leaf.cid.version(), cid::Version::V1);
    }
}

#[test]
fn v1_without_raw_leaves_wraps_same_bytes_as_v0() {
    let o = AddOptions::kubo(1, Some(false)).unwrap();
    let (blocks, root) = add_bytes(b"hello world\n", o);
    check_blocks(&blocks, &root);
    let v0_root = add_bytes(b"hello world\n", v0()).1;
    assert_eq!(root.cid.version(), cid::Version::V1);
    assert_eq!(root.cid.codec(), DAG_PB);
    assert_eq!(root.cid.hash(), v0_root.cid.hash());
    assert_eq!(root.cumulative_size, 20);
}
