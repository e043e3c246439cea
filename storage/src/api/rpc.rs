//! Kubo-compatible RPC subset (`/api/v0/...`): POST only, `?arg=` arguments, unknown options ignored,
//! Kubo's output kinds, error JSON and wording, so existing Kubo RPC clients work unchanged.
//!
//! Pin commands act on the cluster pinset (as IPFS Cluster's Kubo proxy does): `pin/add` pins with the
//! default replication factor (or `replication-min`/`replication-max`, a Bulwark extension), `pin/ls`
//! lists the cluster pinset.

use super::error::{ApiError, Kubo};
use super::upload::{add_options, ingest_multipart, parse_bool};
use super::{ndjson, set_header, stream_with_error_trailer};
use crate::node::{Node, NodeBlocks, AGENT, KUBO_COMPAT_VERSION};
use crate::peer::PeerAddr;
use crate::pinset::TrackerStatus;
use crate::unixfs::{self, parse_cid_path, Cid};
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

type Args = Query<Vec<(String, String)>>;
type Res = Result<Response, Kubo>;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/v0/add", post(add))
        .route("/api/v0/cat", post(cat))
        .route("/api/v0/block/get", post(block_get))
        .route("/api/v0/block/put", post(block_put))
        .route("/api/v0/block/stat", post(block_stat))
        .route("/api/v0/pin/add", post(pin_add))
        .route("/api/v0/pin/rm", post(pin_rm))
        .route("/api/v0/pin/ls", post(pin_ls))
        .route("/api/v0/id", post(id))
        .route("/api/v0/version", post(version))
        .route("/api/v0/swarm/peers", post(swarm_peers))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "404 page not found\n",
            )
        })
        .layer(middleware::from_fn(kubo_transport))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(node)
}

/// go-ipfs-cmds transport rules: POST only (405 otherwise, 204 for OPTIONS), browser origins refused,
/// and the headers every Kubo answer carries.
async fn kubo_transport(req: Request, next: Next) -> Response {
    let text = |s: StatusCode, m: &'static str| {
        (s, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], m).into_response()
    };
    if req.uri().path().starts_with("/api/v0/") {
        if req.method() == Method::OPTIONS {
            return (StatusCode::NO_CONTENT, [(header::ALLOW, "POST")]).into_response();
        }
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed\n");
        }
        if let Some(origin) = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
        {
            if !is_local_origin(origin) {
                return text(StatusCode::FORBIDDEN, "403 - Forbidden\n");
            }
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("X-Stream-Output, X-Chunked-Output, X-Content-Length"),
    );
    h.insert(header::SERVER, HeaderValue::from_static(AGENT));
    if resp.status().is_success() {
        resp.headers_mut()
            .insert(header::TRAILER, HeaderValue::from_static("X-Stream-Error"));
    }
    resp
}

fn is_local_origin(origin: &str) -> bool {
    let host = origin
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

fn opt<'a>(q: &'a Args, name: &str) -> Option<&'a str> {
    q.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn flag(q: &Args, name: &str, default: bool) -> Result<bool, ApiError> {
    opt(q, name)
        .map(|v| parse_bool(name, v))
        .unwrap_or(Ok(default))
}

fn args(q: &Args) -> Vec<&str> {
    q.0.iter()
        .filter(|(k, _)| k == "arg")
        .map(|(_, v)| v.as_str())
        .collect()
}

fn first_arg(q: &Args, name: &str) -> Result<Cid, ApiError> {
    let a = args(q);
    let s = a.first().ok_or_else(|| ApiError::missing_arg(name))?;
    Ok(parse_cid_path(s)?)
}

fn json_value(v: Value) -> Response {
    let mut body = serde_json::to_vec(&v).expect("json");
    body.push(b'\n');
    let mut r = Response::new(Body::from(body));
    set_header(&mut r, "content-type", "application/json");
    r
}

fn channel(lines: Bytes) -> Response {
    let mut r = Response::new(Body::from(lines));
    set_header(&mut r, "content-type", "application/json");
    set_header(&mut r, "x-chunked-output", "1");
    r
}

async fn add(
    State(node): State<Arc<Node>>,
    q: Args,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Res {
    let opts = add_options(
        opt(&q, "cid-version"),
        opt(&q, "raw-leaves"),
        opt(&q, "chunker"),
        opt(&q, "hash"),
    )?;
    if flag(&q, "wrap-with-directory", false)? {
        return Err(ApiError::new(
            super::error::Kind::NotImplemented,
            "wrap-with-directory is not supported",
        )
        .into());
    }
    let only_hash = flag(&q, "only-hash", false)?;
    let pin = flag(&q, "pin", true)?;
    let mp = mp.map_err(|_| ApiError::missing_file("path"))?;
    let added = ingest_multipart(&node, mp, opts, only_hash).await?;
    let mut events = Vec::new();
    for a in &added {
        if pin && !only_hash {
            let name = opt(&q, "pin-name")
                .map(str::to_string)
                .or_else(|| Some(a.name.clone()));
            node.pin(&a.root.cid, name, None, None).await?;
        }
        events.push(json!({ "Name": a.name, "Hash": a.root.cid.to_string(), "Size": a.root.cumulative_size.to_string() }));
    }
    Ok(channel(ndjson(&events)))
}

async fn cat(State(node): State<Arc<Node>>, q: Args) -> Res {
    let cid = first_arg(&q, "ipfs-path")?;
    let num = |name: &str| -> Result<Option<i64>, ApiError> {
        opt(&q, name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad(format!("invalid {name} {v:?}")))
            })
            .transpose()
    };
    let offset = num("offset")?.unwrap_or(0);
    let length = num("length")?;
    if offset < 0 {
        return Err(ApiError::bad("cannot specify negative offset").into());
    }
    if length.is_some_and(|l| l < 0) {
        return Err(ApiError::bad("cannot specify negative length").into());
    }
    let src: Arc<dyn unixfs::BlockSource> = Arc::new(NodeBlocks(node.clone()));
    let size = unixfs::file_size(src.as_ref(), &cid).await?;
    let stream = unixfs::read_range(src, cid, offset as u64, length.map(|l| l as u64));
    let mut r = Response::new(stream_with_error_trailer(stream));
    set_header(&mut r, "content-type", "text/plain");
    set_header(&mut r, "x-stream-output", "1");
    set_header(&mut r, "x-content-length", &size.to_string());
    Ok(r)
}

async fn block_get(State(node): State<Arc<Node>>, q: Args) -> Res {
    let cid = first_arg(&q, "cid")?;
    let data = node.get_block(&cid).await?;
    let mut r = Response::new(Body::from(data.clone()));
    set_header(&mut r, "content-type", "text/plain");
    set_header(&mut r, "x-stream-output", "1");
    set_header(&mut r, "x-content-length", &data.len().to_string());
    Ok(r)
}

async fn block_stat(State(node): State<Arc<Node>>, q: Args) -> Res {
    let cid = first_arg(&q, "cid")?;
    let data = node.get_block(&cid).await?;
    Ok(json_value(
        json!({ "Key": cid.to_string(), "Size": data.len() }),
    ))
}

async fn block_put(
    State(node): State<Arc<Node>>,
    q: Args,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Res {
    let (version, codec) = match (opt(&q, "format"), opt(&q, "cid-codec")) {
        (Some("v0"), _) | (Some("protobuf"), _) => (0, unixfs::DAG_PB),
        (_, Some("dag-pb")) => (
            if opt(&q, "cid-version") == Some("0") {
                0
            } else {
                1
            },
            unixfs::DAG_PB,
        ),
        (_, None) | (_, Some("raw")) | (_, Some("")) => (1, unixfs::RAW),
        (_, Some(c)) => {
            return Err(ApiError::bad(format!("unsupported cid-codec {c:?}: raw or dag-pb")).into())
        }
    };
    match opt(&q, "mhtype") {
        None | Some("") | Some("sha2-256") => {}
        Some(h) => {
            return Err(ApiError::bad(format!("unsupported mhtype {h:?}: only sha2-256")).into())
        }
    }
    let pin = flag(&q, "pin", false)?;
    let mut mp = mp.map_err(|_| ApiError::missing_file("data"))?;
    let mut out = Vec::new();
    let limit = node.cfg.limits.max_block_size;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(
                    ApiError::bad(format!("malformed multipart body: {}", e.body_text())).into(),
                )
            }
        };
        let mut data = Vec::new();
        let mut field = field;
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    data.extend_from_slice(&c);
                    if data.len() > limit {
                        return Err(node
                            .put_block(Bytes::from(data), version, codec)
                            .await
                            .unwrap_err()
                            .into());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ApiError::bad(format!(
                        "malformed multipart body: {}",
                        e.body_text()
                    ))
                    .into())
                }
            }
        }
        let size = data.len();
        let cid = node.put_block(Bytes::from(data), version, codec).await?;
        if pin {
            node.pin(&cid, None, None, None).await?;
        }
        out.push(json!({ "Key": cid.to_string(), "Size": size }));
    }
    if out.is_empty() {
        return Err(ApiError::missing_file("data").into());
    }
    Ok(channel(ndjson(&out)))
}

fn replication(q: &Args) -> Result<(Option<i32>, Option<i32>), ApiError> {
    let p = |name: &str| -> Result<Option<i32>, ApiError> {
        opt(q, name)
            .map(|v| {
                v.parse::<i32>()
                    .map_err(|_| ApiError::bad(format!("invalid {name} {v:?}")))
            })
            .transpose()
    };
    Ok((p("replication-min")?, p("replication-max")?))
}

async fn pin_add(State(node): State<Arc<Node>>, q: Args) -> Res {
    let list = args(&q);
    if list.is_empty() {
        return Err(ApiError::missing_arg("ipfs-path").into());
    }
    if !flag(&q, "recursive", true)? {
        return Err(ApiError::bad("direct pins are not supported: pins are recursive").into());
    }
    let (min, max) = replication(&q)?;
    let mut pinned = Vec::new();
    for a in list {
        let cid = parse_cid_path(a)?;
        let e = node
            .pin(&cid, opt(&q, "name").map(str::to_string), min, max)
            .await?;
        // Like Kubo, answer once the content is pinned here (when this node holds a replica).
        if node.allocated_here(&e) {
            wait_pinned(&node, &e.cid, Duration::from_secs(60)).await?;
        }
        pinned.push(e.cid);
    }
    Ok(json_value(json!({ "Pins": pinned })))
}

async fn wait_pinned(node: &Arc<Node>, cid: &str, deadline: Duration) -> Result<(), ApiError> {
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(10);
    while start.elapsed() < deadline {
        let st = node.local_status_of(cid).await?;
        match st.status {
            TrackerStatus::Pinned => return Ok(()),
            TrackerStatus::PinError => {
                return Err(ApiError::new(
                    super::error::Kind::Internal,
                    format!("pin failed: {}", st.error),
                ))
            }
            _ => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
    Err(ApiError::new(
        super::error::Kind::Unavailable,
        format!("pin of {cid} still in progress after {deadline:?}; see `storage status {cid}`"),
    ))
}

async fn pin_rm(State(node): State<Arc<Node>>, q: Args) -> Res {
    let list = args(&q);
    if list.is_empty() {
        return Err(ApiError::missing_arg("ipfs-path").into());
    }
    let mut removed = Vec::new();
    for a in list {
        let cid = parse_cid_path(a)?;
        node.unpin(&cid).await?;
        removed.push(cid.to_string());
    }
    Ok(json_value(json!({ "Pins": removed })))
}

async fn pin_ls(State(node): State<Arc<Node>>, q: Args) -> Res {
    let ty = opt(&q, "type").unwrap_or("all");
    if !matches!(ty, "all" | "recursive" | "direct" | "indirect") {
        return Err(ApiError::bad(format!(
            "invalid type '{ty}', must be one of {{direct, indirect, recursive, all}}"
        ))
        .into());
    }
    let stream = flag(&q, "stream", false)?;
    let mut pins = node.pins().await?;
    if !matches!(ty, "all" | "recursive") {
        pins.clear();
    }
    let wanted = args(&q);
    if !wanted.is_empty() {
        let mut sel = Vec::new();
        for a in wanted {
            let cid = parse_cid_path(a)?.to_string();
            match pins.iter().find(|p| p.cid == cid) {
                Some(p) => sel.push(p.clone()),
                None => {
                    return Err(ApiError::new(
                        super::error::Kind::Internal,
                        format!("path '{a}' is not pinned"),
                    )
                    .into())
                }
            }
        }
        pins = sel;
    }
    if stream {
        let lines: Vec<Value> = pins
            .iter()
            .map(|p| json!({ "Cid": p.cid, "Type": "recursive", "Name": p.name }))
            .collect();
        return Ok(channel(ndjson(&lines)));
    }
    let keys: serde_json::Map<String, Value> = pins
        .iter()
        .map(|p| {
            (
                p.cid.clone(),
                json!({ "Type": "recursive", "Name": p.name }),
            )
        })
        .collect();
    Ok(json_value(json!({ "Keys": keys })))
}

async fn id(State(node): State<Arc<Node>>, q: Args) -> Res {
    if let Some(peer) = args(&q).first() {
        if *peer != node.me() {
            let Some(m) = node.members().remove(*peer) else {
                return Err(ApiError::new(
                    super::error::Kind::NotFound,
                    "failed to find any peer in table",
                )
                .into());
            };
            return Ok(json_value(json!({
                "ID": peer, "PublicKey": "", "Addresses": [PeerAddr::multiaddr(&m.addr, peer)],
                "AgentVersion": AGENT, "Protocols": ["/bulwark/peer/1.0.0"],
                "BinaryDigest": m.digest, "BuildVersion": m.version,
            })));
        }
    }
    Ok(json_value(json!({
        "ID": node.me(),
        "PublicKey": node.ident.public_key_b64(),
        "Addresses": [PeerAddr::multiaddr(&node.cfg.advertise(), node.me())],
        "AgentVersion": AGENT,
        "Protocols": ["/bulwark/peer/1.0.0"],
        // Bulwark's additions (Kubo clients ignore unknown fields): the build's identity.
        "BinaryDigest": crate::build::identity().digest,
        "BuildVersion": crate::build::VERSION,
    })))
}

async fn version() -> Response {
    json_value(json!({
        "Version": KUBO_COMPAT_VERSION, "Commit": "", "Repo": "16",
        "System": format!("{}/{}", std::env::consts::ARCH, std::env::consts::OS),
        "Golang": concat!("none (", env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION"), ", Rust)"),
        // Bulwark's additions: `Version` stays the Kubo contract; these name the running build.
        "BuildVersion": crate::build::VERSION,
        "BinaryDigest": crate::build::identity().digest,
    }))
}

async fn swarm_peers(State(node): State<Arc<Node>>) -> Response {
    let mut peers: Vec<Value> = node
        .members()
        .into_iter()
        .filter(|(_, m)| node.is_live(m))
        .map(|(id, m)| json!({ "Addr": PeerAddr::multiaddr(&m.addr, &id).split("/p2p/").next().unwrap_or_default(), "Peer": id, "Latency": "", "Muxer": "", "Direction": 0, "Streams": null }))
        .collect();
    peers.sort_by(|a, b| a["Peer"].as_str().cmp(&b["Peer"].as_str()));
    json_value(json!({ "Peers": if peers.is_empty() { Value::Null } else { Value::Array(peers) } }))
}

#[allow(dead_code)]
fn _assert_json(_: Json<Value>) {}
