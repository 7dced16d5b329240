//! The binary's side of the supervisor (`twinfs_supervisor::driver`): its
//! configuration built from the `[node]`, `[replication]` and `[failover]`
//! tables, and its start-up errors as the binary reports them (a
//! configuration error exits with 2).

use crate::config::{Config, EscalationName, FailoverConfig, PeerTrustConfig, ReplicationConfig};
use crate::UsageError;
use std::sync::Arc;
use twinfs_replicator::evidence::EvidenceBoard;
use twinfs_replicator::node::NodeHandle;
use twinfs_supervisor::actuators::ServiceCommands;
use twinfs_supervisor::driver::{
    BeaconSettings, StartError, SupervisorConfig, SupervisorHandle, WitnessSettings,
};
use twinfs_supervisor::machine::Escalation;

#[cfg(test)]
pub(crate) use twinfs_supervisor::driver::HookTiming;
pub(crate) use twinfs_supervisor::driver::{
    admin_call, read_status, AdminRequest, AdminResponse, FailoverStatus, PreUnmount, StatusBoard,
};

/// What the supervisor needs from the validated configuration.
pub(crate) fn supervisor_config(
    cfg: &Config,
    r: &ReplicationConfig,
    f: &FailoverConfig,
) -> SupervisorConfig {
    SupervisorConfig {
        name: cfg.node.name.as_str().to_owned(),
        data_dir: cfg.node.data_dir.clone(),
        peer_address: r.peer.to_string(),
        key: r.key.clone(),
        peer_cert: match &r.peer_trust {
            PeerTrustConfig::CertFile(p) => Some(p.clone()),
            PeerTrustConfig::Fingerprint(_) => None,
        },
        keepalive: r.keepalive,
        deadtime: r.deadtime,
        script: f.script.clone(),
        hook_vars: f.hook_vars(),
        hook_timeout: f.hook_timeout,
        services: f
            .services
            .iter()
            .map(|(k, v)| {
                let commands = ServiceCommands {
                    start: v.start.clone(),
                    stop: v.stop.clone(),
                    status: v.status.clone(),
                    pidfile: v.pidfile.clone(),
                };
                (k.clone(), commands)
            })
            .collect(),
        arp_probe: f.arp_probe,
        beacon: f.beacon.as_ref().map(|b| BeaconSettings {
            listen: b.listen,
            peer: b.peer,
        }),
        ping: f.ping.clone(),
        witness: f.witness.as_ref().map(|w| WitnessSettings {
            addr: w.addr,
            cert: w.cert.clone(),
        }),
        home: f.home.clone(),
        auto_failback: f.auto_failback,
        stabilize: f.stabilize,
        hold_down: f.hold_down,
        escalation: match f.escalation {
            EscalationName::None => Escalation::None,
            EscalationName::Reboot => Escalation::Reboot,
            EscalationName::Poweroff => Escalation::Poweroff,
        },
        escalation_command: f.escalation_command.clone(),
        manual: f.manual,
        standby_serves: cfg.standby.serve,
    }
}

/// Checks everything and starts the supervisor thread (see
/// [`twinfs_supervisor::driver::start`]).
pub(crate) fn start(
    cfg: &Config,
    r: &ReplicationConfig,
    f: &FailoverConfig,
    evidence: Arc<EvidenceBoard>,
    node: NodeHandle,
) -> anyhow::Result<SupervisorHandle> {
    twinfs_supervisor::driver::start(&supervisor_config(cfg, r, f), evidence, node).map_err(|e| {
        match e {
            StartError::Config(m) => UsageError(m).into(),
            other => anyhow::Error::new(other),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn the_supervisor_config_carries_the_failover_table() {
        let text = "node.name = \"www1\"\n\
            [replication]\nlisten = \"10.0.0.1:7789\"\npeer = \"10.0.0.2:7789\"\n\
            peer_cert = \"/etc/twinfs/beta.crt\"\n\
            [failover]\nvip = \"10.0.0.10/24\"\ninterface = \"eth0\"\n\
            public = \"192.168.0.1:7790\"\npeer_public = \"192.168.0.2:7790\"\n\
            witness = \"192.168.0.3:7791\"\nwitness_cert = \"/etc/twinfs/witness.crt\"\n\
            home = \"www1\"\nhold_down = \"1min\"\nescalation = \"poweroff\"\n\
            [failover.services.httpd]\nstart = [\"httpd\", \"-k\", \"start\"]\n\
            stop = [\"httpd\", \"-k\", \"stop\"]\n";
        let cfg = Config::from_toml_str(text, Path::new("t.toml")).unwrap();
        let r = cfg.replication.as_ref().unwrap();
        let f = cfg.failover.as_ref().unwrap();
        let s = supervisor_config(&cfg, r, f);
        assert_eq!(s.name, "www1");
        assert_eq!(s.peer_address, "10.0.0.2:7789");
        assert_eq!(
            s.peer_cert.as_deref(),
            Some(Path::new("/etc/twinfs/beta.crt"))
        );
        assert_eq!(s.hook_vars["vip"], "10.0.0.10/24");
        assert_eq!(s.beacon.unwrap().peer, "192.168.0.2:7790".parse().unwrap());
        assert_eq!(s.witness.unwrap().addr, "192.168.0.3:7791".parse().unwrap());
        assert_eq!(s.home.as_deref(), Some("www1"));
        assert_eq!(s.hold_down, Duration::from_secs(60));
        assert_eq!(s.escalation, Escalation::Poweroff);
        assert_eq!(s.services["httpd"].start, ["httpd", "-k", "start"]);
        assert!(!s.standby_serves, "standby.serve is off by default");
        let text = format!("{text}[standby]\nserve = true\n");
        let cfg = Config::from_toml_str(&text, Path::new("t.toml")).unwrap();
        let s = supervisor_config(&cfg, r, f);
        assert!(s.standby_serves, "standby.serve reaches the hooks");
    }
}
