//! The driver against a fake node and a scripted clock: every test runs the
//! real machine, the real Lua hook runtime (with a recording actuator) and
//! the real step order, in milliseconds.
//!
//! The node, the witness and the hooks write into one log, so that each test
//! checks the order in which the driver touched them.

use super::*;
use crate::actions::{
    ActionError, Actuators, ExecResult, HttpAnswer, HttpCheck, ServiceState, Vip, VipClaim,
};
use crate::hooks::{HookContext, HookLimits, Recorder};
use crate::machine::{Activity, MachineConfig, WitnessView};
use std::collections::BTreeMap;
use twinfs_replicator::status::{ConnectionState, DiskState, PeerStatus};

/// What the node, the witness and the hooks did, in order, with the
/// scripted time of each.
type Log = Arc<Journal>;

struct Journal {
    clock: ScriptedClock,
    lines: Mutex<Vec<(Instant, String)>>,
}

fn push(log: &Log, line: impl Into<String>) {
    let at = log.clock.now();
    log.lines.lock().unwrap().push((at, line.into()));
}

/// Time moves only when a test or a sleep of the driver moves it.
#[derive(Clone)]
struct ScriptedClock(Arc<Mutex<Instant>>);

impl Clock for ScriptedClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }

    fn sleep(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

/// A replication node that keeps the real one's rules for promotion: no
/// promotion while it is connected to a primary, nor when told to refuse.
#[derive(Clone)]
struct FakeNode {
    status: Arc<Mutex<Status>>,
    refuse: Arc<Mutex<Option<String>>>,
    log: Log,
}

impl FakeNode {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap());
    }

    fn role(&self) -> Role {
        self.status.lock().unwrap().role
    }
}

impl Node for FakeNode {
    fn status(&self) -> Option<Status> {
        Some(self.status.lock().unwrap().clone())
    }

    fn promote(&self) -> Result<String, String> {
        push(&self.log, "node promote");
        if let Some(why) = self.refuse.lock().unwrap().clone() {
            return Err(why);
        }
        let mut s = self.status.lock().unwrap();
        if s.connection == ConnectionState::Connected && s.peer.role == Some(Role::Primary) {
            return Err("refused: the peer is Primary and connected".into());
        }
        s.role = Role::Primary;
        Ok("promoted to Primary".into())
    }

    fn demote(&self) -> Result<String, String> {
        push(&self.log, "node demote");
        self.status.lock().unwrap().role = Role::Secondary;
        Ok("demoted to Secondary".into())
    }
}

/// The dry-run recorder, with each action also written to the shared log.
struct Logged {
    rec: Recorder,
    log: Log,
}

impl Logged {
    fn call<T>(&self, f: impl FnOnce(&Recorder) -> T) -> T {
        let before = self.rec.lines().len();
        let out = f(&self.rec);
        for line in &self.rec.lines()[before..] {
            push(&self.log, format!("hook {line}"));
        }
        out
    }
}

impl Actuators for Logged {
    fn vip_claim(&self, vip: &Vip) -> Result<VipClaim, ActionError> {
        self.call(|r| r.vip_claim(vip))
    }
    fn vip_release(&self, vip: &Vip) -> Result<(), ActionError> {
        self.call(|r| r.vip_release(vip))
    }
    fn vip_held(&self, vip: &Vip) -> Result<bool, ActionError> {
        self.call(|r| r.vip_held(vip))
    }
    fn vip_announce(&self, vip: &Vip) -> Result<u32, ActionError> {
        self.call(|r| r.vip_announce(vip))
    }
    fn service_start(&self, name: &str) -> Result<(), ActionError> {
        self.call(|r| r.service_start(name))
    }
    fn service_stop(&self, name: &str) -> Result<(), ActionError> {
        self.call(|r| r.service_stop(name))
    }
    fn service_status(&self, name: &str) -> Result<ServiceState, ActionError> {
        self.call(|r| r.service_status(name))
    }
    fn http_check(&self, check: &HttpCheck) -> Result<HttpAnswer, ActionError> {
        self.call(|r| r.http_check(check))
    }
    fn exec(&self, argv: &[String], timeout: Duration) -> Result<ExecResult, ActionError> {
        self.call(|r| r.exec(argv, timeout))
    }
}

/// The usual hooks: the VIP and Apache up on promotion, down on demotion.
const HOOKS: &str = "\
function on_promote()
  twinfs.vip.claim{}
  twinfs.service.start('apache2')
end
function on_demote()
  twinfs.service.stop('apache2')
  twinfs.vip.release{}
end
";

/// A promotion hook that fails after claiming the VIP.
const FAILING_PROMOTE: &str = "\
function on_promote()
  twinfs.vip.claim{}
  error('apache2 did not start')
end
function on_demote()
  twinfs.service.stop('apache2')
  twinfs.vip.release{}
end
";

const DEADTIME: Duration = Duration::from_secs(1);

/// A driver with a witness (answered by a thread that logs each lease
/// step), a fake node and a scripted clock.
struct Bench {
    driver: Driver,
    node: FakeNode,
    clock: ScriptedClock,
    log: Log,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// A Secondary with an UpToDate disk, its peer a connected Secondary.
    fn new(script: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.lua");
        std::fs::write(&path, script).unwrap();
        let clock = ScriptedClock(Arc::new(Mutex::new(Instant::now())));
        let log: Log = Arc::new(Journal {
            clock: clock.clone(),
            lines: Mutex::default(),
        });
        let vars: BTreeMap<String, String> = [
            ("vip".to_string(), "10.0.0.10/24".to_string()),
            ("interface".to_string(), "eth0".to_string()),
        ]
        .into();
        let hooks = HookRuntime::load(
            &path,
            HookContext::new("alpha", vars),
            Arc::new(Logged {
                rec: Recorder::new(),
                log: log.clone(),
            }),
            HookLimits::default(),
        )
        .unwrap();
        let cfg = SupervisorConfig {
            name: "alpha".into(),
            data_dir: dir.path().to_owned(),
            peer_address: "10.0.0.2:7789".into(),
            key: PathBuf::new(),
            peer_cert: None,
            keepalive: Duration::from_millis(200),
            deadtime: DEADTIME,
            script: path,
            hook_vars: BTreeMap::new(),
            hook_timeout: Duration::from_secs(5),
            services: BTreeMap::new(),
            arp_probe: Duration::ZERO,
            beacon: None,
            ping: Vec::new(),
            witness: Some(WitnessSettings {
                addr: "10.0.0.3:7790".parse().unwrap(),
                cert: PathBuf::new(),
            }),
            home: None,
            auto_failback: false,
            stabilize: Duration::from_secs(5),
            hold_down: Duration::from_secs(10),
            escalation: crate::machine::Escalation::None,
            escalation_command: None,
            manual: false,
            standby_serves: false,
        };
        let machine = Machine::new(cfg.machine_config(false), 0).unwrap();
        let node = FakeNode {
            status: Arc::new(Mutex::new(Status {
                node: "alpha".into(),
                role: Role::Secondary,
                disk: DiskState::UpToDate,
                connection: ConnectionState::Connected,
                generation: "1f".into(),
                peer: PeerStatus {
                    role: Some(Role::Secondary),
                    disk: Some(DiskState::UpToDate),
                    ..PeerStatus::default()
                },
                ..Status::default()
            })),
            refuse: Arc::default(),
            log: log.clone(),
        };
        let mut driver = Driver::new(
            Box::new(node.clone()),
            Box::new(clock.clone()),
            machine,
            hooks,
            cfg.data_dir.clone(),
            cfg.peer_address.clone(),
        );
        driver.has_witness = true;
        driver.witness_tx = Some(witness(log.clone()));
        driver.probes.lock().unwrap().witness = Some(WitnessView {
            reachable: true,
            grants_me: true,
            hears_peer: false,
        });
        Bench {
            driver,
            node,
            clock,
            log,
            _dir: dir,
        }
    }

    /// Runs rounds for `ms` of scripted time.
    fn run_for(&mut self, ms: u64) {
        let end = self.clock.now() + Duration::from_millis(ms);
        while self.clock.now() < end {
            self.driver.round();
            self.clock.sleep(TICK);
        }
    }

    /// The replication link goes quiet: the node still says Connected (its
    /// own timer runs later), but the last frame ages.
    fn peer_silent(&mut self) {
        self.node.set(|s| {
            s.connection = ConnectionState::Connecting;
            s.peer.role = None;
            s.peer.disk = None;
        });
    }

    /// What was done, in order.
    fn log(&self) -> Vec<String> {
        let lines = self.log.lines.lock().unwrap();
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// When `line` was first done.
    fn at(&self, line: &str) -> Instant {
        let lines = self.log.lines.lock().unwrap();
        let found = lines.iter().find(|(_, l)| l == line);
        found
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("{line:?} never done"))
    }

    /// The status as the driver publishes it now.
    fn published(&mut self) -> FailoverStatus {
        self.driver.write_status(true);
        self.driver.board.get().expect("a status was published")
    }

    fn admin(&mut self, req: AdminRequest) -> AdminResponse {
        self.driver.admin(req)
    }
}

/// A witness thread that grants every lease and logs each request.
fn witness(log: Log) -> mpsc::Sender<WitnessCmd> {
    let (tx, rx) = mpsc::channel::<WitnessCmd>();
    std::thread::spawn(move || {
        for cmd in rx {
            match cmd {
                WitnessCmd::Acquire(reply) => {
                    push(&log, "witness acquire");
                    let _ = reply.send(Ok(()));
                }
                WitnessCmd::Release(reply) => {
                    push(&log, "witness release");
                    let _ = reply.send(Ok(()));
                }
            }
        }
    });
    tx
}

#[test]
fn a_silent_peer_is_replaced_in_order_lease_store_hook_status() {
    let mut b = Bench::new(HOOKS);
    b.run_for(500);
    assert!(b.log().is_empty(), "{:?}", b.log());
    b.peer_silent();
    b.run_for(3_000);
    assert_eq!(
        b.log(),
        [
            "witness acquire",
            "node promote",
            "hook vip.claim 10.0.0.10/24 on eth0",
            "hook service.start apache2",
        ]
    );
    assert_eq!(b.node.role(), Role::Primary);
    let st = b.published();
    assert_eq!(st.activity, Activity::Idle);
    assert!(st.why.starts_with("promoted"), "{}", st.why);
    assert_eq!((st.counters.promotions, st.counters.rollbacks), (1, 0));
    assert_eq!(st.counters.hooks["on_promote"].runs, 1);
    let steps: Vec<_> = st
        .decisions
        .iter()
        .filter_map(|d| d.split_whitespace().nth(2).filter(|_| d.contains(" step ")))
        .collect();
    assert_eq!(
        steps,
        ["AcquireLease:", "PromoteStore:", "OnPromote:"],
        "{:#?}",
        st.decisions
    );
    assert!(
        st.decisions
            .iter()
            .any(|d| d.ends_with("promoted to Primary")),
        "the node's answer is noted: {:#?}",
        st.decisions
    );
    assert!(
        st.last_hooks
            .iter()
            .any(|h| h.starts_with("on_promote service.start apache2")),
        "{:?}",
        st.last_hooks
    );
    // The file the CLI reads says the same.
    let file = read_status(&b.driver.data_dir);
    assert!(file.is_none_or(|f| f.why == st.why));
}

#[test]
fn a_failed_promotion_hook_is_rolled_back_in_reverse_order() {
    let mut b = Bench::new(FAILING_PROMOTE);
    b.run_for(200);
    b.peer_silent();
    b.run_for(3_000);
    assert_eq!(
        b.log(),
        [
            "witness acquire",
            "node promote",
            "hook vip.claim 10.0.0.10/24 on eth0",
            // the hook runtime undoes the failed hook's own steps...
            "hook vip.release 10.0.0.10/24 on eth0",
            // ...then the machine the earlier steps, last first
            "hook service.stop apache2",
            "hook vip.release 10.0.0.10/24 on eth0",
            "node demote",
            "witness release",
        ]
    );
    assert_eq!(b.node.role(), Role::Secondary);
    let st = b.published();
    assert_eq!((st.counters.promotions, st.counters.rollbacks), (1, 1));
    assert_eq!(st.counters.hooks["on_promote"].failures, 1);
    assert!(
        st.decisions
            .iter()
            .any(|d| d.contains("RollBack") && d.contains("apache2 did not start")),
        "{:#?}",
        st.decisions
    );
    // Held down: no second attempt within hold_down.
    let before = b.log().len();
    b.run_for(5_000);
    assert_eq!(b.log().len(), before, "{:?}", b.log());
}

#[test]
fn a_promotion_the_node_refuses_is_undone_and_no_hook_runs() {
    let mut b = Bench::new(HOOKS);
    *b.node.refuse.lock().unwrap() = Some("refused: the disk is Outdated".into());
    b.run_for(200);
    b.peer_silent();
    b.run_for(3_000);
    assert_eq!(
        b.log(),
        ["witness acquire", "node promote", "witness release"]
    );
    assert_eq!(b.node.role(), Role::Secondary);
    let st = b.published();
    assert_eq!(st.counters.rollbacks, 1);
    assert!(
        st.decisions
            .iter()
            .any(|d| d.contains("step PromoteStore failed: refused: the disk is Outdated")),
        "{:#?}",
        st.decisions
    );
}

#[test]
fn promotion_waits_for_the_node_to_let_go_of_a_primary_peer() {
    let mut b = Bench::new(HOOKS);
    b.node.set(|s| s.peer.role = Some(Role::Primary));
    b.run_for(200);
    // The link looks dead to the machine (nothing heard for 3 deadtimes),
    // while the node's own timer has not fired: it still says Connected to
    // a Primary, and would refuse a promotion.
    b.node.set(|s| s.peer.heard_ms_ago = Some(3_000));
    b.run_for(3_000);
    let waited = b.at("node promote") - b.at("witness acquire");
    assert_eq!(
        b.log(),
        ["witness acquire", "node promote", "witness release"],
        "the node refused after the driver waited"
    );
    assert!(waited >= DEADTIME, "waited only {waited:?} for the node");
    assert_eq!(b.node.role(), Role::Secondary);
    let decisions = b.published().decisions;
    assert!(
        decisions
            .iter()
            .any(|d| d.contains("refused: the peer is Primary and connected")),
        "{decisions:#?}"
    );
}

#[test]
fn switchover_demotes_in_order_and_is_refused_on_a_secondary() {
    let mut b = Bench::new(HOOKS);
    match b.admin(AdminRequest::Switchover) {
        AdminResponse::Error(e) => {
            assert!(e.starts_with("this node is Secondary, not Primary"), "{e}")
        }
        other => panic!("switchover on a secondary: {other:?}"),
    }
    // Make it the primary of a healthy pair.
    b.node.set(|s| s.role = Role::Primary);
    b.driver.want_lease.store(true, Ordering::SeqCst);
    b.run_for(500);
    assert!(b.log().is_empty(), "{:?}", b.log());
    match b.admin(AdminRequest::Switchover) {
        AdminResponse::Done(line) => assert!(line.starts_with("demoted here"), "{line}"),
        other => panic!("switchover refused: {other:?}"),
    }
    assert_eq!(
        b.log(),
        [
            "hook service.stop apache2",
            "hook vip.release 10.0.0.10/24 on eth0",
            "node demote",
            "witness release",
        ]
    );
    assert_eq!(b.node.role(), Role::Secondary);
    assert!(b.driver.handover_until.is_some(), "the peer is told");
    assert_eq!(b.driver.machine.activity(), Activity::Idle);
    assert_eq!(b.published().counters.demotions, 1);
}

#[test]
fn maintenance_mode_stops_every_automatic_action() {
    let mut b = Bench::new(HOOKS);
    match b.admin(AdminRequest::Maintenance(true)) {
        AdminResponse::Done(l) => assert_eq!(l, "maintenance mode on"),
        other => panic!("{other:?}"),
    }
    b.peer_silent();
    b.run_for(5_000);
    assert!(b.log().is_empty(), "{:?}", b.log());
    assert!(b.published().maintenance);
}

#[test]
fn the_config_maps_onto_the_machine() {
    let b = Bench::new(HOOKS);
    let m = b.driver.machine.config();
    assert_eq!((m.deadtime_ms, m.initdead_ms), (1_000, 2_000));
    assert_eq!(m.witness.as_deref(), Some("10.0.0.3:7790"));
    let _: &MachineConfig = m;
}
