//! The controller behind `canary run`: starts the candidate (and a fresh baseline) as transient
//! members, installs the sidecar split, gathers counts every tick, feeds
//! [`crate::decide::Rollout::tick`], and carries out its decisions (new weights, promotion,
//! rollback), journalling everything.
mod arms;
mod control;
mod finish;
mod load;
mod node;
mod process;
pub mod rehearse;
mod setup;

pub use arms::metric_attempts;
pub use control::{send, ControllerFile};
pub use node::digest;
pub use setup::RunOptions;

use crate::decide::{ArmCounts, Command, Decision, Outcome, Rollout, TickInput, TickReport};
use crate::journal::{Event, Journal, TickRecord};
use crate::plan::{BaselineKind, Plan};
use arms::{SplitDriver, SubsetTarget};
use control::Shared;
use node::{ListenerInfo, NodeInfo};
use process::Member;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Why a run could not go on. Everything here is exit 5, except an invalid plan (64).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment failed: a binary missing or not starting, the sidecar unreachable or
    /// refusing (409: another controller), the node not restarting.
    #[error("{0}")]
    Env(String),
    /// The plan is invalid.
    #[error("{0}")]
    Plan(#[from] crate::plan::PlanError),
}

impl Error {
    /// The exit outcome.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Env(_) => Outcome::EnvironmentFailure,
            Error::Plan(_) => Outcome::InvalidPlan,
        }
    }
}

/// A running rollout.
pub struct Ctl {
    plan: Plan,
    opts: RunOptions,
    http: reqwest::Client,
    node: NodeInfo,
    listeners: Vec<ListenerInfo>,
    driver: SplitDriver,
    cand: Option<Member>,
    base: Option<Member>,
    cand_subset: SubsetTarget,
    base_subset: Option<SubsetTarget>,
    journal: Journal,
    journal_path: PathBuf,
    started: Instant,
    shared: Arc<Mutex<Shared>>,
    weight: u32,
    baking: bool,
    /// Targets restarted on the candidate, in order: a rollback restores them.
    promoted: Vec<usize>,
    metrics_at_start: u64,
    totals: (ArmCounts, ArmCounts),
    load: Option<tokio::task::JoinHandle<()>>,
}

impl Ctl {
    fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn event(&mut self, what: impl Into<String>) {
        let what = what.into();
        println!("canary: {what}");
        let at_s = self.secs();
        self.journal.events.push(Event { at_s, what });
    }

    fn save(&self) {
        if let Err(e) = self.journal.save(&self.journal_path) {
            eprintln!("canary: journal {}: {e}", self.journal_path.display());
        }
    }

    /// The subsets and weights for candidate weight `w` (a fresh baseline gets the same).
    fn subsets(&self, w: u32) -> Vec<(SubsetTarget, u32)> {
        let mut v = vec![(self.cand_subset.clone(), w)];
        if let Some(b) = &self.base_subset {
            v.push((b.clone(), w));
        }
        v
    }

    fn baseline_arm(&self) -> &'static str {
        match self.plan.baseline.kind {
            BaselineKind::Fresh => "baseline",
            BaselineKind::Stable => "stable",
        }
    }

    /// One tick: sample, decide, print, journal. `None` while the rollout goes on.
    async fn tick(&mut self, rollout: &mut Rollout) -> Result<TickReport, Error> {
        let (c, b) = if self.baking {
            let (c, _) = self.driver.sample("stable", "bake").await?;
            (c, Default::default())
        } else {
            let base = self.baseline_arm();
            self.driver.sample("candidate", base).await?
        };
        add(&mut self.totals.0, &c.counts);
        add(&mut self.totals.1, &b.counts);
        let process = match self.cand.as_mut() {
            Some(m) if !self.baking => candidate_state(m, &c.counts).await,
            _ => crate::decide::ProcessState::Running,
        };
        let commands: Vec<Command> = {
            let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut sh.pending)
        };
        for cmd in &commands {
            let at_s = self.secs();
            let what = format!("operator: {cmd}");
            self.journal.actions.push(Event { at_s, what });
        }
        let input = TickInput {
            now: self.started.elapsed(),
            candidate: c,
            baseline: b,
            process,
            commands,
        };
        let report = rollout.tick(&input);
        println!("{report}");
        self.record(input, report.clone());
        Ok(report)
    }

    fn record(&mut self, input: TickInput, report: TickReport) {
        let weight = if self.baking { 100 } else { self.weight };
        {
            let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            sh.status = serde_json::json!({
                "plan": self.opts.plan_file.display().to_string(),
                "controller": self.journal.controller,
                "rehearsal": self.journal.rehearsal,
                "weight": weight,
                "line": report.to_string(),
                "report": report,
            });
        }
        self.journal.ticks.push(TickRecord {
            input,
            report,
            weight,
        });
        self.save();
    }

    /// Ticks until a final decision (or a signal); returns that decision.
    async fn run_loop(&mut self, rollout: &mut Rollout) -> Result<Decision, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Env(e.to_string()))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Env(e.to_string()))?;
        let mut every = tokio::time::interval(self.plan.steps.tick);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = term.recv() => return Ok(self.interrupted(rollout, "SIGTERM")),
                _ = int.recv() => return Ok(self.interrupted(rollout, "SIGINT")),
            }
            let report = self.tick(rollout).await?;
            match report.decision {
                Decision::NextStep { weight, .. } => {
                    self.weight = weight;
                    let s = self.subsets(weight);
                    self.driver.put(&s).await?;
                    self.event(format!("split: candidate weight {weight}%"));
                }
                Decision::Promote { node } => self.promote(node).await?,
                d @ (Decision::Promoted | Decision::Rollback { .. }) => return Ok(d),
                _ if self.baking => self.driver.put(&self.bake_subsets()).await?,
                _ => self.driver.put(&self.subsets(self.weight)).await?,
            }
        }
    }

    fn interrupted(&mut self, rollout: &mut Rollout, sig: &str) -> Decision {
        self.event(format!("{sig}: rolling back"));
        let report = rollout.interrupt(self.started.elapsed());
        println!("{report}");
        report.decision
    }
}

/// The candidate's process state. A process that dies closes its sockets a moment before it can
/// be reaped: errors in this tick's sample with the process still "running" get a short second
/// look, so a crash that first shows as errors is judged critical, not by the tests.
async fn candidate_state(m: &mut Member, c: &ArmCounts) -> crate::decide::ProcessState {
    let st = m.state();
    let errors = c.errors_5xx + c.local_errors + c.timeouts;
    if errors == 0 || !matches!(st, crate::decide::ProcessState::Running) {
        return st;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    m.state()
}

fn add(to: &mut ArmCounts, c: &ArmCounts) {
    to.requests += c.requests;
    to.errors_5xx += c.errors_5xx;
    to.local_errors += c.local_errors;
    to.timeouts += c.timeouts;
}

/// `canary run`: the outcome (its exit code is the process's).
pub async fn run(opts: RunOptions) -> Outcome {
    match setup::start(opts).await {
        Err(e) => {
            eprintln!("canary: {e}");
            e.outcome()
        }
        Ok(mut ctl) => ctl.drive().await,
    }
}
