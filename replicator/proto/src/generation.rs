//! Which side's data wins when two nodes meet: the pure split-brain decision.
//!
//! Each node keeps its data generation with its data and the generation it last
//! shared with the peer. When they connect, comparing the two histories tells
//! whether they are in sync, whether one simply missed the other's writes (a
//! resync, from the side that moved on), or whether both wrote on their own
//! (split brain), where only a policy may pick a survivor. Data is never merged.

use crate::Generation;

/// One node's history since the two last shared a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    /// The node's current generation.
    pub current: Generation,
    /// The generation both nodes last had in common.
    pub shared: Generation,
    /// Blocks this node changed since then (its persistent dirty set).
    pub changed_blocks: u64,
    /// When the node became primary after the split (milliseconds on a clock
    /// both nodes read, e.g. the Unix epoch), or `None` if it never did.
    pub primary_since_ms: Option<u64>,
}

impl History {
    /// Whether this node wrote on its own since the shared generation.
    fn moved_on(&self) -> bool {
        self.current != self.shared
    }
}

/// The two sides of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This node.
    Local,
    /// The peer.
    Peer,
}

/// What to do about a split brain (DRBD's `after-sb-*pri` policies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    /// If one side changed nothing, it takes the other's data.
    DiscardZeroChanges,
    /// The side that became primary later is overwritten.
    DiscardYoungerPrimary,
    /// The side with fewer changed blocks is overwritten.
    DiscardLeastChanges,
    /// Never decide: the admin (or the Lua hook) does.
    #[default]
    Manual,
}

/// The outcome of comparing two histories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same generation: nothing to ship.
    InSync,
    /// `target`'s changed blocks are overwritten from `source`.
    Resync {
        /// The side whose data survives.
        source: Side,
        /// The side that is overwritten.
        target: Side,
    },
    /// Both sides wrote and the policy does not pick one: refuse to connect.
    SplitBrain {
        /// Why, for the status and the log.
        reason: String,
    },
}

fn resync(source: Side) -> Decision {
    let target = match source {
        Side::Local => Side::Peer,
        Side::Peer => Side::Local,
    };
    Decision::Resync { source, target }
}

/// Compares this node's history with the peer's under `policy`.
pub fn decide(local: &History, peer: &History, policy: SplitBrainPolicy) -> Decision {
    if local.current == peer.current {
        return Decision::InSync;
    }
    match (local.moved_on(), peer.moved_on()) {
        (true, false) => return resync(Side::Local),
        (false, true) => return resync(Side::Peer),
        // Different generations without a move since the shared one means the
        // two disagree on history itself: never guess.
        (false, false) => {
            return Decision::SplitBrain {
                reason: format!(
                    "generations {} and {} differ, but neither moved on from the shared one",
                    local.current, peer.current
                ),
            }
        }
        (true, true) => {}
    }
    let split = |why: &str| {
        Decision::SplitBrain {
        reason: format!(
            "split brain: both wrote since generation {} (this node changed {} records, the peer {}); {why}",
            local.shared, local.changed_blocks, peer.changed_blocks
        ),
    }
    };
    match policy {
        SplitBrainPolicy::Manual => split("policy is manual"),
        SplitBrainPolicy::DiscardZeroChanges => match (local.changed_blocks, peer.changed_blocks) {
            (0, 0) => resync(older_primary(local, peer).unwrap_or(Side::Local)),
            (0, _) => resync(Side::Peer),
            (_, 0) => resync(Side::Local),
            _ => split("both changed blocks, discard-zero-changes does not apply"),
        },
        SplitBrainPolicy::DiscardYoungerPrimary => match older_primary(local, peer) {
            Some(side) => resync(side),
            None => split("cannot tell the younger primary"),
        },
        SplitBrainPolicy::DiscardLeastChanges => {
            use std::cmp::Ordering::*;
            match local.changed_blocks.cmp(&peer.changed_blocks) {
                Greater => resync(Side::Local),
                Less => resync(Side::Peer),
                Equal => split("both changed as many blocks"),
            }
        }
    }
}

/// The side that became primary first (it survives), if that is known and not a tie.
fn older_primary(local: &History, peer: &History) -> Option<Side> {
    match (local.primary_since_ms, peer.primary_since_ms) {
        (Some(l), Some(p)) if l < p => Some(Side::Local),
        (Some(l), Some(p)) if p < l => Some(Side::Peer),
        // A node that never became primary is "younger" than one that did.
        (Some(_), None) => Some(Side::Local),
        (None, Some(_)) => Some(Side::Peer),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SplitBrainPolicy::*;

    fn h(current: u64, changed: u64, since: Option<u64>) -> History {
        History {
            current: Generation(current),
            shared: Generation(1),
            changed_blocks: changed,
            primary_since_ms: since,
        }
    }

    const ALL: [SplitBrainPolicy; 4] = [
        DiscardZeroChanges,
        DiscardYoungerPrimary,
        DiscardLeastChanges,
        Manual,
    ];

    #[test]
    fn no_split_cases() {
        for p in ALL {
            assert_eq!(decide(&h(1, 0, None), &h(1, 0, None), p), Decision::InSync);
            assert_eq!(decide(&h(5, 5, None), &h(5, 5, None), p), Decision::InSync);
            assert_eq!(
                decide(&h(2, 9, Some(10)), &h(1, 0, None), p),
                resync(Side::Local)
            );
            assert_eq!(
                decide(&h(1, 0, None), &h(3, 9, Some(10)), p),
                resync(Side::Peer)
            );
        }
    }

    #[test]
    fn manual_always_refuses_a_split() {
        let d = decide(&h(2, 0, Some(1)), &h(3, 4, Some(2)), Manual);
        assert!(
            matches!(d, Decision::SplitBrain { ref reason } if reason.contains("manual")),
            "{d:?}"
        );
    }

    #[test]
    fn discard_zero_changes() {
        assert_eq!(
            decide(&h(2, 0, Some(1)), &h(3, 4, Some(2)), DiscardZeroChanges),
            resync(Side::Peer)
        );
        assert_eq!(
            decide(&h(2, 7, Some(1)), &h(3, 0, Some(2)), DiscardZeroChanges),
            resync(Side::Local)
        );
        assert!(matches!(
            decide(&h(2, 7, Some(1)), &h(3, 4, Some(2)), DiscardZeroChanges),
            Decision::SplitBrain { .. }
        ));
    }

    #[test]
    fn discard_younger_primary() {
        assert_eq!(
            decide(
                &h(2, 9, Some(20)),
                &h(3, 1, Some(10)),
                DiscardYoungerPrimary
            ),
            resync(Side::Peer)
        );
        assert_eq!(
            decide(
                &h(2, 1, Some(10)),
                &h(3, 9, Some(20)),
                DiscardYoungerPrimary
            ),
            resync(Side::Local)
        );
        assert!(matches!(
            decide(
                &h(2, 1, Some(10)),
                &h(3, 9, Some(10)),
                DiscardYoungerPrimary
            ),
            Decision::SplitBrain { .. }
        ));
    }

    #[test]
    fn discard_least_changes() {
        assert_eq!(
            decide(&h(2, 9, Some(20)), &h(3, 1, Some(10)), DiscardLeastChanges),
            resync(Side::Local)
        );
        assert_eq!(
            decide(&h(2, 1, Some(10)), &h(3, 9, Some(20)), DiscardLeastChanges),
            resync(Side::Peer)
        );
        let d = decide(&h(2, 4, Some(10)), &h(3, 4, Some(20)), DiscardLeastChanges);
        assert!(
            matches!(d, Decision::SplitBrain { ref reason } if reason.contains("changed 4 records, the peer 4")),
            "{d:?}"
        );
    }
}
