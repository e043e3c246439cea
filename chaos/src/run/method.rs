//! The method: its steps one after the other (background ones spawned), under the guard that
//! checks the hypothesis during the method and the abort conditions; the first of the method's
//! end, a stop from the guard, a signal or the hard maximum duration ends it.

use super::*;

impl Run {
    /// Runs the method (unless the run has already ended or the steady state was not met before)
    /// and records how it ended.
    pub(super) async fn method(&mut self) {
        if self.end.is_some() || self.not_started {
            return;
        }
        let (stop_tx, mut stop_rx) = mpsc::channel(1);
        let guard_task = tokio::spawn(guard(
            self.ctx.clone(),
            self.progress.clone(),
            self.during.clone(),
            stop_tx,
        ));
        let method = steps(
            self.ctx.clone(),
            self.progress.clone(),
            self.t0_wall,
            self.records.clone(),
            self.background.clone(),
        );
        let (exp, ctx, sig) = (self.exp.clone(), self.ctx.clone(), &mut self.sig);
        let e = tokio::select! {
            e = method => e,
            Some(e) = stop_rx.recv() => e,
            _ = sig.changed() => End::Interrupted(sig.borrow().clone().unwrap_or_default()),
            _ = tokio::time::sleep_until(ctx.deadline) => End::Aborted(AbortRecord {
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
        for h in lock(&self.background).drain(..) {
            h.abort();
        }
        match &e {
            End::Aborted(a) => self.progress.say(format!("ABORTED: {}", a.reason)),
            End::Interrupted(s) => self
                .progress
                .say(format!("interrupted by {s}: rolling back")),
            _ => {}
        }
        self.end = Some(e);
    }
}

/// The method's steps in order; background steps are spawned and awaited at the end.
async fn steps(
    ctx: Arc<Ctx>,
    progress: Arc<Progress>,
    t0_wall: SystemTime,
    records: Arc<Mutex<Vec<ActivityRecord>>>,
    background: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
) -> End {
    let exp = ctx.exp.clone();
    let stop_on_error = exp.runtime.stop_on_action_error;
    let n = exp.method.len();
    let mut bg = Vec::new();
    for (i, act) in exp.method.iter().enumerate() {
        progress.step(format!(
            "[{}/{n}] {} ({})",
            i + 1,
            act.name,
            act.kind.type_name()
        ));
        if act.background {
            let h = tokio::spawn(step(ctx.clone(), act.clone(), t0_wall, records.clone()));
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

pub(super) fn record(
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
