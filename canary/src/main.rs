//! `canary`: SLO-driven progressive rollout of a storage build (docs/canary.md).
//!
//! Exit codes: 0 promoted, 1 rolled back, 2 held until timeout (inconclusive), 3 aborted,
//! 4 interrupted (rolled back), 5 environment failure, 64 invalid plan or usage.
#![forbid(unsafe_code)]

use canary::controller::{self, rehearse::Rehearsal, RunOptions};
use canary::decide::{Command, Outcome};
use canary::plan::{BaselineKind, Plan};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "canary",
    version,
    about = "Roll out a storage build step by step, decided by error-rate SLOs"
)]
struct Cli {
    /// State directory: controller.json, rolled-back digests, transient members' data.
    #[arg(long, global = true, env = "CANARY_STATE", default_value = ".canary")]
    state: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a plan; exit 0, or 64 printing FILE:LINE: field: message for every problem.
    Validate { plan: PathBuf },
    /// Run a rollout.
    Run(RunArgs),
    /// The running controller's last tick, with every number.
    Status,
    /// Pass the current step (or bake) now.
    Promote,
    /// End an inconclusive hold; the step gets another max_time.
    Resume,
    /// Roll back now (exit 3).
    Abort,
}

/// `canary run` arguments.
#[derive(clap::Args)]
struct RunArgs {
    /// The plan file.
    plan: PathBuf,
    /// Print what would be done and exit 0.
    #[arg(long)]
    dry_run: bool,
    /// Seed for split routing and rehearsal faults.
    #[arg(long)]
    seed: Option<u64>,
    /// Journal path (default STATE/journal.json).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Report path (default STATE/report.html).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Inject a fault on the candidate's traffic: abort=STATUS,percent=P or delay=MS,percent=P.
    #[arg(long)]
    rehearse: Option<String>,
    /// Roll out a digest an earlier run rolled back.
    #[arg(long)]
    force: bool,
}

fn load(plan: &Path) -> Result<Plan, i32> {
    Plan::load(plan).map_err(|e| {
        eprintln!("{e}");
        Outcome::InvalidPlan.exit_code()
    })
}

fn dry_run(p: &Plan, file: &Path, rehearse: Option<&str>) {
    let t = &p.targets[0];
    println!(
        "plan {} ({}): dry run, nothing is started",
        p.name,
        file.display()
    );
    println!("- start candidate {} as a transient member (storage init + daemon --transient), joined through {} ({})", p.candidate.binary.display(), t.node, t.data.as_ref().map_or("data: not set, needed".into(), |d| d.display().to_string()));
    if p.baseline.kind == BaselineKind::Fresh {
        let b = controller::RunOptions::stable_binary_of(p);
        println!(
            "- start a fresh baseline {} the same way, at the same moment",
            b.display()
        );
    } else {
        println!("- baseline: the stable node itself (the split's stable arm)");
    }
    let (a, b) = p.members.ports;
    println!(
        "- members bind the node's advertised host with ports {a}-{b} (5 each), use its outbound proxy if it has one; pid files: {}",
        p.members
            .pid_dir
            .as_ref()
            .map_or("none".into(), |d| format!("{}/{}-NAME.pid", d.display(), t.node))
    );
    if let Some(r) = rehearse {
        println!("- REHEARSAL: fault {r} on the candidate's traffic only");
    }
    for (i, _) in p.steps.weights.iter().enumerate() {
        let (c, b, s) = p.split_at(i);
        println!("- step {}: PUT /split on {} {:?}: candidate {c}%, baseline {b}%, stable {s}% (ttl {}, renewed every {}); min {} requests, {}..{}", i + 1, t.admin, t.listeners, humantime::format_duration(p.split.ttl), humantime::format_duration(p.steps.tick), p.steps.min_requests, humantime::format_duration(p.steps.min_time), humantime::format_duration(p.steps.max_time));
    }
    for t in p.targets.iter().take(p.promoted_nodes()) {
        println!(
            "- promote {}: {} then bake {}",
            t.node,
            t.restart
                .as_deref()
                .unwrap_or("(no restart command: cannot promote)"),
            humantime::format_duration(p.promotion.bake)
        );
    }
    println!(
        "- α per test {:.4} over {} tests; inconclusive: hold {} then roll back",
        p.alpha_per_test(),
        p.tests_in_budget(),
        humantime::format_duration(p.inconclusive.hold)
    );
}

fn validate(plan: &Path) -> i32 {
    match load(plan) {
        Ok(p) => {
            println!(
                "{}: plan {:?} is valid ({} steps, {} target(s))",
                plan.display(),
                p.name,
                p.steps.weights.len(),
                p.targets.len()
            );
            0
        }
        Err(c) => c,
    }
}

async fn run(cli: Cli) -> i32 {
    let state = cli.state;
    match cli.cmd {
        Cmd::Validate { plan } => validate(&plan),
        Cmd::Run(a) => run_plan(state, a).await,
        Cmd::Status => control(&state, None).await,
        Cmd::Promote => control(&state, Some(Command::Promote)).await,
        Cmd::Resume => control(&state, Some(Command::Resume)).await,
        Cmd::Abort => control(&state, Some(Command::Abort)).await,
    }
}

async fn run_plan(state: PathBuf, a: RunArgs) -> i32 {
    let p = match load(&a.plan) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let rehearse = match a
        .rehearse
        .map(|s| s.parse::<Rehearsal>().map(|r| (s, r)))
        .transpose()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("--rehearse: {e}");
            return 64;
        }
    };
    if a.dry_run {
        dry_run(&p, &a.plan, rehearse.as_ref().map(|r| r.0.as_str()));
        return 0;
    }
    if let Err(e) = std::fs::create_dir_all(&state) {
        eprintln!("canary: state dir {}: {e}", state.display());
        return Outcome::EnvironmentFailure.exit_code();
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 & 0xffff_ffff)
    });
    let opts = RunOptions {
        journal: a.journal.unwrap_or_else(|| state.join("journal.json")),
        report: a.report.unwrap_or_else(|| state.join("report.html")),
        plan_file: a.plan,
        state,
        seed,
        rehearse,
        force: a.force,
    };
    controller::run(opts).await.exit_code()
}

async fn control(state: &Path, cmd: Option<Command>) -> i32 {
    match controller::send(state, cmd).await {
        Ok(v) => {
            if let Some(line) = v["line"].as_str() {
                println!("{line}");
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("canary: {e}");
            Outcome::EnvironmentFailure.exit_code()
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 64 } else { 0 });
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("canary: runtime: {e}");
            std::process::exit(5);
        }
    };
    std::process::exit(rt.block_on(run(cli)));
}
