//! `journal.json`: the plan, the digests, the seed, every tick with its inputs and decision, the
//! operator's actions, the events (processes, split, promotion) and the final verdict with its
//! numbers. Rewritten after every tick so a crashed controller leaves what it saw.
use crate::decide::{ArmCounts, TickInput, TickReport};
use crate::plan::Plan;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The build digests involved.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Digests {
    /// The candidate binary's SHA-256.
    pub candidate: String,
    /// The fresh baseline's binary (none with a `stable` baseline).
    pub baseline: Option<String>,
    /// What the target node ran when the run started.
    pub stable: Option<String>,
}

/// One tick: what went in, what came out, and the weights that were live.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TickRecord {
    /// The decision's inputs.
    pub input: TickInput,
    /// The decision and its numbers.
    pub report: TickReport,
    /// Candidate weight during the tick, percent.
    pub weight: u32,
}

/// Something that happened beside the ticks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the run started.
    pub at_s: f64,
    /// What.
    pub what: String,
}

/// How the run ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// `promoted`, `rolled_back`, ...
    pub outcome: String,
    /// The process exit code.
    pub exit_code: i32,
    /// The final decision as printed.
    pub decision: String,
    /// Candidate-arm attempts over the whole run, as the ticks (and the closing read before the
    /// split was removed) counted them.
    pub candidate: ArmCounts,
    /// Baseline-arm attempts over the run's weighted steps.
    pub baseline: ArmCounts,
    /// Milliseconds from the rollback decision to the split removed on every listener.
    pub split_removed_ms: Option<u64>,
    /// Candidate attempts the sidecar admitted after the split was removed (in flight).
    pub admitted_after_split: Option<u64>,
    /// The digest the promoted node(s) run.
    pub promoted_digest: Option<String>,
}

/// The whole journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    /// The plan file as given.
    pub plan_file: String,
    /// The validated plan.
    pub plan: Plan,
    /// The controller id the split carries.
    pub controller: String,
    /// The seed (split routing, rehearsal faults, built-in load).
    pub seed: u64,
    /// `Some("abort=500,percent=5")` for a rehearsal: the fault is injected, not the build's.
    pub rehearsal: Option<String>,
    /// Build digests.
    pub digests: Digests,
    /// Start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Every tick.
    pub ticks: Vec<TickRecord>,
    /// Operator commands as received (`status` is not recorded).
    pub actions: Vec<Event>,
    /// Processes, split changes, promotion, rollback steps.
    pub events: Vec<Event>,
    /// The end.
    pub verdict: Option<Verdict>,
}

impl Journal {
    /// Writes the journal (temp file + rename, so a reader never sees half of it).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}
