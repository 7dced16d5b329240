//! The replication link's state, in DRBD's words: the one type for it in
//! every crate (the node's status, the metrics, the supervisor).

/// The state of the replication connection, as `twinfs status` shows it.
///
/// The serde form is the variant name (`"SyncSource"`), which is what
/// `twinfs status --json` has always printed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ConnectionState {
    /// Not connecting: the nodes refuse each other (split brain and the like).
    #[default]
    StandAlone,
    /// Waiting for the peer, or for its handshake.
    Connecting,
    /// Handshake done and in sync: mutations flow as they are written.
    Connected,
    /// Connected, and this node ships a resync or catch-up to the peer.
    SyncSource,
    /// Connected, and this node receives a resync or catch-up from the peer.
    SyncTarget,
}

impl ConnectionState {
    /// Every state, in the order above (for the metrics' state sets).
    pub const ALL: [ConnectionState; 5] = [
        ConnectionState::StandAlone,
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::SyncSource,
        ConnectionState::SyncTarget,
    ];

    /// Whether a handshake completed: connected, in sync or syncing.
    pub fn is_connected(self) -> bool {
        matches!(
            self,
            ConnectionState::Connected | ConnectionState::SyncSource | ConnectionState::SyncTarget
        )
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}
