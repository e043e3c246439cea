//! Sidecar metrics: a Prometheus text parser, a sampler that scrapes every host's `/metrics` at the
//! run's sample interval, and window queries over what it kept — error ratio and request rate from
//! `bulwark_requests_total` deltas, latency quantiles from `bulwark_request_duration_seconds`
//! bucket deltas (interpolated as Prometheus' `histogram_quantile` does), and plain values.
//!
//! Counters that went down between two scrapes (a restarted sidecar) count from zero, as in
//! Prometheus. A host whose last good scrape is older than three intervals is left out of a query
//! and named in its output: metric probes only see what sidecars answered, so pair them with an
//! http probe when a whole host may disappear.

use crate::model::{MetricQuery, Stat};
use serde::Serialize;
use sidecar::admin::client::AdminClient;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

pub const REQUESTS: &str = "bulwark_requests_total";
pub const BUCKETS: &str = "bulwark_request_duration_seconds_bucket";

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus / OpenMetrics text, keeping only the families `keep` accepts.
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        if !keep(name) {
            continue;
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let Some((l, r)) = parse_labels(&rest[1..]) else {
                continue;
            };
            labels = l;
            rest = r;
        }
        let Some(v) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        out.push(Series {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// `a="x",b="y\"z"} rest` → labels and `rest`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        if i < b.len() && b[i] == b'}' {
            return Some((labels, &s[i + 1..]));
        }
        let eq = s[i..].find('=')? + i;
        let key = s[i..eq].trim().to_string();
        if b.get(eq + 1) != Some(&b'"') {
            return None;
        }
        let mut j = eq + 2;
        let mut val = String::new();
        loop {
            match *b.get(j)? {
                b'\\' => {
                    match *b.get(j + 1)? {
                        b'n' => val.push('\n'),
                        c => val.push(c as char),
                    }
                    j += 2;
                }
                b'"' => break,
                _ => {
                    let ch = s[j..].chars().next()?;
                    val.push(ch);
                    j += ch.len_utf8();
                }
            }
        }
        labels.insert(key, val);
        i = j + 1;
    }
}

/// `histogram_quantile`: `buckets` are (upper bound, cumulative count), sorted by bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = c - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
        }
        prev = (le, c);
    }
    Some(prev.0)
}

struct Snap {
    t: f64,
    series: Vec<Series>,
}

/// One point of the report's timeline (all sampled hosts, between two scrapes).
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub t: f64,
    pub rps: f64,
    pub error_ratio: f64,
    pub p99_ms: Option<f64>,
}

/// The result of a metric query.
#[derive(Clone, Debug, Serialize)]
pub struct Reading {
    pub value: Option<f64>,
    pub requests: f64,
    pub errors: f64,
    pub window_s: f64,
    pub hosts: Vec<String>,
    pub stale: Vec<String>,
    /// Why there is no value (too few requests, nothing scraped yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_data: Option<String>,
}

/// Scrapes sidecars and keeps enough history for the longest window.
pub struct Sampler {
    hosts: Vec<(String, String)>,
    interval: Duration,
    keep_s: f64,
    values: BTreeSet<String>,
    chart_labels: BTreeMap<String, String>,
    start: Instant,
    history: Mutex<BTreeMap<String, VecDeque<Snap>>>,
    timeline: Mutex<Vec<Point>>,
}

fn matches(s: &Series, labels: &BTreeMap<String, String>) -> bool {
    labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
}

fn key(s: &Series) -> (String, Vec<(String, String)>) {
    (
        s.name.clone(),
        s.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// Per-series increase from `a` to `b` (counter resets count from zero).
fn deltas<'a>(a: &'a Snap, b: &'a Snap) -> Vec<(&'a Series, f64)> {
    let before: BTreeMap<_, f64> = a.series.iter().map(|s| (key(s), s.value)).collect();
    b.series
        .iter()
        .map(|s| {
            let d = match before.get(&key(s)) {
                Some(&v) if s.value >= v => s.value - v,
                _ => s.value,
            };
            (s, d)
        })
        .collect()
}

fn is_error(s: &Series, classes: &[String]) -> bool {
    s.labels
        .get("status")
        .is_some_and(|c| classes.iter().any(|x| x == c))
}

fn bucket_quantile(q: f64, d: &[(&Series, f64)], labels: &BTreeMap<String, String>) -> Option<f64> {
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (s, v) in d {
        if s.name != BUCKETS || !matches(s, labels) {
            continue;
        }
        let le = match s.labels.get("le").map(String::as_str) {
            Some("+Inf") => f64::INFINITY,
            Some(x) => match x.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
            None => continue,
        };
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += v;
    }
    let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    quantile(q, &buckets).map(|s| s * 1000.0)
}

impl Sampler {
    /// `hosts`: (name, admin URL). `windows`: the longest window any query uses. `values`: metric
    /// names of `value` probes. `chart_labels`: the label filter of the report's timeline.
    pub fn new(
        hosts: Vec<(String, String)>,
        interval: Duration,
        longest_window: Duration,
        values: BTreeSet<String>,
        chart_labels: BTreeMap<String, String>,
        start: Instant,
    ) -> Self {
        Self {
            hosts,
            interval,
            keep_s: (longest_window + interval * 3).as_secs_f64(),
            values,
            chart_labels,
            start,
            history: Mutex::new(BTreeMap::new()),
            timeline: Mutex::new(Vec::new()),
        }
    }

    pub fn has_hosts(&self) -> bool {
        !self.hosts.is_empty()
    }

    fn keep(&self, name: &str) -> bool {
        name == REQUESTS || name == BUCKETS || self.values.contains(name)
    }

    /// Scrapes every host once (concurrently, each bounded by the interval) and extends the
    /// timeline.
    pub async fn scrape(&self, http: &reqwest::Client) {
        let t = self.start.elapsed().as_secs_f64();
        let timeout = self.interval.min(Duration::from_secs(2));
        let futs = self.hosts.iter().map(|(name, admin)| {
            let client = AdminClient::with_http(admin, http.clone()).timeout(timeout);
            async move { (name.clone(), client.metrics().await.ok()) }
        });
        let results = futures::future::join_all(futs).await;
        let mut hist = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let mut point = Point {
            t,
            rps: 0.0,
            error_ratio: 0.0,
            p99_ms: None,
        };
        let (mut total, mut errors, mut dt) = (0.0, 0.0, 0.0f64);
        let mut all_deltas: Vec<(Series, f64)> = Vec::new();
        let mut any = false;
        for (name, text) in results {
            let Some(text) = text else { continue };
            let snap = Snap {
                t,
                series: parse(&text, |n| self.keep(n)),
            };
            let h = hist.entry(name).or_default();
            if let Some(prev) = h.back() {
                any = true;
                dt = dt.max(t - prev.t);
                for (s, d) in deltas(prev, &snap) {
                    if s.name == REQUESTS && matches(s, &self.chart_labels) {
                        total += d;
                        if is_error(s, &["5xx".to_string()]) {
                            errors += d;
                        }
                    }
                    if s.name == BUCKETS {
                        all_deltas.push((s.clone(), d));
                    }
                }
            }
            h.push_back(snap);
            while h.len() > 2 && h.front().is_some_and(|f| t - f.t > self.keep_s) {
                h.pop_front();
            }
        }
        drop(hist);
        if any && dt > 0.0 {
            point.rps = total / dt;
            point.error_ratio = if total > 0.0 { errors / total } else { 0.0 };
            let refs: Vec<(&Series, f64)> = all_deltas.iter().map(|(s, d)| (s, *d)).collect();
            let mut hl = self.chart_labels.clone();
            hl.retain(|k, _| k == "listener" || k == "route");
            point.p99_ms = bucket_quantile(0.99, &refs, &hl);
            let mut tl = self.timeline.lock().unwrap_or_else(PoisonError::into_inner);
            if tl.len() < 100_000 {
                tl.push(point);
            }
        }
    }

    pub fn timeline(&self) -> Vec<Point> {
        self.timeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Seconds of history every host has (the shortest), for warm-up.
    pub fn covered(&self) -> f64 {
        let hist = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        self.hosts
            .iter()
            .map(|(n, _)| {
                hist.get(n)
                    .and_then(|h| Some(h.back()?.t - h.front()?.t))
                    .unwrap_or(0.0)
            })
            .fold(f64::INFINITY, f64::min)
    }

    pub fn query(&self, q: &MetricQuery) -> Reading {
        let now = self.start.elapsed().as_secs_f64();
        let stale_after = (self.interval * 3).as_secs_f64().max(1.5);
        let hist = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let mut r = Reading {
            value: None,
            requests: 0.0,
            errors: 0.0,
            window_s: 0.0,
            hosts: Vec::new(),
            stale: Vec::new(),
            no_data: None,
        };
        let mut value_sum = 0.0;
        let mut bucket_deltas: Vec<(&Series, f64)> = Vec::new();
        let w = q.window.as_secs_f64();
        for name in &q.hosts {
            let Some(h) = hist.get(name) else {
                r.stale.push(name.clone());
                continue;
            };
            let Some(last) = h.back() else {
                r.stale.push(name.clone());
                continue;
            };
            if now - last.t > stale_after {
                r.stale.push(name.clone());
                continue;
            }
            r.hosts.push(name.clone());
            if let Stat::Value { series } = &q.stat {
                value_sum += last
                    .series
                    .iter()
                    .filter(|s| &s.name == series && matches(s, &q.labels))
                    .map(|s| s.value)
                    .sum::<f64>();
                continue;
            }
            // The earlier snapshot closest to `window` before the last one: scrapes start a little
            // late or early, so the window actually measured is `window` ± half an interval (its
            // exact length is in the output and divides the rates).
            let target = last.t - w;
            let Some(base) = h
                .iter()
                .take(h.len() - 1)
                .min_by(|a, b| (a.t - target).abs().total_cmp(&(b.t - target).abs()))
            else {
                continue;
            };
            r.window_s = r.window_s.max(last.t - base.t);
            for (s, d) in deltas(base, last) {
                if s.name == REQUESTS && matches(s, &q.labels) {
                    r.requests += d;
                    if is_error(s, &q.errors) {
                        r.errors += d;
                    }
                } else if s.name == BUCKETS {
                    bucket_deltas.push((s, d));
                }
            }
        }
        if r.hosts.is_empty() {
            r.no_data = Some("no host's metrics could be scraped".into());
            return r;
        }
        match &q.stat {
            Stat::Value { .. } => r.value = Some(value_sum),
            Stat::RequestRate => {
                if r.window_s > 0.0 {
                    r.value = Some(r.requests / r.window_s);
                } else {
                    r.no_data = Some("not enough scrapes yet".into());
                }
            }
            Stat::ErrorRatio | Stat::Latency { .. } => {
                if r.window_s <= 0.0 {
                    r.no_data = Some("not enough scrapes yet".into());
                } else if r.requests < q.min_requests as f64 || r.requests == 0.0 {
                    r.no_data = Some(format!(
                        "{} requests in the window, fewer than min_requests {}",
                        r.requests,
                        q.min_requests.max(1)
                    ));
                    if q.min_requests == 0 && matches!(q.stat, Stat::ErrorRatio) {
                        r.no_data = None;
                        r.value = Some(0.0);
                    }
                } else if let Stat::Latency { quantile } = q.stat {
                    r.value = bucket_quantile(quantile, &bucket_deltas, &q.labels);
                    if r.value.is_none() {
                        r.no_data = Some("no latency observations in the window".into());
                    }
                } else {
                    r.value = Some(r.errors / r.requests);
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP bulwark_requests Requests
# TYPE bulwark_requests counter
bulwark_requests_total{listener="rpc",route="",class="client",upstream="127.0.0.1:1",status="2xx"} 90
bulwark_requests_total{listener="rpc",route="",class="client",upstream="127.0.0.1:1",status="5xx"} 10
bulwark_requests_total{listener="peer-out",route="x\"y",class="replication",upstream="a",status="2xx"} 5
bulwark_request_duration_seconds_bucket{listener="rpc",route="",le="0.001"} 50
bulwark_request_duration_seconds_bucket{listener="rpc",route="",le="0.01"} 90
bulwark_request_duration_seconds_bucket{listener="rpc",route="",le="+Inf"} 100
bulwark_breaker_state{upstream="a"} 1
# EOF
"#;

    #[test]
    fn parses_labels_with_escapes_and_filters_families() {
        let s = parse(TEXT, |n| n.starts_with("bulwark_requests"));
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].labels["route"], "x\"y");
        assert_eq!(s[1].value, 10.0);
        let all = parse(TEXT, |_| true);
        assert_eq!(all.len(), 7);
        assert_eq!(all[5].labels["le"], "+Inf");
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let b = [(0.001, 50.0), (0.01, 90.0), (f64::INFINITY, 100.0)];
        assert!((quantile(0.5, &b).unwrap() - 0.001).abs() < 1e-12);
        // rank 70: 20 of the 40 in (0.001, 0.01] → halfway.
        assert!((quantile(0.7, &b).unwrap() - 0.0055).abs() < 1e-12);
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(quantile(0.99, &b).unwrap(), 0.01);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn window_queries_use_deltas_and_restart_from_zero_after_a_reset() {
        let s = Sampler::new(
            vec![("n1".into(), "http://unused".into())],
            Duration::from_secs(1),
            Duration::from_secs(5),
            BTreeSet::new(),
            BTreeMap::new(),
            Instant::now(),
        );
        let mk = |t: f64, ok: f64, bad: f64| Snap {
            t,
            series: parse(
                &format!(
                    "bulwark_requests_total{{listener=\"rpc\",status=\"2xx\"}} {ok}\n\
                     bulwark_requests_total{{listener=\"rpc\",status=\"5xx\"}} {bad}\n"
                ),
                |_| true,
            ),
        };
        {
            let mut h = s.history.lock().unwrap();
            let q = h.entry("n1".into()).or_default();
            q.push_back(mk(0.0, 100.0, 0.0));
            q.push_back(mk(1.0, 110.0, 0.0));
            q.push_back(mk(2.0, 120.0, 10.0));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let q = MetricQuery {
            stat: Stat::ErrorRatio,
            hosts: vec!["n1".into()],
            labels: BTreeMap::from([("listener".to_string(), "rpc".to_string())]),
            window: Duration::from_secs(5),
            min_requests: 1,
            errors: vec!["5xx".into()],
        };
        let r = s.query(&q);
        assert_eq!((r.requests, r.errors), (30.0, 10.0));
        assert!((r.value.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        // A restart: the counters start again from 0.
        s.history
            .lock()
            .unwrap()
            .get_mut("n1")
            .unwrap()
            .push_back(mk(3.0, 4.0, 0.0));
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = s.query(&MetricQuery {
            window: Duration::from_secs(1),
            ..q.clone()
        });
        assert_eq!((r.requests, r.errors), (4.0, 0.0));
        // Too little traffic is "no data", never a pass.
        let r = s.query(&MetricQuery {
            window: Duration::from_secs(1),
            min_requests: 50,
            ..q.clone()
        });
        assert!(r.value.is_none() && r.no_data.is_some());
        // A host that stopped answering is stale.
        tokio::time::advance(Duration::from_secs(10)).await;
        let r = s.query(&q);
        assert_eq!(r.stale, vec!["n1".to_string()]);
        assert!(r.value.is_none());
    }
}
