#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use sidecar::config::Config;
use std::path::PathBuf;

/// jemalloc instead of glibc's malloc: a proxied request allocates and frees a few dozen small
/// objects, often many of one size at once across connections, which overflows glibc's per-thread
/// cache into its slow paths (a fifth of the sidecar's instructions per request were in malloc/free).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit codes: 0 ok, 1 runtime failure (e.g. a port in use), 2 usage, 64 invalid configuration.
const EXIT_CONFIG: i32 = 64;

#[derive(Parser)]
#[command(
    name = "sidecar",
    version,
    about = "Bulwark resilience sidecar for storage nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy with a config file (SIGHUP reloads it, SIGTERM drains and exits).
    Run { config: PathBuf },
    /// Validate a config file without starting.
    Check { config: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                0
            }
            Err(e) => {
                eprintln!("Error: {e}");
                EXIT_CONFIG
            }
        },
        Cmd::Run { config } => run(config),
    };
    std::process::exit(code);
}

fn run(path: PathBuf) -> i32 {
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return EXIT_CONFIG;
        }
    };
    let mut builder = match cfg.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = builder.enable_all().build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let (log, telemetry) =
            match sidecar::telemetry::init(&cfg.log.level, cfg.log.format, &cfg.telemetry) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return 1;
                }
            };
        let bound = match sidecar::server::bind(&cfg).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("Error: {e}");
                return 1;
            }
        };
        let mut shared = match sidecar::server::SidecarState::new(cfg, Some(path), Some(log)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("Error: {e}");
                return 1;
            }
        };
        std::sync::Arc::get_mut(&mut shared)
            .expect("not shared yet")
            .tracing = telemetry.tracing_enabled();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let signals = {
            let shared = shared.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                loop {
                    tokio::select! {
                        _ = hup.recv() => { let _ = shared.reload_from_file(); }
                        _ = term.recv() => break,
                        _ = tokio::signal::ctrl_c() => break,
                    }
                }
                let _ = stop_tx.send(true);
            })
        };
        tracing::info!(admin = %bound.admin_addr(), "sidecar ready");
        sidecar::server::run(shared, bound, stop_rx).await;
        signals.abort();
        drop(telemetry); // flush spans
        0
    })
}
