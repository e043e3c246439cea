//! A seeded simulation over the real decision code ([`Rollout::tick`]).
//!
//! Traffic is drawn per tick: the listener's requests are split by the step's weights (binomial,
//! normal approximation), each arm's errors are Poisson with the arm's true rate (errors are rare,
//! so Poisson is binomial to within a fraction of a percent), both arms have the same latency. The
//! rollout is driven to its final decision exactly as the controller will drive it. This measures
//! what the statistics promise: the false-rollback rate when the candidate equals the baseline, the
//! power at the plan's effect size, and how many candidate requests it takes to reject a bad build.
use crate::decide::{
    ArmCounts, ArmSample, Decision, Outcome, Phase, ProcessState, RollbackReason, Rollout,
    TickInput,
};
use crate::plan::{BaselineKind, Plan};
use crate::stats::latency::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Duration;

/// What is simulated: a plan, the traffic and the arms' true error rates.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The plan (its steps, tick, tests and policies are used as they are).
    pub plan: Plan,
    /// Requests per second on the target's split listeners (all arms together).
    pub rate: f64,
    /// The baseline's (and stable's) true error rate.
    pub baseline_rate: f64,
    /// The candidate's true error rate.
    pub candidate_rate: f64,
}

/// The standard plan of docs/canary.md: steps 5/25/50 % against a fresh baseline, objective 0.1 %,
/// α 0.05 (whole rollout), β 0.2, R 2, min 2000 requests and 1 min per step, one node baked 2 min.
pub const STANDARD_PLAN: &str = r#"name = "sim"
[[target]]
node = "sim"
admin = "127.0.0.1:9901"
listeners = ["rpc"]
[candidate]
binary = "candidate"
[baseline]
kind = "fresh"
[steps]
weights = [5, 25, 50]
min_time = "1m"
max_time = "10m"
min_requests = 2000
tick = "5s"
[slo]
error_rate = 0.001
p99_ratio = 1.5
[test]
alpha = 0.05
beta = 0.2
effect = 2.0
[inconclusive]
hold = "5m"
[promotion]
scope = "one"
bake = "2m"
[split]
ttl = "30s"
"#;

impl Scenario {
    /// [`STANDARD_PLAN`] at 2000 requests/s, baseline at the objective (0.1 %), the candidate at
    /// `candidate_rate`.
    pub fn standard(candidate_rate: f64) -> Self {
        let plan = Plan::parse(STANDARD_PLAN, "sim").expect("the standard plan is valid");
        Scenario {
            plan,
            rate: 2000.0,
            baseline_rate: 0.001,
            candidate_rate,
        }
    }
}

/// One simulated rollout's end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunEnd {
    /// How it ended.
    pub outcome: Outcome,
    /// The rollback's reason, if it rolled back.
    pub reason: Option<RollbackReason>,
    /// Candidate requests sent before the final decision.
    pub candidate_requests: u64,
    /// Ticks taken.
    pub ticks: u64,
}

/// Drives one rollout to its final decision (or a safety cap of 100 000 ticks, reported as held).
pub fn run_once(s: &Scenario, rng: &mut StdRng) -> RunEnd {
    let tick = s.plan.steps.tick;
    let per_tick = s.rate * tick.as_secs_f64();
    let mut r = Rollout::new(&s.plan, Duration::ZERO);
    let mut now = Duration::ZERO;
    for _ in 0..100_000 {
        now += tick;
        let (wc, wb) = shares(&s.plan, r.phase());
        let nc = binomial(rng, per_tick, wc);
        let nb = binomial(rng, per_tick, wb);
        let input = TickInput {
            now,
            candidate: arm(nc, poisson(rng, nc as f64 * s.candidate_rate).min(nc)),
            baseline: arm(nb, poisson(rng, nb as f64 * s.baseline_rate).min(nb)),
            process: ProcessState::Running,
            commands: Vec::new(),
        };
        let rep = r.tick(&input);
        if let Some(outcome) = rep.decision.outcome() {
            let reason = match rep.decision {
                Decision::Rollback { reason } => Some(reason),
                _ => None,
            };
            return RunEnd {
                outcome,
                reason,
                candidate_requests: r.candidate_requests(),
                ticks: rep.tick,
            };
        }
    }
    RunEnd {
        outcome: Outcome::HeldUntilTimeout,
        reason: None,
        candidate_requests: r.candidate_requests(),
        ticks: 100_000,
    }
}

/// The fractions of traffic the candidate and baseline arms get in `phase`. While baking the
/// promoted node takes its whole traffic and there is no baseline arm.
fn shares(plan: &Plan, phase: Phase) -> (f64, f64) {
    match phase {
        Phase::Step { weight, .. } => {
            let w = f64::from(weight) / 100.0;
            match plan.baseline.kind {
                BaselineKind::Fresh => (w, w),
                BaselineKind::Stable => (w, 1.0 - w),
            }
        }
        Phase::Bake { .. } | Phase::Done => (1.0, 0.0),
    }
}

fn arm(requests: u64, errors: u64) -> ArmSample {
    ArmSample {
        counts: ArmCounts {
            requests,
            errors_5xx: errors,
            ..ArmCounts::default()
        },
        latency: Histogram {
            bounds: vec![0.01],
            counts: vec![requests, 0],
        },
    }
}

/// A standard normal draw (Box–Muller).
fn gauss(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Binomial(n, p) for large n, in the normal approximation (n is thousands per tick here).
fn binomial(rng: &mut StdRng, n: f64, p: f64) -> u64 {
    if p <= 0.0 {
        return 0;
    }
    let x = n * p + (n * p * (1.0 - p)).sqrt() * gauss(rng);
    x.round().clamp(0.0, n) as u64
}

/// Poisson(λ): Knuth's product method for small λ, the normal approximation above 30.
fn poisson(rng: &mut StdRng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda >= 30.0 {
        return (lambda + lambda.sqrt() * gauss(rng)).round().max(0.0) as u64;
    }
    let limit = (-lambda).exp();
    let (mut k, mut p) = (0u64, 1.0f64);
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

/// Many runs of one scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Runs.
    pub runs: usize,
    /// Promoted (exit 0).
    pub promoted: usize,
    /// Rolled back by the guard.
    pub guard: usize,
    /// Rolled back by the relative test.
    pub relative: usize,
    /// Held inconclusive until the timeout (exit 2).
    pub held: usize,
    /// Median candidate requests until a rollback by a test, counting runs that did not roll back
    /// as never (`None` when fewer than half rolled back).
    pub median_requests_to_reject: Option<u64>,
    /// Median candidate requests per run, whatever the end.
    pub median_requests: u64,
}

impl Summary {
    /// Share of runs rolled back by a test (false rollbacks when the candidate is no worse).
    pub fn rollback_rate(&self) -> f64 {
        (self.guard + self.relative) as f64 / self.runs as f64
    }
}

/// `runs` rollouts of `s`, seeded: the same seed gives the same summary.
pub fn simulate(s: &Scenario, runs: usize, seed: u64) -> Summary {
    let mut rng = StdRng::seed_from_u64(seed);
    let ends: Vec<RunEnd> = (0..runs).map(|_| run_once(s, &mut rng)).collect();
    let count = |f: &dyn Fn(&RunEnd) -> bool| ends.iter().filter(|e| f(e)).count();
    let mut to_reject: Vec<u64> = ends
        .iter()
        .map(|e| match e.reason {
            Some(RollbackReason::Guard | RollbackReason::Relative) => e.candidate_requests,
            _ => u64::MAX,
        })
        .collect();
    let mut all: Vec<u64> = ends.iter().map(|e| e.candidate_requests).collect();
    to_reject.sort_unstable();
    all.sort_unstable();
    let mid = |v: &[u64]| v.get(v.len().saturating_sub(1) / 2).copied();
    Summary {
        runs,
        promoted: count(&|e| e.outcome == Outcome::Promoted),
        guard: count(&|e| e.reason == Some(RollbackReason::Guard)),
        relative: count(&|e| e.reason == Some(RollbackReason::Relative)),
        held: count(&|e| e.outcome == Outcome::HeldUntilTimeout),
        median_requests_to_reject: mid(&to_reject).filter(|&m| m != u64::MAX),
        median_requests: mid(&all).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_have_the_right_means() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let mean = |f: &mut dyn FnMut() -> u64| (0..n).map(|_| f() as f64).sum::<f64>() / n as f64;
        let p = mean(&mut || poisson(&mut rng, 2.5));
        assert!((p - 2.5).abs() < 0.05, "{p}");
        let p = mean(&mut || poisson(&mut rng, 50.0));
        assert!((p - 50.0).abs() < 0.3, "{p}");
        let b = mean(&mut || binomial(&mut rng, 10_000.0, 0.05));
        assert!((b - 500.0).abs() < 1.0, "{b}");
    }

    #[test]
    fn same_seed_same_summary() {
        let s = Scenario::standard(0.002);
        assert_eq!(simulate(&s, 20, 3), simulate(&s, 20, 3));
    }
}
