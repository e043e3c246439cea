//! The latency check: candidate p99 over baseline p99, from histogram buckets.
//!
//! The sidecar exports a latency histogram per subset (Prometheus-style buckets); the controller
//! takes per-tick differences and the decision sums them over the step. A ratio of two p99s taken
//! over the same window and the same traffic mix is what makes the comparison fair: absolute
//! latency moves with load and time of day, both arms see the same.
use serde::{Deserialize, Serialize};

/// Fewest observations in an arm before its p99 is taken to mean anything (1 % of 100 is one).
pub const MIN_SAMPLES: u64 = 100;

/// Latency observations in buckets: `counts[i]` observations fell in `(bounds[i-1], bounds[i]]`
/// (seconds; the first bucket starts at 0), and the last count (`counts[bounds.len()]`) is the
/// `+Inf` bucket. Counts are per bucket, not cumulative (see [`Histogram::from_cumulative`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Upper bounds in seconds, strictly increasing.
    pub bounds: Vec<f64>,
    /// Observations per bucket; one more entry than `bounds` (the `+Inf` bucket).
    pub counts: Vec<u64>,
}

impl Histogram {
    /// An empty histogram over these bucket bounds.
    pub fn empty(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
        }
    }

    /// From Prometheus' cumulative `le` buckets (the last being `+Inf`, i.e. the total).
    pub fn from_cumulative(bounds: &[f64], cumulative: &[u64]) -> Self {
        let mut prev = 0;
        let counts = cumulative
            .iter()
            .map(|&c| {
                let d = c.saturating_sub(prev);
                prev = prev.max(c);
                d
            })
            .collect();
        Histogram {
            bounds: bounds.to_vec(),
            counts,
        }
    }

    /// Observations in all buckets.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another histogram's counts. Different bucket layouts cannot be added; the other one
    /// is then taken as is if this one is empty and otherwise ignored (the controller uses one
    /// layout per sidecar, so this only guards against a reload changing it mid-step).
    pub fn add(&mut self, other: &Histogram) {
        if self.bounds == other.bounds && self.counts.len() == other.counts.len() {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
        } else if self.total() == 0 {
            *self = other.clone();
        }
    }

    /// The `q` quantile (0 < q < 1), interpolated linearly inside its bucket the way Prometheus'
    /// `histogram_quantile` does. A quantile in the `+Inf` bucket is reported as the last finite
    /// bound (a lower bound of the truth). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 || self.counts.len() != self.bounds.len() + 1 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&hi) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                return Some(lo + (hi - lo) * (rank - below as f64) / c as f64);
            }
            below += c;
        }
        self.bounds.last().copied()
    }
}

/// The p99 of each arm and their ratio, when both arms have [`MIN_SAMPLES`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct P99Ratio {
    /// Candidate p99, seconds.
    pub candidate: f64,
    /// Baseline p99, seconds.
    pub baseline: f64,
    /// `candidate / baseline` (infinite if the baseline's p99 is 0).
    pub ratio: f64,
}

/// Candidate p99 / baseline p99, or `None` while either arm has fewer than [`MIN_SAMPLES`].
pub fn p99_ratio(candidate: &Histogram, baseline: &Histogram) -> Option<P99Ratio> {
    if candidate.total() < MIN_SAMPLES || baseline.total() < MIN_SAMPLES {
        return None;
    }
    let (c, b) = (candidate.quantile(0.99)?, baseline.quantile(0.99)?);
    let ratio = if b > 0.0 { c / b } else { f64::INFINITY };
    Some(P99Ratio {
        candidate: c,
        baseline: b,
        ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: [f64; 4] = [0.005, 0.01, 0.05, 0.1];

    fn h(counts: [u64; 5]) -> Histogram {
        Histogram {
            bounds: B.to_vec(),
            counts: counts.to_vec(),
        }
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        // 1000 observations, rank 990 falls in (0.01, 0.05] holding ranks 981..=1000.
        let x = h([900, 80, 20, 0, 0]);
        let q = x.quantile(0.99).unwrap();
        assert!((q - (0.01 + 0.04 * 10.0 / 20.0)).abs() < 1e-12, "{q}");
    }

    #[test]
    fn quantile_in_inf_bucket_is_the_last_bound_and_empty_is_none() {
        assert_eq!(h([0, 0, 0, 0, 10]).quantile(0.99), Some(0.1));
        assert_eq!(h([0; 5]).quantile(0.99), None);
    }

    #[test]
    fn ratio_needs_enough_samples_and_compares_p99s() {
        let base = h([990, 10, 0, 0, 0]);
        let slow = h([900, 0, 100, 0, 0]);
        assert!(p99_ratio(&h([50, 0, 0, 0, 0]), &base).is_none());
        let r = p99_ratio(&slow, &base).unwrap();
        assert!(r.ratio > 4.0, "{r:?}");
        assert!((p99_ratio(&base, &base).unwrap().ratio - 1.0).abs() < 1e-12);
    }

    #[test]
    fn from_cumulative_and_add() {
        let x = Histogram::from_cumulative(&B, &[900, 980, 1000, 1000, 1000]);
        assert_eq!(x, h([900, 80, 20, 0, 0]));
        let mut y = Histogram::empty(&B);
        y.add(&x);
        y.add(&x);
        assert_eq!(y.total(), 2000);
        let mut other = Histogram::empty(&[1.0]);
        other.add(&x);
        assert_eq!(other, x);
    }
}
