//! `chaos`: run chaos experiments and planned outages against a Bulwark cluster.
//!
//! Exit codes: 0 hypothesis held (or a dry run / validation passed), 1 deviated, 2 steady state not
//! met before the method (nothing injected), 3 aborted by a safeguard, 4 interrupted (SIGINT or
//! SIGTERM), 5 an action failed, 64 invalid experiment or usage, 69 `list`: a sidecar could not be
//! reached, 70 internal error.
#![forbid(unsafe_code)]

use chaos::{experiment, list, run, vars, EXIT_INTERNAL, EXIT_INVALID};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "chaos",
    version,
    about = "Chaos experiments and planned outages for Bulwark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct VarArgs {
    /// Sets a variable: NAME=VALUE (overrides the file's [vars] / configuration). Repeatable.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = vars::parse_cli_var)]
    vars: Vec<(String, String)>,
}

impl VarArgs {
    fn map(&self) -> BTreeMap<String, String> {
        self.vars.iter().cloned().collect()
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks experiment files (TOML, or Chaos Toolkit JSON by the .json extension) without
    /// touching the cluster.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Runs an experiment.
    Run {
        file: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        /// Prints what would be done and exits 0; sends nothing to the cluster.
        #[arg(long)]
        dry_run: bool,
        /// Journal path (default: runtime.journal, else ./journal.json).
        #[arg(long)]
        journal: Option<PathBuf>,
        /// Report path (default: runtime.report, else the journal's path with .html).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Overrides runtime.seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Starts now even if the experiment's [schedule] says otherwise.
        #[arg(long)]
        ignore_schedule: bool,
        /// No progress output (the verdict is still printed).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Lists planned outages and leftover chaos faults on sidecars, and the next allowed start of
    /// scheduled experiments.
    List {
        /// Sidecar admin URL (e.g. http://127.0.0.11:9901). Repeatable.
        #[arg(long = "sidecar", value_name = "URL")]
        sidecars: Vec<String>,
        /// Experiments whose hosts' sidecars are listed and whose schedule is shown. Repeatable.
        #[arg(long = "experiment", value_name = "FILE")]
        experiments: Vec<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            std::process::exit(EXIT_INTERNAL);
        }
    };
    let code = rt.block_on(real_main(cli));
    // Background tasks (load requests in flight) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

async fn real_main(cli: Cli) -> i32 {
    match cli.cmd {
        Cmd::Validate { files, vars } => {
            let mut code = 0;
            for f in files {
                match experiment::load(&f, &vars.map()) {
                    Ok((e, warnings)) => {
                        for w in warnings {
                            eprintln!("warning: {w}");
                        }
                        println!(
                            "{}: valid: {:?} — {} probe(s), {} load(s), {} action(s), {} rollback(s), {} abort condition(s){}",
                            f.display(),
                            e.title,
                            e.steady_state.len(),
                            e.loads.len(),
                            e.method.len(),
                            e.rollbacks.len(),
                            e.aborts.len(),
                            if e.schedule.is_some() { ", scheduled" } else { "" }
                        );
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        code = EXIT_INVALID;
                    }
                }
            }
            code
        }
        Cmd::Run {
            file,
            vars,
            dry_run,
            journal,
            report,
            seed,
            ignore_schedule,
            quiet,
        } => {
            let (mut exp, warnings) = match experiment::load(&file, &vars.map()) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("chaos: invalid experiment: nothing was run");
                    return EXIT_INVALID;
                }
            };
            if let Some(s) = seed {
                exp.runtime.seed = s;
            }
            let journal = journal
                .or_else(|| exp.runtime.journal.clone())
                .unwrap_or_else(|| PathBuf::from("journal.json"));
            let report = report
                .or_else(|| exp.runtime.report.clone())
                .unwrap_or_else(|| journal.with_extension("html"));
            let opts = run::Options {
                dry_run,
                journal,
                report,
                quiet,
                ignore_schedule,
                warnings,
            };
            match run::run(exp, opts).await {
                Ok(v) => v.exit_code(),
                Err(run::RunError::Schedule(e)) => {
                    eprintln!("chaos: {e}: nothing was run");
                    EXIT_INVALID
                }
                Err(e) => {
                    eprintln!("chaos: {e}");
                    EXIT_INTERNAL
                }
            }
        }
        Cmd::List {
            mut sidecars,
            experiments,
            vars,
            format,
        } => {
            let mut exps = Vec::new();
            for f in &experiments {
                match experiment::load(f, &vars.map()) {
                    Ok((e, _)) => {
                        sidecars.extend(e.hosts.values().filter_map(|h| h.admin.clone()));
                        exps.push(e);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        return EXIT_INVALID;
                    }
                }
            }
            sidecars.dedup();
            if sidecars.is_empty() && exps.is_empty() {
                eprintln!("chaos list: give --sidecar URL or --experiment FILE");
                return EXIT_INVALID;
            }
            let l = list::collect(&sidecars, &exps).await;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&l).unwrap_or_default());
            } else {
                list::print_table(&l);
            }
            if l.sidecars.iter().any(|s| s.error.is_some()) {
                69
            } else {
                0
            }
        }
    }
}
