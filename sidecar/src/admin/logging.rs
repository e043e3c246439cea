//! `/log-level`: read or change the log filter at run time (`PUT` a level or an `EnvFilter`
//! directive such as `info,sidecar=debug`).

use super::error::AdminError;
use super::reply::{body, text, Reply};
use crate::server::SidecarState;
use http::{Method, StatusCode};
use hyper::body::Incoming;

pub async fn handle(state: &SidecarState, req: http::Request<Incoming>) -> Reply {
    let log = state
        .log
        .as_ref()
        .ok_or_else(|| AdminError::not_found("logging is not managed by this process"));
    match *req.method() {
        Method::GET => Ok(text(StatusCode::OK, format!("{}\n", log?.level()))),
        Method::PUT | Method::POST => {
            let level = String::from_utf8_lossy(&body(req).await?)
                .trim()
                .to_string();
            log?.set_level(&level).map_err(AdminError::bad_request)?;
            tracing::info!(%level, "log level changed");
            Ok(text(StatusCode::OK, format!("{level}\n")))
        }
        _ => Err(AdminError::method_not_allowed("GET or PUT")),
    }
}
