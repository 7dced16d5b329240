//! A deterministic two-node simulation: two [`NodeCore`]s, each with a model
//! store, on a simulated network with latency, jitter, connections that die,
//! frames of dead connections arriving late, partitions and crashes. The
//! driver here does what the real node's I/O loop does with each
//! [`Output`], synchronously; time is a number the test advances.

use crate::fuzzing::Rng;
use crate::node::verify::{compare, Difference, RecordDigest, VerifyAnswer, VerifyRequest};
use crate::node::StandbyView;
use crate::node::{key_count, Close, Host, LocalWrite, NodeConfig, NodeCore, NodeState, Output};
use crate::{DiskState, Frame, OnPeerLoss, Protocol, ProtocolConfig, Role, Seq, SplitBrainPolicy};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// A key-value store with a log of seq'd mutations: enough of the real store
/// for the node's decisions (position, changed keys after a floor, sync,
/// crash, jump).
#[derive(Debug, Default, Clone)]
pub(crate) struct ModelStore {
    pub(crate) records: BTreeMap<Vec<u8>, Vec<u8>>,
    /// (seq, key, value before): undone by a crash above the synced seq.
    log: Vec<(u64, Vec<u8>, Option<Vec<u8>>)>,
    last: u64,
    synced: u64,
}

/// A mutation or resync payload: ops of (key, value or none for a delete);
/// an empty key first means "wipe everything" (a full resync).
fn encode(ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in ops {
        out.extend((k.len() as u16).to_be_bytes());
        out.extend(k);
        match v {
            Some(v) => {
                out.push(1);
                out.extend((v.len() as u32).to_be_bytes());
                out.extend(v);
            }
            None => out.push(0),
        }
    }
    out
}

fn decode(mut b: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut ops = Vec::new();
    while !b.is_empty() {
        let klen = u16::from_be_bytes([b[0], b[1]]) as usize;
        let key = b[2..2 + klen].to_vec();
        b = &b[2 + klen..];
        let v = if b[0] == 1 {
            let vlen = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            let v = b[5..5 + vlen].to_vec();
            b = &b[5 + vlen..];
            Some(v)
        } else {
            b = &b[1..];
            None
        };
        ops.push((key, v));
    }
    ops
}

/// Keys as a `ResyncKeys` payload: a LEB128 count (as postcard writes it),
/// then each key with a u16 length.
fn encode_keys(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = keys.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    for k in keys {
        out.extend((k.len() as u16).to_be_bytes());
        out.extend(k);
    }
    debug_assert_eq!(key_count(&out), Ok(keys.len() as u64));
    out
}

fn decode_keys(payload: &[u8]) -> Vec<Vec<u8>> {
    let n = key_count(payload).unwrap();
    let mut b = payload;
    while b[0] & 0x80 != 0 {
        b = &b[1..];
    }
    b = &b[1..];
    let mut keys = Vec::new();
    for _ in 0..n {
        let len = u16::from_be_bytes([b[0], b[1]]) as usize;
        keys.push(b[2..2 + len].to_vec());
        b = &b[2 + len..];
    }
    keys
}

impl ModelStore {
    fn put(&mut self, key: Vec<u8>, v: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match v {
            Some(v) => self.records.insert(key, v),
            None => self.records.remove(&key),
        }
    }

    /// Applies the mutation `seq` (a retransmission of an older one is
    /// acknowledged, not reapplied).
    fn apply(&mut self, seq: Seq, payload: &[u8]) {
        if seq.0 <= self.last {
            return;
        }
        assert_eq!(seq.0, self.last + 1, "mutations apply in order");
        for (k, v) in decode(payload) {
            let old = self.put(k.clone(), v);
            self.log.push((seq.0, k, old));
        }
        self.last = seq.0;
    }

    /// Applies resync values (or repairs): no seq, durable at once.
    fn apply_local(&mut self, payload: &[u8]) {
        for (k, v) in decode(payload) {
            if k.is_empty() {
                self.records.clear();
            } else {
                self.put(k, v);
            }
        }
    }

    fn keys_changed_since(&self, from: Seq) -> BTreeSet<Vec<u8>> {
        self.log
            .iter()
            .filter(|(s, ..)| *s > from.0)
            .map(|(_, k, _)| k.clone())
            .collect()
    }

    /// A machine crash: what was not synced is gone.
    fn crash(&mut self) {
        while self.log.last().is_some_and(|(s, ..)| *s > self.synced) {
            let (_, k, old) = self.log.pop().expect("checked");
            self.put(k, old);
        }
        self.last = self.synced;
    }

    /// Every record's (key, digest), sorted by key.
    fn digests(&self) -> Vec<RecordDigest> {
        self.records
            .iter()
            .map(|(k, v)| (k.clone(), *blake3::hash(v).as_bytes()))
            .collect()
    }

    /// The end of a resync: the position jumps.
    fn jump(&mut self, p: Seq) {
        self.log.retain(|(s, ..)| *s <= p.0);
        self.last = p.0;
        self.synced = p.0;
    }
}

/// The core's host in the simulation.
#[derive(Debug)]
pub(crate) struct SimHost {
    pub(crate) store: ModelStore,
    /// The state file.
    pub(crate) saved: NodeState,
    next_generation: u64,
    wall_ms: u64,
}

impl Host for SimHost {
    fn last_applied(&self) -> Seq {
        Seq(self.store.last)
    }
    fn changed_since(&self, from: Seq) -> Option<u64> {
        Some(self.store.keys_changed_since(from).len() as u64)
    }
    fn sync(&mut self) -> Result<(), String> {
        self.store.synced = self.store.last;
        Ok(())
    }
    fn save(&mut self, state: &NodeState) -> Result<(), String> {
        self.saved = state.clone();
        Ok(())
    }
    fn new_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
    fn wall_ms(&self) -> u64 {
        self.wall_ms
    }
}

/// One simulated node: its core (none while crashed), host and what the
/// test looks at.
#[derive(Debug)]
pub(crate) struct SimNode {
    pub(crate) core: Option<NodeCore>,
    pub(crate) host: SimHost,
    cfg: NodeConfig,
    pub(crate) writes_open: bool,
    pub(crate) mounted: bool,
    /// What the standby mount shows (with `standby` on).
    pub(crate) view: StandbyView,
    /// Resync values applied while the view was serving (must stay 0).
    pub(crate) applied_while_serving: u32,
    /// Writes submitted and not yet acknowledged: (seq, key, value).
    pending: Vec<(Seq, Vec<u8>, Vec<u8>)>,
    /// Writes acknowledged to the writer.
    pub(crate) acked: Vec<(Seq, Vec<u8>, Vec<u8>)>,
    /// The keys each resync this node shipped, and whether it was full.
    pub(crate) shipped: Vec<(BTreeSet<Vec<u8>>, bool)>,
    /// Split-brain reports sent and received.
    pub(crate) reports_sent: u32,
    pub(crate) reports_received: u32,
    pub(crate) answers: Vec<Result<String, String>>,
    pub(crate) notes: Vec<String>,
    /// An online verify waiting for the peer: (request, local digests, repair).
    verifying: Option<(VerifyRequest, Vec<RecordDigest>, bool)>,
    /// The differences the last online verify found.
    pub(crate) verified: Option<Vec<(Vec<u8>, Difference)>>,
}

impl SimNode {
    pub(crate) fn core(&self) -> &NodeCore {
        self.core.as_ref().expect("the node runs")
    }
}

/// The connection between the two nodes.
#[derive(Debug)]
struct SimConn {
    id: u64,
    /// When it closes (a goodbye's linger, or the idle timeout after a
    /// partition or a crash).
    closing_at: Option<Instant>,
}

/// Two nodes and the network between them.
pub(crate) struct Sim {
    pub(crate) now: Instant,
    pub(crate) nodes: [SimNode; 2],
    rng: Rng,
    /// Frames on their way to node i: (due, connection, frame), in order.
    wire: [VecDeque<(Instant, u64, Frame)>; 2],
    conn: Option<SimConn>,
    next_conn: u64,
    redial_at: Instant,
    /// No frame gets through; connections die at the idle timeout.
    pub(crate) partitioned: bool,
    /// Chance per step (per million) that the connection dies at once.
    pub(crate) kill_per_million: u32,
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    pub(crate) step: Duration,
    protocol: ProtocolConfig,
}

/// The protocol the simulation runs: short timers, so that seconds of
/// simulated time cover many peer losses.
pub(crate) fn sim_protocol() -> ProtocolConfig {
    ProtocolConfig {
        protocol: Protocol::C,
        keepalive: Duration::from_millis(100),
        deadtime: Duration::from_millis(500),
        on_peer_loss: OnPeerLoss::Continue,
        ..ProtocolConfig::default()
    }
}

const NAMES: [&str; 2] = ["alpha", "beta"];

impl Sim {
    pub(crate) fn new(seed: u64, policy: SplitBrainPolicy) -> Sim {
        Sim::with_standby(seed, policy, None)
    }

    /// Both nodes serve a standby view when secondary (`[standby] serve`).
    pub(crate) fn with_standby(
        seed: u64,
        policy: SplitBrainPolicy,
        standby: Option<Duration>,
    ) -> Sim {
        let now = Instant::now();
        let protocol = sim_protocol();
        let node = |i: usize| {
            let cfg = NodeConfig {
                name: NAMES[i].into(),
                peer: format!("10.0.0.{}:7789", 2 - i).parse().expect("address"),
                protocol: protocol.clone(),
                split_brain: policy,
                evidence_source: "no evidence source".into(),
                standby,
            };
            let mut host = SimHost {
                store: ModelStore::default(),
                saved: NodeState::default(),
                next_generation: (i as u64 + 1) << 32,
                wall_ms: 1_800_000_000_000,
            };
            let core = NodeCore::new(cfg.clone(), NodeState::default(), &mut host);
            SimNode {
                core: Some(core),
                host,
                cfg,
                writes_open: false,
                mounted: false,
                view: StandbyView::Off,
                applied_while_serving: 0,
                pending: Vec::new(),
                acked: Vec::new(),
                shipped: Vec::new(),
                reports_sent: 0,
                reports_received: 0,
                answers: Vec::new(),
                notes: Vec::new(),
                verifying: None,
                verified: None,
            }
        };
        Sim {
            now,
            nodes: [node(0), node(1)],
            rng: Rng::new(seed),
            wire: [VecDeque::new(), VecDeque::new()],
            conn: None,
            next_conn: 1,
            redial_at: now,
            partitioned: false,
            kill_per_million: 0,
            latency: Duration::from_micros(300),
            jitter: Duration::from_micros(200),
            step: Duration::from_millis(1),
            protocol,
        }
    }

    /// Whether both nodes run and completed a handshake on the same connection.
    pub(crate) fn connected(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.core.as_ref().is_some_and(|c| c.peer().is_some()))
    }

    /// Runs for `d` of simulated time, checking `invariant` after every step.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step_once();
            self.check_invariants();
        }
    }

    /// The promises that hold at every step.
    fn check_invariants(&self) {
        if self.connected() {
            assert!(
                !self.nodes.iter().all(|n| n.core().role() == Role::Primary),
                "two primaries while connected"
            );
        }
        for n in &self.nodes {
            if let Some(c) = &n.core {
                assert_eq!(c.state(), &n.host.saved_or(c.state()), "state saved");
                if c.role() == Role::Secondary && n.view == StandbyView::Serving {
                    assert_ne!(
                        c.state().disk,
                        DiskState::Inconsistent,
                        "a standby view serves a half-resynced store"
                    );
                }
            }
            assert_eq!(
                n.applied_while_serving, 0,
                "a resync value applied while serving"
            );
        }
    }

    fn step_once(&mut self) {
        self.now += self.step;
        for n in &mut self.nodes {
            n.host.wall_ms += self.step.as_millis() as u64;
        }
        self.manage_connection();
        for i in 0..2 {
            self.deliver(i);
            if let Some(core) = &mut self.nodes[i].core {
                if core.poll_timeout(self.now).is_some_and(|t| t <= self.now) {
                    core.handle_timeout(self.now);
                }
            }
            self.drive(i);
        }
    }

    fn manage_connection(&mut self) {
        let up = self.nodes.iter().all(|n| n.core.is_some());
        if let Some(c) = &self.conn {
            let die = self.kill_per_million > 0
                && self.rng.below(1_000_000) < self.kill_per_million as usize;
            if c.closing_at.is_some_and(|t| t <= self.now) || die {
                let id = c.id;
                self.conn = None;
                for i in 0..2 {
                    if let Some(core) = &mut self.nodes[i].core {
                        core.disconnected(id, "closed");
                    }
                    self.drive(i);
                }
                let refusing = self
                    .nodes
                    .iter()
                    .any(|n| n.core.as_ref().is_some_and(NodeCore::refusing));
                self.redial_at = self.now
                    + if refusing {
                        Duration::from_secs(5)
                    } else {
                        Duration::from_millis(20)
                    };
            } else if (self.partitioned || !up) && c.closing_at.is_none() {
                // QUIC's idle timeout closes what cannot get through.
                let at = self.now + self.protocol.deadtime;
                self.conn.as_mut().expect("checked").closing_at = Some(at);
            }
            return;
        }
        if up && !self.partitioned && self.now >= self.redial_at {
            let id = self.next_conn;
            self.next_conn += 1;
            self.conn = Some(SimConn {
                id,
                closing_at: None,
            });
            for i in 0..2 {
                let n = &mut self.nodes[i];
                let addr = n.cfg.peer;
                let core = n.core.as_mut().expect("up");
                core.connected(id, addr, &n.host);
                self.drive(i);
            }
        }
    }

    fn deliver(&mut self, i: usize) {
        while self.wire[i].front().is_some_and(|(t, ..)| *t <= self.now) {
            let (_, id, frame) = self.wire[i].pop_front().expect("checked");
            let n = &mut self.nodes[i];
            if let Some(core) = &mut n.core {
                core.handle_frame(self.now, id, frame, &mut n.host);
            }
            self.drive(i);
        }
    }

    /// Sends `frame` from node `from` on the current connection.
    fn send(&mut self, from: usize, frame: Frame) {
        let Some(c) = &self.conn else { return };
        if self.partitioned || self.nodes[1 - from].core.is_none() {
            return;
        }
        let jitter =
            Duration::from_micros(self.rng.below(self.jitter.as_micros() as usize + 1) as u64);
        let mut due = self.now + self.latency + jitter;
        // One ordered stream: never before the frame ahead of it.
        if let Some((last, ..)) = self.wire[1 - from].back() {
            due = due.max(*last);
        }
        self.wire[1 - from].push_back((due, c.id, frame));
    }

    /// Drives node `i`'s core and does what it asks, as the real I/O loop does.
    pub(crate) fn drive(&mut self, i: usize) {
        for _ in 0..16 {
            let now = self.now;
            let n = &mut self.nodes[i];
            let Some(core) = &mut n.core else { return };
            core.drive(now, &mut n.host, || None);
            if let Some((committed, _)) = core.commit_positions() {
                let (done, waiting): (Vec<_>, Vec<_>) =
                    n.pending.drain(..).partition(|(s, ..)| *s <= committed);
                n.acked.extend(done);
                n.pending = waiting;
            }
            if !self.act(i) {
                break;
            }
        }
    }

    fn act(&mut self, i: usize) -> bool {
        let mut fed = false;
        let now = self.now;
        loop {
            let n = &mut self.nodes[i];
            let Some(core) = &mut n.core else { return fed };
            let Some(out) = core.poll_output() else {
                return fed;
            };
            match out {
                Output::Send(f) => self.send(i, f),
                Output::Close { how, reason } => {
                    self.send(i, Frame::Goodbye { reason });
                    let linger = match how {
                        Close::Refused => Duration::from_millis(300),
                        Close::Reconnect => Duration::from_millis(50),
                    };
                    if let Some(c) = &mut self.conn {
                        let at = now + linger;
                        c.closing_at = Some(c.closing_at.map_or(at, |t| t.min(at)));
                    }
                }
                Output::Apply(seq, payload) => {
                    n.host.store.apply(seq, &payload);
                    core.applied(seq);
                    fed = true;
                }
                Output::Sync(s) => {
                    n.host.store.synced = n.host.store.last;
                    core.flushed(s);
                    fed = true;
                }
                Output::ApplyLocal(p) => {
                    if core.state().disk == DiskState::Inconsistent
                        && n.view == StandbyView::Serving
                    {
                        n.applied_while_serving += 1;
                    }
                    n.host.store.apply_local(&p)
                }
                Output::Jump(p) => {
                    n.host.store.jump(p);
                    core.jumped(now, p, &mut n.host);
                    fed = true;
                }
                Output::ListChangedKeys(floor) => {
                    let keys: Vec<_> = n.host.store.keys_changed_since(floor).into_iter().collect();
                    self.send(
                        i,
                        Frame::ResyncKeys {
                            last: true,
                            known: true,
                            payload: encode_keys(&keys),
                        },
                    );
                }
                Output::ShipResync { floor, target_keys } => {
                    let full = target_keys.is_none();
                    let mut keys: BTreeSet<Vec<u8>> = target_keys
                        .iter()
                        .flatten()
                        .flat_map(|c| decode_keys(c))
                        .collect();
                    keys.extend(n.host.store.keys_changed_since(floor));
                    let store = &n.host.store;
                    let mut ops = Vec::new();
                    if full {
                        ops.push((Vec::new(), None));
                        ops.extend(
                            store
                                .records
                                .iter()
                                .map(|(k, v)| (k.clone(), Some(v.clone()))),
                        );
                    } else {
                        ops.extend(
                            keys.iter()
                                .map(|k| (k.clone(), store.records.get(k).cloned())),
                        );
                    }
                    let position = Seq(store.last);
                    let payload = encode(&ops);
                    core.resync_planned(payload.len() as u64, full, keys.len(), position);
                    core.resync_sent(payload.len() as u64);
                    n.shipped.push((keys, full));
                    self.send(i, Frame::ResyncData { payload });
                    let n = &mut self.nodes[i];
                    let core = n.core.as_mut().expect("running");
                    core.resync_shipped(now, position);
                    fed = true;
                }
                Output::CancelResync => {}
                Output::AnswerVerify(payload) => {
                    let req = VerifyRequest::parse(&payload).expect("a well-formed request");
                    let answer = req.answer(&n.host.store.digests());
                    self.send(
                        i,
                        Frame::VerifyResponse {
                            payload: answer.to_bytes(),
                        },
                    );
                    let core = self.nodes[i].core.as_mut().expect("running");
                    core.verify_answer_sent();
                }
                Output::VerifyAnswered(payload) => {
                    let answer = VerifyAnswer::parse(&payload).expect("a well-formed answer");
                    let Some((req, local, repair)) = n.verifying.take() else {
                        continue;
                    };
                    let diffs = compare(&local, &req.boundaries, &answer);
                    let ops: Vec<_> = diffs
                        .iter()
                        .filter(|(_, how)| *how != Difference::DamagedHere)
                        .map(|(k, _)| (k.clone(), n.host.store.records.get(k).cloned()))
                        .collect();
                    n.verified = Some(diffs);
                    if repair && !ops.is_empty() {
                        self.send(
                            i,
                            Frame::Repair {
                                payload: encode(&ops),
                            },
                        );
                    }
                }
                Output::SplitBrain { .. } => {
                    n.reports_sent += 1;
                    let payload = NAMES[i].as_bytes().to_vec();
                    self.send(i, Frame::Report { payload });
                }
                Output::PeerReport(_) => n.reports_received += 1,
                Output::SplitBrainCleared => {}
                Output::OpenWrites(_) => n.writes_open = true,
                Output::CloseWrites(_) => {
                    n.writes_open = false;
                    n.pending.clear();
                }
                Output::Mount => {
                    n.mounted = true;
                    let a = core.mounted(now, &mut n.host, Ok(()));
                    n.answers.push(a);
                    fed = true;
                }
                Output::Unmount => {
                    n.mounted = false;
                    n.view = StandbyView::Off;
                    if let Some(a) = core.unmounted(now, &mut n.host, Ok(())) {
                        n.answers.push(a);
                    }
                    fed = true;
                }
                Output::ReadOnly => {
                    n.view = StandbyView::Serving;
                    if let Some(a) = core.unmounted(now, &mut n.host, Ok(())) {
                        n.answers.push(a);
                    }
                    fed = true;
                }
                Output::Standby(v) => {
                    n.mounted = v != StandbyView::Off;
                    n.view = v;
                }
                Output::RetainFloor(_) => {}
                Output::SaveInBackground => {
                    n.host.saved = core.state().clone();
                    core.background_saved(Ok(()));
                }
                Output::Note(s) => n.notes.push(s),
                Output::Stop => {}
            }
        }
    }

    /// `twinfs promote` on node `i`: the refusal, or the promotion done.
    pub(crate) fn promote(&mut self, i: usize) -> Result<(), String> {
        let n = &mut self.nodes[i];
        let core = n.core.as_mut().expect("running");
        core.promote(self.now, &mut n.host)?;
        self.drive(i);
        match self.nodes[i].answers.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err("no answer".into()),
        }
    }

    /// `twinfs verify --online [--repair]` on node `i`: the request goes
    /// out; [`SimNode::verified`] holds the differences once answered.
    pub(crate) fn verify(&mut self, i: usize, repair: bool) -> Result<(), String> {
        let n = &mut self.nodes[i];
        n.core().may_verify()?;
        let local = n.host.store.digests();
        let req = VerifyRequest::new(1, &local);
        let payload = req.to_bytes();
        n.verifying = Some((req, local, repair));
        n.verified = None;
        self.send(i, Frame::VerifyRequest { payload });
        Ok(())
    }

    /// Node `from` sends `frame` as if its driver had (a hostile or buggy peer).
    pub(crate) fn inject(&mut self, from: usize, frame: Frame) {
        self.send(from, frame);
    }

    /// `twinfs demote` on node `i`.
    pub(crate) fn demote(&mut self, i: usize) -> Result<(), String> {
        let n = &mut self.nodes[i];
        n.core.as_mut().expect("running").demote(self.now)?;
        self.drive(i);
        match self.nodes[i].answers.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err("no answer".into()),
        }
    }

    /// A write of the filesystem mounted on node `i` (false: not writable).
    pub(crate) fn write(&mut self, i: usize, key: &str, value: &str) -> bool {
        let n = &mut self.nodes[i];
        let Some(core) = &mut n.core else {
            return false;
        };
        if core.role() != Role::Primary || !n.writes_open || !n.mounted {
            return false;
        }
        let seq = Seq(n.host.store.last + 1);
        let payload = encode(&[(key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))]);
        n.host.store.apply(seq, &payload);
        core.local_write(self.now, LocalWrite::Applied(seq, payload.into()));
        n.pending
            .push((seq, key.as_bytes().to_vec(), value.as_bytes().to_vec()));
        self.drive(i);
        true
    }

    /// An fsync on the filesystem mounted on node `i`: the local store syncs,
    /// then a flush barrier goes to the peer.
    pub(crate) fn fsync(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(core) = &mut n.core else { return };
        if core.role() != Role::Primary || !n.writes_open {
            return;
        }
        n.host.store.synced = n.host.store.last;
        core.local_write(self.now, LocalWrite::Flush);
        self.drive(i);
    }

    /// A machine crash of node `i`: the unsynced tail of its store is lost.
    pub(crate) fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.core = None;
        n.host.store.crash();
        n.writes_open = false;
        n.mounted = false;
        n.view = StandbyView::Off;
        n.pending.clear();
    }

    /// Node `i` starts again from its state file.
    pub(crate) fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let state = n.host.saved.clone();
        n.core = Some(NodeCore::new(n.cfg.clone(), state, &mut n.host));
        self.drive(i);
    }

    /// The records of node `i`'s store.
    pub(crate) fn records(&self, i: usize) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.nodes[i].host.store.records
    }
}

impl SimHost {
    /// The saved state, or `current` while a background save of the floor
    /// may lag (the floor alone may differ).
    fn saved_or(&self, current: &NodeState) -> NodeState {
        NodeState {
            floor: current.floor,
            ..self.saved.clone()
        }
    }
}
