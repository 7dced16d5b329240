//! The secondary's applier: a thread that applies the peer's mutations and
//! resync chunks to the [`DiskStore`] in stream order, and reports back to
//! the node task. Small jobs run on the node task itself while the thread is
//! idle (two thread wake-ups saved per small write).

use super::Input;
use crate::inflight::Charge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use twinfs_fs::view::{Touched, View};
use twinfs_fs::{DiskStore, Mutation, Store as _};
use twinfs_replicator_proto::Seq;

use super::{fss, ps, verify};

/// The applier thread's queue, with a count of the jobs not finished yet.
///
/// A job made of a peer's frame carries the frame's [`Charge`], given back
/// once the job is done: the queue holds at most the connection's budget of
/// such bytes ([`inflight::MAX_IN_FLIGHT`]).
pub(super) struct Jobs {
    pub(super) tx: std::sync::mpsc::Sender<(Job, Option<Charge>)>,
    /// Jobs sent and not yet done; zero means the applier is idle.
    pub(super) queued: Arc<AtomicU64>,
}

impl Jobs {
    pub(super) fn send(
        &self,
        job: Job,
    ) -> Result<(), std::sync::mpsc::SendError<(Job, Option<Charge>)>> {
        self.send_charged(job, None)
    }

    /// Sends a job that holds `charge` until it is done.
    pub(super) fn send_charged(
        &self,
        job: Job,
        charge: Option<Charge>,
    ) -> Result<(), std::sync::mpsc::SendError<(Job, Option<Charge>)>> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.send((job, charge))
    }

    /// Whether every job sent so far is done: work done on the node task now
    /// comes after all of it, in stream order.
    pub(super) fn idle(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
    }
}

/// A secondary applies a mutation up to this size on the node task itself when
/// the applier is idle, saving two thread wake-ups per small write.
pub(super) const INLINE_APPLY_BYTES: usize = 64 << 10;

/// A secondary syncs on the node task itself (no thread wake-up) when the
/// applier is idle and at most this much was applied since the last sync.
pub(super) const INLINE_SYNC_BYTES: u64 = 1 << 20;

pub(super) enum Job {
    Apply(Seq, twinfs_replicator_proto::Bytes),
    Sync(Seq),
    /// A resync chunk: ops applied without taking a seq.
    ApplyLocal(Vec<u8>),
    /// The end of a resync: the store's position jumps (then syncs).
    Jump(Seq),
    /// Answer an online verify request (in stream order).
    Verify(Vec<u8>),
}

/// The secondary's applier thread: applies the peer's mutations in order.
pub(super) fn applier(
    disk: Arc<DiskStore>,
    view: Arc<View>,
    jobs: std::sync::mpsc::Receiver<(Job, Option<Charge>)>,
    tx: mpsc::UnboundedSender<Input>,
    queued: Arc<AtomicU64>,
) {
    for (job, charge) in jobs {
        let report = do_job(&disk, &view, job, Some(&tx));
        // Done with the frame's bytes: the reader may read more.
        drop(charge);
        queued.fetch_sub(1, Ordering::SeqCst);
        if let Some(report) = report {
            if tx.send(report).is_err() {
                return;
            }
        }
    }
}

/// Does one job of the applier (on its thread, or on the node task when the
/// applier is idle); returns what to report to the node, if anything.
///
/// A mutation at or below the store's position was applied before (a
/// retransmission after a reconnect); it is acknowledged again, not reapplied.
///
/// With `early` (the applier thread), a mutation is reported applied as soon as
/// its record is in the log, while its index entries are still being written
/// (see [`DiskStore::apply_wire_then`]): the acknowledgement goes out sooner and
/// the primary's next write overlaps this node's indexing. Not while a
/// standby's view is mounted: there the acknowledgement waits until the
/// mutation is visible and the kernel's caches of it are dropped, so that a
/// write that returned on the primary (protocol C) reads back on the standby.
///
/// Syncs `disk` on a blocking thread and reports, through `report`, the seq
/// the sync covers (everything applied before it started) or the error.
pub(super) fn sync_in_background(
    disk: &Arc<DiskStore>,
    tx: &mpsc::UnboundedSender<Input>,
    report: fn(Result<Seq, String>) -> Input,
) {
    let (disk, tx) = (disk.clone(), tx.clone());
    tokio::task::spawn_blocking(move || {
        let upto = ps(disk.last_applied());
        let r = disk.sync().map(|()| upto).map_err(|e| e.to_string());
        let _ = tx.send(report(r));
    });
}

pub(super) fn do_job(
    disk: &DiskStore,
    view: &View,
    job: Job,
    early: Option<&mpsc::UnboundedSender<Input>>,
) -> Option<Input> {
    // Without a mounted view there is no kernel cache to drop: no decoding for it.
    let watched = view.attached();
    let early = early.filter(|_| !watched);
    // Issue 13: fault injection for tests, debug builds only (see fault.rs).
    crate::fault::before_apply(matches!(job, Job::Apply(..)));
    Some(match job {
        Job::Apply(seq, bytes) => {
            if seq <= ps(disk.last_applied()) {
                Input::Applied(seq)
            } else {
                // The record is written as it came (its digests checked once).
                let mut reported = false;
                let logged = |s: twinfs_fs::Seq| {
                    if let Some(tx) = early.filter(|_| ps(s) == seq) {
                        reported = tx.send(Input::Applied(seq)).is_ok();
                    }
                };
                let applied = disk.apply_wire_then(&bytes, logged);
                if applied.is_ok() && watched {
                    if let Some(t) = Touched::of_record(&bytes) {
                        view.applied(&t);
                    }
                }
                match applied {
                    Ok(_) if reported => return None,
                    Ok(s) if ps(s) == seq => Input::Applied(seq),
                    Ok(s) => Input::ApplyFailed(format!(
                        "mutation frame {} carried mutation {}",
                        seq.0, s.0
                    )),
                    Err(e) => Input::ApplyFailed(format!(
                        "mutation {} from the peer ({} bytes): {e}",
                        seq.0,
                        bytes.len()
                    )),
                }
            }
        }
        Job::Sync(seq) => match disk.sync() {
            Ok(()) => Input::Flushed(seq),
            Err(e) => Input::ApplyFailed(format!("sync: {e}")),
        },
        Job::ApplyLocal(bytes) => match Mutation::from_wire(&bytes) {
            None => Input::ApplyFailed(format!(
                "a resync chunk from the peer is malformed ({} bytes)",
                bytes.len()
            )),
            Some(m) => {
                let touched = watched.then(|| Touched::of_ops(&m.ops));
                match disk.apply_local(m.ops) {
                    Ok(()) => {
                        if let Some(t) = touched {
                            view.applied(&t);
                        }
                        return None;
                    }
                    Err(e) => Input::ApplyFailed(format!("resync chunk: {e}")),
                }
            }
        },
        Job::Verify(payload) => verify::answer(disk, &payload),
        Job::Jump(seq) => match disk.jump_to(fss(seq)).and_then(|()| disk.sync()) {
            Ok(()) => Input::Jumped(seq),
            Err(e) => Input::ApplyFailed(format!("ending the resync at seq {}: {e}", seq.0)),
        },
    })
}
