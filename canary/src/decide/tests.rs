//! The decision state machine with explicit time (no clocks: `now` is an input).
use super::*;

const PLAN: &str = r#"name = "t"
[[target]]
node = "node3"
admin = "127.0.0.13:9901"
listeners = ["rpc"]
[[target]]
node = "node2"
admin = "127.0.0.12:9901"
listeners = ["rpc"]
[candidate]
binary = "c"
[baseline]
kind = "fresh"
[steps]
weights = [5, 50]
min_time = "1m"
max_time = "5m"
min_requests = 2000
tick = "10s"
[slo]
error_rate = 0.001
p99_ratio = 1.5
[test]
alpha = 0.05
beta = 0.2
effect = 2.0
[inconclusive]
hold = "2m"
[promotion]
scope = "one"
bake = "1m"
[split]
ttl = "30s"
"#;

fn plan(edit: &[(&str, &str)]) -> Plan {
    let mut text = PLAN.to_string();
    for (a, b) in edit {
        assert!(text.contains(a), "{a}");
        text = text.replacen(a, b, 1);
    }
    Plan::parse(&text, "t.toml").unwrap()
}

const BOUNDS: [f64; 2] = [0.01, 0.1];

/// An arm's tick: `requests` with `errors` 5xx, latency all in the first bucket (or the second
/// when `slow`).
fn arm(requests: u64, errors: u64, slow: bool) -> ArmSample {
    let mut latency = Histogram::empty(&BOUNDS);
    latency.counts[usize::from(slow)] = requests;
    ArmSample {
        counts: ArmCounts {
            requests,
            errors_5xx: errors,
            ..ArmCounts::default()
        },
        latency,
    }
}

fn input(now: u64, c: (u64, u64), b: (u64, u64)) -> TickInput {
    TickInput {
        now: Duration::from_secs(now),
        candidate: arm(c.0, c.1, false),
        baseline: arm(b.0, b.1, false),
        process: ProcessState::Running,
        commands: Vec::new(),
    }
}

/// Ticks every 10 s from `from` (exclusive) to `to` with the same counts; returns the last report.
fn run(r: &mut Rollout, from: u64, to: u64, c: (u64, u64), b: (u64, u64)) -> TickReport {
    let mut last = None;
    let mut t = from + 10;
    while t <= to {
        let rep = r.tick(&input(t, c, b));
        let end = !matches!(
            rep.decision,
            Decision::Continue { .. } | Decision::Inconclusive { .. }
        );
        last = Some(rep);
        if end {
            break;
        }
        t += 10;
    }
    last.unwrap()
}

#[test]
fn a_clean_build_goes_through_every_step_and_bakes() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    // 500 candidate requests per tick, no errors: guard accepts at ~1.6k, min requests at 2000
    // (tick 4, 40 s), min time at 60 s.
    let rep = run(&mut r, 0, 600, (500, 0), (500, 0));
    assert_eq!(
        rep.decision,
        Decision::NextStep {
            index: 1,
            weight: 50
        }
    );
    assert_eq!(rep.now, Duration::from_secs(60), "{rep}");
    let rep = run(&mut r, 60, 600, (500, 0), (500, 0));
    assert_eq!(rep.decision, Decision::Promote { node: 0 });
    assert_eq!(r.phase(), Phase::Bake { node: 0 });
    let rep = run(&mut r, 120, 600, (1000, 0), (0, 0));
    assert_eq!(rep.decision, Decision::Promoted, "{rep}");
    assert_eq!(rep.now, Duration::from_secs(180));
    assert_eq!(rep.decision.outcome().map(Outcome::exit_code), Some(0));
    // Finished: further ticks repeat the verdict and change nothing.
    let again = r.tick(&input(190, (5, 5), (5, 0)));
    assert_eq!(again.decision, Decision::Promoted);
}

#[test]
fn scope_all_promotes_one_node_at_a_time() {
    let mut r = Rollout::new(
        &plan(&[("scope = \"one\"", "scope = \"all\"")]),
        Duration::ZERO,
    );
    run(&mut r, 0, 60, (500, 0), (500, 0));
    run(&mut r, 60, 120, (500, 0), (500, 0));
    let rep = run(&mut r, 120, 180, (1000, 0), (0, 0));
    assert_eq!(rep.decision, Decision::Promote { node: 1 });
    let rep = run(&mut r, 180, 240, (1000, 0), (0, 0));
    assert_eq!(rep.decision, Decision::Promoted);
}

#[test]
fn holds_until_min_requests_and_min_time_and_says_why() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let rep = r.tick(&input(10, (500, 0), (500, 0)));
    let Decision::Continue { why } = &rep.decision else {
        panic!("{rep}")
    };
    assert!(
        why.contains("requests 500/2000") && why.contains("time 10s/1m"),
        "{why}"
    );
    assert!(why.contains("guard"), "{why}");
    // Lots of traffic: requests and guard done at once, time still short.
    let rep = r.tick(&input(20, (5000, 0), (5000, 0)));
    let Decision::Continue { why } = &rep.decision else {
        panic!("{rep}")
    };
    assert_eq!(why, "time 20s/1m");
}

#[test]
fn critical_rolls_back_at_once_without_statistics() {
    for (process, what) in [
        (
            ProcessState::Exited { code: Some(101) },
            "exited with code 101",
        ),
        (ProcessState::Exited { code: None }, "signal"),
        (ProcessState::Restarted { restarts: 1 }, "restarted"),
    ] {
        let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
        let mut i = input(10, (3, 0), (3, 0));
        i.process = process;
        let rep = r.tick(&i);
        let Decision::Rollback {
            reason: RollbackReason::Critical { what: w },
        } = &rep.decision
        else {
            panic!("{rep}")
        };
        assert!(w.contains(what), "{w}");
        assert_eq!(rep.decision.outcome(), Some(Outcome::RolledBack));
    }
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let mut i = input(10, (100, 0), (100, 0));
    i.candidate.counts.local_errors = 1;
    let rep = r.tick(&i);
    assert!(matches!(
        rep.decision,
        Decision::Rollback {
            reason: RollbackReason::Critical { .. }
        }
    ));
    assert_eq!(rep.candidate.errors, 1);
}

#[test]
fn a_failing_candidate_is_rolled_back_even_when_the_baseline_has_no_errors() {
    // kayenta#377: 1 % errors on the candidate (10× the objective), none on the baseline.
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let rep = run(&mut r, 0, 600, (500, 5), (500, 0));
    assert_eq!(
        rep.decision,
        Decision::Rollback {
            reason: RollbackReason::Guard
        },
        "{rep}"
    );
    assert!(rep.candidate.requests <= 1000, "{rep}");
    assert!(rep.guard.llr >= rep.guard.bounds.reject);
}

#[test]
fn worse_than_the_baseline_inside_the_slo_is_caught_by_the_relative_test() {
    // Objective 5 %: the candidate's 0.5 % is far inside it, but it is 10× the baseline's 0.05 %.
    let mut r = Rollout::new(
        &plan(&[("error_rate = 0.001", "error_rate = 0.05")]),
        Duration::ZERO,
    );
    let rep = run(&mut r, 0, 60, (2000, 10), (2000, 1));
    assert_eq!(
        rep.decision,
        Decision::Rollback {
            reason: RollbackReason::Relative
        },
        "{rep}"
    );
    let rel = rep.relative.unwrap();
    assert!(rel.llr >= rel.bounds.reject);
}

#[test]
fn retried_errors_count_per_attempt() {
    // The controller reports attempts; a 502 that a retry papered over is still in errors_5xx and
    // timeouts count too: 1 % of attempts failing rolls back.
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let mut i = input(10, (1000, 5), (1000, 0));
    i.candidate.counts.timeouts = 5;
    let rep = r.tick(&i);
    assert_eq!(rep.candidate.errors, 10);
    assert_eq!(
        rep.decision,
        Decision::Rollback {
            reason: RollbackReason::Guard
        },
        "{rep}"
    );
}

#[test]
fn a_slow_candidate_holds_the_step() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let mut i = input(120, (5000, 0), (5000, 0));
    i.candidate = arm(5000, 0, true);
    let rep = r.tick(&i);
    let Decision::Continue { why } = &rep.decision else {
        panic!("{rep}")
    };
    assert!(why.starts_with("p99 ratio 10.01 > 1.50"), "{why}");
}

#[test]
fn low_traffic_is_inconclusive_then_rolls_back_and_never_promotes() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    // 1 request per tick: never 2000 within 5 min.
    let rep = run(&mut r, 0, 300, (1, 0), (1, 0));
    assert_eq!(rep.now, Duration::from_secs(300));
    let Decision::Inconclusive { why, rollback_at } = &rep.decision else {
        panic!("{rep}")
    };
    assert!(why.contains("requests 30/2000"), "{why}");
    assert_eq!(*rollback_at, Duration::from_secs(420));
    let rep = run(&mut r, 300, 1000, (1, 0), (1, 0));
    assert_eq!(
        rep.decision,
        Decision::Rollback {
            reason: RollbackReason::HoldTimeout
        }
    );
    assert_eq!(rep.now, Duration::from_secs(420));
    assert_eq!(rep.decision.outcome().unwrap().exit_code(), 2);
}

#[test]
fn a_human_resume_sticks() {
    // argo-rollouts#2866: after "resume" the next tick must not find the same step past its
    // deadline and pause again.
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let rep = run(&mut r, 0, 300, (1, 0), (1, 0));
    assert!(matches!(rep.decision, Decision::Inconclusive { .. }));
    let mut i = input(330, (1, 0), (1, 0));
    i.commands.push(Command::Resume);
    let rep = r.tick(&i);
    assert!(matches!(rep.decision, Decision::Continue { .. }), "{rep}");
    assert!(rep.notes[0].starts_with("operator: resume"), "{rep}");
    // Past the old deadline and the old hold's end: still continuing, until now + max_time.
    let rep = run(&mut r, 330, 620, (1, 0), (1, 0));
    assert!(matches!(rep.decision, Decision::Continue { .. }), "{rep}");
    let rep = r.tick(&input(630, (1, 0), (1, 0)));
    let Decision::Inconclusive { rollback_at, .. } = rep.decision else {
        panic!("{rep}")
    };
    assert_eq!(rollback_at, Duration::from_secs(750));
    // And traffic arriving during the new window lets the step pass on evidence.
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    run(&mut r, 0, 300, (1, 0), (1, 0));
    let mut i = input(310, (1, 0), (1, 0));
    i.commands.push(Command::Resume);
    r.tick(&i);
    let rep = r.tick(&input(320, (3000, 0), (3000, 0)));
    assert_eq!(
        rep.decision,
        Decision::NextStep {
            index: 1,
            weight: 50
        },
        "{rep}"
    );
}

#[test]
fn operator_promote_passes_a_phase_and_abort_rolls_back() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let mut i = input(10, (10, 0), (10, 0));
    i.commands.push(Command::Promote);
    assert_eq!(
        r.tick(&i).decision,
        Decision::NextStep {
            index: 1,
            weight: 50
        }
    );
    let mut i = input(20, (10, 0), (10, 0));
    i.commands = vec![Command::Promote, Command::Abort];
    let rep = r.tick(&i);
    assert_eq!(
        rep.decision,
        Decision::Rollback {
            reason: RollbackReason::Aborted
        }
    );
    assert_eq!(rep.decision.outcome().unwrap().exit_code(), 3);
    // A statistical rejection wins over a promote in the same tick.
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let mut i = input(10, (1000, 50), (1000, 0));
    i.commands.push(Command::Promote);
    assert_eq!(
        r.tick(&i).decision,
        Decision::Rollback {
            reason: RollbackReason::Guard
        }
    );
}

#[test]
fn interrupt_and_resume_outside_a_hold() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let mut i = input(10, (10, 0), (10, 0));
    i.commands.push(Command::Resume);
    assert_eq!(r.tick(&i).notes, ["operator: resume ignored (not holding)"]);
    let rep = r.interrupt(Duration::from_secs(15));
    assert_eq!(rep.decision.outcome().unwrap().exit_code(), 4);
    assert!(r.finished().is_some());
}

#[test]
fn the_report_prints_and_serializes_every_number() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    let rep = r.tick(&input(10, (500, 1), (480, 2)));
    let line = rep.to_string();
    for want in [
        "tick 1",
        "step 1/2 w=5%",
        "cand 500 req 1 err",
        "base 480 req 2 err",
        "guard Λ=",
        "rel Λ=",
        "continue (",
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["candidate"]["requests"], 500);
    assert_eq!(json["decision"]["decision"], "continue");
    assert!(json["guard"]["bounds"]["reject"].as_f64().unwrap() > 0.0);
    assert_eq!(json["relative"]["observations"], 3);
}

#[test]
fn the_guard_is_carried_across_steps_but_each_step_accepts_on_its_own_data() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    // Step 1 clean: 3000 requests (6 ticks), Λ ≈ −3.
    let rep = run(&mut r, 0, 600, (500, 0), (500, 0));
    assert_eq!(rep.now, Duration::from_secs(60), "{rep}");
    let carried = rep.guard.llr;
    assert!(carried < -2.9, "{rep}");
    // Step 2 at 0.4 % (4× the objective, the baseline alike so only the guard can see it): the
    // whole-run Λ is still below B for a while, but the step's own ΔΛ is positive, so the 5 %
    // evidence does not pass the 50 % step.
    let rep = run(&mut r, 60, 120, (500, 2), (500, 2));
    let Decision::Continue { why } = &rep.decision else {
        panic!("{rep}")
    };
    assert!(why.contains("this step's ΔΛ"), "{why}");
    assert!(rep.guard_step_llr > 0.0, "{rep}");
    assert!((rep.guard.llr - carried - rep.guard_step_llr).abs() < 1e-9);
    // Not reset: the guard has seen every candidate request of the run.
    assert_eq!(rep.guard.observations, 3000 + rep.candidate.requests);
    // The rejection boundary is carried: it rolls back once the run's Λ reaches A.
    let rep = run(&mut r, 120, 600, (500, 2), (500, 2));
    assert_eq!(
        rep.decision,
        Decision::Rollback {
            reason: RollbackReason::Guard
        },
        "{rep}"
    );
    assert!(rep.guard.llr >= rep.guard.bounds.reject);
}

#[test]
fn the_bake_continues_the_same_guard() {
    let mut r = Rollout::new(&plan(&[]), Duration::ZERO);
    run(&mut r, 0, 60, (500, 0), (500, 0));
    let rep = run(&mut r, 60, 120, (500, 0), (500, 0));
    assert_eq!(rep.decision, Decision::Promote { node: 0 });
    // Baking: the steps' 6000 requests are still in the guard, plus the bake's own.
    let rep = r.tick(&input(130, (1000, 3), (0, 0)));
    assert_eq!(r.phase(), Phase::Bake { node: 0 });
    assert_eq!(rep.guard.observations, 7000, "{rep}");
    assert!(rep.relative.is_none());
}
