//! Connections to the peer: the dialer (the node whose address sorts first)
//! or the acceptor, and per connection a reader task that forwards decoded
//! frames (within the connection's budget) and a writer task that sends what
//! the node queues.

use super::Input;
use crate::inflight::{self, InFlight, ReadEnd};
use crate::transport::{self, FrameStream};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};
use twinfs_replicator_proto::Frame;

/// Starts the reader and writer tasks of a new connection and hands it to the node.
pub(super) fn attach(
    id: u64,
    addr: SocketAddr,
    quic: quinn::Connection,
    stream: FrameStream,
    node: &mpsc::UnboundedSender<Input>,
) {
    let (mut sender, mut receiver) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let queued = Arc::new(AtomicU64::new(0));
    let _ = node.send(Input::ConnUp {
        id,
        addr,
        quic: quic.clone(),
        tx,
        queued: queued.clone(),
    });
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            let resync_bytes: u64 = batch
                .iter()
                .map(|f| match f {
                    Frame::ResyncData { payload } => payload.len() as u64,
                    _ => 0,
                })
                .sum();
            if let Err(e) = sender.send_many(batch.drain(..)).await {
                debug!(peer = %addr, "send failed: {e}");
                break;
            }
            queued.fetch_sub(resync_bytes, Ordering::Relaxed);
        }
    });
    let node = node.clone();
    tokio::spawn(async move {
        // Bounded: the reader stops reading while the frames it handed on
        // are not done with (see `crate::inflight`).
        let budget = InFlight::new(inflight::MAX_IN_FLIGHT);
        let read = inflight::read_frames(&mut receiver, &budget, |frame, charge| {
            node.send(Input::ConnFrame { id, frame, charge }).is_ok()
        });
        let reason = match read.await {
            Ok(ReadEnd::Refused) => return,
            Ok(ReadEnd::Finished) => "the peer closed the stream".to_string(),
            Err(e) => {
                if matches!(e, transport::TransportError::BadFrame { .. }) {
                    error!(peer = %addr, "closing the connection: {e}");
                    transport::close_for(&quic, &e);
                }
                e.to_string()
            }
        };
        let _ = node.send(Input::ConnDown { id, reason });
    });
}

pub(super) async fn dial_loop(
    endpoint: quinn::Endpoint,
    peer: SocketAddr,
    handshake_timeout: Duration,
    node: mpsc::UnboundedSender<Input>,
    ids: Arc<AtomicU64>,
    refusing: Arc<AtomicBool>,
) {
    let mut failures = 0u64;
    loop {
        let mut was_up = false;
        let started = tokio::time::Instant::now();
        let attempt = tokio::time::timeout(handshake_timeout, transport::connect(&endpoint, peer));
        let attempt = attempt.await.unwrap_or_else(|_| {
            Err(transport::TransportError::HandshakeTimeout {
                peer,
                after: handshake_timeout,
            })
        });
        match attempt {
            Ok(quic) => match FrameStream::open(&quic).await {
                Ok(stream) => {
                    failures = 0;
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    attach(id, peer, quic.clone(), stream, &node);
                    let why = quic.closed().await;
                    debug!(peer = %peer, "connection ended: {why}");
                    was_up = true;
                }
                Err(e) => warn!(peer = %peer, "cannot open the replication stream: {e}"),
            },
            Err(e) => {
                failures += 1;
                // Say it once, then only now and then: the peer may be down for long.
                if failures == 1 || failures % 60 == 0 {
                    warn!(peer = %peer, attempts = failures, "cannot connect to the peer: {e}");
                } else {
                    debug!(peer = %peer, "cannot connect to the peer: {e}");
                }
            }
        }
        if node.is_closed() {
            return;
        }
        // While the nodes refuse each other (a split brain), try again now and
        // then, not twice a second: each attempt makes both sides list their changes.
        let pause = if refusing.load(Ordering::Relaxed) {
            Duration::from_secs(5)
        } else if was_up {
            // A connection that worked ended (a role change, say): at once.
            Duration::from_millis(20)
        } else {
            // At most two attempts a second; one that waited out its
            // deadline (a cut link) has waited enough.
            Duration::from_millis(500)
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(20))
        };
        tokio::time::sleep(pause).await;
    }
}

pub(super) async fn accept_loop(
    mut acceptor: transport::Acceptor,
    node: mpsc::UnboundedSender<Input>,
    ids: Arc<AtomicU64>,
) {
    while let Some(result) = acceptor.next().await {
        let quic = match result {
            Ok(q) => q,
            // The acceptor already logged the refusal with the address and reason.
            Err(_) => continue,
        };
        let addr = quic.remote_address();
        let node = node.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), FrameStream::accept(&quic)).await {
                Ok(Ok(stream)) => {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    attach(id, addr, quic, stream, &node);
                }
                Ok(Err(e)) => warn!(peer = %addr, "no replication stream: {e}"),
                Err(_) => warn!(peer = %addr, "no replication stream within 10 s; closing"),
            }
        });
    }
}
