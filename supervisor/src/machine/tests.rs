//! One node on a scripted clock: the test sets what the node observes, ticks
//! 50 ms at a time, and runs the steps the machine asks for at once.

use super::*;

const TICK: u64 = 50;

fn cfg() -> MachineConfig {
    MachineConfig {
        deadtime_ms: 1_000,
        initdead_ms: 2_000,
        stabilize_ms: 5_000,
        hold_down_ms: 10_000,
        ..MachineConfig::default()
    }
}

/// A node and the world it sees.
struct Bench {
    m: Machine,
    now: u64,
    role: Role,
    disk: Option<DiskState>,
    link: LinkView,
    /// When the last beacon came; `None`: never.
    beacon_at: Option<u64>,
    ping: Option<PingView>,
    witness: Option<WitnessView>,
    /// Every decision, in order.
    log: Vec<Decision>,
    /// Steps run, in order.
    steps: Vec<Step>,
    /// Steps that fail the next time they run, with the message.
    fail: Vec<(Step, String)>,
    /// Peer handed-over messages sent.
    handovers: usize,
}

impl Bench {
    /// A Secondary connected to a healthy Primary peer.
    fn secondary(cfg: MachineConfig) -> Self {
        Bench {
            m: Machine::new(cfg, 0).expect("valid config"),
            now: 0,
            role: Role::Secondary,
            disk: Some(DiskState::UpToDate),
            link: LinkView::healthy(Role::Primary),
            beacon_at: None,
            ping: None,
            witness: None,
            log: Vec::new(),
            steps: Vec::new(),
            fail: Vec::new(),
            handovers: 0,
        }
    }

    /// A Primary connected to a healthy Secondary peer.
    fn primary(cfg: MachineConfig) -> Self {
        let mut b = Bench::secondary(cfg);
        b.role = Role::Primary;
        b.link = LinkView::healthy(Role::Secondary);
        b
    }

    fn obs(&self) -> Observation {
        Observation {
            now_ms: self.now,
            role: self.role,
            disk: self.disk,
            link: self.link,
            beacon_age_ms: self.beacon_at.map(|t| self.now - t),
            ping: self.ping,
            witness: self.witness,
        }
    }

    /// Logs the decisions and runs the steps they ask for, with their
    /// follow-ups (bounded: a transition has at most a handful of steps).
    fn drive(&mut self, first: Vec<Decision>) {
        let mut queue: VecDeque<Decision> = first.into();
        let mut budget = 100;
        while let Some(d) = queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "runaway decisions");
            self.log.push(d.clone());
            match d.action {
                Action::Step(step) => {
                    self.steps.push(step);
                    let result = match self.fail.iter().position(|(s, _)| *s == step) {
                        Some(i) => Err(self.fail.remove(i).1),
                        None => {
                            match step {
                                Step::PromoteStore => self.role = Role::Primary,
                                Step::DemoteStore => self.role = Role::Secondary,
                                _ => {}
                            }
                            Ok(())
                        }
                    };
                    let next = self
                        .m
                        .handle_step_finished(self.now, step, result)
                        .expect("the step asked for");
                    queue.extend(next);
                }
                Action::HandOver => self.handovers += 1,
                _ => {}
            }
        }
    }

    fn tick(&mut self) {
        self.now += TICK;
        if self.link.connected {
            // A connected peer also sends beacons when they are configured.
            if self.beacon_at.is_some() {
                self.beacon_at = Some(self.now);
            }
        }
        let out = self.m.handle_observation(&self.obs());
        self.drive(out);
    }

    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms / TICK {
            self.tick();
        }
    }

    fn count(&self, action: Action) -> usize {
        self.log.iter().filter(|d| d.action == action).count()
    }

    fn first(&self, action: Action) -> Option<&Decision> {
        self.log.iter().find(|d| d.action == action)
    }

    fn refusals_containing(&self, text: &str) -> usize {
        self.log
            .iter()
            .filter(|d| d.action == Action::NoAction && d.reason.contains(text))
            .count()
    }

    fn cut_link(&mut self) {
        self.link = LinkView {
            connected: false,
            ..self.link
        };
    }

    /// The actions of the log since index `from`, steps included.
    fn actions_since(&self, from: usize) -> Vec<Action> {
        self.log[from..].iter().map(|d| d.action).collect()
    }
}

fn witness(reachable: bool, grants_me: bool, hears_peer: bool) -> Option<WitnessView> {
    Some(WitnessView {
        reachable,
        grants_me,
        hears_peer,
    })
}

#[test]
fn peer_death_promotes_after_deadtime_with_the_reason() {
    let mut b = Bench::secondary(cfg());
    b.run_for(1_000);
    assert!(
        b.log.is_empty(),
        "a healthy pair decides nothing: {:?}",
        b.log
    );
    b.cut_link();
    let lost_at = b.now;
    b.run_for(900);
    assert_eq!(b.count(Action::Promote), 0, "promoted before deadtime");
    b.run_for(200);
    let p = b.first(Action::Promote).expect("promoted after deadtime");
    assert_eq!(p.at_ms - lost_at, 1_000, "{p:?}");
    assert!(
        p.reason
            .starts_with("promoting: peer silent for 1 s on the replication link")
            && p.reason.contains("(deadtime 1 s)"),
        "{}",
        p.reason
    );
    assert_eq!(b.steps, [Step::PromoteStore, Step::OnPromote]);
    assert_eq!(b.role, Role::Primary);
    let hook = b
        .log
        .iter()
        .position(|d| d.action == Action::RunHook(Hook::PeerLost));
    let promote = b.log.iter().position(|d| d.action == Action::Promote);
    assert!(
        hook < promote,
        "PeerLost runs before the promotion: {:?}",
        b.log
    );
    assert_eq!(b.m.activity(), Activity::Idle);
    assert!(
        b.m.why(b.now)
            .starts_with("promoted: all promotion steps done"),
        "{}",
        b.m.why(b.now)
    );
    b.run_for(5_000);
    assert_eq!(b.count(Action::Promote), 1);
}

#[test]
fn promotion_reason_names_the_ping_target_and_witness() {
    let mut c = cfg();
    c.ping_target = Some("10.0.0.1".into());
    c.witness = Some("10.0.0.3:7790".into());
    c.fence = true;
    let mut b = Bench::secondary(c);
    b.ping = Some(PingView {
        reachable: true,
        since_ms: 0,
    });
    b.witness = witness(true, true, true);
    b.run_for(500);
    b.cut_link();
    b.witness = witness(true, true, false);
    b.run_for(1_100);
    let p = b.first(Action::Promote).expect("promoted");
    assert!(
        p.reason.contains("ping target 10.0.0.1 reachable"),
        "{}",
        p.reason
    );
    assert!(
        p.reason
            .contains("witness 10.0.0.3:7790 grants the primary lease"),
        "{}",
        p.reason
    );
    assert_eq!(
        b.steps,
        [
            Step::AcquireLease,
            Step::FencePeer,
            Step::PromoteStore,
            Step::OnPromote
        ]
    );
}

#[test]
fn never_promotes_a_disk_that_is_not_up_to_date() {
    for disk in [
        Some(DiskState::Outdated),
        Some(DiskState::Inconsistent),
        Some(DiskState::Diskless),
        None,
    ] {
        let mut b = Bench::secondary(cfg());
        b.disk = disk;
        let name = disk_name(disk);
        b.run_for(200);
        b.cut_link();
        b.run_for(10_000);
        assert_eq!(b.count(Action::Promote), 0, "{name} promoted");
        let why = "did not promote (peer silent for 1 s on the replication link";
        assert!(
            b.log.iter().any(|d| d.reason.starts_with(why)),
            "{:?}",
            b.log
        );
        assert_eq!(
            b.refusals_containing(&format!("local disk is {name}")),
            1,
            "recorded once: {:?}",
            b.log
        );
        // Nor through a hand-over, nor as the preferred node of a pair with no primary.
        b.link = LinkView::healthy(Role::Secondary);
        b.tick();
        let out = b.m.handle_peer_handed_over(b.now);
        assert!(
            out[0].action == Action::NoAction
                && out[0].reason.contains(&format!("local disk is {name}"))
        );
        let mut c = cfg();
        c.preferred = Preferred::ThisNode;
        let mut b = Bench::secondary(c);
        b.disk = disk;
        b.link = LinkView::healthy(Role::Secondary);
        b.run_for(5_000);
        assert_eq!(
            b.count(Action::Promote),
            0,
            "{name} promoted as the preferred node"
        );
        assert_eq!(
            b.refusals_containing(&format!("local disk is {name}")),
            1,
            "{:?}",
            b.log
        );
    }
}

#[test]
fn the_disk_becoming_up_to_date_allows_the_promotion() {
    let mut b = Bench::secondary(cfg());
    b.disk = Some(DiskState::Inconsistent);
    b.run_for(100);
    b.cut_link();
    b.run_for(2_000);
    assert_eq!(b.count(Action::Promote), 0);
    b.disk = Some(DiskState::UpToDate);
    b.tick();
    assert_eq!(b.count(Action::Promote), 1);
}

#[test]
fn link_down_but_beacon_alive_does_not_promote() {
    let mut b = Bench::secondary(cfg());
    b.beacon_at = Some(0);
    b.run_for(500);
    b.cut_link();
    for _ in 0..200 {
        b.beacon_at = Some(b.now); // the public network still carries beacons
        b.tick();
    }
    assert_eq!(b.count(Action::Promote), 0);
    assert_eq!(b.count(Action::RunHook(Hook::PeerLost)), 0);
    assert_eq!(
        b.refusals_containing("replication link down, peer alive on the public network"),
        1,
        "{:?}",
        b.log
    );
    // Then the beacon stops too: the peer is dead on every path.
    let stopped = b.beacon_at.expect("beacons came");
    b.run_for(1_500);
    let p = b
        .first(Action::Promote)
        .expect("promoted once both paths are silent");
    assert_eq!(p.at_ms - stopped, 1_000);
    assert!(
        p.reason.contains("and 1 s on the public network"),
        "{}",
        p.reason
    );
}

#[test]
fn never_promotes_while_the_peer_is_primary_on_the_link() {
    let mut c = cfg();
    c.preferred = Preferred::ThisNode;
    let mut b = Bench::secondary(c);
    b.run_for(20_000);
    assert!(b.log.is_empty(), "{:?}", b.log);
    // Flapping shorter than deadtime: still nothing.
    for _ in 0..20 {
        b.cut_link();
        b.run_for(900);
        b.link.connected = true;
        b.run_for(100);
    }
    assert_eq!(b.count(Action::Promote), 0);
    assert_eq!(b.count(Action::RunHook(Hook::PeerLost)), 0);
}

#[test]
fn witness_rules_for_a_secondary() {
    let mut c = cfg();
    c.witness = Some("w1".into());
    let cases = [
        (
            witness(true, true, true),
            "peer still reachable through the witness w1",
        ),
        (
            witness(true, false, false),
            "the witness w1 does not grant the primary lease",
        ),
        (
            witness(false, false, false),
            "the witness w1 is unreachable",
        ),
        (None, "the witness w1 is unreachable"),
    ];
    for (view, text) in cases {
        let mut b = Bench::secondary(c.clone());
        b.witness = view;
        b.run_for(100);
        b.cut_link();
        b.run_for(5_000);
        assert_eq!(b.count(Action::Promote), 0, "{view:?}");
        assert_eq!(b.refusals_containing(text), 1, "{view:?}: {:?}", b.log);
        // The witness lets go of the peer and grants the lease: promotion.
        b.witness = witness(true, true, false);
        b.tick();
        assert_eq!(b.count(Action::Promote), 1, "{view:?}");
        assert_eq!(b.steps[0], Step::AcquireLease);
    }
}

#[test]
fn an_isolated_secondary_does_not_promote() {
    let mut c = cfg();
    c.ping_target = Some("10.0.0.1".into());
    let mut b = Bench::secondary(c);
    b.ping = Some(PingView {
        reachable: true,
        since_ms: 0,
    });
    b.run_for(500);
    b.cut_link();
    b.ping = Some(PingView {
        reachable: false,
        since_ms: b.now,
    });
    b.run_for(10_000);
    assert_eq!(b.count(Action::Promote), 0);
    assert_eq!(
        b.refusals_containing("isolated: ping target 10.0.0.1 unreachable for 1 s"),
        1,
        "{:?}",
        b.log
    );
    // Not asked yet counts as unreachable too.
    b.ping = None;
    b.run_for(1_000);
    assert_eq!(b.count(Action::Promote), 0);
    b.ping = Some(PingView {
        reachable: true,
        since_ms: b.now,
    });
    b.tick();
    assert_eq!(b.count(Action::Promote), 1);
}

#[test]
fn an_isolated_primary_demotes_within_deadtime_then_waits_for_the_peer() {
    let mut c = cfg();
    c.ping_target = Some("10.0.0.1".into());
    let mut b = Bench::primary(c);
    b.ping = Some(PingView {
        reachable: true,
        since_ms: 0,
    });
    b.run_for(1_000);
    b.cut_link();
    b.ping = Some(PingView {
        reachable: false,
        since_ms: b.now,
    });
    let cut = b.now;
    b.run_for(1_000);
    let d = b.first(Action::Demote).expect("demoted");
    assert!(
        d.at_ms - cut <= 1_000,
        "demoted {} ms after the cut",
        d.at_ms - cut
    );
    assert!(d.reason.starts_with("demoting: isolated"), "{}", d.reason);
    assert!(
        d.reason
            .contains("ping target 10.0.0.1 unreachable for 0.5 s"),
        "{}",
        d.reason
    );
    assert_eq!(b.steps, [Step::OnDemote, Step::DemoteStore]);
    assert_eq!(b.role, Role::Secondary);
    assert_eq!(b.handovers, 0, "stepping down is not a hand-over");
    // The network comes back but not the peer: this node does not take the
    // role back (the peer has probably taken over).
    b.ping = Some(PingView {
        reachable: true,
        since_ms: b.now,
    });
    b.run_for(10_000);
    assert_eq!(b.count(Action::Promote), 0);
    assert_eq!(
        b.refusals_containing("stepped down because it was cut off"),
        1,
        "{:?}",
        b.log
    );
    // The peer is heard again (now Primary), then lost again: normal rules.
    b.link = LinkView::healthy(Role::Primary);
    b.run_for(500);
    b.cut_link();
    b.run_for(1_100);
    assert_eq!(b.count(Action::Promote), 1, "{:?}", b.log);
}

#[test]
fn a_primary_that_lost_peer_and_witness_demotes() {
    let mut c = cfg();
    c.witness = Some("w1".into());
    c.ping_target = Some("10.0.0.1".into());
    let mut b = Bench::primary(c);
    b.ping = Some(PingView {
        reachable: true,
        since_ms: 0,
    });
    b.witness = witness(true, true, true);
    b.run_for(1_000);
    // Peer lost but the witness still grants the lease: stays primary.
    b.cut_link();
    b.witness = witness(true, true, false);
    b.run_for(3_000);
    assert_eq!(b.count(Action::Demote), 0, "{:?}", b.log);
    assert_eq!(b.count(Action::RunHook(Hook::PeerLost)), 1);
    // The witness goes too (ping still fine: the witness decides).
    b.witness = witness(false, false, false);
    let cut = b.now;
    b.run_for(1_000);
    let d = b.first(Action::Demote).expect("demoted");
    assert!(
        d.at_ms - cut <= 1_000 && d.reason.contains("the witness w1 unreachable"),
        "{d:?}"
    );
    assert_eq!(
        b.steps,
        [Step::OnDemote, Step::DemoteStore, Step::ReleaseLease]
    );
}

#[test]
fn a_primary_whose_lease_went_elsewhere_demotes_at_once() {
    let mut c = cfg();
    c.witness = Some("w1".into());
    let mut b = Bench::primary(c);
    b.witness = witness(true, true, true);
    b.run_for(500);
    // Connected and Secondary peer: no second primary possible, stay.
    b.witness = witness(true, false, true);
    b.run_for(2_000);
    assert_eq!(b.count(Action::Demote), 0);
    assert_eq!(
        b.refusals_containing("staying primary although the witness w1"),
        1,
        "{:?}",
        b.log
    );
    // Partitioned from the peer and the lease is not ours: let go now.
    b.cut_link();
    b.tick();
    let d = b.first(Action::Demote).expect("demoted");
    assert!(
        d.reason
            .contains("no longer grants this node the primary lease"),
        "{}",
        d.reason
    );
    assert_eq!(b.role, Role::Secondary);
}

#[test]
fn a_primary_without_ping_or_witness_keeps_the_role() {
    let mut b = Bench::primary(cfg());
    b.run_for(500);
    b.cut_link();
    b.run_for(10_000);
    assert_eq!(b.count(Action::Demote), 0);
    assert_eq!(b.actions_since(0), [Action::RunHook(Hook::PeerLost)]);
    b.link.connected = true;
    b.tick();
    let back = b.log.last().expect("a decision");
    assert_eq!(back.action, Action::RunHook(Hook::PeerBack));
    assert!(
        back.reason.contains("the replication link"),
        "{}",
        back.reason
    );
}

/// The primary dies, the secondary takes over, the old primary comes back
/// and dies again several times.
fn flapping_peer(auto_failback: bool) -> Bench {
    let mut c = cfg();
    c.auto_failback = auto_failback;
    c.preferred = Preferred::PeerNode;
    let mut b = Bench::secondary(c);
    b.run_for(500);
    b.cut_link();
    b.run_for(1_500);
    assert_eq!(b.role, Role::Primary);
    for i in 0..10u64 {
        // Back as an Outdated Secondary, resyncs, becomes UpToDate, dies.
        b.link = LinkView {
            connected: true,
            peer_role: Some(Role::Secondary),
            peer_disk: Some(DiskState::Outdated),
            in_sync: false,
            heard_ago_ms: None,
        };
        b.run_for(300);
        b.link = LinkView::healthy(Role::Secondary);
        b.run_for(1_000 + 300 * (i % 4));
        b.cut_link();
        b.run_for(200 + 700 * (i % 3));
    }
    b
}

#[test]
fn a_flapping_peer_causes_one_promotion_and_no_failback_when_off() {
    let mut b = flapping_peer(false);
    b.link = LinkView::healthy(Role::Secondary);
    b.run_for(30_000);
    assert_eq!(b.count(Action::Promote), 1, "{:?}", b.log);
    assert_eq!(b.count(Action::Demote), 0, "{:?}", b.log);
    assert_eq!(b.role, Role::Primary);
}

#[test]
fn failback_waits_for_stabilize_of_continuous_health() {
    let mut b = flapping_peer(true);
    assert_eq!(
        b.count(Action::Demote),
        0,
        "failback during flapping: {:?}",
        b.log
    );
    // Back for good, but resyncing for 8 s: no failback while not in sync.
    b.link = LinkView {
        connected: true,
        peer_role: Some(Role::Secondary),
        peer_disk: Some(DiskState::Inconsistent),
        in_sync: false,
        heard_ago_ms: None,
    };
    b.run_for(8_000);
    assert_eq!(b.count(Action::Demote), 0);
    b.link = LinkView::healthy(Role::Secondary);
    let healthy_at = b.now + TICK;
    b.run_for(4_900);
    assert_eq!(b.count(Action::Demote), 0, "before stabilize");
    b.run_for(200);
    let d = b.first(Action::Demote).expect("failed back");
    assert_eq!(d.at_ms - healthy_at, 5_000);
    assert!(
        d.reason.contains("fail back to the preferred node")
            && d.reason.contains("(stabilize 5 s)"),
        "{}",
        d.reason
    );
    assert_eq!(b.handovers, 1);
    assert_eq!(b.role, Role::Secondary);
    // The peer takes over: this node stays Secondary.
    b.link = LinkView::healthy(Role::Primary);
    b.run_for(20_000);
    assert_eq!((b.count(Action::Promote), b.count(Action::Demote)), (1, 1));
}

#[test]
fn a_failed_step_is_undone_in_reverse_order_then_held_down() {
    let mut c = cfg();
    c.witness = Some("w1".into());
    c.fence = true;
    let mut b = Bench::secondary(c);
    b.witness = witness(true, true, false);
    b.run_for(100);
    b.fail.push((
        Step::OnPromote,
        "on_promote: apache2 did not start (failover.lua:42)".into(),
    ));
    b.cut_link();
    b.run_for(1_000);
    assert_eq!(
        b.steps,
        [
            Step::AcquireLease,
            Step::FencePeer,
            Step::PromoteStore,
            Step::OnPromote,
            // undo: the failed hook first, then in reverse; fencing is not undone
            Step::OnDemote,
            Step::DemoteStore,
            Step::ReleaseLease,
        ]
    );
    assert_eq!(b.role, Role::Secondary);
    let rb = b.first(Action::RollBack).expect("rolled back");
    assert!(
        rb.reason.contains("failover.lua:42")
            && rb
                .reason
                .contains("undoing OnDemote, DemoteStore, ReleaseLease"),
        "{}",
        rb.reason
    );
    let fin = b.log.last().expect("finished");
    assert_eq!(fin.action, Action::Finished);
    assert!(
        fin.reason.contains("no new promotion for 10 s (hold-down)"),
        "{}",
        fin.reason
    );
    assert_eq!(b.m.hold_down_until(), Some(fin.at_ms + 10_000));
    // Held down: no second attempt, one refusal.
    b.run_for(9_000);
    assert_eq!(b.count(Action::Promote), 1);
    assert_eq!(
        b.refusals_containing("hold-down after a failed promotion"),
        1,
        "{:?}",
        b.log
    );
    b.run_for(1_100);
    assert_eq!(b.count(Action::Promote), 2);
    assert_eq!(b.role, Role::Primary);
    assert_eq!(b.m.hold_down_until(), None);
}

#[test]
fn rollback_undoes_only_what_was_done() {
    let cases = [
        (
            Step::PromoteStore,
            vec![Step::DemoteStore, Step::ReleaseLease],
        ),
        (Step::AcquireLease, vec![]),
    ];
    for (failing, undo) in cases {
        let mut c = cfg();
        c.witness = Some("w1".into());
        let mut b = Bench::secondary(c);
        b.witness = witness(true, true, false);
        b.fail.push((failing, "refused".into()));
        b.run_for(100);
        b.cut_link();
        b.run_for(1_000);
        let at = b.steps.iter().position(|s| *s == failing).expect("ran");
        assert_eq!(b.steps[at + 1..], undo[..], "{failing:?}");
        assert_eq!(b.m.activity(), Activity::Idle);
        assert!(b.m.hold_down_until().is_some());
        assert_eq!(b.count(Action::Finished), 1);
    }
}

#[test]
fn a_failed_demotion_escalates_or_stops() {
    for escalation in [Escalation::Reboot, Escalation::Poweroff, Escalation::None] {
        let mut c = cfg();
        c.on_demote_failure = escalation;
        let mut b = Bench::primary(c);
        b.run_for(100);
        b.fail.push((
            Step::OnDemote,
            "service_stop apache2: timed out after 30 s".into(),
        ));
        let out = b.m.request_switchover(b.now);
        b.drive(out);
        assert_eq!(
            b.steps,
            [Step::OnDemote],
            "no step after a failed demotion step"
        );
        assert_eq!(b.handovers, 0, "no hand-over after a failed demotion");
        assert_eq!(b.m.activity(), Activity::Stopped);
        let last = b.log.last().expect("recorded");
        assert!(
            last.reason
                .starts_with("demotion failed at OnDemote: service_stop apache2: timed out"),
            "{}",
            last.reason
        );
        match escalation {
            Escalation::None => {
                assert_eq!(last.action, Action::NoAction);
                assert!(
                    last.reason.contains("no escalation configured"),
                    "{}",
                    last.reason
                );
            }
            e => assert_eq!(last.action, Action::Escalate(e)),
        }
        // Stopped: nothing automatic, even with a dead peer.
        b.cut_link();
        b.run_for(5_000);
        assert_eq!(b.count(Action::Demote), 1);
        assert_eq!(
            b.refusals_containing("no automatic action: demotion step OnDemote failed"),
            1,
            "{:?}",
            b.log
        );
        let out = b.m.clear_failure(b.now);
        assert_eq!(out[0].action, Action::Finished);
        assert_eq!(b.m.activity(), Activity::Idle);
    }
}

#[test]
fn a_lease_that_cannot_be_released_is_not_escalated() {
    let mut c = cfg();
    c.witness = Some("w1".into());
    c.on_demote_failure = Escalation::Reboot;
    let mut b = Bench::primary(c);
    b.witness = witness(true, true, true);
    b.run_for(100);
    b.fail
        .push((Step::ReleaseLease, "witness w1: connection refused".into()));
    let out = b.m.request_switchover(b.now);
    b.drive(out);
    assert_eq!(b.count(Action::Escalate(Escalation::Reboot)), 0);
    assert_eq!(
        b.refusals_containing(
            "could not release the witness lease (witness w1: connection refused)"
        ),
        1
    );
    assert_eq!(b.handovers, 1);
}

#[test]
fn switchover_demotes_fully_before_handing_over() {
    let mut c = cfg();
    c.witness = Some("w1".into());
    let mut b = Bench::primary(c);
    b.witness = witness(true, true, true);
    b.run_for(200);
    let out = b.m.request_switchover(b.now);
    b.drive(out);
    assert_eq!(
        b.actions_since(0),
        [
            Action::Demote,
            Action::Step(Step::OnDemote),
            Action::Step(Step::DemoteStore),
            Action::Step(Step::ReleaseLease),
            Action::Finished,
            Action::HandOver,
        ]
    );
    assert_eq!(b.role, Role::Secondary);
    assert!(
        b.m.why(b.now).starts_with("handing over"),
        "{}",
        b.m.why(b.now)
    );
}

#[test]
fn switchover_is_refused_when_the_peer_cannot_take_over() {
    let cases = [
        (
            LinkView {
                in_sync: false,
                ..LinkView::healthy(Role::Secondary)
            },
            "a resync is running",
        ),
        (
            LinkView {
                peer_disk: Some(DiskState::Outdated),
                ..LinkView::healthy(Role::Secondary)
            },
            "the peer's disk is Outdated",
        ),
        (LinkView::down(), "the replication link is down"),
    ];
    for (link, text) in cases {
        let mut b = Bench::primary(cfg());
        b.link = link;
        b.tick();
        let out = b.m.request_switchover(b.now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].action, Action::NoAction);
        assert_eq!(out[0].reason, format!("switchover refused: {text}"));
        assert_eq!(b.m.activity(), Activity::Idle);
    }
    let mut b = Bench::secondary(cfg());
    b.tick();
    let out = b.m.request_switchover(b.now);
    assert!(
        out[0].reason.contains("this node is not Primary"),
        "{}",
        out[0].reason
    );
}

#[test]
fn a_handed_over_secondary_promotes_at_once_without_fencing() {
    let mut c = cfg();
    c.fence = true;
    let mut b = Bench::secondary(c);
    b.run_for(200);
    b.link = LinkView::healthy(Role::Secondary); // the peer has demoted
    b.tick();
    let out = b.m.handle_peer_handed_over(b.now);
    b.drive(out);
    assert_eq!(
        b.steps,
        [Step::PromoteStore, Step::OnPromote],
        "no FencePeer on a hand-over"
    );
    assert_eq!(b.role, Role::Primary);
    assert!(b
        .first(Action::Promote)
        .expect("promoted")
        .reason
        .contains("handed over"));
    // Not in sync at hand-over: refused.
    let mut b = Bench::secondary(cfg());
    b.link = LinkView {
        in_sync: false,
        ..LinkView::healthy(Role::Secondary)
    };
    b.tick();
    let out = b.m.handle_peer_handed_over(b.now);
    assert_eq!(
        out[0].reason,
        "did not take over from the peer: a resync is running"
    );
    assert_eq!(b.m.activity(), Activity::Idle);
}

#[test]
fn a_connected_pair_with_no_primary_elects_the_preferred_node() {
    let mut c = cfg();
    c.preferred = Preferred::ThisNode;
    let mut b = Bench::secondary(c.clone());
    b.link = LinkView::healthy(Role::Secondary);
    b.run_for(900);
    assert_eq!(b.count(Action::Promote), 0, "waits deadtime first");
    b.run_for(200);
    let p = b.first(Action::Promote).expect("promoted");
    assert!(
        p.reason.contains("this node is the preferred node"),
        "{}",
        p.reason
    );
    assert_eq!(b.steps, [Step::PromoteStore, Step::OnPromote]);
    for (preferred, text) in [
        (Preferred::PeerNode, "the preferred node is the peer"),
        (Preferred::Neither, "run twinfs promote"),
    ] {
        c.preferred = preferred;
        let mut b = Bench::secondary(c.clone());
        b.link = LinkView::healthy(Role::Secondary);
        b.run_for(5_000);
        assert_eq!(b.count(Action::Promote), 0);
        assert_eq!(b.refusals_containing(text), 1, "{:?}", b.log);
    }
}

#[test]
fn maintenance_mode_records_but_does_not_act() {
    let mut b = Bench::secondary(cfg());
    let out = b.m.set_maintenance(0, true);
    assert!(out[0].reason.starts_with("maintenance mode on"));
    assert!(b.m.maintenance());
    b.run_for(200);
    b.cut_link();
    b.run_for(5_000);
    assert_eq!(b.count(Action::Promote), 0);
    assert_eq!(
        b.refusals_containing("maintenance mode is on, automatic actions are off"),
        1,
        "{:?}",
        b.log
    );
    assert_eq!(
        b.count(Action::RunHook(Hook::PeerLost)),
        1,
        "hooks still run"
    );
    assert!(
        b.m.set_maintenance(b.now, true).is_empty(),
        "no change, no record"
    );
    let out = b.m.set_maintenance(b.now, false);
    b.drive(out);
    b.tick();
    assert_eq!(b.count(Action::Promote), 1);
    // A primary in maintenance does not demote when isolated either.
    let mut c = cfg();
    c.ping_target = Some("gw".into());
    let mut b = Bench::primary(c);
    let _ = b.m.set_maintenance(0, true);
    b.cut_link();
    b.ping = Some(PingView {
        reachable: false,
        since_ms: 0,
    });
    b.run_for(5_000);
    assert_eq!(b.count(Action::Demote), 0);
    assert_eq!(
        b.refusals_containing(
            "did not demote (maintenance mode is on): would be demoting: isolated"
        ),
        1
    );
}

#[test]
fn a_node_that_never_heard_its_peer_waits_initdead() {
    let mut b = Bench::secondary(cfg());
    b.link = LinkView::down();
    b.run_for(1_900);
    assert_eq!(
        b.count(Action::Promote),
        0,
        "deadtime is not enough at start"
    );
    b.run_for(200);
    let p = b.first(Action::Promote).expect("promoted after initdead");
    assert_eq!(p.at_ms, 2_000);
    assert!(p.reason.contains("(initdead 2 s)"), "{}", p.reason);
}

#[test]
fn split_brain_runs_the_hook_once_per_episode() {
    let mut b = Bench::primary(cfg());
    b.link = LinkView::healthy(Role::Primary);
    b.run_for(2_000);
    assert_eq!(b.count(Action::RunHook(Hook::SplitBrain)), 1);
    assert_eq!(
        b.count(Action::Demote),
        0,
        "the hook picks the survivor, not the machine"
    );
    b.link = LinkView::healthy(Role::Secondary);
    b.tick();
    b.link = LinkView::healthy(Role::Primary);
    b.tick();
    assert_eq!(b.count(Action::RunHook(Hook::SplitBrain)), 2);
}

#[test]
fn history_is_bounded_and_why_summarises_the_latest() {
    let mut c = cfg();
    c.history_len = 5;
    let mut m = Machine::new(c, 0).expect("valid");
    assert_eq!(m.why(0), "no decision yet");
    for i in 0..20u64 {
        let _ = m.set_maintenance(i * 1_000, i % 2 == 0);
    }
    assert_eq!(m.history().len(), 5);
    let last = m.history().next_back().expect("a decision");
    assert_eq!(last.at_ms, 19_000);
    assert_eq!(m.history().next().expect("oldest").at_ms, 15_000);
    assert_eq!(
        m.why(20_500),
        "maintenance mode off: automatic failover resumes (1.5 s ago)"
    );
}

#[test]
fn a_step_report_must_match_the_running_step() {
    let mut b = Bench::primary(cfg());
    b.tick();
    assert_eq!(
        b.m.handle_step_finished(b.now, Step::OnDemote, Ok(())),
        Err(StepError::NoneRunning {
            got: Step::OnDemote
        })
    );
    let _ = b.m.request_switchover(b.now);
    assert_eq!(b.m.current_step(), Some(Step::OnDemote));
    let err =
        b.m.handle_step_finished(b.now, Step::DemoteStore, Ok(()))
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "step DemoteStore finished but the running step is OnDemote"
    );
    assert!(
        b.m.why(b.now)
            .starts_with("running step OnDemote; demoting for a switchover"),
        "{}",
        b.m.why(b.now)
    );
}

#[test]
fn config_is_validated() {
    let bad = |f: fn(&mut MachineConfig)| {
        let mut c = cfg();
        f(&mut c);
        Machine::new(c, 0).unwrap_err().to_string()
    };
    assert_eq!(
        bad(|c| c.deadtime_ms = 0),
        "deadtime_ms must be more than 0"
    );
    assert_eq!(
        bad(|c| c.initdead_ms = 500),
        "initdead_ms (500) must not be less than deadtime_ms (1000)"
    );
    assert!(
        bad(|c| c.auto_failback = true).starts_with("auto_failback is on but preferred is Neither")
    );
    assert_eq!(bad(|c| c.history_len = 0), "history_len must be at least 1");
    assert!(Machine::new(MachineConfig::default(), 0).is_ok());
}

#[test]
fn decisions_serialize_as_plain_json() {
    let d = Decision {
        at_ms: 1_020,
        action: Action::Step(Step::PromoteStore),
        reason: "promotion step 1 of 2: PromoteStore".into(),
    };
    let json = serde_json::to_string(&d).expect("serializes");
    assert_eq!(
        json,
        r#"{"at_ms":1020,"action":{"Step":"PromoteStore"},"reason":"promotion step 1 of 2: PromoteStore"}"#
    );
    let back: Decision = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, d);
    assert_eq!(
        serde_json::to_string(&Action::NoAction).expect("serializes"),
        r#""NoAction""#
    );
    assert_eq!(
        serde_json::to_string(&Action::Escalate(Escalation::Reboot)).expect("serializes"),
        r#"{"Escalate":"Reboot"}"#
    );
}

#[test]
fn durations_read_like_an_admin_writes_them() {
    assert_eq!(secs(50), "50 ms");
    assert_eq!(secs(500), "0.5 s");
    assert_eq!(secs(1_000), "1 s");
    assert_eq!(secs(1_020), "1.02 s");
    assert_eq!(secs(12_340), "12.34 s");
}

#[test]
fn only_driver_actions_need_the_driver() {
    assert!(Action::Step(Step::OnPromote).for_driver());
    assert!(Action::HandOver.for_driver());
    assert!(Action::RunHook(Hook::PeerLost).for_driver());
    assert!(Action::Escalate(Escalation::Reboot).for_driver());
    for a in [
        Action::Promote,
        Action::Demote,
        Action::RollBack,
        Action::Finished,
        Action::NoAction,
    ] {
        assert!(!a.for_driver(), "{a:?}");
    }
}
