//! Accepting the peer's connections while strangers knock: concurrent,
//! bounded, timed-out handshakes.
//!
//! Anyone who can send UDP to the replication port reaches quinn. The
//! [`Acceptor`] keeps that from delaying the real peer:
//! - an attempt from an address other than the peer's is dropped without an
//!   answer ([`quinn::Incoming::ignore`]): no handshake, no keys, no state;
//! - an attempt from the peer's address must first prove it can receive there
//!   (a stateless QUIC Retry), so a spoofed source costs one small packet;
//! - at most [`MAX_HANDSHAKES`] handshakes run at once, each in its own task
//!   with its own deadline ([`AcceptPolicy::handshake_timeout`]), and a new
//!   attempt that finds them all busy replaces the oldest (an attacker must
//!   outpace the real peer's handshake, a few milliseconds on a LAN, not just
//!   keep silent connections open);
//! - quinn itself buffers at most [`MAX_INCOMING`] attempts of at most
//!   [`INCOMING_BUFFER`] bytes each;
//! - each kind of refusal is logged at most [`LOG_PER_SECOND`] times a second,
//!   with the count of the lines suppressed.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, Endpoint, Incoming};
use tokio::task::{AbortHandle, JoinSet};
use twinfs_replicator_proto::limit::LogLimiter;

use super::TransportError;

/// Handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 8;
/// Connection attempts quinn holds before the acceptor has looked at them.
pub const MAX_INCOMING: usize = 64;
/// Bytes quinn buffers for one attempt not yet looked at (beyond its first packet).
pub const INCOMING_BUFFER: u64 = 64 << 10;
/// Log lines a second for each kind of refusal.
pub const LOG_PER_SECOND: u32 = 2;

/// Whom to accept, and how long a handshake may take.
#[derive(Debug, Clone)]
pub struct AcceptPolicy {
    /// The peer's IP address; attempts from any other address are dropped
    /// unanswered. `None` accepts any address (the pinned certificate still
    /// decides).
    pub peer: Option<IpAddr>,
    /// A handshake not finished after this long is abandoned.
    pub handshake_timeout: Duration,
}

/// Applies the server-side limits of this module to quinn's configuration.
pub(super) fn limit_incoming(config: &mut quinn::ServerConfig) {
    config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER * MAX_INCOMING as u64);
}

/// Counts of what the acceptor turned away, for status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AcceptStats {
    /// Attempts from an address that is not the peer's, dropped unanswered.
    pub not_peer: u64,
    /// Attempts answered with a Retry (their address not yet proven).
    pub retried: u64,
    /// Handshakes abandoned at their deadline.
    pub timed_out: u64,
    /// Handshakes cut short because newer attempts needed the slot.
    pub evicted: u64,
    /// Handshakes that failed (certificate, protocol, the client gave up).
    pub failed: u64,
}

type Handshake = (SocketAddr, Result<Connection, TransportError>);

/// Accepts connections on an endpoint under the limits described in the
/// module documentation.
pub struct Acceptor {
    endpoint: Endpoint,
    policy: AcceptPolicy,
    running: JoinSet<Handshake>,
    /// Abort handles of the running handshakes, oldest first.
    order: VecDeque<AbortHandle>,
    log: LogLimiter,
    stats: AcceptStats,
}

impl Acceptor {
    /// An acceptor for `endpoint` (which must have a server configuration).
    pub fn new(endpoint: Endpoint, policy: AcceptPolicy) -> Acceptor {
        Acceptor {
            endpoint,
            policy,
            running: JoinSet::new(),
            order: VecDeque::new(),
            log: LogLimiter::new(LOG_PER_SECOND),
            stats: AcceptStats::default(),
        }
    }

    /// What has been turned away so far.
    pub fn stats(&self) -> AcceptStats {
        self.stats
    }

    /// The next connection whose handshake finished, or the error of one that
    /// failed (already logged, rate-limited). `None` once the endpoint is
    /// closed. Attempts dropped before a handshake started are not returned.
    pub async fn next(&mut self) -> Option<Result<Connection, TransportError>> {
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => self.admit(incoming),
                    None => return None,
                },
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    // An aborted (evicted) handshake was counted when evicted.
                    let Ok((peer, result)) = done else { continue };
                    self.order.retain(|h| !h.is_finished());
                    return Some(match result {
                        Ok(conn) => {
                            tracing::debug!(%peer, "replication connection accepted");
                            Ok(conn)
                        }
                        Err(e) => {
                            self.note_failure(&e);
                            Err(e)
                        }
                    });
                }
            }
        }
    }

    /// Looks at a new attempt: drop it, ask it to prove its address, or start
    /// its handshake (replacing the oldest one if all slots are busy).
    fn admit(&mut self, incoming: Incoming) {
        let from = incoming.remote_address();
        if let Some(peer) = self.policy.peer {
            if from.ip().to_canonical() != peer.to_canonical() {
                self.stats.not_peer += 1;
                incoming.ignore();
                self.warn(
                    "not-peer",
                    format_args!(
                        "ignored a replication connection attempt from {from}: not the peer's address ({peer})"
                    ),
                );
                return;
            }
        }
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                self.stats.retried += 1;
                // Stateless: the attempt comes back with a token only if its
                // sender really receives at that address.
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            return;
        }
        self.order.retain(|h| !h.is_finished());
        if self.order.len() >= MAX_HANDSHAKES {
            if let Some(oldest) = self.order.pop_front() {
                oldest.abort();
                self.stats.evicted += 1;
                self.warn(
                    "evicted",
                    format_args!(
                        "{MAX_HANDSHAKES} replication handshakes in progress; abandoned the oldest for one from {from}"
                    ),
                );
            }
        }
        let timeout = self.policy.handshake_timeout;
        let handle = self
            .running
            .spawn(async move { (from, handshake(incoming, timeout).await) });
        self.order.push_back(handle);
    }

    fn note_failure(&mut self, e: &TransportError) {
        let kind = match e {
            TransportError::HandshakeTimeout { .. } => {
                self.stats.timed_out += 1;
                "timeout"
            }
            TransportError::Refused { .. } => {
                self.stats.failed += 1;
                "refused"
            }
            _ => {
                self.stats.failed += 1;
                "failed"
            }
        };
        // The message is the error's text so the log line and the caller agree.
        self.warn(kind, format_args!("{e}"));
    }

    fn warn(&mut self, kind: &'static str, message: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.log.admit(kind, Instant::now()) {
            if suppressed > 0 {
                tracing::warn!("{message} ({suppressed} more like this suppressed)");
            } else {
                tracing::warn!("{message}");
            }
        }
    }
}

/// Runs one server-side handshake to its end or its deadline.
async fn handshake(incoming: Incoming, timeout: Duration) -> Result<Connection, TransportError> {
    let peer = incoming.remote_address();
    let attempt = async {
        incoming.await.map_err(|error| match error {
            // A local transport error: this node's TLS or QUIC stack refused it.
            error @ ConnectionError::TransportError(_) => TransportError::Refused { peer, error },
            error => TransportError::Handshake { peer, error },
        })
    };
    // Dropping the unfinished handshake closes it: nothing of it outlives the
    // deadline but quinn's short draining period.
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(TransportError::HandshakeTimeout {
            peer,
            after: timeout,
        }))
}
