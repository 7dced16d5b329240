//! The supervisor: what `twinfs run` adds when the config has a `[failover]`
//! table. It watches the peer on every path it has (the replication link, the
//! public-network beacon, the ping targets, the witness), feeds what it sees
//! to the pure failover state machine (`twinfs_supervisor::machine`), and carries out
//! the machine's steps: take the witness lease, promote the store (new
//! generation, mount read-write), run the Lua `on_promote` hook (VIP, Apache,
//! health check), and the reverse on demotion.
//!
//! It runs on its own thread next to the replication node and talks to it
//! through a typed [`NodeHandle`] (status, promote, demote: the requests
//! `twinfs promote` sends over the control socket, without the socket), so
//! the node knows nothing about failover. Its own state (the machine's
//! decisions with their reasons, the last hook's actions, what each path
//! says) is written to `DATA/failover.json` for `twinfs status`, and admin
//! requests (`twinfs switchover`, maintenance) arrive on `DATA/failover.sock`.

use crate::config::{Config, EscalationName, FailoverConfig, PeerTrustConfig, ReplicationConfig};
use crate::UsageError;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use twinfs_replicator::control::{Request, Response};
use twinfs_replicator::evidence::{Evidence, EvidenceBoard, EvidenceSource};
use twinfs_replicator::node::NodeHandle;
use twinfs_replicator::status::{ConnectionState, DiskState, Status};
use twinfs_supervisor::actuators::{ServiceCommands, System, SystemOptions};
use twinfs_supervisor::hooks::{Hook, HookContext, HookLimits, HookRuntime, HookState};
use twinfs_supervisor::machine::{
    Action, Decision, Escalation, LinkView, Machine, MachineConfig, Observation, PingView,
    Preferred, Role, Step, WitnessView,
};
use twinfs_supervisor::witness::{
    self, Announce, Beacon, BeaconConfig, LeaseStatus, PublicKey, Signer, SigningKey,
    WitnessClient, WitnessClientConfig,
};

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

/// The file `twinfs status` reads.
pub(crate) fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join("failover.json")
}

/// The socket `twinfs switchover` talks to.
pub(crate) fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("failover.sock")
}

/// What `DATA/failover.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct FailoverStatus {
    /// Process id of the daemon that wrote it (a dead pid means it is stale).
    pub pid: u32,
    /// When it was written (RFC 3339).
    pub written: String,
    /// `Idle`, `Promoting`, `Demoting`, `RollingBack`, `Stopped`.
    pub activity: String,
    /// Why the node is in the role it is in, in one line.
    pub why: String,
    pub maintenance: bool,
    /// The last decisions, oldest first: "2026-11-30T09:01:02.123Z promote: peer silent ...".
    pub decisions: Vec<String>,
    /// The actions of the last hooks run, with their durations and results.
    pub last_hooks: Vec<String>,
    /// The public-network beacon: "peer heard 0.1 s ago (Primary, link up)".
    pub beacon: Option<String>,
    /// The ping targets: "10.0.0.1 reachable".
    pub ping: Option<String>,
    /// The witness: "reachable, lease held by www1, hears the peer".
    pub witness: Option<String>,
    /// Counts since the daemon started (for the metrics endpoint).
    #[serde(default)]
    pub counters: FailoverCounters,
}

/// What the supervisor did since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct FailoverCounters {
    /// Promotions started (automatic, hand-over or election).
    pub promotions: u64,
    /// Demotions started (isolation, switchover, failback).
    pub demotions: u64,
    /// Promotions undone after a step failed.
    pub rollbacks: u64,
    /// Per hook (`on_promote`, ...): runs, failures and durations.
    pub hooks: std::collections::BTreeMap<String, HookTiming>,
}

/// How one hook has run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HookTiming {
    pub runs: u64,
    pub failures: u64,
    pub last_seconds: f64,
    pub total_seconds: f64,
}

impl FailoverStatus {
    /// The lines `twinfs status` adds under the node's own.
    pub(crate) fn human(&self) -> String {
        let mut s = format!("failover:    {} — {}\n", self.activity, self.why);
        if self.maintenance {
            s.push_str("             maintenance mode: no automatic action\n");
        }
        for (what, v) in [
            ("beacon", &self.beacon),
            ("ping", &self.ping),
            ("witness", &self.witness),
        ] {
            if let Some(v) = v {
                s.push_str(&format!("  {what:<10} {v}\n"));
            }
        }
        if !self.decisions.is_empty() {
            s.push_str("  decisions (oldest first):\n");
            for d in self.decisions.iter().rev().take(8).rev() {
                s.push_str(&format!("    {d}\n"));
            }
        }
        if !self.last_hooks.is_empty() {
            s.push_str("  last hook actions:\n");
            for a in &self.last_hooks {
                s.push_str(&format!("    {a}\n"));
            }
        }
        s
    }
}

/// Reads `DATA/failover.json` if a live daemon wrote it.
pub(crate) fn read_status(data_dir: &Path) -> Option<FailoverStatus> {
    let text = std::fs::read_to_string(status_path(data_dir)).ok()?;
    let st: FailoverStatus = serde_json::from_str(&text).ok()?;
    Path::new(&format!("/proc/{}", st.pid))
        .exists()
        .then_some(st)
}

/// An admin request on `failover.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdminRequest {
    /// Demote here, then let the peer promote.
    Switchover,
    /// Stop (or resume) automatic action.
    Maintenance(bool),
    /// Resume after a failed demotion was fixed by hand.
    Clear,
    /// On the secondary: ask the primary to switch over to this node.
    TakeOver,
}

/// The answer on `failover.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdminResponse {
    Done(String),
    Error(String),
}

/// Sends one admin request to the running daemon.
pub(crate) fn admin_call(
    data_dir: &Path,
    req: &AdminRequest,
    timeout: Duration,
) -> anyhow::Result<AdminResponse> {
    let path = socket_path(data_dir);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is `twinfs run` with a [failover] table running?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .with_context(|| format!("reading the answer from {}", path.display()))?;
    serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))
}

/// The running supervisor; dropping it stops it.
pub(crate) struct SupervisorHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
    pre_unmount: PreUnmount,
    board: StatusBoard,
}

impl SupervisorHandle {
    /// What the mounter calls before it unmounts.
    pub(crate) fn pre_unmount(&self) -> PreUnmount {
        self.pre_unmount.clone()
    }

    /// The supervisor's latest status, for the other parts of this process.
    pub(crate) fn status_board(&self) -> StatusBoard {
        self.board.clone()
    }
}

/// The supervisor's latest status, as a value shared within the process (the
/// metrics endpoint reads it); `DATA/failover.json` carries the same for the
/// CLI's `twinfs status`.
#[derive(Clone, Default)]
pub(crate) struct StatusBoard(Arc<Mutex<Option<FailoverStatus>>>);

impl StatusBoard {
    fn publish(&self, st: &FailoverStatus) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(st.clone());
    }

    /// The latest status (`None` before the first one).
    pub(crate) fn get(&self) -> Option<FailoverStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Lets the FUSE mounter ask the supervisor to run `on_demote` (stop Apache,
/// release the VIP) before the unmount at shutdown (SIGTERM/SIGINT):
/// otherwise Apache keeps the mount busy and a crash-like state is left
/// behind (the VIP held, Apache on a dead mount) that would make the peer's
/// claim of the VIP fail.
#[derive(Clone)]
pub(crate) struct PreUnmount {
    /// Set by SIGTERM/SIGINT.
    shutting_down: Arc<AtomicBool>,
    /// Set while the supervisor's own demotion runs (it ran on_demote already).
    demoting: Arc<AtomicBool>,
    tx: mpsc::Sender<mpsc::Sender<()>>,
    timeout: Duration,
}

impl PreUnmount {
    /// At shutdown, runs `on_demote` on the supervisor thread and waits for it
    /// (bounded by the hook timeout); otherwise does nothing.
    pub(crate) fn before_shutdown_unmount(&self) {
        if !self.shutting_down.load(Ordering::SeqCst) || self.demoting.load(Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = mpsc::channel();
        if self.tx.send(tx).is_ok() {
            let _ = rx.recv_timeout(self.timeout);
        }
    }
}

impl Drop for SupervisorHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Shared facts the probe threads keep fresh.
#[derive(Default)]
struct Probes {
    ping: Option<PingView>,
    ping_text: Option<String>,
    witness: Option<WitnessView>,
    witness_text: Option<String>,
}

/// Commands to the witness thread, with the reply channel.
enum WitnessCmd {
    Acquire(mpsc::Sender<Result<(), String>>),
    Release(mpsc::Sender<Result<(), String>>),
}

/// Checks everything and starts the supervisor thread. Errors here (a broken
/// hook script, an unreadable certificate, a port in use) stop `twinfs run`
/// before the node starts, with the file, line or address in the message.
pub(crate) fn start(
    cfg: &Config,
    r: &ReplicationConfig,
    f: &FailoverConfig,
    evidence: Arc<EvidenceBoard>,
    node: NodeHandle,
) -> anyhow::Result<SupervisorHandle> {
    let name = cfg.node.name.as_str().to_owned();
    let data_dir = cfg.node.data_dir.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    // The actions hooks may take, and the hooks.
    let services = f
        .services
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                ServiceCommands {
                    start: v.start.clone(),
                    stop: v.stop.clone(),
                    status: v.status.clone(),
                    pidfile: v.pidfile.clone(),
                },
            )
        })
        .collect();
    let system = Arc::new(System::new(SystemOptions {
        services,
        arp_probe: f.arp_probe,
        ..SystemOptions::default()
    }));
    let hooks = HookRuntime::load(
        &f.script,
        HookContext::new(name.clone(), f.hook_vars()),
        system,
        HookLimits {
            time: f.hook_timeout,
            ..HookLimits::default()
        },
    )
    .map_err(|e| UsageError(format!("[failover] script: {e}")))?;

    // Signed datagrams: the beacon and the witness verify with pinned certificates.
    let needs_keys = f.beacon.is_some() || f.witness.is_some();
    let signer = if needs_keys {
        let key = SigningKey::from_pem_file(&r.key).map_err(|e| UsageError(e.to_string()))?;
        Some(Arc::new(
            Signer::new(&name, key).map_err(|e| UsageError(e.to_string()))?,
        ))
    } else {
        None
    };
    let beacon = match (&f.beacon, &signer) {
        (Some(b), Some(signer)) => {
            let PeerTrustConfig::CertFile(peer_cert) = &r.peer_trust else {
                return Err(UsageError(
                    "failover.public: the beacon verifies the peer's signatures with its \
                     certificate, so [replication] must pin the peer with peer_cert (a \
                     fingerprint alone carries no key)"
                        .into(),
                )
                .into());
            };
            let peer_key =
                PublicKey::from_cert_pem_file(peer_cert).map_err(|e| UsageError(e.to_string()))?;
            let peer_name = PublicKey::node_name_from_cert_pem_file(peer_cert)
                .map_err(|e| UsageError(e.to_string()))?;
            let socket = UdpSocket::bind(b.listen).map_err(|e| {
                UsageError(format!("failover.public: cannot bind {}: {e}", b.listen))
            })?;
            let beacon = Beacon::start(
                socket,
                signer.clone(),
                BeaconConfig::new(&peer_name, peer_key, b.peer, r.keepalive),
                Announce {
                    role: witness::Role::Secondary,
                    disk: witness::DiskState::Outdated,
                    generation: 0,
                    link_up: false,
                    handover: false,
                    takeover: false,
                },
            )
            .map_err(|e| UsageError(format!("failover.public {}: {e}", b.listen)))?;
            Some(beacon)
        }
        _ => None,
    };

    let probes = Arc::new(Mutex::new(Probes::default()));
    let mut threads = Vec::new();
    if !f.ping.is_empty() {
        threads.push(spawn_pinger(
            f.ping.clone(),
            r.keepalive,
            r.deadtime,
            t0,
            probes.clone(),
            evidence.clone(),
            stop.clone(),
        ));
    }
    let want_lease = Arc::new(AtomicBool::new(false));
    let witness_tx = match (&f.witness, &signer) {
        (Some(w), Some(signer)) => {
            let key =
                PublicKey::from_cert_pem_file(&w.cert).map_err(|e| UsageError(e.to_string()))?;
            let wname = PublicKey::node_name_from_cert_pem_file(&w.cert)
                .map_err(|e| UsageError(e.to_string()))?;
            let client = WitnessClient::new(
                signer.clone(),
                WitnessClientConfig::new(w.addr, &wname, key),
            )
            .map_err(|e| UsageError(format!("failover.witness {}: {e}", w.addr)))?;
            let (tx, rx) = mpsc::channel();
            threads.push(spawn_witness(
                client,
                name.clone(),
                r.keepalive,
                r.deadtime,
                rx,
                want_lease.clone(),
                probes.clone(),
                evidence.clone(),
                stop.clone(),
            ));
            Some(tx)
        }
        _ => None,
    };

    // The admin socket.
    let socket = socket_path(&data_dir);
    let listener = twinfs_replicator::control::bind_private(&socket)
        .map_err(|e| UsageError(format!("cannot listen on {}: {e}", socket.display())))?;
    let (admin_rx, admin_thread) = crate::admin_socket::serve(listener, stop.clone())?;
    threads.push(admin_thread);

    let machine_cfg = MachineConfig {
        deadtime_ms: millis(r.deadtime),
        initdead_ms: millis(r.deadtime) * 2,
        auto_failback: f.auto_failback && f.home.is_some(),
        preferred: match &f.home {
            None => Preferred::Neither,
            Some(h) if *h == name => Preferred::ThisNode,
            Some(_) => Preferred::PeerNode,
        },
        stabilize_ms: millis(f.stabilize),
        hold_down_ms: millis(f.hold_down),
        ping_target: (!f.ping.is_empty()).then(|| {
            f.ping
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }),
        witness: f.witness.as_ref().map(|w| w.addr.to_string()),
        fence: hooks.defined().contains(&Hook::Fence),
        on_demote_failure: match f.escalation {
            EscalationName::None => Escalation::None,
            EscalationName::Reboot => Escalation::Reboot,
            EscalationName::Poweroff => Escalation::Poweroff,
        },
        history_len: 50,
    };
    let mut machine =
        Machine::new(machine_cfg, 0).map_err(|e| UsageError(format!("[failover]: {e}")))?;
    if f.manual {
        machine.set_maintenance(0, true);
    }

    let mut driver = Driver {
        node,
        data_dir,
        peer_address: r.peer.to_string(),
        t0,
        wall0: SystemTime::now(),
        machine,
        hooks,
        beacon,
        probes,
        witness_tx,
        want_lease,
        stop: stop.clone(),
        admin_rx,
        handover_until: None,
        handover_seen: false,
        takeover_until: None,
        takeover_seen: false,
        last_status: None,
        timeline: VecDeque::new(),
        last_hooks: Vec::new(),
        last_written: None,
        dirty: true,
        has_witness: f.witness.is_some(),
        escalation_command: f.escalation_command.clone(),
        counters: FailoverCounters::default(),
        demoting: Arc::new(AtomicBool::new(false)),
        pre_unmount_rx: None,
        board: StatusBoard::default(),
    };
    let board = driver.board.clone();
    let shutting_down = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutting_down.clone())?;
    }
    let (pre_tx, pre_rx) = mpsc::channel();
    let pre_unmount = PreUnmount {
        shutting_down,
        demoting: driver.demoting.clone(),
        tx: pre_tx,
        timeout: f.hook_timeout + Duration::from_secs(5),
    };
    driver.pre_unmount_rx = Some(pre_rx);
    driver.reconcile();
    let thread = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            driver.run();
            drop(threads);
        })?;
    Ok(SupervisorHandle {
        stop,
        thread: Some(thread),
        socket,
        pre_unmount,
        board,
    })
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Pings the targets every keepalive; the network is reachable while any
/// answers. Each answer is also evidence for the right to acknowledge alone
/// (when no witness is configured, the node's board accepts it): it counts
/// from the moment its probe was sent, for half of deadtime, so that it has
/// run out before a peer that stops hearing this node may promote.
#[allow(clippy::too_many_arguments)]
fn spawn_pinger(
    targets: Vec<IpAddr>,
    every: Duration,
    deadtime: Duration,
    t0: Instant,
    probes: Arc<Mutex<Probes>>,
    evidence: Arc<EvidenceBoard>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let timeout = (deadtime / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let counts = matches!(evidence.source(), EvidenceSource::Ping(_));
    std::thread::spawn(move || {
        let mut state: Option<(bool, u64)> = None;
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let mut answered = Vec::new();
            for t in &targets {
                let sent = Instant::now();
                if let Ok(true) = twinfs_supervisor::actuators::ping(*t, timeout) {
                    answered.push(*t);
                    if counts {
                        evidence.post(Evidence {
                            what: format!("the ping target {t} answered a probe sent"),
                            obtained_at: sent,
                            valid_until: sent + deadtime / 2,
                        });
                    }
                }
            }
            let reachable = !answered.is_empty();
            let now = millis(t0.elapsed());
            let since = match state {
                Some((r, since)) if r == reachable => since,
                _ => now,
            };
            state = Some((reachable, since));
            {
                let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
                p.ping = Some(PingView {
                    reachable,
                    since_ms: since,
                });
                p.ping_text = Some(if reachable {
                    format!("reachable ({} of {} answer)", answered.len(), targets.len())
                } else {
                    format!(
                        "UNREACHABLE for {:.1} s (none of {} answers)",
                        (now - since) as f64 / 1000.0,
                        targets
                            .iter()
                            .map(IpAddr::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
            }
            if let Some(rest) = every.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    })
}

/// Talks to the witness every keepalive: renews the lease while it is wanted,
/// pings otherwise, and carries out the driver's acquire/release steps.
#[allow(clippy::too_many_arguments)]
fn spawn_witness(
    mut client: WitnessClient,
    me: String,
    every: Duration,
    deadtime: Duration,
    rx: mpsc::Receiver<WitnessCmd>,
    want_lease: Arc<AtomicBool>,
    probes: Arc<Mutex<Probes>>,
    evidence: Arc<EvidenceBoard>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next_periodic = Instant::now();
        // Bounded by `stop`: each round waits at most 100 ms.
        while !stop.load(Ordering::SeqCst) {
            let wait = next_periodic
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let cmd = rx.recv_timeout(wait).ok();
            if cmd.is_none() && Instant::now() < next_periodic {
                continue;
            }
            // A granted lease is evidence from the moment its request was sent.
            let sent = Instant::now();
            let (answer, reply) = match cmd {
                Some(WitnessCmd::Acquire(tx)) => (client.renew_lease(), Some(tx)),
                Some(WitnessCmd::Release(tx)) => (client.release_lease(), Some(tx)),
                None => {
                    next_periodic = Instant::now() + every;
                    let a = if want_lease.load(Ordering::SeqCst) {
                        client.renew_lease()
                    } else {
                        client.ping()
                    };
                    (a, None)
                }
            };
            // Unreachable: what was granted runs out by itself.
            if let Ok(a) = &answer {
                match a.lease {
                    LeaseStatus::Granted { until } => evidence.post(Evidence {
                        what: "the witness renewed this node's primary lease, asked".into(),
                        obtained_at: sent,
                        valid_until: until,
                    }),
                    LeaseStatus::NotAsked => {}
                    LeaseStatus::Refused | LeaseStatus::Grace | LeaseStatus::Released => {
                        evidence.withdraw()
                    }
                }
            }
            let (view, text, result) = match &answer {
                Ok(a) => {
                    let holder = a.holder.as_ref().map(|h| h.node.clone());
                    let mine = holder.as_deref() == Some(me.as_str());
                    let granted = matches!(a.lease, LeaseStatus::Granted { .. });
                    let hears_peer = a.peer_heard_ago.is_some_and(|d| d < deadtime);
                    let view = WitnessView {
                        reachable: true,
                        grants_me: mine || holder.is_none() || granted,
                        hears_peer,
                    };
                    let text = format!(
                        "reachable (rtt {:.1} ms), lease {}, {}",
                        a.rtt.as_secs_f64() * 1000.0,
                        match &holder {
                            Some(h) => format!("held by {h}"),
                            None => "free".into(),
                        },
                        match a.peer_heard_ago {
                            Some(d) if d < deadtime =>
                                format!("hears the peer ({:.1} s ago)", d.as_secs_f64()),
                            Some(d) => format!("peer silent for {:.1} s", d.as_secs_f64()),
                            None => "never heard the peer".into(),
                        }
                    );
                    let result = match &a.lease {
                        LeaseStatus::Granted { .. } | LeaseStatus::Released => Ok(()),
                        other => Err(format!(
                            "the witness did not grant the lease ({other:?}; holder {})",
                            holder.as_deref().unwrap_or("none")
                        )),
                    };
                    (view, text, result)
                }
                Err(e) => (
                    WitnessView {
                        reachable: false,
                        grants_me: false,
                        hears_peer: false,
                    },
                    format!("UNREACHABLE: {e}"),
                    Err(format!("witness: {e}")),
                ),
            };
            {
                let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
                p.witness = Some(view);
                p.witness_text = Some(text);
            }
            if let Some(tx) = reply {
                let _ = tx.send(result);
            }
        }
    })
}

struct Driver {
    /// The replication node of this process.
    node: NodeHandle,
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
    admin_rx: mpsc::Receiver<crate::admin_socket::Pending>,
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
    escalation_command: Option<Vec<String>>,
    counters: FailoverCounters,
    /// Set while a DemoteStore step runs (see [`PreUnmount`]).
    demoting: Arc<AtomicBool>,
    /// Shutdown requests from the mounter.
    pre_unmount_rx: Option<mpsc::Receiver<mpsc::Sender<()>>>,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        millis(self.t0.elapsed())
    }

    fn wall(&self, at_ms: u64) -> String {
        humantime::format_rfc3339_millis(self.wall0 + Duration::from_millis(at_ms)).to_string()
    }

    fn run(&mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            self.serve_pre_unmount();
            self.serve_admin();
            self.tick();
            self.write_status(false);
            if let Some(rest) = TICK.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        self.write_status(true);
    }

    /// Cleans up what a crash may have left. Every node starts as Secondary
    /// (the replication node never resumes the primary role by itself), and a
    /// Secondary must not hold the VIP or run the service: the `on_demote`
    /// hook releases and stops them. This runs before the node joins the
    /// pair, so the peer never sees two holders.
    fn reconcile(&mut self) {
        self.note(
            "startup: this node starts as Secondary, so it releases any VIP left over and \
             stops the service (on_demote)"
                .into(),
        );
        // The disk is not known yet: the hook sees "Unknown".
        let status = Status::default();
        if let Err(e) = self.run_hook_with_disk(Hook::Demote, &status, None, Role::Secondary) {
            self.note(format!("startup clean-up failed: {e}"));
        }
        self.write_status(true);
    }

    fn node_status(&mut self) -> Option<Status> {
        let s = self.node.status(STATUS_TIMEOUT).ok()?;
        self.last_status = Some(s.clone());
        Some(s)
    }

    fn tick(&mut self) {
        let Some(status) = self.node_status() else {
            return;
        };
        let now = self.now_ms();
        let role = status.role;
        // The node declares the peer lost on its own timer, a little after
        // deadtime; a link silent for deadtime is down now.
        // Heartbeats flow only between a primary and its secondary; two
        // secondaries keep a quiet connection, so the age of the last frame
        // says nothing then.
        let deadtime = self.machine.config().deadtime_ms;
        let beating = role == Role::Primary || status.peer.role == Some(Role::Primary);
        let heard_ago = status.peer.heard_ms_ago.filter(|_| beating);
        let connected =
            status.connection.is_connected() && heard_ago.is_none_or(|ago| ago < deadtime);
        let link = LinkView {
            connected,
            peer_role: status.peer.role,
            peer_disk: status.peer.disk,
            in_sync: status.connection == ConnectionState::Connected && status.resync.is_none(),
            heard_ago_ms: heard_ago,
        };
        // Keep the beacon's announcement current, and read the peer's.
        let mut beacon_age_ms = None;
        let mut peer_flags = None;
        if let Some(b) = &self.beacon {
            let handover = self.handover_until.is_some_and(|u| Instant::now() < u);
            b.set_announce(Announce {
                role,
                disk: status.disk,
                generation: u64::from_str_radix(&status.generation, 16).unwrap_or(0),
                link_up: connected,
                handover,
                takeover: self.takeover_until.is_some_and(|u| Instant::now() < u),
            });
            if let Some(p) = b.peer() {
                beacon_age_ms = Some(millis(p.at.elapsed()));
                let fresh = p.at.elapsed() < Duration::from_secs(1);
                peer_flags = Some((
                    p.announce.handover && fresh,
                    p.announce.handover,
                    p.announce.takeover && fresh,
                    p.announce.takeover,
                ));
            }
        }
        let (ping, witness_view) = {
            let p = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            (p.ping, p.witness)
        };
        if self.has_witness {
            self.want_lease
                .store(role == Role::Primary, Ordering::SeqCst);
        }
        let obs = Observation {
            now_ms: now,
            role,
            disk: Some(status.disk),
            link,
            beacon_age_ms,
            ping,
            witness: witness_view,
        };
        let ds = self.machine.handle_observation(&obs);
        self.process(ds);
        if let Some(flags) = peer_flags {
            self.peer_requests(now, role, link, flags);
        }
    }

    /// The peer's requests on the beacon: "I demoted, take over" and "hand
    /// the role over to me". A role change restarts the replication
    /// connection, so each is acted on once the link is back and in sync
    /// (the peer announces the flag for a few seconds), after the machine
    /// has seen that link state.
    fn peer_requests(
        &mut self,
        now: u64,
        role: Role,
        link: LinkView,
        (handover, handover_any, takeover, takeover_any): (bool, bool, bool, bool),
    ) {
        let ready = link.connected
            && link.in_sync
            && self.machine.activity() == twinfs_supervisor::machine::Activity::Idle;
        if handover && !self.handover_seen && ready && role == Role::Secondary {
            self.handover_seen = true;
            let ds = self.machine.handle_peer_handed_over(now);
            self.process(ds);
        } else if !handover_any {
            self.handover_seen = false;
        }
        if takeover && !self.takeover_seen && ready && role == Role::Primary {
            self.takeover_seen = true;
            self.note("the peer asks to take over (planned switchover)".into());
            let ds = self.machine.request_switchover(now);
            self.process(ds);
        } else if !takeover_any {
            self.takeover_seen = false;
        }
    }

    /// Logs every decision and carries out the driver's ones, one step at a time.
    fn process(&mut self, decisions: Vec<Decision>) {
        let mut todo: VecDeque<Decision> = decisions.into();
        let mut guard = 0;
        while let Some(d) = todo.pop_front() {
            guard += 1;
            if guard > 1000 {
                tracing::error!("supervisor: too many decisions in one go; stopping this round");
                break;
            }
            self.record(&d);
            match d.action {
                Action::Promote => self.counters.promotions += 1,
                Action::Demote => self.counters.demotions += 1,
                Action::RollBack => self.counters.rollbacks += 1,
                _ => {}
            }
            match d.action {
                Action::Step(step) => {
                    let result = self.run_step(step);
                    if let Err(e) = &result {
                        self.note(format!("step {step:?} failed: {e}"));
                    }
                    match self
                        .machine
                        .handle_step_finished(self.now_ms(), step, result)
                    {
                        Ok(more) => todo.extend(more),
                        Err(e) => tracing::error!("supervisor: {e}"),
                    }
                }
                Action::RunHook(h) => {
                    let hook = match h {
                        twinfs_supervisor::machine::Hook::PeerLost => Hook::PeerLost,
                        twinfs_supervisor::machine::Hook::PeerBack => Hook::PeerBack,
                        twinfs_supervisor::machine::Hook::SplitBrain => Hook::SplitBrain,
                    };
                    let status = self.last_status.clone().unwrap_or_default();
                    if let Err(e) = self.run_hook(hook, &status, status.role) {
                        self.note(format!("hook {hook} failed: {e}"));
                    }
                }
                Action::Escalate(e) => self.escalate(e),
                Action::HandOver => {
                    self.handover_until = Some(Instant::now() + HANDOVER_ANNOUNCE);
                    if self.beacon.is_none() {
                        self.note(
                            "hand-over: no beacon configured (failover.public), so the peer \
                             is not told; it promotes by itself only if it is the home node"
                                .into(),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    fn run_step(&mut self, step: Step) -> Result<(), String> {
        let status = self.last_status.clone().unwrap_or_default();
        match step {
            Step::AcquireLease | Step::ReleaseLease => {
                let Some(tx) = &self.witness_tx else {
                    return Ok(());
                };
                let (rtx, rrx) = mpsc::channel();
                let cmd = if step == Step::AcquireLease {
                    WitnessCmd::Acquire(rtx)
                } else {
                    WitnessCmd::Release(rtx)
                };
                tx.send(cmd)
                    .map_err(|_| "the witness thread is gone".to_string())?;
                let r = rrx
                    .recv_timeout(Duration::from_secs(5))
                    .map_err(|_| "the witness did not answer in 5 s".to_string())?;
                if step == Step::AcquireLease && r.is_ok() {
                    self.want_lease.store(true, Ordering::SeqCst);
                }
                if step == Step::ReleaseLease {
                    self.want_lease.store(false, Ordering::SeqCst);
                }
                r
            }
            Step::FencePeer => self.run_hook(Hook::Fence, &status, Role::Secondary),
            Step::PromoteStore => {
                // The machine may declare the peer dead a little before the
                // node's own timer does; the node refuses to promote while
                // it still sees a connected primary, so let it catch up.
                let limit = Duration::from_millis(self.machine.config().deadtime_ms);
                let deadline = Instant::now() + limit;
                while Instant::now() < deadline {
                    match self.node_status() {
                        Some(s)
                            if s.peer.role == Some(Role::Primary)
                                && s.connection == ConnectionState::Connected =>
                        {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        _ => break,
                    }
                }
                self.role_request(Request::Promote)
            }
            Step::DemoteStore => {
                // Idempotent: a node that is already Secondary is demoted.
                if self
                    .node_status()
                    .is_some_and(|s| s.role == Role::Secondary)
                {
                    return Ok(());
                }
                self.demoting.store(true, Ordering::SeqCst);
                let r = self.role_request(Request::Demote);
                self.demoting.store(false, Ordering::SeqCst);
                r
            }
            Step::OnPromote => self.run_hook(Hook::Promote, &status, Role::Primary),
            Step::OnDemote => self.run_hook(Hook::Demote, &status, Role::Secondary),
        }
    }

    fn role_request(&mut self, req: Request) -> Result<(), String> {
        match self.node.call(req, ROLE_TIMEOUT) {
            Ok(Response::Done(line)) => {
                self.note(line);
                // The next observation must see the new role.
                self.node_status();
                Ok(())
            }
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Runs `hook` for a node about to be (or being) `role`.
    fn run_hook(&mut self, hook: Hook, status: &Status, role: Role) -> Result<(), String> {
        self.run_hook_with_disk(hook, status, Some(status.disk), role)
    }

    fn run_hook_with_disk(
        &mut self,
        hook: Hook,
        status: &Status,
        disk: Option<DiskState>,
        role: Role,
    ) -> Result<(), String> {
        let state = HookState {
            // Hooks see roles in lowercase, as `twinfs.state().role`.
            role: role.to_string(),
            disk: disk.map_or_else(|| "Unknown".into(), |d| d.to_string()),
            peer: if status.connection == ConnectionState::Connected {
                "connected".into()
            } else {
                "lost".into()
            },
            peer_address: Some(self.peer_address.clone()),
            generation: u64::from_str_radix(&status.generation, 16).unwrap_or(0),
            extra: Default::default(),
        };
        let started = self.now_ms();
        let clock = Instant::now();
        let result = self.hooks.run(hook, &state);
        let t = self
            .counters
            .hooks
            .entry(hook.function_name().to_string())
            .or_default();
        t.runs += 1;
        t.failures += u64::from(result.is_err());
        t.last_seconds = clock.elapsed().as_secs_f64();
        t.total_seconds += t.last_seconds;
        let report = match &result {
            Ok(r) => Some(r),
            Err(e) => e.report(),
        };
        if let Some(r) = report {
            if r.defined {
                self.last_hooks = r
                    .actions
                    .iter()
                    .map(|a| format!("{} {a}", hook.function_name()))
                    .chain(r.undone.iter().map(|u| {
                        format!(
                            "{} undo {} ({:?}){}",
                            hook.function_name(),
                            u.action,
                            u.duration,
                            u.error
                                .as_ref()
                                .map(|e| format!(": failed: {e}"))
                                .unwrap_or_default()
                        )
                    }))
                    .collect();
                for line in self.last_hooks.clone() {
                    let at = self.wall(started);
                    self.push_timeline(format!("{at} {line}"));
                }
            }
        }
        self.dirty = true;
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    fn escalate(&mut self, e: Escalation) {
        let default: &[&str] = match e {
            Escalation::None => {
                self.note(
                    "demotion failed and escalation is \"none\": this node may still hold \
                     the VIP or run the service; fix it, then `twinfs maintenance off`"
                        .into(),
                );
                return;
            }
            Escalation::Reboot => &["systemctl", "reboot", "--force"],
            Escalation::Poweroff => &["systemctl", "poweroff", "--force"],
        };
        let argv: Vec<String> = self
            .escalation_command
            .clone()
            .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        self.note(format!("escalating ({e:?}): {}", argv.join(" ")));
        self.write_status(true);
        match std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
        {
            Ok(st) if st.success() => {}
            Ok(st) => self.note(format!("escalation {} exited with {st}", argv.join(" "))),
            Err(err) => self.note(format!("escalation {} failed: {err}", argv.join(" "))),
        }
    }

    fn record(&mut self, d: &Decision) {
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

    /// The node is shutting down and about to unmount: take the site down
    /// here first (on_demote), then let it go on.
    fn serve_pre_unmount(&mut self) {
        let Some(rx) = &self.pre_unmount_rx else {
            return;
        };
        let Ok(reply) = rx.try_recv() else {
            return;
        };
        self.note(
            "shutting down as primary: stopping the service and releasing the VIP before \
             the unmount (on_demote)"
                .into(),
        );
        let status = self.last_status.clone().unwrap_or_default();
        if let Err(e) = self.run_hook(Hook::Demote, &status, Role::Secondary) {
            self.note(format!("on_demote at shutdown failed: {e}"));
        }
        self.write_status(true);
        let _ = reply.send(());
    }

    fn serve_admin(&mut self) {
        // Bounded: at most a few requests per tick.
        for _ in 0..4 {
            let Ok((req, reply)) = self.admin_rx.try_recv() else {
                return;
            };
            let answer = self.admin(req);
            let _ = reply.send(answer);
        }
    }

    fn admin(&mut self, req: AdminRequest) -> AdminResponse {
        let now = self.now_ms();
        match req {
            AdminRequest::Switchover => {
                // Decide on a fresh look: a promotion may have finished
                // since the last tick.
                self.tick();
                let now = self.now_ms();
                let role = self.last_status.as_ref().map(|s| s.role);
                if role != Some(Role::Primary) {
                    return AdminResponse::Error(format!(
                        "this node is {}, not Primary: run `twinfs switchover` on the primary",
                        role.map_or_else(|| "not answering".into(), |r| format!("{r:?}"))
                    ));
                }
                let ds = self.machine.request_switchover(now);
                let refused = ds
                    .iter()
                    .find(|d| d.action == Action::NoAction)
                    .map(|d| d.reason.clone());
                self.process(ds);
                match refused {
                    Some(r) => AdminResponse::Error(format!("switchover refused: {r}")),
                    None => {
                        let now = self.now_ms();
                        AdminResponse::Done(format!(
                            "demoted here; the peer was told to take over ({})",
                            self.machine.why(now)
                        ))
                    }
                }
            }
            AdminRequest::Maintenance(on) => {
                let mut ds = self.machine.set_maintenance(now, on);
                if !on {
                    // Leaving maintenance also resumes after a failed
                    // demotion that the admin has fixed by hand.
                    ds.extend(self.machine.clear_failure(now));
                }
                self.process(ds);
                AdminResponse::Done(format!(
                    "maintenance mode {}",
                    if on { "on" } else { "off" }
                ))
            }
            AdminRequest::TakeOver => {
                let st = self.last_status.clone().unwrap_or_default();
                if st.role != Role::Secondary
                    || st.disk != DiskState::UpToDate
                    || st.connection != ConnectionState::Connected
                {
                    return AdminResponse::Error(format!(
                        "this node is {:?} with disk {} and link {}: only a connected, UpToDate \
                         secondary can take over",
                        st.role, st.disk, st.connection
                    ));
                }
                if self.beacon.is_none() {
                    return AdminResponse::Error(
                        "no beacon (failover.public) to ask the peer through; run `twinfs \
                         switchover` on the primary instead"
                            .into(),
                    );
                }
                self.takeover_until = Some(Instant::now() + HANDOVER_ANNOUNCE);
                self.note("asking the peer to hand the primary role over".into());
                AdminResponse::Done("asked the peer to hand over".into())
            }
            AdminRequest::Clear => {
                let ds = self.machine.clear_failure(now);
                self.process(ds);
                AdminResponse::Done(self.machine.why(self.now_ms()))
            }
        }
    }

    fn write_status(&mut self, force: bool) {
        let due = self
            .last_written
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !force && !self.dirty && !due {
            return;
        }
        let now = self.now_ms();
        let (ping, witness) = {
            let p = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            (p.ping_text.clone(), p.witness_text.clone())
        };
        let beacon = self.beacon.as_ref().map(|b| {
            let st = b.status();
            // Under a flood: how much was refused, and how much of it dropped
            // unverified by the rate limits.
            let refused = if st.rejected > 0 {
                format!(
                    "; {} datagrams refused ({} dropped unverified)",
                    st.rejected,
                    st.intake.over_rate + st.intake.queue_full
                )
            } else {
                String::new()
            };
            let text = match st.heard {
                Some(h) => format!(
                    "peer heard {:.1} s ago from {} ({:?}, disk {:?}, replication link {}){}",
                    h.at.elapsed().as_secs_f64(),
                    h.from,
                    h.announce.role,
                    h.announce.disk,
                    if h.announce.link_up { "up" } else { "DOWN" },
                    st.last_rejection
                        .map(|r| format!("; last refused datagram: {r}"))
                        .unwrap_or_default()
                ),
                None => format!(
                    "peer never heard ({} sent){}",
                    st.sent,
                    st.last_rejection
                        .map(|r| format!("; last refused datagram: {r}"))
                        .unwrap_or_default()
                ),
            };
            text + &refused
        });
        let st = FailoverStatus {
            pid: std::process::id(),
            written: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            activity: format!("{:?}", self.machine.activity()),
            why: self.machine.why(now),
            maintenance: self.machine.maintenance(),
            decisions: self.timeline.iter().cloned().collect(),
            last_hooks: self.last_hooks.clone(),
            beacon,
            ping,
            witness,
            counters: self.counters.clone(),
        };
        self.board.publish(&st);
        let path = status_path(&self.data_dir);
        let tmp = path.with_extension("json.tmp");
        let ok = serde_json::to_vec_pretty(&st)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = ok {
            tracing::warn!("supervisor: cannot write {}: {e}", path.display());
        }
        self.last_written = Some(Instant::now());
        self.dirty = false;
    }
}
