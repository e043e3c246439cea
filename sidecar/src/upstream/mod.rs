//! The way out: where a request goes (`forward.rs`: the target, the allow-list, the origin-form
//! rewrite), the connection pool (`pool.rs`) and the HTTP/1.1 client codec (`h1.rs`).

pub mod forward;
pub mod h1;
pub mod pool;

use crate::classify::RequestMeta;
use std::sync::{Arc, Mutex};

/// A request head handed back by the upstream client once it is encoded for the wire.
///
/// Why: the retry layer needs the head again for another try, and cloning it up front for every
/// request (the `HeaderMap`, the extensions, the URI; then dropping the copy) cost ~1.1k
/// instructions and four allocations per proxied request, paid by every request for the few that
/// are retried. Instead the retry layer leaves a `HeadBack` in the request's [`RequestMeta`] and
/// the upstream client ([`pool::Pool::send`]) hands the head back through it as soon as the head
/// is encoded, before it connects or sends, so the head is back whatever happens to that try
/// afterwards. (In `RequestMeta`, not an extension of its own: inserting one more extension cost
/// more than the clone it saves.)
#[derive(Clone, Default)]
pub struct HeadBack(Arc<Mutex<Option<::http::request::Parts>>>);

impl std::fmt::Debug for HeadBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadBack")
    }
}

impl HeadBack {
    /// Hands `parts` back to the `HeadBack` their `RequestMeta` carries, if any (taken out first,
    /// so the head never holds its own slot); otherwise they are dropped.
    pub fn give_back(mut parts: ::http::request::Parts) {
        let slot = parts
            .extensions
            .get_mut::<RequestMeta>()
            .and_then(|m| m.head_back.take());
        if let Some(slot) = slot {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(parts);
        }
    }

    /// The head handed back since the last `take`, if any.
    pub fn take(&self) -> Option<::http::request::Parts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
