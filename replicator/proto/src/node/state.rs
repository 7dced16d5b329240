//! What a node keeps about replication across restarts ([`NodeState`], the
//! contents of `DATA/replication.toml`) and what it counts ([`Counters`]).
//! Pure data: the file is read and written by `twinfs-replicator`.

use crate::{DiskState, Generation, History, Role};
use serde::{Deserialize, Serialize};

/// A node's persistent replication state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// The role the node had when it last changed (a restarted node still
    /// starts as secondary; this says it was primary).
    #[serde(with = "role_lowercase")]
    pub role: Role,
    /// The disk state (never `Diskless`: a node with a state file has a disk).
    pub disk: DiskState,
    /// The current data generation (hex in the file: TOML integers are signed).
    #[serde(with = "hex_u64")]
    pub generation: u64,
    /// The generation this node last shared with its peer.
    #[serde(with = "hex_u64")]
    pub shared: u64,
    /// When this node last became primary (ms since the Unix epoch), 0 if never.
    pub primary_since_ms: u64,
    /// Every mutation up to this seq is known to be identical on the peer: a
    /// resync ships what changed after it (and the log keeps those records).
    #[serde(default)]
    pub floor: u64,
    /// The seq at which the current generation started: what this node wrote
    /// on its own since then is what a split brain would discard.
    #[serde(default)]
    pub generation_start: u64,
}

impl Default for NodeState {
    /// A brand-new node: secondary, up to date (an empty store is a valid
    /// filesystem of generation 0), never primary.
    fn default() -> Self {
        NodeState {
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            generation: 0,
            shared: 0,
            primary_since_ms: 0,
            floor: 0,
            generation_start: 0,
        }
    }
}

impl NodeState {
    /// The history for the split-brain decision.
    pub fn history(&self, changed_blocks: u64) -> History {
        History {
            current: Generation(self.generation),
            shared: Generation(self.shared),
            changed_blocks,
            primary_since_ms: (self.primary_since_ms != 0).then_some(self.primary_since_ms),
        }
    }

    /// Whether this node wrote on its own since it last shared a generation.
    pub fn diverged(&self) -> bool {
        self.generation != self.shared
    }
}

/// What a node counts, for the status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Mutation frames sent to the peer.
    pub mutations_sent: u64,
    /// Mutation payload bytes sent to the peer (retransmissions included).
    pub mutation_bytes_sent: u64,
    /// Mutations applied from the peer.
    pub mutations_applied: u64,
    /// Bytes sent to the peer by resyncs.
    pub resync_bytes_sent: u64,
    /// Connections that completed a handshake.
    pub connections: u64,
    /// Times the peer was declared lost.
    pub peer_losses: u64,
    /// Times writes were suspended (peer lost, no right to acknowledge alone).
    #[serde(default)]
    pub suspensions: u64,
}

/// The role as the state file has always written it: `primary`, `secondary`.
mod role_lowercase {
    use crate::Role;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match r {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        match String::deserialize(d)?.as_str() {
            "primary" => Ok(Role::Primary),
            "secondary" => Ok(Role::Secondary),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["primary", "secondary"],
            )),
        }
    }
}

/// A `u64` as a 16-digit hex string.
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16)
            .map_err(|_| serde::de::Error::custom(format!("not a hex generation: {text:?}")))
    }
}
