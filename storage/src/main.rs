#![forbid(unsafe_code)]

use clap::Parser;
use storage::cli::{exit, Cli, Cmd};
use storage::config::Config;
use storage::daemon::{CONFIG_FILE, IDENTITY_FILE, SWARM_KEY_FILE};
use storage::identity::Identity;
use storage::swarm_key::SwarmKey;

/// jemalloc instead of glibc's malloc, as in the sidecar: under 4K block writes a node allocates
/// and frees many small buffers across threads (replica batches, redb pages, HTTP frames), and
/// glibc's malloc/free/consolidate were ~11% of the coordinating node's CPU (perf, 4K randwrite).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    let code = match &cli.cmd {
        Cmd::Keygen => {
            print!("{}", SwarmKey::generate().to_file_format());
            exit::OK
        }
        Cmd::Init {
            data,
            swarm_key,
            set,
        } => report(init(&data.path, swarm_key.as_deref(), set)),
        Cmd::Check { data } => match Config::load(&data.path.join(CONFIG_FILE)) {
            Ok(_) => {
                println!("{}: ok", data.path.join(CONFIG_FILE).display());
                exit::OK
            }
            Err(e) => {
                eprintln!("Error: {e}");
                exit::CONFIG
            }
        },
        Cmd::Daemon { data, set } => daemon(&cli, &data.path, set),
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            match rt.block_on(storage::client::run(&cli)) {
                Ok(()) => exit::OK,
                Err(f) => {
                    eprintln!("Error: {}", f.message);
                    f.code
                }
            }
        }
    };
    std::process::exit(code);
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("Error: {e:#}");
            exit::FAILED
        }
    }
}

fn init(
    data: &std::path::Path,
    key: Option<&std::path::Path>,
    set: &storage::cli::ConfigFlags,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if data.join(IDENTITY_FILE).exists() {
        anyhow::bail!(
            "{} is already initialised (identity exists); refusing to overwrite it",
            data.display()
        );
    }
    let mut cfg = Config::default();
    set.apply(&mut cfg);
    if let Err(e) = cfg.validate() {
        anyhow::bail!("{e}");
    }
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let key = match key {
        Some(p) => SwarmKey::load(p)?,
        None => SwarmKey::generate(),
    };
    write_private(&data.join(SWARM_KEY_FILE), key.to_file_format().as_bytes())?;
    let ident = Identity::generate();
    write_private(
        &data.join(IDENTITY_FILE),
        serde_json::to_string_pretty(&ident)?.as_bytes(),
    )?;
    std::fs::write(data.join(CONFIG_FILE), cfg.to_toml())?;
    println!(
        "initialised node {} in {} (swarm key {})",
        ident.peer_id,
        data.display(),
        key.fingerprint()
    );
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn daemon(cli: &Cli, data: &std::path::Path, set: &storage::cli::ConfigFlags) -> i32 {
    init_logging(&cli.log_format);
    let mut cfg = match Config::load(&data.join(CONFIG_FILE)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return exit::CONFIG;
        }
    };
    set.apply(&mut cfg);
    if let Err(e) = cfg.validate() {
        eprintln!("Error: {e}");
        return exit::CONFIG;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let node = match storage::daemon::open(data, cfg) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("Error: {e:#}");
                return exit::FAILED;
            }
        };
        match storage::daemon::run(node).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("Error: {e:#}");
                exit::FAILED
            }
        }
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STORAGE_LOG")
        .unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
