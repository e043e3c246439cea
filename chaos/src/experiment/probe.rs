//! Probes: one function per probe type (http, metric, process, command).

use super::validator::HttpFields;
use super::*;

impl Validator<'_> {
    /// One probe (steady state or abort condition): the checks of its type, then its tolerance.
    pub(super) fn probe(
        &mut self,
        raw: &S<RawProbe>,
        path: &str,
        hosts: &BTreeMap<String, Host>,
    ) -> Option<Probe> {
        let r = raw.get_ref();
        let Some(ty) = &r.type_ else {
            self.err(
                raw.span(),
                format!("{path}.type"),
                "missing: http, metric, process or command",
            );
            return None;
        };
        let kind_name = ty.get_ref().as_str();
        let mut fields = r.fields();
        fields.retain(|(f, _)| *f != "probe" && *f != "for");
        let kind = match kind_name {
            "http" => {
                self.only(
                    &fields,
                    &["url", "method", "headers", "body", "timeout", "tolerance"],
                    path,
                    "an http probe",
                );
                self.http_probe(raw, path)
            }
            "metric" => {
                self.only(
                    &fields,
                    &[
                        "metric",
                        "quantile",
                        "series",
                        "hosts",
                        "labels",
                        "window",
                        "min_requests",
                        "errors",
                        "tolerance",
                    ],
                    path,
                    "a metric probe",
                );
                self.metric_probe(raw, path, hosts)
            }
            "process" => {
                self.only(
                    &fields,
                    &["host", "process", "pid", "pidfile", "tolerance"],
                    path,
                    "a process probe",
                );
                let target = self.proc_target(
                    &r.host,
                    &r.process,
                    &r.pid,
                    &r.pidfile,
                    hosts,
                    path,
                    raw.span(),
                )?;
                ProbeKind::Process { target }
            }
            "command" => {
                self.only(
                    &fields,
                    &["path", "args", "timeout", "tolerance"],
                    path,
                    "a command probe",
                );
                ProbeKind::Command(self.command(&r.path, &r.args, &r.timeout, path, raw.span()))
            }
            other => {
                self.err(
                    ty.span(),
                    format!("{path}.type"),
                    format!("{other:?}: a probe is http, metric, process or command"),
                );
                return None;
            }
        };
        let tolerance = match &r.tolerance {
            Some(t) => self.tolerance(t, kind_name, path),
            None => {
                self.err(
                    raw.span(),
                    format!("{path}.tolerance"),
                    "missing: every probe needs a tolerance",
                );
                Tolerance::default()
            }
        };
        Some(Probe {
            name: r.name.get_ref().clone(),
            line: self.line(&raw.span()),
            kind,
            tolerance,
        })
    }

    fn http_probe(&mut self, raw: &S<RawProbe>, path: &str) -> ProbeKind {
        let r = raw.get_ref();
        let url = match &r.url {
            Some(u) => self.url(u, path, "url"),
            None => {
                self.err(raw.span(), format!("{path}.url"), "missing");
                String::new()
            }
        };
        let fields = HttpFields {
            method: &r.method,
            headers: &r.headers,
            body: &r.body,
            timeout: &r.timeout,
        };
        ProbeKind::Http(self.http_request(url, fields, path, Duration::from_secs(2)))
    }

    fn metric_probe(
        &mut self,
        raw: &S<RawProbe>,
        path: &str,
        hosts: &BTreeMap<String, Host>,
    ) -> ProbeKind {
        let r = raw.get_ref();
        let stat = self.metric_stat(raw, path);
        let names = self.metric_hosts(raw, path, hosts);
        let labels = r
            .labels
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default();
        if let Some(l) = &r.labels {
            let allowed: &[&str] = match stat {
                Stat::Latency { .. } => &["listener", "route"],
                Stat::Value { .. } => &[],
                _ => &["listener", "route", "class", "upstream"],
            };
            for k in l.get_ref().keys() {
                if !allowed.is_empty() && !allowed.contains(&k.as_str()) {
                    self.err(
                        l.span(),
                        format!("{path}.labels.{k}"),
                        format!("this metric is labelled by {} only", allowed.join(", ")),
                    );
                }
            }
        }
        let window = self
            .dur(&r.window, path, "window")
            .unwrap_or(Duration::from_secs(5));
        let min_requests = match &r.min_requests {
            Some(m) if *m.get_ref() < 0 => {
                self.err(
                    m.span(),
                    format!("{path}.min_requests"),
                    "must not be negative",
                );
                0
            }
            Some(m) => *m.get_ref() as u64,
            None => 1,
        };
        let errors = r
            .errors
            .as_ref()
            .map(|e| e.get_ref().clone())
            .unwrap_or_else(|| vec!["5xx".into()]);
        if let Some(e) = &r.errors {
            for c in e.get_ref() {
                if !["1xx", "2xx", "3xx", "4xx", "5xx"].contains(&c.as_str()) {
                    self.err(
                        e.span(),
                        format!("{path}.errors"),
                        format!("{c:?} is not a status class (\"4xx\", \"5xx\")"),
                    );
                }
            }
        }
        ProbeKind::Metric(MetricQuery {
            stat,
            hosts: names,
            labels,
            window,
            min_requests,
            errors,
        })
    }

    /// What a metric probe computes (`metric`, with `quantile` or `series`).
    fn metric_stat(&mut self, raw: &S<RawProbe>, path: &str) -> Stat {
        let r = raw.get_ref();
        let stat = match r.metric.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            Some(("error_ratio", _)) => Stat::ErrorRatio,
            Some(("request_rate", _)) => Stat::RequestRate,
            Some(("latency", _)) => {
                let q = r.quantile.as_ref().map(|q| *q.get_ref()).unwrap_or(0.99);
                if !(q > 0.0 && q <= 1.0) {
                    self.err(
                        r.quantile.as_ref().map(|q| q.span()).unwrap_or(raw.span()),
                        format!("{path}.quantile"),
                        "must be in (0, 1]",
                    );
                }
                Stat::Latency { quantile: q }
            }
            Some(("value", span)) => match &r.series {
                Some(s) => Stat::Value {
                    series: s.get_ref().clone(),
                },
                None => {
                    self.err(
                        span,
                        format!("{path}.series"),
                        "metric = \"value\" needs `series` (a metric name)",
                    );
                    Stat::ErrorRatio
                }
            },
            Some((other, span)) => {
                self.err(
                    span,
                    format!("{path}.metric"),
                    format!("{other:?}: expected error_ratio, latency, request_rate or value"),
                );
                Stat::ErrorRatio
            }
            None => {
                self.err(
                    raw.span(),
                    format!("{path}.metric"),
                    "missing: error_ratio, latency, request_rate or value",
                );
                Stat::ErrorRatio
            }
        };
        if let (Some(q), false) = (&r.quantile, matches!(stat, Stat::Latency { .. })) {
            self.err(
                q.span(),
                format!("{path}.quantile"),
                "only metric = \"latency\" takes a quantile",
            );
        }
        if let (Some(q), false) = (&r.series, matches!(stat, Stat::Value { .. })) {
            self.err(
                q.span(),
                format!("{path}.series"),
                "only metric = \"value\" takes a series",
            );
        }
        stat
    }

    /// The hosts a metric probe scrapes: `hosts`, or every host with an `admin` URL.
    fn metric_hosts(
        &mut self,
        raw: &S<RawProbe>,
        path: &str,
        hosts: &BTreeMap<String, Host>,
    ) -> Vec<String> {
        let r = raw.get_ref();
        let names = match &r.hosts {
            Some(h) => self.host_names(h, hosts, path, "hosts"),
            None => hosts
                .values()
                .filter(|h| h.admin.is_some())
                .map(|h| h.name.clone())
                .collect(),
        };
        if names.is_empty() {
            self.err(
                raw.span(),
                format!("{path}.hosts"),
                "a metric probe needs hosts with an `admin` URL",
            );
        }
        for n in &names {
            if hosts.get(n).is_some_and(|h| h.admin.is_none()) {
                self.err(
                    r.hosts.as_ref().map(|h| h.span()).unwrap_or(raw.span()),
                    format!("{path}.hosts"),
                    format!("host {n:?} has no `admin` URL to scrape"),
                );
            }
        }
        names
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn proc_target(
        &mut self,
        host: &Option<S<String>>,
        process: &Option<S<String>>,
        pid: &Option<S<toml::Value>>,
        pidfile: &Option<S<String>>,
        hosts: &BTreeMap<String, Host>,
        path: &str,
        span: Range<usize>,
    ) -> Option<ProcTarget> {
        let which = self.process_kind(process, path);
        match (host, pid.is_some() || pidfile.is_some()) {
            (Some(h), false) => {
                match hosts.get(h.get_ref()) {
                    None => self.err(
                        h.span(),
                        format!("{path}.host"),
                        format!("unknown host {:?}", h.get_ref()),
                    ),
                    Some(x) => {
                        let has = match which {
                            Proc::Node => x.node_pid.is_some(),
                            Proc::Sidecar => x.sidecar_pid.is_some(),
                        };
                        if !has {
                            let f = if which == Proc::Node {
                                "pid or pidfile"
                            } else {
                                "sidecar_pid or sidecar_pidfile"
                            };
                            self.err(
                                h.span(),
                                format!("{path}.host"),
                                format!("host {:?} has no {f}", h.get_ref()),
                            );
                        }
                    }
                }
                Some(ProcTarget::Host {
                    host: h.get_ref().clone(),
                    process: which,
                })
            }
            (None, true) => self
                .pid_source(pid, pidfile, path, "pid", "pidfile")
                .map(ProcTarget::Direct),
            (Some(h), true) => {
                self.err(
                    h.span(),
                    format!("{path}.host"),
                    "give host (with process) or pid/pidfile, not both",
                );
                None
            }
            (None, false) => {
                self.err(span, path.to_string(), "name the process: host = \"…\" (and process = \"node\"|\"sidecar\"), pid or pidfile");
                None
            }
        }
    }

    pub(super) fn process_kind(&mut self, process: &Option<S<String>>, path: &str) -> Proc {
        match process.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("node", _)) => Proc::Node,
            Some(("sidecar", _)) => Proc::Sidecar,
            Some((other, span)) => {
                self.err(
                    span,
                    format!("{path}.process"),
                    format!("{other:?}: expected node or sidecar"),
                );
                Proc::Node
            }
        }
    }

    pub(super) fn command(
        &mut self,
        p: &Option<S<String>>,
        args: &Option<S<Vec<String>>>,
        timeout: &Option<S<String>>,
        path: &str,
        span: Range<usize>,
    ) -> Command {
        let cmd = match p {
            Some(p) if !p.get_ref().trim().is_empty() => p.get_ref().clone(),
            _ => {
                self.err(span, format!("{path}.path"), "missing: the program to run");
                String::new()
            }
        };
        Command {
            path: cmd,
            args: args
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default(),
            timeout: self
                .dur(timeout, path, "timeout")
                .unwrap_or(Duration::from_secs(10)),
        }
    }
}
