//! The segment cleaner and the background checkpointer: space used by the
//! log, relocating live blocks out of mostly dead segments, dropping segments.

use super::*; // a part of `disk`: its types, helpers and imports

impl DiskStore {
    /// Space used by the log.
    ///
    /// The active segment counts up to the end of its records, not its pre-written zeros.
    pub fn log_usage(&self) -> Result<LogUsage, StoreError> {
        let mut u = LogUsage::default();
        let active = self.records_end();
        for id in self.segment_ids()? {
            let p = self.segment_path(id);
            u.segments += 1;
            u.total_bytes += match active {
                (seg, end) if seg == id => end,
                _ => std::fs::metadata(&p)
                    .map_err(|e| StoreError::io(&p, e))?
                    .len(),
            };
        }
        u.live_bytes = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        Ok(u)
    }

    /// The segment cleaner: gives back the space of overwritten and deleted data.
    ///
    /// Sealed segments whose live blocks fill at most half of them are emptied: their
    /// live blocks are appended again at the head of the log (as local records, which
    /// take no sequence number and are never replicated), a checkpoint makes the new
    /// index durable, and only then are the old segment files deleted. At most about
    /// `budget` bytes are copied per call. A segment holding a damaged block is kept,
    /// so that `twinfs verify` still reports it.
    pub fn clean(&self, budget: u64) -> Result<CleanStats, StoreError> {
        let _c = self.clean_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.poisoned.load(Ordering::SeqCst) {
            return Ok(CleanStats::default());
        }
        let (stats, victims) = self.relocate(budget)?;
        self.drop_segments(stats, victims)
    }

    /// First half of [`DiskStore::clean`]: copies the live blocks of the chosen
    /// segments to the head of the log and returns the segments that are now empty.
    pub(crate) fn relocate(
        &self,
        budget: u64,
    ) -> Result<(CleanStats, Vec<(u32, u64)>), StoreError> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let active = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            // Seal a mostly dead active segment early, so that a small store whose
            // files were rewritten or deleted gets its space back too.
            let l = live.get(&w.segment).copied().unwrap_or(0);
            if w.end >= (self.opts.segment_max / 16).max(64 << 10) && l.saturating_mul(2) <= w.end {
                self.seal(&mut w)?;
            }
            w.segment
        };
        let mut candidates = Vec::new();
        let ids = self.segment_ids()?;
        for (i, id) in ids
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, id)| id < active)
        {
            // Records a resync may still need to list stay (see `set_retain_floor`).
            let next = ids.get(i + 1).copied().filter(|&n| n != active);
            if !self.may_drop(next.and_then(|n| self.first_seq(n))) {
                continue;
            }
            let p = self.segment_path(id);
            let size = std::fs::metadata(&p)
                .map_err(|e| StoreError::io(&p, e))?
                .len();
            let l = live.get(&id).copied().unwrap_or(0);
            if l.saturating_mul(2) <= size {
                candidates.push((l, id, size));
            }
        }
        candidates.sort_unstable();
        let mut stats = CleanStats::default();
        let mut victims = Vec::new();
        for (l, id, size) in candidates {
            if stats.bytes_moved + l > budget && !victims.is_empty() {
                break;
            }
            // Scan without the writer lock: writers only ever add references into the
            // active segment, so a reference into `id` found now stays valid until we
            // move it (re-checked under the lock below).
            let refs: Vec<(Ino, u64, BlockRef)> = self
                .blocks()
                .filter(|b| !matches!(b, Ok((_, _, r)) if r.segment != id))
                .collect::<Result<_, _>>()?;
            let mut intact = true;
            for chunk in refs.chunks(64) {
                let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let mut ops = Vec::new();
                for (ino, idx, r) in chunk {
                    let k = key2(K_BLOCK, *ino, *idx);
                    if self
                        .db
                        .get(&k)?
                        .map(|v| decode::<BlockRef>(&k, &v))
                        .transpose()?
                        != Some(*r)
                    {
                        continue;
                    }
                    match self.read_ref(*ino, *idx, r) {
                        Ok(data) => {
                            stats.bytes_moved += data.len() as u64;
                            ops.push(Op::PutBlock {
                                ino: *ino,
                                idx: *idx,
                                data,
                            });
                        }
                        Err(e @ StoreError::Corrupt { .. }) => {
                            tracing::error!(error = %e, "keeping a log segment that holds a damaged block");
                            intact = false;
                        }
                        Err(e) => return Err(e),
                    }
                    if ops
                        .iter()
                        .map(|o| {
                            if let Op::PutBlock { data, .. } = o {
                                data.len()
                            } else {
                                0
                            }
                        })
                        .sum::<usize>()
                        >= CLEAN_RECORD_BYTES
                    {
                        let seq = Seq(self.last.load(Ordering::SeqCst));
                        self.append(
                            &mut w,
                            &Mutation {
                                seq,
                                ops: std::mem::take(&mut ops),
                            },
                            RECORD_LOCAL,
                        )?;
                    }
                }
                if !ops.is_empty() {
                    let seq = Seq(self.last.load(Ordering::SeqCst));
                    self.append(&mut w, &Mutation { seq, ops }, RECORD_LOCAL)?;
                }
            }
            if intact {
                victims.push((id, size));
            }
        }
        Ok((stats, victims))
    }

    /// Second half of [`DiskStore::clean`]: checkpoint, then delete the emptied segments.
    pub(crate) fn drop_segments(
        &self,
        mut stats: CleanStats,
        victims: Vec<(u32, u64)>,
    ) -> Result<CleanStats, StoreError> {
        if victims.is_empty() {
            return Ok(stats);
        }
        // The index must no longer need the victims, durably, before they go.
        self.checkpoint()?;
        for (id, size) in victims {
            let p = self.segment_path(id);
            self.segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            stats.segments_removed += 1;
            stats.bytes_freed += size;
        }
        fsync_dir(&self.log_dir)?;
        tracing::info!(
            segments = stats.segments_removed,
            moved = stats.bytes_moved,
            freed = stats.bytes_freed,
            "log cleaned"
        );
        Ok(stats)
    }
}

/// Bytes the background cleaner copies per round at most.
const CLEAN_BUDGET: u64 = 256 << 20;

/// Runs [`DiskStore::checkpoint`] and the segment cleaner every `interval` until dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the background checkpoint thread.
    pub fn spawn(store: Arc<DiskStore>, interval: Duration) -> Checkpointer {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("twinfs-checkpoint".into())
            .spawn(move || {
                let mut done = store.last_applied();
                // Ends when the sender is dropped (or sends).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(interval)
                {
                    let now = store.last_applied();
                    if now != done {
                        match store.checkpoint() {
                            Ok(()) => done = now,
                            Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                        }
                    }
                    if let Err(e) = store.clean(CLEAN_BUDGET) {
                        tracing::error!(error = %e, "log cleaning failed; will retry");
                    }
                }
            })
            .ok();
        Checkpointer {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
