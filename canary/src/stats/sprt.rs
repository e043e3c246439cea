//! The relative test: is the candidate's error rate R times the concurrent baseline's?
//!
//! Wald's SPRT on *error attribution* (reference anchors §4.5, item 3). Condition on the errors: if
//! both arms fail at the same per-request rate, an error seen in a tick came from the candidate with
//! probability `π = n_c/(n_c+n_b)`, the candidate's share of that tick's requests. If the candidate
//! fails R times as often, that probability is `π1 = Rπ/(Rπ+1−π)`. A tick with `k` errors of which
//! `s` came from the candidate moves the log-likelihood ratio by
//!
//! ```text
//! Λ += s·ln(π1/π) + (k−s)·ln((1−π1)/(1−π))
//! ```
//!
//! **Why it stays valid at unequal and changing weights.** π is taken from the same tick's request
//! counts, i.e. it is fixed before that tick's errors are attributed; each tick's factor then has
//! expectation 1 under H0 given everything before it, so `e^Λ` is a nonnegative H0-martingale no
//! matter how π moves between ticks (weight steps, an uneven split, a fresh baseline at the same
//! weight or the stable node at the rest). The absolute error rate cancels out too: a cluster-wide
//! incident raises both arms and is attributed in proportion.
//!
//! **Why it stays valid under continuous checking.** By Ville's inequality
//! `P_H0(sup Λ ≥ A) ≤ e^{−A} = α/(1−β)`: the test may look after every tick — or every error — and
//! its false-rollback rate stays bounded; there is no fixed sample size to peek at. (The binomial
//! attribution is the `k ≪ n` limit of the exact hypergeometric one; errors are rare by definition
//! of an SLO.)
use super::{Bounds, TestSnapshot, Verdict};

/// The candidate's share of a tick's requests, or `None` when either arm saw none (then an error
/// says nothing about which arm is worse and the tick is skipped).
pub fn share(candidate_requests: u64, baseline_requests: u64) -> Option<f64> {
    if candidate_requests == 0 || baseline_requests == 0 {
        return None;
    }
    Some(candidate_requests as f64 / (candidate_requests + baseline_requests) as f64)
}

/// Wald's SPRT on error attribution (H0: ratio 1, H1: ratio R).
#[derive(Clone, Debug)]
pub struct AttributionSprt {
    ratio: f64,
    bounds: Bounds,
    llr: f64,
    errors: u64,
    candidate_errors: u64,
    rejected: bool,
}

impl AttributionSprt {
    /// A fresh test for effect size `ratio` (> 1) with the given bounds.
    pub fn new(ratio: f64, bounds: Bounds) -> Self {
        AttributionSprt {
            ratio,
            bounds,
            llr: 0.0,
            errors: 0,
            candidate_errors: 0,
            rejected: false,
        }
    }

    /// Adds one tick: `candidate_errors` and `baseline_errors` seen while the candidate had
    /// `share` of the requests (see [`share`]). A rejection is final (the rollout rolls back).
    pub fn update(&mut self, candidate_errors: u64, baseline_errors: u64, share: f64) {
        if self.rejected || !(share > 0.0 && share < 1.0) {
            return;
        }
        let pi = share;
        let pi1 = self.ratio * pi / (self.ratio * pi + 1.0 - pi);
        let (s, f) = (candidate_errors as f64, baseline_errors as f64);
        self.llr += s * (pi1 / pi).ln() + f * ((1.0 - pi1) / (1.0 - pi)).ln();
        self.errors += candidate_errors + baseline_errors;
        self.candidate_errors += candidate_errors;
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
            observations: self.errors,
            hits: self.candidate_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test() -> AttributionSprt {
        AttributionSprt::new(2.0, Bounds::wald(0.05, 0.2))
    }

    #[test]
    fn share_needs_both_arms() {
        assert_eq!(share(0, 10), None);
        assert_eq!(share(10, 0), None);
        assert_eq!(share(1, 3), Some(0.25));
    }

    #[test]
    fn equal_weights_one_candidate_error_moves_by_ln_pi1_over_pi() {
        let mut t = test();
        t.update(1, 0, 0.5);
        // π = 1/2, π1 = 2/3: ln(4/3).
        assert!((t.snapshot().llr - (4.0f64 / 3.0).ln()).abs() < 1e-12);
        t.update(0, 1, 0.5);
        // a baseline error: ln((1/3)/(1/2)) = ln(2/3); together ln(8/9).
        assert!((t.snapshot().llr - (8.0f64 / 9.0).ln()).abs() < 1e-12);
        assert_eq!(t.snapshot().observations, 2);
        assert_eq!(t.snapshot().hits, 1);
    }

    #[test]
    fn all_errors_in_a_small_candidate_reject_quickly() {
        // 5 % weight, every error from the candidate: ln(π1/π) ≈ ln(1.905) per error, A = ln 16.
        let mut t = test();
        let mut n = 0;
        while t.verdict() != Verdict::Reject {
            t.update(1, 0, 0.05);
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn errors_in_proportion_drift_towards_accept() {
        let mut t = test();
        for _ in 0..200 {
            // 10 % share, errors split 1:9 as under H0.
            t.update(1, 9, 0.1);
        }
        assert_eq!(t.verdict(), Verdict::Accept);
    }

    #[test]
    fn changing_weights_are_accounted_per_batch() {
        let mut a = test();
        a.update(1, 0, 0.01);
        a.update(1, 0, 0.5);
        let pi1 = |pi: f64| 2.0 * pi / (2.0 * pi + 1.0 - pi);
        let want = (pi1(0.01) / 0.01).ln() + (pi1(0.5) / 0.5).ln();
        assert!((a.snapshot().llr - want).abs() < 1e-12);
    }

    #[test]
    fn skipped_when_share_is_degenerate_and_rejection_sticks() {
        let mut t = test();
        t.update(5, 0, 1.0);
        t.update(5, 0, 0.0);
        assert_eq!(t.snapshot().observations, 0);
        t.update(20, 0, 0.1);
        assert_eq!(t.verdict(), Verdict::Reject);
        t.update(0, 10_000, 0.1);
        assert_eq!(t.verdict(), Verdict::Reject);
    }
}
