//! `[failover]`: the supervisor. Present → `twinfs run` fails over by itself;
//! absent → promotion stays manual (`twinfs promote`), as before.

use super::{absolute_path, duration_in, socket_addr, ConfigError, Cx, NodeName, RawDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

/// Where the shipped hook script is installed.
pub(super) const DEFAULT_SCRIPT: &str = "/etc/twinfs/failover.lua";
const DEFAULT_STABILIZE: Duration = Duration::from_secs(5);
const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(30);
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// The example in address errors.
const EXAMPLE_PUBLIC: &str = "192.168.0.1:7790";
const LONG_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);
const HOOK_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// `[failover]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// `failover.script`: the Lua hooks. Default `/etc/twinfs/failover.lua`.
    pub script: PathBuf,
    /// `failover.vip` + `failover.interface`: the virtual IP the primary holds.
    pub vip: Option<VipConfig>,
    /// `failover.service`: the web service the hooks start (`apache2`,
    /// `httpd`); `None` lets the script pick by what is installed.
    pub service: Option<String>,
    /// `failover.check_url`: what the hooks fetch to see the service answer.
    pub check_url: Option<String>,
    /// `failover.public` / `failover.peer_public`: the second heartbeat path,
    /// over the public network (UDP), so a cut replication link is not taken
    /// for a dead peer.
    pub beacon: Option<BeaconConfig>,
    /// `failover.ping`: addresses that tell a live network from an isolated
    /// node (Heartbeat's `ping` nodes, usually the gateway).
    pub ping: Vec<IpAddr>,
    /// `failover.ping` is absent from the file (as opposed to `ping = []`):
    /// `twinfs run` then uses the default gateway, when there is one and no
    /// witness is configured.
    pub ping_unset: bool,
    /// `failover.witness` and its certificate: the tie-breaker.
    pub witness: Option<WitnessConfig>,
    /// `failover.home`: the node that should hold the role when both are
    /// fine (the node named first in Heartbeat's haresources; the same line on
    /// both nodes). It promotes when the pair starts, and takes the role back
    /// with `auto_failback`. `None`: the pair waits for `twinfs promote`.
    pub home: Option<String>,
    /// `failover.auto_failback`: the home node takes the role back when it
    /// returns healthy. Default false, as in the guides.
    pub auto_failback: bool,
    /// `failover.stabilize`: how long a returning peer must stay healthy
    /// before a failback.
    pub stabilize: Duration,
    /// `failover.hold_down`: after a failed promotion, how long before trying again.
    pub hold_down: Duration,
    /// `failover.arp_probe`: how long a VIP claim listens for another host
    /// answering for the address (RFC 5227 duplicate probe) before it
    /// announces it. Default 200ms; "0s" skips the wait (not the probe).
    pub arp_probe: Duration,
    /// `failover.hook_timeout`: wall-time limit of one hook.
    pub hook_timeout: Duration,
    /// `failover.escalation`: what happens when a demotion fails.
    pub escalation: EscalationName,
    /// `failover.escalation_command`: what `reboot`/`poweroff` runs (argv);
    /// default `systemctl reboot --force` / `systemctl poweroff --force`.
    /// Admins who want a hard reset write `["sh", "-c", "echo b > /proc/sysrq-trigger"]`.
    pub escalation_command: Option<Vec<String>>,
    /// `failover.manual`: detect and report, never act (maintenance mode).
    pub manual: bool,
    /// `[failover.services.NAME]`: how to start/stop a service when systemd is
    /// not PID 1.
    pub services: BTreeMap<String, ServiceConfig>,
    /// `[failover.vars]`: extra strings the hooks read as `twinfs.config.NAME`.
    pub vars: BTreeMap<String, String>,
}

/// A virtual IP and its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    pub addr: IpAddr,
    pub prefix: u8,
    pub interface: String,
}

/// This node's and the peer's beacon addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeaconConfig {
    pub listen: SocketAddr,
    pub peer: SocketAddr,
}

/// The witness's address and the certificate it is trusted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    pub addr: SocketAddr,
    /// `failover.witness_cert`: the witness's certificate (PEM). Required with `witness`.
    pub cert: PathBuf,
}

/// `failover.escalation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscalationName {
    #[default]
    None,
    Reboot,
    Poweroff,
}

/// `[failover.services.NAME]`: argv lists, not shell lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceConfig {
    pub start: Vec<String>,
    pub stop: Vec<String>,
    pub status: Option<Vec<String>>,
    pub pidfile: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawFailover {
    script: Option<Spanned<String>>,
    vip: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
    check_url: Option<Spanned<String>>,
    public: Option<Spanned<String>>,
    peer_public: Option<Spanned<String>>,
    ping: Option<Spanned<Vec<Spanned<String>>>>,
    witness: Option<Spanned<String>>,
    witness_cert: Option<Spanned<String>>,
    home: Option<Spanned<String>>,
    auto_failback: Option<bool>,
    stabilize: Option<Spanned<RawDuration>>,
    hold_down: Option<Spanned<RawDuration>>,
    hook_timeout: Option<Spanned<RawDuration>>,
    arp_probe: Option<Spanned<RawDuration>>,
    escalation: Option<Spanned<String>>,
    escalation_command: Option<Spanned<Vec<String>>>,
    manual: Option<bool>,
    services: BTreeMap<String, Spanned<RawService>>,
    vars: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawService {
    start: Option<Vec<String>>,
    stop: Option<Vec<String>>,
    status: Option<Vec<String>>,
    pidfile: Option<Spanned<String>>,
}

/// An interface name as the kernel accepts it: 1..=15 bytes, no `/`, no space.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl FailoverConfig {
    pub(super) fn from_raw(r: RawFailover, cx: &Cx<'_>) -> Result<FailoverConfig, ConfigError> {
        let script = absolute_path(cx, "failover.script", r.script, DEFAULT_SCRIPT)?.path;
        let vip = match (r.vip, r.interface) {
            (None, None) => None,
            (Some(v), None) => {
                return Err(cx.invalid(
                    "failover.interface",
                    v.span(),
                    "missing: failover.vip needs the interface that carries it, e.g. \"eth0\""
                        .into(),
                ))
            }
            (None, Some(i)) => {
                return Err(cx.invalid(
                    "failover.vip",
                    i.span(),
                    "missing: failover.interface is set but there is no failover.vip".into(),
                ))
            }
            (Some(v), Some(i)) => {
                let text = v.get_ref();
                let bad = || {
                    cx.invalid(
                        "failover.vip",
                        v.span(),
                        format!("must be ADDRESS/PREFIX, e.g. \"10.0.0.10/24\", got {text:?}"),
                    )
                };
                let (a, p) = text.split_once('/').ok_or_else(bad)?;
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                let prefix: u8 = p.parse().map_err(|_| bad())?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if prefix == 0 || prefix > max || addr.is_unspecified() || addr.is_loopback() {
                    return Err(bad());
                }
                if !valid_ifname(i.get_ref()) {
                    return Err(cx.invalid(
                        "failover.interface",
                        i.span(),
                        format!(
                            "must be an interface name (1 to 15 characters, no '/', ':' or \
                             spaces), got {:?}",
                            i.get_ref()
                        ),
                    ));
                }
                Some(VipConfig {
                    addr,
                    prefix,
                    interface: i.into_inner(),
                })
            }
        };
        let service = match r.service {
            None => None,
            Some(s) => {
                let ok = !s.get_ref().is_empty()
                    && s.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"@._-".contains(&b));
                if !ok {
                    return Err(cx.invalid(
                        "failover.service",
                        s.span(),
                        format!(
                            "must be a service name such as \"apache2\" or \"httpd\", got {:?}",
                            s.get_ref()
                        ),
                    ));
                }
                Some(s.into_inner())
            }
        };
        let check_url = match r.check_url {
            None => None,
            Some(u) => {
                if !u.get_ref().starts_with("http://") || u.get_ref().len() <= "http://".len() {
                    return Err(cx.invalid(
                        "failover.check_url",
                        u.span(),
                        format!(
                            "must be an http:// URL, e.g. \"http://10.0.0.10/\", got {:?}",
                            u.get_ref()
                        ),
                    ));
                }
                Some(u.into_inner())
            }
        };
        let beacon = match (r.public, r.peer_public) {
            (None, None) => None,
            (Some(l), None) => {
                return Err(cx.invalid(
                    "failover.peer_public",
                    l.span(),
                    "missing: failover.public is set, so the peer's public address and port \
                     are needed too"
                        .into(),
                ))
            }
            (None, Some(p)) => {
                return Err(cx.invalid(
                    "failover.public",
                    p.span(),
                    "missing: failover.peer_public is set, so this node's public address and \
                     port are needed too"
                        .into(),
                ))
            }
            (Some(l), Some(p)) => {
                let listen = socket_addr(cx, "failover.public", &l, EXAMPLE_PUBLIC)?;
                let peer = socket_addr(cx, "failover.peer_public", &p, EXAMPLE_PUBLIC)?;
                if listen == peer {
                    return Err(cx.invalid(
                        "failover.peer_public",
                        p.span(),
                        format!("must differ from failover.public, both are {listen}"),
                    ));
                }
                Some(BeaconConfig { listen, peer })
            }
        };
        let mut ping = Vec::new();
        let ping_unset = r.ping.is_none();
        if let Some(list) = r.ping {
            for t in list.into_inner() {
                let ip: IpAddr = t.get_ref().parse().map_err(|_| {
                    cx.invalid(
                        "failover.ping",
                        t.span(),
                        format!("must be a list of IP addresses, got {:?}", t.get_ref()),
                    )
                })?;
                ping.push(ip);
            }
        }
        let witness =
            match (r.witness, r.witness_cert) {
                (None, None) => None,
                (Some(w), None) => {
                    return Err(cx.invalid(
                        "failover.witness_cert",
                        w.span(),
                        "missing: failover.witness needs the witness's certificate file \
                     (copy it from the witness host; `twinfs keygen` wrote it there)"
                            .into(),
                    ))
                }
                (None, Some(c)) => return Err(cx.invalid(
                    "failover.witness",
                    c.span(),
                    "missing: failover.witness_cert is set but failover.witness (IP:PORT) is not"
                        .into(),
                )),
                (Some(w), Some(c)) => Some(WitnessConfig {
                    addr: socket_addr(cx, "failover.witness", &w, "192.168.0.3:7791")?,
                    cert: absolute_path(cx, "failover.witness_cert", Some(c), "")?.path,
                }),
            };
        let home = match r.home {
            None => None,
            Some(h) => Some(
                NodeName::from_str(h.get_ref())
                    .map_err(|msg| cx.invalid("failover.home", h.span(), msg))?
                    .as_str()
                    .to_owned(),
            ),
        };
        let stabilize = duration_in(
            cx,
            "failover.stabilize",
            r.stabilize,
            DEFAULT_STABILIZE,
            LONG_RANGE,
        )?;
        let hold_down = duration_in(
            cx,
            "failover.hold_down",
            r.hold_down,
            DEFAULT_HOLD_DOWN,
            LONG_RANGE,
        )?;
        let hook_timeout = duration_in(
            cx,
            "failover.hook_timeout",
            r.hook_timeout,
            DEFAULT_HOOK_TIMEOUT,
            HOOK_TIMEOUT_RANGE,
        )?;
        let arp_probe = duration_in(
            cx,
            "failover.arp_probe",
            r.arp_probe,
            Duration::from_millis(200),
            Duration::ZERO..=Duration::from_secs(5),
        )?;
        let escalation = match r.escalation {
            None => EscalationName::None,
            Some(e) => match e.get_ref().as_str() {
                "none" => EscalationName::None,
                "reboot" => EscalationName::Reboot,
                "poweroff" => EscalationName::Poweroff,
                _ => {
                    return Err(cx.invalid(
                        "failover.escalation",
                        e.span(),
                        format!(
                            "must be \"none\", \"reboot\" or \"poweroff\", got {:?}",
                            e.get_ref()
                        ),
                    ))
                }
            },
        };
        let escalation_command = match r.escalation_command {
            None => None,
            Some(c) if c.get_ref().is_empty() || c.get_ref()[0].is_empty() => {
                return Err(cx.invalid(
                    "failover.escalation_command",
                    c.span(),
                    "must be a command as a list of arguments, e.g. [\"systemctl\", \"reboot\", \"--force\"]"
                        .into(),
                ))
            }
            Some(c) => Some(c.into_inner()),
        };
        let mut services = BTreeMap::new();
        for (name, s) in r.services {
            let field = format!("failover.services.{name}");
            let span = s.span();
            let s = s.into_inner();
            let need = |v: Option<Vec<String>>, key: &str| match v {
                Some(v) if !v.is_empty() && !v[0].is_empty() => Ok(v),
                _ => Err(cx.invalid(
                    &format!("{field}.{key}"),
                    span.clone(),
                    format!(
                        "missing: the command that {key}s {name}, as a list of arguments, \
                             e.g. [\"apache2ctl\", \"{key}\"]"
                    ),
                )),
            };
            let start = need(s.start, "start")?;
            let stop = need(s.stop, "stop")?;
            let status = match s.status {
                Some(v) if v.is_empty() => {
                    return Err(cx.invalid(
                        &format!("{field}.status"),
                        span,
                        "must not be empty (leave it out to use the pid file)".into(),
                    ))
                }
                v => v,
            };
            let pidfile = match s.pidfile {
                None => None,
                Some(p) => {
                    Some(absolute_path(cx, "failover.services.*.pidfile", Some(p), "")?.path)
                }
            };
            services.insert(
                name,
                ServiceConfig {
                    start,
                    stop,
                    status,
                    pidfile,
                },
            );
        }
        let vars = r
            .vars
            .into_iter()
            .map(|(k, v)| (k, v.into_inner()))
            .collect();
        Ok(FailoverConfig {
            script,
            vip,
            service,
            check_url,
            beacon,
            ping,
            ping_unset,
            witness,
            home,
            auto_failback: r.auto_failback.unwrap_or(false),
            stabilize,
            hold_down,
            hook_timeout,
            arp_probe,
            escalation,
            escalation_command,
            manual: r.manual.unwrap_or(false),
            services,
            vars,
        })
    }

    /// The strings a hook reads as `twinfs.config.*`: `[failover.vars]` plus
    /// vip, interface, service and check_url when set.
    pub fn hook_vars(&self) -> BTreeMap<String, String> {
        let mut v = self.vars.clone();
        if let Some(vip) = &self.vip {
            v.insert("vip".into(), format!("{}/{}", vip.addr, vip.prefix));
            v.insert("vip_address".into(), vip.addr.to_string());
            v.insert("interface".into(), vip.interface.clone());
        }
        if let Some(s) = &self.service {
            v.insert("service".into(), s.clone());
        }
        if let Some(u) = &self.check_url {
            v.insert("check_url".into(), u.clone());
        }
        v
    }
}
