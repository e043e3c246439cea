//! `/outages`: planned outages (`GET` lists local and announced ones, `POST` plans one here and
//! announces it to the peers, `DELETE /outages/{id}` cancels a local one), and
//! `POST /outages/announce`, where peers announce theirs.

use super::error::AdminError;
use super::reply::{body, json, json_with, no_content, text, Reply};
use crate::config::{Config, Direction};
use crate::policy::outage::{Listed, Outage, OutageRequest};
use crate::server::SidecarState;
use http::{Method, StatusCode};
use hyper::body::Incoming;

pub async fn handle(state: &SidecarState, cfg: &Config, req: http::Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/outages") => Ok(json(&state.outages.list())),
        (Method::POST, "/outages/announce") => {
            let o: Outage = serde_json::from_slice(&body(req).await?)
                .map_err(|e| AdminError::bad_request(format!("bad announcement: {e}")))?;
            state.outages.receive(o);
            Ok(text(StatusCode::OK, "ok\n"))
        }
        (Method::POST, "/outages") => {
            let r: OutageRequest = serde_json::from_slice(&body(req).await?)
                .map_err(|e| AdminError::bad_request(format!("bad outage: {e}")))?;
            create(state, cfg, r)
        }
        (Method::DELETE, p) if p.starts_with("/outages/") => {
            let id = &p["/outages/".len()..];
            if state
                .outages
                .cancel(id, &cfg.mesh.peers, cfg.mesh.token.as_deref())
            {
                Ok(no_content())
            } else {
                Err(AdminError::not_found(format!("no local outage {id:?}")))
            }
        }
        (_, "/outages") => Err(AdminError::method_not_allowed("GET or POST")),
        (_, "/outages/announce") => Err(AdminError::method_not_allowed("POST")),
        _ => Err(AdminError::method_not_allowed("DELETE")),
    }
}

fn create(state: &SidecarState, cfg: &Config, r: OutageRequest) -> Reply {
    let upstreams = cfg
        .listeners
        .iter()
        .filter(|l| l.direction == Direction::Inbound)
        .map(|l| l.listen.to_string())
        .collect();
    let o = state
        .outages
        .create(
            r,
            &cfg.admin.listen.to_string(),
            upstreams,
            &cfg.mesh.peers,
            cfg.mesh.token.as_deref(),
        )
        .map_err(|e| AdminError::bad_request(e.to_string()))?;
    let listed = Listed {
        status: o.status(crate::policy::now_ms()),
        outage: o,
        scope: "local",
    };
    Ok(json_with(StatusCode::CREATED, &listed))
}
