//! The peer listener. Every request is authenticated with the swarm key before any handler runs, and
//! every answer is signed; a refused caller learns nothing but the refusal.

use super::auth::{self, AuthError};
use super::{FeedPage, Hello};
use crate::departure::Refusal;
use crate::node::Node;
use crate::pinset::{LocalStatus, PinEntry};
use crate::sync::FEED_PAGE;
use crate::unixfs::Cid;
use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Peer messages are small (a block is at most `max_block_size`); anything bigger is refused.
const MAX_PEER_BODY: usize = 16 << 20;

/// `extra`: routes of other services on the peer port (the block service's), behind the same
/// authentication.
pub fn router(node: Arc<Node>, extra: Router) -> Router {
    Router::new()
        .route("/peer/v1/hello", post(hello))
        .route("/peer/v1/blocks/{cid}", get(block))
        .route("/peer/v1/pinset", get(feed).post(push))
        .route("/peer/v1/status", get(statuses))
        .route("/peer/v1/status/{cid}", get(status))
        .route("/peer/v1/recover/{cid}", post(recover))
        .route("/peer/v1/departures", post(departures))
        .with_state(node.clone())
        .merge(extra)
        .layer(middleware::from_fn_with_state(node, authenticate))
}

/// Peer ID of the authenticated caller, for handlers.
#[derive(Clone)]
struct Caller(#[allow(dead_code)] String);

async fn authenticate(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = to_bytes(body, MAX_PEER_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "peer request too large\n").into_response();
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (caller, nonce) = match auth::verify_request(
        &node.key,
        &node.replay,
        &parts.method,
        pq,
        &parts.headers,
        &body,
    ) {
        Ok(v) => v,
        Err(e) => {
            let claimed = parts
                .headers
                .get(auth::H_PEER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            if node.refusals.allow(&format!("{} {claimed}", remote.ip())) {
                tracing::warn!(%remote, claimed_peer = claimed, path = parts.uri.path(), error = %e, "refused peer request (private network)");
            }
            let status = if e == AuthError::Missing {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            return (status, format!("{e}\n")).into_response();
        }
    };
    if node.is_removed(&caller) {
        if node.refusals.allow(&format!("removed {caller}")) {
            tracing::warn!(%remote, peer = %caller, path = parts.uri.path(), "refused a request from a peer removed from the cluster");
        }
        let msg = crate::departure::Refusal::Removed(caller).to_string();
        let resp = (StatusCode::FORBIDDEN, format!("{msg}\n")).into_response();
        return sign(&node, &nonce, resp).await;
    }
    let mut req = Request::from_parts(parts, Body::from(body));
    req.extensions_mut().insert(Caller(caller));
    let resp = next.run(req).await;
    sign(&node, &nonce, resp).await
}

/// Signs an answer so the caller can trust it (refusals included).
async fn sign(node: &Node, nonce: &str, resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let signed = auth::sign_response(&node.key, node.me(), nonce, parts.status, &body);
    parts.headers.extend(signed);
    Response::from_parts(parts, Body::from(body))
}

async fn hello(State(node): State<Arc<Node>>, Json(h): Json<Hello>) -> Response {
    if !node.admits(&h.id, &h.addr) {
        tracing::warn!(peer = %h.id, addr = %h.addr, "refused a peer outside the fixed peerset");
        return (
            StatusCode::FORBIDDEN,
            "not a member of this node's fixed peerset\n",
        )
            .into_response();
    }
    if let Err(r) = node.saw_peer(&h, None) {
        let status = match r {
            Refusal::Removed(_) => StatusCode::FORBIDDEN,
            Refusal::Departed(_) | Refusal::Leaving => StatusCode::GONE,
        };
        return (status, format!("{r}\n")).into_response();
    }
    Json(node.hello()).into_response()
}

/// A goodbye from a leaving transient member, or removals made on another node.
async fn departures(
    State(node): State<Arc<Node>>,
    Json(deps): Json<Vec<crate::departure::Departure>>,
) -> Response {
    let n = node.apply_departures(&deps);
    Json(serde_json::json!({ "applied": n })).into_response()
}

async fn block(State(node): State<Arc<Node>>, Path(cid): Path<String>) -> Response {
    let Ok(c) = cid.parse::<Cid>() else {
        return (StatusCode::BAD_REQUEST, "invalid cid\n").into_response();
    };
    // Only local blocks: a peer asking us must not make us ask everybody else.
    match node.db(move |s| s.get_block(&c)).await {
        Ok(Some(b)) => b.into_response(),
        Ok(None) | Err(crate::node::NodeError::Store(crate::store::StoreError::Corrupt { .. })) => {
            (StatusCode::NOT_FOUND, "block not found\n").into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Deserialize)]
struct FeedQuery {
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    since: u64,
}

async fn feed(State(node): State<Arc<Node>>, Query(q): Query<FeedQuery>) -> Response {
    let r = node
        .db(move |s| s.pins_since(q.epoch, q.since, FEED_PAGE + 1))
        .await;
    match r {
        Ok(mut entries) => {
            let more = entries.len() > FEED_PAGE;
            entries.truncate(FEED_PAGE);
            Json(FeedPage {
                epoch: node.store.epoch(),
                entries,
                more,
            })
            .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn push(State(node): State<Arc<Node>>, Json(entries): Json<Vec<PinEntry>>) -> Response {
    match node.merge(entries).await {
        Ok(changed) => Json(serde_json::json!({ "merged": changed.len() })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn statuses(State(node): State<Arc<Node>>) -> Response {
    match node.db(|s| s.local_statuses()).await {
        Ok(v) => Json(v.into_iter().collect::<HashMap<String, LocalStatus>>()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn status(State(node): State<Arc<Node>>, Path(cid): Path<String>) -> Response {
    match node.local_status_of(&cid).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn recover(State(node): State<Arc<Node>>, Path(cid): Path<String>) -> Response {
    match node.recover_local(&cid).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
