//! The statistics behind every decision.
//!
//! Two sequential probability ratio tests (Wald) run side by side, because each misses what the
//! other sees:
//!
//! - [`guard`] judges the candidate *alone* against the SLO's error-rate objective. It is the only
//!   test that can let a step pass, so a baseline with zero errors can never wave a failing
//!   candidate through (kayenta#377).
//! - [`sprt`] compares the candidate with the *concurrent* baseline by attributing each error to an
//!   arm. It catches a build that is worse than the baseline even while both are inside the SLO, and
//!   it is not fooled by whatever the whole system is doing at the moment (both arms see it).
//!
//! Both are log-likelihood-ratio walks checked after every batch of counts. Checking often does not
//! inflate their false-rejection rate: under H0 the likelihood ratio is a nonnegative martingale, so
//! by Ville's inequality the probability that it *ever* reaches `e^A` is at most `e^{-A}`, whatever
//! the stopping rule. That is the property a fixed-sample test (z-test, Fisher) lacks when it is
//! re-run every tick.
pub mod guard;
pub mod latency;
pub mod sample_size;
pub mod sprt;

use serde::{Deserialize, Serialize};

/// Wald's decision bounds on the log-likelihood ratio Λ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// `A = ln((1−β)/α)`: reject H0 (roll back) when `Λ ≥ A`.
    pub reject: f64,
    /// `B = ln(β/(1−α))`: accept H0 (no regression of the effect size) when `Λ ≤ B`.
    pub accept: f64,
}

impl Bounds {
    /// Wald's bounds for a test with false-rejection rate `alpha` and miss rate `beta`.
    ///
    /// Wald's inequalities give actual rates α' ≤ α/(1−β) and β' ≤ β/(1−α); the overshoot of
    /// discrete steps usually keeps them below α and β (see the simulation in docs/canary.md).
    pub fn wald(alpha: f64, beta: f64) -> Self {
        Bounds {
            reject: ((1.0 - beta) / alpha).ln(),
            accept: (beta / (1.0 - alpha)).ln(),
        }
    }

    /// The bounds the rollout uses: rejection at `A = ln(1/α)` instead of Wald's
    /// `ln((1−β)/α)`, acceptance as Wald's.
    ///
    /// Why: under H0 the likelihood ratio `e^Λ` is a nonnegative martingale (a supermartingale
    /// when the true rate is below H0's), so by Ville's inequality `P(Λ ever ≥ ln(1/α)) ≤ α`
    /// however often it is checked, however long it is carried and whatever the weights do
    /// between ticks. Wald's `A` only bounds the false rejections by `α/(1−β)` (6.25 % at
    /// α = 0.05, β = 0.2). The price is a slightly higher bar: `ln(1/0.025)` = 3.69 against
    /// 3.47, a few errors' worth of evidence.
    pub fn anytime(alpha: f64, beta: f64) -> Self {
        Bounds {
            reject: (1.0 / alpha).ln(),
            ..Self::wald(alpha, beta)
        }
    }
}

/// Where a sequential test stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Between the bounds: more data needed.
    Undecided,
    /// `Λ ≤ B`: the data favour H0 (no regression).
    Accept,
    /// `Λ ≥ A`: the data favour H1 (regression); sticky once reached.
    Reject,
}

impl Verdict {
    /// Classifies Λ against the bounds (`rejected` keeps a past rejection sticky).
    pub(crate) fn of(llr: f64, bounds: Bounds, rejected: bool) -> Self {
        if rejected || llr >= bounds.reject {
            Verdict::Reject
        } else if llr <= bounds.accept {
            Verdict::Accept
        } else {
            Verdict::Undecided
        }
    }
}

/// A test's state as printed each tick and journaled: the statistic, its bounds and the counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestSnapshot {
    /// The log-likelihood ratio Λ.
    pub llr: f64,
    /// The bounds it is compared with.
    pub bounds: Bounds,
    /// Where Λ stands against them.
    pub verdict: Verdict,
    /// Observations the test has used (requests for the guard, errors for the relative test).
    pub observations: u64,
    /// Of those, the ones that push towards H1 (errors for the guard, candidate errors for the
    /// relative test).
    pub hits: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wald_bounds_for_the_usual_rates() {
        let b = Bounds::wald(0.05, 0.2);
        assert!((b.reject - 16f64.ln()).abs() < 1e-12);
        assert!((b.accept - (0.2f64 / 0.95).ln()).abs() < 1e-12);
        assert!(b.accept < 0.0 && b.reject > 0.0);
    }

    #[test]
    fn anytime_bounds_reject_at_one_over_alpha() {
        let b = Bounds::anytime(0.025, 0.2);
        assert!((b.reject - 40f64.ln()).abs() < 1e-12);
        assert_eq!(b.accept, Bounds::wald(0.025, 0.2).accept);
        assert!(b.reject > Bounds::wald(0.025, 0.2).reject);
    }

    #[test]
    fn verdict_classifies_and_keeps_a_rejection() {
        let b = Bounds::wald(0.05, 0.2);
        assert_eq!(Verdict::of(0.0, b, false), Verdict::Undecided);
        assert_eq!(Verdict::of(3.0, b, false), Verdict::Reject);
        assert_eq!(Verdict::of(-2.0, b, false), Verdict::Accept);
        assert_eq!(Verdict::of(-2.0, b, true), Verdict::Reject);
    }
}
