//! `GET /circuits`: every upstream's breaker state (closed, open with why and until when,
//! half-open) as the breaker registry sees it.

use super::error::AdminError;
use super::reply::{json, Reply};
use crate::server::SidecarState;
use http::Method;

pub fn handle(state: &SidecarState, method: &Method) -> Reply {
    match *method {
        Method::GET => Ok(json(&state.breakers.snapshot())),
        _ => Err(AdminError::method_not_allowed("GET")),
    }
}
