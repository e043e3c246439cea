//! The plan as written (every value with its byte span) and its validation into [`Plan`].
use super::locate::{field_at, join, line_of};
use super::*;
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned as S;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: S<String>,
    target: S<Vec<S<RawTarget>>>,
    candidate: RawCandidate,
    baseline: RawBaseline,
    steps: RawSteps,
    slo: RawSlo,
    test: RawTest,
    inconclusive: RawInconclusive,
    promotion: RawPromotion,
    split: RawSplit,
    load: Option<S<RawLoad>>,
    members: Option<RawMembers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembers {
    ports: Option<S<String>>,
    pid_dir: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    node: S<String>,
    admin: S<String>,
    listeners: S<Vec<String>>,
    data: Option<S<String>>,
    restart: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCandidate {
    binary: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    kind: S<BaselineKind>,
    binary: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSteps {
    weights: S<Vec<i64>>,
    min_time: S<String>,
    max_time: S<String>,
    min_requests: S<i64>,
    tick: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    error_rate: S<f64>,
    p99_ratio: S<f64>,
    critical_local_errors: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    alpha: S<f64>,
    beta: S<f64>,
    effect: S<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInconclusive {
    hold: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromotion {
    scope: S<Scope>,
    bake: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    ttl: S<String>,
    sticky: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    listener: S<String>,
    rate: S<f64>,
    method: Option<S<String>>,
    paths: S<Vec<String>>,
}

/// Default tick: often enough that a step of minutes has dozens of decisions.
const DEFAULT_TICK: Duration = Duration::from_secs(5);

/// Collects problems with their lines.
struct Check<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Check<'_> {
    fn bad(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: line_of(self.text, span.start),
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// `cond` or a problem; returns `cond`.
    fn ensure<T>(&mut self, v: &S<T>, field: &str, cond: bool, msg: &str) -> bool {
        if !cond {
            self.bad(v.span(), field, msg);
        }
        cond
    }

    fn duration(&mut self, v: &S<String>, field: &str) -> Duration {
        humantime::parse_duration(v.get_ref()).unwrap_or_else(|e| {
            self.bad(
                v.span(),
                field,
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"30s\" or \"5m\"",
                    v.get_ref()
                ),
            );
            Duration::ZERO
        })
    }

    fn count(&mut self, v: &S<i64>, field: &str, min: i64) -> u64 {
        let ok = *v.get_ref() >= min;
        self.ensure(v, field, ok, &format!("must be at least {min}"));
        (*v.get_ref()).max(0) as u64
    }

    fn fraction(&mut self, v: &S<f64>, field: &str, max: f64) -> f64 {
        let x = *v.get_ref();
        let ok = x > 0.0 && x < max;
        self.ensure(v, field, ok, &format!("must be above 0 and below {max}"));
        x
    }

    fn non_empty(&mut self, v: &S<String>, field: &str) -> String {
        let ok = !v.get_ref().trim().is_empty();
        self.ensure(v, field, ok, "must not be empty");
        v.get_ref().clone()
    }
}

/// Parses `text` into a validated plan, or every problem found.
pub(super) fn parse(text: &str) -> Result<Plan, Vec<Problem>> {
    let raw: RawPlan = toml::from_str(text).map_err(|e| vec![toml_problem(text, &e)])?;
    let mut c = Check {
        text,
        problems: Vec::new(),
    };
    let plan = convert(&mut c, raw);
    if c.problems.is_empty() {
        Ok(plan)
    } else {
        Err(c.problems)
    }
}

/// A toml error as a problem: its span gives the line and the field; for missing and unknown
/// fields the message names the key, which is added to the table's path.
fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let at = e.span().map_or(0, |s| s.start);
    let message = e.message().trim().to_string();
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let field = match named {
        Some(key) if message.starts_with("missing") => {
            let table = if at == 0 {
                String::new()
            } else {
                field_at(text, at)
            };
            join(&table, key)
        }
        _ => field_at(text, at),
    };
    Problem {
        line: if e.span().is_some() {
            line_of(text, at)
        } else {
            1
        },
        field: if field.is_empty() {
            "(plan)".into()
        } else {
            field
        },
        message,
    }
}

fn convert(c: &mut Check, r: RawPlan) -> Plan {
    let targets = targets(c, &r.target);
    let steps = steps(c, &r.steps, r.baseline.kind.get_ref());
    let slo = slo(c, &r.slo, &r.test);
    let test = TestParams {
        alpha: c.fraction(&r.test.alpha, "test.alpha", 0.5),
        beta: c.fraction(&r.test.beta, "test.beta", 0.5),
        effect: *r.test.effect.get_ref(),
    };
    let ttl = c.duration(&r.split.ttl, "split.ttl");
    let ok = ttl > steps.tick;
    let msg = format!(
        "must be longer than steps.tick ({}): the controller refreshes the split every tick",
        humantime::format_duration(steps.tick)
    );
    c.ensure(&r.split.ttl, "split.ttl", ok, &msg);
    let load = r.load.as_ref().map(|l| load(c, l, &targets));
    Plan {
        name: c.non_empty(&r.name, "name"),
        targets,
        candidate: Candidate {
            binary: PathBuf::from(c.non_empty(&r.candidate.binary, "candidate.binary")),
        },
        baseline: Baseline {
            kind: *r.baseline.kind.get_ref(),
            binary: r
                .baseline
                .binary
                .as_ref()
                .map(|b| PathBuf::from(c.non_empty(b, "baseline.binary"))),
        },
        steps,
        slo,
        test,
        inconclusive: Inconclusive {
            hold: c.duration(&r.inconclusive.hold, "inconclusive.hold"),
        },
        promotion: Promotion {
            scope: *r.promotion.scope.get_ref(),
            bake: c.duration(&r.promotion.bake, "promotion.bake"),
        },
        split: Split {
            ttl,
            sticky: r.split.sticky.unwrap_or(false),
        },
        load,
        members: members(c, r.members.as_ref(), *r.baseline.kind.get_ref()),
    }
}

fn members(c: &mut Check, r: Option<&RawMembers>, kind: BaselineKind) -> Members {
    let mut m = Members::default();
    let Some(r) = r else { return m };
    if let Some(p) = &r.ports {
        let n = if kind == BaselineKind::Fresh { 2 } else { 1 };
        let need = n * PORTS_PER_MEMBER;
        let parsed = p.get_ref().split_once('-').and_then(|(a, b)| {
            Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
        });
        match parsed {
            Some((a, b)) if a > 0 && a <= b && u32::from(b - a) + 1 >= need => m.ports = (a, b),
            _ => c.bad(
                p.span(),
                "members.ports",
                format!(
                    "must be \"FIRST-LAST\" (inclusive, e.g. \"25000-25019\") with at least {need} \
                     ports: {} per member, {n} member(s)",
                    PORTS_PER_MEMBER
                ),
            ),
        }
    }
    if let Some(d) = &r.pid_dir {
        m.pid_dir = Some(PathBuf::from(c.non_empty(d, "members.pid_dir")));
    }
    m
}

fn targets(c: &mut Check, raw: &S<Vec<S<RawTarget>>>) -> Vec<Target> {
    c.ensure(
        raw,
        "target",
        !raw.get_ref().is_empty(),
        "at least one [[target]] is needed",
    );
    let mut out: Vec<Target> = Vec::new();
    for (i, t) in raw.get_ref().iter().enumerate() {
        let f = |k: &str| format!("target[{i}].{k}");
        let node = c.non_empty(&t.get_ref().node, &f("node"));
        let a = &t.get_ref().admin;
        let admin = a.get_ref().parse::<SocketAddr>().unwrap_or_else(|e| {
            let msg = format!(
                "{:?} is not an address ({e}); write e.g. \"127.0.0.13:9901\"",
                a.get_ref()
            );
            c.bad(a.span(), &f("admin"), msg);
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let l = &t.get_ref().listeners;
        let names = l.get_ref();
        c.ensure(
            l,
            &f("listeners"),
            !names.is_empty(),
            "name at least one sidecar listener",
        );
        let blank = names.iter().any(|n| n.trim().is_empty());
        c.ensure(
            l,
            &f("listeners"),
            !blank,
            "listener names must not be empty",
        );
        let dup = names
            .iter()
            .enumerate()
            .any(|(j, n)| names[..j].contains(n));
        c.ensure(l, &f("listeners"), !dup, "a listener is named twice");
        if out.iter().any(|o| o.node == node || o.admin == admin) {
            c.bad(
                t.span(),
                &format!("target[{i}]"),
                "the same node or admin address twice",
            );
        }
        let data = t
            .get_ref()
            .data
            .as_ref()
            .map(|d| PathBuf::from(c.non_empty(d, &f("data"))));
        let restart = t.get_ref().restart.as_ref().map(|r| {
            let ok = r.get_ref().contains("{binary}");
            c.ensure(
                r,
                &f("restart"),
                ok,
                "must contain {binary} (the binary the node is restarted on)",
            );
            r.get_ref().clone()
        });
        out.push(Target {
            node,
            admin,
            listeners: names.clone(),
            data,
            restart,
        });
    }
    out
}

fn steps(c: &mut Check, r: &RawSteps, kind: &BaselineKind) -> Steps {
    let w = r.weights.get_ref();
    let max = if *kind == BaselineKind::Fresh { 50 } else { 99 };
    c.ensure(
        &r.weights,
        "steps.weights",
        !w.is_empty(),
        "list at least one weight (percent)",
    );
    let in_range = w.iter().all(|&x| (1..=max).contains(&x));
    let msg = match kind {
        BaselineKind::Fresh => {
            "each weight must be 1..=50 percent (a fresh baseline takes the same weight)"
        }
        BaselineKind::Stable => "each weight must be 1..=99 percent",
    };
    c.ensure(&r.weights, "steps.weights", in_range, msg);
    let rising = w.windows(2).all(|p| p[0] < p[1]);
    c.ensure(
        &r.weights,
        "steps.weights",
        rising,
        "weights must be strictly increasing",
    );
    let min_time = c.duration(&r.min_time, "steps.min_time");
    let max_time = c.duration(&r.max_time, "steps.max_time");
    let ok = max_time >= min_time && !max_time.is_zero();
    c.ensure(
        &r.max_time,
        "steps.max_time",
        ok,
        "must be above 0 and at least steps.min_time",
    );
    let tick = match &r.tick {
        Some(t) => {
            let d = c.duration(t, "steps.tick");
            let ok = !d.is_zero() && d <= max_time;
            c.ensure(
                t,
                "steps.tick",
                ok,
                "must be above 0 and at most steps.max_time",
            );
            d
        }
        None => DEFAULT_TICK,
    };
    Steps {
        weights: w.iter().map(|&x| x.clamp(0, 100) as u32).collect(),
        min_time,
        max_time,
        min_requests: c.count(&r.min_requests, "steps.min_requests", 1),
        tick,
    }
}

fn slo(c: &mut Check, r: &RawSlo, t: &RawTest) -> Slo {
    let p0 = c.fraction(&r.error_rate, "slo.error_rate", 1.0);
    let effect = *t.effect.get_ref();
    let effect_ok = c.ensure(
        &t.effect,
        "test.effect",
        effect > 1.0,
        "the effect size R must be above 1",
    );
    if effect_ok && p0 > 0.0 && p0 < 1.0 {
        let msg = format!("R × slo.error_rate = {} must be below 1", effect * p0);
        c.ensure(&t.effect, "test.effect", effect * p0 < 1.0, &msg);
    }
    let ratio = *r.p99_ratio.get_ref();
    c.ensure(
        &r.p99_ratio,
        "slo.p99_ratio",
        ratio >= 1.0,
        "must be at least 1.0",
    );
    let critical = match &r.critical_local_errors {
        Some(v) => c.count(v, "slo.critical_local_errors", 0),
        None => 1,
    };
    Slo {
        error_rate: p0,
        p99_ratio: ratio,
        critical_local_errors: critical,
    }
}

fn load(c: &mut Check, l: &S<RawLoad>, targets: &[Target]) -> Load {
    let r = l.get_ref();
    let listener = r.listener.get_ref().clone();
    let known = targets
        .first()
        .is_none_or(|t| t.listeners.contains(&listener));
    c.ensure(
        &r.listener,
        "load.listener",
        known,
        "must be one of the first target's listeners",
    );
    let rate = *r.rate.get_ref();
    c.ensure(
        &r.rate,
        "load.rate",
        rate > 0.0 && rate.is_finite(),
        "requests per second, above 0",
    );
    let paths = r.paths.get_ref();
    let ok = !paths.is_empty() && paths.iter().all(|p| p.starts_with('/'));
    c.ensure(
        &r.paths,
        "load.paths",
        ok,
        "list at least one path, each starting with '/'",
    );
    let method = match &r.method {
        Some(m) => {
            let ok =
                !m.get_ref().is_empty() && m.get_ref().chars().all(|ch| ch.is_ascii_uppercase());
            c.ensure(
                m,
                "load.method",
                ok,
                "an HTTP method in capitals, e.g. \"GET\" or \"POST\"",
            );
            m.get_ref().clone()
        }
        None => "GET".into(),
    };
    Load {
        listener,
        rate,
        method,
        paths: paths.clone(),
    }
}
