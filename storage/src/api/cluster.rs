//! IPFS-Cluster-compatible REST subset: same paths, JSON shapes, NDJSON streams (empty stream → 204,
//! `X-Stream-Error` trailer) and status vocabulary, so Cluster clients work against a Bulwark node.

use super::error::{ApiError, Cluster};
use super::upload::{add_options, ingest_multipart, parse_bool};
use super::{ndjson, set_header};
use crate::node::{Node, AGENT};
use crate::peer::PeerAddr;
use crate::pinset::{GlobalPinInfo, PinEntry, TrackerStatus};
use crate::unixfs::parse_cid_path;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The IPFS Cluster release whose REST API this follows.
pub const CLUSTER_COMPAT_VERSION: &str = "1.1.6";

type Q = Query<HashMap<String, String>>;
type Res = Result<Response, Cluster>;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/id", get(id))
        .route("/version", get(version))
        .route("/peers", get(peers))
        .route("/peers/{id}", axum::routing::delete(remove_peer))
        .route("/add", post(add))
        .route("/pins", get(list_pins))
        .route("/pins/recover", post(recover_all))
        .route("/pins/{cid}", get(get_pin).post(pin).delete(unpin))
        .route("/pins/ipfs/{cid}", get(get_pin).post(pin).delete(unpin))
        .route("/pins/{cid}/recover", post(recover))
        .route("/allocations", get(allocations))
        .route("/allocations/{cid}", get(allocation))
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "code": 404, "message": "Not Found" })),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(node)
}

/// NDJSON stream answer; an empty stream is 204, as in Cluster.
fn stream(items: &[Value]) -> Response {
    if items.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut r = Response::new(Body::from(ndjson(items)));
    set_header(&mut r, "content-type", "application/json");
    set_header(&mut r, "trailer", "X-Stream-Error");
    r
}

fn pin_json(e: &PinEntry) -> Value {
    json!({
        "cid": e.cid, "type": "pin", "allocations": e.allocations, "max_depth": -1, "reference": null,
        "timestamp": e.timestamp, "replication_factor_min": e.replication_factor_min,
        "replication_factor_max": e.replication_factor_max, "name": e.name, "mode": "recursive",
        "shard_size": 0, "user_allocations": null, "expire_at": "0001-01-01T00:00:00Z",
        "metadata": null, "pin_update": null, "origins": [],
    })
}

/// One peer as `/id` and `/peers` show it.
struct PeerView<'a> {
    id: &'a str,
    addr: &'a str,
    peername: &'a str,
    error: &'a str,
    /// A transient member: takes part in membership, receives no pin allocations.
    transient: bool,
    /// SHA-256 of the peer's running binary, as it announced it (empty when unknown).
    digest: &'a str,
    version: &'a str,
}

fn id_json(node: &Node, p: &PeerView, cluster_peers: &[String]) -> Value {
    let ma = PeerAddr::multiaddr(p.addr, p.id);
    json!({
        "id": p.id, "addresses": [ma], "cluster_peers": cluster_peers,
        "cluster_peers_addresses": [], "version": format!("{CLUSTER_COMPAT_VERSION}+{AGENT}"),
        "commit": "", "rpc_protocol_version": "/bulwark/peer/1.0.0", "error": p.error,
        "ipfs": { "id": p.id, "addresses": [ma], "error": p.error }, "peername": p.peername,
        "uptime_ms": if p.id == node.me() { node.uptime_ms() } else { 0 },
        // Bulwark's additions (Cluster clients ignore unknown fields).
        "transient": p.transient, "binary_digest": p.digest, "build_version": p.version,
    })
}

fn cluster_peers(node: &Node) -> Vec<String> {
    let mut v: Vec<String> = node.members().into_keys().collect();
    v.push(node.me().to_string());
    v.sort();
    v
}

fn self_view(node: &Node) -> (String, String) {
    (node.cfg.advertise(), node.peername())
}

fn me_json(node: &Node, all: &[String]) -> Value {
    let (addr, name) = self_view(node);
    let b = crate::build::identity();
    let me = PeerView {
        id: node.me(),
        addr: &addr,
        peername: &name,
        error: "",
        transient: node.cfg.peer.transient,
        digest: &b.digest,
        version: b.version,
    };
    id_json(node, &me, all)
}

async fn id(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(me_json(&node, &cluster_peers(&node)))
}

async fn version() -> Json<Value> {
    let b = crate::build::identity();
    Json(json!({
        "version": format!("{CLUSTER_COMPAT_VERSION}+{AGENT}"),
        "build_version": b.version, "binary_digest": b.digest,
    }))
}

async fn peers(State(node): State<Arc<Node>>) -> Response {
    let all = cluster_peers(&node);
    let mut out = vec![me_json(&node, &all)];
    let mut ms: Vec<_> = node.members().into_iter().collect();
    ms.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, m) in ms {
        let err = if node.is_live(&m) {
            String::new()
        } else if m.last_error.is_empty() {
            "peer not reachable".to_string()
        } else {
            m.last_error.clone()
        };
        let view = PeerView {
            id: &id,
            addr: &m.addr,
            peername: &m.peername,
            error: &err,
            transient: m.transient,
            digest: &m.digest,
            version: &m.version,
        };
        out.push(id_json(&node, &view, &all));
    }
    stream(&out)
}

/// `DELETE /peers/{id}` (what `ipfs-cluster-ctl peers rm` calls): removes a member for good
/// (see [`crate::departure`]). 204 on success; 404 for an unknown or already removed peer; 400
/// for this node itself.
async fn remove_peer(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Res {
    node.remove_peer(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn replication(q: &Q) -> Result<(Option<i32>, Option<i32>), ApiError> {
    let p = |name: &str| -> Result<Option<i32>, ApiError> {
        q.0.get(name)
            .map(|v| {
                v.parse::<i32>()
                    .map_err(|_| ApiError::bad(format!("invalid {name} {v:?}")))
            })
            .transpose()
    };
    let both = p("replication")?;
    let min = p("replication-min")?.or(both);
    let max = p("replication-max")?.or(both);
    Ok((min, max))
}

async fn add(
    State(node): State<Arc<Node>>,
    q: Q,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Res {
    let get = |k: &str| q.0.get(k).map(String::as_str);
    let opts = add_options(
        get("cid-version"),
        get("raw-leaves"),
        get("chunker"),
        get("hash"),
    )?;
    let flag = |name: &str, default: bool| {
        get(name)
            .map(|v| parse_bool(name, v))
            .transpose()
            .map(|b| b.unwrap_or(default))
    };
    let no_pin = flag("no-pin", false)?;
    let stream_channels = flag("stream-channels", true)?;
    let (min, max) = replication(&q)?;
    let mp = mp.map_err(|_| {
        ApiError::bad("a multipart/form-data body with at least one file is required")
    })?;
    let added = ingest_multipart(&node, mp, opts, false).await?;
    let mut out = Vec::new();
    for a in added {
        let allocations = if no_pin {
            vec![]
        } else {
            let name = get("name").map(str::to_string).or(Some(a.name.clone()));
            node.pin(&a.root.cid, name, min, max).await?.allocations
        };
        out.push(json!({ "name": a.name, "cid": a.root.cid.to_string(), "size": a.root.cumulative_size, "allocations": allocations }));
    }
    if stream_channels {
        Ok(stream(&out))
    } else {
        // As Cluster does with `stream-channels=false`: every output in one JSON array (clients
        // index `[0]`), not one JSON object per line.
        Ok(Json(out).into_response())
    }
}

async fn pin(State(node): State<Arc<Node>>, Path(cid): Path<String>, q: Q) -> Res {
    let cid = parse_cid_path(&cid)?;
    let (min, max) = replication(&q)?;
    if q.0.get("mode").is_some_and(|m| m != "recursive") {
        return Err(ApiError::bad("only mode=recursive is supported").into());
    }
    let e = node.pin(&cid, q.0.get("name").cloned(), min, max).await?;
    Ok(Json(pin_json(&e)).into_response())
}

async fn unpin(State(node): State<Arc<Node>>, Path(cid): Path<String>) -> Res {
    let cid = parse_cid_path(&cid)?;
    let e = node.unpin(&cid).await?;
    Ok(Json(pin_json(&e)).into_response())
}

fn local(q: &Q) -> Result<bool, ApiError> {
    q.0.get("local")
        .map(|v| parse_bool("local", v))
        .transpose()
        .map(|v| v.unwrap_or(false))
}

async fn get_pin(State(node): State<Arc<Node>>, Path(cid): Path<String>, q: Q) -> Res {
    let cid = parse_cid_path(&cid)?.to_string();
    let g = node.status(&cid, local(&q)?).await?;
    Ok(Json(g).into_response())
}

async fn list_pins(State(node): State<Arc<Node>>, q: Q) -> Res {
    let filters: Vec<String> =
        q.0.get("filter")
            .map(|f| {
                f.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
    if let Some(bad) = filters
        .iter()
        .find(|f| !TrackerStatus::FILTER_WORDS.contains(&f.as_str()))
    {
        return Err(ApiError::bad(format!("invalid filter value: {bad}")).into());
    }
    let cids: Option<Vec<String>> =
        q.0.get("cids")
            .map(|c| c.split(',').map(str::to_string).collect());
    let mut all: Vec<GlobalPinInfo> = node.status_all(local(&q)?).await?;
    if let Some(c) = &cids {
        all.retain(|g| c.contains(&g.cid));
    }
    if !filters.is_empty() {
        all.retain(|g| {
            g.peer_map
                .values()
                .any(|p| filters.iter().any(|f| p.status.matches(f)))
        });
    }
    let items: Vec<Value> = all
        .iter()
        .map(|g| serde_json::to_value(g).expect("json"))
        .collect();
    Ok(stream(&items))
}

async fn recover(State(node): State<Arc<Node>>, Path(cid): Path<String>) -> Res {
    let cid = parse_cid_path(&cid)?.to_string();
    Ok(Json(node.recover(&cid).await?).into_response())
}

async fn recover_all(State(node): State<Arc<Node>>) -> Res {
    let mut out = Vec::new();
    for g in node.status_all(false).await? {
        if g.peer_map.values().any(|p| p.status.matches("error")) {
            out.push(serde_json::to_value(node.recover(&g.cid).await?).expect("json"));
        }
    }
    Ok(stream(&out))
}

async fn allocations(State(node): State<Arc<Node>>, q: Q) -> Res {
    match q.0.get("filter").map(String::as_str) {
        None | Some("") | Some("pin") | Some("all") => {}
        Some(f) => return Err(ApiError::bad(format!("invalid filter value: {f}")).into()),
    }
    let items: Vec<Value> = node.pins().await?.iter().map(pin_json).collect();
    Ok(stream(&items))
}

async fn allocation(State(node): State<Arc<Node>>, Path(cid): Path<String>) -> Res {
    let cid = parse_cid_path(&cid)?.to_string();
    match node.pin_entry(&cid).await? {
        Some(e) => Ok(Json(pin_json(&e)).into_response()),
        None => Err(ApiError::new(
            super::error::Kind::NotPinned,
            "pin is not part of the pinset",
        )
        .into()),
    }
}
