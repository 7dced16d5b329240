//! Error types, one per operation family.
//!
//! Expected conditions stay out of these types: an incomplete frame is
//! `Ok(None)`, a peer that is behind is state, a duplicate mutation is dropped.

use crate::{Role, Seq};
use std::time::Duration;
use thiserror::Error;

/// A [`crate::ProtocolConfig`] that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `keepalive` is zero.
    #[error("keepalive must be greater than zero")]
    ZeroKeepalive,
    /// `deadtime` is not longer than `keepalive`.
    #[error("deadtime ({deadtime:?}) must exceed keepalive ({keepalive:?})")]
    DeadtimeNotAboveKeepalive {
        /// The configured deadtime.
        deadtime: Duration,
        /// The configured keepalive.
        keepalive: Duration,
    },
    /// `max_in_flight` is zero.
    #[error("max_in_flight must be at least 1")]
    ZeroMaxInFlight,
}

/// Bytes that are not a valid frame. The connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame does not start with [`crate::MAGIC`].
    #[error("bad frame magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The bytes found (up to four).
        found: Vec<u8>,
        /// The magic expected.
        expected: [u8; 4],
    },
    /// The frame format version is not the one this build speaks.
    #[error("unsupported frame version {found}, this build speaks {supported}")]
    UnsupportedVersion {
        /// The version in the frame.
        found: u8,
        /// [`crate::FRAME_VERSION`].
        supported: u8,
    },
    /// The frame type byte is unknown.
    #[error("unknown frame type {ty}")]
    UnknownType {
        /// The type byte.
        ty: u8,
    },
    /// The announced body length exceeds [`crate::MAX_BODY_LEN`].
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// The announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The body is shorter than its fields need.
    #[error("{frame} frame body of {len} bytes is too short")]
    Truncated {
        /// Frame type name.
        frame: &'static str,
        /// Body length.
        len: usize,
    },
    /// The body is longer than its fields.
    #[error("{frame} frame body has {extra} trailing bytes")]
    TrailingBytes {
        /// Frame type name.
        frame: &'static str,
        /// Unused bytes.
        extra: usize,
    },
    /// A text field is not UTF-8.
    #[error("{frame}.{field} is not valid utf-8")]
    InvalidUtf8 {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A field holds a value outside its domain.
    #[error("{frame}.{field} has invalid value {value}")]
    InvalidValue {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// An input that breaks the protocol: from the peer (close the connection) or
/// from the local application (a bug in the caller).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame this side never accepts (for example an Ack sent to a replica).
    #[error("unexpected {frame} frame on the {side} side")]
    UnexpectedFrame {
        /// Frame type name.
        frame: &'static str,
        /// The receiving side.
        side: Role,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {peer}, this node speaks {local}")]
    VersionMismatch {
        /// The peer's version.
        peer: u16,
        /// [`crate::PROTOCOL_VERSION`].
        local: u16,
    },
    /// The peer announced a role that cannot pair with ours (two primaries: split brain).
    #[error("peer announced role {peer}, expected {expected}")]
    RoleConflict {
        /// The role the peer announced.
        peer: Role,
        /// The role this side needs the peer to have.
        expected: Role,
    },
    /// The peer acknowledged a seq that was never submitted.
    #[error("peer acknowledged seq {acked}, but only {submitted} was submitted")]
    AckBeyondSubmitted {
        /// The acknowledged seq.
        acked: Seq,
        /// The last submitted seq.
        submitted: Seq,
    },
    /// An ack whose levels are not ordered flushed <= applied <= received.
    #[error("inconsistent ack: received {received}, applied {applied}, flushed {flushed}")]
    InconsistentAck {
        /// Acked as received.
        received: Seq,
        /// Acked as applied.
        applied: Seq,
        /// Acked as flushed.
        flushed: Seq,
    },
    /// The peer claims to have applied more than this primary ever submitted.
    #[error("peer has applied seq {peer_applied}, ahead of the last submitted seq {submitted}")]
    PeerAhead {
        /// The peer's last applied seq.
        peer_applied: Seq,
        /// This primary's last submitted seq.
        submitted: Seq,
    },
    /// The peer needs mutations that are no longer retained: a block resync is required.
    #[error("peer has applied seq {peer_applied}, but the oldest retained mutation is {oldest_retained}")]
    PeerTooFarBehind {
        /// The peer's last applied seq.
        peer_applied: Seq,
        /// The oldest seq the primary still holds.
        oldest_retained: Seq,
    },
    /// The peer came back with less than it had acknowledged as flushed.
    #[error(
        "peer came back at seq {peer_applied}, but had acknowledged seq {peer_flushed} as flushed"
    )]
    PeerLostDurableData {
        /// The peer's last applied seq now.
        peer_applied: Seq,
        /// What it had acknowledged as durable.
        peer_flushed: Seq,
    },
    /// A mutation too far ahead of the replica's applied seq to buffer.
    #[error("mutation seq {seq} is more than {max_in_flight} ahead of applied seq {applied}")]
    GapTooLarge {
        /// The received seq.
        seq: Seq,
        /// The replica's applied seq.
        applied: Seq,
        /// The configured bound.
        max_in_flight: usize,
    },
    /// The application reported a seq as applied or flushed beyond what it may have.
    #[error("{what} seq {seq} reported, but only {limit} is possible")]
    ReportBeyondLimit {
        /// Which report (`local_applied`, `local_flushed`, `applied`, `flushed`).
        what: &'static str,
        /// The reported seq.
        seq: Seq,
        /// The highest seq that may be reported.
        limit: Seq,
    },
}
