//! Why a node could not start, or stopped, and why a mount failed.

use crate::state::StateError;
use crate::transport::TransportError;
use twinfs_fs::StoreError;

/// What a [`super::Mounter`] reports when it cannot mount or unmount: the
/// binary's own error, whole.
pub type MountError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`super::run`] returned with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A thread or the runtime could not be started.
    #[error("cannot start {what}: {error}")]
    Start {
        /// What was being started.
        what: &'static str,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The state file could not be read or written.
    #[error("cannot save the replication state: {0}")]
    State(#[from] StateError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The filesystem could not be mounted or unmounted.
    #[error("{0}")]
    Mount(MountError),
}
