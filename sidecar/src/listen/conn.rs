//! Open connections across every listener, so a drain knows when it is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Open connections, so a drain knows when it is done.
#[derive(Default)]
pub struct ConnCounter {
    n: AtomicUsize,
    zero: Notify,
}

pub struct ConnGuard<'a>(&'a ConnCounter);

impl ConnCounter {
    pub fn enter(&self) -> ConnGuard<'_> {
        self.n.fetch_add(1, Ordering::SeqCst);
        ConnGuard(self)
    }

    pub fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    pub async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}
