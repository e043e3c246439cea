//! The journal: everything a run did, as JSON. Shaped like Chaos Toolkit's (`status`, `deviated`,
//! `steady_states.before/during/after`, `run`, `rollbacks`, each activity with its timing, output
//! and tolerance result) plus what it lacks: the verdict and exit code, the seed, the schedule
//! decision, the abort trace, the fault windows and the metric timeline.

use crate::action::FaultWindow;
use crate::load::LoadStats;
use crate::model::Experiment;
use crate::probe::ProbeResult;
use crate::prom::Point;
use crate::Verdict;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub at_s: f64,
    pub met: bool,
    pub probes: Vec<ProbeResult>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SteadyStates {
    pub before: Option<Check>,
    pub during: Vec<Check>,
    pub after: Option<Check>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ActivityRecord {
    pub activity: String,
    #[serde(rename = "type")]
    pub type_: String,
    /// `succeeded`, `failed`, or `interrupted` (stopped before it finished).
    pub status: String,
    pub background: bool,
    pub start: String,
    pub end: String,
    pub start_s: f64,
    pub duration_s: f64,
    pub output: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance_met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AbortRecord {
    pub name: String,
    pub reason: String,
    pub at_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScheduleDecision {
    pub planned_start: String,
    pub waited_s: f64,
    pub ignored: bool,
}

#[derive(Debug, Serialize)]
pub struct Journal {
    pub chaos_version: &'static str,
    pub experiment: Experiment,
    pub seed: u64,
    pub run_id: String,
    /// `completed`, `failed` (an action failed), `aborted`, `interrupted`, or `not-started` (the
    /// steady state was not met before the method).
    pub status: String,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub deviated: bool,
    pub start: String,
    pub end: String,
    pub duration_s: f64,
    pub schedule: Option<ScheduleDecision>,
    pub steady_states: SteadyStates,
    pub abort: Option<AbortRecord>,
    pub run: Vec<ActivityRecord>,
    pub rollbacks: Vec<ActivityRecord>,
    /// Injected things the rollbacks did not remove (strategy `never` or `on-deviation`, or a
    /// removal that failed): they end with their TTLs.
    pub left_to_ttl: Vec<String>,
    pub fault_windows: Vec<FaultWindow>,
    pub timeline: Vec<Point>,
    pub loads: Vec<LoadStats>,
    pub warnings: Vec<String>,
}

impl Journal {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }
}
