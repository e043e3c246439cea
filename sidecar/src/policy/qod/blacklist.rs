//! The blacklist of confirmed queries of death: fine signatures with an expiry, a sample of the
//! request that proved it, and where the entry came from.
//!
//! Entries are last-writer-wins records (`updated_ms`, wall clock) so that edits and deletions made
//! on any sidecar converge on all of them; a deletion is kept as a tombstone until the entry would
//! have expired. The whole list is small (bounded by `max_entries`) and written to `state_file` as
//! one JSON document, atomically (temp file, fsync, rename), after every change.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use crate::policy::now_ms;

/// What the request that proved the entry looked like (bounded; secrets redacted).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub method: String,
    /// Path and query, cut at 2 KiB.
    pub uri: String,
    /// Up to 32 headers, values cut at 256 bytes; `authorization` and `cookie` redacted.
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body (lossy UTF-8), at most `sample_bytes`.
    pub body: String,
    pub body_len: Option<u64>,
    pub body_truncated: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The fine signature, 16 hex digits.
    pub id: String,
    pub coarse: String,
    /// Readable signature (coarse and fine parts).
    pub signature: crate::policy::qod::signature::Described,
    pub route: String,
    pub listener: String,
    pub reason: String,
    /// Strikes on distinct canaries that confirmed it.
    pub strikes: u32,
    /// How many times this signature was blacklisted before (the TTL doubles each time).
    pub repeat: u32,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub updated_ms: u64,
    /// `local`, `admin`, or `peer:<address>`.
    pub origin: String,
    /// Which sidecar created it (its admin address).
    pub node: String,
    /// Entry-level dry run: matching requests are counted and forwarded, not refused.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub sample: Option<Sample>,
}

impl Entry {
    pub fn live(&self, now: u64) -> bool {
        !self.deleted && self.expires_ms > now
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    entries: Vec<Entry>,
    /// Fine signature → times blacklisted, kept after expiry so repeat offenders get longer TTLs.
    history: HashMap<String, u32>,
}

/// How a merged entry changed the list.
#[derive(Debug, PartialEq, Eq)]
pub enum Merge {
    New,
    Updated,
    Ignored,
}

pub struct Blacklist {
    inner: Mutex<State>,
    file: Option<PathBuf>,
    /// Serialises file writes so an older snapshot never overwrites a newer one.
    write: Mutex<()>,
    max_entries: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    history: HashMap<u64, u32>,
}

impl Blacklist {
    /// Loads `file` when it exists; a corrupt file is an error (never silently forget entries).
    pub fn open(file: Option<&Path>, max_entries: usize) -> Result<Self, String> {
        let mut st = State::default();
        if let Some(f) = file {
            match std::fs::read(f) {
                Ok(bytes) => {
                    let p: Persisted = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("qod state file {}: {e}", f.display()))?;
                    let now = now_ms();
                    for e in p.entries {
                        if let Some(k) = super::signature::parse_id(&e.id) {
                            if e.expires_ms > now {
                                st.entries.insert(k, e);
                            }
                        }
                    }
                    for (k, n) in p.history {
                        if let Some(k) = super::signature::parse_id(&k) {
                            st.history.insert(k, n);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("qod state file {}: {e}", f.display())),
            }
        }
        Ok(Self {
            inner: Mutex::new(st),
            file: file.map(Path::to_path_buf),
            write: Mutex::new(()),
            max_entries,
        })
    }

    /// The live entry for a fine signature, if any (the hot path: one lock, one lookup).
    pub fn matching(&self, fine: u64, now: u64) -> Option<(String, u64, bool, String)> {
        let st = self.inner.lock().expect("blacklist lock");
        st.entries
            .get(&fine)
            .filter(|e| e.live(now))
            .map(|e| (e.id.clone(), e.expires_ms, e.dry_run, e.reason.clone()))
    }

    pub fn is_empty(&self) -> bool {
        self.inner
            .lock()
            .expect("blacklist lock")
            .entries
            .is_empty()
    }

    /// Times this signature has been blacklisted before.
    pub fn repeats(&self, fine: u64) -> u32 {
        let st = self.inner.lock().expect("blacklist lock");
        st.history.get(&fine).copied().unwrap_or(0)
    }

    /// Adds or replaces by last-writer-wins; returns what changed.
    pub fn merge(&self, e: Entry) -> Merge {
        let Some(k) = super::signature::parse_id(&e.id) else {
            return Merge::Ignored;
        };
        let r = {
            let mut st = self.inner.lock().expect("blacklist lock");
            let now = now_ms();
            st.entries.retain(|_, e| e.expires_ms > now);
            let r = match st.entries.get(&k) {
                Some(old) if old.updated_ms >= e.updated_ms => Merge::Ignored,
                Some(old) if old.live(now) || !e.live(now) => Merge::Updated,
                _ if e.live(now) => Merge::New,
                _ => Merge::Updated,
            };
            if r == Merge::Ignored {
                return r;
            }
            if r == Merge::New {
                let h = st.history.entry(k).or_insert(0);
                *h = (*h).max(e.repeat + 1);
            }
            if st.entries.len() >= self.max_entries && !st.entries.contains_key(&k) {
                // Full: drop the entry closest to expiry (tombstones first).
                if let Some(victim) = st
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| (!e.deleted, e.expires_ms))
                    .map(|(k, _)| *k)
                {
                    st.entries.remove(&victim);
                }
            }
            st.entries.insert(k, e);
            r
        };
        self.save();
        r
    }

    pub fn get(&self, fine: u64) -> Option<Entry> {
        let st = self.inner.lock().expect("blacklist lock");
        st.entries.get(&fine).filter(|e| !e.deleted).cloned()
    }

    /// Live entries (and, with `tombstones`, deletions still to be shared), newest first.
    pub fn list(&self, tombstones: bool) -> Vec<Entry> {
        let now = now_ms();
        let st = self.inner.lock().expect("blacklist lock");
        let mut v: Vec<Entry> = st
            .entries
            .values()
            .filter(|e| e.expires_ms > now && (tombstones || !e.deleted))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        v
    }

    pub fn live_count(&self) -> usize {
        let now = now_ms();
        let st = self.inner.lock().expect("blacklist lock");
        st.entries.values().filter(|e| e.live(now)).count()
    }

    fn save(&self) {
        let Some(path) = &self.file else { return };
        let _w = self.write.lock().expect("write lock");
        let snapshot = {
            let st = self.inner.lock().expect("blacklist lock");
            Persisted {
                version: 1,
                entries: st.entries.values().cloned().collect(),
                history: st
                    .history
                    .iter()
                    .map(|(k, v)| (super::signature::id(*k), *v))
                    .collect(),
            }
        };
        if let Err(e) = write_atomic(path, &serde_json::to_vec_pretty(&snapshot).expect("json")) {
            tracing::error!(file = %path.display(), error = %e, "cannot persist the qod blacklist");
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, updated: u64, ttl_ms: u64) -> Entry {
        let now = now_ms();
        Entry {
            id: super::super::signature::id(id),
            coarse: "c".into(),
            signature: Default::default(),
            route: "r".into(),
            listener: "l".into(),
            reason: "crashed".into(),
            strikes: 2,
            repeat: 0,
            created_ms: now,
            expires_ms: now + ttl_ms,
            updated_ms: updated,
            origin: "local".into(),
            node: "n".into(),
            dry_run: false,
            note: String::new(),
            deleted: false,
            sample: None,
        }
    }

    #[test]
    fn survives_a_restart_and_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("qod.json");
        let b = Blacklist::open(Some(&f), 100).unwrap();
        assert_eq!(b.merge(entry(7, 1, 60_000)), Merge::New);
        // Long enough to be live when merged on a loaded machine (1 ms was not), then waited out.
        let short = entry(8, 1, 200);
        let expires = short.expires_ms;
        assert_eq!(b.merge(short), Merge::New);
        for _ in 0..100 {
            if now_ms() > expires {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(now_ms() > expires);
        let b = Blacklist::open(Some(&f), 100).unwrap();
        assert!(b.matching(7, now_ms()).is_some());
        assert!(b.get(8).is_none(), "expired entries are not loaded");
        assert_eq!(b.repeats(8), 1, "history outlives the entry");
        std::fs::write(&f, b"{not json").unwrap();
        assert!(Blacklist::open(Some(&f), 100).is_err());
    }

    #[test]
    fn last_writer_wins_and_deletions_are_tombstones() {
        let b = Blacklist::open(None, 100).unwrap();
        assert_eq!(b.merge(entry(1, 10, 60_000)), Merge::New);
        assert_eq!(b.merge(entry(1, 5, 60_000)), Merge::Ignored, "older edit");
        let mut del = entry(1, 20, 60_000);
        del.deleted = true;
        assert_eq!(b.merge(del), Merge::Updated);
        assert!(b.matching(1, now_ms()).is_none());
        assert_eq!(b.list(false).len(), 0);
        assert_eq!(b.list(true).len(), 1, "the tombstone is still shared");
        assert_eq!(
            b.merge(entry(1, 15, 60_000)),
            Merge::Ignored,
            "no resurrection"
        );
    }

    #[test]
    fn bounded() {
        let b = Blacklist::open(None, 3).unwrap();
        for i in 0..10 {
            b.merge(entry(i, 1, 60_000 + i));
        }
        assert_eq!(b.list(true).len(), 3);
        assert!(b.get(9).is_some(), "the longest-lived are kept");
    }
}
