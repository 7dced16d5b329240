//! The small tables: `[node]`, `[fs]`, `[log]`, `[metrics]`, `[standby]`, and the node name.

use super::*; // a part of `config`: its types, helpers and imports

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `metrics.listen`: where `twinfs run` serves Prometheus text on
    /// `/metrics`; `"off"` turns it off. Default `127.0.0.1:9747` (this host
    /// only: put a reverse proxy or an SSH tunnel in front to scrape remotely).
    pub listen: Option<std::net::SocketAddr>,
}

/// The default metrics address.
pub const DEFAULT_METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9747);

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(DEFAULT_METRICS),
        }
    }
}

/// `[standby]`: the secondary serves its replica read-only (issue 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyConfig {
    /// `standby.serve`: while secondary, mount the replica read-only at the
    /// mountpoint once it is UpToDate and connected, so that the standby's
    /// Apache serves too; promotion and demotion then switch the same mount
    /// between read-only and read-write in place. Default: `false` (the
    /// secondary mounts nothing, as before).
    pub serve: bool,
    /// `standby.max_lag`: how far behind the primary (in seconds of its
    /// history) the standby may be and still pass its health check
    /// (`/health` on the metrics address), `0s..=1h`. Default: 10s.
    pub max_lag: Duration,
}

/// The default `standby.max_lag`.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);

impl Default for StandbyConfig {
    fn default() -> Self {
        StandbyConfig {
            serve: false,
            max_lag: DEFAULT_MAX_LAG,
        }
    }
}

/// `[node]`: identity and local paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `node.name`: this node's name in logs, status and the peer protocol.
    /// Default: the hostname.
    pub name: NodeName,
    /// `node.data_dir`: the block store directory. Absolute. Default: `/var/lib/twinfs`.
    pub data_dir: PathBuf,
    /// `node.mountpoint`: where the filesystem is mounted. Absolute, and neither
    /// inside `data_dir` nor containing it. Default: `/srv/www`.
    pub mountpoint: PathBuf,
}

/// `[fs]`: FUSE and store tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// `fs.writeback_cache`: let the kernel batch writes in its page cache. Default: `false`
    /// (with it, every close invalidates cached attributes: a GETATTR per Apache request).
    pub writeback_cache: bool,
    /// `fs.attr_timeout`: how long the kernel caches attributes and directory entries,
    /// `0s..=1h`. Default: 60s (this node is the only writer, so the cache stays true).
    pub attr_timeout: Duration,
    /// `fs.threads`: FUSE worker threads, `1..=64`. Default: 4.
    pub threads: usize,
    /// `fs.checkpoint_interval`: how often the store checkpoints its index,
    /// `100ms..=10min`. Default: 5s.
    pub checkpoint_interval: Duration,
    /// `fs.force_unmount`: when a demotion (or shutdown) finds the mount busy,
    /// ask the processes using it to stop (SIGTERM), then kill them (SIGKILL)
    /// after `force_unmount_grace`, as Pacemaker's Filesystem agent does with
    /// `force_unmount`. Default: `true` (a busy mount must not keep an
    /// isolated node primary).
    pub force_unmount: bool,
    /// `fs.force_unmount_grace`: how long the users get between SIGTERM and
    /// SIGKILL, `0s..=10min`. Default: 5s.
    pub force_unmount_grace: Duration,
    /// `fs.suid_dev`: let setuid/setgid bits and device nodes on the mount take
    /// effect. Default: `false` (the mount is `nosuid,nodev`).
    pub suid_dev: bool,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// `log.level`: the most verbose level logged. Default: [`LogLevel::Info`].
    pub level: LogLevel,
}

/// A log verbosity, from least to most verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Lifecycle events as well (mounted, peer connected, promoted).
    #[default]
    Info,
    /// State transitions as well.
    Debug,
    /// Every frame and block as well.
    Trace,
}

/// A node's name: 1 to 63 characters from `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(pub(super) String);

impl Default for NodeConfig {
    /// The defaults of an empty file. The name is the hostname, or `localhost` when
    /// the hostname cannot serve as a node name (a file without `node.name` is an
    /// error in that case, rather than a silent `localhost`).
    fn default() -> Self {
        let name = read_hostname()
            .ok()
            .and_then(|h| NodeName::from_str(&h).ok())
            .unwrap_or_else(|| NodeName(FALLBACK_NODE_NAME.to_owned()));
        NodeConfig {
            name,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            mountpoint: PathBuf::from(DEFAULT_MOUNTPOINT),
        }
    }
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            writeback_cache: false,
            attr_timeout: DEFAULT_ATTR_TIMEOUT,
            threads: DEFAULT_THREADS,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            force_unmount: true,
            force_unmount_grace: Duration::from_secs(5),
            suid_dev: false,
        }
    }
}

impl LogLevel {
    /// All levels, least verbose first.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// The lowercase name, which is also a valid `tracing` `EnvFilter` directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = String;

    /// Parses a level name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, String> {
        LogLevel::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = LogLevel::ALL.iter().map(|l| l.as_str()).collect();
                format!("must be one of {}, got {s:?}", names.join(", "))
            })
    }
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl NodeName {
    /// The longest name allowed, in bytes (a DNS label's limit).
    pub const MAX_LEN: usize = 63;

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > NodeName::MAX_LEN || !s.chars().all(ok_char) {
            return Err(format!(
                "must be 1 to {} characters from [A-Za-z0-9._-], got {s:?}",
                NodeName::MAX_LEN
            ));
        }
        Ok(NodeName(s.to_owned()))
    }
}
