//! `/split`: traffic splits (`GET /split` lists the live ones; `PUT`, `GET` and `DELETE
//! /split/{listener}` install or update, show, and remove one). Specs, their validation and the
//! counters live with the policy (`policy/split`); this is only their HTTP face.
//!
//! Statuses: `PUT` 200 with the split as `GET` shows it; 400 for a bad spec (no TTL, weights out
//! of range or above 100 in total, a bad address, duplicate or reserved names) or a listener
//! that cannot split (TCP, outbound) and for an unknown listener; 409 when another controller
//! owns the live split. `GET` 404 when no split is live. `DELETE` 204 when a live split was
//! removed, 404 when there was none (already gone: the end state is the same).

use super::error::AdminError;
use super::reply::{body, json, no_content, Reply};
use crate::config::{Config, Direction, Protocol};
use crate::policy::split::{SplitError, SplitSpec};
use crate::server::SidecarState;
use http::Method;
use hyper::body::Incoming;

pub async fn handle(state: &SidecarState, cfg: &Config, req: http::Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let Some(listener) = path.strip_prefix("/split/").filter(|l| !l.is_empty()) else {
        return match *req.method() {
            Method::GET => Ok(json(&serde_json::json!({ "splits": state.splits.list() }))),
            _ => Err(AdminError::method_not_allowed(
                "GET (PUT, GET, DELETE /split/{listener})",
            )),
        };
    };
    match req.method().clone() {
        Method::PUT => {
            let stable = stable_upstream(cfg, listener)?;
            let spec: SplitSpec = serde_json::from_slice(&body(req).await?)
                .map_err(|e| AdminError::bad_request(format!("bad split: {e}")))?;
            let status = state
                .splits
                .put(listener, &stable, spec)
                .map_err(|e: SplitError| AdminError::new(e.status(), e.to_string()))?;
            Ok(json(&status))
        }
        Method::GET => state
            .splits
            .get(listener)
            .map(|s| json(&s))
            .ok_or_else(|| no_split(listener)),
        Method::DELETE => {
            if state.splits.delete(listener) {
                Ok(no_content())
            } else {
                Err(no_split(listener))
            }
        }
        _ => Err(AdminError::method_not_allowed("PUT, GET or DELETE")),
    }
}

fn no_split(listener: &str) -> AdminError {
    AdminError::not_found(format!("no live split on listener {listener:?}"))
}

/// The listener's own upstream, if it is one a split can sit beside.
fn stable_upstream(cfg: &Config, listener: &str) -> Result<String, AdminError> {
    let Some(l) = cfg.listeners.iter().find(|l| l.name == listener) else {
        let names: Vec<&str> = cfg.listeners.iter().map(|l| l.name.as_str()).collect();
        // 400, not 404: the request names a listener this sidecar does not have (issue 21), as it
        // would name a bad address; the resource's path is not what is missing.
        return Err(AdminError::bad_request(format!(
            "no listener {listener:?} (listeners: {})",
            names.join(", ")
        )));
    };
    if l.protocol != Protocol::Http {
        return Err(AdminError::bad_request(format!(
            "listener {listener:?} is a TCP listener; a traffic split needs an HTTP listener"
        )));
    }
    match (&l.direction, &l.upstream) {
        (Direction::Inbound, Some(u)) => Ok(u.clone()),
        _ => Err(AdminError::bad_request(format!(
            "listener {listener:?} is outbound (it routes by authority); a traffic split needs \
             an inbound listener with a fixed upstream"
        ))),
    }
}
