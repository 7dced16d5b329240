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
//! Files: `raw` (stage 1), `check` (stage 2's readers of durations, rates, paths
//! and addresses), `locate` (the line and dotted key of an error), `error`, and one
//! per table family: `tables` (`[node]`, `[fs]`, `[log]`, `[metrics]`),
//! `replication`, `failover`. The tests are in `tests`.
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

mod check;
mod error;
mod failover;
mod locate;
mod raw;
mod replication;
mod tables;

use check::*;
pub use error::*;
pub use failover::{
    BeaconConfig, EscalationName, FailoverConfig, ServiceConfig, VipConfig, WitnessConfig,
};
use locate::*;
use raw::*;
pub use replication::*;
pub use tables::*;

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
    /// `[metrics]`: the Prometheus endpoint of `twinfs run` (and `/health`).
    pub metrics: MetricsConfig,
    /// `[standby]`: whether the secondary serves its replica read-only.
    pub standby: StandbyConfig,
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
            standby,
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

        let standby_serve = standby.serve.filter(|s| *s.get_ref());
        if let Some(serve) = &standby_serve {
            let why = if replication.is_none() {
                Some("needs a [replication] table: only a secondary serves a standby view")
            } else if writeback_cache {
                Some(
                    "cannot be used with fs.writeback_cache = true: a write into the standby's \
                     page cache could not be refused before it was cached",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(cx.invalid("standby.serve", serve.span(), why.into()));
            }
        }
        let standby = StandbyConfig {
            serve: standby_serve.is_some(),
            max_lag: duration_in(
                cx,
                "standby.max_lag",
                standby.max_lag,
                DEFAULT_MAX_LAG,
                Duration::ZERO..=Duration::from_secs(3600),
            )?,
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
            standby,
        })
    }
}

#[cfg(test)]
mod tests;
