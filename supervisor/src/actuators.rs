//! The real actions: what a hook's `twinfs.*` call does to this machine.
//!
//! [`System`] implements [`Actuators`] for a supervisor running as root:
//!
//! - **VIP**: the address goes on with `ip addr add` (as Heartbeat's IPaddr2
//!   does), then an RFC 5227 duplicate-address probe (an ARP request from
//!   `0.0.0.0`, like `arping -D`) listens for [`SystemOptions::arp_probe`],
//!   then gratuitous ARP tells the switch and the neighbours where the
//!   address lives now. The first announcement goes out before the claim
//!   returns; the other `garp_count - 1` follow from a background thread every
//!   `garp_interval`, so a claim costs the probe window and one frame, not the
//!   whole series. Releasing (or claiming again) cancels a series still
//!   running, so no announcement ever follows a release.
//! - **IPv6 VIPs** are added with `nodad` (as keepalived does: the address
//!   must work at once after a failover) and announced with unsolicited
//!   neighbour advertisements (override flag set). There is no duplicate probe
//!   for IPv6 yet: [`VipClaim::conflict`] is always `None` there.
//! - **Services** go through systemd when PID 1 is systemd, otherwise through
//!   configured commands ([`ServiceCommands`]) with built-in defaults for
//!   `apache2` (Debian) and `httpd` (RHEL). Stopping waits until the service is
//!   really gone, because the mount is unmounted right after.
//! - **HTTP checks** use a minimal HTTP/1.1 client on `std::net::TcpStream`
//!   (http:// only): a health check needs one GET, and the small HTTP crates
//!   pull in URL/IDNA stacks larger than this whole module.
//! - **exec** runs a command without a shell, in its own process group, with a
//!   timeout that kills the group.
//! - [`ping`] sends one ICMP echo (raw socket as root, datagram ICMP socket
//!   otherwise) for the supervisor's ping target.
//!
//! Nothing here needs `unsafe`: raw frames go through `pnet_datalink`, ICMP
//! through `socket2`, process groups through `nix`.

mod arp;
mod exec;
mod http;
mod ping;
mod service;
mod vip;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::actions::{
    ActionError, Actuators, ExecResult, HttpAnswer, HttpCheck, ServiceState, Vip, VipClaim,
};

pub use exec::OUTPUT_CAP;

/// Who answers ARP for `ip` on `dev` right now: one ordinary ARP request
/// from `sender` (this host's own address on `dev`), listening for
/// `window`. Returns this interface's MAC and the MAC of the first other host
/// that answers, if any. `twinfs drill` uses it to check that the network
/// follows the VIP.
pub fn arp_who_has(
    dev: &str,
    ip: std::net::Ipv4Addr,
    sender: std::net::Ipv4Addr,
    window: Duration,
) -> Result<(String, Option<String>), ActionError> {
    let mut link =
        arp::Link::open(dev).map_err(|e| ActionError(format!("ARP query for {ip}: {e}")))?;
    let other = link
        .who_has(ip, sender, window)
        .map_err(|e| ActionError(format!("ARP query for {ip} on {dev}: {e}")))?;
    Ok((
        arp::mac_string(&link.mac),
        other.map(|m| arp::mac_string(&m)),
    ))
}

pub use ping::ping;
pub use service::{ServiceBackend, ServiceCommands};

/// How the real actuators behave. `Default` gives what a Debian or RHEL
/// Apache pair needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemOptions {
    /// Commands per service name. A name listed here uses these commands even
    /// under systemd; `apache2` and `httpd` have built-in defaults.
    pub services: BTreeMap<String, ServiceCommands>,
    /// systemd or commands; `None` detects systemd (`/run/systemd/system`).
    pub backend: Option<ServiceBackend>,
    /// How long the duplicate-address probe listens for an answer (200 ms).
    pub arp_probe: Duration,
    /// Gratuitous ARP announcements per claim or announce (3).
    pub garp_count: u32,
    /// Time between two announcements (100 ms); the first one is immediate.
    pub garp_interval: Duration,
    /// How long `service_stop` waits for the service to be gone (30 s).
    pub stop_timeout: Duration,
    /// Time limit of one service command (`apache2ctl start`, `systemctl
    /// start`, a status command) (60 s).
    pub command_timeout: Duration,
}

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            services: BTreeMap::new(),
            backend: None,
            arp_probe: Duration::from_millis(200),
            garp_count: 3,
            garp_interval: Duration::from_millis(100),
            stop_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
        }
    }
}

/// The actuators of the machine the supervisor runs on (root needed for
/// addresses, raw frames and services).
#[derive(Debug)]
pub struct System {
    opts: SystemOptions,
    backend: ServiceBackend,
    /// Generation of the announcement series per (interface, address): a
    /// background series stops as soon as its generation is not the current
    /// one. The lock is held while a frame is sent, so a release that bumps
    /// the generation is never followed by an announcement.
    series: Arc<Mutex<HashMap<(String, IpAddr), u64>>>,
}

impl System {
    /// Actuators with these options; the service backend is detected now
    /// when the options leave it open.
    pub fn new(opts: SystemOptions) -> Self {
        let backend = opts.backend.unwrap_or_else(ServiceBackend::detect);
        System {
            opts,
            backend,
            series: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &SystemOptions {
        &self.opts
    }

    /// The service backend in use (configured or detected).
    pub fn backend(&self) -> ServiceBackend {
        self.backend
    }
}

impl Default for System {
    fn default() -> Self {
        System::new(SystemOptions::default())
    }
}

impl Actuators for System {
    fn vip_claim(&self, vip: &Vip) -> Result<VipClaim, ActionError> {
        vip::claim(self, vip)
    }

    fn vip_release(&self, vip: &Vip) -> Result<(), ActionError> {
        vip::release(self, vip)
    }

    fn vip_held(&self, vip: &Vip) -> Result<bool, ActionError> {
        vip::held(vip)
    }

    fn vip_announce(&self, vip: &Vip) -> Result<u32, ActionError> {
        vip::announce(self, vip)
    }

    fn service_start(&self, name: &str) -> Result<(), ActionError> {
        service::start(self, name)
    }

    fn service_stop(&self, name: &str) -> Result<(), ActionError> {
        service::stop(self, name)
    }

    fn service_status(&self, name: &str) -> Result<ServiceState, ActionError> {
        service::status(self, name)
    }

    fn http_check(&self, check: &HttpCheck) -> Result<HttpAnswer, ActionError> {
        http::check(check)
    }

    fn exec(&self, argv: &[String], timeout: Duration) -> Result<ExecResult, ActionError> {
        exec::run(argv, timeout)
    }
}

/// `argv` as an admin would type it, for error messages.
fn show(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_only_what_needs_it() {
        let argv: Vec<String> = ["sh", "-c", "echo 'hi' there", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(show(&argv), r#"sh -c 'echo '\''hi'\'' there' ''"#);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let o = SystemOptions::default();
        assert_eq!(o.arp_probe, Duration::from_millis(200));
        assert_eq!(o.garp_count, 3);
        assert_eq!(o.garp_interval, Duration::from_millis(100));
        assert!(o.backend.is_none());
    }
}
