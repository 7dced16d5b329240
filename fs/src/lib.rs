//! twinfs-fs: the block store and the POSIX filesystem on top of it.
//!
//! This crate owns where bytes live and what POSIX calls mean. It turns every
//! change into one numbered [`Mutation`] (a batch of block-level writes) applied
//! through [`Store::apply`], the single entry point a future replica uses too.
//! It contains no networking code and no Lua; the replicator ships mutations,
//! this crate only produces and applies them.
//!
//! Layers, bottom up:
//! - [`store`]: [`DiskStore`], an append-only mutation log (file data lives there,
//!   each block with its blake3 digest) indexed by sled;
//! - [`ops`]: POSIX semantics over any [`Store`], unit-tested without a mount;
//! - [`fuse`]: the thin fuser adapter (one `match` per callback);
//! - [`verify`]: the offline integrity check behind `twinfs verify`;
//! - [`view`]: a mount that is a standby's read-only view, turned read-write in
//!   place on promotion.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod fuse;
pub mod mutation;
pub mod ops;
pub mod store;
pub mod types;
pub mod verify;
pub mod view;

pub use error::{FsError, StoreError};
pub use mutation::{Mutation, Op, StoreKey};
pub use store::{DiskStore, Store};
pub use types::{DirEntry, FileKind, Ino, Inode, Seq, Timestamp, BLOCK_SIZE};
