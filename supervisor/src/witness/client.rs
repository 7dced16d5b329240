//! The node's side of the witness: ask, wait for the signed answer, report facts.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;
use tracing::debug;

use super::frame::{Kind, Signer, Verifier, DEFAULT_MAX_SKEW, MAX_FRAME_LEN};
use super::keys::PublicKey;
use super::message::{Answer, Op, Outcome, Request};
use super::{wall_ms, WitnessError};

/// How many requests one call sends at most (the second after half the
/// timeout, in case the first or its answer was lost).
const SENDS_PER_CALL: usize = 2;

/// Where the witness is and how it is trusted.
#[derive(Debug, Clone)]
pub struct WitnessClientConfig {
    /// The witness's address.
    pub witness_addr: SocketAddr,
    /// The name the witness signs its answers with.
    pub witness_name: String,
    /// The public key of the witness's certificate.
    pub witness_key: PublicKey,
    /// How long one call waits for an answer in total.
    pub timeout: Duration,
    /// Local address to send from (a given interface); `None`: any.
    pub bind: Option<SocketAddr>,
    /// Allowed clock difference with the witness.
    pub max_skew: Duration,
}

impl WitnessClientConfig {
    /// A witness at `addr` named `name` with key `key`; timeout 500 ms.
    pub fn new(addr: SocketAddr, name: &str, key: PublicKey) -> WitnessClientConfig {
        WitnessClientConfig {
            witness_addr: addr,
            witness_name: name.to_owned(),
            witness_key: key,
            timeout: Duration::from_millis(500),
            bind: None,
            max_skew: DEFAULT_MAX_SKEW,
        }
    }
}

/// The lease part of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// A ping: no lease asked for.
    NotAsked,
    /// Granted; this node may act as primary until `until` (its own,
    /// conservative view: see the safety argument in the module docs).
    Granted {
        /// The end of the lease in this node's clock.
        until: Instant,
    },
    /// Another node holds the lease (see [`WitnessAnswer::holder`]).
    Refused,
    /// The witness started less than one lease ago and grants only renewals
    /// to the node that already held the lease; ask again later.
    Grace,
    /// The lease was given up.
    Released,
}

/// Who holds the lease, in the witness's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The node's name.
    pub node: String,
    /// How long its lease still runs at the witness.
    pub remaining: Duration,
}

/// The facts one witness answer gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessAnswer {
    /// What happened to the lease.
    pub lease: LeaseStatus,
    /// How long ago the witness last heard the peer; `None`: not since it started.
    pub peer_heard_ago: Option<Duration>,
    /// Who holds the lease after this request.
    pub holder: Option<LeaseHolder>,
    /// The lease duration the witness applies.
    pub lease_duration: Duration,
    /// Round trip from sending the answered request to its answer.
    pub rtt: Duration,
}

/// One node's client of the witness. Blocking: each call waits at most the
/// configured timeout. Not shared between threads (`&mut self`).
#[derive(Debug)]
pub struct WitnessClient {
    socket: UdpSocket,
    signer: Arc<Signer>,
    verifier: Verifier,
    config: WitnessClientConfig,
    next_req_id: u64,
    granted_until: Option<Instant>,
}

impl WitnessClient {
    /// Binds a UDP socket for talking to the witness.
    pub fn new(
        signer: Arc<Signer>,
        config: WitnessClientConfig,
    ) -> Result<WitnessClient, WitnessError> {
        if config.timeout.is_zero() {
            return Err(WitnessError::Config {
                field: "witness.timeout",
                reason: "must be more than zero".to_owned(),
            });
        }
        let bind = config.bind.unwrap_or(match config.witness_addr {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        });
        let socket =
            UdpSocket::bind(bind).map_err(|error| WitnessError::Bind { addr: bind, error })?;
        // Connected: only the witness's datagrams arrive, and an ICMP "port
        // unreachable" shows up as ECONNREFUSED (the witness is not running).
        socket
            .connect(config.witness_addr)
            .map_err(|error| WitnessError::Socket {
                addr: config.witness_addr,
                what: "connect a UDP socket to",
                error,
            })?;
        let mut id = [0u8; 8];
        // A random first request id: a late answer meant for an earlier run
        // of this node cannot match a request of this one.
        let _ = ring::rand::SystemRandom::new().fill(&mut id);
        let verifier = Verifier::new([(config.witness_name.clone(), config.witness_key)])
            .with_max_skew(config.max_skew);
        Ok(WitnessClient {
            socket,
            signer,
            verifier,
            config,
            next_req_id: u64::from_be_bytes(id) >> 1,
            granted_until: None,
        })
    }

    /// Asks only whether the witness is there and hears the peer.
    pub fn ping(&mut self) -> Result<WitnessAnswer, WitnessError> {
        self.call(Op::Ping)
    }

    /// Asks for the primary lease, or to extend it: sends `Renew` while this
    /// node's own view of its lease has not expired, `Acquire` otherwise.
    /// Call it every third of the lease or so while primary.
    pub fn renew_lease(&mut self) -> Result<WitnessAnswer, WitnessError> {
        let holding = self.granted_until.is_some_and(|u| u > Instant::now());
        self.call(if holding { Op::Renew } else { Op::Acquire })
    }

    /// Gives the lease up (planned demotion), so the peer can take it now.
    pub fn release_lease(&mut self) -> Result<WitnessAnswer, WitnessError> {
        // Forget it first: even if the answer is lost we no longer use it.
        self.granted_until = None;
        self.call(Op::Release)
    }

    /// Until when this node holds the lease, in its own clock: the send time
    /// of the last granted request plus the lease, minus 1 %. `None` once
    /// refused or released. Compare with `Instant::now()`: an unreachable
    /// witness does not clear it, time does.
    pub fn lease_granted_until(&self) -> Option<Instant> {
        self.granted_until
    }

    fn call(&mut self, op: Op) -> Result<WitnessAnswer, WitnessError> {
        let addr = self.config.witness_addr;
        let start = Instant::now();
        let deadline = start + self.config.timeout;
        let resend_at = start + self.config.timeout / 2;
        let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(SENDS_PER_CALL);
        let mut last_problem = String::from("no answer");
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        // Bounded by the deadline; the count bound guards against a flood of
        // datagrams that are each handled without blocking.
        for _ in 0..10_000 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if sent.len() < SENDS_PER_CALL && (sent.is_empty() || now >= resend_at) {
                let req_id = self.next_req_id;
                self.next_req_id = self.next_req_id.wrapping_add(1);
                let frame = self.signer.seal(
                    Kind::WitnessRequest,
                    &Request { req_id, op }.encode(),
                    wall_ms(),
                )?;
                let sent_at = Instant::now();
                match self.socket.send(&frame) {
                    Ok(_) => {}
                    // Refused: an earlier ICMP error, or nothing listens. Keep
                    // going until the deadline; the witness may be starting.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        last_problem = format!("nothing listens there ({e})");
                    }
                    Err(error) => {
                        return Err(WitnessError::Socket {
                            addr,
                            what: "send to",
                            error,
                        })
                    }
                }
                sent.push((req_id, sent_at));
            }
            let wake = if sent.len() < SENDS_PER_CALL {
                resend_at.min(deadline)
            } else {
                deadline
            };
            let wait = wake.saturating_duration_since(Instant::now());
            // A zero timeout means "block forever" to the OS.
            let wait = wait.max(Duration::from_millis(1));
            self.socket
                .set_read_timeout(Some(wait))
                .map_err(|error| WitnessError::Socket {
                    addr,
                    what: "set the read timeout for",
                    error,
                })?;
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last_problem = format!("nothing listens there ({e})");
                    continue;
                }
                Err(error) => {
                    return Err(WitnessError::Socket {
                        addr,
                        what: "receive from",
                        error,
                    })
                }
            };
            let received = Instant::now();
            let answer = match self
                .verifier
                .open(&buf[..n], Kind::WitnessAnswer, wall_ms())
                .and_then(|o| Answer::decode(o.body, o.sender))
            {
                Ok(a) => a,
                Err(e) => {
                    debug!(witness = %addr, error = %e, "invalid witness answer");
                    last_problem = format!("invalid answer: {e}");
                    continue;
                }
            };
            let Some(&(_, sent_at)) = sent.iter().find(|(id, _)| *id == answer.req_id) else {
                // A late answer to an earlier call: authentic but stale.
                continue;
            };
            if answer.to != self.signer.name() {
                last_problem = format!(
                    "answer addressed to {:?}, this node is {:?}",
                    answer.to,
                    self.signer.name()
                );
                continue;
            }
            return self.accept(answer, op, sent_at, received);
        }
        Err(WitnessError::Unreachable {
            addr,
            timeout: self.config.timeout,
            requests: sent.len(),
            last_problem,
        })
    }

    fn accept(
        &mut self,
        answer: Answer,
        op: Op,
        sent_at: Instant,
        received: Instant,
    ) -> Result<WitnessAnswer, WitnessError> {
        let lease_duration = Duration::from_millis(u64::from(answer.lease_ms));
        let lease = match answer.outcome {
            Outcome::Rejected => {
                return Err(WitnessError::Rejected {
                    addr: self.config.witness_addr,
                    reason: answer.reason,
                })
            }
            Outcome::Pinged => LeaseStatus::NotAsked,
            Outcome::Granted => {
                // From the SEND time: the witness's expiry counts from its
                // receipt, which is later. The 1 % covers clock rates.
                let until = sent_at + lease_duration - lease_duration / 100;
                self.granted_until = Some(until);
                LeaseStatus::Granted { until }
            }
            Outcome::Refused => LeaseStatus::Refused,
            Outcome::Grace => LeaseStatus::Grace,
            Outcome::Released => LeaseStatus::Released,
        };
        if !matches!(lease, LeaseStatus::Granted { .. } | LeaseStatus::NotAsked) {
            self.granted_until = None;
        }
        debug!(?op, ?lease, "witness answered");
        Ok(WitnessAnswer {
            lease,
            peer_heard_ago: answer
                .peer_heard_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
            holder: answer.holder.map(|(node, ms)| LeaseHolder {
                node,
                remaining: Duration::from_millis(u64::from(ms)),
            }),
            lease_duration,
            rtt: received - sent_at,
        })
    }
}
