//! The supervisor's driver: what `twinfs run` adds when the config has a
//! `[failover]` table. It watches the peer on every path it has (the
//! replication link, the public-network beacon, the ping targets, the
//! witness), feeds what it sees to the pure failover state machine
//! ([`crate::machine`]), and carries out the machine's steps: take the witness
//! lease, promote the store (new generation, mount read-write), run the Lua
//! `on_promote` hook (VIP, Apache, health check), and the reverse on demotion.
//!
//! It runs on its own thread next to the replication node and talks to it
//! through the [`Node`] trait (status, promote, demote: what `twinfs promote`
//! asks over the control socket, without the socket), so the node knows
//! nothing about failover. Its own state (the machine's decisions with their
//! reasons, the last hook's actions, what each path says) is published on a
//! [`StatusBoard`] within the process and written to `DATA/failover.json` for
//! `twinfs status`; admin requests (`twinfs switchover`, maintenance) arrive
//! on `DATA/failover.sock`.
//!
//! One round (`Driver::round`, every 50 ms): serve a shutdown request,
//! serve admin requests, observe (`observe.rs`: the node's status, the beacon
//! and the probes become the machine's `Observation`), carry out the
//! decisions (`steps.rs`), publish the status (`status.rs`). `start.rs` checks
//! the [`SupervisorConfig`] and starts the threads (`probes.rs`: ping and
//! witness; `admin_socket.rs`: `failover.sock`).
//!
//! Time comes from a [`Clock`] and the node is a [`Node`], so the tests
//! (`tests.rs`) drive the whole driver, Lua hooks included, against a fake
//! node and a scripted clock in milliseconds.

mod admin;
mod admin_socket;
mod config;
mod observe;
mod probes;
mod start;
mod status;
mod steps;
#[cfg(test)]
mod tests;

pub use admin::{admin_call, socket_path, AdminCallError, AdminRequest, AdminResponse};
pub use config::{BeaconSettings, SupervisorConfig, WitnessSettings};
pub use start::{start, PreUnmount, StartError, SupervisorHandle};
pub use status::{
    read_status, status_path, FailoverCounters, FailoverStatus, HookTiming, StatusBoard,
};

use crate::hooks::{Hook, HookRuntime};
use crate::machine::{Decision, Machine, Role};
use crate::witness::Beacon;
use probes::{Probes, WitnessCmd};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use twinfs_replicator::control::{Request, Response};
use twinfs_replicator::node::{NodeEvents, NodeHandle};
use twinfs_replicator::status::Status;

/// How often the supervisor looks at the world.
const TICK: Duration = Duration::from_millis(50);
/// How long a control call to the local node may take for a status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Promotion waits for the mount; demotion for the unmount.
const ROLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the hand-over flag is announced after a planned demotion.
const HANDOVER_ANNOUNCE: Duration = Duration::from_secs(5);
/// Decisions kept in the status file.
const STATUS_DECISIONS: usize = 30;

/// The replication node, as the driver sees it. [`NodeHandle`] is the real
/// one; the tests use a fake.
pub trait Node: Send {
    /// The node's status now; `None` if it does not answer in time.
    fn status(&self) -> Option<Status>;
    /// Makes the node primary: a line for the admin, or why it refused or
    /// failed (the peer is still primary, the disk is not UpToDate, ...).
    fn promote(&self) -> Result<String, String>;
    /// Makes the node secondary (unmounts): a line for the admin, or why not.
    fn demote(&self) -> Result<String, String>;
    /// Waits up to `d` before the next look, or less when the node has news.
    /// The default sleeps on `clock` (the tests' fake node).
    fn wait(&self, clock: &dyn Clock, d: Duration) {
        clock.sleep(d);
    }
}

/// The node of this process, as the driver uses it: its handle, and its
/// event stream, so that the driver looks again as soon as the node's role,
/// disk or link changes (or it notes something) instead of at its next tick.
pub struct NodeLink {
    handle: NodeHandle,
    /// `None` if the node had stopped already when the link was made.
    events: Option<NodeEvents>,
}

impl NodeLink {
    /// Subscribes to `handle`'s events.
    pub fn new(handle: NodeHandle) -> NodeLink {
        let events = handle.subscribe().ok();
        NodeLink { handle, events }
    }
}

impl Node for NodeLink {
    fn status(&self) -> Option<Status> {
        self.handle.status(STATUS_TIMEOUT).ok()
    }

    fn promote(&self) -> Result<String, String> {
        role_call(&self.handle, Request::Promote)
    }

    fn demote(&self) -> Result<String, String> {
        role_call(&self.handle, Request::Demote)
    }

    fn wait(&self, clock: &dyn Clock, d: Duration) {
        let Some(events) = &self.events else {
            return clock.sleep(d);
        };
        match events.recv_timeout(d) {
            // Whatever else arrived meanwhile is part of the same news.
            Ok(_) => while events.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => clock.sleep(d),
        }
    }
}

fn role_call(node: &NodeHandle, req: Request) -> Result<String, String> {
    match node.call(req, ROLE_TIMEOUT) {
        Ok(Response::Done(line)) => Ok(line),
        Ok(Response::Error(e)) => Err(e),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Where the driver reads the time, and how it waits: the real clock in
/// production, a scripted one in the tests (as quinn's `Runtime::now`).
pub trait Clock: Send {
    /// Now, on a monotonic clock.
    fn now(&self) -> Instant;
    /// Waits `d` (a scripted clock just moves on by `d`).
    fn sleep(&self, d: Duration);
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The supervisor's loop state: the machine, the hooks, the paths to the
/// peer, and what it publishes.
struct Driver {
    /// The replication node of this process.
    node: Box<dyn Node>,
    clock: Box<dyn Clock>,
    data_dir: PathBuf,
    peer_address: String,
    t0: Instant,
    wall0: SystemTime,
    machine: Machine,
    hooks: HookRuntime,
    beacon: Option<Beacon>,
    probes: Arc<Mutex<Probes>>,
    witness_tx: Option<mpsc::Sender<WitnessCmd>>,
    want_lease: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Requests from `failover.sock`, read on their own thread.
    admin_rx: Option<mpsc::Receiver<admin_socket::Pending>>,
    /// Announce the hand-over flag until then.
    handover_until: Option<Instant>,
    /// The peer's hand-over flag was already acted on (until it clears).
    handover_seen: bool,
    /// Announce the take-over request until then.
    takeover_until: Option<Instant>,
    /// The peer's take-over request was already acted on (until it clears).
    takeover_seen: bool,
    last_status: Option<Status>,
    timeline: VecDeque<String>,
    last_hooks: Vec<String>,
    last_written: Option<Instant>,
    /// Where the latest status is published within the process.
    board: StatusBoard,
    dirty: bool,
    has_witness: bool,
    /// `standby.serve`: the hooks' `twinfs.state.standby_serves`.
    standby_serves: bool,
    escalation_command: Option<Vec<String>>,
    counters: FailoverCounters,
    /// Set while a DemoteStore step runs (see [`PreUnmount`]).
    demoting: Arc<AtomicBool>,
    /// Shutdown requests from the mounter.
    pre_unmount_rx: Option<mpsc::Receiver<mpsc::Sender<()>>>,
}

impl Driver {
    /// A driver with no beacon, probes, witness or admin socket yet
    /// (`start` adds those it is configured with).
    fn new(
        node: Box<dyn Node>,
        clock: Box<dyn Clock>,
        machine: Machine,
        hooks: HookRuntime,
        data_dir: PathBuf,
        peer_address: String,
    ) -> Driver {
        Driver {
            t0: clock.now(),
            wall0: SystemTime::now(),
            node,
            clock,
            data_dir,
            peer_address,
            machine,
            hooks,
            beacon: None,
            probes: Arc::default(),
            witness_tx: None,
            want_lease: Arc::default(),
            stop: Arc::default(),
            admin_rx: None,
            handover_until: None,
            handover_seen: false,
            takeover_until: None,
            takeover_seen: false,
            last_status: None,
            timeline: VecDeque::new(),
            last_hooks: Vec::new(),
            last_written: None,
            board: StatusBoard::default(),
            dirty: true,
            has_witness: false,
            standby_serves: false,
            escalation_command: None,
            counters: FailoverCounters::default(),
            demoting: Arc::default(),
            pre_unmount_rx: None,
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.clock.now().saturating_duration_since(self.t0))
    }

    fn wall(&self, at_ms: u64) -> String {
        humantime::format_rfc3339_millis(self.wall0 + Duration::from_millis(at_ms)).to_string()
    }

    /// Runs rounds every [`TICK`] (sooner when the node has news) until stopped.
    fn run(&mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let started = self.clock.now();
            self.round();
            let spent = self.clock.now().saturating_duration_since(started);
            if let Some(rest) = TICK.checked_sub(spent) {
                self.node.wait(self.clock.as_ref(), rest);
            }
        }
        self.write_status(true);
    }

    /// One round: requests first, so that they act on this round's view.
    fn round(&mut self) {
        self.serve_pre_unmount();
        self.serve_admin();
        self.tick();
        self.write_status(false);
    }

    /// Cleans up what a crash may have left. Every node starts as Secondary
    /// (the replication node never resumes the primary role by itself), and a
    /// Secondary must not hold the VIP, nor run the service unless the
    /// standby serves reads: the `on_demote` hook releases and stops them
    /// (or starts the service, see `failover.lua`). This runs before the
    /// node joins the pair, so the peer never sees two holders.
    fn reconcile(&mut self) {
        let service = if self.standby_serves {
            "keeps the service running for standby reads"
        } else {
            "stops the service"
        };
        self.note(format!(
            "startup: this node starts as Secondary, so it releases any VIP left over and \
             {service} (on_demote)"
        ));
        // The disk is not known yet: the hook sees "Unknown".
        let status = Status::default();
        if let Err(e) = self.run_hook_with_disk(Hook::Demote, &status, None, Role::Secondary) {
            self.note(format!("startup clean-up failed: {e}"));
        }
        self.write_status(true);
    }

    /// Logs a decision and adds it to the timeline.
    fn record(&mut self, d: &Decision) {
        use crate::machine::Action;
        let what = match d.action {
            Action::Step(s) => format!("step {s:?}"),
            Action::RunHook(h) => format!("hook {h:?}"),
            Action::Escalate(e) => format!("escalate {e:?}"),
            other => format!("{other:?}"),
        };
        let line = format!("{} {what}: {}", self.wall(d.at_ms), d.reason);
        match d.action {
            Action::NoAction => tracing::info!("supervisor: {what}: {}", d.reason),
            _ => tracing::warn!("supervisor: {what}: {}", d.reason),
        }
        self.push_timeline(line);
    }

    /// Logs what the driver itself did and adds it to the timeline.
    fn note(&mut self, text: String) {
        tracing::warn!("supervisor: {text}");
        let line = format!("{} {text}", self.wall(self.now_ms()));
        self.push_timeline(line);
    }

    fn push_timeline(&mut self, line: String) {
        self.timeline.push_back(line);
        while self.timeline.len() > STATUS_DECISIONS {
            self.timeline.pop_front();
        }
        self.dirty = true;
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
