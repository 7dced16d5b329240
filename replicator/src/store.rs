//! The store a primary's filesystem writes to: the local [`DiskStore`], plus
//! the replication link.
//!
//! [`ReplicatedStore`] implements [`twinfs_fs::Store`], so `twinfs-fs` knows
//! nothing of replication. Its three changing calls are where the protocol's
//! promise is kept:
//!
//! - [`Store::apply`] encodes the mutation, queues its wire form for the peer
//!   *first*, then writes it to the local store, so that both nodes write it at
//!   the same time (DRBD's order; all under the filesystem's writer lock, so in
//!   seq order). If the local write then fails, the node refuses every later
//!   write rather than go on with a store the peer is ahead of;
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
use twinfs_replicator_proto::Bytes;

/// What the filesystem side hands to the replication task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A mutation to ship: its seq and wire bytes. It is queued just before
    /// the writer appends it to the local store, and the writer waits for its
    /// commit only after that append succeeded, so the node task reports it
    /// to the protocol as locally applied at once (see `ReplicatedStore::apply`).
    Applied(Seq, Bytes),
    /// An fsync wants everything queued so far durable on both sides. The
    /// fsync syncs the local store itself and waits for the node's "flushed"
    /// only after that, so the node reports the local side as flushed at once.
    FlushRequest,
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

    /// Publishes new positions from the replication task and wakes the writers
    /// if either moved (the node task publishes after every turn: waking the
    /// waiting writers for nothing costs each a context switch).
    pub(crate) fn publish(&self, committed: Seq, flushed: Seq) {
        let mut s = self.lock();
        let moved = committed > s.committed || flushed > s.flushed;
        s.committed = s.committed.max(committed);
        s.flushed = s.flushed.max(flushed);
        drop(s);
        if moved {
            self.changed.notify_all();
        }
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
        let (record, prepared) = self.disk.prepare(m)?;
        let record = Bytes::from(record);
        // Ship first, then write locally: the peer's receive and write overlap
        // this node's write. The writer waits for the commit (`wait_committed`)
        // only once its own append is done, so whatever commit the node task
        // reports covers a mutation that is on both stores.
        self.link.send(Outgoing::Applied(m.seq, record.clone()))?;
        if let Err(e) = self.disk.append_prepared(prepared, &record) {
            // The peer may now hold a mutation this store does not. Going on
            // would give the next write the same number with other contents:
            // refuse every change until a restart, whose handshake sorts the
            // two stores out (this node has the shorter history).
            self.disk.poison();
            let reason = format!(
                "the local store failed to write mutation {} after it was shipped to the peer: {e}; \
                 this node accepts no more writes (restart it; its peer holds the newer data)",
                m.seq.0
            );
            tracing::error!("{reason}");
            self.link.set_open(false, Some(reason));
            return Err(e);
        }
        Ok(())
    }

    fn wait_committed(&self, seq: Seq) -> Result<(), StoreError> {
        self.link.wait_until(|s| s.committed, seq)
    }

    fn last_applied(&self) -> Seq {
        self.disk.last_applied()
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every write that returned before this fsync is in the local store
        // (its append came before its wait), so the store's position covers
        // them. A write still being appended may be queued beyond it; the
        // barrier below covers it on the peer, which does no harm.
        let upto = self.disk.last_applied();
        // The barrier goes out first, so that the peer's sync overlaps ours.
        self.link.send(Outgoing::FlushRequest)?;
        // The node counts the local side as flushed (see `FlushRequest`):
        // this sync is what makes that true before the wait below.
        self.disk.sync()?;
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

    fn read_gate(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        self.disk.read_gate()
    }
}
