//! Multipart uploads for `add` (Kubo RPC and Cluster REST share it).

use super::error::ApiError;
use crate::ingest::Ingest;
use crate::node::Node;
use crate::unixfs::{AddOptions, FileRoot};
use axum::extract::Multipart;
use std::sync::Arc;

pub struct Added {
    pub name: String,
    pub root: FileRoot,
}

/// Adds every file part of the body. Nothing is stored unless the whole body is well-formed and
/// within `limits.max_add_bytes`: each file commits only after its last byte, and a later broken part
/// fails the request (blocks of earlier complete files are kept, content-addressed and harmless,
/// but nothing is pinned).
pub async fn ingest_multipart(
    node: &Arc<Node>,
    mut mp: Multipart,
    opts: AddOptions,
    only_hash: bool,
) -> Result<Vec<Added>, ApiError> {
    let mut done: Vec<(String, Ingest)> = Vec::new();
    let mut budget = node.cfg.limits.max_add_bytes;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::bad(format!(
                    "malformed multipart body: {}",
                    e.body_text()
                )))
            }
        };
        let ctype = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_string();
        if ctype == "application/x-directory" || ctype == "application/symlink" {
            return Err(ApiError::new(
                super::error::Kind::NotImplemented,
                format!("{ctype} parts are not supported: add files one by one"),
            ));
        }
        let name = field
            .file_name()
            .or(field.name())
            .map(percent_decode)
            .unwrap_or_default();
        let mut ing = Ingest::new(node, opts, only_hash, budget)?;
        let mut field = field;
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    if let Err(e) = ing.write(&c) {
                        let left = drain_field(&mut field, DRAIN_LIMIT).await;
                        drop(field);
                        drain_rest(&mut mp, left).await;
                        return Err(e.into());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ApiError::bad(format!(
                        "malformed multipart body: {}",
                        e.body_text()
                    )))
                }
            }
        }
        budget -= ing.bytes();
        done.push((name, ing));
    }
    if done.is_empty() {
        return Err(ApiError::missing_file("path"));
    }
    let mut out = Vec::new();
    for (name, ing) in done {
        let root = ing.finish(node).await?;
        out.push(Added { name, root });
    }
    Ok(out)
}

/// Most of a refused upload read and discarded before answering, so the client gets to read our
/// error instead of a connection reset in the middle of its send. Beyond it, the connection closes.
const DRAIN_LIMIT: u64 = 64 << 20;

/// Discards the rest of a field, at most `left` bytes; returns what is left of the allowance.
async fn drain_field(field: &mut axum::extract::multipart::Field<'_>, mut left: u64) -> u64 {
    while left > 0 {
        match field.chunk().await {
            Ok(Some(c)) => left = left.saturating_sub(c.len() as u64),
            _ => break,
        }
    }
    left
}

async fn drain_rest(mp: &mut Multipart, mut left: u64) {
    while left > 0 {
        let Ok(Some(mut f)) = mp.next_field().await else {
            return;
        };
        left = drain_field(&mut f, left).await;
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kubo-style add options from query parameters.
pub fn add_options(
    cid_version: Option<&str>,
    raw_leaves: Option<&str>,
    chunker: Option<&str>,
    hash: Option<&str>,
) -> Result<AddOptions, ApiError> {
    let v = match cid_version {
        None | Some("") => 0,
        Some(s) => s
            .parse::<u8>()
            .map_err(|_| ApiError::bad(format!("invalid cid-version {s:?}")))?,
    };
    let raw = match raw_leaves {
        None | Some("") => None,
        Some(s) => Some(parse_bool("raw-leaves", s)?),
    };
    let mut opts = AddOptions::kubo(v, raw)?;
    match chunker {
        None | Some("") => {}
        Some(c) => {
            let size = c
                .strip_prefix("size-")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0 && *n <= 1 << 20)
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "chunker {c:?} is not supported: use size-N with N ≤ 1048576"
                    ))
                })?;
            opts.chunk_size = size;
        }
    }
    match hash {
        None | Some("") | Some("sha2-256") => {}
        Some(h) => {
            return Err(ApiError::bad(format!(
                "hash function {h:?} is not supported: only sha2-256"
            )))
        }
    }
    Ok(opts)
}

/// Go's `strconv.ParseBool` spellings (what Kubo accepts; Python clients send `True`/`False`), and an
/// empty value as true, as a bare `?flag` means.
pub fn parse_bool(name: &str, s: &str) -> Result<bool, ApiError> {
    match s {
        "" | "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ApiError::bad(format!(
            "invalid value for option {name:?}: {s:?} (want true or false)"
        ))),
    }
}
