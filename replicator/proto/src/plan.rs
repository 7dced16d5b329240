//! What two nodes do when they meet: follow, resync (and from which floor), or refuse.
//!
//! Each node sends a [`Hello`] with its role, disk state, generation history,
//! position and floor. From the two, [`plan`] decides, identically on both
//! sides:
//!
//! - one primary and one secondary with the same data lineage: the secondary
//!   **follows** (the primary retransmits what it lacks from memory), unless the
//!   primary cannot tell that the secondary's history is a prefix of its own
//!   (it restarted since, or the secondary is ahead or too far behind): then a
//!   **resync** from the floor;
//! - the generations say one side moved on while the other did not: a resync
//!   from the side that moved on, if that side is the primary;
//! - both moved on (split brain): the policy may pick a survivor (a resync,
//!   possibly making a primary give up its role), otherwise **refuse**;
//! - a secondary that holds newer data than the primary, two primaries without
//!   a policy decision, an Inconsistent primary: refuse, with the reason.
//!
//! The floor is the lower of the two nodes' floors: every mutation up to it is
//! known to be identical on both, so a resync ships the records either side
//! changed after it.

use crate::generation::{decide, Decision, History, Side, SplitBrainPolicy};
use crate::{DiskState, Hello, Role, Seq};

/// What this node knows about itself when the peer's [`Hello`] arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalView {
    /// Its role.
    pub role: Role,
    /// Its disk.
    pub disk: DiskState,
    /// Its generation history.
    pub history: History,
    /// Its store's last applied seq.
    pub last_applied: Seq,
    /// Its floor.
    pub floor: Seq,
    /// (Primary) the protocol state machine can retransmit to the peer from
    /// memory: it ran since before the peer's position (no restart since).
    pub can_retransmit_from: Option<Seq>,
}

/// The outcome of a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Both secondary: stay connected, nothing to ship.
    Idle,
    /// The secondary follows the primary's mutation stream.
    Follow,
    /// Ship the records changed after `floor` from `source` to the other side.
    Resync {
        /// The side whose data survives.
        source: Side,
        /// The resync floor.
        floor: Seq,
        /// The target is primary and must first give up its role (a split-brain policy's victim).
        demote_target: bool,
    },
    /// Both wrote on their own and no policy picks a survivor: do not connect.
    SplitBrain {
        /// Why, for the status and the log.
        reason: String,
    },
    /// Do not connect.
    Refuse {
        /// Why, for the status and the log.
        reason: String,
    },
}

fn other(side: Side) -> Side {
    match side {
        Side::Local => Side::Peer,
        Side::Peer => Side::Local,
    }
}

/// Decides what the pair does. Both nodes reach the same plan (mirrored).
pub fn plan(local: &LocalView, peer: &Hello, policy: SplitBrainPolicy) -> Plan {
    let peer_history = History {
        current: peer.generation,
        shared: peer.shared,
        changed_blocks: peer.changed_blocks,
        primary_since_ms: (peer.primary_since_ms != 0).then_some(peer.primary_since_ms),
    };
    let floor = local.floor.min(peer.floor);
    let role_of = |side: Side| match side {
        Side::Local => local.role,
        Side::Peer => peer.role,
    };
    let disk_of = |side: Side| match side {
        Side::Local => local.disk,
        Side::Peer => peer.disk,
    };
    let gen = |g: crate::Generation| format!("{:016x}", g.0);
    let decision = decide(&local.history, &peer_history, policy);
    match (local.role, peer.role) {
        (Role::Secondary, Role::Secondary) => return Plan::Idle,
        (Role::Primary, Role::Primary) => {
            return match decision {
                Decision::Resync { source, target } => Plan::Resync {
                    source,
                    floor,
                    demote_target: role_of(target) == Role::Primary,
                },
                Decision::SplitBrain { reason } => Plan::SplitBrain {
                    reason: format!("{reason}; both nodes are primary"),
                },
                Decision::InSync => Plan::Refuse {
                    reason: format!(
                        "both nodes are primary (generation {}); demote one",
                        gen(local.history.current)
                    ),
                },
            };
        }
        _ => {}
    }
    // One primary, one secondary.
    let primary = if local.role == Role::Primary {
        Side::Local
    } else {
        Side::Peer
    };
    if !disk_of(primary).promotable() {
        return Plan::Refuse {
            reason: format!(
                "the primary's disk is {}; it cannot be a resync source",
                disk_of(primary)
            ),
        };
    }
    match decision {
        Decision::SplitBrain { reason } => Plan::SplitBrain { reason },
        Decision::Resync { source, .. } if source != primary => Plan::Refuse {
            reason: format!(
                "the secondary holds newer data (generation {}) than the primary (generation {}): \
                 the primary must not overwrite it; demote the primary",
                gen(match other(primary) {
                    Side::Local => local.history.current,
                    Side::Peer => peer.generation,
                }),
                gen(match primary {
                    Side::Local => local.history.current,
                    Side::Peer => peer.generation,
                })
            ),
        },
        Decision::Resync { source, .. } => Plan::Resync {
            source,
            floor,
            demote_target: false,
        },
        Decision::InSync => {
            let (primary_last, secondary_last, retransmit_from) = match primary {
                Side::Local => (
                    local.last_applied,
                    peer.last_applied,
                    local.can_retransmit_from,
                ),
                // The secondary cannot know what the primary retains; the
                // primary's own plan decides, and the secondary learns it from
                // the first frame (a mutation or a resync request).
                Side::Peer => return Plan::Follow,
            };
            // Equal positions prove nothing past the floor: a primary that
            // crashed may have redone those seqs with other content.
            let prefix_known = (secondary_last == primary_last && primary_last <= floor)
                || retransmit_from
                    .is_some_and(|from| secondary_last >= from && secondary_last <= primary_last);
            if prefix_known && disk_of(other(primary)) != DiskState::Inconsistent {
                Plan::Follow
            } else {
                Plan::Resync {
                    source: primary,
                    floor,
                    demote_target: false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Generation, PROTOCOL_VERSION};

    fn history(current: u64, shared: u64) -> History {
        History {
            current: Generation(current),
            shared: Generation(shared),
            changed_blocks: 3,
            primary_since_ms: Some(5),
        }
    }

    fn local(role: Role, current: u64, shared: u64, last: u64) -> LocalView {
        LocalView {
            role,
            disk: DiskState::UpToDate,
            history: history(current, shared),
            last_applied: Seq(last),
            floor: Seq(last.min(10)),
            can_retransmit_from: None,
        }
    }

    fn hello(role: Role, current: u64, shared: u64, last: u64, floor: u64) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node: "peer".into(),
            generation: Generation(current),
            last_applied: Seq(last),
            role,
            disk: DiskState::UpToDate,
            shared: Generation(shared),
            changed_blocks: 0,
            primary_since_ms: 0,
            floor: Seq(floor),
        }
    }

    const P: SplitBrainPolicy = SplitBrainPolicy::Manual;

    #[test]
    fn in_sync_pairs_follow_and_secondaries_idle() {
        let mut l = local(Role::Primary, 1, 1, 20);
        l.floor = Seq(20);
        assert_eq!(
            plan(&l, &hello(Role::Secondary, 1, 1, 20, 20), P),
            Plan::Follow
        );
        // Equal positions above the floor after a restart: resync what is above it.
        l.floor = Seq(10);
        assert!(matches!(
            plan(&l, &hello(Role::Secondary, 1, 1, 20, 20), P),
            Plan::Resync { floor: Seq(10), .. }
        ));
        let l = local(Role::Secondary, 1, 1, 20);
        assert_eq!(
            plan(&l, &hello(Role::Primary, 1, 1, 25, 20), P),
            Plan::Follow
        );
        assert_eq!(
            plan(&l, &hello(Role::Secondary, 1, 1, 20, 20), P),
            Plan::Idle
        );
    }

    #[test]
    fn a_primary_that_cannot_vouch_for_the_secondary_s_prefix_resyncs_from_the_floor() {
        // Restarted primary (nothing retained), secondary behind or ahead.
        let l = local(Role::Primary, 1, 1, 30);
        for peer_last in [15, 40] {
            assert_eq!(
                plan(&l, &hello(Role::Secondary, 1, 1, peer_last, 12), P),
                Plan::Resync {
                    source: Side::Local,
                    floor: Seq(10),
                    demote_target: false
                },
                "peer at {peer_last}"
            );
        }
        // Without a restart it retransmits.
        let mut l = l;
        l.can_retransmit_from = Some(Seq(12));
        assert_eq!(
            plan(&l, &hello(Role::Secondary, 1, 1, 15, 12), P),
            Plan::Follow
        );
        // An Inconsistent secondary (interrupted resync) is resynced, not followed.
        let mut h = hello(Role::Secondary, 1, 1, 30, 10);
        h.disk = DiskState::Inconsistent;
        assert!(matches!(plan(&l, &h, P), Plan::Resync { .. }));
    }

    #[test]
    fn the_side_that_moved_on_is_the_source_if_it_is_primary() {
        let l = local(Role::Primary, 2, 1, 30);
        assert_eq!(
            plan(&l, &hello(Role::Secondary, 1, 1, 20, 20), P),
            Plan::Resync {
                source: Side::Local,
                floor: Seq(10),
                demote_target: false
            }
        );
        // The mirror view agrees.
        let l = local(Role::Secondary, 1, 1, 20);
        assert!(matches!(
            plan(&l, &hello(Role::Primary, 2, 1, 30, 10), P),
            Plan::Resync {
                source: Side::Peer,
                ..
            }
        ));
        // A secondary newer than its primary is never overwritten.
        let l = local(Role::Primary, 1, 1, 30);
        let r = plan(&l, &hello(Role::Secondary, 3, 1, 20, 20), P);
        assert!(
            matches!(r, Plan::Refuse { ref reason } if reason.contains("newer data")),
            "{r:?}"
        );
    }

    #[test]
    fn split_brain_is_refused_unless_a_policy_picks_and_the_victim_demotes() {
        let l = local(Role::Primary, 2, 1, 30);
        let peer = hello(Role::Primary, 3, 1, 28, 10);
        let r = plan(&l, &peer, P);
        assert!(
            matches!(r, Plan::SplitBrain { ref reason } if reason.contains("split brain")),
            "{r:?}"
        );
        // A primary and a secondary that both moved on: a split brain as well.
        let r = plan(
            &local(Role::Secondary, 3, 1, 28),
            &hello(Role::Primary, 2, 1, 30, 10),
            P,
        );
        assert!(matches!(r, Plan::SplitBrain { .. }), "{r:?}");
        let r = plan(&l, &peer, SplitBrainPolicy::DiscardLeastChanges);
        // Local changed 3 blocks, the peer 0: the peer's changes are discarded.
        assert_eq!(
            r,
            Plan::Resync {
                source: Side::Local,
                floor: Seq(10),
                demote_target: true
            }
        );
    }

    #[test]
    fn an_inconsistent_primary_is_never_a_source() {
        let mut l = local(Role::Primary, 1, 1, 30);
        l.disk = DiskState::Inconsistent;
        assert!(matches!(
            plan(&l, &hello(Role::Secondary, 1, 1, 30, 30), P),
            Plan::Refuse { .. }
        ));
    }
}
