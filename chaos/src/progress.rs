//! What the operator sees while an experiment runs: the current step, time left and the
//! hypothesis probes' live values. On a terminal, one live status line (indicatif) with messages
//! printed above it; otherwise (CI, pipes) plain timestamped lines on stderr.

use crate::probe::ProbeResult;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    t0: Instant,
    planned: Duration,
    state: Mutex<(String, String)>,
}

impl Progress {
    pub fn new(quiet: bool, planned: Duration) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self {
            bar,
            quiet,
            t0: Instant::now(),
            planned,
            state: Mutex::new((String::new(), String::new())),
        }
    }

    fn left(&self) -> String {
        let left = self.planned.saturating_sub(self.t0.elapsed());
        format!("{}s left", left.as_secs())
    }

    fn redraw(&self) {
        if let Some(b) = &self.bar {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            b.set_message(format!("{} · {} · {}", s.0, self.left(), s.1));
        }
    }

    /// A line that stays (an event).
    pub fn say(&self, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(msg.as_ref()),
            None => eprintln!(
                "[chaos {:>6.1}s] {}",
                self.t0.elapsed().as_secs_f64(),
                msg.as_ref()
            ),
        }
    }

    /// The step now running.
    pub fn step(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.bar.is_none() {
            self.say(format!("{msg} ({})", self.left()));
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = msg;
        self.redraw();
    }

    /// Live probe values (shown on the status line; in plain mode, one line per check).
    pub fn probes(&self, phase: &str, results: &[ProbeResult]) {
        let line = results
            .iter()
            .map(|r| {
                format!(
                    "{}={} {}",
                    r.name,
                    r.value,
                    if r.tolerance_met { "✓" } else { "✗" }
                )
            })
            .collect::<Vec<_>>()
            .join("  ");
        if self.bar.is_none() {
            self.say(format!("hypothesis {phase}: {line}"));
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = line;
        self.redraw();
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
