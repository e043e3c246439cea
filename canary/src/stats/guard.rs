//! The absolute SLO guard: is the candidate's own error rate within the objective?
//!
//! A Bernoulli SPRT per batch of requests, H0: `p = p0` (the SLO's error-rate objective) against
//! H1: `p = p1 = R·p0`. A tick with `n` candidate requests of which `x` failed moves
//!
//! ```text
//! Λ += x·ln(p1/p0) + (n−x)·ln((1−p1)/(1−p0))
//! ```
//!
//! Crossing `A` rejects (roll back); being at or under `B` accepts (the candidate meets the SLO
//! with the test's power). One guard runs over the whole rollout, steps and bakes (`decide`): the
//! rejection looks at its whole Λ, a step passes only when the Λ gathered during that step is ≤ `B`.
//!
//! **It judges the candidate alone.** A comparison with the baseline cannot tell a failing
//! candidate from a healthy one when the baseline has had zero errors (kayenta#377: the relative
//! score is undefined or "no difference"); the guard never looks at the baseline, so a candidate
//! failing R× the objective is rejected whatever the baseline did.
//!
//! **Continuous checking.** The test keeps running after it first reaches `B` (a step may still be
//! short of its minimum requests or time), so a candidate that degrades later in the step is still
//! caught. That does not weaken the false-rollback bound: Ville's inequality bounds the chance that
//! Λ *ever* reaches `A` under H0 by `e^{−A} = α/(1−β)`, the same bound Wald's stopped test has.
use super::{Bounds, TestSnapshot, Verdict};

/// Wald's SPRT of the candidate's error rate against the objective.
#[derive(Clone, Debug)]
pub struct Guard {
    /// Increment per failed request: `ln(p1/p0)`.
    up: f64,
    /// Increment per good request: `ln((1−p1)/(1−p0))` (negative).
    down: f64,
    bounds: Bounds,
    llr: f64,
    requests: u64,
    errors: u64,
    rejected: bool,
}

impl Guard {
    /// A fresh guard for objective `p0` and effect size `ratio` (`R·p0 < 1`, checked by the plan).
    pub fn new(p0: f64, ratio: f64, bounds: Bounds) -> Self {
        let p1 = ratio * p0;
        Guard {
            up: (p1 / p0).ln(),
            down: ((1.0 - p1) / (1.0 - p0)).ln(),
            bounds,
            llr: 0.0,
            requests: 0,
            errors: 0,
            rejected: false,
        }
    }

    /// Adds a batch: `requests` candidate requests of which `errors` failed. A rejection is final.
    pub fn update(&mut self, requests: u64, errors: u64) {
        if self.rejected {
            return;
        }
        let errors = errors.min(requests);
        self.llr += errors as f64 * self.up + (requests - errors) as f64 * self.down;
        self.requests += requests;
        self.errors += errors;
        self.rejected = self.llr >= self.bounds.reject;
    }

    /// Where the test stands.
    pub fn verdict(&self) -> Verdict {
        Verdict::of(self.llr, self.bounds, self.rejected)
    }

    /// The statistic, bounds and counts, for the tick line and the journal.
    pub fn snapshot(&self) -> TestSnapshot {
        TestSnapshot {
            llr: self.llr,
            bounds: self.bounds,
            verdict: self.verdict(),
            observations: self.requests,
            hits: self.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(0.001, 2.0, Bounds::wald(0.05, 0.2))
    }

    #[test]
    fn increments_match_the_formula() {
        let mut g = guard();
        g.update(1000, 3);
        let want = 3.0 * 2f64.ln() + 997.0 * (0.998f64 / 0.999).ln();
        assert!((g.snapshot().llr - want).abs() < 1e-9);
        assert_eq!((g.snapshot().observations, g.snapshot().hits), (1000, 3));
    }

    #[test]
    fn error_free_candidate_is_accepted_after_about_1600_requests() {
        // B = ln(0.2/0.95) ≈ −1.558; each good request adds ln(0.998/0.999) ≈ −0.001.
        let mut g = guard();
        let mut n = 0;
        while g.verdict() != Verdict::Accept {
            g.update(100, 0);
            n += 100;
        }
        assert_eq!(n, 1600);
    }

    #[test]
    fn zero_error_baseline_cannot_save_a_failing_candidate() {
        // kayenta#377: the guard has no baseline input at all; a candidate at 3× the objective is
        // rejected on its own counts.
        let mut g = guard();
        for _ in 0..100 {
            g.update(1000, 3);
        }
        assert_eq!(g.verdict(), Verdict::Reject);
    }

    #[test]
    fn rejection_sticks_and_errors_are_capped_by_requests() {
        let mut g = guard();
        g.update(10, 50);
        assert_eq!(g.snapshot().hits, 10);
        assert_eq!(g.verdict(), Verdict::Reject);
        g.update(1_000_000, 0);
        assert_eq!(g.verdict(), Verdict::Reject);
    }

    #[test]
    fn keeps_watching_after_accepting() {
        let mut g = guard();
        g.update(5000, 0);
        assert_eq!(g.verdict(), Verdict::Accept);
        g.update(100, 30);
        assert_eq!(g.verdict(), Verdict::Reject);
    }
}
