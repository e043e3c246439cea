//! `--dry-run`: the plan, nothing sent.

use super::*;

/// The dry run: what would be done, nothing done.
pub(super) fn print_plan(exp: &Experiment, ctx: &Ctx, next: Option<SystemTime>) {
    println!("experiment: {} ({})", exp.title, exp.source);
    println!(
        "seed {} · hard maximum {} · injected faults expire after at most {}",
        exp.runtime.seed,
        humantime::format_duration(exp.runtime.max_duration),
        humantime::format_duration(exp.runtime.max_duration + exp.runtime.ttl_margin)
    );
    if let Some(t) = next {
        println!("schedule: next allowed start {}", rfc3339(t));
    }
    let h = exp.runtime.hypothesis;
    println!(
        "steady state (before: {}, during: {}, after: {}):",
        h.before, h.during, h.after
    );
    for p in &exp.steady_state {
        println!(
            "  - {} [{}] tolerance {}",
            p.name,
            p.kind.type_name(),
            p.tolerance.describe()
        );
    }
    for l in &exp.loads {
        println!(
            "load {}: {} req/s over {} URL(s)",
            l.name,
            l.rate,
            l.urls.len()
        );
    }
    println!(
        "method ({} in the foreground):",
        humantime::format_duration(exp.planned_method())
    );
    for (i, a) in exp.method.iter().enumerate() {
        let mut extra = String::new();
        if let Some(d) = a.duration {
            extra.push_str(&format!(" for {}", humantime::format_duration(d)));
        }
        if a.background {
            extra.push_str(" in the background");
        }
        println!("  {}. {}: {}{extra}", i + 1, a.name, ctx.describe(a));
    }
    println!("rollbacks ({:?}):", exp.runtime.rollbacks);
    println!("  - remove everything still injected");
    for a in &exp.rollbacks {
        println!("  - {}: {}", a.name, ctx.describe(a));
    }
    for a in &exp.aborts {
        println!(
            "abort if {} [{}] is outside {} for {}",
            a.name,
            a.probe.kind.type_name(),
            a.probe.tolerance.describe(),
            humantime::format_duration(a.for_)
        );
    }
    println!("dry run: nothing was sent to the cluster");
}
