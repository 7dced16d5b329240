//! Error types of the store and of the filesystem operations.

use crate::types::Ino;
use std::path::PathBuf;

/// Errors from the block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a store file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(String),
    /// A data block does not match its blake3 digest: the bytes on disk are damaged.
    #[error("block {idx} of inode {ino} is damaged: blake3 mismatch at {segment} offset {offset}")]
    Corrupt {
        /// The file.
        ino: Ino,
        /// The block index within the file.
        idx: u64,
        /// The log segment holding the block.
        segment: PathBuf,
        /// Byte offset of the block in the segment.
        offset: u64,
    },
    /// A metadata record could not be decoded.
    #[error("metadata record {key} is damaged: {reason}")]
    BadRecord {
        /// Which record.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The data directory holds a store this build cannot read.
    #[error("{path}: store format {found} is not supported by this build (it reads format {supported}); refusing to open it")]
    IncompatibleFormat {
        /// The format marker file.
        path: PathBuf,
        /// The format found.
        found: String,
        /// The format this build reads.
        supported: u32,
    },
    /// The directory is neither empty nor a twinfs store.
    #[error("{path} is not empty and holds no twinfs store (no store.toml); refusing to use it as a data dir")]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// Another process has the store open.
    #[error("{path} is locked: another twinfs process is using this data dir")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An earlier index write failed; the store takes no more changes until it is
    /// reopened (the log replay then completes the interrupted mutation).
    #[error("the store refuses changes after an earlier write failure (see the daemon's log); restart twinfs to replay the log")]
    Poisoned,
    /// A mutation arrived out of order.
    #[error("mutation {got} does not follow the last applied mutation {last}")]
    OutOfOrder {
        /// The last applied sequence number.
        last: u64,
        /// The sequence number received.
        got: u64,
    },
    /// The node is not (or no longer) primary: the mutation was not applied.
    #[error("this node is not primary: {0}")]
    NotPrimary(String),
    /// Replication could not acknowledge the mutation (it is applied locally).
    #[error("replication: {0}")]
    Replication(String),
    /// The disk holding the store is full; nothing was applied.
    #[error("no space left on the store's disk ({path})")]
    NoSpace {
        /// The file that could not grow.
        path: PathBuf,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return StoreError::NoSpace { path };
        }
        StoreError::Io { path, source }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// Errors of filesystem operations; each maps to one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// ENOENT.
    #[error("no such file or directory")]
    NotFound,
    /// EEXIST.
    #[error("file exists")]
    Exists,
    /// ENOTDIR.
    #[error("not a directory")]
    NotDir,
    /// EISDIR.
    #[error("is a directory")]
    IsDir,
    /// ENOTEMPTY.
    #[error("directory not empty")]
    NotEmpty,
    /// EPERM.
    #[error("operation not permitted")]
    Perm,
    /// EACCES.
    #[error("permission denied")]
    Access,
    /// EINVAL.
    #[error("invalid argument")]
    Invalid,
    /// ENAMETOOLONG.
    #[error("file name too long")]
    NameTooLong,
    /// ENODATA (no such extended attribute).
    #[error("no such attribute")]
    NoData,
    /// ERANGE (buffer too small).
    #[error("result too large for the buffer")]
    Range,
    /// EFBIG.
    #[error("file too large")]
    TooBig,
    /// EMLINK.
    #[error("too many links")]
    TooManyLinks,
    /// EOPNOTSUPP.
    #[error("operation not supported")]
    NotSupported,
    /// E2BIG (xattr value too large).
    #[error("argument list too long")]
    TooLarge,
    /// The store failed (EIO, or ENOSPC when the disk is full).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// The errno reported to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Perm => libc::EPERM,
            FsError::Access => libc::EACCES,
            FsError::Invalid => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NoData => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::TooLarge => libc::E2BIG,
            FsError::Store(StoreError::NoSpace { .. }) => libc::ENOSPC,
            FsError::Store(StoreError::NotPrimary(_)) => libc::EROFS,
            FsError::Store(_) => libc::EIO,
        }
    }
}
