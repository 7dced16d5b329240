//! Two machines driven in one simulated world: a replication link, a public
//! network carrying beacons, a ping target and a witness holding a primary
//! lease, each of which the test can cut per node. Nodes can die and come
//! back. The property: at no instant are both nodes Primary while the witness
//! is reachable to either of them.

use super::*;

const TICK: u64 = 50;
const DEADTIME: u64 = 1_000;
/// The witness lease lasts deadtime, the minimum the machine needs.
const LEASE: u64 = DEADTIME;

fn sim_cfg(preferred: Preferred, auto_failback: bool) -> MachineConfig {
    MachineConfig {
        deadtime_ms: DEADTIME,
        initdead_ms: 2 * DEADTIME,
        auto_failback,
        preferred,
        stabilize_ms: 3_000,
        hold_down_ms: 5_000,
        ping_target: Some("gw".into()),
        witness: Some("w".into()),
        fence: false,
        on_demote_failure: Escalation::None,
        history_len: 50,
    }
}

struct Node {
    m: Machine,
    cfg: MachineConfig,
    alive: bool,
    role: Role,
    /// The step the driver runs now; it finishes at the next tick.
    running: Option<Step>,
    /// The peer handed over (delivered at the next tick).
    handed_over: bool,
    /// When the last beacon from the peer arrived.
    beacon_at: Option<u64>,
    ping_since: u64,
    promotions: usize,
}

impl Node {
    fn new(cfg: MachineConfig, now: u64) -> Self {
        Node {
            m: Machine::new(cfg.clone(), now).expect("valid config"),
            cfg,
            alive: true,
            role: Role::Secondary,
            running: None,
            handed_over: false,
            beacon_at: None,
            ping_since: now,
            promotions: 0,
        }
    }
}

struct World {
    now: u64,
    nodes: [Node; 2],
    link_up: bool,
    public_up: bool,
    witness_reach: [bool; 2],
    ping_reach: [bool; 2],
    /// Lease holder and expiry.
    lease: Option<(usize, u64)>,
    /// Ticks with exactly one Primary (to show the run is not vacuous).
    ticks_one_primary: usize,
}

impl World {
    fn new(a: MachineConfig, b: MachineConfig) -> Self {
        World {
            now: 0,
            nodes: [Node::new(a, 0), Node::new(b, 0)],
            link_up: true,
            public_up: true,
            witness_reach: [true, true],
            ping_reach: [true, true],
            lease: None,
            ticks_one_primary: 0,
        }
    }

    fn lease_free(&self) -> bool {
        self.lease.is_none_or(|(_, until)| until <= self.now)
    }

    fn holds_lease(&self, i: usize) -> bool {
        self.lease
            .is_some_and(|(h, until)| h == i && until > self.now)
    }

    /// What the driver would do for one decision of node `i`.
    fn perform(&mut self, i: usize, d: &Decision) {
        match d.action {
            Action::Step(step) => self.nodes[i].running = Some(step),
            Action::HandOver if self.link_up && self.nodes[1 - i].alive => {
                self.nodes[1 - i].handed_over = true
            }
            Action::Promote => self.nodes[i].promotions += 1,
            _ => {}
        }
    }

    /// Finishes the running step of node `i`: its effect on the world.
    fn finish_step(&mut self, i: usize) -> Vec<Decision> {
        let Some(step) = self.nodes[i].running.take() else {
            return Vec::new();
        };
        let result = match step {
            Step::AcquireLease if !self.witness_reach[i] => Err("witness unreachable".to_string()),
            Step::AcquireLease if !(self.lease_free() || self.holds_lease(i)) => {
                Err("lease held by the peer".into())
            }
            Step::AcquireLease => {
                self.lease = Some((i, self.now + LEASE));
                Ok(())
            }
            Step::ReleaseLease if !self.witness_reach[i] => Err("witness unreachable".into()),
            Step::ReleaseLease => {
                if self.lease.is_some_and(|(h, _)| h == i) {
                    self.lease = None;
                }
                Ok(())
            }
            Step::PromoteStore => {
                self.nodes[i].role = Role::Primary;
                Ok(())
            }
            Step::DemoteStore => {
                self.nodes[i].role = Role::Secondary;
                Ok(())
            }
            Step::FencePeer | Step::OnPromote | Step::OnDemote => Ok(()),
        };
        self.nodes[i]
            .m
            .handle_step_finished(self.now, step, result)
            .expect("the step the machine asked for")
    }

    fn observe(&self, i: usize) -> Observation {
        let (me, peer) = (&self.nodes[i], &self.nodes[1 - i]);
        let connected = self.link_up && peer.alive;
        let reach = self.witness_reach[i];
        Observation {
            now_ms: self.now,
            role: me.role,
            disk: Some(DiskState::UpToDate),
            link: LinkView {
                connected,
                peer_role: connected.then_some(peer.role),
                peer_disk: connected.then_some(DiskState::UpToDate),
                in_sync: connected,
                heard_ago_ms: None,
            },
            beacon_age_ms: me.beacon_at.map(|t| self.now - t),
            ping: Some(PingView {
                reachable: self.ping_reach[i],
                since_ms: me.ping_since,
            }),
            witness: Some(WitnessView {
                reachable: reach,
                grants_me: reach && (self.lease_free() || self.holds_lease(i)),
                hears_peer: reach && peer.alive && self.witness_reach[1 - i],
            }),
        }
    }

    fn step(&mut self) {
        self.now += TICK;
        // The witness client keeps the lease while Primary or promoting: it
        // renews it, and takes it again if it lapsed and nobody took it.
        for i in 0..2 {
            let n = &self.nodes[i];
            let wants = n.role == Role::Primary || n.m.activity() == Activity::Promoting;
            let grantable = self.holds_lease(i) || self.lease_free();
            if n.alive && wants && self.witness_reach[i] && grantable {
                self.lease = Some((i, self.now + LEASE));
            }
        }
        for i in 0..2 {
            if !self.nodes[i].alive {
                continue;
            }
            if self.public_up && self.nodes[1 - i].alive {
                self.nodes[i].beacon_at = Some(self.now);
            }
            let mut out = self.finish_step(i);
            if std::mem::take(&mut self.nodes[i].handed_over) {
                out.extend(self.nodes[i].m.handle_peer_handed_over(self.now));
            }
            let obs = self.observe(i);
            out.extend(self.nodes[i].m.handle_observation(&obs));
            for d in &out {
                self.perform(i, d);
            }
        }
        self.check();
    }

    fn check(&mut self) {
        let alive_primary = |n: &Node| n.alive && n.role == Role::Primary;
        let primaries = self.nodes.iter().filter(|n| alive_primary(n)).count();
        let witness_seen = (0..2).any(|i| self.nodes[i].alive && self.witness_reach[i]);
        assert!(
            !(primaries == 2 && witness_seen),
            "two primaries at {} ms with the witness reachable (reach {:?}, link {}, public {}, lease {:?})\n\
             A: {:#?}\nB: {:#?}",
            self.now,
            self.witness_reach,
            self.link_up,
            self.public_up,
            self.lease,
            self.nodes[0].m.history().collect::<Vec<_>>(),
            self.nodes[1].m.history().collect::<Vec<_>>(),
        );
        if primaries == 1 {
            self.ticks_one_primary += 1;
        }
    }

    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms / TICK {
            self.step();
        }
    }

    fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = false;
        n.running = None;
        n.beacon_at = None;
    }

    /// A node that boots comes up Secondary (it reconciles: releases the VIP,
    /// stops the service) with a fresh machine.
    fn revive(&mut self, i: usize) {
        let cfg = self.nodes[i].cfg.clone();
        let promotions = self.nodes[i].promotions;
        self.nodes[i] = Node::new(cfg, self.now);
        self.nodes[i].promotions = promotions;
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|&i| self.nodes[i].alive && self.nodes[i].role == Role::Primary)
    }
}

/// A small deterministic generator (PCG-style LCG), so that a failing seed
/// can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn pair(auto_failback: bool) -> World {
    World::new(
        sim_cfg(Preferred::ThisNode, auto_failback),
        sim_cfg(Preferred::PeerNode, auto_failback),
    )
}

#[test]
fn the_preferred_node_starts_primary_and_the_other_takes_over_when_it_is_cut_off() {
    let mut w = pair(false);
    w.run_for(3_000);
    assert_eq!(
        w.primary(),
        Some(0),
        "A is elected: {:?}",
        w.nodes[0].m.history().collect::<Vec<_>>()
    );
    // A is cut off from everything but keeps running.
    w.link_up = false;
    w.public_up = false;
    w.witness_reach[0] = false;
    w.ping_reach[0] = false;
    w.run_for(3_000);
    assert_eq!(
        w.primary(),
        Some(1),
        "B took over: {:?}",
        w.nodes[1].m.history().collect::<Vec<_>>()
    );
    let a_demote = w.nodes[0]
        .m
        .history()
        .find(|d| d.action == Action::Demote)
        .expect("A demoted");
    assert!(
        a_demote.reason.starts_with("demoting: isolated"),
        "{}",
        a_demote.reason
    );
    // A comes back: it stays Secondary (no auto_failback), B stays Primary.
    w.link_up = true;
    w.public_up = true;
    w.witness_reach[0] = true;
    w.ping_reach[0] = true;
    w.run_for(20_000);
    assert_eq!(w.primary(), Some(1));
    assert_eq!(w.nodes[0].role, Role::Secondary);
    assert_eq!((w.nodes[0].promotions, w.nodes[1].promotions), (1, 1));
}

#[test]
fn a_partition_between_the_nodes_changes_nothing_while_both_see_the_witness() {
    let mut w = pair(false);
    w.run_for(3_000);
    assert_eq!(w.primary(), Some(0));
    w.link_up = false;
    w.public_up = false;
    w.run_for(10_000);
    assert_eq!(w.primary(), Some(0));
    assert_eq!(w.nodes[1].promotions, 0);
    let refusal = w.nodes[1]
        .m
        .history()
        .rfind(|d| d.action == Action::NoAction)
        .expect("B recorded why");
    assert!(
        refusal
            .reason
            .contains("peer still reachable through the witness w"),
        "{}",
        refusal.reason
    );
}

#[test]
fn switchover_and_failback_in_the_pair() {
    let mut w = pair(true);
    w.run_for(3_000);
    assert_eq!(w.primary(), Some(0));
    let out = w.nodes[0].m.request_switchover(w.now);
    for d in &out {
        w.perform(0, d);
    }
    w.run_for(1_000);
    assert_eq!(
        w.primary(),
        Some(1),
        "B took over: {:?}",
        w.nodes[1].m.history().collect::<Vec<_>>()
    );
    // B is not the home node: with auto_failback it hands back after stabilize.
    w.run_for(3_000);
    assert_eq!(
        w.primary(),
        Some(0),
        "{:?}",
        w.nodes[1].m.history().collect::<Vec<_>>()
    );
    w.run_for(20_000);
    assert_eq!(w.primary(), Some(0), "no ping-pong");
    assert_eq!((w.nodes[0].promotions, w.nodes[1].promotions), (2, 1));
}

/// Whether nothing is cut and both nodes run.
fn all_healthy(w: &World) -> bool {
    w.link_up
        && w.public_up
        && w.witness_reach == [true, true]
        && w.ping_reach == [true, true]
        && w.nodes.iter().all(|n| n.alive)
}

#[test]
fn never_two_primaries_while_the_witness_is_reachable_under_random_faults() {
    const RUNS: u64 = 32;
    const TICKS: usize = 6_000;
    let mut promotions = 0;
    let mut settled_ticks = 0;
    for seed in 0..RUNS {
        let mut rng = Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut w = pair(seed % 2 == 0);
        let mut healthy_for = 0u64;
        for _ in 0..TICKS {
            // About one event every 1.25 s, long enough for failovers to happen.
            if rng.next(25) == 0 {
                match rng.next(16) {
                    0 => w.link_up = !w.link_up,
                    1 => w.public_up = !w.public_up,
                    2 | 3 => {
                        let i = rng.next(2) as usize;
                        w.witness_reach[i] = !w.witness_reach[i];
                    }
                    4 => {
                        let i = rng.next(2) as usize;
                        w.ping_reach[i] = !w.ping_reach[i];
                        w.nodes[i].ping_since = w.now;
                    }
                    5 => {
                        let i = rng.next(2) as usize;
                        if w.nodes[i].alive {
                            w.kill(i);
                        } else {
                            w.revive(i);
                        }
                    }
                    6..=12 => {
                        w.link_up = true;
                        w.public_up = true;
                        w.witness_reach = [true, true];
                        w.ping_reach = [true, true];
                        for i in 0..2 {
                            if !w.nodes[i].alive {
                                w.revive(i);
                            }
                        }
                    }
                    13 => {
                        if let Some(p) = w.primary() {
                            let out = w.nodes[p].m.request_switchover(w.now);
                            for d in &out {
                                w.perform(p, d);
                            }
                        }
                    }
                    _ => {}
                }
            }
            w.step();
            healthy_for = if all_healthy(&w) {
                healthy_for + TICK
            } else {
                0
            };
            // Liveness: a world healthy for 10 s (more than deadtime plus
            // hold-down) has exactly one primary, switchovers aside.
            let idle = w
                .nodes
                .iter()
                .all(|n| n.m.activity() == Activity::Idle && !n.handed_over);
            if healthy_for >= 10_000 && idle {
                settled_ticks += 1;
                assert!(
                    w.primary().is_some(),
                    "seed {seed}: no primary at {} ms after 10 s of health\nA: {}\nB: {}",
                    w.now,
                    w.nodes[0].m.why(w.now),
                    w.nodes[1].m.why(w.now)
                );
            }
        }
        promotions += w.nodes[0].promotions + w.nodes[1].promotions;
    }
    // Not vacuous: the pair failed over often and spent time settled.
    assert!(
        promotions >= 400,
        "only {promotions} promotions in {RUNS} runs"
    );
    assert!(
        settled_ticks >= 2_000,
        "only {settled_ticks} settled ticks in {RUNS} runs"
    );
}
