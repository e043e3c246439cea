//! Bulwark chaos experiments (`chaos run experiment.toml`) and planned outages.
//!
//! An experiment is read from TOML ([`experiment`]) or Chaos Toolkit JSON ([`ctk`]) into one
//! validated [`model::Experiment`]; nothing touches the cluster before the whole file has been
//! checked. [`run`] then drives it: background load ([`load`]), metric sampling of the sidecars
//! ([`prom`]), the steady-state hypothesis before, during and after ([`probe`]), the method's
//! actions ([`action`], every injection carrying a TTL), abort conditions, rollbacks, and finally
//! the journal ([`journal`]) and the HTML report ([`report`]). The process exit code tells the
//! outcomes apart ([`Verdict`]).
#![forbid(unsafe_code)]

pub mod action;
pub mod ctk;
pub mod experiment;
pub mod journal;
pub mod list;
pub mod load;
pub mod model;
pub mod probe;
pub mod progress;
pub mod prom;
pub mod report;
pub mod run;
pub mod schedule;
pub mod vars;

use serde::Serialize;

/// How a run ended; each has its own exit code so scripts and CI can tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The hypothesis held before, during and after the method.
    Held,
    /// The hypothesis failed during or after the method: a weakness was found.
    Deviated,
    /// The hypothesis failed before the method: nothing was injected.
    SteadyStateNotMet,
    /// An abort condition (or the hard maximum duration) stopped the experiment.
    Aborted,
    /// SIGINT or SIGTERM stopped the experiment.
    Interrupted,
    /// An action could not be carried out (e.g. a sidecar refused a fault).
    ActionFailed,
    /// `--dry-run`: the plan was printed, nothing was run.
    DryRun,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Held | Verdict::DryRun => 0,
            Verdict::Deviated => 1,
            Verdict::SteadyStateNotMet => 2,
            Verdict::Aborted => 3,
            Verdict::Interrupted => 4,
            Verdict::ActionFailed => 5,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Held => "hypothesis held",
            Verdict::Deviated => "hypothesis deviated: a weakness was found",
            Verdict::SteadyStateNotMet => {
                "steady state not met before the method: nothing was injected"
            }
            Verdict::Aborted => "aborted by a safeguard",
            Verdict::Interrupted => "interrupted",
            Verdict::ActionFailed => "an action failed",
            Verdict::DryRun => "dry run: nothing was run",
        }
    }
}

/// Exit code of an invalid experiment (EX_USAGE from sysexits.h).
pub const EXIT_INVALID: i32 = 64;
/// Exit code of an internal error (EX_SOFTWARE), e.g. the journal cannot be written.
pub const EXIT_INTERNAL: i32 = 70;
