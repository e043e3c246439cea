//! Repeated refusals (a misconfigured node retries every sync round) are logged once per interval
//! and key, so the first one is loud and the log stays readable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered; beyond that the memory is reset (a burst of distinct keys logs again).
const MAX_KEYS: usize = 1024;

pub struct LogLimiter {
    last: Mutex<HashMap<String, Instant>>,
    every: Duration,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        Self {
            last: Mutex::new(HashMap::new()),
            every,
        }
    }

    /// Whether a message for `key` should be logged now.
    pub fn allow(&self, key: &str) -> bool {
        let mut m = self.last.lock().expect("log limiter lock");
        let now = Instant::now();
        match m.get(key) {
            Some(t) if now.duration_since(*t) < self.every => false,
            _ => {
                if m.len() >= MAX_KEYS {
                    m.clear();
                }
                m.insert(key.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_key() {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert!(l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
        let l = LogLimiter::new(Duration::ZERO);
        assert!(l.allow("a") && l.allow("a"));
    }
}
