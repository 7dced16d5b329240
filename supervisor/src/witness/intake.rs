//! The receiving side of the beacon and the witness server, built to stay
//! responsive under a flood of hostile datagrams.
//!
//! Two threads per socket:
//!
//! - the **receive thread** reads datagrams and runs only O(1) checks on each
//!   ([`Gate::admit`]): size, magic, version, kind, known sender, clock
//!   window, boot id and replay counter against the last *accepted* frame
//!   ([`Verifier::precheck`]), then a rate limit per source address. The
//!   survivors go to the verifier thread through a bounded queue; when it is
//!   full the datagram is dropped and counted, never waited for.
//! - the **verifier thread** ([`verify`]) checks the ECDSA signature without
//!   holding the verifier's lock, and only then records the counter
//!   ([`Verifier::commit`]). A forged frame naming a trusted sender with a
//!   fresh counter therefore never moves the replay state.
//!
//! Addresses that sent an authentic frame (and the beacon's configured peer)
//! keep a budget of their own, so a flood from many other addresses cannot
//! crowd a node out of the shared budget of unknown ones.
//!
//! Refusals are counted ([`IntakeStats`]) and logged through a
//! [`LogLimiter`]: at most [`LOG_LINES_PER_SEC`] lines a second per class of
//! refusal ([`REFUSAL_CLASSES`] of them), each saying how many of its class
//! were suppressed before it.
//!
//! What this does not stop: a flooder that spoofs the source address of the
//! real peer shares that address's budget and can crowd its frames out. The
//! budget of every other address, and of the overflow of many addresses, is
//! separate from the peer's.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::warn;
use twinfs_replicator_proto::limit::{LogLimiter, PerSource, TokenBucket};

use super::frame::{Frame, FrameError, Kind, Opened, Verifier};

/// Frames a second that one source address may hand to the verifier. A node
/// sends a heartbeat every 100 ms to 1 s and asks the witness a few times a
/// second at most, so this leaves a margin of ten or more.
pub const RATE_PER_SOURCE: u32 = 100;
/// Frames one source address may send at once.
const BURST_PER_SOURCE: u32 = 20;
/// Unknown source addresses with their own budget; beyond that they share
/// one. With the rate above, everything unknown sources can hand to the
/// verifier is about 1,700 signature checks a second: a tenth of a core.
const MAX_SOURCES: usize = 16;
/// Known source addresses (configured, or that sent an authentic frame)
/// with a budget of their own whatever else arrives.
const MAX_KNOWN: usize = 8;
/// Datagrams waiting for the verifier at most; more are dropped.
const QUEUE_LEN: usize = 512;
/// Refusal log lines a second (and at once), per class of refusal (see
/// [`REFUSAL_CLASSES`]).
pub const LOG_LINES_PER_SEC: u32 = 1;
/// How many classes of refusal are logged separately: malformed datagrams,
/// unknown senders, stale frames (clock, replay, old boot), bad signatures,
/// datagrams dropped unverified (rate limit, verifier behind), and others.
pub const REFUSAL_CLASSES: u32 = 6;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one thread must not take the other (or the supervisor) down.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts of what the receiving side did, for the status and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntakeStats {
    /// Datagrams received.
    pub received: u64,
    /// Refused by the cheap checks (layout, kind, sender, clock, replay).
    pub refused_early: u64,
    /// Dropped: their source address was over its rate.
    pub over_rate: u64,
    /// Dropped: the verifier thread was behind (its queue was full).
    pub queue_full: u64,
    /// Signatures checked.
    pub signature_checks: u64,
    /// Refused by the verifier thread (mostly signatures that do not verify).
    pub refused_late: u64,
    /// Frames that passed every check.
    pub accepted: u64,
    /// Refusal log lines written.
    pub log_lines: u64,
    /// Refusal log lines suppressed by the log limit.
    pub log_suppressed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    refused_early: AtomicU64,
    over_rate: AtomicU64,
    queue_full: AtomicU64,
    signature_checks: AtomicU64,
    refused_late: AtomicU64,
    accepted: AtomicU64,
    log_lines: AtomicU64,
    log_suppressed: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A shared handle on the counters of one receiving side.
#[derive(Debug, Clone, Default)]
pub struct IntakeCounters(Arc<Counters>);

impl IntakeCounters {
    /// The counts now.
    pub fn snapshot(&self) -> IntakeStats {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IntakeStats {
            received: get(&c.received),
            refused_early: get(&c.refused_early),
            over_rate: get(&c.over_rate),
            queue_full: get(&c.queue_full),
            signature_checks: get(&c.signature_checks),
            refused_late: get(&c.refused_late),
            accepted: get(&c.accepted),
            log_lines: get(&c.log_lines),
            log_suppressed: get(&c.log_suppressed),
        }
    }
}

/// A datagram that passed the cheap checks, on its way to the verifier.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) bytes: Vec<u8>,
    pub(crate) from: SocketAddr,
    /// When it was received (not when it was verified).
    pub(crate) at: Instant,
    /// The wall clock when it was received, ms since 1970.
    pub(crate) wall_ms: u64,
}

/// Why the receiving side did not take a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// It failed a check.
    #[error(transparent)]
    Invalid(#[from] FrameError),
    /// Its source address sent more than its budget.
    #[error("over the limit of {RATE_PER_SOURCE} frames a second for its source address; dropped unverified")]
    OverRate,
    /// The verifier thread was behind.
    #[error("the signature verifier is behind ({QUEUE_LEN} frames waiting); dropped unverified")]
    QueueFull,
}

impl Refusal {
    /// The class of refusal, for the log limit: few enough that a flood
    /// mixing every kind of garbage still logs a few lines a second.
    fn class(&self) -> &'static str {
        use FrameError as E;
        match self {
            Refusal::Invalid(
                E::BadLength { .. }
                | E::BadMagic { .. }
                | E::BadVersion { .. }
                | E::UnknownKind { .. }
                | E::BadFieldLength { .. }
                | E::BadSenderName { .. }
                | E::BadBody { .. },
            ) => "malformed",
            Refusal::Invalid(E::UnknownSender { .. } | E::WrongKind { .. }) => "untrusted",
            Refusal::Invalid(E::ClockSkew { .. } | E::Replay { .. } | E::StaleBoot { .. }) => {
                "stale"
            }
            Refusal::Invalid(E::BadSignature { .. }) => "bad signature",
            Refusal::Invalid(E::Sign(_) | E::TooLong { .. }) => "other",
            Refusal::OverRate | Refusal::QueueFull => "dropped",
        }
    }
}

/// Where a refusal happened, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    /// The beacon.
    Beacon,
    /// The witness server.
    Witness,
}

/// Counts and logs refusals, both threads sharing it.
#[derive(Debug)]
pub(crate) struct Refusals {
    site: Site,
    counters: IntakeCounters,
    log: Mutex<LogLimiter>,
}

impl Refusals {
    pub(crate) fn new(site: Site, counters: IntakeCounters) -> Refusals {
        Refusals {
            site,
            counters,
            log: Mutex::new(LogLimiter::new(LOG_LINES_PER_SEC)),
        }
    }

    pub(crate) fn counters(&self) -> &IntakeCounters {
        &self.counters
    }

    /// Counts a refusal and logs it if its kind is within the log limit.
    pub(crate) fn note(&self, from: SocketAddr, refusal: &Refusal, early: bool, now: Instant) {
        let c = &self.counters.0;
        bump(match (refusal, early) {
            (Refusal::OverRate, _) => &c.over_rate,
            (Refusal::QueueFull, _) => &c.queue_full,
            (Refusal::Invalid(_), true) => &c.refused_early,
            (Refusal::Invalid(_), false) => &c.refused_late,
        });
        let Some(suppressed) = lock(&self.log).admit(refusal.class(), now) else {
            bump(&c.log_suppressed);
            return;
        };
        bump(&c.log_lines);
        match self.site {
            Site::Beacon => {
                warn!(%from, error = %refusal, suppressed, "beacon datagram refused")
            }
            Site::Witness => {
                warn!(%from, error = %refusal, suppressed, "witness request refused")
            }
        }
    }

    pub(crate) fn accepted(&self) {
        bump(&self.counters.0.accepted);
    }
}

/// The checks both threads share: the verifier (its replay state), and the
/// addresses that sent authentic frames.
#[derive(Debug)]
pub(crate) struct Checks {
    verifier: Mutex<Verifier>,
    kind: Kind,
    /// Per trusted sender, the address its last authentic frame came from.
    known: Mutex<Vec<(String, IpAddr)>>,
    counters: IntakeCounters,
}

impl Checks {
    /// Checks for frames of `kind`.
    pub(crate) fn new(verifier: Verifier, kind: Kind, counters: IntakeCounters) -> Checks {
        Checks {
            verifier: Mutex::new(verifier),
            kind,
            known: Mutex::new(Vec::new()),
            counters,
        }
    }

    fn is_known(&self, ip: IpAddr) -> bool {
        lock(&self.known).iter().any(|(_, k)| *k == ip)
    }

    /// The verifier thread's half: every check again, the signature outside
    /// the lock, then the counter recorded and the source address learnt.
    /// The receive thread never waits for a signature check, only for the
    /// O(1) sections under the lock.
    pub(crate) fn verify<'d>(&self, d: &'d Datagram) -> Result<Opened<'d>, FrameError> {
        let frame = Frame::decode(&d.bytes)?;
        let key = lock(&self.verifier).precheck(&frame, self.kind, d.wall_ms)?;
        bump(&self.counters.0.signature_checks);
        let authentic = frame.authenticate(key)?;
        lock(&self.verifier).commit(authentic, self.kind, d.wall_ms)?;
        let ip = d.from.ip();
        let mut known = lock(&self.known);
        match known.iter_mut().find(|(n, _)| n == frame.sender) {
            Some((_, k)) => *k = ip,
            // Bounded by the number of trusted senders.
            None => known.push((frame.sender.to_owned(), ip)),
        }
        Ok(Opened {
            sender: frame.sender,
            boot_id: frame.boot_id,
            counter: frame.counter,
            wall_ms: frame.wall_ms,
            body: frame.body,
        })
    }
}

/// The receive thread's half: cheap checks, rate limits, the queue.
#[derive(Debug)]
pub(crate) struct Gate {
    checks: Arc<Checks>,
    /// Addresses with a budget of their own whatever else arrives.
    pinned: Vec<IpAddr>,
    /// The budgets of known addresses (pinned, or learnt by [`Checks::verify`]).
    known: Vec<(IpAddr, TokenBucket)>,
    limits: PerSource<IpAddr>,
    queue: SyncSender<Datagram>,
}

impl Gate {
    /// A gate in front of `checks`, with the addresses in `pinned` known
    /// from the start, and the queue's receiving end for the verifier
    /// thread. Dropping the gate ends the verifier thread's loop.
    pub(crate) fn new(
        checks: Arc<Checks>,
        pinned: &[IpAddr],
        now: Instant,
    ) -> (Gate, Receiver<Datagram>) {
        let (queue, rx) = sync_channel(QUEUE_LEN);
        let gate = Gate {
            checks,
            pinned: pinned.to_vec(),
            known: Vec::new(),
            limits: PerSource::new(RATE_PER_SOURCE, BURST_PER_SOURCE, MAX_SOURCES, now),
            queue,
        };
        (gate, rx)
    }

    /// Takes one datagram: O(1) checks, then the rate limit of its source,
    /// then the verifier's queue. Never blocks on a signature check. `Err`
    /// says why it was not queued; the caller reports it ([`Refusals::note`]).
    pub(crate) fn admit(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        at: Instant,
        wall_ms: u64,
    ) -> Result<(), Refusal> {
        let checks = &self.checks;
        bump(&checks.counters.0.received);
        let frame = Frame::decode(bytes)?;
        lock(&checks.verifier).precheck(&frame, checks.kind, wall_ms)?;
        // Only frames that would cost a signature check use up a budget:
        // garbage is refused above for the price of a comparison.
        if !self.take(from.ip(), at) {
            return Err(Refusal::OverRate);
        }
        let datagram = Datagram {
            bytes: bytes.to_vec(),
            from,
            at,
            wall_ms,
        };
        match self.queue.try_send(datagram) {
            Ok(()) => Ok(()),
            // Disconnected: the verifier thread is gone (stopping); the
            // datagram is dropped all the same.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Refusal::QueueFull),
        }
    }

    /// One token from the budget of `ip`: its own if it is known, else the
    /// one for unknown addresses.
    fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if let Some((_, bucket)) = self.known.iter_mut().find(|(k, _)| *k == ip) {
            return bucket.take(now);
        }
        if self.pinned.contains(&ip) || self.checks.is_known(ip) {
            if self.known.len() == MAX_KNOWN {
                // A node that moved: its old address is the oldest entry.
                self.known.remove(0);
            }
            let mut bucket = TokenBucket::new(RATE_PER_SOURCE, BURST_PER_SOURCE, now);
            let taken = bucket.take(now);
            self.known.push((ip, bucket));
            return taken;
        }
        self.limits.admit(&ip, now)
    }
}
