//! HTTP routes of the fault API (Toxiproxy 2.x paths and status codes).

use super::toxics::ApiErr;
use super::{Toxiproxy, COMPAT_VERSION};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;

type Tp = State<Arc<Toxiproxy>>;

pub fn router(tp: Arc<Toxiproxy>) -> Router {
    Router::new()
        .route("/proxies", get(list).post(create))
        .route("/populate", post(populate))
        .route(
            "/proxies/{proxy}",
            get(get_proxy)
                .post(update_proxy)
                .patch(update_proxy)
                .delete(delete_proxy),
        )
        .route("/proxies/{proxy}/toxics", get(list_toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(get_toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(delete_toxic),
        )
        .route("/reset", post(reset))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(no_browsers))
        .with_state(tp)
}

fn json_resp(status: u16, v: &Value) -> Response {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Errors as Toxiproxy writes them: JSON text through Go's `http.Error` (text/plain, newline).
fn err_resp(e: ApiErr) -> Response {
    let mut r = json_resp(e.status, &json!({"error": e.msg, "status": e.status}));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn empty(status: u16) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NO_CONTENT);
    r
}

fn answer(status: u16, r: Result<Value, ApiErr>) -> Response {
    match r {
        Ok(v) => json_resp(status, &v),
        Err(e) => err_resp(e),
    }
}

fn no_content(r: Result<(), ApiErr>) -> Response {
    match r {
        Ok(()) => empty(204),
        Err(e) => err_resp(e),
    }
}

fn parse(body: &Bytes) -> Result<Value, ApiErr> {
    serde_json::from_slice(body).map_err(|e| ApiErr::bad(format!("bad request body: {e}")))
}

/// Keeps browsers off the API (a web page could otherwise drive it): any `User-Agent: Mozilla/*`.
async fn no_browsers(req: Request, next: Next) -> Response {
    let browser = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    if browser {
        return err_resp(ApiErr::new(403, "User agent not allowed"));
    }
    next.run(req).await
}

async fn not_found() -> Response {
    err_resp(ApiErr::new(404, "not found"))
}

async fn list(State(tp): Tp) -> Response {
    json_resp(200, &tp.list().await)
}

async fn create(State(tp): Tp, body: Bytes) -> Response {
    match parse(&body) {
        Ok(v) => answer(201, tp.create(&v).await),
        Err(e) => err_resp(e),
    }
}

async fn populate(State(tp): Tp, body: Bytes) -> Response {
    match parse(&body) {
        Ok(v) => {
            let (status, out) = tp.populate(&v).await;
            if status >= 400 {
                let mut r = json_resp(status, &out);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            } else {
                json_resp(status, &out)
            }
        }
        Err(e) => err_resp(e),
    }
}

async fn get_proxy(State(tp): Tp, Path(p): Path<String>) -> Response {
    answer(200, tp.get(&p).await)
}

async fn update_proxy(State(tp): Tp, Path(p): Path<String>, body: Bytes) -> Response {
    match parse(&body) {
        Ok(v) => answer(200, tp.update(&p, &v).await),
        Err(e) => err_resp(e),
    }
}

async fn delete_proxy(State(tp): Tp, Path(p): Path<String>) -> Response {
    no_content(tp.delete(&p).await)
}

async fn list_toxics(State(tp): Tp, Path(p): Path<String>) -> Response {
    answer(200, tp.toxics(&p).await)
}

async fn add_toxic(State(tp): Tp, Path(p): Path<String>, body: Bytes) -> Response {
    match parse(&body) {
        Ok(v) => answer(200, tp.add_toxic(&p, &v).await),
        Err(e) => err_resp(e),
    }
}

async fn get_toxic(State(tp): Tp, Path((p, t)): Path<(String, String)>) -> Response {
    answer(200, tp.toxic(&p, &t).await)
}

async fn update_toxic(
    State(tp): Tp,
    Path((p, t)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match parse(&body) {
        Ok(v) => answer(200, tp.update_toxic(&p, &t, &v).await),
        Err(e) => err_resp(e),
    }
}

async fn delete_toxic(State(tp): Tp, Path((p, t)): Path<(String, String)>) -> Response {
    no_content(tp.remove_toxic(&p, &t).await)
}

async fn reset(State(tp): Tp) -> Response {
    no_content(tp.reset().await)
}

async fn version() -> Response {
    json_resp(
        200,
        &json!({
            "version": COMPAT_VERSION,
            "implementation": concat!("bulwark-sidecar ", env!("CARGO_PKG_VERSION")),
        }),
    )
}

async fn metrics(State(tp): Tp) -> Response {
    let mut r = Response::new(Body::from(tp.metrics_text().await));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
