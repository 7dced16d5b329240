//! The node's status, as `twinfs status` and the [`super::NodeHandle`] show it.

use super::{ps, Node};
use crate::evidence::EvidenceSource;
use crate::status::{
    Health, Lag, LinkStatus, PeerStatus, StandbyStatus, Status, WritesState, WritesStatus,
    STATUS_SCHEMA,
};
use std::time::{Duration, Instant};
use twinfs_fs::Store as _;
use twinfs_replicator_proto::node::WritesView;
use twinfs_replicator_proto::{Generation, OnPeerLoss, Protocol};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Node {
    fn writes_status(&self, now: Instant) -> WritesStatus {
        let source = self.opts.evidence.source();
        let mut w = WritesStatus {
            state: WritesState::Closed,
            evidence_source: source.describe(),
            unguarded: *source == EvidenceSource::Unguarded
                && self.opts.protocol.on_peer_loss != OnPeerLoss::Suspend,
            ..Default::default()
        };
        match self.core.writes(now) {
            WritesView::Closed => {}
            WritesView::Replicating => w.state = WritesState::Replicating,
            WritesView::AloneUnguarded => w.state = WritesState::AloneUnguarded,
            WritesView::Alone { evidence, until } => {
                w.state = WritesState::Alone;
                w.evidence = evidence.map(|e| {
                    format!(
                        "{} {:.1} s ago",
                        e.what,
                        now.saturating_duration_since(e.obtained_at).as_secs_f64()
                    )
                });
                w.valid_ms = Some(ms(until.saturating_duration_since(now)));
            }
            WritesView::Suspended(since) => {
                w.state = WritesState::Suspended;
                w.suspended_ms = since.map(|t| ms(now.saturating_duration_since(t)));
            }
        }
        w
    }

    pub(super) fn status(&self) -> Status {
        let now = Instant::now();
        let core = &self.core;
        let state = core.state();
        let handshaken = core.peer();
        let (seqs, bytes, peer_applied) = core.lag().unwrap_or_default();
        Status {
            schema: STATUS_SCHEMA,
            node: self.opts.name.clone(),
            role: core.role(),
            disk: state.disk,
            connection: core.connection(),
            protocol: match self.opts.protocol.protocol {
                Protocol::A => "A",
                Protocol::B => "B",
                Protocol::C => "C",
            }
            .into(),
            on_peer_loss: match self.opts.protocol.on_peer_loss {
                OnPeerLoss::Continue => "continue",
                OnPeerLoss::WithEvidence => "continue-with-evidence",
                OnPeerLoss::Suspend => "suspend",
            }
            .into(),
            suspended: core.suspended(),
            writes: self.writes_status(now),
            generation: Generation(state.generation).to_string(),
            shared_generation: Generation(state.shared).to_string(),
            applied_seq: ps(self.disk.last_applied()).0,
            floor_seq: state.floor,
            committed_seq: core.commit_positions().map_or(0, |(c, _)| c.0),
            peer: PeerStatus {
                name: core.peer_name().unwrap_or_default().to_string(),
                address: self.opts.peer.to_string(),
                role: handshaken.map(|h| h.role),
                disk: handshaken.map(|h| h.disk),
                applied_seq: peer_applied.0,
                heard_ms_ago: core
                    .last_frame_at()
                    .map(|t| ms(now.saturating_duration_since(t))),
                link: self
                    .conn
                    .as_ref()
                    .filter(|_| handshaken.is_some())
                    .map(|c| {
                        let path = c.quic.stats().path;
                        LinkStatus {
                            rtt_us: path.rtt.as_micros().try_into().unwrap_or(u64::MAX),
                            path_mtu: path.current_mtu,
                            sent_packets: path.sent_packets,
                            lost_packets: path.lost_packets,
                        }
                    }),
            },
            lag: Lag { seqs, bytes },
            health: match core.standby_health(now) {
                Ok(why) => Health { ok: true, why },
                Err(why) => Health { ok: false, why },
            },
            standby: self.opts.standby.map(|max_lag| {
                let lag = core.standby_lag(now);
                StandbyStatus {
                    view: core.standby_view(),
                    behind_mutations: lag.mutations,
                    behind_bytes: lag.bytes,
                    behind_ms: lag.age.map(ms),
                    exact: lag.exact,
                    max_lag_ms: ms(max_lag),
                }
            }),
            resync: self.resync_status(),
            refusal: core.refusal().map(str::to_string),
            split_brain: self.split_brain.clone(),
            counters: core.counters().clone(),
            recent: self.recent.iter().cloned().collect(),
        }
    }
}
