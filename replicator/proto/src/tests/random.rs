//! Randomised runs on a bad network; `Pair` checks the promises on every event.

use super::util::{config, Pair};
use crate::{Protocol, Seq};
use std::time::Duration;

fn run(seed: u64, protocol: Protocol, submissions: u32) {
    let mut pair = Pair::new(config(protocol), seed);
    let mut rng = super::util::Rng::new(seed ^ 0x5eed);
    pair.latency = Duration::from_micros(200 + rng.below(5_000));
    pair.jitter = Duration::from_millis(1 + rng.below(20));
    pair.loss = rng.below(20) as f64 / 100.0;
    pair.dup = rng.below(20) as f64 / 100.0;
    pair.reorder = rng.below(50) as f64 / 100.0;
    pair.apply_delay = Duration::from_micros(rng.below(2_000));
    pair.flush_delay = Duration::from_micros(rng.below(5_000));
    let mut submitted = 0;
    while submitted < submissions {
        for _ in 0..rng.below(4) {
            submitted += 1;
            pair.submit(&submitted.to_be_bytes(), rng.below(10) == 0);
        }
        pair.drive_for(Duration::from_micros(rng.below(3_000)));
        // Now and then a partition (some outlast the deadtime) or a replica crash.
        match rng.below(300) {
            0 => {
                pair.partition = true;
                pair.drive_for(Duration::from_millis(rng.below(2_000)));
                pair.partition = false;
            }
            1 => pair.restart_replica(),
            _ => {}
        }
    }
    let last = Seq(submitted.into());
    assert!(
        pair.drive_until_committed(last, Duration::from_secs(60)),
        "seed {seed}: committed only {} of {last}",
        pair.primary.committed()
    );
    // Under C with partitions commits may have been local: let the replica catch up.
    // Every mutation reached the replica exactly once, in order, intact
    // (Pair asserts "in order, once" as it applies).
    pair.drive_for(Duration::from_secs(2));
    assert_eq!(pair.replica_applied(), last, "seed {seed}");
    for (i, (seq, payload)) in pair.replica_log.iter().enumerate() {
        assert_eq!(seq.0, i as u64 + 1);
        assert_eq!(payload, &(i as u32 + 1).to_be_bytes(), "seed {seed}");
    }
}

#[test]
fn random_networks_protocol_c() {
    for seed in 0..200 {
        run(seed, Protocol::C, 500);
    }
}

#[test]
fn random_networks_protocols_a_and_b() {
    for seed in 0..50 {
        run(seed, Protocol::A, 200);
        run(seed, Protocol::B, 200);
    }
}
