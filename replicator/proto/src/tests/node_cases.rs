//! The node core's promises, checked on the two-node simulation
//! ([`super::node_sim::Sim`]) in milliseconds of real time.

use super::node_sim::Sim;
use crate::node::verify::Difference;
use crate::node::StandbyView;
use crate::ConnectionState as Connection;
use crate::{DiskState, Role, SplitBrainPolicy};
use std::collections::BTreeSet;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:04}")
}

/// Two connected nodes, alpha primary, `n` records written and replicated.
fn pair_with_data(seed: u64, policy: SplitBrainPolicy, n: usize) -> Sim {
    fill(Sim::new(seed, policy), n)
}

/// Connects `sim`'s nodes, promotes alpha and writes `n` records.
fn fill(mut sim: Sim, n: usize) -> Sim {
    sim.run_for(SEC);
    assert!(sim.connected(), "the nodes connect");
    sim.promote(0).expect("alpha promotes");
    sim.run_for(SEC);
    assert!(sim.connected(), "they reconnect after the role change");
    for i in 0..n {
        assert!(sim.write(0, &key("k", i), "v1"));
        if i % 10 == 0 {
            sim.fsync(0);
            sim.run_for(Duration::from_millis(5));
        }
    }
    sim.fsync(0);
    sim.run_for(SEC);
    assert_eq!(sim.records(0), sim.records(1), "replicated");
    assert_eq!(sim.nodes[0].acked.len(), n, "every write acknowledged");
    sim
}

#[test]
fn promotion_is_refused_while_the_peer_is_primary_or_the_disk_is_not_up_to_date() {
    let mut sim = pair_with_data(1, SplitBrainPolicy::Manual, 20);
    let e = sim.promote(1).unwrap_err();
    assert!(e.contains("the peer alpha is primary and connected"), "{e}");
    assert_eq!(sim.promote(0).unwrap_err(), "this node is already primary");
    assert_eq!(sim.demote(1).unwrap_err(), "this node is not primary");

    // beta misses writes while cut off, then comes back Outdated until it has
    // caught up; a crash in between leaves it Outdated on disk.
    sim.partitioned = true;
    sim.run_for(SEC);
    for i in 0..5 {
        assert!(sim.write(0, &key("n", i), "v2"), "alpha continues alone");
    }
    sim.crash(1);
    sim.nodes[1].host.saved.disk = DiskState::Outdated;
    sim.restart(1);
    let e = sim.promote(1).unwrap_err();
    assert!(e.contains("the local disk is Outdated"), "{e}");
    sim.partitioned = false;
    sim.run_for(2 * SEC);
    assert_eq!(sim.records(0), sim.records(1));
    assert_eq!(sim.nodes[1].core().state().disk, DiskState::UpToDate);
    // Caught up: it may be promoted once alpha steps down.
    sim.demote(0).unwrap();
    sim.run_for(SEC);
    sim.promote(1).unwrap();
    sim.run_for(SEC);
    assert!(sim.connected());
    assert_eq!(sim.nodes[1].core().role(), Role::Primary);
    assert_eq!(sim.nodes[0].core().role(), Role::Secondary);
}

/// Alpha writes `n` records alone while beta is cut off; returns their keys.
fn outage_writes(sim: &mut Sim, n: usize) -> BTreeSet<Vec<u8>> {
    sim.partitioned = true;
    sim.run_for(SEC);
    let changed = (0..n)
        .map(|i| {
            assert!(sim.write(0, &key("n", i), "v2"), "alpha continues alone");
            key("n", i).into_bytes()
        })
        .collect();
    sim.fsync(0);
    sim.run_for(SEC);
    changed
}

/// After the outage: beta was resynced with exactly `changed`, and the pair
/// is whole again.
fn assert_resynced_exactly(sim: &Sim, changed: &BTreeSet<Vec<u8>>) {
    assert!(sim.connected());
    let resyncs = &sim.nodes[0].shipped;
    assert_eq!(resyncs.len(), 1, "one resync: {:?}", sim.nodes[0].notes);
    let (shipped, full) = &resyncs[0];
    assert!(!full, "not a full resync");
    assert_eq!(
        shipped, changed,
        "exactly the records changed during the outage"
    );
    assert_eq!(sim.records(0), sim.records(1));
    assert_eq!(sim.nodes[1].core().state().disk, DiskState::UpToDate);
    assert_eq!(sim.nodes[0].core().connection(), Connection::Connected);
    let (a, b) = (sim.nodes[0].core().state(), sim.nodes[1].core().state());
    assert_eq!(
        (a.generation, a.shared),
        (b.generation, b.shared),
        "one generation again"
    );
}

#[test]
fn after_an_outage_the_peer_gets_only_what_changed() {
    let mut sim = pair_with_data(2, SplitBrainPolicy::Manual, 300);
    let changed = outage_writes(&mut sim, 10);
    let floor = sim.nodes[0].core().state().floor;
    assert!(floor >= 300, "the floor followed the replication: {floor}");
    sim.partitioned = false;
    sim.run_for(2 * SEC);
    assert_resynced_exactly(&sim, &changed);
}

#[test]
fn a_primary_restarted_during_the_outage_still_ships_only_what_changed() {
    let mut sim = pair_with_data(3, SplitBrainPolicy::Manual, 300);
    let changed = outage_writes(&mut sim, 10);
    sim.crash(0);
    sim.restart(0);
    assert_eq!(
        sim.nodes[0].core().role(),
        Role::Secondary,
        "it starts as secondary"
    );
    sim.promote(0).unwrap();
    sim.partitioned = false;
    sim.run_for(2 * SEC);
    assert_resynced_exactly(&sim, &changed);
}

#[test]
fn a_crashed_secondary_is_resynced_from_its_floor_not_in_full() {
    let mut sim = pair_with_data(4, SplitBrainPolicy::Manual, 400);
    let floor = sim.nodes[1].host.saved.floor;
    sim.crash(1);
    for i in 0..20 {
        assert!(sim.write(0, &key("n", i), "v3"));
    }
    sim.fsync(0);
    // The primary forgets what it retained (as after its own restart).
    sim.run_for(SEC);
    sim.crash(0);
    sim.restart(0);
    sim.promote(0).unwrap();
    sim.restart(1);
    sim.run_for(3 * SEC);
    assert!(sim.connected());
    assert_eq!(sim.records(0), sim.records(1));
    for (shipped, full) in &sim.nodes[0].shipped {
        assert!(!full);
        assert!(
            shipped.len() <= 20 + (400 - floor as usize),
            "bounded by the floor ({floor}): {} records",
            shipped.len()
        );
    }
    for (_, k, v) in &sim.nodes[0].acked {
        assert_eq!(sim.records(1).get(k), Some(v), "no acknowledged write lost");
    }
}

/// Both nodes write on their own: alpha continues alone, beta is promoted.
fn split(seed: u64, policy: SplitBrainPolicy, alpha_writes: usize, beta_writes: usize) -> Sim {
    let mut sim = pair_with_data(seed, policy, 30);
    sim.partitioned = true;
    sim.run_for(SEC);
    sim.promote(1).expect("beta promotes alone");
    for i in 0..alpha_writes {
        assert!(sim.write(0, &key("a", i), "alpha"));
    }
    for i in 0..beta_writes {
        assert!(sim.write(1, &key("b", i), "beta"));
    }
    sim.run_for(SEC);
    sim.partitioned = false;
    sim.run_for(3 * SEC);
    sim
}

fn has(sim: &Sim, node: usize, prefix: &str, n: usize) -> bool {
    (0..n).all(|i| sim.records(node).contains_key(key(prefix, i).as_bytes()))
}

#[test]
fn manual_split_brain_refuses_and_reports_both_sides() {
    let sim = split(5, SplitBrainPolicy::Manual, 5, 3);
    for n in &sim.nodes {
        let c = n.core();
        assert_eq!(c.connection(), Connection::StandAlone);
        assert!(
            c.refusal()
                .is_some_and(|r| r.contains("both nodes are primary")),
            "{:?}",
            c.refusal()
        );
        assert!(n.reports_sent >= 1 && n.reports_received >= 1);
    }
    // Nothing merged, nothing lost.
    assert!(has(&sim, 0, "a", 5) && !has(&sim, 0, "b", 1));
    assert!(has(&sim, 1, "b", 3) && !has(&sim, 1, "a", 1));
}

#[test]
fn discard_younger_primary_overwrites_the_later_promotion() {
    let sim = split(6, SplitBrainPolicy::DiscardYoungerPrimary, 5, 3);
    assert!(sim.connected());
    assert_eq!(sim.nodes[0].core().role(), Role::Primary);
    assert_eq!(
        sim.nodes[1].core().role(),
        Role::Secondary,
        "beta was promoted later"
    );
    assert_eq!(sim.records(0), sim.records(1));
    assert!(has(&sim, 1, "a", 5) && !has(&sim, 1, "b", 1));
}

#[test]
fn discard_least_changes_overwrites_the_side_that_changed_less() {
    let sim = split(7, SplitBrainPolicy::DiscardLeastChanges, 2, 9);
    assert!(sim.connected());
    assert_eq!(sim.nodes[1].core().role(), Role::Primary);
    assert_eq!(
        sim.nodes[0].core().role(),
        Role::Secondary,
        "alpha changed less"
    );
    assert_eq!(sim.records(0), sim.records(1));
    assert!(has(&sim, 0, "b", 9) && !has(&sim, 0, "a", 1));
}

#[test]
fn discard_zero_changes_takes_the_data_of_the_side_that_wrote() {
    let sim = split(8, SplitBrainPolicy::DiscardZeroChanges, 4, 0);
    assert!(sim.connected());
    assert_eq!(sim.records(0), sim.records(1));
    assert!(has(&sim, 1, "a", 4));
    // Both wrote: the policy cannot pick, the admin decides.
    let sim = split(9, SplitBrainPolicy::DiscardZeroChanges, 4, 2);
    assert_eq!(sim.nodes[0].core().connection(), Connection::StandAlone);
}

#[test]
fn discard_my_data_ends_a_manual_split_brain() {
    let mut sim = split(10, SplitBrainPolicy::Manual, 3, 2);
    sim.demote(1).unwrap();
    let n = &mut sim.nodes[1];
    n.core
        .as_mut()
        .unwrap()
        .discard_my_data(&mut n.host)
        .unwrap();
    sim.run_for(8 * SEC);
    assert!(sim.connected());
    assert_eq!(sim.records(0), sim.records(1));
    assert!(has(&sim, 1, "a", 3) && !has(&sim, 1, "b", 1));
}

#[test]
fn online_verify_finds_and_repairs_corrupted_records() {
    let mut sim = pair_with_data(11, SplitBrainPolicy::Manual, 700);
    // Behind the replication's back: one value rots, one record vanishes,
    // one appears, on beta.
    let store = &mut sim.nodes[1].host.store.records;
    store.insert(key("k", 300).into_bytes(), b"rotten".to_vec());
    store.remove(key("k", 100).as_bytes());
    store.insert(b"stray".to_vec(), b"?".to_vec());
    let e = sim.verify(1, false).unwrap_err();
    assert!(e.contains("run it on the primary"), "{e}");
    sim.verify(0, false).unwrap();
    sim.run_for(SEC);
    let found = sim.nodes[0].verified.clone().expect("answered");
    let found: Vec<(String, Difference)> = found
        .into_iter()
        .map(|(k, how)| (String::from_utf8(k).unwrap(), how))
        .collect();
    assert_eq!(
        found,
        [
            (key("k", 100), Difference::MissingOnPeer),
            (key("k", 300), Difference::Differs),
            ("stray".to_string(), Difference::OnlyOnPeer),
        ]
    );
    assert_ne!(
        sim.records(0),
        sim.records(1),
        "a verify without --repair changes nothing"
    );
    sim.verify(0, true).unwrap();
    sim.run_for(SEC);
    assert_eq!(sim.nodes[0].verified.as_ref().map(Vec::len), Some(3));
    assert_eq!(sim.records(0), sim.records(1), "repaired");
    sim.verify(0, false).unwrap();
    sim.run_for(SEC);
    assert_eq!(sim.nodes[0].verified, Some(Vec::new()));
    assert!(sim.connected(), "the pair stayed connected throughout");
}

#[test]
fn repairs_without_a_verify_are_refused() {
    let mut sim = pair_with_data(12, SplitBrainPolicy::Manual, 5);
    sim.inject(
        0,
        crate::Frame::Repair {
            payload: Vec::new(),
        },
    );
    sim.run_for(SEC);
    let refused = sim.nodes[1]
        .notes
        .iter()
        .any(|n| n.contains("repair data without a running online verify"));
    assert!(refused, "{:?}", sim.nodes[1].notes);
    assert!(sim.records(0) == sim.records(1));
}

/// Random runs: promotions, demotions, writes, partitions, dying
/// connections and crashes; the simulation checks at every step that two
/// connected nodes are never both primary.
#[test]
fn never_two_primaries_while_connected() {
    let budget = crate::fuzzing::Budget::from_env(200, Duration::from_secs(20));
    let (mut both_primary, mut resyncs, mut refusals, mut connected_steps) = (0, 0, 0, 0);
    budget.run(
        "node-sim",
        "cargo test -p twinfs-replicator-proto never_two_primaries",
        |rng| {
            let policy = [
                SplitBrainPolicy::Manual,
                SplitBrainPolicy::DiscardZeroChanges,
                SplitBrainPolicy::DiscardYoungerPrimary,
                SplitBrainPolicy::DiscardLeastChanges,
            ][rng.below(4)];
            let standby = (rng.below(2) == 0).then_some(2 * SEC);
            let mut sim = Sim::with_standby(rng.next_u64(), policy, standby);
            sim.kill_per_million = rng.below(500) as u32;
            sim.latency = Duration::from_micros(100 + rng.below(3_000) as u64);
            for step in 0..200 {
                let i = rng.below(2);
                match rng.below(20) {
                    0 | 1 => {
                        if sim.nodes[i].core.is_some() {
                            let _ = sim.promote(i);
                        }
                    }
                    2 => {
                        if sim.nodes[i].core.is_some() {
                            let _ = sim.demote(i);
                        }
                    }
                    3 => sim.partitioned = !sim.partitioned,
                    4 if rng.below(4) == 0 => {
                        if sim.nodes[i].core.is_some() {
                            sim.crash(i);
                        } else {
                            sim.restart(i);
                        }
                    }
                    _ => {
                        sim.write(i, &key("r", step), "x");
                    }
                }
                sim.run_for(Duration::from_millis(rng.below(300) as u64));
                let roles: Vec<_> = sim
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref())
                    .map(|c| c.role())
                    .collect();
                both_primary += usize::from(roles == [Role::Primary, Role::Primary]);
                connected_steps += usize::from(sim.connected());
            }
            resyncs += sim.nodes.iter().map(|n| n.shipped.len()).sum::<usize>();
            refusals += sim
                .nodes
                .iter()
                .map(|n| n.reports_sent as usize)
                .sum::<usize>();
            Ok(())
        },
    );
    eprintln!(
        "node-sim: {connected_steps} steps connected, {both_primary} with two primaries apart, \
         {resyncs} resyncs, {refusals} split-brain reports"
    );
    // The runs reach the states the check is about.
    assert!(both_primary > 0 && resyncs > 0 && connected_steps > 0);
}

/// Issue 15: a secondary with `[standby] serve` shows its replica once in
/// sync, keeps showing it (older and older) through an outage, hides it
/// while a resync makes it Inconsistent (the simulation checks at every step
/// that no resync value is applied while the view serves), shows it again
/// after, and promotion and demotion keep the mount in place.
#[test]
fn a_standby_view_serves_hides_during_a_resync_and_tells_its_lag() {
    let mut sim = Sim::with_standby(21, SplitBrainPolicy::Manual, Some(2 * SEC));
    sim.run_for(SEC);
    assert_eq!(
        sim.nodes[1].view,
        StandbyView::Off,
        "no view before the node follows a primary"
    );
    let health = sim.nodes[1].core().standby_health(sim.now);
    assert!(health.is_err(), "{health:?}");
    let mut sim = fill(sim, 200);
    let beta = |sim: &Sim| sim.nodes[1].core().standby_lag(sim.now);
    assert_eq!(sim.nodes[1].view, StandbyView::Serving);
    let lag = beta(&sim);
    assert!(
        lag.exact && lag.mutations == 0 && lag.age == Some(Duration::ZERO),
        "{lag:?}"
    );
    assert!(sim.nodes[1].core().standby_health(sim.now).is_ok());
    assert_eq!(
        sim.nodes[0].core().standby_health(sim.now),
        Ok("primary".into())
    );

    // The link goes: the view stays, older every second, and fails the
    // health check past max_lag.
    sim.partitioned = true;
    sim.run_for(SEC);
    assert_eq!(sim.nodes[1].view, StandbyView::Serving);
    let lag = beta(&sim);
    assert!(!lag.exact, "{lag:?}");
    assert!(lag.age.is_some_and(|a| a >= SEC / 2), "{lag:?}");
    let changed = outage_writes(&mut sim, 10);
    sim.run_for(SEC);
    let health = sim.nodes[1].core().standby_health(sim.now);
    assert!(
        health.as_ref().is_err_and(|e| e.contains("too far behind")),
        "{health:?}"
    );

    // Back: resynced (hidden meanwhile: checked at every step), serving again.
    sim.partitioned = false;
    sim.run_for(2 * SEC);
    assert_resynced_exactly(&sim, &changed);
    assert_eq!(sim.nodes[1].view, StandbyView::Serving);
    assert!(
        sim.nodes[1]
            .notes
            .iter()
            .any(|n| n.contains("Inconsistent")),
        "a resync ran"
    );
    assert!(sim.nodes[1].core().standby_health(sim.now).is_ok());

    // A switchover: alpha's mount turns read-only in place, beta's read-write.
    sim.demote(0).expect("alpha demotes");
    sim.run_for(SEC);
    assert_eq!(
        sim.nodes[0].view,
        StandbyView::Serving,
        "alpha kept its mount"
    );
    assert!(sim.nodes[0].mounted || sim.nodes[0].view == StandbyView::Serving);
    sim.promote(1).expect("beta promotes");
    sim.run_for(SEC);
    assert!(sim.write(1, "after", "switchover"));
    sim.fsync(1);
    sim.run_for(SEC);
    assert_eq!(sim.records(0), sim.records(1));
    assert!(sim.nodes[0].core().standby_health(sim.now).is_ok());
    assert_eq!(sim.nodes[1].core().role(), Role::Primary);
}
