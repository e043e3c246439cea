//! The identity of the running build: its version and the SHA-256 of the executable it was started
//! from. A canary rollout compares builds by digest (the version alone does not change between two
//! builds of one commit with different code), so every node reports it in `id`, `version` and
//! `peers ls`, and tells its peers in every greeting.
//!
//! The digest is computed once, when the daemon starts: a binary replaced on disk afterwards (a
//! promotion installs the new build under the same path) must not change what the running process
//! reports about itself.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// The `storage` crate version this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a build says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildIdentity {
    pub version: &'static str,
    /// Lower-case hex SHA-256 of the executable (64 digits), as `sha256sum` prints it; empty when
    /// the executable could not be read (the reason is logged once).
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("cannot locate the running executable: {0}")]
    Locate(std::io::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// This process's build identity, computed on first use and never again.
pub fn identity() -> &'static BuildIdentity {
    static ID: OnceLock<BuildIdentity> = OnceLock::new();
    ID.get_or_init(|| {
        let digest = match current_exe_digest() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "binary digest unavailable; `version` reports it empty");
                String::new()
            }
        };
        BuildIdentity {
            version: VERSION,
            digest,
        }
    })
}

/// SHA-256 of the running executable. On Linux `/proc/self/exe` is read first: it names the
/// loaded file even if the path was replaced or removed since the process started.
pub fn current_exe_digest() -> Result<String, DigestError> {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        if let Ok(d) = file_digest(proc_exe) {
            return Ok(d);
        }
    }
    let exe = std::env::current_exe().map_err(DigestError::Locate)?;
    file_digest(&exe)
}

/// SHA-256 of a file, lower-case hex, read in 1 MiB pieces (binaries are hundreds of MiB in debug
/// builds; reading them whole would double the daemon's memory at start).
pub fn file_digest(path: &Path) -> Result<String, DigestError> {
    let err = |source| DigestError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_sha256_hex() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            file_digest(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(matches!(
            file_digest(&dir.path().join("missing")),
            Err(DigestError::Read { .. })
        ));
    }

    #[test]
    fn identity_is_computed_once_and_is_64_hex() {
        let a = identity();
        assert_eq!(a.version, VERSION);
        assert_eq!(a.digest.len(), 64);
        assert!(a.digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(std::ptr::eq(a, identity()));
    }
}
