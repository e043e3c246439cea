//! Rollbacks, per the strategy (always after an abort or a signal; never when nothing was
//! injected): everything still injected is removed, then the `[[rollback]]` actions run.

use super::method::record;
use super::*;

impl Run {
    fn should_roll_back(&self) -> bool {
        let forced = matches!(self.end, Some(End::Aborted(_)) | Some(End::Interrupted(_)));
        let failed = matches!(self.end, Some(End::ActionFailed(_)));
        !self.not_started
            && (forced
                || match self.exp.runtime.rollbacks {
                    RollbackStrategy::Always => true,
                    RollbackStrategy::OnDeviation => self.deviated || failed,
                    RollbackStrategy::Never => false,
                })
    }

    /// Rolls back if the strategy says so; returns the rollbacks' records.
    pub(super) async fn roll_back(&mut self) -> Vec<ActivityRecord> {
        let mut records = Vec::new();
        if !self.should_roll_back() {
            return records;
        }
        let (ctx, t0_wall) = (&self.ctx, self.t0_wall);
        self.progress.step("rolling back");
        let start_s = ctx.now_s();
        let (done, errors) = ctx.undo(None).await;
        if !done.is_empty() || !errors.is_empty() {
            let end_s = ctx.now_s();
            records.push(ActivityRecord {
                activity: "remove everything still injected".into(),
                type_: "cleanup".into(),
                status: if errors.is_empty() {
                    "succeeded"
                } else {
                    "failed"
                }
                .into(),
                background: false,
                start: wall(t0_wall, start_s),
                end: wall(t0_wall, end_s),
                start_s,
                duration_s: end_s - start_s,
                output: serde_json::json!(done),
                error: (!errors.is_empty()).then(|| errors.join("; ")),
                tolerance_met: None,
            });
        }
        for act in &self.exp.rollbacks {
            tokio::time::sleep(act.pause_before).await;
            let start_s = ctx.now_s();
            let o = ctx.perform(act).await;
            if !o.ok {
                self.progress.say(format!(
                    "rollback {} failed: {}",
                    act.name,
                    o.error.clone().unwrap_or_default()
                ));
            }
            records.push(record(ctx, t0_wall, act, start_s, &o));
            if let Some(d) = act.duration {
                tokio::time::sleep(d).await;
            }
            tokio::time::sleep(act.pause_after).await;
        }
        // Rollback actions can inject too (rarely): never leave those behind either.
        ctx.undo(None).await;
        records
    }

    /// Things still in force (their TTLs remove them), said and returned for the journal.
    pub(super) fn left_to_ttl(&self) -> Vec<String> {
        let left = self.ctx.outstanding();
        if !left.is_empty() {
            self.progress.say(format!(
                "left in place until their TTL: {}",
                left.join(", ")
            ));
        }
        left
    }
}
