//! The balanced layout's shape, checked against a reference model on small
//! chunk sizes and fan-outs so many leaf counts are cheap to cover.

use super::*;

#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Leaf,
    Node(Vec<Shape>),
}

/// Kubo's layout stated directly: depth is the smallest d with
/// max_links^d >= leaves, and each child takes as many leaves as a full
/// subtree of depth d-1 holds, left to right.
fn expected(leaves: u64, max_links: u64) -> Shape {
    let mut depth = 0;
    let mut cap = 1u64;
    while cap < leaves {
        cap *= max_links;
        depth += 1;
    }
    fn build(leaves: u64, depth: u32, max_links: u64) -> Shape {
        if depth == 0 {
            assert_eq!(leaves, 1);
            return Shape::Leaf;
        }
        let per_child = max_links.pow(depth - 1);
        let mut children = Vec::new();
        let mut left = leaves;
        while left > 0 {
            let n = left.min(per_child);
            children.push(build(n, depth - 1, max_links));
            left -= n;
        }
        Shape::Node(children)
    }
    build(leaves, depth, max_links)
}

/// Walks the emitted blocks, checking sizes on the way: `blocksizes` must be
/// the children's file sizes and `Tsize` their cumulative sizes.
fn actual(blocks: &HashMap<Cid, Bytes>, cid: &Cid) -> (Shape, u64, u64) {
    let data = &blocks[cid];
    if cid.codec() == RAW {
        return (Shape::Leaf, data.len() as u64, data.len() as u64);
    }
    let node = decode_dag_pb(data).unwrap();
    let unixfs = decode_unixfs(node.data.as_ref().unwrap()).unwrap();
    assert_eq!(unixfs.kind, DataType::File);
    if node.links.is_empty() {
        let size = unixfs.data.as_ref().map_or(0, |d| d.len() as u64);
        assert_eq!(unixfs.filesize, Some(size));
        assert!(unixfs.blocksizes.is_empty());
        return (Shape::Leaf, size, data.len() as u64);
    }
    assert!(unixfs.data.is_none(), "internal nodes carry no file bytes");
    let mut children = Vec::new();
    let mut cumulative = data.len() as u64;
    let mut file_size = 0;
    for (link, &bs) in node.links.iter().zip(&unixfs.blocksizes) {
        assert_eq!(link.name.as_deref(), Some(""));
        let (shape, size, cum) = actual(blocks, &link.cid);
        assert_eq!(bs, size);
        assert_eq!(link.tsize, Some(cum));
        children.push(shape);
        file_size += size;
        cumulative += cum;
    }
    assert_eq!(unixfs.blocksizes.len(), node.links.len());
    assert_eq!(unixfs.filesize, Some(file_size));
    (Shape::Node(children), file_size, cumulative)
}

fn check_shape(len: usize, o: AddOptions) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
    let (blocks, root) = add_bytes(&data, o);
    check_blocks(&blocks, &root);
    let map: HashMap<Cid, Bytes> = blocks.iter().map(|b| (b.cid, b.data.clone())).collect();
    let (shape, size, cumulative) = actual(&map, &root.cid);
    let leaves = len.div_ceil(o.chunk_size).max(1) as u64;
    assert_eq!(
        shape,
        expected(leaves, o.max_links as u64),
        "len {len} {o:?}"
    );
    assert_eq!(size, len as u64);
    assert_eq!(cumulative, root.cumulative_size);
}

#[test]
fn shape_matches_model_for_many_leaf_counts() {
    for max_links in [2, 3, 4] {
        for leaves in 1..=70 {
            for (v, raw) in [(0, false), (1, true), (1, false)] {
                check_shape(leaves * 3, opts(v, raw, 3, max_links));
            }
        }
    }
}

#[test]
fn trailing_partial_subtree_keeps_full_depth() {
    // The Kubo example, scaled down: max_links+1 leaves give a root with a
    // full node and a one-leaf node, not a root with a bare leaf.
    let o = opts(0, false, 1, 174);
    let (blocks, root) = add_bytes(&[7u8; 175], o);
    let map: HashMap<Cid, Bytes> = blocks.iter().map(|b| (b.cid, b.data.clone())).collect();
    let (shape, _, _) = actual(&map, &root.cid);
    let Shape::Node(top) = shape else {
        panic!("root must be a node")
    };
    assert_eq!(top.len(), 2);
    assert_eq!(top[1], Shape::Node(vec![Shape::Leaf]));
}

#[test]
fn clamps_nonsense_options() {
    let o = opts(9, false, 0, 0);
    assert!(o.validate().is_err());
    let (blocks, root) = add_bytes(b"abc", o);
    check_blocks(&blocks, &root);
    assert_eq!(root.cid.version(), cid::Version::V1);
    assert_eq!(root.file_size, 3);
}
