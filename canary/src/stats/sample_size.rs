//! What a fixed-sample test would need: the yardstick for the sequential tests.
//!
//! A one-sided, one-sample test of the candidate's error rate against a known rate `p0` (H1:
//! `p1 = R·p0`) at level α and power 1−β needs, in the normal approximation,
//!
//! ```text
//! n = (z_{1−α}·√(p0(1−p0)) + z_{1−β}·√(p1(1−p1)))² / (p1 − p0)²
//! ```
//!
//! requests: ≈ 8 000 at p0 = 0.1 %, R = 2, α = 0.05, β = 0.2 (reference anchors §4.5, "how many
//! requests?"). A sequential test looks at the data as it arrives and should stop near or below
//! that on average; docs/canary.md compares the two with the simulation.

/// Requests a fixed-sample one-sided test needs (see the module docs). Not rounded.
pub fn fixed_sample_requests(p0: f64, ratio: f64, alpha: f64, beta: f64) -> f64 {
    let p1 = ratio * p0;
    let za = normal_quantile(1.0 - alpha);
    let zb = normal_quantile(1.0 - beta);
    let num = za * (p0 * (1.0 - p0)).sqrt() + zb * (p1 * (1.0 - p1)).sqrt();
    (num / (p1 - p0)).powi(2)
}

/// The standard normal quantile `Φ⁻¹(p)` for 0 < p < 1 (±∞ at the ends, NaN outside).
///
/// Written here rather than pulled in as a crate because it is twenty lines: Peter Acklam's rational
/// approximation (relative error < 1.15e-9 over the whole range), central region and tails.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.95, 1.644_853_626_951_472_2),
            (0.8, 0.841_621_233_572_914_3),
            (0.975, 1.959_963_984_540_054),
            (0.01, -2.326_347_874_040_841),
            (1e-6, -4.753_424_308_822_899),
        ] {
            let got = normal_quantile(p);
            assert!(
                (got - z).abs() < 1e-8 * z.abs().max(1.0),
                "p={p}: {got} vs {z}"
            );
        }
        assert!((normal_quantile(0.3) + normal_quantile(0.7)).abs() < 1e-12);
        assert!(normal_quantile(1.5).is_nan());
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
    }

    #[test]
    fn about_eight_thousand_requests_for_2x_at_a_tenth_of_a_percent() {
        let n = fixed_sample_requests(0.001, 2.0, 0.05, 0.2);
        assert!((8000.0..8060.0).contains(&n), "{n}");
        // Anchors §4.5: expected errors e0 = n·p0 ≈ (z_{1−α} + z_{1−β}√R)²/(R−1)² → 2.4 at R = 3.
        let e0 = fixed_sample_requests(0.001, 3.0, 0.05, 0.2) * 0.001;
        assert!((2.3..2.5).contains(&e0), "{e0}");
    }
}
