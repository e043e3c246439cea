//! The sweep at open of object files without metadata.

use super::{check_image, Index, ObjError};
use crate::block::ObjectKey;
use std::fs;
use std::path::Path;

/// Inverse of [`ObjectKey::name`] for a file in pool directory `pool`.
pub(crate) fn parse_object_file(pool: u32, name: &str) -> Option<ObjectKey> {
    let n = name.len();
    if n < 18 || name.as_bytes()[n - 17] != b'.' {
        return None;
    }
    let hex = &name[n - 16..];
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let key = ObjectKey {
        pool,
        image: name[..n - 17].to_string(),
        objno: u64::from_str_radix(hex, 16).ok()?,
    };
    check_image(&key.image).ok()?;
    Some(key)
}

/// Deletes object files without metadata: left by a crash between a removal's commit and its
/// unlink, or by a batch whose commit failed.
pub(crate) fn sweep(objects_dir: &Path, index: &Index) -> Result<(), ObjError> {
    for pool in fs::read_dir(objects_dir)? {
        let pool = pool?;
        let Some(pool_no) = pool
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if !pool.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(pool.path())? {
            let f = f?;
            let Some(key) = f
                .file_name()
                .to_str()
                .and_then(|n| parse_object_file(pool_no, n))
            else {
                continue;
            };
            if !index.map.contains_key(&key) {
                tracing::info!(pool = pool_no, object = %key.name(), "deleting orphan object file");
                fs::remove_file(f.path())?;
            }
        }
    }
    Ok(())
}
