//! One run of an experiment:
//!
//! 1. schedule gate (wait for the next allowed start);
//! 2. sampler and background load start; warm-up until the metric windows are full;
//! 3. steady state **before**: not met ⇒ stop here, nothing injected (exit 2);
//! 4. the **method**, step by step, while a guard task checks the hypothesis (**during**) and the
//!    abort conditions at `hypothesis_interval`; an abort, SIGINT/SIGTERM or the hard maximum
//!    duration stop the method at once;
//! 5. settle, then steady state **after**;
//! 6. **rollbacks** (per strategy; always after an abort or a signal): everything still injected is
//!    removed, then the `[[rollback]]` actions run;
//! 7. journal and report, whatever happened before.

use crate::action::{wall, Ctx};
use crate::journal::*;
use crate::model::*;
use crate::probe::{run_all, ProbeResult};
use crate::progress::Progress;
use crate::prom::Sampler;
use crate::{report, Verdict};
use rand::SeedableRng;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub struct Options {
    pub dry_run: bool,
    pub journal: PathBuf,
    pub report: PathBuf,
    pub quiet: bool,
    pub ignore_schedule: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("cannot set up the run: {0}")]
    Setup(String),
    #[error("{0}")]
    Schedule(String),
}

/// How the method ended.
enum End {
    Completed,
    FailFast,
    ActionFailed(String),
    Aborted(AbortRecord),
    Interrupted(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Sig = watch::Receiver<Option<String>>;

/// Runs `f` unless a signal arrives first.
async fn unless_signalled<F: Future>(sig: &mut Sig, f: F) -> Result<F::Output, String> {
    if let Some(s) = sig.borrow().clone() {
        return Err(s);
    }
    tokio::select! {
        v = f => Ok(v),
        _ = sig.changed() => Err(sig.borrow().clone().unwrap_or_else(|| "signal".into())),
    }
}

fn listen_for_signals() -> Result<Sig, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            // Only the first one counts; rollbacks are bounded and always finish.
            if tx.borrow().is_none() {
                tx.send_replace(Some(name.to_string()));
            }
        }
    });
    Ok(rx)
}

fn check_of(at_s: f64, probes: Vec<ProbeResult>) -> Check {
    Check {
        at_s,
        met: probes.iter().all(|p| p.tolerance_met),
        probes,
    }
}

fn metric_queries(exp: &Experiment) -> Vec<&MetricQuery> {
    exp.steady_state
        .iter()
        .chain(exp.aborts.iter().map(|a| &a.probe))
        .filter_map(|p| match &p.kind {
            ProbeKind::Metric(q) => Some(q),
            _ => None,
        })
        .collect()
}

fn record(
    ctx: &Ctx,
    t0_wall: SystemTime,
    act: &Activity,
    start_s: f64,
    o: &crate::action::Outcome,
) -> ActivityRecord {
    let end_s = ctx.now_s();
    ActivityRecord {
        activity: act.name.clone(),
        type_: act.kind.type_name().to_string(),
        status: if o.ok { "succeeded" } else { "failed" }.into(),
        background: act.background,
        start: wall(t0_wall, start_s),
        end: wall(t0_wall, end_s),
        start_s,
        duration_s: end_s - start_s,
        output: o.output.clone(),
        error: o.error.clone(),
        tolerance_met: o.tolerance_met,
    }
}

/// Runs one activity: pause, action, duration (then removal of what it injected), pause. The
/// record is pushed before the duration starts, so an interrupted step is still in the journal.
async fn step(
    ctx: Arc<Ctx>,
    act: Activity,
    t0_wall: SystemTime,
    records: Arc<Mutex<Vec<ActivityRecord>>>,
) -> Result<(), String> {
    tokio::time::sleep(act.pause_before).await;
    let start_s = ctx.now_s();
    let o = ctx.perform(&act).await;
    let mut rec = record(&ctx, t0_wall, &act, start_s, &o);
    let failed = (!o.ok).then(|| {
        format!(
            "{} ({}): {}",
            act.name,
            act.kind.type_name(),
            o.error.clone().unwrap_or_default()
        )
    });
    let idx = {
        let mut r = lock(&records);
        if act.duration.is_some() && o.ok {
            rec.status = "running".into();
        }
        r.push(rec);
        r.len() - 1
    };
    if let Some(e) = failed {
        // Whatever it managed to inject is in the ledger; the rollbacks remove it.
        return Err(e);
    }
    if let Some(d) = act.duration {
        tokio::time::sleep(d).await;
        let (_, errors) = ctx.undo(Some(&o.keys)).await;
        let end_s = ctx.now_s();
        let mut r = lock(&records);
        let rec = &mut r[idx];
        rec.status = if errors.is_empty() {
            "succeeded"
        } else {
            "failed"
        }
        .into();
        rec.end = wall(t0_wall, end_s);
        rec.duration_s = end_s - rec.start_s;
        if !errors.is_empty() {
            rec.error = Some(errors.join("; "));
        }
    }
    tokio::time::sleep(act.pause_after).await;
    Ok(())
}

/// The guard: every `hypothesis_interval`, the hypothesis (if checked during the method) and the
/// abort conditions. Sends the reason to stop, if any.
async fn guard(
    ctx: Arc<Ctx>,
    progress: Arc<Progress>,
    during: Arc<Mutex<Vec<Check>>>,
    stop: mpsc::Sender<End>,
) {
    let exp = ctx.exp.clone();
    let interval = exp.runtime.hypothesis_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut violated_since: Vec<Option<f64>> = vec![None; exp.aborts.len()];
    let mut reported = false;
    loop {
        tick.tick().await;
        if exp.runtime.hypothesis.during && !exp.steady_state.is_empty() {
            let results = run_all(&exp.steady_state, &ctx).await;
            progress.probes("during", &results);
            let c = check_of(ctx.now_s(), results);
            let met = c.met;
            lock(&during).push(c);
            if !met {
                if !reported {
                    progress.say("hypothesis deviated during the method");
                    reported = true;
                }
                if exp.runtime.fail_fast {
                    let _ = stop.send(End::FailFast).await;
                    return;
                }
            }
        }
        let probes: Vec<Probe> = exp.aborts.iter().map(|a| a.probe.clone()).collect();
        let results = run_all(&probes, &ctx).await;
        let now = ctx.now_s();
        for (i, (a, r)) in exp.aborts.iter().zip(results).enumerate() {
            if r.tolerance_met {
                violated_since[i] = None;
                continue;
            }
            let since = *violated_since[i].get_or_insert(now);
            if now - since >= a.for_.as_secs_f64() {
                let reason = format!(
                    "abort condition {:?}: {} = {} outside {} for {:.1}s",
                    a.name,
                    r.name,
                    r.value,
                    r.tolerance,
                    now - since
                );
                let _ = stop
                    .send(End::Aborted(AbortRecord {
                        name: a.name.clone(),
                        reason,
                        at_s: now,
                        probe: Some(r),
                    }))
                    .await;
                return;
            }
        }
    }
}

/// The dry run: what would be done, nothing done.
fn print_plan(exp: &Experiment, ctx: &Ctx, next: Option<SystemTime>) {
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

pub async fn run(exp: Experiment, opts: Options) -> Result<Verdict, RunError> {
    let exp = Arc::new(exp);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let queries = metric_queries(&exp);
    let longest = queries
        .iter()
        .map(|q| q.window)
        .max()
        .unwrap_or(Duration::from_secs(5));
    let values: BTreeSet<String> = queries
        .iter()
        .filter_map(|q| match &q.stat {
            Stat::Value { series } => Some(series.clone()),
            _ => None,
        })
        .collect();
    let chart_labels = queries
        .iter()
        .find(|q| q.stat == Stat::ErrorRatio)
        .map(|q| q.labels.clone())
        .unwrap_or_default();
    let sampled: Vec<(String, String)> = exp
        .hosts
        .values()
        .filter_map(|h| Some((h.name.clone(), h.admin.clone()?)))
        .collect();
    // Everything that depends on the run's clock is made when the run starts (after the schedule).
    let make = |t0: Instant, run_id: String| {
        let sampler = Arc::new(Sampler::new(
            sampled.clone(),
            exp.runtime.sample_interval,
            longest,
            values.clone(),
            chart_labels.clone(),
            t0,
        ));
        let rng = rand::rngs::StdRng::seed_from_u64(exp.runtime.seed);
        let ctx = Arc::new(Ctx::new(
            exp.clone(),
            http.clone(),
            run_id,
            rng,
            sampler.clone(),
            t0,
        ));
        (sampler, ctx)
    };
    let run_id_now = || {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("chaos-{ms}")
    };

    // Schedule gate.
    let mut schedule_decision = None;
    let mut next_start = None;
    if let Some(s) = &exp.schedule {
        let next = s
            .next_start(SystemTime::now(), exp.runtime.max_duration)
            .map_err(RunError::Schedule)?;
        next_start = Some(next);
        schedule_decision = Some(ScheduleDecision {
            planned_start: rfc3339(next),
            waited_s: 0.0,
            ignored: opts.ignore_schedule,
        });
    }
    if opts.dry_run {
        let (_, ctx) = make(Instant::now(), run_id_now());
        print_plan(&exp, &ctx, next_start);
        return Ok(Verdict::DryRun);
    }
    let mut sig = listen_for_signals().map_err(RunError::Setup)?;
    let progress = Arc::new(Progress::new(
        opts.quiet,
        exp.planned_method() + exp.runtime.settle + longest,
    ));
    for w in &opts.warnings {
        progress.say(format!("warning: {w}"));
    }
    let mut steady = SteadyStates::default();
    let mut end: Option<End> = None;
    let mut not_started = false;

    if let (Some(next), false) = (next_start, opts.ignore_schedule) {
        let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() {
            progress.step(format!(
                "waiting for the scheduled start {} ({})",
                rfc3339(next),
                humantime::format_duration(Duration::from_secs(wait.as_secs()))
            ));
            if let Err(s) = unless_signalled(&mut sig, tokio::time::sleep(wait)).await {
                end = Some(End::Interrupted(s));
            }
            if let Some(d) = schedule_decision.as_mut() {
                d.waited_s = wait.as_secs_f64();
            }
        }
    }
    // The run's clock starts now: the hard maximum and the timeline count from here.
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let run_id = run_id_now();
    let (sampler, ctx) = make(t0, run_id.clone());
    progress.say(format!(
        "experiment {:?} (run {run_id}, seed {})",
        exp.title, exp.runtime.seed
    ));

    // Sampler and load.
    let sampler_task = {
        let s = sampler.clone();
        let http = http.clone();
        let every = exp.runtime.sample_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                s.scrape(&http).await;
            }
        })
    };
    let loads: Vec<_> = if end.is_none() {
        exp.loads
            .iter()
            .map(|l| crate::load::start(l, http.clone(), exp.runtime.seed))
            .collect()
    } else {
        Vec::new()
    };

    // Warm-up: metric windows full before the first check.
    if end.is_none() && !queries.is_empty() && sampler.has_hosts() {
        let need = longest.as_secs_f64();
        progress.step(format!("warming up: filling the {}s metric window", need));
        let limit = longest + exp.runtime.sample_interval * 5;
        let wait = async {
            let until = Instant::now() + limit;
            while sampler.covered() + 1e-6 < need && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if let Err(s) = unless_signalled(&mut sig, wait).await {
            end = Some(End::Interrupted(s));
        }
    }

    // Before.
    if end.is_none() && exp.runtime.hypothesis.before && !exp.steady_state.is_empty() {
        progress.step("steady state before the method");
        match unless_signalled(&mut sig, run_all(&exp.steady_state, &ctx)).await {
            Ok(results) => {
                progress.probes("before", &results);
                let c = check_of(ctx.now_s(), results);
                if !c.met {
                    progress
                        .say("steady state NOT met before the method: nothing will be injected");
                    not_started = true;
                }
                steady.before = Some(c);
            }
            Err(s) => end = Some(End::Interrupted(s)),
        }
    }

    // Method, under guard.
    let records: Arc<Mutex<Vec<ActivityRecord>>> = Arc::new(Mutex::new(Vec::new()));
    let during: Arc<Mutex<Vec<Check>>> = Arc::new(Mutex::new(Vec::new()));
    let background: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
    if end.is_none() && !not_started {
        let (stop_tx, mut stop_rx) = mpsc::channel(1);
        let guard_task = tokio::spawn(guard(
            ctx.clone(),
            progress.clone(),
            during.clone(),
            stop_tx,
        ));
        let n = exp.method.len();
        let method = {
            let ctx = ctx.clone();
            let records = records.clone();
            let background = background.clone();
            let progress = progress.clone();
            let stop_on_error = exp.runtime.stop_on_action_error;
            let exp = exp.clone();
            async move {
                let mut bg = Vec::new();
                for (i, act) in exp.method.iter().enumerate() {
                    progress.step(format!(
                        "[{}/{n}] {} ({})",
                        i + 1,
                        act.name,
                        act.kind.type_name()
                    ));
                    if act.background {
                        let h =
                            tokio::spawn(step(ctx.clone(), act.clone(), t0_wall, records.clone()));
                        lock(&background).push(h.abort_handle());
                        bg.push((act.name.clone(), h));
                        continue;
                    }
                    if let Err(e) = step(ctx.clone(), act.clone(), t0_wall, records.clone()).await {
                        progress.say(format!("action failed: {e}"));
                        if stop_on_error {
                            return End::ActionFailed(e);
                        }
                    }
                }
                progress.step("waiting for background actions");
                for (name, h) in bg {
                    match h.await {
                        Ok(Err(e)) => {
                            progress.say(format!("background action {name} failed: {e}"));
                            if stop_on_error {
                                return End::ActionFailed(e);
                            }
                        }
                        Ok(Ok(())) => {}
                        Err(e) => return End::ActionFailed(format!("{name}: {e}")),
                    }
                }
                End::Completed
            }
        };
        let deadline = ctx.deadline;
        let e = tokio::select! {
            e = method => e,
            Some(e) = stop_rx.recv() => e,
            _ = sig.changed() => End::Interrupted(sig.borrow().clone().unwrap_or_default()),
            _ = tokio::time::sleep_until(deadline) => End::Aborted(AbortRecord {
                name: "max_duration".into(),
                reason: format!(
                    "the hard maximum duration {} was reached",
                    humantime::format_duration(exp.runtime.max_duration)
                ),
                at_s: ctx.now_s(),
                probe: None,
            }),
        };
        guard_task.abort();
        for h in lock(&background).drain(..) {
            h.abort();
        }
        match &e {
            End::Aborted(a) => progress.say(format!("ABORTED: {}", a.reason)),
            End::Interrupted(s) => progress.say(format!("interrupted by {s}: rolling back")),
            _ => {}
        }
        end = Some(e);
    }
    steady.during = lock(&during).clone();
    let mut deviated = steady.during.iter().any(|c| !c.met);

    // After.
    if matches!(end, Some(End::Completed))
        && exp.runtime.hypothesis.after
        && !exp.steady_state.is_empty()
    {
        if !exp.runtime.settle.is_zero() {
            progress.step(format!(
                "settling for {}",
                humantime::format_duration(exp.runtime.settle)
            ));
            if let Err(s) = unless_signalled(&mut sig, tokio::time::sleep(exp.runtime.settle)).await
            {
                end = Some(End::Interrupted(s));
            }
        }
        if matches!(end, Some(End::Completed)) {
            progress.step("steady state after the method");
            match unless_signalled(&mut sig, run_all(&exp.steady_state, &ctx)).await {
                Ok(results) => {
                    progress.probes("after", &results);
                    let c = check_of(ctx.now_s(), results);
                    deviated |= !c.met;
                    steady.after = Some(c);
                }
                Err(s) => end = Some(End::Interrupted(s)),
            }
        }
    }

    // Rollbacks.
    let forced = matches!(end, Some(End::Aborted(_)) | Some(End::Interrupted(_)));
    let failed = matches!(end, Some(End::ActionFailed(_)));
    let do_rollback = !not_started
        && (forced
            || match exp.runtime.rollbacks {
                RollbackStrategy::Always => true,
                RollbackStrategy::OnDeviation => deviated || failed,
                RollbackStrategy::Never => false,
            });
    let mut rollback_records = Vec::new();
    if do_rollback {
        progress.step("rolling back");
        let start_s = ctx.now_s();
        let (done, errors) = ctx.undo(None).await;
        if !done.is_empty() || !errors.is_empty() {
            let end_s = ctx.now_s();
            rollback_records.push(ActivityRecord {
                activity: "remove everything still injected".into(),
                type_: "cleanup".into(),
                status: if errors.is_empty() {
                    "succeeded"
                } else {
                    "failed"
                }
                .into(),
                background: false,
                start: wall(t0_wall, start_s),
                end: wall(t0_wall, end_s),
                start_s,
                duration_s: end_s - start_s,
                output: serde_json::json!(done),
                error: (!errors.is_empty()).then(|| errors.join("; ")),
                tolerance_met: None,
            });
        }
        for act in &exp.rollbacks {
            tokio::time::sleep(act.pause_before).await;
            let start_s = ctx.now_s();
            let o = ctx.perform(act).await;
            if !o.ok {
                progress.say(format!(
                    "rollback {} failed: {}",
                    act.name,
                    o.error.clone().unwrap_or_default()
                ));
            }
            rollback_records.push(record(&ctx, t0_wall, act, start_s, &o));
            if let Some(d) = act.duration {
                tokio::time::sleep(d).await;
            }
            tokio::time::sleep(act.pause_after).await;
        }
        // Rollback actions can inject too (rarely): never leave those behind either.
        ctx.undo(None).await;
    }
    let left_to_ttl = ctx.outstanding();
    if !left_to_ttl.is_empty() {
        progress.say(format!(
            "left in place until their TTL: {}",
            left_to_ttl.join(", ")
        ));
    }

    // Wrap up.
    sampler_task.abort();
    let load_stats: Vec<_> = loads.into_iter().map(|l| l.stop()).collect();
    let mut run_records = lock(&records).clone();
    let now_s = ctx.now_s();
    for r in run_records.iter_mut().filter(|r| r.status == "running") {
        r.status = "interrupted".into();
        r.end = wall(t0_wall, now_s);
        r.duration_s = now_s - r.start_s;
    }
    let (verdict, status, abort) = match end {
        _ if not_started => (Verdict::SteadyStateNotMet, "not-started", None),
        Some(End::Interrupted(s)) => (
            Verdict::Interrupted,
            "interrupted",
            Some(AbortRecord {
                name: s.clone(),
                reason: format!("interrupted by {s}"),
                at_s: now_s,
                probe: None,
            }),
        ),
        Some(End::Aborted(a)) => (Verdict::Aborted, "aborted", Some(a)),
        Some(End::ActionFailed(e)) => (
            Verdict::ActionFailed,
            "failed",
            Some(AbortRecord {
                name: "action failed".into(),
                reason: e,
                at_s: now_s,
                probe: None,
            }),
        ),
        _ if deviated => (Verdict::Deviated, "completed", None),
        _ => (Verdict::Held, "completed", None),
    };
    progress.finish();
    let journal = Journal {
        chaos_version: env!("CARGO_PKG_VERSION"),
        experiment: (*exp).clone(),
        seed: exp.runtime.seed,
        run_id,
        status: status.into(),
        verdict,
        exit_code: verdict.exit_code(),
        deviated,
        start: rfc3339(t0_wall),
        end: rfc3339(SystemTime::now()),
        duration_s: now_s,
        schedule: schedule_decision,
        steady_states: steady,
        abort,
        run: run_records,
        rollbacks: rollback_records,
        left_to_ttl,
        fault_windows: ctx.windows(),
        timeline: sampler.timeline(),
        loads: load_stats,
        warnings: opts.warnings.clone(),
    };
    journal
        .write(&opts.journal)
        .map_err(|e| RunError::Write(opts.journal.clone(), e))?;
    let html = report::render(&journal);
    if let Some(dir) = opts.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| RunError::Write(opts.report.clone(), e))?;
    }
    std::fs::write(&opts.report, html).map_err(|e| RunError::Write(opts.report.clone(), e))?;
    println!(
        "{}: {} (exit {})",
        exp.title,
        verdict.describe(),
        verdict.exit_code()
    );
    if let Some(a) = &journal.abort {
        println!("  {}", a.reason);
    }
    for c in journal
        .steady_states
        .before
        .iter()
        .chain(
            journal
                .steady_states
                .during
                .iter()
                .filter(|c| !c.met)
                .take(1),
        )
        .chain(journal.steady_states.after.iter())
    {
        for p in c.probes.iter().filter(|p| !p.tolerance_met) {
            println!(
                "  at {:.1}s {} = {} (tolerance {}){}",
                c.at_s,
                p.name,
                p.value,
                p.tolerance,
                p.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    println!(
        "  journal {} · report {}",
        opts.journal.display(),
        opts.report.display()
    );
    Ok(verdict)
}
