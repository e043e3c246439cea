//! Starting a run: read the node and the sidecar, refuse a rolled-back digest, start the
//! candidate (and a fresh baseline) as transient members, install the split, open the control
//! endpoint, start the built-in load.
use super::rehearse::Rehearsal;
use super::*;
use crate::journal::Digests;
use std::collections::BTreeMap;
use std::path::Path;

/// What `canary run` was asked.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The plan file.
    pub plan_file: PathBuf,
    /// The state directory (controller.json, rolled-back digests, per-run data dirs).
    pub state: PathBuf,
    /// Seed for split routing, rehearsal faults.
    pub seed: u64,
    /// `journal.json` path.
    pub journal: PathBuf,
    /// `report.html` path.
    pub report: PathBuf,
    /// The rehearsal fault, as written and parsed.
    pub rehearse: Option<(String, Rehearsal)>,
    /// Run (and promote) a digest an earlier run rolled back.
    pub force: bool,
}

/// `rolled_back.json` in the state dir: digests never promoted again without `--force`.
pub fn rolled_back_file(state: &Path) -> PathBuf {
    state.join("rolled_back.json")
}

/// The digests earlier runs rolled back.
pub fn rolled_back(state: &Path) -> Vec<String> {
    std::fs::read_to_string(rolled_back_file(state))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The stable binary a fresh baseline runs: the plan's, else `storage` beside this executable.
pub fn stable_binary(plan: &Plan) -> PathBuf {
    plan.baseline.binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("storage")))
            .unwrap_or_else(|| PathBuf::from("storage"))
    })
}

fn env<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Env(format!("{what}: {e}"))
}

/// The candidate and (for a fresh baseline) the baseline, started at the same moment; if either
/// fails, the other is stopped.
async fn start_members(
    plan: &Plan,
    stable_bin: &Path,
    run_dir: &Path,
    node: &NodeInfo,
    http: &reqwest::Client,
) -> Result<(Member, Option<Member>), Error> {
    let fresh = plan.baseline.kind == BaselineKind::Fresh;
    let ports = process::allocate_ports(
        node.advertise.ip(),
        plan.members.ports,
        if fresh { 2 } else { 1 },
    )?;
    // A watchdog stops a member of a dead controller once its split has expired (TTL + 2 s).
    let pid_file = |name: &str| {
        let node = &plan.targets[0].node;
        process::Leash {
            pid_file: plan
                .members
                .pid_dir
                .as_ref()
                .map(|d| d.join(format!("{node}-{name}.pid"))),
            linger: plan.split.ttl + std::time::Duration::from_secs(2),
        }
    };
    let (cand, base) = tokio::join!(
        Member::start(
            "candidate",
            &plan.candidate.binary,
            run_dir,
            node,
            ports[0],
            pid_file("candidate"),
            http
        ),
        async {
            if fresh {
                Member::start(
                    "baseline",
                    stable_bin,
                    run_dir,
                    node,
                    ports[1],
                    pid_file("baseline"),
                    http,
                )
                .await
                .map(Some)
            } else {
                Ok(None)
            }
        }
    );
    match (cand, base) {
        (Ok(c), Ok(b)) => Ok((c, b)),
        (c, b) => {
            let mut first = None;
            for r in [c.map(Some), b] {
                match r {
                    Ok(Some(mut m)) => {
                        // Stopped while it may still be joining: its goodbye can miss members
                        // that had not seen it yet, so it is also removed for good (its identity
                        // is this run's only; a 404 for one that left cleanly is fine).
                        m.stop().await;
                        let _ = process::peers_rm(http, node.cluster, &m.peer_id).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            Err(first.unwrap_or_else(|| Error::Env("start failed".into())))
        }
    }
}

/// Everything up to the first tick; on failure nothing is left running.
pub(super) async fn start(opts: RunOptions) -> Result<Ctl, Error> {
    let plan = Plan::load(&opts.plan_file)?;
    let target = plan.targets[0].clone();
    let data = target.data.clone().ok_or_else(|| {
        Error::Env(format!(
            "target {:?} has no `data` (the node's data directory) in the plan; `canary run` needs \
             it to start transient members beside the node",
            target.node
        ))
    })?;
    let node = NodeInfo::read(&data)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(env("http client"))?;
    let listeners = node::listeners(&http, target.admin, &target.listeners, &node).await?;
    arms::refuse_other_controller(&target.node, target.admin, &target.listeners).await?;
    if !plan.candidate.binary.is_file() {
        return Err(Error::Env(format!(
            "candidate binary {} does not exist",
            plan.candidate.binary.display()
        )));
    }
    let cand_digest =
        digest(&plan.candidate.binary).map_err(|e| Error::Env(format!("candidate: {e}")))?;
    if !opts.force && rolled_back(&opts.state).contains(&cand_digest) {
        return Err(Error::Env(format!(
            "candidate digest {cand_digest} was rolled back by an earlier run ({}); pass --force \
             to roll it out again",
            rolled_back_file(&opts.state).display()
        )));
    }
    let controller = format!("canary-{}-{}", std::process::id(), opts.seed);
    let run_dir = opts.state.join("runs").join(&controller);
    std::fs::create_dir_all(&run_dir).map_err(env("state dir"))?;
    let fresh = plan.baseline.kind == BaselineKind::Fresh;
    let stable_bin = stable_binary(&plan);
    let (mut cand, mut base) = start_members(&plan, &stable_bin, &run_dir, &node, &http).await?;
    let digests = Digests {
        candidate: cand_digest,
        baseline: if fresh {
            digest(&stable_bin).ok()
        } else {
            None
        },
        stable: node::running_digest(&http, node.rpc).await,
    };
    match finish_setup(opts, plan, http, node, listeners, controller, digests).await {
        Ok(mut ctl) => {
            ctl.cand = Some(cand);
            ctl.base = base;
            ctl.started_members().await.map(|()| ctl)
        }
        Err(e) => {
            cand.stop().await;
            if let Some(b) = base.as_mut() {
                b.stop().await;
            }
            Err(e)
        }
    }
}

async fn finish_setup(
    opts: RunOptions,
    plan: Plan,
    http: reqwest::Client,
    node: NodeInfo,
    listeners: Vec<ListenerInfo>,
    controller: String,
    digests: Digests,
) -> Result<Ctl, Error> {
    let t = &plan.targets[0];
    let names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
    let driver = SplitDriver::new(
        t.admin,
        names,
        controller.clone(),
        plan.split.ttl,
        plan.split.sticky,
        opts.seed,
    )?;
    let journal = Journal {
        plan_file: opts.plan_file.display().to_string(),
        plan: plan.clone(),
        controller,
        seed: opts.seed,
        rehearsal: opts.rehearse.as_ref().map(|r| r.0.clone()),
        digests,
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ticks: vec![],
        actions: vec![],
        events: vec![],
        verdict: None,
    };
    Ok(Ctl {
        journal_path: opts.journal.clone(),
        weight: plan.steps.weights[0],
        plan,
        opts,
        http,
        node,
        listeners,
        driver,
        cand: None,
        base: None,
        cand_subset: SubsetTarget {
            name: "candidate".into(),
            addrs: BTreeMap::new(),
            fault: None,
        },
        base_subset: None,
        journal,
        started: Instant::now(),
        shared: Arc::new(Mutex::new(Shared::default())),
        baking: false,
        promoted: vec![],
        metrics_at_start: 0,
        totals: Default::default(),
        load: None,
    })
}

impl Ctl {
    /// With the members up: subsets (behind the rehearsal proxy if any), the split, the control
    /// endpoint, the load.
    async fn started_members(&mut self) -> Result<(), Error> {
        let cand = self
            .cand
            .as_ref()
            .ok_or(Error::Env("no candidate".into()))?;
        let cdig = &self.journal.digests.candidate;
        let what = format!(
            "candidate {} (pid {:?}, digest {cdig}) up as transient member {}",
            cand.binary.display(),
            cand.pid(),
            cand.peer_id
        );
        let addrs = self
            .listeners
            .iter()
            .map(|l| (l.name.clone(), cand.port(l.role)))
            .collect();
        self.cand_subset.addrs = addrs;
        self.cand_subset.fault = self.opts.rehearse.as_ref().map(|(_, r)| r.subset_fault());
        self.event(what);
        if let Some(b) = &self.base {
            let addrs = self
                .listeners
                .iter()
                .map(|l| (l.name.clone(), b.port(l.role)))
                .collect();
            self.base_subset = Some(SubsetTarget {
                name: "baseline".into(),
                addrs,
                fault: None,
            });
            let what = format!(
                "baseline {} (pid {:?}) up as transient member {}",
                b.binary.display(),
                b.pid(),
                b.peer_id
            );
            self.event(what);
        }
        if let Some((s, _)) = &self.opts.rehearse {
            let what = format!("REHEARSAL: fault {s} on the candidate's traffic only");
            self.event(what);
        }
        self.metrics_at_start = self.candidate_metric().await.unwrap_or(0);
        let s = self.subsets(self.weight);
        if let Err(e) = self.driver.put(&s).await {
            self.stop_members().await;
            return Err(e);
        }
        let w = self.weight;
        self.event(format!(
            "split installed on {:?}: candidate {w}%, ttl {}",
            self.driver.listeners,
            humantime::format_duration(self.plan.split.ttl)
        ));
        if let Err(e) = self.open_control().await {
            let _ = self.driver.delete().await;
            self.stop_members().await;
            return Err(e);
        }
        if let Some(load) = self.plan.load.clone() {
            let listen = self
                .listeners
                .iter()
                .find(|l| l.name == load.listener)
                .map(|l| l.listen);
            if let Some(listen) = listen {
                let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
                self.load = Some(load::start(&load, listen, sent));
                self.event(format!("built-in load: {} req/s to {listen}", load.rate));
            }
        }
        self.save();
        Ok(())
    }

    /// The control endpoint, a status before the first tick, and `controller.json`.
    async fn open_control(&mut self) -> Result<(), Error> {
        let addr = control::serve(self.shared.clone()).await?;
        {
            let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            sh.status = serde_json::json!({
                "plan": self.opts.plan_file.display().to_string(),
                "controller": self.journal.controller,
                "rehearsal": self.journal.rehearsal,
                "weight": self.weight,
                "line": format!("no tick yet: step 1, candidate {}%, first tick in {}",
                    self.weight, humantime::format_duration(self.plan.steps.tick)),
            });
        }
        let f = ControllerFile {
            addr,
            pid: std::process::id(),
            controller: self.driver.controller.clone(),
            plan: self.opts.plan_file.display().to_string(),
        };
        let text = serde_json::to_string_pretty(&f).unwrap_or_default();
        std::fs::write(control::file(&self.opts.state), text).map_err(env("controller.json"))
    }

    pub(super) async fn candidate_metric(&self) -> Option<u64> {
        let text = self.driver.admin.metrics().await.ok()?;
        Some(metric_attempts(&text, "candidate"))
    }
}

impl RunOptions {
    /// The binary a fresh baseline of `plan` would run (for `--dry-run`).
    pub fn stable_binary_of(plan: &Plan) -> PathBuf {
        stable_binary(plan)
    }
}
