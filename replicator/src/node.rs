//! The replication daemon of one node: the I/O loop around the pure node
//! core ([`twinfs_replicator_proto::node::NodeCore`]), on a real QUIC link
//! and a real store.
//!
//! Everything runs on one current-thread tokio runtime (measured here: a
//! multi-thread runtime adds 20–45 µs per round trip). One task, the node
//! task, owns the core and everything it drives: the connection to the peer,
//! the applier, the mount, the state file and the control requests. It feeds
//! the core what happens (frames, finished work, requests, time) and does
//! what the core asks ([`Output`]s). Everything else talks to it through one
//! channel of `Input`s:
//!
//! - connector tasks dial (or accept) the peer and hand over each new QUIC
//!   connection; per connection, a reader task forwards decoded frames and a
//!   writer task sends what the node queues (`connect`);
//! - on a secondary, the applier thread applies the peer's mutations to the
//!   [`DiskStore`] in order and reports each applied (and synced) seq (`apply`);
//! - on a primary, FUSE threads write through [`ReplicatedStore`], which
//!   queues applied mutations on the `Link` and waits for the positions the
//!   node task publishes back;
//! - resync and online verify read and write the store on blocking threads
//!   (`resync`, `verify`);
//! - the control socket turns `twinfs status/promote/demote` into requests,
//!   and the [`NodeHandle`] does the same for the rest of the process.
//!
//! Which side dials is fixed by the config so the two never race: the node
//! whose `listen` address sorts first dials, the other accepts.

mod apply;
mod connect;
mod control_socket;
mod error;
mod events;
#[cfg(test)]
mod fuzz;
mod handle;
mod host;
mod resync;
mod splitbrain;
mod status;
mod verify;

use crate::control::{Request, Response};
use crate::evidence::EvidenceBoard;
use crate::inflight::Charge;
use crate::state::StateWriter;
use crate::store::{Link, Outgoing, ReplicatedStore};
use crate::tls::{Identity, PeerTrust};
use crate::transport::{self, TransportOptions};
use apply::{do_job, sync_in_background, Job, Jobs};
pub use error::{MountError, NodeError};
use handle::Reply;
pub use handle::{
    channel, HandleError, NodeEvent, NodeEvents, NodeHandle, NodeInbox, EVENT_BACKLOG,
};
use host::Local;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, error, info};
use twinfs_fs::{DiskStore, Store as _};
use twinfs_replicator_proto::node::{Close, LocalWrite, NodeConfig, NodeCore, Output};
pub use twinfs_replicator_proto::node::{StandbyLag, StandbyView};
use twinfs_replicator_proto::{Frame, ProtocolConfig, Role, Seq, SplitBrainPolicy};

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
    /// alone (used under `OnPeerLoss::WithEvidence`).
    pub evidence: Arc<EvidenceBoard>,
    /// `Some(max_lag)`: while secondary, serve the replica read-only
    /// (`[standby] serve`); see [`Mounter::standby`].
    pub standby: Option<std::time::Duration>,
    /// The mount's access and its kernel caches: the applier drops what the
    /// kernel cached of each of the peer's mutations.
    pub view: Arc<twinfs_fs::view::View>,
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
    /// (A demotion with `[standby] serve`) turns the read-write mount
    /// read-only in place: it stays mounted, its users keep their open
    /// files; returns once no more writes can arrive. Runs like `unmount`.
    fn read_only(&mut self) -> Result<(), MountError> {
        self.unmount()
    }
    /// (A secondary with `[standby] serve`) what the mount shows from now on:
    /// mount `store` read-only ([`StandbyView::Serving`]; a read-write mount
    /// of this node stays, read-only), fail every request
    /// ([`StandbyView::Hidden`]), or unmount ([`StandbyView::Off`]). Called
    /// on the node task, before the mutations or resync values that follow
    /// are handed to the applier: it must not wait for them.
    fn standby(
        &mut self,
        store: Arc<ReplicatedStore>,
        view: StandbyView,
    ) -> Result<(), MountError> {
        let _ = (store, view);
        Ok(())
    }
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
    /// A background save of the state file finished.
    BackgroundSaved(Result<(), String>),
    /// A [`NodeHandle::subscribe`] call.
    Subscribe(std::sync::mpsc::SyncSender<NodeEvent>),
}

/// The connection to the peer, as the I/O side holds it.
struct Conn {
    id: u64,
    quic: quinn::Connection,
    tx: mpsc::UnboundedSender<Frame>,
    /// Resync bytes handed to the writer and not yet written.
    queued: Arc<AtomicU64>,
}

/// A secondary makes what it applied durable on its own after this many bytes
/// (in the background, without holding up the applier): the primary keeps every
/// mutation in memory until the peer has it durably, so without fsyncs from
/// the application a long write would otherwise pile up there.
const BACKGROUND_SYNC_BYTES: u64 = 32 << 20;

/// Notable events kept for the status.
const RECENT: usize = 20;

/// How many times one turn of the loop drives the core while finished work
/// keeps coming back to it (inline applies and syncs).
const DRIVES_PER_TURN: usize = 8;

struct Node {
    opts: NodeOptions,
    core: NodeCore,
    /// The store and the state file, as the core sees them.
    local: Local,
    disk: Arc<DiskStore>,
    link: Arc<Link>,
    store: Arc<ReplicatedStore>,
    mounter: Arc<Mutex<Box<dyn Mounter>>>,
    conn: Option<Conn>,
    input_tx: mpsc::UnboundedSender<Input>,
    input_rx: mpsc::UnboundedReceiver<Input>,
    jobs: Jobs,
    recent: VecDeque<String>,
    /// The last split brain detected, with the files each side changed.
    split_brain: Option<crate::status::SplitBrain>,
    /// The charge of the peer's frame being handled: a job made of the frame
    /// takes it along; else it is given back once the frame is handled and
    /// driven.
    charge: Option<Charge>,
    /// The charges of the frames the core holds between a resync's end and
    /// its jump (the reader waits while they fill the budget).
    early_charges: Vec<Charge>,
    /// Stops the resync shipment running on a blocking thread.
    resync_cancel: Option<Arc<AtomicBool>>,
    /// An online verify waiting for the peer's answer.
    verify: Option<verify::Pending>,
    /// An online verify computing its local digests: (id, repair, reply).
    verify_reply: Option<(u64, bool, Reply)>,
    verify_seq: u64,
    /// `twinfs promote` waiting for its mount; `twinfs demote` for its unmount.
    promote_reply: Option<Reply>,
    demote_reply: Option<Reply>,
    /// Set while this node refuses the peer (read by the dialer for its backoff).
    refusing: Arc<AtomicBool>,
    /// (Secondary) mutation bytes handed to the applier since the last sync started.
    unsynced_bytes: u64,
    /// (Secondary) a background sync is running.
    background_sync: bool,
    /// (Secondary) a sync started ahead of a flush request is running; it
    /// covers the mutations up to this seq.
    sync_ahead: Option<Seq>,
    /// Who gets the node's events, and the states they were last told.
    events: events::Publisher,
}

impl Node {
    fn new(
        opts: NodeOptions,
        disk: Arc<DiskStore>,
        mounter: Box<dyn Mounter>,
        inbox: NodeInbox,
    ) -> Result<Node, NodeError> {
        let state = crate::state::load(&opts.data_dir)?;
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
            let view = opts.view.clone();
            let tx = input_tx.clone();
            let queued = jobs.queued.clone();
            std::thread::Builder::new()
                .name("twinfs-apply".into())
                .spawn(move || apply::applier(disk, view, job_rx, tx, queued))
                .map_err(|error| NodeError::Start {
                    what: "the applier thread",
                    error,
                })?;
        }
        let mut local = Local::new(
            disk.clone(),
            opts.data_dir.clone(),
            Arc::new(StateWriter::default()),
        );
        let cfg = NodeConfig {
            name: opts.name.clone(),
            peer: opts.peer,
            protocol: opts.protocol.clone(),
            split_brain: opts.split_brain,
            evidence_source: opts.evidence.source().describe(),
            standby: opts.standby,
        };
        let core = NodeCore::new(cfg, state, &mut local);
        Ok(Node {
            opts,
            core,
            local,
            disk,
            link,
            store,
            mounter: Arc::new(Mutex::new(mounter)),
            conn: None,
            input_tx,
            input_rx,
            jobs,
            recent: VecDeque::new(),
            split_brain: None,
            charge: None,
            early_charges: Vec::new(),
            resync_cancel: None,
            verify: None,
            verify_reply: None,
            verify_seq: 0,
            promote_reply: None,
            demote_reply: None,
            refusing: Arc::new(AtomicBool::new(false)),
            unsynced_bytes: 0,
            background_sync: false,
            sync_ahead: None,
            events: events::Publisher::default(),
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
            tokio::spawn(connect::dial_loop(
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
            tokio::spawn(connect::accept_loop(acceptor, self.input_tx.clone(), ids))
        };
        let control = tokio::spawn(control_socket::control_loop(
            crate::control::socket_path(&self.opts.data_dir),
            self.input_tx.clone(),
        ));
        let state = self.core.state();
        info!(
            node = %self.opts.name,
            listen = %self.opts.listen,
            peer = %self.opts.peer,
            disk = ?state.disk,
            generation = %format_args!("{:016x}", state.generation),
            applied = self.disk.last_applied().0,
            "replication node started; {}",
            if dials { "dialing the peer" } else { "waiting for the peer to connect" }
        );
        let signal = |kind| {
            tokio::signal::unix::signal(kind).map_err(|error| NodeError::Start {
                what: "the signal handlers",
                error,
            })
        };
        let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
        let link = self.link.clone();
        self.drive();
        while !self.core.stopped() {
            let now = Instant::now();
            let deadline = self
                .core
                .poll_timeout(now)
                .unwrap_or_else(|| now + Duration::from_secs(3600));
            tokio::select! {
                _ = link.wake.notified() => {}
                Some(input) = self.input_rx.recv() => self.handle(input),
                _ = tokio::time::sleep_until(deadline.into()) => self.core.handle_timeout(Instant::now()),
                _ = sigterm.recv() => self.begin_shutdown("SIGTERM"),
                _ = sigint.recv() => self.begin_shutdown("SIGINT"),
            }
            self.drive();
            // The frame handled (if any) needs no more of its budget.
            self.charge = None;
        }
        connector.abort();
        control.abort();
        let _ = std::fs::remove_file(crate::control::socket_path(&self.opts.data_dir));
        if let Err(e) = self.local.save_now(self.core.state()) {
            error!("cannot save the replication state: {e}");
        }
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

    fn begin_shutdown(&mut self, signal: &str) {
        info!("{signal}: shutting down");
        self.core.begin_shutdown();
    }

    /// Records a notable event for the status (and logs it).
    fn note(&mut self, what: String) {
        info!("{what}");
        self.events.publish(NodeEvent::Note(what.clone()));
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        self.recent.push_back(format!("{stamp} {what}"));
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
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
                self.conn = Some(Conn {
                    id,
                    quic,
                    tx,
                    queued,
                });
                self.core.connected(id, addr, &self.local);
            }
            Input::ConnFrame { id, frame, charge } => {
                if self.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.charge = Some(charge);
                    let held = self.core.early_frames();
                    self.core.handle_frame(now, id, frame, &mut self.local);
                    if self.core.early_frames() > held {
                        self.early_charges.extend(self.charge.take());
                    }
                }
            }
            Input::ConnDown { id, reason } => {
                let current = self.core.disconnected(id, &reason);
                if current || self.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.conn = None;
                }
            }
            Input::Applied(seq) => self.core.applied(seq),
            Input::Flushed(seq) => self.core.flushed(seq),
            Input::BackgroundSynced(result) => {
                self.background_sync = false;
                match result {
                    Ok(seq) => self.core.flushed(seq),
                    Err(e) => self.core.apply_failed(&format!("background sync: {e}")),
                }
            }
            Input::SyncedAhead(result) => {
                self.sync_ahead = None;
                match result {
                    Ok(seq) => self.core.synced_ahead(seq),
                    Err(e) => self
                        .core
                        .apply_failed(&format!("sync ahead of a flush: {e}")),
                }
            }
            Input::ApplyFailed(reason) => self.core.apply_failed(&reason),
            Input::Control(req, reply) => self.control(now, req, reply),
            Input::Unmounted(result) => {
                let r = result.map_err(|e| format!("{e:#}"));
                if let Some(answer) = self.core.unmounted(now, &mut self.local, r) {
                    if let Some(reply) = self.demote_reply.take() {
                        let _ = reply.send(answer.map_or_else(Response::Error, Response::Done));
                    }
                }
            }
            Input::Mounted(r) => self.mounted(now, r),
            Input::Frames(frames) => {
                for f in frames {
                    if matches!(f, Frame::VerifyResponse { .. }) {
                        self.core.verify_answer_sent();
                    }
                    self.send(f);
                }
            }
            Input::ResyncPlanned {
                total,
                full,
                keys,
                position,
            } => self.core.resync_planned(total, full, keys, position),
            Input::ResyncChunk(payload) => {
                if self.core.resync_sent(payload.len() as u64) {
                    self.send(Frame::ResyncData { payload });
                }
            }
            Input::ResyncShipped { consistent_at } => {
                self.resync_cancel = None;
                self.core.resync_shipped(now, consistent_at);
            }
            Input::ResyncFailed(reason) => self.core.resync_failed(&reason),
            Input::Jumped(seq) => {
                self.core.jumped(now, seq, &mut self.local);
                self.early_charges.clear();
            }
            Input::VerifyLocal { id, local } => self.verify_local(id, local),
            Input::VerifyFailed(why) => self.verify_failed(why),
            Input::BackgroundSaved(r) => self.core.background_saved(r),
            Input::Subscribe(tx) => self.events.subscribe(tx, &self.core),
        }
    }

    fn control(&mut self, now: Instant, req: Request, reply: Reply) {
        let answer = match req {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Promote => match self.core.promote(now, &mut self.local) {
                // The answer waits for the mount (see `mounted`).
                Ok(()) => {
                    self.promote_reply = Some(reply);
                    return;
                }
                Err(e) => Response::Error(e),
            },
            Request::DiscardMyData => self.discard_my_data(),
            Request::Verify { repair } => {
                self.start_verify(repair, reply);
                return;
            }
            Request::Demote => match self.core.demote(now) {
                Ok(()) => {
                    self.demote_reply = Some(reply);
                    return;
                }
                Err(e) => Response::Error(e),
            },
        };
        let _ = reply.send(answer);
    }

    /// The mount of a promotion is up (or failed): answer `twinfs promote`.
    fn mounted(&mut self, now: Instant, r: Result<(), String>) {
        let answer = self.core.mounted(now, &mut self.local, r);
        if let Some(reply) = self.promote_reply.take() {
            let _ = reply.send(answer.map_or_else(Response::Error, Response::Done));
        }
    }

    /// Sends a frame on the current connection.
    fn send(&self, frame: Frame) {
        if let Some(c) = &self.conn {
            if let Frame::ResyncData { payload } = &frame {
                c.queued.fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
            let _ = c.tx.send(frame);
        }
    }

    /// Drives the core and does what it asks, until finished work stops
    /// coming back to it.
    fn drive(&mut self) {
        for _ in 0..DRIVES_PER_TURN {
            let now = Instant::now();
            if self.core.role() == Role::Primary {
                let items: Vec<Outgoing> = self.link.lock().outgoing.drain(..).collect();
                for item in items {
                    self.core.local_write(
                        now,
                        match item {
                            Outgoing::Applied(seq, bytes) => LocalWrite::Applied(ps(seq), bytes),
                            Outgoing::FlushRequest => LocalWrite::Flush,
                        },
                    );
                }
            }
            let board = &self.opts.evidence;
            self.core.drive(now, &mut self.local, || board.latest());
            if let Some((committed, flushed)) = self.core.commit_positions() {
                self.link.publish(fss(committed), fss(flushed));
            }
            if !self.act() {
                break;
            }
        }
        self.sync_secondary();
        self.events.changes(&self.core);
        self.refusing.store(self.core.refusing(), Ordering::Relaxed);
    }

    /// Does what the core asked. Returns whether a report went back into
    /// the core (so that it is driven again).
    fn act(&mut self) -> bool {
        let mut fed = false;
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send(frame) => self.send(frame),
                Output::Close { how, reason } => self.close(how, reason),
                Output::Apply(seq, payload) => fed |= self.apply(seq, payload),
                Output::Sync(s) => fed |= self.sync(s),
                Output::ApplyLocal(payload) => {
                    let _ = self
                        .jobs
                        .send_charged(Job::ApplyLocal(payload), self.charge.take());
                }
                Output::AnswerVerify(payload) => {
                    let _ = self
                        .jobs
                        .send_charged(Job::Verify(payload), self.charge.take());
                }
                Output::Jump(position) => {
                    let _ = self.jobs.send(Job::Jump(position));
                    self.early_charges.clear();
                }
                Output::ListChangedKeys(floor) => self.list_changed_keys(floor),
                Output::ShipResync { floor, target_keys } => self.ship_resync(floor, target_keys),
                Output::CancelResync => {
                    if let Some(c) = self.resync_cancel.take() {
                        c.store(true, Ordering::Relaxed);
                    }
                }
                Output::VerifyAnswered(payload) => self.verify_answered(&payload),
                Output::SplitBrain { reason, peer } => self.split_brain(reason, &peer),
                Output::PeerReport(payload) => self.peer_report(&payload),
                Output::SplitBrainCleared => self.split_brain = None,
                Output::OpenWrites(last) => {
                    {
                        let mut l = self.link.lock();
                        l.committed = l.committed.max(fss(last));
                        l.flushed = l.flushed.max(fss(last));
                        l.queued = l.queued.max(fss(last));
                    }
                    self.link.set_open(true, None);
                }
                Output::CloseWrites(why) => self.link.set_open(false, Some(why)),
                Output::Mount => {
                    let tx = self.input_tx.clone();
                    let mounted = self
                        .mounter
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .mount(
                            self.store.clone(),
                            Box::new(move |r| {
                                let _ = tx.send(Input::Mounted(r));
                            }),
                        );
                    if let Err(e) = mounted {
                        self.mounted(Instant::now(), Err(format!("{e:#}")));
                        fed = true;
                    }
                }
                Output::Unmount | Output::ReadOnly => {
                    let mounter = self.mounter.clone();
                    let tx = self.input_tx.clone();
                    let in_place = matches!(out, Output::ReadOnly);
                    tokio::task::spawn_blocking(move || {
                        let mut m = mounter.lock().unwrap_or_else(|p| p.into_inner());
                        let r = if in_place { m.read_only() } else { m.unmount() };
                        let _ = tx.send(Input::Unmounted(r));
                    });
                }
                Output::Standby(view) => {
                    let r = self
                        .mounter
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .standby(self.store.clone(), view);
                    match r {
                        Ok(()) => self.note(format!("standby view: {view}")),
                        Err(e) => self.note(format!("standby view {view}: {e}")),
                    }
                }
                Output::RetainFloor(floor) => self.disk.set_retain_floor(fss(floor)),
                Output::SaveInBackground => {
                    let tx = self.input_tx.clone();
                    self.local.save_in_background(self.core.state(), move |r| {
                        let _ = tx.send(Input::BackgroundSaved(r));
                    });
                }
                Output::Note(what) => self.note(what),
                Output::Stop => {}
            }
        }
        fed
    }

    /// Closes the current connection as the core asked.
    fn close(&mut self, how: Close, reason: String) {
        let (conn, linger, code) = match how {
            // The connection lingers a moment: the peer's report (a split
            // brain's list of files) may still be on its way.
            Close::Refused => (self.conn.as_ref(), 300, 2u32),
            Close::Reconnect => (self.conn.as_ref(), 50, 3u32),
        };
        if let Some(c) = conn {
            let _ = c.tx.send(Frame::Goodbye {
                reason: reason.clone(),
            });
            let quic = c.quic.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(linger)).await;
                quic.close(
                    code.into(),
                    twinfs_replicator_proto::limit::clip(&reason, 200).as_bytes(),
                );
            });
        }
        if how == Close::Reconnect {
            self.conn = None;
        }
    }

    /// (Secondary) applies a mutation: on the node task while the applier is
    /// idle and the mutation small, else on the applier thread. Returns
    /// whether the core got a report.
    fn apply(&mut self, seq: Seq, payload: twinfs_replicator_proto::Bytes) -> bool {
        self.unsynced_bytes += payload.len() as u64;
        if payload.len() <= apply::INLINE_APPLY_BYTES && self.jobs.idle() {
            if let Some(report) =
                do_job(&self.disk, &self.opts.view, Job::Apply(seq, payload), None)
            {
                self.handle(report);
                return true;
            }
            return false;
        }
        // The first job of the frame just handled holds its charge
        // (mutations that were waiting for it were charged to the early
        // buffer's own bound).
        let _ = self
            .jobs
            .send_charged(Job::Apply(seq, payload), self.charge.take());
        false
    }

    /// (Secondary) the primary asked for a flush up to `s`.
    fn sync(&mut self, s: Seq) -> bool {
        if self.sync_ahead.is_some_and(|a| a >= s) {
            // The sync ahead covers it: its report answers.
            return false;
        }
        if self.unsynced_bytes <= apply::INLINE_SYNC_BYTES && self.jobs.idle() {
            self.unsynced_bytes = 0;
            if let Some(report) = do_job(&self.disk, &self.opts.view, Job::Sync(s), None) {
                self.handle(report);
                return true;
            }
            return false;
        }
        let _ = self.jobs.send(Job::Sync(s));
        false
    }

    /// (Secondary) syncs in the background after many unsynced bytes, and
    /// ahead of the flush requests of an fsync-heavy application.
    fn sync_secondary(&mut self) {
        if self.core.role() != Role::Secondary {
            return;
        }
        if self.unsynced_bytes >= BACKGROUND_SYNC_BYTES && !self.background_sync {
            self.unsynced_bytes = 0;
            self.background_sync = true;
            sync_in_background(&self.disk, &self.input_tx, Input::BackgroundSynced);
        }
        if self.sync_ahead.is_none() && self.jobs.idle() {
            if let Some(applied) = self.core.sync_ahead_due(Instant::now()) {
                self.sync_ahead = Some(applied);
                self.unsynced_bytes = 0;
                sync_in_background(&self.disk, &self.input_tx, Input::SyncedAhead);
            }
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
