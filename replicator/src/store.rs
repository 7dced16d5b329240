//! The store a primary's filesystem writes to: the local [`DiskStore`], plus
//! the replication link.
//!
//! [`ReplicatedStore`] implements [`twinfs_fs::Store`], so `twinfs-fs` knows
//! nothing of replication. Its three changing calls are where the protocol's
//! promise is kept:
//!
//! - [`Store::apply`] applies the mutation locally (under the filesystem's
//!   writer lock, so in seq order) and queues its wire form for the peer;
//! - [`Store::wait_committed`] (called without the writer lock) blocks until the
//!   node's protocol state machine reports the seq committed (protocol C: the
//!   peer applied it);
//! - [`Store::sync`] sends a flush barrier to the peer, syncs the local store
//!   meanwhile, and blocks until both are durable.
//!
//! The FUSE threads and the replication task meet in `Link`: a mutex-guarded
//! queue going one way and the committed/flushed positions coming back, with a
//! condition variable for the waiting writers.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use twinfs_fs::store::Usage;
use twinfs_fs::{DirEntry, DiskStore, Ino, Inode, Mutation, Seq, Store, StoreError};

/// What the filesystem side hands to the replication task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A mutation applied locally: its seq and wire bytes.
    Applied(Seq, Vec<u8>),
    /// An fsync wants everything up to this seq durable on both sides.
    FlushRequest,
    /// The local store is durable up to this seq.
    LocalFlushed(Seq),
}

/// The meeting point of the writers and the replication task.
#[derive(Debug, Default)]
pub(crate) struct Link {
    inner: Mutex<LinkState>,
    changed: Condvar,
    /// Wakes the replication task when something was queued.
    pub(crate) wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
pub(crate) struct LinkState {
    pub(crate) outgoing: VecDeque<Outgoing>,
    /// The last seq queued as applied (what an fsync must cover).
    pub(crate) queued: Seq,
    /// Every seq up to here may be acknowledged to writers.
    pub(crate) committed: Seq,
    /// Every seq up to here is durable as the protocol promises.
    pub(crate) flushed: Seq,
    /// Set while the node accepts writes (it is primary and mounted).
    pub(crate) open: bool,
    /// Why writes fail, if they do (the node stopped being primary, say).
    pub(crate) closed_reason: Option<String>,
}

/// How often a waiting writer re-checks the link (a lost wake-up costs at most this).
const WAIT_SLICE: Duration = Duration::from_millis(500);

impl Link {
    pub(crate) fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` for the replication task and wakes it.
    fn send(&self, item: Outgoing) -> Result<(), StoreError> {
        let mut s = self.lock();
        if !s.open {
            return Err(StoreError::NotPrimary(
                s.closed_reason
                    .clone()
                    .unwrap_or_else(|| "writes are closed".into()),
            ));
        }
        if let Outgoing::Applied(seq, _) = &item {
            s.queued = *seq;
        }
        s.outgoing.push_back(item);
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// Publishes new positions from the replication task and wakes the writers.
    pub(crate) fn publish(&self, committed: Seq, flushed: Seq) {
        let mut s = self.lock();
        s.committed = s.committed.max(committed);
        s.flushed = s.flushed.max(flushed);
        drop(s);
        self.changed.notify_all();
    }

    /// Opens or closes the link for writers; closing fails the waiting ones.
    pub(crate) fn set_open(&self, open: bool, reason: Option<String>) {
        let mut s = self.lock();
        s.open = open;
        s.closed_reason = reason;
        drop(s);
        self.changed.notify_all();
    }

    fn wait_until(&self, what: fn(&LinkState) -> Seq, seq: Seq) -> Result<(), StoreError> {
        let mut s = self.lock();
        loop {
            if what(&s) >= seq {
                return Ok(());
            }
            if !s.open {
                return Err(StoreError::Replication(format!(
                    "mutation {} was applied locally but not acknowledged: {}",
                    seq.0,
                    s.closed_reason.as_deref().unwrap_or("writes are closed")
                )));
            }
            s = self
                .changed
                .wait_timeout(s, WAIT_SLICE)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The primary's store: local [`DiskStore`] + replication (see the module docs).
#[derive(Debug)]
pub struct ReplicatedStore {
    disk: Arc<DiskStore>,
    link: Arc<Link>,
}

impl ReplicatedStore {
    pub(crate) fn new(disk: Arc<DiskStore>, link: Arc<Link>) -> Self {
        ReplicatedStore { disk, link }
    }

    /// The local store.
    pub fn disk(&self) -> &Arc<DiskStore> {
        &self.disk
    }
}

impl Store for ReplicatedStore {
    fn apply(&self, m: &Mutation) -> Result<(), StoreError> {
        // Refuse before touching the disk if the node is not primary any more.
        if !self.link.lock().open {
            return Err(StoreError::NotPrimary(
                "the node was demoted; the mount is closing".into(),
            ));
        }
        let wire = self.disk.apply_returning_record(m)?;
        self.link.send(Outgoing::Applied(m.seq, wire))
    }

    fn wait_committed(&self, seq: Seq) -> Result<(), StoreError> {
        self.link.wait_until(|s| s.committed, seq)
    }

    fn last_applied(&self) -> Seq {
        self.disk.last_applied()
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every write that returned before this fsync was queued, so the last
        // queued seq covers them (the disk may be a step ahead; the sync below
        // covers that too).
        let upto = self.link.lock().queued;
        // The barrier goes out first, so that the peer's sync overlaps ours.
        self.link.send(Outgoing::FlushRequest)?;
        self.disk.sync()?;
        self.link.send(Outgoing::LocalFlushed(upto))?;
        self.link.wait_until(|s| s.flushed, upto)
    }

    fn inode(&self, ino: Ino) -> Result<Option<Inode>, StoreError> {
        self.disk.inode(ino)
    }

    fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>, StoreError> {
        self.disk.dirent(parent, name)
    }

    fn read_dir(
        &self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, DirEntry)>, StoreError> {
        self.disk.read_dir(parent, after, limit)
    }

    fn block(&self, ino: Ino, idx: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.disk.block(ino, idx)
    }

    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.disk.xattr(ino, name)
    }

    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>, StoreError> {
        self.disk.xattr_names(ino)
    }

    fn next_ino(&self) -> Result<u64, StoreError> {
        self.disk.next_ino()
    }

    fn orphans(&self) -> Result<Vec<Ino>, StoreError> {
        self.disk.orphans()
    }

    fn name_of(&self, ino: Ino) -> Result<Option<(Ino, Vec<u8>)>, StoreError> {
        self.disk.name_of(ino)
    }

    fn usage(&self) -> Result<Usage, StoreError> {
        self.disk.usage()
    }
}
