//! Typed clients of the admin API ([`AdminClient`]) and of the Toxiproxy-compatible fault API
//! ([`ToxiproxyClient`]), with the wire types of [`super::api`]. Every call is bounded by the
//! client's timeout (default [`DEFAULT_TIMEOUT`]); a non-2xx answer becomes
//! [`ClientError::Status`] with the status and the server's message.
//!
//! ```no_run
//! # async fn f() -> Result<(), sidecar::admin::client::ClientError> {
//! use sidecar::admin::client::AdminClient;
//! let admin = AdminClient::new("http://127.0.0.11:9901")?.bearer("secret");
//! for c in admin.circuits().await? {
//!     println!("{} {}", c.upstream, c.state);
//! }
//! # Ok(()) }
//! ```

use super::api::*;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Bound of one call (connect, send, answer and body) unless set with `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, timeout, broken connection.
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a non-2xx status. `message` is the `error` of a JSON error body,
    /// else the body's text; `body` is the body as received.
    #[error("{method} {url}: {status} {message}")]
    Status {
        method: Method,
        url: String,
        status: u16,
        message: String,
        body: String,
    },
    /// A 2xx answer that is not the expected shape.
    #[error("{method} {url}: unexpected answer: {detail}")]
    Decode {
        method: Method,
        url: String,
        detail: String,
    },
    /// The HTTP client could not be built (TLS backend, resolver).
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

impl ClientError {
    /// The HTTP status of a [`ClientError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// `GET /ready`: `503` is an answer here (draining, planned outage), not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// The server's line: `ready`, `draining`, `planned outage: down`, …
    pub detail: String,
}

/// A base address, an optional bearer token, a timeout and a (cheaply cloned) HTTP client.
#[derive(Clone, Debug)]
struct Endpoint {
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
}

/// Percent-encodes one path segment (ids and names chosen by users).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The message of an error body: `{"error": "..."}` or the text itself.
fn message_of(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) if v["error"].is_string() => v["error"].as_str().unwrap_or_default().to_string(),
        _ => body.trim().to_string(),
    }
}

impl Endpoint {
    fn new(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the call; a 2xx answer gives its status and body, anything else an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), ClientError> {
        let url = self.url(path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let transport = |source| ClientError::Transport {
            method: method.clone(),
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status {
                message: message_of(&text),
                method,
                url,
                status,
                body: text,
            });
        }
        Ok((status, text))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (_, text) = self.call(method.clone(), path, body).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            method,
            url: self.url(path),
            detail: e.to_string(),
        })
    }

    async fn unit(&self, method: Method, path: &str) -> Result<(), ClientError> {
        self.call(method, path, None).await.map(|_| ())
    }
}

/// A request body. The api types serialize infallibly (no maps with non-string keys).
fn json_body(v: &impl Serialize) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).unwrap_or_default())
}

fn default_http() -> Result<reqwest::Client, ClientError> {
    // Admin listeners are loopback or cluster-internal: never through an HTTP(S)_PROXY.
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(ClientError::Build)
}

/// The constructors and accessors both clients share.
macro_rules! endpoint_client {
    ($client:ident) => {
        impl $client {
            /// A client with its own HTTP client (no proxy) and [`DEFAULT_TIMEOUT`].
            pub fn new(base: &str) -> Result<Self, ClientError> {
                Ok(Self::with_http(base, default_http()?))
            }

            /// A client sharing `http` (its connection pool and settings).
            pub fn with_http(base: &str, http: reqwest::Client) -> Self {
                Self {
                    ep: Endpoint::new(base, http),
                }
            }

            /// Bound of each call (connect, send, answer and body).
            pub fn timeout(mut self, timeout: Duration) -> Self {
                self.ep.timeout = timeout;
                self
            }

            /// The base address, without a trailing `/`.
            pub fn base(&self) -> &str {
                &self.ep.base
            }

            /// The full URL of a path (for messages).
            pub fn url(&self, path: &str) -> String {
                self.ep.url(path)
            }
        }
    };
}

/// Client of one sidecar's admin API (`http://127.0.0.11:9901`).
#[derive(Clone, Debug)]
pub struct AdminClient {
    ep: Endpoint,
}

endpoint_client!(AdminClient);

impl AdminClient {
    /// Sends `Authorization: Bearer <token>` (needed when the admin listener is not on loopback).
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.ep.token = Some(token.into());
        self
    }

    /// `POST /faults`: the fault as the server now lists it.
    pub async fn add_fault(&self, spec: &FaultSpec) -> Result<FaultStatus, ClientError> {
        self.ep.json(Method::POST, "/faults", json_body(spec)).await
    }

    pub async fn list_faults(&self) -> Result<Vec<FaultStatus>, ClientError> {
        let l: FaultList = self.ep.json(Method::GET, "/faults", None).await?;
        Ok(l.faults)
    }

    /// `DELETE /faults/{id}`; a fault that is gone (expired) is a 404 [`ClientError::Status`].
    pub async fn delete_fault(&self, id: &str) -> Result<(), ClientError> {
        self.ep
            .unit(Method::DELETE, &format!("/faults/{}", seg(id)))
            .await
    }

    /// `DELETE /faults`: how many live faults were removed.
    pub async fn clear_faults(&self) -> Result<usize, ClientError> {
        let r: Removed = self.ep.json(Method::DELETE, "/faults", None).await?;
        Ok(r.removed)
    }

    /// `POST /outages`: the outage as created (its `id` is what [`Self::delete_outage`] takes).
    pub async fn add_outage(&self, spec: &OutageSpec) -> Result<OutageEntry, ClientError> {
        self.ep
            .json(Method::POST, "/outages", json_body(spec))
            .await
    }

    /// `GET /outages`: this node's outages and those its peers announced.
    pub async fn list_outages(&self) -> Result<Vec<OutageEntry>, ClientError> {
        self.ep.json(Method::GET, "/outages", None).await
    }

    /// `DELETE /outages/{id}` (a local outage; 404 when there is none).
    pub async fn delete_outage(&self, id: &str) -> Result<(), ClientError> {
        self.ep
            .unit(Method::DELETE, &format!("/outages/{}", seg(id)))
            .await
    }

    /// `PUT /split/{listener}`: installs a traffic split (or updates the caller's own live one);
    /// the split as the server now shows it. 400 bad spec or unknown listener, 409 another
    /// controller's split is live.
    pub async fn put_split(
        &self,
        listener: &str,
        spec: &SplitSpec,
    ) -> Result<SplitStatus, ClientError> {
        let path = format!("/split/{}", seg(listener));
        self.ep.json(Method::PUT, &path, json_body(spec)).await
    }

    /// `GET /split/{listener}`: the live split with its counters; `None` when there is none.
    pub async fn get_split(&self, listener: &str) -> Result<Option<SplitStatus>, ClientError> {
        let path = format!("/split/{}", seg(listener));
        match self.ep.json(Method::GET, &path, None).await {
            Err(e) if e.is_not_found() => Ok(None),
            r => r.map(Some),
        }
    }

    /// `DELETE /split/{listener}`: `true` when a live split was removed, `false` when there was
    /// none (already gone, e.g. expired).
    pub async fn delete_split(&self, listener: &str) -> Result<bool, ClientError> {
        let path = format!("/split/{}", seg(listener));
        match self.ep.unit(Method::DELETE, &path).await {
            Err(e) if e.is_not_found() => Ok(false),
            r => r.map(|()| true),
        }
    }

    /// `GET /split`: every live split.
    pub async fn list_splits(&self) -> Result<Vec<SplitStatus>, ClientError> {
        let l: SplitList = self.ep.json(Method::GET, "/split", None).await?;
        Ok(l.splits)
    }

    /// `GET /circuits`, sorted by upstream.
    pub async fn circuits(&self) -> Result<Vec<CircuitInfo>, ClientError> {
        self.ep.json(Method::GET, "/circuits", None).await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.ep.json(Method::GET, "/stats", None).await
    }

    /// `GET /qod/blacklist`: live entries, newest first.
    pub async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, ClientError> {
        self.ep.json(Method::GET, "/qod/blacklist", None).await
    }

    pub async fn add_blacklist(&self, entry: &BlacklistAdd) -> Result<BlacklistEntry, ClientError> {
        self.ep
            .json(Method::POST, "/qod/blacklist", json_body(entry))
            .await
    }

    pub async fn delete_blacklist(&self, id: &str) -> Result<(), ClientError> {
        self.ep
            .unit(Method::DELETE, &format!("/qod/blacklist/{}", seg(id)))
            .await
    }

    /// `GET /metrics`: OpenMetrics text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.ep
            .call(Method::GET, "/metrics", None)
            .await
            .map(|(_, t)| t)
    }

    /// `GET /ready`.
    pub async fn ready(&self) -> Result<Readiness, ClientError> {
        match self.ep.call(Method::GET, "/ready", None).await {
            Ok((_, t)) => Ok(Readiness {
                ready: true,
                detail: t.trim().to_string(),
            }),
            Err(ClientError::Status {
                status: 503, body, ..
            }) => Ok(Readiness {
                ready: false,
                detail: body.trim().to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// `GET /live`.
    pub async fn live(&self) -> Result<(), ClientError> {
        self.ep.unit(Method::GET, "/live").await
    }

    /// `POST /reload`: re-reads the config file; a rejected config is a 400 with the reason.
    pub async fn reload(&self) -> Result<(), ClientError> {
        self.ep.unit(Method::POST, "/reload").await
    }
}

/// Client of a sidecar's Toxiproxy-compatible fault API (`http://127.0.0.11:8474`); works with a
/// real Toxiproxy too (without the `ttl_ms` extension).
#[derive(Clone, Debug)]
pub struct ToxiproxyClient {
    ep: Endpoint,
}

endpoint_client!(ToxiproxyClient);

impl ToxiproxyClient {
    /// `GET /proxies`: proxies by name.
    pub async fn proxies(&self) -> Result<BTreeMap<String, ProxyInfo>, ClientError> {
        self.ep.json(Method::GET, "/proxies", None).await
    }

    pub async fn toxics(&self, proxy: &str) -> Result<Vec<ToxicInfo>, ClientError> {
        self.ep
            .json(
                Method::GET,
                &format!("/proxies/{}/toxics", seg(proxy)),
                None,
            )
            .await
    }

    /// `POST /proxies/{proxy}/toxics` with a create body (see [`validate_toxic_create`]).
    pub async fn create_toxic(
        &self,
        proxy: &str,
        body: &serde_json::Value,
    ) -> Result<ToxicInfo, ClientError> {
        self.ep
            .json(
                Method::POST,
                &format!("/proxies/{}/toxics", seg(proxy)),
                json_body(body),
            )
            .await
    }

    pub async fn delete_toxic(&self, proxy: &str, name: &str) -> Result<(), ClientError> {
        self.ep
            .unit(
                Method::DELETE,
                &format!("/proxies/{}/toxics/{}", seg(proxy), seg(name)),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    /// What the server saw: method, path and query, authorization header, body.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Seen {
        method: String,
        path: String,
        auth: Option<String>,
        body: String,
    }

    type Answer = fn(&str, &str) -> (u16, String);

    #[derive(Clone)]
    struct Srv {
        seen: Arc<Mutex<Vec<Seen>>>,
        answer: Answer,
    }

    async fn handler(
        State(s): State<Srv>,
        method: axum::http::Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        let path = uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        s.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: path.clone(),
            auth: headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let (status, body) = (s.answer)(method.as_str(), &path);
        (StatusCode::from_u16(status).unwrap(), body)
    }

    /// A server on 127.0.0.1 (ephemeral port) answering with `answer`; its base URL and log.
    async fn server(answer: Answer) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new().fallback(handler).with_state(Srv {
            seen: seen.clone(),
            answer,
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (format!("http://{addr}/"), seen)
    }

    fn last(seen: &Arc<Mutex<Vec<Seen>>>) -> Seen {
        seen.lock().unwrap().last().cloned().unwrap()
    }

    fn fault_status() -> serde_json::Value {
        json!({"id": "f1", "kind": {"type": "abort", "status": 503}, "ttl": "10s",
               "remaining_ms": 9000, "matched": 0, "injected": 0})
    }

    #[tokio::test]
    async fn faults_are_posted_listed_and_deleted() {
        let (base, seen) = server(|m, p| match (m, p) {
            ("POST", "/faults") => (201, fault_status().to_string()),
            ("GET", "/faults") => (200, json!({"faults": [fault_status()]}).to_string()),
            ("DELETE", "/faults") => (200, json!({"removed": 2}).to_string()),
            ("DELETE", "/faults/a%2Fb") => (404, json!({"error": "no fault \"a/b\""}).to_string()),
            _ => (204, String::new()),
        })
        .await;
        let c = AdminClient::new(&base).unwrap().bearer("tok");
        assert_eq!(c.base(), base.trim_end_matches('/'));
        let spec: FaultSpec = serde_json::from_value(
            json!({"id": "f1", "kind": {"type": "abort", "status": 503}, "ttl": 10000}),
        )
        .unwrap();
        let st = c.add_fault(&spec).await.unwrap();
        assert_eq!((st.spec.id.as_str(), st.remaining_ms), ("f1", 9000));
        let s = last(&seen);
        assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/faults"));
        assert_eq!(s.auth.as_deref(), Some("Bearer tok"));
        let sent: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(
            sent,
            json!({"id": "f1", "kind": {"type": "abort", "status": 503}, "ttl": "10s"})
        );
        assert_eq!(c.list_faults().await.unwrap(), vec![st]);
        assert_eq!(c.clear_faults().await.unwrap(), 2);
        c.delete_fault("f1").await.unwrap();
        assert_eq!(
            (last(&seen).method.as_str(), last(&seen).path.as_str()),
            ("DELETE", "/faults/f1")
        );
        let e = c.delete_fault("a/b").await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        match &e {
            ClientError::Status { message, body, .. } => {
                assert_eq!(message, "no fault \"a/b\"");
                assert!(body.contains("\"error\""));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.to_string(),
            format!("DELETE {base}faults/a%2Fb: 404 no fault \"a/b\"")
        );
    }

    fn outage_json() -> serde_json::Value {
        json!({"id": "o1", "node": "n", "upstreams": ["u"], "start_ms": 1, "drain_ms": 2,
            "duration_ms": 3, "every_ms": null, "count": null, "reason": "r", "cancelled": false,
            "phase": "down", "window_start_ms": 1, "window_end_ms": 6, "scope": "local"})
    }

    fn entry_json() -> serde_json::Value {
        json!({"id": "00112233aabbccdd", "coarse": "", "signature": {"coarse": "", "fine": ""},
            "route": "", "listener": "", "reason": "by hand", "strikes": 0, "repeat": 0,
            "created_ms": 1, "expires_ms": 2, "updated_ms": 1, "origin": "admin", "node": "n"})
    }

    #[tokio::test]
    async fn outages_circuits_stats_and_blacklist() {
        fn answer(m: &str, p: &str) -> (u16, String) {
            match (m, p) {
                ("POST", "/outages") => (201, outage_json().to_string()),
                ("GET", "/outages") => (200, json!([outage_json()]).to_string()),
                ("GET", "/circuits") => (
                    200,
                    json!([{"upstream": "u", "state": "open", "reason": "failure_rate",
                        "consecutive_failures": 5, "open_until_ms": 100, "trips": 1,
                        "last_error": null}])
                    .to_string(),
                ),
                ("GET", "/stats") => (
                    200,
                    json!({"open_connections": 3, "draining": false, "in_flight": {"api": 1}})
                        .to_string(),
                ),
                ("GET", "/qod/blacklist") => (200, json!([entry_json()]).to_string()),
                ("POST", "/qod/blacklist") => (201, entry_json().to_string()),
                _ => (204, String::new()),
            }
        }
        let (outage, entry) = (outage_json(), entry_json());
        let (base, seen) = server(answer).await;
        let c = AdminClient::new(&base).unwrap();
        let spec = OutageSpec {
            duration: Duration::from_secs(3),
            drain: Some(Duration::from_millis(1500)),
            reason: "test".into(),
            ..Default::default()
        };
        let o = c.add_outage(&spec).await.unwrap();
        assert_eq!((o.outage.id.as_str(), o.phase), ("o1", Phase::Down));
        assert_eq!(serde_json::to_value(&o).unwrap(), outage);
        let s = last(&seen);
        assert_eq!(s.auth, None);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&s.body).unwrap(),
            json!({"duration": "3s", "drain": "1s 500ms", "reason": "test"})
        );
        assert_eq!(c.list_outages().await.unwrap(), vec![o]);
        c.delete_outage("o1").await.unwrap();
        assert_eq!(last(&seen).path, "/outages/o1");
        let circ = c.circuits().await.unwrap();
        assert_eq!((circ[0].state.as_str(), circ[0].trips), ("open", 1));
        let st = c.stats().await.unwrap();
        assert_eq!((st.open_connections, st.in_flight["api"]), (3, 1));
        let bl = c.blacklist().await.unwrap();
        assert_eq!(serde_json::to_value(&bl[0]).unwrap()["id"], entry["id"]);
        let add = BlacklistAdd {
            id: "00112233aabbccdd".into(),
            ttl: Duration::from_secs(60),
            ..Default::default()
        };
        assert_eq!(c.add_blacklist(&add).await.unwrap(), bl[0]);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&last(&seen).body).unwrap(),
            json!({"id": "00112233aabbccdd", "ttl": "1m", "note": "", "dry_run": false})
        );
        c.delete_blacklist("00112233aabbccdd").await.unwrap();
        let s = last(&seen);
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("DELETE", "/qod/blacklist/00112233aabbccdd")
        );
    }

    #[tokio::test]
    async fn text_endpoints_and_error_mapping() {
        let (base, seen) = server(|m, p| match (m, p) {
            ("GET", "/metrics") => (200, "# EOF\n".into()),
            ("GET", "/ready") => (503, "planned outage: down\n".into()),
            ("GET", "/live") => (200, "live\n".into()),
            ("POST", "/reload") => (400, "reload rejected: bad toml\n".into()),
            ("GET", "/circuits") => (200, "not json".into()),
            _ => (404, "unknown admin path\n".into()),
        })
        .await;
        let c = AdminClient::new(&base).unwrap();
        assert_eq!(c.metrics().await.unwrap(), "# EOF\n");
        assert_eq!(
            c.ready().await.unwrap(),
            Readiness {
                ready: false,
                detail: "planned outage: down".into()
            }
        );
        c.live().await.unwrap();
        let e = c.reload().await.unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert!(
            e.to_string().ends_with("400 reload rejected: bad toml"),
            "{e}"
        );
        assert_eq!(last(&seen).method, "POST");
        let e = c.circuits().await.unwrap_err();
        assert!(matches!(e, ClientError::Decode { .. }), "{e:?}");
        assert_eq!(c.stats().await.unwrap_err().status(), Some(404));
        // Nobody listens: a transport error, no status.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let c = AdminClient::new(&format!("http://{gone}"))
            .unwrap()
            .timeout(Duration::from_secs(2));
        let e = c.live().await.unwrap_err();
        assert!(matches!(e, ClientError::Transport { .. }), "{e:?}");
        assert_eq!(e.status(), None);
        assert!(e
            .to_string()
            .starts_with(&format!("GET http://{gone}/live: ")));
    }

    #[tokio::test]
    async fn toxiproxy_client_creates_lists_and_deletes() {
        let (base, seen) = server(|m, p| match (m, p) {
            ("POST", "/proxies/api/toxics") => (
                200,
                json!({"name": "t1", "type": "latency", "stream": "downstream",
                    "toxicity": 1.0, "attributes": {"latency": 100, "jitter": 0}, "ttl_ms": 500})
                .to_string(),
            ),
            ("POST", _) => (
                409,
                json!({"error": "toxic already exists", "status": 409}).to_string(),
            ),
            ("GET", "/proxies") => (
                200,
                json!({"api": {"name": "api", "listen": "127.0.0.1:1", "upstream": "127.0.0.1:2",
                    "enabled": true, "toxics": []}})
                .to_string(),
            ),
            ("GET", "/proxies/api/toxics") => (200, "[]".into()),
            _ => (204, String::new()),
        })
        .await;
        let c = ToxiproxyClient::new(&base).unwrap();
        let body =
            json!({"name": "t1", "type": "latency", "attributes": {"latency": 100}, "ttl_ms": 500});
        let t = c.create_toxic("api", &body).await.unwrap();
        assert_eq!((t.type_.as_str(), t.ttl_ms), ("latency", Some(500)));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&last(&seen).body).unwrap(),
            body
        );
        let e = c.create_toxic("other", &body).await.unwrap_err();
        assert_eq!(
            (e.status(), e.to_string()),
            (
                Some(409),
                format!("POST {base}proxies/other/toxics: 409 toxic already exists")
            )
        );
        let ps = c.proxies().await.unwrap();
        assert_eq!(
            (ps["api"].upstream.as_str(), ps["api"].enabled),
            ("127.0.0.1:2", true)
        );
        assert!(c.toxics("api").await.unwrap().is_empty());
        c.delete_toxic("api", "t 1").await.unwrap();
        let s = last(&seen);
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("DELETE", "/proxies/api/toxics/t%201")
        );
    }

    /// The real admin router in process (a `SidecarState`, no listener served): every status
    /// `/split` answers, read through the client.
    #[tokio::test]
    async fn splits_against_the_real_admin_router() {
        let cfg = crate::config::Config::parse(
            "[[listener]]\nname = \"api\"\nlisten = \"127.0.0.1:7100\"\nupstream = \"127.0.0.1:7101\"\n\
             [[listener]]\nname = \"nbd\"\nlisten = \"127.0.0.1:7102\"\nupstream = \"127.0.0.1:7103\"\n\
             protocol = \"tcp\"\n\
             [[listener]]\nname = \"out\"\nlisten = \"127.0.0.1:7104\"\ndirection = \"outbound\"\n\
             allowed_upstreams = [\"*\"]\n",
            "t",
        )
        .unwrap();
        let state = crate::server::SidecarState::new(cfg, None, None).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::admin::serve(l, state, rx));
        let c = AdminClient::new(&format!("http://{addr}")).unwrap();
        let spec = |controller: &str, weight: u32| SplitSpec {
            subsets: vec![Subset::new("candidate", "127.0.0.1:7105", weight)],
            ttl: Some(Ttl(Duration::from_secs(60))),
            sticky: false,
            controller: Some(controller.into()),
            seed: None,
        };
        let status = |e: ClientError| (e.status(), e.to_string());
        let (code, msg) = status(
            c.put_split(
                "api",
                &SplitSpec {
                    ttl: None,
                    ..spec("a", 5)
                },
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(code, Some(400));
        assert!(msg.contains("ttl is mandatory"), "{msg}");
        let (code, msg) = status(c.put_split("nope", &spec("a", 5)).await.unwrap_err());
        assert_eq!(code, Some(400));
        assert!(
            msg.contains("no listener \"nope\" (listeners: api, nbd, out)"),
            "{msg}"
        );
        for (l, why) in [("nbd", "TCP listener"), ("out", "outbound")] {
            let (code, msg) = status(c.put_split(l, &spec("a", 5)).await.unwrap_err());
            assert_eq!(code, Some(400));
            assert!(msg.contains(why), "{msg}");
        }
        let (code, msg) = status(c.put_split("api", &spec("a", 101)).await.unwrap_err());
        assert_eq!(code, Some(400));
        assert!(msg.contains("0 to 100"), "{msg}");
        assert_eq!(c.get_split("api").await.unwrap(), None);

        let put = c.put_split("api", &spec("a", 5)).await.unwrap();
        assert_eq!(
            (put.listener.as_str(), put.controller.as_deref()),
            ("api", Some("a"))
        );
        let names: Vec<(&str, &str, u32)> = put
            .subsets
            .iter()
            .map(|s| (s.name.as_str(), s.addr.as_str(), s.weight))
            .collect();
        assert_eq!(
            names,
            [
                ("stable", "127.0.0.1:7101", 95),
                ("candidate", "127.0.0.1:7105", 5)
            ]
        );
        let (code, msg) = status(c.put_split("api", &spec("b", 5)).await.unwrap_err());
        assert_eq!(code, Some(409));
        assert!(msg.contains("owned by controller \"a\""), "{msg}");
        let step = c.put_split("api", &spec("a", 20)).await.unwrap();
        assert_eq!(step.generation, put.generation);
        let got = c.get_split("api").await.unwrap().unwrap();
        assert_eq!(got.subset("candidate").unwrap().weight, 20);
        assert!(got.remaining_ms > 59_000 && got.ttl_ms == 60_000, "{got:?}");
        assert_eq!(c.list_splits().await.unwrap(), vec![got]);
        assert!(c.delete_split("api").await.unwrap());
        assert!(!c.delete_split("api").await.unwrap(), "already gone");
        assert_eq!(c.get_split("api").await.unwrap(), None);
        assert!(c.list_splits().await.unwrap().is_empty());
        c.put_split("api", &spec("b", 5)).await.unwrap();
    }

    #[tokio::test]
    async fn against_the_real_toxiproxy_router() {
        let app = crate::toxiproxy::api::router(crate::toxiproxy::Toxiproxy::new(1));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let c = ToxiproxyClient::new(&format!("http://{addr}")).unwrap();
        let e = c
            .create_toxic("missing", &json!({"type": "noop"}))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert!(e.to_string().ends_with("404 proxy not found"), "{e}");
        assert!(c.proxies().await.unwrap().is_empty());
    }
}
