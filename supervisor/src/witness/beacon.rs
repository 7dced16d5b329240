//! The beacon: signed heartbeats to and from the peer over the public network.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::frame::{Kind, Signer, Verifier, DEFAULT_MAX_SKEW, MAX_FRAME_LEN};
use super::intake::{Checks, Datagram, Gate, IntakeCounters, IntakeStats, Refusal, Refusals, Site};
use super::keys::PublicKey;
use super::message::Announce;
use super::wall_ms;

/// The longest the beacon thread sleeps between looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Why a beacon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BeaconError {
    /// A configuration value is unusable.
    #[error("{field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The socket could not be set up.
    #[error("cannot {what} the beacon socket: {error}")]
    Socket {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The thread could not be started.
    #[error("cannot start the beacon thread: {0}")]
    Thread(std::io::Error),
}

/// Who the peer is and how often to beat.
#[derive(Debug, Clone)]
pub struct BeaconConfig {
    /// The peer's node name.
    pub peer_name: String,
    /// The public key of the peer's certificate.
    pub peer_key: PublicKey,
    /// The peer's public address (its beacon socket).
    pub peer_addr: SocketAddr,
    /// Time between two heartbeats sent.
    pub interval: Duration,
    /// Allowed clock difference with the peer.
    pub max_skew: Duration,
}

impl BeaconConfig {
    /// Heartbeats to `peer_addr` every `interval`; skew 30 s.
    pub fn new(
        peer_name: &str,
        peer_key: PublicKey,
        peer_addr: SocketAddr,
        interval: Duration,
    ) -> BeaconConfig {
        BeaconConfig {
            peer_name: peer_name.to_owned(),
            peer_key,
            peer_addr,
            interval,
            max_skew: DEFAULT_MAX_SKEW,
        }
    }
}

/// The last heartbeat heard from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHeard {
    /// When it arrived (this machine's monotonic clock).
    pub at: Instant,
    /// Where it came from.
    pub from: SocketAddr,
    /// What the peer announced.
    pub announce: Announce,
}

/// A snapshot of the beacon, for `twinfs status` and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BeaconStatus {
    /// The last valid heartbeat from the peer.
    pub heard: Option<PeerHeard>,
    /// Heartbeats sent.
    pub sent: u64,
    /// Datagrams refused (bad signature, replay, clock skew, garbage) or
    /// dropped unverified (over their source's rate, verifier behind).
    pub rejected: u64,
    /// What the receiving side did, in detail (see [`IntakeStats`]).
    pub intake: IntakeStats,
    /// Why the last refused datagram was refused, with its source.
    pub last_rejection: Option<String>,
    /// The last error sending, if the last send failed (say, network unreachable).
    pub send_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    announce: Mutex<Announce>,
    status: Mutex<BeaconStatus>,
    refusals: Refusals,
}

impl Shared {
    /// Counts, logs (within the log limit) and remembers a refusal.
    fn refused(&self, from: SocketAddr, refusal: &Refusal, early: bool, now: Instant) {
        self.refusals.note(from, refusal, early, now);
        let mut st = lock(&self.status);
        st.rejected += 1;
        st.last_rejection = Some(format!("from {from}: {refusal}"));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in the beacon thread must not take the supervisor down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a signed heartbeat to the peer every interval and listens for the
/// peer's, on one UDP socket.
///
/// This is the second heartbeat path, over the public network, next to the
/// replication link's own: when the replication link is cut but the beacon
/// still hears the peer, the peer is alive and must not be taken over.
///
/// Two threads: one sends and receives, refusing hostile datagrams with
/// O(1) checks and a rate limit per source address (the configured peer's
/// address has a budget of its own); the other verifies signatures. A flood
/// of forged heartbeats naming the peer therefore cannot hold up the
/// receiving of the real ones (see the `intake` module). Dropping the beacon
/// stops both threads (within about 50 ms).
#[derive(Debug)]
pub struct Beacon {
    shared: Arc<Shared>,
    local: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Beacon {
    /// Starts beating on `socket` (already bound to this node's public
    /// address; port 0 in tests), announcing `announce` until changed.
    pub fn start(
        socket: UdpSocket,
        signer: Arc<Signer>,
        config: BeaconConfig,
        announce: Announce,
    ) -> Result<Beacon, BeaconError> {
        if config.interval < Duration::from_millis(1) {
            return Err(BeaconError::Config {
                field: "beacon.interval",
                reason: format!("{:?} is too short (at least 1 ms)", config.interval),
            });
        }
        if config.peer_name == signer.name() {
            return Err(BeaconError::Config {
                field: "beacon.peer_name",
                reason: format!("{:?} is this node's own name", config.peer_name),
            });
        }
        let local = socket.local_addr().map_err(|error| BeaconError::Socket {
            what: "read the address of",
            error,
        })?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            announce: Mutex::new(announce),
            status: Mutex::new(BeaconStatus::default()),
            refusals: Refusals::new(Site::Beacon, IntakeCounters::default()),
        });
        let checks = Arc::new(Checks::new(
            Verifier::new([(config.peer_name.clone(), config.peer_key)])
                .with_max_skew(config.max_skew),
            Kind::Heartbeat,
            shared.refusals.counters().clone(),
        ));
        let (gate, queue) = Gate::new(checks.clone(), &[config.peer_addr.ip()], Instant::now());
        let checker = Checker {
            queue,
            checks,
            shared: shared.clone(),
        };
        let worker = Worker {
            socket,
            signer,
            gate,
            peer_addr: config.peer_addr,
            interval: config.interval,
            shared: shared.clone(),
        };
        info!(%local, peer = %config.peer_addr, interval = ?config.interval, "beacon started");
        let mut beacon = Beacon {
            shared,
            local,
            threads: Vec::with_capacity(2),
        };
        // Started first, so that the worker always has someone to hand to;
        // on an error the drop of `beacon` stops what was started.
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(BeaconError::Thread)
        };
        beacon.threads.push(spawn(
            "twinfs-beacon-verify",
            Box::new(move || checker.run()),
        )?);
        beacon
            .threads
            .push(spawn("twinfs-beacon", Box::new(move || worker.run()))?);
        Ok(beacon)
    }

    /// What the next heartbeats announce.
    pub fn set_announce(&self, announce: Announce) {
        *lock(&self.shared.announce) = announce;
    }

    /// When a valid heartbeat of the peer last arrived.
    pub fn last_heard(&self) -> Option<Instant> {
        lock(&self.shared.status).heard.map(|h| h.at)
    }

    /// The peer's last heartbeat: when, from where, and what it announced.
    pub fn peer(&self) -> Option<PeerHeard> {
        lock(&self.shared.status).heard
    }

    /// Counters and the last problems.
    pub fn status(&self) -> BeaconStatus {
        let mut st = lock(&self.shared.status).clone();
        st.intake = self.shared.refusals.counters().snapshot();
        st
    }

    /// The local address heartbeats are sent from and received on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Beacon {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Both threads wake at least every STOP_POLL, so this is bounded.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The receive thread: sends the heartbeats, receives, refuses cheaply.
struct Worker {
    socket: UdpSocket,
    signer: Arc<Signer>,
    gate: Gate,
    peer_addr: SocketAddr,
    interval: Duration,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(mut self) {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        let mut next_send = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_send {
                self.send();
                // From now, not from the missed deadline: after a stall we
                // beat once, not a burst of catch-up beats.
                next_send = now + self.interval;
            }
            let wait = next_send
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), STOP_POLL);
            if let Err(error) = self.socket.set_read_timeout(Some(wait)) {
                self.note_send_error(format!("cannot set the read timeout: {error}"));
                std::thread::sleep(wait);
                continue;
            }
            // Errors are timeouts, and ICMP errors reported for earlier sends.
            if let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                let at = Instant::now();
                if let Err(refusal) = self.gate.admit(&buf[..n], from, at, wall_ms()) {
                    self.shared.refused(from, &refusal, true, at);
                }
            }
        }
        debug!("beacon stopped");
        // Dropping the gate (with self) ends the verifier thread's loop.
    }

    fn send(&self) {
        let announce = *lock(&self.shared.announce);
        let result = self
            .signer
            .seal(Kind::Heartbeat, &announce.encode(), wall_ms())
            .map_err(|e| e.to_string())
            .and_then(|frame| {
                self.socket
                    .send_to(&frame, self.peer_addr)
                    .map_err(|e| format!("cannot send to {}: {e}", self.peer_addr))
            });
        match result {
            Ok(_) => {
                let mut st = lock(&self.shared.status);
                st.sent += 1;
                if st.send_error.take().is_some() {
                    info!(peer = %self.peer_addr, "beacon sends again");
                }
            }
            Err(e) => self.note_send_error(e),
        }
    }

    fn note_send_error(&self, e: String) {
        let mut st = lock(&self.shared.status);
        if st.send_error.as_deref() != Some(e.as_str()) {
            warn!(error = %e, "beacon");
        }
        st.send_error = Some(e);
    }
}

/// The verifier thread: checks the signatures of what the worker queued.
struct Checker {
    queue: Receiver<Datagram>,
    checks: Arc<Checks>,
    shared: Arc<Shared>,
}

impl Checker {
    fn run(self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            match self.queue.recv_timeout(STOP_POLL) {
                Ok(d) => self.check(&d),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn check(&self, d: &Datagram) {
        let result = self
            .checks
            .verify(d)
            .and_then(|o| Announce::decode(o.body, o.sender));
        match result {
            Ok(announce) => {
                self.shared.refusals.accepted();
                // When it arrived, not when it was verified: the time spent
                // in the queue does not make the peer look fresher.
                lock(&self.shared.status).heard = Some(PeerHeard {
                    at: d.at,
                    from: d.from,
                    announce,
                });
            }
            Err(e) => self
                .shared
                .refused(d.from, &Refusal::Invalid(e), false, Instant::now()),
        }
    }
}
