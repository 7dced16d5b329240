//! Resync: bringing a peer that missed or diverged from this node's writes
//! back in line, by shipping the current value of every record either side
//! changed after the floor. The core decides and keeps count; the driver
//! lists keys and reads and applies values.
//!
//! The exchange, on the one replication stream:
//!
//! 1. source → target `ResyncRequest { floor }`;
//! 2. target → source `ResyncKeys` chunks: the keys it changed after the floor
//!    (or "unknown": its log cannot tell, so it gets a full resync);
//! 3. the source adds its own changed keys and ships their current values as
//!    `ResyncData` chunks ([`Output::ShipResync`]), while the primary goes on
//!    serving writes;
//! 4. source → target `ResyncDone { position, consistent_at, generation }`; the
//!    target jumps its store to `position` and follows the mutation stream from
//!    there. It is Inconsistent (never promoted) from the first data chunk until
//!    it has applied `consistent_at` (the source's seq when the last value was
//!    read: before that, it may hold a mix of older and newer values).

use super::{Host, NodeCore, Output, RoleState};
use crate::{DiskState, Frame, Generation, Hello, Replica, Role, Seq, PROTOCOL_VERSION};
use std::time::Instant;
use tracing::{info, warn};

/// Keys per `ResyncKeys` chunk (what a node sends; more is refused).
pub const KEYS_PER_CHUNK: usize = 20_000;
/// Changed keys a source collects from its target at most, and their encoded
/// bytes: beyond either it stops collecting and ships everything (a full
/// resync), so a target that reports without end costs bounded memory.
pub const MAX_TARGET_KEYS: u64 = 500_000;
/// See [`MAX_TARGET_KEYS`].
pub const MAX_TARGET_KEY_BYTES: usize = 16 << 20;

/// A resync in progress.
#[derive(Debug)]
pub(super) enum Phase {
    /// This node ships.
    Source {
        floor: Seq,
        /// The target's key chunks so far (raw `ResyncKeys` payloads).
        target_keys: Vec<Vec<u8>>,
        /// Keys in them, from each chunk's length prefix.
        target_key_count: u64,
        /// False once the target said it cannot tell (or said too much).
        target_known: bool,
        /// Encoded bytes of the target's keys received so far.
        target_key_bytes: usize,
        /// Set once the values are being shipped.
        total: Option<u64>,
        done: u64,
        started: Instant,
        /// The target's position after the resync.
        position: Option<Seq>,
    },
    /// This node receives.
    Target { done: u64, started: Instant },
}

/// A resync's progress, for the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    /// This node ships (or receives).
    pub source: bool,
    /// Bytes shipped or received so far.
    pub done: u64,
    /// Bytes to ship in all (0 while unknown, and on the target).
    pub total: u64,
    /// When it started.
    pub started: Instant,
}

/// The key count of a `ResyncKeys` payload: its postcard length prefix (a
/// LEB128 varint), read without decoding the keys.
pub fn key_count(payload: &[u8]) -> Result<u64, String> {
    let mut n = 0u64;
    for (i, b) in payload.iter().take(10).enumerate() {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("no key count at the start of the chunk".into())
}

impl NodeCore {
    /// Starts a resync to the connected peer from `floor`.
    pub(super) fn start_resync_source(&mut self, now: Instant, floor: Seq, why: &str) {
        self.note(format!(
            "resync to the peer starts (floor seq {}): {why}",
            floor.0
        ));
        self.resync = Some(Phase::Source {
            floor,
            target_keys: Vec::new(),
            target_key_count: 0,
            target_known: true,
            target_key_bytes: 0,
            total: None,
            done: 0,
            started: now,
            position: None,
        });
        self.outputs
            .push_back(Output::Send(Frame::ResyncRequest { floor }));
    }

    /// (Target) the source asks for the keys this node changed after `floor`.
    pub(super) fn resync_requested(&mut self, now: Instant, floor: Seq) {
        if self.role() == Role::Primary {
            if self.pending_sb_demote {
                // Demoting already; the next connection will do the resync.
                self.reconnect("demoting first; resync after");
            } else {
                self.refuse("the peer asked this primary to be a resync target".into());
            }
            return;
        }
        if let RoleState::Secondary { replica, .. } = &mut self.role {
            *replica = None;
        }
        self.resync = Some(Phase::Target {
            done: 0,
            started: now,
        });
        self.outputs.push_back(Output::ListChangedKeys(floor));
    }

    /// (Source) a chunk of the target's changed keys.
    pub(super) fn resync_keys(&mut self, last: bool, known: bool, payload: Vec<u8>) {
        let count = if known {
            match key_count(&payload) {
                Ok(n) if n <= KEYS_PER_CHUNK as u64 => n,
                Ok(n) => {
                    self.refuse(format!(
                        "undecodable resync keys from the peer: a chunk of {n} keys (at most {KEYS_PER_CHUNK})"
                    ));
                    return;
                }
                Err(e) => {
                    self.refuse(format!("undecodable resync keys from the peer: {e}"));
                    return;
                }
            }
        } else {
            0
        };
        let Some(Phase::Source {
            floor,
            target_keys,
            target_key_count,
            target_known,
            target_key_bytes,
            ..
        }) = &mut self.resync
        else {
            self.refuse("the peer sent resync keys, but no resync was asked for".into());
            return;
        };
        *target_key_bytes = target_key_bytes.saturating_add(payload.len());
        if !known {
            *target_known = false;
            target_keys.clear();
        } else if *target_known {
            *target_key_count += count;
            if *target_key_count > MAX_TARGET_KEYS || *target_key_bytes > MAX_TARGET_KEY_BYTES {
                warn!(
                    keys = *target_key_count,
                    bytes = *target_key_bytes,
                    "the peer's list of changed records passed {MAX_TARGET_KEYS} keys or {} MiB; shipping everything instead",
                    MAX_TARGET_KEY_BYTES >> 20
                );
                *target_known = false;
                target_keys.clear();
            } else {
                target_keys.push(payload);
            }
        }
        if !last {
            return;
        }
        let target_keys = target_known.then(|| std::mem::take(target_keys));
        let floor = *floor;
        self.outputs
            .push_back(Output::ShipResync { floor, target_keys });
    }

    /// (Source) the driver planned the shipment: `total` bytes of `keys`
    /// records (`full`: everything), the target to end at `position`.
    pub fn resync_planned(&mut self, total_bytes: u64, full: bool, keys: usize, at: Seq) {
        if let Some(Phase::Source {
            total, position, ..
        }) = &mut self.resync
        {
            *total = Some(total_bytes);
            *position = Some(at);
        }
        self.note(format!(
            "resync: {} {keys} records, {total_bytes} bytes of data, target position seq {}",
            if full {
                "full, wiping the target:"
            } else {
                "shipping"
            },
            at.0
        ));
    }

    /// (Source) the driver put a chunk of values (`bytes` long) on the wire.
    /// Returns false when no resync runs (the chunk is dropped).
    pub fn resync_sent(&mut self, bytes: u64) -> bool {
        if let Some(Phase::Source { done, .. }) = &mut self.resync {
            *done += bytes;
            self.counters.resync_bytes_sent += bytes;
            return true;
        }
        false
    }

    /// (Source) every value was shipped; `consistent_at` is the store's seq
    /// when the last one was read. The target continues from the mutation
    /// stream.
    pub fn resync_shipped(&mut self, now: Instant, consistent_at: Seq) {
        let Some(Phase::Source {
            position,
            done,
            started,
            ..
        }) = self.resync.take()
        else {
            return;
        };
        let Some(position) = position else {
            return;
        };
        self.outputs.push_back(Output::Send(Frame::ResyncDone {
            position,
            consistent_at,
            generation: Generation(self.state.generation),
        }));
        let secs = now.saturating_duration_since(started).as_secs_f64();
        self.note(format!(
            "resync shipped: {done} bytes in {secs:.1}s; the peer follows from seq {}",
            position.0
        ));
        let peer_name = self.peer().map(|h| h.node.clone()).unwrap_or_default();
        let (generation, shared) = (self.state.generation, self.state.shared);
        if let RoleState::Primary {
            primary,
            catch_up,
            vouched,
            need_ack,
            ..
        } = &mut self.role
        {
            let hello = Hello {
                version: PROTOCOL_VERSION,
                node: peer_name,
                generation: Generation(generation),
                last_applied: position,
                role: Role::Secondary,
                disk: DiskState::Inconsistent,
                shared: Generation(shared),
                changed_blocks: 0,
                primary_since_ms: 0,
                floor: position,
            };
            match primary.handle_reconnect(now, hello) {
                Ok(()) => {
                    *vouched = true;
                    *need_ack = true;
                    *catch_up = Some(consistent_at.max(position));
                }
                Err(e) => {
                    warn!("after the resync the mutation stream cannot resume: {e}");
                    self.refuse(format!("after the resync: {e}"));
                }
            }
        }
    }

    /// (Target) a chunk of the source's values.
    pub(super) fn resync_data(&mut self, payload: Vec<u8>, host: &mut dyn Host) {
        let Some(Phase::Target { done, .. }) = &mut self.resync else {
            self.refuse("the peer sent resync data, but no resync was asked for".into());
            return;
        };
        let first = *done == 0;
        *done += payload.len() as u64;
        if first && self.state.disk != DiskState::Inconsistent {
            // Before the first value lands: from here until the resync is
            // complete the local data is a mix and must never be promoted.
            self.state.disk = DiskState::Inconsistent;
            self.save(host);
            self.note(
                "resync: receiving; the local disk is Inconsistent until it completes".into(),
            );
            // A standby view hides before the first value lands.
            self.update_view();
        }
        self.outputs.push_back(Output::ApplyLocal(payload));
    }

    /// (Target) the source shipped everything.
    pub(super) fn resync_done(
        &mut self,
        position: Seq,
        consistent_at: Seq,
        generation: Generation,
        host: &mut dyn Host,
    ) {
        let Some(Phase::Target { done, .. }) = self.resync.take() else {
            self.refuse("the peer ended a resync that was not running".into());
            return;
        };
        info!(bytes = done, "resync data received");
        if done == 0 && self.state.disk != DiskState::Inconsistent {
            self.state.disk = DiskState::Inconsistent;
            self.save(host);
            self.update_view();
        }
        self.outputs.push_back(Output::Jump(position));
        self.pending_jump = Some((position, consistent_at.max(position), generation));
        self.early_frames.clear();
    }

    /// (Target) the driver jumped the store to the resync position.
    pub fn jumped(&mut self, now: Instant, position: Seq, host: &mut dyn Host) {
        let Some((p, consistent_at, generation)) = self.pending_jump.take() else {
            return;
        };
        if p != position {
            return;
        }
        // Up to `position` this store now equals the source's.
        self.state.floor = self.state.floor.min(position.0);
        self.outputs
            .push_back(Output::RetainFloor(Seq(self.state.floor)));
        self.save(host);
        // Follow the stream from the (durable) position; the mutations that
        // arrived meanwhile go first. Only now is anything acknowledged.
        let early = std::mem::take(&mut self.early_frames);
        if let RoleState::Secondary {
            replica,
            catch_up,
            sync_asked,
        } = &mut self.role
        {
            let mut r = Replica::new(self.cfg.protocol.clone(), position, now);
            r.handle_reconnect(now);
            for f in early {
                if let Err(e) = r.handle_frame(now, f) {
                    warn!("after the resync: {e}");
                }
            }
            *replica = Some(r);
            *sync_asked = position;
            *catch_up = Some((consistent_at, generation));
        }
        self.note(format!(
            "resync applied; consistent once seq {} is applied",
            consistent_at.0
        ));
    }

    /// The resync stopped before it finished (the driver could not list,
    /// read or apply).
    pub fn resync_failed(&mut self, reason: &str) {
        if matches!(self.resync, Some(Phase::Source { .. })) {
            self.outputs.push_back(Output::CancelResync);
        }
        self.resync = None;
        self.refuse(format!("resync failed: {reason}"));
    }

    /// Cancels a running resync (the connection is gone).
    pub(super) fn abandon_resync(&mut self) {
        match self.resync.take() {
            Some(Phase::Source { done, .. }) => {
                self.outputs.push_back(Output::CancelResync);
                self.note(format!(
                    "resync interrupted after {done} bytes; it starts over when the peer is back"
                ));
            }
            Some(Phase::Target { done, .. }) => {
                self.note(format!(
                    "resync interrupted after {done} bytes; the local disk stays Inconsistent"
                ));
            }
            None => {}
        }
    }

    /// The running resync's progress.
    pub fn resync_progress(&self) -> Option<ResyncProgress> {
        Some(match self.resync.as_ref()? {
            Phase::Source {
                total,
                done,
                started,
                ..
            } => ResyncProgress {
                source: true,
                done: *done,
                total: total.unwrap_or(0),
                started: *started,
            },
            Phase::Target { done, started } => ResyncProgress {
                source: false,
                done: *done,
                total: 0,
                started: *started,
            },
        })
    }
}
