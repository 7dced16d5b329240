//! Resync: bringing a peer that missed or diverged from this node's writes back
//! in line, by shipping the current value of every record either side changed
//! after the floor (see `twinfs_fs::DiskStore::changed_keys_since`).
//!
//! The exchange, on the one replication stream:
//!
//! 1. source → target `ResyncRequest { floor }`;
//! 2. target → source `ResyncKeys` chunks: the keys it changed after the floor
//!    (or "unknown": its log cannot tell, so it gets a full resync);
//! 3. the source adds its own changed keys and ships their current values as
//!    `ResyncData` chunks (a blocking task reads the store, paced by the rate
//!    limit and by what the link has not yet taken), while the primary goes on
//!    serving writes;
//! 4. source → target `ResyncDone { position, consistent_at, generation }`; the
//!    target jumps its store to `position` and follows the mutation stream from
//!    there. It is Inconsistent (never promoted) from the first data chunk until
//!    it has applied `consistent_at` (the source's seq when the last value was
//!    read: before that, it may hold a mix of older and newer values).

use super::{fss, ps, Input, Job, Node, RoleState};
use crate::status::Resync as ResyncStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use twinfs_fs::store::KeySet;
use twinfs_fs::{Mutation, Store as _, StoreKey};
use twinfs_replicator_proto::{DiskState, Frame, Generation, Hello, Role, Seq};

/// Keys per `ResyncKeys` chunk.
const KEYS_PER_CHUNK: usize = 20_000;
/// Changed keys a source collects from its target at most, and their encoded
/// bytes: beyond either it stops collecting and ships everything (a full
/// resync), so a target that reports without end costs bounded memory (about
/// 50 MB at worst, with 255-byte names).
const MAX_TARGET_KEYS: usize = 500_000;
const MAX_TARGET_KEY_BYTES: usize = 16 << 20;
/// Block bytes per `ResyncData` chunk.
const DATA_CHUNK: usize = 1 << 20;
/// The source waits while this much resync data is queued for the link.
const MAX_QUEUED: u64 = 16 << 20;

/// A resync in progress.
pub(super) enum ResyncState {
    /// This node ships.
    Source {
        floor: Seq,
        /// Keys the target reported so far.
        target_keys: KeySet,
        /// False once the target said it cannot tell (or said too much).
        target_known: bool,
        /// Encoded bytes of the target's keys received so far.
        target_key_bytes: usize,
        /// Set once the values are being shipped.
        total: Option<u64>,
        done: u64,
        started: Instant,
        cancel: Arc<AtomicBool>,
        /// The target's position after the resync.
        position: Option<Seq>,
    },
    /// This node receives.
    Target { done: u64, started: Instant },
}

impl Node {
    /// Starts a resync to the connected peer from `floor`.
    pub(super) fn start_resync_source(&mut self, floor: Seq, why: &str) {
        self.note(format!(
            "resync to the peer starts (floor seq {}): {why}",
            floor.0
        ));
        self.resync = Some(ResyncState::Source {
            floor,
            target_keys: KeySet::new(),
            target_known: true,
            target_key_bytes: 0,
            total: None,
            done: 0,
            started: Instant::now(),
            cancel: Arc::new(AtomicBool::new(false)),
            position: None,
        });
        self.send(Frame::ResyncRequest { floor });
    }

    pub(super) fn send(&self, frame: Frame) {
        if let Some(c) = &self.conn {
            if let Frame::ResyncData { payload } = &frame {
                c.queued.fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
            let _ = c.tx.send(frame);
        }
    }

    /// (Target) the source asks for the keys this node changed after `floor`.
    pub(super) fn resync_requested(&mut self, floor: Seq) {
        if matches!(self.role, RoleState::Primary { .. }) {
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
        self.resync = Some(ResyncState::Target {
            done: 0,
            started: Instant::now(),
        });
        let disk = self.disk.clone();
        let tx = self.input_tx.clone();
        tokio::task::spawn_blocking(move || {
            let frames = match disk.changed_keys_since(super::fss(floor)) {
                Ok(Some(keys)) => {
                    let keys: Vec<StoreKey> = keys.into_iter().collect();
                    let mut frames: Vec<Frame> = keys
                        .chunks(KEYS_PER_CHUNK)
                        .map(|c| Frame::ResyncKeys {
                            last: false,
                            known: true,
                            payload: postcard_vec(c),
                        })
                        .collect();
                    match frames.last_mut() {
                        Some(Frame::ResyncKeys { last, .. }) => *last = true,
                        _ => frames.push(Frame::ResyncKeys {
                            last: true,
                            known: true,
                            payload: postcard_vec(&[]),
                        }),
                    }
                    frames
                }
                Ok(None) => vec![Frame::ResyncKeys {
                    last: true,
                    known: false,
                    payload: Vec::new(),
                }],
                Err(e) => {
                    let _ = tx.send(Input::ResyncFailed(format!(
                        "listing local changes since seq {}: {e}",
                        floor.0
                    )));
                    return;
                }
            };
            let _ = tx.send(Input::Frames(frames));
        });
    }

    /// (Source) a chunk of the target's changed keys.
    pub(super) fn resync_keys(&mut self, last: bool, known: bool, payload: &[u8]) {
        let Some(ResyncState::Source {
            floor,
            target_keys,
            target_known,
            target_key_bytes,
            cancel,
            ..
        }) = &mut self.resync
        else {
            self.refuse("the peer sent resync keys, but no resync was asked for".into());
            return;
        };
        *target_key_bytes = target_key_bytes.saturating_add(payload.len());
        let too_much =
            |keys: usize, bytes: usize| keys > MAX_TARGET_KEYS || bytes > MAX_TARGET_KEY_BYTES;
        if !known {
            *target_known = false;
            *target_keys = KeySet::new();
        } else if *target_known {
            if !too_much(target_keys.len(), *target_key_bytes) {
                match parse_keys(payload) {
                    Ok(keys) => target_keys.extend(keys),
                    Err(e) => {
                        self.refuse(format!("undecodable resync keys from the peer: {e}"));
                        return;
                    }
                }
            }
            if too_much(target_keys.len(), *target_key_bytes) {
                warn!(
                    keys = target_keys.len(),
                    bytes = *target_key_bytes,
                    "the peer's list of changed records passed {MAX_TARGET_KEYS} keys or {} MiB; shipping everything instead",
                    MAX_TARGET_KEY_BYTES >> 20
                );
                *target_known = false;
                *target_keys = KeySet::new();
            }
        }
        if !last {
            return;
        }
        let floor = *floor;
        let full_from_target = !*target_known;
        let keys = std::mem::take(target_keys);
        let cancel = cancel.clone();
        let queued = self
            .conn
            .as_ref()
            .map_or_else(|| Arc::new(AtomicU64::new(0)), |c| c.queued.clone());
        let disk = self.disk.clone();
        let tx = self.input_tx.clone();
        let rate = self.opts.resync_rate;
        tokio::task::spawn_blocking(move || {
            let run = || -> Result<(), String> {
                let position = ps(disk.last_applied());
                let mine = disk
                    .changed_keys_since(fss(floor))
                    .map_err(|e| format!("listing changes since seq {}: {e}", floor.0))?;
                let full = full_from_target || mine.is_none();
                let mut keys = keys;
                keys.extend(mine.unwrap_or_default());
                let total = disk.resync_size(&keys, full).map_err(|e| e.to_string())?;
                let _ = tx.send(Input::ResyncPlanned {
                    total,
                    full,
                    keys: keys.len(),
                    position,
                });
                let started = Instant::now();
                let mut sent = 0u64;
                disk.resync_ops(&keys, full, DATA_CHUNK, |ops| {
                    let payload = Mutation {
                        seq: twinfs_fs::Seq(0),
                        ops,
                    }
                    .to_wire();
                    sent += payload.len() as u64;
                    // Pace: the rate limit, and what the link has not taken yet.
                    for _ in 0..100_000 {
                        if cancel.load(Ordering::Relaxed) {
                            return Err(twinfs_fs::StoreError::Replication(
                                "resync cancelled".into(),
                            ));
                        }
                        let early = rate > 0
                            && started.elapsed()
                                < Duration::from_secs_f64(sent as f64 / rate as f64);
                        if !early && queued.load(Ordering::Relaxed) < MAX_QUEUED {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    tx.send(Input::ResyncChunk(payload)).map_err(|_| {
                        twinfs_fs::StoreError::Replication("the node is stopping".into())
                    })
                })
                .map_err(|e| e.to_string())?;
                let _ = tx.send(Input::ResyncShipped {
                    consistent_at: ps(disk.last_applied()),
                });
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.send(Input::ResyncFailed(e));
            }
        });
    }

    /// (Source) the producer planned the resync.
    pub(super) fn resync_planned(&mut self, total_bytes: u64, full: bool, keys: usize, at: Seq) {
        if let Some(ResyncState::Source {
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

    /// (Source) one chunk of values to put on the wire.
    pub(super) fn resync_chunk(&mut self, payload: Vec<u8>) {
        if let Some(ResyncState::Source { done, .. }) = &mut self.resync {
            *done += payload.len() as u64;
            self.counters.resync_bytes_sent += payload.len() as u64;
            self.send(Frame::ResyncData { payload });
        }
    }

    /// (Source) every value was shipped: the target continues from the mutation stream.
    pub(super) fn resync_shipped(&mut self, consistent_at: Seq) {
        let Some(ResyncState::Source {
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
        self.send(Frame::ResyncDone {
            position,
            consistent_at,
            generation: Generation(self.state.generation),
        });
        let secs = started.elapsed().as_secs_f64();
        self.note(format!(
            "resync shipped: {done} bytes in {secs:.1}s; the peer follows from seq {}",
            position.0
        ));
        let now = Instant::now();
        let peer_name = self
            .conn
            .as_ref()
            .and_then(|c| c.peer.as_ref())
            .map(|h| h.node.clone())
            .unwrap_or_default();
        if let RoleState::Primary {
            primary,
            catch_up,
            vouched,
            need_ack,
            ..
        } = &mut self.role
        {
            let hello = Hello {
                version: twinfs_replicator_proto::PROTOCOL_VERSION,
                node: peer_name,
                generation: Generation(self.state.generation),
                last_applied: position,
                role: Role::Secondary,
                disk: twinfs_replicator_proto::DiskState::Inconsistent,
                shared: Generation(self.state.shared),
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
    pub(super) fn resync_data(&mut self, payload: Vec<u8>) {
        let Some(ResyncState::Target { done, .. }) = &mut self.resync else {
            self.refuse("the peer sent resync data, but no resync was asked for".into());
            return;
        };
        let first = *done == 0;
        *done += payload.len() as u64;
        if first && self.state.disk != DiskState::Inconsistent {
            // Before the first value lands: from here until the resync is
            // complete the local data is a mix and must never be promoted.
            self.state.disk = DiskState::Inconsistent;
            self.save_state();
            self.note(
                "resync: receiving; the local disk is Inconsistent until it completes".into(),
            );
        }
        let charge = self.charge.take();
        let _ = self.jobs.send_charged(Job::ApplyLocal(payload), charge);
    }

    /// (Target) the source shipped everything.
    pub(super) fn resync_done(
        &mut self,
        position: Seq,
        consistent_at: Seq,
        generation: Generation,
    ) {
        let Some(ResyncState::Target { done, started }) = self.resync.take() else {
            self.refuse("the peer ended a resync that was not running".into());
            return;
        };
        info!(
            bytes = done,
            secs = started.elapsed().as_secs_f64(),
            "resync data received"
        );
        if done == 0 && self.state.disk != DiskState::Inconsistent {
            self.state.disk = DiskState::Inconsistent;
            self.save_state();
        }
        let _ = self.jobs.send(Job::Jump(position));
        self.pending_jump = Some((position, consistent_at.max(position), generation));
        self.early_frames.clear();
    }

    /// (Target) the applier jumped the store to the resync position.
    pub(super) fn jumped(&mut self, position: Seq) {
        if let Some((p, consistent_at, generation)) = self.pending_jump.take() {
            if p == position {
                // Up to `position` this store now equals the source's.
                self.state.floor = self.state.floor.min(position.0);
                self.disk.set_retain_floor(fss(Seq(self.state.floor)));
                self.save_state();
                // Follow the stream from the (durable) position; the mutations
                // that arrived meanwhile go first. Only now is anything acknowledged.
                let now = Instant::now();
                if let RoleState::Secondary {
                    replica,
                    catch_up,
                    sync_asked,
                } = &mut self.role
                {
                    let mut r = twinfs_replicator_proto::Replica::new(
                        self.opts.protocol.clone(),
                        position,
                        now,
                    );
                    r.handle_reconnect(now);
                    // Their charges go back as they enter the replica: what
                    // it hands out next is at most one budget's worth.
                    for (f, _charge) in std::mem::take(&mut self.early_frames) {
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
        }
    }

    /// The resync stopped before it finished.
    pub(super) fn resync_failed(&mut self, reason: String) {
        if let Some(ResyncState::Source { cancel, .. }) = &self.resync {
            cancel.store(true, Ordering::Relaxed);
        }
        self.resync = None;
        self.refuse(format!("resync failed: {reason}"));
    }

    /// Cancels a running resync (the connection is gone).
    pub(super) fn abandon_resync(&mut self) {
        match self.resync.take() {
            Some(ResyncState::Source { cancel, done, .. }) => {
                cancel.store(true, Ordering::Relaxed);
                self.note(format!(
                    "resync interrupted after {done} bytes; it starts over when the peer is back"
                ));
            }
            Some(ResyncState::Target { done, .. }) => {
                self.note(format!(
                    "resync interrupted after {done} bytes; the local disk stays Inconsistent"
                ));
            }
            None => {}
        }
    }

    /// Progress for the status.
    pub(super) fn resync_status(&self) -> Option<ResyncStatus> {
        match self.resync.as_ref()? {
            ResyncState::Source {
                total,
                done,
                started,
                ..
            } => {
                let total = total.unwrap_or(0);
                let secs = started.elapsed().as_secs_f64();
                let eta = (secs > 0.5 && *done > 0).then(|| {
                    let rate = *done as f64 / secs;
                    (total.saturating_sub(*done) as f64 / rate).ceil() as u64
                });
                Some(ResyncStatus {
                    direction: "source".into(),
                    done_bytes: *done,
                    total_bytes: total,
                    eta_seconds: eta,
                })
            }
            ResyncState::Target { done, .. } => Some(ResyncStatus {
                direction: "target".into(),
                done_bytes: *done,
                total_bytes: 0,
                eta_seconds: None,
            }),
        }
    }

    /// The number of records this node changed on its own in its generation.
    pub(super) fn changed_blocks(&self) -> u64 {
        if self.state.generation == self.state.shared {
            return 0;
        }
        self.disk
            .changed_keys_since(twinfs_fs::Seq(self.state.generation_start))
            .ok()
            .flatten()
            .map_or(u64::MAX, |k| k.len() as u64)
    }
}

/// Decodes a chunk of the resync target's changed keys.
/// Decodes one `ResyncKeys` chunk: at most [`KEYS_PER_CHUNK`] keys (what a
/// node sends), checked from the length prefix before anything is decoded.
pub(super) fn parse_keys(payload: &[u8]) -> Result<Vec<StoreKey>, String> {
    let (count, _) = postcard::take_from_bytes::<u64>(payload).map_err(|e| e.to_string())?;
    if count > KEYS_PER_CHUNK as u64 {
        return Err(format!(
            "a chunk of {count} keys (at most {KEYS_PER_CHUNK})"
        ));
    }
    postcard::from_bytes(payload).map_err(|e| e.to_string())
}

pub(super) fn postcard_vec(keys: &[StoreKey]) -> Vec<u8> {
    postcard::to_allocvec(keys).expect("keys serialise")
}
