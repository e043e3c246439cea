//! Placement: object → placement group → ordered acting set.
//!
//! Modelled on Ceph: an object's name is hashed to a placement group (PG) of its pool, and the PG
//! is mapped to an ordered *acting set* of up to `size` OSDs (storage nodes) by a CRUSH-like
//! function; the first member is the primary. Replicas land in distinct failure domains: distinct
//! hosts ([`FailureDomain::Host`], Ceph's default `chooseleaf firstn 0 type host`) or merely
//! distinct OSDs ([`FailureDomain::Osd`], for single-host setups).
//!
//! # Hashes (pinned by golden tests — changing either moves data)
//!
//! - **Object → PG** ([`pg_of`]): the first 8 bytes of `SHA-256(object_name)` read as a big-endian
//!   `u64`, modulo `pg_num`. For power-of-two `pg_num` this equals Ceph's `stable_mod`, so doubling
//!   `pg_num` splits PG `p` into `p` and `p + old_pg_num`.
//! - **Straw2 draw** (private `draw_hash`, "bulwark straw2 v1"): a fixed-seed 64-bit hash of
//!   `(pool_id, pg, osd id)`: `h = mix64(SEED ^ (pool_id << 32 | pg))`, then for each 8-byte chunk
//!   of the id's UTF-8 bytes (little-endian, last chunk zero-padded) `h = mix64(h ^ chunk)`, and
//!   finally `mix64(h ^ id_len)`. `mix64` is the SplitMix64 finalizer. It is cheap (~50 ns per OSD
//!   with the logarithm, ~1.6 µs for a 12-OSD `place` on the 2-core dev VM) because placement runs
//!   per I/O; callers may still cache acting sets per (pool, PG, OSD-map version).
//!
//! # Algorithm: weighted rendezvous hashing (Ceph's straw2)
//!
//! Every OSD draws `ln(u) / weight` with `u ∈ (0, 1]` taken from the top 53 bits of its draw hash;
//! OSDs are ranked by draw (highest first; ties broken by id, then host, so the result never
//! depends on the order of the input slice), and that ranking is walked taking each OSD whose
//! failure domain is not yet used, until `size` are taken. `P(OSD i ranks first) = wᵢ / Σw`.
//! The logarithm is computed by `det_ln_scaled` from IEEE-754 `+ − × ÷` only (no libm), so every
//! node on every platform computes bit-identical draws and therefore identical acting sets.
//!
//! Under the host domain the walk amounts to: each host is represented by its best-drawing OSD,
//! hosts are ranked by their representative's draw, and the top `size` representatives form the
//! acting set. That gives these stability guarantees (all checked by property tests below):
//!
//! - **Removing** OSD `x`: every acting set without `x` is unchanged. A set with `x` loses `x`, the
//!   survivors keep their relative order, and at most one OSD joins: under `Osd` it is appended
//!   last; under `Host` it is either another OSD of `x`'s host (inserted at or after `x`'s old
//!   slot — not necessarily in it, since its draw may fall below later members') or an OSD of a
//!   host new to the set (appended last). If none joins, the set shrinks by one (undersized). So
//!   the primary changes only when `x` was the primary.
//! - **Adding** OSD `n`: every acting set without `n` is unchanged. A set with `n` gains `n`, the
//!   others keep their relative order, and at most one old member leaves: the old last member (when
//!   the set was full) or, under `Host`, the OSD of `n`'s host that `n` outranks.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// What replicas of one PG must not share.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FailureDomain {
    /// Replicas on distinct hosts (Ceph's default).
    #[default]
    Host,
    /// Replicas on distinct OSDs only (single-host setups).
    Osd,
}

/// Error parsing a [`FailureDomain`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown failure domain {0:?}: expected \"host\" or \"osd\"")]
pub struct ParseFailureDomainError(pub String);

impl FromStr for FailureDomain {
    type Err = ParseFailureDomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("host") {
            Ok(FailureDomain::Host)
        } else if t.eq_ignore_ascii_case("osd") {
            Ok(FailureDomain::Osd)
        } else {
            Err(ParseFailureDomainError(s.to_string()))
        }
    }
}

impl fmt::Display for FailureDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureDomain::Host => "host",
            FailureDomain::Osd => "osd",
        })
    }
}

/// One placement target: a storage node ("in" the cluster), its host label and its CRUSH weight.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Osd {
    /// The node's peer id (e.g. `12D3KooW…`); unique among the OSDs passed to [`place`].
    pub id: String,
    /// Failure-domain label for [`FailureDomain::Host`].
    pub host: String,
    /// Relative capacity, finite and > 0 (1.0 by default). OSDs with any other weight are never
    /// chosen (like a CRUSH weight of 0).
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

impl Osd {
    /// An OSD of weight 1.0.
    pub fn new(id: impl Into<String>, host: impl Into<String>) -> Self {
        Osd {
            id: id.into(),
            host: host.into(),
            weight: default_weight(),
        }
    }

    fn domain(&self, domain: FailureDomain) -> &str {
        match domain {
            FailureDomain::Host => &self.host,
            FailureDomain::Osd => &self.id,
        }
    }
}

/// The PG (in `0..pg_num`) of an object: first 8 bytes of `SHA-256(object_name)` as a big-endian
/// `u64`, mod `pg_num`. Stable across processes, platforms and releases (pinned by a golden test).
/// `pg_num == 0` is treated as 1.
pub fn pg_of(object_name: &str, pg_num: u32) -> u32 {
    let digest = Sha256::digest(object_name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(pg_num.max(1))) as u32
}

/// Ordered acting set for one PG of one pool: up to `size` OSD ids in distinct failure domains,
/// first = primary. Shorter when there are not enough distinct domains among `osds` (the caller
/// reports "undersized"). Independent of the order of `osds`.
pub fn place(
    pool_id: u32,
    pg: u32,
    size: usize,
    domain: FailureDomain,
    osds: &[Osd],
) -> Vec<String> {
    if size == 0 || osds.is_empty() {
        return Vec::new();
    }
    let mut ranked: Vec<(f64, &Osd)> = osds
        .iter()
        .filter(|o| o.weight.is_finite() && o.weight > 0.0)
        .map(|o| (draw(pool_id, pg, o), o))
        .collect();
    ranked.sort_unstable_by(|(da, a), (db, b)| {
        db.total_cmp(da)
            .then_with(|| a.id.cmp(&b.id))
            .then_with(|| a.host.cmp(&b.host))
    });

    let mut chosen: Vec<&Osd> = Vec::with_capacity(size.min(ranked.len()));
    for (_, osd) in ranked {
        let d = osd.domain(domain);
        // The id check only matters for (invalid) duplicate ids on different hosts.
        if chosen
            .iter()
            .all(|c| c.domain(domain) != d && c.id != osd.id)
        {
            chosen.push(osd);
            if chosen.len() == size {
                break;
            }
        }
    }
    chosen.into_iter().map(|o| o.id.clone()).collect()
}

/// Convenience: [`pg_of`] then [`place`]; returns the PG and its acting set.
pub fn place_object(
    pool_id: u32,
    pg_num: u32,
    object_name: &str,
    size: usize,
    domain: FailureDomain,
    osds: &[Osd],
) -> (u32, Vec<String>) {
    let pg = pg_of(object_name, pg_num);
    (pg, place(pool_id, pg, size, domain, osds))
}

/// Seed of the straw2 draw hash ("bulwark1" in ASCII).
const DRAW_SEED: u64 = 0x6275_6c77_6172_6b31;

/// SplitMix64's finalizer: a bijection on `u64` with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stable 64-bit hash of `(pool_id, pg, id)` ("bulwark straw2 v1", see the module docs).
fn draw_hash(pool_id: u32, pg: u32, id: &str) -> u64 {
    let mut h = mix64(DRAW_SEED ^ ((u64::from(pool_id) << 32) | u64::from(pg)));
    let bytes = id.as_bytes();
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(w));
    }
    mix64(h ^ bytes.len() as u64)
}

/// The straw2 draw `ln(u) / weight`, `u ∈ (0, 1]`; higher wins.
fn draw(pool_id: u32, pg: u32, osd: &Osd) -> f64 {
    // k ∈ [1, 2^53], u = k / 2^53.
    let k = (draw_hash(pool_id, pg, &osd.id) >> 11) + 1;
    det_ln_scaled(k, 53) / osd.weight
}

/// `ln(k / 2^shift)` for `k ≥ 1`, using only correctly rounded IEEE-754 operations so the result is
/// bit-identical on every platform (std's `ln` defers to the platform libm). Accurate to a few ulp.
fn det_ln_scaled(k: u64, shift: i32) -> f64 {
    debug_assert!((1..=1u64 << 53).contains(&k));
    // 1/(2n+1): const-evaluated divisions are correctly rounded, like runtime ones.
    const INV_ODD: [f64; 11] = [
        1.0,
        1.0 / 3.0,
        1.0 / 5.0,
        1.0 / 7.0,
        1.0 / 9.0,
        1.0 / 11.0,
        1.0 / 13.0,
        1.0 / 15.0,
        1.0 / 17.0,
        1.0 / 19.0,
        1.0 / 21.0,
    ];
    // k = m · 2^e with m ∈ [1, 2); both the conversion and the scaling are exact (k ≤ 2^53).
    let mut e = 63 - k.leading_zeros() as i32;
    let mut m = k as f64 * f64::from_bits(((1023 - e) as u64) << 52);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s), s = (m − 1)/(m + 1), |s| ≤ 0.1716: the series to s^21 is exact to ~1e-17.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut series = 0.0;
    for c in INV_ODD.iter().rev() {
        series = series * s2 + c;
    }
    f64::from(e - shift) * std::f64::consts::LN_2 + 2.0 * s * series
}

/// `ln(x)` for positive normal `x` via [`det_ln_scaled`], to test it against std's `ln`.
#[cfg(test)]
fn det_ln(x: f64) -> f64 {
    // x = mant · 2^(exp − 52) with a 53-bit integer mantissa (normal numbers only).
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let mant = (bits & ((1 << 52) - 1)) | (1 << 52);
    det_ln_scaled(mant, -exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn osd(id: &str, host: &str, weight: f64) -> Osd {
        Osd {
            id: id.to_string(),
            host: host.to_string(),
            weight,
        }
    }

    fn host_of<'a>(osds: &'a [Osd], id: &str) -> &'a str {
        &osds.iter().find(|o| o.id == id).unwrap().host
    }

    fn distinct_domains(osds: &[Osd], domain: FailureDomain) -> usize {
        osds.iter()
            .map(|o| o.domain(domain))
            .collect::<HashSet<_>>()
            .len()
    }

    // ---------------------------------------------------------------- API surface

    #[test]
    fn failure_domain_parse_display_serde() {
        assert_eq!(
            "host".parse::<FailureDomain>().unwrap(),
            FailureDomain::Host
        );
        assert_eq!("osd".parse::<FailureDomain>().unwrap(), FailureDomain::Osd);
        assert_eq!(
            " OSD ".parse::<FailureDomain>().unwrap(),
            FailureDomain::Osd
        );
        let err = "rack".parse::<FailureDomain>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown failure domain \"rack\": expected \"host\" or \"osd\""
        );
        for d in [FailureDomain::Host, FailureDomain::Osd] {
            assert_eq!(d.to_string().parse::<FailureDomain>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{d}\""));
            assert_eq!(serde_json::from_str::<FailureDomain>(&json).unwrap(), d);
        }
        assert_eq!(FailureDomain::default(), FailureDomain::Host);
    }

    #[test]
    fn osd_weight_defaults_to_one() {
        let o: Osd = serde_json::from_str(r#"{"id":"a","host":"h"}"#).unwrap();
        assert_eq!(o, Osd::new("a", "h"));
        assert_eq!(o.weight, 1.0);
    }

    // ---------------------------------------------------------------- golden values

    #[test]
    fn golden_pg_of() {
        // Cross-checked with Python's hashlib.
        // SHA-256("") = e3b0c44298fc1c14…, SHA-256("abc") = ba7816bf8f01cfea…
        assert_eq!(
            pg_of("", u32::MAX),
            (0xe3b0_c442_98fc_1c14u64 % 0xffff_ffff) as u32
        );
        assert_eq!(
            pg_of("abc", u32::MAX),
            (0xba78_16bf_8f01_cfeau64 % 0xffff_ffff) as u32
        );
        assert_eq!(pg_of("abc", 256), 0xea);
        assert_eq!(pg_of("abc", 0), 0);
        assert_eq!(pg_of("abc", 1), 0);
        let got: Vec<u32> = (0..8u64)
            .map(|n| pg_of(&format!("img-1.{n:016x}"), 128))
            .collect();
        assert_eq!(got, GOLDEN_PGS);
    }
    const GOLDEN_PGS: [u32; 8] = [116, 50, 112, 18, 84, 124, 51, 24];

    #[test]
    fn golden_draw_hash() {
        assert_eq!(draw_hash(0, 0, ""), GOLDEN_DRAW[0]);
        assert_eq!(draw_hash(1, 7, "osd-a"), GOLDEN_DRAW[1]);
        assert_eq!(
            draw_hash(
                3,
                42,
                "12D3KooWGRUVh5JrWbgwtP5kKgC9CBhnX2iBYrKNzkGNH3X6x8zY"
            ),
            GOLDEN_DRAW[2]
        );
    }
    const GOLDEN_DRAW: [u64; 3] = [
        0xddbe_9777_69f2_51a2,
        0x968f_68aa_a0a1_f10a,
        0x5aae_dd1d_2f4d_e404,
    ];

    fn golden_cluster() -> Vec<Osd> {
        vec![
            osd("osd-a", "h1", 1.0),
            osd("osd-b", "h1", 1.0),
            osd("osd-c", "h2", 1.0),
            osd("osd-d", "h2", 2.0),
            osd("osd-e", "h3", 1.0),
            osd("osd-f", "h4", 0.5),
        ]
    }

    #[test]
    fn golden_place() {
        let osds = golden_cluster();
        let host: Vec<Vec<String>> = (0..6)
            .map(|pg| place(1, pg, 3, FailureDomain::Host, &osds))
            .collect();
        let by_osd: Vec<Vec<String>> = (0..6)
            .map(|pg| place(1, pg, 3, FailureDomain::Osd, &osds))
            .collect();
        assert_eq!(host, to_strings(&GOLDEN_HOST));
        assert_eq!(by_osd, to_strings(&GOLDEN_OSD));
        assert_eq!(
            place_object(
                1,
                128,
                "img-1.0000000000000000",
                3,
                FailureDomain::Host,
                &osds
            ),
            (
                GOLDEN_PGS[0],
                place(1, GOLDEN_PGS[0], 3, FailureDomain::Host, &osds)
            )
        );
    }
    // Cross-checked against an independent Python model (hashlib + math.log).
    const GOLDEN_HOST: [[&str; 3]; 6] = [
        ["osd-d", "osd-b", "osd-e"],
        ["osd-b", "osd-e", "osd-d"],
        ["osd-d", "osd-b", "osd-e"],
        ["osd-d", "osd-e", "osd-b"],
        ["osd-f", "osd-d", "osd-b"],
        ["osd-d", "osd-a", "osd-e"],
    ];
    const GOLDEN_OSD: [[&str; 3]; 6] = [
        ["osd-d", "osd-c", "osd-b"],
        ["osd-b", "osd-e", "osd-a"],
        ["osd-d", "osd-c", "osd-b"],
        ["osd-d", "osd-e", "osd-b"],
        ["osd-f", "osd-d", "osd-c"],
        ["osd-d", "osd-a", "osd-c"],
    ];

    fn to_strings(rows: &[[&str; 3]]) -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn det_ln_matches_std_ln() {
        let mut x = 1.0f64;
        for _ in 0..2000 {
            let (a, b) = (det_ln(x), x.ln());
            assert!(
                (a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1.0),
                "{x}: {a} vs {b}"
            );
            x *= 0.987_654_321;
        }
        for k in [1u64, 2, 3, 1 << 20, (1 << 53) - 1, 1 << 53] {
            let (a, b) = (det_ln_scaled(k, 53), (k as f64 / 2f64.powi(53)).ln());
            assert!(
                (a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1.0),
                "{k}: {a} vs {b}"
            );
        }
        assert_eq!(det_ln_scaled(1 << 53, 53), 0.0);
    }

    // ---------------------------------------------------------------- edge cases

    #[test]
    fn edge_cases() {
        let osds = golden_cluster();
        assert!(place(1, 0, 0, FailureDomain::Host, &osds).is_empty());
        assert!(place(1, 0, 3, FailureDomain::Host, &[]).is_empty());
        // Undersized: 4 hosts, 6 OSDs.
        assert_eq!(place(1, 0, 10, FailureDomain::Host, &osds).len(), 4);
        assert_eq!(place(1, 0, 10, FailureDomain::Osd, &osds).len(), 6);
        // Single host: only the osd domain gives full sets.
        let one_host: Vec<Osd> = (0..3).map(|i| osd(&format!("o{i}"), "vm", 1.0)).collect();
        assert_eq!(place(1, 5, 3, FailureDomain::Host, &one_host).len(), 1);
        assert_eq!(place(1, 5, 3, FailureDomain::Osd, &one_host).len(), 3);
        // Zero, negative and NaN weights are never chosen.
        let bad = vec![
            osd("z", "h1", 0.0),
            osd("n", "h2", -1.0),
            osd("q", "h3", f64::NAN),
            osd("ok", "h4", 1.0),
        ];
        for pg in 0..32 {
            assert_eq!(
                place(1, pg, 3, FailureDomain::Osd, &bad),
                vec!["ok".to_string()]
            );
        }
        // Duplicate ids (invalid input) never yield the same id twice.
        let dup = vec![osd("x", "h1", 1.0), osd("x", "h2", 1.0)];
        assert_eq!(place(1, 0, 2, FailureDomain::Host, &dup).len(), 1);
    }

    // ---------------------------------------------------------------- balance

    #[test]
    fn balance_three_hosts_size_three_uses_every_host() {
        let osds: Vec<Osd> = (0..3)
            .flat_map(|h| (0..2).map(move |i| osd(&format!("osd-{h}{i}"), &format!("h{h}"), 1.0)))
            .collect();
        let mut used = HashSet::new();
        for pg in 0..128 {
            let set = place(7, pg, 3, FailureDomain::Host, &osds);
            let hosts: HashSet<&str> = set.iter().map(|id| host_of(&osds, id)).collect();
            assert_eq!(hosts.len(), 3, "pg {pg}: {set:?}");
            used.extend(set);
        }
        assert_eq!(used.len(), 6, "every OSD serves some PG");
    }

    #[test]
    fn balance_primaries_six_hosts() {
        let osds: Vec<Osd> = (0..6)
            .map(|i| osd(&format!("osd-{i}"), &format!("h{i}"), 1.0))
            .collect();
        let mut primaries: HashMap<String, usize> = HashMap::new();
        for pg in 0..1024 {
            let set = place(2, pg, 2, FailureDomain::Host, &osds);
            assert_eq!(set.len(), 2);
            *primaries.entry(set[0].clone()).or_default() += 1;
        }
        assert_eq!(primaries.len(), 6);
        for (id, n) in &primaries {
            let share = *n as f64 / 1024.0;
            assert!((0.10..=0.24).contains(&share), "{id}: {share}");
        }
    }

    #[test]
    fn balance_weight_is_proportional() {
        let mut osds: Vec<Osd> = (0..4)
            .map(|i| osd(&format!("osd-{i}"), &format!("h{i}"), 1.0))
            .collect();
        osds[2].weight = 2.0;
        let pgs = 4096;
        let heavy = (0..pgs)
            .filter(|&pg| place(3, pg, 1, FailureDomain::Host, &osds)[0] == "osd-2")
            .count();
        let share = heavy as f64 / f64::from(pgs);
        // straw2: P(first) = 2/5 = 0.4, i.e. 1.6× the average share of 0.25.
        assert!(share > 1.5 * 0.25, "share {share}");
        assert!((0.36..=0.44).contains(&share), "share {share}");
    }

    #[test]
    fn pg_of_spreads_objects() {
        let mut counts = [0usize; 64];
        for n in 0..64 * 256u64 {
            counts[pg_of(&format!("img.{n:016x}"), 64) as usize] += 1;
        }
        // Mean 256, σ ≈ 16.
        assert!(
            counts.iter().all(|&c| (180..=340).contains(&c)),
            "{counts:?}"
        );
    }

    // ---------------------------------------------------------------- properties

    /// 1–12 OSDs with unique ids over 1–6 hosts, random weights in [0.1, 4).
    fn cluster() -> impl Strategy<Value = Vec<Osd>> {
        (1usize..=6).prop_flat_map(|hosts| {
            prop::collection::vec((0..hosts, 0.1f64..4.0), 1..=12).prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (h, w))| osd(&format!("12D3KooW{i:02}"), &format!("host-{h}"), w))
                    .collect()
            })
        })
    }

    fn domain() -> impl Strategy<Value = FailureDomain> {
        prop_oneof![Just(FailureDomain::Host), Just(FailureDomain::Osd)]
    }

    fn without(set: &[String], id: &str) -> Vec<String> {
        set.iter().filter(|s| *s != id).cloned().collect()
    }

    /// `before` is the acting set over `all`, `after` over `all` minus OSD `x`. Asserts the
    /// removal guarantee from the module docs.
    fn check_removal(
        before: &[String],
        after: &[String],
        x: &Osd,
        all: &[Osd],
        domain: FailureDomain,
    ) -> Result<(), TestCaseError> {
        let Some(slot) = before.iter().position(|id| *id == x.id) else {
            prop_assert_eq!(before, after, "a set without the removed OSD changed");
            return Ok(());
        };
        prop_assert!(!after.contains(&x.id));
        let joined: Vec<(usize, &String)> = after
            .iter()
            .enumerate()
            .filter(|(_, id)| !before.contains(id))
            .collect();
        prop_assert!(joined.len() <= 1, "more than one OSD joined: {:?}", joined);
        // Survivors keep their relative order.
        let survivors: Vec<String> = after
            .iter()
            .filter(|id| before.contains(id))
            .cloned()
            .collect();
        prop_assert_eq!(&survivors, &without(before, &x.id));
        prop_assert!(after.len() <= before.len());
        if let Some(&(at, id)) = joined.first() {
            match domain {
                FailureDomain::Osd => prop_assert_eq!(at, after.len() - 1),
                FailureDomain::Host => {
                    let h = host_of(all, id);
                    if h == x.host {
                        prop_assert!(at >= slot, "same-host heir before x's slot");
                    } else {
                        prop_assert_eq!(at, after.len() - 1);
                        let old_hosts: Vec<&str> = before.iter().map(|b| host_of(all, b)).collect();
                        prop_assert!(!old_hosts.contains(&h));
                    }
                }
            }
        } else {
            prop_assert_eq!(after.len(), before.len() - 1);
        }
        Ok(())
    }

    /// `before` is the acting set over `old`, `after` over `old` plus OSD `n` (in `all`). Asserts
    /// the addition guarantee from the module docs.
    fn check_addition(
        before: &[String],
        after: &[String],
        n: &Osd,
        all: &[Osd],
        size: usize,
        domain: FailureDomain,
    ) -> Result<(), TestCaseError> {
        let Some(at) = after.iter().position(|id| *id == n.id) else {
            prop_assert_eq!(before, after, "a set without the added OSD changed");
            return Ok(());
        };
        let left: Vec<(usize, &String)> = before
            .iter()
            .enumerate()
            .filter(|(_, id)| !after.contains(id))
            .collect();
        prop_assert!(left.len() <= 1, "more than one OSD left: {:?}", left);
        // The others keep their relative order.
        let kept: Vec<String> = before
            .iter()
            .filter(|id| after.contains(id))
            .cloned()
            .collect();
        prop_assert_eq!(&kept, &without(after, &n.id));
        match left.first() {
            None => prop_assert_eq!(after.len(), before.len() + 1),
            Some(&(gone_at, gone)) => {
                prop_assert_eq!(after.len(), before.len());
                let pushed_out = before.len() == size && gone_at == before.len() - 1;
                let same_host =
                    domain == FailureDomain::Host && host_of(all, gone) == n.host && gone_at >= at;
                prop_assert!(
                    pushed_out || same_host,
                    "{} left from slot {} (new at {})",
                    gone,
                    gone_at,
                    at
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn prop_size_distinct_and_domains(
            osds in cluster(), pool in any::<u32>(), pg in any::<u32>(),
            size in 1usize..=5, domain in domain(),
        ) {
            let set = place(pool, pg, size, domain, &osds);
            prop_assert_eq!(set.len(), size.min(distinct_domains(&osds, domain)));
            let ids: HashSet<&String> = set.iter().collect();
            prop_assert_eq!(ids.len(), set.len());
            if domain == FailureDomain::Host {
                let hosts: HashSet<&str> = set.iter().map(|id| host_of(&osds, id)).collect();
                prop_assert_eq!(hosts.len(), set.len());
            }
            // Prefix property: a smaller size is a prefix of a larger one.
            let bigger = place(pool, pg, size + 1, domain, &osds);
            prop_assert_eq!(&bigger[..set.len()], &set[..]);
        }

        #[test]
        fn prop_order_independent(
            (osds, shuffled) in cluster().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
            pool in any::<u32>(), pg in any::<u32>(), size in 1usize..=5, domain in domain(),
        ) {
            prop_assert_eq!(
                place(pool, pg, size, domain, &osds),
                place(pool, pg, size, domain, &shuffled)
            );
        }

        #[test]
        fn prop_stable_on_removal(
            (osds, victim) in cluster().prop_flat_map(|v| { let n = v.len(); (Just(v), 0..n) }),
            pool in any::<u32>(), size in 1usize..=4, domain in domain(),
        ) {
            let x = &osds[victim];
            let rest: Vec<Osd> = osds.iter().filter(|o| o.id != x.id).cloned().collect();
            for pg in 0..32 {
                let before = place(pool, pg, size, domain, &osds);
                let after = place(pool, pg, size, domain, &rest);
                check_removal(&before, &after, x, &osds, domain)?;
            }
        }

        #[test]
        fn prop_stable_on_addition(
            old in cluster(), new_host in 0usize..7, weight in 0.1f64..4.0,
            pool in any::<u32>(), size in 1usize..=4, domain in domain(),
        ) {
            // host-6 is always a new host; host-0..5 may or may not exist already.
            let n = osd("12D3KooWnew", &format!("host-{new_host}"), weight);
            let mut all = old.clone();
            all.push(n.clone());
            for pg in 0..32 {
                let before = place(pool, pg, size, domain, &old);
                let after = place(pool, pg, size, domain, &all);
                check_addition(&before, &after, &n, &all, size, domain)?;
            }
        }
    }
}
