//! `twinfs init`: first-run setup of one node.
//!
//! From a handful of flags (node name, replication addresses, VIP and
//! interface) it writes this node's key and certificate and a config file, then
//! prints what is left to do by hand: exchange certificates with the peer and
//! enable the service.
//!
//! The config is the shipped sample (`packaging/twinfs.toml`, every option
//! documented) with the `[node]` name and the `[replication]` and `[failover]`
//! lines filled in, so the admin still reads every option's explanation in the
//! file they edit. It is loaded with [`Config::from_toml_str`] before anything
//! is written, and written atomically (temporary file, fsync, rename): an
//! invalid or half-written config never lands.
//!
//! Every flag error names the flag and the value as typed, e.g.
//! `--vip 10.0.0.10: must be ADDRESS/PREFIX, e.g. 10.0.0.10/24`.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use twinfs_replicator::tls::{self, PeerTrust, TlsError};

use crate::config::{self, Config, ConfigError, NodeName, PeerTrustConfig};
use crate::UsageError;

/// The shipped sample config; `init` fills in its commented-out lines.
const SAMPLE: &str = include_str!("../packaging/twinfs.toml");
/// The replication port when `--listen`/`--peer-address` give none (DRBD's usual 7789).
const REPLICATION_PORT: u16 = 7789;
/// The public beacon port when `--public`/`--peer-public` give none.
const BEACON_PORT: u16 = 7790;

/// The flags of `twinfs init`. Addresses are kept as typed so that an error
/// can quote them.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct InitArgs {
    /// This node's name (1 to 63 characters from A-Z a-z 0-9 . _ -), e.g. www1.
    #[arg(long, value_name = "NODE")]
    pub(crate) name: String,
    /// The peer's address on the replication link (port 7789 if omitted).
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) peer_address: String,
    /// This node's address on the replication link (port 7789 if omitted).
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) listen: String,
    /// The virtual IP the primary holds, with its prefix length, e.g. 10.0.0.10/24.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub(crate) vip: String,
    /// The network interface that carries the VIP, e.g. eth0.
    #[arg(long, value_name = "IF")]
    pub(crate) interface: String,
    /// This node's address for the second heartbeat over the public network
    /// (port 7790 if omitted); needs --peer-public.
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) public: Option<String>,
    /// The peer's address for the public heartbeat (port 7790 if omitted); needs --public.
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) peer_public: Option<String>,
    /// An address that tells a live network from an isolated node, usually the
    /// gateway (Heartbeat's `ping`). May be given more than once. Default:
    /// this machine's default gateway (without a witness, a primary that loses
    /// its peer keeps acknowledging writes only while this answers).
    #[arg(long, value_name = "IP")]
    pub(crate) ping: Vec<String>,
    /// No ping target, not even the default gateway: a primary that loses its
    /// peer then continues alone, so a cut cable can cause a split brain.
    #[arg(long, conflicts_with = "ping")]
    pub(crate) no_ping: bool,
    /// The home node, which takes the role when the pair starts (give the same
    /// value on both nodes). Without it the pair waits for `twinfs promote`.
    #[arg(long, value_name = "NODE")]
    pub(crate) home: Option<String>,
    /// Where to write the config. The key, the certificate and the peer's
    /// certificate go next to it (node.key, node.crt, peer.crt).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    /// Replace an existing config file. An existing key and certificate are kept.
    #[arg(long)]
    pub(crate) force: bool,
    /// The data directory (the block store), written to the config as
    /// node.data_dir; default /var/lib/twinfs. It is created, or made private,
    /// mode 0700: the store holds every file's data.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// What went wrong in `twinfs init`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    /// A flag's value is not acceptable.
    #[error("{flag} {value}: {message}")]
    Flag {
        /// The flag, with its dashes.
        flag: &'static str,
        /// The value as typed.
        value: String,
        /// What is wrong and what would be right.
        message: String,
    },
    /// A config file is already there and `--force` was not given.
    #[error("{} already exists; use --force to replace it (the key and certificate are kept)", path.display())]
    ConfigExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Only one of the key and the certificate exists.
    #[error(
        "{} exists but {} does not: remove the leftover file, or write both with `twinfs keygen`",
        present.display(),
        missing.display()
    )]
    HalfIdentity {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
    /// Generating, writing or reading the key and certificate failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The config built from the flags does not load: a bug in `twinfs init`.
    #[error("the config written from the flags does not load (a bug in twinfs init): {0}")]
    Invalid(String),
    /// A file or directory could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

impl InitError {
    /// True when the admin's input is at fault (exit code 2).
    fn is_usage(&self) -> bool {
        matches!(
            self,
            InitError::Flag { .. }
                | InitError::ConfigExists { .. }
                | InitError::HalfIdentity { .. }
        )
    }
}

/// The flags, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    name: NodeName,
    listen: SocketAddr,
    peer: SocketAddr,
    vip: IpAddr,
    prefix: u8,
    interface: String,
    beacon: Option<(SocketAddr, SocketAddr)>,
    ping: Vec<IpAddr>,
    home: Option<NodeName>,
    /// The config file, absolute.
    config: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    peer_cert: PathBuf,
    script: PathBuf,
    /// `--data-dir`, absolute.
    data_dir: Option<PathBuf>,
}

fn flag_err(flag: &'static str, value: &str, message: impl Into<String>) -> InitError {
    InitError::Flag {
        flag,
        value: value.to_owned(),
        message: message.into(),
    }
}

/// `IP` or `IP:PORT` (IPv6 as `[addr]:port`), a specific address and port.
fn host_port(flag: &'static str, value: &str, default_port: u16) -> Result<SocketAddr, InitError> {
    let addr = match value.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match value.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, default_port),
            Err(_) => {
                return Err(flag_err(
                    flag,
                    value,
                    format!(
                        "must be IP or IP:PORT, e.g. 10.99.0.1 or 10.99.0.1:{default_port} \
                         ([IPv6]:PORT for IPv6)"
                    ),
                ))
            }
        },
    };
    if addr.ip().is_unspecified() {
        return Err(flag_err(
            flag,
            value,
            "must be this machine's specific address, not 0.0.0.0 or ::",
        ));
    }
    if addr.port() == 0 {
        return Err(flag_err(
            flag,
            value,
            "the port must be between 1 and 65535",
        ));
    }
    Ok(addr)
}

fn node_name(flag: &'static str, value: &str) -> Result<NodeName, InitError> {
    value.parse::<NodeName>().map_err(|_| {
        flag_err(
            flag,
            value,
            "must be 1 to 63 characters from A-Z a-z 0-9 . _ -",
        )
    })
}

/// Checks every flag and works out the file paths. Writes nothing.
fn plan(args: &InitArgs, cwd: &Path) -> Result<Plan, InitError> {
    let name = node_name("--name", &args.name)?;
    let listen = host_port("--listen", &args.listen, REPLICATION_PORT)?;
    let peer = host_port("--peer-address", &args.peer_address, REPLICATION_PORT)?;
    if peer == listen {
        return Err(flag_err(
            "--peer-address",
            &args.peer_address,
            format!("must differ from --listen, both are {listen}"),
        ));
    }
    let bad_vip = || {
        flag_err(
            "--vip",
            &args.vip,
            "must be ADDRESS/PREFIX, e.g. 10.0.0.10/24",
        )
    };
    let (a, p) = args.vip.split_once('/').ok_or_else(bad_vip)?;
    let vip: IpAddr = a.parse().map_err(|_| bad_vip())?;
    let prefix: u8 = p.parse().map_err(|_| bad_vip())?;
    let max = if vip.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return Err(flag_err(
            "--vip",
            &args.vip,
            format!("the prefix length must be between 1 and {max}, e.g. 10.0.0.10/24"),
        ));
    }
    if vip.is_unspecified() || vip.is_loopback() {
        return Err(flag_err(
            "--vip",
            &args.vip,
            "must be an address on the public network, not a loopback or unspecified one",
        ));
    }
    let i = &args.interface;
    let ifname_ok = !i.is_empty()
        && i.len() <= 15
        && i != "."
        && i != ".."
        && i.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !ifname_ok {
        return Err(flag_err(
            "--interface",
            i,
            "must be an interface name (1 to 15 characters, no '/', ':' or spaces), e.g. eth0",
        ));
    }
    let beacon = match (&args.public, &args.peer_public) {
        (None, None) => None,
        (Some(l), None) => {
            return Err(flag_err(
                "--public",
                l,
                "needs --peer-public too (the peer's public address)",
            ))
        }
        (None, Some(p)) => {
            return Err(flag_err(
                "--peer-public",
                p,
                "needs --public too (this node's public address)",
            ))
        }
        (Some(l), Some(p)) => {
            let listen = host_port("--public", l, BEACON_PORT)?;
            let peer = host_port("--peer-public", p, BEACON_PORT)?;
            if listen == peer {
                return Err(flag_err(
                    "--peer-public",
                    p,
                    format!("must differ from --public, both are {listen}"),
                ));
            }
            Some((listen, peer))
        }
    };
    let ping = args
        .ping
        .iter()
        .map(|p| {
            p.parse::<IpAddr>()
                .map_err(|_| flag_err("--ping", p, "must be an IP address, e.g. 192.168.0.254"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let home = args
        .home
        .as_deref()
        .map(|h| node_name("--home", h))
        .transpose()?;

    let shown = args.config.display().to_string();
    let config = cwd.join(&args.config);
    if config.is_dir() || config.file_name().is_none() {
        return Err(flag_err(
            "--config",
            &shown,
            "must be a file path, e.g. /etc/twinfs/twinfs.toml",
        ));
    }
    let dir = config.parent().unwrap_or(Path::new("/")).to_path_buf();
    if dir.exists() && !dir.is_dir() {
        return Err(flag_err(
            "--config",
            &shown,
            format!("{} is not a directory", dir.display()),
        ));
    }
    for path in [&config, &dir] {
        if path.to_str().is_none() {
            return Err(flag_err(
                "--config",
                &shown,
                "the path must be valid UTF-8 (it is written into the config)",
            ));
        }
    }
    Ok(Plan {
        name,
        listen,
        peer,
        vip,
        prefix,
        interface: i.clone(),
        beacon,
        ping,
        home,
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
        peer_cert: dir.join("peer.crt"),
        script: dir.join("failover.lua"),
        config,
        data_dir: args.data_dir.as_ref().map(|d| cwd.join(d)),
    })
}

/// A TOML string literal.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The sample config with the plan's values filled in.
///
/// The sample's lines look like `# key = "default"` under a `[section]` or a
/// commented `# [section]` header; each wanted key replaces the first such
/// line of its section, and the header of a commented section is uncommented.
fn render(plan: &Plan) -> Result<String, InitError> {
    let path = |p: &Path| toml_str(&p.display().to_string());
    let mut wanted: Vec<(&str, &str, String)> = vec![
        ("node", "name", toml_str(plan.name.as_str())),
        ("replication", "listen", toml_str(&plan.listen.to_string())),
        ("replication", "peer", toml_str(&plan.peer.to_string())),
        ("replication", "cert", path(&plan.cert)),
        ("replication", "key", path(&plan.key)),
        ("replication", "peer_cert", path(&plan.peer_cert)),
        ("failover", "script", path(&plan.script)),
        (
            "failover",
            "vip",
            toml_str(&format!("{}/{}", plan.vip, plan.prefix)),
        ),
        ("failover", "interface", toml_str(&plan.interface)),
    ];
    if let Some(d) = &plan.data_dir {
        wanted.push(("node", "data_dir", path(d)));
    }
    if let Some((l, p)) = plan.beacon {
        wanted.push(("failover", "public", toml_str(&l.to_string())));
        wanted.push(("failover", "peer_public", toml_str(&p.to_string())));
    }
    if !plan.ping.is_empty() {
        let list: Vec<String> = plan.ping.iter().map(|p| toml_str(&p.to_string())).collect();
        wanted.push(("failover", "ping", format!("[{}]", list.join(", "))));
    }
    if let Some(h) = &plan.home {
        wanted.push(("failover", "home", toml_str(h.as_str())));
    }
    let sections: Vec<&str> = wanted.iter().map(|w| w.0).collect();

    let mut out = format!(
        "# Written by `twinfs init` for node {}. The lines filled in are uncommented;\n\
         # every other option keeps its default. Check it with `twinfs hooks dry-run promote`.\n#\n",
        plan.name
    );
    let mut section = String::new();
    let mut placed = vec![false; wanted.len()];
    for line in SAMPLE.lines() {
        let trimmed = line.trim();
        let header = trimmed
            .strip_prefix('#')
            .map(str::trim_start)
            .unwrap_or(trimmed);
        if let Some(name) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b"_.".contains(&b))
            {
                section = name.to_owned();
                if trimmed.starts_with('#') && sections.contains(&name) {
                    out.push_str(header);
                    out.push('\n');
                    continue;
                }
            }
        }
        let mut replaced = false;
        if let Some(body) = trimmed.strip_prefix('#').map(str::trim_start) {
            for (i, (sec, key, value)) in wanted.iter().enumerate() {
                let is_key = body
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='));
                if !placed[i] && *sec == section && is_key {
                    out.push_str(&format!("{key} = {value}\n"));
                    placed[i] = true;
                    replaced = true;
                    break;
                }
            }
        }
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(i) = placed.iter().position(|p| !p) {
        return Err(InitError::Invalid(format!(
            "the sample config has no `# {} = ...` line in [{}]",
            wanted[i].1, wanted[i].0
        )));
    }
    Ok(out)
}

/// Loads the rendered text and checks that it says what the flags said.
fn check(plan: &Plan, text: &str) -> Result<Config, InitError> {
    let cfg = Config::from_toml_str(text, &plan.config)
        .map_err(|e: ConfigError| InitError::Invalid(e.to_string()))?;
    let mismatch = |what: &str| InitError::Invalid(format!("{what} did not come out as given"));
    if cfg.node.name != plan.name {
        return Err(mismatch("node.name"));
    }
    let r = cfg
        .replication
        .as_ref()
        .ok_or_else(|| mismatch("[replication]"))?;
    if r.listen != plan.listen
        || r.peer != plan.peer
        || r.cert != plan.cert
        || r.key != plan.key
        || r.peer_trust != PeerTrustConfig::CertFile(plan.peer_cert.clone())
    {
        return Err(mismatch("[replication]"));
    }
    let f = cfg
        .failover
        .as_ref()
        .ok_or_else(|| mismatch("[failover]"))?;
    let vip_ok = f.vip.as_ref().is_some_and(|v| {
        v.addr == plan.vip && v.prefix == plan.prefix && v.interface == plan.interface
    });
    let beacon = f.beacon.as_ref().map(|b| (b.listen, b.peer));
    let home_ok = f.home.as_deref() == plan.home.as_ref().map(NodeName::as_str);
    if !vip_ok
        || beacon != plan.beacon
        || f.ping != plan.ping
        || !home_ok
        || f.script != plan.script
    {
        return Err(mismatch("[failover]"));
    }
    Ok(cfg)
}

/// Writes `text` to `path` atomically: a temporary file beside it, fsync,
/// rename over, fsync of the directory.
fn write_atomic(path: &Path, text: &str) -> Result<(), InitError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.init-{}", std::process::id()));
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |error| InitError::Write { path: p, error }
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(werr(&tmp))?;
        f.write_all(text.as_bytes()).map_err(werr(&tmp))?;
        f.sync_all().map_err(werr(&tmp))?;
        std::fs::rename(&tmp, path).map_err(werr(path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(werr(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What [`run`] did, for the summary it prints.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The config file written.
    pub(crate) config: PathBuf,
    /// This node's certificate.
    pub(crate) cert: PathBuf,
    /// This node's private key.
    pub(crate) key: PathBuf,
    /// Where the peer's certificate is expected.
    pub(crate) peer_cert: PathBuf,
    /// The hook script the config names.
    pub(crate) script: PathBuf,
    /// The certificate's fingerprint (`sha256:AB:CD:...`).
    pub(crate) fingerprint: String,
    /// False when an existing key and certificate were kept.
    pub(crate) new_identity: bool,
    /// The data directory, now existing with mode 0700.
    pub(crate) data_dir: PathBuf,
}

/// Does the work of `twinfs init`: checks the flags, builds and checks the
/// config, writes the key and certificate (or keeps existing ones) and then
/// the config. Prints nothing.
pub(crate) fn run(args: &InitArgs) -> Result<Outcome, InitError> {
    let cwd = std::env::current_dir().map_err(|error| InitError::Write {
        path: PathBuf::from("."),
        error,
    })?;
    let plan = plan(args, &cwd)?;
    if plan.config.symlink_metadata().is_ok() && !args.force {
        return Err(InitError::ConfigExists { path: plan.config });
    }
    let text = render(&plan)?;
    let cfg = check(&plan, &text)?;

    let dir = plan.config.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|error| InitError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let (fingerprint, new_identity) = match (
        plan.cert.symlink_metadata().is_ok(),
        plan.key.symlink_metadata().is_ok(),
    ) {
        (true, true) => (PeerTrust::from_cert_file(&plan.cert)?.fingerprint(), false),
        (false, false) => {
            let generated = tls::generate(plan.name.as_str())?;
            tls::write_identity(&generated, &plan.cert, &plan.key)?;
            (generated.fingerprint, true)
        }
        (true, false) => {
            return Err(InitError::HalfIdentity {
                present: plan.cert,
                missing: plan.key,
            })
        }
        (false, true) => {
            return Err(InitError::HalfIdentity {
                present: plan.key,
                missing: plan.cert,
            })
        }
    };
    write_atomic(&plan.config, &text)?;
    let data_dir = cfg.node.data_dir;
    crate::perms::make_private_dir(&data_dir).map_err(|error| InitError::Write {
        path: data_dir.clone(),
        error,
    })?;
    Ok(Outcome {
        data_dir,
        config: plan.config,
        cert: plan.cert,
        key: plan.key,
        peer_cert: plan.peer_cert,
        script: plan.script,
        fingerprint,
        new_identity,
    })
}

/// `twinfs init`: [`run`], then the summary and the next steps on stdout.
/// This machine's default IPv4 gateway, from `/proc/net/route`.
pub(crate) fn default_gateway() -> Option<std::net::Ipv4Addr> {
    parse_default_gateway(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// The gateway of the first default route (destination and mask 0) in the
/// text of `/proc/net/route` (hexadecimal, in the host's byte order).
fn parse_default_gateway(route: &str) -> Option<std::net::Ipv4Addr> {
    route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (dest, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
        if *dest != "00000000" || *mask != "00000000" || *gw == "00000000" {
            return None;
        }
        let v = u32::from_str_radix(gw, 16).ok()?;
        Some(std::net::Ipv4Addr::from(v.to_ne_bytes()))
    })
}

pub(crate) fn main(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let mut args = args.clone();
    let mut ping_note = None;
    if args.ping.is_empty() && !args.no_ping {
        match default_gateway() {
            Some(gw) => {
                args.ping.push(gw.to_string());
                ping_note = Some(format!(
                    "ping target: {gw}, the default gateway (--ping to choose another, --no-ping for none)"
                ));
            }
            None => {
                ping_note = Some(
                    "WARNING: no default gateway found and no --ping given: without a ping target \
                     or a witness, a primary that loses its peer continues alone, so a cut cable \
                     can cause a split brain; add failover.ping to the config"
                        .into(),
                )
            }
        }
    } else if args.no_ping {
        ping_note = Some(
            "WARNING: --no-ping: without a ping target or a witness, a primary that loses its \
             peer continues alone, so a cut cable can cause a split brain"
                .into(),
        );
    }
    let args = &args;
    let o = match run(args) {
        Ok(o) => o,
        Err(e) if e.is_usage() => return Err(UsageError(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    let kept = if o.new_identity {
        "new"
    } else {
        "kept the existing one"
    };
    println!("config:      {}", o.config.display());
    println!("certificate: {} ({kept})", o.cert.display());
    println!(
        "key:         {} (mode 0600; never copy it)",
        o.key.display()
    );
    println!("fingerprint: {}", o.fingerprint);
    println!("data dir:    {} (mode 0700)", o.data_dir.display());
    if let Some(n) = ping_note {
        println!("{n}");
    }
    if !Path::new("/sys/class/net").join(&args.interface).exists() {
        println!();
        println!(
            "note: this machine has no interface {:?} now; check --interface.",
            args.interface
        );
    }
    println!();
    println!("Next steps:");
    println!(
        "  1. Run `twinfs init` on the peer too, with --listen and --peer-address swapped{}.",
        if args.public.is_some() {
            " (and --public and --peer-public)"
        } else {
            ""
        }
    );
    println!(
        "  2. Copy {} to the peer as {} (or put the fingerprint",
        o.cert.display(),
        o.peer_cert.display()
    );
    println!(
        "     above in the peer's replication.peer_fingerprint instead of peer_cert), and the"
    );
    println!("     peer's node.crt here as {}.", o.peer_cert.display());
    if o.script.exists() {
        println!(
            "  3. Review the hooks: twinfs hooks check {}",
            o.script.display()
        );
    } else {
        println!(
            "  3. Put the failover hooks at {} (the package installs them in /etc/twinfs/failover.lua).",
            o.script.display()
        );
    }
    println!("  4. systemctl enable --now twinfs   (on both nodes)");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn good() -> InitArgs {
        InitArgs {
            name: "www1".into(),
            peer_address: "10.99.0.2".into(),
            listen: "10.99.0.1:7789".into(),
            vip: "192.168.0.10/24".into(),
            interface: "eth0".into(),
            public: Some("192.168.0.1".into()),
            peer_public: Some("192.168.0.2:7790".into()),
            ping: vec!["192.168.0.254".into()],
            no_ping: false,
            home: Some("www1".into()),
            config: PathBuf::from("/etc/twinfs/twinfs.toml"),
            force: false,
            data_dir: None,
        }
    }

    /// The error for `args`, which must name `flag` and `value`.
    fn flag_error(args: InitArgs, flag: &str, value: &str) -> String {
        let e = plan(&args, Path::new("/")).expect_err("bad flag accepted");
        let text = e.to_string();
        assert!(
            matches!(&e, InitError::Flag { flag: f, value: v, .. } if *f == flag && v == value),
            "{text}"
        );
        assert!(text.starts_with(&format!("{flag} {value}: ")), "{text}");
        text
    }

    #[test]
    fn good_flags_plan_and_default_ports() {
        let p = plan(&good(), Path::new("/")).unwrap();
        assert_eq!(p.peer, "10.99.0.2:7789".parse().unwrap());
        assert_eq!(
            p.beacon,
            Some((
                "192.168.0.1:7790".parse().unwrap(),
                "192.168.0.2:7790".parse().unwrap()
            ))
        );
        assert_eq!(p.peer_cert, PathBuf::from("/etc/twinfs/peer.crt"));
        assert_eq!(p.key, PathBuf::from("/etc/twinfs/node.key"));
        let relative = InitArgs {
            config: "conf/t.toml".into(),
            ..good()
        };
        let p = plan(&relative, Path::new("/srv")).unwrap();
        assert_eq!(p.config, PathBuf::from("/srv/conf/t.toml"));
        assert_eq!(p.cert, PathBuf::from("/srv/conf/node.crt"));
    }

    #[test]
    fn bad_name() {
        for v in ["", "www 1", "a/b", &"x".repeat(64)] {
            let args = InitArgs {
                name: v.into(),
                ..good()
            };
            let t = flag_error(args, "--name", v);
            assert!(t.contains("1 to 63 characters"), "{t}");
        }
    }

    #[test]
    fn bad_peer_address() {
        for v in ["10.99.0.2:x", "peer.example", "0.0.0.0:7789", "10.99.0.2:0"] {
            let args = InitArgs {
                peer_address: v.into(),
                ..good()
            };
            flag_error(args, "--peer-address", v);
        }
        // The same address and port as --listen.
        let args = InitArgs {
            peer_address: "10.99.0.1".into(),
            ..good()
        };
        let t = flag_error(args, "--peer-address", "10.99.0.1");
        assert!(t.contains("must differ from --listen"), "{t}");
    }

    #[test]
    fn bad_listen() {
        for v in ["10.99.0.1:99999", "::", "eth1"] {
            let args = InitArgs {
                listen: v.into(),
                ..good()
            };
            flag_error(args, "--listen", v);
        }
    }

    #[test]
    fn bad_vip() {
        let t = flag_error(
            InitArgs {
                vip: "10.0.0.10".into(),
                ..good()
            },
            "--vip",
            "10.0.0.10",
        );
        assert_eq!(
            t,
            "--vip 10.0.0.10: must be ADDRESS/PREFIX, e.g. 10.0.0.10/24"
        );
        for v in [
            "10.0.0.10/33",
            "10.0.0.10/0",
            "10.0.0/24",
            "127.0.0.1/8",
            "x/y",
        ] {
            let args = InitArgs {
                vip: v.into(),
                ..good()
            };
            flag_error(args, "--vip", v);
        }
    }

    #[test]
    fn bad_interface() {
        for v in ["", "eth0:1", "a/b", "averyveryverylongname", "eth 0"] {
            let args = InitArgs {
                interface: v.into(),
                ..good()
            };
            flag_error(args, "--interface", v);
        }
    }

    #[test]
    fn bad_public_and_peer_public() {
        let args = InitArgs {
            public: Some("192.168.0.1:x".into()),
            ..good()
        };
        flag_error(args, "--public", "192.168.0.1:x");
        let args = InitArgs {
            peer_public: Some("nowhere".into()),
            ..good()
        };
        flag_error(args, "--peer-public", "nowhere");
        let args = InitArgs {
            peer_public: None,
            ..good()
        };
        let t = flag_error(args, "--public", "192.168.0.1");
        assert!(t.contains("needs --peer-public"), "{t}");
        let args = InitArgs {
            public: None,
            ..good()
        };
        flag_error(args, "--peer-public", "192.168.0.2:7790");
        let args = InitArgs {
            peer_public: Some("192.168.0.1:7790".into()),
            ..good()
        };
        flag_error(args, "--peer-public", "192.168.0.1:7790");
    }

    #[test]
    fn default_gateway_from_proc_net_route() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\tFE00A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            super::parse_default_gateway(route),
            Some("192.168.0.254".parse().unwrap())
        );
        assert_eq!(
            super::parse_default_gateway(
                route
                    .lines()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .as_str()
            ),
            None
        );
    }

    #[test]
    fn bad_ping() {
        let args = InitArgs {
            ping: vec!["192.168.0.254".into(), "gateway".into()],
            ..good()
        };
        let t = flag_error(args, "--ping", "gateway");
        assert!(t.contains("must be an IP address"), "{t}");
    }

    #[test]
    fn bad_home() {
        let args = InitArgs {
            home: Some("www 1".into()),
            ..good()
        };
        flag_error(args, "--home", "www 1");
    }

    #[test]
    fn bad_config() {
        let dir = tempfile::tempdir().unwrap();
        let shown = dir.path().display().to_string();
        let args = InitArgs {
            config: dir.path().to_path_buf(),
            ..good()
        };
        let t = flag_error(args, "--config", &shown);
        assert!(t.contains("must be a file path"), "{t}");
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        let under_file = file.join("twinfs.toml");
        let args = InitArgs {
            config: under_file.clone(),
            ..good()
        };
        let t = flag_error(args, "--config", &under_file.display().to_string());
        assert!(t.contains("is not a directory"), "{t}");
    }

    #[test]
    fn rendered_sample_loads_with_every_value() {
        let p = plan(&good(), Path::new("/")).unwrap();
        let text = render(&p).unwrap();
        let cfg = check(&p, &text).unwrap();
        assert_eq!(cfg.failover.unwrap().home.as_deref(), Some("www1"));
        assert!(text.contains("\n[replication]\n"), "{text}");
        assert!(text.contains("\nping = [\"192.168.0.254\"]\n"), "{text}");
        // The other options keep their documentation, commented out.
        assert!(text.contains("\n# protocol = \"C\"\n"), "{text}");
        // Minimal flags: no beacon, ping or home lines are uncommented.
        let minimal = InitArgs {
            public: None,
            peer_public: None,
            ping: vec![],
            home: None,
            ..good()
        };
        let p = plan(&minimal, Path::new("/")).unwrap();
        let text = render(&p).unwrap();
        let cfg = check(&p, &text).unwrap();
        let f = cfg.failover.unwrap();
        assert!(f.beacon.is_none() && f.ping.is_empty() && f.home.is_none());
    }

    #[test]
    fn writes_key_cert_config_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        // An existing data dir that others can read is made private (issue 13).
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let args = InitArgs {
            config: dir.path().join("etc/twinfs.toml"),
            data_dir: Some(data.clone()),
            ..good()
        };
        let o = run(&args).unwrap();
        assert!(o.new_identity);
        assert_eq!(o.data_dir, data);
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert!(o.fingerprint.starts_with("sha256:"), "{}", o.fingerprint);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&o.key), 0o600);
        assert_eq!(mode(&o.cert), 0o644);
        assert_eq!(mode(&o.config), 0o644);
        let cfg = Config::load(&o.config).unwrap();
        assert_eq!(cfg.node.name.as_str(), "www1");
        assert_eq!(cfg.node.data_dir, data);

        let e = run(&args).unwrap_err();
        assert!(matches!(e, InitError::ConfigExists { .. }), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");

        // --force rewrites the config and keeps the identity.
        let before = std::fs::read(&o.key).unwrap();
        let forced = InitArgs {
            force: true,
            vip: "192.168.0.11/24".into(),
            ..args.clone()
        };
        let o2 = run(&forced).unwrap();
        assert!(!o2.new_identity);
        assert_eq!(o2.fingerprint, o.fingerprint);
        assert_eq!(std::fs::read(&o.key).unwrap(), before);
        let cfg = Config::load(&o.config).unwrap();
        assert_eq!(
            cfg.failover.unwrap().vip.unwrap().addr,
            "192.168.0.11".parse::<IpAddr>().unwrap()
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");

        // A lone key is refused, and nothing is written.
        std::fs::remove_file(&o.cert).unwrap();
        let e = run(&forced).unwrap_err();
        assert!(matches!(e, InitError::HalfIdentity { .. }), "{e}");
    }
}
