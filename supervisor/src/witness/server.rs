//! `twinfs witness`: the diskless tie-breaker's UDP server.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use twinfs_replicator_proto::limit::TokenBucket;

use super::frame::{Frame, FrameError, Kind, Signer, Verifier, DEFAULT_MAX_SKEW, MAX_FRAME_LEN};
use super::intake::{Checks, Datagram, Gate, IntakeCounters, Refusal, Refusals, Site};
use super::keys::PublicKey;
use super::lease::LeaseTable;
use super::message::{Answer, Outcome, Request};
use super::{wall_ms, WitnessError};

/// How often `run` looks at the shutdown flag when no datagram comes.
const POLL: Duration = Duration::from_millis(100);
/// At most this many refusals are answered per second; the rest are only
/// counted, so the witness cannot be used to flood someone.
const REJECTIONS_PER_SEC: u32 = 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the witness serves.
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    /// The two nodes, each with the public key of its certificate.
    pub nodes: Vec<(String, PublicKey)>,
    /// How long a grant or renewal is valid after the witness receives it.
    pub lease: Duration,
    /// After a start, only renewals are granted for this long. It must be at
    /// least the lease of the previous run (leases it granted may still run
    /// on a node); [`WitnessConfig::new`] sets it to the lease.
    pub startup_grace: Duration,
    /// Allowed clock difference with the nodes.
    pub max_skew: Duration,
}

impl WitnessConfig {
    /// The two nodes and the lease; grace = lease, skew = 30 s.
    pub fn new(nodes: Vec<(String, PublicKey)>, lease: Duration) -> WitnessConfig {
        WitnessConfig {
            nodes,
            lease,
            startup_grace: lease,
            max_skew: DEFAULT_MAX_SKEW,
        }
    }

    fn validate(&self, own_name: &str) -> Result<(), WitnessError> {
        let cfg = |field, reason: String| Err(WitnessError::Config { field, reason });
        if self.nodes.len() != 2 {
            return cfg(
                "witness.nodes",
                format!(
                    "a witness serves exactly two nodes, {} given",
                    self.nodes.len()
                ),
            );
        }
        if self.nodes[0].0 == self.nodes[1].0 {
            return cfg(
                "witness.nodes",
                format!("both nodes are named {:?}", self.nodes[0].0),
            );
        }
        if let Some((n, _)) = self.nodes.iter().find(|(n, _)| n == own_name) {
            return cfg(
                "witness.nodes",
                format!("node {n:?} has the witness's own name"),
            );
        }
        if self.nodes[0].1 == self.nodes[1].1 {
            return cfg(
                "witness.nodes",
                format!(
                    "{:?} and {:?} have the same key {}: each node needs its own certificate",
                    self.nodes[0].0, self.nodes[1].0, self.nodes[0].1
                ),
            );
        }
        let lease_ms = self.lease.as_millis();
        if !(10..=u128::from(u32::MAX)).contains(&lease_ms) {
            return cfg(
                "witness.lease",
                format!("{:?} is outside 10 ms ..= 49 days", self.lease),
            );
        }
        Ok(())
    }
}

/// The witness: answers lease requests of the two nodes over UDP.
///
/// Bind with [`WitnessServer::bind`] (port 0 in tests), then
/// [`WitnessServer::run`] until the shutdown flag is set. Two threads: the
/// receiving one refuses hostile datagrams with O(1) checks and a rate limit
/// per source address and answers those refusals (within a budget); the
/// other verifies signatures, keeps the lease table and answers the rest. A
/// flood of forged requests therefore cannot hold up the receiving of the
/// nodes' renewals (see the `intake` module).
#[derive(Debug)]
pub struct WitnessServer {
    socket: UdpSocket,
    local: SocketAddr,
    signer: Signer,
    verifier: Verifier,
    table: LeaseTable,
    lease_ms: u32,
    counters: IntakeCounters,
}

/// What both threads of a running witness share.
#[derive(Debug)]
struct Shared<'a> {
    socket: &'a UdpSocket,
    signer: &'a Signer,
    lease_ms: u32,
    refusals: Refusals,
    /// Signed refusal answers left this second, for both threads together.
    rejections: Mutex<TokenBucket>,
}

impl WitnessServer {
    /// Validates the configuration and binds the UDP socket.
    pub fn bind(
        listen: SocketAddr,
        signer: Signer,
        config: WitnessConfig,
    ) -> Result<WitnessServer, WitnessError> {
        config.validate(signer.name())?;
        let socket = UdpSocket::bind(listen).map_err(|error| WitnessError::Bind {
            addr: listen,
            error,
        })?;
        let local = socket.local_addr().map_err(|error| WitnessError::Socket {
            addr: listen,
            what: "read the bound address of",
            error,
        })?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|error| WitnessError::Socket {
                addr: local,
                what: "set the read timeout of",
                error,
            })?;
        let names: Vec<String> = config.nodes.iter().map(|(n, _)| n.clone()).collect();
        let now = Instant::now();
        info!(
            listen = %local,
            nodes = ?names,
            lease = ?config.lease,
            grace = ?config.startup_grace,
            "witness listening"
        );
        Ok(WitnessServer {
            socket,
            local,
            verifier: Verifier::new(config.nodes).with_max_skew(config.max_skew),
            table: LeaseTable::new(now, &names, config.lease, config.startup_grace),
            lease_ms: u32::try_from(config.lease.as_millis()).unwrap_or(u32::MAX),
            signer,
            counters: IntakeCounters::default(),
        })
    }

    /// Binds and runs until `shutdown` is set: `twinfs witness`.
    pub fn serve(
        listen: SocketAddr,
        signer: Signer,
        config: WitnessConfig,
        shutdown: &AtomicBool,
    ) -> Result<(), WitnessError> {
        Self::bind(listen, signer, config)?.run(shutdown)
    }

    /// The address the witness listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle on the counters of refused, dropped and accepted requests,
    /// valid while and after the server runs.
    pub fn counters(&self) -> IntakeCounters {
        self.counters.clone()
    }

    /// Answers requests until `shutdown` is set (checked at least every 100 ms).
    pub fn run(self, shutdown: &AtomicBool) -> Result<(), WitnessError> {
        let WitnessServer {
            socket,
            local,
            signer,
            verifier,
            table,
            lease_ms,
            counters,
        } = self;
        let now = Instant::now();
        let shared = Shared {
            socket: &socket,
            signer: &signer,
            lease_ms,
            refusals: Refusals::new(Site::Witness, counters.clone()),
            rejections: Mutex::new(TokenBucket::new(
                REJECTIONS_PER_SEC,
                REJECTIONS_PER_SEC,
                now,
            )),
        };
        let checks = Arc::new(Checks::new(verifier, Kind::WitnessRequest, counters));
        let (gate, queue) = Gate::new(checks.clone(), &[], now);
        let result = std::thread::scope(|s| {
            let shared = &shared;
            let checks = &checks;
            let checker = std::thread::Builder::new()
                .name("twinfs-witness-verify".to_owned())
                .spawn_scoped(s, move || check_loop(shared, checks, table, queue))
                .map_err(|error| WitnessError::Socket {
                    addr: local,
                    what: "start the verifier thread for",
                    error,
                })?;
            let result = receive_loop(shared, local, gate, shutdown);
            // The gate is gone with receive_loop: the checker's queue is
            // disconnected, and it stops once it has drained it.
            let _ = checker.join();
            result
        });
        info!(listen = %local, "witness stopped");
        result
    }
}

/// The receiving thread: cheap checks, rate limits, refusal answers.
fn receive_loop(
    shared: &Shared<'_>,
    local: SocketAddr,
    mut gate: Gate,
    shutdown: &AtomicBool,
) -> Result<(), WitnessError> {
    let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
    while !shutdown.load(Ordering::Relaxed) {
        let (n, from) = match shared.socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(error) => {
                return Err(WitnessError::Socket {
                    addr: local,
                    what: "receive on",
                    error,
                })
            }
        };
        let (at, now_ms) = (Instant::now(), wall_ms());
        if let Err(refusal) = gate.admit(&buf[..n], from, at, now_ms) {
            shared.refusals.note(from, &refusal, true, at);
            if let Refusal::Invalid(error) = refusal {
                shared.answer_refusal(&buf[..n], from, &error, at, now_ms);
            }
        }
    }
    Ok(())
}

/// The verifier thread: signatures, the lease table, the answers.
fn check_loop(
    shared: &Shared<'_>,
    checks: &Checks,
    mut table: LeaseTable,
    queue: Receiver<Datagram>,
) {
    // Ends when the receiving thread drops the gate (the sending end).
    for d in queue {
        let opened = checks
            .verify(&d)
            .and_then(|o| Ok((o.sender.to_owned(), Request::decode(o.body, o.sender)?)));
        let (sender, request) = match opened {
            Ok(x) => x,
            Err(error) => {
                let now = Instant::now();
                shared
                    .refusals
                    .note(d.from, &Refusal::Invalid(error.clone()), false, now);
                shared.answer_refusal(&d.bytes, d.from, &error, now, d.wall_ms);
                continue;
            }
        };
        shared.refusals.accepted();
        // The time of receipt: a lease runs from when the witness received
        // the request, and the queue's delay must not lengthen it.
        let decision = table.handle(d.at, &sender, request.op);
        debug!(from = %d.from, node = %sender, op = ?request.op, outcome = ?decision.outcome, "witness request");
        let answer = Answer {
            req_id: request.req_id,
            outcome: decision.outcome,
            lease_ms: shared.lease_ms,
            peer_heard_ms: decision.peer_heard_ago.map(ms_u32),
            to: sender,
            holder: decision.holder.map(|(n, left)| (n, ms_u32(left))),
            reason: String::new(),
        };
        shared.send(&answer, d.from, d.wall_ms);
    }
}

impl Shared<'_> {
    /// Tells the sender why its request was refused, if the datagram parses
    /// as a frame and the budget of signed refusals allows.
    fn answer_refusal(
        &self,
        bytes: &[u8],
        from: SocketAddr,
        error: &FrameError,
        now: Instant,
        now_ms: u64,
    ) {
        let Ok(frame) = Frame::decode(bytes) else {
            return;
        };
        if !lock(&self.rejections).take(now) {
            return;
        }
        let answer = Answer {
            req_id: Request::peek_id(frame.body),
            outcome: Outcome::Rejected,
            lease_ms: self.lease_ms,
            peer_heard_ms: None,
            to: frame.sender.to_owned(),
            holder: None,
            reason: error.to_string(),
        };
        self.send(&answer, from, now_ms);
    }

    /// Signs and sends one answer.
    fn send(&self, answer: &Answer, to: SocketAddr, now_ms: u64) {
        match self
            .signer
            .seal(Kind::WitnessAnswer, &answer.encode(), now_ms)
        {
            Ok(reply) => {
                if let Err(error) = self.socket.send_to(&reply, to) {
                    debug!(%to, %error, "cannot answer");
                }
            }
            Err(error) => warn!(%error, "witness cannot sign its answer"),
        }
    }
}

fn ms_u32(d: Duration) -> u32 {
    // u32::MAX means "never" on the wire; clamp just below it.
    u32::try_from(d.as_millis())
        .unwrap_or(u32::MAX - 1)
        .min(u32::MAX - 1)
}
