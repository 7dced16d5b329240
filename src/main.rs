//! `twinfs`: the command-line entry point. It owns the CLI, the config, the
//! process lifetime (signals, shutdown order) and the wiring between crates;
//! filesystem rules live in `twinfs-fs`.

#![forbid(unsafe_code)]

pub mod config;
mod mount;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A replicated two-node filesystem with a failover supervisor.
#[derive(Debug, Parser)]
#[command(name = "twinfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount the store in DATA_DIR at MOUNTPOINT (foreground, until unmounted or SIGTERM/SIGINT).
    Mount {
        /// The data directory (default: node.data_dir from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file (TOML). Without it, built-in defaults apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to mount (default: node.mountpoint from the config).
        mountpoint: Option<PathBuf>,
    },
    /// Check every block of an unmounted store against its digest.
    Verify {
        /// The data directory (default: node.data_dir from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Errors that are the user's input: exit code 2 instead of 1.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<config::Config> {
    match path {
        Some(p) => config::Config::load(p).map_err(|e| UsageError(e.to_string()).into()),
        None => Ok(config::Config::default()),
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},fuser=warn")));
    // Colours only on a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Mount {
            data_dir,
            config,
            mountpoint,
        } => {
            let cfg = load_config(config.as_ref())?;
            init_tracing(cfg.log.level.as_str());
            let data_dir = data_dir.unwrap_or_else(|| cfg.node.data_dir.clone());
            let mountpoint = mountpoint.unwrap_or_else(|| cfg.node.mountpoint.clone());
            mount::run(&cfg, &data_dir, &mountpoint)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { data_dir, config } => {
            let cfg = load_config(config.as_ref())?;
            init_tracing("warn");
            let data_dir = data_dir.unwrap_or_else(|| cfg.node.data_dir.clone());
            mount::verify(&data_dir)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, the whole cause chain: what an admin greps for in the journal.
            eprintln!("twinfs: error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
