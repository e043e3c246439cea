//! The bounded cache of open object files. Handles stay open while cached, so a file replaced by
//! rename is not seen until its handle leaves the cache (see the module docs of the object store).

use crate::block::ObjectKey;
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

const FILE_CACHE_CAP: usize = 256;

/// Bounded cache of open object files, evicting the least recently used.
#[derive(Default)]
pub(crate) struct FileCache {
    map: HashMap<ObjectKey, (Arc<File>, u64)>,
    tick: u64,
}

impl FileCache {
    pub(crate) fn get(&mut self, key: &ObjectKey) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(f, t)| {
            *t = tick;
            f.clone()
        })
    }

    pub(crate) fn insert(&mut self, key: ObjectKey, f: Arc<File>) {
        if self.map.len() >= FILE_CACHE_CAP && !self.map.contains_key(&key) {
            if let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&old);
            }
        }
        self.tick += 1;
        self.map.insert(key, (f, self.tick));
    }

    pub(crate) fn remove(&mut self, key: &ObjectKey) {
        self.map.remove(key);
    }
}
