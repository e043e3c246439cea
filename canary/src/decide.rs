//! One tick's decision: a state machine over the counts the controller gathers.
//!
//! Pure: no clocks, no I/O. The controller polls the sidecar's per-subset counters every
//! `steps.tick`, takes differences, and calls [`Rollout::tick`] with them, the candidate process's
//! state, the time since the run started and any operator commands; it gets back a [`TickReport`] —
//! the [`Decision`] plus every number that drove it — prints its one-line [`Display`] and journals
//! it (it is `Serialize`). The simulation ([`crate::sim`]) drives exactly this code.
//!
//! Per tick, in order (the first that applies decides):
//!
//! 1. an operator `abort` → roll back (exit 3);
//! 2. *critical*: the candidate exited or restarted, or had `slo.critical_local_errors` local
//!    errors (it is not answering) → roll back at once, no statistics needed;
//! 3. the statistics see the tick's counts; the guard or the relative test rejecting → roll back;
//! 4. an operator `resume` ends an inconclusive hold and restarts the step's clock; `promote`
//!    passes the current step (or bake) on the operator's word;
//! 5. the step passes when the guard accepts *on this step's data* (the step's share of the guard's
//!    Λ is ≤ B), the relative test has not rejected, the candidate has `min_requests` and the step
//!    `min_time`, and the p99 ratio holds → next step, or promote;
//! 6. past `max_time` the step is *inconclusive*: it holds at its weight, still testing (a
//!    rejection still rolls back, enough evidence still passes), and after `inconclusive.hold`
//!    rolls back (exit 2). It never promotes by itself;
//! 7. otherwise it continues, saying what is missing.
//!
//! **Two tests for the whole rollout, carried across its phases.** The guard starts with the first
//! step and runs over every candidate request until the run ends — through the weight changes and
//! the bakes; the relative test runs over every step (it has no baseline while baking). Neither is
//! reset: both are likelihood-ratio martingales under H0 whatever happens between ticks (the
//! candidate's error rate does not depend on its weight; the attribution test recomputes its π per
//! tick), so by Ville's inequality each rejects a good build with probability ≤ e^−A over the whole
//! run, and the rollout's α is split over just these two (`Plan::alpha_per_test`).
//!
//! **Acceptance is per step, rejection is carried.** A rejection looks at the guard's whole Λ; a step
//! passes only when the Λ gathered *during that step* is ≤ B, i.e. that step's own requests favour
//! the objective over R× it by Wald's acceptance factor. Evidence from 5 % never passes the 50 %
//! step by itself (a build that fails only under more load has to show it is fine at that load), and
//! acceptance never affects the false-rollback bound, which only concerns the upper boundary.
mod report;

pub use report::{ArmReport, TickReport};

use crate::plan::Plan;
use crate::stats::guard::Guard;
use crate::stats::latency::{p99_ratio, Histogram};
use crate::stats::sprt::{share, AttributionSprt};
use crate::stats::{Bounds, Verdict};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One arm's counts for one tick, **per attempt**: a retried attempt that failed counts as an error
/// even if the retry succeeded (a retried 502 still counts against the candidate), and an attempt
/// served by failover counts against the subset that failed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmCounts {
    /// Attempts sent to the arm.
    pub requests: u64,
    /// Upstream 5xx answers.
    pub errors_5xx: u64,
    /// The sidecar's own errors towards the arm (connect refused, reset, protocol error).
    pub local_errors: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
}

impl ArmCounts {
    /// Everything the SLO counts as failed.
    pub fn errors(&self) -> u64 {
        self.errors_5xx + self.local_errors + self.timeouts
    }

    fn add(&mut self, o: &ArmCounts) {
        self.requests += o.requests;
        self.errors_5xx += o.errors_5xx;
        self.local_errors += o.local_errors;
        self.timeouts += o.timeouts;
    }
}

/// One arm's tick: counts and the latency histogram's per-tick difference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmSample {
    /// Counts.
    pub counts: ArmCounts,
    /// Latency observations.
    pub latency: Histogram,
}

/// What the controller saw of the candidate process since the last tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Up, same process.
    Running,
    /// Gone, with its exit code if it had one.
    Exited {
        /// Exit code (`None` when killed by a signal).
        code: Option<i32>,
    },
    /// A supervisor brought it back: a crash hidden by a restart still counts.
    Restarted {
        /// Restarts seen.
        restarts: u32,
    },
}

/// Operator commands (`canary promote|resume|abort`), delivered with the next tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Pass the current step (or bake) now, on the operator's judgement.
    Promote,
    /// End an inconclusive hold and give the step another `max_time`.
    Resume,
    /// Roll back now.
    Abort,
}

/// Everything one tick decides on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TickInput {
    /// Time since the run started (monotonic; the controller's clock, the simulation's counter).
    #[serde(with = "humantime_serde")]
    pub now: Duration,
    /// The candidate subset's tick.
    pub candidate: ArmSample,
    /// The baseline's tick (the fresh subset, or the stable remainder); ignored while baking.
    pub baseline: ArmSample,
    /// The candidate process.
    pub process: ProcessState,
    /// Operator commands received since the last tick.
    pub commands: Vec<Command>,
}

/// Where the rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Weighted step `index` (0-based) at `weight` percent.
    Step {
        /// Step index.
        index: usize,
        /// Candidate weight, percent.
        weight: u32,
    },
    /// Target `node` (index into the plan's targets) runs the candidate and bakes under the guard.
    Bake {
        /// Target index.
        node: usize,
    },
    /// Finished (see the final decision).
    Done,
}

/// Why a rollout rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RollbackReason {
    /// The candidate exited, restarted or stopped answering.
    Critical {
        /// What was seen.
        what: String,
    },
    /// The guard rejected: the candidate's error rate is above the objective.
    Guard,
    /// The relative test rejected: the candidate fails more often than the baseline.
    Relative,
    /// Inconclusive, and nobody resumed within `inconclusive.hold`.
    HoldTimeout,
    /// An operator aborted.
    Aborted,
    /// The controller was interrupted (signal); it rolled back on the way out.
    Interrupted,
}

/// The decision of one tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Decision {
    /// Hold this step; `why` lists what it still lacks.
    Continue {
        /// What is missing.
        why: String,
    },
    /// Set the candidate's weight to the next step's.
    NextStep {
        /// The new step's index.
        index: usize,
        /// Its weight, percent.
        weight: u32,
    },
    /// Promote target `node` (restart it on the candidate binary with its data) and bake it.
    Promote {
        /// Target index.
        node: usize,
    },
    /// Done: every node in scope runs the candidate and baked clean. Exit 0.
    Promoted,
    /// The step ran out of time undecided: hold at this weight until `rollback_at`.
    Inconclusive {
        /// What is missing.
        why: String,
        /// When the hold ends in a rollback (time since the run started).
        #[serde(with = "humantime_serde")]
        rollback_at: Duration,
    },
    /// Remove the split, then stop the candidate.
    Rollback {
        /// Why.
        reason: RollbackReason,
    },
}

/// How a run ends, as the CLI's exit code (issue 21).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 0: promoted.
    Promoted,
    /// 1: rolled back on evidence (a test, or critical).
    RolledBack,
    /// 2: held inconclusive until the timeout, then rolled back.
    HeldUntilTimeout,
    /// 3: aborted by an operator.
    Aborted,
    /// 4: interrupted (rolled back).
    Interrupted,
    /// 5: the environment failed (binary missing or not starting, sidecar unreachable); the
    /// controller's to detect.
    EnvironmentFailure,
    /// 64: the plan is invalid.
    InvalidPlan,
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Promoted => 0,
            Outcome::RolledBack => 1,
            Outcome::HeldUntilTimeout => 2,
            Outcome::Aborted => 3,
            Outcome::Interrupted => 4,
            Outcome::EnvironmentFailure => 5,
            Outcome::InvalidPlan => 64,
        }
    }
}

impl Decision {
    /// The run's outcome if this decision ends it.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Decision::Promoted => Some(Outcome::Promoted),
            Decision::Rollback { reason } => Some(match reason {
                RollbackReason::HoldTimeout => Outcome::HeldUntilTimeout,
                RollbackReason::Aborted => Outcome::Aborted,
                RollbackReason::Interrupted => Outcome::Interrupted,
                _ => Outcome::RolledBack,
            }),
            _ => None,
        }
    }
}

/// What the state machine needs from the plan.
#[derive(Clone, Debug)]
struct Config {
    weights: Vec<u32>,
    min_time: Duration,
    max_time: Duration,
    min_requests: u64,
    hold: Duration,
    bake: Duration,
    nodes: usize,
    p0: f64,
    effect: f64,
    bounds: Bounds,
    p99_limit: f64,
    critical_local_errors: u64,
}

/// A rollout's decision state. Create it when the first step's split is installed.
#[derive(Clone, Debug)]
pub struct Rollout {
    cfg: Config,
    phase: Phase,
    started: Duration,
    deadline: Duration,
    held_since: Option<Duration>,
    guard: Guard,
    /// The guard's Λ when the current phase started: the phase's own evidence is `Λ − mark`.
    guard_mark: f64,
    relative: AttributionSprt,
    cand: ArmCounts,
    base: ArmCounts,
    cand_lat: Histogram,
    base_lat: Histogram,
    candidate_requests: u64,
    ticks: u64,
    last: Option<Decision>,
}

impl Rollout {
    /// The rollout of `plan`, its first step starting at `now`.
    pub fn new(plan: &Plan, now: Duration) -> Self {
        let cfg = Config {
            weights: plan.steps.weights.clone(),
            min_time: plan.steps.min_time,
            max_time: plan.steps.max_time,
            min_requests: plan.steps.min_requests,
            hold: plan.inconclusive.hold,
            bake: plan.promotion.bake,
            nodes: plan.promoted_nodes(),
            p0: plan.slo.error_rate,
            effect: plan.test.effect,
            bounds: Bounds::anytime(plan.alpha_per_test(), plan.test.beta),
            p99_limit: plan.slo.p99_ratio,
            critical_local_errors: plan.slo.critical_local_errors,
        };
        let phase = Phase::Step {
            index: 0,
            weight: cfg.weights[0],
        };
        let mut r = Rollout {
            guard: Guard::new(cfg.p0, cfg.effect, cfg.bounds),
            guard_mark: 0.0,
            relative: AttributionSprt::new(cfg.effect, cfg.bounds),
            cfg,
            phase,
            started: now,
            deadline: now,
            held_since: None,
            cand: ArmCounts::default(),
            base: ArmCounts::default(),
            cand_lat: Histogram::default(),
            base_lat: Histogram::default(),
            candidate_requests: 0,
            ticks: 0,
            last: None,
        };
        r.enter(phase, now);
        r
    }

    /// Where the rollout is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The final decision, once there is one.
    pub fn finished(&self) -> Option<&Decision> {
        self.last.as_ref().filter(|d| d.outcome().is_some())
    }

    /// Candidate requests over the whole run.
    pub fn candidate_requests(&self) -> u64 {
        self.candidate_requests
    }

    /// The controller was interrupted: record the rollback it performs on the way out.
    pub fn interrupt(&mut self, now: Duration) -> TickReport {
        let reason = RollbackReason::Interrupted;
        self.finish(Decision::Rollback { reason }, now, Vec::new())
    }

    /// Decides one tick. After a final decision every further tick repeats it.
    pub fn tick(&mut self, input: &TickInput) -> TickReport {
        let now = input.now;
        let mut notes = Vec::new();
        if let Some(done) = self.finished().cloned() {
            return self.report(done, now, notes);
        }
        self.ticks += 1;
        self.absorb(input);
        if input.commands.contains(&Command::Abort) {
            notes.push("operator: abort".to_string());
            let reason = RollbackReason::Aborted;
            return self.finish(Decision::Rollback { reason }, now, notes);
        }
        if let Some(what) = self.critical(input.process) {
            let reason = RollbackReason::Critical { what };
            return self.finish(Decision::Rollback { reason }, now, notes);
        }
        if let Some(reason) = self.rejected() {
            return self.finish(Decision::Rollback { reason }, now, notes);
        }
        if input.commands.contains(&Command::Resume) {
            notes.push(self.resume(now));
        }
        if input.commands.contains(&Command::Promote) {
            notes.push("operator: promote (passes this phase)".to_string());
            let d = self.advance(now);
            return self.report(d, now, notes);
        }
        let unmet = self.unmet(now);
        let decision = if unmet.is_empty() {
            self.advance(now)
        } else {
            self.hold_or_continue(unmet.join("; "), now)
        };
        if decision.outcome().is_some() && self.phase != Phase::Done {
            return self.finish(decision, now, notes);
        }
        self.report(decision, now, notes)
    }

    /// Adds the tick's counts to the phase's totals and to the tests.
    fn absorb(&mut self, input: &TickInput) {
        let (c, b) = (&input.candidate, &input.baseline);
        self.cand.add(&c.counts);
        self.cand_lat.add(&c.latency);
        self.candidate_requests += c.counts.requests;
        self.guard.update(c.counts.requests, c.counts.errors());
        if let Phase::Step { .. } = self.phase {
            self.base.add(&b.counts);
            self.base_lat.add(&b.latency);
            if let Some(pi) = share(c.counts.requests, b.counts.requests) {
                let (ce, be) = (c.counts.errors(), b.counts.errors());
                self.relative.update(ce, be, pi);
            }
        }
    }

    fn critical(&self, process: ProcessState) -> Option<String> {
        match process {
            ProcessState::Exited { code: Some(c) } => {
                Some(format!("candidate exited with code {c}"))
            }
            ProcessState::Exited { code: None } => Some("candidate killed by a signal".into()),
            ProcessState::Restarted { restarts } => {
                Some(format!("candidate restarted ({restarts}×)"))
            }
            ProcessState::Running => {
                let (n, limit) = (self.cand.local_errors, self.cfg.critical_local_errors);
                (limit > 0 && n >= limit).then(|| {
                    format!("{n} local errors towards the candidate (critical at {limit})")
                })
            }
        }
    }

    fn rejected(&self) -> Option<RollbackReason> {
        if self.guard.verdict() == Verdict::Reject {
            Some(RollbackReason::Guard)
        } else if self.relative.verdict() == Verdict::Reject {
            Some(RollbackReason::Relative)
        } else {
            None
        }
    }

    /// `resume`: ends a hold and restarts the step's clock from now. It sticks because the
    /// deadline itself moves — the next tick does not find the step past `max_time` again and
    /// re-enter the hold on the same data (argo-rollouts#2866).
    fn resume(&mut self, now: Duration) -> String {
        if self.held_since.take().is_some() {
            self.deadline = now + self.cfg.max_time;
            format!(
                "operator: resume (hold ended; step deadline now +{})",
                humantime::format_duration(self.cfg.max_time)
            )
        } else {
            "operator: resume ignored (not holding)".to_string()
        }
    }

    /// What the current phase still lacks before it can pass; empty = it passes.
    fn unmet(&self, now: Duration) -> Vec<String> {
        let elapsed = now.saturating_sub(self.started);
        let mut why = Vec::new();
        if let Phase::Bake { .. } = self.phase {
            if elapsed < self.cfg.bake {
                why.push(format!("baking {}/{}", secs(elapsed), secs(self.cfg.bake)));
            }
            return why;
        }
        let step_llr = self.guard_step_llr();
        let accept = self.cfg.bounds.accept;
        if step_llr > accept {
            why.push(format!(
                "guard: this step's ΔΛ {step_llr:.2} not yet ≤ B {accept:.2}"
            ));
        }
        if self.cand.requests < self.cfg.min_requests {
            let min = self.cfg.min_requests;
            why.push(format!("requests {}/{min}", self.cand.requests));
        }
        if elapsed < self.cfg.min_time {
            why.push(format!(
                "time {}/{}",
                secs(elapsed),
                secs(self.cfg.min_time)
            ));
        }
        match p99_ratio(&self.cand_lat, &self.base_lat) {
            None => why.push("p99: too few latency samples".into()),
            Some(r) if r.ratio > self.cfg.p99_limit => why.push(format!(
                "p99 ratio {:.2} > {:.2}",
                r.ratio, self.cfg.p99_limit
            )),
            Some(_) => {}
        }
        why
    }

    fn hold_or_continue(&mut self, why: String, now: Duration) -> Decision {
        if !matches!(self.phase, Phase::Step { .. }) || now < self.deadline {
            return Decision::Continue { why };
        }
        let since = *self.held_since.get_or_insert(now);
        let rollback_at = since + self.cfg.hold;
        if now >= rollback_at {
            let reason = RollbackReason::HoldTimeout;
            return Decision::Rollback { reason };
        }
        Decision::Inconclusive { why, rollback_at }
    }

    /// The current phase passed: the next step, the next promotion, or done.
    fn advance(&mut self, now: Duration) -> Decision {
        let steps = self.cfg.weights.len();
        let (next, decision) = match self.phase {
            Phase::Step { index, .. } if index + 1 < steps => {
                let weight = self.cfg.weights[index + 1];
                let index = index + 1;
                (
                    Phase::Step { index, weight },
                    Decision::NextStep { index, weight },
                )
            }
            Phase::Step { .. } => (Phase::Bake { node: 0 }, Decision::Promote { node: 0 }),
            Phase::Bake { node } if node + 1 < self.cfg.nodes => {
                let node = node + 1;
                (Phase::Bake { node }, Decision::Promote { node })
            }
            Phase::Bake { .. } | Phase::Done => (Phase::Done, Decision::Promoted),
        };
        self.enter(next, now);
        self.last = Some(decision.clone());
        decision
    }

    /// The guard's evidence gathered in the current phase: `Λ − Λ at the phase's start`.
    fn guard_step_llr(&self) -> f64 {
        self.guard.snapshot().llr - self.guard_mark
    }

    /// Starts a phase: fresh counts and clock; the tests carry on (module docs), the guard's
    /// acceptance counts from here.
    fn enter(&mut self, phase: Phase, now: Duration) {
        self.phase = phase;
        self.started = now;
        self.deadline = now + self.cfg.max_time;
        self.held_since = None;
        self.guard_mark = self.guard.snapshot().llr;
        self.cand = ArmCounts::default();
        self.base = ArmCounts::default();
        self.cand_lat = Histogram::default();
        self.base_lat = Histogram::default();
    }

    fn finish(&mut self, d: Decision, now: Duration, notes: Vec<String>) -> TickReport {
        let report = self.report(d.clone(), now, notes);
        self.phase = Phase::Done;
        self.last = Some(d);
        report
    }
}

/// Whole seconds, for messages.
fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests;
