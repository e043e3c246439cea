//! The simulation table of docs/canary.md:
//! `cargo run --release -p canary --example simulate -- --runs 1000 --seed 1`
//!
//! Every row drives the real decision code ([`canary::decide::Rollout`]) to its final decision
//! `--runs` times. The plan is `canary::sim::STANDARD_PLAN` (steps 5/25/50 % against a fresh
//! baseline, objective 0.1 %, α 0.05 for the whole rollout, β 0.2, R 2) at 2000 requests/s with the
//! baseline at 0.1 %, unless the row says otherwise.
use canary::sim::{simulate, Scenario, Summary, STANDARD_PLAN};
use canary::stats::sample_size::fixed_sample_requests;

fn main() {
    let (runs, seed) = args();
    let std_plan = |edit: &[(&str, &str)]| {
        let mut t = STANDARD_PLAN.to_string();
        for (a, b) in edit {
            t = t.replacen(a, b, 1);
        }
        let mut s = Scenario::standard(0.001);
        s.plan = canary::plan::Plan::parse(&t, "sim").expect("valid variant");
        s
    };
    let with = |mut s: Scenario, rate: f64| {
        s.candidate_rate = rate;
        s
    };
    let rows: Vec<(&str, Scenario)> = vec![
        (
            "candidate = baseline = objective (0.1 %)",
            Scenario::standard(0.001),
        ),
        ("candidate healthy (0.05 %)", Scenario::standard(0.0005)),
        ("candidate 1.5× (0.15 %)", Scenario::standard(0.0015)),
        ("candidate 2× = R (0.2 %)", Scenario::standard(0.002)),
        ("candidate 3× (0.3 %)", Scenario::standard(0.003)),
        ("rehearsal abort 5 % (50×)", Scenario::standard(0.05)),
        (
            "2×, stable node as baseline",
            with(
                std_plan(&[("kind = \"fresh\"", "kind = \"stable\"")]),
                0.002,
            ),
        ),
        (
            "2×, one step (50 %), no bake",
            with(
                std_plan(&[("[5, 25, 50]", "[50]"), ("bake = \"2m\"", "bake = \"0s\"")]),
                0.002,
            ),
        ),
        // What the 8k figure assumes: each test at α = 0.05 (so the whole rollout at 2 × 0.05).
        (
            "null, each test at 0.05 (rollout α 0.1)",
            with(std_plan(&[("alpha = 0.05", "alpha = 0.1")]), 0.001),
        ),
        (
            "2×, each test at 0.05 (rollout α 0.1)",
            with(std_plan(&[("alpha = 0.05", "alpha = 0.1")]), 0.002),
        ),
    ];
    println!("runs per row: {runs}, seed {seed}\n");
    println!("| scenario | α per test | promoted | rolled back (guard / relative) | held | median cand. requests to reject | fixed-sample n at α | ratio | fixed-sample n at α per test | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, (name, s)) in rows.iter().enumerate() {
        let sum = simulate(s, runs, seed.wrapping_add(i as u64));
        row(name, s, &sum);
    }
}

fn row(name: &str, s: &Scenario, sum: &Summary) {
    let p = &s.plan;
    let a_t = p.alpha_per_test();
    let pct = |n: usize| format!("{:.1} %", 100.0 * n as f64 / sum.runs as f64);
    let (mut fixed, mut fixed_t, mut ratio, mut ratio_t) =
        ("-".into(), "-".into(), "-".into(), "-".into());
    let median = sum
        .median_requests_to_reject
        .map_or("-".to_string(), |m| m.to_string());
    if let Some(m) = sum.median_requests_to_reject {
        // The fixed-sample yardstick at the true ratio of candidate to objective.
        let r = s.candidate_rate / p.slo.error_rate;
        // (Not beyond 10×: the normal approximation is poor there, and one tick is already more.)
        if r > 1.0 && r <= 10.0 {
            let n = fixed_sample_requests(p.slo.error_rate, r, p.test.alpha, p.test.beta);
            let nt = fixed_sample_requests(p.slo.error_rate, r, a_t, p.test.beta);
            fixed = format!("{n:.0}");
            fixed_t = format!("{nt:.0}");
            ratio = format!("{:.2}", m as f64 / n);
            ratio_t = format!("{:.2}", m as f64 / nt);
        }
    }
    println!(
        "| {name} | {a_t:.4} | {} | {} ({} / {}) | {} | {median} | {fixed} | {ratio} | {fixed_t} | {ratio_t} |",
        pct(sum.promoted),
        pct(sum.guard + sum.relative),
        sum.guard,
        sum.relative,
        pct(sum.held),
    );
}

fn args() -> (usize, u64) {
    let (mut runs, mut seed) = (1000, 1);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--runs" => runs = v.parse().expect("--runs N"),
            "--seed" => seed = v.parse().expect("--seed N"),
            _ => {
                eprintln!("usage: simulate [--runs N] [--seed N]");
                std::process::exit(64);
            }
        }
    }
    (runs, seed)
}
