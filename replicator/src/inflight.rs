//! Back-pressure from the work a peer's frames cause to the QUIC stream they
//! came on (issue 13: a peer with a valid certificate is still bounded).
//!
//! Each connection's reader charges every frame it hands on to an [`InFlight`]
//! budget of bytes ([`MAX_IN_FLIGHT`], 64 MiB per connection) and holds the
//! [`Charge`] until the frame's work is done: the node task drops it once it
//! handled the frame, or passes it on with the job the frame became (a mutation
//! to apply, a resync chunk, a repair, a verify to answer), and the applier
//! drops it once the job is done. While the budget is spent the reader waits
//! and reads nothing from the stream: QUIC's flow control (the 16 MiB stream
//! window of [`crate::transport`]) then stops the peer's writes. Nothing the
//! node task does ever waits on the budget, so it cannot deadlock on it.
//!
//! What a frame is charged is the memory it keeps alive
//! ([`crate::transport::Received::memory`]), at least [`MIN_CHARGE`] bytes
//! (the frame and its place in the node's queue), at most the whole budget (a
//! frame larger than that waits until nothing else is in flight and goes alone).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use twinfs_replicator_proto::Frame;

use crate::transport::{FrameReceiver, TransportError};

/// Bytes of frames in flight per connection: read from the stream and not yet
/// done with (handled by the node, applied, answered).
pub const MAX_IN_FLIGHT: usize = 64 << 20;

/// The least a frame is charged, whatever its size: a frame without payload
/// still takes room in the node's queue.
pub const MIN_CHARGE: usize = 256;

/// A budget of bytes in flight between a connection's reader and the work
/// its frames cause.
#[derive(Debug, Clone)]
pub struct InFlight {
    sem: Arc<Semaphore>,
    max: usize,
}

/// Part of an [`InFlight`] budget, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    /// A budget of `max` bytes (at least [`MIN_CHARGE`], at most `u32::MAX`).
    pub fn new(max: usize) -> InFlight {
        let max = max.clamp(MIN_CHARGE, u32::MAX as usize);
        InFlight {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The bytes not charged now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// The budget's size.
    pub fn max(&self) -> usize {
        self.max
    }

    /// What a frame holding `memory` bytes is charged.
    pub fn cost(&self, memory: usize) -> usize {
        memory.clamp(MIN_CHARGE, self.max)
    }

    /// Waits until [`InFlight::cost`]`(memory)` bytes are free, and takes them.
    pub async fn charge(&self, memory: usize) -> Charge {
        // Fits in u32: cost <= max <= u32::MAX. The semaphore is never closed.
        let n = self.cost(memory) as u32;
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the budget's semaphore is never closed");
        Charge { _permit: permit }
    }
}

/// Why [`read_frames`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer finished the stream, between frames.
    Finished,
    /// `deliver` refused a frame (whoever took them is gone).
    Refused,
}

/// Reads frames from `receiver` and hands each, with its charge, to `deliver`,
/// waiting (and so not reading) while `budget` is spent. Returns when the peer
/// finished the stream or `deliver` returned false, and with the receiver's
/// error otherwise.
pub async fn read_frames(
    receiver: &mut FrameReceiver,
    budget: &InFlight,
    mut deliver: impl FnMut(Frame, Charge) -> bool,
) -> Result<ReadEnd, TransportError> {
    while let Some(r) = receiver.recv_sized().await? {
        let charge = budget.charge(r.memory).await;
        if !deliver(r.frame, charge) {
            return Ok(ReadEnd::Refused);
        }
    }
    Ok(ReadEnd::Finished)
}
