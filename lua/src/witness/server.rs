//! `twinfs witness`: the diskless tie-breaker's UDP server.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::frame::{Frame, FrameError, Kind, Signer, Verifier, DEFAULT_MAX_SKEW, MAX_FRAME_LEN};
use super::keys::PublicKey;
use super::lease::LeaseTable;
use super::message::{Answer, Outcome, Request};
use super::{wall_ms, WitnessError};

/// How often `run` looks at the shutdown flag when no datagram comes.
const POLL: Duration = Duration::from_millis(100);
/// At most this many refusals are answered per second; the rest are only
/// counted, so the witness cannot be used to flood someone.
const REJECTIONS_PER_SEC: u32 = 20;

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
/// [`WitnessServer::run`] until the shutdown flag is set. Single-threaded: a
/// request costs one verification and one signature (~0.1 ms).
#[derive(Debug)]
pub struct WitnessServer {
    socket: UdpSocket,
    local: SocketAddr,
    signer: Signer,
    verifier: Verifier,
    table: LeaseTable,
    lease_ms: u32,
    rejections: (Instant, u32),
    /// Source and kind of the last refusal: a node that keeps sending the
    /// same refused request logs one warning, not one per request.
    last_refusal: Option<(SocketAddr, std::mem::Discriminant<FrameError>)>,
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
            rejections: (now, 0),
            last_refusal: None,
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

    /// Answers requests until `shutdown` is set (checked at least every 100 ms).
    pub fn run(mut self, shutdown: &AtomicBool) -> Result<(), WitnessError> {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        while !shutdown.load(Ordering::Relaxed) {
            let (n, from) = match self.socket.recv_from(&mut buf) {
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
                        addr: self.local,
                        what: "receive on",
                        error,
                    })
                }
            };
            if let Some(reply) = self.handle(&buf[..n], from, Instant::now(), wall_ms()) {
                if let Err(error) = self.socket.send_to(&reply, from) {
                    debug!(%from, %error, "cannot answer");
                }
            }
        }
        info!(listen = %self.local, "witness stopped");
        Ok(())
    }

    /// One datagram in, at most one signed answer out.
    fn handle(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let opened = self
            .verifier
            .open(bytes, Kind::WitnessRequest, now_ms)
            .and_then(|o| Ok((o.sender.to_owned(), Request::decode(o.body, o.sender)?)));
        let answer = match opened {
            Ok((sender, request)) => {
                let d = self.table.handle(now, &sender, request.op);
                debug!(%from, node = %sender, op = ?request.op, outcome = ?d.outcome, "witness request");
                Answer {
                    req_id: request.req_id,
                    outcome: d.outcome,
                    lease_ms: self.lease_ms,
                    peer_heard_ms: d.peer_heard_ago.map(ms_u32),
                    to: sender,
                    holder: d.holder.map(|(n, left)| (n, ms_u32(left))),
                    reason: String::new(),
                }
            }
            Err(error) => {
                let refusal = Some((from, std::mem::discriminant(&error)));
                if self.last_refusal != refusal {
                    warn!(%from, %error, "witness request refused");
                    self.last_refusal = refusal;
                } else {
                    debug!(%from, %error, "witness request refused");
                }
                // Answer only what parses as a frame, within the rate limit.
                let frame = Frame::decode(bytes).ok()?;
                if !self.rejection_allowed(now) {
                    return None;
                }
                Answer {
                    req_id: Request::peek_id(frame.body),
                    outcome: Outcome::Rejected,
                    lease_ms: self.lease_ms,
                    peer_heard_ms: None,
                    to: frame.sender.to_owned(),
                    holder: None,
                    reason: error.to_string(),
                }
            }
        };
        match self
            .signer
            .seal(Kind::WitnessAnswer, &answer.encode(), now_ms)
        {
            Ok(reply) => Some(reply),
            Err(error) => {
                warn!(%error, "witness cannot sign its answer");
                None
            }
        }
    }

    fn rejection_allowed(&mut self, now: Instant) -> bool {
        let (window, count) = &mut self.rejections;
        if now.saturating_duration_since(*window) >= Duration::from_secs(1) {
            *window = now;
            *count = 0;
        }
        *count += 1;
        *count <= REJECTIONS_PER_SEC
    }
}

fn ms_u32(d: Duration) -> u32 {
    // u32::MAX means "never" on the wire; clamp just below it.
    u32::try_from(d.as_millis())
        .unwrap_or(u32::MAX - 1)
        .min(u32::MAX - 1)
}
