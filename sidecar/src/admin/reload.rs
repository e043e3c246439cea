//! `POST /reload`: re-read the config file, validate it, and swap it in (as SIGHUP does). A
//! rejected config leaves the running one in place and says why.

use super::error::AdminError;
use super::reply::{text, Reply};
use crate::server::SidecarState;
use http::{Method, StatusCode};

pub fn handle(state: &SidecarState, method: &Method) -> Reply {
    if method != Method::POST {
        return Err(AdminError::method_not_allowed("POST"));
    }
    state
        .reload_from_file()
        .map_err(|e| AdminError::bad_request(format!("reload rejected: {e}")))?;
    Ok(text(StatusCode::OK, "reloaded\n"))
}
