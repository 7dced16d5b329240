//! The `twinfs` configuration file (`/etc/twinfs/twinfs.toml`).
//!
//! Loading has two stages, as in ripgrep's `LowArgs` → `HiArgs`:
//!
//! 1. [`RawConfig`] mirrors the TOML file with serde. Every table denies unknown
//!    keys, and every field is optional, so an empty file is a valid config.
//! 2. [`Config::from_toml_str`] checks each value and turns it into its typed form
//!    (`Duration`, `PathBuf`, [`LogLevel`], [`NodeName`]), filling in defaults.
//!
//! Every error names the file, the line where the line is known, the dotted field
//! and the offending value, on one line, e.g.
//! `/etc/twinfs/twinfs.toml:7: fs.threads: must be between 1 and 64, got 0`.
//!
//! Adding an option: a field in the `Raw*` table (wrapped in `Spanned` when stage 2
//! can reject its value, so the error gets a line), its typed twin, its default,
//! its check in `Config::from_raw`, and an entry in `packaging/twinfs.toml`, whose
//! parse is unit-tested below. A new table also needs `#[serde(deny_unknown_fields,
//! default, expecting = "a table")]` on its struct and `#[serde(deserialize_with =
//! "table")]` on the field that holds it.
//!
//! The items are `pub` for documentation and so that the binary can hold the module
//! as `pub mod config;` (which keeps `unreachable_pub` and `dead_code` quiet about the
//! accessors it does not call yet).

use std::fmt;
use std::io;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

mod failover;
pub use failover::{
    BeaconConfig, EscalationName, FailoverConfig, ServiceConfig, VipConfig, WitnessConfig,
};

/// Where an administrator's config lives when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/twinfs/twinfs.toml";

/// The validated configuration of one `twinfs` node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `[node]`: who this node is and where its data and mount live.
    pub node: NodeConfig,
    /// `[fs]`: the FUSE mount and the block store.
    pub fs: FsConfig,
    /// `[log]`: what the daemon logs.
    pub log: LogConfig,
    /// `[replication]`: the peer and the link; `None` when the table is absent
    /// (a single-node `twinfs mount` needs none, `twinfs run` does).
    pub replication: Option<ReplicationConfig>,
    /// `[failover]`: the supervisor; `None` when the table is absent (promotion
    /// is then manual).
    pub failover: Option<FailoverConfig>,
    /// `[metrics]`: the Prometheus endpoint of `twinfs run`.
    pub metrics: MetricsConfig,
}

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

/// `[replication]`: the peer, trust, and the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `replication.listen`: this node's address and UDP port on the replication
    /// link (a specific address, not 0.0.0.0). Required.
    pub listen: std::net::SocketAddr,
    /// `replication.peer`: the peer's address and port on the link. Required.
    pub peer: std::net::SocketAddr,
    /// `replication.cert`: this node's certificate (PEM). Default `/etc/twinfs/node.crt`.
    pub cert: PathBuf,
    /// `replication.key`: this node's private key (PEM). Default `/etc/twinfs/node.key`.
    pub key: PathBuf,
    /// `replication.peer_cert` or `replication.peer_fingerprint`: the one peer
    /// certificate accepted. Exactly one of the two is required.
    pub peer_trust: PeerTrustConfig,
    /// `replication.protocol`: `"A"`, `"B"` or `"C"`. Default `"C"`.
    pub protocol: ProtocolName,
    /// `replication.keepalive`: heartbeat interval, `10ms..=1min`. Default 200ms.
    pub keepalive: Duration,
    /// `replication.deadtime`: silence after which the peer is declared dead,
    /// longer than keepalive, at most 10min. Default 1s.
    pub deadtime: Duration,
    /// `replication.on_peer_loss`: `"continue"` (default) or `"suspend"`.
    pub on_peer_loss: OnPeerLossName,
    /// `replication.split_brain`: `"disconnect"` (default), `"discard-zero-changes"`,
    /// `"discard-younger-primary"` or `"discard-least-changes"`.
    pub split_brain: SplitBrainName,
    /// `replication.resync_rate`: the most a resync sends per second, in bytes
    /// (`"40MiB"`, `"500KiB"`); 0 (`"unlimited"`, the default) means no limit.
    pub resync_rate: u64,
}

/// How the peer's certificate is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTrustConfig {
    /// `peer_cert`: a PEM file holding the peer's certificate.
    CertFile(PathBuf),
    /// `peer_fingerprint`: `"sha256:AB:CD:..."`.
    Fingerprint(String),
}

/// `replication.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolName {
    /// Asynchronous.
    A,
    /// Semi-synchronous.
    B,
    /// Synchronous.
    #[default]
    C,
}

/// `replication.on_peer_loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPeerLossName {
    /// Keep serving alone.
    #[default]
    Continue,
    /// Block writes until the peer is back.
    Suspend,
}

/// `replication.split_brain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitBrainName {
    /// Refuse to connect and let the admin decide.
    #[default]
    Disconnect,
    /// The side that changed nothing takes the other's data.
    DiscardZeroChanges,
    /// The side that became primary later is overwritten.
    DiscardYoungerPrimary,
    /// The side with fewer changed blocks is overwritten.
    DiscardLeastChanges,
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
pub struct NodeName(String);

/// Why a config could not be loaded. `Display` is one line, led by `FILE:LINE:`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable or not UTF-8).
    // The OS error is part of the message rather than a `source()`, so that the
    // one-line `Display` is complete wherever it is printed.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The file is not valid TOML.
    #[error("{at}: invalid TOML: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The TOML parser's message, on one line.
        message: String,
    },
    /// A key that is not part of the schema (usually a typo or a misplaced key).
    #[error("{at}: unknown field {field}{expected}", expected = expected_suffix(expected))]
    UnknownField {
        /// Where.
        at: Location,
        /// The full dotted key, e.g. `fs.bogus`.
        field: String,
        /// The keys its table accepts.
        expected: Vec<String>,
    },
    /// A value of the wrong TOML type, e.g. a string where a number belongs.
    #[error("{at}: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    WrongType {
        /// Where.
        at: Location,
        /// The full dotted key, when it can be told.
        field: Option<String>,
        /// What was found and what was expected.
        message: String,
    },
    /// A value of the right type that is not allowed (out of range, malformed).
    #[error("{at}: {field}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// The full dotted key, e.g. `fs.threads`.
        field: String,
        /// The rule and the offending value.
        message: String,
    },
}

/// A place in a config file: the file and, when known, the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The config file.
    pub path: PathBuf,
    /// The 1-based line, when the error can be pinned to one.
    pub line: Option<usize>,
}

const DEFAULT_DATA_DIR: &str = "/var/lib/twinfs";
const DEFAULT_MOUNTPOINT: &str = "/srv/www";
const DEFAULT_ATTR_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_THREADS: usize = 4;
const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_CERT: &str = "/etc/twinfs/node.crt";
const DEFAULT_KEY: &str = "/etc/twinfs/node.key";
const DEFAULT_KEEPALIVE: Duration = Duration::from_millis(200);
const DEFAULT_DEADTIME: Duration = Duration::from_secs(1);
const KEEPALIVE_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(60);
const DEADTIME_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(20)..=Duration::from_secs(600);

const ATTR_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);
const THREADS_RANGE: RangeInclusive<i64> = 1..=64;
const CHECKPOINT_INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// The node name used when the hostname cannot serve as one (for `Default` only).
const FALLBACK_NODE_NAME: &str = "localhost";

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates `text`, the contents of the config file `path`
    /// (`path` is used only in error messages).
    ///
    /// A missing `node.name` defaults to the hostname, which must then be a valid
    /// [`NodeName`].
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_str_with(text, path, read_hostname)
    }

    fn from_toml_str_with(
        text: &str,
        path: &Path,
        hostname: impl FnOnce() -> io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let cx = Cx { text, path };
        // Parse untyped first, so that syntax errors are told apart from schema errors.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::Syntax {
                at: cx.at(e.span()),
                message: one_line(e.message()),
            });
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| cx.schema_error(&e))?;
        Config::from_raw(raw, &cx, hostname)
    }

    /// Stage 2: check every value and fill in defaults. Checks run in schema order,
    /// and the first failure is returned.
    fn from_raw(
        raw: RawConfig,
        cx: &Cx<'_>,
        hostname: impl FnOnce() -> io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let RawConfig {
            node,
            fs,
            log,
            replication,
            failover,
            metrics,
        } = raw;

        let name = match node.name {
            Some(name) => NodeName::from_str(name.get_ref())
                .map_err(|msg| cx.invalid("node.name", name.span(), msg))?,
            None => {
                let host = hostname().map_err(|e| {
                    cx.invalid_nowhere(
                        "node.name",
                        format!("not set, and the hostname cannot be read ({e}); set it"),
                    )
                })?;
                NodeName::from_str(&host).map_err(|msg| {
                    cx.invalid_nowhere(
                        "node.name",
                        format!("not set, and the hostname cannot serve as one: {msg}; set it"),
                    )
                })?
            }
        };
        let data_dir = absolute_path(cx, "node.data_dir", node.data_dir, DEFAULT_DATA_DIR)?;
        let mountpoint = absolute_path(cx, "node.mountpoint", node.mountpoint, DEFAULT_MOUNTPOINT)?;
        check_disjoint(cx, &data_dir, &mountpoint)?;
        let (data_dir, mountpoint) = (data_dir.path, mountpoint.path);

        let writeback_cache = fs.writeback_cache.unwrap_or(false);
        let attr_timeout = duration_in(
            cx,
            "fs.attr_timeout",
            fs.attr_timeout,
            DEFAULT_ATTR_TIMEOUT,
            ATTR_TIMEOUT_RANGE,
        )?;
        let threads = match fs.threads {
            None => DEFAULT_THREADS,
            Some(t) => {
                let n = t.get_ref().0;
                if !THREADS_RANGE.contains(&n) {
                    return Err(cx.invalid(
                        "fs.threads",
                        t.span(),
                        format!(
                            "must be between {} and {}, got {n}",
                            THREADS_RANGE.start(),
                            THREADS_RANGE.end()
                        ),
                    ));
                }
                // In range, so it fits.
                n as usize
            }
        };
        let checkpoint_interval = duration_in(
            cx,
            "fs.checkpoint_interval",
            fs.checkpoint_interval,
            DEFAULT_CHECKPOINT_INTERVAL,
            CHECKPOINT_INTERVAL_RANGE,
        )?;
        let force_unmount = fs.force_unmount.unwrap_or(true);
        let suid_dev = fs.suid_dev.unwrap_or(false);
        let force_unmount_grace = duration_in(
            cx,
            "fs.force_unmount_grace",
            fs.force_unmount_grace,
            Duration::from_secs(5),
            Duration::ZERO..=Duration::from_secs(600),
        )?;

        let level = match log.level {
            None => LogLevel::default(),
            Some(l) => LogLevel::from_str(l.get_ref())
                .map_err(|msg| cx.invalid("log.level", l.span(), msg))?,
        };

        if let (Some(f), None) = (&failover, &replication) {
            let _ = f;
            return Err(cx.invalid_nowhere(
                "failover",
                "[failover] needs a [replication] table: the supervisor fails over to the peer \
                 named there"
                    .into(),
            ));
        }
        Ok(Config {
            node: NodeConfig {
                name,
                data_dir,
                mountpoint,
            },
            fs: FsConfig {
                writeback_cache,
                attr_timeout,
                threads,
                checkpoint_interval,
                force_unmount,
                force_unmount_grace,
                suid_dev,
            },
            log: LogConfig { level },
            replication: replication
                .map(|r| ReplicationConfig::from_raw(r, cx))
                .transpose()?,
            failover: failover
                .map(|f| FailoverConfig::from_raw(f, cx))
                .transpose()?,
            metrics: MetricsConfig {
                listen: match metrics.listen {
                    None => Some(DEFAULT_METRICS),
                    Some(l) if l.get_ref() == "off" => None,
                    Some(l) => Some(l.get_ref().parse().map_err(|_| {
                        cx.invalid(
                            "metrics.listen",
                            l.span(),
                            format!(
                                "must be IP:PORT (e.g. \"127.0.0.1:9747\") or \"off\", got {:?}",
                                l.get_ref()
                            ),
                        )
                    })?),
                },
            },
        })
    }
}

impl ReplicationConfig {
    fn from_raw(r: RawReplication, cx: &Cx<'_>) -> Result<ReplicationConfig, ConfigError> {
        let addr = |field: &str, raw: Option<Spanned<String>>, what: &str| {
            let raw = raw.ok_or_else(|| {
                cx.invalid_nowhere(field, format!("missing: {what}, e.g. \"10.99.0.1:7789\""))
            })?;
            let a = socket_addr(cx, field, &raw, "10.99.0.1:7789")?;
            Ok((a, raw.span()))
        };
        let (listen, _) = addr(
            "replication.listen",
            r.listen,
            "this node's address and port on the replication link",
        )?;
        let (peer, peer_span) = addr(
            "replication.peer",
            r.peer,
            "the peer's address and port on the replication link",
        )?;
        if peer == listen {
            return Err(cx.invalid(
                "replication.peer",
                peer_span,
                format!("must differ from replication.listen, both are {listen}"),
            ));
        }
        let cert = absolute_path(cx, "replication.cert", r.cert, DEFAULT_CERT)?.path;
        let key = absolute_path(cx, "replication.key", r.key, DEFAULT_KEY)?.path;
        let peer_trust =
            match (r.peer_cert, r.peer_fingerprint) {
                (Some(_), Some(f)) => return Err(cx.invalid(
                    "replication.peer_fingerprint",
                    f.span(),
                    "set either replication.peer_cert or replication.peer_fingerprint, not both"
                        .into(),
                )),
                (None, None) => return Err(cx.invalid_nowhere(
                    "replication.peer_cert",
                    "missing: the peer's certificate file (or set replication.peer_fingerprint); \
                     twinfs trusts exactly one peer certificate"
                        .into(),
                )),
                (Some(c), None) => PeerTrustConfig::CertFile(
                    absolute_path(cx, "replication.peer_cert", Some(c), "")?.path,
                ),
                (None, Some(f)) => {
                    let hex: String = f
                        .get_ref()
                        .trim_start_matches("sha256:")
                        .chars()
                        .filter(|c| *c != ':')
                        .collect();
                    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(cx.invalid(
                            "replication.peer_fingerprint",
                            f.span(),
                            format!(
                                "must be a SHA-256 fingerprint as `twinfs fingerprint` prints it \
                             (\"sha256:AB:CD:...\", 32 bytes), got {:?}",
                                f.get_ref()
                            ),
                        ));
                    }
                    PeerTrustConfig::Fingerprint(f.into_inner())
                }
            };
        let protocol = match r.protocol {
            None => ProtocolName::C,
            Some(p) => match p.get_ref().to_ascii_uppercase().as_str() {
                "A" => ProtocolName::A,
                "B" => ProtocolName::B,
                "C" => ProtocolName::C,
                _ => {
                    return Err(cx.invalid(
                        "replication.protocol",
                        p.span(),
                        format!("must be \"A\", \"B\" or \"C\", got {:?}", p.get_ref()),
                    ))
                }
            },
        };
        let keepalive_span = r.keepalive.as_ref().map(|k| k.span());
        let keepalive = duration_in(
            cx,
            "replication.keepalive",
            r.keepalive,
            DEFAULT_KEEPALIVE,
            KEEPALIVE_RANGE,
        )?;
        let deadtime_span = r.deadtime.as_ref().map(|k| k.span());
        let deadtime = duration_in(
            cx,
            "replication.deadtime",
            r.deadtime,
            DEFAULT_DEADTIME,
            DEADTIME_RANGE,
        )?;
        if deadtime <= keepalive {
            return Err(ConfigError::Invalid {
                at: cx.at(deadtime_span.or(keepalive_span)),
                field: "replication.deadtime".into(),
                message: format!(
                    "must be longer than replication.keepalive ({}), got {}",
                    humantime::format_duration(keepalive),
                    humantime::format_duration(deadtime)
                ),
            });
        }
        let on_peer_loss = match r.on_peer_loss {
            None => OnPeerLossName::Continue,
            Some(v) => match v.get_ref().as_str() {
                "continue" => OnPeerLossName::Continue,
                "suspend" => OnPeerLossName::Suspend,
                _ => {
                    return Err(cx.invalid(
                        "replication.on_peer_loss",
                        v.span(),
                        format!("must be \"continue\" or \"suspend\", got {:?}", v.get_ref()),
                    ))
                }
            },
        };
        let split_brain = match r.split_brain {
            None => SplitBrainName::Disconnect,
            Some(v) => match v.get_ref().as_str() {
                "disconnect" => SplitBrainName::Disconnect,
                "discard-zero-changes" => SplitBrainName::DiscardZeroChanges,
                "discard-younger-primary" => SplitBrainName::DiscardYoungerPrimary,
                "discard-least-changes" => SplitBrainName::DiscardLeastChanges,
                _ => return Err(cx.invalid(
                    "replication.split_brain",
                    v.span(),
                    format!(
                        "must be \"disconnect\", \"discard-zero-changes\", \"discard-younger-primary\" \
                         or \"discard-least-changes\", got {:?}",
                        v.get_ref()
                    ),
                )),
            },
        };
        let resync_rate = match r.resync_rate {
            None => 0,
            Some(v) => parse_rate(v.get_ref()).ok_or_else(|| {
                cx.invalid(
                    "replication.resync_rate",
                    v.span(),
                    format!(
                        "must be a rate in bytes per second such as \"40MiB\", \"500KiB\" or \"unlimited\", got {:?}",
                        v.get_ref()
                    ),
                )
            })?,
        };
        Ok(ReplicationConfig {
            resync_rate,
            listen,
            peer,
            cert,
            key,
            peer_trust,
            protocol,
            keepalive,
            deadtime,
            on_peer_loss,
            split_brain,
        })
    }
}

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

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

fn expected_suffix(expected: &[String]) -> String {
    match expected {
        [] => ", this table has no fields".to_owned(),
        [one] => format!(", expected {one}"),
        many => format!(", expected one of {}", many.join(", ")),
    }
}

// ---------------------------------------------------------------------------------
// Stage 1: the file as written.

/// The config file as written: every key optional, unknown keys rejected. Values
/// that stage 2 can reject keep their span, so that their errors carry a line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawConfig {
    #[serde(deserialize_with = "table")]
    node: RawNode,
    #[serde(deserialize_with = "table")]
    fs: RawFs,
    #[serde(deserialize_with = "table")]
    log: RawLog,
    #[serde(deserialize_with = "opt_table")]
    replication: Option<RawReplication>,
    #[serde(deserialize_with = "opt_table")]
    failover: Option<failover::RawFailover>,
    #[serde(deserialize_with = "table")]
    metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawReplication {
    listen: Option<Spanned<String>>,
    peer: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    peer_cert: Option<Spanned<String>>,
    peer_fingerprint: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    keepalive: Option<Spanned<RawDuration>>,
    deadtime: Option<Spanned<RawDuration>>,
    on_peer_loss: Option<Spanned<String>>,
    split_brain: Option<Spanned<String>>,
    resync_rate: Option<Spanned<String>>,
}

/// [`table`] for a table that may be absent.
fn opt_table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    table(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawNode {
    name: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    mountpoint: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawFs {
    writeback_cache: Option<bool>,
    attr_timeout: Option<Spanned<RawDuration>>,
    threads: Option<Spanned<RawInt>>,
    checkpoint_interval: Option<Spanned<RawDuration>>,
    force_unmount: Option<bool>,
    force_unmount_grace: Option<Spanned<RawDuration>>,
    suid_dev: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawLog {
    level: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

/// Deserializes a table, and only a table.
///
/// A serde-derived struct also accepts a sequence of its fields in order, so
/// without this `fs = []` would be a valid (empty) `[fs]` and `[[fs]]` would be
/// reported as a wrong value for `fs.writeback_cache`. Use it on every table field.
fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(TableOnly(d))
}

/// A deserializer that hands its visitor only maps (see [`table`]).
struct TableOnly<D>(D);

/// A visitor that accepts only maps, and otherwise reports what it expected.
struct MapVisitor<V>(V);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for TableOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(MapVisitor(v))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, MapVisitor(v))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for MapVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(map)
    }
}

/// A duration as written (`"500ms"`, `"1s"`, `"2min"`), parsed in stage 2.
#[derive(Debug)]
struct RawDuration(String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string such as "500ms", "1s" or "2min""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// An integer as written; its range is checked in stage 2, so that an out-of-range
/// value gets the same message whatever its size or sign.
#[derive(Debug)]
struct RawInt(i64);

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInt, E> {
                Ok(RawInt(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_i64(V)
    }
}

// ---------------------------------------------------------------------------------
// Stage 2 helpers and error locations.

/// What an error needs to say where it is.
struct Cx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Cx<'_> {
    fn at(&self, span: Option<Range<usize>>) -> Location {
        Location {
            path: self.path.to_owned(),
            line: span.map(|s| line_of(self.text, s.start)),
        }
    }

    fn invalid(&self, field: &str, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: self.at(Some(span)),
            field: field.to_owned(),
            message,
        }
    }

    fn invalid_nowhere(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: self.at(None),
            field: field.to_owned(),
            message,
        }
    }

    /// Turns a serde error from a syntactically valid file into an unknown-field or
    /// wrong-type error that names the full dotted key.
    fn schema_error(&self, e: &toml::de::Error) -> ConfigError {
        let at = self.at(e.span());
        let message = one_line(e.message());
        if let Some(rest) = message.strip_prefix("unknown field `") {
            // serde: "unknown field `k`, expected one of `a`, `b`" (or "expected `a`",
            // or "there are no fields").
            if let Some((key, tail)) = rest.split_once('`') {
                let field = e
                    .span()
                    .and_then(|s| dotted_path_at(self.text, s, Probe::Key))
                    .and_then(|p| p.strip_suffix(PROBE).map(|parent| format!("{parent}{key}")))
                    .unwrap_or_else(|| key.to_owned());
                let expected = tail
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect();
                return ConfigError::UnknownField {
                    at,
                    field,
                    expected,
                };
            }
        }
        let field = e
            .span()
            .and_then(|s| dotted_path_at(self.text, s, Probe::Value));
        ConfigError::WrongType { at, field, message }
    }
}

/// The marker [`dotted_path_at`] puts into a copy of the file.
const PROBE: &str = "__twinfs_probe__";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// The span covers a key.
    Key,
    /// The span covers a value.
    Value,
}

/// The dotted path of the key (or of the value) at `span` in `text`.
///
/// The TOML error knows the span but not the enclosing table, which may come from a
/// header lines above, a dotted key or an inline table. Rather than re-implement
/// TOML's scoping, put a marker at the span in a copy of the file, parse the copy
/// and look for the marker. Only runs on the error path.
fn dotted_path_at(text: &str, span: Range<usize>, what: Probe) -> Option<String> {
    let spanned = text.get(span.clone())?;
    let before = text.get(..span.start)?;
    let at_line_start = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .trim()
        .is_empty();
    if what == Probe::Value && at_line_start && spanned.starts_with('[') {
        // The value is a whole `[table]` or `[[array]]` section: its span starts at
        // the header, and the header holds the dotted key.
        let header = spanned.lines().next()?;
        let key = header.trim_start_matches('[').split(']').next()?;
        let table: toml::Table = format!("{key} = \"{PROBE}\"").parse().ok()?;
        return find_unique(&table, what);
    }
    let marker = match what {
        Probe::Key => PROBE.to_owned(),
        Probe::Value => format!("\"{PROBE}\""),
    };
    let probed = [text.get(..span.start)?, &marker, text.get(span.end..)?].concat();
    let table: toml::Table = probed.parse().ok()?;
    find_unique(&table, what)
}

fn find_unique(table: &toml::Table, what: Probe) -> Option<String> {
    let mut found = Vec::new();
    find_probe(table, &mut String::new(), what, &mut found);
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}

fn find_probe(table: &toml::Table, path: &mut String, what: Probe, found: &mut Vec<String>) {
    for (key, value) in table {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        let hit = match what {
            Probe::Key => key == PROBE,
            Probe::Value => value.as_str() == Some(PROBE),
        };
        if hit {
            found.push(path.clone());
        }
        find_probe_in_value(value, path, what, found);
        path.truncate(len);
    }
}

fn find_probe_in_value(
    value: &toml::Value,
    path: &mut String,
    what: Probe,
    found: &mut Vec<String>,
) {
    match value {
        toml::Value::Table(t) => find_probe(t, path, what, found),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if what == Probe::Value && item.as_str() == Some(PROBE) {
                    found.push(path.clone());
                }
                find_probe_in_value(item, path, what, found);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Joins a multi-line parser message into one line (errors are printed as one line).
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `"40MiB"`, `"500KiB"`, `"1GiB"`, `"123"` (bytes), `"unlimited"`/`"0"` (0).
fn parse_rate(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Some(0);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn read_hostname() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_owned())
}

/// A path option that must be absolute, with its span when the file set it.
struct PathOpt {
    field: &'static str,
    path: PathBuf,
    span: Option<Range<usize>>,
}

fn absolute_path(
    cx: &Cx<'_>,
    field: &'static str,
    raw: Option<Spanned<String>>,
    default: &str,
) -> Result<PathOpt, ConfigError> {
    let Some(raw) = raw else {
        return Ok(PathOpt {
            field,
            path: PathBuf::from(default),
            span: None,
        });
    };
    let path = PathBuf::from(raw.get_ref());
    if !path.is_absolute() {
        return Err(cx.invalid(
            field,
            raw.span(),
            format!("must be an absolute path, got {:?}", raw.get_ref()),
        ));
    }
    Ok(PathOpt {
        field,
        path,
        span: Some(raw.span()),
    })
}

/// The store must not live inside its own mount (its files would be hidden by the
/// mount, and writing them would go through FUSE back into the daemon), and
/// mounting over the store hides it the same way. The error is about the option
/// the file set (the mountpoint when it set both or neither), at its line.
fn check_disjoint(
    cx: &Cx<'_>,
    data_dir: &PathOpt,
    mountpoint: &PathOpt,
) -> Result<(), ConfigError> {
    let (this, other) = if mountpoint.span.is_none() && data_dir.span.is_some() {
        (data_dir, mountpoint)
    } else {
        (mountpoint, data_dir)
    };
    let (t, o) = (this.path.display(), other.path.display());
    let message = if this.path == other.path {
        format!("must differ from {}, both are {t:?}", other.field)
    } else if this.path.starts_with(&other.path) {
        format!("must not be inside {} ({o:?}), got {t:?}", other.field)
    } else if other.path.starts_with(&this.path) {
        format!("must not contain {} ({o:?}), got {t:?}", other.field)
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid {
        at: cx.at(this.span.clone()),
        field: this.field.to_owned(),
        message,
    })
}

/// A specific `IP:PORT` (not 0.0.0.0, not port 0); `example` goes in the error.
fn socket_addr(
    cx: &Cx<'_>,
    field: &str,
    raw: &Spanned<String>,
    example: &str,
) -> Result<std::net::SocketAddr, ConfigError> {
    let a: std::net::SocketAddr = raw.get_ref().parse().map_err(|_| {
        cx.invalid(
            field,
            raw.span(),
            format!(
                "must be IP:PORT, e.g. \"{example}\", got {:?}",
                raw.get_ref()
            ),
        )
    })?;
    if a.ip().is_unspecified() || a.port() == 0 {
        return Err(cx.invalid(
            field,
            raw.span(),
            format!(
                "must be a specific address and port, got {:?}",
                raw.get_ref()
            ),
        ));
    }
    Ok(a)
}

fn duration_in(
    cx: &Cx<'_>,
    field: &str,
    raw: Option<Spanned<RawDuration>>,
    default: Duration,
    range: RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let text = &raw.get_ref().0;
    let d = humantime::parse_duration(text)
        .map_err(|e| cx.invalid(field, raw.span(), format!("invalid duration {text:?}: {e}")))?;
    if !range.contains(&d) {
        return Err(cx.invalid(
            field,
            raw.span(),
            format!(
                "must be between {} and {}, got {text:?}",
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end()),
            ),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../packaging/twinfs.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with(text, Path::new("t.toml"), || Ok("testhost".to_owned()))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.node.name.as_str(), "testhost");
        assert_eq!(c.node.data_dir, Path::new("/var/lib/twinfs"));
        assert_eq!(c.node.mountpoint, Path::new("/srv/www"));
        assert!(!c.fs.writeback_cache);
        assert_eq!(c.fs.attr_timeout, Duration::from_secs(60));
        assert_eq!(c.fs.threads, 4);
        assert_eq!(c.fs.checkpoint_interval, Duration::from_secs(5));
        assert_eq!(c.log.level, LogLevel::Info);
        // Default agrees with an empty file, apart from where the name comes from.
        let d = Config::default();
        assert_eq!((&c.fs, &c.log), (&d.fs, &d.log));
        assert_eq!(
            (&c.node.data_dir, &c.node.mountpoint),
            (&d.node.data_dir, &d.node.mountpoint)
        );
    }

    #[test]
    fn empty_tables_and_comments_give_defaults() {
        let c = parse("# nothing\n[node]\n[fs]\n[log]\n").unwrap();
        assert_eq!(c.fs, FsConfig::default());
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
[node]
name = "www1.example-a_b"
data_dir = "/data/twinfs"
mountpoint = "/var/www"

[fs]
writeback_cache = true
attr_timeout = "0s"
threads = 64
checkpoint_interval = "10min"

[log]
level = "TRACE"
"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Config {
                node: NodeConfig {
                    name: NodeName("www1.example-a_b".to_owned()),
                    data_dir: "/data/twinfs".into(),
                    mountpoint: "/var/www".into(),
                },
                fs: FsConfig {
                    writeback_cache: true,
                    attr_timeout: Duration::ZERO,
                    threads: 64,
                    checkpoint_interval: Duration::from_secs(600),
                    force_unmount: true,
                    force_unmount_grace: Duration::from_secs(5),
                    suid_dev: false,
                },
                log: LogConfig {
                    level: LogLevel::Trace
                },
                replication: None,
                failover: None,
                metrics: MetricsConfig::default(),
            }
        );
    }

    const REPL: &str = "[replication]\nlisten = \"10.0.0.1:7789\"\npeer = \"10.0.0.2:7789\"\npeer_cert = \"/etc/twinfs/beta.crt\"\n";

    #[test]
    fn replication_table_with_defaults_and_every_field() {
        let c = parse(REPL).unwrap().replication.unwrap();
        assert_eq!(c.listen, "10.0.0.1:7789".parse().unwrap());
        assert_eq!(c.peer, "10.0.0.2:7789".parse().unwrap());
        assert_eq!(c.cert, PathBuf::from("/etc/twinfs/node.crt"));
        assert_eq!(c.key, PathBuf::from("/etc/twinfs/node.key"));
        assert_eq!(
            c.peer_trust,
            PeerTrustConfig::CertFile("/etc/twinfs/beta.crt".into())
        );
        assert_eq!(c.protocol, ProtocolName::C);
        assert_eq!(c.keepalive, Duration::from_millis(200));
        assert_eq!(c.deadtime, Duration::from_secs(1));
        assert_eq!(c.on_peer_loss, OnPeerLossName::Continue);
        assert_eq!(c.split_brain, SplitBrainName::Disconnect);
        assert_eq!(c.resync_rate, 0);
        assert_eq!(
            parse(&format!("{REPL}resync_rate = \"40MiB\"\n"))
                .unwrap()
                .replication
                .unwrap()
                .resync_rate,
            40 << 20
        );
        let fp = format!("sha256:{}", ["AB"; 32].join(":"));
        let c = parse(&format!(
            "[replication]\nlisten = \"[fd00::1]:7000\"\npeer = \"[fd00::2]:7000\"\n\
             cert = \"/k/a.crt\"\nkey = \"/k/a.key\"\npeer_fingerprint = \"{fp}\"\n\
             protocol = \"a\"\nkeepalive = \"100ms\"\ndeadtime = \"1s\"\n\
             on_peer_loss = \"suspend\"\nsplit_brain = \"discard-least-changes\"\n"
        ))
        .unwrap()
        .replication
        .unwrap();
        assert_eq!(c.peer_trust, PeerTrustConfig::Fingerprint(fp));
        assert_eq!(c.protocol, ProtocolName::A);
        assert_eq!(c.on_peer_loss, OnPeerLossName::Suspend);
        assert_eq!(c.split_brain, SplitBrainName::DiscardLeastChanges);
        assert_eq!(c.deadtime, Duration::from_secs(1));
    }

    #[test]
    fn replication_errors_name_the_field_and_value() {
        let base = |extra: &str| format!("{REPL}{extra}");
        let cases: [(String, &str); 13] = [
            (
                "[replication]\npeer = \"10.0.0.2:1\"\npeer_cert = \"/a\"\n".into(),
                "replication.listen: missing",
            ),
            (
                "[replication]\nlisten = \"10.0.0.1:1\"\npeer_cert = \"/a\"\n".into(),
                "replication.peer: missing",
            ),
            (
                REPL.replace("10.0.0.1:7789", "alpha"),
                "t.toml:2: replication.listen: must be IP:PORT",
            ),
            (
                REPL.replace("10.0.0.1:7789", "0.0.0.0:7789"),
                "t.toml:2: replication.listen: must be a specific address and port, got \"0.0.0.0:7789\"",
            ),
            (
                REPL.replace("10.0.0.2:7789", "10.0.0.1:7789"),
                "t.toml:3: replication.peer: must differ from replication.listen",
            ),
            (
                "[replication]\nlisten = \"10.0.0.1:1\"\npeer = \"10.0.0.2:1\"\n".into(),
                "replication.peer_cert: missing",
            ),
            (
                base("peer_fingerprint = \"sha256:00\"\n"),
                "t.toml:5: replication.peer_fingerprint: set either",
            ),
            (
                REPL.replace("peer_cert = \"/etc/twinfs/beta.crt\"", "peer_fingerprint = \"sha1:12\""),
                "t.toml:4: replication.peer_fingerprint: must be a SHA-256 fingerprint",
            ),
            (
                base("protocol = \"D\"\n"),
                "t.toml:5: replication.protocol: must be \"A\", \"B\" or \"C\", got \"D\"",
            ),
            (
                base("keepalive = \"2s\"\ndeadtime = \"1s\"\n"),
                "t.toml:6: replication.deadtime: must be longer than replication.keepalive (2s), got 1s",
            ),
            (
                base("on_peer_loss = \"panic\"\n"),
                "t.toml:5: replication.on_peer_loss: must be \"continue\" or \"suspend\", got \"panic\"",
            ),
            (
                base("split_brain = \"merge\"\n"),
                "t.toml:5: replication.split_brain: must be \"disconnect\"",
            ),
            (
                base("resync_rate = \"fast\"\n"),
                "t.toml:5: replication.resync_rate: must be a rate in bytes per second",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{want:?} not in {e:?}\nfor:\n{text}");
        }
        assert!(err(&base("bogus = 1\n")).contains("unknown field replication.bogus"));
        assert!(err(&base("cert = \"relative.crt\"\n"))
            .contains("replication.cert: must be an absolute path"));
    }

    #[test]
    fn failover_table_with_defaults_and_every_field() {
        let c = parse(&format!("{REPL}[failover]\n"))
            .unwrap()
            .failover
            .unwrap();
        assert_eq!(c.script, PathBuf::from("/etc/twinfs/failover.lua"));
        assert_eq!(
            (c.vip, c.beacon, c.witness, c.home),
            (None, None, None, None)
        );
        assert!(!c.auto_failback && !c.manual && c.ping.is_empty());
        // Absent (twinfs run uses the default gateway) vs. explicitly none.
        assert!(c.ping_unset);
        let none = parse(&format!("{REPL}[failover]\nping = []\n"))
            .unwrap()
            .failover
            .unwrap();
        assert!(!none.ping_unset && none.ping.is_empty());
        assert_eq!(c.stabilize, Duration::from_secs(5));
        assert_eq!(c.escalation, EscalationName::None);
        let full = format!(
            "{REPL}[failover]\nscript = \"/srv/hooks.lua\"\nvip = \"10.0.0.10/24\"\n\
             interface = \"eth0\"\nservice = \"httpd\"\ncheck_url = \"http://10.0.0.10/ok\"\n\
             public = \"192.168.0.1:7790\"\npeer_public = \"192.168.0.2:7790\"\n\
             ping = [\"192.168.0.254\", \"fd00::1\"]\nwitness = \"192.168.0.3:7791\"\n\
             witness_cert = \"/etc/twinfs/witness.crt\"\nhome = \"www1\"\nauto_failback = true\n\
             stabilize = \"10s\"\nhold_down = \"1min\"\nhook_timeout = \"5s\"\n\
             escalation = \"reboot\"\nmanual = true\n\
             [failover.services.httpd]\nstart = [\"httpd\", \"-k\", \"start\"]\n\
             stop = [\"httpd\", \"-k\", \"stop\"]\npidfile = \"/run/httpd/httpd.pid\"\n\
             [failover.vars]\nmarker = \"ok.html\"\n"
        );
        let c = parse(&full).unwrap().failover.unwrap();
        assert_eq!(c.script, PathBuf::from("/srv/hooks.lua"));
        let vip = c.vip.clone().unwrap();
        assert_eq!(
            (vip.addr.to_string(), vip.prefix, vip.interface.as_str()),
            ("10.0.0.10".into(), 24, "eth0")
        );
        assert_eq!(
            c.beacon.as_ref().unwrap().peer,
            "192.168.0.2:7790".parse().unwrap()
        );
        assert_eq!(c.ping.len(), 2);
        assert_eq!(
            c.witness.as_ref().unwrap().cert,
            PathBuf::from("/etc/twinfs/witness.crt")
        );
        assert_eq!(c.home.as_deref(), Some("www1"));
        assert!(c.auto_failback && c.manual);
        assert_eq!(c.hold_down, Duration::from_secs(60));
        assert_eq!(c.hook_timeout, Duration::from_secs(5));
        assert_eq!(c.escalation, EscalationName::Reboot);
        let httpd = &c.services["httpd"];
        assert_eq!(httpd.start, ["httpd", "-k", "start"]);
        assert_eq!(httpd.status, None);
        let vars = c.hook_vars();
        assert_eq!(vars["vip"], "10.0.0.10/24");
        assert_eq!(vars["interface"], "eth0");
        assert_eq!(vars["service"], "httpd");
        assert_eq!(vars["marker"], "ok.html");
    }

    #[test]
    fn failover_errors_name_the_field_and_value() {
        let base = |extra: &str| format!("{REPL}[failover]\n{extra}");
        let cases: Vec<(String, &str)> = vec![
            ("[failover]\n".into(), "failover: [failover] needs a [replication] table"),
            (base("script = \"hooks.lua\"\n"), "t.toml:6: failover.script: must be an absolute path"),
            (base("vip = \"10.0.0.10/24\"\n"), "t.toml:6: failover.interface: missing"),
            (base("interface = \"eth0\"\n"), "t.toml:6: failover.vip: missing"),
            (
                base("vip = \"10.0.0.10\"\ninterface = \"eth0\"\n"),
                "t.toml:6: failover.vip: must be ADDRESS/PREFIX, e.g. \"10.0.0.10/24\", got \"10.0.0.10\"",
            ),
            (base("vip = \"10.0.0.10/33\"\ninterface = \"eth0\"\n"), "failover.vip: must be ADDRESS/PREFIX"),
            (
                base("vip = \"10.0.0.10/24\"\ninterface = \"eth0/1\"\n"),
                "t.toml:7: failover.interface: must be an interface name",
            ),
            (base("service = \"apache2; rm\"\n"), "t.toml:6: failover.service: must be a service name"),
            (base("check_url = \"https://x/\"\n"), "t.toml:6: failover.check_url: must be an http:// URL"),
            (base("public = \"192.168.0.1:7790\"\n"), "t.toml:6: failover.peer_public: missing"),
            (base("peer_public = \"192.168.0.1:7790\"\n"), "t.toml:6: failover.public: missing"),
            (
                base("public = \"192.168.0.1\"\npeer_public = \"192.168.0.2:7790\"\n"),
                "t.toml:6: failover.public: must be IP:PORT",
            ),
            (
                base("public = \"192.168.0.1:1\"\npeer_public = \"192.168.0.1:1\"\n"),
                "t.toml:7: failover.peer_public: must differ from failover.public",
            ),
            (base("ping = [\"gateway\"]\n"), "t.toml:6: failover.ping: must be a list of IP addresses, got \"gateway\""),
            (base("witness = \"192.168.0.3:7791\"\n"), "t.toml:6: failover.witness_cert: missing"),
            (base("witness_cert = \"/w.crt\"\n"), "t.toml:6: failover.witness: missing"),
            (base("home = \"no such/name\"\n"), "t.toml:6: failover.home:"),
            (base("stabilize = \"soon\"\n"), "t.toml:6: failover.stabilize: invalid duration \"soon\""),
            (base("hook_timeout = \"1ms\"\n"), "t.toml:6: failover.hook_timeout: must be between 100ms and 1h"),
            (base("escalation = \"panic\"\n"), "t.toml:6: failover.escalation: must be \"none\", \"reboot\" or \"poweroff\", got \"panic\""),
            (
                base("[failover.services.apache2]\nstop = [\"apache2ctl\", \"stop\"]\n"),
                "failover.services.apache2.start: missing",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{want:?} not in {e:?}\nfor:\n{text}");
        }
        assert!(err(&base("vipp = \"x\"\n")).contains("unknown field failover.vipp"));
    }

    #[test]
    fn metrics_listen() {
        assert_eq!(parse("").unwrap().metrics.listen, Some(DEFAULT_METRICS));
        let c = parse("[metrics]\nlisten = \"0.0.0.0:9100\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(
            parse("[metrics]\nlisten = \"off\"\n")
                .unwrap()
                .metrics
                .listen,
            None
        );
        let e = err("[metrics]\nlisten = \"localhost\"\n");
        assert!(
            e.contains("t.toml:2: metrics.listen: must be IP:PORT (e.g. \"127.0.0.1:9747\") or \"off\", got \"localhost\""),
            "{e}"
        );
    }

    #[test]
    fn dotted_keys_and_inline_tables_are_accepted() {
        let c = parse("fs.threads = 2\nlog = { level = \"debug\" }\n").unwrap();
        assert_eq!(c.fs.threads, 2);
        assert_eq!(c.log.level, LogLevel::Debug);
    }

    #[test]
    fn shipped_sample_parses_and_documents_the_defaults() {
        let c = parse(SAMPLE).unwrap();
        let d = Config::default();
        assert_eq!((&c.fs, &c.log), (&d.fs, &d.log));
        assert_eq!(
            (&c.node.data_dir, &c.node.mountpoint),
            (&d.node.data_dir, &d.node.mountpoint)
        );
        // Every option appears in the sample, commented out or not.
        for key in [
            "name",
            "data_dir",
            "mountpoint",
            "writeback_cache",
            "attr_timeout",
            "threads",
            "checkpoint_interval",
            "level",
        ] {
            assert!(
                SAMPLE.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
                }),
                "{key} is not documented in packaging/twinfs.toml"
            );
        }
    }

    #[test]
    fn shipped_sample_with_every_option_uncommented_parses() {
        // Catches a sample whose commented-out examples would not parse if enabled.
        let uncommented: String = SAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                // Optional tables are commented out as a whole, header included.
                Some(rest) if rest.starts_with('[') && rest.ends_with(']') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(uncommented, SAMPLE);
        let c = parse(&uncommented).unwrap();
        // The values shown are the defaults (the name's default is the hostname).
        let d = Config::default();
        assert_eq!((&c.fs, &c.log), (&d.fs, &d.log));
        assert_eq!(
            (&c.node.data_dir, &c.node.mountpoint),
            (&d.node.data_dir, &d.node.mountpoint)
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("[fs]\nthreads = 4\nattr_timeout = \n");
        assert!(e.starts_with("t.toml:3: invalid TOML: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = err("[node]\n[fs\n");
        assert!(e.starts_with("t.toml:2: invalid TOML: "), "{e}");
        assert!(matches!(
            parse("[fs]\nthreads = 1\nthreads = 2\n"),
            Err(ConfigError::Syntax {
                at: Location { line: Some(3), .. },
                ..
            })
        ));
    }

    #[test]
    fn unknown_top_level_key() {
        assert_eq!(
            err("[fs]\n\n[bogus]\nx = 1\n"),
            "t.toml:3: unknown field bogus, expected one of node, fs, log, replication, failover, metrics"
        );
        assert_eq!(
            err("bogus = 1\n"),
            "t.toml:1: unknown field bogus, expected one of node, fs, log, replication, failover, metrics"
        );
    }

    #[test]
    fn unknown_key_in_fs() {
        let e = parse("[fs]\nthreads = 4\nbogus = true\n").unwrap_err();
        let ConfigError::UnknownField {
            at,
            field,
            expected,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(at.line, Some(3));
        assert_eq!(field, "fs.bogus");
        assert!(expected.iter().any(|k| k == "attr_timeout"), "{expected:?}");
        assert_eq!(
            e.to_string(),
            "t.toml:3: unknown field fs.bogus, expected one of writeback_cache, \
             attr_timeout, threads, checkpoint_interval, force_unmount, \
             force_unmount_grace, suid_dev"
        );
    }

    #[test]
    fn unknown_key_is_named_in_full_however_the_table_is_written() {
        for (text, line) in [
            ("fs.bogus = 1\n", 1),
            ("[node]\nname = \"a\"\n[fs]\n\"bogus\" = 1\n", 4),
            ("\nfs = { threads = 2, bogus = 1 }\n", 2),
            (
                "[log]\nlevel = \"info\"\n\n[fs]\nthreads = 2\n\n\n  bogus = 3\n",
                8,
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                matches!(&e, ConfigError::UnknownField { at, field, .. }
                    if field == "fs.bogus" && at.line == Some(line)),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(
            err("[fs]\nthreads = \"four\"\n"),
            r#"t.toml:2: fs.threads: invalid type: string "four", expected an integer"#
        );
        assert_eq!(
            err("[fs]\nattr_timeout = 1\n"),
            r#"t.toml:2: fs.attr_timeout: invalid type: integer `1`, expected a duration string such as "500ms", "1s" or "2min""#
        );
        assert_eq!(
            err("[fs]\nwriteback_cache = \"yes\"\n"),
            r#"t.toml:2: fs.writeback_cache: invalid type: string "yes", expected a boolean"#
        );
        assert_eq!(
            err("log = 3\n"),
            "t.toml:1: log: invalid type: integer `3`, expected a table"
        );
        assert!(matches!(
            parse("[node]\ndata_dir = [\"/a\"]\n"),
            Err(ConfigError::WrongType { field: Some(field), at: Location { line: Some(2), .. }, .. })
                if field == "node.data_dir"
        ));
        // serde-derived structs also accept sequences; tables must not.
        assert_eq!(
            err("fs = []\n"),
            "t.toml:1: fs: invalid type: sequence, expected a table"
        );
        assert_eq!(
            err("[node]\n[[fs]]\nthreads = 1\n"),
            "t.toml:2: fs: invalid type: sequence, expected a table"
        );
        assert_eq!(
            err("[fs]\n\n[fs . \"threads\"]\nx = 1\n"),
            "t.toml:3: fs.threads: invalid type: map, expected an integer"
        );
    }

    #[test]
    fn node_name_rules() {
        assert_eq!(
            err("[node]\nname = \"www 1\"\n"),
            r#"t.toml:2: node.name: must be 1 to 63 characters from [A-Za-z0-9._-], got "www 1""#
        );
        assert!(err("[node]\nname = \"\"\n").contains("node.name: must be 1 to 63"));
        let long = "a".repeat(64);
        assert!(err(&format!("[node]\nname = \"{long}\"\n")).contains("node.name: must be"));
        parse(&format!("[node]\nname = \"{}\"\n", "a".repeat(63))).unwrap();
    }

    #[test]
    fn node_name_defaults_to_a_valid_hostname_only() {
        let bad = Config::from_toml_str_with("", Path::new("t.toml"), || Ok("a b".to_owned()));
        let e = bad.unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml: node.name: not set, and the hostname cannot serve as one"),
            "{e}"
        );
        let unreadable = Config::from_toml_str_with("", Path::new("t.toml"), || {
            Err(io::Error::from(io::ErrorKind::NotFound))
        });
        let e = unreadable.unwrap_err().to_string();
        assert!(
            e.contains("node.name: not set, and the hostname cannot be read"),
            "{e}"
        );
        // An explicit name does not need the hostname.
        let c = Config::from_toml_str_with("node.name = \"b\"", Path::new("t.toml"), || {
            Ok("a b".to_owned())
        });
        assert_eq!(c.unwrap().node.name.as_str(), "b");
    }

    #[test]
    fn paths_must_be_absolute_and_disjoint() {
        assert_eq!(
            err("[node]\ndata_dir = \"var/lib/twinfs\"\n"),
            r#"t.toml:2: node.data_dir: must be an absolute path, got "var/lib/twinfs""#
        );
        assert!(err("[node]\nmountpoint = \"\"\n").contains("node.mountpoint: must be an absolute"));
        assert_eq!(
            err("[node]\nmountpoint = \"/var/lib/twinfs/mnt\"\n"),
            r#"t.toml:2: node.mountpoint: must not be inside node.data_dir ("/var/lib/twinfs"), got "/var/lib/twinfs/mnt""#
        );
        assert_eq!(
            err("[node]\ndata_dir = \"/srv/www/.store\"\n"),
            r#"t.toml:2: node.data_dir: must not be inside node.mountpoint ("/srv/www"), got "/srv/www/.store""#
        );
        assert_eq!(
            err("[node]\ndata_dir = \"/srv\"\n"),
            r#"t.toml:2: node.data_dir: must not contain node.mountpoint ("/srv/www"), got "/srv""#
        );
        assert_eq!(
            err("[node]\ndata_dir = \"/x\"\nmountpoint = \"/x\"\n"),
            r#"t.toml:3: node.mountpoint: must differ from node.data_dir, both are "/x""#
        );
        // Siblings with a common prefix are fine: the check is per component.
        parse("[node]\ndata_dir = \"/srv/www-data\"\n").unwrap();
    }

    #[test]
    fn attr_timeout_rules() {
        let e = err("[fs]\nattr_timeout = \"1x\"\n");
        assert!(
            e.starts_with(r#"t.toml:2: fs.attr_timeout: invalid duration "1x": "#),
            "{e}"
        );
        assert_eq!(
            err("[fs]\nattr_timeout = \"61min\"\n"),
            r#"t.toml:2: fs.attr_timeout: must be between 0s and 1h, got "61min""#
        );
        let c = parse("[fs]\nattr_timeout = \"1h\"\n").unwrap();
        assert_eq!(c.fs.attr_timeout, Duration::from_secs(3600));
        let c = parse("[fs]\nattr_timeout = \"250ms\"\n").unwrap();
        assert_eq!(c.fs.attr_timeout, Duration::from_millis(250));
    }

    #[test]
    fn threads_rules() {
        assert_eq!(
            err("[fs]\nthreads = 0\n"),
            "t.toml:2: fs.threads: must be between 1 and 64, got 0"
        );
        assert_eq!(
            err("[fs]\nthreads = 65\n"),
            "t.toml:2: fs.threads: must be between 1 and 64, got 65"
        );
        assert_eq!(
            err("[fs]\nthreads = -3\n"),
            "t.toml:2: fs.threads: must be between 1 and 64, got -3"
        );
        assert_eq!(parse("[fs]\nthreads = 1\n").unwrap().fs.threads, 1);
        assert!(matches!(
            parse("[fs]\nthreads = 2.5\n"),
            Err(ConfigError::WrongType { .. })
        ));
    }

    #[test]
    fn checkpoint_interval_rules() {
        assert_eq!(
            err("[fs]\ncheckpoint_interval = \"99ms\"\n"),
            r#"t.toml:2: fs.checkpoint_interval: must be between 100ms and 10m, got "99ms""#
        );
        assert!(err("[fs]\ncheckpoint_interval = \"11min\"\n").contains("must be between"));
        assert!(err("[fs]\ncheckpoint_interval = \"\"\n")
            .contains(r#"fs.checkpoint_interval: invalid duration """#));
        let c = parse("[fs]\ncheckpoint_interval = \"100ms\"\n").unwrap();
        assert_eq!(c.fs.checkpoint_interval, Duration::from_millis(100));
    }

    #[test]
    fn log_level_rules() {
        assert_eq!(
            err("[log]\nlevel = \"verbose\"\n"),
            r#"t.toml:2: log.level: must be one of error, warn, info, debug, trace, got "verbose""#
        );
        for l in LogLevel::ALL {
            let c = parse(&format!("log.level = \"{l}\"")).unwrap();
            assert_eq!(c.log.level, l);
        }
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twinfs.toml");
        std::fs::write(&path, "[fs]\nthreads = 8\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().fs.threads, 8);

        std::fs::write(&path, "[fs]\nthreads = 0\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:2: fs.threads: must be between 1 and 64, got 0",
                path.display()
            )
        );

        let missing = dir.path().join("nope.toml");
        let e = Config::load(&missing).unwrap_err();
        assert!(matches!(&e, ConfigError::Read { error, .. }
            if error.kind() == io::ErrorKind::NotFound));
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read config file {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }
}
