//! The end of every run, whatever happened before: the verdict, the journal, the report and the
//! summary on stdout.

use super::*;
use crate::report;

/// What the run produced outside [`Run`].
pub(super) struct Done {
    pub run_id: String,
    pub schedule: Option<ScheduleDecision>,
    pub rollbacks: Vec<ActivityRecord>,
    pub left_to_ttl: Vec<String>,
    pub loads: Vec<crate::load::LoadStats>,
    pub timeline: Vec<crate::prom::Point>,
}

impl Run {
    /// The verdict, the journal status and the abort record (if any) at `now_s`.
    fn verdict(&mut self, now_s: f64) -> (Verdict, &'static str, Option<AbortRecord>) {
        match self.end.take() {
            _ if self.not_started => (Verdict::SteadyStateNotMet, "not-started", None),
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
            _ if self.deviated => (Verdict::Deviated, "completed", None),
            _ => (Verdict::Held, "completed", None),
        }
    }

    /// Writes the journal and the report and prints the summary.
    pub(super) fn finish(mut self, done: Done, opts: &Options) -> Result<Verdict, RunError> {
        let mut run_records = lock(&self.records).clone();
        let now_s = self.ctx.now_s();
        for r in run_records.iter_mut().filter(|r| r.status == "running") {
            r.status = "interrupted".into();
            r.end = wall(self.t0_wall, now_s);
            r.duration_s = now_s - r.start_s;
        }
        let (verdict, status, abort) = self.verdict(now_s);
        self.progress.finish();
        let exp = &self.exp;
        let journal = Journal {
            chaos_version: env!("CARGO_PKG_VERSION"),
            experiment: (**exp).clone(),
            seed: exp.runtime.seed,
            run_id: done.run_id,
            status: status.into(),
            verdict,
            exit_code: verdict.exit_code(),
            deviated: self.deviated,
            start: rfc3339(self.t0_wall),
            end: rfc3339(SystemTime::now()),
            duration_s: now_s,
            schedule: done.schedule,
            steady_states: std::mem::take(&mut self.steady),
            abort,
            run: run_records,
            rollbacks: done.rollbacks,
            left_to_ttl: done.left_to_ttl,
            fault_windows: self.ctx.windows(),
            timeline: done.timeline,
            loads: done.loads,
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
        summary(&exp.title, &journal, opts);
        Ok(verdict)
    }
}

/// The verdict, the abort reason and the probes that failed (before, the first failed check
/// during, after), then where the journal and report are.
fn summary(title: &str, journal: &Journal, opts: &Options) {
    let verdict = journal.verdict;
    println!(
        "{title}: {} (exit {})",
        verdict.describe(),
        verdict.exit_code()
    );
    if let Some(a) = &journal.abort {
        println!("  {}", a.reason);
    }
    let s = &journal.steady_states;
    let failed_during = s.during.iter().filter(|c| !c.met).take(1);
    for c in s.before.iter().chain(failed_during).chain(s.after.iter()) {
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
}
