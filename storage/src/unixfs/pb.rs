//! Hand-written protobuf for the two tiny schemas UnixFS needs.
//!
//! A generated codec would not help much: hashes depend on exact byte layout
//! (dag-pb writes field 2 before field 1, empty link names are still
//! emitted), so the encoder has to be spelled out anyway. The dag-pb decoder
//! follows go-codec-dagpb's strictness, because accepting a non-canonical
//! block would let two different byte strings describe "the same" node.
//! The UnixFS decoder is lenient like ordinary protobuf (unknown fields
//! skipped, packed or unpacked `blocksizes`) because newer writers add
//! fields such as `mode` and `mtime`.

use std::ops::Range;

use bytes::Bytes;

use super::{Cid, UnixfsError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbLink {
    pub cid: Cid,
    /// `Some("")` and `None` encode differently; Kubo writes `Some("")`.
    pub name: Option<String>,
    pub tsize: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbNode {
    pub links: Vec<PbLink>,
    pub data: Option<Bytes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Raw = 0,
    Directory = 1,
    File = 2,
    Metadata = 3,
    Symlink = 4,
    HamtShard = 5,
}

impl TryFrom<u64> for DataType {
    type Error = UnixfsError;

    fn try_from(v: u64) -> Result<Self, UnixfsError> {
        Ok(match v {
            0 => DataType::Raw,
            1 => DataType::Directory,
            2 => DataType::File,
            3 => DataType::Metadata,
            4 => DataType::Symlink,
            5 => DataType::HamtShard,
            other => return Err(malformed(format!("unknown UnixFS type {other}"))),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixfsData {
    pub kind: DataType,
    pub data: Option<Bytes>,
    pub filesize: Option<u64>,
    pub blocksizes: Vec<u64>,
}

fn malformed(msg: impl Into<String>) -> UnixfsError {
    UnixfsError::Malformed(msg.into())
}

const WT_VARINT: u8 = 0;
const WT_FIXED64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_FIXED32: u8 = 5;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u8) {
    put_varint(out, (field << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, WT_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_uint(out: &mut Vec<u8>, field: u64, v: u64) {
    put_key(out, field, WT_VARINT);
    put_varint(out, v);
}

/// Bounds-checked cursor; every read returns an error instead of panicking
/// so arbitrary (untrusted, possibly fuzzed) input is safe.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, UnixfsError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| malformed("truncated varint"))?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(malformed("varint overflows u64"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(malformed("varint overflows u64"))
    }

    fn key(&mut self) -> Result<(u64, u8), UnixfsError> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(malformed("field number 0"));
        }
        Ok((field, (k & 7) as u8))
    }

    /// Returns the position range of a length-delimited payload.
    fn len_delimited(&mut self) -> Result<Range<usize>, UnixfsError> {
        let len = self.varint()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if len > remaining {
            return Err(malformed("length-delimited field runs past end"));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(start..self.pos)
    }

    fn skip(&mut self, wire_type: u8) -> Result<(), UnixfsError> {
        let n = match wire_type {
            WT_VARINT => return self.varint().map(drop),
            WT_LEN => return self.len_delimited().map(drop),
            WT_FIXED64 => 8,
            WT_FIXED32 => 4,
            other => return Err(malformed(format!("unsupported wire type {other}"))),
        };
        if self.buf.len() - self.pos < n {
            return Err(malformed("truncated fixed-width field"));
        }
        self.pos += n;
        Ok(())
    }
}

fn expect_wire(got: u8, want: u8, what: &str) -> Result<(), UnixfsError> {
    if got != want {
        return Err(malformed(format!(
            "{what}: wire type {got}, expected {want}"
        )));
    }
    Ok(())
}

/// Canonical dag-pb: all links, then data.
pub fn encode_dag_pb(node: &PbNode) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(node.data.as_ref().map_or(0, |d| d.len() + 10) + node.links.len() * 50);
    let mut link_buf = Vec::with_capacity(64);
    for link in &node.links {
        link_buf.clear();
        put_bytes(&mut link_buf, 1, &link.cid.to_bytes());
        if let Some(name) = &link.name {
            put_bytes(&mut link_buf, 2, name.as_bytes());
        }
        if let Some(tsize) = link.tsize {
            put_uint(&mut link_buf, 3, tsize);
        }
        put_bytes(&mut out, 2, &link_buf);
    }
    if let Some(data) = &node.data {
        put_bytes(&mut out, 1, data);
    }
    out
}

pub fn decode_dag_pb(bytes: &[u8]) -> Result<PbNode, UnixfsError> {
    decode_dag_pb_shared(&Bytes::copy_from_slice(bytes))
}

/// Like [`decode_dag_pb`] but `data` borrows from `block`, so readers can
/// hand out file bytes without copying them.
pub(crate) fn decode_dag_pb_shared(block: &Bytes) -> Result<PbNode, UnixfsError> {
    let mut cur = Cursor::new(block);
    let mut links = Vec::new();
    let mut data = None;
    while !cur.at_end() {
        let (field, wt) = cur.key()?;
        match field {
            1 => {
                expect_wire(wt, WT_LEN, "PBNode.Data")?;
                if data.is_some() {
                    return Err(malformed("duplicate PBNode.Data"));
                }
                data = Some(block.slice(cur.len_delimited()?));
            }
            2 => {
                expect_wire(wt, WT_LEN, "PBNode.Links")?;
                if data.is_some() {
                    return Err(malformed("PBNode.Links after Data"));
                }
                let range = cur.len_delimited()?;
                links.push(decode_link(&block[range])?);
            }
            other => return Err(malformed(format!("unknown PBNode field {other}"))),
        }
    }
    Ok(PbNode { links, data })
}

fn decode_link(buf: &[u8]) -> Result<PbLink, UnixfsError> {
    let mut cur = Cursor::new(buf);
    let mut cid = None;
    let mut name = None;
    let mut tsize = None;
    // Fields must appear at most once and in ascending order.
    let mut last_field = 0;
    while !cur.at_end() {
        let (field, wt) = cur.key()?;
        if field <= last_field {
            return Err(malformed("PBLink fields duplicated or out of order"));
        }
        last_field = field;
        match field {
            1 => {
                expect_wire(wt, WT_LEN, "PBLink.Hash")?;
                let raw = &buf[cur.len_delimited()?];
                cid = Some(cid_from_exact_bytes(raw)?);
            }
            2 => {
                expect_wire(wt, WT_LEN, "PBLink.Name")?;
                let raw = &buf[cur.len_delimited()?];
                let s =
                    std::str::from_utf8(raw).map_err(|_| malformed("PBLink.Name is not UTF-8"))?;
                name = Some(s.to_owned());
            }
            3 => {
                expect_wire(wt, WT_VARINT, "PBLink.Tsize")?;
                tsize = Some(cur.varint()?);
            }
            other => return Err(malformed(format!("unknown PBLink field {other}"))),
        }
    }
    let cid = cid.ok_or_else(|| malformed("PBLink without Hash"))?;
    Ok(PbLink { cid, name, tsize })
}

/// The cid crate silently ignores trailing bytes; a link hash with junk after
/// the CID is not canonical, so reject it.
pub(crate) fn cid_from_exact_bytes(raw: &[u8]) -> Result<Cid, UnixfsError> {
    let cid = Cid::try_from(raw).map_err(|e| malformed(format!("invalid CID in link: {e}")))?;
    if cid.encoded_len() != raw.len() {
        return Err(malformed("trailing bytes after CID in link"));
    }
    Ok(cid)
}

/// Field order (Type, Data, filesize, blocksizes) and unpacked
/// `blocksizes` match go-unixfs, which is what Kubo hashes.
pub fn encode_unixfs(d: &UnixfsData) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.data.as_ref().map_or(0, |b| b.len()) + 16);
    put_uint(&mut out, 1, d.kind as u64);
    if let Some(data) = &d.data {
        put_bytes(&mut out, 2, data);
    }
    if let Some(fs) = d.filesize {
        put_uint(&mut out, 3, fs);
    }
    for &bs in &d.blocksizes {
        put_uint(&mut out, 4, bs);
    }
    out
}

pub fn decode_unixfs(bytes: &[u8]) -> Result<UnixfsData, UnixfsError> {
    decode_unixfs_shared(&Bytes::copy_from_slice(bytes))
}

pub(crate) fn decode_unixfs_shared(buf: &Bytes) -> Result<UnixfsData, UnixfsError> {
    let mut cur = Cursor::new(buf);
    let mut kind = None;
    let mut data = None;
    let mut filesize = None;
    let mut blocksizes = Vec::new();
    while !cur.at_end() {
        let (field, wt) = cur.key()?;
        match field {
            1 => {
                expect_wire(wt, WT_VARINT, "UnixFS.Type")?;
                kind = Some(DataType::try_from(cur.varint()?)?);
            }
            2 => {
                expect_wire(wt, WT_LEN, "UnixFS.Data")?;
                data = Some(buf.slice(cur.len_delimited()?));
            }
            3 => {
                expect_wire(wt, WT_VARINT, "UnixFS.filesize")?;
                filesize = Some(cur.varint()?);
            }
            4 if wt == WT_VARINT => blocksizes.push(cur.varint()?),
            4 if wt == WT_LEN => {
                let range = cur.len_delimited()?;
                let mut packed = Cursor::new(&buf[range]);
                while !packed.at_end() {
                    blocksizes.push(packed.varint()?);
                }
            }
            4 => expect_wire(wt, WT_VARINT, "UnixFS.blocksizes")?,
            _ => cur.skip(wt)?,
        }
    }
    let kind = kind.ok_or_else(|| malformed("UnixFS Data without Type"))?;
    Ok(UnixfsData {
        kind,
        data,
        filesize,
        blocksizes,
    })
}
