//! The QUIC transport: one endpoint per node, mutually authenticated
//! connections to the peer, and bidirectional streams of [`Frame`]s.
//!
//! [`endpoint`] binds the UDP socket and serves as both client and server (either
//! node may dial the other). [`connect`] and [`accept`] return a connection only
//! once the TLS handshake has passed the pinned-certificate check of
//! [`crate::tls`]. [`FrameStream`] carries frames over one QUIC stream, using the
//! codec of `twinfs-replicator-proto`; it holds no protocol state.
//!
//! A TLS 1.3 client finishes its handshake before the server has checked the
//! client certificate, so a client that the server refuses still gets a
//! connection from [`connect`]; the refusal (with the server's reason) arrives
//! as the error of the first stream operation.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use twinfs_replicator_proto::{Frame, FrameError, HEADER_LEN, MAX_BODY_LEN, MAX_PAYLOAD_LEN};

use crate::tls::{self, Identity, PeerTrust, TlsError};

mod acceptor;
pub use acceptor::{
    AcceptPolicy, AcceptStats, Acceptor, INCOMING_BUFFER, LOG_PER_SECOND, MAX_HANDSHAKES,
    MAX_INCOMING,
};

/// UDP socket send and receive buffer size. The OS defaults lost packets under
/// replication load in a measurement here; QUIC recovers them, at a cost.
const SOCKET_BUFFER: usize = 4 << 20;

/// Per-stream flow-control window: how much the peer may send ahead of what
/// this node has read. Several 1 MiB mutations fit.
const STREAM_WINDOW: u32 = 16 << 20;

/// Initial congestion window (bytes): a 1 MiB mutation goes out at once on a
/// fresh connection; loss still shrinks it as usual.
const INITIAL_WINDOW: u64 = 2 << 20;

/// Largest UDP payload MTU discovery tries, and the largest this endpoint
/// announces it accepts. quinn sends up to 10 datagrams per GSO `sendmsg`,
/// and the kernel takes at most 64 KiB in one: 10 × 6500 fits, while 10 × 8952
/// (a full jumbo frame) fails and quinn then gives up GSO. On a replication
/// link with jumbo frames (MTU 9000) discovery settles here, a 1 MiB mutation
/// is ~160 datagrams instead of ~730, and the pair spends about 15 % less CPU
/// per MiB (BENCHMARKS.md); on a 1500-byte link it settles at 1452 as before.
const MAX_UDP_PAYLOAD: u16 = 6500;

/// Packets the peer may receive before it must send a QUIC acknowledgement.
const ACK_EVERY: u32 = 16;

/// Application close code for a deliberate shutdown.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Application close code: the peer sent bytes that are not a valid frame.
pub const CLOSE_BAD_FRAME: VarInt = VarInt::from_u32(1);
/// Application close code: any other transport or protocol error.
pub const CLOSE_ERROR: VarInt = VarInt::from_u32(2);

/// Longest close reason sent: it must fit in one packet with room to spare.
const MAX_CLOSE_REASON: usize = 200;
/// The most a frame receiver reserves ahead of the bytes that arrived.
const RESERVE_STEP: usize = 1 << 20;
/// Frames shorter than this are copied out of the receive buffer; longer ones
/// get a buffer of their own and go on as a view of it (see [`Received::memory`]).
const COPY_BELOW: usize = 64 << 10;

/// QUIC liveness settings, the same on both nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportOptions {
    /// Interval of QUIC keep-alive packets on an idle connection.
    pub keepalive: Duration,
    /// A connection that hears nothing from the peer for this long is lost.
    pub idle_timeout: Duration,
}

impl Default for TransportOptions {
    /// 1 s keep-alive, 10 s idle timeout.
    fn default() -> Self {
        TransportOptions {
            keepalive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// The longest a handshake may take whatever the idle timeout.
const MAX_HANDSHAKE_TIME: Duration = Duration::from_secs(3);

impl TransportOptions {
    /// How long one handshake may take, dialing or accepting: half the idle
    /// timeout, at most 3 s. The real peer's takes a few milliseconds on a
    /// LAN; a silent stranger holds a slot no longer than this, and a dial
    /// sent into a cut link is given up soon enough to try again within one
    /// deadtime of the link's return.
    pub fn handshake_timeout(&self) -> Duration {
        (self.idle_timeout / 2).min(MAX_HANDSHAKE_TIME)
    }

    /// Checks that the keep-alive is non-zero and shorter than the idle timeout.
    ///
    /// Otherwise an idle but healthy connection would time out (and a zero idle
    /// timeout would mean "never" to QUIC).
    pub fn validate(&self) -> Result<(), TransportError> {
        if self.keepalive.is_zero() || self.keepalive >= self.idle_timeout {
            return Err(TransportError::BadOptions {
                keepalive: self.keepalive,
                idle_timeout: self.idle_timeout,
            });
        }
        Ok(())
    }

    /// The quinn transport configuration for these options.
    pub(crate) fn quinn_transport(&self) -> quinn::TransportConfig {
        let mut config = quinn::TransportConfig::default();
        config.keep_alive_interval(Some(self.keepalive));
        // Only timeouts beyond 2^62 ms fail to convert; the maximum is as good.
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(VarInt::MAX));
        config.max_idle_timeout(Some(idle));
        // A replication link is a LAN or a private cable: fast, short, with one
        // busy stream. quinn's defaults are sized for the internet (a 1.25 MB
        // stream window, 14 KB initial congestion window, datagrams of at most
        // 1452 bytes); these let a 1 MiB mutation go out in one flight and let
        // MTU discovery use jumbo frames where the link has them.
        config.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
        config.receive_window(VarInt::from_u32(2 * STREAM_WINDOW));
        config.send_window(2 * u64::from(STREAM_WINDOW));
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(INITIAL_WINDOW);
        config.congestion_controller_factory(Arc::new(cubic));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        config.mtu_discovery_config(Some(mtu));
        // Ask the peer for one QUIC acknowledgement per ACK_EVERY packets
        // instead of one per two: a 1 MiB mutation is hundreds of packets, and
        // each acknowledgement costs both sides a packet's work. (Replication
        // acknowledgements are frames of their own, sent at once; this only
        // delays QUIC's bookkeeping.)
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(VarInt::from_u32(ACK_EVERY));
        acks.max_ack_delay(Some(Duration::from_millis(1)));
        config.ack_frequency_config(Some(acks));
        config
    }
}

/// A transport failure. Every variant that involves the peer names its address.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// [`TransportOptions::validate`] failed.
    #[error("transport keepalive ({keepalive:?}) must be non-zero and shorter than idle_timeout ({idle_timeout:?})")]
    BadOptions {
        /// The configured keep-alive interval.
        keepalive: Duration,
        /// The configured idle timeout.
        idle_timeout: Duration,
    },
    /// The certificate, key or pin cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// [`endpoint`] was called outside a tokio runtime.
    #[error("the QUIC endpoint must be created inside a tokio runtime")]
    NoRuntime,
    /// The UDP socket cannot be set up.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address to listen on.
        addr: SocketAddr,
        /// The OS error.
        error: io::Error,
    },
    /// The connection attempt could not even start.
    #[error("cannot connect to {peer}: {error}")]
    Connect {
        /// The peer's address.
        peer: SocketAddr,
        /// quinn's error.
        error: quinn::ConnectError,
    },
    /// This node refused an incoming connection (certificate, ALPN, protocol).
    #[error("refused replication connection from {peer}: {}", describe(.error))]
    Refused {
        /// The remote address.
        peer: SocketAddr,
        /// Why, as quinn reports it.
        error: ConnectionError,
    },
    /// A handshake failed otherwise: the peer refused us, timed out, or we
    /// refused the server we dialled.
    #[error("replication handshake with {peer} failed: {}", describe(.error))]
    Handshake {
        /// The remote address.
        peer: SocketAddr,
        /// Why, as quinn reports it.
        error: ConnectionError,
    },
    /// An incoming handshake did not finish in time and was abandoned.
    #[error("replication handshake with {peer} did not finish within {after:?}; abandoned")]
    HandshakeTimeout {
        /// The remote address.
        peer: SocketAddr,
        /// The deadline it missed.
        after: Duration,
    },
    /// An established connection ended.
    #[error("connection to {peer} lost: {}", describe(.error))]
    ConnectionLost {
        /// The remote address.
        peer: SocketAddr,
        /// Why, as quinn reports it.
        error: ConnectionError,
    },
    /// The peer abandoned its side of the stream.
    #[error("{peer} reset the replication stream (code {code})")]
    StreamReset {
        /// The remote address.
        peer: SocketAddr,
        /// The peer's error code.
        code: VarInt,
    },
    /// The peer stopped reading the stream.
    #[error("{peer} stopped reading the replication stream (code {code})")]
    StreamStopped {
        /// The remote address.
        peer: SocketAddr,
        /// The peer's error code.
        code: VarInt,
    },
    /// The stream was used after it was finished, or another local misuse.
    #[error("replication stream with {peer} failed: {reason}")]
    Stream {
        /// The remote address.
        peer: SocketAddr,
        /// quinn's error text.
        reason: String,
    },
    /// The peer sent bytes that are not a valid frame; close the connection.
    #[error("bad frame from {peer}: {error}")]
    BadFrame {
        /// The remote address.
        peer: SocketAddr,
        /// The codec's error.
        error: FrameError,
    },
    /// The peer finished the stream in the middle of a frame; close the connection.
    #[error(
        "{peer} ended the replication stream inside a frame ({buffered} bytes of it received)"
    )]
    Truncated {
        /// The remote address.
        peer: SocketAddr,
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
    /// A mutation too large for one frame was given to [`FrameStream::send`].
    #[error("cannot send a mutation of {len} bytes to {peer}: a frame carries at most {max}")]
    FrameTooLarge {
        /// The remote address.
        peer: SocketAddr,
        /// The payload length.
        len: usize,
        /// [`MAX_PAYLOAD_LEN`].
        max: usize,
    },
}

impl TransportError {
    /// The peer's address, if the error involves one.
    pub fn peer(&self) -> Option<SocketAddr> {
        use TransportError::*;
        match self {
            Connect { peer, .. }
            | Refused { peer, .. }
            | Handshake { peer, .. }
            | HandshakeTimeout { peer, .. }
            | ConnectionLost { peer, .. }
            | StreamReset { peer, .. }
            | StreamStopped { peer, .. }
            | Stream { peer, .. }
            | BadFrame { peer, .. }
            | Truncated { peer, .. }
            | FrameTooLarge { peer, .. } => Some(*peer),
            BadOptions { .. } | Tls(_) | NoRuntime | Listen { .. } => None,
        }
    }
}

/// Explains a connection error for a log line.
///
/// quinn reports TLS failures as QUIC crypto errors (0x100 + TLS alert) whose
/// reason is rustls's error text; the peer receives the same text in the
/// CONNECTION_CLOSE frame. Both sides therefore see the verifier's reason.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::TransportError(e) => match tls_alert(e.code.into()) {
            Some(alert) => tls_reason(alert, &e.reason),
            None => e.to_string(),
        },
        ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code.into()) {
            Some(alert) => format!(
                "the peer refused the TLS handshake: {}",
                tls_reason(alert, &String::from_utf8_lossy(&close.reason))
            ),
            None => error.to_string(),
        },
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            format!("closed by peer (code {}): {reason}", close.error_code)
        }
        _ => error.to_string(),
    }
}

/// The TLS alert inside a QUIC crypto error code, if it is one.
fn tls_alert(code: u64) -> Option<u8> {
    (0x100..0x200)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

fn tls_reason(alert: u8, reason: &str) -> String {
    const NO_APPLICATION_PROTOCOL: u8 = 120;
    if alert == NO_APPLICATION_PROTOCOL {
        let alpn = String::from_utf8_lossy(tls::ALPN);
        return format!("no common application protocol: the client does not speak {alpn}");
    }
    // rustls 0.23 prints `CertificateError::Other` (which carries the pin
    // verifier's reason) as `Other(OtherError(…))`; show only the reason.
    let reason = reason
        .strip_prefix("invalid peer certificate: Other(OtherError(")
        .and_then(|r| r.strip_suffix("))"))
        .unwrap_or(reason);
    if reason.is_empty() {
        format!("TLS alert {alert}")
    } else {
        reason.to_owned()
    }
}

/// Binds `listen` and creates this node's QUIC endpoint.
///
/// The endpoint accepts connections presenting the pinned peer certificate and
/// dials out with `identity` by default. Must be called inside a tokio runtime.
pub fn endpoint(
    listen: SocketAddr,
    identity: &Identity,
    trust: &PeerTrust,
    opts: &TransportOptions,
) -> Result<Endpoint, TransportError> {
    opts.validate()?;
    let transport = Arc::new(opts.quinn_transport());
    let mut server = tls::server_config(identity, trust, transport.clone())?;
    acceptor::limit_incoming(&mut server);
    let client = tls::client_config(identity, trust, transport)?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TransportError::NoRuntime);
    }
    let listen_err = |error| TransportError::Listen {
        addr: listen,
        error,
    };
    let socket = udp_socket(listen).map_err(listen_err)?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's limits");
    let mut endpoint = Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(listen_err)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A non-blocking UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized buffers.
fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    // Linux silently caps the sizes at net.core.{w,r}mem_max (and reports
    // twice the granted size); say so rather than lose packets quietly.
    let (send, recv) = (socket.send_buffer_size()?, socket.recv_buffer_size()?);
    if send < SOCKET_BUFFER || recv < SOCKET_BUFFER {
        tracing::warn!(
            %addr,
            send,
            recv,
            wanted = SOCKET_BUFFER,
            "UDP socket buffers are smaller than wanted; raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Dials the peer and completes the TLS handshake.
///
/// A server that refuses this node's certificate may do so only after this
/// returns (see the module documentation).
pub async fn connect(endpoint: &Endpoint, peer: SocketAddr) -> Result<Connection, TransportError> {
    let connecting = endpoint
        .connect(peer, tls::SERVER_NAME)
        .map_err(|error| TransportError::Connect { peer, error })?;
    let conn = connecting
        .await
        .map_err(|error| TransportError::Handshake { peer, error })?;
    tracing::debug!(%peer, "replication connection established");
    Ok(conn)
}

/// Waits for the next incoming connection and its handshake, from any address.
///
/// Returns `None` once the endpoint is closed. A failed handshake is logged as
/// one warning, with the same text as the returned error. A node accepts with
/// one long-lived [`Acceptor`] instead, which runs handshakes concurrently and
/// accepts only the peer's address.
pub async fn accept(endpoint: &Endpoint) -> Option<Result<Connection, TransportError>> {
    let policy = AcceptPolicy {
        peer: None,
        handshake_timeout: Duration::from_secs(10),
    };
    Acceptor::new(endpoint.clone(), policy).next().await
}

/// Closes `conn` because of `err`, with an application error code and a short reason.
///
/// The code is [`CLOSE_BAD_FRAME`] for invalid peer input and [`CLOSE_ERROR`]
/// otherwise. The peer sees the code and reason in its own error.
pub fn close_for(conn: &Connection, err: &TransportError) {
    let (code, reason) = match err {
        TransportError::BadFrame { error, .. } => (CLOSE_BAD_FRAME, format!("bad frame: {error}")),
        TransportError::Truncated { buffered, .. } => (
            CLOSE_BAD_FRAME,
            format!("stream ended inside a frame after {buffered} bytes"),
        ),
        other => (CLOSE_ERROR, other.to_string()),
    };
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    tracing::debug!(peer = %conn.remote_address(), %code, reason, "closing replication connection");
    conn.close(code, &reason.as_bytes()[..end]);
}

/// A bidirectional QUIC stream carrying [`Frame`]s both ways.
///
/// The stream that [`FrameStream::open`] creates becomes visible to the
/// peer's [`FrameStream::accept`] only when its first frame arrives, so the
/// opening side sends first (the protocol's `Hello`). To read and write from
/// different tasks, [`FrameStream::into_split`] it.
#[derive(Debug)]
pub struct FrameStream {
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl FrameStream {
    /// Opens a new stream to the peer. Send the first frame right away: the
    /// peer's [`FrameStream::accept`] returns only when it arrives.
    pub async fn open(conn: &Connection) -> Result<FrameStream, TransportError> {
        let peer = conn.remote_address();
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|error| TransportError::ConnectionLost { peer, error })?;
        Ok(FrameStream::new(peer, send, recv))
    }

    /// Waits for the peer to open a stream (and send its first frame).
    pub async fn accept(conn: &Connection) -> Result<FrameStream, TransportError> {
        let peer = conn.remote_address();
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|error| TransportError::ConnectionLost { peer, error })?;
        Ok(FrameStream::new(peer, send, recv))
    }

    fn new(peer: SocketAddr, send: SendStream, recv: RecvStream) -> FrameStream {
        FrameStream {
            sender: FrameSender {
                peer,
                send,
                chunks: Vec::new(),
            },
            receiver: FrameReceiver {
                peer,
                recv,
                buf: BytesMut::new(),
                own: false,
            },
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.sender.peer
    }

    /// Sends one frame; see [`FrameSender::send`].
    pub async fn send(&mut self, frame: &Frame) -> Result<(), TransportError> {
        self.sender.send(frame).await
    }

    /// Sends several frames with one write; see [`FrameSender::send_many`].
    pub async fn send_many(
        &mut self,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), TransportError> {
        self.sender.send_many(frames).await
    }

    /// Finishes the sending side; see [`FrameSender::finish`].
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.sender.finish()
    }

    /// Receives the next frame; see [`FrameReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Frame>, TransportError> {
        self.receiver.recv().await
    }

    /// See [`FrameReceiver::buffer_capacity`].
    pub fn buffer_capacity(&self) -> usize {
        self.receiver.buffer_capacity()
    }

    /// Splits the stream into its sending and receiving halves.
    pub fn into_split(self) -> (FrameSender, FrameReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a [`FrameStream`].
pub struct FrameSender {
    peer: SocketAddr,
    send: SendStream,
    /// What one send hands to QUIC: encoded frame headers and small frames,
    /// and mutation payloads as they are (shared with the sender, not copied).
    chunks: Vec<Bytes>,
}

impl fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSender")
            .field("peer", &self.peer)
            .field("stream", &self.send.id())
            .finish()
    }
}

impl FrameSender {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends one frame.
    ///
    /// Returns once the frame is handed to QUIC, which delivers it reliably
    /// and in order unless the connection is lost. Not cancel-safe: a dropped
    /// future may have written part of the frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), TransportError> {
        self.chunks.clear();
        let mut head = Vec::new();
        self.encode(frame, &mut head)?;
        self.write_chunks(head).await
    }

    /// Sends several frames with one write. Not cancel-safe.
    ///
    /// If one frame is refused ([`TransportError::FrameTooLarge`]), none is sent.
    pub async fn send_many(
        &mut self,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), TransportError> {
        self.chunks.clear();
        let mut head = Vec::new();
        for frame in frames {
            self.encode(&frame, &mut head)?;
        }
        self.write_chunks(head).await
    }

    /// Finishes the sending side: the peer's [`FrameReceiver::recv`] returns
    /// `Ok(None)` after the frames already sent.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.send.finish().map_err(|e| TransportError::Stream {
            peer: self.peer,
            reason: e.to_string(),
        })
    }

    /// Encodes `frame` after `head`; a mutation's payload becomes a chunk of
    /// its own (after the bytes gathered so far), so it is never copied here.
    fn encode(&mut self, frame: &Frame, head: &mut Vec<u8>) -> Result<(), TransportError> {
        // `Frame::encode` panics on an oversized body; turn that into an error.
        if let Frame::Mutation { payload, .. } = frame {
            if payload.len() > MAX_PAYLOAD_LEN {
                return Err(TransportError::FrameTooLarge {
                    peer: self.peer,
                    len: payload.len(),
                    max: MAX_PAYLOAD_LEN,
                });
            }
        }
        if let Some(payload) = frame.encode_head(head) {
            self.chunks.push(Bytes::from(std::mem::take(head)));
            if !payload.is_empty() {
                self.chunks.push(payload);
            }
        }
        Ok(())
    }

    /// Writes the gathered chunks, then `head`, in one go.
    async fn write_chunks(&mut self, head: Vec<u8>) -> Result<(), TransportError> {
        let peer = self.peer;
        if !head.is_empty() {
            self.chunks.push(Bytes::from(head));
        }
        let written = self.send.write_all_chunks(&mut self.chunks).await;
        self.chunks.clear();
        written.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(error) => {
                TransportError::ConnectionLost { peer, error }
            }
            quinn::WriteError::Stopped(code) => TransportError::StreamStopped { peer, code },
            e => TransportError::Stream {
                peer,
                reason: e.to_string(),
            },
        })
    }
}

/// The receiving half of a [`FrameStream`].
pub struct FrameReceiver {
    peer: SocketAddr,
    recv: RecvStream,
    /// Received bytes not decoded yet. A large frame is split off and frozen,
    /// so a mutation's payload goes on as a view of it (copied once, from QUIC).
    buf: BytesMut,
    /// `buf` is an allocation of its own for the large frame at its start
    /// (nothing before it in the allocation, nothing else holding it).
    own: bool,
}

/// A frame from [`FrameReceiver::recv_sized`], with the memory it holds.
#[derive(Debug)]
pub struct Received {
    /// The frame.
    pub frame: Frame,
    /// Bytes of memory the frame keeps alive for as long as it (or a mutation
    /// payload taken from it) lives: its own bytes for a frame copied out of
    /// the receive buffer, the allocation it was received into for a large
    /// frame (its own bytes too, as that allocation holds nothing else). What
    /// a reader charges to a budget of frames in flight.
    pub memory: usize,
}

impl fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("peer", &self.peer)
            .field("stream", &self.recv.id())
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl FrameReceiver {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Bytes of memory held for the frame being received: it follows what
    /// arrived (at most twice that, or 1 MiB), never the length a header claims.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Receives the next frame.
    ///
    /// `Ok(None)` means the peer finished the stream cleanly, between frames.
    /// Bytes that can never become a frame give [`TransportError::BadFrame`]
    /// (or [`TransportError::Truncated`] at the end of the stream): close the
    /// connection with [`close_for`]. At most one frame's worth of bytes
    /// (`HEADER_LEN + MAX_BODY_LEN`) is buffered. Cancel-safe: dropping the
    /// future loses no bytes.
    pub async fn recv(&mut self) -> Result<Option<Frame>, TransportError> {
        Ok(self.recv_sized().await?.map(|r| r.frame))
    }

    /// [`FrameReceiver::recv`], with the memory the frame holds.
    ///
    /// A frame shorter than 64 KiB is copied out of the receive buffer, so it
    /// holds only its own bytes (a small mutation never pins a large buffer
    /// that the frame before it needed). A longer frame is received into an
    /// allocation of its own, which holds its bytes and nothing else, and goes
    /// on as a view of it (no copy); its [`Received::memory`] is that
    /// allocation's size.
    pub async fn recv_sized(&mut self) -> Result<Option<Received>, TransportError> {
        let bad = |peer, error| TransportError::BadFrame { peer, error };
        loop {
            if !self.buf.is_empty() {
                match Frame::peek_len(&self.buf).map_err(|e| bad(self.peer, e))? {
                    Some(len) if self.buf.len() >= len => {
                        let (whole, memory) = if len < COPY_BELOW || !self.own {
                            let whole = Bytes::copy_from_slice(&self.buf[..len]);
                            self.buf.advance(len);
                            (whole, len)
                        } else {
                            // The allocation starts at this frame: its
                            // capacity is all the frame can keep alive.
                            let memory = self.buf.capacity();
                            (self.buf.split_to(len).freeze(), memory)
                        };
                        self.own = false;
                        return match Frame::decode_shared(&whole) {
                            Ok(Some((frame, _))) => Ok(Some(Received { frame, memory })),
                            Ok(None) => unreachable!("a whole frame was there"),
                            Err(error) => Err(bad(self.peer, error)),
                        };
                    }
                    // An incomplete frame: memory follows the bytes that
                    // arrived, not the header's claim (a peer announcing 64 MiB
                    // and sending 10 bytes gets no 64 MiB buffer): room for at
                    // most as much again as is here, and at least 1 MiB.
                    Some(len) => {
                        let have = self.buf.len();
                        let more = (len - have).min(have.max(RESERVE_STEP));
                        if len < COPY_BELOW {
                            self.buf.reserve(more);
                        } else if !self.own || self.buf.capacity() == have {
                            // A large frame gets an allocation of its own,
                            // holding its bytes and nothing else (the frames
                            // before it were taken, and no more than its own
                            // bytes are read into it), grown here and not by
                            // `reserve`, whose doubling would overshoot.
                            let mut own = BytesMut::with_capacity(have + more);
                            own.extend_from_slice(&self.buf);
                            self.buf = own;
                            self.own = true;
                        }
                    }
                    None => {}
                }
            }
            // The codec rejects a header announcing more than MAX_BODY_LEN, so
            // an incomplete frame is shorter than this and never more is read;
            // into a large frame's own allocation, only what fits.
            let room = if self.own {
                self.buf.capacity() - self.buf.len()
            } else {
                (HEADER_LEN + MAX_BODY_LEN).saturating_sub(self.buf.len())
            };
            match self.recv.read_chunk(room.max(1), true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(TransportError::Truncated {
                        peer: self.peer,
                        buffered: self.buf.len(),
                    })
                }
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    fn read_error(&self, e: quinn::ReadError) -> TransportError {
        let peer = self.peer;
        match e {
            quinn::ReadError::ConnectionLost(error) => {
                TransportError::ConnectionLost { peer, error }
            }
            quinn::ReadError::Reset(code) => TransportError::StreamReset { peer, code },
            e => TransportError::Stream {
                peer,
                reason: e.to_string(),
            },
        }
    }
}
