//! Replica operations between nodes: a batch of small JSON headers followed by the raw payloads,
//! `[u32 LE header length][JSON headers][payload 0][payload 1]…`, in both directions.
//!
//! Why batches: at queue depth 16 a coordinator has many object operations in flight to the same
//! peer; sending them as one authenticated HTTP exchange (through two sidecars) costs one request's
//! overhead instead of sixteen. Why not JSON for data: base64 would double the bytes and the CPU.

use super::ObjectKey;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MutKind {
    Data,
    Zero,
    Trim,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpReq {
    /// Payload: the data when `kind` is `data`.
    Write {
        key: ObjectKey,
        expect: u64,
        new: u64,
        offset: u64,
        kind: MutKind,
        len: u64,
    },
    Read {
        key: ObjectKey,
        offset: u64,
        len: u64,
    },
    Version {
        key: ObjectKey,
    },
    Export {
        key: ObjectKey,
    },
    /// Payload: `chunks.len()` chunks of `CHUNK_SIZE` bytes. Applied only if the replica's version
    /// is older than `version` (recovery never rolls a replica back).
    Import {
        key: ObjectKey,
        version: u64,
        chunks: Vec<u64>,
        /// Replace even at an equal or newer version: repairs a corrupt or divergent replica.
        #[serde(default)]
        force: bool,
    },
    Remove {
        key: ObjectKey,
    },
    Digest {
        key: ObjectKey,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum OpResp {
    Applied,
    AlreadyApplied,
    Stale {
        have: u64,
    },
    Conflict {
        have: u64,
    },
    /// Payload: the bytes read.
    Data {
        version: u64,
    },
    Version {
        version: u64,
    },
    /// Payload: the chunks, in the order of `chunks`.
    Exported {
        version: u64,
        chunks: Vec<u64>,
    },
    Imported {
        applied: bool,
        have: u64,
    },
    Removed,
    Digest {
        version: u64,
        digest: String,
    },
    /// The replica's copy failed its checksum: never served, to be repaired.
    Corrupt {
        msg: String,
    },
    Error {
        msg: String,
    },
}

/// Encodes headers and payloads (an empty `Bytes` for none).
pub fn encode<T: Serialize>(items: &[(T, Bytes)]) -> Vec<u8> {
    let headers: Vec<&T> = items.iter().map(|(h, _)| h).collect();
    let json = serde_json::to_vec(&headers).expect("headers serialize");
    let payload: usize = items.iter().map(|(_, b)| b.len()).sum();
    let mut out = BytesMut::with_capacity(4 + json.len() + payload);
    out.put_u32_le(json.len() as u32);
    out.put_slice(&json);
    for (_, b) in items {
        out.put_slice(b);
    }
    out.to_vec()
}

#[derive(Debug, thiserror::Error)]
#[error("malformed block operation batch: {0}")]
pub struct WireError(pub String);

/// Decodes a batch; `payload_len` says how many payload bytes each header carries.
pub fn decode<T: for<'de> Deserialize<'de>>(
    mut body: Bytes,
    mut payload_len: impl FnMut(&T) -> usize,
) -> Result<Vec<(T, Bytes)>, WireError> {
    if body.len() < 4 {
        return Err(WireError("shorter than its header length".into()));
    }
    let n = body.get_u32_le() as usize;
    if n > body.len() {
        return Err(WireError(format!(
            "header length {n} exceeds the body ({})",
            body.len()
        )));
    }
    let json = body.split_to(n);
    let headers: Vec<T> =
        serde_json::from_slice(&json).map_err(|e| WireError(format!("headers: {e}")))?;
    let mut out = Vec::with_capacity(headers.len());
    for h in headers {
        let l = payload_len(&h);
        if l > body.len() {
            return Err(WireError(format!(
                "payload of {l} bytes missing (only {} left)",
                body.len()
            )));
        }
        let p = body.split_to(l);
        out.push((h, p));
    }
    if !body.is_empty() {
        return Err(WireError(format!("{} trailing bytes", body.len())));
    }
    Ok(out)
}

pub fn req_payload_len(r: &OpReq) -> usize {
    match r {
        OpReq::Write {
            kind: MutKind::Data,
            len,
            ..
        } => *len as usize,
        OpReq::Import { chunks, .. } => chunks.len() * super::CHUNK_SIZE,
        _ => 0,
    }
}

/// Response payload sizes depend on the request they answer (reads), so the decoder is told them.
pub fn resp_payload_len(req: &OpReq, r: &OpResp) -> usize {
    match (req, r) {
        (OpReq::Read { len, .. }, OpResp::Data { .. }) => *len as usize,
        (_, OpResp::Exported { chunks, .. }) => chunks.len() * super::CHUNK_SIZE,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey {
            pool: 1,
            image: "abc".into(),
            objno: 7,
        }
    }

    #[test]
    fn batches_round_trip_and_bad_input_is_refused() {
        let items = vec![
            (
                OpReq::Write {
                    key: key(),
                    expect: 1,
                    new: 2,
                    offset: 4096,
                    kind: MutKind::Data,
                    len: 3,
                },
                Bytes::from_static(b"xyz"),
            ),
            (OpReq::Version { key: key() }, Bytes::new()),
        ];
        let enc = encode(&items);
        let dec = decode::<OpReq>(Bytes::from(enc.clone()), req_payload_len).unwrap();
        assert_eq!(dec.len(), 2);
        assert_eq!(&dec[0].1[..], b"xyz");
        assert!(
            decode::<OpReq>(Bytes::from(enc[..enc.len() - 1].to_vec()), req_payload_len).is_err()
        );
        let mut extra = enc.clone();
        extra.push(0);
        assert!(decode::<OpReq>(Bytes::from(extra), req_payload_len).is_err());
        assert!(
            decode::<OpReq>(Bytes::from_static(b"\xff\xff\xff\xff{}"), req_payload_len).is_err()
        );
        assert!(decode::<OpReq>(Bytes::from_static(b"\x01"), req_payload_len).is_err());
    }
}
