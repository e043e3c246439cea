//! HTTP listeners: HTTP/1.1 on the sidecar's own codec (`listen/h1.rs`), h2c (detected by its
//! preface) on hyper's HTTP/2 server, both with a header deadline and size cap; and the per-request edge: classify, tag with request id and trace context, run the
//! policy stack of the listener's *current* configuration, answer failures, record metrics.
//!
//! The stack is behind an `ArcSwap` so a hot reload changes behaviour for the next request without
//! touching open connections.

use crate::classify::ClientId;
use crate::config::{Config, ListenerConfig};
use crate::listen::h1::{self, Limits, Served};
use crate::metrics::{status_class, ErrorLabels, ListenerLabels, RequestLabels, RouteLabels};
use crate::server::SidecarState;
use crate::stack::{Built, Stack};
use crate::upstream::forward::{Forward, Target};
use crate::{Request, Response};
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Header names as constants: a `&str` key is parsed and validated on every lookup (~1k
/// instructions per request for these four uses, measured with callgrind).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One listener's behaviour under one configuration.
pub struct ListenerRuntime {
    pub cfg: Arc<Config>,
    pub listener: ListenerConfig,
    pub stack: Stack,
    forward: Forward,
    /// Route names as shared strings (the class rules', then "other"): no allocation per request.
    routes: Vec<Arc<str>>,
    /// Inbound: the fixed upstream's name.
    fixed_upstream: Option<Arc<str>>,
    /// Metric handles per label set, resolved once: a `Family` lookup builds five label
    /// `String`s and hashes them, on every request otherwise.
    /// foldhash: looked up on every request; the keys are bounded (`MAX_METRIC_HANDLES`).
    metric_handles:
        std::sync::RwLock<HashMap<MetricKey, (Counter, Histogram), foldhash::fast::RandomState>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct MetricKey {
    route: Arc<str>,
    class: crate::classify::TrafficClass,
    upstream: Arc<str>,
    status: &'static str,
}

/// Distinct label sets cached per listener; beyond it lookups go to the families directly.
const MAX_METRIC_HANDLES: usize = 4096;

impl ListenerRuntime {
    pub fn build(cfg: Arc<Config>, name: &str, shared: &SidecarState) -> Option<Self> {
        let listener = cfg.listeners.iter().find(|l| l.name == name)?.clone();
        let Built { stack, forward } = crate::stack::build(&cfg, &listener, shared)?;
        let fixed_upstream: Option<Arc<str>> = match forward.target() {
            Target::Fixed(a) => Some(Arc::from(a.as_str())),
            Target::ByAuthority(_) => None,
        };
        let routes = cfg
            .class_rules
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .chain(std::iter::once(Arc::from("other")))
            .collect();
        Some(Self {
            cfg,
            listener,
            stack,
            forward,
            routes,
            fixed_upstream,
            metric_handles: std::sync::RwLock::new(HashMap::default()),
        })
    }

    /// The shared name of the route `classify` returned (a name inside `self.cfg`).
    fn route_arc(&self, route: &str) -> Arc<str> {
        match self
            .cfg
            .class_rules
            .iter()
            .position(|r| std::ptr::eq(r.name.as_str(), route))
        {
            Some(i) => self.routes[i].clone(),
            None if route == "other" => self.routes[self.routes.len() - 1].clone(),
            None => Arc::from(route),
        }
    }
}

pub async fn serve(
    tcp: TcpListener,
    rt: Arc<ArcSwap<ListenerRuntime>>,
    shared: Arc<SidecarState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = rt.load().listener.name.clone();
    let labels = ListenerLabels {
        listener: name.clone(),
    };
    loop {
        let Some((stream, remote)) = super::accept(&tcp, &name, &mut shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        shared.metrics.connections.get_or_create(&labels).inc();
        let rt = rt.clone();
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        let labels = labels.clone();
        tokio::spawn(async move {
            let guard = shared.conns.enter();
            let active = shared
                .metrics
                .active_connections
                .get_or_create(&labels)
                .clone();
            active.inc();
            let l = rt.load();
            let limits = Limits {
                max_head: l.listener.max_header_bytes,
                header_read_timeout: l.listener.header_read_timeout,
            };
            drop(l);
            let slot = StackSlot::default();
            let served = h1::serve(stream, limits, &mut shutdown, |req| {
                let fut = handle(rt.load_full(), shared.clone(), remote, req, slot.clone());
                async move {
                    let resp = fut.await;
                    // A policy asked for the connection to be dropped without an answer.
                    crate::error::DropConnection::of(&resp)
                        .is_none()
                        .then_some(resp)
                }
            })
            .await;
            if let Served::H2(io) = served {
                serve_h2(io, limits, &rt, &shared, remote, &mut shutdown, slot).await;
            }
            active.dec();
            drop(guard);
        });
    }
}

/// HTTP/2 with prior knowledge (h2c), on hyper's server.
async fn serve_h2(
    io: h1::Rewind,
    limits: Limits,
    rt: &Arc<ArcSwap<ListenerRuntime>>,
    shared: &Arc<SidecarState>,
    remote: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
    slot: StackSlot,
) {
    let svc = hyper::service::service_fn({
        let rt = rt.clone();
        let shared = shared.clone();
        move |req: hyper::Request<Incoming>| {
            let req: Request = req.map(|b| b.map_err(crate::box_err).boxed());
            let fut = handle(rt.load_full(), shared.clone(), remote, req, slot.clone());
            async move {
                let resp = fut.await;
                match crate::error::DropConnection::of(&resp) {
                    Some(e) => Err(e),
                    None => Ok(resp),
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_head as u32);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let res = if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
        conn.await
    } else {
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(%remote, error = %e, "h2 connection ended with an error");
    }
}

/// Boxed on purpose: naming the future's type as `Send` here sidesteps rustc's higher-ranked
/// lifetime inference on trait objects inside spawned async blocks.
fn handle(
    rt: Arc<ListenerRuntime>,
    shared: Arc<SidecarState>,
    remote: SocketAddr,
    req: Request,
    slot: StackSlot,
) -> futures::future::BoxFuture<'static, Response> {
    Box::pin(handle_inner(rt, shared, remote, req, slot))
}

/// A connection's own copy of its listener's policy stack, taken for a request and put back after
/// it, so that keep-alive requests do not clone the stack each (a box, and a reference count per
/// layer to take and give back: ~1 % of the instructions per request, and as many atomic
/// reference-count updates). Tagged with the runtime it
/// was cloned from: after a hot reload the next request clones the new stack. An h2 connection's
/// concurrent streams find it taken and clone their own.
#[derive(Clone, Default)]
struct StackSlot(Arc<std::sync::Mutex<Option<CachedStack>>>);

/// A stack and the runtime it was cloned from.
type CachedStack = (Arc<ListenerRuntime>, Stack);

impl StackSlot {
    fn take(&self, rt: &Arc<ListenerRuntime>) -> Stack {
        let cached = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match cached {
            Some((from, svc)) if Arc::ptr_eq(&from, rt) => svc,
            _ => rt.stack.clone(),
        }
    }

    fn put(&self, rt: Arc<ListenerRuntime>, svc: Stack) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((rt, svc));
    }
}

async fn handle_inner(
    rt: Arc<ListenerRuntime>,
    shared: Arc<SidecarState>,
    remote: SocketAddr,
    mut req: Request,
    slot: StackSlot,
) -> Response {
    let start = tokio::time::Instant::now();
    let (class, route) = rt
        .cfg
        .classify(&rt.listener, req.uri().path(), req.headers());
    let route: Arc<str> = rt.route_arc(route);
    let client = ClientId::from_request(&req, remote.ip());
    // The upstream's name, for breakers, metrics and faults. Inbound it is fixed; outbound the
    // request names it (the allow-list is enforced again where the request leaves, in
    // `upstream::forward`, the one place that decides where a request goes).
    let upstream: Arc<str> = match &rt.fixed_upstream {
        Some(u) => u.clone(),
        None => match rt.forward.upstream_of(&req) {
            Ok(a) => Arc::from(a.as_str()),
            Err(e) => return answer(&rt, &shared, &route, class, &Arc::from("-"), start, Err(e)),
        },
    };
    let method = req.method().clone();
    let h = req.headers_mut();
    let want_id = !h.contains_key(X_REQUEST_ID);
    let want_tp = !shared.tracing && !h.contains_key(TRACEPARENT);
    if want_id || want_tp {
        // Both values in one shared buffer: one allocation, and clones of the values (a probe or
        // failover keeps a copy of the head) are reference counts, not copies.
        let mut b = bytes::BytesMut::with_capacity(32 + 55);
        if want_id {
            let mut id = [0u8; 32];
            hex_into(&rand::random::<u128>().to_be_bytes(), &mut id);
            b.extend_from_slice(&id);
            let v = b.split_to(32).freeze();
            h.insert(
                X_REQUEST_ID,
                HeaderValue::from_maybe_shared(v).expect("hex"),
            );
        }
        if want_tp {
            // W3C trace context (`00-<trace id>-<span id>-01`): start a trace here so every hop
            // behind us shares it.
            let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-01";
            hex_into(&rand::random::<u128>().to_be_bytes(), &mut tp[3..35]);
            hex_into(&rand::random::<u64>().to_be_bytes(), &mut tp[36..52]);
            b.extend_from_slice(&tp);
            let v = b.split_to(tp.len()).freeze();
            h.insert(TRACEPARENT, HeaderValue::from_maybe_shared(v).expect("hex"));
        }
    }
    let span = shared
        .tracing
        .then(|| crate::telemetry::request_span(&rt.listener.name, &route, h, &method));
    req.extensions_mut().insert(crate::classify::RequestMeta {
        class,
        client,
        remote,
        upstream: upstream.clone(),
        route: route.clone(),
        head_back: None,
    });
    // Not `oneshot`: a held `Oneshot<S, _>` names `S::Future` through the trait, which trips
    // rustc's higher-ranked Send inference in spawned tasks; the boxed future is concrete.
    let mut svc = slot.take(&rt);
    let res = match futures::future::poll_fn(|cx| tower::Service::poll_ready(&mut svc, cx)).await {
        Ok(()) => {
            let fut = tower::Service::call(&mut svc, req);
            match &span {
                Some(span) => {
                    use tracing::Instrument;
                    fut.instrument(span.clone()).await
                }
                None => fut.await,
            }
        }
        Err(e) => Err(e),
    };
    if let (Some(span), Ok(r)) = (&span, &res) {
        span.record("http.response.status_code", r.status().as_u16());
    }
    let resp = answer(&rt, &shared, &route, class, &upstream, start, res);
    slot.put(rt, svc);
    resp
}

fn answer(
    rt: &ListenerRuntime,
    shared: &SidecarState,
    route: &Arc<str>,
    class: crate::classify::TrafficClass,
    upstream: &Arc<str>,
    start: tokio::time::Instant,
    res: Result<Response, crate::error::ProxyError>,
) -> Response {
    let name = &rt.listener.name;
    let resp = match res {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(listener = %name, route = %route, error = %e, "answered by the sidecar");
            shared
                .metrics
                .errors
                .get_or_create(&ErrorLabels {
                    listener: name.clone(),
                    kind: e.kind().to_string(),
                })
                .inc();
            e.into_response()
        }
    };
    let key = MetricKey {
        route: route.clone(),
        class,
        upstream: upstream.clone(),
        status: status_class(resp.status()),
    };
    let cached = rt
        .metric_handles
        .read()
        .expect("metric handles lock")
        .get(&key)
        .cloned();
    let (count, time) = match cached {
        Some(h) => h,
        None => {
            let m = &shared.metrics;
            let count = m
                .requests
                .get_or_create(&RequestLabels {
                    listener: name.clone(),
                    route: route.to_string(),
                    class: class.as_str().to_string(),
                    upstream: upstream.to_string(),
                    status: key.status.to_string(),
                })
                .clone();
            let time = m
                .duration
                .get_or_create(&RouteLabels {
                    listener: name.clone(),
                    route: route.to_string(),
                })
                .clone();
            let mut all = rt.metric_handles.write().expect("metric handles lock");
            if all.len() < MAX_METRIC_HANDLES {
                all.insert(key, (count.clone(), time.clone()));
            }
            (count, time)
        }
    };
    count.inc();
    time.observe(start.elapsed().as_secs_f64());
    resp
}

/// Table-driven into a stack buffer: `write!("{:02x}")` per byte was 12 % of the proxy's
/// instructions per request, and `format!` of the trace context another 3 %.
fn hex_into(b: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (&x, o) in b.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = HEX[(x >> 4) as usize];
        o[1] = HEX[(x & 15) as usize];
    }
}
