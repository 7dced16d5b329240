//! The replica side: receives mutations, hands them to the application strictly
//! in order, and acknowledges only what the application reported back.

use crate::config::ProtocolConfig;
use crate::error::ProtocolError;
use crate::frame::Frame;
use crate::primary::{check_report, millis_since};
use crate::{Event, Role, Seq, PROTOCOL_VERSION};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;
use tracing::{debug, trace};

/// Most payload bytes a [`Replica`] holds in out-of-order mutations by default
/// ([`ProtocolConfig::max_early_bytes`]; 64 MiB, one mutation of the largest
/// size fits). A mutation that arrives after a gap
/// and would take the buffer beyond this is dropped, exactly as if the network
/// had lost it: it is not counted as received, so no ack covers it, and the
/// primary, which keeps every mutation until it is acknowledged, sends it again
/// after the gap (its retransmission timer resends the whole unacknowledged
/// window, in order). With one ordered QUIC stream an honest primary never
/// leaves a gap; the bound is against one that does.
pub const MAX_EARLY_BYTES: usize = 64 << 20;

/// The replica's replication state machine. It performs no IO and reads no clock.
///
/// # Calling order
///
/// 1. inputs, each with the current time: [`handle_frame`](Self::handle_frame) for
///    every frame read from the primary, [`handle_reconnect`](Self::handle_reconnect)
///    when a new connection is established, and
///    [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
///    has passed;
/// 2. [`poll_apply`](Self::poll_apply) until `None`: apply each mutation to the
///    store in the order given, then report [`applied`](Self::applied); when the
///    flush flag is set, sync the store first and report [`flushed`](Self::flushed)
///    too (the store may also report flushes of its own, after a checkpoint);
/// 3. [`poll_transmit`](Self::poll_transmit) until `None`, [`poll_event`](Self::poll_event)
///    until `None`, then re-arm the timer with [`poll_timeout`](Self::poll_timeout).
///
/// # Invariants
///
/// - Mutations are handed out exactly once, in seq order with no gap, starting
///   right after the `last_applied` given to [`new`](Self::new).
/// - An ack never claims more than the application reported: "applied" and
///   "flushed" are only what [`applied`](Self::applied) and [`flushed`](Self::flushed)
///   were told (this is what makes protocol C's promise hold).
/// - Out-of-order mutations take at most
///   [`max_early_bytes`](ProtocolConfig::max_early_bytes) of payload (and
///   at most `max_in_flight` seqs beyond the applied one).
#[derive(Debug)]
pub struct Replica {
    config: ProtocolConfig,
    start: Instant,
    last_now: Instant,
    /// Every seq up to here has been received (handed out or waiting in `ready`).
    received: Seq,
    /// Every seq up to here has been handed out by `poll_apply`.
    handed_out: Seq,
    applied: Seq,
    flushed: Seq,
    /// Received in order, not yet handed out: `(handed_out, received]`.
    ready: VecDeque<(Seq, Bytes, bool)>,
    /// Received after a gap, waiting for the gap to fill.
    early: BTreeMap<Seq, (Bytes, bool)>,
    /// Payload bytes in `early`.
    early_bytes: usize,
    /// The highest flush barrier the primary asked for.
    flush_wanted: Seq,
    lost: bool,
    last_heard: Instant,
    next_keepalive: Instant,
    heartbeat_due: bool,
    ack_due: bool,
    events: VecDeque<Event>,
}

impl Replica {
    /// A replica whose store has applied every mutation up to `last_applied`.
    ///
    /// After a restart this is the store's recovered position. It must be durable
    /// (sync the store after opening it), since it is also acknowledged as flushed.
    pub fn new(config: ProtocolConfig, last_applied: Seq, now: Instant) -> Self {
        Replica {
            next_keepalive: now + config.keepalive,
            config,
            start: now,
            last_now: now,
            received: last_applied,
            handed_out: last_applied,
            applied: last_applied,
            flushed: last_applied,
            ready: VecDeque::new(),
            early: BTreeMap::new(),
            early_bytes: 0,
            flush_wanted: Seq(0),
            lost: false,
            last_heard: now,
            heartbeat_due: false,
            ack_due: true,
            events: VecDeque::new(),
        }
    }

    /// A new connection to the primary is established (after the handshake).
    ///
    /// Out-of-order mutations from the old connection are dropped: the primary
    /// resends everything after our `last_applied`, in order.
    pub fn handle_reconnect(&mut self, now: Instant) {
        self.last_now = now;
        self.lost = false;
        self.last_heard = now;
        self.next_keepalive = now + self.config.keepalive;
        self.early.clear();
        self.early_bytes = 0;
        self.ack_due = true;
    }

    /// A frame read from the primary.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), ProtocolError> {
        self.last_now = now;
        if let Frame::Hello(hello) = &frame {
            if hello.version != PROTOCOL_VERSION {
                return Err(ProtocolError::VersionMismatch {
                    peer: hello.version,
                    local: PROTOCOL_VERSION,
                });
            }
            if hello.role != Role::Primary {
                return Err(ProtocolError::RoleConflict {
                    peer: hello.role,
                    expected: Role::Primary,
                });
            }
            self.handle_reconnect(now);
            return Ok(());
        }
        if self.lost {
            trace!(frame = frame.name(), "ignored: peer lost");
            return Ok(());
        }
        self.last_heard = now;
        match frame {
            Frame::Mutation {
                seq,
                flush,
                payload,
            } => self.handle_mutation(seq, flush, payload)?,
            Frame::Heartbeat { .. } => {}
            Frame::Flush { seq } => {
                self.flush_wanted = self.flush_wanted.max(seq);
                // Already durable: say so again (the previous ack may be lost).
                self.ack_due |= seq <= self.flushed;
            }
            Frame::Goodbye { reason } => {
                debug!(%reason, "primary said goodbye");
                self.lose_peer();
            }
            Frame::Ack { .. }
            | Frame::Hello(_)
            | Frame::ResyncRequest { .. }
            | Frame::ResyncKeys { .. }
            | Frame::Report { .. }
            | Frame::VerifyRequest { .. }
            | Frame::VerifyResponse { .. }
            | Frame::Repair { .. }
            | Frame::ResyncData { .. }
            | Frame::ResyncDone { .. } => {
                return Err(ProtocolError::UnexpectedFrame {
                    frame: frame.name(),
                    side: Role::Secondary,
                })
            }
        }
        Ok(())
    }

    fn handle_mutation(
        &mut self,
        seq: Seq,
        flush: bool,
        payload: Bytes,
    ) -> Result<(), ProtocolError> {
        // Every mutation is answered, duplicates included: a duplicate usually
        // means our previous ack was lost.
        self.ack_due = true;
        if seq <= self.received {
            trace!(seq = seq.0, "duplicate dropped");
            return Ok(());
        }
        if seq.0 - self.applied.0 > self.config.max_in_flight as u64 {
            return Err(ProtocolError::GapTooLarge {
                seq,
                applied: self.applied,
                max_in_flight: self.config.max_in_flight,
            });
        }
        if seq != self.received.next() {
            if self.early.contains_key(&seq) {
                return Ok(());
            }
            if self.early_bytes + payload.len() > self.config.max_early_bytes {
                // Dropped like a lost packet; the primary resends it.
                trace!(
                    seq = seq.0,
                    early = self.early_bytes,
                    "out-of-order mutation dropped: early buffer full"
                );
                return Ok(());
            }
            if flush {
                self.flush_wanted = self.flush_wanted.max(seq);
            }
            self.early_bytes += payload.len();
            self.early.insert(seq, (payload, flush));
            return Ok(());
        }
        if flush {
            self.flush_wanted = self.flush_wanted.max(seq);
        }
        self.ready.push_back((seq, payload, flush));
        self.received = seq;
        while let Some((payload, flush)) = self.early.remove(&self.received.next()) {
            self.early_bytes -= payload.len();
            self.received = self.received.next();
            self.ready.push_back((self.received, payload, flush));
        }
        Ok(())
    }

    /// The next mutation to apply: `(seq, payload, flush)`, strictly in seq order.
    ///
    /// Apply it, then report [`applied`](Self::applied); if `flush` is set, sync
    /// the store and report [`flushed`](Self::flushed). Nothing is acknowledged
    /// until then.
    #[must_use = "a mutation handed out must be applied and reported back"]
    pub fn poll_apply(&mut self) -> Option<(Seq, Bytes, bool)> {
        let next = self.ready.pop_front()?;
        self.handed_out = next.0;
        Some(next)
    }

    /// A flush the primary is waiting for: once this returns `Some(seq)`, sync
    /// the store and report [`flushed`](Self::flushed)`(seq)`. It returns the
    /// applied position when a barrier from [`Frame::Flush`] (or a mutation's
    /// flush flag) is covered by what is applied but not yet flushed.
    pub fn poll_flush(&self) -> Option<Seq> {
        (self.flush_wanted > self.flushed && self.applied >= self.flush_wanted)
            .then_some(self.applied)
    }

    /// The store applied every mutation up to `seq`.
    pub fn applied(&mut self, seq: Seq) -> Result<(), ProtocolError> {
        check_report("applied", seq, self.handed_out)?;
        if seq > self.applied {
            self.applied = seq;
            self.ack_due = true;
        }
        Ok(())
    }

    /// The store made every mutation up to `seq` durable.
    pub fn flushed(&mut self, seq: Seq) -> Result<(), ProtocolError> {
        check_report("flushed", seq, self.applied)?;
        if seq > self.flushed {
            self.flushed = seq;
            self.ack_due = true;
        }
        Ok(())
    }

    /// The instant from [`poll_timeout`](Self::poll_timeout) has passed (calling it
    /// early or twice is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        if self.lost {
            return;
        }
        if now >= self.last_heard + self.config.deadtime {
            self.lose_peer();
            return;
        }
        if now >= self.next_keepalive {
            // The ack rides along with every heartbeat, so a lost ack costs at
            // most one keepalive interval.
            self.heartbeat_due = true;
            self.ack_due = true;
            self.next_keepalive = now + self.config.keepalive;
        }
    }

    /// The next frame to write to the primary.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if self.lost {
            return None;
        }
        if std::mem::take(&mut self.heartbeat_due) {
            return Some(Frame::Heartbeat {
                now_ms: millis_since(self.start, self.last_now),
            });
        }
        // One ack carries the latest of all three levels: many receipts coalesce.
        if std::mem::take(&mut self.ack_due) {
            return Some(Frame::Ack {
                received: self.received,
                applied: self.applied,
                flushed: self.flushed,
            });
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.lost {
            return None;
        }
        Some(
            self.next_keepalive
                .min(self.last_heard + self.config.deadtime),
        )
    }

    /// The next event for the driver (only [`Event::PeerLost`] on this side).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The last seq the application reported as applied.
    pub fn last_applied(&self) -> Seq {
        self.applied
    }

    /// The last seq the application reported as flushed.
    pub fn last_flushed(&self) -> Seq {
        self.flushed
    }

    /// Whether the primary was declared lost (until the next reconnect).
    pub fn is_peer_lost(&self) -> bool {
        self.lost
    }

    fn lose_peer(&mut self) {
        debug!(applied = self.applied.0, "primary lost");
        self.lost = true;
        self.events.push_back(Event::PeerLost);
    }
}
