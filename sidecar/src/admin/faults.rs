//! `/faults`: HTTP faults injected into every listener (`GET` lists, `POST` adds one spec,
//! `DELETE` clears all, `DELETE /faults/{id}` removes one). Specs and their validation live with
//! the policy (`policy/fault`); this is only their HTTP face.

use super::error::AdminError;
use super::reply::{body, json, json_with, no_content, Reply};
use crate::policy::fault;
use crate::server::SidecarState;
use http::{Method, StatusCode};
use hyper::body::Incoming;

pub async fn handle(state: &SidecarState, req: http::Request<Incoming>) -> Reply {
    let path = req.uri().path();
    if let Some(id) = path.strip_prefix("/faults/") {
        return match *req.method() {
            Method::DELETE => {
                fault::handle_delete(&state.faults, id)?;
                Ok(no_content())
            }
            _ => Err(AdminError::method_not_allowed("DELETE")),
        };
    }
    match *req.method() {
        Method::GET => Ok(json(&fault::handle_list(&state.faults))),
        Method::DELETE => Ok(json(&fault::handle_clear(&state.faults))),
        Method::POST => {
            let added = fault::handle_add(&state.faults, &body(req).await?)?;
            Ok(json_with(StatusCode::CREATED, &added))
        }
        _ => Err(AdminError::method_not_allowed("GET, POST or DELETE")),
    }
}
