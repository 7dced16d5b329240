//! Moving work along: the primary's local writes into the protocol, the
//! replica's mutations out to the driver, catching up, the floor, the peer's
//! death and the right to acknowledge alone.

use super::{AckKind, Evidence, Host, LocalWrite, NodeCore, Output, RoleState, MAX_RETAINED};
use crate::{AckState, DiskState, Event, Frame, Generation, OnPeerLoss, Seq};
use std::time::{Duration, Instant};
use tracing::{debug, error, warn};

/// How often a primary that lost its peer looks for new evidence.
pub(super) const EVIDENCE_POLL: Duration = Duration::from_millis(20);

/// A secondary syncs each applied mutation ahead of its flush request while
/// the primary has asked for a flush within this window.
const SYNC_AHEAD_WINDOW: Duration = Duration::from_millis(100);

/// The floor is saved in the background at most this often: after a crash
/// the floor on disk may lag by that much, which only makes the next resync
/// a little larger.
const FLOOR_SAVE_EVERY: Duration = Duration::from_millis(200);

/// A duration as the notes write it: "1s", "1500ms".
pub(super) fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl NodeCore {
    /// (Primary) a write of the local filesystem.
    pub fn local_write(&mut self, now: Instant, write: LocalWrite) {
        let RoleState::Primary { primary, .. } = &mut self.role else {
            return;
        };
        match write {
            LocalWrite::Applied(seq, bytes) => {
                let s = primary.submit(now, bytes, false);
                debug_assert_eq!(s, seq, "store and protocol numbering agree");
                // Reported as applied before the writer's own append is done:
                // the writer waits for the commit only after it, so no write
                // returns before both stores have it.
                if let Err(e) = primary.local_applied(s) {
                    error!("bug: {e}");
                }
            }
            LocalWrite::Flush => {
                let barrier = primary.request_flush(now);
                // The fsync syncs the local store itself before it waits.
                if let Err(e) = primary.local_flushed(barrier) {
                    error!("bug: {e}");
                }
            }
        }
    }

    /// (Secondary) the driver applied the mutation `seq`.
    pub fn applied(&mut self, seq: Seq) {
        if let RoleState::Secondary {
            replica: Some(r), ..
        } = &mut self.role
        {
            self.counters.mutations_applied += 1;
            self.lag.applied(seq);
            if let Err(e) = r.applied(seq) {
                debug!("stale apply report: {e}");
            }
        }
    }

    /// (Secondary) the store is durable up to `seq`.
    pub fn flushed(&mut self, seq: Seq) {
        if let RoleState::Secondary {
            replica: Some(r), ..
        } = &mut self.role
        {
            if let Err(e) = r.flushed(seq.min(r.last_applied())) {
                debug!("stale flush report: {e}");
            }
        }
    }

    /// (Secondary) a sync started ahead of a flush request covers `seq`: a
    /// flush request it was trusted to cover and did not is asked for again.
    pub fn synced_ahead(&mut self, seq: Seq) {
        if let RoleState::Secondary { sync_asked, .. } = &mut self.role {
            *sync_asked = (*sync_asked).min(seq);
        }
        self.flushed(seq);
    }

    /// (Secondary) whether to sync what was applied now, ahead of the flush
    /// request: while the primary asks for a flush after nearly every write
    /// (an fsync-heavy application), the sync then starts one round trip
    /// sooner. Only the report of a finished sync counts as flushed.
    pub fn sync_ahead_due(&self, now: Instant) -> Option<Seq> {
        let RoleState::Secondary {
            replica: Some(r),
            sync_asked,
            ..
        } = &self.role
        else {
            return None;
        };
        let applied = r.last_applied();
        (applied > r.last_flushed()
            && applied > *sync_asked
            && self
                .last_flush_request
                .is_some_and(|t| now.saturating_duration_since(t) < SYNC_AHEAD_WINDOW))
        .then_some(applied)
    }

    /// The driver could not apply or sync what the peer sent.
    pub fn apply_failed(&mut self, reason: &str) {
        let reason = format!("cannot apply the primary's mutations: {reason}");
        error!("{reason}");
        self.refuse(reason);
    }

    /// A background save of the state finished.
    pub fn background_saved(&mut self, result: Result<(), String>) {
        self.floor_saving = false;
        if let Err(e) = result {
            self.state_save_failed(e);
        }
    }

    /// Moves work between the state machines and the driver. Call after
    /// every input; `evidence` is asked only while
    /// [`NodeCore::wants_evidence`].
    pub fn drive(
        &mut self,
        now: Instant,
        host: &mut dyn Host,
        evidence: impl FnOnce() -> Option<Evidence>,
    ) {
        self.check_alone(now, host, evidence);
        self.release_suspended_writes(now);
        let mut lost = false;
        let mut caught_up = None;
        let mut new_floor = None;
        let mut forgot = false;
        let steady = self.resync.is_none() && self.pending_jump.is_none();
        match &mut self.role {
            RoleState::Primary {
                primary,
                catch_up,
                need_ack,
                ..
            } => {
                while let Some(frame) = primary.poll_transmit() {
                    if let Frame::Mutation { payload, .. } = &frame {
                        self.counters.mutations_sent += 1;
                        self.counters.mutation_bytes_sent += payload.len() as u64;
                    }
                    if self.conn.is_some() {
                        self.outputs.push_back(Output::Send(frame));
                    }
                }
                while let Some(ev) = primary.poll_event() {
                    lost |= ev == Event::PeerLost;
                }
                if primary.is_degraded() && primary.retained_bytes() > MAX_RETAINED {
                    primary.forget_retained();
                    forgot = true;
                }
                if !*need_ack && catch_up.is_some_and(|t| primary.peer_applied() >= t) {
                    *catch_up = None;
                    caught_up = Some(Generation(self.state.generation));
                }
                if steady && catch_up.is_none() && primary.is_connected() {
                    // The peer may be a step ahead of the local store (the
                    // record goes out before the local append): the floor is
                    // what both hold.
                    new_floor = Some(primary.peer_flushed().min(host.last_applied()));
                }
            }
            RoleState::Secondary {
                replica: Some(r),
                catch_up,
                sync_asked,
            } => {
                while let Some((seq, payload, _flush)) = r.poll_apply() {
                    self.lag.handed_out(seq, payload.len() as u64, now);
                    self.outputs.push_back(Output::Apply(seq, payload));
                }
                if let Some(s) = r.poll_flush() {
                    if s > *sync_asked {
                        *sync_asked = s;
                        self.outputs.push_back(Output::Sync(s));
                    }
                }
                while let Some(frame) = r.poll_transmit() {
                    if self.conn.is_some() {
                        self.outputs.push_back(Output::Send(frame));
                    }
                }
                while let Some(ev) = r.poll_event() {
                    lost |= ev == Event::PeerLost;
                }
                if let Some((target, g)) = *catch_up {
                    if steady && r.last_applied() >= target {
                        *catch_up = None;
                        caught_up = Some(g);
                    }
                }
                if steady && catch_up.is_none() && self.state.disk == DiskState::UpToDate {
                    new_floor = Some(r.last_flushed());
                }
            }
            RoleState::Secondary { replica: None, .. } => {}
        }
        if let Some(g) = caught_up {
            if self.state.generation != g.0 {
                self.state.generation_start = host.last_applied().0;
            }
            self.state.generation = g.0;
            self.state.shared = g.0;
            self.state.disk = DiskState::UpToDate;
            self.save(host);
            self.note(format!("in sync with the peer (generation {g})"));
        }
        if let Some(f) = new_floor {
            self.raise_floor(now, f, false, host);
        }
        if forgot {
            self.note(format!(
                "the peer has been away for more than {} MiB of writes: dropped them from memory; it will be resynced from the store",
                MAX_RETAINED >> 20
            ));
        }
        if lost {
            self.peer_lost(host);
        }
        self.note_lag(now);
        self.update_view();
    }

    /// Everything up to `floor` is identical on both nodes: remember it (and
    /// let the store drop the log records up to it).
    pub(super) fn raise_floor(
        &mut self,
        now: Instant,
        floor: Seq,
        save_now: bool,
        host: &mut dyn Host,
    ) {
        if floor.0 > self.state.floor {
            self.state.floor = floor.0;
            self.outputs.push_back(Output::RetainFloor(floor));
        }
        let due = self
            .floor_saved_at
            .is_none_or(|t| now.saturating_duration_since(t) >= FLOOR_SAVE_EVERY);
        if save_now {
            self.floor_saved = self.state.floor;
            self.floor_saved_at = Some(now);
            self.save(host);
        } else if self.state.floor != self.floor_saved && due && !self.floor_saving {
            self.floor_saving = true;
            self.outputs.push_back(Output::SaveInBackground);
            self.floor_saved = self.state.floor;
            self.floor_saved_at = Some(now);
        }
    }

    fn peer_lost(&mut self, host: &mut dyn Host) {
        self.counters.peer_losses += 1;
        let deadtime = human(self.cfg.protocol.deadtime);
        match self.role {
            RoleState::Primary { .. } => {
                if self.cfg.protocol.on_peer_loss != OnPeerLoss::Continue {
                    // Suspended, or alone once evidence comes: `check_alone`
                    // notes it and starts the new generation then.
                    return;
                }
                if !self.state.diverged() {
                    self.state.generation = host.new_generation();
                    self.state.generation_start = host.last_applied().0;
                }
                self.save(host);
                self.note(format!(
                    "peer lost (nothing heard for {deadtime}): continuing alone in generation {}",
                    Generation(self.state.generation)
                ));
            }
            RoleState::Secondary { .. } => {
                self.note(format!("primary lost (nothing heard for {deadtime})"));
            }
        }
    }

    /// The right to acknowledge alone: while the peer is lost, hands fresh
    /// evidence to the protocol core, first starting a new generation on disk
    /// (writes acknowledged alone must make the peer a resync target, or a
    /// split brain if it promoted meanwhile). Notes every change between
    /// replicating, alone and suspended.
    fn check_alone(
        &mut self,
        now: Instant,
        host: &mut dyn Host,
        evidence: impl FnOnce() -> Option<Evidence>,
    ) {
        let fresh = if self.wants_evidence() {
            let RoleState::Primary { primary, .. } = &self.role else {
                return;
            };
            let lost_at = primary.lost_at();
            evidence().filter(|ev| {
                lost_at.is_some_and(|lost| ev.obtained_at >= lost) && now < ev.valid_until
            })
        } else {
            None
        };
        if let Some(ev) = fresh {
            if !self.state.diverged() {
                let (g, start) = (self.state.generation, self.state.generation_start);
                self.state.generation = host.new_generation();
                self.state.generation_start = host.last_applied().0;
                if let Err(e) = host.save(&self.state) {
                    // Without the new generation on disk, nothing may be
                    // acknowledged alone: stay suspended, try again later.
                    self.state.generation = g;
                    self.state.generation_start = start;
                    warn!(
                        "cannot start a new generation to write alone: {e}; writes stay suspended"
                    );
                    return;
                }
            }
            let RoleState::Primary { primary, .. } = &mut self.role else {
                return;
            };
            let right = crate::AloneRight {
                obtained_at: ev.obtained_at,
                valid_until: ev.valid_until,
            };
            if primary.grant_alone(now, right) {
                self.alone_on = Some(ev);
            }
        }
        let RoleState::Primary { primary, .. } = &self.role else {
            return;
        };
        let kind = AckKind::of(primary.ack_state(now));
        if kind == self.ack_noted {
            return;
        }
        let was = std::mem::replace(&mut self.ack_noted, kind);
        let deadtime = human(self.cfg.protocol.deadtime);
        let generation = Generation(self.state.generation);
        match kind {
            AckKind::Suspended => {
                self.suspended_since = Some(now);
                self.counters.suspensions += 1;
                let why = if was == AckKind::Alone {
                    "the evidence to acknowledge alone expired and was not renewed".to_string()
                } else if self.cfg.protocol.on_peer_loss == OnPeerLoss::Suspend {
                    format!(
                        "peer lost (nothing heard for {deadtime}) and on_peer_loss = \"suspend\""
                    )
                } else {
                    format!("peer lost (nothing heard for {deadtime})")
                };
                self.note(format!(
                    "writes SUSPENDED: {why}; nothing is acknowledged until {} shows this \
                     node is not the isolated one, or the peer is back",
                    self.cfg.evidence_source
                ));
            }
            AckKind::Alone => {
                let what = self
                    .alone_on
                    .as_ref()
                    .map_or_else(|| "evidence held".into(), |e| e.what.clone());
                let held = self.suspended_since.take().map(|t| now - t);
                self.note(format!(
                    "acknowledging writes ALONE in generation {generation}: {what}{}",
                    held.map(|d| format!(" (writes were suspended for {:.2} s)", d.as_secs_f64()))
                        .unwrap_or_default()
                ));
            }
            AckKind::Unguarded => {
                self.note(format!(
                    "acknowledging writes ALONE WITHOUT EVIDENCE in generation {generation}: no \
                     witness and no ping target, so this node cannot tell a dead peer from its \
                     own isolation; a cut cable can cause a split brain"
                ));
            }
            AckKind::Replicating => {
                self.suspended_since = None;
                self.alone_on = None;
            }
        }
    }

    /// A demotion (or shutdown) that finds writes suspended fails them: they
    /// were never acknowledged, only a peer that is gone could commit them,
    /// and a writer blocked in one keeps the mount busy.
    pub(super) fn release_suspended_writes(&mut self, now: Instant) {
        if self.unmounting.is_none() || !self.writes_open {
            return;
        }
        let RoleState::Primary { primary, .. } = &self.role else {
            return;
        };
        if primary.ack_state(now) != AckState::Suspended {
            return;
        }
        let why = "the node is being demoted while its writes are suspended (peer lost, no \
                   evidence): they were never acknowledged and now fail";
        self.close_writes(why.into());
        self.note(why.into());
    }

    /// Every write fails from now on.
    pub(super) fn close_writes(&mut self, why: String) {
        self.writes_open = false;
        self.outputs.push_back(Output::CloseWrites(why));
    }
}
