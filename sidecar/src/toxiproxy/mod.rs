//! A Toxiproxy-compatible fault API with TCP toxics (enabled by `[toxiproxy] listen`).
//!
//! Same paths, shapes and status codes as Toxiproxy 2.x (`/proxies`, `/populate`, `/reset`,
//! `/version`, toxics per proxy), so its client libraries drive it unchanged. Differences, all
//! deliberate:
//! - Toxicity is rolled per connection and per toxic version with an RNG seeded from
//!   `[toxiproxy] seed`, the proxy name and the connection's accept order: the same sequence of
//!   connections sees the same rolls and jitter (Toxiproxy's `-seed` is a no-op). A roll is kept
//!   while its toxic is unchanged; an update re-rolls that toxic only (Toxiproxy re-rolls every
//!   toxic of the direction on any churn).
//! - Toxic changes apply to new and existing connections at the next chunk boundary.
//! - `ttl_ms` (extension, optional, on create or update): the toxic removes itself that many ms
//!   after it was last set, so every injected fault can expire on its own.
//! - `reset_peer` resets both the client and the upstream connection.
//! - A proxy created without `listen` listens on `127.0.0.1:0` (Toxiproxy: all interfaces).

pub mod api;
pub mod link;
pub mod toxics;

use link::ProxyShared;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use toxics::{ApiErr, Stream, Toxic};

/// The Toxiproxy version whose API this one follows.
pub const COMPAT_VERSION: &str = "2.12.0";

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct ProxyEntry {
    listen: String,
    upstream: String,
    enabled: bool,
    shared: Arc<ProxyShared>,
    run: Option<Running>,
}

impl ProxyEntry {
    fn to_json(&self) -> Value {
        let toxics: Vec<Value> = self
            .shared
            .toxics
            .borrow()
            .iter()
            .map(Toxic::to_json)
            .collect();
        json!({
            "name": self.shared.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": toxics,
        })
    }

    async fn start(&mut self) -> Result<(), ApiErr> {
        if self.run.is_some() {
            return Ok(());
        }
        let l = TcpListener::bind(&self.listen)
            .await
            .map_err(|e| ApiErr::new(500, format!("listen tcp {}: {e}", self.listen)))?;
        if let Ok(a) = l.local_addr() {
            self.listen = a.to_string();
        }
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(link::accept_loop(
            l,
            self.upstream.clone(),
            self.shared.clone(),
            rx,
        ));
        tracing::info!(proxy = %self.shared.name, listen = %self.listen, upstream = %self.upstream, "toxiproxy proxy started");
        self.run = Some(Running { stop, task });
        Ok(())
    }

    /// Closes the listener (awaited, so the port is closed when this returns) and every
    /// connection.
    async fn stop(&mut self) {
        if let Some(r) = self.run.take() {
            r.stop.send_replace(true);
            r.task.abort();
            let _ = r.task.await;
            tracing::info!(proxy = %self.shared.name, "toxiproxy proxy stopped");
        }
    }
}

/// The fault API's state: proxies by name.
pub struct Toxiproxy {
    proxies: Mutex<BTreeMap<String, ProxyEntry>>,
    seed: u64,
    versions: AtomicU64,
}

struct ProxyInput {
    name: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    enabled: Option<bool>,
}

fn proxy_input(v: &Value) -> Result<ProxyInput, ApiErr> {
    let m = v
        .as_object()
        .ok_or_else(|| ApiErr::bad("bad request body"))?;
    let s = |k: &str| -> Result<Option<String>, ApiErr> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiErr::bad(format!(
                "bad request body: {k} must be a string"
            ))),
        }
    };
    let enabled = match m.get("enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiErr::bad("bad request body: enabled must be a boolean")),
    };
    Ok(ProxyInput {
        name: s("name")?,
        listen: s("listen")?,
        upstream: s("upstream")?,
        enabled,
    })
}

fn require(v: Option<String>, field: &str) -> Result<String, ApiErr> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiErr::bad(format!("missing required field: {field}"))),
    }
}

fn not_found_proxy() -> ApiErr {
    ApiErr::new(404, "proxy not found")
}

fn not_found_toxic() -> ApiErr {
    ApiErr::new(404, "toxic not found")
}

/// Whether an existing proxy already matches a requested listen address (`host:0` matches any
/// port on the same host).
fn same_listen(existing: &str, requested: &str) -> bool {
    if existing == requested {
        return true;
    }
    match (existing.rsplit_once(':'), requested.rsplit_once(':')) {
        (Some((eh, _)), Some((rh, "0"))) => eh == rh,
        _ => false,
    }
}

impl Toxiproxy {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            proxies: Mutex::new(BTreeMap::new()),
            seed,
            versions: AtomicU64::new(1),
        })
    }

    fn version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed)
    }

    /// `GET /proxies`: an object keyed by proxy name.
    pub async fn list(&self) -> Value {
        let ps = self.proxies.lock().await;
        Value::Object(ps.iter().map(|(k, p)| (k.clone(), p.to_json())).collect())
    }

    pub async fn get(&self, name: &str) -> Result<Value, ApiErr> {
        let ps = self.proxies.lock().await;
        ps.get(name)
            .map(ProxyEntry::to_json)
            .ok_or_else(not_found_proxy)
    }

    /// `POST /proxies`.
    pub async fn create(&self, body: &Value) -> Result<Value, ApiErr> {
        let input = proxy_input(body)?;
        let name = require(input.name, "name")?;
        let upstream = require(input.upstream, "upstream")?;
        let mut ps = self.proxies.lock().await;
        if ps.contains_key(&name) {
            return Err(ApiErr::new(409, "proxy already exists"));
        }
        let mut p = ProxyEntry {
            listen: input
                .listen
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "127.0.0.1:0".into()),
            upstream,
            enabled: input.enabled.unwrap_or(true),
            shared: ProxyShared::new(&name, self.seed),
            run: None,
        };
        if p.enabled {
            p.start().await?;
        }
        let v = p.to_json();
        ps.insert(name, p);
        Ok(v)
    }

    /// `POST /populate`: `(status, body)`; idempotent for proxies whose listen and upstream are
    /// unchanged, others are replaced.
    pub async fn populate(&self, body: &Value) -> (u16, Value) {
        let Some(items) = body.as_array() else {
            return (400, json!({"error": "bad request body", "status": 400}));
        };
        let mut inputs = Vec::new();
        for it in items {
            let r = proxy_input(it).and_then(|i| {
                Ok((
                    require(i.name, "name")?,
                    i.listen.filter(|l| !l.is_empty()),
                    require(i.upstream, "upstream")?,
                    i.enabled.unwrap_or(true),
                ))
            });
            match r {
                Ok(v) => inputs.push(v),
                Err(e) => {
                    return (
                        e.status,
                        json!({"proxies": [], "error": e.msg, "status": e.status}),
                    )
                }
            }
        }
        let mut ps = self.proxies.lock().await;
        let mut out = Vec::new();
        for (name, listen, upstream, enabled) in inputs {
            let listen = listen.unwrap_or_else(|| "127.0.0.1:0".into());
            if let Some(p) = ps.get(&name) {
                if same_listen(&p.listen, &listen) && p.upstream == upstream {
                    out.push(p.to_json());
                    continue;
                }
            }
            if let Some(mut old) = ps.remove(&name) {
                old.stop().await;
            }
            let mut p = ProxyEntry {
                listen,
                upstream,
                enabled,
                shared: ProxyShared::new(&name, self.seed),
                run: None,
            };
            if enabled {
                if let Err(e) = p.start().await {
                    return (
                        e.status,
                        json!({"proxies": out, "error": e.msg, "status": e.status}),
                    );
                }
            }
            out.push(p.to_json());
            ps.insert(name, p);
        }
        (201, json!({ "proxies": out }))
    }

    /// `POST/PATCH /proxies/{p}`: unspecified fields keep their values; a new listen or upstream
    /// restarts the proxy (dropping its connections).
    pub async fn update(&self, name: &str, body: &Value) -> Result<Value, ApiErr> {
        let input = proxy_input(body)?;
        let mut ps = self.proxies.lock().await;
        let p = ps.get_mut(name).ok_or_else(not_found_proxy)?;
        let listen = input.listen.filter(|l| !l.is_empty());
        let upstream = input.upstream.filter(|u| !u.is_empty());
        let moved = listen.as_ref().is_some_and(|l| !same_listen(&p.listen, l))
            || upstream.as_ref().is_some_and(|u| *u != p.upstream);
        let enabled = input.enabled.unwrap_or(p.enabled);
        if moved || !enabled {
            p.stop().await;
        }
        if let Some(l) = listen.filter(|l| !same_listen(&p.listen, l)) {
            p.listen = l;
        }
        if let Some(u) = upstream {
            p.upstream = u;
        }
        p.enabled = enabled;
        if enabled {
            if let Err(e) = p.start().await {
                p.enabled = false;
                return Err(e);
            }
        }
        Ok(p.to_json())
    }

    pub async fn delete(&self, name: &str) -> Result<(), ApiErr> {
        let mut ps = self.proxies.lock().await;
        let mut p = ps.remove(name).ok_or_else(not_found_proxy)?;
        p.stop().await;
        Ok(())
    }

    /// `POST /reset`: every proxy enabled, every toxic removed.
    pub async fn reset(&self) -> Result<(), ApiErr> {
        let mut ps = self.proxies.lock().await;
        let mut first_err = None;
        for p in ps.values_mut() {
            p.shared.toxics.send_replace(Arc::new(Vec::new()));
            p.enabled = true;
            if let Err(e) = p.start().await {
                p.enabled = false;
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub async fn toxics(&self, proxy: &str) -> Result<Value, ApiErr> {
        let ps = self.proxies.lock().await;
        let p = ps.get(proxy).ok_or_else(not_found_proxy)?;
        let v: Vec<Value> = p
            .shared
            .toxics
            .borrow()
            .iter()
            .map(Toxic::to_json)
            .collect();
        Ok(Value::Array(v))
    }

    pub async fn toxic(&self, proxy: &str, name: &str) -> Result<Value, ApiErr> {
        let ps = self.proxies.lock().await;
        let p = ps.get(proxy).ok_or_else(not_found_proxy)?;
        let ts = p.shared.toxics.borrow();
        ts.iter()
            .find(|t| t.name == name)
            .map(Toxic::to_json)
            .ok_or_else(not_found_toxic)
    }

    /// `POST /proxies/{p}/toxics`.
    pub async fn add_toxic(self: &Arc<Self>, proxy: &str, body: &Value) -> Result<Value, ApiErr> {
        let ps = self.proxies.lock().await;
        let p = ps.get(proxy).ok_or_else(not_found_proxy)?;
        let t = Toxic::from_create(body, self.version())?;
        if p.shared.toxics.borrow().iter().any(|x| x.name == t.name) {
            return Err(ApiErr::new(409, "toxic already exists"));
        }
        let v = t.to_json();
        self.schedule_ttl(proxy, &t);
        p.shared.toxics.send_modify(|ts| Arc::make_mut(ts).push(t));
        Ok(v)
    }

    /// `POST/PATCH /proxies/{p}/toxics/{t}`.
    pub async fn update_toxic(
        self: &Arc<Self>,
        proxy: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, ApiErr> {
        let ps = self.proxies.lock().await;
        let p = ps.get(proxy).ok_or_else(not_found_proxy)?;
        let cur = p
            .shared
            .toxics
            .borrow()
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(not_found_toxic)?;
        let t = cur.updated(body, self.version())?;
        let v = t.to_json();
        self.schedule_ttl(proxy, &t);
        p.shared.toxics.send_modify(|ts| {
            for x in Arc::make_mut(ts).iter_mut().filter(|x| x.name == t.name) {
                *x = t.clone();
            }
        });
        Ok(v)
    }

    pub async fn remove_toxic(&self, proxy: &str, name: &str) -> Result<(), ApiErr> {
        let ps = self.proxies.lock().await;
        let p = ps.get(proxy).ok_or_else(not_found_proxy)?;
        if !p.shared.toxics.borrow().iter().any(|t| t.name == name) {
            return Err(not_found_toxic());
        }
        p.shared
            .toxics
            .send_modify(|ts| Arc::make_mut(ts).retain(|t| t.name != name));
        Ok(())
    }

    fn schedule_ttl(self: &Arc<Self>, proxy: &str, t: &Toxic) {
        let Some(ttl) = t.ttl_ms else { return };
        let (me, proxy, name, version) = (
            Arc::downgrade(self),
            proxy.to_string(),
            t.name.clone(),
            t.version,
        );
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(ttl)).await;
            let Some(me) = me.upgrade() else { return };
            let ps = me.proxies.lock().await;
            if let Some(p) = ps.get(&proxy) {
                let current = p
                    .shared
                    .toxics
                    .borrow()
                    .iter()
                    .any(|x| x.name == name && x.version == version);
                if current {
                    p.shared
                        .toxics
                        .send_modify(|ts| Arc::make_mut(ts).retain(|x| x.name != name));
                    tracing::info!(%proxy, toxic = %name, "toxiproxy toxic expired (ttl_ms)");
                }
            }
        });
    }

    /// Stops every proxy (process shutdown).
    pub async fn shutdown(&self) {
        let mut ps = self.proxies.lock().await;
        for p in ps.values_mut() {
            p.stop().await;
        }
    }

    /// `GET /metrics`: bytes per proxy and direction, Prometheus text format.
    pub async fn metrics_text(&self) -> String {
        let ps = self.proxies.lock().await;
        let mut out = String::new();
        for (metric, help, sent) in [
            (
                "toxiproxy_proxy_received_bytes_total",
                "Bytes read from the source of each direction.",
                false,
            ),
            (
                "toxiproxy_proxy_sent_bytes_total",
                "Bytes written to the destination of each direction.",
                true,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (name, p) in ps.iter() {
                for dir in [Stream::Upstream, Stream::Downstream] {
                    let c = &p.shared.counters;
                    let v = if sent {
                        &c.sent[dir.index()]
                    } else {
                        &c.received[dir.index()]
                    };
                    let label = name.replace('\\', "\\\\").replace('"', "\\\"");
                    let _ = writeln!(
                        out,
                        "{metric}{{proxy=\"{label}\",direction=\"{}\"}} {}",
                        dir.as_str(),
                        v.load(Ordering::Relaxed)
                    );
                }
            }
        }
        out
    }
}

/// Serves the fault API on `listener` until `stop` turns true, then closes every proxy.
pub async fn serve(listener: TcpListener, seed: u64, mut stop: watch::Receiver<bool>) {
    let tp = Toxiproxy::new(seed);
    let app = api::router(tp.clone());
    let shutdown = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "toxiproxy API stopped");
    }
    tp.shutdown().await;
}

#[cfg(test)]
mod tests;
