//! The checks every section shares (durations, URLs, tolerances, hosts) and the experiment,
//! runtime, schedule, host, load and abort sections.

use super::*;

impl Validator<'_> {
    pub(super) fn line(&self, span: &Range<usize>) -> Option<usize> {
        Some(line_of(self.text, span.start))
    }

    pub(super) fn err(
        &mut self,
        span: Range<usize>,
        path: impl Into<String>,
        msg: impl Into<String>,
    ) {
        let line = self.line(&span);
        self.problems.push(Problem::new(line, path, msg));
    }

    pub(super) fn dur(
        &mut self,
        v: &Option<S<String>>,
        path: &str,
        field: &str,
    ) -> Option<Duration> {
        let s = v.as_ref()?;
        match dur_str(s.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(s.span(), format!("{path}.{field}"), e);
                None
            }
        }
    }

    pub(super) fn url(&mut self, v: &S<String>, path: &str, field: &str) -> String {
        if let Err(e) = url_ok(v.get_ref()) {
            self.err(v.span(), format!("{path}.{field}"), e);
        }
        v.get_ref().trim_end_matches('/').to_string()
    }

    pub(super) fn experiment(
        &mut self,
        raw: RawFile,
        source: &str,
        vars: BTreeMap<String, String>,
    ) -> Experiment {
        if let Some(s) = &raw.schema {
            if s.get_ref() != SCHEMA {
                self.err(
                    s.span(),
                    "schema",
                    format!("this chaos reads schema {SCHEMA:?}, not {:?}", s.get_ref()),
                );
            }
        }
        if raw.title.get_ref().trim().is_empty() {
            self.err(raw.title.span(), "title", "must not be empty");
        }
        let runtime = self.runtime(raw.runtime.as_ref());
        let schedule = raw.schedule.as_ref().map(|s| self.schedule(s, &runtime));
        let hosts: BTreeMap<String, Host> = raw
            .hosts
            .iter()
            .map(|(n, h)| (n.clone(), self.host(n, h)))
            .collect();
        let mut names = BTreeSet::new();
        let mut steady_state = Vec::new();
        for (i, p) in raw.steady_state.iter().enumerate() {
            let path = format!("steady_state[{i}] ({:?})", p.get_ref().name.get_ref());
            if !names.insert(p.get_ref().name.get_ref().clone()) {
                self.err(
                    p.get_ref().name.span(),
                    &path,
                    "a probe of this name already exists",
                );
            }
            if let Some(x) = &p.get_ref().probe {
                self.err(
                    x.span(),
                    format!("{path}.probe"),
                    "only an [[abort]] can refer to a probe",
                );
            }
            if let Some(x) = &p.get_ref().for_ {
                self.err(
                    x.span(),
                    format!("{path}.for"),
                    "only an [[abort]] has `for`",
                );
            }
            if let Some(pr) = self.probe(p, &path, &hosts) {
                steady_state.push(pr);
            }
        }
        // Without an explicit `settle`, the "after" check waits one metric window, so that it
        // measures traffic after the method rather than the tail of the last fault.
        let mut runtime = runtime;
        if raw
            .runtime
            .as_ref()
            .is_none_or(|r| r.get_ref().settle.is_none())
            && runtime.hypothesis.after
        {
            runtime.settle = steady_state
                .iter()
                .filter_map(|p| match &p.kind {
                    ProbeKind::Metric(q) => Some(q.window),
                    _ => None,
                })
                .max()
                .unwrap_or_default();
        }
        let loads = raw
            .load
            .iter()
            .enumerate()
            .filter_map(|(i, l)| self.load(i, l))
            .collect();
        let method = self.activities(&raw.method, "method", &hosts, &steady_state, &runtime);
        let rollbacks = self.activities(&raw.rollback, "rollback", &hosts, &steady_state, &runtime);
        let aborts = raw
            .abort
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.abort(i, a, &hosts, &steady_state))
            .collect();
        let exp = Experiment {
            title: raw.title.get_ref().clone(),
            description: raw.description.unwrap_or_default(),
            tags: raw.tags,
            source: source.to_string(),
            format: Format::Toml,
            vars,
            runtime,
            schedule,
            hosts,
            steady_state,
            loads,
            method,
            rollbacks,
            aborts,
        };
        let need = exp.planned_method() + exp.runtime.settle;
        if need >= exp.runtime.max_duration {
            let span = raw
                .runtime
                .as_ref()
                .and_then(|r| r.get_ref().max_duration.as_ref().map(|m| m.span()))
                .unwrap_or(raw.title.span());
            self.err(
                span,
                "runtime.max_duration",
                format!(
                    "the method needs {} (pauses, durations and settle) but the hard maximum is {}",
                    humantime::format_duration(need),
                    humantime::format_duration(exp.runtime.max_duration)
                ),
            );
        }
        exp
    }

    pub(super) fn runtime(&mut self, raw: Option<&S<RawRuntime>>) -> Runtime {
        let mut rt = Runtime::default();
        let Some(raw) = raw else { return rt };
        let r = raw.get_ref();
        let p = "runtime";
        if let Some(s) = &r.seed {
            match u64::try_from(*s.get_ref()) {
                Ok(v) => rt.seed = v,
                Err(_) => self.err(s.span(), "runtime.seed", "must not be negative"),
            }
        }
        if let Some(h) = &r.hypothesis {
            let (b, d, a) = match h.get_ref().as_str() {
                "continuous" => (true, true, true),
                "before-after" => (true, false, true),
                "before" => (true, false, false),
                "after" => (false, false, true),
                "during" => (false, true, false),
                other => {
                    self.err(
                        h.span(),
                        "runtime.hypothesis",
                        format!(
                            "{other:?}: expected continuous, before-after, before, after or during"
                        ),
                    );
                    (true, true, true)
                }
            };
            rt.hypothesis = HypothesisStrategy {
                before: b,
                during: d,
                after: a,
            };
        }
        if let Some(s) = &r.rollbacks {
            rt.rollbacks = match s.get_ref().as_str() {
                "always" => RollbackStrategy::Always,
                "on-deviation" => RollbackStrategy::OnDeviation,
                "never" => RollbackStrategy::Never,
                other => {
                    self.err(
                        s.span(),
                        "runtime.rollbacks",
                        format!("{other:?}: expected always, on-deviation or never"),
                    );
                    RollbackStrategy::Always
                }
            };
        }
        if let Some(s) = &r.on_action_error {
            match s.get_ref().as_str() {
                "stop" => rt.stop_on_action_error = true,
                "continue" => rt.stop_on_action_error = false,
                other => self.err(
                    s.span(),
                    "runtime.on_action_error",
                    format!("{other:?}: expected stop or continue"),
                ),
            }
        }
        let positive = |v: &mut Self, d: Option<Duration>, f: &Option<S<String>>, name: &str| {
            if let (Some(d), Some(s)) = (d, f) {
                if d.is_zero() {
                    v.err(s.span(), format!("runtime.{name}"), "must be more than 0");
                }
            }
            d
        };
        let d = self.dur(&r.hypothesis_interval, p, "hypothesis_interval");
        if let Some(d) = positive(self, d, &r.hypothesis_interval, "hypothesis_interval") {
            rt.hypothesis_interval = d;
        }
        let d = self.dur(&r.max_duration, p, "max_duration");
        if let Some(d) = positive(self, d, &r.max_duration, "max_duration") {
            rt.max_duration = d;
        }
        let d = self.dur(&r.sample_interval, p, "sample_interval");
        if let Some(d) = positive(self, d, &r.sample_interval, "sample_interval") {
            rt.sample_interval = d;
        }
        if let Some(d) = self.dur(&r.ttl_margin, p, "ttl_margin") {
            rt.ttl_margin = d;
        }
        if let Some(d) = self.dur(&r.settle, p, "settle") {
            rt.settle = d;
        }
        if rt.max_duration + rt.ttl_margin > Duration::from_secs(23 * 3600) {
            self.err(
                raw.span(),
                "runtime.max_duration",
                "max_duration + ttl_margin must stay under 23h (the sidecar caps fault TTLs at 24h)",
            );
        }
        rt.fail_fast = r.fail_fast.unwrap_or(false);
        rt.journal = r.journal.as_ref().map(PathBuf::from);
        rt.report = r.report.as_ref().map(PathBuf::from);
        rt
    }

    pub(super) fn schedule(&mut self, raw: &S<RawSchedule>, rt: &Runtime) -> schedule::Schedule {
        let r = raw.get_ref();
        let mut s = schedule::Schedule::default();
        if let Some(a) = &r.at {
            match schedule::parse_at(a.get_ref()) {
                Ok(t) => s.at = Some(t),
                Err(e) => self.err(a.span(), "schedule.at", e),
            }
        }
        if let Some(d) = self.dur(&r.every, "schedule", "every") {
            if d < rt.max_duration {
                self.err(
                    r.every.as_ref().map(|e| e.span()).unwrap_or(raw.span()),
                    "schedule.every",
                    "the period must be at least runtime.max_duration (runs must not overlap)",
                );
            }
            s.every = Some(d);
        }
        for (i, w) in r.window.iter().enumerate() {
            match schedule::parse_window(w.get_ref()) {
                Ok(w) => s.windows.push(w),
                Err(e) => self.err(w.span(), format!("schedule.window[{i}]"), e),
            }
        }
        for (i, b) in r.blackout.iter().enumerate() {
            match schedule::parse_blackout(b.get_ref()) {
                Ok(b) => s.blackouts.push(b),
                Err(e) => self.err(b.span(), format!("schedule.blackout[{i}]"), e),
            }
        }
        if let (Some(at), None, Some(a)) = (s.at, s.every, &r.at) {
            if let Some(why) = s.refusal(at, rt.max_duration) {
                self.err(
                    a.span(),
                    "schedule.at",
                    format!("this start is not allowed: {why}"),
                );
            }
        }
        s
    }

    pub(super) fn host(&mut self, name: &str, raw: &S<RawHost>) -> Host {
        let r = raw.get_ref();
        let p = format!("hosts.{name}");
        let mut h = Host {
            name: name.to_string(),
            ..Default::default()
        };
        h.admin = r.admin.as_ref().map(|u| self.url(u, &p, "admin"));
        h.toxiproxy = r.toxiproxy.as_ref().map(|u| self.url(u, &p, "toxiproxy"));
        if let Some(peer) = &r.peer {
            if peer.get_ref().parse::<std::net::SocketAddr>().is_err() {
                self.err(
                    peer.span(),
                    format!("{p}.peer"),
                    "expected IP:PORT, e.g. \"127.0.0.11:9096\"",
                );
            }
            h.peer = Some(peer.get_ref().clone());
        }
        h.node_pid = self.pid_source(&r.pid, &r.pidfile, &p, "pid", "pidfile");
        h.sidecar_pid = self.pid_source(
            &r.sidecar_pid,
            &r.sidecar_pidfile,
            &p,
            "sidecar_pid",
            "sidecar_pidfile",
        );
        h
    }

    pub(super) fn pid_source(
        &mut self,
        pid: &Option<S<toml::Value>>,
        file: &Option<S<String>>,
        path: &str,
        pid_name: &str,
        file_name: &str,
    ) -> Option<PidSource> {
        match (pid, file) {
            (Some(p), Some(_)) => {
                self.err(
                    p.span(),
                    format!("{path}.{pid_name}"),
                    format!("give {pid_name} or {file_name}, not both"),
                );
                None
            }
            (Some(p), None) => match pid_of(p.get_ref()) {
                Ok(n) => Some(PidSource::Pid(n)),
                Err(e) => {
                    self.err(p.span(), format!("{path}.{pid_name}"), e);
                    None
                }
            },
            (None, Some(f)) => Some(PidSource::File(PathBuf::from(f.get_ref()))),
            (None, None) => None,
        }
    }

    pub(super) fn only(
        &mut self,
        fields: &[(&'static str, Range<usize>)],
        allowed: &[&str],
        path: &str,
        what: &str,
    ) {
        for (f, span) in fields {
            if !allowed.contains(f) {
                self.err(
                    span.clone(),
                    format!("{path}.{f}"),
                    format!(
                        "`{f}` does not apply to {what} (it takes: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    pub(super) fn headers(h: &Option<S<BTreeMap<String, String>>>) -> Vec<(String, String)> {
        h.as_ref()
            .map(|h| {
                h.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn method_name(&mut self, m: &Option<S<String>>, path: &str) -> String {
        match m {
            Some(m) => {
                let up = m.get_ref().trim().to_ascii_uppercase();
                if reqwest::Method::from_bytes(up.as_bytes()).is_err() || up.is_empty() {
                    self.err(
                        m.span(),
                        format!("{path}.method"),
                        format!("{:?} is not an HTTP method", m.get_ref()),
                    );
                }
                up
            }
            None => "GET".into(),
        }
    }

    /// The request of an http probe or action (`url` already checked); `timeout` defaults to
    /// `default_timeout`.
    pub(super) fn http_request(
        &mut self,
        url: String,
        f: HttpFields<'_>,
        path: &str,
        default_timeout: Duration,
    ) -> HttpRequest {
        HttpRequest {
            url,
            method: self.method_name(f.method, path),
            headers: Self::headers(f.headers),
            body: f.body.as_ref().map(|b| b.get_ref().clone()),
            timeout: self
                .dur(f.timeout, path, "timeout")
                .unwrap_or(default_timeout),
        }
    }

    pub(super) fn tolerance(&mut self, raw: &S<RawTolerance>, kind: &str, path: &str) -> Tolerance {
        let r = raw.get_ref();
        let path = format!("{path}.tolerance");
        let present = present!(r; status => "status", min => "min", max => "max", range => "range",
            regex => "regex", state => "state", max_ms => "max_ms");
        if present.is_empty() {
            self.err(
                raw.span(),
                &path,
                format!(
                    "empty tolerance (a {kind} probe takes: {})",
                    tolerance_keys(kind).join(", ")
                ),
            );
        }
        self.only(
            &present,
            tolerance_keys(kind),
            &path,
            &format!("the tolerance of a {kind} probe"),
        );
        let mut t = Tolerance::default();
        if let Some(s) = &r.status {
            match status_ranges(&to_json(s.get_ref())) {
                Ok(v) => t.status = Some(v),
                Err(e) => self.err(s.span(), format!("{path}.status"), e),
            }
        }
        t.min = r.min.as_ref().map(|v| *v.get_ref());
        t.max = r.max.as_ref().map(|v| *v.get_ref());
        if let Some(rg) = &r.range {
            match rg.get_ref().as_slice() {
                [a, b] if a <= b => {
                    t.min = Some(*a);
                    t.max = Some(*b);
                }
                _ => self.err(
                    rg.span(),
                    format!("{path}.range"),
                    "expected [low, high] with low ≤ high",
                ),
            }
        }
        if let (Some(a), Some(b)) = (t.min, t.max) {
            if a > b {
                self.err(raw.span(), &path, format!("min {a} is above max {b}"));
            }
        }
        if let Some(re) = &r.regex {
            match regex::Regex::new(re.get_ref()) {
                Ok(x) => t.regex = Some(x),
                Err(e) => self.err(
                    re.span(),
                    format!("{path}.regex"),
                    format!("bad regex: {e}"),
                ),
            }
        }
        if let Some(st) = &r.state {
            let mut v = Vec::new();
            for s in st.get_ref() {
                match s.as_str() {
                    "running" => v.push(ProcState::Running),
                    "stopped" => v.push(ProcState::Stopped),
                    "gone" => v.push(ProcState::Gone),
                    other => self.err(
                        st.span(),
                        format!("{path}.state"),
                        format!("{other:?}: expected running, stopped or gone"),
                    ),
                }
            }
            t.state = Some(v);
        }
        t.max_ms = r.max_ms.as_ref().map(|v| *v.get_ref());
        t
    }

    pub(super) fn host_names(
        &mut self,
        list: &S<Vec<String>>,
        hosts: &BTreeMap<String, Host>,
        path: &str,
        field: &str,
    ) -> Vec<String> {
        if list.get_ref().is_empty() {
            self.err(list.span(), format!("{path}.{field}"), "the list is empty");
        }
        for n in list.get_ref() {
            if !hosts.contains_key(n) {
                self.err(
                    list.span(),
                    format!("{path}.{field}"),
                    format!("unknown host {n:?} (declare it under [hosts.{n}])"),
                );
            }
        }
        list.get_ref().clone()
    }

    pub(super) fn load(&mut self, i: usize, raw: &S<RawLoad>) -> Option<Load> {
        let r = raw.get_ref();
        let path = format!("load[{i}] ({:?})", r.name.get_ref());
        let mut urls = Vec::new();
        if let Some(u) = &r.url {
            urls.push(self.url(u, &path, "url"));
        }
        if let Some(us) = &r.urls {
            for u in us.get_ref() {
                if let Err(e) = url_ok(u) {
                    self.err(us.span(), format!("{path}.urls"), e);
                }
                urls.push(u.clone());
            }
        }
        if urls.is_empty() {
            self.err(raw.span(), format!("{path}.urls"), "give url or urls");
        }
        let rate = *r.rate.get_ref();
        if !(rate > 0.0 && rate <= 1000.0) {
            self.err(
                r.rate.span(),
                format!("{path}.rate"),
                "requests per second, more than 0 and at most 1000",
            );
        }
        let concurrency = match &r.concurrency {
            Some(c) if !(1..=256).contains(c.get_ref()) => {
                self.err(c.span(), format!("{path}.concurrency"), "must be 1 to 256");
                16
            }
            Some(c) => *c.get_ref() as usize,
            None => 16,
        };
        Some(Load {
            name: r.name.get_ref().clone(),
            urls,
            method: self.method_name(&r.method, &path),
            headers: Self::headers(&r.headers),
            body: r.body.as_ref().map(|b| b.get_ref().clone()),
            rate,
            timeout: self
                .dur(&r.timeout, &path, "timeout")
                .unwrap_or(Duration::from_secs(2)),
            concurrency,
        })
    }

    pub(super) fn abort(
        &mut self,
        i: usize,
        raw: &S<RawProbe>,
        hosts: &BTreeMap<String, Host>,
        ssh: &[Probe],
    ) -> Option<Abort> {
        let r = raw.get_ref();
        let path = format!("abort[{i}] ({:?})", r.name.get_ref());
        let for_ = self.dur(&r.for_, &path, "for").unwrap_or_default();
        let probe = match &r.probe {
            Some(name) => {
                let others: Vec<_> = r
                    .fields()
                    .into_iter()
                    .filter(|(f, _)| !["probe", "for", "tolerance"].contains(f))
                    .collect();
                if let Some(t) = &r.type_ {
                    self.err(
                        t.span(),
                        format!("{path}.type"),
                        "an abort refers to a probe (`probe`) or defines one (`type` …), not both",
                    );
                }
                self.only(&others, &[], &path, "an abort that refers to a probe");
                let Some(base) = ssh.iter().find(|p| &p.name == name.get_ref()) else {
                    self.err(
                        name.span(),
                        format!("{path}.probe"),
                        format!("no steady-state probe is named {:?}", name.get_ref()),
                    );
                    return None;
                };
                let mut p = base.clone();
                if let Some(t) = &r.tolerance {
                    p.tolerance = self.tolerance(t, p.kind.type_name(), &path);
                }
                p.name = r.name.get_ref().clone();
                p.line = self.line(&raw.span());
                p
            }
            None => self.probe(raw, &path, hosts)?,
        };
        Some(Abort {
            name: r.name.get_ref().clone(),
            probe,
            for_,
        })
    }
}

/// The request fields shared by http probes and http actions.
pub(super) struct HttpFields<'a> {
    pub method: &'a Option<S<String>>,
    pub headers: &'a Option<S<BTreeMap<String, String>>>,
    pub body: &'a Option<S<String>>,
    pub timeout: &'a Option<S<String>>,
}
