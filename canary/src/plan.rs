//! The rollout plan: what to roll out where, in which steps, judged by which SLO and test.
//!
//! Read from TOML (docs/canary.md lists every field; examples in `canary/plans/`). Unknown fields
//! are errors (a misspelt `min_requets` must not silently fall back to a default), and the whole
//! file is checked before anything runs: every problem is reported as `FILE:LINE: field: message`
//! and the CLI exits 64. Checks that need the running system — the candidate binary exists and
//! starts, the sidecar has those listeners — are the controller's (exit 5), not the plan's.
mod locate;
mod raw;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated rollout plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Names the rollout in output and the journal.
    pub name: String,
    /// The nodes, in rollout order. Weighted steps run on the first; promotion covers the first
    /// ([`Scope::One`]) or all of them one at a time ([`Scope::All`]).
    pub targets: Vec<Target>,
    /// The build being rolled out.
    pub candidate: Candidate,
    /// What the candidate is compared with.
    pub baseline: Baseline,
    /// Traffic weights and the time and exposure each step needs.
    pub steps: Steps,
    /// The service-level objective the candidate must meet.
    pub slo: Slo,
    /// The sequential tests' error rates and effect size.
    pub test: TestParams,
    /// What happens when a step runs out of time without a decision.
    pub inconclusive: Inconclusive,
    /// How far a passed rollout goes.
    pub promotion: Promotion,
    /// The sidecar traffic split's own settings.
    pub split: Split,
    /// Optional built-in load, for clusters without enough real traffic.
    pub load: Option<Load>,
    /// Where transient members (candidate, fresh baseline) bind, and their pid files.
    #[serde(default)]
    pub members: Members,
}

/// Where the controller starts its transient members: on the target node's host (the host of its
/// advertised peer address), with ports from `ports`, five per member (RPC, gateway, cluster
/// REST, peer, NBD), the way `deploy/local` admits them (deploy/README.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// First and last port (inclusive) of the range; default 25000–25019.
    pub ports: (u16, u16),
    /// Directory for one `NAME.pid` file per running member (e.g. `deploy/local/.state/canary`);
    /// removed when the member stops. `None`: no pid files.
    pub pid_dir: Option<PathBuf>,
}

/// Ports every transient member takes.
pub const PORTS_PER_MEMBER: u32 = 5;

impl Default for Members {
    fn default() -> Self {
        Members {
            ports: (25000, 25019),
            pid_dir: None,
        }
    }
}

/// A node to roll out to, through its sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The node's name in output (e.g. `node3`).
    pub node: String,
    /// The sidecar's admin API address, where the split is installed.
    pub admin: SocketAddr,
    /// The sidecar listeners whose traffic is split (their counts are summed per arm).
    pub listeners: Vec<String>,
    /// The node's data directory (its `config.toml` and `swarm.key`): the controller reads the
    /// node's ports, peer address and swarm key from it to start transient members beside it.
    /// Needed by `canary run`, not by `validate`.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// How promotion restarts the node on another binary: a shell command, run with `sh -c`,
    /// in which `{binary}` and `{data}` are replaced. It must stop the running node and start it
    /// again (detached) on `{binary}` with its data, then return. Without it a passed rollout
    /// cannot promote (the controller says so and rolls back).
    #[serde(default)]
    pub restart: Option<String>,
}

/// The candidate build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The `storage` binary to run as a transient member, then to promote.
    pub binary: PathBuf,
}

/// Which arm the candidate is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineKind {
    /// A fresh process of the stable binary, started at the same moment as the candidate and given
    /// the same weight: same age, same caches, same share — the fair comparison (Kayenta practice).
    Fresh,
    /// The stable node itself, at the remaining weight: cheaper, but it has warm caches and uptime.
    Stable,
}

/// The baseline arm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Fresh process or the stable node.
    pub kind: BaselineKind,
    /// For `fresh`: the stable binary to start; `None` = the binary the node runs now.
    pub binary: Option<PathBuf>,
}

/// The weighted steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steps {
    /// The candidate's weight per step, percent, strictly increasing (1..=99; ≤ 50 with a fresh
    /// baseline, which takes the same weight).
    pub weights: Vec<u32>,
    /// A step never passes sooner (slow leaks and periodic jobs need time to show).
    #[serde(with = "humantime_serde")]
    pub min_time: Duration,
    /// After this the step is inconclusive (see [`Inconclusive`]).
    #[serde(with = "humantime_serde")]
    pub max_time: Duration,
    /// Candidate requests a step needs before it can pass.
    pub min_requests: u64,
    /// How often the controller gathers counts and decides.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
}

/// The service-level objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// The error-rate objective p0 (e.g. 0.001 for 99.9 % success): the guard's H0.
    pub error_rate: f64,
    /// Largest allowed candidate p99 / baseline p99.
    pub p99_ratio: f64,
    /// Candidate local errors (connection refused or reset: it is not answering) that are critical
    /// and roll back at once; 0 leaves them to the tests.
    pub critical_local_errors: u64,
}

/// The sequential tests' parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestParams {
    /// False-rollback rate for the whole rollout (split over its tests, see
    /// [`Plan::alpha_per_test`]).
    pub alpha: f64,
    /// Chance that one test misses a regression of the effect size.
    pub beta: f64,
    /// Effect size R: the error-rate ratio to detect (candidate/objective for the guard,
    /// candidate/baseline for the relative test).
    pub effect: f64,
}

/// The inconclusive policy: hold at the current weight, then roll back. Never promote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inconclusive {
    /// How long to hold (for an operator's `resume`, `promote` or `abort`) before rolling back.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
}

/// How far a passed rollout goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Promote the first target only.
    One,
    /// Promote every target, one at a time, each baked before the next.
    All,
}

/// Promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// One node or all.
    pub scope: Scope,
    /// How long each promoted node runs under the guard before it counts as done.
    #[serde(with = "humantime_serde")]
    pub bake: Duration,
}

/// The sidecar split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The split's TTL; the controller refreshes it every tick, so a dead controller leaves 100 %
    /// stable within this time. Longer than a tick.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Keep a client on one subset (by client identity).
    pub sticky: bool,
}

/// Built-in load: requests the controller sends itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Which of the first target's listeners to send to.
    pub listener: String,
    /// Requests per second.
    pub rate: f64,
    /// HTTP method.
    pub method: String,
    /// Paths, used in turn.
    pub paths: Vec<String>,
}

/// One problem in a plan file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// Dotted field path, e.g. `steps.weights` or `target[1].admin`.
    pub field: String,
    /// What is wrong, and where it helps, what would be right.
    pub message: String,
}

/// Why a plan could not be used. The CLI exits 64 on either.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("{file}: cannot read the plan: {source}")]
    Read {
        /// The path as given.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid plan; one line per problem.
    #[error("{}", render(file, problems))]
    Invalid {
        /// The path as given.
        file: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn render(file: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{file}:{}: {}: {}", p.line, p.field, p.message))
        .collect();
    lines.join("\n")
}

impl Plan {
    /// Reads and validates a plan file.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            file: file.clone(),
            source,
        })?;
        Plan::parse(&text, &file)
    }

    /// Parses and validates plan text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Plan, PlanError> {
        raw::parse(text).map_err(|mut problems| {
            problems.sort_by_key(|p| p.line);
            PlanError::Invalid {
                file: file.to_string(),
                problems,
            }
        })
    }

    /// Tests the false-rollback budget α is split over (Bonferroni): two, whatever the steps and
    /// bakes — the guard and the relative test each run once over the whole rollout, carried across
    /// its steps (and, for the guard, its bakes); see `decide` and docs/canary.md "Statistics".
    pub fn tests_in_budget(&self) -> usize {
        2
    }

    /// Nodes promoted (and baked, if `bake` > 0).
    pub fn promoted_nodes(&self) -> usize {
        match self.promotion.scope {
            Scope::One => 1,
            Scope::All => self.targets.len(),
        }
    }

    /// Bake periods that run the guard.
    pub fn bakes(&self) -> usize {
        if self.promotion.bake.is_zero() {
            0
        } else {
            self.promoted_nodes()
        }
    }

    /// The α each test runs at, so that the rollout's false-rollback rate stays within `alpha`
    /// however many steps it has: `alpha / tests_in_budget()`.
    pub fn alpha_per_test(&self) -> f64 {
        self.test.alpha / self.tests_in_budget() as f64
    }

    /// The split at step `i`, percent: `(candidate, fresh baseline, stable)`. With a `stable`
    /// baseline there is no baseline subset (0) and the stable remainder is the comparison arm.
    pub fn split_at(&self, i: usize) -> (u32, u32, u32) {
        let w = self.steps.weights[i];
        match self.baseline.kind {
            BaselineKind::Fresh => (w, w, 100 - 2 * w),
            BaselineKind::Stable => (w, 0, 100 - w),
        }
    }
}

#[cfg(test)]
mod tests;
