//! Admin API of the query-of-death blacklist (`/qod/...` on the admin listener):
//!
//! | call | does |
//! |---|---|
//! | `GET /qod` | mode, counts, canaries' strike state summary |
//! | `GET /qod/blacklist` | live entries, newest first (`?tombstones=1` adds deletions still shared) |
//! | `POST /qod/blacklist` | add an entry by hand: `{"id": "<16 hex>", "ttl": "1h", "reason": "...", "note": "...", "dry_run": false}` |
//! | `GET /qod/blacklist/{id}` | one entry with its sample request |
//! | `PATCH /qod/blacklist/{id}` | edit `ttl` (from now), `note`, `dry_run` |
//! | `DELETE /qod/blacklist/{id}` | remove (shared with the peers as a tombstone) |
//! | `POST /qod/blacklist/sync` | peers push entries here (a JSON array) |
//! | `GET /qod/known` / `DELETE /qod/known` | count / forget the known signatures (re-probe all) |

use super::error::AdminError;
use super::reply::{body, json_with, no_content, Reply};
use crate::policy::qod::blacklist::{now_ms, Entry};
use crate::policy::qod::{signature, QodMode, QodState};
use crate::server::SidecarState;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// `(status, JSON body)`.
type Answer = (StatusCode, serde_json::Value);

pub async fn handle(state: &SidecarState, req: http::Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let b = body(req).await?;
    let rest = path.strip_prefix("/qod").unwrap_or_default();
    match answer(&state.qod, &method, rest, query.as_deref(), &b)? {
        (StatusCode::NO_CONTENT, _) => Ok(no_content()),
        (status, v) => Ok(json_with(status, &v)),
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> AdminError {
    AdminError::new(status, msg)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Add {
    id: String,
    #[serde(with = "humantime_serde")]
    ttl: Duration,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    note: String,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    dry_run: Option<bool>,
}

const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn answer(
    st: &Arc<QodState>,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Answer, AdminError> {
    let ok = |v: serde_json::Value| (StatusCode::OK, v);
    Ok(match (method, rest) {
        (&Method::GET, "" | "/") => {
            let cfg = st.config();
            ok(serde_json::json!({
                "enabled": cfg.enabled,
                "mode": if cfg.mode == QodMode::DryRun { "dry_run" } else { "enforce" },
                "blacklist_entries": st.blacklist.live_count(),
                "known_signatures": st.known_count(),
                "peers": st.peers(),
                "node": st.node,
            }))
        }
        (&Method::GET, "/blacklist") => {
            let tomb = query.is_some_and(|q| q.split('&').any(|p| p == "tombstones=1"));
            ok(serde_json::to_value(st.blacklist.list(tomb)).expect("json"))
        }
        (&Method::POST, "/blacklist") => {
            let a: Add = match serde_json::from_slice(body) {
                Ok(a) => a,
                Err(e) => return Err(err(StatusCode::BAD_REQUEST, format!("bad entry: {e}"))),
            };
            if signature::parse_id(&a.id).is_none() {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "id must be a fine signature: 16 hex digits (see x-bulwark-qod headers or logs)",
                ));
            }
            if a.ttl.is_zero() || a.ttl > MAX_TTL {
                return Err(err(StatusCode::BAD_REQUEST, "ttl must be within (0, 30d]"));
            }
            let now = now_ms();
            let e = Entry {
                id: a.id.to_ascii_lowercase(),
                coarse: String::new(),
                signature: Default::default(),
                route: String::new(),
                listener: String::new(),
                reason: a.reason.unwrap_or_else(|| "added by an operator".into()),
                strikes: 0,
                repeat: 0,
                created_ms: now,
                expires_ms: now + a.ttl.as_millis() as u64,
                updated_ms: now,
                origin: "admin".into(),
                node: st.node.clone(),
                dry_run: a.dry_run,
                note: a.note,
                deleted: false,
                sample: None,
            };
            if st
                .blacklist
                .get(signature::parse_id(&e.id).unwrap_or(0))
                .is_some()
            {
                return Err(err(
                    StatusCode::CONFLICT,
                    format!("entry {} exists; PATCH it instead", e.id),
                ));
            }
            st.add_entry(e.clone(), "admin");
            (StatusCode::CREATED, serde_json::to_value(e).expect("json"))
        }
        (&Method::POST, "/blacklist/sync") => {
            let entries: Vec<Entry> = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return Err(err(StatusCode::BAD_REQUEST, format!("bad entries: {e}"))),
            };
            let n = entries.len();
            for e in entries {
                if e.deleted {
                    st.blacklist.merge(e);
                    st.metrics.entries.set(st.blacklist.live_count() as i64);
                } else {
                    st.add_entry(e, "peer");
                }
            }
            ok(serde_json::json!({ "received": n }))
        }
        (&Method::GET, "/known") => ok(serde_json::json!({ "known_signatures": st.known_count() })),
        (&Method::DELETE, "/known") => ok(serde_json::json!({ "forgotten": st.forget_known() })),
        (m, p) if p.starts_with("/blacklist/") => {
            let id = &p["/blacklist/".len()..];
            let Some(key) = signature::parse_id(id) else {
                return Err(err(StatusCode::BAD_REQUEST, "id must be 16 hex digits"));
            };
            let Some(mut e) = st.blacklist.get(key) else {
                return Err(err(
                    StatusCode::NOT_FOUND,
                    format!("no blacklist entry {id}"),
                ));
            };
            match *m {
                Method::GET => ok(serde_json::to_value(e).expect("json")),
                Method::DELETE => {
                    e.deleted = true;
                    e.updated_ms = now_ms().max(e.updated_ms + 1);
                    st.update_entry(e);
                    (StatusCode::NO_CONTENT, serde_json::Value::Null)
                }
                Method::PATCH => {
                    let ed: Edit = match serde_json::from_slice(body) {
                        Ok(v) => v,
                        Err(x) => {
                            return Err(err(StatusCode::BAD_REQUEST, format!("bad edit: {x}")))
                        }
                    };
                    let now = now_ms();
                    if let Some(t) = ed.ttl {
                        if t.is_zero() || t > MAX_TTL {
                            return Err(err(
                                StatusCode::BAD_REQUEST,
                                "ttl must be within (0, 30d]",
                            ));
                        }
                        e.expires_ms = now + t.as_millis() as u64;
                    }
                    if let Some(n) = ed.note {
                        e.note = n;
                    }
                    if let Some(d) = ed.dry_run {
                        e.dry_run = d;
                    }
                    e.updated_ms = now.max(e.updated_ms + 1);
                    st.update_entry(e.clone());
                    ok(serde_json::to_value(e).expect("json"))
                }
                _ => return Err(AdminError::method_not_allowed("GET, PATCH or DELETE")),
            }
        }
        _ => {
            return Err(err(
                StatusCode::NOT_FOUND,
                "unknown qod path; try /qod /qod/blacklist /qod/blacklist/{id} /qod/known",
            ))
        }
    })
}
