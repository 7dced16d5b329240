//! The block store: where inodes, directory entries, data blocks and extended
//! attributes live, and the single entry point that changes them ([`Store::apply`]).
//!
//! The filesystem semantics in [`crate::ops`] are written against the [`Store`]
//! trait; [`DiskStore`] (sled + an append-only log) is what a mount uses. The
//! contract tests in `store::tests` are written against the trait so that a
//! second implementation (an in-memory one for simulations, or another engine)
//! runs the same suite.

mod disk;
#[cfg(test)]
mod tests;

pub use disk::{
    store_key_of, Checkpointer, CleanStats, DiskStore, KeySet, LogUsage, PreparedRecord,
    RecordDigest, StoreOptions, DAMAGED, SEGMENT_MAX, STORE_FORMAT,
};

use crate::error::StoreError;
use crate::mutation::Mutation;
use crate::types::{DirEntry, Ino, Inode, Seq};

/// Space figures for `statfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Fragment size in bytes (the unit of the block counts).
    pub frsize: u32,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes (an estimate: the store has no fixed inode table).
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
}

/// Storage for one filesystem.
///
/// Reads may run concurrently with each other and with [`Store::apply`]. Mutations
/// must be applied one at a time, in sequence order; callers serialise them.
pub trait Store: Send + Sync + 'static {
    /// Applies `m` atomically: after a crash either every op of `m` is visible or none.
    ///
    /// `m.seq` must be exactly `last_applied() + 1`, otherwise
    /// [`StoreError::OutOfOrder`] is returned and nothing changes. The mutation
    /// is durable only after a later [`Store::sync`] returns.
    fn apply(&self, m: &Mutation) -> Result<(), StoreError>;

    /// Waits until the applied mutation `seq` may be acknowledged to the
    /// application. Called after [`Store::apply`] returned, without the writer
    /// lock, so that mutations of other writers can go on meanwhile.
    ///
    /// A local store returns at once; a replicated one waits for the peer as
    /// its protocol says (under protocol C: until the peer has applied it).
    fn wait_committed(&self, seq: Seq) -> Result<(), StoreError> {
        let _ = seq;
        Ok(())
    }

    /// The sequence number of the last applied mutation (`Seq(0)` for a new store).
    fn last_applied(&self) -> Seq;

    /// Makes every mutation applied so far durable (reaches stable storage).
    fn sync(&self) -> Result<(), StoreError>;

    /// The inode record of `ino`.
    fn inode(&self, ino: Ino) -> Result<Option<Inode>, StoreError>;

    /// The entry `name` in directory `parent`.
    fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>, StoreError>;

    /// Up to `limit` entries of `parent` whose cookie is greater than `after`, in cookie order.
    fn read_dir(
        &self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, DirEntry)>, StoreError>;

    /// Data block `idx` of `ino`, `None` for a hole.
    ///
    /// Returns [`StoreError::Corrupt`] if the bytes do not match their digest; wrong
    /// data is never returned.
    fn block(&self, ino: Ino, idx: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// The extended attribute `name` of `ino`.
    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The names of all extended attributes of `ino`.
    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>, StoreError>;

    /// The next free inode number (2 for a new store).
    fn next_ino(&self) -> Result<u64, StoreError>;

    /// Inodes marked as unlinked-but-open.
    fn orphans(&self) -> Result<Vec<Ino>, StoreError>;

    /// One directory entry naming `ino` (its parent and the name), if any.
    ///
    /// A full scan of the directory entries: meant for error reports, not for hot paths.
    fn name_of(&self, ino: Ino) -> Result<Option<(Ino, Vec<u8>)>, StoreError>;

    /// Space figures.
    fn usage(&self) -> Result<Usage, StoreError>;

    /// Held (for reading) by each request of a standby's read-only mount:
    /// the store applies each mutation's index changes under the write side,
    /// so the request sees the mutation whole or not at all. `None` for a
    /// store whose changes are atomic for readers anyway.
    fn read_gate(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        None
    }
}
