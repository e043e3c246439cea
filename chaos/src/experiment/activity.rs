//! Actions of the method and the rollbacks: one function per action type.

use super::validator::HttpFields;
use super::*;

impl Validator<'_> {
    pub(super) fn targets(
        &mut self,
        r: &RawActivity,
        hosts: &BTreeMap<String, Host>,
        path: &str,
        need: &str,
    ) -> Option<Targets> {
        let list = match (&r.host, &r.hosts) {
            (Some(h), None) => {
                if !hosts.contains_key(h.get_ref()) {
                    self.err(
                        h.span(),
                        format!("{path}.host"),
                        format!(
                            "unknown host {:?} (declare it under [hosts.{}])",
                            h.get_ref(),
                            h.get_ref()
                        ),
                    );
                    return None;
                }
                vec![h.get_ref().clone()]
            }
            (None, Some(hs)) => self.host_names(hs, hosts, path, "hosts"),
            (Some(h), Some(_)) => {
                self.err(
                    h.span(),
                    format!("{path}.host"),
                    "give host or hosts, not both",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    r.name.span(),
                    format!("{path}.hosts"),
                    "missing: host = \"…\" or hosts = [\"…\"]",
                );
                return None;
            }
        };
        for n in &list {
            let Some(h) = hosts.get(n) else { continue };
            let missing = match need {
                "admin" => h.admin.is_none(),
                "toxiproxy" => h.toxiproxy.is_none(),
                _ => false,
            };
            if missing {
                let span = r
                    .host
                    .as_ref()
                    .map(|x| x.span())
                    .or(r.hosts.as_ref().map(|x| x.span()))
                    .unwrap_or(r.name.span());
                self.err(
                    span,
                    format!("{path}.hosts"),
                    format!("host {n:?} has no `{need}` URL"),
                );
            }
        }
        let pick = match &r.pick {
            Some(p) if *p.get_ref() < 1 || *p.get_ref() as usize > list.len() => {
                self.err(
                    p.span(),
                    format!("{path}.pick"),
                    format!("must be 1 to {} (the number of hosts)", list.len()),
                );
                None
            }
            Some(p) => Some(*p.get_ref() as usize),
            None => None,
        };
        Some(Targets { hosts: list, pick })
    }

    pub(super) fn activities(
        &mut self,
        raw: &[S<RawActivity>],
        section: &str,
        hosts: &BTreeMap<String, Host>,
        ssh: &[Probe],
        rt: &Runtime,
    ) -> Vec<Activity> {
        let mut out = Vec::new();
        for (i, a) in raw.iter().enumerate() {
            let path = format!("{section}[{i}] ({:?})", a.get_ref().name.get_ref());
            if let Some(act) = self.activity(a, &path, hosts, ssh, rt, section == "rollback") {
                out.push(act);
            }
        }
        out
    }

    /// One `[[method]]` or `[[rollback]]` entry: the checks of its type, then those every action
    /// shares.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn activity(
        &mut self,
        raw: &S<RawActivity>,
        path: &str,
        hosts: &BTreeMap<String, Host>,
        ssh: &[Probe],
        rt: &Runtime,
        rollback: bool,
    ) -> Option<Activity> {
        let r = raw.get_ref();
        let a = Act {
            raw,
            r,
            path,
            hosts,
            fields: r.fields(),
            what: format!("a {} action", r.type_.get_ref()),
        };
        let mut duration = self.dur(&r.duration, path, "duration");
        let kind = match r.type_.get_ref().as_str() {
            "fault" => self.fault_action(&a)?,
            "toxic" => self.toxic_action(&a)?,
            "outage" => self.outage_action(&a, &mut duration)?,
            "signal" => self.signal_action(&a)?,
            "partition" => self.partition_action(&a)?,
            "http" => self.http_action(&a)?,
            "command" => self.command_action(&a),
            "probe" => self.probe_action(&a, ssh)?,
            "pause" => self.pause_action(&a, duration),
            other => {
                self.err(
                    r.type_.span(),
                    format!("{path}.type"),
                    format!("{other:?}: an action is fault, toxic, outage, signal, partition, http, command, probe or pause"),
                );
                return None;
            }
        };
        self.action_fields(&a, &kind, duration, rt, rollback);
        let (pause_before, pause_after) = match &r.pauses {
            Some(p) => (
                self.dur(&p.get_ref().before, path, "pauses.before")
                    .unwrap_or_default(),
                self.dur(&p.get_ref().after, path, "pauses.after")
                    .unwrap_or_default(),
            ),
            None => (Duration::ZERO, Duration::ZERO),
        };
        Some(Activity {
            name: r.name.get_ref().clone(),
            line: self.line(&raw.span()),
            kind,
            pause_before,
            pause_after,
            duration,
            background: r.background.as_ref().is_some_and(|b| *b.get_ref()),
        })
    }

    /// Only the fields every action takes plus `extra`.
    fn only_action(&mut self, a: &Act, extra: &[&'static str]) {
        const COMMON: [&str; 4] = ["pauses", "duration", "background", "tolerance"];
        let allowed: Vec<&'static str> = COMMON.iter().chain(extra).copied().collect();
        self.only(&a.fields, &allowed, a.path, &a.what);
    }

    /// The checks of the fields every action shares (tolerance, duration, background).
    fn action_fields(
        &mut self,
        a: &Act,
        kind: &ActionKind,
        duration: Option<Duration>,
        rt: &Runtime,
        rollback: bool,
    ) {
        let (r, path) = (a.r, a.path);
        let request = matches!(kind, ActionKind::Http { .. } | ActionKind::Command { .. });
        if let (Some(t), false) = (&r.tolerance, request) {
            self.err(
                t.span(),
                format!("{path}.tolerance"),
                "only http and command actions take a tolerance",
            );
        }
        if let (Some(d), true) = (&r.duration, request) {
            self.err(
                d.span(),
                format!("{path}.duration"),
                "http and command actions take `timeout`, not `duration`",
            );
        }
        if rollback {
            if let Some(b) = &r.background {
                self.err(
                    b.span(),
                    format!("{path}.background"),
                    "rollbacks run one after the other",
                );
            }
            if let (Some(d), false) = (&r.duration, matches!(kind, ActionKind::Pause)) {
                self.err(
                    d.span(),
                    format!("{path}.duration"),
                    "a rollback is not undone after a duration",
                );
            }
        }
        if let Some(d) = duration {
            if d + rt.ttl_margin > rt.max_duration + rt.ttl_margin
                && !matches!(kind, ActionKind::Pause)
            {
                self.err(
                    r.duration
                        .as_ref()
                        .map(|x| x.span())
                        .unwrap_or(a.raw.span()),
                    format!("{path}.duration"),
                    "longer than runtime.max_duration",
                );
            }
        }
    }

    fn fault_action(&mut self, a: &Act) -> Option<ActionKind> {
        let (r, path) = (a.r, a.path);
        self.only_action(a, &["host", "hosts", "pick", "fault"]);
        let targets = self.targets(r, a.hosts, path, "admin")?;
        let Some(f) = &r.fault else {
            self.err(
                a.raw.span(),
                format!("{path}.fault"),
                "missing: the fault, e.g. fault = { kind = { type = \"abort\", status = 503 } }",
            );
            return None;
        };
        let spec = to_json(&toml::Value::Table(f.get_ref().clone()));
        if let Err(e) = crate::action::check_fault(&spec) {
            self.err(f.span(), format!("{path}.fault"), e);
        }
        Some(ActionKind::Fault { targets, spec })
    }

    fn toxic_action(&mut self, a: &Act) -> Option<ActionKind> {
        let (r, path) = (a.r, a.path);
        self.only_action(a, &["host", "hosts", "pick", "proxy", "toxic"]);
        let targets = self.targets(r, a.hosts, path, "toxiproxy")?;
        let proxy = match &r.proxy {
            Some(p) => p.get_ref().clone(),
            None => {
                self.err(
                    a.raw.span(),
                    format!("{path}.proxy"),
                    "missing: the Toxiproxy proxy name",
                );
                String::new()
            }
        };
        let Some(t) = &r.toxic else {
            self.err(a.raw.span(), format!("{path}.toxic"), "missing: the toxic, e.g. toxic = { type = \"latency\", attributes = { latency = 300 } }");
            return None;
        };
        let toxic = to_json(&toml::Value::Table(t.get_ref().clone()));
        if let Err(e) = crate::action::check_toxic(&toxic) {
            self.err(t.span(), format!("{path}.toxic"), e);
        }
        Some(ActionKind::Toxic {
            targets,
            proxy,
            toxic,
        })
    }

    fn outage_action(&mut self, a: &Act, duration: &mut Option<Duration>) -> Option<ActionKind> {
        let (r, path) = (a.r, a.path);
        self.only_action(a, &["host", "hosts", "pick", "drain", "reason"]);
        let targets = self.targets(r, a.hosts, path, "admin")?;
        if duration.is_none() {
            self.err(
                a.raw.span(),
                format!("{path}.duration"),
                "an outage needs a duration (how long the node is down)",
            );
            *duration = Some(Duration::from_secs(1));
        }
        Some(ActionKind::Outage {
            targets,
            drain: self.dur(&r.drain, path, "drain").unwrap_or_default(),
            reason: r
                .reason
                .as_ref()
                .map(|x| x.get_ref().clone())
                .unwrap_or_else(|| r.name.get_ref().clone()),
        })
    }

    fn signal_action(&mut self, a: &Act) -> Option<ActionKind> {
        let (r, path) = (a.r, a.path);
        self.only_action(
            a,
            &[
                "host", "hosts", "pick", "process", "pid", "pidfile", "signal",
            ],
        );
        let signal = match r.signal.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            Some(("kill", _)) => Signal::Kill,
            Some(("term", _)) => Signal::Term,
            Some(("int", _)) => Signal::Int,
            Some(("stop", _)) => Signal::Stop,
            Some(("continue", _)) => Signal::Continue,
            Some((other, span)) => {
                self.err(
                    span,
                    format!("{path}.signal"),
                    format!("{other:?}: expected kill, term, int, stop or continue"),
                );
                return None;
            }
            None => {
                self.err(
                    a.raw.span(),
                    format!("{path}.signal"),
                    "missing: kill, term, int, stop or continue",
                );
                return None;
            }
        };
        if let (Some(d), true) = (&r.duration, signal != Signal::Stop) {
            self.err(
                d.span(),
                format!("{path}.duration"),
                "only signal = \"stop\" takes a duration (continued after it)",
            );
        }
        let process = self.process_kind(&r.process, path);
        let (targets, pid) = if r.pid.is_some() || r.pidfile.is_some() {
            if r.host.is_some() || r.hosts.is_some() {
                self.err(
                    a.raw.span(),
                    path.to_string(),
                    "give host(s) or pid/pidfile, not both",
                );
            }
            (
                None,
                self.pid_source(&r.pid, &r.pidfile, path, "pid", "pidfile"),
            )
        } else {
            (Some(self.signal_targets(a, process)?), None)
        };
        Some(ActionKind::Signal {
            targets,
            process,
            pid,
            signal,
        })
    }

    /// The hosts of a signal action, each with a pid (or pidfile) for `process`.
    fn signal_targets(&mut self, a: &Act, process: Proc) -> Option<Targets> {
        let t = self.targets(a.r, a.hosts, a.path, "")?;
        for n in &t.hosts {
            let Some(h) = a.hosts.get(n) else { continue };
            let (has, which) = match process {
                Proc::Node => (h.node_pid.is_some(), "node"),
                Proc::Sidecar => (h.sidecar_pid.is_some(), "sidecar"),
            };
            if !has {
                self.err(
                    a.r.name.span(),
                    format!("{}.hosts", a.path),
                    format!("host {n:?} has no {which} pid or pidfile"),
                );
            }
        }
        Some(t)
    }

    fn partition_action(&mut self, a: &Act) -> Option<ActionKind> {
        let (r, path, hosts) = (a.r, a.path, a.hosts);
        self.only_action(a, &["isolate", "from", "listener"]);
        let Some(iso) = &r.isolate else {
            self.err(
                a.raw.span(),
                format!("{path}.isolate"),
                "missing: the hosts to cut off, e.g. isolate = [\"node3\"]",
            );
            return None;
        };
        let isolate = self.host_names(iso, hosts, path, "isolate");
        let from = match &r.from {
            Some(f) => self.host_names(f, hosts, path, "from"),
            None => hosts
                .keys()
                .filter(|h| !isolate.contains(h))
                .cloned()
                .collect(),
        };
        if from.is_empty() || from.iter().any(|f| isolate.contains(f)) {
            self.err(
                iso.span(),
                format!("{path}.from"),
                "the two sides must be non-empty and must not share a host",
            );
        }
        for n in isolate.iter().chain(&from) {
            if let Some(h) = hosts.get(n) {
                if h.admin.is_none() || h.peer.is_none() {
                    self.err(
                        iso.span(),
                        format!("{path}.isolate"),
                        format!("host {n:?} needs `admin` and `peer` for a partition"),
                    );
                }
            }
        }
        Some(ActionKind::Partition {
            isolate,
            from,
            listener: r.listener.as_ref().map(|l| l.get_ref().clone()),
        })
    }

    fn http_action(&mut self, a: &Act) -> Option<ActionKind> {
        let (r, path) = (a.r, a.path);
        self.only_action(a, &["url", "method", "headers", "body", "timeout"]);
        let Some(u) = &r.url else {
            self.err(a.raw.span(), format!("{path}.url"), "missing");
            return None;
        };
        let url = self.url(u, path, "url");
        Some(ActionKind::Http {
            request: self.http_request(
                url,
                HttpFields {
                    method: &r.method,
                    headers: &r.headers,
                    body: &r.body,
                    timeout: &r.timeout,
                },
                path,
                Duration::from_secs(5),
            ),
            tolerance: r
                .tolerance
                .as_ref()
                .map(|t| self.tolerance(t, "http", path)),
        })
    }

    fn command_action(&mut self, a: &Act) -> ActionKind {
        let (r, path) = (a.r, a.path);
        self.only_action(a, &["path", "args", "timeout"]);
        ActionKind::Command {
            command: self.command(&r.path, &r.args, &r.timeout, path, a.raw.span()),
            tolerance: r
                .tolerance
                .as_ref()
                .map(|t| self.tolerance(t, "command", path)),
        }
    }

    fn probe_action(&mut self, a: &Act, ssh: &[Probe]) -> Option<ActionKind> {
        let path = a.path;
        self.only(&a.fields, &["pauses", "probe"], path, &a.what);
        let Some(name) = &a.r.probe else {
            self.err(
                a.raw.span(),
                format!("{path}.probe"),
                "missing: the name of a steady-state probe",
            );
            return None;
        };
        let Some(p) = ssh.iter().find(|p| &p.name == name.get_ref()) else {
            self.err(
                name.span(),
                format!("{path}.probe"),
                format!("no steady-state probe is named {:?}", name.get_ref()),
            );
            return None;
        };
        Some(ActionKind::Probe {
            probe: Box::new(p.clone()),
        })
    }

    fn pause_action(&mut self, a: &Act, duration: Option<Duration>) -> ActionKind {
        self.only(&a.fields, &["duration"], a.path, &a.what);
        if duration.is_none() {
            self.err(
                a.raw.span(),
                format!("{}.duration", a.path),
                "a pause needs a duration",
            );
        }
        ActionKind::Pause
    }
}

/// What every action check looks at.
struct Act<'a> {
    raw: &'a S<RawActivity>,
    r: &'a RawActivity,
    path: &'a str,
    hosts: &'a BTreeMap<String, Host>,
    fields: Vec<(&'static str, Range<usize>)>,
    /// `a fault action`, for messages.
    what: String,
}
