//! A mount that is a standby's view (issue 15): read-only while the node is
//! secondary, hidden while its store is mid-resync, read-write once it is
//! promoted, all on the same FUSE session.
//!
//! [`View`] is shared by the mount (which asks [`View::access`] on every
//! request) and the secondary's applier (which calls [`View::applied`] after
//! each of the peer's mutations is in the store, so that the kernel drops
//! what it cached of it). Atomicity comes from the store: its index writes of
//! one mutation happen under a write lock that every request of a read-only
//! mount takes for reading ([`crate::Store::read_gate`]), so a reader sees a
//! mutation whole or not at all. The kernel's caches are invalidated after
//! that lock is released (an invalidation waits for the page locks of reads
//! in progress, and those reads may be waiting for the lock).

use crate::mutation::Op;
use crate::types::{Ino, BLOCK_SIZE};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What the mount lets its users do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A primary's mount, or a single node's: everything.
    ReadWrite,
    /// A standby's view: reads see the last consistent applied state,
    /// changes fail with EROFS.
    ReadOnly,
    /// The store is mid-resync: every request fails with EIO, so no reader
    /// sees a mix of old and new.
    Hidden,
}

impl Access {
    fn from_u8(v: u8) -> Access {
        match v {
            0 => Access::ReadWrite,
            1 => Access::ReadOnly,
            _ => Access::Hidden,
        }
    }
}

/// What one applied mutation changed that the kernel may have cached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Inodes whose attributes changed, with the byte range of their data
    /// that changed (`None`: attributes only; `Some((0, 0))`: all of it).
    pub inodes: BTreeMap<Ino, Option<(u64, u64)>>,
    /// Directory entries added, removed or replaced: (directory, name).
    pub entries: Vec<(Ino, Vec<u8>)>,
    /// Everything may have changed (a full resync's wipe).
    pub everything: bool,
}

impl Touched {
    /// What `ops` change.
    pub fn of_ops<D>(ops: &[Op<D>]) -> Touched {
        let mut t = Touched::default();
        for op in ops {
            match op {
                Op::PutInode(ino, _) => t.attrs(*ino),
                Op::DelInode(ino) => t.data(*ino, 0, 0),
                Op::PutDirent { parent, name, .. } | Op::DelDirent { parent, name, .. } => {
                    t.entries.push((*parent, name.clone()));
                    // The directory's listing (the kernel's readdir cache).
                    t.data(*parent, 0, 0);
                }
                Op::PutBlock { ino, idx, .. } | Op::DelBlock { ino, idx } => {
                    t.data(*ino, idx * BLOCK_SIZE, BLOCK_SIZE)
                }
                Op::TruncBlocks { ino, .. } => t.data(*ino, 0, 0),
                Op::Wipe => t.everything = true,
                Op::PutXattr { .. }
                | Op::DelXattr { .. }
                | Op::NextIno(_)
                | Op::PutOrphan(_)
                | Op::DelOrphan(_) => {}
            }
        }
        t
    }

    /// What the mutation in `record` (its wire form, as the peer sent it)
    /// changes; `None` when the record does not decode.
    pub fn of_record(record: &[u8]) -> Option<Touched> {
        crate::mutation::record_ops(record).map(|ops| Touched::of_ops(&ops))
    }

    fn attrs(&mut self, ino: Ino) {
        self.inodes.entry(ino).or_insert(None);
    }

    /// Marks `len` bytes at `off` of `ino` changed (`len` 0: all of it).
    fn data(&mut self, ino: Ino, off: u64, len: u64) {
        let e = self.inodes.entry(ino).or_insert(None);
        *e = Some(match *e {
            None => (off, len),
            Some((_, 0)) => (0, 0),
            _ if len == 0 => (0, 0),
            Some((o, l)) => {
                let start = o.min(off);
                (start, (o + l).max(off + len) - start)
            }
        });
    }

    /// Whether there is nothing to invalidate.
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty() && self.entries.is_empty() && !self.everything
    }
}

/// Drops what the kernel cached (implemented by the FUSE mount).
pub trait Invalidate: Send + Sync {
    /// Invalidates what `t` names. Never called with the store's read gate
    /// held for writing.
    fn invalidate(&self, t: &Touched);
}

/// The mount's access and its link to the kernel's caches; see the module docs.
pub struct View {
    access: AtomicU8,
    kernel: RwLock<Option<Arc<dyn Invalidate>>>,
    /// Changing requests in progress (see [`View::begin_write`]).
    writers: AtomicU64,
}

/// A changing request in progress on a read-write mount.
#[derive(Debug)]
pub struct WriteGuard<'a>(&'a View);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long [`View::make_read_only`] waits for changing requests to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("access", &self.access())
            .finish_non_exhaustive()
    }
}

impl View {
    /// A view with `access`, attached to no mount yet.
    pub fn new(access: Access) -> Arc<View> {
        Arc::new(View {
            access: AtomicU8::new(access as u8),
            kernel: RwLock::new(None),
            writers: AtomicU64::new(0),
        })
    }

    /// A changing request starts: `None` unless the mount is read-write.
    /// The guard counts it until dropped.
    pub fn begin_write(&self) -> Option<WriteGuard<'_>> {
        self.writers.fetch_add(1, Ordering::SeqCst);
        let guard = WriteGuard(self);
        (self.access() == Access::ReadWrite).then_some(guard)
    }

    /// Makes the mount read-only, then waits (at most 10 s) until the
    /// changing requests that had started are done, so that none reaches
    /// the store after a demotion returned. Returns whether they all were.
    pub fn make_read_only(&self) -> bool {
        self.set_access(Access::ReadOnly);
        let start = Instant::now();
        while self.writers.load(Ordering::SeqCst) > 0 {
            if start.elapsed() > DRAIN_LIMIT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// What the mount lets its users do now.
    pub fn access(&self) -> Access {
        Access::from_u8(self.access.load(Ordering::SeqCst))
    }

    /// Changes what the mount lets its users do.
    pub fn set_access(&self, access: Access) {
        self.access.store(access as u8, Ordering::SeqCst);
    }

    /// The mount's cache invalidator (set when it mounts).
    pub fn attach(&self, kernel: Arc<dyn Invalidate>) {
        *self.kernel.write().unwrap_or_else(|p| p.into_inner()) = Some(kernel);
    }

    /// The mount is gone.
    pub fn detach(&self) {
        *self.kernel.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether a mount is attached (the applier then acknowledges a mutation
    /// only once it is visible: see `twinfs-replicator`'s applier).
    pub fn attached(&self) -> bool {
        self.kernel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The peer's mutation is in the store: drop what the kernel cached of
    /// it. Call after the store's apply returned.
    pub fn applied(&self, t: &Touched) {
        if t.is_empty() {
            return;
        }
        let kernel = self
            .kernel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(k) = kernel {
            k.invalidate(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DirEntry, FileKind};

    #[test]
    fn touched_names_inodes_ranges_and_entries() {
        let ops: Vec<Op> = vec![
            Op::PutBlock {
                ino: Ino(5),
                idx: 2,
                data: vec![1; 10],
            },
            Op::PutBlock {
                ino: Ino(5),
                idx: 4,
                data: vec![1; 10],
            },
            Op::PutDirent {
                parent: Ino(1),
                name: b"a".to_vec(),
                entry: DirEntry {
                    ino: Ino(5),
                    kind: FileKind::File,
                    cookie: 3,
                },
            },
            Op::NextIno(9),
        ];
        let t = Touched::of_ops(&ops);
        let bs = BLOCK_SIZE;
        assert_eq!(t.inodes[&Ino(5)], Some((2 * bs, 3 * bs)));
        assert_eq!(t.inodes[&Ino(1)], Some((0, 0)));
        assert_eq!(t.entries, vec![(Ino(1), b"a".to_vec())]);
        assert!(!t.everything);
        let mut t = Touched::of_ops::<Vec<u8>>(&[Op::TruncBlocks {
            ino: Ino(7),
            from: 0,
        }]);
        t.data(Ino(7), 100, 10);
        assert_eq!(t.inodes[&Ino(7)], Some((0, 0)), "all of it stays all");
        assert!(Touched::of_ops::<Vec<u8>>(&[Op::Wipe]).everything);
        assert!(Touched::of_ops::<Vec<u8>>(&[Op::NextIno(3)]).is_empty());
    }

    #[test]
    fn a_record_decodes_to_what_its_mutation_touches() {
        let m = crate::Mutation {
            seq: crate::Seq(1),
            ops: vec![Op::PutInode(
                Ino(3),
                crate::Inode::new(FileKind::File, 0o644, 0, 0, crate::Timestamp::now()),
            )],
        };
        let t = Touched::of_record(&m.to_wire()).expect("decodes");
        assert_eq!(t.inodes[&Ino(3)], None);
        assert!(Touched::of_record(b"garbage").is_none());
    }
}
