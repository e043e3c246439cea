//! The block service's HTTP API (`/block/v1/...` on the RPC port) and its peer routes. Byte-range
//! reads and writes of images, pools and images management, health and usage reports.

use crate::block::meta::{self, Image, Pool};
use crate::block::placement::FailureDomain;
use crate::block::recovery::{self, MetaAnswer};
use crate::block::service::{BlockError, BlockService};
use crate::block::{health, DEFAULT_OBJECT_SIZE};
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderMap, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

type R<T> = Result<T, BlockError>;
type S = State<Arc<BlockService>>;

/// Largest single HTTP write (as NBD's maximum request).
pub const MAX_WRITE: usize = 32 << 20;

pub fn router(svc: Arc<BlockService>) -> Router {
    Router::new()
        .route("/block/v1/pools", get(pools).post(pool_create))
        .route(
            "/block/v1/pools/{pool}",
            get(pool_get).patch(pool_set).delete(pool_rm),
        )
        .route("/block/v1/images", get(images).post(image_create))
        .route(
            "/block/v1/images/{pool}/{image}",
            get(image_get).delete(image_rm),
        )
        .route("/block/v1/images/{pool}/{image}/resize", post(image_resize))
        .route(
            "/block/v1/images/{pool}/{image}/data",
            get(data_read).put(data_write),
        )
        .route("/block/v1/health", get(health_get))
        .route("/block/v1/status", get(status))
        .route("/block/v1/osd/tree", get(osd_tree))
        .route("/block/v1/osd/df", get(osd_df))
        .route("/block/v1/df", get(df))
        .route("/block/v1/scrub", post(scrub))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_WRITE))
        .with_state(svc)
}

/// Routes on the peer port (authenticated by the peer listener's middleware).
pub fn peer_router(svc: Arc<BlockService>) -> Router {
    Router::new()
        .route("/peer/v1/block/ops", post(peer_ops))
        .route("/peer/v1/block/meta", get(peer_meta).post(peer_meta_push))
        .route("/peer/v1/block/inventory", get(peer_inventory))
        // A batch may carry up to 8 MiB of data plus one object (the peer listener's limit is 16 MiB).
        .layer(axum::extract::DefaultBodyLimit::max(16 << 20))
        .with_state(svc)
}

// ---- pools ------------------------------------------------------------------------------------

async fn pools(State(svc): S) -> Json<Vec<Pool>> {
    Json(svc.meta().pools())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolCreate {
    name: String,
    size: Option<u32>,
    min_size: Option<u32>,
    pg_num: Option<u32>,
    failure_domain: Option<String>,
}

async fn pool_create(State(svc): S, body: Bytes) -> R<(StatusCode, Json<Pool>)> {
    let b: PoolCreate = parse_json(&body)?;
    let size = b.size.unwrap_or(3);
    // Ceph's default: size - size/2.
    let min_size = b.min_size.unwrap_or(size - size / 2);
    let domain = match b.failure_domain {
        Some(d) => d
            .parse::<FailureDomain>()
            .map_err(|e| BlockError::Invalid(e.to_string()))?,
        None => FailureDomain::Host,
    };
    let p = svc
        .pool_create(
            &b.name,
            size,
            min_size,
            b.pg_num.unwrap_or(meta::DEFAULT_PG_NUM),
            domain,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn pool_get(State(svc): S, Path(pool): Path<String>) -> R<Json<Pool>> {
    Ok(Json(svc.pool(&pool)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSet {
    size: Option<u32>,
    min_size: Option<u32>,
}

async fn pool_set(State(svc): S, Path(pool): Path<String>, body: Bytes) -> R<Json<Pool>> {
    let b: PoolSet = parse_json(&body)?;
    Ok(Json(svc.pool_set(&pool, b.size, b.min_size).await?))
}

async fn pool_rm(State(svc): S, Path(pool): Path<String>) -> R<StatusCode> {
    svc.pool_rm(&pool).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- images -----------------------------------------------------------------------------------

#[derive(serde::Serialize)]
struct ImageRow {
    #[serde(flatten)]
    image: Image,
    objects: u64,
    /// Logical bytes written (thin provisioning), as of the last recovery scan.
    used_bytes: u64,
}

fn row(svc: &BlockService, i: Image) -> ImageRow {
    let scan = svc.scan.read().expect("scan lock");
    let used = scan
        .pools
        .get(&i.pool)
        .and_then(|p| p.image_used.get(&i.id))
        .copied()
        .unwrap_or(0);
    ImageRow {
        objects: i.objects(),
        used_bytes: used,
        image: i,
    }
}

#[derive(Deserialize)]
struct ImagesQuery {
    pool: Option<String>,
}

async fn images(State(svc): S, Query(q): Query<ImagesQuery>) -> R<Json<Vec<ImageRow>>> {
    if let Some(p) = &q.pool {
        svc.pool(p)?;
    }
    let rows = svc
        .meta()
        .images(q.pool.as_deref())
        .into_iter()
        .map(|i| row(&svc, i))
        .collect();
    Ok(Json(rows))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeArg {
    Bytes(u64),
    Text(String),
}

impl SizeArg {
    fn bytes(&self) -> R<u64> {
        match self {
            SizeArg::Bytes(n) => Ok(*n),
            SizeArg::Text(s) => meta::parse_size(s).map_err(BlockError::Invalid),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageCreate {
    pool: String,
    name: String,
    size: SizeArg,
    object_size: Option<SizeArg>,
}

async fn image_create(State(svc): S, body: Bytes) -> R<(StatusCode, Json<ImageRow>)> {
    let b: ImageCreate = parse_json(&body)?;
    let object_size = match &b.object_size {
        Some(s) => s.bytes()?,
        None => DEFAULT_OBJECT_SIZE,
    };
    let i = svc
        .image_create(&b.pool, &b.name, b.size.bytes()?, object_size)
        .await?;
    Ok((StatusCode::CREATED, Json(row(&svc, i))))
}

async fn image_get(
    State(svc): S,
    Path((pool, image)): Path<(String, String)>,
) -> R<Json<ImageRow>> {
    let (_, i) = svc.image(&pool, &image)?;
    Ok(Json(row(&svc, i)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    size: SizeArg,
    #[serde(default)]
    allow_shrink: bool,
}

async fn image_resize(
    State(svc): S,
    Path((pool, image)): Path<(String, String)>,
    body: Bytes,
) -> R<Json<ImageRow>> {
    let b: Resize = parse_json(&body)?;
    let i = svc
        .image_resize(&format!("{pool}/{image}"), b.size.bytes()?, b.allow_shrink)
        .await?;
    Ok(Json(row(&svc, i)))
}

async fn image_rm(State(svc): S, Path((pool, image)): Path<(String, String)>) -> R<StatusCode> {
    svc.image_rm(&format!("{pool}/{image}")).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- data -------------------------------------------------------------------------------------

/// `Range: bytes=A-B` / `A-` / `-N` against an image of `size` bytes; `None` = the whole image.
fn parse_range(h: &HeaderMap, size: u64) -> R<Option<(u64, u64)>> {
    let Some(v) = h.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || BlockError::Invalid("Range must be a single 'bytes=START-END' range".into());
    let s = v.to_str().map_err(|_| bad())?;
    let spec = s.strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (a, "") => (a.parse().map_err(|_| bad())?, size.saturating_sub(1)),
        (a, b) => (
            a.parse().map_err(|_| bad())?,
            b.parse::<u64>()
                .map_err(|_| bad())?
                .min(size.saturating_sub(1)),
        ),
    };
    if start >= size || end < start {
        return Err(BlockError::OutOfRange(format!(
            "range {s} is outside the image of {size} bytes"
        )));
    }
    Ok(Some((start, end - start + 1)))
}

async fn data_read(
    State(svc): S,
    Path((pool, image)): Path<(String, String)>,
    headers: HeaderMap,
) -> R<Response> {
    let (p, i) = svc.image(&pool, &image)?;
    let (off, len, partial) = match parse_range(&headers, i.size)? {
        Some((o, l)) => (o, l, true),
        None => (0, i.size, false),
    };
    if len > MAX_WRITE as u64 {
        return Err(BlockError::Invalid(format!(
            "reads are limited to {MAX_WRITE} bytes per request; use a Range header"
        )));
    }
    let data = svc.io_read(&p, &i, off, len).await?;
    let mut resp = Response::new(Body::from(data));
    if partial {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", off, off + len - 1, i.size)
                .parse()
                .expect("header"),
        );
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("ct"),
    );
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, "bytes".parse().expect("ar"));
    Ok(resp)
}

#[derive(Deserialize)]
struct WriteQuery {
    offset: u64,
}

async fn data_write(
    State(svc): S,
    Path((pool, image)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    body: Body,
) -> R<StatusCode> {
    let (p, i) = svc.image(&pool, &image)?;
    let data = to_bytes(body, MAX_WRITE).await.map_err(|_| {
        BlockError::Invalid(format!(
            "writes are limited to {MAX_WRITE} bytes per request"
        ))
    })?;
    svc.io_write(&p, &i, q.offset, data).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- health and reports -----------------------------------------------------------------------

async fn health_get(State(svc): S) -> Json<health::Health> {
    Json(health::health(&svc))
}

async fn status(State(svc): S) -> Json<serde_json::Value> {
    Json(health::status(&svc))
}

async fn osd_tree(State(svc): S) -> Json<serde_json::Value> {
    Json(health::osd_tree(&svc))
}

async fn osd_df(State(svc): S) -> Json<serde_json::Value> {
    Json(health::osd_df(&svc))
}

async fn df(State(svc): S) -> Json<serde_json::Value> {
    Json(health::df(&svc))
}

#[derive(Deserialize)]
struct ScrubQuery {
    pool: Option<String>,
}

async fn scrub(State(svc): S, Query(q): Query<ScrubQuery>) -> R<Json<recovery::ScrubReport>> {
    Ok(Json(recovery::scrub(&svc, q.pool.as_deref()).await?))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> R<T> {
    serde_json::from_slice(body).map_err(|e| BlockError::Invalid(format!("request body: {e}")))
}

// ---- peer routes ------------------------------------------------------------------------------

async fn peer_ops(State(svc): S, body: Bytes) -> Response {
    match svc.exec_batch(body).await {
        Ok(out) => (StatusCode::OK, out).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct MetaQuery {
    digest: Option<String>,
}

async fn peer_meta(State(svc): S, Query(q): Query<MetaQuery>) -> Json<MetaAnswer> {
    let view = svc.meta();
    let digest = view.digest();
    let entries = if q.digest.as_deref() == Some(digest.as_str()) {
        vec![]
    } else {
        view.all()
    };
    Json(MetaAnswer { digest, entries })
}

async fn peer_meta_push(State(svc): S, body: Bytes) -> R<Json<serde_json::Value>> {
    let entries: Vec<meta::MetaEntry> = parse_json(&body)?;
    let n = svc.merge_meta(entries).await?;
    Ok(Json(serde_json::json!({ "merged": n })))
}

async fn peer_inventory(State(svc): S) -> Json<recovery::Inventory> {
    Json(recovery::inventory(&svc).await)
}
