//! One look at the world: the node's status, the beacon and the probes
//! become the machine's [`Observation`]; the peer's beacon requests
//! (hand-over, take-over) are acted on here.

use super::{millis, Driver};
use crate::machine::{Activity, LinkView, Observation, Role};
use crate::witness::Announce;
use std::sync::atomic::Ordering;
use std::time::Duration;
use twinfs_replicator::status::{ConnectionState, Status};

impl Driver {
    /// Asks the node for its status, and keeps it for the steps and hooks.
    pub(super) fn node_status(&mut self) -> Option<Status> {
        let s = self.node.status()?;
        self.last_status = Some(s.clone());
        Some(s)
    }

    /// Observes once and carries out what the machine decides.
    pub(super) fn tick(&mut self) {
        let Some(status) = self.node_status() else {
            return;
        };
        let now = self.now_ms();
        let role = status.role;
        // The node declares the peer lost on its own timer, a little after
        // deadtime; a link silent for deadtime is down now.
        // Heartbeats flow only between a primary and its secondary; two
        // secondaries keep a quiet connection, so the age of the last frame
        // says nothing then.
        let deadtime = self.machine.config().deadtime_ms;
        let beating = role == Role::Primary || status.peer.role == Some(Role::Primary);
        let heard_ago = status.peer.heard_ms_ago.filter(|_| beating);
        let connected =
            status.connection.is_connected() && heard_ago.is_none_or(|ago| ago < deadtime);
        let link = LinkView {
            connected,
            peer_role: status.peer.role,
            peer_disk: status.peer.disk,
            in_sync: status.connection == ConnectionState::Connected && status.resync.is_none(),
            heard_ago_ms: heard_ago,
        };
        // Keep the beacon's announcement current, and read the peer's.
        let mut beacon_age_ms = None;
        let mut peer_flags = None;
        if let Some(b) = &self.beacon {
            let at = self.clock.now();
            let handover = self.handover_until.is_some_and(|u| at < u);
            b.set_announce(Announce {
                role,
                disk: status.disk,
                generation: u64::from_str_radix(&status.generation, 16).unwrap_or(0),
                link_up: connected,
                handover,
                takeover: self.takeover_until.is_some_and(|u| at < u),
            });
            if let Some(p) = b.peer() {
                let age = at.saturating_duration_since(p.at);
                beacon_age_ms = Some(millis(age));
                let fresh = age < Duration::from_secs(1);
                peer_flags = Some((
                    p.announce.handover && fresh,
                    p.announce.handover,
                    p.announce.takeover && fresh,
                    p.announce.takeover,
                ));
            }
        }
        let (ping, witness_view) = {
            let p = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            (p.ping, p.witness)
        };
        if self.has_witness {
            self.want_lease
                .store(role == Role::Primary, Ordering::SeqCst);
        }
        let obs = Observation {
            now_ms: now,
            role,
            disk: Some(status.disk),
            link,
            beacon_age_ms,
            ping,
            witness: witness_view,
        };
        let ds = self.machine.handle_observation(&obs);
        self.process(ds);
        if let Some(flags) = peer_flags {
            self.peer_requests(now, role, link, flags);
        }
    }

    /// The peer's requests on the beacon: "I demoted, take over" and "hand
    /// the role over to me". A role change restarts the replication
    /// connection, so each is acted on once the link is back and in sync
    /// (the peer announces the flag for a few seconds), after the machine
    /// has seen that link state.
    fn peer_requests(
        &mut self,
        now: u64,
        role: Role,
        link: LinkView,
        (handover, handover_any, takeover, takeover_any): (bool, bool, bool, bool),
    ) {
        let ready = link.connected && link.in_sync && self.machine.activity() == Activity::Idle;
        if handover && !self.handover_seen && ready && role == Role::Secondary {
            self.handover_seen = true;
            let ds = self.machine.handle_peer_handed_over(now);
            self.process(ds);
        } else if !handover_any {
            self.handover_seen = false;
        }
        if takeover && !self.takeover_seen && ready && role == Role::Primary {
            self.takeover_seen = true;
            self.note("the peer asks to take over (planned switchover)".into());
            let ds = self.machine.request_switchover(now);
            self.process(ds);
        } else if !takeover_any {
            self.takeover_seen = false;
        }
    }
}
