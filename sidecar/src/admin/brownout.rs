//! `/brownout`: the switch that drops optional work first under overload (`off`, `on`, `auto`).

use super::error::AdminError;
use super::reply::{body, text, Reply};
use crate::server::SidecarState;
use http::{Method, StatusCode};
use hyper::body::Incoming;

pub async fn handle(state: &SidecarState, req: http::Request<Incoming>) -> Reply {
    match *req.method() {
        Method::GET => Ok(text(StatusCode::OK, format!("{}\n", state.brownout.mode()))),
        Method::PUT | Method::POST => {
            let b = body(req).await?;
            state
                .brownout
                .set(&String::from_utf8_lossy(&b))
                .map_err(AdminError::bad_request)?;
            tracing::warn!(mode = state.brownout.mode(), "brownout switched");
            Ok(text(StatusCode::OK, format!("{}\n", state.brownout.mode())))
        }
        _ => Err(AdminError::method_not_allowed("GET or PUT")),
    }
}
