//! Carrying out the final decisions: rollback (split removed first, then the members stopped),
//! promotion (restart the node on the candidate binary, then bake), and the verdict.
use super::setup::rolled_back_file;
use super::*;
use crate::decide::RollbackReason;
use crate::journal::Verdict;
use std::time::Duration;

impl Ctl {
    /// Runs the rollout to its end; the outcome. Whatever happens, the split is removed (unless
    /// promoted) and the members are stopped.
    pub(super) async fn drive(&mut self) -> Outcome {
        let mut rollout = Rollout::new(&self.plan, self.started.elapsed());
        let decision = match self.run_loop(&mut rollout).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("canary: {e}");
                self.event(format!("environment failure: {e}"));
                let reason = RollbackReason::Critical {
                    what: e.to_string(),
                };
                let d = Decision::Rollback { reason };
                self.rollback(&d).await;
                return self.conclude(Outcome::EnvironmentFailure, &d);
            }
        };
        let outcome = decision.outcome().unwrap_or(Outcome::RolledBack);
        if matches!(decision, Decision::Rollback { .. }) {
            self.rollback(&decision).await;
        } else if self.baking {
            // Promoted: the last bake's split goes now (was: left to its TTL, so a next rollout
            // on that node was refused as "another controller" until it expired).
            let _ = self
                .driver
                .sample("stable", "bake")
                .await
                .map(|(c, _)| add(&mut self.totals.0, &c.counts));
            match self.driver.delete().await {
                Ok(()) => self.event("bake split removed"),
                Err(e) => self.event(format!(
                    "removing the bake split failed: {e} (it expires with its TTL)"
                )),
            }
        }
        self.conclude(outcome, &decision)
    }

    /// Split first (timed from the decision), then the members; the counts before and after.
    async fn rollback(&mut self, d: &Decision) {
        let t0 = Instant::now();
        if let Ok((c, b)) = self.driver.sample("candidate", self.baseline_arm()).await {
            add(&mut self.totals.0, &c.counts);
            add(&mut self.totals.1, &b.counts);
        }
        if let Err(e) = self.driver.delete().await {
            self.event(format!(
                "removing the split failed: {e} (it expires with its TTL)"
            ));
        }
        let ms = t0.elapsed().as_millis() as u64;
        self.event(format!("{d}: split removed {ms} ms after the decision"));
        self.stop_members().await;
        self.restore_promoted().await;
        if let Some(load) = self.load.take() {
            load.abort();
        }
        let after = self.candidate_metric().await.map(|m| {
            let run = m.saturating_sub(self.metrics_at_start);
            run.saturating_sub(self.totals.0.requests)
        });
        if let Some(n) = after {
            self.event(format!(
                "candidate requests admitted after the split was removed: {n}"
            ));
        }
        let v = self.journal.verdict.get_or_insert_with(Verdict::default);
        v.split_removed_ms = Some(ms);
        v.admitted_after_split = after;
    }

    /// Stops the candidate and baseline; a member that did not leave cleanly is `peers rm`ed.
    pub(super) async fn stop_members(&mut self) {
        for m in [self.cand.take(), self.base.take()].into_iter().flatten() {
            let mut m = m;
            let clean = m.stop().await;
            let mut what = format!(
                "{} stopped ({})",
                m.name,
                if clean {
                    "left cleanly"
                } else {
                    "killed or crashed"
                }
            );
            if !clean && !m.peer_id.is_empty() {
                match process::peers_rm(&self.http, self.node.cluster, &m.peer_id).await {
                    Ok(()) => what.push_str(&format!("; peers rm {} done", m.peer_id)),
                    Err(e) => what.push_str(&format!("; peers rm {} failed: {e}", m.peer_id)),
                }
            }
            self.event(what);
        }
    }

    /// The bake split: the promoted node is stable; a zero-weight subset keeps the split (and so
    /// its counters) alive.
    pub(super) fn bake_subsets(&self) -> Vec<(SubsetTarget, u32)> {
        let addrs = self
            .listeners
            .iter()
            .map(|l| (l.name.clone(), node_port(&self.node, l.role)))
            .collect();
        vec![(
            SubsetTarget {
                name: "bake".into(),
                addrs,
                fault: None,
            },
            0,
        )]
    }

    /// Promotion of target `i`: split removed, members stopped, node restarted on the candidate
    /// (the plan's `restart`), its digest checked, then the bake split.
    pub(super) async fn promote(&mut self, i: usize) -> Result<(), Error> {
        if !self.baking {
            let _ = self
                .driver
                .sample("candidate", self.baseline_arm())
                .await
                .map(|(c, b)| {
                    add(&mut self.totals.0, &c.counts);
                    add(&mut self.totals.1, &b.counts);
                });
            self.driver.delete().await?;
            self.event("split removed for promotion");
            self.stop_members().await;
        } else {
            // The previous target's bake ends here: its last counts, then its bake split goes
            // (was: left on that sidecar until its TTL ran out when the driver moved on).
            let _ = self
                .driver
                .sample("stable", "bake")
                .await
                .map(|(c, _)| add(&mut self.totals.0, &c.counts));
            self.driver.delete().await?;
            self.event(format!(
                "bake split removed from {}",
                self.plan.targets[i - 1].node
            ));
        }
        let t = self.plan.targets[i].clone();
        let want = self.journal.digests.candidate.clone();
        let binary = self.plan.candidate.binary.clone();
        // Recorded before the restart: a node half-restarted on the candidate is restored too.
        if t.restart.is_some() {
            self.promoted.push(i);
        }
        let info = self.restart_node(i, "promoting", &binary, &want).await?;
        self.event(format!("{} runs the candidate (digest {want})", t.node));
        self.journal
            .verdict
            .get_or_insert_with(Verdict::default)
            .promoted_digest = Some(want);
        if i > 0 {
            let names = t.listeners.clone();
            self.listeners = node::listeners(&self.http, t.admin, &names, &info).await?;
            let c = self.driver.controller.clone();
            self.driver = SplitDriver::new(
                t.admin,
                names,
                c,
                self.plan.split.ttl,
                false,
                self.opts.seed,
            )?;
        }
        self.node = info;
        self.baking = true;
        self.driver.put(&self.bake_subsets()).await
    }

    /// Runs target `i`'s `restart` command on `binary` and waits up to 30 s for the node to
    /// report digest `want`; the node's info.
    async fn restart_node(
        &mut self,
        i: usize,
        what: &str,
        binary: &std::path::Path,
        want: &str,
    ) -> Result<NodeInfo, Error> {
        let t = self.plan.targets[i].clone();
        let restart = t.restart.clone().ok_or_else(|| {
            Error::Env(format!(
                "target {:?} has no `restart` in the plan: cannot promote",
                t.node
            ))
        })?;
        let data = t.data.clone().unwrap_or_else(|| self.node.data.clone());
        // Absolute, so the restart command may keep it (deploy/local records the node's binary).
        let binary = std::path::absolute(binary).unwrap_or_else(|_| binary.to_path_buf());
        let cmd = restart
            .replace("{binary}", &binary.display().to_string())
            .replace("{data}", &data.display().to_string());
        self.event(format!("{what} {}: {cmd}", t.node));
        let st = tokio::process::Command::new("sh")
            .args(["-c", &cmd])
            .status()
            .await;
        if !st.as_ref().is_ok_and(|s| s.success()) {
            return Err(Error::Env(format!("restart of {} failed: {st:?}", t.node)));
        }
        let info = NodeInfo::read(&data)?;
        let start = Instant::now();
        loop {
            if node::running_digest(&self.http, info.rpc).await.as_deref() == Some(want) {
                return Ok(info);
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(Error::Env(format!(
                    "{} does not report digest {want} 30 s after restart",
                    t.node
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A rollback after a promotion (the bake's guard rejected, an abort or a signal during the
    /// bake): every promoted node is restarted on the stable binary (`baseline.binary`, else
    /// `storage` beside `canary`), last promoted first — unless that binary's digest is not the
    /// one the node ran before the rollout, which is then said and left to the operator.
    async fn restore_promoted(&mut self) {
        if self.promoted.is_empty() {
            return;
        }
        let stable = setup::stable_binary(&self.plan);
        let have = digest(&stable).ok();
        let want = match (&self.journal.digests.stable, &have) {
            (Some(ran), Some(h)) if ran != h => {
                self.event(format!(
                    "cannot restore the promoted node(s): the stable binary {} has digest {h}, \
                     the node ran {ran} before the rollout; restart them on their old build by hand",
                    stable.display()
                ));
                return;
            }
            (_, Some(h)) => h.clone(),
            (_, None) => {
                self.event(format!(
                    "cannot restore the promoted node(s): stable binary {} unreadable",
                    stable.display()
                ));
                return;
            }
        };
        let mut all = true;
        while let Some(i) = self.promoted.pop() {
            let node = self.plan.targets[i].node.clone();
            match self.restart_node(i, "restoring", &stable, &want).await {
                Ok(_) => self.event(format!("{node} back on the stable build (digest {want})")),
                Err(e) => {
                    all = false;
                    self.event(format!("{node} not restored: {e}"));
                }
            }
        }
        if all {
            let v = self.journal.verdict.get_or_insert_with(Verdict::default);
            v.promoted_digest = None;
        }
    }

    /// The verdict: journal, report, rolled-back digest remembered, controller.json removed.
    fn conclude(&mut self, outcome: Outcome, d: &Decision) -> Outcome {
        let v = self.journal.verdict.get_or_insert_with(Verdict::default);
        v.outcome = format!("{outcome:?}");
        v.exit_code = outcome.exit_code();
        v.decision = d.to_string();
        v.candidate = self.totals.0;
        v.baseline = self.totals.1;
        let c = self.totals.0;
        let b = self.totals.1;
        let word = match outcome {
            Outcome::HeldUntilTimeout => "inconclusive: held until the timeout, rolled back",
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled back",
            Outcome::Aborted => "aborted (rolled back)",
            Outcome::Interrupted => "interrupted (rolled back)",
            _ => "environment failure (rolled back)",
        };
        println!(
            "canary: verdict: {word} ({d}) | candidate {} req {} err | baseline {} req {} err | exit {}",
            c.requests, c.errors(), b.requests, b.errors(), outcome.exit_code()
        );
        let remember = matches!(
            outcome,
            Outcome::RolledBack | Outcome::HeldUntilTimeout | Outcome::Aborted
        );
        if remember && self.opts.rehearse.is_none() {
            let f = rolled_back_file(&self.opts.state);
            let mut all = setup::rolled_back(&self.opts.state);
            all.push(self.journal.digests.candidate.clone());
            all.dedup();
            let _ = std::fs::write(f, serde_json::to_string_pretty(&all).unwrap_or_default());
        }
        self.save();
        if let Err(e) = crate::report::write(&self.journal, &self.opts.report) {
            eprintln!("canary: report {}: {e}", self.opts.report.display());
        }
        let _ = std::fs::remove_file(control::file(&self.opts.state));
        outcome
    }
}

fn node_port(n: &NodeInfo, r: node::Role) -> std::net::SocketAddr {
    match r {
        node::Role::Rpc => n.rpc,
        node::Role::Gateway => n.gateway,
        node::Role::Cluster => n.cluster,
    }
}
