//! Connections: the hello each side sends, the plan made of the two (follow,
//! resync, refuse, split brain), refusals, and where each frame goes.

use super::{Close, Conn, Host, NodeCore, Output, RoleState, Unmounting};
use crate::{
    plan, DiskState, Frame, Generation, Hello, LocalView, Plan, Replica, Role, Seq, Side,
    PROTOCOL_VERSION,
};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::debug;

impl NodeCore {
    /// A new connection to the peer (replacing any older one): the core
    /// sends its hello.
    pub fn connected(&mut self, id: u64, addr: SocketAddr, host: &dyn Host) {
        let hello = self.hello(host);
        self.outputs.push_back(Output::Send(Frame::Hello(hello)));
        self.abandon_resync();
        self.conn = Some(Conn {
            id,
            addr,
            refused: false,
            peer: None,
            hello_seen: false,
            verifies_answered: 0,
            verify_answering: false,
        });
    }

    /// The connection `id` went away with `reason`. Returns false if it was
    /// not the current one.
    pub fn disconnected(&mut self, id: u64, reason: &str) -> bool {
        if self.conn.as_ref().is_none_or(|c| c.id != id) {
            return false;
        }
        self.abandon_resync();
        self.lag.forget_pending();
        let c = self.conn.take().expect("checked");
        if c.peer.is_some() {
            self.note(format!("connection to {} closed: {reason}", c.addr));
        } else {
            debug!(peer = %c.addr, "connection closed before the handshake: {reason}");
        }
        true
    }

    /// Whether `id` is the current connection.
    pub fn is_current(&self, id: u64) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id == id)
    }

    /// Whether this node refuses the peer (the dialer waits longer then).
    pub fn refusing(&self) -> bool {
        self.refusing
    }

    fn hello(&self, host: &dyn Host) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node: self.cfg.name.clone(),
            generation: Generation(self.state.generation),
            last_applied: host.last_applied(),
            role: self.state.role,
            disk: self.state.disk,
            shared: Generation(self.state.shared),
            changed_blocks: self.changed_blocks(host),
            primary_since_ms: self.state.primary_since_ms,
            floor: Seq(self.state.floor),
        }
    }

    /// Closes the current connection with `reason`, which the status shows
    /// until a later handshake succeeds.
    pub fn refuse(&mut self, reason: String) {
        if self.refusal.as_deref() != Some(reason.as_str()) {
            let addr = self.conn.as_ref().map_or(self.cfg.peer, |c| c.addr);
            tracing::error!(peer = %addr, "refusing the peer: {reason}");
            self.note(format!("refusing the peer {addr}: {reason}"));
        }
        self.refusal = Some(reason.clone());
        self.refusing = true;
        if let Some(c) = &mut self.conn {
            if c.refused {
                return;
            }
            c.refused = true;
            c.peer = None;
            self.outputs.push_back(Output::Close {
                how: Close::Refused,
                reason,
            });
        }
    }

    /// Drops the connection so that a fresh handshake states the new role.
    pub(super) fn reconnect(&mut self, why: &str) {
        if self.conn.take().is_some() {
            self.outputs.push_back(Output::Close {
                how: Close::Reconnect,
                reason: why.into(),
            });
        }
    }

    /// A frame from the peer on connection `id` (frames of an older
    /// connection are dropped).
    pub fn handle_frame(&mut self, now: Instant, id: u64, frame: Frame, host: &mut dyn Host) {
        if !self.is_current(id) {
            return;
        }
        self.last_frame_at = Some(now);
        if matches!(frame, Frame::Hello(_)) {
            if let Some(c) = &mut self.conn {
                c.hello_seen = true;
            }
        }
        if let Frame::Report { payload } = frame {
            if self.conn.as_ref().is_none_or(|c| !c.hello_seen) {
                self.refuse("the peer sent a report frame before its hello".into());
                return;
            }
            self.outputs.push_back(Output::PeerReport(payload));
            return;
        }
        if self.conn.as_ref().is_some_and(|c| c.refused) {
            return;
        }
        let handshaken = self.peer().is_some();
        if let Frame::Hello(h) = frame {
            self.handshake(now, h, host);
            return;
        }
        if !handshaken {
            let reason = format!("the peer sent a {} frame before its hello", frame.name());
            self.refuse(reason);
            return;
        }
        match frame {
            Frame::Goodbye { reason } => {
                let addr = self.conn.as_ref().map(|c| c.addr);
                if let Some(addr) = addr {
                    self.note(format!("peer {addr} said goodbye: {reason}"));
                }
                // The connection ends with it; the state machines notice by deadtime.
                return;
            }
            Frame::ResyncRequest { floor } => return self.resync_requested(now, floor),
            Frame::ResyncKeys {
                last,
                known,
                payload,
            } => return self.resync_keys(last, known, payload),
            Frame::ResyncData { payload } => return self.resync_data(payload, host),
            Frame::VerifyRequest { payload } => return self.verify_requested(payload),
            Frame::VerifyResponse { payload } => {
                self.outputs.push_back(Output::VerifyAnswered(payload));
                return;
            }
            Frame::Repair { payload } => return self.repair_received(payload),
            Frame::ResyncDone {
                position,
                consistent_at,
                generation,
            } => return self.resync_done(position, consistent_at, generation, host),
            _ => {}
        }
        let result = match &mut self.role {
            RoleState::Primary {
                primary, need_ack, ..
            } => {
                if matches!(frame, Frame::Ack { .. }) {
                    *need_ack = false;
                }
                primary.handle_frame(now, frame)
            }
            RoleState::Secondary {
                replica: Some(r), ..
            } => {
                if matches!(frame, Frame::Flush { .. }) {
                    self.last_flush_request = Some(now);
                }
                r.handle_frame(now, frame)
            }
            RoleState::Secondary { replica: None, .. } => {
                // Between a resync's end and its jump: the stream waits here.
                if self.pending_jump.is_some() {
                    self.early_frames.push(frame);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            self.refuse(format!("protocol error: {e}"));
        }
    }

    fn local_view(&self, host: &dyn Host) -> LocalView {
        let (role, can_retransmit_from) = match &self.role {
            RoleState::Primary {
                primary, vouched, ..
            } => (Role::Primary, vouched.then(|| primary.retransmit_from())),
            RoleState::Secondary { .. } => (Role::Secondary, None),
        };
        LocalView {
            role,
            disk: self.state.disk,
            history: self.state.history(self.changed_blocks(host)),
            last_applied: host.last_applied(),
            floor: Seq(self.state.floor),
            can_retransmit_from,
        }
    }

    fn handshake(&mut self, now: Instant, h: Hello, host: &mut dyn Host) {
        if h.version != PROTOCOL_VERSION {
            self.refuse(format!(
                "peer {} speaks replication protocol {}, this node {}",
                h.node, h.version, PROTOCOL_VERSION
            ));
            return;
        }
        let local = self.local_view(host);
        let plan = plan(&local, &h, self.cfg.split_brain);
        debug!(?plan, peer = %h.node, "handshake");
        let addr = self.conn.as_ref().map_or(self.cfg.peer, |c| c.addr);
        match plan {
            Plan::Refuse { reason } => {
                self.refuse(reason);
                return;
            }
            Plan::SplitBrain { reason } => {
                self.outputs.push_back(Output::SplitBrain {
                    reason: reason.clone(),
                    peer: h,
                });
                self.refuse(reason);
                return;
            }
            _ => {}
        }
        self.outputs.push_back(Output::SplitBrainCleared);
        self.refusal = None;
        self.refusing = false;
        self.counters.connections += 1;
        self.note(format!(
            "connected to {} ({}, generation {}, disk {}, seq {}) at {addr}",
            h.node, h.role, h.generation, h.disk, h.last_applied
        ));
        self.peer_name = Some(h.node.clone());
        if let Some(c) = &mut self.conn {
            c.peer = Some(h.clone());
        }
        match plan {
            Plan::Refuse { .. } | Plan::SplitBrain { .. } => unreachable!("handled above"),
            Plan::Idle => {
                // Two secondaries with the same data: what both hold is common ground.
                if h.generation.0 == self.state.generation
                    && h.last_applied == local.last_applied
                    && self.state.disk == DiskState::UpToDate
                    && h.disk == DiskState::UpToDate
                {
                    self.raise_floor(now, local.last_applied, true, host);
                }
            }
            Plan::Follow => self.follow(now, &h, host),
            Plan::Resync {
                source: Side::Local,
                floor,
                ..
            } => self.start_resync_source(now, floor, "the peer is behind or diverged"),
            Plan::Resync {
                source: Side::Peer,
                demote_target,
                ..
            } => {
                if demote_target {
                    self.note(format!(
                        "the split-brain policy ({:?}) discards this node's changes: demoting to resync from {}",
                        self.cfg.split_brain, h.node
                    ));
                    self.pending_sb_demote = true;
                    if self.unmounting.is_none() {
                        self.unmounting = Some(Unmounting::Victim);
                        let leave = self.leave_mount();
                        self.outputs.push_back(leave);
                    }
                } else if let RoleState::Secondary { replica, .. } = &mut self.role {
                    // The primary will ask for our keys; nothing to follow meanwhile.
                    *replica = None;
                }
            }
        }
    }

    /// The secondary follows a primary (or the primary starts sending to one).
    fn follow(&mut self, now: Instant, h: &Hello, host: &mut dyn Host) {
        match &mut self.role {
            RoleState::Primary {
                primary,
                catch_up,
                vouched,
                ..
            } => match primary.handle_reconnect(now, h.clone()) {
                Ok(()) => {
                    *vouched = true;
                    if h.last_applied < primary.last_submitted() {
                        *catch_up = Some(primary.last_submitted());
                    }
                }
                Err(e) => {
                    let floor = Seq(self.state.floor.min(h.floor.0));
                    self.start_resync_source(now, floor, &format!("{e}"));
                }
            },
            RoleState::Secondary { .. } => {
                if let Err(e) = host.sync() {
                    self.refuse(format!("cannot sync the local store: {e}"));
                    return;
                }
                let applied = host.last_applied();
                let mut r = Replica::new(self.cfg.protocol.clone(), applied, now);
                if let Err(e) = r.handle_frame(now, Frame::Hello(h.clone())) {
                    self.refuse(format!("peer {}: {e}", h.node));
                    return;
                }
                let behind = applied < h.last_applied || h.generation.0 != self.state.generation;
                if let RoleState::Secondary {
                    replica,
                    catch_up,
                    sync_asked,
                } = &mut self.role
                {
                    *replica = Some(r);
                    *sync_asked = applied;
                    *catch_up = behind.then_some((h.last_applied, h.generation));
                }
                if behind && self.state.disk == DiskState::UpToDate {
                    self.state.disk = DiskState::Outdated;
                    self.save(host);
                }
            }
        }
    }

    /// (Secondary) an online verify request: answered by the driver, in
    /// stream order, one at a time.
    fn verify_requested(&mut self, payload: Vec<u8>) {
        if self.role() == Role::Primary {
            self.refuse("the peer sent a verify request to the primary".into());
            return;
        }
        // One at a time: a peer may not queue unbounded digest work here.
        if self.conn.as_ref().is_some_and(|c| c.verify_answering) {
            self.refuse(
                "the peer sent a verify request while the previous one is still being answered"
                    .into(),
            );
            return;
        }
        if let Some(c) = &mut self.conn {
            c.verify_answering = true;
        }
        self.outputs.push_back(Output::AnswerVerify(payload));
    }

    /// (Secondary) the answer to a verify request is on its way to the peer.
    pub fn verify_answer_sent(&mut self) {
        if let Some(c) = &mut self.conn {
            if c.verify_answering {
                c.verify_answering = false;
                c.verifies_answered += 1;
            }
        }
    }

    /// (Secondary) the primary's repair values.
    fn repair_received(&mut self, payload: Vec<u8>) {
        if self.role() == Role::Primary {
            self.refuse("the peer sent repair data to the primary".into());
            return;
        }
        // Repairs answer a verify: without one on this connection they are
        // not the primary's to send.
        if self.conn.as_ref().is_none_or(|c| c.verifies_answered == 0) {
            self.refuse("the peer sent repair data without a running online verify".into());
            return;
        }
        self.note(format!(
            "online verify: applying {} bytes of repairs",
            payload.len()
        ));
        self.outputs.push_back(Output::ApplyLocal(payload));
    }

    /// (Primary) whether an online verify may start now.
    pub fn may_verify(&self) -> Result<(), &'static str> {
        if self.role() != Role::Primary {
            Err("run it on the primary (its data is the reference)")
        } else if !self
            .conn
            .as_ref()
            .is_some_and(|c| c.peer.is_some() && !c.refused)
        {
            Err("the peer is not connected")
        } else if self.resync.is_some() {
            Err("a resync is running")
        } else {
            Ok(())
        }
    }
}
