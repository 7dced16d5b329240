//! `twinfs apache-conf`: prints this node's Apache site for both servers
//! serving (see `src/apache.rs` for what the file does).
//!
//! The inputs come from `twinfs.toml` where it says them: this node's name
//! (`node.name`), the DocumentRoot (`node.mountpoint`), the VIP
//! (`failover.vip`), both nodes' public addresses (the IPs of
//! `failover.public` and `failover.peer_public`) and twinfs's health URL
//! (`metrics.listen` + `/health`). Flags give what it cannot say (the peer's
//! name, the web port, the paths that write) and override the rest. A
//! missing input is an error that names the flag and the config field that
//! would give it.
//!
//! It is a command of its own rather than a flag of `twinfs init`: init runs
//! once per node before the pair exists, while this file is generated (and
//! regenerated) from the finished config, whenever the addresses or the
//! write paths change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr as _;

use crate::apache::{Backend, Site, SiteError, HEALTH_PATH};
use crate::config::{self, Config, NodeName};
use crate::UsageError;

/// The web port when `--port` is not given.
const DEFAULT_PORT: u16 = 80;

/// The flags of `twinfs apache-conf`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApacheConfArgs {
    /// The config file of this node.
    #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    /// The peer's node name (its node.name): its route in the balancer.
    #[arg(long, value_name = "NODE")]
    pub(crate) peer_name: Option<String>,
    /// The port both nodes' Apache serves on, on every address and the VIP.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub(crate) port: u16,
    /// This node's address that the balancer reaches its Apache on
    /// (default: the IP of failover.public).
    #[arg(long, value_name = "IP")]
    pub(crate) address: Option<IpAddr>,
    /// The peer's address that the balancer reaches its Apache on
    /// (default: the IP of failover.peer_public).
    #[arg(long, value_name = "IP")]
    pub(crate) peer_address: Option<IpAddr>,
    /// The DocumentRoot (default: node.mountpoint).
    #[arg(long, value_name = "DIR")]
    pub(crate) docroot: Option<PathBuf>,
    /// twinfs's health URL on this node (default: http://METRICS/health,
    /// METRICS being metrics.listen).
    #[arg(long, value_name = "URL")]
    pub(crate) health_url: Option<String>,
    /// A path prefix whose requests write whatever their method (a login
    /// page, an admin area): sent to the primary only. May be repeated.
    #[arg(long = "write-path", value_name = "PATH")]
    pub(crate) write_paths: Vec<String>,
    /// Write the site file here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `twinfs apache-conf`.
pub(crate) fn main(args: &ApacheConfArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&args.config).map_err(|e| UsageError(e.to_string()))?;
    let site = site_from(&cfg, &args.config, args).map_err(UsageError)?;
    let text = site.render().map_err(|e| UsageError(e.to_string()))?;
    if !cfg.standby.serve {
        eprintln!(
            "twinfs: note: standby.serve is off in {}: the secondary serves nothing, so \
             its {HEALTH_PATH} fails and the primary gets every request; set \
             [standby] serve = true on both nodes",
            args.config.display()
        );
    }
    match &args.out {
        None => print!("{text}"),
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("twinfs: wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where an input came from, for error messages.
fn from_flag_or(flag: bool, flag_name: &str, field: &str, path: &Path) -> String {
    if flag {
        flag_name.to_string()
    } else {
        format!("{field} in {}", path.display())
    }
}

/// The [`Site`] of this node from its config and the flags; an error names
/// the flag or the config field at fault.
pub(crate) fn site_from(cfg: &Config, path: &Path, args: &ApacheConfArgs) -> Result<Site, String> {
    let file = path.display();
    let peer_name = args.peer_name.clone().ok_or_else(|| {
        "--peer-name is required: the peer's node.name (the balancer's route to it, and \
         what its X-Twinfs-Node header says)"
            .to_string()
    })?;
    NodeName::from_str(&peer_name).map_err(|e| format!("--peer-name {peer_name}: {e}"))?;
    if args.port == 0 {
        return Err("--port 0: give the port Apache serves on (default 80)".into());
    }
    let f = cfg.failover.as_ref();
    let vip = f
        .and_then(|f| f.vip.as_ref())
        .map(|v| v.addr)
        .ok_or_else(|| {
            format!(
                "failover.vip is not set in {file}: the balancer listens on the VIP (set it in \
             the [failover] table)"
            )
        })?;
    let beacon = f.and_then(|f| f.beacon.as_ref());
    let address = args
        .address
        .or_else(|| beacon.map(|b| b.listen.ip()))
        .ok_or_else(|| {
            format!(
                "this node's address is unknown: give --address IP, or set failover.public \
                 in {file} (its IP is this node's address on the public network)"
            )
        })?;
    let peer_address = args
        .peer_address
        .or_else(|| beacon.map(|b| b.peer.ip()))
        .ok_or_else(|| {
            format!(
                "the peer's address is unknown: give --peer-address IP, or set \
                 failover.peer_public in {file}"
            )
        })?;
    let health_url = match (&args.health_url, cfg.metrics.listen) {
        (Some(u), _) => u.clone(),
        (None, Some(listen)) => health_url(listen),
        (None, None) => {
            return Err(format!(
                "metrics.listen is \"off\" in {file}: the balancer's health check asks \
                 twinfs's /health on it; turn it on, or give --health-url URL"
            ))
        }
    };
    let site = Site {
        this: Backend {
            name: cfg.node.name.as_str().to_owned(),
            addr: SocketAddr::new(address, args.port),
        },
        peer: Backend {
            name: peer_name,
            addr: SocketAddr::new(peer_address, args.port),
        },
        vip,
        docroot: args
            .docroot
            .clone()
            .unwrap_or_else(|| cfg.node.mountpoint.clone()),
        health_url,
        write_paths: args.write_paths.clone(),
    };
    // Checked here to name the source of the bad value.
    site.check().map_err(|e| {
        let source = match &e {
            SiteError::Name(_) | SiteError::SameName(_) => "--peer-name".to_string(),
            SiteError::SameAddress(_) => format!(
                "{} and {}",
                from_flag_or(args.address.is_some(), "--address", "failover.public", path),
                from_flag_or(
                    args.peer_address.is_some(),
                    "--peer-address",
                    "failover.peer_public",
                    path
                )
            ),
            SiteError::VipIsBackend(_) => format!("failover.vip in {file}"),
            SiteError::PortZero(_) => "--port".to_string(),
            SiteError::DocRoot(_) => {
                from_flag_or(args.docroot.is_some(), "--docroot", "node.mountpoint", path)
            }
            SiteError::HealthUrl(_) => from_flag_or(
                args.health_url.is_some(),
                "--health-url",
                "metrics.listen",
                path,
            ),
            SiteError::WritePath(_) => "--write-path".to_string(),
        };
        format!("{source}: {e}")
    })?;
    Ok(site)
}

/// `http://ADDR/health` for the metrics address, reached from this host (an
/// unspecified listen address means every address, loopback among them).
fn health_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/health", SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "node.name = \"www1\"\nnode.mountpoint = \"/srv/www\"\n\
        [replication]\nlisten = \"10.0.0.1:7789\"\npeer = \"10.0.0.2:7789\"\n\
        peer_cert = \"/etc/twinfs/peer.crt\"\n";
    const FAILOVER: &str = "[failover]\nvip = \"192.168.0.10/24\"\ninterface = \"eth0\"\n\
        public = \"192.168.0.1:7790\"\npeer_public = \"192.168.0.2:7790\"\n";

    fn args() -> ApacheConfArgs {
        ApacheConfArgs {
            config: PathBuf::from("/etc/twinfs/twinfs.toml"),
            peer_name: Some("www2".into()),
            port: DEFAULT_PORT,
            address: None,
            peer_address: None,
            docroot: None,
            health_url: None,
            write_paths: vec![],
            out: None,
        }
    }

    fn site(toml: &str, args: &ApacheConfArgs) -> Result<Site, String> {
        let cfg = Config::from_toml_str(toml, &args.config).unwrap();
        site_from(&cfg, &args.config, args)
    }

    #[test]
    fn apache_conf_takes_the_addresses_from_the_failover_table() {
        let s = site(&format!("{BASE}{FAILOVER}"), &args()).unwrap();
        assert_eq!(s.this.name, "www1");
        assert_eq!(s.this.addr, "192.168.0.1:80".parse().unwrap());
        assert_eq!(s.peer.name, "www2");
        assert_eq!(s.peer.addr, "192.168.0.2:80".parse().unwrap());
        assert_eq!(s.vip, "192.168.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(s.docroot, Path::new("/srv/www"));
        assert_eq!(s.health_url, "http://127.0.0.1:9747/health");
        assert!(s.write_paths.is_empty());
        s.render().unwrap();
    }

    #[test]
    fn apache_conf_flags_override_and_complete_the_config() {
        let a = ApacheConfArgs {
            port: 8080,
            address: Some("10.1.0.1".parse().unwrap()),
            peer_address: Some("10.1.0.2".parse().unwrap()),
            docroot: Some("/var/www/site".into()),
            write_paths: vec!["/admin".into(), "/login".into()],
            ..args()
        };
        let toml = format!(
            "{BASE}[metrics]\nlisten = \"0.0.0.0:9100\"\n\
             [failover]\nvip = \"192.168.0.10/24\"\ninterface = \"eth0\"\n"
        );
        let s = site(&toml, &a).unwrap();
        assert_eq!(s.this.addr, "10.1.0.1:8080".parse().unwrap());
        assert_eq!(s.peer.addr, "10.1.0.2:8080".parse().unwrap());
        assert_eq!(s.docroot, Path::new("/var/www/site"));
        assert_eq!(s.health_url, "http://127.0.0.1:9100/health");
        assert_eq!(s.write_paths, ["/admin", "/login"]);
        let text = s.render().unwrap();
        assert!(text.contains("<VirtualHost 192.168.0.10:8080>"), "{text}");
        assert_eq!(
            health_url("[::]:9747".parse().unwrap()),
            "http://[::1]:9747/health"
        );
        assert_eq!(
            health_url("10.0.0.1:9747".parse().unwrap()),
            "http://10.0.0.1:9747/health"
        );
    }

    #[test]
    fn apache_conf_errors_name_the_flag_or_the_field() {
        let full = format!("{BASE}{FAILOVER}");
        let err = |toml: &str, a: ApacheConfArgs| site(toml, &a).unwrap_err();
        assert!(err(
            &full,
            ApacheConfArgs {
                peer_name: None,
                ..args()
            }
        )
        .starts_with("--peer-name is required"));
        assert!(err(
            &full,
            ApacheConfArgs {
                peer_name: Some("www 2".into()),
                ..args()
            }
        )
        .starts_with("--peer-name www 2: "));
        assert!(err(&full, ApacheConfArgs { port: 0, ..args() }).starts_with("--port 0"));
        assert_eq!(
            err(BASE, args()),
            "failover.vip is not set in /etc/twinfs/twinfs.toml: the balancer listens on \
             the VIP (set it in the [failover] table)"
        );
        let no_beacon =
            format!("{BASE}[failover]\nvip = \"192.168.0.10/24\"\ninterface = \"eth0\"\n");
        assert!(err(&no_beacon, args()).starts_with(
            "this node's address is unknown: give --address IP, or set failover.public in \
             /etc/twinfs/twinfs.toml"
        ));
        let e = err(
            &no_beacon,
            ApacheConfArgs {
                address: Some("192.168.0.1".parse().unwrap()),
                ..args()
            },
        );
        assert!(
            e.starts_with("the peer's address is unknown: give --peer-address IP, or set failover.peer_public"),
            "{e}"
        );
        let off = format!("{full}[metrics]\nlisten = \"off\"\n");
        assert!(
            err(&off, args()).starts_with("metrics.listen is \"off\" in /etc/twinfs/twinfs.toml")
        );
        assert!(err(
            &full,
            ApacheConfArgs {
                peer_name: Some("www1".into()),
                ..args()
            }
        )
        .starts_with("--peer-name: both nodes are www1"));
        assert!(err(
            &full,
            ApacheConfArgs {
                peer_address: Some("192.168.0.1".parse().unwrap()),
                ..args()
            }
        )
        .starts_with(
            "failover.public in /etc/twinfs/twinfs.toml and --peer-address: both nodes are 192.168.0.1:80"
        ));
        assert!(err(
            &full,
            ApacheConfArgs {
                address: Some("192.168.0.10".parse().unwrap()),
                ..args()
            }
        )
        .starts_with("failover.vip in /etc/twinfs/twinfs.toml: the VIP 192.168.0.10 is also"));
        assert!(err(
            &full,
            ApacheConfArgs {
                write_paths: vec!["admin".into()],
                ..args()
            }
        )
        .starts_with("--write-path: write path \"admin\": must start with /"));
        assert!(err(
            &full,
            ApacheConfArgs {
                docroot: Some("www".into()),
                ..args()
            }
        )
        .starts_with("--docroot: DocumentRoot \"www\""));
        assert!(err(
            &full,
            ApacheConfArgs {
                health_url: Some("ftp://x".into()),
                ..args()
            }
        )
        .starts_with("--health-url: health URL \"ftp://x\""));
    }
}
