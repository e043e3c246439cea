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
//!
//! One module per phase: [`before`] (schedule, warm-up, steady state before), [`method`] (the
//! method under guard), [`after`] (settle, steady state after), [`rollback`], [`finish`]
//! (verdict, journal, report, summary); [`plan`] prints the dry run.

mod after;
mod before;
mod finish;
mod method;
mod plan;
mod rollback;

use crate::action::{wall, Ctx};
use crate::journal::*;
use crate::model::*;
use crate::probe::{run_all, ProbeResult};
use crate::progress::Progress;
use crate::prom::Sampler;
use crate::Verdict;
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

/// What the sampler scrapes and keeps, from the experiment's metric probes.
struct Sampling {
    /// Whether any probe is a metric probe (then the run warms up first).
    any: bool,
    /// The longest metric window.
    longest: Duration,
    values: BTreeSet<String>,
    chart_labels: std::collections::BTreeMap<String, String>,
    /// Host name and admin URL of every host with an admin API.
    hosts: Vec<(String, String)>,
}

impl Sampling {
    fn of(exp: &Experiment) -> Self {
        let queries = metric_queries(exp);
        Self {
            any: !queries.is_empty(),
            longest: queries
                .iter()
                .map(|q| q.window)
                .max()
                .unwrap_or(Duration::from_secs(5)),
            values: queries
                .iter()
                .filter_map(|q| match &q.stat {
                    Stat::Value { series } => Some(series.clone()),
                    _ => None,
                })
                .collect(),
            chart_labels: queries
                .iter()
                .find(|q| q.stat == Stat::ErrorRatio)
                .map(|q| q.labels.clone())
                .unwrap_or_default(),
            hosts: exp
                .hosts
                .values()
                .filter_map(|h| Some((h.name.clone(), h.admin.clone()?)))
                .collect(),
        }
    }

    /// The sampler and the action context of a run whose clock starts at `t0` (made when the run
    /// starts, after the schedule).
    fn make(
        &self,
        exp: &Arc<Experiment>,
        http: &reqwest::Client,
        t0: Instant,
        run_id: String,
    ) -> (Arc<Sampler>, Arc<Ctx>) {
        let sampler = Arc::new(Sampler::new(
            self.hosts.clone(),
            exp.runtime.sample_interval,
            self.longest,
            self.values.clone(),
            self.chart_labels.clone(),
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
    }
}

fn run_id_now() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("chaos-{ms}")
}

/// What the phases of a started run share.
struct Run {
    exp: Arc<Experiment>,
    ctx: Arc<Ctx>,
    progress: Arc<Progress>,
    sig: Sig,
    t0_wall: SystemTime,
    /// How the run ended, once it has (`None` while it goes on).
    end: Option<End>,
    /// The steady state was not met before the method: nothing is injected.
    not_started: bool,
    /// The hypothesis failed during or after the method.
    deviated: bool,
    steady: SteadyStates,
    records: Arc<Mutex<Vec<ActivityRecord>>>,
    during: Arc<Mutex<Vec<Check>>>,
    background: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

pub async fn run(exp: Experiment, opts: Options) -> Result<Verdict, RunError> {
    let exp = Arc::new(exp);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let sampling = Sampling::of(&exp);
    let (next_start, mut schedule_decision) = before::schedule(&exp, &opts)?;
    if opts.dry_run {
        let (_, ctx) = sampling.make(&exp, &http, Instant::now(), run_id_now());
        plan::print_plan(&exp, &ctx, next_start);
        return Ok(Verdict::DryRun);
    }
    let mut sig = listen_for_signals().map_err(RunError::Setup)?;
    let progress = Arc::new(Progress::new(
        opts.quiet,
        exp.planned_method() + exp.runtime.settle + sampling.longest,
    ));
    for w in &opts.warnings {
        progress.say(format!("warning: {w}"));
    }
    let end = before::wait_for_start(
        next_start,
        &opts,
        &progress,
        &mut sig,
        schedule_decision.as_mut(),
    )
    .await;
    // The run's clock starts now: the hard maximum and the timeline count from here.
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let run_id = run_id_now();
    let (sampler, ctx) = sampling.make(&exp, &http, t0, run_id.clone());
    progress.say(format!(
        "experiment {:?} (run {run_id}, seed {})",
        exp.title, exp.runtime.seed
    ));
    let sampler_task = before::start_sampler(&sampler, &http, exp.runtime.sample_interval);
    let loads: Vec<_> = if end.is_none() {
        exp.loads
            .iter()
            .map(|l| crate::load::start(l, http.clone(), exp.runtime.seed))
            .collect()
    } else {
        Vec::new()
    };
    let mut r = Run {
        exp,
        ctx,
        progress,
        sig,
        t0_wall,
        end,
        not_started: false,
        deviated: false,
        steady: SteadyStates::default(),
        records: Arc::default(),
        during: Arc::default(),
        background: Arc::default(),
    };
    r.warm_up(&sampler, &sampling).await;
    r.before().await;
    r.method().await;
    r.after().await;
    let rollbacks = r.roll_back().await;
    let left_to_ttl = r.left_to_ttl();
    sampler_task.abort();
    let done = finish::Done {
        run_id,
        schedule: schedule_decision,
        rollbacks,
        left_to_ttl,
        loads: loads.into_iter().map(|l| l.stop()).collect(),
        timeline: sampler.timeline(),
    };
    r.finish(done, &opts)
}
