//! CID construction, verification and parsing of user-supplied CID strings.

use cid::multihash::Multihash;
use cid::Version;
use sha2::{Digest, Sha256};

use super::{Cid, UnixfsError, DAG_PB, IDENTITY, SHA2_256};

pub(crate) fn sha256_multihash(data: &[u8]) -> Multihash<64> {
    let digest = Sha256::digest(data);
    Multihash::wrap(SHA2_256, &digest).expect("32-byte digest fits in 64")
}

/// Version 0 only exists for dag-pb with sha2-256, hence the codec check.
pub fn cid_for(data: &[u8], version: u8, codec: u64) -> Result<Cid, UnixfsError> {
    let mh = sha256_multihash(data);
    match version {
        0 if codec == DAG_PB => Ok(Cid::new_v0(mh).expect("sha2-256 is valid for v0")),
        0 => Err(UnixfsError::BadOptions(format!(
            "CIDv0 requires codec dag-pb (0x70), got 0x{codec:x}"
        ))),
        1 => Ok(Cid::new_v1(codec, mh)),
        other => Err(UnixfsError::BadOptions(format!(
            "unknown CID version: {other}"
        ))),
    }
}

/// Truncated sha2-256 digests are treated as mismatches: Kubo never makes
/// them and accepting them would weaken what the CID guarantees.
pub fn verify_block(cid: &Cid, data: &[u8]) -> Result<(), UnixfsError> {
    let mh = cid.hash();
    let ok = match mh.code() {
        SHA2_256 => mh.digest() == Sha256::digest(data).as_slice(),
        IDENTITY => mh.digest() == data,
        other => return Err(UnixfsError::UnsupportedHash(other)),
    };
    if ok {
        return Ok(());
    }
    let actual_mh = match mh.code() {
        SHA2_256 => sha256_multihash(data),
        // An identity digest longer than 64 bytes cannot be built; any stand-in
        // will do since the message is only informative.
        _ => Multihash::wrap(IDENTITY, data).unwrap_or_else(|_| sha256_multihash(data)),
    };
    let actual = Cid::new(cid.version(), cid.codec(), actual_mh)
        .unwrap_or_else(|_| Cid::new_v1(cid.codec(), actual_mh));
    Err(UnixfsError::HashMismatch {
        expected: Box::new(*cid),
        actual: Box::new(actual),
    })
}

/// Accepts what `ipfs cat` accepts for a single file: a bare CID or
/// `/ipfs/<cid>` (optionally with one trailing slash).
pub fn parse_cid_path(s: &str) -> Result<Cid, UnixfsError> {
    let input = s.trim();
    let invalid = |reason: &str| {
        UnixfsError::InvalidCid(format!("invalid path {input:?}: invalid cid: {reason}"))
    };
    let token = if let Some(rest) = input.strip_prefix('/') {
        let mut parts = rest.splitn(2, '/');
        let namespace = parts.next().unwrap_or_default();
        let after = parts.next();
        if namespace != "ipfs" {
            return Err(UnixfsError::PathUnsupported(input.to_owned()));
        }
        let after = after.unwrap_or_default();
        let (cid_part, sub) = after.split_once('/').unwrap_or((after, ""));
        if cid_part.is_empty() {
            return Err(invalid("empty cid"));
        }
        if !sub.is_empty() {
            // Validate the CID first so a typo is reported as such rather
            // than as an unsupported sub-path.
            parse_cid_str(cid_part).map_err(|r| invalid(&r))?;
            return Err(UnixfsError::PathUnsupported(input.to_owned()));
        }
        cid_part
    } else {
        input
    };
    parse_cid_str(token).map_err(|r| invalid(&r))
}

fn parse_cid_str(s: &str) -> Result<Cid, String> {
    if s.is_empty() {
        return Err("empty cid".into());
    }
    let bytes = if Version::is_v0_str(s) {
        multibase::Base::Base58Btc
            .decode(s)
            .map_err(|e| format!("{e}"))?
    } else if s.starts_with("Qm") {
        return Err(format!("CIDv0 must be 46 characters, got {}", s.len()));
    } else {
        multibase::decode(s).map_err(|e| format!("{e}"))?.1
    };
    let cid = Cid::try_from(bytes.as_slice()).map_err(|e| e.to_string())?;
    if cid.encoded_len() != bytes.len() {
        return Err("trailing bytes after cid".into());
    }
    Ok(cid)
}
