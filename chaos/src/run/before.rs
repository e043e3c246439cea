//! Before the method: the schedule gate, the sampler, the warm-up until the metric windows are
//! full, and the steady state before (not met: nothing is injected).

use super::*;

/// The next allowed start and the schedule decision for the journal (none without a schedule).
pub(super) fn schedule(
    exp: &Experiment,
    opts: &Options,
) -> Result<(Option<SystemTime>, Option<ScheduleDecision>), RunError> {
    let Some(s) = &exp.schedule else {
        return Ok((None, None));
    };
    let next = s
        .next_start(SystemTime::now(), exp.runtime.max_duration)
        .map_err(RunError::Schedule)?;
    Ok((
        Some(next),
        Some(ScheduleDecision {
            planned_start: rfc3339(next),
            waited_s: 0.0,
            ignored: opts.ignore_schedule,
        }),
    ))
}

/// Waits for the scheduled start (unless told to ignore it); a signal ends the run.
pub(super) async fn wait_for_start(
    next_start: Option<SystemTime>,
    opts: &Options,
    progress: &Progress,
    sig: &mut Sig,
    decision: Option<&mut ScheduleDecision>,
) -> Option<End> {
    let (Some(next), false) = (next_start, opts.ignore_schedule) else {
        return None;
    };
    let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
    if wait.is_zero() {
        return None;
    }
    progress.step(format!(
        "waiting for the scheduled start {} ({})",
        rfc3339(next),
        humantime::format_duration(Duration::from_secs(wait.as_secs()))
    ));
    let end = unless_signalled(sig, tokio::time::sleep(wait))
        .await
        .err()
        .map(End::Interrupted);
    if let Some(d) = decision {
        d.waited_s = wait.as_secs_f64();
    }
    end
}

/// Scrapes the sidecars every `every` until aborted.
pub(super) fn start_sampler(
    sampler: &Arc<Sampler>,
    http: &reqwest::Client,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let s = sampler.clone();
    let http = http.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            s.scrape(&http).await;
        }
    })
}

impl Run {
    /// Metric windows full before the first check.
    pub(super) async fn warm_up(&mut self, sampler: &Sampler, sampling: &Sampling) {
        if self.end.is_some() || !sampling.any || !sampler.has_hosts() {
            return;
        }
        let longest = sampling.longest;
        let need = longest.as_secs_f64();
        self.progress
            .step(format!("warming up: filling the {}s metric window", need));
        let limit = longest + self.exp.runtime.sample_interval * 5;
        let wait = async {
            let until = Instant::now() + limit;
            while sampler.covered() + 1e-6 < need && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if let Err(s) = unless_signalled(&mut self.sig, wait).await {
            self.end = Some(End::Interrupted(s));
        }
    }

    /// The steady state before the method.
    pub(super) async fn before(&mut self) {
        let exp = self.exp.clone();
        if self.end.is_some() || !exp.runtime.hypothesis.before || exp.steady_state.is_empty() {
            return;
        }
        self.progress.step("steady state before the method");
        if let Some(c) = self.steady_state("before").await {
            if !c.met {
                self.progress
                    .say("steady state NOT met before the method: nothing will be injected");
                self.not_started = true;
            }
            self.steady.before = Some(c);
        }
    }

    /// Runs the steady-state probes and shows them as `phase`; a signal ends the run instead.
    pub(super) async fn steady_state(&mut self, phase: &str) -> Option<Check> {
        match unless_signalled(&mut self.sig, run_all(&self.exp.steady_state, &self.ctx)).await {
            Ok(results) => {
                self.progress.probes(phase, &results);
                Some(check_of(self.ctx.now_s(), results))
            }
            Err(s) => {
                self.end = Some(End::Interrupted(s));
                None
            }
        }
    }
}
