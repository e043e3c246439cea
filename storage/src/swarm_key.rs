//! The private-network key, in the IPFS pnet file format, and the message authentication built on it.
//!
//! libp2p's pnet wraps every TCP connection in a cipher keyed by the swarm key. Bulwark's node-to-node
//! traffic is plain HTTP instead, so that sidecars can proxy, observe and fault it; the swarm key
//! therefore authenticates each peer request *and* each response with an HMAC. A node without the same
//! key can neither make a request a peer accepts nor accept a peer's answer. Confidentiality on the wire
//! is left to the transport (loopback, WireGuard or TLS between hosts); see docs/storage.md.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

const HEADER_PSK: &str = "/key/swarm/psk/1.0.0/";
const HEADER_BASE16: &str = "/base16/";

#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    #[error("swarm key: first line must be {HEADER_PSK:?}, found {0:?}")]
    BadHeader(String),
    #[error("swarm key: only the {HEADER_BASE16:?} encoding is supported, found {0:?}")]
    BadEncoding(String),
    #[error("swarm key: expected 64 hex digits (32 bytes), found {0}")]
    BadKey(String),
    #[error("swarm key: cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A 32-byte pre-shared key. Debug and Display print only its fingerprint, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey {
    key: [u8; 32],
}

impl SwarmKey {
    pub fn generate() -> Self {
        Self {
            key: rand::random(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, SwarmKeyError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let header = lines.next().unwrap_or_default();
        if header != HEADER_PSK {
            return Err(SwarmKeyError::BadHeader(header.to_string()));
        }
        let enc = lines.next().unwrap_or_default();
        if enc != HEADER_BASE16 {
            return Err(SwarmKeyError::BadEncoding(enc.to_string()));
        }
        let hexkey = lines.next().unwrap_or_default();
        let bytes = hex::decode(hexkey).map_err(|e| SwarmKeyError::BadKey(format!("{e}")))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| SwarmKeyError::BadKey(format!("{} bytes", b.len())))?;
        Ok(Self { key })
    }

    pub fn load(path: &Path) -> Result<Self, SwarmKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| SwarmKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The file format Kubo and IPFS Cluster read.
    pub fn to_file_format(&self) -> String {
        format!("{HEADER_PSK}\n{HEADER_BASE16}\n{}\n", hex::encode(self.key))
    }

    /// A short, non-reversible name for the key, safe to log, so operators can tell two keys apart.
    pub fn fingerprint(&self) -> String {
        let d = Sha256::digest([b"bulwark-swarm-key-fingerprint:".as_slice(), &self.key].concat());
        hex::encode(&d[..4])
    }

    /// MAC over the given parts, separated so that no two part lists produce the same input.
    pub fn mac(&self, parts: &[&[u8]]) -> String {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        hex::encode(m.finalize().into_bytes())
    }

    /// Constant-time check of a MAC produced by [`SwarmKey::mac`].
    pub fn verify(&self, parts: &[&[u8]], mac_hex: &str) -> bool {
        let Ok(given) = hex::decode(mac_hex) else {
            return false;
        };
        let mut m = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.verify_slice(&given).is_ok()
    }
}

impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SwarmKey(fingerprint {})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_pnet_format() {
        let k = SwarmKey::generate();
        let text = k.to_file_format();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "/key/swarm/psk/1.0.0/");
        assert_eq!(lines[1], "/base16/");
        assert_eq!(lines[2].len(), 64);
        assert!(lines[2].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(SwarmKey::parse(&text).unwrap(), k);
    }

    #[test]
    fn rejects_malformed_keys() {
        assert!(matches!(
            SwarmKey::parse("nope"),
            Err(SwarmKeyError::BadHeader(_))
        ));
        assert!(matches!(
            SwarmKey::parse("/key/swarm/psk/1.0.0/\n/base64/\nabc"),
            Err(SwarmKeyError::BadEncoding(_))
        ));
        assert!(matches!(
            SwarmKey::parse("/key/swarm/psk/1.0.0/\n/base16/\nabcd"),
            Err(SwarmKeyError::BadKey(_))
        ));
        assert!(matches!(
            SwarmKey::parse(&format!(
                "/key/swarm/psk/1.0.0/\n/base16/\n{}",
                "zz".repeat(32)
            )),
            Err(SwarmKeyError::BadKey(_))
        ));
    }

    #[test]
    fn macs_depend_on_key_and_part_boundaries() {
        let a = SwarmKey::generate();
        let b = SwarmKey::generate();
        let m = a.mac(&[b"ab", b"c"]);
        assert!(a.verify(&[b"ab", b"c"], &m));
        assert!(!a.verify(&[b"a", b"bc"], &m));
        assert!(!b.verify(&[b"ab", b"c"], &m));
        assert!(!a.verify(&[b"ab", b"c"], "not hex"));
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
