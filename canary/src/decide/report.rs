//! What a tick reports: the decision and every number behind it (flagger#1810, #1815: verdicts
//! without their numbers cannot be trusted or debugged). One line per tick for people, the same
//! struct as JSON for the journal.
use super::{Command, Decision, Phase, Rollout};
use crate::stats::latency::{p99_ratio, P99Ratio};
use crate::stats::TestSnapshot;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// One arm's totals over the current phase.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmReport {
    /// Attempts.
    pub requests: u64,
    /// Failed attempts (5xx + local errors + timeouts).
    pub errors: u64,
    /// Of those, local errors.
    pub local_errors: u64,
    /// p99 latency, seconds (`None` while there are no observations).
    pub p99: Option<f64>,
}

/// The decision of one tick and everything that drove it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TickReport {
    /// Tick number (1-based).
    pub tick: u64,
    /// Time since the run started.
    #[serde(with = "humantime_serde")]
    pub now: Duration,
    /// The phase the decision was taken in.
    pub phase: Phase,
    /// Steps in the plan (for "step 2/4").
    pub steps: usize,
    /// Time in this phase.
    #[serde(with = "humantime_serde")]
    pub elapsed: Duration,
    /// Candidate totals over the phase.
    pub candidate: ArmReport,
    /// Baseline totals over the phase (zero while baking).
    pub baseline: ArmReport,
    /// The absolute guard, over the whole run (it is not reset between phases).
    pub guard: TestSnapshot,
    /// The guard's Λ gathered in this phase alone; a step passes only when it is ≤ `guard.bounds.accept`.
    #[serde(default)]
    pub guard_step_llr: f64,
    /// The relative test (`None` while baking: there is no baseline arm).
    pub relative: Option<TestSnapshot>,
    /// The p99s and their ratio, once both arms have enough samples.
    pub p99: Option<P99Ratio>,
    /// The allowed p99 ratio.
    pub p99_limit: f64,
    /// Candidate requests a step needs.
    pub min_requests: u64,
    /// Candidate requests over the whole run.
    pub candidate_requests_total: u64,
    /// Operator commands applied and other notes.
    pub notes: Vec<String>,
    /// The decision.
    pub decision: Decision,
}

impl Rollout {
    pub(super) fn report(
        &self,
        decision: Decision,
        now: Duration,
        notes: Vec<String>,
    ) -> TickReport {
        let baking = matches!(self.phase, Phase::Bake { .. });
        TickReport {
            tick: self.ticks,
            now,
            phase: self.phase,
            steps: self.cfg.weights.len(),
            elapsed: now.saturating_sub(self.started),
            candidate: arm(&self.cand, &self.cand_lat),
            baseline: arm(&self.base, &self.base_lat),
            guard: self.guard.snapshot(),
            guard_step_llr: self.guard_step_llr(),
            relative: (!baking).then(|| self.relative.snapshot()),
            p99: p99_ratio(&self.cand_lat, &self.base_lat),
            p99_limit: self.cfg.p99_limit,
            min_requests: self.cfg.min_requests,
            candidate_requests_total: self.candidate_requests,
            notes,
            decision,
        }
    }
}

fn arm(c: &super::ArmCounts, h: &crate::stats::latency::Histogram) -> ArmReport {
    ArmReport {
        requests: c.requests,
        errors: c.errors(),
        local_errors: c.local_errors,
        p99: h.quantile(0.99),
    }
}

fn ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

fn test(name: &str, t: &TestSnapshot) -> String {
    format!(
        "{name} Λ={:.2} [B={:.2} A={:.2}] {:?} ({}/{})",
        t.llr, t.bounds.accept, t.bounds.reject, t.verdict, t.hits, t.observations
    )
}

impl fmt::Display for TickReport {
    /// `tick 12 +1m0s step 2/3 w=25% 45s | cand 2301 req 3 err p99 12.0ms | base … | guard Λ=…
    /// [B=… A=…] Accept (3/2301) | rel Λ=… | p99 ×1.09≤1.50 | → …`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
        let phase = match self.phase {
            Phase::Step { index, weight } => {
                format!("step {}/{} w={weight}%", index + 1, self.steps)
            }
            Phase::Bake { node } => format!("bake node#{node}"),
            Phase::Done => "done".into(),
        };
        let (c, b) = (&self.candidate, &self.baseline);
        write!(
            f,
            "tick {} +{} {phase} {} | ",
            self.tick,
            secs(self.now),
            secs(self.elapsed)
        )?;
        write!(
            f,
            "cand {} req {} err p99 {} | ",
            c.requests,
            c.errors,
            ms(c.p99)
        )?;
        write!(
            f,
            "base {} req {} err p99 {} | ",
            b.requests,
            b.errors,
            ms(b.p99)
        )?;
        write!(f, "{}", test("guard", &self.guard))?;
        if let Phase::Step { .. } = self.phase {
            write!(f, " step ΔΛ={:.2}", self.guard_step_llr)?;
        }
        if let Some(r) = &self.relative {
            write!(f, " | {}", test("rel", r))?;
        }
        match &self.p99 {
            Some(p) => write!(f, " | p99 ×{:.2}≤{:.2}", p.ratio, self.p99_limit)?,
            None => write!(f, " | p99 ×-")?,
        }
        for n in &self.notes {
            write!(f, " | {n}")?;
        }
        write!(f, " | → {}", self.decision)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Continue { why } => write!(f, "continue ({why})"),
            Decision::NextStep { index, weight } => {
                write!(f, "next step {} (w={weight}%)", index + 1)
            }
            Decision::Promote { node } => write!(f, "promote node#{node}"),
            Decision::Promoted => write!(f, "PROMOTED"),
            Decision::Inconclusive { why, rollback_at } => write!(
                f,
                "INCONCLUSIVE, holding ({why}); rollback at +{}",
                humantime::format_duration(Duration::from_secs(rollback_at.as_secs()))
            ),
            Decision::Rollback { reason } => write!(f, "ROLLBACK: {reason:?}"),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Command::Promote => "promote",
            Command::Resume => "resume",
            Command::Abort => "abort",
        };
        f.write_str(s)
    }
}
