//! Resync, the store's side: listing the keys this node changed after the
//! floor (as a target) and reading and shipping the current values (as a
//! source), on blocking threads, paced by the rate limit and by what the
//! link has not taken yet. The decisions and the steps of the exchange are
//! the core's (see `twinfs_replicator_proto::node`, module `resync`).

use super::{fss, ps, Input, Node};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinfs_fs::store::KeySet;
use twinfs_fs::{Mutation, Store as _, StoreKey};
use twinfs_replicator_proto::node::{key_count, KEYS_PER_CHUNK};
use twinfs_replicator_proto::{Frame, Seq};

/// Block bytes per `ResyncData` chunk.
const DATA_CHUNK: usize = 1 << 20;
/// The source waits while this much resync data is queued for the link.
const MAX_QUEUED: u64 = 16 << 20;

impl Node {
    /// (Target) sends the keys this node changed after `floor`.
    pub(super) fn list_changed_keys(&mut self, floor: Seq) {
        let disk = self.disk.clone();
        let tx = self.input_tx.clone();
        tokio::task::spawn_blocking(move || {
            let frames = match disk.changed_keys_since(fss(floor)) {
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

    /// (Source) ships the current value of the target's keys and this
    /// node's own changed keys after `floor` (everything without
    /// `target_keys`).
    pub(super) fn ship_resync(&mut self, floor: Seq, target_keys: Option<Vec<Vec<u8>>>) {
        let cancel = Arc::new(AtomicBool::new(false));
        if let Some(old) = self.resync_cancel.replace(cancel.clone()) {
            old.store(true, Ordering::Relaxed);
        }
        let queued = self
            .conn
            .as_ref()
            .map_or_else(|| Arc::new(AtomicU64::new(0)), |c| c.queued.clone());
        let disk = self.disk.clone();
        let tx = self.input_tx.clone();
        let rate = self.opts.resync_rate;
        tokio::task::spawn_blocking(move || {
            let run = || -> Result<(), String> {
                let mut keys = KeySet::new();
                for chunk in target_keys.iter().flatten() {
                    keys.extend(
                        parse_keys(chunk)
                            .map_err(|e| format!("undecodable resync keys from the peer: {e}"))?,
                    );
                }
                let position = ps(disk.last_applied());
                let mine = disk
                    .changed_keys_since(fss(floor))
                    .map_err(|e| format!("listing changes since seq {}: {e}", floor.0))?;
                let full = target_keys.is_none() || mine.is_none();
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
                if cancel.load(Ordering::Relaxed) {
                    return Err("resync cancelled".into());
                }
                let _ = tx.send(Input::ResyncShipped {
                    consistent_at: ps(disk.last_applied()),
                });
                Ok(())
            };
            if let Err(e) = run() {
                if !cancel.load(Ordering::Relaxed) {
                    let _ = tx.send(Input::ResyncFailed(e));
                }
            }
        });
    }

    /// Progress for the status.
    pub(super) fn resync_status(&self) -> Option<crate::status::Resync> {
        let p = self.core.resync_progress()?;
        let secs = p.started.elapsed().as_secs_f64();
        let eta = (p.source && secs > 0.5 && p.done > 0).then(|| {
            let rate = p.done as f64 / secs;
            (p.total.saturating_sub(p.done) as f64 / rate).ceil() as u64
        });
        Some(crate::status::Resync {
            direction: if p.source { "source" } else { "target" }.into(),
            done_bytes: p.done,
            total_bytes: p.total,
            eta_seconds: eta,
        })
    }
}

/// Decodes one `ResyncKeys` chunk: at most [`KEYS_PER_CHUNK`] keys (what a
/// node sends), checked from the length prefix before anything is decoded.
pub(super) fn parse_keys(payload: &[u8]) -> Result<Vec<StoreKey>, String> {
    let count = key_count(payload)?;
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
