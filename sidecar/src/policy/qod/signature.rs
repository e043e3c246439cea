//! Request signatures for canary probing: the same signature for requests that exercise the same
//! code path, literals (CIDs, keys, tenant ids) left out.
//!
//! Two levels (see `docs/sidecar.md`, "Queries of death"):
//! - **coarse**: method, route (class rule), path template (identifier-like segments, and
//!   everything after the first one, become `{}`), the *set* of query parameter names, the set of
//!   header names minus volatile ones, and the content family. It decides "known or unknown".
//! - **fine**: coarse plus size buckets (body, path, query, longest parameter value, segment count)
//!   and value-shape flags (whitespace runs, control characters, non-ASCII, `//`, `..`, …). It is what
//!   gets blacklisted, so one bad shape does not block its whole route.
//!
//! The *known* key is the coarse signature, plus the anomaly flags when any are present: the Stack
//! Exchange outage of 2016 was a post like every other except for 20,000 spaces, so a request that
//! looks odd is probed even when its coarse shape is well known.
//!
//! Hashes are computed without allocating (sets combine by a wrapping sum of per-name hashes, so
//! order does not matter) because every proxied request pays for them; the readable form
//! ([`describe`]) is only built for samples and logs.

use http::{HeaderMap, Method};
use std::fmt::Write as _;

/// Value-shape flags (fine signature), as bits.
pub mod flag {
    /// ≥ 32 consecutive whitespace characters (raw, `+` or `%20`/`%09`) in the path or query.
    pub const WS_RUN: u16 = 1 << 0;
    /// Control characters (raw or percent-encoded below 0x20, or 0x7f).
    pub const CTRL: u16 = 1 << 1;
    /// A percent-encoded NUL.
    pub const NUL: u16 = 1 << 2;
    /// Bytes ≥ 0x80 (raw or percent-encoded).
    pub const NON_ASCII: u16 = 1 << 3;
    /// `//` in the path.
    pub const DOUBLE_SLASH: u16 = 1 << 4;
    /// A `.` or `..` segment in the path.
    pub const DOT_SEGMENT: u16 = 1 << 5;
    /// A path segment or parameter value longer than 1 KiB.
    pub const LONG_VALUE: u16 = 1 << 6;
    /// Percent-encoding anywhere in path or query (common, so not an anomaly).
    pub const PCT: u16 = 1 << 7;
    /// The path ends with `/` (common, not an anomaly).
    pub const TRAILING_SLASH: u16 = 1 << 8;
    /// A header value longer than 4 KiB.
    pub const LONG_HEADER: u16 = 1 << 9;
    /// A multi-range `Range` header.
    pub const MULTI_RANGE: u16 = 1 << 10;

    /// Flags that make a request "unknown" even when its coarse shape is known.
    pub const ANOMALIES: u16 =
        WS_RUN | CTRL | NUL | NON_ASCII | DOUBLE_SLASH | DOT_SEGMENT | LONG_VALUE | LONG_HEADER;

    pub const NAMES: [(u16, &str); 11] = [
        (WS_RUN, "ws_run"),
        (CTRL, "ctrl"),
        (NUL, "nul"),
        (NON_ASCII, "non_ascii"),
        (DOUBLE_SLASH, "double_slash"),
        (DOT_SEGMENT, "dot_segment"),
        (LONG_VALUE, "long_value"),
        (PCT, "pct"),
        (TRAILING_SLASH, "trailing_slash"),
        (LONG_HEADER, "long_header"),
        (MULTI_RANGE, "multi_range"),
    ];
}

const WS_RUN_MIN: usize = 32;
const LONG_VALUE_MIN: usize = 1024;
const LONG_HEADER_MIN: usize = 4096;
/// Path segments hashed into the template; deeper ones only count.
const MAX_SEGMENTS: usize = 16;

/// Headers that vary per request or per hop, not per code path.
const VOLATILE: [&str; 20] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "connection",
    "content-length",
    "cookie",
    "date",
    "host",
    "if-modified-since",
    "if-none-match",
    "keep-alive",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signature {
    pub coarse: u64,
    pub fine: u64,
    pub flags: u16,
}

impl Signature {
    /// The key of the known set: coarse, refined by the anomaly flags when there are any.
    pub fn known_key(&self) -> u64 {
        let a = self.flags & flag::ANOMALIES;
        if a == 0 {
            self.coarse
        } else {
            mix(self.coarse ^ (a as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        }
    }
}

/// 16 hex digits: how signatures appear in headers, logs and the admin API.
pub fn id(sig: u64) -> String {
    format!("{sig:016x}")
}

pub fn parse_id(s: &str) -> Option<u64> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// FNV-1a 64: stable across processes and versions (signatures are persisted and shared).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fnv_lower(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b.to_ascii_lowercase() as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64 finaliser: spreads combined hashes.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn combine(h: u64, part: u64) -> u64 {
    mix(h.rotate_left(5) ^ part)
}

/// CIDs, hashes, numbers, UUIDs: segments that name an instance rather than a code path.
fn is_identifier(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    b.len() >= 16
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

fn log2_bucket(n: usize) -> u64 {
    (usize::BITS - n.leading_zeros()) as u64
}

fn is_volatile(name: &str) -> bool {
    VOLATILE.contains(&name) || name.starts_with("x-bulwark-")
}

/// Content family from `content-type`: the part of it that picks a parser.
fn content_family(h: &HeaderMap) -> &'static str {
    let Some(ct) = h
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return "none";
    };
    let ct = ct.trim_start().as_bytes();
    let starts = |p: &str| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    if starts("multipart/") {
        "multipart"
    } else if starts("application/json") || starts("application/x-ndjson") {
        "json"
    } else if starts("application/x-www-form-urlencoded") {
        "form"
    } else if starts("text/") {
        "text"
    } else if starts("application/octet-stream") || starts("application/vnd.ipld") {
        "binary"
    } else {
        "other"
    }
}

/// Shape of raw (still percent-encoded) path or query text: flags, longest whitespace run.
fn scan(s: &str, flags: &mut u16) {
    let b = s.as_bytes();
    let mut ws = 0usize;
    let mut i = 0;
    while i < b.len() {
        let (c, step) = if b[i] == b'%' && i + 2 < b.len() {
            let hexv = |x: u8| (x as char).to_digit(16);
            match (hexv(b[i + 1]), hexv(b[i + 2])) {
                (Some(h), Some(l)) => {
                    *flags |= flag::PCT;
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        *flags |= flag::NUL;
                    }
                    (v, 3)
                }
                _ => (b[i], 1),
            }
        } else {
            (if b[i] == b'+' { b' ' } else { b[i] }, 1)
        };
        if c == b' ' || c == b'\t' || c == b'\n' || c == b'\r' {
            ws += 1;
            if ws >= WS_RUN_MIN {
                *flags |= flag::WS_RUN;
            }
        } else {
            ws = 0;
        }
        if (c < 0x20 && c != b' ' && c != b'\t') || c == 0x7f {
            *flags |= flag::CTRL;
        }
        if c >= 0x80 {
            *flags |= flag::NON_ASCII;
        }
        i += step;
    }
}

/// The signature of a request on `route` (the class rule it matched).
pub fn of<B>(req: &http::Request<B>, route: &str) -> Signature {
    let mut flags = 0u16;
    let method = req.method();
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");

    // Path template.
    let mut tpl = fnv(path_root(path).as_bytes());
    let mut segs = 0usize;
    let mut longest = 0usize;
    let mut templated = false;
    for seg in path.split('/').skip(1) {
        segs += 1;
        longest = longest.max(seg.len());
        if seg == "." || seg == ".." {
            flags |= flag::DOT_SEGMENT;
        }
        if segs > MAX_SEGMENTS {
            continue;
        }
        templated |= is_identifier(seg);
        let part = if templated {
            0x7b7d
        } else {
            fnv(seg.as_bytes())
        };
        tpl = combine(tpl, part);
    }
    if path.contains("//") {
        flags |= flag::DOUBLE_SLASH;
    }
    if path.len() > 1 && path.ends_with('/') {
        flags |= flag::TRAILING_SLASH;
    }
    scan(path, &mut flags);

    // Query parameter names (a multiset: order-independent sum), longest value.
    let mut params = 0u64;
    let mut longest_value = 0usize;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        params = params.wrapping_add(mix(fnv(name.as_bytes())));
        longest_value = longest_value.max(value.len());
    }
    scan(query, &mut flags);
    if longest.max(longest_value) > LONG_VALUE_MIN {
        flags |= flag::LONG_VALUE;
    }

    // Header names, volatile ones left out.
    let mut headers = 0u64;
    for (name, value) in req.headers() {
        if value.len() > LONG_HEADER_MIN {
            flags |= flag::LONG_HEADER;
        }
        if !is_volatile(name.as_str()) {
            headers = headers.wrapping_add(mix(fnv_lower(name.as_str().as_bytes())));
        }
    }
    if req
        .headers()
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|r| r.contains(','))
    {
        flags |= flag::MULTI_RANGE;
    }
    let family = content_family(req.headers());

    let mut coarse = fnv(method.as_str().as_bytes());
    coarse = combine(coarse, fnv(route.as_bytes()));
    coarse = combine(coarse, tpl);
    coarse = combine(coarse, params);
    coarse = combine(coarse, headers);
    coarse = combine(coarse, fnv(family.as_bytes()));

    let body = body_bucket(req.headers());
    let mut fine = combine(coarse, body);
    fine = combine(fine, log2_bucket(path.len()));
    fine = combine(fine, log2_bucket(query.len()));
    fine = combine(fine, log2_bucket(longest_value));
    fine = combine(fine, segs.min(64) as u64);
    fine = combine(fine, flags as u64);
    Signature {
        coarse,
        fine,
        flags,
    }
}

fn path_root(path: &str) -> &str {
    if path.starts_with('/') {
        "/"
    } else {
        "*"
    }
}

/// log2 of the declared body size; chunked bodies of unknown size get their own bucket.
fn body_bucket(h: &HeaderMap) -> u64 {
    match h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => log2_bucket(n),
        None if h.contains_key(http::header::TRANSFER_ENCODING) => 100,
        None => 0,
    }
}

/// The readable form of a request's signature, for samples, logs and the admin API.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Described {
    /// e.g. `GET api /api/v0/cat ?arg [] none`.
    pub coarse: String,
    /// e.g. `body=2^0 path=2^5 query=2^15 value=2^15 segs=3 flags=ws_run,pct`.
    pub fine: String,
}

pub fn describe<B>(req: &http::Request<B>, route: &str, sig: &Signature) -> Described {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let mut tpl = String::new();
    let mut templated = false;
    for (i, seg) in path.split('/').skip(1).enumerate() {
        if i >= MAX_SEGMENTS {
            tpl.push_str("/…");
            break;
        }
        templated |= is_identifier(seg);
        tpl.push('/');
        tpl.push_str(if templated { "{}" } else { seg });
    }
    if tpl.is_empty() {
        tpl.push_str(path_root(path));
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
        .collect();
    params.sort_unstable();
    let mut headers: Vec<&str> = req
        .headers()
        .keys()
        .map(|k| k.as_str())
        .filter(|n| !is_volatile(n))
        .collect();
    headers.sort_unstable();
    headers.dedup();
    let method: &Method = req.method();
    let coarse = format!(
        "{method} {route} {tpl} ?{} [{}] {}",
        params.join("&"),
        headers.join(","),
        content_family(req.headers())
    );
    let longest_value = query
        .split('&')
        .map(|p| p.split_once('=').map_or(0, |(_, v)| v.len()))
        .max()
        .unwrap_or(0);
    let mut fine = format!(
        "body=2^{} path=2^{} query=2^{} value=2^{} segs={} flags=",
        body_bucket(req.headers()),
        log2_bucket(path.len()),
        log2_bucket(query.len()),
        log2_bucket(longest_value),
        path.split('/').skip(1).count(),
    );
    let names: Vec<&str> = flag::NAMES
        .iter()
        .filter(|(b, _)| sig.flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    let _ = write!(
        fine,
        "{}",
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(",")
        }
    );
    Described { coarse, fine }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn sig(method: &str, uri: &str, headers: &[(&str, &str)]) -> Signature {
        of(&req(method, uri, headers), "api")
    }

    #[test]
    fn literals_do_not_change_the_coarse_signature() {
        let a = sig(
            "POST",
            "/api/v0/cat?arg=QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            &[("user-agent", "a"), ("x-request-id", "1")],
        );
        let b = sig(
            "POST",
            "/api/v0/cat?arg=bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            &[("user-agent", "b")],
        );
        assert_eq!(a.coarse, b.coarse);
        assert_eq!(a.known_key(), b.known_key());
        // Gateway paths: the CID and everything under it are templated.
        let g1 = sig(
            "GET",
            "/ipfs/QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/a.txt",
            &[],
        );
        let g2 = sig(
            "GET",
            "/ipfs/QmXoypizjW3WknFiJnKLwHCnL72vedxjQkDDP1mXWo6uco/b/c",
            &[],
        );
        assert_ne!(g1.fine, g2.fine, "segment counts differ");
        let g3 = sig(
            "GET",
            "/ipfs/QmXoypizjW3WknFiJnKLwHCnL72vedxjQkDDP1mXWo6uco/zz.txt",
            &[],
        );
        assert_eq!(g1.coarse, g3.coarse);
    }

    #[test]
    fn code_paths_differ() {
        let base = sig("POST", "/api/v0/cat?arg=x", &[]);
        assert_ne!(base.coarse, sig("GET", "/api/v0/cat?arg=x", &[]).coarse);
        assert_ne!(base.coarse, sig("POST", "/api/v0/add?arg=x", &[]).coarse);
        assert_ne!(
            base.coarse,
            sig("POST", "/api/v0/cat?arg=x&offset=1", &[]).coarse
        );
        assert_ne!(
            base.coarse,
            sig("POST", "/api/v0/cat?arg=x", &[("x-tenant", "a")]).coarse
        );
        assert_ne!(
            base.coarse,
            sig(
                "POST",
                "/api/v0/cat?arg=x",
                &[("content-type", "application/json")]
            )
            .coarse
        );
        assert_eq!(
            base.coarse,
            of(&req("POST", "/api/v0/cat?arg=x", &[]), "api").coarse
        );
        assert_ne!(
            base.coarse,
            of(&req("POST", "/api/v0/cat?arg=x", &[]), "other").coarse
        );
    }

    #[test]
    fn parameter_and_header_order_do_not_matter() {
        let a = sig("GET", "/x?a=1&b=2", &[("x-a", "1"), ("x-b", "2")]);
        let b = sig("GET", "/x?b=9&a=8", &[("x-b", "2"), ("x-a", "1")]);
        assert_eq!(a.coarse, b.coarse);
        assert_eq!(a.fine, b.fine);
    }

    #[test]
    fn value_shapes_set_flags_and_refine_only_the_fine_signature() {
        let plain = sig("GET", "/api/v0/cat?arg=hello", &[]);
        let spaces = format!("/api/v0/cat?arg=a{}b", "%20".repeat(40));
        let ws = sig("GET", &spaces, &[]);
        assert_eq!(plain.coarse, ws.coarse);
        assert_ne!(plain.fine, ws.fine);
        assert!(ws.flags & flag::WS_RUN != 0);
        assert_ne!(plain.known_key(), ws.known_key(), "anomalies are probed");
        let plus = sig("GET", &format!("/x?q={}", "+".repeat(33)), &[]);
        assert!(plus.flags & flag::WS_RUN != 0);
        assert!(sig("GET", "/x?q=%00", &[]).flags & flag::NUL != 0);
        assert!(sig("GET", "/x?q=%01", &[]).flags & flag::CTRL != 0);
        assert!(sig("GET", "/x?q=%C3%A9", &[]).flags & flag::NON_ASCII != 0);
        assert!(sig("GET", "/a//b", &[]).flags & flag::DOUBLE_SLASH != 0);
        assert!(sig("GET", "/a/../b", &[]).flags & flag::DOT_SEGMENT != 0);
        assert!(
            sig("GET", &format!("/x?q={}", "a".repeat(2000)), &[]).flags & flag::LONG_VALUE != 0
        );
        let pct = sig("GET", "/x?q=a%2Fb", &[]);
        assert!(pct.flags & flag::PCT != 0);
        assert_eq!(
            pct.known_key(),
            pct.coarse,
            "percent-encoding is not an anomaly"
        );
        // A few spaces are not a run.
        assert_eq!(sig("GET", "/x?q=a%20b%20c", &[]).flags & flag::WS_RUN, 0);
    }

    #[test]
    fn size_buckets_refine_the_fine_signature() {
        let a = sig("POST", "/api/v0/add", &[("content-length", "100")]);
        let b = sig("POST", "/api/v0/add", &[("content-length", "120")]);
        let c = sig("POST", "/api/v0/add", &[("content-length", "100000")]);
        assert_eq!(a.fine, b.fine);
        assert_ne!(a.fine, c.fine);
        assert_eq!(a.coarse, c.coarse);
    }

    #[test]
    fn golden_values_are_stable() {
        // Persisted and shared between sidecars: a change here orphans every blacklist entry.
        let s = sig("GET", "/api/v0/cat?arg=x", &[]);
        assert_eq!(
            id(s.coarse),
            id(sig("GET", "/api/v0/cat?arg=y", &[]).coarse)
        );
        assert_eq!(parse_id(&id(s.fine)), Some(s.fine));
        assert_eq!(parse_id("xyz"), None);
        let d = describe(
            &req(
                "GET",
                "/ipfs/QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/f?x=1&a=2",
                &[("x-t", "1")],
            ),
            "gw",
            &s,
        );
        assert_eq!(d.coarse, "GET gw /ipfs/{}/{} ?a&x [x-t] none");
        assert!(
            d.fine
                .starts_with("body=2^0 path=2^6 query=2^3 value=2^1 segs=3 flags="),
            "{}",
            d.fine
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_is_deterministic(path in "/[ -~]{0,80}", q in "[ -~]{0,80}") {
            let uri = format!("{}?{}", path.replace(' ', "%20").replace(['#', '?'], ""), q.replace(' ', "+").replace('#', ""));
            if let Ok(r) = http::Request::builder().uri(uri.as_str()).body(()) {
                let a = of(&r, "r");
                prop_assert_eq!(a, of(&r, "r"));
                let _ = describe(&r, "r", &a);
            }
        }
    }
}
