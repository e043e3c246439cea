//! Lock stripes: objects hash onto [`LOCK_STRIPES`] reader-writer locks. The writer holds the
//! stripes of its batch from its first `pwrite` to after its commit; a reader holds its object's
//! stripe while it reads metadata and data, so it never sees file and metadata disagree.

use super::read_lock;
use crate::block::ObjectKey;
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const LOCK_STRIPES: usize = 1024;

pub(crate) struct LockStripes(Vec<RwLock<()>>);

impl LockStripes {
    pub(crate) fn new() -> Self {
        Self((0..LOCK_STRIPES).map(|_| RwLock::new(())).collect())
    }

    /// The stripe an object hashes onto.
    pub(crate) fn of(key: &ObjectKey) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % LOCK_STRIPES as u64) as usize
    }

    /// Read-locks the object's stripe.
    pub(crate) fn read(&self, key: &ObjectKey) -> RwLockReadGuard<'_, ()> {
        read_lock(&self.0[Self::of(key)])
    }

    /// Write-locks the given stripes, in ascending order (so two lockers cannot deadlock).
    pub(crate) fn write(&self, stripes: BTreeSet<usize>) -> Vec<RwLockWriteGuard<'_, ()>> {
        stripes
            .into_iter()
            .map(|i| super::write_lock(&self.0[i]))
            .collect()
    }

    /// Write-locks every stripe, in ascending order.
    pub(crate) fn write_all(&self) -> Vec<RwLockWriteGuard<'_, ()>> {
        self.0.iter().map(super::write_lock).collect()
    }
}
