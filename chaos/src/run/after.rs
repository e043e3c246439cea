//! After a completed method: settle, then the steady state after.

use super::*;

impl Run {
    pub(super) async fn after(&mut self) {
        self.steady.during = lock(&self.during).clone();
        self.deviated = self.steady.during.iter().any(|c| !c.met);
        let exp = self.exp.clone();
        if !matches!(self.end, Some(End::Completed))
            || !exp.runtime.hypothesis.after
            || exp.steady_state.is_empty()
        {
            return;
        }
        if !exp.runtime.settle.is_zero() {
            self.progress.step(format!(
                "settling for {}",
                humantime::format_duration(exp.runtime.settle)
            ));
            if let Err(s) =
                unless_signalled(&mut self.sig, tokio::time::sleep(exp.runtime.settle)).await
            {
                self.end = Some(End::Interrupted(s));
            }
        }
        if !matches!(self.end, Some(End::Completed)) {
            return;
        }
        self.progress.step("steady state after the method");
        if let Some(c) = self.steady_state("after").await {
            self.deviated |= !c.met;
            self.steady.after = Some(c);
        }
    }
}
