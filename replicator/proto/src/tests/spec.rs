//! Spec-style tests: one promise of the protocol each.

use super::util::{config, secondary_hello, Pair};
use crate::{Event, Frame, Primary, Protocol, Seq};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[test]
fn write_is_not_committed_under_c_until_the_replica_has_applied_and_acked() {
    let mut pair = Pair::new(config(Protocol::C), 1);
    pair.latency = 5 * MS;
    pair.apply_delay = 20 * MS;
    let seq = pair.submit(b"w", false);
    pair.drive_for(24 * MS); // received at 5 ms, applying until 25 ms
    assert_eq!(pair.primary.committed(), Seq(0));
    pair.drive_for(2 * MS); // applied at 25 ms, the ack is on the wire
    assert_eq!(pair.replica_applied(), seq);
    assert_eq!(pair.primary.committed(), Seq(0));
    pair.drive_for(5 * MS);
    assert_eq!(pair.primary.committed(), seq);
}

#[test]
fn b_commits_on_receipt() {
    let mut pair = Pair::new(config(Protocol::B), 1);
    pair.latency = 5 * MS;
    pair.apply_delay = Duration::from_millis(500);
    let seq = pair.submit(b"w", false);
    pair.drive_for(9 * MS);
    assert_eq!(
        pair.primary.committed(),
        Seq(0),
        "not before the receipt ack"
    );
    pair.drive_for(2 * MS);
    assert_eq!(pair.primary.committed(), seq);
    assert_eq!(
        pair.replica_applied(),
        Seq(0),
        "committed before the replica applied"
    );
}

#[test]
fn a_commits_locally() {
    let mut pair = Pair::new(config(Protocol::A), 1);
    pair.partition = true;
    let seq = pair.primary.submit(pair.now, b"w".to_vec(), false);
    assert_eq!(
        pair.primary.poll_event(),
        None,
        "not before the local apply"
    );
    pair.primary.local_applied(seq).unwrap();
    assert_eq!(pair.primary.poll_event(), Some(Event::Committed(seq)));
    // The peer follows once it can.
    pair.partition = false;
    pair.drive_for(Duration::from_millis(300));
    assert_eq!(pair.replica_applied(), seq);
}

#[test]
fn flush_is_not_acknowledged_until_both_flushed() {
    let mut pair = Pair::new(config(Protocol::C), 1);
    pair.flush_delay = 30 * MS;
    let now = pair.now;
    let seq = pair.primary.submit(now, b"fsync".to_vec(), true);
    pair.primary.local_applied(seq).unwrap();
    pair.drive_for(10 * MS);
    assert_eq!(pair.primary.committed(), seq, "applied on both: committed");
    assert_eq!(pair.count(|e| matches!(e, Event::Flushed(_))), 0);
    // Local flush alone is not enough while the replica is still syncing.
    pair.primary.local_flushed(seq).unwrap();
    pair.drive_for(10 * MS);
    assert_eq!(pair.count(|e| matches!(e, Event::Flushed(_))), 0);
    pair.drive_for(30 * MS);
    assert_eq!(pair.replica.last_flushed(), seq);
    assert!(pair
        .primary_events
        .iter()
        .any(|(_, e)| *e == Event::Flushed(seq)));
}

#[test]
fn flush_waits_for_the_local_sync_too() {
    let mut pair = Pair::new(config(Protocol::C), 1);
    let seq = pair.primary.submit(pair.now, b"fsync".to_vec(), true);
    pair.primary.local_applied(seq).unwrap();
    pair.drive_for(20 * MS);
    assert_eq!(pair.replica.last_flushed(), seq);
    assert_eq!(pair.count(|e| matches!(e, Event::Flushed(_))), 0);
    pair.primary.local_flushed(seq).unwrap();
    assert_eq!(pair.primary.poll_event(), Some(Event::Flushed(seq)));
}

#[test]
fn an_fsync_after_the_writes_went_out_is_a_flush_barrier_frame() {
    let mut pair = Pair::new(config(Protocol::C), 3);
    pair.flush_delay = 5 * MS;
    let a = pair.submit(b"one", false);
    let b = pair.submit(b"two", false);
    pair.drive_for(10 * MS);
    assert_eq!(pair.primary.committed(), b);
    assert_eq!(
        pair.replica.last_flushed(),
        Seq(0),
        "no barrier yet: no sync"
    );
    // The fsync: a barrier at the last submitted seq, local sync reported.
    let barrier = pair.primary.request_flush(pair.now);
    assert_eq!(barrier, b);
    pair.primary.local_flushed(b).unwrap();
    pair.drive_for(3 * MS);
    assert!(pair.primary.flushed() < barrier, "replica still syncing");
    pair.drive_for(10 * MS);
    assert_eq!(pair.replica.last_flushed(), b);
    assert_eq!(pair.primary.flushed(), b);
    assert!(a < b);
}

#[test]
fn a_barrier_survives_loss_and_reconnect() {
    let mut pair = Pair::new(config(Protocol::C), 11);
    pair.loss = 0.3;
    for i in 0..20u8 {
        pair.submit(&[i], false);
    }
    let barrier = pair.primary.request_flush(pair.now);
    pair.primary.local_flushed(barrier).unwrap();
    pair.drive_for(200 * MS);
    pair.reconnect();
    pair.loss = 0.0;
    pair.drive_for(5 * SEC);
    assert_eq!(pair.primary.flushed(), barrier);
    assert_eq!(pair.replica.last_flushed(), barrier);
}

#[test]
fn a_resumed_primary_continues_the_store_numbering() {
    let mut primary = Primary::resume(config(Protocol::C), Seq(41), pair_epoch());
    assert_eq!(primary.committed(), Seq(41));
    let seq = primary.submit(pair_epoch(), b"x".to_vec(), false);
    assert_eq!(seq, Seq(42));
    // A peer that stopped before 41 cannot be caught up from memory: a resync.
    let hello = |last| secondary_hello(Seq(last));
    assert!(matches!(
        primary.handle_reconnect(pair_epoch(), hello(30)),
        Err(crate::ProtocolError::PeerTooFarBehind { .. })
    ));
    primary.handle_reconnect(pair_epoch(), hello(41)).unwrap();
    assert_eq!(
        primary.poll_transmit(),
        Some(Frame::Mutation {
            seq,
            flush: false,
            payload: b"x".to_vec().into()
        })
    );
}

fn pair_epoch() -> std::time::Instant {
    Pair::new(config(Protocol::C), 0).now
}

#[test]
fn duplicate_and_reordered_frames_are_idempotent() {
    let mut pair = Pair::new(config(Protocol::C), 7);
    pair.dup = 0.5;
    pair.reorder = 0.5;
    pair.jitter = 20 * MS;
    let mut last = Seq(0);
    for i in 0..200u32 {
        last = pair.submit(&i.to_be_bytes(), i % 10 == 9);
        if i % 7 == 0 {
            pair.drive_for(3 * MS);
        }
    }
    assert!(pair.drive_until_committed(last, Duration::from_secs(5)));
    let seqs: Vec<u64> = pair.replica_log.iter().map(|(s, _)| s.0).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    for (i, (_, payload)) in pair.replica_log.iter().enumerate() {
        assert_eq!(payload, &(i as u32).to_be_bytes());
    }
}

#[test]
fn a_mutation_delivered_twice_is_applied_once_and_acked_twice() {
    let mut pair = Pair::new(config(Protocol::C), 1);
    let now = pair.now;
    let frame = Frame::Mutation {
        seq: Seq(1),
        flush: false,
        payload: b"x".to_vec().into(),
    };
    let r = &mut pair.replica;
    while r.poll_transmit().is_some() {}
    r.handle_frame(now, frame.clone()).unwrap();
    assert!(matches!(
        r.poll_transmit(),
        Some(Frame::Ack {
            received: Seq(1),
            ..
        })
    ));
    let (seq, _, _) = r.poll_apply().unwrap();
    r.applied(seq).unwrap();
    r.handle_frame(now, frame).unwrap();
    assert!(r.poll_apply().is_none(), "applied twice");
    assert_eq!(
        r.poll_transmit(),
        Some(Frame::Ack {
            received: Seq(1),
            applied: Seq(1),
            flushed: Seq(0)
        })
    );
}

#[test]
fn stale_and_duplicated_acks_change_nothing() {
    let mut pair = Pair::new(config(Protocol::C), 1);
    for i in 0..5u8 {
        pair.submit(&[i], false);
    }
    pair.drive_for(20 * MS);
    assert_eq!(pair.primary.committed(), Seq(5));
    let events = pair.primary_events.len();
    let now = pair.now;
    for (r, a, f) in [(5, 5, 0), (2, 1, 0), (0, 0, 0), (5, 5, 0)] {
        let ack = Frame::Ack {
            received: Seq(r),
            applied: Seq(a),
            flushed: Seq(f),
        };
        pair.primary.handle_frame(now, ack).unwrap();
    }
    assert_eq!(pair.primary.poll_event(), None);
    assert_eq!(pair.primary_events.len(), events);
    assert_eq!(pair.primary.committed(), Seq(5));
}

#[test]
fn replica_restart_resumes_from_last_applied_seq() {
    let mut pair = Pair::new(config(Protocol::C), 3);
    for i in 0..10u8 {
        pair.submit(&[i], false);
    }
    pair.drive_for(20 * MS);
    assert_eq!(pair.replica_applied(), Seq(10));
    // Die with mutations received but not applied yet.
    pair.apply_delay = 50 * MS;
    for i in 10..15u8 {
        pair.submit(&[i], false);
    }
    pair.drive_for(10 * MS);
    pair.restart_replica();
    assert_eq!(pair.replica.last_applied(), Seq(10));
    pair.apply_delay = Duration::ZERO;
    for i in 15..20u8 {
        pair.submit(&[i], false);
    }
    assert!(pair.drive_until_committed(Seq(20), Duration::from_secs(2)));
    let seqs: Vec<u64> = pair.replica_log.iter().map(|(s, _)| s.0).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
}

#[test]
fn peer_lost_fires_after_deadtime_and_not_before() {
    let mut pair = Pair::new(config(Protocol::C), 1);
    pair.drive_for(Duration::from_millis(250)); // heartbeats flow
    pair.partition = true;
    // Frames already on the wire still arrive.
    pair.drive_for(5 * MS);
    let deadtime = pair.config.deadtime;
    let [primary_heard, replica_heard] = pair.last_delivery;
    let first = primary_heard.min(replica_heard);
    pair.drive(first + deadtime - MS);
    assert!(pair
        .primary_events
        .iter()
        .all(|(_, e)| *e != Event::PeerLost));
    assert!(pair.replica_events.is_empty(), "before deadtime");
    pair.drive(primary_heard.max(replica_heard) + deadtime);
    let lost_at = |events: &[(std::time::Instant, Event)]| -> Vec<std::time::Instant> {
        events
            .iter()
            .filter(|(_, e)| *e == Event::PeerLost)
            .map(|(t, _)| *t)
            .collect()
    };
    assert_eq!(lost_at(&pair.primary_events), [primary_heard + deadtime]);
    assert_eq!(lost_at(&pair.replica_events), [replica_heard + deadtime]);
    pair.drive_for(5 * deadtime);
    assert_eq!(pair.count(|e| *e == Event::PeerLost), 1, "fired once");
    assert_eq!(pair.replica_events.len(), 1, "fired once");
    assert!(pair.primary.is_degraded());
}

#[test]
fn degraded_primary_keeps_serving_and_records_where_the_peer_stopped() {
    let mut pair = Pair::new(config(Protocol::C), 1);
    let s = pair.submit(b"f", true);
    pair.drive_for(10 * MS);
    assert_eq!(pair.replica.last_flushed(), s);
    pair.partition = true;
    let w = pair.submit(b"w", false);
    pair.drive_for(pair.config.deadtime + 10 * MS);
    assert!(pair.primary.is_degraded());
    // Committed locally once the peer is declared lost, not before.
    let lost_at = pair
        .primary_events
        .iter()
        .find(|(_, e)| *e == Event::PeerLost)
        .unwrap()
        .0;
    let committed_at = pair
        .primary_events
        .iter()
        .find(|(_, e)| *e == Event::Committed(w))
        .unwrap()
        .0;
    assert_eq!(committed_at, lost_at);
    assert_eq!(pair.primary.resync_from(), Seq(2));
    let x = pair.submit(b"x", true);
    assert_eq!(pair.primary.committed(), x);
    assert!(pair
        .primary_events
        .iter()
        .any(|(_, e)| *e == Event::Flushed(x)));
}

#[test]
fn a_partition_then_heal_retransmits_in_order_and_everything_commits() {
    for partition in [Duration::from_millis(500), Duration::from_secs(3)] {
        let mut pair = Pair::new(config(Protocol::C), 11);
        pair.reorder = 0.3;
        pair.jitter = 5 * MS;
        for i in 0..5u8 {
            pair.submit(&[i], false);
        }
        pair.drive_for(20 * MS);
        pair.partition = true;
        for i in 5..25u8 {
            pair.submit(&[i], i == 24);
        }
        pair.drive_for(partition);
        let lost = pair.count(|e| *e == Event::PeerLost);
        assert_eq!(lost, usize::from(partition > pair.config.deadtime));
        assert_eq!(pair.replica_applied(), Seq(5));
        pair.partition = false;
        assert!(pair.drive_until_committed(Seq(25), Duration::from_secs(3)));
        // After a long partition the commits were local; the replica catches up now.
        pair.drive_for(Duration::from_millis(200));
        let seqs: Vec<u64> = pair.replica_log.iter().map(|(s, _)| s.0).collect();
        assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
        // Synchronous again after the heal: the next write waits for the replica.
        pair.apply_delay = 50 * MS;
        let w = pair.submit(b"after", false);
        pair.drive_for(20 * MS);
        assert!(pair.primary.committed() < w);
        assert!(pair.drive_until_committed(w, Duration::from_secs(1)));
    }
}

#[test]
fn protocol_violations_are_errors() {
    use crate::ProtocolError;
    let mut pair = Pair::new(config(Protocol::C), 1);
    let now = pair.now;
    let bad_ack = Frame::Ack {
        received: Seq(3),
        applied: Seq(3),
        flushed: Seq(0),
    };
    assert!(matches!(
        pair.primary.handle_frame(now, bad_ack),
        Err(ProtocolError::AckBeyondSubmitted { .. })
    ));
    assert!(matches!(
        pair.primary.local_applied(Seq(1)),
        Err(ProtocolError::ReportBeyondLimit {
            what: "local_applied",
            ..
        })
    ));
    let far = Frame::Mutation {
        seq: Seq(pair.config.max_in_flight as u64 + 1),
        flush: false,
        payload: Vec::new().into(),
    };
    assert!(matches!(
        pair.replica.handle_frame(now, far),
        Err(ProtocolError::GapTooLarge { .. })
    ));
    assert!(matches!(
        pair.replica.applied(Seq(1)),
        Err(ProtocolError::ReportBeyondLimit {
            what: "applied",
            ..
        })
    ));
    let ack = Frame::Ack {
        received: Seq(0),
        applied: Seq(0),
        flushed: Seq(0),
    };
    assert!(matches!(
        pair.replica.handle_frame(now, ack),
        Err(ProtocolError::UnexpectedFrame { frame: "ack", .. })
    ));
}

#[test]
fn suspend_mode_acknowledges_nothing_while_the_peer_is_lost() {
    let mut c = config(Protocol::C);
    c.on_peer_loss = crate::OnPeerLoss::Suspend;
    let mut pair = Pair::new(c, 5);
    pair.partition = true;
    let seq = pair.submit(b"held", true);
    pair.drive_for(15 * SEC);
    assert!(pair.primary.is_degraded() && pair.primary.is_suspended());
    assert!(
        pair.primary.committed() < seq,
        "suspended: not acknowledged"
    );
    pair.partition = false;
    pair.reconnect();
    assert!(pair.drive_until_committed(seq, 5 * SEC));
    assert_eq!(pair.replica_applied(), seq);
}

#[test]
fn a_degraded_primary_may_forget_its_backlog_and_then_needs_a_resync() {
    let mut pair = Pair::new(config(Protocol::C), 9);
    pair.partition = true;
    for i in 0..10u8 {
        pair.submit(&[i; 100], false);
    }
    pair.drive_for(5 * SEC);
    assert!(pair.primary.is_degraded());
    assert_eq!(pair.primary.retained_bytes(), 1000);
    pair.primary.forget_retained();
    assert_eq!(pair.primary.retained(), 0);
    assert!(matches!(
        pair.primary
            .handle_reconnect(pair.now, secondary_hello(Seq(0))),
        Err(crate::ProtocolError::PeerTooFarBehind { .. })
    ));
}

/// The right to acknowledge alone: a lost peer without evidence suspends
/// every write; evidence obtained after the peer went silent lets the primary
/// acknowledge on its own store until the evidence expires, then it suspends
/// again.
#[test]
fn with_evidence_a_lost_peer_suspends_until_fresh_evidence_and_again_after_it_expires() {
    use crate::{AckState, AloneRight};
    let mut c = config(Protocol::C);
    c.on_peer_loss = crate::OnPeerLoss::WithEvidence;
    let mut pair = Pair::new(c, 7);
    pair.drive_for(100 * MS);
    let silent_from = pair.primary.last_heard();
    pair.partition = true;
    let held = pair.submit(b"held", true);
    pair.drive_for(15 * SEC);
    assert!(pair.primary.is_degraded() && pair.primary.is_suspended());
    assert_eq!(pair.primary.ack_state(pair.now), AckState::Suspended);
    assert!(
        pair.primary.committed() < held,
        "no evidence: not acknowledged"
    );

    // Evidence from before the loss was declared proves nothing (even if
    // obtained after the peer's last frame).
    let lost = pair.primary.lost_at().expect("declared lost");
    assert!(lost > silent_from);
    let stale = AloneRight {
        obtained_at: lost - MS,
        valid_until: pair.now + 10 * SEC,
    };
    assert!(!pair.primary.grant_alone(pair.now, stale));
    // An expired right neither.
    let expired = AloneRight {
        obtained_at: lost + MS,
        valid_until: pair.now,
    };
    assert!(!pair.primary.grant_alone(pair.now, expired));
    assert!(pair.primary.committed() < held);

    // Fresh evidence: everything applied and flushed locally is acknowledged.
    let right = AloneRight {
        obtained_at: lost + 100 * MS,
        valid_until: pair.now + SEC,
    };
    assert!(pair.primary.grant_alone(pair.now, right));
    assert_eq!(pair.primary.committed(), held);
    assert_eq!(pair.primary.flushed(), held);
    assert_eq!(
        pair.primary.ack_state(pair.now),
        AckState::AloneUntil(right.valid_until)
    );
    let during = pair.submit(b"alone", true);
    assert_eq!(pair.primary.committed(), during);

    // Past the right's end: suspended again, a new write waits.
    pair.drive_for(2 * SEC);
    let after = pair.submit(b"after expiry", true);
    assert_eq!(pair.primary.ack_state(pair.now), AckState::Suspended);
    assert_eq!(pair.primary.committed(), during);
    assert!(pair.primary.committed() < after);

    // The peer comes back: the protocol decides again.
    pair.partition = false;
    pair.reconnect();
    assert_eq!(pair.primary.ack_state(pair.now), AckState::Replicating);
    assert!(pair.drive_until_committed(after, 5 * SEC));
    assert_eq!(pair.replica_applied(), after);
}

/// While the peer is connected (or not yet declared lost), a grant changes
/// nothing: the protocol alone decides what is acknowledged.
#[test]
fn a_right_to_acknowledge_alone_is_refused_while_the_peer_is_not_lost() {
    use crate::AloneRight;
    let mut c = config(Protocol::C);
    c.on_peer_loss = crate::OnPeerLoss::WithEvidence;
    let mut pair = Pair::new(c, 8);
    pair.partition = true;
    let seq = pair.submit(b"w", false);
    pair.drive_for(500 * MS); // silent, but not for deadtime yet
    let right = AloneRight {
        obtained_at: pair.now,
        valid_until: pair.now + 10 * SEC,
    };
    assert!(!pair.primary.grant_alone(pair.now + MS, right));
    assert!(pair.primary.committed() < seq);
}

/// A primary promoted while its peer is away counts the peer as lost from
/// the promotion: with evidence obtained after it, it acknowledges at once
/// (no second deadtime); without, it is suspended; a peer that connects
/// later is caught up as after any loss.
#[test]
fn a_primary_resumed_alone_needs_evidence_from_after_its_promotion_only() {
    use crate::{AckState, AloneRight};
    let mut c = config(Protocol::C);
    c.on_peer_loss = crate::OnPeerLoss::WithEvidence;
    let t0 = super::util::epoch();
    let mut p = Primary::resume_alone(c, Seq(10), t0);
    assert_eq!(p.lost_at(), Some(t0));
    assert_eq!(p.ack_state(t0), AckState::Suspended);
    let seq = p.submit(t0, b"w".to_vec(), true);
    p.local_applied(seq).unwrap();
    p.local_flushed(seq).unwrap();
    assert_eq!(p.committed(), Seq(10));
    assert!(!p.grant_alone(
        t0,
        AloneRight {
            obtained_at: t0 - MS,
            valid_until: t0 + SEC
        }
    ));
    assert!(p.grant_alone(
        t0 + 5 * MS,
        AloneRight {
            obtained_at: t0 + MS,
            valid_until: t0 + SEC
        }
    ));
    assert_eq!(p.committed(), seq);
    assert_eq!(p.flushed(), seq);
    // The peer comes back behind: retransmission from what it has.
    p.handle_reconnect(t0 + 2 * SEC, secondary_hello(Seq(10)))
        .unwrap();
    assert_eq!(p.ack_state(t0 + 2 * SEC), AckState::Replicating);
    assert!(matches!(p.poll_transmit(), Some(Frame::Mutation { seq: s, .. }) if s == seq));
}

/// Issue 13: out-of-order mutations take at most `MAX_EARLY_BYTES` of payload.
/// One that would take more is dropped like a lost packet: it is not counted
/// as received (no ack covers it), and when the primary sends it again after
/// the gap it is taken. Nothing is handed out twice or out of order.
#[test]
fn the_early_arrival_buffer_is_bounded_in_bytes_and_a_dropped_mutation_comes_again() {
    use crate::{Replica, MAX_EARLY_BYTES};
    let cfg = config(Protocol::C);
    let now = super::util::epoch();
    let mut r = Replica::new(cfg.clone(), Seq(0), now);
    let chunk = MAX_EARLY_BYTES / 4;
    // One buffer shared by every payload: the test holds 16 MiB, not 80.
    let big = bytes::Bytes::from(vec![0xa5; chunk]);
    let mutation = |seq: u64, payload: bytes::Bytes| Frame::Mutation {
        seq: Seq(seq),
        flush: false,
        payload,
    };
    let acked = |r: &mut Replica| {
        let mut last = None;
        while let Some(f) = r.poll_transmit() {
            if let Frame::Ack { received, .. } = f {
                last = Some(received);
            }
        }
        last
    };
    // Seq 1 is missing: 2..=5 fill the early buffer to exactly its bound.
    for seq in 2..=5 {
        r.handle_frame(now, mutation(seq, big.clone())).unwrap();
    }
    // Seq 6 would go beyond it: dropped, not an error (the connection stays).
    r.handle_frame(now, mutation(6, big.clone())).unwrap();
    // A small one beyond the bound is dropped as well.
    r.handle_frame(now, mutation(7, bytes::Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(acked(&mut r), Some(Seq(0)), "nothing after the gap counts");
    assert_eq!(r.poll_apply(), None);

    // The gap fills: 1..=5 go out in order; 6 and 7 were never received.
    r.handle_frame(now, mutation(1, bytes::Bytes::from_static(b"one")))
        .unwrap();
    assert_eq!(acked(&mut r), Some(Seq(5)));
    for seq in 1..=5 {
        let (s, _, _) = r.poll_apply().expect("handed out in order");
        assert_eq!(s, Seq(seq));
        r.applied(s).unwrap();
    }
    assert_eq!(r.poll_apply(), None);

    // The primary's retransmission brings 6 and 7 again; with the buffer
    // empty, more out-of-order bytes are taken again.
    r.handle_frame(now, mutation(9, big.clone())).unwrap();
    r.handle_frame(now, mutation(6, big.clone())).unwrap();
    r.handle_frame(now, mutation(7, bytes::Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(acked(&mut r), Some(Seq(7)));
    for seq in 6..=7 {
        assert_eq!(r.poll_apply().map(|(s, _, _)| s), Some(Seq(seq)));
    }
    assert_eq!(r.poll_apply(), None, "9 waits for 8");
    r.handle_frame(now, mutation(8, bytes::Bytes::from_static(b"y")))
        .unwrap();
    assert_eq!(r.poll_apply().map(|(s, _, _)| s), Some(Seq(8)));
    assert_eq!(r.poll_apply().map(|(s, _, _)| s), Some(Seq(9)));
}

/// The bound on early bytes also holds on a simulated network that reorders,
/// loses and duplicates frames: every write still commits, applied once each,
/// in order.
#[test]
fn writes_commit_in_order_although_early_arrivals_beyond_the_bound_are_dropped() {
    let mut cfg = config(Protocol::C);
    // Room for three 4 KiB payloads after a gap.
    cfg.max_early_bytes = 12 << 10;
    let mut pair = Pair::new(cfg, 13);
    pair.latency = 2 * MS;
    pair.jitter = 40 * MS;
    pair.reorder = 0.5;
    pair.loss = 0.05;
    pair.dup = 0.05;
    let mut last = Seq(0);
    for i in 0..40u8 {
        last = pair.submit(&[i; 4 << 10], false);
    }
    assert!(pair.drive_until_committed(last, 60 * SEC));
    assert_eq!(pair.replica_applied(), last);
    for (i, (seq, payload)) in pair.replica_log.iter().enumerate() {
        assert_eq!(*seq, Seq(i as u64 + 1));
        assert_eq!(payload[0], i as u8);
    }
}
