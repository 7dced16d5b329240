//! The failover state machine: decides when this node promotes, demotes,
//! hands over or refuses to, and writes down why.
//!
//! It is pure: no sockets, no threads, no Lua, no clock. The driver (the
//! supervisor daemon) feeds it what it sees, with the time as milliseconds
//! from a monotonic clock, and gets back [`Decision`]s. Every decision,
//! including a decision *not* to act, carries a reason written for the admin
//! ("did not promote: local disk is Outdated"). The last
//! [`MachineConfig::history_len`] decisions are kept for `twinfs status`.
//!
//! # Calling order
//!
//! - [`Machine::handle_observation`] every ~50 ms and after every event (link
//!   up/down, beacon, witness answer). Time only moves through it.
//! - [`Machine::handle_step_finished`] when the step the machine asked for has
//!   finished, with `Ok(())` or `Err(what failed)`. The driver runs one step at
//!   a time; [`Machine::current_step`] says which one is due.
//! - Admin and peer requests: [`Machine::request_switchover`],
//!   [`Machine::set_maintenance`], [`Machine::clear_failure`], and
//!   [`Machine::handle_peer_handed_over`] when the peer says "I demoted, take over".
//!
//! Each call returns the new decisions (they are also in [`Machine::history`]).
//! The driver logs all of them and acts on the ones for which
//! [`Action::for_driver`] is true: [`Action::Step`] (run it, then report),
//! [`Action::RunHook`] (run the Lua hook, nothing to report),
//! [`Action::Escalate`] (reboot or power off) and [`Action::HandOver`] (tell
//! the peer it may promote). The others are records.
//!
//! # Rules it keeps
//!
//! - A promotion runs, in order: `AcquireLease` (with a witness),
//!   `FencePeer` (with a fence hook, only when the peer is declared dead),
//!   `PromoteStore`, `OnPromote`. A demotion runs `OnDemote`, `DemoteStore`,
//!   `ReleaseLease` (with a witness). If a promotion step fails, what was done
//!   is undone in reverse order, then no promotion happens for
//!   [`MachineConfig::hold_down_ms`]. If a demotion step fails, the machine
//!   escalates as configured and stops acting until [`Machine::clear_failure`].
//! - Never promote a disk that is not `UpToDate`; never promote while the peer
//!   is alive on the replication link or the public beacon (unless the peer
//!   itself said it is Secondary: a hand-over, or a connected pair with no
//!   primary where this node is the preferred one); with a witness, never
//!   promote without its lease, while it still hears the peer, or while it is
//!   unreachable; with a ping target, never promote while it is unreachable.
//! - A primary that has lost the peer and the witness (or, without a witness,
//!   the peer and the ping target) for half of `deadtime` demotes itself, so
//!   that it has let go before the other side may promote. The witness lease
//!   must therefore last at least `deadtime`.
//! - Without a witness, a cut between the two nodes alone (both still reach
//!   the ping target) makes both primary, as with Heartbeat: the secondary
//!   cannot tell a dead peer from a cut link. A second path (the public
//!   beacon), a fence hook (`FencePeer` runs before `PromoteStore`) or a
//!   witness closes that hole; the split brain is then reported through the
//!   `SplitBrain` hook when the link returns.
//!
//! # Example: the driver loop
//!
//! ```
//! use twinfs_supervisor::machine::*;
//!
//! let cfg = MachineConfig { deadtime_ms: 1_000, initdead_ms: 1_000, ..MachineConfig::default() };
//! let mut m = Machine::new(cfg, 0).unwrap();
//! let mut role = Role::Secondary;
//! // The peer never answers: after initdead this node takes over.
//! for tick in 0..40u64 {
//!     let obs = Observation {
//!         now_ms: tick * 50,
//!         role,
//!         disk: Some(DiskState::UpToDate),
//!         link: LinkView::down(),
//!         beacon_age_ms: None,
//!         ping: None,
//!         witness: None,
//!     };
//!     let mut todo = m.handle_observation(&obs);
//!     while let Some(d) = todo.pop() {
//!         // A real driver logs every decision, runs the step or the hook...
//!         if let Action::Step(step) = d.action {
//!             if step == Step::PromoteStore { role = Role::Primary }
//!             // ...and reports how it went, which may ask for the next step.
//!             todo.extend(m.handle_step_finished(obs.now_ms, step, Ok(())).unwrap());
//!         }
//!     }
//! }
//! assert_eq!(role, Role::Primary);
//! assert!(m.why(2_000).starts_with("promoted"), "{}", m.why(2_000));
//! ```

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use twinfs_replicator_proto::{DiskState, Role};

/// A disk state for a message: `UpToDate`, ..., or `Unknown` when the
/// store did not say.
fn disk_name(disk: Option<DiskState>) -> String {
    disk.map_or_else(|| "Unknown".into(), |d| d.to_string())
}

/// What the replication link says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// The link is up and the peer's heartbeats arrive.
    pub connected: bool,
    /// The peer's role as it last reported it on the link.
    pub peer_role: Option<Role>,
    /// The peer's disk as it last reported it on the link.
    pub peer_disk: Option<DiskState>,
    /// Both stores hold the same data: connected and no resync running.
    pub in_sync: bool,
    /// How long ago the last frame from the peer arrived on the link, as the
    /// replication daemon measured it; `None` if it does not say. The peer's
    /// silence is counted from then, not from when the daemon gave up on the
    /// connection, so that death is declared after deadtime, not twice it.
    #[serde(default)]
    pub heard_ago_ms: Option<u64>,
}

impl LinkView {
    /// A link that is down and never told anything.
    pub fn down() -> Self {
        LinkView {
            connected: false,
            peer_role: None,
            peer_disk: None,
            in_sync: false,
            heard_ago_ms: None,
        }
    }

    /// A connected, in-sync link to a peer in `peer_role` with an `UpToDate` disk.
    pub fn healthy(peer_role: Role) -> Self {
        LinkView {
            connected: true,
            peer_role: Some(peer_role),
            peer_disk: Some(DiskState::UpToDate),
            in_sync: true,
            heard_ago_ms: None,
        }
    }
}

/// What the ping target (Heartbeat's `ping` node) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingView {
    /// It answers now.
    pub reachable: bool,
    /// Since when (same clock as `now_ms`) it has been in that state.
    pub since_ms: u64,
}

/// What the witness (the diskless tie-breaker) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessView {
    /// It answers now.
    pub reachable: bool,
    /// It holds the primary lease for this node, or would grant it now (the
    /// lease is free). The lease is taken by the `AcquireLease` step; while
    /// this node is Primary the driver's witness client keeps it (renews it,
    /// and takes it again at once if it lapsed and nobody took it).
    pub grants_me: bool,
    /// It still receives the peer's heartbeats.
    pub hears_peer: bool,
}

/// One look at the world, taken by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Milliseconds on a monotonic clock; never goes back.
    pub now_ms: u64,
    /// The local role as the store reports it now.
    pub role: Role,
    /// The local disk as the store reports it now; `None` when it did not
    /// say (never promoted).
    pub disk: Option<DiskState>,
    /// The replication link.
    pub link: LinkView,
    /// Milliseconds since the last authenticated beacon from the peer on the
    /// public network (a second path, like Heartbeat's second medium); `None`
    /// when none ever came or no beacon is configured.
    pub beacon_age_ms: Option<u64>,
    /// The ping target; `None` when not configured or not asked yet.
    pub ping: Option<PingView>,
    /// The witness; `None` when not configured or not asked yet.
    pub witness: Option<WitnessView>,
}

/// Which node should hold the primary role when both are fine (Heartbeat's
/// node named in `haresources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preferred {
    /// This node: it promotes when the pair is connected and nobody is primary.
    ThisNode,
    /// The peer: with `auto_failback`, this node hands the role back to it.
    PeerNode,
    /// Neither: a pair that starts together waits for `twinfs promote`.
    Neither,
}

/// What to do when a demotion step fails (the node may still hold the VIP or
/// run Apache, so the peer must not take over unless this node goes away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Escalation {
    /// Record it and stop acting; the admin fixes it.
    None,
    /// Reboot this node.
    Reboot,
    /// Power this node off.
    Poweroff,
}

/// The failover settings. Times are milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// The peer is declared dead after this much silence on every path.
    pub deadtime_ms: u64,
    /// Like `deadtime_ms`, used until the peer has been heard once since start
    /// (Heartbeat's `initdead`): the other node may still be booting.
    pub initdead_ms: u64,
    /// The preferred node takes the role back when it returns.
    pub auto_failback: bool,
    /// Which node is the home node.
    pub preferred: Preferred,
    /// How long a returning peer must be continuously connected, `UpToDate` and
    /// in sync before a failback.
    pub stabilize_ms: u64,
    /// After a failed promotion, no new one for this long (no ping-pong).
    pub hold_down_ms: u64,
    /// The ping target as the admin wrote it (`10.0.0.1`), if any.
    pub ping_target: Option<String>,
    /// The witness as the admin wrote it (`10.0.0.3:7790`), if any.
    pub witness: Option<String>,
    /// A fence hook is configured: run `FencePeer` before taking over from a
    /// peer declared dead.
    pub fence: bool,
    /// What to do when a demotion step fails.
    pub on_demote_failure: Escalation,
    /// How many decisions the history keeps.
    pub history_len: usize,
}

impl Default for MachineConfig {
    /// Heartbeat-like values: deadtime 10 s, initdead 30 s, no failback,
    /// stabilize 5 s, hold-down 60 s, no ping, no witness, no fencing.
    fn default() -> Self {
        MachineConfig {
            deadtime_ms: 10_000,
            initdead_ms: 30_000,
            auto_failback: false,
            preferred: Preferred::Neither,
            stabilize_ms: 5_000,
            hold_down_ms: 60_000,
            ping_target: None,
            witness: None,
            fence: false,
            on_demote_failure: Escalation::None,
            history_len: 50,
        }
    }
}

/// A configuration the machine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A zero deadtime would declare the peer dead at once.
    #[error("deadtime_ms must be more than 0")]
    ZeroDeadtime,
    /// initdead shorter than deadtime makes no sense.
    #[error("initdead_ms ({initdead_ms}) must not be less than deadtime_ms ({deadtime_ms})")]
    InitdeadTooShort {
        /// The configured initdead.
        initdead_ms: u64,
        /// The configured deadtime.
        deadtime_ms: u64,
    },
    /// auto_failback needs to know which node is home.
    #[error("auto_failback is on but preferred is Neither: say which node is the home node")]
    FailbackWithoutPreferred,
    /// The history must hold at least the latest decision.
    #[error("history_len must be at least 1")]
    ZeroHistory,
}

/// The driver reported a step the machine did not ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// No promotion, demotion or rollback is running.
    #[error("step {got:?} finished but no step was running")]
    NoneRunning {
        /// The step the driver reported.
        got: Step,
    },
    /// Another step was due.
    #[error("step {got:?} finished but the running step is {expected:?}")]
    WrongStep {
        /// The step the machine is waiting for.
        expected: Step,
        /// The step the driver reported.
        got: Step,
    },
}

/// One resource step of a promotion or demotion; the driver runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Take the primary lease from the witness; fails if it is not granted.
    AcquireLease,
    /// Run the fence hook against the peer (power it off, cut its port).
    FencePeer,
    /// Start a new generation and mount read-write.
    PromoteStore,
    /// The Lua `on_promote` hook: VIP, Apache, health check.
    OnPromote,
    /// The Lua `on_demote` hook: stop Apache, release the VIP. Idempotent.
    OnDemote,
    /// Back to Secondary: mount read-only (or unmount). Idempotent.
    DemoteStore,
    /// Give the witness lease back. Idempotent; a failure is not serious
    /// (the lease expires by itself).
    ReleaseLease,
}

impl Step {
    /// The step that undoes this one during a rollback, if any.
    fn undo(self) -> Option<Step> {
        match self {
            Step::AcquireLease => Some(Step::ReleaseLease),
            Step::PromoteStore => Some(Step::DemoteStore),
            Step::OnPromote => Some(Step::OnDemote),
            // Fencing cannot be taken back; demotion steps are not undone.
            Step::FencePeer | Step::OnDemote | Step::DemoteStore | Step::ReleaseLease => None,
        }
    }

    /// Whether a failure of this step may have left part of its work done (so
    /// the rollback undoes it too). A refused lease or fence did nothing.
    fn may_be_half_done(self) -> bool {
        matches!(self, Step::PromoteStore | Step::OnPromote)
    }
}

/// A Lua hook run for its own sake (not a step: nothing waits for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// The peer was declared dead (silent on every path for deadtime).
    PeerLost,
    /// A peer declared dead is heard again.
    PeerBack,
    /// Both nodes are primary: the `on_split_brain` hook picks the survivor.
    SplitBrain,
}

/// What a decision is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A promotion starts (its steps follow). Record.
    Promote,
    /// A demotion starts (its steps follow). Record.
    Demote,
    /// Driver: run this step, then call [`Machine::handle_step_finished`].
    Step(Step),
    /// A promotion step failed; the undo steps follow. Record.
    RollBack,
    /// A promotion, demotion or rollback is over; the reason says how. Record.
    Finished,
    /// Driver: run this hook (no report needed).
    RunHook(Hook),
    /// Driver: reboot or power off as said.
    Escalate(Escalation),
    /// Driver: tell the peer it may promote now (this node has demoted).
    HandOver,
    /// Deliberately nothing: the reason says what was not done and why. Record.
    NoAction,
}

impl Action {
    /// Whether the driver must do something for it (the rest are records).
    pub fn for_driver(&self) -> bool {
        matches!(
            self,
            Action::Step(_) | Action::RunHook(_) | Action::Escalate(_) | Action::HandOver
        )
    }
}

/// One decision, with the reason an admin reads in `twinfs status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// When it was taken (the `now_ms` of the call).
    pub at_ms: u64,
    /// What was decided.
    pub action: Action,
    /// Why, in plain words.
    pub reason: String,
}

/// What the machine is busy with, for `twinfs status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activity {
    /// Watching; no transition running.
    #[default]
    Idle,
    /// Running promotion steps.
    Promoting,
    /// Running demotion steps.
    Demoting,
    /// Undoing a failed promotion.
    RollingBack,
    /// A demotion failed: no automatic action until `clear_failure`.
    Stopped,
}

/// Why a demotion happens; decides what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DemoteCause {
    /// Admin switchover or failback: hand over to the peer afterwards.
    HandOver,
    /// Isolated or lost the lease: the peer probably took over; do not promote
    /// again before hearing from it.
    StepDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RunKind {
    Promotion,
    Demotion(DemoteCause),
    Rollback { failed: Step, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    kind: RunKind,
    steps: Vec<Step>,
    next: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Running(Run),
    Stopped { step: Step, message: String },
}

/// A deliberate refusal, kept to record each kind only once in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Maintenance,
    Stopped,
    SteppedDown,
    HoldDown,
    Disk(Option<DiskState>),
    WitnessUnreachable,
    WitnessHearsPeer,
    WitnessNoLease,
    PingUnreachable,
    LinkDownBeaconAlive,
    NoPrimary,
    KeepPrimaryWithoutLease,
}

/// How the peer looks from here right now.
#[derive(Debug, Clone, Copy)]
struct PeerView {
    /// The silence after which the peer is declared dead (deadtime or initdead).
    limit_ms: u64,
    /// `limit_ms` is initdead: the peer was never heard since start.
    initial: bool,
    link_silence_ms: u64,
    beacon_age_ms: Option<u64>,
}

impl PeerView {
    /// Silence on the link and on the beacon both at least `limit`.
    fn silent_for(&self, limit: u64) -> bool {
        self.link_silence_ms >= limit && self.beacon_age_ms.is_none_or(|a| a >= limit)
    }

    fn dead(&self) -> bool {
        self.silent_for(self.limit_ms)
    }

    fn beacon_alive(&self) -> bool {
        self.beacon_age_ms.is_some_and(|a| a < self.limit_ms)
    }

    /// "peer silent for 1.02 s on the replication link and 1.05 s on the
    /// public network (deadtime 1 s)".
    fn describe_silence(&self) -> String {
        let beacon = match self.beacon_age_ms {
            Some(a) => format!("{} on the public network", secs(a)),
            None => "never heard on the public network".to_string(),
        };
        let limit = if self.initial { "initdead" } else { "deadtime" };
        format!(
            "peer silent for {} on the replication link and {beacon} ({limit} {})",
            secs(self.link_silence_ms),
            secs(self.limit_ms)
        )
    }
}

/// The failover state machine of one node. See the module documentation.
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: MachineConfig,
    phase: Phase,
    maintenance: bool,
    hold_down_until: Option<u64>,
    /// Demoted itself (isolated or lost the lease): no promotion before the
    /// peer has been heard again.
    stepped_down: bool,
    last_obs: Option<Observation>,
    /// Last time the link was seen connected (start time before that).
    link_seen_ms: u64,
    /// The peer was heard once since start (then deadtime, not initdead).
    heard_peer: bool,
    /// PeerLost was run and PeerBack not yet.
    peer_lost: bool,
    split_brain: bool,
    /// Since when the peer has been connected, UpToDate, in sync, Secondary.
    healthy_since: Option<u64>,
    /// Since when the pair has been connected with no primary.
    no_primary_since: Option<u64>,
    /// Since when the witness has not answered.
    witness_down_since: Option<u64>,
    /// Since when the ping target has not answered (when the driver has no
    /// `PingView` to give).
    ping_missing_since: Option<u64>,
    last_refusal: Option<Refusal>,
    history: VecDeque<Decision>,
}

impl Machine {
    /// A machine for a node that starts now, in no transition.
    pub fn new(cfg: MachineConfig, now_ms: u64) -> Result<Self, ConfigError> {
        if cfg.deadtime_ms == 0 {
            return Err(ConfigError::ZeroDeadtime);
        }
        if cfg.initdead_ms < cfg.deadtime_ms {
            return Err(ConfigError::InitdeadTooShort {
                initdead_ms: cfg.initdead_ms,
                deadtime_ms: cfg.deadtime_ms,
            });
        }
        if cfg.auto_failback && cfg.preferred == Preferred::Neither {
            return Err(ConfigError::FailbackWithoutPreferred);
        }
        if cfg.history_len == 0 {
            return Err(ConfigError::ZeroHistory);
        }
        let history = VecDeque::with_capacity(cfg.history_len);
        Ok(Machine {
            cfg,
            phase: Phase::Idle,
            maintenance: false,
            hold_down_until: None,
            stepped_down: false,
            last_obs: None,
            link_seen_ms: now_ms,
            heard_peer: false,
            peer_lost: false,
            split_brain: false,
            healthy_since: None,
            no_primary_since: None,
            witness_down_since: None,
            ping_missing_since: None,
            last_refusal: None,
            history,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// What it is busy with.
    pub fn activity(&self) -> Activity {
        match &self.phase {
            Phase::Idle => Activity::Idle,
            Phase::Stopped { .. } => Activity::Stopped,
            Phase::Running(run) => match run.kind {
                RunKind::Promotion => Activity::Promoting,
                RunKind::Demotion(_) => Activity::Demoting,
                RunKind::Rollback { .. } => Activity::RollingBack,
            },
        }
    }

    /// The step the driver is running (or must run) now, if any.
    pub fn current_step(&self) -> Option<Step> {
        match &self.phase {
            Phase::Running(run) => run.steps.get(run.next).copied(),
            _ => None,
        }
    }

    /// Whether maintenance (manual) mode is on.
    pub fn maintenance(&self) -> bool {
        self.maintenance
    }

    /// Until when promotions are held down after the last failed one (may be
    /// in the past; `None` again after a successful promotion).
    pub fn hold_down_until(&self) -> Option<u64> {
        self.hold_down_until
    }

    /// The last decisions, oldest first (at most `history_len`).
    pub fn history(&self) -> impl ExactSizeIterator<Item = &Decision> + DoubleEndedIterator {
        self.history.iter()
    }

    /// One line for `twinfs status`: the latest decision (steps and hooks
    /// aside) and how long ago it was taken, plus the step running now if any.
    pub fn why(&self, now_ms: u64) -> String {
        // Steps and hooks only accompany the decision that explains the state.
        let latest = self
            .history
            .iter()
            .rev()
            .find(|d| !matches!(d.action, Action::Step(_) | Action::RunHook(_)))
            .or_else(|| self.history.back());
        let mut line = match latest {
            Some(d) => format!(
                "{} ({} ago)",
                d.reason,
                secs(now_ms.saturating_sub(d.at_ms))
            ),
            None => "no decision yet".to_string(),
        };
        if let Some(step) = self.current_step() {
            line = format!("running step {step:?}; {line}");
        }
        line
    }

    /// Turns maintenance (manual) mode on or off. In maintenance the machine
    /// takes no automatic action but still records what it would have done. A
    /// transition already running finishes.
    pub fn set_maintenance(&mut self, now_ms: u64, on: bool) -> Vec<Decision> {
        let mut out = Vec::new();
        if self.maintenance == on {
            return out;
        }
        self.maintenance = on;
        let reason = if on {
            "maintenance mode on: no automatic promotion, demotion or failback (decisions are still recorded)"
        } else {
            "maintenance mode off: automatic failover resumes"
        };
        self.record(&mut out, now_ms, Action::NoAction, reason.to_string());
        out
    }

    /// The admin cleared a failed demotion (after fixing its cause, or after
    /// checking by hand that the node is really Secondary).
    pub fn clear_failure(&mut self, now_ms: u64) -> Vec<Decision> {
        let mut out = Vec::new();
        if let Phase::Stopped { step, .. } = &self.phase {
            let reason =
                format!("failure of {step:?} cleared by the admin: automatic actions resume");
            self.phase = Phase::Idle;
            self.record(&mut out, now_ms, Action::Finished, reason);
        }
        out
    }

    /// The admin asked for a planned switchover: demote here, then hand over.
    /// Refused (with a recorded reason) unless this node is an idle Primary
    /// and the peer is connected, Secondary, `UpToDate` and in sync.
    pub fn request_switchover(&mut self, now_ms: u64) -> Vec<Decision> {
        let mut out = Vec::new();
        let refuse = |why: String| format!("switchover refused: {why}");
        let problem = match (&self.phase, &self.last_obs) {
            (Phase::Running(_), _) => Some(refuse("a promotion or demotion is running".into())),
            (Phase::Stopped { step, message }, _) => Some(refuse(format!(
                "stopped after {step:?} failed ({message}); clear the failure first"
            ))),
            (Phase::Idle, None) => Some(refuse("nothing observed yet".into())),
            (Phase::Idle, Some(obs)) => {
                if obs.role != Role::Primary {
                    Some(refuse(
                        "this node is not Primary: run it on the primary".into(),
                    ))
                } else {
                    peer_ready_problem(&obs.link).map(refuse)
                }
            }
        };
        match problem {
            Some(reason) => self.record(&mut out, now_ms, Action::NoAction, reason),
            None => self.start_demotion(
                &mut out,
                now_ms,
                DemoteCause::HandOver,
                "demoting for a switchover asked by the admin; the peer promotes when it is done"
                    .into(),
            ),
        }
        out
    }

    /// The peer demoted for a switchover or a failback and tells this node to
    /// take over. Promotes at once (no deadtime) when this node is an idle
    /// Secondary, `UpToDate`, connected and in sync; otherwise records why not.
    pub fn handle_peer_handed_over(&mut self, now_ms: u64) -> Vec<Decision> {
        let mut out = Vec::new();
        let refuse = |why: String| format!("did not take over from the peer: {why}");
        let problem = match (&self.phase, &self.last_obs) {
            (Phase::Running(_), _) => Some(refuse("a promotion or demotion is running".into())),
            (Phase::Stopped { step, message }, _) => {
                Some(refuse(format!("stopped after {step:?} failed ({message})")))
            }
            (Phase::Idle, None) => Some(refuse("nothing observed yet".into())),
            (Phase::Idle, Some(obs)) => {
                if obs.role != Role::Secondary {
                    Some(refuse("this node is already Primary".into()))
                } else if obs.disk != Some(DiskState::UpToDate) {
                    Some(refuse(format!("local disk is {}", disk_name(obs.disk))))
                } else if !obs.link.connected {
                    Some(refuse("the replication link is down".into()))
                } else if !obs.link.in_sync {
                    Some(refuse("a resync is running".into()))
                } else {
                    None
                }
            }
        };
        match problem {
            Some(reason) => self.record(&mut out, now_ms, Action::NoAction, reason),
            None => self.start_promotion(
                &mut out,
                now_ms,
                false,
                "promoting: the peer demoted and handed over (switchover or failback)".into(),
            ),
        }
        out
    }

    /// Reports that `step` finished. On success the next step follows (or the
    /// transition ends); on failure a promotion is rolled back and a demotion
    /// escalates. Errors when `step` is not the one running (a driver bug).
    pub fn handle_step_finished(
        &mut self,
        now_ms: u64,
        step: Step,
        result: Result<(), String>,
    ) -> Result<Vec<Decision>, StepError> {
        let run = match &mut self.phase {
            Phase::Running(run) => run,
            _ => return Err(StepError::NoneRunning { got: step }),
        };
        let expected = run.steps[run.next];
        if expected != step {
            return Err(StepError::WrongStep {
                expected,
                got: step,
            });
        }
        let mut out = Vec::new();
        match result {
            Ok(()) => {
                run.next += 1;
                self.next_step_or_finish(&mut out, now_ms);
            }
            Err(message) => self.step_failed(&mut out, now_ms, step, message),
        }
        Ok(out)
    }

    /// Takes one look at the world and decides. Call it every ~50 ms and on
    /// every event; `obs.now_ms` must not go back.
    pub fn handle_observation(&mut self, obs: &Observation) -> Vec<Decision> {
        let mut out = Vec::new();
        let now = obs.now_ms;
        self.track(obs);
        let peer = self.peer_view(obs);
        self.run_hooks(&mut out, obs, &peer);
        self.last_obs = Some(*obs);
        match &self.phase {
            Phase::Running(_) => {}
            Phase::Stopped { step, message } => {
                let reason = format!(
                    "no automatic action: demotion step {step:?} failed ({message}); \
                     fix it, then clear the failure"
                );
                self.refuse(&mut out, now, Refusal::Stopped, reason);
            }
            Phase::Idle => match obs.role {
                Role::Secondary => self.decide_secondary(&mut out, obs, &peer),
                Role::Primary => self.decide_primary(&mut out, obs, &peer),
            },
        }
        out
    }

    // ----- observation bookkeeping -----

    fn track(&mut self, obs: &Observation) {
        let now = obs.now_ms;
        let link = &obs.link;
        if link.connected {
            self.link_seen_ms = now;
        }
        if let Some(ago) = link.heard_ago_ms {
            // A later frame than the connection state says (or the only word
            // while the daemon has not yet declared the peer lost).
            self.link_seen_ms = self.link_seen_ms.max(now.saturating_sub(ago));
            if link.connected {
                self.link_seen_ms = now.saturating_sub(ago);
            }
        }
        let limit = self.limit_ms();
        let beacon_fresh = obs.beacon_age_ms.is_some_and(|a| a < limit);
        if link.connected || beacon_fresh {
            self.heard_peer = true;
            self.stepped_down = false;
        }
        let healthy = obs.role == Role::Primary
            && link.connected
            && link.in_sync
            && link.peer_role == Some(Role::Secondary)
            && link.peer_disk == Some(DiskState::UpToDate);
        self.healthy_since = if healthy {
            self.healthy_since.or(Some(now))
        } else {
            None
        };
        let no_primary = obs.role == Role::Secondary
            && link.connected
            && link.peer_role == Some(Role::Secondary);
        self.no_primary_since = if no_primary {
            self.no_primary_since.or(Some(now))
        } else {
            None
        };
        let witness_up = obs.witness.is_some_and(|w| w.reachable);
        self.witness_down_since = if witness_up {
            None
        } else {
            self.witness_down_since.or(Some(now))
        };
        self.ping_missing_since = match obs.ping {
            Some(_) => None,
            None => self.ping_missing_since.or(Some(now)),
        };
    }

    fn limit_ms(&self) -> u64 {
        if self.heard_peer {
            self.cfg.deadtime_ms
        } else {
            self.cfg.initdead_ms
        }
    }

    fn peer_view(&self, obs: &Observation) -> PeerView {
        PeerView {
            limit_ms: self.limit_ms(),
            initial: !self.heard_peer,
            link_silence_ms: obs.now_ms.saturating_sub(self.link_seen_ms),
            beacon_age_ms: obs.beacon_age_ms,
        }
    }

    fn run_hooks(&mut self, out: &mut Vec<Decision>, obs: &Observation, peer: &PeerView) {
        let now = obs.now_ms;
        if !self.peer_lost && peer.dead() {
            self.peer_lost = true;
            let reason = format!("peer lost: {}", peer.describe_silence());
            self.record(out, now, Action::RunHook(Hook::PeerLost), reason);
        } else if self.peer_lost && !peer.dead() {
            self.peer_lost = false;
            let path = if obs.link.connected {
                "the replication link"
            } else {
                "the public network"
            };
            let reason = format!("peer back: heard again on {path}");
            self.record(out, now, Action::RunHook(Hook::PeerBack), reason);
        }
        let both_primary = obs.role == Role::Primary
            && obs.link.connected
            && obs.link.peer_role == Some(Role::Primary);
        if both_primary && !self.split_brain {
            self.split_brain = true;
            let reason = "split brain: this node and the peer are both Primary; \
                          the on_split_brain hook picks the survivor"
                .to_string();
            self.record(out, now, Action::RunHook(Hook::SplitBrain), reason);
        } else if !both_primary {
            self.split_brain = false;
        }
    }

    // ----- decisions while idle -----

    fn decide_secondary(&mut self, out: &mut Vec<Decision>, obs: &Observation, peer: &PeerView) {
        let now = obs.now_ms;
        if obs.link.connected {
            return self.decide_no_primary(out, obs);
        }
        if !peer.dead() {
            if peer.link_silence_ms >= peer.limit_ms && peer.beacon_alive() {
                let reason = format!(
                    "did not promote: replication link down, peer alive on the public network \
                     (link silent for {}, last beacon {} ago)",
                    secs(peer.link_silence_ms),
                    secs(peer.beacon_age_ms.unwrap_or(0))
                );
                self.refuse(out, now, Refusal::LinkDownBeaconAlive, reason);
            } else {
                // Still within deadtime: waiting is not a decision.
                self.last_refusal = None;
            }
            return;
        }
        let silence = peer.describe_silence();
        if let Some((refusal, why)) = self.promotion_blocker(obs) {
            let reason = format!("did not promote ({silence}): {why}");
            return self.refuse(out, now, refusal, reason);
        }
        let mut reason = format!("promoting: {silence}");
        if let Some(target) = &self.cfg.ping_target {
            reason.push_str(&format!("; ping target {target} reachable"));
        }
        if let Some(witness) = &self.cfg.witness {
            reason.push_str(&format!(
                "; witness {witness} grants the primary lease and no longer hears the peer"
            ));
        }
        self.start_promotion(out, now, self.cfg.fence, reason);
    }

    /// Why a Secondary that lost its peer may not promote, if it may not.
    fn promotion_blocker(&self, obs: &Observation) -> Option<(Refusal, String)> {
        let now = obs.now_ms;
        if self.maintenance {
            return Some((
                Refusal::Maintenance,
                "maintenance mode is on, automatic actions are off".into(),
            ));
        }
        if self.stepped_down {
            return Some((
                Refusal::SteppedDown,
                "this node stepped down because it was cut off; it will not promote again before \
                 hearing from the peer (which has probably taken over): promote by hand if it is dead"
                    .into(),
            ));
        }
        if let Some(until) = self.hold_down_until.filter(|&u| now < u) {
            return Some((
                Refusal::HoldDown,
                format!(
                    "hold-down after a failed promotion, {} left",
                    secs(until - now)
                ),
            ));
        }
        if obs.disk != Some(DiskState::UpToDate) {
            return Some((
                Refusal::Disk(obs.disk),
                format!("local disk is {}", disk_name(obs.disk)),
            ));
        }
        if let Some(name) = &self.cfg.witness {
            match obs.witness {
                Some(w) if w.reachable && w.hears_peer => {
                    return Some((
                        Refusal::WitnessHearsPeer,
                        format!("peer still reachable through the witness {name}"),
                    ));
                }
                Some(w) if w.reachable && !w.grants_me => {
                    return Some((
                        Refusal::WitnessNoLease,
                        format!("the witness {name} does not grant the primary lease"),
                    ));
                }
                Some(w) if w.reachable => {}
                _ => {
                    return Some((
                        Refusal::WitnessUnreachable,
                        format!(
                            "the witness {name} is unreachable, so the peer may still be primary \
                             (or this node is the one cut off)"
                        ),
                    ));
                }
            }
        }
        if let Some(target) = &self.cfg.ping_target {
            let down_for = match obs.ping {
                Some(p) if p.reachable => None,
                Some(p) => Some(now.saturating_sub(p.since_ms)),
                None => Some(now.saturating_sub(self.ping_missing_since.unwrap_or(now))),
            };
            if let Some(ms) = down_for {
                return Some((
                    Refusal::PingUnreachable,
                    format!(
                        "isolated: ping target {target} unreachable for {}, this node is probably the one cut off",
                        secs(ms)
                    ),
                ));
            }
        }
        None
    }

    /// A connected Secondary: promote only when the pair has had no primary
    /// for deadtime and this node is the preferred one.
    fn decide_no_primary(&mut self, out: &mut Vec<Decision>, obs: &Observation) {
        let now = obs.now_ms;
        let Some(since) = self.no_primary_since else {
            self.last_refusal = None;
            return;
        };
        let waited = now.saturating_sub(since);
        if waited < self.cfg.deadtime_ms {
            return;
        }
        let situation = format!("connected pair with no primary for {}", secs(waited));
        let blocker = match self.cfg.preferred {
            Preferred::PeerNode => Some("the preferred node is the peer".to_string()),
            Preferred::Neither => {
                Some("no preferred node is configured: run twinfs promote on one node".into())
            }
            Preferred::ThisNode if self.maintenance => Some("maintenance mode is on".into()),
            Preferred::ThisNode => match self.hold_down_until.filter(|&u| now < u) {
                Some(until) => Some(format!(
                    "hold-down after a failed promotion, {} left",
                    secs(until - now)
                )),
                None if obs.disk != Some(DiskState::UpToDate) => {
                    Some(format!("local disk is {}", disk_name(obs.disk)))
                }
                None if !obs.link.in_sync => Some("a resync is running".into()),
                None => self.witness_lease_problem(obs),
            },
        };
        match blocker {
            Some(why) => {
                let reason = format!("did not promote ({situation}): {why}");
                self.refuse(out, now, Refusal::NoPrimary, reason);
            }
            None => {
                let reason = format!("promoting: {situation}; this node is the preferred node");
                self.start_promotion(out, now, false, reason);
            }
        }
    }

    fn witness_lease_problem(&self, obs: &Observation) -> Option<String> {
        let name = self.cfg.witness.as_ref()?;
        match obs.witness {
            Some(w) if w.reachable && w.grants_me => None,
            Some(w) if w.reachable => Some(format!(
                "the witness {name} does not grant the primary lease"
            )),
            _ => Some(format!("the witness {name} is unreachable")),
        }
    }

    fn decide_primary(&mut self, out: &mut Vec<Decision>, obs: &Observation, peer: &PeerView) {
        let now = obs.now_ms;
        let peer_is_secondary = obs.link.connected && obs.link.peer_role == Some(Role::Secondary);
        // The witness gave the lease away: the peer may be promoting now.
        if let (Some(name), Some(w)) = (&self.cfg.witness, obs.witness) {
            if w.reachable && !w.grants_me {
                if peer_is_secondary {
                    let reason = format!(
                        "staying primary although the witness {name} does not grant the lease: \
                         the peer is connected and Secondary"
                    );
                    return self.refuse(out, now, Refusal::KeepPrimaryWithoutLease, reason);
                }
                let reason = format!(
                    "demoting: the witness {name} no longer grants this node the primary lease"
                );
                return self.demote_unless_maintenance(out, now, DemoteCause::StepDown, reason);
            }
        }
        // Isolated: half of deadtime (initdead or not), so that this node has
        // let go before the other side may promote: that side waits at least
        // the full deadtime and, with a witness, for this node's lease to
        // expire (the lease lasts at least deadtime).
        let half = (self.cfg.deadtime_ms / 2).max(1);
        if peer.silent_for(half) {
            let cut_off = if let Some(name) = &self.cfg.witness {
                self.witness_down_since
                    .map(|s| now.saturating_sub(s))
                    .filter(|&ms| ms >= half)
                    .map(|ms| format!("the witness {name} unreachable for {}", secs(ms)))
            } else if let Some(target) = &self.cfg.ping_target {
                let down = match obs.ping {
                    Some(p) if p.reachable => None,
                    Some(p) => Some(now.saturating_sub(p.since_ms)),
                    None => self.ping_missing_since.map(|s| now.saturating_sub(s)),
                };
                down.filter(|&ms| ms >= half)
                    .map(|ms| format!("ping target {target} unreachable for {}", secs(ms)))
            } else {
                None
            };
            if let Some(what) = cut_off {
                let reason = format!(
                    "demoting: isolated, {} and {what} (an isolated primary lets go after half of it)",
                    peer.describe_silence()
                );
                return self.demote_unless_maintenance(out, now, DemoteCause::StepDown, reason);
            }
        }
        // Failback to the home node.
        if self.cfg.auto_failback && self.cfg.preferred == Preferred::PeerNode {
            if let Some(since) = self.healthy_since {
                let healthy = now.saturating_sub(since);
                if healthy >= self.cfg.stabilize_ms {
                    let reason = format!(
                        "demoting to fail back to the preferred node: the peer has been connected, \
                         UpToDate and in sync for {} (stabilize {})",
                        secs(healthy),
                        secs(self.cfg.stabilize_ms)
                    );
                    return self.demote_unless_maintenance(out, now, DemoteCause::HandOver, reason);
                }
            }
        }
        self.last_refusal = None;
    }

    fn demote_unless_maintenance(
        &mut self,
        out: &mut Vec<Decision>,
        now: u64,
        cause: DemoteCause,
        reason: String,
    ) {
        if self.maintenance {
            let reason = format!("did not demote (maintenance mode is on): would be {reason}");
            self.refuse(out, now, Refusal::Maintenance, reason);
        } else {
            self.start_demotion(out, now, cause, reason);
        }
    }

    // ----- transitions -----

    fn start_promotion(&mut self, out: &mut Vec<Decision>, now: u64, fence: bool, reason: String) {
        let mut steps = Vec::with_capacity(4);
        if self.cfg.witness.is_some() {
            steps.push(Step::AcquireLease);
        }
        if fence {
            steps.push(Step::FencePeer);
        }
        steps.extend([Step::PromoteStore, Step::OnPromote]);
        self.record(out, now, Action::Promote, reason);
        self.begin(out, now, RunKind::Promotion, steps);
    }

    fn start_demotion(
        &mut self,
        out: &mut Vec<Decision>,
        now: u64,
        cause: DemoteCause,
        reason: String,
    ) {
        let mut steps = vec![Step::OnDemote, Step::DemoteStore];
        if self.cfg.witness.is_some() {
            steps.push(Step::ReleaseLease);
        }
        self.record(out, now, Action::Demote, reason);
        self.begin(out, now, RunKind::Demotion(cause), steps);
    }

    fn begin(&mut self, out: &mut Vec<Decision>, now: u64, kind: RunKind, steps: Vec<Step>) {
        self.phase = Phase::Running(Run {
            kind,
            steps,
            next: 0,
        });
        self.next_step_or_finish(out, now);
    }

    /// Asks for the next step of the running transition, or ends it.
    fn next_step_or_finish(&mut self, out: &mut Vec<Decision>, now: u64) {
        let Phase::Running(run) = &self.phase else {
            return;
        };
        if let Some(&step) = run.steps.get(run.next) {
            let what = match run.kind {
                RunKind::Promotion => "promotion",
                RunKind::Demotion(_) => "demotion",
                RunKind::Rollback { .. } => "rollback",
            };
            let reason = format!(
                "{what} step {} of {}: {step:?}",
                run.next + 1,
                run.steps.len()
            );
            return self.record(out, now, Action::Step(step), reason);
        }
        let Phase::Running(run) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        match run.kind {
            RunKind::Promotion => {
                self.hold_down_until = None;
                self.record(
                    out,
                    now,
                    Action::Finished,
                    "promoted: all promotion steps done".into(),
                );
            }
            RunKind::Demotion(DemoteCause::HandOver) => {
                self.record(
                    out,
                    now,
                    Action::Finished,
                    "demoted: all demotion steps done".into(),
                );
                let reason =
                    "handing over: this node is Secondary now, the peer may promote".to_string();
                self.record(out, now, Action::HandOver, reason);
            }
            RunKind::Demotion(DemoteCause::StepDown) => {
                self.stepped_down = true;
                let reason =
                    "demoted: all demotion steps done; no promotion before the peer is heard again"
                        .into();
                self.record(out, now, Action::Finished, reason);
            }
            RunKind::Rollback { failed, message } => {
                let until = now.saturating_add(self.cfg.hold_down_ms);
                self.hold_down_until = Some(until);
                let reason = format!(
                    "promotion undone after {failed:?} failed ({message}); no new promotion for {} (hold-down)",
                    secs(self.cfg.hold_down_ms)
                );
                self.record(out, now, Action::Finished, reason);
            }
        }
    }

    fn step_failed(&mut self, out: &mut Vec<Decision>, now: u64, step: Step, message: String) {
        let Phase::Running(run) = &mut self.phase else {
            return;
        };
        let kind = run.kind.clone();
        if kind == RunKind::Promotion {
            // Undo in reverse order: the failed step first when it may have
            // done part of its work, then the steps done before it.
            let half_done = Some(step).filter(|s| s.may_be_half_done());
            let undo: Vec<Step> = half_done
                .into_iter()
                .chain(run.steps[..run.next].iter().rev().copied())
                .filter_map(Step::undo)
                .collect();
            let list = if undo.is_empty() {
                "nothing to undo".to_string()
            } else {
                format!(
                    "undoing {}",
                    undo.iter()
                        .map(|s| format!("{s:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let reason = format!("promotion failed at {step:?}: {message}; {list}");
            self.record(out, now, Action::RollBack, reason);
            return self.begin(
                out,
                now,
                RunKind::Rollback {
                    failed: step,
                    message,
                },
                undo,
            );
        }
        if step == Step::ReleaseLease {
            // The node is Secondary already; the lease expires by itself.
            run.next += 1;
            let reason =
                format!("could not release the witness lease ({message}); it expires by itself");
            self.record(out, now, Action::NoAction, reason);
            return self.next_step_or_finish(out, now);
        }
        let what = if matches!(kind, RunKind::Demotion(_)) {
            "demotion"
        } else {
            "rollback"
        };
        let escalation = self.cfg.on_demote_failure;
        let base = format!("{what} failed at {step:?}: {message}");
        self.phase = Phase::Stopped { step, message };
        match escalation {
            Escalation::None => {
                let reason = format!(
                    "{base}; no escalation configured: this node may still hold the VIP or run the \
                     service; no automatic action until the failure is cleared"
                );
                self.record(out, now, Action::NoAction, reason);
            }
            Escalation::Reboot | Escalation::Poweroff => {
                let verb = if escalation == Escalation::Reboot {
                    "rebooting"
                } else {
                    "powering off"
                };
                let reason =
                    format!("{base}; {verb} this node so that the peer can take over safely");
                self.record(out, now, Action::Escalate(escalation), reason);
            }
        }
    }

    // ----- recording -----

    fn record(&mut self, out: &mut Vec<Decision>, at_ms: u64, action: Action, reason: String) {
        // A transition changes the situation: the next refusal is news. A
        // hook does not (the peer lost while refusing is the same refusal).
        if !matches!(action, Action::NoAction | Action::RunHook(_)) {
            self.last_refusal = None;
        }
        let decision = Decision {
            at_ms,
            action,
            reason,
        };
        if self.history.len() == self.cfg.history_len {
            self.history.pop_front();
        }
        self.history.push_back(decision.clone());
        out.push(decision);
    }

    /// Records a refusal unless the same kind was the last one recorded.
    fn refuse(&mut self, out: &mut Vec<Decision>, now: u64, refusal: Refusal, reason: String) {
        if self.last_refusal.as_ref() == Some(&refusal) {
            return;
        }
        self.record(out, now, Action::NoAction, reason);
        self.last_refusal = Some(refusal);
    }
}

/// Why the peer cannot take over now (for a switchover), if it cannot.
fn peer_ready_problem(link: &LinkView) -> Option<String> {
    if !link.connected {
        return Some("the replication link is down".into());
    }
    if link.peer_role != Some(Role::Secondary) {
        return Some(match link.peer_role {
            // `Primary`, as every message of the machine writes roles.
            Some(r) => format!("the peer is {r:?}"),
            None => "the peer has not said its role".into(),
        });
    }
    match link.peer_disk {
        Some(DiskState::UpToDate) => {}
        Some(d) => return Some(format!("the peer's disk is {d}")),
        None => return Some("the peer has not said its disk state".into()),
    }
    if !link.in_sync {
        return Some("a resync is running".into());
    }
    None
}

/// Milliseconds as an admin reads them: `50 ms`, `1.02 s`, `10 s`.
fn secs(ms: u64) -> String {
    if ms < 100 {
        return format!("{ms} ms");
    }
    let whole = ms / 1000;
    let hundredths = (ms % 1000) / 10;
    if hundredths == 0 {
        format!("{whole} s")
    } else if hundredths % 10 == 0 {
        format!("{whole}.{} s", hundredths / 10)
    } else {
        format!("{whole}.{hundredths:02} s")
    }
}
