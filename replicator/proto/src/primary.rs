//! The primary side: numbers, ships and retransmits mutations, and decides when
//! each is committed and flushed.

use crate::config::{OnPeerLoss, Protocol, ProtocolConfig};
use crate::error::ProtocolError;
use crate::frame::{Frame, Hello, MAX_PAYLOAD_LEN};
use crate::{Event, Role, Seq, PROTOCOL_VERSION};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;
use tracing::{debug, trace};

/// The primary's replication state machine. It performs no IO and reads no clock.
///
/// # Calling order
///
/// The driver (the transport task) owns the connection and the clock, and loops:
///
/// 1. inputs, in any order, each with the current time:
///    - [`submit`](Self::submit) a mutation (the payload `twinfs-fs` encoded), then
///      apply it to the local store and report [`local_applied`](Self::local_applied),
///      and after a store sync [`local_flushed`](Self::local_flushed);
///    - [`handle_reconnect`](Self::handle_reconnect) with the peer's [`Hello`] when a
///      connection is (re)established (a `Hello` passed to `handle_frame` does the same);
///    - [`handle_frame`](Self::handle_frame) for every frame read from the peer;
///    - [`handle_timeout`](Self::handle_timeout) when the instant from
///      [`poll_timeout`](Self::poll_timeout) has passed;
/// 2. then drain the outputs: [`poll_transmit`](Self::poll_transmit) until `None`
///    (write each frame to the stream, in order), [`poll_event`](Self::poll_event)
///    until `None` (complete the writers waiting on `Committed`/`Flushed`), and
///    re-arm the timer with [`poll_timeout`](Self::poll_timeout).
///
/// # Invariants
///
/// - Seqs are given out consecutively from `Seq(1)` and sent in increasing order;
///   after a reconnect or a retransmission timeout sending restarts at the first
///   seq the peer has not acknowledged, so the peer never sees a gap it cannot fill.
/// - `Committed` and `Flushed` are cumulative and never go backwards; before
///   [`Event::PeerLost`] they follow [`ProtocolConfig::protocol`], after it they
///   follow the local store alone (degraded mode: the primary keeps serving).
/// - Every mutation the peer has not acknowledged as flushed is retained, so a
///   peer that restarts from its store can always be caught up by retransmission.
#[derive(Debug)]
pub struct Primary {
    config: ProtocolConfig,
    /// Origin of the heartbeat timestamps.
    start: Instant,
    /// The latest `now` given to any input; used where an output needs a time.
    last_now: Instant,
    last_submitted: Seq,
    /// Mutations `(peer.flushed, last_submitted]`, oldest first.
    log: VecDeque<Entry>,
    local_applied: Seq,
    local_flushed: Seq,
    /// What the peer acknowledged on the current connection (reset by its Hello).
    peer: Acked,
    link: Link,
    /// Next seq to put on the wire.
    next_send: Seq,
    last_heard: Instant,
    next_keepalive: Instant,
    heartbeat_due: bool,
    /// When to resend everything the peer has not acknowledged as received.
    retransmit_at: Option<Instant>,
    committed: Seq,
    flushed: Seq,
    /// The highest flush barrier asked for by [`Primary::request_flush`].
    flush_requested: Seq,
    /// The highest barrier sent on the current connection.
    flush_sent: Seq,
    /// The right to acknowledge alone (under [`OnPeerLoss::WithEvidence`]),
    /// granted by the driver after the peer was lost.
    alone: Option<AloneRight>,
    /// When the peer was declared lost (`None` while it is not).
    lost_at: Option<Instant>,
    events: VecDeque<Event>,
}

/// Evidence, gathered after the peer went silent, that this node is not the
/// isolated one, and until when it holds: a witness lease renewed since the
/// peer's last frame, or a ping target's answer to a probe sent since then.
///
/// `obtained_at` is when the request that proved it was *sent* (the answer
/// proves the network worked at some point after that); `valid_until` must be
/// conservative: for a lease, no later than the witness's own end of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AloneRight {
    /// When the proving request was sent.
    pub obtained_at: Instant,
    /// The right ends here: nothing is acknowledged alone at or after it.
    pub valid_until: Instant,
}

/// Whether the primary acknowledges writes now, and on what grounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    /// The peer is connected (or not yet declared lost): the protocol decides.
    Replicating,
    /// The peer is lost; acknowledging on the local store alone without
    /// evidence ([`OnPeerLoss::Continue`]).
    AloneUnguarded,
    /// The peer is lost; acknowledging alone under a right that ends then.
    AloneUntil(Instant),
    /// The peer is lost and no valid right is held: nothing new is acknowledged.
    Suspended,
}

#[derive(Debug)]
struct Entry {
    seq: Seq,
    flush: bool,
    payload: Bytes,
}

#[derive(Debug, Default, Clone, Copy)]
struct Acked {
    received: Seq,
    applied: Seq,
    flushed: Seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No handshake yet since start; the deadtime clock runs.
    Connecting,
    /// Handshake done; frames flow.
    Connected,
    /// `PeerLost` fired; degraded until the next handshake.
    Lost,
}

impl Primary {
    /// A primary with nothing submitted yet and no peer connected.
    ///
    /// If no peer connects within `deadtime`, [`Event::PeerLost`] fires and the
    /// primary commits in degraded mode. `config` should have passed
    /// [`ProtocolConfig::validate`].
    pub fn new(config: ProtocolConfig, now: Instant) -> Self {
        Self::resume(config, Seq(0), now)
    }

    /// A primary whose store already holds (durably) every mutation up to `last`:
    /// the next [`submit`](Self::submit) gets `last + 1`.
    ///
    /// Nothing before `last` is retained, so a peer behind `last` cannot be
    /// caught up by retransmission ([`ProtocolError::PeerTooFarBehind`]); that is a resync.
    pub fn resume(config: ProtocolConfig, last: Seq, now: Instant) -> Self {
        Primary {
            next_keepalive: now + config.keepalive,
            config,
            start: now,
            last_now: now,
            last_submitted: last,
            log: VecDeque::new(),
            local_applied: last,
            local_flushed: last,
            peer: Acked::default(),
            link: Link::Connecting,
            next_send: last.next(),
            last_heard: now,
            heartbeat_due: false,
            retransmit_at: None,
            committed: last,
            flushed: last,
            flush_requested: Seq(0),
            flush_sent: Seq(0),
            alone: None,
            lost_at: None,
            events: VecDeque::new(),
        }
    }

    /// Like [`resume`](Self::resume), for a node promoted while its peer is
    /// away (declared dead by the supervisor, or not connected): the peer
    /// counts as lost from `now` on, so the node acknowledges alone as soon as
    /// [`OnPeerLoss`] allows (with evidence obtained from now on), instead of
    /// first waiting a whole `deadtime` for a peer it already knows is gone.
    /// A peer that connects later is handled as after any loss.
    pub fn resume_alone(config: ProtocolConfig, last: Seq, now: Instant) -> Self {
        let mut p = Self::resume(config, last, now);
        p.link = Link::Lost;
        p.lost_at = Some(now);
        p.update_commits();
        p
    }

    /// Numbers a new mutation and queues it for the peer; returns its seq.
    ///
    /// `flush` marks a flush barrier (an fsync): wait for [`Event::Flushed`] with
    /// a seq at least this one before acknowledging the fsync.
    ///
    /// The payload is kept (shared, not copied) until the peer has it durably;
    /// a `Vec<u8>` converts without a copy.
    ///
    /// # Panics
    ///
    /// If `payload` is longer than [`MAX_PAYLOAD_LEN`] (64 MiB minus a few bytes);
    /// `twinfs-fs` mutations are far smaller.
    pub fn submit(&mut self, now: Instant, payload: impl Into<Bytes>, flush: bool) -> Seq {
        let payload = payload.into();
        assert!(
            payload.len() <= MAX_PAYLOAD_LEN,
            "mutation payload of {} bytes exceeds {MAX_PAYLOAD_LEN}",
            payload.len()
        );
        self.last_now = now;
        let seq = self.last_submitted.next();
        self.last_submitted = seq;
        self.log.push_back(Entry {
            seq,
            flush,
            payload,
        });
        trace!(seq = seq.0, flush, "submitted");
        seq
    }

    /// An fsync arrived: every mutation submitted so far must become durable as
    /// the protocol promises. Returns the barrier's seq; the fsync may return
    /// once [`Event::Flushed`] reaches it (at once if [`flushed`](Self::flushed)
    /// already has). The local store must still be synced and reported with
    /// [`local_flushed`](Self::local_flushed); the peer is sent a [`Frame::Flush`].
    pub fn request_flush(&mut self, now: Instant) -> Seq {
        self.last_now = now;
        let target = self.last_submitted;
        if target > self.flush_requested {
            self.flush_requested = target;
        }
        target
    }

    /// The last seq reported as flushed.
    pub fn flushed(&self) -> Seq {
        self.flushed
    }

    /// The application applied every mutation up to `seq` to the local store.
    pub fn local_applied(&mut self, seq: Seq) -> Result<(), ProtocolError> {
        check_report("local_applied", seq, self.last_submitted)?;
        self.local_applied = self.local_applied.max(seq);
        self.update_commits();
        Ok(())
    }

    /// The local store made every mutation up to `seq` durable.
    pub fn local_flushed(&mut self, seq: Seq) -> Result<(), ProtocolError> {
        check_report("local_flushed", seq, self.local_applied)?;
        self.local_flushed = self.local_flushed.max(seq);
        self.update_commits();
        Ok(())
    }

    /// A (new) connection to the peer completed its handshake with `hello`.
    ///
    /// Sending restarts right after the peer's `last_applied`, in order. An error
    /// means the pair cannot continue by retransmission (wrong version or role,
    /// diverged or lost history); the driver closes the connection.
    pub fn handle_reconnect(&mut self, now: Instant, hello: Hello) -> Result<(), ProtocolError> {
        self.last_now = now;
        if hello.version != PROTOCOL_VERSION {
            return Err(ProtocolError::VersionMismatch {
                peer: hello.version,
                local: PROTOCOL_VERSION,
            });
        }
        if hello.role != Role::Secondary {
            return Err(ProtocolError::RoleConflict {
                peer: hello.role,
                expected: Role::Secondary,
            });
        }
        let peer_applied = hello.last_applied;
        if peer_applied > self.last_submitted {
            return Err(ProtocolError::PeerAhead {
                peer_applied,
                submitted: self.last_submitted,
            });
        }
        // The peer restarted from its store: it may lose what it had applied but
        // never what it acknowledged as flushed, or the fsync promise is broken.
        if peer_applied < self.peer.flushed {
            return Err(ProtocolError::PeerLostDurableData {
                peer_applied,
                peer_flushed: self.peer.flushed,
            });
        }
        let oldest = self
            .log
            .front()
            .map_or(self.last_submitted.next(), |e| e.seq);
        if peer_applied.next() < oldest {
            return Err(ProtocolError::PeerTooFarBehind {
                peer_applied,
                oldest_retained: oldest,
            });
        }
        debug!(node = %hello.node, last_applied = peer_applied.0, "peer connected");
        // What the peer acknowledged on the old connection may be gone with its
        // memory; its Hello is the truth now. `committed`/`flushed` are not
        // lowered: what was reported stays reported.
        self.peer = Acked {
            received: peer_applied,
            applied: peer_applied,
            flushed: self.peer.flushed,
        };
        self.prune();
        self.next_send = peer_applied.next();
        self.link = Link::Connected;
        self.last_heard = now;
        self.next_keepalive = now + self.config.keepalive;
        self.heartbeat_due = false;
        self.retransmit_at = None;
        self.flush_sent = Seq(0);
        self.alone = None;
        self.lost_at = None;
        self.events.push_back(Event::PeerConnected {
            last_applied: peer_applied,
        });
        self.update_commits();
        Ok(())
    }

    /// A frame read from the peer.
    ///
    /// Acks are cumulative: duplicated, reordered and stale acks change nothing.
    /// Frames arriving while no connection is established (before the handshake or
    /// after [`Event::PeerLost`]) belong to a dead connection and are ignored.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), ProtocolError> {
        self.last_now = now;
        if let Frame::Hello(hello) = frame {
            return self.handle_reconnect(now, hello);
        }
        if self.link != Link::Connected {
            trace!(frame = frame.name(), "ignored: not connected");
            return Ok(());
        }
        self.last_heard = now;
        match frame {
            Frame::Ack {
                received,
                applied,
                flushed,
            } => self.handle_ack(now, received, applied, flushed)?,
            Frame::Heartbeat { .. } => {}
            Frame::Goodbye { reason } => {
                debug!(%reason, "peer said goodbye");
                self.lose_peer();
            }
            Frame::Mutation { .. }
            | Frame::Flush { .. }
            | Frame::ResyncRequest { .. }
            | Frame::ResyncData { .. }
            | Frame::ResyncDone { .. }
            | Frame::ResyncKeys { .. }
            | Frame::Report { .. }
            | Frame::VerifyRequest { .. }
            | Frame::VerifyResponse { .. }
            | Frame::Repair { .. }
            | Frame::Hello(_) => {
                return Err(ProtocolError::UnexpectedFrame {
                    frame: frame.name(),
                    side: Role::Primary,
                })
            }
        }
        Ok(())
    }

    fn handle_ack(
        &mut self,
        now: Instant,
        received: Seq,
        applied: Seq,
        flushed: Seq,
    ) -> Result<(), ProtocolError> {
        if received > self.last_submitted {
            return Err(ProtocolError::AckBeyondSubmitted {
                acked: received,
                submitted: self.last_submitted,
            });
        }
        if applied > received || flushed > applied {
            return Err(ProtocolError::InconsistentAck {
                received,
                applied,
                flushed,
            });
        }
        if received > self.peer.received {
            self.peer.received = received;
            // Progress: give the rest of the window a full interval again.
            self.retransmit_at = if self.outstanding() {
                Some(now + self.config.keepalive)
            } else {
                None
            };
        }
        self.peer.applied = self.peer.applied.max(applied);
        self.peer.flushed = self.peer.flushed.max(flushed);
        // After a go-back the peer may already hold what we were about to resend.
        self.next_send = self.next_send.max(self.peer.received.next());
        self.prune();
        self.update_commits();
        Ok(())
    }

    /// The instant from [`poll_timeout`](Self::poll_timeout) has passed (calling it
    /// early or twice is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        if self.link == Link::Lost {
            return;
        }
        if now >= self.last_heard + self.config.deadtime {
            self.lose_peer();
            return;
        }
        if self.link != Link::Connected {
            return;
        }
        if now >= self.next_keepalive {
            self.heartbeat_due = true;
            self.next_keepalive = now + self.config.keepalive;
        }
        if self.retransmit_at.is_some_and(|at| now >= at) {
            // Go back N: the replica drops what it already has and buffers the
            // rest, so resending the whole unacknowledged window keeps order.
            trace!(
                from = self.peer.received.next().0,
                to = (self.next_send.0 - 1),
                "retransmit"
            );
            self.next_send = self.peer.received.next();
            self.flush_sent = self.peer.flushed;
            self.retransmit_at = Some(now + self.config.keepalive);
        }
    }

    /// The next frame to write to the peer, in order.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if self.link != Link::Connected {
            return None;
        }
        if std::mem::take(&mut self.heartbeat_due) {
            return Some(Frame::Heartbeat {
                now_ms: millis_since(self.start, self.last_now),
            });
        }
        // Flow control on what the peer has applied bounds both the replica's
        // buffers and how far it can fall behind.
        let window_open =
            self.next_send.0 - self.peer.applied.0 <= self.config.max_in_flight as u64;
        // A barrier goes out once every mutation it covers is on the wire.
        let barrier = self.flush_requested;
        if barrier > self.flush_sent && barrier > self.peer.flushed && self.next_send > barrier {
            self.flush_sent = barrier;
            return Some(Frame::Flush { seq: barrier });
        }
        if self.next_send > self.last_submitted || !window_open {
            return None;
        }
        let entry = &self.log[self.index(self.next_send)];
        let frame = Frame::Mutation {
            seq: entry.seq,
            flush: entry.flush,
            payload: entry.payload.clone(),
        };
        self.next_send = self.next_send.next();
        if self.retransmit_at.is_none() {
            self.retransmit_at = Some(self.last_now + self.config.keepalive);
        }
        Some(frame)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.last_heard + self.config.deadtime;
        match self.link {
            Link::Lost => None,
            Link::Connecting => Some(deadline),
            Link::Connected => {
                let t = deadline.min(self.next_keepalive);
                Some(self.retransmit_at.map_or(t, |r| r.min(t)))
            }
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The last seq handed out by [`submit`](Self::submit).
    pub fn last_submitted(&self) -> Seq {
        self.last_submitted
    }

    /// Whether writes are held back because the peer is lost and this node
    /// may not acknowledge alone (now: the time of the latest input).
    pub fn is_suspended(&self) -> bool {
        self.ack_state(self.last_now) == AckState::Suspended
    }

    /// Grants the right to acknowledge alone (under [`OnPeerLoss::WithEvidence`])
    /// until `right.valid_until`. Refused (returns `false`, nothing changes)
    /// unless the peer is lost, the evidence was obtained at or after the
    /// moment it was declared lost ([`lost_at`](Self::lost_at)), and it has
    /// not expired at `now`. Evidence from before proves nothing about who is
    /// cut off: a probe answered just before a cable was pulled, after the
    /// peer's last heartbeat, would otherwise count.
    ///
    /// The driver must have made its own state ready for writing alone (a new
    /// generation on disk) before it calls this: commits may follow at once.
    /// A later grant replaces an earlier one; an expired right simply stops
    /// further commits (what was acknowledged stays acknowledged).
    pub fn grant_alone(&mut self, now: Instant, right: AloneRight) -> bool {
        self.last_now = now;
        if self.lost_at.is_none_or(|lost| right.obtained_at < lost) || now >= right.valid_until {
            return false;
        }
        if self.alone.is_none_or(|a| a.valid_until < right.valid_until) {
            self.alone = Some(right);
        }
        self.update_commits();
        true
    }

    /// When the peer was last heard (a frame, or the handshake).
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// When the peer was declared lost, while it is: evidence for
    /// [`grant_alone`](Self::grant_alone) must be obtained at or after it.
    pub fn lost_at(&self) -> Option<Instant> {
        self.lost_at
    }

    /// Whether and why writes are acknowledged at `now`.
    pub fn ack_state(&self, now: Instant) -> AckState {
        if self.link != Link::Lost {
            return AckState::Replicating;
        }
        match self.config.on_peer_loss {
            OnPeerLoss::Continue => AckState::AloneUnguarded,
            OnPeerLoss::Suspend => AckState::Suspended,
            OnPeerLoss::WithEvidence => match self.alone {
                Some(a) if now < a.valid_until => AckState::AloneUntil(a.valid_until),
                _ => AckState::Suspended,
            },
        }
    }

    /// What the peer acknowledged as applied on the current connection.
    pub fn peer_applied(&self) -> Seq {
        self.peer.applied
    }

    /// Bytes of mutation payload submitted but not yet applied by the peer.
    pub fn lag_bytes(&self) -> u64 {
        self.log
            .iter()
            .filter(|e| e.seq > self.peer.applied)
            .map(|e| e.payload.len() as u64)
            .sum()
    }

    /// Whether the primary is in degraded mode (peer lost, committing locally).
    pub fn is_degraded(&self) -> bool {
        self.link == Link::Lost
    }

    /// Whether a connection is established.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Connected
    }

    /// The first seq the peer may be missing: the first one it has not acknowledged
    /// as flushed, since a peer that restarts may lose anything newer. A resync of
    /// a peer that was lost starts here.
    pub fn resync_from(&self) -> Seq {
        self.peer.flushed.next()
    }

    /// The lowest seq the peer can be caught up from by retransmission: one
    /// past the last seq it acknowledged as flushed, or past the position this
    /// state machine resumed at if nothing earlier is retained.
    pub fn retransmit_from(&self) -> Seq {
        self.log
            .front()
            .map_or(self.last_submitted, |e| Seq(e.seq.0 - 1))
    }

    /// The last seq the peer acknowledged as flushed.
    pub fn peer_flushed(&self) -> Seq {
        self.peer.flushed
    }

    /// The last seq reported as committed.
    pub fn committed(&self) -> Seq {
        self.committed
    }

    /// Payload bytes retained for retransmission.
    pub fn retained_bytes(&self) -> u64 {
        self.log.iter().map(|e| e.payload.len() as u64).sum()
    }

    /// Drops every retained mutation while the peer is lost (a long outage
    /// must not hold the whole write history in memory). The peer can then no
    /// longer be caught up by retransmission: its next handshake fails with
    /// [`ProtocolError::PeerTooFarBehind`], and the driver resyncs it from the store.
    /// Does nothing while connected.
    pub fn forget_retained(&mut self) {
        if self.link == Link::Lost {
            self.log.clear();
        }
    }

    /// Mutations retained for retransmission (not yet flushed on the peer).
    pub fn retained(&self) -> usize {
        self.log.len()
    }

    fn lose_peer(&mut self) {
        debug!(resync_from = self.resync_from().0, "peer lost");
        self.link = Link::Lost;
        self.alone = None;
        self.lost_at = Some(self.last_now);
        self.heartbeat_due = false;
        self.retransmit_at = None;
        self.events.push_back(Event::PeerLost);
        // Degraded mode: what the local store holds is committed from now on.
        self.update_commits();
    }

    fn outstanding(&self) -> bool {
        self.peer.received.next() < self.next_send
    }

    fn index(&self, seq: Seq) -> usize {
        let front = self.log.front().expect("seq is retained").seq;
        (seq.0 - front.0) as usize
    }

    fn prune(&mut self) {
        while self.log.front().is_some_and(|e| e.seq <= self.peer.flushed) {
            self.log.pop_front();
        }
    }

    fn update_commits(&mut self) {
        // Suspended: nothing is acknowledged until the peer is back and has it,
        // or (with evidence) until a right to acknowledge alone is granted.
        let local_only = matches!(
            self.ack_state(self.last_now),
            AckState::AloneUnguarded | AckState::AloneUntil(_)
        );
        let committed = match self.config.protocol {
            _ if local_only => self.local_applied,
            Protocol::A => self.local_applied,
            Protocol::B => self.local_applied.min(self.peer.received),
            Protocol::C => self.local_applied.min(self.peer.applied),
        };
        if committed > self.committed {
            self.committed = committed;
            self.events.push_back(Event::Committed(committed));
        }
        let flushed = match self.config.protocol {
            Protocol::A => self.local_flushed,
            _ if local_only => self.local_flushed,
            Protocol::B | Protocol::C => self.local_flushed.min(self.peer.flushed),
        };
        if flushed > self.flushed {
            self.flushed = flushed;
            self.events.push_back(Event::Flushed(flushed));
        }
    }
}

pub(crate) fn check_report(what: &'static str, seq: Seq, limit: Seq) -> Result<(), ProtocolError> {
    if seq > limit {
        return Err(ProtocolError::ReportBeyondLimit { what, seq, limit });
    }
    Ok(())
}

pub(crate) fn millis_since(start: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}
