//! What the supervisor needs to know, as the binary's `[node]`,
//! `[replication]` and `[failover]` tables resolve it. Validation happens
//! there; [`super::start`] only checks what needs the files and sockets
//! themselves (the script, the certificates, the ports).

use crate::actuators::ServiceCommands;
use crate::machine::{Escalation, MachineConfig, Preferred};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The supervisor's configuration.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// This node's name (`node.name`).
    pub name: String,
    /// The data dir: `failover.json` and `failover.sock` live there.
    pub data_dir: PathBuf,
    /// The peer's replication address, for the hooks (`replication.peer`).
    pub peer_address: String,
    /// This node's private key (PEM): it signs beacon and witness datagrams.
    pub key: PathBuf,
    /// The peer's certificate (`replication.peer_cert`); `None` when the
    /// peer is pinned by fingerprint only, which carries no key for the
    /// beacon to verify with.
    pub peer_cert: Option<PathBuf>,
    /// How often the probes ask (`replication.keepalive`).
    pub keepalive: Duration,
    /// How long a silent peer takes to be declared dead (`replication.deadtime`).
    pub deadtime: Duration,
    /// The Lua hooks (`failover.script`).
    pub script: PathBuf,
    /// The strings hooks read as `twinfs.config.NAME` (VIP, service, ...).
    pub hook_vars: BTreeMap<String, String>,
    /// Wall-time limit of one hook.
    pub hook_timeout: Duration,
    /// How to start and stop services when systemd is not PID 1.
    pub services: BTreeMap<String, ServiceCommands>,
    /// How long a VIP claim listens for a duplicate before announcing it.
    pub arp_probe: Duration,
    /// The public-network beacon, if configured.
    pub beacon: Option<BeaconSettings>,
    /// Ping targets (resolved: the default gateway when unset).
    pub ping: Vec<IpAddr>,
    /// The witness, if configured.
    pub witness: Option<WitnessSettings>,
    /// The node that should hold the role when both are fine.
    pub home: Option<String>,
    /// The home node takes the role back when it returns healthy.
    pub auto_failback: bool,
    /// How long a returning peer must stay healthy before a failback.
    pub stabilize: Duration,
    /// After a failed promotion, how long before trying again.
    pub hold_down: Duration,
    /// What happens when a demotion fails.
    pub escalation: Escalation,
    /// What `reboot`/`poweroff` runs instead of `systemctl ... --force`.
    pub escalation_command: Option<Vec<String>>,
    /// Detect and report, never act (starts in maintenance mode).
    pub manual: bool,
    /// `standby.serve`: the secondary serves its replica read-only, so the
    /// hooks keep its web server running (`twinfs.state.standby_serves`).
    pub standby_serves: bool,
}

/// The public-network beacon's sockets.
#[derive(Debug, Clone, Copy)]
pub struct BeaconSettings {
    /// Where this node listens and sends from.
    pub listen: SocketAddr,
    /// The peer's beacon.
    pub peer: SocketAddr,
}

/// The witness.
#[derive(Debug, Clone)]
pub struct WitnessSettings {
    /// Its address.
    pub addr: SocketAddr,
    /// Its certificate (pinned; names it).
    pub cert: PathBuf,
}

impl SupervisorConfig {
    /// The failover machine's configuration; `fence` says whether the
    /// script defines `on_fence`.
    pub(super) fn machine_config(&self, fence: bool) -> MachineConfig {
        MachineConfig {
            deadtime_ms: super::millis(self.deadtime),
            initdead_ms: super::millis(self.deadtime) * 2,
            auto_failback: self.auto_failback && self.home.is_some(),
            preferred: match &self.home {
                None => Preferred::Neither,
                Some(h) if *h == self.name => Preferred::ThisNode,
                Some(_) => Preferred::PeerNode,
            },
            stabilize_ms: super::millis(self.stabilize),
            hold_down_ms: super::millis(self.hold_down),
            ping_target: (!self.ping.is_empty()).then(|| {
                self.ping
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            witness: self.witness.as_ref().map(|w| w.addr.to_string()),
            fence,
            on_demote_failure: self.escalation,
            history_len: 50,
        }
    }
}
