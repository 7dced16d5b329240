//! `twinfs`: the command-line entry point. It owns the CLI, the config, the
//! process lifetime (signals, shutdown order) and the wiring between crates;
//! filesystem rules live in `twinfs-fs`.

#![forbid(unsafe_code)]

mod apache;
mod apache_cmd;
pub mod config;
mod daemon;
mod demo;
mod drill;
mod failover_cmd;
mod gen;
mod init;
mod lab;
mod metrics;
mod mount;
mod panic;
mod perms;
mod supervisor;
mod unmount;

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
    /// Run this node of a replicated pair (foreground, until SIGTERM/SIGINT):
    /// replicate to the peer, and mount read-write while primary.
    Run {
        /// The config file (TOML), with a `[replication]` table.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Show the running node's status: role, disk, connection, lag, resync.
    Status {
        /// Print JSON instead of text.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh until Ctrl-C, with a progress bar during a resync.
        #[arg(long)]
        watch: bool,
        /// With --watch: how often (default 1s).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "watch")]
        interval: std::time::Duration,
        /// With --watch: stop after this many refreshes (for scripts).
        #[arg(long, requires = "watch")]
        count: Option<u64>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Make this node primary: mount read-write and replicate to the peer.
    /// Refused while the disk is Outdated or Inconsistent, or the peer is primary.
    Promote {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Make this node secondary: unmount (fails if the mount is busy).
    Demote {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Resolve a split brain by giving up this node's own changes since the
    /// split: at the next connection they are overwritten from the peer (DRBD's
    /// `--discard-my-data`). The node must be secondary.
    DiscardMyData {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Generate this node's TLS key and self-signed certificate, and print its
    /// fingerprint for the peer's config.
    Keygen {
        /// The config file: the paths come from replication.cert/key and the name from node.name.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Node name in the certificate (default: node.name).
        #[arg(long)]
        name: Option<String>,
        /// Where to write the certificate (default: replication.cert).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Where to write the private key (default: replication.key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// First-run setup: write this node's key, certificate and config from a
    /// few flags, and print how to pair it with the peer.
    Init(init::InitArgs),
    /// Print this node's Apache site for both servers serving: the VIP
    /// holder balances reads across both nodes and keeps writes to itself.
    ApacheConf(apache_cmd::ApacheConfArgs),
    /// Write the man page or shell completions (used when building packages).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: gen::GenerateCommand,
    },
    /// The network lab of the demo, the benches and the tests: network
    /// namespaces, veths, a bridge (used by scripts/lib/lab.sh).
    #[command(hide = true)]
    Lab {
        #[command(subcommand)]
        command: lab::cmd::LabCommand,
    },
    /// Validate or dry-run the Lua failover hooks.
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// Planned switchover: demote this primary (stop Apache, release the VIP,
    /// unmount), then let the peer promote. Nothing acknowledged is lost.
    Switchover {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The two-node demo: a replicated pair in network namespaces on this
    /// machine serving a page on a VIP, then the primary dies and the
    /// secondary takes over; prints the timeline (needs root, apache2, fuse3).
    Demo,
    /// Prove that failover works on a healthy pair: run on the primary, it
    /// compares block digests, switches over to the peer and back, and checks
    /// the VIP, the ARP answer and Apache after each move.
    Drill {
        /// The config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Maintenance mode: the supervisor keeps watching and explaining, but
    /// takes no automatic action.
    Maintenance {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run the witness, the diskless tie-breaker for a pair (on a third host).
    Witness {
        /// Address and UDP port to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The witness's own certificate (from `twinfs keygen --name witness`).
        #[arg(long)]
        cert: PathBuf,
        /// The witness's private key.
        #[arg(long)]
        key: PathBuf,
        /// A node's certificate; give it twice, once per node.
        #[arg(long = "node-cert", required = true)]
        node_certs: Vec<PathBuf>,
        /// How long a primary lease lasts without renewal (at least the nodes' deadtime).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        lease: std::time::Duration,
    },
    /// Print the SHA-256 fingerprint of a certificate file (as `peer_fingerprint` wants it).
    Fingerprint {
        /// The certificate (PEM).
        cert: PathBuf,
    },
    /// Check every block of an unmounted store against its digest; with
    /// --online, compare every record with the peer through the running primary.
    Verify {
        /// The data directory (default: node.data_dir from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Compare the running primary's records with the peer's, using range
        /// hashes (exit 1 if they differ).
        #[arg(long)]
        online: bool,
        /// With --online: ship the primary's values of the records that differ.
        #[arg(long, requires = "online")]
        repair: bool,
    },
}

/// `twinfs hooks ...`.
#[derive(Debug, Subcommand)]
enum HooksCommand {
    /// Compile a hook script and list its hooks, without running any.
    Check {
        /// The Lua script.
        file: PathBuf,
    },
    /// Run one hook (promote, demote, peer-lost, peer-back, split-brain)
    /// against a recorder and print the actions it would take.
    DryRun {
        /// Which hook.
        hook: String,
        /// The config file: the script path and the values hooks read come
        /// from its `[failover]` table.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The script (overrides failover.script).
        #[arg(long)]
        script: Option<PathBuf>,
    },
}

/// Which node a control command talks to.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The config file (its node.data_dir locates the daemon's control socket).
    #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The data directory (overrides the config's node.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl NodeArgs {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        Ok(load_config(Some(&self.config))?.node.data_dir)
    }
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
            if let Some(path) = &config {
                perms::check_not_world_writable(path).map_err(|e| UsageError(e.to_string()))?;
            }
            init_tracing(cfg.log.level.as_str());
            let data_dir = data_dir.unwrap_or_else(|| cfg.node.data_dir.clone());
            let mountpoint = mountpoint.unwrap_or_else(|| cfg.node.mountpoint.clone());
            mount::run(&cfg, &data_dir, &mountpoint)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let cfg = load_config(Some(&config))?;
            // The config, the key, the certificates and the hook script: nobody
            // but root may change them (issue 13). config.rs only parses.
            perms::check_config_files(&config, &cfg).map_err(|e| UsageError(e.to_string()))?;
            init_tracing(cfg.log.level.as_str());
            // A panic in any thread ends the process (issue 13): logged, then abort.
            panic::install_hook();
            daemon::run(&cfg, Some(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            json,
            watch,
            interval,
            count,
            node,
        } => {
            if watch {
                daemon::watch(&node.data_dir()?, interval, count)
            } else {
                daemon::control(
                    &node.data_dir()?,
                    twinfs_replicator::control::Request::Status,
                    json,
                )
            }
        }
        Command::Promote { node } => daemon::control(
            &node.data_dir()?,
            twinfs_replicator::control::Request::Promote,
            false,
        ),
        Command::Demote { node } => daemon::control(
            &node.data_dir()?,
            twinfs_replicator::control::Request::Demote,
            false,
        ),
        Command::DiscardMyData { node } => daemon::control(
            &node.data_dir()?,
            twinfs_replicator::control::Request::DiscardMyData,
            false,
        ),
        Command::Keygen {
            config,
            name,
            cert,
            key,
        } => {
            let cfg = load_config(config.as_ref())?;
            let r = cfg.replication.as_ref();
            let cert = cert
                .or_else(|| r.map(|r| r.cert.clone()))
                .unwrap_or_else(|| PathBuf::from("/etc/twinfs/node.crt"));
            let key = key
                .or_else(|| r.map(|r| r.key.clone()))
                .unwrap_or_else(|| PathBuf::from("/etc/twinfs/node.key"));
            let name = name.unwrap_or_else(|| cfg.node.name.to_string());
            daemon::keygen(&name, &cert, &key)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(args) => init::main(&args),
        Command::ApacheConf(args) => apache_cmd::main(&args),
        Command::Generate { command } => gen::run(&command),
        Command::Hooks { command } => match command {
            HooksCommand::Check { file } => failover_cmd::hooks_check(&file),
            HooksCommand::DryRun {
                hook,
                config,
                script,
            } => {
                let cfg = if config.exists() || script.is_none() {
                    load_config(Some(&config))?
                } else {
                    config::Config::default()
                };
                let f = cfg.failover.clone();
                let script = script
                    .or_else(|| f.as_ref().map(|f| f.script.clone()))
                    .unwrap_or_else(|| PathBuf::from("/etc/twinfs/failover.lua"));
                let vars = f.map(|f| f.hook_vars()).unwrap_or_default();
                failover_cmd::hooks_dry_run(
                    &hook,
                    &script,
                    cfg.node.name.as_str(),
                    vars,
                    cfg.standby.serve,
                )
            }
        },
        Command::Demo => demo::run(),
        Command::Lab { command } => lab::cmd::run(command),
        Command::Drill { config } => {
            let cfg = load_config(Some(&config))?;
            init_tracing("warn");
            drill::run(&cfg)
        }
        Command::Switchover { node } => failover_cmd::switchover(&node.data_dir()?),
        Command::Maintenance { state, node } => {
            failover_cmd::maintenance(&node.data_dir()?, state == "on")
        }
        Command::Witness {
            listen,
            cert,
            key,
            node_certs,
            lease,
        } => {
            if key.symlink_metadata().is_ok() {
                perms::check_private_key(&key).map_err(|e| UsageError(e.to_string()))?;
            }
            init_tracing("info");
            failover_cmd::witness(listen, &cert, &key, &node_certs, lease)
        }
        Command::Fingerprint { cert } => {
            daemon::fingerprint(&cert)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            data_dir,
            config,
            online,
            repair,
        } => {
            let cfg = load_config(config.as_ref())?;
            init_tracing("warn");
            let data_dir = data_dir.unwrap_or_else(|| cfg.node.data_dir.clone());
            if online {
                daemon::control(
                    &data_dir,
                    twinfs_replicator::control::Request::Verify { repair },
                    false,
                )
            } else {
                mount::verify(&data_dir)
            }
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
