//! What `twinfs status` shows: one node's view of the pair.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
pub use twinfs_replicator_proto::node::StandbyView;
pub use twinfs_replicator_proto::{ConnectionState, DiskState, Role};

/// The version of the status's JSON form (`twinfs status --json`), in its
/// `schema` field. It grows when a field changes meaning or is removed;
/// adding a field does not change it.
///
/// 1: `role` (`Primary`, `Secondary`), `disk` (`UpToDate`, `Outdated`,
/// `Inconsistent`, `Diskless`), `connection` (`StandAlone`, `Connecting`,
/// `Connected`, `SyncSource`, `SyncTarget`) and `writes.state` hold one of the
/// names listed; the same strings as before the field existed.
pub const STATUS_SCHEMA: u32 = 1;

/// A node's status, as the daemon reports it over the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The version of this JSON form ([`STATUS_SCHEMA`]); 0 from a daemon
    /// older than the field.
    #[serde(default)]
    pub schema: u32,
    /// This node's name.
    pub node: String,
    /// `Primary` or `Secondary` (the variant name, unlike the lowercase
    /// form of the state file and the hooks).
    pub role: Role,
    /// `UpToDate`, `Outdated`, `Inconsistent`, `Diskless`.
    pub disk: DiskState,
    /// `StandAlone`, `Connecting`, `Connected`, `SyncSource`, `SyncTarget`.
    pub connection: ConnectionState,
    /// The replication protocol (`A`, `B`, `C`).
    pub protocol: String,
    /// What happens to writes while the peer is lost (`continue` or `suspend`).
    pub on_peer_loss: String,
    /// Whether writes are held back right now (peer lost, no right to
    /// acknowledge alone).
    pub suspended: bool,
    /// Whether writes are acknowledged, and on what grounds (the right to
    /// acknowledge alone while the peer is lost).
    #[serde(default)]
    pub writes: WritesStatus,
    /// The current data generation (hex).
    pub generation: String,
    /// The generation last shared with the peer (hex).
    pub shared_generation: String,
    /// The last mutation applied to the local store.
    pub applied_seq: u64,
    /// Every mutation up to here is known identical on both nodes (what a
    /// resync after an outage starts from).
    pub floor_seq: u64,
    /// The last mutation acknowledged to writers (primary only).
    pub committed_seq: u64,
    /// The peer, as far as it is known.
    pub peer: PeerStatus,
    /// How far the peer is behind (primary only).
    pub lag: Lag,
    /// Whether a balancer should send this node reads, and why (what the
    /// metrics endpoint's `/health` answers).
    #[serde(default)]
    pub health: Health,
    /// The standby view (`[standby] serve`), when configured.
    #[serde(default)]
    pub standby: Option<StandbyStatus>,
    /// A resync in progress, if any.
    pub resync: Option<Resync>,
    /// Why the nodes refuse to connect, when they do (split brain and the like).
    pub refusal: Option<String>,
    /// The last split brain detected, with what each side changed on its own.
    pub split_brain: Option<SplitBrain>,
    /// Counters since the daemon started.
    pub counters: Counters,
    /// The last notable events, oldest first ("2026-11-22T07:40:01Z peer lost ...").
    pub recent: Vec<String>,
}

impl Default for Status {
    /// A Secondary that knows nothing yet, in the current [`STATUS_SCHEMA`].
    fn default() -> Self {
        Status {
            schema: STATUS_SCHEMA,
            node: String::new(),
            role: Role::default(),
            disk: DiskState::default(),
            connection: ConnectionState::default(),
            protocol: String::new(),
            on_peer_loss: String::new(),
            suspended: false,
            writes: WritesStatus::default(),
            generation: String::new(),
            shared_generation: String::new(),
            applied_seq: 0,
            floor_seq: 0,
            committed_seq: 0,
            peer: PeerStatus::default(),
            lag: Lag::default(),
            health: Health::default(),
            standby: None,
            resync: None,
            refusal: None,
            split_brain: None,
            counters: Counters::default(),
            recent: Vec::new(),
        }
    }
}

/// Whether and why writes are acknowledged (see DURABILITY.md, "The right to
/// acknowledge alone").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WritesStatus {
    /// Whether writes are acknowledged now.
    pub state: WritesState,
    /// Where the evidence comes from, in one line.
    pub evidence_source: String,
    /// No witness and no ping target: a cut cable can cause a split brain.
    pub unguarded: bool,
    /// The evidence held while acknowledging alone.
    pub evidence: Option<String>,
    /// Milliseconds the evidence stays valid.
    pub valid_ms: Option<u64>,
    /// Milliseconds writes have been suspended.
    pub suspended_ms: Option<u64>,
}

/// Whether writes are acknowledged now; the serde form is the kebab-case
/// name (`alone-unguarded`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WritesState {
    /// The replication protocol decides (connected, or peer not yet lost).
    Replicating,
    /// Peer lost, evidence held: acknowledged alone.
    Alone,
    /// Peer lost, no evidence source configured: acknowledged alone.
    AloneUnguarded,
    /// Peer lost, no evidence: nothing is acknowledged.
    Suspended,
    /// Not primary, or demoting.
    #[default]
    Closed,
}

impl WritesState {
    /// Every state, in the order above (for the metrics' state sets).
    pub const ALL: [WritesState; 5] = [
        WritesState::Replicating,
        WritesState::Alone,
        WritesState::AloneUnguarded,
        WritesState::Suspended,
        WritesState::Closed,
    ];
}

/// The peer as seen from this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's name from its handshake (empty until one completed).
    pub name: String,
    /// The configured address.
    pub address: String,
    /// Its role, if connected.
    pub role: Option<Role>,
    /// Its disk state, if connected.
    pub disk: Option<DiskState>,
    /// The last seq the peer acknowledged as applied.
    pub applied_seq: u64,
    /// Milliseconds since the last frame from the peer arrived (heartbeats
    /// included); `None` if none ever did since the daemon started.
    #[serde(default)]
    pub heard_ms_ago: Option<u64>,
    /// The QUIC path to the peer, while connected.
    #[serde(default)]
    pub link: Option<LinkStatus>,
}

/// The QUIC path to the peer, as the connection measures it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Smoothed round-trip time, in microseconds.
    pub rtt_us: u64,
    /// The datagram size in use (UDP payload bytes) after path MTU discovery:
    /// 1452 on a 1500-byte link, up to 6500 with jumbo frames.
    pub path_mtu: u16,
    /// Packets sent on this connection.
    pub sent_packets: u64,
    /// Packets the connection declared lost (and sent again).
    pub lost_packets: u64,
}

/// Replication lag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Mutations submitted but not yet applied by the peer.
    pub seqs: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// The answer of the health check a balancer probes (`GET /health`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// 200 if true, 503 if false.
    pub ok: bool,
    /// What this node serves, or why it should get no reads, in one line.
    pub why: String,
}

/// A secondary's read-only view of its replica (issue 15).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StandbyStatus {
    /// `off` (not mounted yet), `serving` or `hidden` (a resync runs); on a
    /// primary, the state it will have after a demotion.
    pub view: StandbyView,
    /// Mutations the primary has that the view does not show yet.
    pub behind_mutations: u64,
    /// The bytes of the received, not yet applied ones.
    pub behind_bytes: u64,
    /// Milliseconds the view is old (since the primary had something it does
    /// not show); `None` while it was never current.
    pub behind_ms: Option<u64>,
    /// Whether the figures are exact (following the primary) or a lower
    /// bound (the link is down or catching up).
    pub exact: bool,
    /// `standby.max_lag` in milliseconds: older than this fails the health check.
    pub max_lag_ms: u64,
}

/// Progress of a resync.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resync {
    /// `source` or `target`.
    pub direction: String,
    /// Bytes shipped so far.
    pub done_bytes: u64,
    /// Bytes to ship in all.
    pub total_bytes: u64,
    /// Seconds left at the current rate, if known.
    pub eta_seconds: Option<u64>,
}

/// A split brain: both nodes wrote on their own since they last shared a generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitBrain {
    /// Why the nodes refuse to connect.
    pub reason: String,
    /// The peer's name.
    pub peer: String,
    /// Files this node changed since the last common generation (what a
    /// resync from the peer would discard).
    pub local_files: Vec<String>,
    /// Files the peer changed (from its report), if it arrived.
    pub peer_files: Option<Vec<String>>,
}

/// Counters since the daemon started.
pub use twinfs_replicator_proto::node::Counters;

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Status {
    /// The human form, in the spirit of `drbdadm status`.
    pub fn human(&self) -> String {
        let mut o = String::new();
        // Roles as `Primary`, as in the JSON form (their Display is lowercase).
        let _ = writeln!(
            o,
            "{} role:{:?} disk:{} generation:{}",
            self.node, self.role, self.disk, self.generation
        );
        let peer_name = if self.peer.name.is_empty() {
            "peer"
        } else {
            &self.peer.name
        };
        let _ = write!(
            o,
            "  {} {} connection:{}",
            peer_name, self.peer.address, self.connection
        );
        if let (Some(r), Some(d)) = (&self.peer.role, &self.peer.disk) {
            let _ = write!(o, " role:{r:?} disk:{d}");
        }
        o.push('\n');
        if let Some(l) = &self.peer.link {
            let _ = writeln!(
                o,
                "  link: rtt {:.3} ms, datagrams of {} bytes, {} of {} packets lost",
                l.rtt_us as f64 / 1000.0,
                l.path_mtu,
                l.lost_packets,
                l.sent_packets
            );
        }
        let _ =
            writeln!(
            o,
            "  replication: protocol {} on-peer-loss:{}{} applied:{} committed:{} peer-applied:{}",
            self.protocol,
            self.on_peer_loss,
            if self.suspended { " (writes SUSPENDED)" } else { "" },
            self.applied_seq,
            self.committed_seq,
            self.peer.applied_seq
        );
        match self.writes.state {
            WritesState::Suspended => {
                let _ = writeln!(
                    o,
                    "  writes: SUSPENDED for {:.1} s: the peer is lost and this node holds no evidence \
                     that it is not the isolated one (waiting for {}); nothing is acknowledged",
                    self.writes.suspended_ms.unwrap_or(0) as f64 / 1000.0,
                    self.writes.evidence_source
                );
            }
            WritesState::Alone => {
                let _ = writeln!(
                    o,
                    "  writes: acknowledged ALONE (peer lost): {} (valid {:.1} s more)",
                    self.writes.evidence.as_deref().unwrap_or("evidence held"),
                    self.writes.valid_ms.unwrap_or(0) as f64 / 1000.0
                );
            }
            WritesState::AloneUnguarded => {
                let _ = writeln!(
                    o,
                    "  writes: acknowledged ALONE WITHOUT EVIDENCE (peer lost): no witness and no \
                     ping target, so a cut cable can cause a split brain"
                );
            }
            WritesState::Replicating | WritesState::Closed => {}
        }
        if self.writes.unguarded && self.writes.state != WritesState::AloneUnguarded {
            let _ = writeln!(
                o,
                "  warning: no witness and no ping target: a primary that loses its peer \
                 continues alone, so a cut cable can cause a split brain"
            );
        }
        let _ = writeln!(
            o,
            "  lag: {} mutations ({})",
            self.lag.seqs,
            human_bytes(self.lag.bytes)
        );
        if let Some(s) = &self.standby {
            let age = s.behind_ms.map_or_else(
                || "never current yet".to_string(),
                |ms| format!("{:.3} s old", ms as f64 / 1000.0),
            );
            let view = match (self.role, s.view) {
                (Role::Primary, _) => "read-write (primary)".to_string(),
                (_, StandbyView::Serving) => "serving read-only".to_string(),
                (_, StandbyView::Hidden) => "HIDDEN (a resync runs; reads fail)".to_string(),
                (_, StandbyView::Off) => "not mounted yet".to_string(),
            };
            let _ = writeln!(
                o,
                "  standby view: {view}; {}{} mutations ({}) behind, {age} (max_lag {:.1} s)",
                if s.exact { "" } else { "at least " },
                s.behind_mutations,
                human_bytes(s.behind_bytes),
                s.max_lag_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(
            o,
            "  health: {} ({})",
            if self.health.ok { "ok" } else { "FAILING" },
            self.health.why
        );
        if let Some(r) = &self.resync {
            let pct = if r.total_bytes == 0 {
                100.0
            } else {
                r.done_bytes as f64 * 100.0 / r.total_bytes as f64
            };
            let eta = r
                .eta_seconds
                .map_or_else(|| "unknown".to_string(), |s| format!("{s}s"));
            let _ = writeln!(
                o,
                "  resync ({}): {pct:.1}% {} of {}, eta {eta}",
                r.direction,
                human_bytes(r.done_bytes),
                human_bytes(r.total_bytes)
            );
        }
        if let Some(r) = &self.refusal {
            let _ = writeln!(o, "  REFUSING TO CONNECT: {r}");
        }
        if let Some(sb) = &self.split_brain {
            let list = |files: &[String]| {
                if files.is_empty() {
                    "none".to_string()
                } else {
                    files.join(", ")
                }
            };
            let _ = writeln!(o, "  SPLIT BRAIN: {}", sb.reason);
            let _ = writeln!(
                o,
                "    changed here ({}) since the split: {}",
                self.node,
                list(&sb.local_files)
            );
            match &sb.peer_files {
                Some(f) => {
                    let _ = writeln!(o, "    changed on {} since the split: {}", sb.peer, list(f));
                }
                None => {
                    let _ = writeln!(o, "    changed on {}: (no report received)", sb.peer);
                }
            }
            let _ = writeln!(
                o,
                "    to keep the peer's data: `twinfs demote` (if primary), then `twinfs discard-my-data` on this node"
            );
        }
        let c = &self.counters;
        let _ = writeln!(
            o,
            "  sent: {} mutations ({}), resync {}; applied from peer: {}; connections: {}, peer losses: {}",
            c.mutations_sent,
            human_bytes(c.mutation_bytes_sent),
            human_bytes(c.resync_bytes_sent),
            c.mutations_applied,
            c.connections,
            c.peer_losses
        );
        if !self.recent.is_empty() {
            let _ = writeln!(o, "  recent:");
            for line in &self.recent {
                let _ = writeln!(o, "    {line}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_form_shows_the_essentials() {
        let s = Status {
            node: "alpha".into(),
            role: Role::Primary,
            disk: DiskState::UpToDate,
            connection: ConnectionState::Connected,
            protocol: "C".into(),
            on_peer_loss: "continue".into(),
            generation: "1f".into(),
            peer: PeerStatus {
                name: "beta".into(),
                address: "10.0.0.2:7789".into(),
                role: Some(Role::Secondary),
                disk: Some(DiskState::UpToDate),
                applied_seq: 40,
                heard_ms_ago: Some(150),
                link: Some(LinkStatus {
                    rtt_us: 47,
                    path_mtu: 6500,
                    sent_packets: 1200,
                    lost_packets: 3,
                }),
            },
            applied_seq: 42,
            lag: Lag {
                seqs: 2,
                bytes: 3 << 20,
            },
            resync: Some(Resync {
                direction: "source".into(),
                done_bytes: 1 << 20,
                total_bytes: 4 << 20,
                eta_seconds: Some(3),
            }),
            ..Status::default()
        };
        let h = s.human();
        for want in [
            "alpha role:Primary disk:UpToDate",
            "beta 10.0.0.2:7789 connection:Connected role:Secondary disk:UpToDate",
            "link: rtt 0.047 ms, datagrams of 6500 bytes, 3 of 1200 packets lost",
            "protocol C",
            "lag: 2 mutations (3.0 MiB)",
            "resync (source): 25.0% 1.0 MiB of 4.0 MiB, eta 3s",
        ] {
            assert!(h.contains(want), "{want:?} missing from:\n{h}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        // A secondary's standby view, and the health check's answer.
        let s = Status {
            role: Role::Secondary,
            health: Health {
                ok: false,
                why: "standby too far behind".into(),
            },
            standby: Some(StandbyStatus {
                view: StandbyView::Serving,
                behind_mutations: 7,
                behind_bytes: 2048,
                behind_ms: Some(12_500),
                exact: false,
                max_lag_ms: 10_000,
            }),
            ..Status::default()
        };
        let h = s.human();
        for want in [
            "standby view: serving read-only; at least 7 mutations (2.0 KiB) behind, 12.500 s old (max_lag 10.0 s)",
            "health: FAILING (standby too far behind)",
        ] {
            assert!(h.contains(want), "{want:?} missing from:\n{h}");
        }
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["standby"]["view"], "serving");
    }

    /// `twinfs status --json` keeps the strings it printed before the fields
    /// were typed, and says which schema it follows.
    #[test]
    fn json_form_keeps_the_state_names() {
        let s = Status {
            role: Role::Primary,
            disk: DiskState::UpToDate,
            connection: ConnectionState::SyncSource,
            writes: WritesStatus {
                state: WritesState::AloneUnguarded,
                ..WritesStatus::default()
            },
            peer: PeerStatus {
                role: Some(Role::Secondary),
                disk: Some(DiskState::Inconsistent),
                ..PeerStatus::default()
            },
            ..Status::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["schema"], STATUS_SCHEMA);
        assert_eq!(json["role"], "Primary");
        assert_eq!(json["disk"], "UpToDate");
        assert_eq!(json["connection"], "SyncSource");
        assert_eq!(json["writes"]["state"], "alone-unguarded");
        assert_eq!(json["peer"]["role"], "Secondary");
        assert_eq!(json["peer"]["disk"], "Inconsistent");
    }

    #[test]
    fn human_form_says_when_writes_are_suspended_alone_or_unguarded() {
        let mut s = Status {
            node: "alpha".into(),
            role: Role::Primary,
            writes: WritesStatus {
                state: WritesState::Suspended,
                evidence_source: "an answer from the ping target 10.0.0.1".into(),
                suspended_ms: Some(1200),
                ..WritesStatus::default()
            },
            ..Status::default()
        };
        let h = s.human();
        assert!(
            h.contains("writes: SUSPENDED for 1.2 s")
                && h.contains("waiting for an answer from the ping target 10.0.0.1")
                && h.contains("nothing is acknowledged"),
            "{h}"
        );
        s.writes = WritesStatus {
            state: WritesState::Alone,
            evidence: Some("the ping target 10.0.0.1 answered a probe sent 0.1 s ago".into()),
            valid_ms: Some(400),
            ..WritesStatus::default()
        };
        let h = s.human();
        assert!(
            h.contains("writes: acknowledged ALONE (peer lost): the ping target 10.0.0.1 answered")
                && h.contains("valid 0.4 s more"),
            "{h}"
        );
        s.writes = WritesStatus {
            state: WritesState::Replicating,
            unguarded: true,
            ..WritesStatus::default()
        };
        let h = s.human();
        assert!(h.contains("a cut cable can cause a split brain"), "{h}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
    }
}
