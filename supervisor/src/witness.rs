//! Authenticated UDP messaging for the supervisor: the public-network beacon
//! and the witness (`twinfs witness`), a diskless tie-breaker like
//! corosync-qnetd or DRBD's diskless tiebreaker.
//!
//! - [`Beacon`]: a signed heartbeat to the peer's public address every
//!   interval, and the peer's heartbeats back ([`Beacon::last_heard`],
//!   [`Beacon::peer`] with its role, disk and generation). It is the second
//!   heartbeat path, like Heartbeat's `bcast eth0` next to the private link:
//!   a cut replication link is not mistaken for a dead peer.
//! - [`WitnessServer`] and [`WitnessClient`]: a **primary lease** held by at
//!   most one node at a time, and whether the witness hears the other node.
//!
//! This module provides facts; the failover state machine decides. The rules
//! it is meant to apply: a node that hears neither its peer nor the witness
//! demotes itself; a node promotes only while the witness grants it the lease.
//!
//! Every datagram is signed with the sender's ECDSA P-256 key, the key of its
//! replication TLS identity ([`SigningKey::from_pem_file`]), and checked
//! against the key of the certificate the receiver pinned for that sender
//! ([`PublicKey::from_cert_pem_file`]). Nothing is encrypted: heartbeats and
//! lease answers are not secret, only their origin and freshness matter.
//!
//! # The lease, and why a node's own view is safe
//!
//! The witness grants node X the lease iff no other node holds an unexpired
//! lease. X's lease expires at the witness one lease duration after the last
//! grant or renewal the witness *received* from X.
//!
//! The client computes [`WitnessClient::lease_granted_until`] from the time
//! it *sent* the request that was granted: `sent + lease - 1 %`. The witness
//! received that request after it was sent, so the witness's expiry is later
//! than the client's by at least the one-way delay, whatever the network
//! did, and no wall clocks are compared (each side measures a duration on its
//! own monotonic clock; the 1 % absorbs clock-rate differences, which are
//! below 0.01 % for quartz). Hence whenever the witness grants the lease to
//! the other node, this node's own view of its lease has already expired. A
//! primary that stops acting as primary when its own view expires can
//! therefore never overlap with a primary the witness promoted later. Lost
//! or late answers only shorten the client's view: a request whose answer
//! never came counts for nothing.
//!
//! A restarted witness has forgotten its leases, and a lease it granted
//! before may still run. For one grace period (default: one lease) it
//! therefore grants only `Renew`, never `Acquire`. The client sends `Renew`
//! only while its own view is unexpired, and by the argument above at most
//! one node can be in that state, so the grace period keeps the guarantee.
//!
//! # Wire format (version 1)
//!
//! One frame per UDP datagram, big-endian integers:
//!
//! ```text
//! offset   size  field
//! 0        4     magic "TWSD"
//! 4        1     version = 1
//! 5        1     kind: 1 heartbeat, 2 witness request, 3 witness answer
//! 6        1     n = sender name length, 1..=63
//! 7        n     sender name, UTF-8 (the node name, or the witness's)
//! 7+n      8     boot id: random, drawn once per process run
//! 15+n     8     counter: 1, 2, 3, ... per boot id, over all frames of the run
//! 23+n     8     sender's wall clock, ms since 1970-01-01 UTC
//! 31+n     2     b = body length, 0..=1024
//! 33+n     b     body (below)
//! 33+n+b   64    ECDSA P-256 SHA-256 signature (r ‖ s) of bytes 0 .. 33+n+b
//! ```
//!
//! A receiver refuses a frame whose length, magic, version, kind or field
//! lengths are wrong, whose sender has no pinned key, whose signature does not
//! verify, whose clock is more than 30 s from its own, or whose counter is not
//! above the last one accepted for that boot id (a replay); frames of a boot
//! id it saw replaced by a newer one are refused too. See [`FrameError`].
//!
//! Bodies:
//!
//! ```text
//! heartbeat (11 bytes):
//!   0  1  role: 1 primary, 2 secondary
//!   1  1  disk: 1 UpToDate, 2 Outdated, 3 Inconsistent, 4 Diskless
//!   2  1  flags: 1 = the replication link is up, 0 = down
//!   3  8  generation
//!
//! witness request (9 bytes):
//!   0  8  request id (the answer carries it back)
//!   8  1  op: 1 ping, 2 acquire, 3 renew, 4 release
//!
//! witness answer:
//!   0  8  request id answered
//!   8  1  outcome: 0 pinged, 1 granted, 2 refused (another node holds the lease),
//!         3 released, 4 grace (witness restarted less than a lease ago),
//!         5 rejected (the request failed verification: reason below)
//!   9  4  lease duration, ms
//!   13 4  ms since the witness last heard the other node; 0xFFFFFFFF: never
//!   17 4  ms the holder's lease still runs
//!   21 1  m, then m bytes: the node the answer is for
//!   .  1  h, then h bytes: the node holding the lease now (h = 0: nobody)
//!   .  2  r, then r bytes: why the request was rejected (UTF-8)
//! ```
//!
//! The witness answers rejected requests (a wrong key, a replay, clock skew)
//! with a signed reason, at most 20 per second, so that an administrator sees
//! "signature ... does not verify" rather than a silent timeout.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod beacon;
mod client;
mod frame;
mod intake;
mod keys;
mod lease;
mod message;
mod server;

pub use beacon::{Beacon, BeaconConfig, BeaconError, BeaconStatus, PeerHeard};
pub use client::{LeaseHolder, LeaseStatus, WitnessAnswer, WitnessClient, WitnessClientConfig};
pub use frame::{
    Authentic, Frame, FrameError, Kind, Opened, Signer, Verifier, DEFAULT_MAX_SKEW, MAGIC,
    MAX_BODY_LEN, MAX_FRAME_LEN, MAX_NAME_LEN, MIN_FRAME_LEN, VERSION,
};
pub use intake::{
    IntakeCounters, IntakeStats, LOG_LINES_PER_SEC, RATE_PER_SOURCE, REFUSAL_CLASSES,
};
pub use keys::{KeyError, PublicKey, SigningKey, SIGNATURE_LEN};
pub use message::{Announce, DiskState, Op, Role};
pub use server::{WitnessConfig, WitnessServer};

/// Why the witness server or client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// A configuration value is unusable.
    #[error("{field}: {reason}")]
    Config {
        /// The configuration field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// A socket operation failed.
    #[error("cannot {what} {addr}: {error}")]
    Socket {
        /// The witness (client side) or listen address (server side).
        addr: SocketAddr,
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// No valid answer within the timeout: the witness is unreachable.
    #[error("witness {addr} unreachable: no valid answer within {timeout:?} to {requests} request(s); last problem: {last_problem}")]
    Unreachable {
        /// The witness.
        addr: SocketAddr,
        /// The timeout that ran out.
        timeout: Duration,
        /// Requests sent.
        requests: usize,
        /// "no answer", an invalid answer's error, or "nothing listens there".
        last_problem: String,
    },
    /// The witness refused the request and said why (signed by the witness).
    /// The witness is up but this node has no lease from it: a state machine
    /// must treat it like "no lease", and show the reason to the operator.
    #[error("witness {addr} refused the request: {reason}")]
    Rejected {
        /// The witness.
        addr: SocketAddr,
        /// The witness's reason (for example a signature that does not verify
        /// with the key it pinned for this node).
        reason: String,
    },
    /// A request could not be built or signed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl WitnessError {
    /// Whether this means "the witness did not answer" (as opposed to a
    /// local problem or a refusal): the state machine's "witness lost".
    pub fn is_unreachable(&self) -> bool {
        matches!(self, WitnessError::Unreachable { .. })
    }
}

/// This machine's wall clock, ms since 1970 (0 if the clock is before 1970).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
