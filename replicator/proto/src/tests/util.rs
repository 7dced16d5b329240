//! The simulated network and its helpers.

/// A small seeded PRNG (splitmix64): deterministic, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the tiny modulo bias does not matter here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

use crate::{
    Event, Frame, Generation, Hello, Primary, Protocol, ProtocolConfig, Replica, Role, Seq,
    PROTOCOL_VERSION,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The handshake of an up-to-date secondary of generation 1 standing at `last_applied`.
pub(crate) fn secondary_hello(last_applied: Seq) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        node: "replica".into(),
        generation: Generation(1),
        last_applied,
        role: Role::Secondary,
        disk: crate::DiskState::UpToDate,
        shared: Generation(1),
        changed_blocks: 0,
        primary_since_ms: 0,
        floor: Seq(0),
    }
}

/// A config with short timers, so simulated runs need few steps.
pub(crate) fn config(protocol: Protocol) -> ProtocolConfig {
    let c = ProtocolConfig {
        protocol,
        keepalive: Duration::from_millis(100),
        deadtime: Duration::from_millis(1000),
        max_in_flight: 64,
        ..ProtocolConfig::default()
    };
    c.validate().unwrap();
    c
}

/// A primary and a replica joined by a simulated network, under virtual time.
///
/// Frames travel as encoded bytes (so the codec is exercised too) with a fixed
/// `latency`, and are lost, duplicated or delayed by up to `jitter` (which
/// reorders them) with the given probabilities, all drawn from a seeded RNG. A
/// `partition` drops everything. The replica's application applies each
/// mutation `apply_delay` after it is handed out and syncs `flush_delay` later
/// for a flush barrier. The "transport" reconnects (a fresh connection: frames
/// in flight are gone) as soon as either side has lost its peer and no
/// partition is in the way. Invariants are checked on every event.
pub(crate) struct Pair {
    pub(crate) primary: Primary,
    pub(crate) replica: Replica,
    pub(crate) config: ProtocolConfig,
    pub(crate) now: Instant,
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    pub(crate) loss: f64,
    pub(crate) dup: f64,
    pub(crate) reorder: f64,
    pub(crate) partition: bool,
    pub(crate) apply_delay: Duration,
    pub(crate) flush_delay: Duration,
    /// Every mutation the replica's store applied, in order.
    pub(crate) replica_log: Vec<(Seq, Vec<u8>)>,
    /// Every primary event, with its time.
    pub(crate) primary_events: Vec<(Instant, Event)>,
    /// Every replica event, with its time.
    pub(crate) replica_events: Vec<(Instant, Event)>,
    /// When a frame last arrived at the primary and at the replica.
    pub(crate) last_delivery: [Instant; 2],
    rng: Rng,
    next_id: u64,
    in_flight: Vec<Packet>,
    applying: VecDeque<(Instant, Seq, Vec<u8>, bool)>,
    flushing: VecDeque<(Instant, Seq)>,
    flush_scheduled: Seq,
    /// Whether the primary's commits are local-only, as the events tell.
    degraded: bool,
}

struct Packet {
    at: Instant,
    id: u64,
    to_replica: bool,
    bytes: Vec<u8>,
}

/// The simulation's time origin. The one clock read in this crate: only
/// differences from it are ever used, so runs do not depend on its value.
pub(crate) fn epoch() -> Instant {
    Instant::now()
}

impl Pair {
    /// A connected pair on a perfect 1 ms network, with an instant replica store.
    pub(crate) fn new(config: ProtocolConfig, seed: u64) -> Self {
        let now = epoch();
        let mut pair = Pair {
            primary: Primary::new(config.clone(), now),
            replica: Replica::new(config.clone(), Seq(0), now),
            config,
            now,
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            partition: false,
            apply_delay: Duration::ZERO,
            flush_delay: Duration::ZERO,
            replica_log: Vec::new(),
            primary_events: Vec::new(),
            replica_events: Vec::new(),
            last_delivery: [now; 2],
            rng: Rng::new(seed),
            next_id: 0,
            in_flight: Vec::new(),
            applying: VecDeque::new(),
            flushing: VecDeque::new(),
            flush_scheduled: Seq(0),
            degraded: false,
        };
        pair.reconnect();
        pair
    }

    /// Submits a mutation and applies it locally at once (flushing it too for a barrier).
    pub(crate) fn submit(&mut self, payload: &[u8], flush: bool) -> Seq {
        let seq = self.primary.submit(self.now, payload.to_vec(), flush);
        self.primary.local_applied(seq).unwrap();
        if flush {
            self.primary.local_flushed(seq).unwrap();
        }
        self.collect_events();
        seq
    }

    /// The replica's last applied seq, as its store knows it.
    pub(crate) fn replica_applied(&self) -> Seq {
        self.replica_log.last().map_or(Seq(0), |(s, _)| *s)
    }

    /// A fresh connection: frames in flight belong to the old one and vanish.
    pub(crate) fn reconnect(&mut self) {
        self.in_flight.clear();
        self.replica.handle_reconnect(self.now);
        let hello = secondary_hello(self.replica.last_applied());
        self.primary.handle_reconnect(self.now, hello).unwrap();
        self.collect_events();
    }

    /// The replica process dies (its pending applies with it) and restarts from its store.
    pub(crate) fn restart_replica(&mut self) {
        self.applying.clear();
        self.flushing.clear();
        self.flush_scheduled = Seq(0);
        self.replica = Replica::new(self.config.clone(), self.replica_applied(), self.now);
        self.reconnect();
    }

    /// Does everything possible at the current instant; false when nothing was left.
    pub(crate) fn step(&mut self) -> bool {
        let mut progress = false;
        while let Some(frame) = self.primary.poll_transmit() {
            self.send(true, &frame);
            progress = true;
        }
        while let Some(frame) = self.replica.poll_transmit() {
            self.send(false, &frame);
            progress = true;
        }
        while let Some((seq, payload, flush)) = self.replica.poll_apply() {
            self.applying
                .push_back((self.now + self.apply_delay, seq, payload.to_vec(), flush));
            progress = true;
        }
        while self.applying.front().is_some_and(|a| a.0 <= self.now) {
            let (_, seq, payload, flush) = self.applying.pop_front().unwrap();
            assert_eq!(
                seq,
                self.replica_applied().next(),
                "applied out of order or twice"
            );
            self.replica_log.push((seq, payload));
            self.replica.applied(seq).unwrap();
            let _ = flush; // barriers come from poll_flush, flag or Flush frame alike
            progress = true;
        }
        if let Some(seq) = self.replica.poll_flush() {
            if seq > self.flush_scheduled {
                self.flush_scheduled = seq;
                self.flushing.push_back((self.now + self.flush_delay, seq));
                progress = true;
            }
        }
        while self.flushing.front().is_some_and(|f| f.0 <= self.now) {
            let (_, seq) = self.flushing.pop_front().unwrap();
            self.replica.flushed(seq).unwrap();
            progress = true;
        }
        if let Some(i) = self.next_due() {
            let packet = self.in_flight.remove(i);
            let (frame, n) = Frame::decode(&packet.bytes).unwrap().unwrap();
            assert_eq!(n, packet.bytes.len());
            self.last_delivery[usize::from(packet.to_replica)] = self.now;
            if packet.to_replica {
                self.replica.handle_frame(self.now, frame).unwrap();
            } else {
                self.primary.handle_frame(self.now, frame).unwrap();
            }
            progress = true;
        }
        self.collect_events();
        if !self.partition && (self.primary.is_degraded() || self.replica.is_peer_lost()) {
            self.reconnect();
            progress = true;
        }
        progress
    }

    /// Runs until virtual time reaches `until`, jumping from one timer or arrival to the next.
    pub(crate) fn drive(&mut self, until: Instant) {
        loop {
            while self.step() {}
            if self.now >= until {
                return;
            }
            let next = [
                self.primary.poll_timeout(),
                self.replica.poll_timeout(),
                self.in_flight.iter().map(|p| p.at).min(),
                self.applying.front().map(|a| a.0),
                self.flushing.front().map(|f| f.0),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until);
            self.now = self.now.max(next.min(until));
            self.primary.handle_timeout(self.now);
            self.replica.handle_timeout(self.now);
            self.collect_events();
        }
    }

    /// Runs for `d` of virtual time.
    pub(crate) fn drive_for(&mut self, d: Duration) {
        self.drive(self.now + d);
    }

    /// Runs until the primary has committed `seq`, for at most `limit`; true if it did.
    pub(crate) fn drive_until_committed(&mut self, seq: Seq, limit: Duration) -> bool {
        let end = self.now + limit;
        while self.primary.committed() < seq && self.now < end {
            let step = self.config.keepalive.min(end - self.now);
            self.drive_for(step);
        }
        self.primary.committed() >= seq
    }

    /// The primary events of one kind so far.
    pub(crate) fn count(&self, want: fn(&Event) -> bool) -> usize {
        self.primary_events.iter().filter(|(_, e)| want(e)).count()
    }

    fn next_due(&self) -> Option<usize> {
        self.in_flight
            .iter()
            .enumerate()
            .filter(|(_, p)| p.at <= self.now)
            .min_by_key(|(_, p)| (p.at, p.id))
            .map(|(i, _)| i)
    }

    fn send(&mut self, to_replica: bool, frame: &Frame) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            if self.partition || self.rng.chance(self.loss) {
                continue;
            }
            let mut at = self.now + self.latency;
            if self.rng.chance(self.reorder) && !self.jitter.is_zero() {
                at += Duration::from_micros(self.rng.below(self.jitter.as_micros() as u64));
            }
            self.next_id += 1;
            self.in_flight.push(Packet {
                at,
                id: self.next_id,
                to_replica,
                bytes: bytes.clone(),
            });
        }
    }

    /// Records events and checks the promises they make.
    fn collect_events(&mut self) {
        while let Some(e) = self.primary.poll_event() {
            match e {
                Event::PeerLost => self.degraded = true,
                Event::PeerConnected { .. } => self.degraded = false,
                Event::Committed(s) if !self.degraded => match self.config.protocol {
                    // Protocol C: a write returns only once the replica's store has it.
                    Protocol::C => assert!(
                        self.replica_applied() >= s,
                        "committed {s} but the replica applied only {}",
                        self.replica_applied()
                    ),
                    Protocol::B | Protocol::A => {}
                },
                Event::Flushed(s) if !self.degraded && self.config.protocol != Protocol::A => {
                    assert!(
                        self.replica.last_flushed() >= s,
                        "flushed {s} but the replica flushed only {}",
                        self.replica.last_flushed()
                    );
                }
                _ => {}
            }
            if let Some((_, Event::Committed(prev))) = self
                .primary_events
                .iter()
                .rev()
                .find(|(_, e)| matches!(e, Event::Committed(_)))
            {
                if let Event::Committed(s) = e {
                    assert!(s > *prev, "commits out of order: {s} after {prev}");
                }
            }
            self.primary_events.push((self.now, e));
        }
        while let Some(e) = self.replica.poll_event() {
            self.replica_events.push((self.now, e));
        }
    }
}
