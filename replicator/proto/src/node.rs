//! The node core: every decision of a replication node, as a pure state
//! machine (issue 14).
//!
//! [`NodeCore`] owns the node's role (with its [`Primary`] or [`Replica`]),
//! its persistent [`NodeState`] (disk state, generations, floor), the
//! logical state of the connection to the peer (handshake, refusal), the
//! steps of a resync, the split-brain decision, the promotion and demotion
//! checks and the peer-death timing. It does no I/O and reads no clock: time
//! comes in as an argument, the few synchronous things it needs from the
//! local store and the state file come through the [`Host`] trait (as
//! raft-rs's `Storage`), and everything else it wants done is an [`Output`]
//! the driver takes with [`NodeCore::poll_output`]: frames to send, mutations
//! to apply, a resync to ship, a mount, a note for the status.
//!
//! `twinfs-replicator`'s node task is the driver on a real QUIC link and a
//! real store; `tests/node_sim.rs` drives two cores over a simulated network.
//!
//! Inputs, in the order a driver typically feeds them:
//! - [`NodeCore::connected`] / [`NodeCore::disconnected`]: a connection to the
//!   peer came up (the core sends its hello) or went away;
//! - [`NodeCore::handle_frame`]: a frame from the peer;
//! - [`NodeCore::applied`], [`NodeCore::flushed`] and the resync reports:
//!   work the driver finished;
//! - [`NodeCore::promote`], [`NodeCore::demote`], [`NodeCore::discard_my_data`]:
//!   the admin's (or the supervisor's) requests;
//! - [`NodeCore::handle_timeout`] when [`NodeCore::poll_timeout`] is due, and
//!   [`NodeCore::drive`] after every input.

mod drive;
mod handshake;
mod resync;
mod roles;
mod standby;
mod state;
pub mod verify;

pub use resync::{
    key_count, ResyncProgress, KEYS_PER_CHUNK, MAX_TARGET_KEYS, MAX_TARGET_KEY_BYTES,
};
pub use standby::{StandbyLag, StandbyView};
pub use state::{Counters, NodeState};

use crate::{
    AckState, ConnectionState, Frame, Generation, Hello, OnPeerLoss, Primary, ProtocolConfig,
    Replica, Role, Seq, SplitBrainPolicy,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// Everything the core needs to know about its node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name.
    pub name: String,
    /// The peer's address on the replication link (for notes).
    pub peer: SocketAddr,
    /// Protocol settings (A/B/C, keepalive, deadtime, on_peer_loss).
    pub protocol: ProtocolConfig,
    /// What to do when both nodes wrote on their own.
    pub split_brain: SplitBrainPolicy,
    /// Where the right to acknowledge alone comes from, as the notes say it
    /// ("the witness 10.0.0.3:7790", "no evidence source").
    pub evidence_source: String,
    /// `Some(max_lag)` when a secondary serves its replica read-only
    /// (`[standby] serve`): how old its view may be and still pass the
    /// health check.
    pub standby: Option<std::time::Duration>,
}

/// What the core asks of the local store and the state file, synchronously.
/// The real node implements it over the `DiskStore`; the simulation over a
/// model store.
pub trait Host {
    /// The seq of the last mutation in the local store.
    fn last_applied(&self) -> Seq;
    /// How many records the store changed after `from`; `None` when its log
    /// can no longer tell.
    fn changed_since(&self, from: Seq) -> Option<u64>;
    /// Makes everything applied so far durable.
    fn sync(&mut self) -> Result<(), String>;
    /// Writes the state durably before the core acts on it.
    fn save(&mut self, state: &NodeState) -> Result<(), String>;
    /// A fresh random generation identifier (never 0).
    fn new_generation(&mut self) -> u64;
    /// Milliseconds since the Unix epoch (stamped on a promotion).
    fn wall_ms(&self) -> u64;
}

/// Evidence that this node is not the isolated one: the right to acknowledge
/// writes alone while the peer is lost, until `valid_until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// What it is, for the status: "witness lease renewed", "ping 10.0.0.1 answered".
    pub what: String,
    /// When the request that proved it was sent.
    pub obtained_at: Instant,
    /// When it stops counting.
    pub valid_until: Instant,
}

/// How the driver closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The core refuses the peer: after the goodbye, linger a moment for the
    /// peer's report (a split brain's list of files).
    Refused,
    /// A fresh handshake must state a new role: close after the goodbye.
    Reconnect,
}

/// A write of the local filesystem, handed to the core by a primary's driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalWrite {
    /// The store applied (or is applying) this mutation locally.
    Applied(Seq, Bytes),
    /// An fsync: a flush barrier after everything submitted.
    Flush,
}

/// What the core wants done, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a frame to the peer on the current connection.
    Send(Frame),
    /// Send a goodbye with `reason`, then close the current connection.
    Close {
        /// How (and how soon) to close.
        how: Close,
        /// Why, for the goodbye and the close reason.
        reason: String,
    },
    /// (Secondary) apply the primary's mutation; report with
    /// [`NodeCore::applied`].
    Apply(Seq, Bytes),
    /// (Secondary) make the store durable up to this seq; report with
    /// [`NodeCore::flushed`].
    Sync(Seq),
    /// (Secondary) apply a resync chunk or a repair (ops without a seq).
    ApplyLocal(Vec<u8>),
    /// (Resync target) every value arrived: jump the store to this seq, sync,
    /// and report with [`NodeCore::jumped`].
    Jump(Seq),
    /// (Resync target) send the keys the store changed after this floor, as
    /// `ResyncKeys` frames.
    ListChangedKeys(Seq),
    /// (Resync source) ship the current value of every record either side
    /// changed after `floor`: the target's keys (raw `ResyncKeys` payloads),
    /// or everything when `target_keys` is `None`. Report with
    /// [`NodeCore::resync_planned`], [`NodeCore::resync_sent`],
    /// [`NodeCore::resync_shipped`] or [`NodeCore::resync_failed`].
    ShipResync {
        /// The floor both sides agreed on.
        floor: Seq,
        /// The target's changed keys, or `None`: ship everything.
        target_keys: Option<Vec<Vec<u8>>>,
    },
    /// (Resync source) stop shipping: the resync is abandoned.
    CancelResync,
    /// (Secondary) answer the primary's online verify request, in stream order.
    AnswerVerify(Vec<u8>),
    /// (Primary) the peer's answer to an online verify.
    VerifyAnswered(Vec<u8>),
    /// Both sides wrote on their own: send the peer this node's report (the
    /// files it changed) before the refusal that follows.
    SplitBrain {
        /// The decision's reason.
        reason: String,
        /// The peer's handshake.
        peer: Hello,
    },
    /// The peer's report of a split brain (its changed files).
    PeerReport(Vec<u8>),
    /// A handshake succeeded (or the admin discarded this node's data): the
    /// split brain, if any, is over.
    SplitBrainCleared,
    /// (Primary) writes may be acknowledged from this seq on.
    OpenWrites(Seq),
    /// Every write fails from now on, with this reason.
    CloseWrites(String),
    /// Mount the filesystem read-write; report with [`NodeCore::mounted`].
    Mount,
    /// Unmount it; report with [`NodeCore::unmounted`].
    Unmount,
    /// (A demotion, with a standby view) turn the read-write mount read-only
    /// in place, keeping it mounted; report with [`NodeCore::unmounted`].
    ReadOnly,
    /// (Secondary, with a standby view) what the mount shows from now on:
    /// mount it read-only, hide it, or take it away.
    Standby(StandbyView),
    /// The store may drop its log records up to this seq.
    RetainFloor(Seq),
    /// Save [`NodeCore::state`] in the background (the floor moved); report
    /// with [`NodeCore::background_saved`].
    SaveInBackground,
    /// A notable event for the status and the log.
    Note(String),
    /// The node may stop (a shutdown finished).
    Stop,
}

/// Where the writes of a primary stand, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WritesView {
    /// Not primary, or writes closed.
    Closed,
    /// Replicating to the peer.
    Replicating,
    /// Alone with no evidence source.
    AloneUnguarded,
    /// Alone on `evidence`, until `until`.
    Alone {
        /// The evidence held.
        evidence: Option<Evidence>,
        /// When the right ends.
        until: Instant,
    },
    /// Suspended since this instant.
    Suspended(Option<Instant>),
}

/// The role with its protocol state machine.
#[derive(Debug)]
enum RoleState {
    Secondary {
        replica: Option<Replica>,
        /// Catching up to the primary: (its last seq at handshake, its generation).
        catch_up: Option<(Seq, Generation)>,
        /// Highest sync handed to the driver.
        sync_asked: Seq,
    },
    Primary {
        primary: Primary,
        /// The peer is catching up to this seq; then the generations are shared again.
        catch_up: Option<Seq>,
        /// The state machine has been connected to the peer since it started, so
        /// it can vouch that what the peer holds is a prefix of this node's history.
        vouched: bool,
        /// After a resync: the catch-up counts only once the target has acknowledged.
        need_ack: bool,
        /// The seq at which this node became primary (the peer's position is
        /// unknown below it until it connects).
        resumed_at: Seq,
    },
}

impl RoleState {
    /// A secondary that follows nobody yet.
    fn secondary() -> RoleState {
        RoleState::Secondary {
            replica: None,
            catch_up: None,
            sync_asked: Seq(0),
        }
    }
}

/// The connection to the peer, as far as decisions go.
#[derive(Debug)]
struct Conn {
    id: u64,
    addr: SocketAddr,
    /// This node refused the peer; the connection only lingers for its report.
    refused: bool,
    /// The peer's handshake, once it arrived and was accepted.
    peer: Option<Hello>,
    /// A hello arrived on this connection (accepted or not): only then may a
    /// report (a split brain's file list) follow.
    hello_seen: bool,
    /// (Secondary) online verify requests answered on this connection: the
    /// primary may send repairs only after one.
    verifies_answered: u64,
    /// (Secondary) a verify request is being answered (one at a time).
    verify_answering: bool,
}

/// Why an unmount is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unmounting {
    Demote,
    Shutdown,
    /// A split-brain policy chose this node's changes to be discarded.
    Victim,
}

/// The kinds of [`AckState`], for noting changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckKind {
    Replicating,
    Alone,
    Unguarded,
    Suspended,
}

impl AckKind {
    fn of(s: AckState) -> AckKind {
        match s {
            AckState::Replicating => AckKind::Replicating,
            AckState::AloneUnguarded => AckKind::Unguarded,
            AckState::AloneUntil(_) => AckKind::Alone,
            AckState::Suspended => AckKind::Suspended,
        }
    }
}

/// One replication node's decisions. See the [module](self) documentation.
#[derive(Debug)]
pub struct NodeCore {
    cfg: NodeConfig,
    state: NodeState,
    role: RoleState,
    conn: Option<Conn>,
    refusal: Option<String>,
    /// Set by a refusal, cleared by a handshake or a discard (the dialer
    /// waits longer meanwhile).
    refusing: bool,
    counters: Counters,
    unmounting: Option<Unmounting>,
    stopped: bool,
    resync: Option<resync::Phase>,
    /// (Target) waiting for the driver's jump: (position, consistent at, generation).
    pending_jump: Option<(Seq, Seq, Generation)>,
    /// (Target) frames that arrived after a resync's end, before its jump.
    early_frames: Vec<Frame>,
    /// A split-brain policy is making this primary a resync target.
    pending_sb_demote: bool,
    /// When the floor was last saved, and its value then.
    floor_saved_at: Option<Instant>,
    floor_saved: u64,
    /// A background save is running.
    floor_saving: bool,
    /// The peer's name from its last handshake.
    peer_name: Option<String>,
    /// When the last frame from the peer arrived.
    last_frame_at: Option<Instant>,
    /// (Secondary) when the primary last asked for a flush.
    last_flush_request: Option<Instant>,
    /// (Primary) the acknowledgement state last noted.
    ack_noted: AckKind,
    /// (Primary) since when writes are suspended.
    suspended_since: Option<Instant>,
    /// (Primary) the evidence the current right to acknowledge alone rests on.
    alone_on: Option<Evidence>,
    /// (Primary) writes are open (the driver's link accepts them).
    writes_open: bool,
    /// What the standby mount shows, as last told to the driver.
    view: StandbyView,
    /// (Secondary) how far behind its view is.
    lag: standby::LagTracker,
    outputs: VecDeque<Output>,
}

/// Most mutation bytes a primary keeps in memory for a lost peer.
pub const MAX_RETAINED: u64 = 256 << 20;

impl NodeCore {
    /// A node that starts, with the state it saved. Like DRBD, a node always
    /// starts as secondary: whoever decides (the admin, or the supervisor)
    /// promotes it. A state that says primary is saved as secondary first.
    pub fn new(cfg: NodeConfig, state: NodeState, host: &mut dyn Host) -> NodeCore {
        let mut core = NodeCore {
            cfg,
            state,
            role: RoleState::secondary(),
            conn: None,
            refusal: None,
            refusing: false,
            counters: Counters::default(),
            unmounting: None,
            stopped: false,
            resync: None,
            pending_jump: None,
            early_frames: Vec::new(),
            pending_sb_demote: false,
            floor_saved_at: None,
            floor_saved: 0,
            floor_saving: false,
            peer_name: None,
            last_frame_at: None,
            last_flush_request: None,
            ack_noted: AckKind::Replicating,
            suspended_since: None,
            alone_on: None,
            writes_open: false,
            view: StandbyView::Off,
            lag: standby::LagTracker::default(),
            outputs: VecDeque::new(),
        };
        if core.state.role == Role::Primary {
            core.note(
                "this node was primary when it stopped; it starts as secondary (`twinfs promote` makes it primary again)".into(),
            );
            core.state.role = Role::Secondary;
            core.save(host);
        }
        core
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The persistent state as it is now.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Primary { .. } => Role::Primary,
            RoleState::Secondary { .. } => Role::Secondary,
        }
    }

    /// The peer's handshake, while connected and accepted.
    pub fn peer(&self) -> Option<&Hello> {
        self.conn.as_ref().and_then(|c| c.peer.as_ref())
    }

    /// The peer's name from its last handshake.
    pub fn peer_name(&self) -> Option<&str> {
        self.peer()
            .map(|h| h.node.as_str())
            .or(self.peer_name.as_deref())
    }

    /// When the last frame from the peer arrived.
    pub fn last_frame_at(&self) -> Option<Instant> {
        self.last_frame_at
    }

    /// Why this node refuses the peer, until a handshake succeeds.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// The counters for the status.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts mutations the driver applied inline or resync bytes it sent.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Whether a shutdown finished.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Frames held between a resync's end and its jump.
    pub fn early_frames(&self) -> usize {
        self.early_frames.len()
    }

    /// The state of the link to the peer, as the status names it.
    pub fn connection(&self) -> ConnectionState {
        let handshaken = self.peer();
        let syncing = match &self.role {
            RoleState::Primary { catch_up, .. } => catch_up.is_some() || self.resync.is_some(),
            RoleState::Secondary { catch_up, .. } => {
                catch_up.is_some() || self.resync.is_some() || self.pending_jump.is_some()
            }
        };
        match (handshaken, syncing) {
            (Some(_), true) if self.role() == Role::Primary => ConnectionState::SyncSource,
            (Some(h), true) if h.role == Role::Primary => ConnectionState::SyncTarget,
            (Some(_), _) => ConnectionState::Connected,
            (None, _) if self.refusal.is_some() => ConnectionState::StandAlone,
            (None, _) => ConnectionState::Connecting,
        }
    }

    /// (Primary) the positions writes may return at: (committed, flushed).
    pub fn commit_positions(&self) -> Option<(Seq, Seq)> {
        match &self.role {
            RoleState::Primary { primary, .. } => Some((primary.committed(), primary.flushed())),
            RoleState::Secondary { .. } => None,
        }
    }

    /// (Primary) how far the peer is behind: (seqs, bytes), and where it is.
    pub fn lag(&self) -> Option<(u64, u64, Seq)> {
        match &self.role {
            RoleState::Primary {
                primary,
                resumed_at,
                ..
            } => Some((
                primary
                    .last_submitted()
                    .0
                    .saturating_sub(primary.peer_applied().max(*resumed_at).0),
                primary.lag_bytes(),
                primary.peer_applied(),
            )),
            RoleState::Secondary { .. } => None,
        }
    }

    /// (Primary) whether writes wait for the peer or evidence.
    pub fn suspended(&self) -> bool {
        matches!(&self.role, RoleState::Primary { primary, .. } if primary.is_suspended())
    }

    /// Where the writes stand at `now`.
    pub fn writes(&self, now: Instant) -> WritesView {
        let RoleState::Primary { primary, .. } = &self.role else {
            return WritesView::Closed;
        };
        if !self.writes_open {
            return WritesView::Closed;
        }
        match primary.ack_state(now) {
            AckState::Replicating => WritesView::Replicating,
            AckState::AloneUnguarded => WritesView::AloneUnguarded,
            AckState::AloneUntil(until) => WritesView::Alone {
                evidence: self.alone_on.clone(),
                until,
            },
            AckState::Suspended => WritesView::Suspended(self.suspended_since),
        }
    }

    /// (Primary, under `continue-with-evidence`) whether the core looks for
    /// evidence: the driver passes it to [`NodeCore::drive`] only then.
    pub fn wants_evidence(&self) -> bool {
        matches!(&self.role, RoleState::Primary { primary, .. }
            if primary.is_degraded() && self.cfg.protocol.on_peer_loss == OnPeerLoss::WithEvidence)
    }

    /// When [`NodeCore::handle_timeout`] is due.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.wants_evidence() {
            // Evidence arrives (and expires) on its own clock.
            return Some(now + drive::EVIDENCE_POLL);
        }
        match &self.role {
            RoleState::Primary { primary, .. } => primary.poll_timeout(),
            RoleState::Secondary {
                replica: Some(r), ..
            } => r.poll_timeout(),
            RoleState::Secondary { .. } => None,
        }
    }

    /// Timers: heartbeats, retransmissions, peer death.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.role {
            RoleState::Primary { primary, .. } => primary.handle_timeout(now),
            RoleState::Secondary {
                replica: Some(r), ..
            } => r.handle_timeout(now),
            RoleState::Secondary { .. } => {}
        }
    }

    /// Records a notable event.
    fn note(&mut self, what: String) {
        self.outputs.push_back(Output::Note(what));
    }

    /// Saves the state before acting on it; a failure makes this node refuse
    /// the peer (the status says why).
    fn save(&mut self, host: &mut dyn Host) {
        if let Err(e) = host.save(&self.state) {
            self.state_save_failed(e);
        }
    }

    /// A save of the state failed (now, or in the background).
    pub fn state_save_failed(&mut self, e: String) {
        tracing::error!("cannot save the replication state: {e}");
        self.refusal = Some(format!("cannot save the replication state: {e}"));
    }

    /// The number of records this node changed on its own in its generation.
    fn changed_blocks(&self, host: &dyn Host) -> u64 {
        if !self.state.diverged() {
            return 0;
        }
        host.changed_since(Seq(self.state.generation_start))
            .unwrap_or(u64::MAX)
    }
}
