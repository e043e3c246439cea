//! The split layer over a recording upstream: routing, weights, stickiness, pinning, TTL expiry
//! on paused time, per-attempt counting under retries, and the breaker keyed per subset.

use super::*;
use crate::classify::{ClientId, RequestMeta};
use crate::error::ProxyError;
use crate::policy::breaker::{BreakerConfig, BreakerLayer, BreakerMetrics, BreakerRegistry};
use crate::policy::fault::Ttl;
use crate::policy::retry::{RetryConfig, RetryLayer, RetryMetrics};
use crate::stack::Stack;
use crate::{Request, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

const STABLE_ADDR: &str = "127.0.0.1:5001";
const CAND: &str = "127.0.0.21:5001";
const BASE: &str = "127.0.0.22:5001";

/// What the upstream saw of one attempt: the subset's address (if routed), the breaker's key,
/// and whether the pin header reached it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    addr: Option<String>,
    upstream: String,
    pinned: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Answers `status_of(addr)`; `None` hangs for a minute (a timeout).
fn stack(
    slot: Arc<Slot>,
    retry: Option<RetryConfig>,
    status_of: fn(&str) -> Option<u16>,
) -> (Stack, Log, BreakerRegistry) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let upstream = tower::service_fn(move |req: Request| {
        let addr = req
            .extensions()
            .get::<Routed>()
            .and_then(Routed::addr)
            .map(|a| a.to_string());
        let s = Seen {
            upstream: RequestMeta::of(&req).unwrap().upstream.to_string(),
            pinned: req.headers().contains_key(H_SUBSET),
            addr,
        };
        let status = status_of(s.addr.as_deref().unwrap_or(STABLE_ADDR));
        seen.lock().unwrap().push(s);
        // As the upstream client does: the head goes back to retry for another try.
        crate::upstream::HeadBack::give_back(req.into_parts().0);
        async move {
            let Some(status) = status else {
                tokio::time::sleep(Duration::from_secs(60)).await;
                unreachable!("the per-try timeout ends it");
            };
            let mut r = Response::new(crate::empty());
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, ProxyError>(r)
        }
    });
    let breakers = BreakerRegistry::default();
    let breaker = BreakerConfig {
        consecutive_failures: 2,
        seed: Some(1),
        ..Default::default()
    };
    let retry = retry.unwrap_or(RetryConfig {
        max_retries: 0,
        ..Default::default()
    });
    let svc = ServiceBuilder::new()
        .layer(SplitLayer::new(slot))
        .layer(BreakerLayer::new(
            breaker,
            breakers.clone(),
            BreakerMetrics::default(),
        ))
        .layer(RetryLayer::new(retry, RetryMetrics::default()))
        .layer(SplitAttemptLayer)
        .service(upstream);
    (BoxCloneSyncService::new(svc), log, breakers)
}

fn all_ok(_: &str) -> Option<u16> {
    Some(200)
}

fn req(client: &str, pin: Option<&str>) -> Request {
    let mut meta = RequestMeta::for_test(STABLE_ADDR);
    meta.client = ClientId::Token(client.to_string());
    let mut b = http::Request::builder().uri("/x").extension(meta);
    if let Some(p) = pin {
        b = b.header(H_SUBSET, p);
    }
    b.body(crate::empty()).unwrap()
}

async fn send(s: &Stack, r: Request) -> Result<Response, ProxyError> {
    s.clone().oneshot(r).await
}

/// The subset an answer names.
fn subset_of(r: &Response) -> Option<String> {
    r.headers()
        .get(H_SUBSET)
        .map(|v| v.to_str().unwrap().to_string())
}

fn spec(subsets: &[(&str, &str, u32)], ttl_ms: u64) -> SplitSpec {
    SplitSpec {
        subsets: subsets
            .iter()
            .map(|(n, a, w)| Subset::new(*n, *a, *w))
            .collect(),
        ttl: Some(Ttl(Duration::from_millis(ttl_ms))),
        sticky: false,
        controller: None,
        seed: Some(7),
    }
}

fn registry() -> SplitRegistry {
    SplitRegistry::new(SplitMetrics::default())
}

#[tokio::test]
async fn without_a_split_requests_pass_untouched() {
    let reg = registry();
    let (s, log, _) = stack(reg.slot("api"), None, all_ok);
    let r = send(&s, req("a", Some("candidate"))).await.unwrap();
    assert_eq!(subset_of(&r), None);
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![Seen {
            addr: None,
            upstream: STABLE_ADDR.into(),
            pinned: true
        }],
        "no split: no override, and the header is left alone"
    );
    assert!(reg.get("api").is_none());
}

#[tokio::test]
async fn weights_follow_a_seeded_roll() {
    let counts = |seed: u64| async move {
        let reg = registry();
        let mut sp = spec(&[("candidate", CAND, 20), ("baseline", BASE, 30)], 60_000);
        sp.seed = Some(seed);
        reg.put("api", STABLE_ADDR, sp).unwrap();
        let (s, _, _) = stack(reg.slot("api"), None, all_ok);
        let mut order = Vec::new();
        for i in 0..4000 {
            let r = send(&s, req(&i.to_string(), None)).await.unwrap();
            order.push(subset_of(&r).unwrap());
        }
        let st = reg.get("api").unwrap();
        let n = |name: &str| st.subset(name).unwrap().requests.ok;
        ((n("stable"), n("candidate"), n("baseline")), order)
    };
    let ((stable, cand, base), order) = counts(42).await;
    assert_eq!(stable + cand + base, 4000);
    // 50 / 20 / 30 % of 4000, within ±3 percentage points.
    for (got, want) in [(stable, 2000), (cand, 800), (base, 1200)] {
        assert!(got.abs_diff(want) < 120, "{stable} {cand} {base}");
    }
    let (_, again) = counts(42).await;
    assert_eq!(order, again, "the same seed, the same sequence");
    let (_, other) = counts(43).await;
    assert_ne!(order, other);
}

#[tokio::test]
async fn sticky_clients_keep_their_subset() {
    let reg = registry();
    let mut sp = spec(&[("candidate", CAND, 50)], 60_000);
    sp.sticky = true;
    reg.put("api", STABLE_ADDR, sp).unwrap();
    let (s, _, _) = stack(reg.slot("api"), None, all_ok);
    let mut per_subset = std::collections::HashMap::<String, usize>::new();
    for c in 0..100 {
        let client = format!("client-{c}");
        let first = subset_of(&send(&s, req(&client, None)).await.unwrap()).unwrap();
        for _ in 0..10 {
            let again = subset_of(&send(&s, req(&client, None)).await.unwrap()).unwrap();
            assert_eq!(again, first, "{client} moved");
        }
        *per_subset.entry(first).or_default() += 1;
    }
    assert!(
        per_subset["candidate"] > 25 && per_subset["stable"] > 25,
        "{per_subset:?}"
    );
}

#[tokio::test]
async fn the_pin_header_chooses_the_subset_and_is_not_forwarded() {
    let reg = registry();
    reg.put("api", STABLE_ADDR, spec(&[("candidate", CAND, 0)], 60_000))
        .unwrap();
    let (s, log, _) = stack(reg.slot("api"), None, all_ok);
    let r = send(&s, req("a", Some("candidate"))).await.unwrap();
    assert_eq!(subset_of(&r).as_deref(), Some("candidate"));
    let r = send(&s, req("a", Some("stable"))).await.unwrap();
    assert_eq!(subset_of(&r).as_deref(), Some("stable"));
    let r = send(&s, req("a", None)).await.unwrap();
    assert_eq!(
        subset_of(&r).as_deref(),
        Some("stable"),
        "weight 0: pin only"
    );
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        Seen {
            addr: Some(CAND.into()),
            upstream: CAND.into(),
            pinned: false
        }
    );
    assert_eq!(
        seen[1],
        Seen {
            addr: None,
            upstream: STABLE_ADDR.into(),
            pinned: false
        }
    );
    let e = send(&s, req("a", Some("canary"))).await.unwrap_err();
    assert!(matches!(e, ProxyError::BadRequest(_)), "{e}");
    assert!(e.to_string().contains("stable, candidate"), "{e}");
    assert_eq!(log.lock().unwrap().len(), 3, "an unknown pin is not sent");
}

#[tokio::test(start_paused = true)]
async fn the_split_expires_after_its_ttl() {
    let metrics = SplitMetrics::default();
    let reg = SplitRegistry::new(metrics.clone());
    reg.put("api", STABLE_ADDR, spec(&[("candidate", CAND, 100)], 2_000))
        .unwrap();
    let (s, _, _) = stack(reg.slot("api"), None, all_ok);
    tokio::time::advance(Duration::from_millis(1_900)).await;
    let r = send(&s, req("a", None)).await.unwrap();
    assert_eq!(subset_of(&r).as_deref(), Some("candidate"));
    assert_eq!(reg.get("api").unwrap().remaining_ms, 100);
    tokio::time::advance(Duration::from_millis(100)).await;
    let r = send(&s, req("a", None)).await.unwrap();
    assert_eq!(subset_of(&r), None, "expired: 100 % stable, unmarked");
    assert!(reg.get("api").is_none());
    assert!(!reg.delete("api"), "already gone");
    let mut text = String::new();
    let mut r = prometheus_client::registry::Registry::default();
    metrics.register(&mut r);
    prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
    assert!(
        text.contains("split_expired_total{listener=\"api\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("split_weight{listener=\"api\",subset=\"stable\"} 100"),
        "{text}"
    );
}

fn candidate_502(addr: &str) -> Option<u16> {
    Some(if addr == CAND { 502 } else { 200 })
}

fn retrying() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        per_try_timeout: Duration::from_millis(100),
        deadline: Duration::from_secs(5),
        seed: Some(3),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_502_counts_every_attempt_against_the_candidate() {
    let reg = registry();
    reg.put("api", STABLE_ADDR, spec(&[("candidate", CAND, 0)], 60_000))
        .unwrap();
    let (s, log, _) = stack(reg.slot("api"), Some(retrying()), candidate_502);
    let r = send(&s, req("a", Some("candidate"))).await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(subset_of(&r).as_deref(), Some("candidate"));
    assert_eq!(log.lock().unwrap().len(), 3);
    let st = reg.get("api").unwrap();
    let c = st.subset("candidate").unwrap();
    assert_eq!((c.attempts.upstream_5xx, c.attempts.total()), (3, 3));
    assert_eq!((c.requests.upstream_5xx, c.requests.total()), (1, 1));
    assert_eq!(c.retries, 2);
    assert_eq!(c.latency.count, 3);
    let stable = st.subset("stable").unwrap();
    assert_eq!(stable.attempts.total() + stable.requests.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_attempt_counts_as_a_timeout() {
    fn hang(addr: &str) -> Option<u16> {
        (addr != CAND).then_some(200)
    }
    let reg = registry();
    reg.put("api", STABLE_ADDR, spec(&[("candidate", CAND, 0)], 60_000))
        .unwrap();
    let mut cfg = retrying();
    cfg.max_retries = 1;
    let (s, _, _) = stack(reg.slot("api"), Some(cfg), hang);
    let e = send(&s, req("a", Some("candidate"))).await.unwrap_err();
    assert!(matches!(e, ProxyError::Timeout { .. }), "{e}");
    let c = reg.get("api").unwrap().subsets[1].clone();
    assert_eq!(
        (c.attempts.timeout, c.requests.timeout, c.retries),
        (2, 1, 1)
    );
    assert_eq!(c.latency.quantile(0.5), Some(0.1024), "100 ms each");
}

#[tokio::test]
async fn the_candidates_failures_trip_its_own_circuit_not_stables() {
    let reg = registry();
    reg.put("api", STABLE_ADDR, spec(&[("candidate", CAND, 0)], 60_000))
        .unwrap();
    let (s, _, breakers) = stack(reg.slot("api"), None, candidate_502);
    for _ in 0..2 {
        send(&s, req("a", Some("candidate"))).await.unwrap();
    }
    let e = send(&s, req("a", Some("candidate"))).await.unwrap_err();
    assert!(matches!(e, ProxyError::CircuitOpen { .. }), "{e}");
    let state = |u: &str| {
        breakers
            .snapshot()
            .into_iter()
            .find(|c| c.upstream == u)
            .map(|c| c.state)
    };
    assert_eq!(state(CAND).as_deref(), Some("open"));
    let r = send(&s, req("a", None)).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), subset_of(&r).as_deref()),
        (200, Some("stable"))
    );
    assert_eq!(state(STABLE_ADDR).as_deref(), Some("closed"));
    // The open circuit's refusal is the candidate's local error, counted as such.
    let c = reg.get("api").unwrap();
    let c = c.subset("candidate").unwrap();
    assert_eq!((c.requests.upstream_5xx, c.requests.local_error), (2, 1));
}

#[test]
fn bad_specs_are_refused_with_a_reason() {
    let reg = registry();
    let cases: Vec<(SplitSpec, &str)> = vec![
        (
            SplitSpec {
                ttl: None,
                ..spec(&[("candidate", CAND, 5)], 1)
            },
            "ttl is mandatory",
        ),
        (spec(&[("candidate", CAND, 5)], 0), "above zero"),
        (
            spec(&[("candidate", CAND, 5)], 25 * 3600 * 1000),
            "at most 24h",
        ),
        (spec(&[], 1000), "1 to 8 subsets"),
        (spec(&[("candidate", CAND, 101)], 1000), "0 to 100"),
        (
            spec(&[("candidate", CAND, 60), ("baseline", BASE, 50)], 1000),
            "add up to 110",
        ),
        (
            spec(&[("candidate", CAND, 5), ("candidate", BASE, 5)], 1000),
            "twice",
        ),
        (
            spec(&[("stable", CAND, 5)], 1000),
            "listener's own upstream",
        ),
        (spec(&[("Cand idate", CAND, 5)], 1000), "a-z"),
        (spec(&[("candidate", "127.0.0.1", 5)], 1000), "HOST:PORT"),
        (spec(&[("candidate", "http://x:1/p", 5)], 1000), "HOST:PORT"),
        (spec(&[("candidate", "u@x:1", 5)], 1000), "HOST:PORT"),
        (faulty(SubsetFault::abort(404, 5.0)), "500 to 599"),
        (
            faulty(SubsetFault::abort(500, 0.0)),
            "above 0 and at most 100",
        ),
        (
            faulty(SubsetFault::abort(500, 100.5)),
            "above 0 and at most 100",
        ),
        (
            faulty(SubsetFault::abort(500, f64::NAN)),
            "above 0 and at most 100",
        ),
        (faulty(SubsetFault::delay(60_001, 5.0)), "1 to 60000"),
        (faulty(SubsetFault::delay(0, 5.0)), "1 to 60000"),
        (
            faulty(SubsetFault {
                abort: Some(500),
                delay_ms: Some(5),
                percent: 5.0,
            }),
            "either",
        ),
        (
            faulty(SubsetFault {
                abort: None,
                delay_ms: None,
                percent: 5.0,
            }),
            "either",
        ),
    ];
    for (s, why) in cases {
        let e = reg.put("api", STABLE_ADDR, s.clone()).unwrap_err();
        assert!(matches!(e, SplitError::Invalid(_)), "{s:?}");
        assert!(e.to_string().contains(why), "{e} (wanted {why:?})");
    }
    assert!(reg.get("api").is_none());
}

#[tokio::test]
async fn one_controller_owns_a_live_split_and_keeps_its_counters() {
    let reg = registry();
    let owned = |c: Option<&str>, w: u32| SplitSpec {
        controller: c.map(String::from),
        ..spec(&[("candidate", CAND, w)], 60_000)
    };
    let first = reg.put("api", STABLE_ADDR, owned(Some("a"), 5)).unwrap();
    let (s, _, _) = stack(reg.slot("api"), None, all_ok);
    send(&s, req("x", Some("candidate"))).await.unwrap();
    for other in [Some("b"), None] {
        let e = reg.put("api", STABLE_ADDR, owned(other, 5)).unwrap_err();
        assert!(matches!(e, SplitError::Conflict(_)), "{e}");
        assert!(e.to_string().contains("owned by controller \"a\""), "{e}");
    }
    let step = reg.put("api", STABLE_ADDR, owned(Some("a"), 25)).unwrap();
    assert_eq!(
        step.generation, first.generation,
        "the owner's update keeps counting"
    );
    assert_eq!(step.subsets[1].requests.ok, 1);
    assert_eq!((step.subsets[0].weight, step.subsets[1].weight), (75, 25));
    assert!(reg.delete("api"));
    let next = reg.put("api", STABLE_ADDR, owned(Some("b"), 5)).unwrap();
    assert_ne!(next.generation, first.generation);
    assert_eq!(
        next.subsets[1].requests.ok, 0,
        "a new install counts from zero"
    );
    // Without an owner, anyone may replace it.
    reg.delete("api");
    reg.put("api", STABLE_ADDR, owned(None, 5)).unwrap();
    reg.put("api", STABLE_ADDR, owned(Some("c"), 5)).unwrap();
    assert_eq!(reg.list().len(), 1);
}

/// A split whose candidate (weight 50) carries `fault`.
fn faulty(fault: SubsetFault) -> SplitSpec {
    let mut s = spec(&[("candidate", CAND, 50)], 60_000);
    s.subsets[0].fault = Some(fault);
    s
}

/// Split, retry, attempts and a counting upstream answering 200 (it records a request when its
/// future is first polled, as the upstream client sends then) — no breaker, so every rehearsal
/// abort reaches the counters as the subset's own answer.
fn plain_stack(slot: Arc<Slot>, retry: Option<RetryConfig>) -> (Stack, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let upstream = tower::service_fn(move |req: Request| {
        let addr = req
            .extensions()
            .get::<Routed>()
            .and_then(Routed::addr)
            .map(|a| a.to_string());
        let s = Seen {
            upstream: RequestMeta::of(&req).unwrap().upstream.to_string(),
            pinned: false,
            addr,
        };
        crate::upstream::HeadBack::give_back(req.into_parts().0);
        let seen = seen.clone();
        // Sent when first polled, as the upstream client's future is.
        async move {
            seen.lock().unwrap().push(s);
            Ok::<_, ProxyError>(Response::new(crate::empty()))
        }
    });
    let retry = retry.unwrap_or(RetryConfig {
        max_retries: 0,
        ..Default::default()
    });
    let svc = ServiceBuilder::new()
        .layer(SplitLayer::new(slot))
        .layer(RetryLayer::new(retry, RetryMetrics::default()))
        .layer(SplitAttemptLayer)
        .service(upstream);
    (BoxCloneSyncService::new(svc), log)
}

fn rehearsed(r: &Response) -> bool {
    r.headers()
        .get(crate::policy::fault::H_FAULT)
        .is_some_and(|v| v == REHEARSAL)
}

#[tokio::test]
async fn a_rehearsal_abort_hits_its_share_of_the_candidates_requests_only() {
    let run = |fault: Option<SubsetFault>| async move {
        let reg = registry();
        let mut sp = spec(&[("candidate", CAND, 50)], 60_000);
        sp.subsets[0].fault = fault;
        reg.put("api", STABLE_ADDR, sp).unwrap();
        let (s, log) = plain_stack(reg.slot("api"), None);
        let (mut order, mut aborted) = (Vec::new(), 0u64);
        for i in 0..4000 {
            let r = send(&s, req(&i.to_string(), None)).await.unwrap();
            let sub = subset_of(&r).unwrap();
            if r.status() == 500 {
                assert!(rehearsed(&r) && sub == "candidate", "{r:?}");
                aborted += 1;
            } else {
                assert_eq!(r.status(), 200);
                assert!(!rehearsed(&r));
            }
            order.push(sub);
        }
        let sent = log.lock().unwrap().len() as u64;
        (reg.get("api").unwrap(), order, aborted, sent)
    };
    let (st, order, aborted, sent) = run(Some(SubsetFault::abort(500, 5.0))).await;
    let c = st.subset("candidate").unwrap();
    let n = c.requests.total();
    assert!(n.abs_diff(2000) < 150, "{n} candidate requests");
    // 5 % of ~2,000: 100, binomial sd ~10; ±35 is 3.5 sd.
    assert!(aborted.abs_diff(n / 20) <= 35, "{aborted} of {n} aborted");
    assert_eq!(c.fault, Some(SubsetFault::abort(500, 5.0)));
    assert_eq!(c.fault_injected, aborted);
    assert_eq!(
        c.requests.upstream_5xx, aborted,
        "counted against the candidate"
    );
    assert_eq!(c.attempts.upstream_5xx, aborted);
    assert_eq!(c.latency.count, n, "every attempt timed, the aborted too");
    assert_eq!(c.requests.ok, n - aborted);
    assert_eq!(sent, 4000 - aborted, "an abort is never sent upstream");
    let stable = st.subset("stable").unwrap();
    assert_eq!((stable.requests.errors(), stable.fault_injected), (0, 0));
    assert_eq!(stable.fault, None);
    // The same seed draws the same faults; the rehearsal leaves routing as it was.
    let (_, again, aborted_again, _) = run(Some(SubsetFault::abort(500, 5.0))).await;
    assert_eq!((&order, aborted), (&again, aborted_again));
    let (_, plain, none, _) = run(None).await;
    assert_eq!((&order, 0), (&plain, none));
}

/// A controller renews its split every tick with a few requests in between: the renewals must
/// not restart the draws (they did: a 5 % fault never fired and the roll repeated itself).
#[tokio::test]
async fn renewals_by_the_owner_continue_the_draws() {
    let reg = registry();
    let mut sp = faulty(SubsetFault::abort(500, 5.0));
    sp.controller = Some("ctl".into());
    let (s, _log) = {
        reg.put("api", STABLE_ADDR, sp.clone()).unwrap();
        plain_stack(reg.slot("api"), None)
    };
    let mut first_of_each_round = Vec::new();
    for round in 0..200 {
        reg.put("api", STABLE_ADDR, sp.clone()).unwrap();
        for i in 0..10 {
            let r = send(&s, req(&format!("{round}-{i}"), None)).await.unwrap();
            if i == 0 {
                first_of_each_round.push(subset_of(&r).unwrap());
            }
        }
    }
    let c = reg.get("api").unwrap();
    let c = c.subset("candidate").unwrap();
    let n = c.requests.total();
    // ~1,000 candidate requests at 5 %: ~50 aborts (sd ~7).
    assert!(
        c.fault_injected.abs_diff(n / 20) <= 25,
        "{} of {n}",
        c.fault_injected
    );
    assert!(
        first_of_each_round.iter().any(|s| s == "stable")
            && first_of_each_round.iter().any(|s| s == "candidate"),
        "the roll after each renewal must not repeat itself"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rehearsal_abort_fails_every_attempt_of_its_request() {
    let reg = registry();
    let mut sp = spec(&[("candidate", CAND, 0)], 60_000);
    sp.subsets[0].fault = Some(SubsetFault::abort(503, 100.0));
    reg.put("api", STABLE_ADDR, sp).unwrap();
    let (s, log) = plain_stack(reg.slot("api"), Some(retrying()));
    let r = send(&s, req("a", Some("candidate"))).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(rehearsed(&r));
    assert_eq!(subset_of(&r).as_deref(), Some("candidate"));
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    let st = reg.get("api").unwrap();
    let c = st.subset("candidate").unwrap();
    assert_eq!(
        (c.attempts.upstream_5xx, c.retries),
        (3, 2),
        "retried, every try aborted"
    );
    assert_eq!((c.requests.upstream_5xx, c.fault_injected), (1, 1));
    // Stable is never rehearsed.
    let r = send(&s, req("a", Some("stable"))).await.unwrap();
    assert_eq!((r.status().as_u16(), rehearsed(&r)), (200, false));
}

#[tokio::test(start_paused = true)]
async fn a_rehearsal_delay_slows_the_attempt_and_is_timed_with_it() {
    let reg = registry();
    let mut sp = spec(&[("candidate", CAND, 0)], 60_000);
    sp.subsets[0].fault = Some(SubsetFault::delay(300, 100.0));
    reg.put("api", STABLE_ADDR, sp).unwrap();
    let (s, log) = plain_stack(reg.slot("api"), None);
    let t0 = tokio::time::Instant::now();
    let r = send(&s, req("a", Some("candidate"))).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    assert_eq!(r.status(), 200);
    assert!(rehearsed(&r));
    assert_eq!(log.lock().unwrap().len(), 1, "sent after the delay");
    let c = reg.get("api").unwrap().subsets[1].clone();
    assert_eq!((c.requests.ok, c.fault_injected), (1, 1));
    assert_eq!(
        c.latency.quantile(0.5),
        Some(0.4096),
        "300 ms in the attempt's time"
    );

    // Under a per-try timeout shorter than the delay, the attempts time out.
    let mut cfg = retrying();
    cfg.max_retries = 1;
    let (s, log) = plain_stack(reg.slot("api"), Some(cfg));
    let e = send(&s, req("a", Some("candidate"))).await.unwrap_err();
    assert!(matches!(e, ProxyError::Timeout { .. }), "{e}");
    assert!(log.lock().unwrap().is_empty());
    let c = reg.get("api").unwrap().subsets[1].clone();
    assert_eq!((c.attempts.timeout, c.requests.timeout), (2, 1));
}

#[test]
fn the_rehearsal_fault_goes_with_the_spec_and_the_split() {
    let reg = registry();
    let sp = SplitSpec {
        controller: Some("a".into()),
        ..faulty(SubsetFault::delay(50, 2.5))
    };
    let wire = serde_json::to_value(&sp).unwrap();
    assert_eq!(
        wire["subsets"][0]["fault"],
        serde_json::json!({"delay_ms": 50, "percent": 2.5})
    );
    let back: SplitSpec = serde_json::from_value(serde_json::json!({
        "subsets": [{"name": "candidate", "addr": CAND, "weight": 5,
                     "fault": {"abort": 500, "percent": 5}}],
        "ttl": "1m"}))
    .unwrap();
    assert_eq!(back.subsets[0].fault, Some(SubsetFault::abort(500, 5.0)));
    let st = reg.put("api", STABLE_ADDR, sp.clone()).unwrap();
    assert_eq!(st.subsets[1].fault, Some(SubsetFault::delay(50, 2.5)));
    // The owner's next PUT without it ends the rehearsal.
    let mut plain = sp;
    plain.subsets[0].fault = None;
    let st = reg.put("api", STABLE_ADDR, plain).unwrap();
    assert_eq!(st.subsets[1].fault, None);
    assert!(serde_json::to_value(&st).unwrap()["subsets"][1]
        .get("fault")
        .is_none());
}
