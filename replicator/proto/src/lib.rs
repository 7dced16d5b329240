//! twinfs-replicator-proto: the replication protocol of twinfs as pure state machines.
//!
//! This crate owns the rules of replication: sequence numbers, acknowledgements,
//! the commit rules of protocols A, B and C, flush barriers, heartbeats and
//! peer-death detection, the split-brain decision, and the binary frame codec. It contains no networking
//! code, no async runtime, no store and no clock: every input is a value
//! ([`Frame`]s, payload bytes, the current [`Instant`]) and every output is a value
//! (frames to send, the next timer, [`Event`]s). The QUIC transport in
//! `twinfs-replicator` drives it; the tests drive it on a simulated network.
//!
//! Mutations travel as opaque payload bytes with a [`Seq`]: `twinfs-fs` encodes
//! them, and this crate never looks inside.
//!
//! The two sides:
//! - [`Primary`]: takes submitted mutations, sends them, and reports when each is
//!   committed (a write may return) and flushed (an fsync may return);
//! - [`Replica`]: receives mutations, hands them to the application strictly in
//!   order and acknowledges only what the application reports back.
//!
//! A round trip, with the network replaced by direct calls:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use twinfs_replicator_proto::{
//!     DiskState, Event, Frame, Hello, Primary, ProtocolConfig, Replica, Role, Seq, Generation,
//!     PROTOCOL_VERSION,
//! };
//!
//! let config = ProtocolConfig::default(); // protocol C
//! config.validate().unwrap();
//! let now = Instant::now(); // the caller owns the clock
//! let mut primary = Primary::new(config.clone(), now);
//! let mut replica = Replica::new(config, Seq(0), now);
//!
//! // The transport's handshake delivers the replica's Hello to the primary.
//! let hello = Hello {
//!     version: PROTOCOL_VERSION,
//!     node: "b".into(),
//!     generation: Generation(1),
//!     last_applied: replica.last_applied(),
//!     role: Role::Secondary,
//!     disk: DiskState::UpToDate,
//!     shared: Generation(1),
//!     changed_blocks: 0,
//!     primary_since_ms: 0,
//!     floor: Seq(0),
//! };
//! primary.handle_reconnect(now, hello).unwrap();
//! assert_eq!(primary.poll_event(), Some(Event::PeerConnected { last_applied: Seq(0) }));
//!
//! // A write: submit, apply locally, report it.
//! let seq = primary.submit(now, b"mutation bytes".to_vec(), false);
//! primary.local_applied(seq).unwrap();
//! assert_eq!(primary.poll_event(), None); // protocol C waits for the peer
//!
//! // Ship it; the replica's application applies it and reports back.
//! while let Some(frame) = primary.poll_transmit() {
//!     replica.handle_frame(now, frame).unwrap();
//! }
//! let (s, payload, _flush) = replica.poll_apply().unwrap();
//! assert_eq!(&payload[..], b"mutation bytes");
//! replica.applied(s).unwrap();
//! while let Some(frame) = replica.poll_transmit() {
//!     primary.handle_frame(now, frame).unwrap();
//! }
//! assert_eq!(primary.poll_event(), Some(Event::Committed(seq)));
//! # let _ = Frame::Heartbeat { now_ms: 0 };
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod connection;
mod error;
mod frame;
pub mod fuzzing;
mod generation;
pub mod limit;
pub mod node;
mod plan;
mod primary;
mod replica;

#[cfg(test)]
mod tests;

pub use config::{OnPeerLoss, Protocol, ProtocolConfig};
pub use connection::ConnectionState;
pub use error::{ConfigError, FrameError, ProtocolError};
pub use frame::{Frame, Hello, FRAME_VERSION, HEADER_LEN, MAGIC, MAX_BODY_LEN, MAX_PAYLOAD_LEN};
pub use generation::{decide, Decision, History, Side, SplitBrainPolicy};
pub use plan::{plan, LocalView, Plan};
pub use primary::{AckState, AloneRight, Primary};
pub use replica::{Replica, MAX_EARLY_BYTES};

#[doc(no_inline)]
pub use bytes::Bytes;
pub use std::time::Instant;

/// The replication protocol version a node announces in its [`Hello`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Sequence number of a mutation. `Seq(0)` means "nothing yet"; the first mutation is `Seq(1)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number after this one.
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Data generation identifier (DRBD's data-generation UUID): a new one starts
/// whenever a primary loses its peer or a node is promoted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

impl std::fmt::Display for Generation {
    /// 16 hex digits, as the status shows generations.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A node's role: the one type for it in every crate (the state file, the
/// beacon, the handshake, the status). The default is `Secondary`: every
/// node starts as one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Role {
    /// Mounted read-write; the only writer.
    Primary,
    /// Receives the primary's mutations.
    #[default]
    Secondary,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }
}

/// The state of a node's disk (DRBD's vocabulary, which admins know): the
/// one type for it in every crate.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum DiskState {
    /// Holds the latest data of its generation.
    #[default]
    UpToDate,
    /// Consistent but known to miss the peer's newer writes; never promoted.
    Outdated,
    /// A resync target mid-sync: a mix of old and new blocks; never promoted.
    Inconsistent,
    /// No local store.
    Diskless,
}

impl DiskState {
    /// Whether a node with this disk may become primary.
    pub fn promotable(self) -> bool {
        self == DiskState::UpToDate
    }
}

impl std::fmt::Display for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskState::UpToDate => "UpToDate",
            DiskState::Outdated => "Outdated",
            DiskState::Inconsistent => "Inconsistent",
            DiskState::Diskless => "Diskless",
        })
    }
}

/// What a state machine reports to its driver, from `poll_event`.
///
/// `Committed` and `Flushed` are cumulative: `Committed(s)` means every
/// sequence number up to and including `s` is committed. They only ever grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// (Primary) every mutation up to this seq may be acknowledged to the writer.
    Committed(Seq),
    /// (Primary) every mutation up to this seq is durable as the protocol promises: an fsync may return.
    Flushed(Seq),
    /// (Primary) the peer completed the handshake; `last_applied` is where it stands.
    PeerConnected {
        /// The last seq the peer had applied when it connected.
        last_applied: Seq,
    },
    /// (Both) nothing was heard from the peer for `deadtime` (or it said goodbye).
    /// Fired once per connection; the primary continues in degraded mode.
    PeerLost,
}
