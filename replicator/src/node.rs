//! The replication daemon of one node: roles, connections, and the two
//! protocol state machines driven by real time and a real QUIC link.
//!
//! Everything runs on one current-thread tokio runtime (measured here: a
//! multi-thread runtime adds 20–45 µs per round trip). One task, the node
//! task, owns all state: the role with its [`Primary`] or [`Replica`] state
//! machine, the connection to the peer, the persistent [`NodeState`] and the
//! control requests. Everything else talks to it through one channel of
//! `Input`s:
//!
//! - connector tasks dial (or accept) the peer and hand over each new QUIC
//!   connection; per connection, a reader task forwards decoded frames and a
//!   writer task sends what the node queues;
//! - on a secondary, the applier thread applies the peer's mutations to the
//!   [`DiskStore`] in order and reports each applied (and synced) seq;
//! - on a primary, FUSE threads write through [`ReplicatedStore`], which
//!   queues applied mutations on the `Link` and waits for the positions the
//!   node task publishes back;
//! - the control socket turns `twinfs status/promote/demote` into requests.
//!
//! Which side dials is fixed by the config so the two never race: the node
//! whose `listen` address sorts first dials, the other accepts.

mod error;
#[cfg(test)]
mod fuzz;
mod handle;
mod resync;
mod splitbrain;
mod verify;

use crate::control::{self, Request, Response};
use crate::evidence::EvidenceBoard;
use crate::inflight::{self, Charge, InFlight, ReadEnd};
use crate::state::{new_generation, now_ms, NodeState, StateError, StateWriter};
use crate::status::{Counters, Lag, LinkStatus, PeerStatus, Status};
use crate::store::{Link, Outgoing, ReplicatedStore};
use crate::tls::{Identity, PeerTrust};
use crate::transport::{self, FrameStream, TransportOptions};
pub use error::{MountError, NodeError};
use handle::Reply;
pub use handle::{channel, HandleError, NodeHandle, NodeInbox};
use resync::ResyncState;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};
use twinfs_fs::{DiskStore, Mutation, Store as _};
use twinfs_replicator_proto::{
    plan, AckState, DiskState, Event, Frame, Generation, Hello, LocalView, OnPeerLoss, Plan,
    Primary, Protocol, ProtocolConfig, Replica, Role, Seq, Side, SplitBrainPolicy,
    PROTOCOL_VERSION,
};

/// Everything a node needs to know to run.
#[derive(Debug)]
pub struct NodeOptions {
    /// This node's name.
    pub name: String,
    /// The data dir (store, state file, control socket).
    pub data_dir: PathBuf,
    /// Local address on the replication link.
    pub listen: SocketAddr,
    /// The peer's address on the replication link.
    pub peer: SocketAddr,
    /// This node's certificate and key.
    pub identity: Identity,
    /// The only peer certificate accepted.
    pub trust: PeerTrust,
    /// Protocol settings (A/B/C, keepalive, deadtime, on_peer_loss).
    pub protocol: ProtocolConfig,
    /// What to do when both nodes wrote on their own.
    pub split_brain: SplitBrainPolicy,
    /// Resync speed limit in bytes per second (0: as fast as the link goes).
    pub resync_rate: u64,
    /// The evidence the supervisor gathers for the right to acknowledge
    /// alone (used under [`OnPeerLoss::WithEvidence`]).
    pub evidence: Arc<EvidenceBoard>,
}

/// What the daemon does when the node becomes primary or stops being primary:
/// the binary mounts and unmounts the filesystem (this crate never touches FUSE).
pub trait Mounter: Send + 'static {
    /// Starts serving the filesystem read-write over `store`, and calls `ready`
    /// once the mount is in place (or failed). Must not wait for writes to be
    /// acknowledged (they need the node task, which is calling).
    fn mount(&mut self, store: Arc<ReplicatedStore>, ready: MountReady) -> Result<(), MountError>;
    /// Stops serving; returns once no more writes can arrive. Runs on a
    /// blocking thread while the node task keeps acknowledging the last writes.
    fn unmount(&mut self) -> Result<(), MountError>;
}

/// Told by the [`Mounter`] whether the mount came up (`Err` carries why not).
pub type MountReady = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Runs the node until SIGTERM/SIGINT. Blocks the calling thread. Requests
/// come from the CLI's control socket and through `inbox`'s [`NodeHandle`]
/// (see [`channel`]).
pub fn run(
    opts: NodeOptions,
    disk: Arc<DiskStore>,
    mounter: Box<dyn Mounter>,
    inbox: NodeInbox,
) -> Result<(), NodeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| NodeError::Start {
            what: "the node's runtime",
            error,
        })?;
    rt.block_on(async move {
        let node = Node::new(opts, disk, mounter, inbox)?;
        node.run().await
    })
}

/// Inputs of the node task.
enum Input {
    ConnUp {
        id: u64,
        addr: SocketAddr,
        quic: quinn::Connection,
        tx: mpsc::UnboundedSender<Frame>,
        queued: Arc<AtomicU64>,
    },
    ConnFrame {
        id: u64,
        frame: Frame,
        /// The frame's part of the connection's budget (see [`crate::inflight`]).
        charge: Charge,
    },
    ConnDown {
        id: u64,
        reason: String,
    },
    Applied(Seq),
    Flushed(Seq),
    /// A background sync made the store durable up to this seq (or failed).
    BackgroundSynced(Result<Seq, String>),
    /// A sync started ahead of a flush request made the store durable up to
    /// this seq (or failed).
    SyncedAhead(Result<Seq, String>),
    ApplyFailed(String),
    Control(Request, Reply),
    Unmounted(Result<(), MountError>),
    /// Frames to send (computed off the node task).
    Frames(Vec<Frame>),
    ResyncPlanned {
        total: u64,
        full: bool,
        keys: usize,
        position: Seq,
    },
    ResyncChunk(Vec<u8>),
    ResyncShipped {
        consistent_at: Seq,
    },
    ResyncFailed(String),
    Jumped(Seq),
    Mounted(Result<(), String>),
    VerifyLocal {
        id: u64,
        local: Vec<twinfs_fs::store::RecordDigest>,
    },
    VerifyFailed(String),
    /// A background save of the state file failed.
    StateSaveFailed(String),
}

/// The applier thread's queue, with a count of the jobs not finished yet.
///
/// A job made of a peer's frame carries the frame's [`Charge`], given back
/// once the job is done: the queue holds at most the connection's budget of
/// such bytes ([`inflight::MAX_IN_FLIGHT`]).
struct Jobs {
    tx: std::sync::mpsc::Sender<(Job, Option<Charge>)>,
    /// Jobs sent and not yet done; zero means the applier is idle.
    queued: Arc<AtomicU64>,
}

impl Jobs {
    fn send(&self, job: Job) -> Result<(), std::sync::mpsc::SendError<(Job, Option<Charge>)>> {
        self.send_charged(job, None)
    }

    /// Sends a job that holds `charge` until it is done.
    fn send_charged(
        &self,
        job: Job,
        charge: Option<Charge>,
    ) -> Result<(), std::sync::mpsc::SendError<(Job, Option<Charge>)>> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.send((job, charge))
    }

    /// Whether every job sent so far is done: work done on the node task now
    /// comes after all of it, in stream order.
    fn idle(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
    }
}

/// A secondary applies a mutation up to this size on the node task itself when
/// the applier is idle, saving two thread wake-ups per small write.
const INLINE_APPLY_BYTES: usize = 64 << 10;

/// A secondary syncs on the node task itself (no thread wake-up) when the
/// applier is idle and at most this much was applied since the last sync.
const INLINE_SYNC_BYTES: u64 = 1 << 20;

/// A secondary syncs each applied mutation ahead of its flush request while
/// the primary has asked for a flush within this window (see `Node::drive`).
const SYNC_AHEAD_WINDOW: Duration = Duration::from_millis(100);

enum Job {
    Apply(Seq, twinfs_replicator_proto::Bytes),
    Sync(Seq),
    /// A resync chunk: ops applied without taking a seq.
    ApplyLocal(Vec<u8>),
    /// The end of a resync: the store's position jumps (then syncs).
    Jump(Seq),
    /// Answer an online verify request (in stream order).
    Verify(Vec<u8>),
}

struct Conn {
    id: u64,
    addr: SocketAddr,
    quic: quinn::Connection,
    tx: mpsc::UnboundedSender<Frame>,
    /// Resync bytes handed to the writer and not yet written.
    queued: Arc<AtomicU64>,
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

enum RoleState {
    Secondary {
        replica: Option<Replica>,
        /// Catching up to the primary: (its last seq at handshake, its generation).
        catch_up: Option<(Seq, Generation)>,
        /// Highest sync handed to the applier.
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

/// Why an unmount is running.
enum Unmounting {
    Demote(Reply),
    Shutdown,
    /// A split-brain policy chose this node's changes to be discarded.
    Victim,
}

const RECENT: usize = 20;

/// Most mutation bytes a primary keeps in memory for a lost peer.
const MAX_RETAINED: u64 = 256 << 20;

/// A secondary makes what it applied durable on its own after this many bytes
/// (in the background, without holding up the applier): the primary keeps every
/// mutation in memory until the peer has it durably, so without fsyncs from
/// the application a long write would otherwise pile up there.
const BACKGROUND_SYNC_BYTES: u64 = 32 << 20;

struct Node {
    /// When the last frame from the peer arrived (any frame: heartbeats keep
    /// it fresh), for the supervisor's peer-death clock.
    last_frame_at: Option<Instant>,
    opts: NodeOptions,
    disk: Arc<DiskStore>,
    link: Arc<Link>,
    store: Arc<ReplicatedStore>,
    state: NodeState,
    mounter: Arc<Mutex<Box<dyn Mounter>>>,
    role: RoleState,
    conn: Option<Conn>,
    input_tx: mpsc::UnboundedSender<Input>,
    input_rx: mpsc::UnboundedReceiver<Input>,
    jobs: Jobs,
    refusal: Option<String>,
    counters: Counters,
    recent: VecDeque<String>,
    unmounting: Option<Unmounting>,
    stop: bool,
    resync: Option<ResyncState>,
    /// (Target) waiting for the applier's jump: (position, consistent at, generation).
    pending_jump: Option<(Seq, Seq, Generation)>,
    /// A split-brain policy is making this primary a resync target.
    pending_sb_demote: bool,
    /// When the floor was last written to the state file, and its value then.
    floor_saved_at: Instant,
    floor_saved: u64,
    /// Writes the state file, in version order (see [`StateWriter`]).
    state_writer: Arc<StateWriter>,
    /// The version of the last state handed to `state_writer`.
    state_version: u64,
    /// A background save of the floor is running.
    floor_saving: Arc<std::sync::atomic::AtomicBool>,
    /// The last split brain detected, with the files each side changed.
    split_brain: Option<crate::status::SplitBrain>,
    /// (Target) frames that arrived after a resync's end, before its jump,
    /// holding their charges (the reader waits while they fill the budget).
    early_frames: Vec<(Frame, Charge)>,
    /// The charge of the peer's frame being handled: a job made of the frame
    /// takes it along; else it is given back once the frame
    /// is handled and driven.
    charge: Option<Charge>,
    /// An online verify waiting for the peer's answer.
    verify: Option<verify::Pending>,
    /// The peer's name from its last handshake.
    peer_name: Option<String>,
    /// `twinfs promote` waiting for its mount.
    promote_reply: Option<Reply>,
    /// Set while this node refuses the peer (read by the dialer for its backoff).
    refusing: Arc<std::sync::atomic::AtomicBool>,
    /// An online verify computing its local digests: (id, repair, reply).
    verify_reply: Option<(u64, bool, Reply)>,
    verify_seq: u64,
    /// (Secondary) mutation bytes handed to the applier since the last
    /// background sync started.
    unsynced_bytes: u64,
    /// (Secondary) a background sync is running.
    background_sync: bool,
    /// (Secondary) when the primary last asked for a flush: while it does so
    /// often, each applied mutation is synced ahead of its flush.
    last_flush_request: Option<Instant>,
    /// (Secondary) a sync started ahead of a flush request is running; it
    /// covers the mutations up to this seq.
    sync_ahead: Option<Seq>,
    /// (Primary) the acknowledgement state last noted, for the log: a
    /// change of it is an event.
    ack_noted: AckKind,
    /// (Primary) since when writes are suspended.
    suspended_since: Option<Instant>,
    /// (Primary) the evidence the current right to acknowledge alone rests on.
    alone_on: Option<crate::evidence::Evidence>,
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

/// How often a primary that lost its peer looks for new evidence.
const EVIDENCE_POLL: Duration = Duration::from_millis(20);

impl Node {
    fn new(
        opts: NodeOptions,
        disk: Arc<DiskStore>,
        mounter: Box<dyn Mounter>,
        inbox: NodeInbox,
    ) -> Result<Node, NodeError> {
        let state = NodeState::load(&opts.data_dir)?;
        disk.set_retain_floor(twinfs_fs::Seq(state.floor));
        let link = Arc::new(Link::default());
        let store = Arc::new(ReplicatedStore::new(disk.clone(), link.clone()));
        let NodeInbox {
            tx: input_tx,
            rx: input_rx,
        } = inbox;
        let (jobs, job_rx) = std::sync::mpsc::channel();
        let jobs = Jobs {
            tx: jobs,
            queued: Arc::new(AtomicU64::new(0)),
        };
        {
            let disk = disk.clone();
            let tx = input_tx.clone();
            let queued = jobs.queued.clone();
            std::thread::Builder::new()
                .name("twinfs-apply".into())
                .spawn(move || applier(disk, job_rx, tx, queued))
                .map_err(|error| NodeError::Start {
                    what: "the applier thread",
                    error,
                })?;
        }
        Ok(Node {
            opts,
            disk,
            link,
            store,
            state,
            mounter: Arc::new(Mutex::new(mounter)),
            role: RoleState::secondary(),
            conn: None,
            input_tx,
            input_rx,
            jobs,
            refusal: None,
            counters: Counters::default(),
            recent: VecDeque::new(),
            unmounting: None,
            stop: false,
            resync: None,
            pending_jump: None,
            pending_sb_demote: false,
            floor_saved_at: Instant::now(),
            floor_saved: 0,
            state_writer: Arc::new(StateWriter::default()),
            state_version: 0,
            floor_saving: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            split_brain: None,
            early_frames: Vec::new(),
            charge: None,
            verify: None,
            refusing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            peer_name: None,
            last_frame_at: None,
            promote_reply: None,
            verify_reply: None,
            verify_seq: 0,
            unsynced_bytes: 0,
            background_sync: false,
            last_flush_request: None,
            sync_ahead: None,
            ack_noted: AckKind::Replicating,
            suspended_since: None,
            alone_on: None,
        })
    }

    async fn run(mut self) -> Result<(), NodeError> {
        let topts = TransportOptions {
            keepalive: self.opts.protocol.keepalive,
            idle_timeout: self.opts.protocol.deadtime,
        };
        let endpoint = transport::endpoint(
            self.opts.listen,
            &self.opts.identity,
            &self.opts.trust,
            &topts,
        )?;
        let dials = self.opts.listen < self.opts.peer;
        let ids = Arc::new(AtomicU64::new(1));
        let connector = if dials {
            // The dialing node serves nothing: an unsolicited attempt gets a
            // stateless reset from quinn, not a queue slot.
            endpoint.set_server_config(None);
            tokio::spawn(dial_loop(
                endpoint.clone(),
                self.opts.peer,
                topts.handshake_timeout(),
                self.input_tx.clone(),
                ids,
                self.refusing.clone(),
            ))
        } else {
            let policy = transport::AcceptPolicy {
                peer: Some(self.opts.peer.ip()),
                handshake_timeout: topts.handshake_timeout(),
            };
            let acceptor = transport::Acceptor::new(endpoint.clone(), policy);
            tokio::spawn(accept_loop(acceptor, self.input_tx.clone(), ids))
        };
        let control = tokio::spawn(control_loop(
            control::socket_path(&self.opts.data_dir),
            self.input_tx.clone(),
        ));
        info!(
            node = %self.opts.name,
            listen = %self.opts.listen,
            peer = %self.opts.peer,
            role = ?self.state.role,
            disk = ?self.state.disk,
            generation = %format_args!("{:016x}", self.state.generation),
            applied = ps(self.disk.last_applied()).0,
            "replication node started; {}",
            if dials { "dialing the peer" } else { "waiting for the peer to connect" }
        );
        if self.state.role == Role::Primary {
            // Like DRBD, a node always starts as secondary: whoever decides
            // (the admin, or the supervisor) promotes it.
            self.note(
                "this node was primary when it stopped; it starts as secondary (`twinfs promote` makes it primary again)".into(),
            );
            self.state.role = Role::Secondary;
            self.save_state();
        }
        let signal = |kind| {
            tokio::signal::unix::signal(kind).map_err(|error| NodeError::Start {
                what: "the signal handlers",
                error,
            })
        };
        let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
        let link = self.link.clone();
        while !self.stop {
            let deadline = self
                .next_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = link.wake.notified() => {}
                Some(input) = self.input_rx.recv() => self.handle(input),
                _ = tokio::time::sleep_until(deadline.into()) => self.on_timeout(),
                _ = sigterm.recv() => self.begin_shutdown("SIGTERM"),
                _ = sigint.recv() => self.begin_shutdown("SIGINT"),
            }
            self.drive();
            // The frame handled (if any) needs no more of its budget.
            self.charge = None;
        }
        connector.abort();
        control.abort();
        let _ = std::fs::remove_file(control::socket_path(&self.opts.data_dir));
        self.abandon_resync();
        self.save_state();
        if let Some(c) = &self.conn {
            let _ = c.tx.send(Frame::Goodbye {
                reason: "node shutting down".into(),
            });
            // Give the writer a moment to put the goodbye on the wire.
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.quic.close(0u32.into(), b"shutdown");
        }
        endpoint.close(0u32.into(), b"shutdown");
        self.disk.checkpoint()?;
        info!("stopped cleanly");
        Ok(())
    }

    /// Records a notable event for the status (and logs it).
    fn note(&mut self, what: String) {
        info!("{what}");
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        self.recent.push_back(format!("{stamp} {what}"));
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    fn save_state(&mut self) {
        if let Err(e) = self.try_save_state() {
            self.state_save_failed(format!("{e:#}"));
        }
    }

    /// Saves the state now, on the node task (transitions must be on disk
    /// before the node acts on them).
    fn try_save_state(&mut self) -> Result<(), StateError> {
        self.state_version += 1;
        self.state_writer
            .save(&self.opts.data_dir, &self.state, self.state_version)
            .map(|_| ())
    }

    fn state_save_failed(&mut self, e: String) {
        error!("cannot save the replication state: {e}");
        self.refusal = Some(format!("cannot save the replication state: {e}"));
    }

    /// Saves the state on a blocking thread, for the periodic floor update:
    /// its three fsyncs would otherwise hold up the node task, and with it
    /// the acknowledgements of the writes in flight. Returns false (nothing
    /// started) while the previous background save still runs.
    fn save_state_in_background(&mut self) -> bool {
        if self.floor_saving.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.state_version += 1;
        let (writer, state, version) = (
            self.state_writer.clone(),
            self.state.clone(),
            self.state_version,
        );
        let (dir, running, tx) = (
            self.opts.data_dir.clone(),
            self.floor_saving.clone(),
            self.input_tx.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let r = writer.save(&dir, &state, version);
            running.store(false, Ordering::SeqCst);
            if let Err(e) = r {
                let _ = tx.send(Input::StateSaveFailed(format!("{e:#}")));
            }
        });
        true
    }

    fn next_timeout(&self) -> Option<Instant> {
        match &self.role {
            RoleState::Primary { primary, .. }
                if primary.is_degraded()
                    && self.opts.protocol.on_peer_loss == OnPeerLoss::WithEvidence =>
            {
                // Evidence arrives (and expires) on its own clock.
                Some(Instant::now() + EVIDENCE_POLL)
            }
            RoleState::Primary { primary, .. } => primary.poll_timeout(),
            RoleState::Secondary {
                replica: Some(r), ..
            } => r.poll_timeout(),
            RoleState::Secondary { .. } => None,
        }
    }

    fn on_timeout(&mut self) {
        let now = Instant::now();
        match &mut self.role {
            RoleState::Primary { primary, .. } => primary.handle_timeout(now),
            RoleState::Secondary {
                replica: Some(r), ..
            } => r.handle_timeout(now),
            RoleState::Secondary { .. } => {}
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::ConnUp {
                id,
                addr,
                quic,
                tx,
                queued,
            } => {
                if let Some(old) = self.conn.take() {
                    debug!(
                        old = old.id,
                        new = id,
                        "a new connection replaces the old one"
                    );
                    old.quic
                        .close(1u32.into(), b"replaced by a newer connection");
                }
                debug!(peer = %addr, id, "connection up; sending hello");
                let _ = tx.send(Frame::Hello(self.hello()));
                self.abandon_resync();
                self.conn = Some(Conn {
                    id,
                    addr,
                    quic,
                    tx,
                    queued,
                    refused: false,
                    peer: None,
                    hello_seen: false,
                    verifies_answered: 0,
                    verify_answering: false,
                });
            }
            Input::ConnFrame { id, frame, charge } => {
                if self.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.charge = Some(charge);
                    self.on_frame(frame);
                }
            }
            Input::ConnDown { id, reason } => {
                if self.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.abandon_resync();
                    let c = self.conn.take().expect("checked");
                    if c.peer.is_some() {
                        self.note(format!("connection to {} closed: {reason}", c.addr));
                    } else {
                        debug!(peer = %c.addr, "connection closed before the handshake: {reason}");
                    }
                }
            }
            Input::Applied(seq) => {
                if let RoleState::Secondary {
                    replica: Some(r), ..
                } = &mut self.role
                {
                    self.counters.mutations_applied += 1;
                    if let Err(e) = r.applied(seq) {
                        debug!("stale apply report: {e}");
                    }
                }
            }
            Input::BackgroundSynced(result) => {
                self.background_sync = false;
                match result {
                    Ok(seq) => self.handle(Input::Flushed(seq)),
                    Err(e) => self.handle(Input::ApplyFailed(format!("background sync: {e}"))),
                }
            }
            Input::SyncedAhead(result) => {
                self.sync_ahead = None;
                match result {
                    Ok(seq) => {
                        // A flush request this sync was trusted to cover and did
                        // not (it cannot happen: the sync started after the
                        // apply) is asked for again by the next drive.
                        if let RoleState::Secondary { sync_asked, .. } = &mut self.role {
                            *sync_asked = (*sync_asked).min(seq);
                        }
                        self.handle(Input::Flushed(seq))
                    }
                    Err(e) => {
                        self.handle(Input::ApplyFailed(format!("sync ahead of a flush: {e}")))
                    }
                }
            }
            Input::Flushed(seq) => {
                if let RoleState::Secondary {
                    replica: Some(r), ..
                } = &mut self.role
                {
                    if let Err(e) = r.flushed(seq.min(r.last_applied())) {
                        debug!("stale flush report: {e}");
                    }
                }
            }
            Input::ApplyFailed(reason) => {
                let reason = format!("cannot apply the primary's mutations: {reason}");
                error!("{reason}");
                self.refuse(reason);
            }
            Input::Control(req, reply) => self.control(req, reply),
            Input::Unmounted(result) => self.unmounted(result),
            Input::Frames(frames) => {
                for f in frames {
                    if matches!(f, Frame::VerifyResponse { .. }) {
                        self.verify_answer_sent();
                    }
                    self.send(f);
                }
            }
            Input::ResyncPlanned {
                total,
                full,
                keys,
                position,
            } => self.resync_planned(total, full, keys, position),
            Input::ResyncChunk(payload) => self.resync_chunk(payload),
            Input::ResyncShipped { consistent_at } => self.resync_shipped(consistent_at),
            Input::ResyncFailed(reason) => self.resync_failed(reason),
            Input::Jumped(seq) => self.jumped(seq),
            Input::Mounted(r) => self.mounted(r),
            Input::VerifyLocal { id, local } => self.verify_local(id, local),
            Input::VerifyFailed(why) => self.verify_failed(why),
            Input::StateSaveFailed(e) => self.state_save_failed(e),
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node: self.opts.name.clone(),
            generation: Generation(self.state.generation),
            last_applied: ps(self.disk.last_applied()),
            role: self.state.role,
            disk: self.state.disk,
            shared: Generation(self.state.shared),
            changed_blocks: self.changed_blocks(),
            primary_since_ms: self.state.primary_since_ms,
            floor: Seq(self.state.floor),
        }
    }

    /// Closes the current connection with `reason`, which the status shows
    /// until a later handshake succeeds.
    fn refuse(&mut self, reason: String) {
        if self.refusal.as_deref() != Some(reason.as_str()) {
            let addr = self.conn.as_ref().map_or(self.opts.peer, |c| c.addr);
            error!(peer = %addr, "refusing the peer: {reason}");
            self.note(format!("refusing the peer {addr}: {reason}"));
        }
        self.refusal = Some(reason.clone());
        self.refusing.store(true, Ordering::Relaxed);
        if let Some(c) = &mut self.conn {
            if c.refused {
                return;
            }
            c.refused = true;
            c.peer = None;
            let _ = c.tx.send(Frame::Goodbye {
                reason: reason.clone(),
            });
            // Linger a moment: the peer's report (a split brain's list of
            // files) may still be on its way.
            let quic = c.quic.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                quic.close(2u32.into(), truncate(&reason, 200).as_bytes());
            });
        }
    }

    /// Drops the connection so that a fresh handshake states the new role.
    fn reconnect(&mut self, why: &str) {
        if let Some(c) = self.conn.take() {
            let _ = c.tx.send(Frame::Goodbye { reason: why.into() });
            let quic = c.quic.clone();
            let why = why.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                quic.close(3u32.into(), why.as_bytes());
            });
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let now = Instant::now();
        self.last_frame_at = Some(now);
        if matches!(frame, Frame::Hello(_)) {
            if let Some(c) = &mut self.conn {
                c.hello_seen = true;
            }
        }
        if let Frame::Report { payload } = &frame {
            if self.conn.as_ref().is_none_or(|c| !c.hello_seen) {
                self.refuse("the peer sent a report frame before its hello".into());
                return;
            }
            self.peer_report(payload);
            return;
        }
        if self.conn.as_ref().is_some_and(|c| c.refused) {
            return;
        }
        let handshaken = self.conn.as_ref().is_some_and(|c| c.peer.is_some());
        if let Frame::Hello(h) = frame {
            self.handshake(h);
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
            Frame::ResyncRequest { floor } => return self.resync_requested(floor),
            Frame::ResyncKeys {
                last,
                known,
                payload,
            } => return self.resync_keys(last, known, &payload),
            Frame::ResyncData { payload } => return self.resync_data(payload),
            Frame::VerifyRequest { payload } => return self.verify_requested(payload),
            Frame::VerifyResponse { payload } => return self.verify_answered(&payload),
            Frame::Repair { payload } => return self.repair_received(payload),
            Frame::ResyncDone {
                position,
                consistent_at,
                generation,
            } => return self.resync_done(position, consistent_at, generation),
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
                    if let Some(charge) = self.charge.take() {
                        self.early_frames.push((frame, charge));
                    }
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            self.refuse(format!("protocol error: {e}"));
        }
    }

    fn local_view(&self) -> LocalView {
        let (role, can_retransmit_from) = match &self.role {
            RoleState::Primary {
                primary, vouched, ..
            } => (Role::Primary, vouched.then(|| primary.retransmit_from())),
            RoleState::Secondary { .. } => (Role::Secondary, None),
        };
        LocalView {
            role,
            disk: self.state.disk,
            history: self.state.history(self.changed_blocks()),
            last_applied: ps(self.disk.last_applied()),
            floor: Seq(self.state.floor),
            can_retransmit_from,
        }
    }

    fn handshake(&mut self, h: Hello) {
        if h.version != PROTOCOL_VERSION {
            self.refuse(format!(
                "peer {} speaks replication protocol {}, this node {}",
                h.node, h.version, PROTOCOL_VERSION
            ));
            return;
        }
        let local = self.local_view();
        let plan = plan(&local, &h, self.opts.split_brain);
        debug!(?plan, peer = %h.node, "handshake");
        let gen = |g: Generation| format!("{:016x}", g.0);
        let addr = self.conn.as_ref().map_or(self.opts.peer, |c| c.addr);
        match plan {
            Plan::Refuse { reason } => {
                self.refuse(reason);
                return;
            }
            Plan::SplitBrain { reason } => {
                self.split_brain(reason, &h);
                return;
            }
            _ => {}
        }
        self.split_brain = None;
        self.refusal = None;
        self.refusing.store(false, Ordering::Relaxed);
        self.counters.connections += 1;
        self.note(format!(
            "connected to {} ({}, generation {}, disk {}, seq {}) at {addr}",
            h.node,
            h.role,
            gen(h.generation),
            h.disk,
            h.last_applied
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
                    self.raise_floor(local.last_applied, true);
                }
            }
            Plan::Follow => self.follow(&h),
            Plan::Resync {
                source: Side::Local,
                floor,
                ..
            } => self.start_resync_source(floor, "the peer is behind or diverged"),
            Plan::Resync {
                source: Side::Peer,
                demote_target,
                ..
            } => {
                if demote_target {
                    self.note(format!(
                        "the split-brain policy ({:?}) discards this node's changes: demoting to resync from {}",
                        self.opts.split_brain, h.node
                    ));
                    self.pending_sb_demote = true;
                    if self.unmounting.is_none() {
                        self.unmounting = Some(Unmounting::Victim);
                        self.start_unmount();
                    }
                } else {
                    // The primary will ask for our keys; nothing to follow meanwhile.
                    if let RoleState::Secondary { replica, .. } = &mut self.role {
                        *replica = None;
                    }
                }
            }
        }
    }

    /// The secondary follows a primary (or the primary starts sending to one).
    fn follow(&mut self, h: &Hello) {
        let now = Instant::now();
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
                    self.start_resync_source(floor, &format!("{e}"));
                }
            },
            RoleState::Secondary {
                replica,
                catch_up,
                sync_asked,
            } => {
                if let Err(e) = self.disk.sync() {
                    let reason = format!("cannot sync the local store: {e}");
                    self.refuse(reason);
                    return;
                }
                let applied = ps(self.disk.last_applied());
                let mut r = Replica::new(self.opts.protocol.clone(), applied, now);
                if let Err(e) = r.handle_frame(now, Frame::Hello(h.clone())) {
                    self.refuse(format!("peer {}: {e}", h.node));
                    return;
                }
                *replica = Some(r);
                *sync_asked = applied;
                let behind = applied < h.last_applied || h.generation.0 != self.state.generation;
                *catch_up = behind.then_some((h.last_applied, h.generation));
                if behind && self.state.disk == DiskState::UpToDate {
                    self.state.disk = DiskState::Outdated;
                    self.save_state();
                }
            }
        }
    }

    /// Moves work between the state machine, the link, the applier and the wire.
    /// The right to acknowledge alone (see [`crate::evidence`]): while the
    /// peer is lost, hands fresh evidence to the protocol core, first
    /// starting a new generation on disk (writes acknowledged alone must make
    /// the peer a resync target, or a split brain if it promoted meanwhile).
    /// Notes every change between replicating, alone and suspended.
    fn check_alone(&mut self, now: Instant) {
        let RoleState::Primary { primary, .. } = &self.role else {
            return;
        };
        let mut fresh = None;
        if primary.is_degraded() && self.opts.protocol.on_peer_loss == OnPeerLoss::WithEvidence {
            fresh = self.opts.evidence.latest().filter(|ev| {
                primary.lost_at().is_some_and(|lost| ev.obtained_at >= lost) && now < ev.valid_until
            });
        }
        if let Some(ev) = fresh {
            let bump = self.state.generation == self.state.shared;
            if bump {
                let (g, start) = (self.state.generation, self.state.generation_start);
                self.state.generation = new_generation();
                self.state.generation_start = self.disk.last_applied().0;
                if let Err(e) = self.try_save_state() {
                    // Without the new generation on disk, nothing may be
                    // acknowledged alone: stay suspended, try again later.
                    self.state.generation = g;
                    self.state.generation_start = start;
                    warn!("cannot start a new generation to write alone: {e:#}; writes stay suspended");
                    return;
                }
            }
            let RoleState::Primary { primary, .. } = &mut self.role else {
                return;
            };
            if primary.grant_alone(now, ev.right()) {
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
        let deadtime = humantime::format_duration(self.opts.protocol.deadtime);
        match kind {
            AckKind::Suspended => {
                self.suspended_since = Some(now);
                self.counters.suspensions += 1;
                let source = self.opts.evidence.source().describe();
                let why = if was == AckKind::Alone {
                    "the evidence to acknowledge alone expired and was not renewed".to_string()
                } else if self.opts.protocol.on_peer_loss == OnPeerLoss::Suspend {
                    format!(
                        "peer lost (nothing heard for {deadtime}) and on_peer_loss = \"suspend\""
                    )
                } else {
                    format!("peer lost (nothing heard for {deadtime})")
                };
                self.note(format!(
                    "writes SUSPENDED: {why}; nothing is acknowledged until {source} shows this \
                     node is not the isolated one, or the peer is back"
                ));
            }
            AckKind::Alone => {
                let what = self
                    .alone_on
                    .as_ref()
                    .map_or_else(|| "evidence held".into(), |e| e.what.clone());
                let held = self.suspended_since.take().map(|t| now - t);
                self.note(format!(
                    "acknowledging writes ALONE in generation {:016x}: {what}{}",
                    self.state.generation,
                    held.map(|d| format!(" (writes were suspended for {:.2} s)", d.as_secs_f64()))
                        .unwrap_or_default()
                ));
            }
            AckKind::Unguarded => {
                self.note(format!(
                    "acknowledging writes ALONE WITHOUT EVIDENCE in generation {:016x}: no \
                     witness and no ping target, so this node cannot tell a dead peer from its \
                     own isolation; a cut cable can cause a split brain",
                    self.state.generation
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
    /// and a writer blocked in one keeps the mount busy (even SIGKILL waits
    /// for the daemon's answer).
    fn release_suspended_writes(&mut self) {
        if self.unmounting.is_none() {
            return;
        }
        let RoleState::Primary { primary, .. } = &self.role else {
            return;
        };
        if primary.ack_state(Instant::now()) != AckState::Suspended || !self.link.lock().open {
            return;
        }
        let why = "the node is being demoted while its writes are suspended (peer lost, no \
                   evidence): they were never acknowledged and now fail";
        self.link.set_open(false, Some(why.into()));
        self.note(why.into());
    }

    fn drive(&mut self) {
        let now = Instant::now();
        self.check_alone(now);
        self.release_suspended_writes();
        let mut lost = false;
        let mut caught_up = None;
        let mut new_floor = None;
        let mut forgot = false;
        let steady = self.resync.is_none() && self.pending_jump.is_none();
        // Reports of work done on the node task that need the whole node.
        let mut inline_reports = Vec::new();
        match &mut self.role {
            RoleState::Primary {
                primary,
                catch_up,
                need_ack,
                ..
            } => {
                let items: Vec<Outgoing> = self.link.lock().outgoing.drain(..).collect();
                for item in items {
                    match item {
                        Outgoing::Applied(seq, bytes) => {
                            let seq = ps(seq);
                            let s = primary.submit(now, bytes, false);
                            debug_assert_eq!(s, seq, "store and protocol numbering agree");
                            // Reported as applied before the writer's own append
                            // is done: the writer waits for the commit only after
                            // it (see `ReplicatedStore::apply`), so no write
                            // returns before both stores have it.
                            if let Err(e) = primary.local_applied(s) {
                                error!("bug: {e}");
                            }
                        }
                        Outgoing::FlushRequest => {
                            let barrier = primary.request_flush(now);
                            // The fsync syncs the local store itself before it
                            // waits (see `ReplicatedStore::sync`).
                            if let Err(e) = primary.local_flushed(barrier) {
                                error!("bug: {e}");
                            }
                        }
                    }
                }
                while let Some(frame) = primary.poll_transmit() {
                    if let Frame::Mutation { payload, .. } = &frame {
                        self.counters.mutations_sent += 1;
                        self.counters.mutation_bytes_sent += payload.len() as u64;
                    }
                    if let Some(c) = &self.conn {
                        let _ = c.tx.send(frame);
                    }
                }
                while let Some(ev) = primary.poll_event() {
                    if ev == Event::PeerLost {
                        lost = true;
                    }
                }
                self.link
                    .publish(fss(primary.committed()), fss(primary.flushed()));
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
                    new_floor = Some(primary.peer_flushed().min(ps(self.disk.last_applied())));
                }
            }
            RoleState::Secondary {
                replica: Some(r),
                catch_up,
                sync_asked,
            } => {
                while let Some((seq, payload, _flush)) = r.poll_apply() {
                    self.unsynced_bytes += payload.len() as u64;
                    if payload.len() <= INLINE_APPLY_BYTES && self.jobs.idle() {
                        match do_job(&self.disk, Job::Apply(seq, payload), None) {
                            Some(Input::Applied(s)) => {
                                self.counters.mutations_applied += 1;
                                if let Err(e) = r.applied(s) {
                                    debug!("stale apply report: {e}");
                                }
                            }
                            Some(other) => inline_reports.push(other),
                            None => {}
                        }
                    } else {
                        // The first job of the frame just handled holds its
                        // charge (mutations that were waiting for it were
                        // charged to the early buffer's own bound).
                        let _ = self
                            .jobs
                            .send_charged(Job::Apply(seq, payload), self.charge.take());
                    }
                }
                if self.unsynced_bytes >= BACKGROUND_SYNC_BYTES && !self.background_sync {
                    self.unsynced_bytes = 0;
                    self.background_sync = true;
                    sync_in_background(&self.disk, &self.input_tx, Input::BackgroundSynced);
                }
                if let Some(s) = r.poll_flush() {
                    if s > *sync_asked {
                        *sync_asked = s;
                        if self.sync_ahead.is_some_and(|a| a >= s) {
                            // The sync ahead covers it: its report answers.
                        } else if self.unsynced_bytes <= INLINE_SYNC_BYTES && self.jobs.idle() {
                            self.unsynced_bytes = 0;
                            match do_job(&self.disk, Job::Sync(s), None) {
                                Some(Input::Flushed(f)) => {
                                    if let Err(e) = r.flushed(f.min(r.last_applied())) {
                                        debug!("stale flush report: {e}");
                                    }
                                }
                                Some(other) => inline_reports.push(other),
                                None => {}
                            }
                        } else {
                            let _ = self.jobs.send(Job::Sync(s));
                        }
                    }
                }
                while let Some(frame) = r.poll_transmit() {
                    if let Some(c) = &self.conn {
                        let _ = c.tx.send(frame);
                    }
                }
                // Sync ahead: while the primary asks for a flush after nearly
                // every write (an fsync-heavy application), start the sync of
                // what was just applied now, on a blocking thread, instead of
                // when the flush request arrives one round trip later. Only
                // the report of a finished sync counts as flushed, as always.
                let applied = r.last_applied();
                if self.sync_ahead.is_none()
                    && applied > r.last_flushed()
                    && applied > *sync_asked
                    && self.jobs.idle()
                    && self
                        .last_flush_request
                        .is_some_and(|t| now.saturating_duration_since(t) < SYNC_AHEAD_WINDOW)
                {
                    self.sync_ahead = Some(applied);
                    self.unsynced_bytes = 0;
                    sync_in_background(&self.disk, &self.input_tx, Input::SyncedAhead);
                }
                while let Some(ev) = r.poll_event() {
                    if ev == Event::PeerLost {
                        lost = true;
                    }
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
        for report in inline_reports {
            self.handle(report);
        }
        if let Some(g) = caught_up {
            if self.state.generation != g.0 {
                self.state.generation_start = self.disk.last_applied().0;
            }
            self.state.generation = g.0;
            self.state.shared = g.0;
            self.state.disk = DiskState::UpToDate;
            self.save_state();
            self.note(format!("in sync with the peer (generation {:016x})", g.0));
        }
        if let Some(f) = new_floor {
            self.raise_floor(f, false);
        }
        if forgot {
            self.note(format!(
                "the peer has been away for more than {} MiB of writes: dropped them from memory; it will be resynced from the store",
                MAX_RETAINED >> 20
            ));
        }
        if lost {
            self.peer_lost();
        }
    }

    /// Everything up to `floor` is identical on both nodes: remember it (and
    /// let the cleaner drop the log records up to it).
    fn raise_floor(&mut self, floor: Seq, save_now: bool) {
        if floor.0 > self.state.floor {
            self.state.floor = floor.0;
            self.disk.set_retain_floor(fss(floor));
        }
        // Written a few times a second at most, in the background: after a
        // crash the floor on disk may lag by that much, which only makes the
        // next resync a little larger.
        if save_now {
            self.floor_saved = self.state.floor;
            self.floor_saved_at = Instant::now();
            self.save_state();
        } else if self.state.floor != self.floor_saved
            && self.floor_saved_at.elapsed() >= Duration::from_millis(200)
            && self.save_state_in_background()
        {
            self.floor_saved = self.state.floor;
            self.floor_saved_at = Instant::now();
        }
    }

    fn peer_lost(&mut self) {
        self.counters.peer_losses += 1;
        let deadtime = humantime::format_duration(self.opts.protocol.deadtime);
        match self.role {
            RoleState::Primary { .. } => {
                if self.opts.protocol.on_peer_loss != OnPeerLoss::Continue {
                    // Suspended, or alone once evidence comes: `check_alone`
                    // notes it and starts the new generation then.
                    return;
                }
                if self.state.generation == self.state.shared {
                    self.state.generation = new_generation();
                    self.state.generation_start = self.disk.last_applied().0;
                }
                self.save_state();
                self.note(format!(
                    "peer lost (nothing heard for {deadtime}): continuing alone in generation {:016x}",
                    self.state.generation
                ));
            }
            RoleState::Secondary { .. } => {
                self.note(format!("primary lost (nothing heard for {deadtime})"));
            }
        }
    }

    fn become_primary(&mut self) -> Result<(), NodeError> {
        self.disk.sync()?;
        let connected = self.conn.as_ref().is_some_and(|c| c.peer.is_some());
        if !connected && self.state.generation == self.state.shared {
            // Writing without the peer: a new generation, so that the peer is
            // recognised as behind (and a second primary as a split brain).
            self.state.generation = new_generation();
            self.state.generation_start = self.disk.last_applied().0;
        }
        self.state.role = Role::Primary;
        self.state.primary_since_ms = now_ms();
        self.try_save_state()?;
        let last = ps(self.disk.last_applied());
        // Promoted without the peer: it is lost already (see `resume_alone`).
        let primary = if connected {
            Primary::resume(self.opts.protocol.clone(), last, Instant::now())
        } else {
            Primary::resume_alone(self.opts.protocol.clone(), last, Instant::now())
        };
        self.role = RoleState::Primary {
            primary,
            catch_up: None,
            // Nothing above the floor: the peer's history up to here is ours.
            vouched: self.state.floor >= last.0,
            need_ack: false,
            resumed_at: last,
        };
        {
            let mut l = self.link.lock();
            l.committed = l.committed.max(fss(last));
            l.flushed = l.flushed.max(fss(last));
            l.queued = l.queued.max(fss(last));
        }
        self.link.set_open(true, None);
        let tx = self.input_tx.clone();
        self.mounter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mount(
                self.store.clone(),
                Box::new(move |r| {
                    let _ = tx.send(Input::Mounted(r));
                }),
            )
            .map_err(NodeError::Mount)?;
        self.note(format!(
            "promoted to primary (generation {:016x}, seq {})",
            self.state.generation, last.0
        ));
        self.reconnect("role change: now primary");
        Ok(())
    }

    fn control(&mut self, req: Request, reply: Reply) {
        let answer = match req {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Promote => match self.promote() {
                Some(answer) => answer,
                None => {
                    self.promote_reply = Some(reply);
                    return;
                }
            },
            Request::DiscardMyData => self.discard_my_data(),
            Request::Verify { repair } => {
                self.start_verify(repair, reply);
                return;
            }
            Request::Demote => {
                if !matches!(self.role, RoleState::Primary { .. }) {
                    Response::Error("this node is not primary".into())
                } else if self.unmounting.is_some() {
                    Response::Error("already demoting or shutting down".into())
                } else {
                    self.unmounting = Some(Unmounting::Demote(reply));
                    self.release_suspended_writes();
                    self.start_unmount();
                    return;
                }
            }
        };
        let _ = reply.send(answer);
    }

    /// `twinfs promote`: `None` when the answer comes later (once mounted).
    fn promote(&mut self) -> Option<Response> {
        if matches!(self.role, RoleState::Primary { .. }) {
            return Some(Response::Error("this node is already primary".into()));
        }
        let disk = self.state.disk;
        if !disk.promotable() {
            return Some(Response::Error(format!(
                "refusing to promote: the local disk is {disk} (it may miss acknowledged writes); \
                 it becomes UpToDate once it has caught up with the peer"
            )));
        }
        if let Some(peer) = self.conn.as_ref().and_then(|c| c.peer.as_ref()) {
            if peer.role == Role::Primary {
                return Some(Response::Error(format!(
                    "refusing to promote: the peer {} is primary and connected; demote it first",
                    peer.node
                )));
            }
        }
        match self.become_primary() {
            // The answer waits for the mount (see `mounted`).
            Ok(()) => None,
            Err(e) => {
                self.undo_promotion(&format!("{e:#}"));
                Some(Response::Error(format!("promotion failed: {e:#}")))
            }
        }
    }

    fn undo_promotion(&mut self, why: &str) {
        self.become_secondary(&format!("promotion failed, back to secondary: {why}"));
    }

    /// The mount of a promotion is up (or failed): answer `twinfs promote`.
    fn mounted(&mut self, r: Result<(), String>) {
        let reply = self.promote_reply.take();
        let answer = match r {
            Ok(()) => Response::Done(format!(
                "{} is now primary (generation {:016x}), mounted",
                self.opts.name, self.state.generation
            )),
            Err(e) => {
                if matches!(self.role, RoleState::Primary { .. }) {
                    self.undo_promotion(&e);
                }
                Response::Error(format!("promotion failed: the mount did not come up: {e}"))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }

    fn start_unmount(&mut self) {
        let mounter = self.mounter.clone();
        let tx = self.input_tx.clone();
        tokio::task::spawn_blocking(move || {
            let r = mounter.lock().unwrap_or_else(|p| p.into_inner()).unmount();
            let _ = tx.send(Input::Unmounted(r));
        });
    }

    fn unmounted(&mut self, result: Result<(), MountError>) {
        let why = self.unmounting.take();
        match (why, result) {
            (Some(Unmounting::Demote(reply)), Ok(())) => {
                self.become_secondary("demoted to secondary");
                let _ = reply.send(Response::Done(format!(
                    "{} is now secondary",
                    self.opts.name
                )));
            }
            (Some(Unmounting::Victim), Ok(())) => {
                self.pending_sb_demote = false;
                self.become_secondary(
                    "demoted by the split-brain policy; this node's own changes will be overwritten",
                );
            }
            (Some(Unmounting::Victim), Err(e)) => {
                self.pending_sb_demote = false;
                self.refuse(format!(
                    "the split-brain policy chose this node's changes to be discarded, but it cannot stop being primary: {e:#}"
                ));
            }
            (Some(Unmounting::Demote(reply)), Err(e)) => {
                // A failed demotion never leaves a node that acknowledges
                // writes: the mount stays (reads go on), every write fails.
                let why = format!(
                    "demotion failed (unmount: {e:#}): this node refuses every write until it \
                     is demoted"
                );
                self.link.set_open(false, Some(why.clone()));
                self.note(why);
                let _ = reply.send(Response::Error(format!(
                    "cannot demote: unmount failed: {e:#}; still primary, refusing all writes"
                )));
            }
            (Some(Unmounting::Shutdown), r) => {
                if let Err(e) = r {
                    error!("unmount at shutdown failed: {e:#}");
                }
                self.link
                    .set_open(false, Some("the node is shutting down".into()));
                // A last drive publishes what the unmount flushed.
                self.drive();
                self.stop = true;
            }
            (None, _) => {}
        }
    }

    fn become_secondary(&mut self, why: &str) {
        self.link
            .set_open(false, Some("the node is no longer primary".into()));
        // Publish what the last writes reached, then forget the state machine.
        self.drive();
        self.role = RoleState::secondary();
        self.state.role = Role::Secondary;
        self.save_state();
        self.note(why.into());
        self.reconnect("role change: now secondary");
    }

    fn begin_shutdown(&mut self, signal: &str) {
        info!("{signal}: shutting down");
        if matches!(self.role, RoleState::Primary { .. }) {
            if self.unmounting.is_none() {
                self.unmounting = Some(Unmounting::Shutdown);
                self.start_unmount();
            }
        } else {
            self.stop = true;
        }
    }

    fn writes_status(&self) -> crate::status::WritesStatus {
        use crate::status::WritesState;
        let now = Instant::now();
        let source = self.opts.evidence.source();
        let mut w = crate::status::WritesStatus {
            state: WritesState::Closed,
            evidence_source: source.describe(),
            unguarded: *source == crate::evidence::EvidenceSource::Unguarded
                && self.opts.protocol.on_peer_loss != OnPeerLoss::Suspend,
            ..Default::default()
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let RoleState::Primary { primary, .. } = &self.role {
            if !self.link.lock().open {
                return w;
            }
            match primary.ack_state(now) {
                AckState::Replicating => w.state = WritesState::Replicating,
                AckState::AloneUnguarded => w.state = WritesState::AloneUnguarded,
                AckState::AloneUntil(until) => {
                    w.state = WritesState::Alone;
                    w.evidence = self.alone_on.as_ref().map(|e| {
                        format!(
                            "{} {:.1} s ago",
                            e.what,
                            now.saturating_duration_since(e.obtained_at).as_secs_f64()
                        )
                    });
                    w.valid_ms = Some(ms(until.saturating_duration_since(now)));
                }
                AckState::Suspended => {
                    w.state = WritesState::Suspended;
                    w.suspended_ms = self
                        .suspended_since
                        .map(|t| ms(now.saturating_duration_since(t)));
                }
            }
        }
        w
    }

    fn status(&self) -> Status {
        use crate::status::ConnectionState;
        let handshaken = self.conn.as_ref().and_then(|c| c.peer.as_ref());
        let (connection, committed, lag, peer_applied, suspended) = match &self.role {
            RoleState::Primary {
                primary,
                catch_up,
                resumed_at,
                ..
            } => {
                let syncing = catch_up.is_some() || self.resync.is_some();
                let conn = match (handshaken, syncing) {
                    (Some(_), true) => ConnectionState::SyncSource,
                    (Some(_), false) => ConnectionState::Connected,
                    (None, _) if self.refusal.is_some() => ConnectionState::StandAlone,
                    (None, _) => ConnectionState::Connecting,
                };
                let lag = Lag {
                    seqs: primary
                        .last_submitted()
                        .0
                        .saturating_sub(primary.peer_applied().max(*resumed_at).0),
                    bytes: primary.lag_bytes(),
                };
                (
                    conn,
                    primary.committed().0,
                    lag,
                    primary.peer_applied().0,
                    primary.is_suspended(),
                )
            }
            RoleState::Secondary { catch_up, .. } => {
                let syncing =
                    catch_up.is_some() || self.resync.is_some() || self.pending_jump.is_some();
                let conn = match (handshaken, syncing) {
                    (Some(h), true) if h.role == Role::Primary => ConnectionState::SyncTarget,
                    (Some(_), _) => ConnectionState::Connected,
                    (None, _) if self.refusal.is_some() => ConnectionState::StandAlone,
                    (None, _) => ConnectionState::Connecting,
                };
                (conn, 0, Lag::default(), 0, false)
            }
        };
        Status {
            node: self.opts.name.clone(),
            role: match self.role {
                RoleState::Primary { .. } => Role::Primary,
                RoleState::Secondary { .. } => Role::Secondary,
            },
            disk: self.state.disk,
            connection,
            protocol: match self.opts.protocol.protocol {
                Protocol::A => "A",
                Protocol::B => "B",
                Protocol::C => "C",
            }
            .into(),
            on_peer_loss: match self.opts.protocol.on_peer_loss {
                OnPeerLoss::Continue => "continue",
                OnPeerLoss::WithEvidence => "continue-with-evidence",
                OnPeerLoss::Suspend => "suspend",
            }
            .into(),
            suspended,
            writes: self.writes_status(),
            generation: format!("{:016x}", self.state.generation),
            shared_generation: format!("{:016x}", self.state.shared),
            applied_seq: ps(self.disk.last_applied()).0,
            floor_seq: self.state.floor,
            committed_seq: committed,
            peer: PeerStatus {
                name: handshaken
                    .map(|h| h.node.clone())
                    .or_else(|| self.peer_name.clone())
                    .unwrap_or_default(),
                address: self.opts.peer.to_string(),
                role: handshaken.map(|h| h.role),
                disk: handshaken.map(|h| h.disk),
                applied_seq: peer_applied,
                heard_ms_ago: self
                    .last_frame_at
                    .map(|t| t.elapsed().as_millis().try_into().unwrap_or(u64::MAX)),
                link: self.conn.as_ref().filter(|c| c.peer.is_some()).map(|c| {
                    let path = c.quic.stats().path;
                    LinkStatus {
                        rtt_us: path.rtt.as_micros().try_into().unwrap_or(u64::MAX),
                        path_mtu: path.current_mtu,
                        sent_packets: path.sent_packets,
                        lost_packets: path.lost_packets,
                    }
                }),
            },
            lag,
            resync: self.resync_status(),
            refusal: self.refusal.clone(),
            split_brain: self.split_brain.clone(),
            counters: self.counters.clone(),
            recent: self.recent.iter().cloned().collect(),
            ..Status::default()
        }
    }
}

/// The store's seq as the protocol's.
fn ps(s: twinfs_fs::Seq) -> Seq {
    Seq(s.0)
}

/// The protocol's seq as the store's.
fn fss(s: Seq) -> twinfs_fs::Seq {
    twinfs_fs::Seq(s.0)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The secondary's applier thread: applies the peer's mutations in order.
fn applier(
    disk: Arc<DiskStore>,
    jobs: std::sync::mpsc::Receiver<(Job, Option<Charge>)>,
    tx: mpsc::UnboundedSender<Input>,
    queued: Arc<AtomicU64>,
) {
    for (job, charge) in jobs {
        let report = do_job(&disk, job, Some(&tx));
        // Done with the frame's bytes: the reader may read more.
        drop(charge);
        queued.fetch_sub(1, Ordering::SeqCst);
        if let Some(report) = report {
            if tx.send(report).is_err() {
                return;
            }
        }
    }
}

/// Does one job of the applier (on its thread, or on the node task when the
/// applier is idle); returns what to report to the node, if anything.
///
/// A mutation at or below the store's position was applied before (a
/// retransmission after a reconnect); it is acknowledged again, not reapplied.
///
/// With `early` (the applier thread), a mutation is reported applied as soon as
/// its record is in the log, while its index entries are still being written
/// (see [`DiskStore::apply_wire_then`]): the acknowledgement goes out sooner and
/// the primary's next write overlaps this node's indexing.
/// Syncs `disk` on a blocking thread and reports, through `report`, the seq
/// the sync covers (everything applied before it started) or the error.
fn sync_in_background(
    disk: &Arc<DiskStore>,
    tx: &mpsc::UnboundedSender<Input>,
    report: fn(Result<Seq, String>) -> Input,
) {
    let (disk, tx) = (disk.clone(), tx.clone());
    tokio::task::spawn_blocking(move || {
        let upto = ps(disk.last_applied());
        let r = disk.sync().map(|()| upto).map_err(|e| e.to_string());
        let _ = tx.send(report(r));
    });
}

fn do_job(
    disk: &DiskStore,
    job: Job,
    early: Option<&mpsc::UnboundedSender<Input>>,
) -> Option<Input> {
    // Issue 13: fault injection for tests, debug builds only (see fault.rs).
    crate::fault::before_apply(matches!(job, Job::Apply(..)));
    Some(match job {
        Job::Apply(seq, bytes) => {
            if seq <= ps(disk.last_applied()) {
                Input::Applied(seq)
            } else {
                // The record is written as it came (its digests checked once).
                let mut reported = false;
                let logged = |s: twinfs_fs::Seq| {
                    if let Some(tx) = early.filter(|_| ps(s) == seq) {
                        reported = tx.send(Input::Applied(seq)).is_ok();
                    }
                };
                match disk.apply_wire_then(&bytes, logged) {
                    Ok(_) if reported => return None,
                    Ok(s) if ps(s) == seq => Input::Applied(seq),
                    Ok(s) => Input::ApplyFailed(format!(
                        "mutation frame {} carried mutation {}",
                        seq.0, s.0
                    )),
                    Err(e) => Input::ApplyFailed(format!(
                        "mutation {} from the peer ({} bytes): {e}",
                        seq.0,
                        bytes.len()
                    )),
                }
            }
        }
        Job::Sync(seq) => match disk.sync() {
            Ok(()) => Input::Flushed(seq),
            Err(e) => Input::ApplyFailed(format!("sync: {e}")),
        },
        Job::ApplyLocal(bytes) => match Mutation::from_wire(&bytes) {
            None => Input::ApplyFailed(format!(
                "a resync chunk from the peer is malformed ({} bytes)",
                bytes.len()
            )),
            Some(m) => match disk.apply_local(m.ops) {
                Ok(()) => return None,
                Err(e) => Input::ApplyFailed(format!("resync chunk: {e}")),
            },
        },
        Job::Verify(payload) => verify::answer(disk, &payload),
        Job::Jump(seq) => match disk.jump_to(fss(seq)).and_then(|()| disk.sync()) {
            Ok(()) => Input::Jumped(seq),
            Err(e) => Input::ApplyFailed(format!("ending the resync at seq {}: {e}", seq.0)),
        },
    })
}

/// Starts the reader and writer tasks of a new connection and hands it to the node.
fn attach(
    id: u64,
    addr: SocketAddr,
    quic: quinn::Connection,
    stream: FrameStream,
    node: &mpsc::UnboundedSender<Input>,
) {
    let (mut sender, mut receiver) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let queued = Arc::new(AtomicU64::new(0));
    let _ = node.send(Input::ConnUp {
        id,
        addr,
        quic: quic.clone(),
        tx,
        queued: queued.clone(),
    });
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            let resync_bytes: u64 = batch
                .iter()
                .map(|f| match f {
                    Frame::ResyncData { payload } => payload.len() as u64,
                    _ => 0,
                })
                .sum();
            if let Err(e) = sender.send_many(batch.drain(..)).await {
                debug!(peer = %addr, "send failed: {e}");
                break;
            }
            queued.fetch_sub(resync_bytes, Ordering::Relaxed);
        }
    });
    let node = node.clone();
    tokio::spawn(async move {
        // Bounded: the reader stops reading while the frames it handed on
        // are not done with (see `crate::inflight`).
        let budget = InFlight::new(inflight::MAX_IN_FLIGHT);
        let read = inflight::read_frames(&mut receiver, &budget, |frame, charge| {
            node.send(Input::ConnFrame { id, frame, charge }).is_ok()
        });
        let reason = match read.await {
            Ok(ReadEnd::Refused) => return,
            Ok(ReadEnd::Finished) => "the peer closed the stream".to_string(),
            Err(e) => {
                if matches!(e, transport::TransportError::BadFrame { .. }) {
                    error!(peer = %addr, "closing the connection: {e}");
                    transport::close_for(&quic, &e);
                }
                e.to_string()
            }
        };
        let _ = node.send(Input::ConnDown { id, reason });
    });
}

async fn dial_loop(
    endpoint: quinn::Endpoint,
    peer: SocketAddr,
    handshake_timeout: Duration,
    node: mpsc::UnboundedSender<Input>,
    ids: Arc<AtomicU64>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut failures = 0u64;
    loop {
        let mut was_up = false;
        let started = tokio::time::Instant::now();
        let attempt = tokio::time::timeout(handshake_timeout, transport::connect(&endpoint, peer));
        let attempt = attempt.await.unwrap_or_else(|_| {
            Err(transport::TransportError::HandshakeTimeout {
                peer,
                after: handshake_timeout,
            })
        });
        match attempt {
            Ok(quic) => match FrameStream::open(&quic).await {
                Ok(stream) => {
                    failures = 0;
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    attach(id, peer, quic.clone(), stream, &node);
                    let why = quic.closed().await;
                    debug!(peer = %peer, "connection ended: {why}");
                    was_up = true;
                }
                Err(e) => warn!(peer = %peer, "cannot open the replication stream: {e}"),
            },
            Err(e) => {
                failures += 1;
                // Say it once, then only now and then: the peer may be down for long.
                if failures == 1 || failures % 60 == 0 {
                    warn!(peer = %peer, attempts = failures, "cannot connect to the peer: {e}");
                } else {
                    debug!(peer = %peer, "cannot connect to the peer: {e}");
                }
            }
        }
        if node.is_closed() {
            return;
        }
        // While the nodes refuse each other (a split brain), try again now and
        // then, not twice a second: each attempt makes both sides list their changes.
        let pause = if refusing.load(Ordering::Relaxed) {
            Duration::from_secs(5)
        } else if was_up {
            // A connection that worked ended (a role change, say): at once.
            Duration::from_millis(20)
        } else {
            // At most two attempts a second; one that waited out its
            // deadline (a cut link) has waited enough.
            Duration::from_millis(500)
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(20))
        };
        tokio::time::sleep(pause).await;
    }
}

async fn accept_loop(
    mut acceptor: transport::Acceptor,
    node: mpsc::UnboundedSender<Input>,
    ids: Arc<AtomicU64>,
) {
    while let Some(result) = acceptor.next().await {
        let quic = match result {
            Ok(q) => q,
            // The acceptor already logged the refusal with the address and reason.
            Err(_) => continue,
        };
        let addr = quic.remote_address();
        let node = node.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), FrameStream::accept(&quic)).await {
                Ok(Ok(stream)) => {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    attach(id, addr, quic, stream, &node);
                }
                Ok(Err(e)) => warn!(peer = %addr, "no replication stream: {e}"),
                Err(_) => warn!(peer = %addr, "no replication stream within 10 s; closing"),
            }
        });
    }
}

/// The effective user id of this process.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

async fn control_loop(path: PathBuf, node: mpsc::UnboundedSender<Input>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = control::bind_private(&path).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    });
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            error!("cannot create the control socket {}: {e}", path.display());
            return;
        }
    };
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        // Root (or the daemon's own user) only: the data dir is private
        // already; this holds even if someone loosens it.
        let me = effective_uid();
        match sock.peer_cred() {
            Ok(c) if c.uid() == 0 || c.uid() == me => {}
            Ok(c) => {
                warn!(
                    "control socket: refused a client running as uid {} (root only)",
                    c.uid()
                );
                continue;
            }
            Err(_) => continue,
        }
        let node = node.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let (r, mut w) = sock.into_split();
            let mut line = String::new();
            // One request line of at most 64 KiB.
            let mut r = BufReader::new(r.take(64 << 10));
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            let answer = match read {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = node.send(Input::Control(req, Reply::Socket(tx)));
                        rx.await
                            .unwrap_or_else(|_| Response::Error("the node is stopping".into()))
                    }
                    Err(e) => Response::Error(format!("bad request: {e}")),
                },
                _ => return,
            };
            let mut out = serde_json::to_string(&answer).unwrap_or_default();
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
        });
    }
}
