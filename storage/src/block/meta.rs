//! Pools and images: small records replicated on every node as last-writer-wins registers ordered by
//! the node's hybrid logical clock (the same CRDT as the pinset).
//!
//! Why on every node rather than on `size` of them: the records are tiny, and a copy everywhere
//! survives the loss of any set of nodes the pools tolerate, without a metadata placement of its own.
//! A change is acknowledged only once `min_size` nodes (this one included) committed it durably; the
//! rest learn it by anti-entropy. Removals are tombstones, and every removed image id also gets a
//! `dead/<id>` record that is never overwritten, so a node that was down during `image rm` deletes
//! its orphaned objects when it returns — and objects of an image id nobody knows yet (metadata still
//! on its way) are never mistaken for orphans.

use super::placement::FailureDomain;
use crate::pinset::Clock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_PG_NUM: u32 = 64;
pub const MAX_SIZE: u32 = 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub id: u32,
    pub name: String,
    /// Replicas of every object.
    pub size: u32,
    /// Replicas that must have made a write durable before it is acknowledged.
    pub min_size: u32,
    pub pg_num: u32,
    pub failure_domain: FailureDomain,
    pub created: String,
}

impl Pool {
    /// Up replicas needed to serve a read that is certainly the latest acknowledged data: at least
    /// one of them must be among the `min_size` that acknowledged the last write.
    pub fn read_quorum(&self) -> u32 {
        self.min_size.max(self.size - self.min_size + 1)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Immutable id that names the image's objects (`<id>.<%016x objno>`).
    pub id: String,
    pub pool: String,
    pub pool_id: u32,
    pub name: String,
    pub size: u64,
    pub object_size: u64,
    pub created: String,
}

impl Image {
    pub fn spec(&self) -> String {
        format!("{}/{}", self.pool, self.name)
    }
    pub fn objects(&self) -> u64 {
        self.size.div_ceil(self.object_size)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetaBody {
    Pool(Pool),
    Image(Image),
    /// Tombstone of a pool or image record.
    Removed,
    /// A removed image id whose objects are to be deleted wherever they are found.
    Dead {
        pool_id: u32,
        image_id: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaEntry {
    /// `pool/NAME`, `image/POOL/NAME` or `dead/IMAGE_ID`.
    pub key: String,
    pub clock: Clock,
    pub body: MetaBody,
}

pub fn pool_key(name: &str) -> String {
    format!("pool/{name}")
}
pub fn image_key(pool: &str, name: &str) -> String {
    format!("image/{pool}/{name}")
}

/// In-memory view of the merged records.
#[derive(Default, Clone)]
pub struct MetaView {
    entries: BTreeMap<String, MetaEntry>,
}

impl MetaView {
    pub fn from_entries(es: Vec<MetaEntry>) -> Self {
        let mut v = Self::default();
        v.apply(&es);
        v
    }

    /// Applies entries that won the durable merge (or any entries: LWW is idempotent).
    pub fn apply(&mut self, es: &[MetaEntry]) {
        for e in es {
            match self.entries.get(&e.key) {
                Some(old) if old.clock >= e.clock => {}
                _ => {
                    self.entries.insert(e.key.clone(), e.clone());
                }
            }
        }
    }

    pub fn all(&self) -> Vec<MetaEntry> {
        self.entries.values().cloned().collect()
    }

    /// A digest peers compare before fetching the whole set.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for e in self.entries.values() {
            h.update(e.key.as_bytes());
            h.update(e.clock.millis.to_le_bytes());
            h.update(e.clock.counter.to_le_bytes());
            h.update(e.clock.origin.as_bytes());
        }
        hex::encode(&h.finalize()[..12])
    }

    pub fn pools(&self) -> Vec<Pool> {
        self.entries
            .values()
            .filter_map(|e| match &e.body {
                MetaBody::Pool(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn pool(&self, name: &str) -> Option<Pool> {
        match self.entries.get(&pool_key(name)).map(|e| &e.body) {
            Some(MetaBody::Pool(p)) => Some(p.clone()),
            _ => None,
        }
    }

    pub fn pool_by_id(&self, id: u32) -> Option<Pool> {
        self.pools().into_iter().find(|p| p.id == id)
    }

    pub fn images(&self, pool: Option<&str>) -> Vec<Image> {
        self.entries
            .values()
            .filter_map(|e| match &e.body {
                MetaBody::Image(i) if pool.is_none_or(|p| p == i.pool) => Some(i.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn image(&self, pool: &str, name: &str) -> Option<Image> {
        match self.entries.get(&image_key(pool, name)).map(|e| &e.body) {
            Some(MetaBody::Image(i)) => Some(i.clone()),
            _ => None,
        }
    }

    pub fn is_dead(&self, image_id: &str) -> bool {
        self.entries.contains_key(&format!("dead/{image_id}"))
    }
}

/// Names as RBD accepts them, minus the characters our export names and URLs would trip on.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {name:?}: use 1-128 of [A-Za-z0-9._-], not starting with '.'"
        ))
    }
}

pub fn check_pool_sizes(size: u32, min_size: u32) -> Result<(), String> {
    if size == 0 || size > MAX_SIZE {
        return Err(format!("size {size} must be between 1 and {MAX_SIZE}"));
    }
    if min_size == 0 || min_size > size {
        return Err(format!(
            "min_size {min_size} must be between 1 and size ({size})"
        ));
    }
    Ok(())
}

/// Object sizes are powers of two between 64 KiB and 32 MiB (RBD's `--object-size`, order 16–25).
pub fn check_object_size(n: u64) -> Result<(), String> {
    if n.is_power_of_two() && ((64 << 10)..=(32 << 20)).contains(&n) {
        Ok(())
    } else {
        Err(format!(
            "object size {n} must be a power of two between 64 KiB and 32 MiB"
        ))
    }
}

/// Parses `64M`, `1G`, `4096`, `512K`, `1.5G` (binary units, as `rbd --size`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 64M, 1G, 4096)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid size {s:?}"));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(ms: u64) -> Clock {
        Clock {
            millis: ms,
            counter: 0,
            origin: "a".into(),
        }
    }

    #[test]
    fn last_writer_wins_in_any_order() {
        let pool = |size| MetaEntry {
            key: pool_key("rbd"),
            clock: clock(size as u64),
            body: MetaBody::Pool(Pool {
                id: 1,
                name: "rbd".into(),
                size,
                min_size: 1,
                pg_num: 8,
                failure_domain: FailureDomain::Host,
                created: String::new(),
            }),
        };
        let a = MetaView::from_entries(vec![pool(2), pool(3)]);
        let b = MetaView::from_entries(vec![pool(3), pool(2)]);
        assert_eq!(a.pool("rbd").unwrap().size, 3);
        assert_eq!(a.digest(), b.digest());
        let mut c = a.clone();
        c.apply(&[MetaEntry {
            key: pool_key("rbd"),
            clock: clock(9),
            body: MetaBody::Removed,
        }]);
        assert!(c.pool("rbd").is_none());
        assert_ne!(c.digest(), a.digest());
    }

    #[test]
    fn sizes_names_and_quorums() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(check_name("pool", "rbd").is_ok());
        assert!(check_name("pool", "a/b").is_err());
        assert!(check_name("pool", "").is_err());
        assert!(check_pool_sizes(3, 2).is_ok());
        assert!(check_pool_sizes(2, 3).is_err());
        assert!(check_object_size(4 << 20).is_ok());
        assert!(check_object_size(3 << 20).is_err());
        let p = |size, min_size| Pool {
            id: 1,
            name: "p".into(),
            size,
            min_size,
            pg_num: 8,
            failure_domain: FailureDomain::Host,
            created: String::new(),
        };
        assert_eq!(p(3, 2).read_quorum(), 2);
        assert_eq!(p(3, 1).read_quorum(), 3);
        assert_eq!(p(1, 1).read_quorum(), 1);
    }
}
